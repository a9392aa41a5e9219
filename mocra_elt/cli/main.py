"""The `mocra-elt` command line.

Commands stay thin: they parse options, call the library and render results.
Heavy libraries (dbt, dlt, duckdb, Great Expectations) are imported inside the
commands that need them, so `mocra-elt --help` starts fast.
"""

from __future__ import annotations

from pathlib import Path

import click

from mocra_elt import __version__
from mocra_elt.cli.common import EXIT_FAILED, EXIT_USAGE, Settings, handle_errors

__all__ = ["EXIT_FAILED", "EXIT_USAGE", "Settings", "cli", "handle_errors", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mocra-elt")
@click.option(
    "--project-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="MOCRA_PROJECT_DIR",
    help="Project folder (with sources/ and dbt_project/). Default: the nearest parent of the "
    "current folder that has both.",
)
@click.option(
    "--target",
    type=click.Choice(["duckdb", "pg"]),
    envvar="MOCRA_TARGET",
    help="Warehouse to use. Default: duckdb, a file under the data folder.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="warning",
    show_default=True,
    help="Lowest level of log records written to stderr.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Log record format: text lines or one JSON object per line.",
)
@click.option("--debug", is_flag=True, help="Show Python tracebacks for errors.")
@click.pass_context
def cli(
    context: click.Context,
    project_dir: Path | None,
    target: str | None,
    log_level: str,
    log_format: str,
    debug: bool,
) -> None:
    """mocra-elt: declarative ELT pipelines on dlt, dbt and DuckDB."""
    from mocra_elt.runtime.logs import configure_logging

    configure_logging("debug" if debug else log_level, log_format)
    context.obj = Settings(project_dir, target, debug)


def register_commands() -> None:
    from mocra_elt.cli import (
        demo,
        demo_run,
        dlq,
        init,
        lineage,
        metrics,
        quality,
        run_validate,
        runs,
    )

    demo.demo.add_command(demo_run.run_reference)

    cli.add_command(run_validate.run)
    cli.add_command(run_validate.validate)
    cli.add_command(runs.runs)
    cli.add_command(init.init)
    cli.add_command(metrics.metrics)
    cli.add_command(dlq.dlq)
    cli.add_command(quality.quality)
    cli.add_command(lineage.lineage)
    cli.add_command(demo.demo)


register_commands()


def main() -> None:
    cli(prog_name="mocra-elt")
