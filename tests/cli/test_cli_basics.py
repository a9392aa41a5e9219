"""The command line: start-up cost, exit codes and error messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from mocra_elt.cli.main import cli
from tests.conftest import write_pipeline

HEAVY_MODULES = ("dbt", "dlt", "duckdb", "great_expectations", "pandas", "pyarrow", "sqlglot")


def test_help_imports_no_heavy_library() -> None:
    script = (
        "import sys, json\n"
        "from mocra_elt.cli.main import cli\n"
        "try:\n"
        "    cli(['--help'], prog_name='mocra-elt')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(json.dumps(sorted(m.split('.')[0] for m in sys.modules)))\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    loaded = set(json.loads(output.strip().splitlines()[-1]))

    for module in HEAVY_MODULES:
        assert module not in loaded, f"{module} is imported by 'mocra-elt --help'"


def test_validate_reports_invalid_file_with_exit_2(project_dir: Path) -> None:
    write_pipeline(
        project_dir,
        "orders",
        """\
        source: {type: files, url: data}
        load: {table: orders, write_disposition: upsert}
        """,
    )
    result = CliRunner().invoke(cli, ["--project-dir", str(project_dir), "validate", "--skip-dbt"])

    assert result.exit_code == 2
    assert "orders.yml" in result.output
    assert "load.write_disposition" in result.output
    assert "allowed: 'append', 'replace' or 'merge'" in result.output


def test_validate_accepts_valid_files(project_dir: Path) -> None:
    write_pipeline(
        project_dir, "orders", "source: {type: files, url: data}\nload: {table: orders}\n"
    )
    result = CliRunner().invoke(cli, ["--project-dir", str(project_dir), "validate", "--skip-dbt"])

    assert result.exit_code == 0, result.output
    assert "1 pipelines are valid: orders" in result.output


def test_validate_rejects_unsupported_sink(project_dir: Path) -> None:
    write_pipeline(
        project_dir,
        "orders",
        """\
        source: {type: files, url: data}
        load: {table: orders}
        sinks:
          - {type: carrier_pigeon, model: orders}
        """,
    )
    result = CliRunner().invoke(cli, ["--project-dir", str(project_dir), "validate", "--skip-dbt"])

    assert result.exit_code == 2
    assert "sinks[0].type 'carrier_pigeon' is not a supported sink" in result.output


def test_run_unknown_pipeline_exit_2(project_dir: Path) -> None:
    write_pipeline(
        project_dir, "orders", "source: {type: files, url: data}\nload: {table: orders}\n"
    )
    result = CliRunner().invoke(cli, ["--project-dir", str(project_dir), "run", "ordrs"])

    assert result.exit_code == 2
    assert "unknown pipeline 'ordrs'" in result.output
    assert "Defined pipelines: orders" in result.output


def test_missing_project_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--project-dir", str(tmp_path), "validate"])

    assert result.exit_code == 2
    assert "has no sources/ folder" in result.output
    assert "mocra-elt init" in result.output


def test_runs_list_before_any_run(project_dir: Path) -> None:
    result = CliRunner().invoke(cli, ["--project-dir", str(project_dir), "runs", "list"])

    assert result.exit_code == 0
    assert "No runs recorded yet" in result.output


def test_runs_show_unknown_run_exit_2(project_dir: Path) -> None:
    result = CliRunner().invoke(cli, ["--project-dir", str(project_dir), "runs", "show", "nope"])

    assert result.exit_code == 2
    assert "run 'nope' not found" in result.output


def test_quality_on_pg_target_rejected(project_dir: Path) -> None:
    (project_dir / "expectations").mkdir()
    (project_dir / "expectations" / "orders.yml").write_text(
        "table: raw_orders.orders\nrules:\n  - not_null: id\n"
    )
    write_pipeline(
        project_dir,
        "orders",
        "source: {type: files, url: data}\nload: {table: orders}\nquality: {suites: [orders]}\n",
    )
    result = CliRunner().invoke(
        cli, ["--project-dir", str(project_dir), "--target", "pg", "validate", "--skip-dbt"]
    )

    assert result.exit_code == 2
    assert "run on the duckdb target only" in result.output


def test_run_id_prefix_is_literal(project_dir: Path) -> None:
    (project_dir / "data").mkdir()
    (project_dir / "data" / "a.csv").write_text("id\n1\n")
    write_pipeline(
        project_dir, "orders", "source: {type: files, url: data}\nload: {table: orders}\n"
    )
    assert CliRunner().invoke(cli, ["--project-dir", str(project_dir), "run"]).exit_code == 0

    for pattern in ("%", "_", ""):
        result = CliRunner().invoke(
            cli, ["--project-dir", str(project_dir), "runs", "show", pattern]
        )
        assert result.exit_code == 2, pattern


def test_metrics_since_overflow_exit_2(project_dir: Path) -> None:
    result = CliRunner().invoke(
        cli, ["--project-dir", str(project_dir), "metrics", "--since", "99999999999d"]
    )

    assert result.exit_code == 2
    assert "--since" in result.output
