"""`mocra-elt dlq`: list, show, replay and discard dead letters."""

from __future__ import annotations

import json
from typing import Any

import click

from mocra_elt.cli.common import Settings, handle_errors
from mocra_elt.errors import ConfigError, RunFailed

PREVIEW_LINES = 40
SHOWN_FIELDS = (
    "id", "pipeline_id", "stage", "status", "run_id", "error_code", "source_ref", "record_key",
    "attempts", "payload_ref", "replay_run_id", "created_at",
)  # fmt: skip


@click.group()
def dlq() -> None:
    """Inspect, replay and discard dead letters: failed records and batches with their payloads."""


@dlq.command("list")
@click.option("--pipeline", help="Only letters of this pipeline.")
@click.option(
    "--stage",
    type=click.Choice(["extract", "load", "transform", "quality", "publish"]),
    help="Only letters of this stage.",
)
@click.option("--run", "run_id", help="Only letters of this run.")
@click.option(
    "--status",
    type=click.Choice(["open", "replayed", "discarded", "all"]),
    default="open",
    show_default=True,
    help="Only letters with this status.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
@handle_errors
def list_letters(
    settings: Settings,
    pipeline: str | None,
    stage: str | None,
    run_id: str | None,
    status: str,
    as_json: bool,
) -> None:
    """List dead letters, oldest first."""
    from rich.table import Table

    from mocra_elt.cli.console import console

    store = _store(settings)
    letters = store.list_letters(
        pipeline=pipeline, stage=stage, run_id=run_id, status=None if status == "all" else status
    )
    if as_json:
        click.echo(json.dumps(letters, indent=2, default=str))
        return
    if not letters:
        console.print("No dead letters match.")
        return
    table = Table()
    for column in (
        "id",
        "pipeline",
        "stage",
        "status",
        "attempts",
        "error_code",
        "source",
        "run_id",
    ):
        table.add_column(column, no_wrap=True)
    table.add_column("error")
    for letter in letters:
        table.add_row(
            letter["id"], letter["pipeline_id"], letter["stage"], letter["status"],
            str(letter["attempts"]), letter["error_code"], letter["source_ref"] or "",
            letter["run_id"], _first_line(letter["error"]),
        )  # fmt: skip
    console.print(table)


@dlq.command("show")
@click.argument("letter_id")
@click.pass_obj
@handle_errors
def show_letter(settings: Settings, letter_id: str) -> None:
    """Show one letter: its error and a preview of its payload. LETTER_ID may be a prefix."""
    from mocra_elt.cli.console import console

    store = _store(settings)
    letter = _find(store, letter_id)
    for key in SHOWN_FIELDS:
        if letter[key] is not None:
            console.print(f"{key}: {letter[key]}", markup=False)
    console.print(f"error: {letter['error']}", markup=False)
    console.print("payload:", markup=False)
    for line in payload_preview(store, letter["payload_ref"]):
        click.echo(f"  {line}")


@dlq.command("replay")
@click.argument("letter_ids", nargs=-1)
@click.option("--run", "run_id", help="Replay every open letter of this run.")
@click.option("--pipeline", help="Replay every open letter of this pipeline.")
@click.pass_obj
@handle_errors
def replay(
    settings: Settings, letter_ids: tuple[str, ...], run_id: str | None, pipeline: str | None
) -> None:
    """Feed open letters through their failed stage and onward, in new linked runs."""
    from mocra_elt.cli.console import ConsoleObserver, console
    from mocra_elt.config.loader import load_pipelines
    from mocra_elt.load.warehouse import open_warehouse
    from mocra_elt.runtime.replay import replay_letters

    if bool(letter_ids) + (run_id is not None) + (pipeline is not None) != 1:
        raise click.UsageError("Give letter ids, or --run, or --pipeline (exactly one of them).")
    project = settings.project()
    definitions = load_pipelines(project.sources_dir)
    if pipeline is not None and pipeline not in definitions:
        raise ConfigError(
            f"unknown pipeline {pipeline!r}. Defined pipelines: {', '.join(sorted(definitions))}.",
            error_code="CONFIG_NOT_FOUND",
        )
    store = _store(settings)
    if run_id is not None and not store.list_letters(run_id=run_id):
        raise ConfigError(
            f"run {run_id!r} has no dead letters. List letters with 'mocra-elt dlq list'.",
            error_code="CONFIG_NOT_FOUND",
        )
    if letter_ids:
        letters = [_find(store, letter) for letter in letter_ids]
    else:
        letters = store.list_letters(pipeline=pipeline, run_id=run_id, status="open")
    if not letters:
        console.print("No open dead letters to replay.")
        return

    results = replay_letters(
        project, definitions, open_warehouse(project), letters,
        ConsoleObserver(),
    )  # fmt: skip
    for result in results:
        console.print(
            f"replay run {result.run.run_id} ({result.run.pipeline}): {result.run.status}; "
            f"{len(result.replayed)} of {len(result.letters)} letters replayed"
        )
    failed = [result for result in results if not result.run.succeeded]
    for result in failed:
        click.echo(f"Error: replay run {result.run.run_id} failed: {result.run.error}", err=True)
    still_open = sum(len(r.letters) - len(r.replayed) for r in results if r.run.succeeded)
    if still_open:
        click.echo(
            f"Error: {still_open} letters failed again and stay open; see 'mocra-elt dlq list'.",
            err=True,
        )
    if failed or still_open:
        raise RunFailed(f"{len(failed)} replay runs failed, {still_open} letters still open.")


@dlq.command("discard")
@click.argument("letter_ids", nargs=-1, required=True)
@click.pass_obj
@handle_errors
def discard(settings: Settings, letter_ids: tuple[str, ...]) -> None:
    """Mark letters discarded. Their payload files are kept."""
    from mocra_elt.cli.console import console

    store = _store(settings)
    letters = [_find(store, letter) for letter in letter_ids]
    not_open = [letter["id"] for letter in letters if letter["status"] != "open"]
    if not_open:
        raise ConfigError(f"only open letters can be discarded; not open: {', '.join(not_open)}.")
    store.set_status([letter["id"] for letter in letters], "discarded")
    console.print(f"Discarded {len(letters)} letters; their payloads stay in the data folder.")


def payload_preview(store: Any, payload_ref: str) -> list[str]:
    """Return a record letter's record (with its CSV header), or a batch's first lines."""
    reference, _, index = payload_ref.partition("#")
    path = store.payload_path(reference)
    if not path.exists():
        return [f"(payload file {path} is missing)"]
    if index:
        return store.record_lines(payload_ref, errors="replace")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    shown = lines[:PREVIEW_LINES]
    more = len(lines) - len(shown)
    return shown + ([f"... {more} more lines in {path}"] if more > 0 else [])


def _store(settings: Settings) -> Any:
    from mocra_elt.audit.dead_letters import DeadLetterStore
    from mocra_elt.load.warehouse import open_warehouse

    project = settings.project()
    return DeadLetterStore(open_warehouse(project), project.data_dir)


def _find(store: Any, prefix: str) -> dict[str, Any]:
    from mocra_elt.cli.console import single_match

    return single_match(store.find(prefix), prefix, "id", "dead letter", "mocra-elt dlq list")


def _first_line(text: str, width: int = 80) -> str:
    first = text.splitlines()[0] if text else ""
    return first if len(first) <= width else first[: width - 3] + "..."
