"""The `object_storage` sink: a model as files under hive-style partition folders.

Layout under the sink's url, for `partition_by: {column: ordered_at, name: dt}`:

    dt=2013-01-01/part-00000.parquet   one file per partition
    _mocra_manifest.json               per partition: row count and content digest
    _mocra_tmp/RUN_ID/...              files being written

Readers such as pyarrow, DuckDB and Spark skip names that start with `_`.

A publish computes, in the warehouse, each partition's row count and an
order-independent digest of its rows, and compares them with the manifest.
Only partitions that are new or whose digest changed are written, so the files
of the others stay byte-identical. A change of format, columns or partition
rule rewrites every partition.

Changed partitions are first written under `_mocra_tmp/RUN_ID/`. Then each
temporary file replaces its partition's file: a rename on a local disk, a copy
and a delete on S3, where a copy replaces the object at once. Readers thus see
either the old or the new file of a partition, never a part of one. The
manifest is replaced last. A killed publish leaves temporary files, which the
next publish deletes, and a manifest that still lists the old digests, so the
next publish writes the same partitions again.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from mocra_elt.config.model import SECRET_REFERENCE
from mocra_elt.errors import SinkError, TransientError
from mocra_elt.load.postgres import NumericValueError, quote_string
from mocra_elt.load.warehouse import quote
from mocra_elt.publish import PublishContext, SinkResult
from mocra_elt.publish.config import ObjectStorageSinkOptions
from mocra_elt.publish.relation import (
    ModelRelation,
    model_schema,
    query_rows,
    read_arrow,
    resolve_model,
)

MANIFEST = "_mocra_manifest.json"
TEMP_FOLDER = "_mocra_tmp"
PARTITION_COLUMN = "__mocra_partition"
# The folder name Hive, Spark and pyarrow use for rows whose partition value is NULL.
NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"
EXTENSIONS = {"parquet": "parquet", "csv": "csv", "jsonl": "jsonl"}
BATCH_ROWS = 65_536

# strftime patterns per granularity, for DuckDB and for PostgreSQL's to_char.
DUCKDB_FORMATS = {"hour": "%Y-%m-%dT%H", "day": "%Y-%m-%d", "month": "%Y-%m", "year": "%Y"}
POSTGRES_FORMATS = {
    "hour": 'YYYY-MM-DD"T"HH24',
    "day": "YYYY-MM-DD",
    "month": "YYYY-MM",
    "year": "YYYY",
}


@dataclass(frozen=True)
class PartitionStats:
    rows: int
    digest: str


class ObjectStorageSink:
    def __init__(
        self, options: ObjectStorageSinkOptions, index: int, context: PublishContext
    ) -> None:
        self.options = options
        self.context = context
        self.pipeline = context.pipeline.name
        self.field_prefix = f"sinks[{index}]"
        self.fs, self.root = self._open_filesystem()
        self.label = f"object_storage:{options.url}"
        self.file_name = f"part-00000.{EXTENSIONS[options.format]}"

    def publish(self) -> SinkResult:
        relation = resolve_model(self.context.warehouse, self.options, self.pipeline)
        schema = model_schema(self.context.warehouse, relation)
        expression = self._partition_expression(schema)
        layout = self._layout(schema)

        values, current = self._partition_stats(relation, expression)
        manifest = self._read_manifest()
        previous = manifest["partitions"] if manifest.get("layout") == layout else {}
        changed = sorted(key for key, stats in current.items() if previous.get(key) != stats)
        removed = self._partitions_to_delete(manifest, current)

        self._remove_stale_temp()
        rows = 0
        if changed:
            changed_values = [values[folder] for folder in changed]
            rows = self._write_partitions(relation, expression, changed_values, len(current))
        if changed or removed or manifest.get("layout") != layout:
            self._commit(changed, removed)
            # Partitions gone from the model but not deleted stay listed, for a later deletion.
            missing = {key: stats for key, stats in previous.items() if key not in current}
            still_listed = {key: stats for key, stats in missing.items() if key not in removed}
            self._write_manifest(layout, current | still_listed)
            self._remove(f"{self.root}/{TEMP_FOLDER}")
        return SinkResult(
            sink=self.label,
            rows_read=sum(stats.rows for stats in current.values()),
            rows_written=rows,
            details={
                "partitions_written": len(changed),
                "partitions_unchanged": len(current) - len(changed),
                "partitions_deleted": len(removed),
            },
        )

    def _partitions_to_delete(
        self, manifest: dict[str, Any], current: dict[str, PartitionStats]
    ) -> list[str]:
        if not self.options.delete_missing_partitions:
            return []
        removed = sorted(set(manifest.get("partitions", {})) - set(current))
        if removed and not current:
            raise self.error(
                f"the model is empty, so delete_missing_partitions would delete all {len(removed)} "
                "partitions; nothing was published. Check the model, or delete the files by hand "
                "if that is intended."
            )
        return removed

    # --- partitions --------------------------------------------------------------------

    def _partition_expression(self, schema: pa.Schema) -> str:
        """Return the SQL expression of a row's partition value, as text."""
        rule = self.options.partition_by
        if rule.column not in schema.names:
            raise self.error(
                f"partition_by.column {rule.column!r} is not a published column of the model "
                f"({', '.join(schema.names)}).",
                column=rule.column,
            )
        if rule.key != rule.column and rule.key in schema.names:
            raise self.error(
                f"partition_by.name {rule.key!r} is also a column of the model, which readers "
                "would confuse with the partition key; choose another name."
            )
        column_type = schema.field(rule.column).type
        temporal = pa.types.is_timestamp(column_type) or pa.types.is_date(column_type)
        granularity = rule.granularity or ("day" if temporal else "value")
        if granularity != "value" and not temporal:
            raise self.error(
                f"partition_by.granularity {granularity!r} needs a date or timestamp column, "
                f"but {rule.column!r} is {column_type}; use granularity 'value'."
            )
        column = quote(rule.column)
        if self.context.warehouse.name == "duckdb":
            if granularity == "value":
                return f"cast({column} as varchar)"
            return f"strftime({column}, {quote_string(DUCKDB_FORMATS[granularity])})"
        if granularity == "value":
            return f"{column}::text"
        return f"to_char({column}, {quote_string(POSTGRES_FORMATS[granularity])})"

    def _partition_stats(
        self, relation: ModelRelation, expression: str
    ) -> tuple[dict[str, str | None], dict[str, PartitionStats]]:
        """Return each partition folder's value, and its row count and content digest.

        The digest is a sum of one hash per row, computed in the warehouse, so it
        does not depend on row order but changes when a row changes, appears,
        disappears or repeats.
        """
        columns = relation.select_list
        if self.context.warehouse.name == "duckdb":
            digest = f"cast(sum(hash({columns})) as varchar)"
        else:
            digest = (
                f"sum(('x' || substr(md5(row({columns})::text), 1, 16))::bit(64)::bigint"
                "::numeric)::text"
            )
        sql = f"select {expression}, count(*), {digest} from {relation.name} group by 1"
        rows = query_rows(self.context.warehouse, sql)
        values = {self.folder(row[0]): row[0] for row in rows}
        stats = {self.folder(row[0]): PartitionStats(int(row[1]), str(row[2])) for row in rows}
        return values, stats

    def folder(self, value: str | None) -> str:
        """Return the folder of a partition value, escaped as Hive escapes path names."""
        if value is None:
            return f"{self.options.partition_by.key}={NULL_PARTITION}"
        escaped = "".join(
            f"%{ord(char):02X}" if char in _HIVE_ESCAPED or ord(char) < 32 else char
            for char in value
        )
        return f"{self.options.partition_by.key}={escaped}"

    def _layout(self, schema: pa.Schema) -> str:
        """Return a fingerprint of everything besides the rows that shapes the files."""
        document = {
            "format": self.options.format,
            "compression": self.options.compression,
            "partition_by": self.options.partition_by.model_dump(),
            "order_by": self.options.order_by,
            "columns": [[field.name, str(field.type)] for field in schema],
            "warehouse": self.context.warehouse.name,
        }
        encoded = json.dumps(document, sort_keys=True).encode()
        return hashlib.sha256(encoded).hexdigest()[:16]

    # --- writing -------------------------------------------------------------------------

    def _write_partitions(
        self, relation: ModelRelation, expression: str, values: list[str | None], total: int
    ) -> int:
        """Write the partitions of `values` under the temporary folder; return the rows written."""
        sql = f"select {relation.select_list}, {expression} as {PARTITION_COLUMN} "
        sql += f"from {relation.name}"
        if len(values) < total:
            sql += " where " + _partition_filter(expression, values)
        order = [PARTITION_COLUMN, *(quote(name) for name in self.options.order_by)]
        sql += " order by " + ", ".join(order)

        rows = 0
        writer: _PartitionFile | None = None
        with read_arrow(self.context.warehouse, sql, BATCH_ROWS) as reader:
            try:
                for value, part in _split_by_partition(reader):
                    folder = self.folder(value)
                    if writer is None or writer.folder != folder:
                        self._close(writer)
                        writer = _PartitionFile(self, folder, self._file_columns(part.schema))
                    writer.write(part)
                    rows += part.num_rows
            except NumericValueError as error:
                raise self.error(
                    f"numeric {error}. Cast the column to numeric(p,s) in the model.",
                    column=error.column,
                ) from error
        self._close(writer)
        return rows

    def _file_columns(self, schema: pa.Schema) -> pa.Schema:
        dropped = {PARTITION_COLUMN}
        rule = self.options.partition_by
        if rule.key == rule.column:
            dropped.add(rule.column)  # the value is in the folder name, as Hive stores it
        return pa.schema([field for field in schema if field.name not in dropped])

    def _close(self, writer: _PartitionFile | None) -> None:
        if writer is not None:
            writer.close()
            self.context.log.info(
                "sink %s: wrote %s (%d rows)", self.label, writer.folder, writer.rows
            )

    def temp_path(self, folder: str) -> str:
        return f"{self.root}/{TEMP_FOLDER}/{self.context.run_id}/{folder}/{self.file_name}"

    # --- committing ----------------------------------------------------------------------

    def _commit(self, changed: list[str], removed: list[str]) -> None:
        for folder in changed:
            final_folder = f"{self.root}/{folder}"
            final = f"{final_folder}/{self.file_name}"
            self._call(self.fs.makedirs, final_folder, exist_ok=True)
            self._call(self.fs.mv, self.temp_path(folder), final)
            for path in self._call(self.fs.ls, final_folder, detail=False):
                if path.rstrip("/").rsplit("/", 1)[-1] != self.file_name:
                    self._remove(path)
        for folder in removed:
            self._remove(f"{self.root}/{folder}")
            self.context.log.info("sink %s: deleted %s", self.label, folder)

    def _read_manifest(self) -> dict[str, Any]:
        path = f"{self.root}/{MANIFEST}"
        if not self._call(self.fs.exists, path):
            return {}
        document = json.loads(self._call(self.fs.cat_file, path))
        partitions = {
            key: PartitionStats(int(value["rows"]), str(value["digest"]))
            for key, value in document.get("partitions", {}).items()
        }
        return {"layout": document.get("layout"), "partitions": partitions}

    def _write_manifest(self, layout: str, partitions: dict[str, PartitionStats]) -> None:
        document = {
            "layout": layout,
            "run_id": self.context.run_id,
            "model": self.options.model,
            "partitions": {
                key: {"rows": stats.rows, "digest": stats.digest}
                for key, stats in sorted(partitions.items())
            },
        }
        temp_folder = f"{self.root}/{TEMP_FOLDER}/{self.context.run_id}"
        temp = f"{temp_folder}/{MANIFEST}"
        self._call(self.fs.makedirs, temp_folder, exist_ok=True)
        self._call(self.fs.pipe_file, temp, json.dumps(document, indent=1).encode())
        self._call(self.fs.mv, temp, f"{self.root}/{MANIFEST}")

    def _remove_stale_temp(self) -> None:
        """Delete temporary files that killed publishes left behind."""
        temp_root = f"{self.root}/{TEMP_FOLDER}"
        if self._call(self.fs.exists, temp_root):
            self.context.log.warning(
                "sink %s: deleting %s left by an earlier publish", self.label, temp_root
            )
            self._remove(temp_root)

    def _remove(self, path: str) -> None:
        if self._call(self.fs.exists, path):
            self._call(self.fs.rm, path, recursive=True)

    # --- file system ---------------------------------------------------------------------

    def _open_filesystem(self) -> tuple[Any, str]:
        from fsspec.core import url_to_fs

        url = self.options.url
        options = {
            key: self._resolve(key, value) for key, value in self.options.storage_options.items()
        }
        if url.startswith("s3://"):
            options.setdefault("use_listings_cache", False)
        elif not url.startswith("file://"):
            url = str(Path(self.context.project.root, url).resolve())
        fs, root = url_to_fs(url, **options)
        return fs, str(root).rstrip("/")

    def _resolve(self, key: str, value: Any) -> Any:
        if not isinstance(value, str) or not SECRET_REFERENCE.match(value):
            return value
        from mocra_elt.config.secrets import resolve_secret

        field = f"{self.field_prefix}.storage_options.{key}"
        return resolve_secret(value, pipeline=self.pipeline, field=field)

    def _call(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        """Call a file system method; turn its OSError into a sink error."""
        try:
            return function(*args, **kwargs)
        except (FileNotFoundError, PermissionError) as error:
            raise self.error(f"{type(error).__name__}: {error}") from error
        except OSError as error:
            raise TransientError(
                f"pipeline {self.pipeline!r}, sink {self.label}: {error}",
                pipeline=self.pipeline,
                stage="publish",
                error_code="SINK_FAILED",
            ) from error

    def error(self, message: str, **context: Any) -> SinkError:
        return SinkError(
            f"pipeline {self.pipeline!r}, sink {self.label}: {message}",
            pipeline=self.pipeline,
            stage="publish",
            **context,
        )


class _PartitionFile:
    """One partition's temporary file, written batch by batch in the sink's format."""

    def __init__(self, sink: ObjectStorageSink, folder: str, schema: pa.Schema) -> None:
        self.sink = sink
        self.folder = folder
        self.schema = schema
        self.rows = 0
        path = sink.temp_path(folder)
        sink._call(sink.fs.makedirs, path.rsplit("/", 1)[0], exist_ok=True)
        self.file = sink._call(sink.fs.open, path, "wb")
        self.writer = self._open_writer()

    def _open_writer(self) -> Any:
        options = self.sink.options
        if options.format == "parquet":
            import pyarrow.parquet as pq

            return pq.ParquetWriter(self.file, self.schema, compression=options.compression)
        if options.format == "csv":
            import pyarrow.csv as pcsv

            return pcsv.CSVWriter(self.file, self.schema)
        return None

    def write(self, table: pa.Table) -> None:
        table = table.select(self.schema.names)
        self.rows += table.num_rows
        if self.writer is not None:
            self.writer.write_table(table)
            return
        lines = (json.dumps(row, default=_json_value) + "\n" for row in table.to_pylist())
        self.file.write("".join(lines).encode())

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.sink._call(self.file.close)


def _partition_filter(expression: str, values: list[str | None]) -> str:
    literals = [quote_string(value) for value in values if value is not None]
    conditions = [f"{expression} in ({', '.join(literals)})"] if literals else []
    if None in values:
        conditions.append(f"{expression} is null")
    return "(" + " or ".join(conditions) + ")"


def _split_by_partition(reader: pa.RecordBatchReader) -> Iterator[tuple[str | None, pa.Table]]:
    """Yield (partition value, rows) runs from batches sorted by the partition column."""
    for batch in reader:
        if batch.num_rows == 0:
            continue
        table = pa.Table.from_batches([batch])
        column = table.column(PARTITION_COLUMN)
        for value in pc.unique(column).to_pylist():
            mask = pc.is_null(column) if value is None else pc.equal(column, value)
            yield value, table.filter(pc.fill_null(mask, False))


# Characters Hive escapes in partition path names (FileUtils.escapePathName).
_HIVE_ESCAPED = frozenset("\"#%'*/:=?\\\x7f{[]^")


def _json_value(value: Any) -> Any:
    """Encode what json cannot: timestamps and dates as ISO 8601, decimals as strings."""
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return str(value)
