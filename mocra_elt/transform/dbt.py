"""Run dbt in-process with the pipeline's selection and the run_id as a var."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from mocra_elt.config.model import Transform
from mocra_elt.config.project import Project
from mocra_elt.errors import ConfigError, TransformError

log = logging.getLogger(__name__)

DBT_TARGETS = {"duckdb": "duckdb", "pg": "pg"}


@dataclass
class DbtResult:
    invocation_id: str | None
    nodes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [node for node in self.nodes if node["status"] in ("error", "fail", "runtime error")]


def dbt_args(project: Project, command: str, *extra: str) -> list[str]:
    return [
        command,
        "--project-dir",
        str(project.dbt_project_dir),
        "--profiles-dir",
        str(project.profiles_dir),
        "--target",
        DBT_TARGETS[project.target],
        "--log-level",
        "warn",
        "--log-level-file",
        "info",
        "--log-path",
        str(project.data_dir / "dbt_logs"),
        "--target-path",
        str(project.data_dir / "dbt_target"),
        *extra,
    ]


def invoke(project: Project, args: list[str]) -> Any:
    from dbt.cli.main import dbtRunner

    try:
        with profile_environment(project):
            return dbtRunner().invoke(args)
    finally:
        if project.target == "duckdb":
            release_duckdb_warehouse()


@contextmanager
def profile_environment(project: Project) -> Iterator[None]:
    """Set the variables profiles.yml reads to this project for one dbt call, then restore them.

    Setting them for the whole process would make the next project opened in the same
    process read the first one's warehouse path.
    """
    from mocra_elt.runtime.environment import temporary_environment

    values = {"MOCRA_WAREHOUSE": str(project.warehouse_path), "MOCRA_TARGET": project.target}
    with temporary_environment(values):
        yield


def release_duckdb_warehouse() -> None:
    """Close the DuckDB database that dbt-duckdb keeps open after an in-process invocation.

    dbt-duckdb 1.11 caches the database in a class attribute and closes it only at process
    exit. Until then the warehouse file stays locked against other processes, and a read-only
    connection to it from this process fails.
    """
    from dbt.adapters.duckdb.connections import DuckDBConnectionManager

    # NOTE: _LOCK and _ENV are private to dbt-duckdb, so recheck them when upgrading it.
    with DuckDBConnectionManager._LOCK:
        environment = DuckDBConnectionManager._ENV
        DuckDBConnectionManager._ENV = None
    if environment is not None:
        environment.close()


def run_build(project: Project, transform: Transform, run_id: str, pipeline: str) -> DbtResult:
    """Run `dbt build` on the selection; raises TransformError when a node fails."""
    variables = json.dumps({"mocra_run_id": run_id, "mocra_pipeline": pipeline})
    args = dbt_args(project, "build", "--select", *transform.select, "--vars", variables)
    if transform.exclude:
        args += ["--exclude", *transform.exclude]
    if transform.full_refresh:
        args.append("--full-refresh")

    outcome = invoke(project, args)
    result = _collect(outcome)
    if outcome.exception is not None:
        raise TransformError(
            f"dbt could not run for pipeline {pipeline!r}: {outcome.exception}",
            pipeline=pipeline,
            stage="transform",
        )
    if result.failed or not outcome.success:
        names = ", ".join(f"{n['name']} ({n['status']}: {n['message']})" for n in result.failed)
        raise TransformError(
            f"dbt build failed for pipeline {pipeline!r}: {names or 'see the dbt log'}. "
            f"The dbt log is in {project.data_dir / 'dbt_logs'}.",
            pipeline=pipeline,
            stage="transform",
            dbt_invocation_id=result.invocation_id,
        )
    return result


def check_selection(project: Project, transform: Transform, pipeline: str, path: Any) -> int:
    """Return how many nodes the selection matches; raises ConfigError when none."""
    # The later --log-level wins over dbt_args' one; "none" keeps ls from printing every node.
    args = dbt_args(project, "ls", "--select", *transform.select, "--output", "name")
    args += ["--log-level", "none"]
    if transform.exclude:
        args += ["--exclude", *transform.exclude]
    outcome = invoke(project, args)
    if outcome.exception is not None:
        raise ConfigError(
            f"dbt could not list the selection {' '.join(transform.select)!r}: {outcome.exception}",
            path=path,
            pipeline=pipeline,
            field="transform.select",
        )
    matched = list(outcome.result or [])
    if not matched:
        raise ConfigError(
            f"pipeline {pipeline!r}: transform.select {' '.join(transform.select)!r} matches no "
            "dbt model, seed or test in dbt_project/. Run 'dbt ls --project-dir dbt_project' to "
            "see what exists.",
            path=path,
            pipeline=pipeline,
            field="transform.select",
            error_code="CONFIG_NOT_FOUND",
        )
    return len(matched)


def _collect(outcome: Any) -> DbtResult:
    result = outcome.result
    invocation_id = None
    nodes: list[dict[str, Any]] = []
    if result is not None and hasattr(result, "results"):
        invocation_id = (
            getattr(result.args, "invocation_id", None) if hasattr(result, "args") else None
        )
        for item in result.results:
            nodes.append(
                {
                    "name": item.node.name,
                    "resource_type": str(item.node.resource_type),
                    "status": str(item.status),
                    "message": item.message,
                    "rows": (item.adapter_response or {}).get("rows_affected"),
                    "seconds": round(item.execution_time, 3),
                }
            )
    if invocation_id is None:
        try:
            from dbt_common.invocation import get_invocation_id

            invocation_id = get_invocation_id()
        except ImportError:  # pragma: no cover - older dbt-common
            invocation_id = None
    return DbtResult(invocation_id=invocation_id, nodes=nodes)
