"""Record-level watermark filtering on Arrow batches.

A `RecordCursor` keeps the rows past the committed watermark and tracks the new
maximum. Rows whose cursor equals the watermark are kept only when their key is
not among the boundary keys stored with it, so rows that share the watermark
value are neither lost nor loaded twice.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from mocra_elt.audit.store import Watermark
from mocra_elt.config.model import Incremental, parse_duration
from mocra_elt.errors import SourceError


@dataclass
class RecordCursor:
    incremental: Incremental
    primary_key: list[str]
    committed: Watermark | None
    pipeline: str
    maximum: Any = None
    boundary: set[str] = field(default_factory=set)
    rows_seen: int = 0

    @property
    def name(self) -> str:
        return self.incremental.cursor

    def start_value(self) -> Any:
        """Return the lowest cursor value to request: the watermark minus the lookback."""
        value = self.committed.value if self.committed else self._initial_value()
        if value is None or self.incremental.lookback is None:
            return value
        if isinstance(value, datetime):
            return value - parse_duration(self.incremental.lookback)
        if isinstance(value, int | float):
            return value - _numeric_lookback(self.incremental.lookback)
        return value

    def filter(self, table: pa.Table) -> pa.Table:
        """Return the rows of `table` past the watermark and update the running maximum."""
        if self.name not in table.column_names:
            raise SourceError(
                f"pipeline {self.pipeline!r}: the incremental cursor column {self.name!r} is "
                f"missing from the source data (columns: {', '.join(table.column_names)}). "
                "Fix load.incremental.cursor.",
                pipeline=self.pipeline,
                stage="extract",
                error_code="RECORD_PARSE_ERROR",
            )
        self.rows_seen += table.num_rows
        column = table.column(self.name)
        start = self.start_value()

        if start is not None and table.num_rows:
            scalar = _scalar_like(start, column.type)
            if self.incremental.lookback is not None:
                keep = pc.greater_equal(column, scalar)
            else:
                past = pc.greater(column, scalar)
                on_boundary = pc.equal(column, scalar)
                keep = pc.or_kleene(past, self._not_seen(table, on_boundary))
            table = table.filter(pc.fill_null(keep, False))

        self._track_maximum(table)
        return table

    def watermark(self) -> Watermark | None:
        """Return the watermark after this run, or the committed one if no row moved it."""
        if self.maximum is None:
            return self.committed
        committed = self.committed
        if committed is not None and _comparable(committed.value) > _comparable(self.maximum):
            return committed
        keys = set(self.boundary)
        if committed is not None and _comparable(committed.value) == _comparable(self.maximum):
            keys |= set(committed.boundary_keys)
        return Watermark(self.name, self.maximum, _value_type(self.maximum), sorted(keys))

    def _initial_value(self) -> Any:
        value = self.incremental.initial_value
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                return value
            return parsed.astimezone(UTC).replace(tzinfo=None) if parsed.tzinfo else parsed
        return value

    def _not_seen(self, table: pa.Table, on_boundary: pa.ChunkedArray) -> pa.Array:
        seen = set(self.committed.boundary_keys) if self.committed else set()
        if not seen:
            return on_boundary
        # Only rows on the watermark can be among its keys, so only they are hashed.
        positions = pc.indices_nonzero(pc.fill_null(on_boundary, False))
        keys = row_keys(table.take(positions), self.primary_key)
        pairs = zip(positions.to_pylist(), keys, strict=True)
        unseen = [position for position, key in pairs if key not in seen]
        return pc.is_in(pa.array(range(table.num_rows)), pa.array(unseen, pa.int64()))

    def _track_maximum(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        column = table.column(self.name)
        batch_max = pc.max(column).as_py()
        if batch_max is None:
            return
        batch_max = _naive_utc(batch_max)
        if self.maximum is None or _comparable(batch_max) > _comparable(self.maximum):
            self.maximum = batch_max
            self.boundary = set()
        if _comparable(batch_max) == _comparable(self.maximum):
            on_max = table.filter(pc.equal(column, _scalar_like(batch_max, column.type)))
            self.boundary |= set(row_keys(on_max, self.primary_key))


def row_keys(table: pa.Table, primary_key: list[str]) -> list[str]:
    """Return a stable digest per row of the primary key, or of the whole row without one."""
    columns = primary_key or sorted(name for name in table.column_names if not name.startswith("_"))
    values = [table.column(name).to_pylist() for name in columns]
    return [
        hashlib.sha1(repr(row).encode(), usedforsecurity=False).hexdigest()[:20]
        for row in zip(*values, strict=True)
    ]


def _scalar_like(value: Any, arrow_type: pa.DataType) -> pa.Scalar:
    if pa.types.is_timestamp(arrow_type) and isinstance(value, datetime):
        if arrow_type.tz is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return pa.scalar(value, type=arrow_type)
    try:
        return pa.scalar(value).cast(arrow_type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        raise SourceError(
            f"cannot compare cursor value {value!r} with a column of type {arrow_type}; "
            "set load.incremental.initial_value to a value of the column's type, or declare "
            "the column's type under load.columns.",
            stage="extract",
            error_code="RECORD_PARSE_ERROR",
        ) from error


def _naive_utc(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


def _comparable(value: Any) -> Any:
    return _naive_utc(value)


def _value_type(value: Any) -> str:
    if isinstance(value, datetime):
        return "timestamp"
    if isinstance(value, bool):
        return "text"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    return "text"


def _numeric_lookback(lookback: str | int) -> float:
    if isinstance(lookback, int | float):
        return lookback
    return parse_duration(lookback) / timedelta(seconds=1)
