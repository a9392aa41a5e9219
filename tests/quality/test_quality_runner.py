"""The quality stage inside real runs: CSV files loaded, dbt models built, gates applied."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from quality_helpers import write_suite

from mocra_elt.audit.store import AuditStore
from mocra_elt.config.loader import load_pipelines
from mocra_elt.config.project import Project
from mocra_elt.load.warehouse import open_warehouse
from mocra_elt.quality.gates import run_quality_stage, run_source_contracts
from mocra_elt.quality.results import results_of_run
from mocra_elt.runtime.environment import configure_environment
from mocra_elt.runtime.runner import PipelineRun, RunResult, run_pipelines
from tests.conftest import write_pipeline

ORDERS_CSV = """\
id,origin,amount
1,EWR,10.5
2,JFK,20.0
3,XXX,30.0
4,LGA,
5,EWR,-4.0
6,JFK,60.0
"""
# Rows 3 (origin), 4 (NULL amount) and 5 (negative amount) fail.
CONTRACT = """\
table: raw_orders.orders
policy: quarantine
rules:
  - not_null: amount
  - in_set: origin
    values: [EWR, JFK, LGA]
  - between: amount
    min: 0
"""


def orders_project(project_dir: Path, pipeline_extra: str = "", contract: str = CONTRACT) -> None:
    (project_dir / "data").mkdir()
    (project_dir / "data" / "orders.csv").write_text(ORDERS_CSV)
    (project_dir / "expectations").mkdir(exist_ok=True)
    write_suite(project_dir, "orders_contract", contract)
    base = """\
        source:
          type: files
          url: data
          glob: "*.csv"
        load:
          table: orders
        """
    write_pipeline(project_dir, "orders", textwrap.dedent(base) + textwrap.dedent(pipeline_extra))


def run_once(project_dir: Path) -> tuple[RunResult, Project]:
    project = Project.discover(project_dir)
    configure_environment(project)
    results = run_pipelines(project, load_pipelines(project.sources_dir), open_warehouse(project))
    assert len(results) == 1
    return results[0], project


def query(project: Project, sql: str) -> list[tuple[Any, ...]]:
    with open_warehouse(project).connect() as connection:
        return list(connection.execute(sql).fetchall())


def stage(project: Project, run_id: str, name: str) -> dict[str, Any]:
    stages = AuditStore(open_warehouse(project)).stage_runs(run_id)
    return next(row for row in stages if row["stage"] == name)


def test_run_quarantines_raw_rows(project_dir: Path) -> None:
    orders_project(project_dir, "quality:\n  suites: [orders_contract]\n")

    result, project = run_once(project_dir)

    assert result.succeeded, result.error
    kept = query(project, "select id from raw_orders.orders order by id")
    moved = query(project, "select id, _rule from raw_orders.orders__quarantine order by id")
    assert [row[0] for row in kept] == [1, 2, 6]
    assert moved == [(3, "in_set(origin)"), (4, "not_null(amount)"), (5, "between(amount)")]
    quality = stage(project, result.run_id, "quality")
    assert (quality["status"], quality["rows_in"], quality["rows_out"]) == ("succeeded", 6, 3)
    assert json.loads(quality["details"])["rows_quarantined"] == {"raw_orders.orders": 3}


def test_run_records_results(project_dir: Path) -> None:
    orders_project(project_dir, "quality:\n  suites: [orders_contract]\n")

    result, project = run_once(project_dir)

    rows = results_of_run(open_warehouse(project), result.run_id)
    assert [(row["rule"], row["status"], row["unexpected_count"]) for row in rows] == [
        ("not_null(amount)", "quarantined", 1),
        ("in_set(origin)", "quarantined", 1),
        ("between(amount)", "quarantined", 1),
    ]
    assert {row["pipeline"] for row in rows} == {"orders"}
    assert {row["relation"] for row in rows} == {"raw_orders.orders"}


def test_run_blocked_fails_and_skips_publish(project_dir: Path) -> None:
    orders_project(project_dir, "quality:\n  suites: [orders_contract]\n  policy: block\n")
    write_suite(project_dir, "orders_contract", CONTRACT.replace("policy: quarantine\n", ""))

    result, project = run_once(project_dir)

    assert not result.succeeded
    assert result.error_code == "QUALITY_BLOCKED"
    assert "rule 'in_set(origin)' on raw_orders.orders" in str(result.error)
    statuses = {report.stage: report.status for report in result.stages}
    assert statuses["quality"] == "failed"
    assert statuses["publish"] == "skipped"
    assert query(project, "select count(*) from raw_orders.orders") == [(6,)]


def test_run_warn_goes_on(project_dir: Path) -> None:
    orders_project(project_dir, "quality:\n  suites: [{name: orders_contract, policy: warn}]\n")
    write_suite(project_dir, "orders_contract", CONTRACT.replace("policy: quarantine\n", ""))

    result, project = run_once(project_dir)

    assert result.succeeded, result.error
    rows = results_of_run(open_warehouse(project), result.run_id)
    assert {row["status"] for row in rows} == {"warned"}
    assert query(project, "select count(*) from raw_orders.orders") == [(6,)]


def test_run_unknown_suite_fails(project_dir: Path) -> None:
    orders_project(project_dir, "quality:\n  suites: [no_such_suite]\n")

    result, _ = run_once(project_dir)

    assert not result.succeeded
    assert result.error_code == "CONFIG_NOT_FOUND"
    assert "unknown quality suite 'no_such_suite'" in str(result.error)


def test_run_quarantines_dbt_model(project_dir: Path) -> None:
    models = project_dir / "dbt_project" / "models"
    (models / "orders_by_origin.sql").write_text(
        "{{ config(materialized='table') }}\n"
        "select id, origin, amount, amount * 2 as doubled from raw_orders.orders\n"
    )
    orders_project(
        project_dir,
        """\
        transform:
          select: [orders_by_origin]
        quality:
          suites: [orders_model]
        """,
    )
    write_suite(
        project_dir,
        "orders_model",
        """\
        model: orders_by_origin
        policy: quarantine
        rules:
          - not_null: doubled
          - in_set: origin
            values: [EWR, JFK, LGA]
          - row_count:
            min: 1
        """,
    )

    result, project = run_once(project_dir)

    assert result.succeeded, result.error
    kept = query(project, "select id from analytics.orders_by_origin order by id")
    moved = query(project, "select id from analytics.orders_by_origin__quarantine order by id")
    assert [row[0] for row in kept] == [1, 2, 5, 6]
    assert [row[0] for row in moved] == [3, 4]
    assert query(project, "select count(*) from raw_orders.orders") == [(6,)]


def test_source_contracts_run_once_per_run(project_dir: Path) -> None:
    orders_project(project_dir, "quality:\n  suites: [orders_contract]\n")
    project = Project.discover(project_dir)
    configure_environment(project)
    warehouse = open_warehouse(project)
    with warehouse.connect() as connection:
        connection.execute("create schema raw_orders")
        connection.execute(
            "create table raw_orders.orders as select * from "
            "(values (1, 'EWR', 1.0), (2, 'XXX', 2.0)) v(id, origin, amount)"
        )
    audit = AuditStore(warehouse)
    audit.ensure_schema()
    run = PipelineRun(project, load_pipelines(project.sources_dir)["orders"], warehouse, audit)

    report = run_source_contracts(run)
    outcome = run_quality_stage(run)

    assert report is not None
    assert report.moved == {"raw_orders.orders": 1}
    assert (outcome.rows_in, outcome.rows_out) == (0, 0)
    assert len(results_of_run(warehouse, run.run_id)) == 3
