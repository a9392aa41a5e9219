"""`mocra-elt run` and `mocra-elt validate`."""

from __future__ import annotations

from typing import Any

import click

from mocra_elt.cli.main import Settings, handle_errors
from mocra_elt.errors import ConfigError, RunFailed


@click.command()
@click.argument("pipelines", nargs=-1)
@click.option(
    "--trigger",
    default="manual",
    show_default=True,
    help="Label stored with the run in the audit tables, e.g. manual, schedule or ci.",
)
@click.option(
    "--wait",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    help="Seconds to wait for another run of the same pipeline or table to finish.",
)
@click.pass_obj
@handle_errors
def run(settings: Settings, pipelines: tuple[str, ...], trigger: str, wait: float) -> None:
    """Run PIPELINES (default: all) in dependency order.

    Exit code 0 when every run succeeds, 1 when one fails, 2 on a configuration error.
    """
    execute_runs(settings.project(), list(pipelines), trigger, wait)


def execute_runs(project: Any, pipelines: list[str], trigger: str, wait: float = 0.0) -> None:
    """Run the named pipelines (all when empty), print a summary, raise RunFailed on failure."""
    from mocra_elt.cli.console import ConsoleObserver, console, summary_table
    from mocra_elt.config.loader import load_pipelines
    from mocra_elt.load.warehouse import open_warehouse
    from mocra_elt.runtime.runner import run_pipelines
    from mocra_elt.runtime.validation import check_runnable

    definitions = load_pipelines(project.sources_dir)
    if not definitions:
        raise ConfigError(f"no pipeline definitions found in {project.sources_dir}.")
    for name in pipelines or definitions:
        if name in definitions:
            check_runnable(project, definitions[name])
    project.ensure_data_dir()
    warehouse = open_warehouse(project)

    results = run_pipelines(
        project,
        definitions,
        warehouse,
        pipelines or None,
        trigger=trigger,
        observer=ConsoleObserver(),
        lock_wait=wait,
    )
    console.print(summary_table(results))
    failed = [result for result in results if not result.succeeded]
    for result in failed:
        click.echo(f"Error: pipeline {result.pipeline!r} failed: {result.error}", err=True)
    if failed:
        raise RunFailed(f"{len(failed)} of {len(results)} pipeline runs failed.")


@click.command()
@click.option(
    "--skip-dbt", is_flag=True, help="Do not check transform.select against the dbt project."
)
@click.pass_obj
@handle_errors
def validate(settings: Settings, skip_dbt: bool) -> None:
    """Check every pipeline definition without running anything."""
    from mocra_elt.cli.console import console
    from mocra_elt.config.loader import load_pipelines
    from mocra_elt.runtime.dag import execution_order
    from mocra_elt.runtime.validation import check_runnable, check_transform

    project = settings.project()
    definitions = load_pipelines(project.sources_dir)
    if not definitions:
        raise ConfigError(f"no pipeline definitions found in {project.sources_dir}.")
    order = execution_order(definitions)
    for name in order:
        check_runnable(project, definitions[name])
        if not skip_dbt:
            check_transform(project, definitions[name])
    console.print(f"{len(order)} pipelines are valid: {', '.join(order)}")
