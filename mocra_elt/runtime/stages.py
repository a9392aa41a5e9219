"""The five stage functions the runner calls, each taking the `PipelineRun`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from mocra_elt.audit.store import encode_value
from mocra_elt.config.model import Pipeline

if TYPE_CHECKING:
    from mocra_elt.runtime.runner import PipelineRun, StageOutcome


def stage_applies(pipeline: Pipeline, stage: str) -> bool:
    if stage == "transform":
        return pipeline.transform is not None
    if stage == "quality":
        return pipeline.quality is not None
    if stage == "publish":
        return bool(pipeline.sinks)
    return True


def extract(run: PipelineRun) -> StageOutcome:
    """Read the source past the committed watermarks into a fresh dlt load package."""
    from mocra_elt.extract.base import ExtractContext, build_reader
    from mocra_elt.load.dlt_load import DltLoader
    from mocra_elt.runtime.dead_lettering import dead_letter_records, note_replay_rejections
    from mocra_elt.runtime.runner import StageOutcome

    discard_loader(run)  # a retried extract starts from an empty package
    watermarks = run.audit.current_watermarks(run.pipeline.name)
    context = ExtractContext(
        run_id=run.run_id,
        pipeline=run.pipeline,
        watermarks=watermarks,
        work_dir=run.work_dir,
        log=run.log,
        project_root=run.project.root,
    )
    reader = build_reader(context)
    loader = DltLoader(run.pipeline, run.warehouse, run.work_dir / "dlt")
    run.state["loader"] = loader
    run.state["reader"] = reader
    before = {name: encode_value(mark.value) for name, mark in watermarks.items()}
    run.state["watermarks_before"] = before
    rows = loader.extract(reader.batches())
    context.stats["rejected_records"] = len(context.rejected)
    if "replay_files" in run.state:
        note_replay_rejections(run, context.rejected)
    else:
        context.stats["dead_letters_new"] = dead_letter_records(run, context.rejected)
    return StageOutcome(
        rows_in=reader.rows_read,
        rows_out=rows,
        bytes=reader.bytes_read or None,
        details={
            "watermarks_before": before,
            **context.stats,
        },
    )


def load(run: PipelineRun) -> StageOutcome:
    """Load the package, then commit the load and its watermarks in one transaction."""
    from mocra_elt.load.dlt_load import remove_uncommitted_rows
    from mocra_elt.runtime.runner import StageOutcome

    loader = run.state["loader"]
    reader = run.state["reader"]
    committed = run.audit.committed_load_ids(run.pipeline.name)
    removed = remove_uncommitted_rows(run.warehouse, run.pipeline, committed)
    if removed:
        run.log.warning(
            "removed %d rows of %s.%s left by a load that never committed",
            removed,
            run.pipeline.dataset,
            run.pipeline.load.table,
        )

    result = loader.load()
    watermarks = reader.watermarks()
    run.audit.commit_load(
        run_id=run.run_id,
        pipeline=run.pipeline.name,
        dataset=run.pipeline.dataset,
        table=run.pipeline.load.table,
        load_id=result.load_id,
        rows_loaded=result.rows,
        watermarks=watermarks,
        on_commit=run.state.get("on_load_commit"),
    )
    # Sources that keep a copy of their position elsewhere (Kafka consumer groups) update it
    # only now, so that copy never runs ahead of the committed load.
    after_commit = getattr(reader, "after_load_commit", None)
    if after_commit is not None:
        after_commit()
    return StageOutcome(
        rows_in=loader.extracted_rows,
        rows_out=result.rows,
        bytes=result.bytes or None,
        dlt_load_id=result.load_id,
        details={
            "watermarks_after": {mark.cursor_name: encode_value(mark.value) for mark in watermarks},
            "uncommitted_rows_removed": removed,
            "table": f"{run.pipeline.dataset}.{run.pipeline.load.table}",
        },
    )


def transform(run: PipelineRun) -> StageOutcome:
    """Check source contracts on the raw tables, then build the pipeline's dbt selection."""
    from mocra_elt.quality.gates import run_source_contracts
    from mocra_elt.runtime.runner import StageOutcome
    from mocra_elt.transform.dbt import run_build

    assert run.pipeline.transform is not None
    run_source_contracts(run)
    result = run_build(run.project, run.pipeline.transform, run.run_id, run.pipeline.name)
    models = [
        node for node in result.nodes if node["resource_type"] in ("model", "seed", "snapshot")
    ]
    return StageOutcome(
        rows_out=sum(node["rows"] or 0 for node in models) or None,
        dbt_invocation_id=result.invocation_id,
        details={"nodes": result.nodes},
    )


def quality(run: PipelineRun) -> StageOutcome:
    """Check the pipeline's suites; block, warn or quarantine on failures (see quality.gates)."""
    from mocra_elt.quality.gates import run_quality_stage

    return run_quality_stage(run)


def publish(run: PipelineRun) -> StageOutcome:
    """Publish the pipeline's models to each sink, in the order the definition lists them."""
    from mocra_elt.publish import PublishContext, publish_sinks
    from mocra_elt.runtime.runner import StageOutcome

    context = PublishContext(run.run_id, run.pipeline, run.project, run.warehouse, run.log)
    results = publish_sinks(context)
    return StageOutcome(
        rows_in=sum(result.rows_read for result in results),
        rows_out=sum(result.rows_written for result in results),
        details={"sinks": {result.sink: result.details for result in results}},
    )


def discard_loader(run: PipelineRun) -> None:
    loader = run.state.pop("loader", None)
    if loader is not None:
        loader.discard()


def cleanup(run: PipelineRun, succeeded: bool) -> None:
    """Remove the run's dlt working folder after success; keep it after a failure."""
    if succeeded:
        discard_loader(run)
        if run.work_dir.exists() and not any(run.work_dir.iterdir()):
            run.work_dir.rmdir()


STAGE_FUNCTIONS: dict[str, Callable[[PipelineRun], StageOutcome]] = {
    "extract": extract,
    "load": load,
    "transform": transform,
    "quality": quality,
    "publish": publish,
}
