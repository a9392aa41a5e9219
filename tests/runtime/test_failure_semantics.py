"""Failure semantics end to end: kills at stage boundaries, dead-lettered batches, secrets."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import duckdb
import pytest
from click.testing import CliRunner

from mocra_elt.cli.main import cli
from mocra_elt.demo.flights_api import FaultPlan, start_server
from tests.conftest import write_pipeline

PIPELINE = """\
    source:
      type: files
      url: data
      glob: "*.csv"
    load:
      table: orders
      write_disposition: append
      incremental: {cursor: ordered_at}
      columns: {order_id: bigint, amount: double, ordered_at: timestamp}
    transform:
      select: [order_totals]
    quality:
      suites: [order_totals]
    sinks:
      - type: object_storage
        model: order_totals
        url: exports
        partition_by: {column: order_day, granularity: value, name: day}
    """

MODEL = """\
select cast(ordered_at as date) as order_day, count(*) as orders, sum(amount) as revenue
from raw_orders.orders
group by 1
"""

SUITE = """\
model: order_totals
policy: block
rules:
  - not_null: [order_day, orders]
  - unique: order_day
"""

DRIVER = """\
import os, signal, sys
from pathlib import Path
from mocra_elt.config.loader import load_pipelines
from mocra_elt.config.project import Project
from mocra_elt.load.warehouse import open_warehouse
from mocra_elt.runtime.environment import configure_environment
from mocra_elt.runtime.runner import SilentObserver, run_pipelines

when, stage = sys.argv[2], sys.argv[3]

class KillAt(SilentObserver):
    def stage_started(self, pipeline, started):
        if when == "before" and started == stage:
            os.kill(os.getpid(), signal.SIGKILL)
    def stage_finished(self, pipeline, report):
        if when == "after" and report.stage == stage:
            os.kill(os.getpid(), signal.SIGKILL)

project = Project.discover(Path(sys.argv[1]))
configure_environment(project)
run_pipelines(project, load_pipelines(project.sources_dir), open_warehouse(project),
              observer=KillAt())
"""

BOUNDARIES = [
    ("before", "extract"),
    ("after", "extract"),
    ("after", "load"),
    ("after", "transform"),
    ("after", "quality"),
    ("after", "publish"),
]


def make_project(root: Path, days: range) -> None:
    (root / "data").mkdir(exist_ok=True)
    lines = ["order_id,amount,ordered_at"]
    for day in days:
        for number in range(1, 4):
            lines.append(
                f"{day * 10 + number},{day + number / 10},2024-01-{day:02d}T0{number}:00:00Z"
            )
    (root / "data" / f"orders_{days.start:02d}.csv").write_text("\n".join(lines) + "\n")
    write_pipeline(root, "orders", PIPELINE)
    (root / "dbt_project" / "models" / "order_totals.sql").write_text(MODEL)
    (root / "expectations").mkdir(exist_ok=True)
    (root / "expectations" / "order_totals.yml").write_text(SUITE)


def run_cli(root: Path) -> int:
    return CliRunner().invoke(cli, ["--project-dir", str(root), "run"]).exit_code


def snapshot(root: Path) -> dict[str, Any]:
    """Everything the pipeline writes, without ids that differ between runs."""
    path = root / ".mocra" / "warehouse.duckdb"
    with duckdb.connect(str(path), read_only=True) as connection:
        raw = connection.execute(
            "select order_id, amount, ordered_at from raw_orders.orders order by all"
        ).fetchall()
        model = connection.execute(
            "select order_day, orders, revenue from analytics.order_totals order by all"
        ).fetchall()
        marks = connection.execute(
            "select cursor_name, value from mocra_audit.watermarks "
            "qualify row_number() over (partition by cursor_name order by committed_at desc) = 1 "
            "order by cursor_name"
        ).fetchall()
    exports = root / "exports"
    files = {}
    for file in sorted(exports.rglob("*.parquet")):
        table = duckdb.sql(f"select * from '{file}' order by all")
        files[str(file.relative_to(exports).parent)] = table.fetchall()
    marks = [(name, value) for name, value in marks if name != "_file_modified"]
    return {"raw": raw, "model": model, "watermarks": marks, "exports": files}


@pytest.fixture(scope="module")
def clean_result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = prepare(tmp_path_factory.mktemp("clean"))
    assert run_cli(root) == 0
    add_second_file(root)
    assert run_cli(root) == 0
    return snapshot(root)


def prepare(base: Path) -> Path:
    root = base / "project"
    (root / "sources").mkdir(parents=True)
    (root / "dbt_project" / "models").mkdir(parents=True)
    (root / "dbt_project" / "dbt_project.yml").write_text(
        'name: kill_test\nversion: "1.0"\nprofile: mocra_elt\nmodel-paths: ["models"]\n'
        "models:\n  kill_test:\n    +materialized: table\n"
    )
    repo = Path(__file__).resolve().parents[2]
    (root / "profiles.yml").write_text((repo / "profiles.yml").read_text())
    make_project(root, range(1, 4))
    return root


def add_second_file(root: Path) -> None:
    make_project(root, range(4, 6))


@pytest.mark.parametrize(("when", "stage"), BOUNDARIES, ids=[f"{w}-{s}" for w, s in BOUNDARIES])
def test_sigkill_at_boundary_then_rerun(
    tmp_path: Path, clean_result: dict[str, Any], when: str, stage: str
) -> None:
    root = prepare(tmp_path)
    assert run_cli(root) == 0
    add_second_file(root)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MOCRA_")}

    killed = subprocess.run(
        [sys.executable, "-c", DRIVER, str(root), when, stage],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert run_cli(root) == 0
    assert snapshot(root) == clean_result


def test_always_failing_source_dead_letters_batch(project_dir: Path, tmp_path: Path) -> None:
    faults = FaultPlan(transient_failures=1000, transient_status=503, retry_after=0)
    with start_server(tmp_path / "api", limit_rows=200, faults=faults) as server:
        write_pipeline(
            project_dir,
            "flights",
            f"""\
            source:
              type: http
              base_url: {server.url}
              path: /flights
              data_selector: data
              max_attempts: 2
            load: {{table: flights}}
            retry_policy:
              extract: {{attempts: 2, backoff: {{initial: 0, maximum: 0, jitter: false}}}}
            """,
        )
        result = CliRunner().invoke(cli, ["--project-dir", str(project_dir), "run"])

    letters = json.loads(
        CliRunner().invoke(cli, ["--project-dir", str(project_dir), "dlq", "list", "--json"]).output
    )
    assert result.exit_code == 1
    assert [(letter["stage"], letter["error_code"]) for letter in letters] == [
        ("extract", "SOURCE_HTTP_5XX")
    ]
    assert letters[0]["attempts"] == 2
    path = project_dir / ".mocra" / "warehouse.duckdb"
    with duckdb.connect(str(path), read_only=True) as connection:
        attempts = connection.execute(
            "select attempts, status from mocra_audit.stage_runs where stage = 'extract'"
        ).fetchall()
    assert attempts == [(2, "failed")]


SECRET_TOKEN = "tok-3f9a1c77e2b54d08"
SECRET_PASSWORD = "pw-9d2e4b71a0c3f655"


def test_secrets_never_written(
    project_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLIGHTS_TOKEN", SECRET_TOKEN)
    monkeypatch.setenv("OPS_DB_URL", f"postgresql://reader:{SECRET_PASSWORD}@127.0.0.1:1/ops")
    with start_server(tmp_path / "api", token="the-right-token", limit_rows=100) as server:
        write_pipeline(
            project_dir,
            "flights",
            f"""\
            source:
              type: http
              base_url: {server.url}
              path: /flights
              data_selector: data
              auth: {{type: bearer, token: "${{env:FLIGHTS_TOKEN}}"}}
            load: {{table: flights}}
            """,
        )
        write_pipeline(
            project_dir,
            "ops",
            """\
            source:
              type: db
              url: "${env:OPS_DB_URL}"
              table: public.orders
            load: {table: orders}
            """,
        )
        log_file = tmp_path / "run.log"
        with log_file.open("w") as stream:
            handler = logging.StreamHandler(stream)
            logging.getLogger().addHandler(handler)
            try:
                result = CliRunner().invoke(
                    cli,
                    ["--project-dir", str(project_dir), "--log-level", "debug",
                     "--log-format", "json", "run"],
                )  # fmt: skip
            finally:
                logging.getLogger().removeHandler(handler)

    assert result.exit_code == 1
    texts = [result.output, log_file.read_text(), audit_text(project_dir)]
    texts += [path.read_text() for path in (project_dir / ".mocra").rglob("*.json")]
    assert "SOURCE_AUTH" in texts[2]
    for text in texts:
        assert SECRET_TOKEN not in text
        assert SECRET_PASSWORD not in text


def audit_text(project_dir: Path) -> str:
    """Return every value of every audit table as one text."""
    path = project_dir / ".mocra" / "warehouse.duckdb"
    with duckdb.connect(str(path), read_only=True) as connection:
        tables = connection.execute(
            "select table_name from information_schema.tables where table_schema = 'mocra_audit'"
        ).fetchall()
        rows = []
        for (table,) in tables:
            rows += connection.execute(f"select * from mocra_audit.{table}").fetchall()
    return textwrap.indent("\n".join(map(repr, rows)), "")


def test_rows_of_uncommitted_load_removed(tmp_path: Path) -> None:
    root = prepare(tmp_path)
    assert run_cli(root) == 0
    path = root / ".mocra" / "warehouse.duckdb"
    with duckdb.connect(str(path)) as connection:
        # What a run killed after dlt's load but before the watermark commit leaves behind.
        connection.execute(
            "insert into raw_orders.orders (order_id, amount, ordered_at, _dlt_load_id) "
            "select order_id + 1000, amount, ordered_at, 'never-committed' from raw_orders.orders"
        )
    add_second_file(root)

    assert run_cli(root) == 0

    with duckdb.connect(str(path), read_only=True) as connection:
        leftovers = connection.execute(
            "select count(*) from raw_orders.orders where _dlt_load_id = 'never-committed'"
        ).fetchone()
        removed = connection.execute(
            "select details from mocra_audit.stage_runs where stage = 'load' "
            "order by started_at desc limit 1"
        ).fetchone()
    assert leftovers == (0,)
    assert removed is not None
    assert json.loads(removed[0])["uncommitted_rows_removed"] == 9
