"""Audit tables in the warehouse: runs, stage runs, committed loads and watermarks.

All tables live in the `mocra_audit` schema. Timestamps are UTC without a zone.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mocra_elt.load.warehouse import Warehouse, fetch_dicts

SCHEMA = "mocra_audit"

DDL = (
    f"create schema if not exists {SCHEMA}",
    f"""create table if not exists {SCHEMA}.runs (
        run_id varchar primary key,
        pipeline varchar not null,
        status varchar not null,
        trigger varchar not null,
        parent_run_id varchar,
        started_at timestamp not null,
        ended_at timestamp,
        error_code varchar,
        error varchar,
        target varchar
    )""",
    f"""create table if not exists {SCHEMA}.stage_runs (
        run_id varchar not null,
        stage varchar not null,
        status varchar not null,
        attempts integer not null default 0,
        rows_in bigint,
        rows_out bigint,
        bytes bigint,
        started_at timestamp,
        ended_at timestamp,
        duration_s double precision,
        error_code varchar,
        error varchar,
        dlt_load_id varchar,
        dbt_invocation_id varchar,
        details varchar,
        primary key (run_id, stage)
    )""",
    f"""create table if not exists {SCHEMA}.loads (
        load_id varchar primary key,
        run_id varchar not null,
        pipeline varchar not null,
        dataset varchar not null,
        table_name varchar not null,
        rows_loaded bigint not null,
        committed_at timestamp not null
    )""",
    f"""create table if not exists {SCHEMA}.watermarks (
        pipeline varchar not null,
        cursor_name varchar not null,
        value varchar not null,
        value_type varchar not null,
        boundary_keys varchar not null,
        run_id varchar not null,
        load_id varchar,
        committed_at timestamp not null,
        primary key (pipeline, cursor_name, run_id)
    )""",
)


def new_run_id(now: datetime | None = None) -> str:
    """Return a unique id that sorts by start time: `20130101T101500123Z-1a2b3c4d`."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%S}{now.microsecond // 1000:03d}Z-{secrets.token_hex(4)}"


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass
class Watermark:
    """The committed position of one cursor, and the keys of rows that sit exactly on it."""

    cursor_name: str
    value: Any
    value_type: str
    boundary_keys: list[str] = field(default_factory=list)

    def to_row(self) -> tuple[str, str, str]:
        return encode_value(self.value), self.value_type, json.dumps(sorted(self.boundary_keys))


def encode_value(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def decode_value(text: str, value_type: str) -> Any:
    if value_type == "timestamp":
        return datetime.fromisoformat(text)
    if value_type == "int":
        return int(text)
    if value_type == "float":
        return float(text)
    return text


class AuditStore:
    """Reads and writes the audit tables; each call opens and closes its own connection."""

    def __init__(self, warehouse: Warehouse) -> None:
        self.warehouse = warehouse

    def ensure_schema(self) -> None:
        with self.warehouse.connect() as connection:
            for statement in DDL:
                connection.execute(statement)

    # --- runs ---------------------------------------------------------------------------

    def start_run(
        self, run_id: str, pipeline: str, trigger: str, target: str, parent: str | None = None
    ) -> None:
        with self.warehouse.connect() as connection:
            connection.execute(
                f"insert into {SCHEMA}.runs (run_id, pipeline, status, trigger, parent_run_id, "
                "started_at, target) values (?, ?, 'running', ?, ?, ?, ?)",
                [run_id, pipeline, trigger, parent, utcnow(), target],
            )

    def end_run(
        self, run_id: str, status: str, error_code: str | None = None, error: str | None = None
    ) -> None:
        with self.warehouse.connect() as connection:
            connection.execute(
                f"update {SCHEMA}.runs set status = ?, ended_at = ?, error_code = ?, error = ? "
                "where run_id = ?",
                [status, utcnow(), error_code, error, run_id],
            )

    def abandon_stale_runs(self, pipeline: str, current_run_id: str) -> int:
        """Mark runs of the pipeline still 'running' as abandoned; return how many.

        Call it only while holding the pipeline's run lock: no other live process can
        then be running the pipeline, so such runs belong to a process that died.
        """
        message = (
            "the process running it ended before the run finished (for example it was "
            "killed); a later run of the pipeline found it"
        )
        with self.warehouse.connect() as connection:
            stale = connection.execute(
                f"select run_id from {SCHEMA}.runs where pipeline = ? and status = 'running' "
                "and run_id <> ?",
                [pipeline, current_run_id],
            ).fetchall()
            for (run_id,) in stale:
                connection.execute(
                    f"update {SCHEMA}.runs set status = 'abandoned', ended_at = ?, "
                    "error_code = 'RUN_ABANDONED', error = ? where run_id = ?",
                    [utcnow(), message, run_id],
                )
                connection.execute(
                    f"update {SCHEMA}.stage_runs set status = 'abandoned' "
                    "where run_id = ? and status = 'running'",
                    [run_id],
                )
        return len(stale)

    def record_stage(self, run_id: str, stage: str, **values: Any) -> None:
        """Insert or update the stage-run row of (run_id, stage) with the given columns."""
        if "details" in values and not isinstance(values["details"], str | None):
            values["details"] = json.dumps(values["details"], default=str)
        with self.warehouse.connect() as connection:
            exists = connection.execute(
                f"select count(*) from {SCHEMA}.stage_runs where run_id = ? and stage = ?",
                [run_id, stage],
            ).fetchone()
            if exists and exists[0]:
                assignments = ", ".join(f"{column} = ?" for column in values)
                connection.execute(
                    f"update {SCHEMA}.stage_runs set {assignments} where run_id = ? and stage = ?",
                    [*values.values(), run_id, stage],
                )
                return
            columns = ["run_id", "stage", *values]
            placeholders = ", ".join("?" for _ in columns)
            connection.execute(
                f"insert into {SCHEMA}.stage_runs ({', '.join(columns)}) values ({placeholders})",
                [run_id, stage, *values.values()],
            )

    def list_runs(self, pipeline: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        where, parameters = ("where pipeline = ?", [pipeline]) if pipeline else ("", [])
        return self._query(
            f"select * from {SCHEMA}.runs {where} order by run_id desc limit {int(limit)}",
            parameters,
        )

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        rows = self._query(f"select * from {SCHEMA}.runs where run_id = ?", [run_id])
        return rows[0] if rows else None

    def find_runs(self, prefix: str) -> list[dict[str, Any]]:
        return self._query(
            f"select * from {SCHEMA}.runs where left(run_id, length(?)) = ? order by run_id",
            [prefix, prefix],
        )

    def stage_runs(self, run_id: str) -> list[dict[str, Any]]:
        rows = self._query(
            f"select * from {SCHEMA}.stage_runs where run_id = ? order by started_at nulls last",
            [run_id],
        )
        order = {"extract": 0, "load": 1, "transform": 2, "quality": 3, "publish": 4}
        return sorted(rows, key=lambda row: order.get(row["stage"], 99))

    # --- watermarks and committed loads ---------------------------------------------------

    def current_watermarks(self, pipeline: str) -> dict[str, Watermark]:
        rows = self._query(
            f"select cursor_name, value, value_type, boundary_keys from {SCHEMA}.watermarks "
            "where pipeline = ? order by committed_at, run_id",
            [pipeline],
        )
        latest: dict[str, Watermark] = {}
        for row in rows:
            latest[row["cursor_name"]] = Watermark(
                cursor_name=row["cursor_name"],
                value=decode_value(row["value"], row["value_type"]),
                value_type=row["value_type"],
                boundary_keys=json.loads(row["boundary_keys"]),
            )
        return latest

    def watermarks_of_run(self, run_id: str) -> list[dict[str, Any]]:
        return self._query(
            f"select cursor_name, value, committed_at from {SCHEMA}.watermarks where run_id = ?",
            [run_id],
        )

    def committed_load_ids(self, pipeline: str) -> set[str]:
        rows = self._query(f"select load_id from {SCHEMA}.loads where pipeline = ?", [pipeline])
        return {row["load_id"] for row in rows}

    def commit_load(
        self,
        *,
        run_id: str,
        pipeline: str,
        dataset: str,
        table: str,
        load_id: str | None,
        rows_loaded: int,
        watermarks: list[Watermark],
        on_commit: Callable[[Any], None] | None = None,
    ) -> None:
        """Record a finished load and move its watermarks, in one transaction.

        `on_commit` runs inside that transaction with the open connection, for
        changes that must commit with the load, such as marking replayed letters.
        """
        now = utcnow()
        with self.warehouse.connect() as connection:
            connection.execute("begin")
            try:
                if load_id is not None:
                    connection.execute(
                        f"insert into {SCHEMA}.loads values (?, ?, ?, ?, ?, ?, ?)",
                        [load_id, run_id, pipeline, dataset, table, rows_loaded, now],
                    )
                for mark in watermarks:
                    value, value_type, boundary = mark.to_row()
                    connection.execute(
                        f"insert into {SCHEMA}.watermarks values (?, ?, ?, ?, ?, ?, ?, ?)",
                        [
                            pipeline,
                            mark.cursor_name,
                            value,
                            value_type,
                            boundary,
                            run_id,
                            load_id,
                            now,
                        ],
                    )
                if on_commit is not None:
                    on_commit(connection)
                connection.execute("commit")
            except BaseException:
                connection.execute("rollback")
                raise

    def _query(self, sql: str, parameters: list[Any]) -> list[dict[str, Any]]:
        with self.warehouse.connect() as connection:
            if not _schema_exists(connection):
                return []
            return fetch_dicts(connection, sql, parameters)


def _schema_exists(connection: Any) -> bool:
    row = connection.execute(
        "select count(*) from information_schema.tables where table_schema = ?", [SCHEMA]
    ).fetchone()
    return bool(row and row[0])
