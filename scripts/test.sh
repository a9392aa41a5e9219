#!/usr/bin/env bash
# Run the test suite with the services it needs. Called by `make test` and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

export DO_NOT_TRACK=1 DBT_SEND_ANONYMOUS_USAGE_STATS=False RUNTIME__DLTHUB_TELEMETRY=false
export PYTHONDONTWRITEBYTECODE=1

.venv/bin/pytest "$@"
