"""The `mocra_audit.quality_results` table: one row per rule checked in a run."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mocra_elt.load.warehouse import Warehouse, fetch_dicts, table_exists
from mocra_elt.quality.engine import CheckResult, json_value

SCHEMA = "mocra_audit"
TABLE = f"{SCHEMA}.quality_results"

DDL = (
    f"create schema if not exists {SCHEMA}",
    f"""create table if not exists {TABLE} (
        run_id varchar not null,
        pipeline varchar not null,
        suite varchar not null,
        relation varchar not null,
        rule varchar not null,
        rule_index integer not null,
        expectation varchar not null,
        column_name varchar,
        policy varchar not null,
        status varchar not null,
        unexpected_count bigint,
        element_count bigint,
        unexpected_percent double,
        rows_quarantined bigint,
        observed_value varchar,
        sample varchar,
        kwargs varchar,
        checked_at timestamp not null
    )""",
)
COLUMNS = (
    "run_id",
    "pipeline",
    "suite",
    "relation",
    "rule",
    "rule_index",
    "expectation",
    "column_name",
    "policy",
    "status",
    "unexpected_count",
    "element_count",
    "unexpected_percent",
    "rows_quarantined",
    "observed_value",
    "sample",
    "kwargs",
    "checked_at",
)


@dataclass
class RuleRecord:
    """A checked rule with the status its policy gave it."""

    result: CheckResult
    relation: str
    status: str
    rows_quarantined: int = 0

    def row(self, run_id: str, pipeline: str, checked_at: datetime) -> list[Any]:
        result = self.result
        check = result.check
        observed = result.observed_value
        return [
            run_id,
            pipeline,
            check.suite,
            self.relation,
            check.rule,
            check.planned.index,
            check.expectation_type,
            check.column_label,
            check.policy,
            self.status,
            result.unexpected_count if check.row_level else None,
            result.element_count if check.row_level else None,
            result.unexpected_percent,
            self.rows_quarantined if check.policy == "quarantine" else None,
            None if observed is None else json.dumps(observed),
            json.dumps(result.sample),
            json.dumps(json_value(check.kwargs)),
            checked_at,
        ]


def ensure_results_table(connection: Any) -> None:
    for statement in DDL:
        connection.execute(statement)


def record_results(
    connection: Any, run_id: str, pipeline: str, records: list[RuleRecord], checked_at: datetime
) -> None:
    ensure_results_table(connection)
    if not records:
        return
    placeholders = ", ".join("?" for _ in COLUMNS)
    connection.executemany(
        f"insert into {TABLE} ({', '.join(COLUMNS)}) values ({placeholders})",
        [record.row(run_id, pipeline, checked_at) for record in records],
    )


def results_of_run(warehouse: Warehouse, run_id: str) -> list[dict[str, Any]]:
    """Return the rule results of one run, in suite and rule order; [] when there are none.

    Keys are the table's columns; `sample`, `observed_value` and `kwargs` contain JSON text.
    """
    with warehouse.connect() as connection:
        return query_results(connection, "where run_id = ?", [run_id])


def query_results(connection: Any, where: str, parameters: list[Any]) -> list[dict[str, Any]]:
    if not table_exists(connection, SCHEMA, "quality_results"):
        return []
    return fetch_dicts(
        connection,
        f"select * from {TABLE} {where} order by checked_at, suite, rule_index",
        parameters,
    )
