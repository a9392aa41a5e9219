"""Console output for people: progress while pipelines run and summary tables after."""

from __future__ import annotations

import os
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from mocra_elt.runtime.runner import RunResult, StageReport

# Piped output (CI logs, `| less`) gets COLUMNS or a wide fixed width, so ids do not wrap.
PIPED_WIDTH = int(os.environ.get("COLUMNS") or 160)
console = Console(highlight=False, width=None if sys.stdout.isatty() else PIPED_WIDTH)
status_console = Console(stderr=True, highlight=False)

STATUS_STYLE = {
    "succeeded": "green",
    "failed": "red",
    "abandoned": "red",
    "skipped": "dim",
    "running": "yellow",
}


class ConsoleObserver:
    """Shows the stage being run as a spinner on a terminal, and one line per stage."""

    def __init__(self) -> None:
        self.status: Any = None
        self.interactive = sys.stderr.isatty()

    def run_started(self, pipeline: str, run_id: str) -> None:
        status_console.print(f"[bold]{pipeline}[/] run {run_id}")

    def stage_started(self, pipeline: str, stage: str) -> None:
        if self.interactive:
            self.status = status_console.status(f"{pipeline}: {stage} ...")
            self.status.start()

    def stage_finished(self, pipeline: str, report: StageReport) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None
        style = STATUS_STYLE.get(report.status, "")
        rows = "" if report.rows_out is None else f", {report.rows_out:,} rows"
        retries = f", {report.attempts - 1} retries" if report.attempts > 1 else ""
        status = f"[{style}]{report.status}[/]"
        status_console.print(
            f"  {report.stage:<9} {status} in {report.seconds:.1f} s{rows}{retries}"
        )

    def run_finished(self, result: RunResult) -> None:
        if result.error and result.error_code == "UPSTREAM_FAILED":
            status_console.print(f"[bold]{result.pipeline}[/] [red]not run[/]: {result.error}")


def summary_table(results: list[RunResult]) -> Table:
    table = Table(title="Runs", title_justify="left")
    for column in ("pipeline", "run_id", "status", "rows loaded", "seconds"):
        table.add_column(column, no_wrap=True)
    table.add_column("error")
    for result in results:
        loaded = next((s.rows_out for s in result.stages if s.stage == "load"), None)
        seconds = sum(stage.seconds for stage in result.stages)
        style = STATUS_STYLE.get(result.status, "")
        table.add_row(
            result.pipeline,
            result.run_id,
            f"[{style}]{result.status}[/]",
            "" if loaded is None else f"{loaded:,}",
            f"{seconds:.1f}",
            _short(result.error or ""),
        )
    return table


def _short(text: str, width: int = 90) -> str:
    first = text.splitlines()[0] if text else ""
    return first if len(first) <= width else first[: width - 3] + "..."


def single_match(
    matches: list[dict[str, Any]], prefix: str, key: str, noun: str, list_command: str
) -> dict[str, Any]:
    """Return the one row whose `key` starts with `prefix`, or raise naming what to do."""
    from mocra_elt.errors import ConfigError

    if not prefix.strip():
        raise ConfigError(
            f"an empty {noun} id matches nothing; give the id or its first characters."
        )
    if not matches:
        raise ConfigError(
            f"{noun} {prefix!r} not found. List them with '{list_command}'.",
            error_code="CONFIG_NOT_FOUND",
        )
    if len(matches) > 1:
        shown = ", ".join(row[key] for row in matches[:5])
        raise ConfigError(f"{noun} prefix {prefix!r} is ambiguous: {shown}. Give more characters.")
    return dict(matches[0])
