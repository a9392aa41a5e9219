"""Evaluate suites with Great Expectations on pandas frames read from DuckDB.

Great Expectations' SQL path fails on DuckDB, so rows are read as Arrow and
checked as pandas frames with Arrow-backed dtypes. A table that fits the memory
budget is checked in one frame. A larger one is checked in passes:

- row rules over batches of rows, adding up the counts of each batch;
- each uniqueness rule over hash partitions of its key, so rows that share a key
  always meet in one partition;
- table rules (row count, freshness, aggregates) once, on only their columns.

Rules with the quarantine policy run with result format COMPLETE, whose
`unexpected_index_list` contains the DuckDB rowid of every failing row.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from mocra_elt.config.project import Project
from mocra_elt.errors import ConfigError
from mocra_elt.quality.expectations import Check, build_check, instantiate
from mocra_elt.quality.relation import (
    NAN_IS_NULL,
    Relation,
    bytes_per_row,
    count_rows,
    hash_partition,
    partitions_needed,
    read_frames,
    resolve_relation,
)
from mocra_elt.quality.suites import PlannedRule, Suite

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

SAMPLE_SIZE = 20
# An estimate: pandas and Great Expectations use several times the Arrow size of a
# batch for boolean masks, value counts and copies of unexpected values.
PANDAS_OVERHEAD = 4
MIN_BATCH_ROWS = 1_000


@dataclass
class CheckResult:
    """The combined outcome of one check over every batch it was evaluated on."""

    check: Check
    success: bool = True
    element_count: int = 0
    missing_count: int = 0
    unexpected_count: int = 0
    observed_value: Any = None
    sample: list[Any] = field(default_factory=list)
    # rowid -> failing value, kept only for rules with the quarantine policy.
    failing_rows: dict[int, Any] = field(default_factory=dict)
    evaluated: bool = False

    @property
    def unexpected_percent(self) -> float | None:
        considered = self.element_count - self.missing_count
        if not self.check.row_level or considered <= 0:
            return None
        return 100.0 * self.unexpected_count / considered

    def add_map_result(self, result: dict[str, Any], frame: pd.DataFrame) -> None:
        """Add the counts of one batch; with result format COMPLETE, also its failing rows."""
        self.evaluated = True
        self.element_count += int(result.get("element_count") or 0)
        self.missing_count += int(result.get("missing_count") or 0)
        self.unexpected_count += int(result.get("unexpected_count") or 0)
        rowids = [int(rowid) for rowid in result.get("unexpected_index_list") or []]
        if rowids:
            self._add_failing_rows(frame, rowids)
        room = SAMPLE_SIZE - len(self.sample)
        if room > 0:
            values = result.get("partial_unexpected_list") or result.get("unexpected_list") or []
            nan_is_null = set(self.check.columns) & set(frame.attrs.get(NAN_IS_NULL, []))
            self.sample.extend(_sample_value(value, nan_is_null) for value in values[:room])
        self.success = self.mostly_success()

    def _add_failing_rows(self, frame: pd.DataFrame, rowids: list[int]) -> None:
        """Keep each failing row's values, read from the frame by rowid."""
        columns = self.check.columns
        subset = frame.loc[rowids, columns].astype(object)
        for column in set(columns) & set(frame.attrs.get(NAN_IS_NULL, [])):
            subset[column] = subset[column].where(subset[column].notna(), None)
        if len(columns) == 1:
            values: list[Any] = subset[columns[0]].tolist()
        else:
            values = subset.to_dict("records")
        self.failing_rows.update(zip(rowids, values, strict=True))

    def add_table_result(self, success: bool, result: dict[str, Any], frame: pd.DataFrame) -> None:
        self.evaluated = True
        self.success = success
        self.observed_value = json_value(result.get("observed_value"))
        if self.check.row_level:
            self.add_map_result(result, frame)
            self.success = success

    def mostly_success(self) -> bool:
        """Apply `mostly` to the summed counts, as Great Expectations does for one batch."""
        considered = self.element_count - self.missing_count
        if self.element_count == 0 or considered == 0:
            return True
        mostly = float(self.check.kwargs.get("mostly") or 1.0)
        return (considered - self.unexpected_count) / considered >= mostly


def _sample_value(value: Any, nan_is_null: set[str]) -> Any:
    """Convert a sample value to JSON; in `nan_is_null` columns NaN stands for NULL."""
    if not nan_is_null:
        return json_value(value)
    if isinstance(value, dict):
        return {
            key: None if key in nan_is_null and _is_nan(item) else json_value(item)
            for key, item in value.items()
        }
    return None if _is_nan(value) else json_value(value)


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


@dataclass
class SuiteResult:
    suite: Suite
    relation: Relation
    rows: int
    results: list[CheckResult]


class GreatExpectations:
    """An ephemeral Great Expectations context that validates pandas frames."""

    def __init__(self) -> None:
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig
        from great_expectations.execution_engine import pandas_execution_engine

        # NOTE: Great Expectations 1.24 hashes every frame below this size (1 GB) into a
        # batch fingerprint. Nothing here reads it, and hashing costs more than the checks.
        pandas_execution_engine.HASH_THRESHOLD = 0
        self.gx = gx
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(
            globally=False, metric_calculations=False
        )
        source = self.context.data_sources.add_pandas("mocra_quality")
        asset = source.add_dataframe_asset("frame")
        self.batch_definition = asset.add_batch_definition_whole_dataframe("whole_frame")
        self._suites: dict[tuple[str, ...], Any] = {}

    def validate(self, frame: pd.DataFrame, checks: list[Check], complete: bool) -> dict[int, Any]:
        """Validate one frame; return each check's ExpectationValidationResult by id(check).

        This runs the validator that ValidationDefinition.run uses, without storing
        the result: the store deep-copies it, which takes longer than the checks when
        COMPLETE lists many failing rows, and would keep every batch's result in memory.
        """
        from great_expectations.validator.v1_validator import Validator

        if not checks:
            return {}
        result_format: dict[str, Any] = {"result_format": "COMPLETE" if complete else "SUMMARY"}
        if not complete:
            result_format["partial_unexpected_count"] = SAMPLE_SIZE
        validator = Validator(
            batch_definition=self.batch_definition,
            batch_parameters={"dataframe": frame},
            result_format=result_format,
        )
        outcome = validator.validate_expectation_suite(self._suite(checks))
        by_key = {str(id(check)): check for check in checks}
        results: dict[int, Any] = {}
        for item in outcome.results:
            assert item.expectation_config is not None
            check = by_key[item.expectation_config.meta["mocra_key"]]
            _raise_if_errored(check, item)
            results[id(check)] = item
        return results

    def _suite(self, checks: list[Check]) -> Any:
        key = tuple(str(id(check)) for check in checks)
        if key not in self._suites:
            suite = self.gx.ExpectationSuite(
                name=f"mocra_{len(self._suites)}",
                expectations=[instantiate(check, str(id(check))) for check in checks],
            )
            self._suites[key] = self.context.suites.add(suite)
        return self._suites[key]


def _raise_if_errored(check: Check, item: Any) -> None:
    info = item.exception_info or {}
    if info.get("raised_exception"):
        message = str(info.get("exception_message") or "unknown error").splitlines()[0]
        raise ConfigError(
            f"suite {check.suite!r}, rule {check.rule!r}: Great Expectations could not evaluate "
            f"{check.expectation_type}: {message}. Check the rule's arguments against the "
            "column's type.",
            field="rules",
        )


@dataclass
class Budget:
    """How many rows one pandas batch may hold."""

    memory_bytes: int = 512 * 1024 * 1024
    batch_rows: int | None = None

    def rows_for(self, row_bytes: float) -> int:
        if self.batch_rows is not None:
            return self.batch_rows
        per_row = max(row_bytes, 1.0) * PANDAS_OVERHEAD
        return max(MIN_BATCH_ROWS, int(self.memory_bytes // per_row))


class Engine:
    """Evaluates suites against one DuckDB connection."""

    def __init__(
        self,
        connection: Any,
        project: Project | None,
        budget: Budget | None = None,
        now: datetime | None = None,
    ) -> None:
        self.connection = connection
        self.project = project
        self.budget = budget or Budget()
        self.now = now or datetime.now(UTC)
        self._ge: GreatExpectations | None = None

    @property
    def ge(self) -> GreatExpectations:
        if self._ge is None:
            self._ge = GreatExpectations()
        return self._ge

    def plan(self, suite: Suite, rules: list[PlannedRule]) -> tuple[Relation, list[Check]]:
        """Resolve the relation and translate every rule; raises ConfigError before any check."""
        relation = resolve_relation(self.connection, self.project, suite)
        checks = [build_check(planned, relation, self.now) for planned in rules]
        moving = [check for check in checks if check.policy == "quarantine"]
        if moving and not relation.is_table:
            raise ConfigError(
                f"suite {suite.name!r}: rule {moving[0].rule!r} has the quarantine policy, which "
                f"deletes failing rows, but {relation.label} is a view. Materialize the model as "
                "a table (config(materialized='table')) or use block or warn.",
                field="policy",
            )
        return relation, checks

    def evaluate(self, suite: Suite, rules: list[PlannedRule]) -> SuiteResult:
        relation, checks = self.plan(suite, rules)
        rows = count_rows(self.connection, relation)
        results = {id(check): CheckResult(check) for check in checks}
        for frame_checks, frames in self._passes(relation, checks, rows):
            for frame in frames:
                self._validate(frame, frame_checks, results)
        ordered = [results[id(check)] for check in checks]
        for result in ordered:
            if result.check.scope == "key" and result.element_count < rows:
                # Rows whose key is entirely NULL are not read by the hash partitions.
                result.missing_count += rows - result.element_count
                result.element_count = rows
                result.success = result.mostly_success()
        log.info("suite %r checked %d rows of %s", suite.name, rows, relation.label)
        return SuiteResult(suite, relation, rows, ordered)

    def _passes(
        self, relation: Relation, checks: list[Check], rows: int
    ) -> Iterator[tuple[list[Check], Iterable[pd.DataFrame]]]:
        """Yield groups of checks with the frames to run them on."""
        columns = _columns_of(relation, checks)
        batch_rows = self.budget.rows_for(bytes_per_row(self.connection, relation, columns))
        if rows <= batch_rows:
            yield checks, read_frames(self.connection, relation, columns, None)
            return

        log.info("%s has %d rows; checking in batches of %d", relation.label, rows, batch_rows)
        row_checks = [check for check in checks if check.scope == "row"]
        if row_checks:
            row_columns = _columns_of(relation, row_checks)
            yield row_checks, read_frames(self.connection, relation, row_columns, batch_rows)
        for check in (check for check in checks if check.scope == "key"):
            yield [check], self._key_partitions(relation, check, rows)
        table_checks = [check for check in checks if check.scope == "table"]
        if table_checks:
            table_columns = _columns_of(relation, table_checks)
            yield table_checks, read_frames(self.connection, relation, table_columns, None)

    def _key_partitions(self, relation: Relation, check: Check, rows: int) -> Iterator[Any]:
        key = check.columns
        if self.budget.batch_rows is not None:
            partitions = max(1, math.ceil(rows / self.budget.batch_rows))
        else:
            row_bytes = bytes_per_row(self.connection, relation, key) * PANDAS_OVERHEAD
            partitions = partitions_needed(rows, row_bytes, self.budget.memory_bytes)
        log.info("checking %s on %d hash partitions of its key", check.rule, partitions)
        for index in range(partitions):
            where = hash_partition(key, partitions, index)
            yield from read_frames(self.connection, relation, key, None, where)

    def _validate(
        self, frame: pd.DataFrame, checks: list[Check], results: dict[int, CheckResult]
    ) -> None:
        moving = [check for check in checks if check.policy == "quarantine"]
        others = [check for check in checks if check.policy != "quarantine"]
        for group, complete in ((others, False), (moving, True)):
            for check_id, item in self.ge.validate(frame, group, complete).items():
                result = results[check_id]
                payload = dict(item.result or {})
                if result.check.scope == "table":
                    result.add_table_result(bool(item.success), payload, frame)
                else:
                    result.add_map_result(payload, frame)


def _columns_of(relation: Relation, checks: list[Check]) -> list[str]:
    """Return the columns the checks read; a table check without columns reads them all."""
    if any(check.scope == "table" and not check.columns and _needs_all(check) for check in checks):
        return list(relation.columns)
    names: dict[str, None] = {}
    for check in checks:
        names.update(dict.fromkeys(check.columns))
    return list(names)


def _needs_all(check: Check) -> bool:
    return check.expectation_type != "expect_table_row_count_to_be_between"


def json_value(value: Any) -> Any:
    """Convert a value from a frame into something json.dumps writes as valid JSON."""
    import pandas as pd

    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, float) and math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, datetime | date | pd.Timestamp):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return {str(key): json_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(item) for item in value]
    if hasattr(value, "item"):
        return json_value(value.item())
    if isinstance(value, str | int | bool | float):
        return value
    return str(value)
