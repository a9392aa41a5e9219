# Every target creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export UV_COMPILE_BYTECODE := 1
export DO_NOT_TRACK := 1
export DBT_SEND_ANONYMOUS_USAGE_STATS := False
export RUNTIME__DLTHUB_TELEMETRY := false

.PHONY: install run run-pg test lint typecheck bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/mocra-elt demo run

# Also the PostgreSQL jobs, on the servers in MOCRA_PG_* and MOCRA_S3_ENDPOINT_URL or on
# throwaway ones that scripts/services.sh starts.
run-pg: $(STAMP)
	$(BIN)/mocra-elt demo run --with-servers

test: $(STAMP)
	bash scripts/test.sh

lint: $(STAMP)
	$(BIN)/ruff check mocra_elt tests bench
	$(BIN)/ruff format --check mocra_elt tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf .mocra dbt_project/target dbt_project/logs logs
