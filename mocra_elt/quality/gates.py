"""Quality gates: evaluate a pipeline's suites, then block, warn or quarantine.

Every suite is evaluated before any policy acts, so one run records the
verdict of every rule. Then:

- a failed `block` rule fails the stage with QualityError; no rows are moved,
  and the run publishes nothing;
- a failed `warn` rule is logged and recorded, and the run goes on;
- the failing rows of failed `quarantine` rules move to the quarantine table
  of their relation, one move per relation for all its suites.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from mocra_elt.config.model import Pipeline, Quality
from mocra_elt.config.project import Project
from mocra_elt.errors import QualityError
from mocra_elt.quality.engine import Budget, Engine, SuiteResult
from mocra_elt.quality.quarantine import QuarantineBatch, move_rows, quarantine_table_name
from mocra_elt.quality.results import RuleRecord, record_results
from mocra_elt.quality.suites import Suite, load_suites, plan_rules

if TYPE_CHECKING:
    from mocra_elt.runtime.runner import PipelineRun, StageOutcome

log = logging.getLogger(__name__)

# run.state key: names of the suites a run has already checked.
CHECKED_SUITES = "quality_checked_suites"
MAX_LISTED_FAILURES = 5


@dataclass
class GateReport:
    """The verdicts of one evaluation of suites, and the rows it quarantined."""

    suite_results: list[SuiteResult]
    records: list[RuleRecord]
    moved: dict[str, int] = field(default_factory=dict)

    @property
    def blocked(self) -> list[RuleRecord]:
        return [
            r for r in self.records if r.status == "failed" and r.result.check.policy == "block"
        ]

    @property
    def rows_in(self) -> int:
        rows = {result.relation.label: result.rows for result in self.suite_results}
        return sum(rows.values())

    @property
    def rows_quarantined(self) -> int:
        return sum(self.moved.values())

    def details(self) -> dict[str, Any]:
        suites = []
        for suite_result in self.suite_results:
            records = [r for r in self.records if r.result.check.suite == suite_result.suite.name]
            counts = {status: 0 for status in ("passed", "failed", "warned", "quarantined")}
            for record in records:
                counts[record.status] += 1
            suites.append(
                {
                    "suite": suite_result.suite.name,
                    "relation": suite_result.relation.label,
                    "rows": suite_result.rows,
                    **counts,
                }
            )
        return {"suites": suites, "rows_quarantined": self.moved}


def budget_of(quality: Quality | None) -> Budget:
    if quality is None:
        return Budget()
    return Budget(
        memory_bytes=quality.memory_budget_mb * 1024 * 1024, batch_rows=quality.batch_rows
    )


def evaluate_suites(
    connection: Any,
    project: Project | None,
    quality: Quality | None,
    suites: list[Suite],
    now: datetime | None = None,
) -> list[SuiteResult]:
    """Check every suite; all rules are translated first, so a config error stops early."""
    engine = Engine(connection, project, budget_of(quality), now)
    planned = {suite.name: plan_rules(suite, quality) for suite in suites}
    for suite in suites:
        engine.plan(suite, planned[suite.name])
    return [engine.evaluate(suite, planned[suite.name]) for suite in suites]


def decide(suite_results: list[SuiteResult]) -> list[RuleRecord]:
    """Give each rule its status; quarantine rules are 'failed' when a block rule failed."""
    records = []
    for suite_result in suite_results:
        for result in suite_result.results:
            status = "passed"
            if not result.success:
                status = {"block": "failed", "warn": "warned", "quarantine": "quarantined"}[
                    result.check.policy
                ]
            records.append(RuleRecord(result, suite_result.relation.label, status))
    if any(r.status == "failed" for r in records):
        for record in records:
            if record.status == "quarantined":
                record.status = "failed"
    return records


def apply_gates(
    connection: Any,
    project: Project | None,
    pipeline: Pipeline,
    suites: list[Suite],
    run_id: str,
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger] = log,
    now: datetime | None = None,
) -> GateReport:
    """Evaluate the suites, act on their policies and record the results.

    Raises QualityError after recording when a block rule failed.
    """
    from mocra_elt.audit.store import utcnow

    results = evaluate_suites(connection, project, pipeline.quality, suites, now)
    report = GateReport(results, decide(results))
    if not report.blocked:
        report.moved = _quarantine(connection, report, run_id)
    record_results(connection, run_id, pipeline.name, report.records, utcnow())
    _log_outcome(report, logger)
    if report.blocked:
        raise blocked_error(pipeline.name, report.blocked)
    return report


def _quarantine(connection: Any, report: GateReport, run_id: str) -> dict[str, int]:
    from mocra_elt.audit.store import utcnow

    batches: dict[str, QuarantineBatch] = {}
    for suite_result in report.suite_results:
        for result in suite_result.results:
            if result.check.policy == "quarantine" and not result.success:
                label = suite_result.relation.label
                batch = batches.setdefault(label, QuarantineBatch(suite_result.relation))
                batch.add(result)
    now = utcnow()
    moved = {label: move_rows(connection, batch, run_id, now) for label, batch in batches.items()}
    for record in report.records:
        if record.status == "quarantined":
            record.rows_quarantined = len(record.result.failing_rows)
    return moved


def _log_outcome(
    report: GateReport, logger: logging.Logger | logging.LoggerAdapter[logging.Logger]
) -> None:
    for record in report.records:
        if record.status == "passed":
            continue
        check = record.result.check
        logger.warning(
            "quality rule %r of suite %r on %s %s (%s policy): %s",
            check.rule,
            check.suite,
            record.relation,
            record.status,
            check.policy,
            describe_failure(record),
        )
    relations = {result.relation.label: result.relation for result in report.suite_results}
    for label, rows in report.moved.items():
        if rows:
            relation = relations[label]
            target = f"{relation.schema}.{quarantine_table_name(relation)}"
            logger.warning("moved %d rows of %s to %s", rows, label, target)


def describe_failure(record: RuleRecord) -> str:
    """Say what failed: counts for row rules, the observed value for table rules."""
    result = record.result
    check = result.check
    column = f"column {check.column_label!r}, " if check.column_label else ""
    if check.row_level:
        sample = f"; sample {result.sample[:5]}" if result.sample else ""
        return (
            f"{column}{result.unexpected_count} of {result.element_count} rows unexpected{sample}"
        )
    return f"{column}observed {result.observed_value!r}, expected {_expected(check.kwargs)}"


def _expected(kwargs: dict[str, Any]) -> str:
    bounds = {key: value for key, value in kwargs.items() if key != "column" and value is not None}
    return ", ".join(f"{key}={value}" for key, value in bounds.items()) or "(see the rule)"


def blocked_error(pipeline: str, blocked: list[RuleRecord]) -> QualityError:
    lines = [
        f"  suite {r.result.check.suite!r}, rule {r.result.check.rule!r} on {r.relation}: "
        f"{describe_failure(r)}"
        for r in blocked[:MAX_LISTED_FAILURES]
    ]
    if len(blocked) > MAX_LISTED_FAILURES:
        lines.append(f"  and {len(blocked) - MAX_LISTED_FAILURES} more")
    first = blocked[0].result
    return QualityError(
        f"quality gate blocked pipeline {pipeline!r}: {len(blocked)} rule(s) with the block "
        "policy failed, so nothing is published:\n" + "\n".join(lines) + "\nFix the data or the "
        "rules in expectations/; every result is in mocra_audit.quality_results.",
        pipeline=pipeline,
        stage="quality",
        suite=first.check.suite,
        rule=first.check.rule,
        column=first.check.column_label,
        unexpected_count=first.unexpected_count if first.check.row_level else None,
    )


# --- the runner's quality stage -------------------------------------------------------------


def run_quality_stage(run: PipelineRun) -> StageOutcome:
    """Check every suite of the pipeline that this run has not checked yet."""
    from mocra_elt.runtime.runner import StageOutcome

    quality = run.pipeline.quality
    assert quality is not None
    suites = load_suites(run.project, quality.suite_names, run.pipeline.name)
    checked = run.state.setdefault(CHECKED_SUITES, set())
    pending = [suite for suite in suites if suite.name not in checked]
    report = _run_gates(run, pending)
    return StageOutcome(
        rows_in=report.rows_in,
        rows_out=report.rows_in - report.rows_quarantined,
        details=report.details(),
    )


def run_source_contracts(run: PipelineRun) -> GateReport | None:
    """Check the pipeline's suites on warehouse tables (`table:`), e.g. raw data before dbt.

    Meant to be called at the start of the transform stage; the quality stage
    then skips the suites checked here.
    """
    quality = run.pipeline.quality
    if quality is None:
        return None
    suites = load_suites(run.project, quality.suite_names, run.pipeline.name)
    contracts = [suite for suite in suites if suite.table is not None]
    if not contracts:
        return None
    return _run_gates(run, contracts)


def _run_gates(run: PipelineRun, suites: list[Suite]) -> GateReport:
    checked = run.state.setdefault(CHECKED_SUITES, set())
    with run.warehouse.connect() as connection:
        report = apply_gates(connection, run.project, run.pipeline, suites, run.run_id, run.log)
    checked.update(suite.name for suite in suites)
    run.log.info(
        "quality: %d suites, %d rules, %d rows quarantined",
        len(suites),
        len(report.records),
        report.rows_quarantined,
    )
    return report


__all__ = [
    "GateReport",
    "apply_gates",
    "evaluate_suites",
    "quarantine_table_name",
    "run_quality_stage",
    "run_source_contracts",
]
