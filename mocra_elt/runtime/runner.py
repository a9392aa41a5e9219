"""Run pipelines: one run_id carried through extract, load, transform, quality and publish."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from mocra_elt.audit.store import AuditStore, new_run_id
from mocra_elt.config.model import STAGES, Pipeline
from mocra_elt.config.project import Project
from mocra_elt.errors import ConfigError, MocraError, PipelineLockedError, StageError
from mocra_elt.load.warehouse import Warehouse
from mocra_elt.runtime.dag import execution_order
from mocra_elt.runtime.logs import run_logger
from mocra_elt.runtime.retry import call_with_retry

log = logging.getLogger(__name__)


@dataclass
class StageOutcome:
    """Counts and ids a stage returns; the runner writes them to the stage-run row."""

    status: str = "succeeded"
    rows_in: int | None = None
    rows_out: int | None = None
    bytes: int | None = None
    dlt_load_id: str | None = None
    dbt_invocation_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageReport:
    stage: str
    status: str
    attempts: int
    seconds: float
    rows_out: int | None = None
    error: str | None = None


@dataclass
class RunResult:
    run_id: str
    pipeline: str
    status: str
    stages: list[StageReport] = field(default_factory=list)
    error: str | None = None
    error_code: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"


class RunObserver(Protocol):
    """Receives progress events; the CLI renders them."""

    def run_started(self, pipeline: str, run_id: str) -> None: ...

    def stage_started(self, pipeline: str, stage: str) -> None: ...

    def stage_finished(self, pipeline: str, report: StageReport) -> None: ...

    def run_finished(self, result: RunResult) -> None: ...


class SilentObserver:
    def run_started(self, pipeline: str, run_id: str) -> None:
        pass

    def stage_started(self, pipeline: str, stage: str) -> None:
        pass

    def stage_finished(self, pipeline: str, report: StageReport) -> None:
        pass

    def run_finished(self, result: RunResult) -> None:
        pass


class PipelineRun:
    """One run of one pipeline. Stage functions live in `mocra_elt.runtime.stages`."""

    def __init__(
        self,
        project: Project,
        pipeline: Pipeline,
        warehouse: Warehouse,
        audit: AuditStore,
        *,
        trigger: str = "manual",
        parent_run_id: str | None = None,
        observer: RunObserver | None = None,
        lock_wait: float = 0.0,
        start_stage: str | None = None,
    ) -> None:
        self.project = project
        self.pipeline = pipeline
        self.warehouse = warehouse
        self.audit = audit
        self.trigger = trigger
        self.parent_run_id = parent_run_id
        self.observer = observer or SilentObserver()
        self.lock_wait = lock_wait
        self.start_stage = start_stage
        self.run_id = new_run_id()
        self.log = run_logger(__name__, self.run_id, pipeline.name)
        self.work_dir = project.run_dir(self.run_id)
        self.state: dict[str, Any] = {}

    def execute(self) -> RunResult:
        """Run every stage under the pipeline's locks; a held lock fails the run at once."""
        from mocra_elt.runtime.locks import run_locks

        result = RunResult(run_id=self.run_id, pipeline=self.pipeline.name, status="running")
        self.audit.start_run(
            self.run_id, self.pipeline.name, self.trigger, self.project.target, self.parent_run_id
        )
        self.observer.run_started(self.pipeline.name, self.run_id)
        self.log.info("run started (trigger %s)", self.trigger)
        self._emit_lineage_event("START")
        try:
            with run_locks(self.project, self.pipeline, self.run_id, self.lock_wait):
                abandoned = self.audit.abandon_stale_runs(self.pipeline.name, self.run_id)
                if abandoned:
                    self.log.warning(
                        "marked %d earlier runs abandoned: their process ended mid-run", abandoned
                    )
                self._run_stages(result)
        except PipelineLockedError as error:
            self.log.error("run not started: %s", error)
            self._finish(result, error)
        return result

    def _run_stages(self, result: RunResult) -> None:
        from mocra_elt.runtime.stages import STAGE_FUNCTIONS, stage_applies

        failed: MocraError | None = None
        first = STAGES.index(self.start_stage) if self.start_stage else 0
        for position, stage in enumerate(STAGES):
            if position < first:
                reason = f"the replay starts at {self.start_stage}"
                self.audit.record_stage(
                    self.run_id, stage, status="skipped", details={"reason": reason}
                )
                result.stages.append(StageReport(stage, "skipped", 0, 0.0))
                continue
            if failed is not None or not stage_applies(self.pipeline, stage):
                reason = "an earlier stage failed" if failed else "not configured"
                self.audit.record_stage(
                    self.run_id, stage, status="skipped", details={"reason": reason}
                )
                result.stages.append(StageReport(stage, "skipped", 0, 0.0))
                continue
            report, error = self._run_stage(stage, STAGE_FUNCTIONS[stage])
            result.stages.append(report)
            failed = error
            if failed is None and stage == "transform":
                self._record_lineage()

        self._finish(result, failed)

    def _run_stage(
        self, stage: str, function: Callable[[PipelineRun], StageOutcome]
    ) -> tuple[StageReport, MocraError | None]:
        started_wall = _now()
        started = time.monotonic()
        attempts = 0

        def count(attempt: int) -> None:
            nonlocal attempts
            attempts = attempt

        self.observer.stage_started(self.pipeline.name, stage)
        self.audit.record_stage(self.run_id, stage, status="running", started_at=started_wall)
        self.log.info("stage %s started", stage)
        policy = self.pipeline.retry_policy.for_stage(stage)
        try:
            outcome = call_with_retry(policy, lambda: function(self), self.log, stage, count)
        except MocraError as error:
            return self._stage_failed(stage, started, attempts, error), error
        except Exception as error:  # noqa: BLE001 - an unexpected failure still ends the run cleanly
            self.log.exception("stage %s raised an unexpected error", stage)
            wrapped = StageError(
                f"{type(error).__name__}: {error}", pipeline=self.pipeline.name, stage=stage
            )
            return self._stage_failed(stage, started, attempts, wrapped), wrapped

        seconds = time.monotonic() - started
        self.audit.record_stage(
            self.run_id,
            stage,
            status=outcome.status,
            attempts=attempts,
            rows_in=outcome.rows_in,
            rows_out=outcome.rows_out,
            bytes=outcome.bytes,
            ended_at=_now(),
            duration_s=seconds,
            dlt_load_id=outcome.dlt_load_id,
            dbt_invocation_id=outcome.dbt_invocation_id,
            details=outcome.details,
        )
        self.log.info(
            "stage %s %s in %.2f s (rows in %s, rows out %s)",
            stage,
            outcome.status,
            seconds,
            outcome.rows_in,
            outcome.rows_out,
        )
        report = StageReport(stage, outcome.status, attempts, seconds, outcome.rows_out)
        self.observer.stage_finished(self.pipeline.name, report)
        return report, None

    def _stage_failed(
        self, stage: str, started: float, attempts: int, error: MocraError
    ) -> StageReport:
        seconds = time.monotonic() - started
        letter = None
        # A failed replay keeps the letters it replays open instead of adding new ones.
        if not isinstance(error, ConfigError) and self.trigger != "replay":
            from mocra_elt.runtime.dead_lettering import dead_letter_stage

            letter = dead_letter_stage(self, stage, error, attempts)
        self.audit.record_stage(
            self.run_id,
            stage,
            status="failed",
            attempts=attempts,
            ended_at=_now(),
            duration_s=seconds,
            error_code=error.error_code,
            error=str(error),
            details={"dead_letter": letter} if letter else None,
        )
        self.log.error(
            "stage %s failed with %s after %d attempt(s): %s%s",
            stage, error.error_code, attempts, error,
            f" (dead letter {letter})" if letter else "",
        )  # fmt: skip
        report = StageReport(stage, "failed", attempts, seconds, error=str(error))
        self.observer.stage_finished(self.pipeline.name, report)
        return report

    def _record_lineage(self) -> None:
        """Store the lineage this run used; a failure here is logged and never fails the run.

        Only runs with a transform stage record lineage, because it reads dbt's manifest
        and parsing the project would add seconds to every load-only run.
        """
        # NOTE: so OpenLineage events of load-only runs name no input or output datasets.
        from mocra_elt.lineage.runs import record_run_lineage

        try:
            self.state["lineage"] = record_run_lineage(
                self.project, self.warehouse, self.run_id, self.pipeline
            )
        except Exception as error:  # noqa: BLE001 - lineage is audit data, never a reason to fail
            self.log.warning("lineage of this run was not recorded: %s", error, exc_info=True)

    def _emit_lineage_event(self, event_type: str, error: MocraError | None = None) -> None:
        """Send an OpenLineage event; emit_run_event logs its own failures and returns None."""
        from mocra_elt.lineage.openlineage import emit_run_event

        emit_run_event(
            self.project, self.pipeline, self.run_id, event_type, error, warehouse=self.warehouse
        )

    def _finish(self, result: RunResult, failed: MocraError | None) -> None:
        from mocra_elt.runtime.stages import cleanup

        cleanup(self, failed is None)
        if failed is None:
            result.status = "succeeded"
            self.audit.end_run(self.run_id, "succeeded")
            self.log.info("run succeeded")
        else:
            result.status = "failed"
            result.error = str(failed)
            result.error_code = failed.error_code
            self.audit.end_run(self.run_id, "failed", failed.error_code, str(failed))
            self.log.error("run failed with %s", failed.error_code)
        self._emit_lineage_event("COMPLETE" if failed is None else "FAIL", failed)
        self.observer.run_finished(result)


def run_pipelines(
    project: Project,
    pipelines: dict[str, Pipeline],
    warehouse: Warehouse,
    selected: list[str] | None = None,
    *,
    trigger: str = "manual",
    observer: RunObserver | None = None,
    lock_wait: float = 0.0,
) -> list[RunResult]:
    """Run the selected pipelines in dependency order.

    A pipeline whose upstream failed in this invocation is recorded as failed
    with `UPSTREAM_FAILED` and not run. On DuckDB the whole invocation holds the
    warehouse lock, waiting up to `lock_wait` seconds for it.
    """
    from mocra_elt.runtime.locks import warehouse_lock

    order = execution_order(pipelines, selected)
    holder = f"mocra-elt {trigger} run of {', '.join(order)}"
    with warehouse_lock(project, holder, lock_wait):
        return _run_in_order(project, pipelines, warehouse, order, trigger, observer, lock_wait)


def _run_in_order(
    project: Project,
    pipelines: dict[str, Pipeline],
    warehouse: Warehouse,
    order: list[str],
    trigger: str,
    observer: RunObserver | None,
    lock_wait: float,
) -> list[RunResult]:
    audit = AuditStore(warehouse)
    audit.ensure_schema()
    results: list[RunResult] = []
    failed_names: set[str] = set()
    for name in order:
        pipeline = pipelines[name]
        blocked_by = [upstream for upstream in pipeline.depends_on if upstream in failed_names]
        if blocked_by:
            result = _record_upstream_failure(project, pipeline, audit, trigger, blocked_by)
            (observer or SilentObserver()).run_finished(result)
        else:
            run = PipelineRun(
                project,
                pipeline,
                warehouse,
                audit,
                trigger=trigger,
                observer=observer,
                lock_wait=lock_wait,
            )
            result = run.execute()
        if not result.succeeded:
            failed_names.add(name)
        results.append(result)
    return results


def _record_upstream_failure(
    project: Project, pipeline: Pipeline, audit: AuditStore, trigger: str, upstream: list[str]
) -> RunResult:
    run_id = new_run_id()
    message = f"not run because upstream pipeline {', '.join(upstream)} failed in this invocation"
    audit.start_run(run_id, pipeline.name, trigger, project.target)
    audit.end_run(run_id, "failed", "UPSTREAM_FAILED", message)
    return RunResult(run_id, pipeline.name, "failed", error=message, error_code="UPSTREAM_FAILED")


def _now() -> Any:
    from mocra_elt.audit.store import utcnow

    return utcnow()
