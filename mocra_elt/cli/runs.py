"""`mocra-elt runs list` and `mocra-elt runs show RUN_ID`."""

from __future__ import annotations

import json
from typing import Any

import click

from mocra_elt.cli.common import Settings, handle_errors
from mocra_elt.errors import ConfigError


@click.group()
def runs() -> None:
    """Inspect past runs from the audit tables."""


@runs.command("list")
@click.option("--pipeline", help="Only runs of this pipeline.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1), help="Rows shown.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
@handle_errors
def list_runs(settings: Settings, pipeline: str | None, limit: int, as_json: bool) -> None:
    """List the newest runs, newest first."""
    from rich.table import Table

    from mocra_elt.cli.console import STATUS_STYLE, console

    audit = _audit(settings)
    rows = audit.list_runs(pipeline, limit) if audit is not None else []
    if as_json:
        click.echo(json.dumps(rows, default=str, indent=2))
        return
    if not rows:
        if pipeline is not None:
            console.print(f"No runs of pipeline {pipeline!r} are recorded.")
        else:
            console.print("No runs recorded yet. Start one with 'mocra-elt run'.")
        return
    table = Table()
    for column in (
        "run_id",
        "pipeline",
        "status",
        "trigger",
        "started_at",
        "seconds",
        "error_code",
    ):
        table.add_column(column)
    for row in rows:
        seconds = ""
        if row["ended_at"] is not None:
            seconds = f"{(row['ended_at'] - row['started_at']).total_seconds():.1f}"
        style = STATUS_STYLE.get(row["status"], "")
        table.add_row(
            row["run_id"],
            row["pipeline"],
            f"[{style}]{row['status']}[/]",
            row["trigger"],
            f"{row['started_at']:%Y-%m-%d %H:%M:%S}",
            seconds,
            row["error_code"] or "",
        )
    console.print(table)


@runs.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.pass_obj
@handle_errors
def show_run(settings: Settings, run_id: str, as_json: bool) -> None:
    """Show one run with its stages. RUN_ID may be a unique prefix."""
    from rich.table import Table

    from mocra_elt.cli.console import STATUS_STYLE, console

    audit = _audit(settings)
    if audit is None:
        raise ConfigError(
            f"run {run_id!r} not found: no runs are recorded yet. Start one with 'mocra-elt run'.",
            error_code="CONFIG_NOT_FOUND",
        )
    run = _find_run(audit, run_id)
    stages = audit.stage_runs(run["run_id"])
    watermarks = audit.watermarks_of_run(run["run_id"])
    quality, letters = _quality_and_letters(settings, audit, run["run_id"])
    if as_json:
        document = {
            "run": run,
            "stages": stages,
            "watermarks": watermarks,
            "quality_results": quality,
            "dead_letters": letters,
        }
        click.echo(json.dumps(document, default=str, indent=2))
        return

    style = STATUS_STYLE.get(run["status"], "")
    console.print(f"[bold]{run['pipeline']}[/] run {run['run_id']}: [{style}]{run['status']}[/]")
    console.print(
        f"  trigger {run['trigger']}, target {run['target']}, started {run['started_at']}"
    )
    if run["error"]:
        console.print(f"  error {run['error_code']}: {run['error']}")
    table = Table()
    for column in ("stage", "status", "attempts", "rows in", "rows out", "bytes", "seconds", "ids"):
        table.add_column(column)
    for stage in stages:
        ids = " ".join(
            f"{key}={stage[column]}"
            for key, column in (("dlt_load", "dlt_load_id"), ("dbt", "dbt_invocation_id"))
            if stage[column]
        )
        table.add_row(
            stage["stage"],
            f"[{STATUS_STYLE.get(stage['status'], '')}]{stage['status']}[/]",
            str(stage["attempts"] or 0),
            _number(stage["rows_in"]),
            _number(stage["rows_out"]),
            _number(stage["bytes"]),
            "" if stage["duration_s"] is None else f"{stage['duration_s']:.2f}",
            ids,
        )
    console.print(table)
    _print_details(console, stages, watermarks)
    _print_quality(console, quality)
    if letters:
        console.print(
            f"  dead letters: {len(letters)} (see 'mocra-elt dlq list --run {run['run_id']}')"
        )
        for letter in letters[:5]:
            console.print(
                f"    {letter['id']} {letter['stage']} {letter['error_code']} "
                f"{letter['source_ref'] or ''} [{letter['status']}]",
                markup=False,
            )


def _quality_and_letters(
    settings: Settings, audit: Any, run_id: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from mocra_elt.audit.dead_letters import DeadLetterStore
    from mocra_elt.quality.results import results_of_run

    project = settings.project()
    letters = DeadLetterStore(audit.warehouse, project.data_dir).list_letters(run_id=run_id)
    return results_of_run(audit.warehouse, run_id), letters


def _print_quality(console: Any, results: list[dict[str, Any]]) -> None:
    if not results:
        return
    counts: dict[str, int] = {}
    for result in results:
        counts[result["status"]] = counts.get(result["status"], 0) + 1
    summary = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
    console.print(f"  quality: {summary}")
    for result in results:
        if result["status"] == "passed":
            continue
        console.print(
            f"    {result['suite']} {result['rule']} {result['column_name'] or ''}: "
            f"{result['status']} ({result['unexpected_count']} unexpected, policy "
            f"{result['policy']})",
            markup=False,
        )


def _print_details(console: Any, stages: list[dict[str, Any]], watermarks: list[Any]) -> None:
    for stage in stages:
        details = json.loads(stage["details"]) if stage["details"] else {}
        if stage["stage"] == "extract" and details.get("watermarks_before"):
            console.print(f"  watermarks before: {details['watermarks_before']}")
        if stage["stage"] == "transform" and details.get("nodes"):
            console.print(f"  dbt: {_summarize_nodes(details['nodes'])}")
        if stage["stage"] == "publish" and details.get("sinks"):
            for sink, sink_details in details["sinks"].items():
                console.print(
                    f"  sink {sink}: {json.dumps(sink_details, default=str)}", markup=False
                )
        if stage["error"]:
            console.print(f"  {stage['stage']} error {stage['error_code']}: {stage['error']}")
    for mark in watermarks:
        console.print(f"  watermark after: {mark['cursor_name']} = {mark['value']}")


def _summarize_nodes(nodes: list[dict[str, Any]]) -> str:
    """Name every model, seed and snapshot built, and count tests by status."""
    built = [
        f"{node['name']} ({node['status']})"
        for node in nodes
        if node["resource_type"] in ("model", "seed", "snapshot")
    ]
    tests: dict[str, int] = {}
    for node in nodes:
        if node["resource_type"] in ("test", "unit_test"):
            tests[node["status"]] = tests.get(node["status"], 0) + 1
    counts = ", ".join(f"{count} {status}" for status, count in sorted(tests.items()))
    failed = [n["name"] for n in nodes if n["status"] in ("fail", "error", "warn")]
    summary = f"built {', '.join(built) or 'nothing'}; tests: {counts or 'none'}"
    return summary + (f"; not passing: {', '.join(failed)}" if failed else "")


def _audit(settings: Settings) -> Any:
    from mocra_elt.audit.store import AuditStore
    from mocra_elt.load.warehouse import open_warehouse

    project = settings.project()
    if project.target == "duckdb" and not project.warehouse_path.exists():
        return None
    return AuditStore(open_warehouse(project))


def _find_run(audit: Any, run_id: str) -> dict[str, Any]:
    from mocra_elt.cli.console import single_match

    return single_match(audit.find_runs(run_id), run_id, "run_id", "run", "mocra-elt runs list")


def _number(value: Any) -> str:
    return "" if value is None else f"{value:,}"
