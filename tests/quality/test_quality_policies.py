"""Block, warn and quarantine on deliberately dirty tables in a real DuckDB file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from quality_helpers import by_rule, execute, gate, make_project, query, scalar, warehouse

from mocra_elt.config.project import Project
from mocra_elt.errors import QualityError
from mocra_elt.quality.results import results_of_run

ORDERS = """\
create table analytics.orders as select * from (values
    (1, 'EWR', 'AA', 10.0),
    (2, 'JFK', 'AA', 20.0),
    (3, 'LGA', NULL, 30.0),
    (4, 'XXX', 'B6', 40.0),
    (5, 'EWR', 'b6', 5000.0),
    (6, 'JFK', 'DL', 60.0),
    (6, 'JFK', 'DL', 70.0),
    (8, 'ZZZ', NULL, 80.0)
) as v(id, origin, carrier, delay)
"""
RULES = """\
model: orders
policy: {policy}
rules:
  - not_null: carrier
  - unique: id
  - in_set: origin
    values: [EWR, JFK, LGA]
  - regex: carrier
    pattern: '^[A-Z0-9]{{2}}$'
  - between: delay
    min: 0
    max: 1440
"""
# Rows failing at least one rule: 3 (null), 4 (set), 5 (regex, range), 6+6 (unique), 8 (null, set)
FAILING_IDS = [3, 4, 5, 6, 6, 8]


def orders_project(tmp_path: Path, policy: str) -> Project:
    project = make_project(tmp_path, {"orders": RULES.format(policy=policy)})
    execute(project, "create schema analytics", ORDERS)
    return project


def test_block_raises_naming_rule_and_count(tmp_path: Path) -> None:
    project = orders_project(tmp_path, "block")

    with pytest.raises(QualityError) as raised:
        gate(project, ["orders"])

    error = raised.value
    assert error.error_code == "QUALITY_BLOCKED"
    assert "suite 'orders', rule 'not_null(carrier)' on analytics.orders" in str(error)
    assert "column 'carrier', 2 of 8 rows unexpected" in str(error)
    assert error.context["suite"] == "orders"
    assert error.context["rule"] == "not_null(carrier)"
    assert error.context["column"] == "carrier"
    assert error.context["unexpected_count"] == 2


def test_block_leaves_table_untouched(tmp_path: Path) -> None:
    project = orders_project(tmp_path, "block")

    with pytest.raises(QualityError):
        gate(project, ["orders"])

    assert scalar(project, "select count(*) from analytics.orders") == 8
    tables = query(project, "select table_name from information_schema.tables")
    assert ("orders__quarantine",) not in tables


def test_block_records_results_before_failing(tmp_path: Path) -> None:
    project = orders_project(tmp_path, "block")

    with pytest.raises(QualityError):
        gate(project, ["orders"], run_id="run-block")

    rows = results_of_run(warehouse(project), "run-block")
    statuses = {row["rule"]: row["status"] for row in rows}
    assert statuses == {
        "not_null(carrier)": "failed",
        "unique(id)": "failed",
        "in_set(origin)": "failed",
        "regex(carrier)": "failed",
        "between(delay)": "failed",
    }
    assert {row["pipeline"] for row in rows} == {"shop"}


def test_warn_records_and_continues(tmp_path: Path) -> None:
    project = orders_project(tmp_path, "warn")

    report = gate(project, ["orders"], run_id="run-warn")

    assert not report.blocked
    assert {record.status for record in report.records} == {"warned"}
    assert scalar(project, "select count(*) from analytics.orders") == 8
    rows = results_of_run(warehouse(project), "run-warn")
    unique = next(row for row in rows if row["rule"] == "unique(id)")
    assert unique["unexpected_count"] == 2
    assert unique["element_count"] == 8
    assert json.loads(unique["sample"]) == [6, 6]
    assert unique["policy"] == "warn"


def test_quarantine_keeps_row_totals(tmp_path: Path) -> None:
    project = orders_project(tmp_path, "quarantine")

    report = gate(project, ["orders"])

    kept = scalar(project, "select count(*) from analytics.orders")
    moved = scalar(project, "select count(*) from analytics.orders__quarantine")
    assert kept + moved == 8
    assert moved == len(FAILING_IDS)
    assert report.moved == {"analytics.orders": len(FAILING_IDS)}


def test_quarantine_moves_exactly_failing_rows(tmp_path: Path) -> None:
    project = orders_project(tmp_path, "quarantine")

    gate(project, ["orders"])

    moved = query(project, "select id from analytics.orders__quarantine order by id")
    kept = query(project, "select id from analytics.orders order by id")
    assert [row[0] for row in moved] == FAILING_IDS
    assert [row[0] for row in kept] == [1, 2]


def test_quarantine_row_failing_two_rules_once(tmp_path: Path) -> None:
    project = orders_project(tmp_path, "quarantine")

    gate(project, ["orders"], run_id="run-q")

    rows = query(
        project,
        "select _mocra_run_id, _suite, _rule, _column, _failing_value, _failure_count, "
        "_failures from analytics.orders__quarantine where id = 5",
    )
    assert len(rows) == 1
    run_id, suite, rule, column, value, count, failures = rows[0]
    assert (run_id, suite, rule, column, value, count) == (
        "run-q",
        "orders",
        "regex(carrier)",
        "carrier",
        "b6",
        2,
    )
    assert json.loads(failures) == [
        {"suite": "orders", "rule": "regex(carrier)", "column": "carrier", "value": "b6"},
        {"suite": "orders", "rule": "between(delay)", "column": "delay", "value": 5000.0},
    ]


def test_quarantine_null_failing_value_is_null(tmp_path: Path) -> None:
    project = orders_project(tmp_path, "quarantine")

    gate(project, ["orders"])

    rows = query(
        project,
        "select _rule, _failing_value, _failure_count from analytics.orders__quarantine "
        "where id = 8",
    )
    assert rows == [("not_null(carrier)", None, 2)]


def test_quarantine_keeps_row_columns(tmp_path: Path) -> None:
    project = orders_project(tmp_path, "quarantine")

    gate(project, ["orders"])

    rows = query(
        project,
        "select id, origin, carrier, delay from analytics.orders__quarantine where id = 4",
    )
    assert rows == [(4, "XXX", "B6", 40.0)]


def test_quarantine_records_status_and_rows(tmp_path: Path) -> None:
    project = orders_project(tmp_path, "quarantine")

    gate(project, ["orders"], run_id="run-q")

    rows = results_of_run(warehouse(project), "run-q")
    moved = {row["rule"]: (row["status"], row["rows_quarantined"]) for row in rows}
    assert moved == {
        "not_null(carrier)": ("quarantined", 2),
        "unique(id)": ("quarantined", 2),
        "in_set(origin)": ("quarantined", 2),
        "regex(carrier)": ("quarantined", 1),
        "between(delay)": ("quarantined", 1),
    }


def test_quarantine_then_clean_run_passes(tmp_path: Path) -> None:
    project = orders_project(tmp_path, "quarantine")
    gate(project, ["orders"], run_id="run-1")

    report = gate(project, ["orders"], run_id="run-2")

    assert {record.status for record in report.records} == {"passed"}
    assert report.moved == {}


def test_second_quarantine_appends_and_adds_columns(tmp_path: Path) -> None:
    project = orders_project(tmp_path, "quarantine")
    gate(project, ["orders"], run_id="run-1")
    execute(
        project,
        "alter table analytics.orders add column note varchar",
        "insert into analytics.orders values (9, 'MIA', 'UA', 1.0, 'new airport')",
    )

    gate(project, ["orders"], run_id="run-2")

    rows = query(
        project,
        "select _mocra_run_id, count(*), count(note) from analytics.orders__quarantine "
        "group by all order by 1",
    )
    assert rows == [("run-1", 6, 0), ("run-2", 1, 1)]


def test_block_wins_over_quarantine(tmp_path: Path) -> None:
    project = make_project(
        tmp_path,
        {
            "orders": """\
            model: orders
            policy: quarantine
            rules:
              - in_set: origin
                values: [EWR, JFK, LGA]
              - not_null: carrier
                policy: block
            """
        },
    )
    execute(project, "create schema analytics", ORDERS)

    with pytest.raises(QualityError):
        gate(project, ["orders"], run_id="run-b")

    assert scalar(project, "select count(*) from analytics.orders") == 8
    rows = results_of_run(warehouse(project), "run-b")
    assert {row["rule"]: row["status"] for row in rows} == {
        "in_set(origin)": "failed",
        "not_null(carrier)": "failed",
    }


def test_mostly_tolerates_share_of_failures(tmp_path: Path) -> None:
    project = make_project(
        tmp_path,
        {
            "loose": "model: items\nrules:\n  - not_null: x\n    mostly: 0.98\n",
            "strict": "model: items\nrules:\n  - not_null: x\n    mostly: 0.995\n",
        },
    )
    execute(
        project,
        "create schema analytics",
        "create table analytics.items as select case when i = 0 then null else i end as x "
        "from range(100) as r(i)",
    )

    assert not gate(project, ["loose"]).blocked
    with pytest.raises(QualityError, match="1 of 100 rows unexpected"):
        gate(project, ["strict"])


def test_mostly_ignores_nulls_in_denominator(tmp_path: Path) -> None:
    project = make_project(
        tmp_path,
        {
            "range": """\
            model: items
            rules:
              - between: x
                min: 0
                max: 10
                mostly: 0.5
            """
        },
    )
    # 2 NULLs, 1 in range, 1 out of range: half of the non-NULL values pass.
    execute(
        project,
        "create schema analytics",
        "create table analytics.items as select * from (values (null), (null), (5), (50)) v(x)",
    )

    record = by_rule(gate(project, ["range"]))["between(x)"]

    assert record.status == "passed"
    assert record.result.unexpected_count == 1
    assert record.result.missing_count == 2


def test_quarantine_with_mostly_moves_nothing_when_passing(tmp_path: Path) -> None:
    project = make_project(
        tmp_path,
        {"q": "model: items\npolicy: quarantine\nrules:\n  - not_null: x\n    mostly: 0.9\n"},
    )
    execute(
        project,
        "create schema analytics",
        "create table analytics.items as select case when i = 0 then null else i end as x "
        "from range(20) as r(i)",
    )

    report = gate(project, ["q"])

    assert by_rule(report)["not_null(x)"].status == "passed"
    assert scalar(project, "select count(*) from analytics.items") == 20


def test_two_suites_on_one_table_move_row_once(tmp_path: Path) -> None:
    project = make_project(
        tmp_path,
        {
            "first": "model: orders\npolicy: quarantine\nrules:\n  - not_null: carrier\n",
            "second": """\
            model: orders
            policy: quarantine
            rules:
              - in_set: origin
                values: [EWR, JFK, LGA]
            """,
        },
    )
    execute(project, "create schema analytics", ORDERS)

    gate(project, ["first", "second"])

    rows = query(
        project,
        "select id, _suite, _failure_count from analytics.orders__quarantine order by id",
    )
    assert rows == [(3, "first", 1), (4, "second", 1), (8, "first", 2)]
    assert scalar(project, "select count(*) from analytics.orders") == 5


def test_pipeline_policy_per_suite_applies(tmp_path: Path) -> None:
    project = orders_project(tmp_path, "block")

    report = gate(project, [{"name": "orders", "policy": "warn"}])  # type: ignore[list-item]

    assert {record.status for record in report.records} == {"warned"}
