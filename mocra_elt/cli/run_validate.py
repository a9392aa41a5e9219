"""`mocra-elt run` and `mocra-elt validate`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

from mocra_elt.cli.common import Settings, handle_errors
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
@click.option(
    "--tag",
    "tags",
    multiple=True,
    help="Run only pipelines that carry this tag; repeat for any of several tags.",
)
@click.option(
    "--exclude-tag",
    "exclude_tags",
    multiple=True,
    help="Skip pipelines and sinks that carry this tag; repeatable.",
)
@click.pass_obj
@handle_errors
def run(
    settings: Settings,
    pipelines: tuple[str, ...],
    trigger: str,
    wait: float,
    tags: tuple[str, ...],
    exclude_tags: tuple[str, ...],
) -> None:
    """Run PIPELINES (default: all) in dependency order.

    Exit code 0 when every run succeeds, 1 when one fails, 2 on a configuration error.
    """
    execute_runs(settings.project(), list(pipelines), trigger, wait, tags, exclude_tags)


def execute_runs(
    project: Any,
    pipelines: list[str],
    trigger: str,
    wait: float = 0.0,
    tags: Sequence[str] = (),
    exclude_tags: Sequence[str] = (),
) -> None:
    """Run the named pipelines (all when empty), print a summary, raise RunFailed on failure.

    `tags` keeps the pipelines that carry one of them; `exclude_tags` drops the
    pipelines and the sinks that carry one of them.
    """
    from mocra_elt.cli.console import ConsoleObserver, console, summary_table
    from mocra_elt.config.loader import load_pipelines
    from mocra_elt.load.warehouse import open_warehouse
    from mocra_elt.runtime.runner import run_pipelines
    from mocra_elt.runtime.validation import check_runnable

    definitions = load_pipelines(project.sources_dir)
    if not definitions:
        raise ConfigError(f"no pipeline definitions found in {project.sources_dir}.")
    selected = select_by_tags(definitions, pipelines, tags, exclude_tags)
    definitions = {
        name: pipeline.without_sinks_tagged(exclude_tags) for name, pipeline in definitions.items()
    }
    for name in selected:
        if name in definitions:
            check_runnable(project, definitions[name])
    project.ensure_data_dir()
    warehouse = open_warehouse(project)

    results = run_pipelines(
        project,
        definitions,
        warehouse,
        selected,
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


def select_by_tags(
    definitions: dict[str, Any],
    names: list[str],
    tags: Sequence[str],
    exclude_tags: Sequence[str],
) -> list[str]:
    """Return the pipelines to run: `names` (all when empty) filtered by their tags.

    Raises ConfigError when tags are given and no pipeline is left, so a
    misspelt tag does not pass as a run of nothing.
    """
    selected = names or list(definitions)
    if not tags and not exclude_tags:
        return selected
    required, excluded = set(tags), set(exclude_tags)
    matching = []
    for name in selected:
        if name not in definitions:
            matching.append(name)  # the runner raises the error that names an unknown pipeline
            continue
        pipeline_tags = set(definitions[name].tags)
        if required and required.isdisjoint(pipeline_tags):
            continue
        if excluded.isdisjoint(pipeline_tags):
            matching.append(name)
    if not matching:
        options = [f"--tag {tag}" for tag in tags]
        options += [f"--exclude-tag {tag}" for tag in exclude_tags]
        in_use = sorted({tag for pipeline in definitions.values() for tag in pipeline.tags})
        raise ConfigError(
            f"no pipeline matches {' '.join(options)}. Tags in use: {', '.join(in_use) or 'none'}."
        )
    return matching


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
