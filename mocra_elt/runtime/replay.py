"""Replay dead letters: feed their payloads through the failed stage and onward.

Record letters (from the extract stage) are written back out as one small file
per letter and loaded by a run whose source is that folder, with the pipeline's
load, transform, quality and publish settings. The letters are marked replayed
in the transaction that commits the load, so a replay loads each record once.
A record that fails again keeps its letter open with one more attempt.

Batch letters are replayed by a new run of the pipeline that starts at the
failed stage: extract and load re-read the source from the committed
watermarks, later stages work on the tables already loaded.

Every replay run records the original run as its parent.
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mocra_elt.audit.dead_letters import DeadLetterStore
from mocra_elt.audit.store import AuditStore, new_run_id
from mocra_elt.config.model import CsvOptions, FilesSource, Pipeline
from mocra_elt.config.project import Project
from mocra_elt.errors import ConfigError
from mocra_elt.load.warehouse import Warehouse
from mocra_elt.runtime.runner import PipelineRun, RunObserver, RunResult


@dataclass
class ReplayResult:
    run: RunResult
    letters: list[str]
    replayed: list[str]


def replay_letters(
    project: Project,
    pipelines: dict[str, Pipeline],
    warehouse: Warehouse,
    letters: list[dict[str, Any]],
    observer: RunObserver | None = None,
) -> list[ReplayResult]:
    """Replay open letters, one run per pipeline and kind (records, or a batch's stage)."""
    from mocra_elt.runtime.locks import warehouse_lock

    with warehouse_lock(project, "mocra-elt dlq replay", 0.0):
        return _replay_groups(project, pipelines, warehouse, letters, observer)


def _replay_groups(
    project: Project,
    pipelines: dict[str, Pipeline],
    warehouse: Warehouse,
    letters: list[dict[str, Any]],
    observer: RunObserver | None,
) -> list[ReplayResult]:
    store = DeadLetterStore(warehouse, project.data_dir)
    audit = AuditStore(warehouse)
    audit.ensure_schema()
    results: list[ReplayResult] = []
    for (pipeline_name, stage, is_record), group in _groups(letters).items():
        pipeline = pipelines.get(pipeline_name)
        if pipeline is None:
            raise ConfigError(
                f"dead letters of pipeline {pipeline_name!r} cannot be replayed: no such pipeline "
                f"is defined in {project.sources_dir}.",
                error_code="CONFIG_NOT_FOUND",
            )
        if is_record:
            results.append(
                _replay_records(project, pipeline, warehouse, audit, store, group, observer)
            )
        else:
            results.append(
                _replay_batch(project, pipeline, warehouse, audit, store, group, stage, observer)
            )
    return results


def _groups(letters: list[dict[str, Any]]) -> dict[tuple[str, str, bool], list[dict[str, Any]]]:
    groups: dict[tuple[str, str, bool], list[dict[str, Any]]] = defaultdict(list)
    for letter in letters:
        if letter["status"] != "open":
            raise ConfigError(
                f"dead letter {letter['id']} is {letter['status']}, not open; only open letters "
                "are replayed."
            )
        is_record = "#" in letter["payload_ref"]
        groups[(letter["pipeline_id"], letter["stage"], is_record)].append(letter)
    return dict(sorted(groups.items()))


def _replay_records(
    project: Project,
    pipeline: Pipeline,
    warehouse: Warehouse,
    audit: AuditStore,
    store: DeadLetterStore,
    letters: list[dict[str, Any]],
    observer: RunObserver | None,
) -> ReplayResult:
    csv = pipeline.source.csv if isinstance(pipeline.source, FilesSource) else CsvOptions()
    parent = letters[0]["run_id"]
    folder = project.data_dir / "replay_input" / new_run_id()
    files = _write_replay_files(store, letters, folder)

    source = FilesSource(
        type="files", url=str(folder), glob="*", csv=csv, incremental_by_modified=False
    )
    load = pipeline.load.model_copy(update={"incremental": None})
    replay_pipeline = pipeline.model_copy(update={"source": source, "load": load})
    run = PipelineRun(
        project, replay_pipeline, warehouse, audit,
        trigger="replay", parent_run_id=parent, observer=observer,
    )  # fmt: skip
    run.state["replay_files"] = files
    replayed: list[str] = []

    def mark_replayed(connection: Any) -> None:
        failed_again = run.state.get("replay_rejected", set())
        replayed.extend(sorted(set(files.values()) - failed_again))
        store.set_status(replayed, "replayed", run.run_id, connection)

    run.state["on_load_commit"] = mark_replayed
    try:
        result = run.execute()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return ReplayResult(result, [letter["id"] for letter in letters], replayed)


def _write_replay_files(
    store: DeadLetterStore, letters: list[dict[str, Any]], folder: Path
) -> dict[str, str]:
    """Write one file per letter holding its record (and CSV header); return {file name: id}."""
    folder.mkdir(parents=True, exist_ok=True)
    cache: dict[str, list[str]] = {}
    files: dict[str, str] = {}
    for letter in letters:
        reference = letter["payload_ref"].partition("#")[0]
        record = store.record_lines(letter["payload_ref"], cache)
        name = f"{letter['id']}{Path(reference).suffix}"
        (folder / name).write_text("\n".join(record) + "\n", encoding="utf-8")
        files[name] = letter["id"]
    return files


def _replay_batch(
    project: Project,
    pipeline: Pipeline,
    warehouse: Warehouse,
    audit: AuditStore,
    store: DeadLetterStore,
    letters: list[dict[str, Any]],
    stage: str,
    observer: RunObserver | None,
) -> ReplayResult:
    start = None if stage in ("extract", "load") else stage
    run = PipelineRun(
        project, pipeline, warehouse, audit,
        trigger="replay", parent_run_id=letters[-1]["run_id"], observer=observer,
        start_stage=start,
    )  # fmt: skip
    result = run.execute()
    ids = [letter["id"] for letter in letters]
    if result.succeeded:
        store.set_status(ids, "replayed", run.run_id)
        return ReplayResult(result, ids, ids)
    store.count_attempt(ids)
    return ReplayResult(result, ids, [])
