"""Translate suite rules into Great Expectations expectations.

Each rule becomes one expectation plus the scope the engine evaluates it in:

- `row`: the verdict of each row depends on that row alone, so batches of rows
  are checked one by one and their counts added up.
- `key`: uniqueness. Rows with the same key must meet in one batch, so a table
  that does not fit in one batch is split by a hash of the key.
- `table`: aggregates (row count, max, mean, ...) and checks that depend on row
  order or on the whole column; evaluated once on all rows of their columns.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from typing import Any, Literal

from mocra_elt.errors import ConfigError
from mocra_elt.quality.relation import Relation, check_columns
from mocra_elt.quality.suites import (
    Between,
    CustomExpectation,
    Freshness,
    InSet,
    NotNull,
    PlannedRule,
    Policy,
    Regex,
    RowCount,
    Unique,
    snake_case,
)

Scope = Literal["row", "key", "table"]

KEY_EXPECTATIONS = {
    "expect_column_values_to_be_unique",
    "expect_compound_columns_to_be_unique",
    "expect_multicolumn_values_to_be_unique",
}
# Map expectations whose verdict on a row depends on other rows (order, mean, spread).
WHOLE_COLUMN_MAP_EXPECTATIONS = {
    "expect_column_values_to_be_increasing",
    "expect_column_values_to_be_decreasing",
    "expect_column_value_z_scores_to_be_less_than",
    "expect_column_values_to_not_be_outliers",
}
# These need a SQL data source or a second table, which the pandas path does not have.
UNSUPPORTED_EXPECTATIONS = {
    "expect_query_results_to_match_comparison",
    "unexpected_rows_expectation",
    "expect_table_row_count_to_equal_other_table",
}
TEMPORAL_TYPES = ("DATE", "TIMESTAMP")
NUMERIC_TYPES = (
    "TINYINT",
    "SMALLINT",
    "INTEGER",
    "BIGINT",
    "HUGEINT",
    "UTINYINT",
    "USMALLINT",
    "UINTEGER",
    "UBIGINT",
    "UHUGEINT",
    "FLOAT",
    "DOUBLE",
    "DECIMAL",
)


@dataclass
class Check:
    """One rule of one suite, ready to run: the expectation, its scope and its policy."""

    planned: PlannedRule
    expectation_type: str
    kwargs: dict[str, Any]
    scope: Scope
    row_level: bool
    policy: Policy
    columns: list[str] = field(default_factory=list)

    @property
    def suite(self) -> str:
        return self.planned.suite.name

    @property
    def rule(self) -> str:
        return self.planned.name

    @property
    def column_label(self) -> str | None:
        return ",".join(self.columns) or None


def build_check(planned: PlannedRule, relation: Relation, now: datetime) -> Check:
    """Translate one rule; raises ConfigError for unknown columns or unusable types."""
    rule = planned.rule
    check_columns(relation, planned.suite, planned.name, rule.columns)
    expectation_type, kwargs = expectation_for(planned, relation, now)
    expectation_class = expectation_class_for(expectation_type, planned)
    row_level = _is_map_expectation(expectation_class)
    scope = _scope(expectation_type, row_level)
    columns = rule.columns
    policy = _effective_policy(planned, row_level)
    return Check(planned, expectation_type, kwargs, scope, row_level, policy, columns)


def expectation_for(
    planned: PlannedRule, relation: Relation | None, now: datetime
) -> tuple[str, dict[str, Any]]:
    """Return the expectation type and kwargs of a rule.

    Without a relation (for documentation), bounds stay as written and column
    types are not checked.
    """
    rule = planned.rule
    if isinstance(rule, NotNull):
        return "expect_column_values_to_not_be_null", {"column": rule.column, "mostly": rule.mostly}
    if isinstance(rule, Unique):
        if len(rule.columns) == 1:
            return "expect_column_values_to_be_unique", {
                "column": rule.columns[0],
                "mostly": rule.mostly,
            }
        return "expect_compound_columns_to_be_unique", {
            "column_list": rule.columns,
            "mostly": rule.mostly,
        }
    if isinstance(rule, Between):
        return _between(planned, rule, relation)
    if isinstance(rule, InSet):
        values = list(rule.values)
        return "expect_column_values_to_be_in_set", {
            "column": rule.column,
            "value_set": values,
            "mostly": rule.mostly,
        }
    if isinstance(rule, Regex):
        if relation is not None:
            _require_type(planned, relation, rule.column, ("VARCHAR",), "a text")
        return "expect_column_values_to_match_regex", {
            "column": rule.column,
            "regex": rule.pattern,
            "mostly": rule.mostly,
        }
    if isinstance(rule, RowCount):
        return "expect_table_row_count_to_be_between", {
            "min_value": rule.min,
            "max_value": rule.max,
        }
    if isinstance(rule, Freshness):
        return "expect_column_max_to_be_between", {
            "column": rule.column,
            "min_value": _freshness_threshold(planned, rule, relation, now),
        }
    assert isinstance(rule, CustomExpectation)
    kwargs = dict(rule.kwargs)
    if "mostly" in rule.model_fields_set:
        kwargs["mostly"] = rule.mostly
    return snake_case(rule.expectation), kwargs


def _between(
    planned: PlannedRule, rule: Between, relation: Relation | None
) -> tuple[str, dict[str, Any]]:
    if relation is None:
        column_type = None
    else:
        column_type = relation.column_type(rule.column)
        allowed = (*NUMERIC_TYPES, *TEMPORAL_TYPES, "VARCHAR")
        _require_type(planned, relation, rule.column, allowed, "a numeric, date, timestamp or text")
    kwargs = {
        "column": rule.column,
        "min_value": _bound(planned, rule.min, column_type, "min"),
        "max_value": _bound(planned, rule.max, column_type, "max"),
        "strict_min": rule.strict_min,
        "strict_max": rule.strict_max,
        "mostly": rule.mostly,
    }
    return "expect_column_values_to_be_between", kwargs


def _bound(planned: PlannedRule, value: Any, column_type: str | None, side: str) -> Any:
    """Convert a bound to the type the column is compared with."""
    if value is None or column_type is None:
        return value
    problem = None
    if column_type.startswith(NUMERIC_TYPES):
        if isinstance(value, bool) or not isinstance(value, int | float):
            problem = "a number"
    elif column_type == "DATE":
        converted = _to_date(value)
        if converted is None:
            problem = "a date such as 2013-01-01"
        value = converted
    elif column_type.startswith("TIMESTAMP"):
        converted_time = _to_datetime(value, aware="TIME ZONE" in column_type)
        if converted_time is None:
            problem = "a timestamp such as '2013-01-01 06:00:00'"
        value = converted_time
    elif not isinstance(value, str):
        problem = "a text value"
    if problem:
        raise ConfigError(
            f"suite {planned.suite.name!r}, rule {planned.name!r}: {side} must be {problem} "
            f"for a column of type {column_type}.",
            field="rules",
        )
    return value


def _to_date(value: Any) -> date | None:
    if isinstance(value, datetime):
        return value.date() if value.time() == time() else None
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            return None
    return None


def _to_datetime(value: Any, aware: bool) -> datetime | None:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime.combine(value, time())
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return None
    else:
        return None
    # Naive timestamps in the warehouse are UTC, so a naive bound is UTC too.
    if aware:
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def _freshness_threshold(
    planned: PlannedRule, rule: Freshness, relation: Relation | None, now: datetime
) -> date | datetime:
    oldest = now.astimezone(UTC) - rule.max_age_delta
    if relation is None:
        return oldest
    _require_type(planned, relation, rule.column, TEMPORAL_TYPES, "a date or timestamp")
    column_type = relation.column_type(rule.column)
    if column_type == "DATE":
        return oldest.date()
    return oldest if "TIME ZONE" in column_type else oldest.replace(tzinfo=None)


def _require_type(
    planned: PlannedRule, relation: Relation, column: str, prefixes: tuple[str, ...], noun: str
) -> None:
    column_type = relation.column_type(column)
    kind = getattr(planned.rule, "kind", "the rule")
    if not column_type.startswith(prefixes):
        raise ConfigError(
            f"suite {planned.suite.name!r}, rule {planned.name!r}: column {column!r} of "
            f"{relation.label} has type {column_type}, but {kind} needs {noun} column.",
            field="rules",
        )


def _scope(expectation_type: str, row_level: bool) -> Scope:
    if expectation_type in KEY_EXPECTATIONS:
        return "key"
    if not row_level or expectation_type in WHOLE_COLUMN_MAP_EXPECTATIONS:
        return "table"
    return "row"


def _effective_policy(planned: PlannedRule, row_level: bool) -> Policy:
    """Quarantine needs failing rows; a rule without them falls back to block, unless it asked."""
    if planned.policy != "quarantine" or row_level:
        return planned.policy
    if planned.rule.policy == "quarantine":
        raise ConfigError(
            f"suite {planned.suite.name!r}, rule {planned.name!r}: the quarantine policy moves "
            "failing rows, but this rule checks the table as a whole and has none. Use block or "
            "warn.",
            field="rules",
        )
    return "block"


# --- Great Expectations classes -------------------------------------------------------------


def expectation_class_for(expectation_type: str, planned: PlannedRule) -> type:
    """Return the Great Expectations class of a snake_case expectation type."""
    classes = _expectation_classes()
    if expectation_type in UNSUPPORTED_EXPECTATIONS:
        raise ConfigError(
            f"suite {planned.suite.name!r}, rule {planned.name!r}: {expectation_type} needs a "
            "SQL data source, which quality gates do not use; write the check as a dbt test.",
            field="rules",
        )
    if expectation_type not in classes:
        import difflib

        close = difflib.get_close_matches(expectation_type, list(classes), n=3)
        hint = f" Did you mean {', '.join(classes[name].__name__ for name in close)}?"
        hint = hint if close else ""
        raise ConfigError(
            f"suite {planned.suite.name!r}, rule {planned.name!r}: Great Expectations has no "
            f"expectation {expectation_type!r}.{hint}",
            field="rules",
        )
    return classes[expectation_type]


@functools.cache
def _expectation_classes() -> dict[str, type]:
    import great_expectations.expectations as gxe
    from great_expectations.expectations.expectation import Expectation

    return {
        snake_case(name): value
        for name, value in vars(gxe).items()
        if isinstance(value, type) and issubclass(value, Expectation) and value is not Expectation
    }


def _is_map_expectation(expectation_class: type) -> bool:
    from great_expectations.expectations.expectation import (
        ColumnMapExpectation,
        ColumnPairMapExpectation,
        MulticolumnMapExpectation,
    )

    return issubclass(
        expectation_class,
        ColumnMapExpectation | ColumnPairMapExpectation | MulticolumnMapExpectation,
    )


def instantiate(check: Check, key: str) -> Any:
    """Create the expectation object; invalid keyword arguments raise ConfigError."""
    from pydantic import ValidationError

    expectation_class = expectation_class_for(check.expectation_type, check.planned)
    kwargs = {name: value for name, value in check.kwargs.items() if value is not None}
    try:
        return expectation_class(**kwargs, meta={"mocra_key": key, "mocra_rule": check.rule})
    except (ValidationError, TypeError, ValueError) as error:
        raise ConfigError(
            f"suite {check.suite!r}, rule {check.rule!r}: invalid arguments for "
            f"{check.expectation_type}: {_first_line(error)}",
            field="rules",
        ) from None


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return " ".join(text.splitlines()[:3])
