"""The dead-letter queue: one table for records and batches that failed in any stage.

Each letter points to its payload with `payload_ref`, a path relative to the
project's data folder (`dead_letters/<run_id>/...`) where the failed records or
batch description are kept. Payload files are never deleted, discarding a letter
only changes its status.

Letter ids are a digest of pipeline, stage, source reference and payload text,
and inserts ignore ids that exist. A batch that is extracted again after a crash
therefore reports the same bad records without duplicating their letters.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mocra_elt.audit.store import SCHEMA, utcnow
from mocra_elt.files import write_atomically
from mocra_elt.load.warehouse import Warehouse, fetch_dicts, table_exists

STATUSES = ("open", "replayed", "discarded")

DDL = f"""create table if not exists {SCHEMA}.dead_letters (
    id varchar primary key,
    run_id varchar not null,
    pipeline_id varchar not null,
    stage varchar not null,
    error_code varchar not null,
    error varchar not null,
    payload_ref varchar not null,
    source_ref varchar,
    record_key varchar,
    attempts integer not null,
    status varchar not null,
    replay_run_id varchar,
    created_at timestamp not null,
    updated_at timestamp not null
)"""

COLUMNS = (
    "id", "run_id", "pipeline_id", "stage", "error_code", "error", "payload_ref", "source_ref",
    "record_key", "attempts", "status", "replay_run_id", "created_at", "updated_at",
)  # fmt: skip


@dataclass
class DeadLetter:
    run_id: str
    pipeline_id: str
    stage: str
    error_code: str
    error: str
    payload_ref: str
    source_ref: str | None = None
    record_key: str | None = None
    attempts: int = 1
    status: str = "open"
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            self.id = letter_id(self.pipeline_id, self.stage, self.source_ref or "", self.error)


def letter_id(pipeline: str, stage: str, source_ref: str, content: str) -> str:
    text = "\x1f".join((pipeline, stage, source_ref, content))
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:16]


class DeadLetterStore:
    """Writes letters and their payload files; reads them back for the `dlq` commands."""

    def __init__(self, warehouse: Warehouse, data_dir: Path) -> None:
        self.warehouse = warehouse
        self.data_dir = data_dir

    def ensure_table(self, connection: Any | None = None) -> None:
        if connection is not None:
            connection.execute(f"create schema if not exists {SCHEMA}")
            connection.execute(DDL)
            return
        with self.warehouse.connect() as opened:
            self.ensure_table(opened)

    def save_payload(self, run_id: str, name: str, content: bytes) -> str:
        """Write a payload file atomically and return its `payload_ref`."""
        relative = Path("dead_letters") / run_id / name
        # Payloads are records from the source, so only the owner may read them.
        write_atomically(self.data_dir / relative, content, mode=0o600)
        return relative.as_posix()

    def payload_path(self, payload_ref: str) -> Path:
        return self.data_dir / payload_ref

    def record_lines(
        self,
        payload_ref: str,
        cache: dict[str, list[str]] | None = None,
        errors: str = "strict",
    ) -> list[str]:
        """Return the record `<payload file>#<n>` points to, after its CSV header if it has one.

        `cache` maps payload files to their lines, for callers that read many records.
        """
        reference, _, index = payload_ref.partition("#")
        lines = cache.get(reference) if cache is not None else None
        if lines is None:
            text = self.payload_path(reference).read_text(encoding="utf-8", errors=errors)
            lines = text.splitlines()
            if cache is not None:
                cache[reference] = lines
        # NOTE: payload records are found by line, so a CSV record whose quoted value contains a
        # line break is cut at it. Such records need their payload file fixed by hand.
        header = [lines[0]] if reference.endswith(".csv") else []
        return [*header, lines[len(header) + int(index) - 1]]

    def add(self, letters: list[DeadLetter]) -> int:
        """Insert letters whose id is new; return how many were inserted."""
        if not letters:
            return 0
        now = utcnow()
        with self.warehouse.connect() as connection:
            self.ensure_table(connection)
            known = _existing_ids(connection, [letter.id for letter in letters])
            fresh = [letter for letter in letters if letter.id not in known]
            for letter in fresh:
                connection.execute(
                    f"insert into {SCHEMA}.dead_letters ({', '.join(COLUMNS)}) "
                    f"values ({', '.join('?' for _ in COLUMNS)})",
                    [
                        letter.id, letter.run_id, letter.pipeline_id, letter.stage,
                        letter.error_code, letter.error, letter.payload_ref, letter.source_ref,
                        letter.record_key, letter.attempts, letter.status, None, now, now,
                    ],
                )  # fmt: skip
        return len(fresh)

    def list_letters(
        self,
        *,
        pipeline: str | None = None,
        stage: str | None = None,
        run_id: str | None = None,
        status: str | None = None,
    ) -> list[dict[str, Any]]:
        filters = {"pipeline_id": pipeline, "stage": stage, "run_id": run_id, "status": status}
        wanted = {column: value for column, value in filters.items() if value is not None}
        where = " and ".join(f"{column} = ?" for column in wanted) or "true"
        return self._query(
            f"select * from {SCHEMA}.dead_letters where {where} order by created_at, id",
            list(wanted.values()),
        )

    def get(self, letter: str) -> dict[str, Any] | None:
        rows = self._query(
            f"select * from {SCHEMA}.dead_letters where left(id, length(?)) = ?", [letter, letter]
        )
        return rows[0] if len(rows) == 1 else None

    def find(self, prefix: str) -> list[dict[str, Any]]:
        return self._query(
            f"select * from {SCHEMA}.dead_letters where left(id, length(?)) = ?", [prefix, prefix]
        )

    def set_status(
        self,
        ids: list[str],
        status: str,
        replay_run_id: str | None = None,
        connection: Any | None = None,
    ) -> None:
        """Change the status of letters, in the caller's transaction when a connection is given."""
        if status not in STATUSES:
            raise ValueError(f"unknown dead-letter status {status!r}")
        if connection is None:
            with self.warehouse.connect() as opened:
                self.set_status(ids, status, replay_run_id, opened)
            return
        for letter in ids:
            connection.execute(
                f"update {SCHEMA}.dead_letters set status = ?, replay_run_id = ?, "
                "updated_at = ? where id = ?",
                [status, replay_run_id, utcnow(), letter],
            )

    def count_attempt(self, ids: list[str]) -> None:
        with self.warehouse.connect() as connection:
            for letter in ids:
                connection.execute(
                    f"update {SCHEMA}.dead_letters set attempts = attempts + 1, updated_at = ? "
                    "where id = ?",
                    [utcnow(), letter],
                )

    def _query(self, sql: str, parameters: list[Any]) -> list[dict[str, Any]]:
        with self.warehouse.connect() as connection:
            if not table_exists(connection, SCHEMA, "dead_letters"):
                return []
            return fetch_dicts(connection, sql, parameters)


def _existing_ids(connection: Any, ids: list[str]) -> set[str]:
    known: set[str] = set()
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        rows = connection.execute(
            f"select id from {SCHEMA}.dead_letters where id in ({', '.join('?' for _ in chunk)})",
            chunk,
        ).fetchall()
        known.update(row[0] for row in rows)
    return known


def describe_batch(document: dict[str, Any]) -> bytes:
    """Encode a batch description (what failed and where its data is) as a payload."""
    return (json.dumps(document, indent=2, default=str) + "\n").encode()
