"""Find a sink's model in the warehouse and read it as Arrow, on DuckDB or PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from mocra_elt.errors import SinkError
from mocra_elt.load.warehouse import Warehouse, column_names, quote
from mocra_elt.publish.config import DLT_COLUMNS, SinkOptions

# The schema dbt builds models in (profiles.yml: `schema: analytics`).
DBT_SCHEMA = "analytics"


@dataclass(frozen=True)
class ModelRelation:
    """A warehouse table or view and the columns a sink publishes from it."""

    schema: str
    table: str
    columns: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{quote(self.schema)}.{quote(self.table)}"

    @property
    def select_list(self) -> str:
        return ", ".join(quote(column) for column in self.columns)


def resolve_model(warehouse: Warehouse, options: SinkOptions, pipeline: str) -> ModelRelation:
    """Return the sink's model; raises SinkError when it or a listed column is missing."""
    schema, _, table = options.model.rpartition(".")
    schema = schema or DBT_SCHEMA
    with warehouse.connect() as connection:
        available = column_names(connection, schema, table)
    if not available:
        raise SinkError(
            f"pipeline {pipeline!r}: the model {options.model!r} ({schema}.{table}) is not in "
            f"the warehouse ({warehouse.describe()}). Build it with the pipeline's transform, "
            "or name a raw table as 'schema.table'.",
            pipeline=pipeline,
            stage="publish",
        )
    missing = [name for name in options.columns if name not in available]
    if missing:
        raise SinkError(
            f"pipeline {pipeline!r}: sink column {', '.join(map(repr, missing))} is not in "
            f"{schema}.{table} (columns: {', '.join(available)}).",
            pipeline=pipeline,
            stage="publish",
            column=missing[0],
        )
    columns = options.columns or [name for name in available if name not in DLT_COLUMNS]
    return ModelRelation(schema, table, tuple(columns))


@contextmanager
def read_arrow(
    warehouse: Warehouse, sql: str, batch_rows: int, *, numeric_as_text: bool = False
) -> Iterator[pa.RecordBatchReader]:
    """Stream the result of `sql` as Arrow record batches; timestamps with a zone are in UTC.

    On PostgreSQL, a numeric without a declared precision arrives as decimal(38,9),
    or with `numeric_as_text` as text tagged numeric (see `plain_arrow_reader`).
    """
    if warehouse.name == "duckdb":
        with warehouse.connect() as connection:
            connection.execute("set TimeZone = 'UTC'")
            yield connection.execute(sql).to_arrow_reader(batch_rows)
        return

    from mocra_elt.load.postgres import connect_arrow, plain_arrow_reader

    info = warehouse.info  # type: ignore[attr-defined]
    with connect_arrow(info, stage="publish") as connection, connection.cursor() as cursor:
        cursor.execute(sql)
        yield plain_arrow_reader(cursor.fetch_record_batch(), numeric_as_text=numeric_as_text)


def query_rows(warehouse: Warehouse, sql: str) -> list[tuple[Any, ...]]:
    """Run a small query on the warehouse, in a UTC session, and return its rows."""
    with warehouse.connect() as connection:
        if warehouse.name == "duckdb":
            connection.execute("set TimeZone = 'UTC'")
        return list(connection.execute(sql).fetchall())


def model_schema(warehouse: Warehouse, relation: ModelRelation) -> pa.Schema:
    with read_arrow(
        warehouse, f"select {relation.select_list} from {relation.name} limit 0", 1
    ) as reader:
        return reader.schema
