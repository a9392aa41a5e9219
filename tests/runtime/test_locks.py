"""Run locks: one writer per pipeline and per target table, released even after SIGKILL."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb

from mocra_elt.config.loader import load_pipelines
from mocra_elt.config.project import Project
from mocra_elt.load.warehouse import open_warehouse
from mocra_elt.runtime.environment import configure_environment
from mocra_elt.runtime.runner import RunResult, run_pipelines
from tests.conftest import write_pipeline

PIPELINE = """\
    source:
      type: files
      url: data
      glob: "*.csv"
    load:
      table: events
    """

HOLDER = """\
import sys, time
from pathlib import Path
from mocra_elt.config.loader import load_pipelines
from mocra_elt.config.project import Project
from mocra_elt.runtime.locks import run_locks

project = Project.discover(Path(sys.argv[1]))
pipeline = load_pipelines(project.sources_dir)[sys.argv[2]]
with run_locks(project, pipeline, "holder-run", wait=0):
    print("locked", flush=True)
    time.sleep(float(sys.argv[3]))
"""


def make_project(project_dir: Path) -> None:
    (project_dir / "data").mkdir()
    (project_dir / "data" / "events.csv").write_text("id,kind\n1,a\n2,b\n")
    write_pipeline(project_dir, "events", PIPELINE)


def hold_lock(project_dir: Path, pipeline: str, seconds: float) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(project_dir), pipeline, str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "locked"
    return holder


def run_all(project_dir: Path, wait: float = 0.0) -> list[RunResult]:
    project = Project.discover(project_dir)
    configure_environment(project)
    pipelines = load_pipelines(project.sources_dir)
    return run_pipelines(project, pipelines, open_warehouse(project), lock_wait=wait)


def event_count(project_dir: Path) -> int:
    path = project_dir / ".mocra" / "warehouse.duckdb"
    with duckdb.connect(str(path), read_only=True) as connection:
        row = connection.execute("select count(*) from raw_events.events").fetchone()
    return int(row[0]) if row else 0


def test_held_lock_fails_run_clearly(project_dir: Path) -> None:
    make_project(project_dir)
    holder = hold_lock(project_dir, "events", 30)
    try:
        [result] = run_all(project_dir)
    finally:
        holder.kill()
        holder.wait()

    assert result.status == "failed"
    assert result.error_code == "PIPELINE_LOCKED"
    assert "pipeline.events is held by run holder-run" in (result.error or "")
    assert "--wait" in (result.error or "")
    assert result.stages == []


def test_run_waits_for_lock(project_dir: Path) -> None:
    make_project(project_dir)
    holder = hold_lock(project_dir, "events", 1.0)
    started = time.monotonic()
    [result] = run_all(project_dir, wait=30)
    holder.wait()

    assert result.succeeded, result.error
    assert time.monotonic() - started >= 0.5
    assert event_count(project_dir) == 2


def test_lock_released_after_sigkill(project_dir: Path) -> None:
    make_project(project_dir)
    holder = hold_lock(project_dir, "events", 60)
    holder.send_signal(signal.SIGKILL)
    holder.wait()

    [result] = run_all(project_dir)

    assert result.succeeded, result.error
    assert event_count(project_dir) == 2


def test_same_table_blocks_other_pipeline(project_dir: Path) -> None:
    make_project(project_dir)
    write_pipeline(
        project_dir,
        "events_copy",
        textwrap.dedent(PIPELINE) + "  dataset: raw_events\n",
    )
    holder = hold_lock(project_dir, "events", 30)
    try:
        results = {result.pipeline: result for result in run_all(project_dir)}
    finally:
        holder.kill()
        holder.wait()

    assert results["events_copy"].error_code == "PIPELINE_LOCKED"
    assert "table.raw_events.events is held by run holder-run" in (
        results["events_copy"].error or ""
    )


def test_concurrent_commands_serialized(project_dir: Path) -> None:
    make_project(project_dir)
    first = subprocess.Popen(
        [sys.executable, "-c", HOLD_WAREHOUSE, str(project_dir), "3"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert first.stdout is not None
    assert first.stdout.readline().strip() == "locked"
    try:
        blocked = run_cli(project_dir, "run")
        waited = run_cli(project_dir, "run", "--wait", "30")
    finally:
        first.wait()

    assert blocked.returncode == 1
    assert "the DuckDB warehouse is held by holder command (process" in blocked.stderr
    assert waited.returncode == 0, waited.stderr
    assert event_count(project_dir) == 2


def test_dead_run_marked_abandoned(project_dir: Path) -> None:
    make_project(project_dir)
    [first] = run_all(project_dir)
    path = project_dir / ".mocra" / "warehouse.duckdb"
    with duckdb.connect(str(path)) as connection:
        connection.execute(
            "insert into mocra_audit.runs (run_id, pipeline, status, trigger, started_at) "
            "values ('19990101T000000000Z-dead', 'events', 'running', 'manual', now())"
        )

    [second] = run_all(project_dir)

    with duckdb.connect(str(path), read_only=True) as connection:
        rows = connection.execute(
            "select run_id, status, error_code from mocra_audit.runs order by run_id"
        ).fetchall()
    assert rows == [
        ("19990101T000000000Z-dead", "abandoned", "RUN_ABANDONED"),
        (first.run_id, "succeeded", None),
        (second.run_id, "succeeded", None),
    ]


def test_second_project_keeps_own_warehouse(tmp_path: Path) -> None:
    roots = []
    for name in ("first", "second"):
        root = tmp_path / name
        (root / "sources").mkdir(parents=True)
        (root / "dbt_project").mkdir()
        make_project(root)
        roots.append(root)

    for root in roots:
        [result] = run_all(root)
        assert result.succeeded, result.error

    for root in roots:
        assert event_count(root) == 2
        path = root / ".mocra" / "warehouse.duckdb"
        with duckdb.connect(str(path), read_only=True) as connection:
            runs = connection.execute("select count(*) from mocra_audit.runs").fetchone()
        assert runs == (1,)


HOLD_WAREHOUSE = """\
import sys, time
from pathlib import Path
from mocra_elt.config.project import Project
from mocra_elt.runtime.locks import warehouse_lock

project = Project.discover(Path(sys.argv[1]))
with warehouse_lock(project, "holder command", wait=0):
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def run_cli(project_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mocra_elt", "--project-dir", str(project_dir), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
