"""Helpers for the quality tests: a project with suite files and a real DuckDB warehouse."""

from __future__ import annotations

import textwrap
from datetime import datetime
from pathlib import Path
from typing import Any

from mocra_elt.config.model import Pipeline
from mocra_elt.config.project import Project
from mocra_elt.load.warehouse import DuckDBWarehouse
from mocra_elt.quality.gates import GateReport, apply_gates
from mocra_elt.quality.suites import load_suites


def make_project(root: Path, suites: dict[str, str]) -> Project:
    """A project folder with expectations/NAME.yml for each suite and a warehouse file."""
    (root / "sources").mkdir(parents=True, exist_ok=True)
    (root / "expectations").mkdir(exist_ok=True)
    for name, text in suites.items():
        write_suite(root, name, text)
    data_dir = root / ".mocra"
    return Project(root=root, data_dir=data_dir, warehouse_path=data_dir / "warehouse.duckdb")


def write_suite(root: Path, name: str, text: str) -> Path:
    path = root / "expectations" / f"{name}.yml"
    path.write_text(textwrap.dedent(text))
    return path


def warehouse(project: Project) -> DuckDBWarehouse:
    return DuckDBWarehouse(project.warehouse_path)


def execute(project: Project, *statements: str) -> None:
    with warehouse(project).connect() as connection:
        for statement in statements:
            connection.execute(statement)


def query(project: Project, sql: str) -> list[tuple[Any, ...]]:
    with warehouse(project).connect() as connection:
        return list(connection.execute(sql).fetchall())


def scalar(project: Project, sql: str) -> Any:
    return query(project, sql)[0][0]


def pipeline_with(quality: dict[str, Any], name: str = "shop") -> Pipeline:
    return Pipeline.model_validate(
        {
            "name": name,
            "source": {"type": "files", "url": "data"},
            "load": {"table": "orders"},
            "quality": quality,
        }
    )


def gate(
    project: Project,
    suites: list[str],
    run_id: str = "run-1",
    now: datetime | None = None,
    **quality: Any,
) -> GateReport:
    """Run apply_gates on the named suites, as the quality stage does."""
    pipeline = pipeline_with({"suites": suites, **quality})
    assert pipeline.quality is not None
    loaded = load_suites(project, pipeline.quality.suite_names, pipeline.name)
    with warehouse(project).connect() as connection:
        return apply_gates(connection, project, pipeline, loaded, run_id, now=now)


def by_rule(report: GateReport) -> dict[str, Any]:
    """Map rule name to its RuleRecord."""
    return {record.result.check.rule: record for record in report.records}
