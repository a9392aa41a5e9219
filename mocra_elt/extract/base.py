"""The contract every source implements, and the helpers they share."""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from mocra_elt.audit.store import Watermark
from mocra_elt.config.model import Pipeline
from mocra_elt.errors import ConfigError, SourceError
from mocra_elt.extract.incremental import RecordCursor

RUN_ID_COLUMN = "_mocra_run_id"

# Above this many rows, a batch in which no value converts fails the run instead of
# dead-lettering every row, because a wrong load.columns type is the likely cause.
WHOLE_BATCH_REJECTION = 100

ARROW_TYPES: dict[str, pa.DataType] = {
    "text": pa.string(),
    "bigint": pa.int64(),
    "double": pa.float64(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "date": pa.date32(),
}


@dataclass
class RejectedRecord:
    """A record the extract stage could not parse or convert; it becomes a dead letter.

    `payload` is the record as text in `payload_format` (a CSV line, whose
    `header` is kept to parse it again, or one JSON object), so a replay can
    feed it through the same reader once the cause is fixed.
    """

    source_ref: str
    payload: str
    payload_format: str
    error: str
    error_code: str = "RECORD_PARSE_ERROR"
    header: str | None = None


@dataclass
class ExtractContext:
    """Run state a source reads and fills: ids, committed watermarks, stats, rejected records."""

    run_id: str
    pipeline: Pipeline
    watermarks: dict[str, Watermark]
    work_dir: Path
    log: logging.LoggerAdapter[logging.Logger]
    project_root: Path | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    rejected: list[RejectedRecord] = field(default_factory=list)


class SourceReader(ABC):
    """Yield Arrow tables past the committed watermarks, then report the new watermarks."""

    def __init__(self, context: ExtractContext) -> None:
        self.context = context
        self.pipeline = context.pipeline
        incremental = self.pipeline.load.incremental
        self.cursor = (
            RecordCursor(
                incremental=incremental,
                primary_key=list(self.pipeline.load.primary_key),
                committed=context.watermarks.get(incremental.cursor),
                pipeline=self.pipeline.name,
            )
            if incremental
            else None
        )
        self.rows_read = 0
        self.bytes_read = 0

    @abstractmethod
    def read(self) -> Iterator[pa.Table]:
        """Yield raw batches from the source, before casting and watermark filtering."""

    def batches(self) -> Iterator[pa.Table]:
        """Yield batches cast to the declared types, filtered by watermark, tagged with run_id."""
        for table in self.read():
            self.rows_read += table.num_rows
            table = drop_null_typed_columns(table)
            table, rejected = cast_rows(table, self.pipeline.load.columns, self.pipeline.name)
            self.context.rejected.extend(rejected)
            table = zoned_timestamps_to_microseconds(table)
            if self.cursor is not None:
                table = self._set_aside_null_cursors(table)
                table = self.cursor.filter(table)
            if table.num_rows == 0:
                continue
            run_ids = pa.array([self.context.run_id] * table.num_rows, pa.string())
            yield table.append_column(RUN_ID_COLUMN, run_ids)

    def _set_aside_null_cursors(self, table: pa.Table) -> pa.Table:
        """Dead-letter rows whose cursor is NULL: they cannot be placed against the watermark."""
        assert self.cursor is not None
        name = self.cursor.name
        if name not in table.column_names or table.column(name).null_count == 0:
            return table
        missing = pc.is_null(table.column(name))
        for index in pc.indices_nonzero(missing).to_pylist():
            self.context.rejected.append(
                _rejected_row(
                    table,
                    index,
                    f"the incremental cursor column {name!r} is NULL, so the record cannot be "
                    "placed against the watermark; give it a value and replay it",
                )
            )
        return table.filter(pc.invert(missing))

    def watermarks(self) -> list[Watermark]:
        """Return the watermarks to commit once the load has committed."""
        if self.cursor is None:
            return []
        mark = self.cursor.watermark()
        committed = self.context.watermarks.get(self.cursor.name)
        return [mark] if mark is not None and mark is not committed else []


def drop_null_typed_columns(table: pa.Table) -> pa.Table:
    """Drop columns whose type Arrow could not infer because every value was null."""
    null_columns = [f.name for f in table.schema if pa.types.is_null(f.type)]
    return table.drop_columns(null_columns) if null_columns else table


def zoned_timestamps_to_microseconds(table: pa.Table) -> pa.Table:
    """Cast zoned timestamps to microseconds, the precision of DuckDB's and Postgres' timestamptz.

    Nanoseconds are truncated, because neither warehouse can store them.
    """
    for index, column_field in enumerate(table.schema):
        column_type = column_field.type
        if pa.types.is_timestamp(column_type) and column_type.tz and column_type.unit != "us":
            target = pa.timestamp("us", tz=column_type.tz)
            column = pc.cast(table.column(index), target, safe=column_type.unit != "ns")
            table = table.set_column(index, column_field.name, column)
    return table


def cast_columns(table: pa.Table, columns: Mapping[str, str], pipeline: str) -> pa.Table:
    for name, type_name in columns.items():
        if name not in table.column_names:
            continue
        target = ARROW_TYPES[type_name]
        column = table.column(name)
        if column.type == target:
            continue
        try:
            if pa.types.is_timestamp(target) and pa.types.is_string(column.type):
                converted = _parse_timestamps(column)
            else:
                converted = pc.cast(column, target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
            raise SourceError(
                f"pipeline {pipeline!r}: column {name!r} cannot be cast from {column.type} to "
                f"{type_name}: {error}. Fix the value at the source or change load.columns.",
                pipeline=pipeline,
                stage="extract",
                error_code="RECORD_PARSE_ERROR",
                column=name,
            ) from error
        table = table.set_column(table.column_names.index(name), name, converted)
    return table


def cast_rows(
    table: pa.Table, columns: Mapping[str, str], pipeline: str
) -> tuple[pa.Table, list[RejectedRecord]]:
    """Cast declared columns, setting aside the rows whose value cannot be converted.

    A column whose type cannot be cast at all still raises, because that is a
    configuration error rather than bad records.
    """
    try:
        return cast_columns(table, columns, pipeline), []
    except SourceError as error:
        if error.context.get("column") is None:
            raise
    bad = sorted(_uncastable_rows(table, columns).items())
    if len(bad) == table.num_rows > WHOLE_BATCH_REJECTION:
        # Not one value of a large batch converts: the declared type is wrong, not the records.
        return cast_columns(table, columns, pipeline), []
    rejected = [_rejected_row(table, index, reason) for index, reason in bad]
    keep = pc.invert(pc.is_in(pa.array(range(table.num_rows)), pa.array([i for i, _ in bad])))
    return cast_columns(table.filter(keep), columns, pipeline), rejected


def _uncastable_rows(table: pa.Table, columns: Mapping[str, str]) -> dict[int, str]:
    """Return {row index: reason} for values that do not convert, halving ranges to find them."""
    reasons: dict[int, str] = {}
    for name, type_name in columns.items():
        if name not in table.column_names or table.column(name).type == ARROW_TYPES[type_name]:
            continue
        column = table.column(name).combine_chunks()
        pending = [(0, len(column))]
        while pending:
            start, stop = pending.pop()
            if _converts(column.slice(start, stop - start), type_name):
                continue
            if stop - start == 1:
                value = column[start].as_py()
                reasons.setdefault(start, f"column {name!r}: {value!r} is not a valid {type_name}")
                continue
            middle = (start + stop) // 2
            pending += [(start, middle), (middle, stop)]
    return reasons


def _converts(values: pa.Array, type_name: str) -> bool:
    target = ARROW_TYPES[type_name]
    try:
        if pa.types.is_timestamp(target) and pa.types.is_string(values.type):
            _parse_timestamps(pa.chunked_array([values]))
        else:
            pc.cast(values, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return True


def _rejected_row(table: pa.Table, index: int, reason: str) -> RejectedRecord:
    row = table.slice(index, 1).to_pylist()[0]
    origin = row.pop("_source_file", None)
    # Rows are counted within the block read from the file, not by line.
    where = f"{origin}, record {index + 1} of a read block" if origin else f"record {index + 1}"
    return RejectedRecord(
        source_ref=where,
        payload=json.dumps(row, default=str, sort_keys=True),
        payload_format="jsonl",
        error=reason,
    )


def _parse_timestamps(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Parse ISO 8601 strings; values without a zone offset are taken as UTC.

    A column may mix both forms, so values with and without an offset are parsed apart.
    """
    zoned = pc.fill_null(pc.match_substring_regex(column, r"(Z|[+-]\d\d(:?\d\d)?)$"), False)
    if pc.all(zoned).as_py() is not False:
        return pc.cast(column, ARROW_TYPES["timestamp"])
    with_zone = pc.cast(pc.if_else(zoned, column, None), ARROW_TYPES["timestamp"])
    naive = pc.cast(pc.if_else(zoned, None, column), pa.timestamp("us"))
    return pc.if_else(zoned, with_zone, pc.assume_timezone(naive, "UTC"))


def build_reader(context: ExtractContext) -> SourceReader:
    """Return the reader for the pipeline's source type; imports each connector lazily."""
    source_type = context.pipeline.source.type
    if source_type == "http":
        from mocra_elt.extract.http import HttpReader

        return HttpReader(context)
    if source_type == "files":
        from mocra_elt.extract.files import FilesReader

        return FilesReader(context)
    if source_type == "db":
        from mocra_elt.extract.db import DbReader

        return DbReader(context)
    if source_type == "kafka":
        from mocra_elt.extract.kafka import KafkaReader

        return KafkaReader(context)
    raise ConfigError(f"unknown source type {source_type!r}.", pipeline=context.pipeline.name)
