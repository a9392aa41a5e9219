"""Defined outcomes: empty tables, missing columns, NULL versus NaN, freshness, escape hatch."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from quality_helpers import by_rule, execute, gate, make_project, query, scalar

from mocra_elt.config.project import Project
from mocra_elt.errors import ConfigError, QualityError

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
ROW_RULES = """\
model: readings
rules:
  - not_null: value
  - unique: id
  - between: value
    min: 0
    max: 100
  - in_set: station
    values: [a, b]
  - regex: station
    pattern: '^[ab]$'
"""


def readings(tmp_path: Path, suites: dict[str, str], table_sql: str) -> Project:
    project = make_project(tmp_path, suites)
    execute(project, "create schema analytics", f"create table analytics.readings as {table_sql}")
    return project


def test_empty_table_passes_row_rules(tmp_path: Path) -> None:
    project = readings(
        tmp_path,
        {"rows": ROW_RULES},
        "select 1 as id, 'a' as station, 1.0::double as value where false",
    )

    report = gate(project, ["rows"])

    assert {record.status for record in report.records} == {"passed"}
    assert {record.result.element_count for record in report.records} == {0}


def test_empty_table_fails_row_count_min(tmp_path: Path) -> None:
    project = readings(
        tmp_path,
        {"count": "model: readings\nrules:\n  - row_count: {min: 1}\n"},
        "select 1 as id where false",
    )

    with pytest.raises(QualityError, match="observed 0, expected min_value=1"):
        gate(project, ["count"])


def test_row_count_max_fails(tmp_path: Path) -> None:
    project = readings(
        tmp_path,
        {"count": "model: readings\nrules:\n  - row_count: {min: 1, max: 2}\n"},
        "select i as id from range(3) r(i)",
    )

    record = by_rule(gate(project, ["count"], policy="warn"))["row_count"]

    assert record.status == "warned"
    assert record.result.observed_value == 3


def test_empty_table_fails_freshness(tmp_path: Path) -> None:
    project = readings(
        tmp_path,
        {"fresh": "model: readings\nrules:\n  - freshness: at\n    max_age: 48h\n"},
        "select timestamp '2024-06-01 00:00' as at where false",
    )

    with pytest.raises(QualityError, match="freshness"):
        gate(project, ["fresh"], now=NOW)


def test_missing_column_names_column_and_model(tmp_path: Path) -> None:
    project = readings(
        tmp_path,
        {"rows": "model: readings\nrules:\n  - not_null: valeu\n"},
        "select 1 as id, 2.0 as value",
    )

    with pytest.raises(ConfigError) as raised:
        gate(project, ["rows"])

    message = str(raised.value)
    assert "column 'valeu' does not exist in analytics.readings" in message
    assert "Did you mean value?" in message
    assert "suite 'rows', rule 'not_null(valeu)'" in message


def test_missing_model_named(tmp_path: Path) -> None:
    project = make_project(tmp_path, {"rows": "model: nowhere\nrules:\n  - not_null: a\n"})
    execute(project, "create schema analytics")

    with pytest.raises(ConfigError, match="dbt model 'nowhere' was not found"):
        gate(project, ["rows"])


def test_all_null_column(tmp_path: Path) -> None:
    project = readings(
        tmp_path,
        {"rows": ROW_RULES},
        "select i as id, null::varchar as station, null::double as value from range(4) r(i)",
    )

    records = by_rule(gate(project, ["rows"], policy="warn"))

    assert records["not_null(value)"].status == "warned"
    assert records["not_null(value)"].result.unexpected_count == 4
    for rule in ("between(value)", "in_set(station)", "regex(station)", "unique(id)"):
        assert records[rule].status == "passed", rule
    assert records["between(value)"].result.missing_count == 4


def test_nan_is_not_null(tmp_path: Path) -> None:
    project = readings(
        tmp_path,
        {"rows": "model: readings\nrules:\n  - not_null: value\n"},
        "select * from (values (1, 'nan'::double), (2, null), (3, 5.0)) v(id, value)",
    )

    record = by_rule(gate(project, ["rows"], policy="warn"))["not_null(value)"]

    assert record.result.unexpected_count == 1
    assert record.result.sample == [None]


def test_nan_fails_between(tmp_path: Path) -> None:
    project = make_project(
        tmp_path,
        {
            "rows": """\
            model: readings
            policy: quarantine
            rules:
              - between: {column: value, min: 0}
            """
        },
    )
    execute(
        project,
        "create schema analytics",
        "create table analytics.readings as select * from "
        "(values (1, 'nan'::double), (2, null), (3, 5.0)) v(id, value)",
    )

    record = by_rule(gate(project, ["rows"]))["between(value)"]

    assert record.result.unexpected_count == 1
    assert record.result.missing_count == 1
    assert query(project, "select id, _failing_value from analytics.readings__quarantine") == [
        (1, "NaN")
    ]


def test_null_in_double_column_stays_null(tmp_path: Path) -> None:
    project = make_project(
        tmp_path,
        {
            "rows": """\
            model: readings
            policy: quarantine
            rules:
              - not_null: value
              - between: {column: value, max: 10}
            """
        },
    )
    execute(
        project,
        "create schema analytics",
        "create table analytics.readings as select * from "
        "(values (1, null::double), (2, 5.0), (3, 50.0)) v(id, value)",
    )

    records = by_rule(gate(project, ["rows"]))

    assert records["not_null(value)"].result.sample == [None]
    assert records["between(value)"].result.sample == [50.0]
    moved = query(
        project, "select id, _rule, _failing_value from analytics.readings__quarantine order by id"
    )
    assert moved == [(1, "not_null(value)", None), (3, "between(value)", "50.0")]


def test_between_exclusive_bounds(tmp_path: Path) -> None:
    project = readings(
        tmp_path,
        {
            "inclusive": "model: readings\nrules:\n  - between: {column: value, min: 0, max: 10}\n",
            "exclusive": """\
            model: readings
            rules:
              - between: {column: value, min: 0, max: 10, strict_min: true, strict_max: true}
            """,
        },
        "select * from (values (0), (5), (10)) v(value)",
    )

    inclusive = by_rule(gate(project, ["inclusive"]))["between(value)"]
    exclusive = by_rule(gate(project, ["exclusive"], policy="warn"))["between(value)"]

    assert inclusive.result.unexpected_count == 0
    assert exclusive.result.unexpected_count == 2


def test_between_on_dates(tmp_path: Path) -> None:
    project = readings(
        tmp_path,
        {"dates": "model: readings\nrules:\n  - between: {column: day, min: 2013-01-01}\n"},
        "select * from (values (date '2012-12-31'), (date '2013-01-01')) v(day)",
    )

    record = by_rule(gate(project, ["dates"], policy="warn"))["between(day)"]

    assert record.result.unexpected_count == 1
    assert record.result.sample == ["2012-12-31"]


def test_between_bound_type_mismatch(tmp_path: Path) -> None:
    project = readings(
        tmp_path,
        {"rows": "model: readings\nrules:\n  - between: {column: value, min: low}\n"},
        "select 1.0 as value",
    )

    with pytest.raises(ConfigError, match="min must be a number for a column of type"):
        gate(project, ["rows"])


def test_regex_needs_text_column(tmp_path: Path) -> None:
    project = readings(
        tmp_path,
        {"rows": "model: readings\nrules:\n  - regex: {column: id, pattern: '^1'}\n"},
        "select 1 as id",
    )

    with pytest.raises(ConfigError, match="has type INTEGER, but regex needs a text column"):
        gate(project, ["rows"])


@pytest.mark.parametrize(
    ("column_sql", "fresh"),
    [
        ("timestamp '2024-05-31 00:00'", True),
        ("timestamp '2024-05-29 00:00'", False),
        ("timestamptz '2024-05-31 00:00:00+00'", True),
        ("timestamptz '2024-05-30 11:00:00+00'", False),
        ("date '2024-05-31'", True),
        ("date '2024-05-29'", False),
    ],
)
def test_freshness_by_column_type(tmp_path: Path, column_sql: str, fresh: bool) -> None:
    project = readings(
        tmp_path,
        {"fresh": "model: readings\nrules:\n  - freshness: at\n    max_age: 48h\n"},
        f"select {column_sql} as at union all select null",
    )

    record = by_rule(gate(project, ["fresh"], policy="warn", now=NOW))["freshness(at)"]

    assert (record.status == "passed") is fresh


def test_freshness_needs_temporal_column(tmp_path: Path) -> None:
    project = readings(
        tmp_path,
        {"fresh": "model: readings\nrules:\n  - freshness: {column: id, max_age: 1d}\n"},
        "select 1 as id",
    )

    with pytest.raises(ConfigError, match="freshness needs a date or timestamp column"):
        gate(project, ["fresh"])


def test_quarantine_on_view_rejected(tmp_path: Path) -> None:
    project = make_project(
        tmp_path, {"rows": "model: v\npolicy: quarantine\nrules:\n  - not_null: a\n"}
    )
    execute(project, "create schema analytics", "create view analytics.v as select 1 as a")

    with pytest.raises(ConfigError, match="is a view"):
        gate(project, ["rows"])


def test_view_can_block_and_warn(tmp_path: Path) -> None:
    project = make_project(tmp_path, {"rows": "model: v\npolicy: warn\nrules:\n  - not_null: a\n"})
    execute(
        project,
        "create schema analytics",
        "create view analytics.v as select * from (values (1), (null)) t(a)",
    )

    record = by_rule(gate(project, ["rows"]))["not_null(a)"]

    assert record.status == "warned"
    assert record.result.unexpected_count == 1


def test_inherited_quarantine_on_row_count_blocks(tmp_path: Path) -> None:
    project = readings(
        tmp_path,
        {"rows": "model: readings\npolicy: quarantine\nrules:\n  - row_count: {min: 5}\n"},
        "select 1 as id",
    )

    with pytest.raises(QualityError) as raised:
        gate(project, ["rows"])

    assert raised.value.context["rule"] == "row_count"


def test_explicit_quarantine_on_row_count_rejected(tmp_path: Path) -> None:
    project = readings(
        tmp_path,
        {"rows": "model: readings\nrules:\n  - row_count: {min: 5, policy: quarantine}\n"},
        "select 1 as id",
    )

    with pytest.raises(ConfigError, match="checks the table as a whole"):
        gate(project, ["rows"])


def test_expectation_escape_hatch_quarantines(tmp_path: Path) -> None:
    project = readings(
        tmp_path,
        {
            "codes": """\
            model: readings
            policy: quarantine
            rules:
              - expectation: ExpectColumnValueLengthsToBeBetween
                kwargs: {column: station, min_value: 2, max_value: 3}
            """
        },
        "select * from (values (1, 'ab'), (2, 'a'), (3, 'abcd'), (4, 'abc')) v(id, station)",
    )

    gate(project, ["codes"])

    moved = query(project, "select id, _rule from analytics.readings__quarantine order by id")
    assert moved == [
        (2, "expect_column_value_lengths_to_be_between(station)"),
        (3, "expect_column_value_lengths_to_be_between(station)"),
    ]
    assert scalar(project, "select count(*) from analytics.readings") == 2


def test_expectation_escape_hatch_aggregate(tmp_path: Path) -> None:
    project = readings(
        tmp_path,
        {
            "mean": """\
            model: readings
            rules:
              - expectation: expect_column_mean_to_be_between
                kwargs: {column: value, min_value: 0, max_value: 1}
            """
        },
        "select * from (values (1.0), (3.0)) v(value)",
    )

    with pytest.raises(QualityError, match="observed 2.0"):
        gate(project, ["mean"])


def test_unknown_expectation_suggests_names(tmp_path: Path) -> None:
    project = readings(
        tmp_path,
        {"rows": "model: readings\nrules:\n  - expectation: ExpectColumnMeanToBeBetwen\n"},
        "select 1 as id",
    )

    with pytest.raises(ConfigError, match="Did you mean ExpectColumnMeanToBeBetween"):
        gate(project, ["rows"])


def test_invalid_expectation_kwargs_rejected(tmp_path: Path) -> None:
    project = readings(
        tmp_path,
        {
            "rows": """\
            model: readings
            rules:
              - expectation: ExpectColumnMeanToBeBetween
                kwargs: {column: id, minimum: 1}
            """
        },
        "select 1 as id",
    )

    with pytest.raises(ConfigError, match="invalid arguments for expect_column_mean_to_be_between"):
        gate(project, ["rows"])


def test_raw_table_run_id_column_kept(tmp_path: Path) -> None:
    project = make_project(
        tmp_path,
        {"raw": "table: raw_shop.orders\npolicy: quarantine\nrules:\n  - not_null: amount\n"},
    )
    execute(
        project,
        "create schema raw_shop",
        "create table raw_shop.orders as select * from "
        "(values (1, 'load-7'), (null, 'load-7')) v(amount, _mocra_run_id)",
    )

    gate(project, ["raw"], run_id="run-9")

    rows = query(
        project, "select _row_mocra_run_id, _mocra_run_id from raw_shop.orders__quarantine"
    )
    assert rows == [("load-7", "run-9")]


def test_missing_table_named(tmp_path: Path) -> None:
    project = make_project(tmp_path, {"raw": "table: raw_shop.orders\nrules:\n  - not_null: a\n"})
    execute(project, "create schema raw_shop")

    with pytest.raises(ConfigError, match="table raw_shop.orders does not exist"):
        gate(project, ["raw"])


def test_decimal_column_between(tmp_path: Path) -> None:
    project = readings(
        tmp_path,
        {"rows": "model: readings\nrules:\n  - between: {column: price, min: 0, max: 10}\n"},
        "select * from (values (1.50::decimal(10, 2)), (12.25::decimal(10, 2))) v(price)",
    )

    record = by_rule(gate(project, ["rows"], policy="warn"))["between(price)"]

    assert record.result.unexpected_count == 1
    assert record.result.sample == [12.25]
