"""`mocra-elt init`: the scaffolded project runs as it is."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
from click.testing import CliRunner

from mocra_elt.cli.main import cli


def run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MOCRA_")}
    return subprocess.run(
        [sys.executable, "-m", "mocra_elt", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_init_project_runs(tmp_path: Path) -> None:
    created = run_cli(tmp_path, "init", "shop")
    project = tmp_path / "shop"

    assert created.returncode == 0, created.stderr
    assert (project / ".gitignore").is_file()
    assert not list(project.rglob("__init__.py"))

    validated = run_cli(project, "validate")
    assert validated.returncode == 0, validated.stdout + validated.stderr

    first = run_cli(project, "run")
    assert first.returncode == 0, first.stdout + first.stderr
    with duckdb.connect(str(project / ".mocra" / "warehouse.duckdb")) as connection:
        revenue = connection.execute(
            "select order_date, orders, revenue_usd from analytics.mart_daily_revenue "
            "order by order_date"
        ).fetchall()
        loaded = connection.execute("select count(*) from raw_orders.orders").fetchone()
    assert [(str(day), orders, amount) for day, orders, amount in revenue] == [
        ("2024-01-02", 2, 200.5),
        ("2024-01-03", 1, 310.0),
    ]
    assert loaded == (5,)

    second = run_cli(project, "run")
    assert second.returncode == 0, second.stderr
    listed = run_cli(project, "runs", "list")
    assert listed.stdout.count("succeeded") == 2


def test_init_rejects_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("keep me")

    result = CliRunner().invoke(cli, ["init", str(tmp_path / "taken")])

    assert result.exit_code == 2
    assert "already exists and is not empty" in result.output
    assert (tmp_path / "taken" / "notes.txt").read_text() == "keep me"
