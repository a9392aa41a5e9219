"""`mocra-elt metrics` agrees with the audit tables."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from mocra_elt.audit.metrics import compute_metrics, percentile
from mocra_elt.cli.main import cli
from mocra_elt.config.loader import load_pipelines
from mocra_elt.config.project import Project
from mocra_elt.load.warehouse import open_warehouse
from mocra_elt.runtime.environment import configure_environment
from mocra_elt.runtime.runner import run_pipelines
from tests.conftest import write_pipeline

PIPELINE = """\
    source:
      type: files
      url: data
      glob: "*.{csv,parquet}"
    load:
      table: events
      write_disposition: merge
      primary_key: id
      incremental: {cursor: happened_at}
      columns: {happened_at: timestamp}
    """


def run_once(project_dir: Path) -> None:
    project = Project.discover(project_dir)
    configure_environment(project)
    run_pipelines(project, load_pipelines(project.sources_dir), open_warehouse(project))


def audit_query(project_dir: Path, sql: str) -> list[tuple[object, ...]]:
    path = project_dir / ".mocra" / "warehouse.duckdb"
    with duckdb.connect(str(path), read_only=True) as connection:
        return connection.execute(sql).fetchall()


@pytest.fixture
def history(project_dir: Path) -> Path:
    """Three runs of one pipeline: two succeed, the third fails on a corrupt file."""
    data = project_dir / "data"
    data.mkdir()
    data.joinpath("a.csv").write_text(
        "id,happened_at\n1,2024-01-01T00:00:00Z\n2,2024-01-02T00:00:00Z\n"
    )
    write_pipeline(project_dir, "events", PIPELINE)
    run_once(project_dir)
    data.joinpath("b.csv").write_text("id,happened_at\n3,2024-01-03T00:00:00Z\n")
    run_once(project_dir)
    data.joinpath("c.parquet").write_bytes(b"PAR1 not a parquet file")
    run_once(project_dir)
    return project_dir


def test_metrics_match_audit_tables(history: Path) -> None:
    project = Project.discover(history)
    rows = compute_metrics(open_warehouse(project))
    by_stage = {row.stage: row for row in rows}
    durations = audit_query(
        history,
        "select epoch(ended_at - started_at) from mocra_audit.runs order by run_id",
    )
    loaded = audit_query(
        history,
        "select sum(rows_out), sum(duration_s) from mocra_audit.stage_runs "
        "where stage = 'load' and status = 'succeeded'",
    )[0]

    run = by_stage[None]
    assert (run.runs, run.succeeded, run.failed) == (3, 2, 1)
    assert run.success_rate == pytest.approx(2 / 3)
    assert run.p50_seconds == pytest.approx(percentile([d[0] for d in durations], 0.5))
    assert run.rows == loaded[0] == 3
    assert run.rows_per_second == pytest.approx(loaded[0] / loaded[1])
    assert by_stage["extract"].failed == 1
    assert by_stage["load"].runs == 2
    assert "transform" not in by_stage


def test_watermark_lag_uses_newest_watermark(history: Path) -> None:
    project = Project.discover(history)
    [run] = [row for row in compute_metrics(open_warehouse(project)) if row.stage is None]
    newest_file_mtime = audit_query(
        history,
        "select max(value::timestamp) from mocra_audit.watermarks where value_type = 'timestamp'",
    )[0][0]

    assert run.watermark_lag_seconds is not None
    assert run.watermark_lag_seconds > 0
    assert newest_file_mtime is not None


def test_prometheus_output_parses(history: Path) -> None:
    result = CliRunner().invoke(
        cli, ["--project-dir", str(history), "metrics", "--format", "prometheus"]
    )
    families = {family.name: family for family in text_string_to_metric_families(result.output)}

    assert result.exit_code == 0, result.output
    samples = {
        (sample.labels["pipeline"], sample.labels["stage"]): sample.value
        for sample in families["mocra_failed"].samples
    }
    assert samples[("events", "all")] == 1.0
    assert samples[("events", "extract")] == 1.0


def test_prometheus_textfile_written(history: Path, tmp_path: Path) -> None:
    target = tmp_path / "collector" / "mocra.prom"
    result = CliRunner().invoke(
        cli,
        [
            "--project-dir",
            str(history),
            "metrics",
            "--format",
            "prometheus",
            "--output",
            str(target),
        ],
    )

    assert result.exit_code == 0, result.output
    assert 'mocra_runs{pipeline="events",stage="all"} 3.0' in target.read_text()


def test_metrics_before_any_run(project_dir: Path) -> None:
    result = CliRunner().invoke(cli, ["--project-dir", str(project_dir), "metrics"])

    assert result.exit_code == 0
    assert "No runs recorded yet" in result.output


def test_percentile_interpolates() -> None:
    assert percentile([], 0.5) is None
    assert percentile([4.0], 0.95) == 4.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([0.0, 10.0], 0.95) == pytest.approx(9.5)
