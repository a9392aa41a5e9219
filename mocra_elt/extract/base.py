"""The contract every source implements, and the helpers they share."""

from __future__ import annotations

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

ARROW_TYPES: dict[str, pa.DataType] = {
    "text": pa.string(),
    "bigint": pa.int64(),
    "double": pa.float64(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "date": pa.date32(),
}


@dataclass
class ExtractContext:
    """What a source needs from the run: ids, committed watermarks and a scratch folder."""

    run_id: str
    pipeline: Pipeline
    watermarks: dict[str, Watermark]
    work_dir: Path
    log: logging.LoggerAdapter[logging.Logger]
    project_root: Path | None = None
    stats: dict[str, Any] = field(default_factory=dict)


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
            table = cast_columns(table, self.pipeline.load.columns, self.pipeline.name)
            table = zoned_timestamps_to_microseconds(table)
            if self.cursor is not None:
                table = self.cursor.filter(table)
            if table.num_rows == 0:
                continue
            run_ids = pa.array([self.context.run_id] * table.num_rows, pa.string())
            yield table.append_column(RUN_ID_COLUMN, run_ids)

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


def _parse_timestamps(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Parse ISO 8601 strings; values without a zone offset are taken as UTC."""
    try:
        return pc.cast(column, ARROW_TYPES["timestamp"])
    except pa.ArrowInvalid:
        naive = pc.cast(column, pa.timestamp("us"))
        return pc.assume_timezone(naive, "UTC")


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
    raise ConfigError(f"unknown source type {source_type!r}.", pipeline=context.pipeline.name)
