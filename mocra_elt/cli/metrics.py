"""`mocra-elt metrics`: success rate, latency, throughput, retries, dead letters, lag."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from mocra_elt.cli.common import Settings, handle_errors


@click.command()
@click.option("--pipeline", help="Only this pipeline.")
@click.option(
    "--since",
    help="Only runs started within this window, e.g. 24h or 7d. Default: all runs.",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["table", "json", "prometheus"]),
    default="table",
    show_default=True,
    help="table for people, json for scripts, prometheus for the text exposition format.",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to this file (atomically, for a node_exporter textfile collector).",
)
@click.pass_obj
@handle_errors
def metrics(
    settings: Settings,
    pipeline: str | None,
    since: str | None,
    output_format: str,
    output: Path | None,
) -> None:
    """Print metrics per pipeline and per stage, computed from the audit tables."""
    from mocra_elt.audit.metrics import compute_metrics, to_prometheus
    from mocra_elt.audit.store import utcnow
    from mocra_elt.config.model import parse_duration
    from mocra_elt.errors import ConfigError
    from mocra_elt.files import write_atomically
    from mocra_elt.load.warehouse import open_warehouse

    if output is not None and output_format == "table":
        raise ConfigError("--output writes json or prometheus; add --format json or prometheus.")
    project = settings.project()
    window_start = None
    if since is not None:
        try:
            window_start = utcnow() - parse_duration(since)
        except (ValueError, OverflowError) as error:
            raise ConfigError(f"--since: {error}.") from None
    rows = []
    if project.target != "duckdb" or project.warehouse_path.exists():
        rows = compute_metrics(open_warehouse(project), window_start, pipeline)

    if output_format == "prometheus":
        text = to_prometheus(rows).decode()
    elif output_format == "json":
        text = json.dumps([row.to_dict() for row in rows], indent=2, default=str) + "\n"
    else:
        _print_table(rows)
        return
    if output is None:
        click.echo(text, nl=False)
    else:
        try:
            write_atomically(output, text.encode())
        except OSError as error:
            raise ConfigError(f"cannot write {output}: {error.strerror}.") from None


def _print_table(rows: list[Any]) -> None:
    from rich.table import Table

    from mocra_elt.cli.console import console

    if not rows:
        console.print("No runs recorded yet. Start one with 'mocra-elt run'.")
        return
    table = Table()
    columns = ("pipeline", "stage", "runs", "success", "p50 s", "p95 s", "rows/s", "bytes/s")
    for column in (*columns, "retries", "dead letters", "watermark lag"):
        table.add_column(column, no_wrap=True)
    for row in rows:
        rate = row.success_rate
        table.add_row(
            row.pipeline,
            row.stage or "(run)",
            str(row.runs),
            "" if rate is None else f"{rate:.0%}",
            _number(row.p50_seconds, ".2f"),
            _number(row.p95_seconds, ".2f"),
            _number(row.rows_per_second, ",.0f"),
            _number(row.bytes_per_second, ",.0f"),
            str(row.retries),
            str(row.dead_letters),
            _lag(row.watermark_lag_seconds),
        )
    console.print(table)


def _number(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def _lag(seconds: float | None) -> str:
    return "" if seconds is None else str(timedelta(seconds=round(seconds)))
