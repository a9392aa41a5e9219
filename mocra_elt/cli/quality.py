"""`mocra-elt quality check` and `mocra-elt quality docs`."""

from __future__ import annotations

import json
from typing import Any

import click

from mocra_elt.cli.common import Settings, handle_errors
from mocra_elt.errors import ConfigError, QualityError

STATUS_STYLE = {"passed": "green", "failed": "red", "warned": "yellow", "quarantined": "magenta"}


@click.group()
def quality() -> None:
    """Check data against the suites in expectations/ and build their Data Docs."""


@quality.command("check")
@click.argument("pipelines", nargs=-1)
@click.option(
    "--suite",
    "suite_names",
    multiple=True,
    help="Check this suite (a file stem in expectations/) instead of the pipelines' suites. "
    "Repeatable.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.pass_obj
@handle_errors
def check(
    settings: Settings, pipelines: tuple[str, ...], suite_names: tuple[str, ...], as_json: bool
) -> None:
    """Check the suites of PIPELINES (default: all with quality) against the warehouse as it is.

    A dry run: no rows are quarantined and no results are recorded. Exit code 1
    when a rule with the block policy fails, 2 on a configuration error.
    """
    from mocra_elt.load.warehouse import open_warehouse
    from mocra_elt.quality.gates import decide, evaluate_suites
    from mocra_elt.quality.suites import load_suites

    project = settings.project()
    warehouse = _existing_warehouse(project, open_warehouse)
    blocked = []
    documents = []
    for label, quality_config, suites in _selection(project, pipelines, suite_names, load_suites):
        with warehouse.connect() as connection:
            results = evaluate_suites(connection, project, quality_config, suites)
        records = decide(results)
        blocked += [r for r in records if r.status == "failed" and r.result.check.policy == "block"]
        documents.append({"pipeline": label, "rules": [_record_document(r) for r in records]})
        if not as_json:
            _print_records(label, records)
    if as_json:
        click.echo(json.dumps(documents, indent=2, default=str))
    if blocked:
        raise QualityError(
            f"{len(blocked)} rule(s) with the block policy failed; a run would publish nothing."
        )


def _selection(
    project: Any, pipelines: tuple[str, ...], suite_names: tuple[str, ...], load_suites: Any
) -> list[tuple[str, Any, Any]]:
    """Return (label, pipeline quality settings, suites) groups to check."""
    if suite_names:
        if pipelines:
            raise ConfigError("give either PIPELINES or --suite, not both.")
        return [("(suites)", None, load_suites(project, list(suite_names)))]

    from mocra_elt.config.loader import load_pipelines

    definitions = load_pipelines(project.sources_dir)
    unknown = [name for name in pipelines if name not in definitions]
    if unknown:
        raise ConfigError(
            f"unknown pipeline {', '.join(map(repr, unknown))}; defined: "
            f"{', '.join(sorted(definitions))}.",
            error_code="CONFIG_NOT_FOUND",
        )
    chosen = [definitions[name] for name in pipelines or sorted(definitions)]
    groups = [
        (p.name, p.quality, load_suites(project, p.quality.suite_names, p.name))
        for p in chosen
        if p.quality is not None
    ]
    if not groups:
        raise ConfigError("no selected pipeline defines quality suites; add quality.suites.")
    return groups


def _record_document(record: Any) -> dict[str, Any]:
    result = record.result
    check = result.check
    return {
        "suite": check.suite,
        "relation": record.relation,
        "rule": check.rule,
        "column": check.column_label,
        "policy": check.policy,
        "status": record.status,
        "unexpected_count": result.unexpected_count if check.row_level else None,
        "element_count": result.element_count if check.row_level else None,
        "observed_value": result.observed_value,
        "sample": result.sample,
    }


def _print_records(label: str, records: list[Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    from mocra_elt.cli.console import console

    table = Table(title=f"{label}: dry run, no rows moved", title_justify="left")
    for column in ("suite", "rule", "policy", "status", "unexpected", "observed / sample"):
        table.add_column(column)
    for record in records:
        document = _record_document(record)
        status = record.status
        if status == "quarantined":
            status = f"would quarantine {document['unexpected_count']:,}"
        unexpected = ""
        if document["element_count"] is not None:
            unexpected = f"{document['unexpected_count']:,} / {document['element_count']:,}"
        detail = document["sample"][:5] if document["sample"] else document["observed_value"]
        table.add_row(
            escape(document["suite"]),
            escape(document["rule"]),
            document["policy"],
            f"[{STATUS_STYLE.get(record.status, '')}]{status}[/]",
            unexpected,
            "" if detail in (None, []) else escape(json.dumps(detail, default=str)),
        )
    console.print(table)


@quality.command("docs")
@click.option("--run", "run_id", help="Show only this run's results; a unique prefix works.")
@click.option(
    "--limit",
    default=20,
    show_default=True,
    type=click.IntRange(1),
    help="Newest runs with quality results to show.",
)
@click.pass_obj
@handle_errors
def docs(settings: Settings, run_id: str | None, limit: int) -> None:
    """Build Great Expectations Data Docs (HTML) of the suites and recorded results."""
    from mocra_elt.cli.console import console
    from mocra_elt.load.warehouse import open_warehouse
    from mocra_elt.quality.docs import build_docs, docs_dir, recorded_results
    from mocra_elt.quality.suites import list_suites, load_suite_file

    project = settings.project()
    suites = [load_suite_file(path) for path in list_suites(project).values()]
    results: list[dict[str, Any]] = []
    if project.target != "duckdb" or project.warehouse_path.exists():
        with open_warehouse(project).connect() as connection:
            results = recorded_results(connection, run_id, limit)
    elif run_id is not None:
        raise ConfigError(f"no warehouse at {project.warehouse_path} yet, so no runs are recorded.")
    index = build_docs(project, suites, results, docs_dir(project))
    runs = len({row["run_id"] for row in results})
    console.print(f"Data Docs for {len(suites)} suites and {runs} runs: {index}")


def _existing_warehouse(project: Any, open_warehouse: Any) -> Any:
    if project.target == "duckdb" and not project.warehouse_path.exists():
        raise ConfigError(
            f"no warehouse at {project.warehouse_path} yet, so there is nothing to check. "
            "Load data first with 'mocra-elt run'."
        )
    return open_warehouse(project)
