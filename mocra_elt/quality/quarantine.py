"""Move failing rows out of a checked table into `<schema>.<table>__quarantine`.

Each failing row is moved once, however many rules it failed. The quarantine
table has the row's columns plus:

- `_mocra_run_id`: the run that quarantined the row;
- `_suite`, `_rule`, `_column`, `_failing_value`: the first rule the row failed,
  in pipeline suite order and then rule order, with its value as text;
- `_failure_count` and `_failures`: how many rules the row failed, and all of
  them as a JSON array of {suite, rule, column, value};
- `_quarantined_at`: UTC time of the move.

A row column whose name is one of these gets the prefix `_row` in the
quarantine table (a raw table's own `_mocra_run_id`, the run that loaded the
row, becomes `_row_mocra_run_id`). The copy and the delete commit in one
transaction, so rows kept plus rows quarantined always equal the rows checked.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from mocra_elt.errors import QualityError
from mocra_elt.load.warehouse import quote
from mocra_elt.quality.engine import CheckResult, json_value
from mocra_elt.quality.relation import Relation, describe_relation

log = logging.getLogger(__name__)

QUARANTINE_SUFFIX = "__quarantine"
FAILURES_VIEW = "__mocra_quarantine_failures"
METADATA_COLUMNS = {
    "_mocra_run_id": "varchar",
    "_suite": "varchar",
    "_rule": "varchar",
    "_column": "varchar",
    "_failing_value": "varchar",
    "_failure_count": "integer",
    "_failures": "varchar",
    "_quarantined_at": "timestamp",
}


@dataclass
class Failure:
    suite: str
    rule: str
    column: str | None
    value: Any


@dataclass
class QuarantineBatch:
    """The failing rows of one relation, each with every rule it failed."""

    relation: Relation
    rows: dict[int, list[Failure]] = field(default_factory=dict)

    def add(self, result: CheckResult) -> None:
        check = result.check
        suite, rule, column = check.suite, check.rule, check.column_label
        for rowid, value in result.failing_rows.items():
            self.rows.setdefault(rowid, []).append(Failure(suite, rule, column, value))


def quarantine_table_name(relation: Relation) -> str:
    return relation.name + QUARANTINE_SUFFIX


def move_rows(connection: Any, batch: QuarantineBatch, run_id: str, now: Any) -> int:
    """Copy the failing rows into the quarantine table and delete them, in one transaction."""
    if not batch.rows:
        return 0
    relation = batch.relation
    target = f"{quote(relation.schema)}.{quote(quarantine_table_name(relation))}"
    connection.register(FAILURES_VIEW, _failures_table(batch, run_id, now))
    try:
        connection.execute("begin")
        try:
            _ensure_quarantine_table(connection, relation, target)
            inserted = _copy_rows(connection, relation, target)
            deleted = _delete_rows(connection, relation)
            _check_counts(relation, len(batch.rows), inserted, deleted)
            connection.execute("commit")
        except BaseException:
            connection.execute("rollback")
            raise
    finally:
        connection.unregister(FAILURES_VIEW)
    log.info("moved %d rows of %s to %s", deleted, relation.label, target)
    return deleted


def _failures_table(batch: QuarantineBatch, run_id: str, now: Any) -> Any:
    import pyarrow as pa

    rowids = sorted(batch.rows)
    firsts = [batch.rows[rowid][0] for rowid in rowids]
    return pa.table(
        {
            "failing_rowid": pa.array(rowids, pa.int64()),
            "_mocra_run_id": pa.array([run_id] * len(rowids), pa.string()),
            "_suite": pa.array([failure.suite for failure in firsts], pa.string()),
            "_rule": pa.array([failure.rule for failure in firsts], pa.string()),
            "_column": pa.array([failure.column for failure in firsts], pa.string()),
            "_failing_value": pa.array([value_text(f.value) for f in firsts], pa.string()),
            "_failure_count": pa.array([len(batch.rows[r]) for r in rowids], pa.int32()),
            "_failures": pa.array([_failures_json(batch.rows[r]) for r in rowids], pa.string()),
            "_quarantined_at": pa.array([now] * len(rowids), pa.timestamp("us")),
        }
    )


def value_text(value: Any) -> str | None:
    """Render a failing value as text: NULL stays NULL, several columns become JSON."""
    converted = json_value(value)
    if converted is None:
        return None
    if isinstance(converted, dict | list):
        return json.dumps(converted, sort_keys=False)
    return str(converted)


def _failures_json(failures: list[Failure]) -> str:
    return json.dumps(
        [
            {
                "suite": failure.suite,
                "rule": failure.rule,
                "column": failure.column,
                "value": json_value(failure.value),
            }
            for failure in failures
        ]
    )


def _row_columns(relation: Relation) -> list[tuple[str, str]]:
    """Pair each row column with its name in the quarantine table."""
    return [
        (column, f"_row{column}" if column in METADATA_COLUMNS else column)
        for column in relation.columns
    ]


def _ensure_quarantine_table(connection: Any, relation: Relation, target: str) -> None:
    """Create the quarantine table, or add the columns the checked table gained since."""
    existing = describe_relation(connection, relation.schema, quarantine_table_name(relation))
    expected = [(name, relation.columns[column]) for column, name in _row_columns(relation)] + list(
        METADATA_COLUMNS.items()
    )
    if existing is None:
        columns = ", ".join(f"{quote(name)} {kind}" for name, kind in expected)
        connection.execute(f"create table {target} ({columns})")
        return
    for name, kind in expected:
        if name not in existing.columns:
            connection.execute(f"alter table {target} add column {quote(name)} {kind}")


def _copy_rows(connection: Any, relation: Relation, target: str) -> int:
    row_columns = _row_columns(relation)
    names = [name for _, name in row_columns] + list(METADATA_COLUMNS)
    selected = [f"t.{quote(column)}" for column, _ in row_columns]
    selected += [f"f.{quote(name)}" for name in METADATA_COLUMNS]
    row = connection.execute(
        f"insert into {target} ({', '.join(quote(name) for name in names)}) "
        f"select {', '.join(selected)} from {relation.sql} t "
        f"join {FAILURES_VIEW} f on t.rowid = f.failing_rowid order by f.failing_rowid"
    ).fetchone()
    return int(row[0]) if row else 0


def _delete_rows(connection: Any, relation: Relation) -> int:
    row = connection.execute(
        f"delete from {relation.sql} where rowid in (select failing_rowid from {FAILURES_VIEW})"
    ).fetchone()
    return int(row[0]) if row else 0


def _check_counts(relation: Relation, failing: int, inserted: int, deleted: int) -> None:
    if inserted == failing and deleted == failing:
        return
    raise QualityError(
        f"quarantine of {relation.label} stopped: {failing} rows failed, but {inserted} were "
        f"copied and {deleted} deleted, so the table changed while it was checked. Nothing was "
        "moved; run the pipeline again.",
        stage="quality",
        error_code="QUALITY_BLOCKED",
    )
