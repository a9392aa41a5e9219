"""`mocra-elt quality check` and `mocra-elt quality docs` on a real warehouse file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from quality_helpers import execute, gate, make_project, query, write_suite

from mocra_elt.cli.main import cli
from mocra_elt.cli.quality import quality
from mocra_elt.config.project import Project
from tests.conftest import write_pipeline

if "quality" not in cli.commands:
    cli.add_command(quality)

SUITE = """\
model: orders
policy: quarantine
rules:
  - not_null: carrier
  - row_count:
    min: 1
"""


@pytest.fixture
def project(tmp_path: Path) -> Project:
    project = make_project(tmp_path, {"orders": SUITE})
    execute(
        project,
        "create schema analytics",
        "create table analytics.orders as "
        "select * from (values (1, 'AA'), (2, null)) v(id, carrier)",
    )
    write_pipeline(
        project.root,
        "shop",
        """\
        source: {type: files, url: data}
        load: {table: orders}
        quality:
          suites: [orders]
        """,
    )
    return project


def invoke(project: Project, *arguments: str) -> Result:
    environment = {"MOCRA_DATA_DIR": str(project.data_dir)}
    return CliRunner().invoke(
        cli, ["--project-dir", str(project.root), "quality", *arguments], env=environment
    )


def test_check_is_a_dry_run(project: Project) -> None:
    result = invoke(project, "check")

    assert result.exit_code == 0, result.output
    assert "not_null(carrier)" in result.output
    assert "would" in result.output
    assert "[null]" in result.output
    assert query(project, "select count(*) from analytics.orders") == [(2,)]


def test_check_exits_1_when_block_fails(project: Project) -> None:
    write_suite(project.root, "orders", SUITE.replace("quarantine", "block"))

    result = invoke(project, "check", "shop")

    assert result.exit_code == 1
    assert "not_null(carrier)" in result.output
    assert "1 rule(s) with the block policy failed" in result.output


def test_check_json_lists_rules(project: Project) -> None:
    result = invoke(project, "check", "--suite", "orders", "--json")

    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    rules = {rule["rule"]: rule for rule in document[0]["rules"]}
    assert rules["not_null(carrier)"]["status"] == "quarantined"
    assert rules["not_null(carrier)"]["unexpected_count"] == 1
    assert rules["row_count"]["observed_value"] == 2


def test_check_invalid_suite_exits_2(project: Project) -> None:
    write_suite(project.root, "orders", "model: orders\nrules:\n  - between: id\n    mn: 1\n")

    result = invoke(project, "check")

    assert result.exit_code == 2
    assert "orders.yml" in result.output
    assert "rules[0] (between) mn: unknown field" in result.output


def test_check_unknown_pipeline_exits_2(project: Project) -> None:
    result = invoke(project, "check", "nope")

    assert result.exit_code == 2
    assert "unknown pipeline 'nope'" in result.output


def test_docs_build_suite_and_run_pages(project: Project) -> None:
    gate(project, ["orders"], run_id="20240101T000000000Z-abcdef01")

    result = invoke(project, "docs")

    assert result.exit_code == 0, result.output
    site = project.data_dir / "quality_docs"
    assert (site / "index.html").is_file()
    assert (site / "expectations" / "orders.html").is_file()
    pages = list((site / "validations" / "orders").rglob("*.html"))
    assert len(pages) == 1
    assert "20240101T000000000Z-abcdef01" in str(pages[0])
    assert "carrier" in pages[0].read_text()
    assert "Data Docs for 1 suites and 1 runs" in result.output


def test_docs_unknown_run_exits_2(project: Project) -> None:
    gate(project, ["orders"], run_id="run-1")

    result = invoke(project, "docs", "--run", "zzz")

    assert result.exit_code == 2
    assert "no quality results recorded for run 'zzz'" in result.output
