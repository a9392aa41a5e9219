"""Turn rejected records and failed stages into dead letters with saved payloads."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from mocra_elt.audit.dead_letters import DeadLetter, DeadLetterStore, describe_batch, letter_id
from mocra_elt.errors import MocraError
from mocra_elt.extract.base import RejectedRecord

if TYPE_CHECKING:
    from mocra_elt.runtime.runner import PipelineRun

PAYLOAD_SUFFIX = {"csv": "csv", "jsonl": "jsonl"}


def store_for(run: PipelineRun) -> DeadLetterStore:
    return DeadLetterStore(run.warehouse, run.project.data_dir)


def dead_letter_records(run: PipelineRun, rejected: list[RejectedRecord]) -> int:
    """Save rejected records in payload files, one per source file and format; return letters added.

    A letter's `payload_ref` is `<payload file>#<n>`: the n-th record of that file,
    not counting a CSV header line.
    """
    if not rejected:
        return 0
    store = store_for(run)
    groups: dict[tuple[str, str, str | None], list[RejectedRecord]] = defaultdict(list)
    for record in rejected:
        origin = re.split(r",? (?:line|record) ", record.source_ref)[0]
        groups[(origin, record.payload_format, record.header)].append(record)

    letters: list[DeadLetter] = []
    for number, ((_, payload_format, header), records) in enumerate(
        sorted(groups.items(), key=_order)
    ):
        lines = [record.payload for record in records]
        content = "\n".join([header, *lines] if header is not None else lines) + "\n"
        name = f"extract-{number + 1:03d}.{PAYLOAD_SUFFIX[payload_format]}"
        reference = store.save_payload(run.run_id, name, content.encode())
        for index, record in enumerate(records, start=1):
            letters.append(_record_letter(run, record, f"{reference}#{index}"))
    added = store.add(letters)
    run.log.warning(
        "%d records could not be parsed or converted and went to the dead-letter queue "
        "(%d new letters); see 'mocra-elt dlq list --run %s'",
        len(rejected), added, run.run_id,
    )  # fmt: skip
    return added


def _order(item: tuple[tuple[str, str, str | None], list[RejectedRecord]]) -> tuple[str, str]:
    (origin, payload_format, _), _records = item
    return origin, payload_format


def _record_letter(run: PipelineRun, record: RejectedRecord, reference: str) -> DeadLetter:
    return DeadLetter(
        id=letter_id(run.pipeline.name, "extract", record.source_ref, record.payload),
        run_id=run.run_id,
        pipeline_id=run.pipeline.name,
        stage="extract",
        error_code=record.error_code,
        error=record.error,
        payload_ref=reference,
        source_ref=record.source_ref,
        record_key=_record_key(run, record),
    )


def _record_key(run: PipelineRun, record: RejectedRecord) -> str | None:
    key = run.pipeline.load.primary_key
    if not key or record.payload_format != "jsonl":
        return None
    try:
        document = json.loads(record.payload)
    except ValueError:
        return None
    if not isinstance(document, dict) or any(name not in document for name in key):
        return None
    return json.dumps([document[name] for name in key], default=str)


def dead_letter_stage(run: PipelineRun, stage: str, error: MocraError, attempts: int) -> str:
    """Record the failed batch of a stage; return the letter id.

    The payload describes what the stage was working on, and the data stays
    where the description points. Extract and load re-read the source from the
    recorded watermarks. The dlt working folder is kept after a failure. Later
    stages read the tables already loaded.
    """
    store = store_for(run)
    document: dict[str, Any] = {
        "pipeline": run.pipeline.name,
        "run_id": run.run_id,
        "stage": stage,
        "error_code": error.error_code,
        "error": str(error),
        "attempts": attempts,
        "target": f"{run.pipeline.dataset}.{run.pipeline.load.table}",
        "source": run.pipeline.source.model_dump(exclude={"auth", "storage_options"}),
        "watermarks_before": run.state.get("watermarks_before", {}),
        "dlt_working_folder": str(run.work_dir / "dlt")
        if (run.work_dir / "dlt").exists()
        else None,
        "dbt_selection": run.pipeline.transform.select if run.pipeline.transform else None,
        "sinks": [sink.model_dump() for sink in run.pipeline.sinks],
    }
    reference = store.save_payload(run.run_id, f"{stage}-batch.json", describe_batch(document))
    letter = DeadLetter(
        id=letter_id(run.pipeline.name, stage, run.run_id, "batch"),
        run_id=run.run_id,
        pipeline_id=run.pipeline.name,
        stage=stage,
        error_code=error.error_code,
        error=str(error),
        payload_ref=reference,
        source_ref=f"run {run.run_id} {stage} batch",
        attempts=max(attempts, 1),
    )
    store.add([letter])
    return letter.id


def note_replay_rejections(run: PipelineRun, rejected: list[RejectedRecord]) -> None:
    """Keep the letters of records that failed again open, with one more attempt."""
    files: dict[str, str] = run.state["replay_files"]
    again = {files.get(re.split(r",? ", record.source_ref)[0], "") for record in rejected}
    again.discard("")
    run.state["replay_rejected"] = again
    if again:
        store_for(run).count_attempt(sorted(again))
        run.log.warning("%d replayed records failed again; their letters stay open", len(again))
