"""Extract into a dlt load package, then normalize and load it into the warehouse.

Each run gets its own dlt working folder, so a package left behind by a crashed
run is never loaded by a later one. Watermarks live in the audit tables and move
only in `AuditStore.commit_load`, after dlt reports the load as complete.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from mocra_elt.config.model import Pipeline
from mocra_elt.errors import LoadError, MocraError, SourceError, TransientError
from mocra_elt.load.warehouse import Warehouse, column_names, quote, table_exists

log = logging.getLogger(__name__)


@dataclass
class LoadResult:
    load_id: str | None
    rows: int
    bytes: int


class DltLoader:
    def __init__(self, pipeline: Pipeline, warehouse: Warehouse, work_dir: Path) -> None:
        import dlt

        self.pipeline = pipeline
        self.warehouse = warehouse
        self.work_dir = work_dir
        self.dlt_pipeline = dlt.pipeline(
            pipeline_name=pipeline.name,
            pipelines_dir=str(work_dir),
            destination=warehouse.dlt_destination(),
            dataset_name=pipeline.dataset,
        )
        self.extracted_rows = 0

    def extract(self, batches: Iterator[pa.Table]) -> int:
        """Write the batches into a new load package; return the number of rows extracted."""
        import dlt

        load = self.pipeline.load

        def counted() -> Iterator[pa.Table]:
            for batch in batches:
                self.extracted_rows += batch.num_rows
                yield require_keys(batch, list(load.primary_key), self.pipeline.name)

        resource = dlt.resource(
            counted(),
            name=load.table,
            table_name=load.table,
            write_disposition=load.write_disposition,
            primary_key=list(load.primary_key) or (),
        )
        file_format = getattr(self.warehouse, "loader_file_format", None)
        try:
            self.dlt_pipeline.extract(resource, loader_file_format=file_format)
        except Exception as error:
            raise _unwrap(error) from error
        return self.extracted_rows

    def load(self) -> LoadResult:
        """Normalize and load the extracted package; raises if any job failed."""
        from dlt.common.pipeline import LoadInfo

        if self.extracted_rows == 0:
            return LoadResult(load_id=None, rows=0, bytes=0)
        try:
            normalize_info = self.dlt_pipeline.normalize()
            info: LoadInfo = self.dlt_pipeline.load()
        except Exception as error:
            raise _unwrap(error, LoadError) from error
        info.raise_on_failed_jobs()

        rows = normalize_info.row_counts.get(self.pipeline.load.table, 0)
        load_id = info.loads_ids[-1] if info.loads_ids else None
        return LoadResult(load_id=load_id, rows=rows, bytes=_package_bytes(self.work_dir))

    def discard(self) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)


def require_keys(batch: pa.Table, primary_key: list[str], pipeline: str) -> pa.Table:
    """Check the key columns are present and never NULL, then mark them NOT NULL as dlt does."""
    schema = batch.schema
    for name in primary_key:
        if name not in batch.column_names:
            raise SourceError(
                f"pipeline {pipeline!r}: primary key column {name!r} is missing from the source "
                f"data (columns: {', '.join(batch.column_names)}). Fix load.primary_key.",
                pipeline=pipeline,
                stage="extract",
                error_code="RECORD_PARSE_ERROR",
                column=name,
            )
        nulls = batch.column(name).null_count
        if nulls:
            raise SourceError(
                f"pipeline {pipeline!r}: primary key column {name!r} is NULL in {nulls} rows, so "
                "they cannot be merged. Fix the source, or choose another load.primary_key.",
                pipeline=pipeline,
                stage="extract",
                error_code="RECORD_PARSE_ERROR",
                column=name,
            )
        index = schema.get_field_index(name)
        schema = schema.set(index, schema.field(index).with_nullable(False))
    return batch.cast(schema) if primary_key else batch


def remove_uncommitted_rows(
    warehouse: Warehouse, pipeline: Pipeline, committed_load_ids: set[str]
) -> int:
    """Delete rows of append tables whose dlt load never committed; return how many.

    A run killed after dlt wrote an append table but before its watermark
    committed leaves rows that the next run will extract again. Replace and merge
    tables need no such step: a replace rewrites the table, and a merge of the
    same rows is idempotent.
    """
    if pipeline.load.write_disposition != "append":
        return 0
    schema, table = pipeline.dataset, pipeline.load.table
    with warehouse.connect() as connection:
        if not table_exists(connection, schema, table):
            return 0
        if "_dlt_load_id" not in column_names(connection, schema, table):
            return 0
        target = f"{quote(schema)}.{quote(table)}"
        if committed_load_ids:
            placeholders = ", ".join("?" for _ in committed_load_ids)
            where = f"_dlt_load_id not in ({placeholders})"
            parameters: list[Any] = sorted(committed_load_ids)
        else:
            where, parameters = "true", []
        row = connection.execute(f"select count(*) from {target} where {where}", parameters)
        count = int(row.fetchone()[0])
        if count:
            connection.execute(f"delete from {target} where {where}", parameters)
        return count


def _package_bytes(work_dir: Path) -> int:
    total = 0
    for path in work_dir.rglob("*"):
        if path.is_file() and "completed_jobs" in path.parts:
            total += path.stat().st_size
    return total


def _unwrap(error: Exception, default: type[MocraError] = LoadError) -> MocraError:
    """Return the mocra-elt error that dlt wrapped in a PipelineStepFailed, or wrap it."""
    current: BaseException | None = error
    while current is not None:
        if isinstance(current, MocraError):
            return current
        current = current.__cause__ or current.__context__
    message = _root_message(error)
    if _looks_locked(error):
        return TransientError(f"the warehouse is locked: {message}", error_code="WAREHOUSE_LOCKED")
    return default(message)


def _root_message(error: BaseException) -> str:
    """Return dlt's first line joined with the innermost cause, which names the real problem."""
    first = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
    innermost: BaseException = error
    while innermost.__cause__ is not None or innermost.__context__ is not None:
        innermost = innermost.__cause__ or innermost.__context__  # type: ignore[assignment]
    cause = " ".join(str(innermost).split())
    if innermost is error or not cause or cause in first:
        return first
    hint = ""
    if "convert" in cause.lower() or "cast" in cause.lower():
        hint = (
            " Declare the column's type under load.columns, so values that do not convert "
            "are dead-lettered instead of failing the load."
        )
    return f"{first.rstrip(':')}: {cause}.{hint}"


def _looks_locked(error: BaseException) -> bool:
    text = str(error).lower()
    return "could not set lock" in text or "conflicting lock" in text
