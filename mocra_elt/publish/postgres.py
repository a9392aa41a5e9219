"""The `postgres` sink: upsert a model into a PostgreSQL table on its record key.

One publish is one transaction on the target database:

1. The model streams from the warehouse into a temporary staging table, one
   binary COPY (through ADBC) per `batch_rows` rows.
2. A NULL in a key column, or a key that occurs more than once, stops the
   publish with an error that names the column or the keys.
3. The target table is created when missing, with a primary key on the key.
   A column the model gained is added. A column whose type the model widened
   (integer to bigint, real to double precision, a larger numeric, varchar to
   text, date to timestamp) is altered. Any other type change stops the publish.
4. `insert ... on conflict (key) do update` inserts new keys and updates rows
   that differ in a published column. Unchanged rows are not written, so
   `_mocra_run_id` names the run that last changed each row.
5. Keys that are in the target but no longer in the model are kept
   (`deletes: none`), flagged with `_mocra_deleted = true` (`soft`), or deleted
   (`hard`). A soft-deleted key that comes back is unflagged.

An error or a killed process leaves the target as it was: the transaction
commits only after the last step, and the server rolls back a transaction
whose connection drops.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from mocra_elt.errors import SinkError, TransientError
from mocra_elt.load.postgres import (
    PG_TYPE_METADATA,
    PgConnectionInfo,
    connect_arrow,
    first_line,
    quote_string,
    resolve_connection,
)
from mocra_elt.load.warehouse import quote
from mocra_elt.publish import PublishContext, SinkResult
from mocra_elt.publish.config import PostgresSinkOptions
from mocra_elt.publish.relation import ModelRelation, read_arrow, resolve_model

RUN_ID_COLUMN = "_mocra_run_id"
DELETED_COLUMN = "_mocra_deleted"
SINK_COLUMNS = (RUN_ID_COLUMN, DELETED_COLUMN)
STAGE_TABLE = "mocra_stage"

INTEGERS = ("smallint", "integer", "bigint")
INTEGER_DIGITS = {"smallint": 5, "integer": 10, "bigint": 19}
FLOATS = ("real", "double precision")
TEXTS = ("text", "character varying", "character")
TIMESTAMPS = ("timestamp without time zone", "timestamp with time zone")
# Rows are compared through these casts, because these types have no equality operator.
COMPARE_AS = {"json": "jsonb", "xml": "text"}


class PostgresSink:
    def __init__(self, options: PostgresSinkOptions, index: int, context: PublishContext) -> None:
        self.options = options
        self.context = context
        self.pipeline = context.pipeline.name
        self.field_prefix = f"sinks[{index}]"
        schema, table = options.target
        self.target = f"{quote(schema)}.{quote(table)}"
        self.target_schema = schema
        self.label = f"postgres:{schema}.{table}"

    def publish(self) -> SinkResult:
        relation = resolve_model(self.context.warehouse, self.options, self.pipeline)
        relation = ModelRelation(
            relation.schema,
            relation.table,
            tuple(name for name in relation.columns if name not in SINK_COLUMNS),
        )
        self._check_key_published(relation)
        info = resolve_connection(
            self.options, pipeline=self.pipeline, field_prefix=self.field_prefix
        )
        sql = f"select {relation.select_list} from {relation.name}"
        warehouse = self.context.warehouse
        with read_arrow(warehouse, sql, self.options.batch_rows, numeric_as_text=True) as reader:
            return self._write(info, reader)

    def _write(self, info: PgConnectionInfo, reader: pa.RecordBatchReader) -> SinkResult:
        import adbc_driver_manager

        with connect_arrow(info, stage="publish", pipeline=self.pipeline) as connection:
            try:
                with connection.cursor() as cursor:
                    writer = _Transaction(self, cursor, reader.schema)
                    result = writer.run(reader)
                connection.commit()
            except adbc_driver_manager.OperationalError as error:
                raise TransientError(
                    f"sink {self.label}: the connection to {info.describe()} failed: "
                    f"{first_line(error)}. Nothing was published.",
                    pipeline=self.pipeline,
                    stage="publish",
                    error_code="SINK_FAILED",
                ) from error
            except adbc_driver_manager.Error as error:
                raise self.error(
                    f"PostgreSQL rejected the publish: {first_line(error)}. Nothing was published."
                ) from error
        return result

    def _check_key_published(self, relation: ModelRelation) -> None:
        missing = [name for name in self.options.key if name not in relation.columns]
        if missing:
            raise self.error(
                f"key column {', '.join(map(repr, missing))} is not a column of the model "
                f"{relation.schema}.{relation.table} (columns: {', '.join(relation.columns)}).",
                column=missing[0],
            )

    def error(self, message: str, code: str = "SINK_FAILED", **context: Any) -> SinkError:
        return SinkError(
            f"pipeline {self.pipeline!r}, sink {self.label}: {message}",
            pipeline=self.pipeline,
            stage="publish",
            error_code=code,
            **context,
        )


class _Transaction:
    """The steps of one publish, all on one cursor inside one transaction."""

    def __init__(self, sink: PostgresSink, cursor: Any, schema: pa.Schema) -> None:
        self.sink = sink
        self.options = sink.options
        self.cursor = cursor
        self.model_types = {field.name: field_pg_type(field) for field in schema}
        self.staged_schema = ingest_schema(schema)
        self.key = list(self.options.key)
        self.columns = list(self.model_types)

    def run(self, reader: pa.RecordBatchReader) -> SinkResult:
        rows = self.stage(reader)
        self.check_keys(rows)
        target_types = self.prepare_target()
        inserted, updated = self.upsert(target_types)
        deleted = self.apply_deletes(target_types)
        self.execute(f"drop table {STAGE_TABLE}")
        details = {"inserted": inserted, "updated": updated}
        if self.options.deletes != "none":
            details[f"{self.options.deletes}_deleted"] = deleted
        return SinkResult(self.sink.label, rows, inserted + updated + deleted, details)

    # --- steps ---------------------------------------------------------------------------

    def stage(self, reader: pa.RecordBatchReader) -> int:
        empty = pa.Table.from_batches([], self.staged_schema)
        self.cursor.adbc_ingest(STAGE_TABLE, empty, mode="create", temporary=True)
        rows = 0
        for number, table in enumerate(rebatch(reader, self.options.batch_rows), start=1):
            self.cursor.adbc_ingest(STAGE_TABLE, to_ingest(table), mode="append", temporary=True)
            rows += table.num_rows
            self.sink.context.log.info(
                "sink %s: staged batch %d (%d rows, %d in total)",
                self.sink.label,
                number,
                table.num_rows,
                rows,
            )
        return rows

    def check_keys(self, rows: int) -> None:
        if rows == 0:
            return
        counts = ", ".join(f"count(*) filter (where {quote(name)} is null)" for name in self.key)
        nulls = self.fetch(f"select {counts} from {STAGE_TABLE}")[0]
        for name, count in zip(self.key, nulls, strict=True):
            if count:
                raise self.sink.error(
                    f"{count} model rows have NULL in key column {name!r}; nothing was published. "
                    "Filter or fill those rows in the model, or choose another key.",
                    "SINK_CONSTRAINT_VIOLATION",
                    column=name,
                )
        self._check_unique()

    def _check_unique(self) -> None:
        key_list = ", ".join(quote(name) for name in self.key)
        duplicates = self.fetch(
            f"select {key_list}, count(*) from {STAGE_TABLE} group by {key_list} "
            f"having count(*) > 1 order by count(*) desc, {key_list} limit 5"
        )
        if not duplicates:
            return
        total = self.fetch(
            f"select count(*) from (select 1 from {STAGE_TABLE} group by {key_list} "
            "having count(*) > 1) as repeated"
        )[0][0]
        examples = "; ".join(
            ", ".join(f"{name}={value!r}" for name, value in zip(self.key, row, strict=False))
            + f" ({row[-1]} rows)"
            for row in duplicates
        )
        raise self.sink.error(
            f"{total} keys occur more than once in the model, e.g. {examples}; nothing was "
            f"published. Make ({', '.join(self.key)}) unique in the model, or choose another key.",
            "SINK_CONSTRAINT_VIOLATION",
            column=self.key[0],
        )

    def prepare_target(self) -> dict[str, str]:
        """Create or evolve the target table, and return its column types after the changes."""
        current = self.target_columns()
        if not current:
            self.create_target()
            return self.target_columns()
        self._check_unique_index()
        for name, incoming in self.model_types.items():
            if name not in current:
                self.execute(f"alter table {self.sink.target} add column {quote(name)} {incoming}")
                self.log("added column %s %s", name, incoming)
                continue
            wider = widened_type(current[name], incoming)
            if wider is None:
                continue
            if wider is INCOMPATIBLE:
                raise self.sink.error(
                    f"column {name!r} is {current[name]} in the target but {incoming} in the "
                    "model, and the sink changes a type only to a wider one; nothing was "
                    "published. Cast the column in the model, or alter or drop the target column.",
                    column=name,
                )
            self.execute(
                f"alter table {self.sink.target} alter column {quote(name)} type {wider} "
                f"using {quote(name)}::{wider}"
            )
            self.log("widened column %s from %s to %s", name, current[name], wider)
        self._add_sink_columns(current)
        self._warn_unpublished(current)
        return self.target_columns()

    def create_target(self) -> None:
        definitions = [
            f"{quote(name)} {type_name}" + (" not null" if name in self.key else "")
            for name, type_name in self.model_types.items()
        ]
        definitions.append(f"{RUN_ID_COLUMN} text not null")
        if self.options.deletes == "soft":
            definitions.append(f"{DELETED_COLUMN} boolean not null default false")
        definitions.append(f"primary key ({', '.join(quote(name) for name in self.key)})")
        self.execute(f"create schema if not exists {quote(self.sink.target_schema)}")
        self.execute(f"create table {self.sink.target} ({', '.join(definitions)})")
        self.log("created table %s", self.sink.target)

    def _add_sink_columns(self, current: dict[str, str]) -> None:
        if RUN_ID_COLUMN not in current:
            self.execute(f"alter table {self.sink.target} add column {RUN_ID_COLUMN} text")
        if self.options.deletes == "soft" and DELETED_COLUMN not in current:
            self.execute(
                f"alter table {self.sink.target} add column {DELETED_COLUMN} boolean "
                "not null default false"
            )

    def _warn_unpublished(self, current: dict[str, str]) -> None:
        dropped = [
            name for name in current if name not in self.model_types and name not in SINK_COLUMNS
        ]
        if dropped:
            self.sink.context.log.warning(
                "sink %s: target columns %s are not in the model; they keep their values and "
                "new rows get NULL",
                self.sink.label,
                ", ".join(dropped),
            )

    def _check_unique_index(self) -> None:
        rows = self.fetch(
            "select array_to_string(array(select a.attname from unnest(i.indkey) as k(attnum) "
            "join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum "
            "order by a.attname), ',') from pg_index i "
            f"where i.indrelid = to_regclass({quote_string(self.sink.target)}) "
            "and i.indisunique and i.indpred is null"
        )
        if ",".join(sorted(self.key)) not in {row[0] for row in rows}:
            key_list = ", ".join(quote(name) for name in self.key)
            raise self.sink.error(
                f"the target has no primary key or unique index on ({', '.join(self.key)}), "
                "which the upsert needs; nothing was published. Add one, e.g. "
                f"'alter table {self.sink.target} add primary key ({key_list})'."
            )

    def upsert(self, target_types: dict[str, str]) -> tuple[int, int]:
        soft = self.options.deletes == "soft"
        insert_columns = [*self.columns, RUN_ID_COLUMN, *([DELETED_COLUMN] if soft else [])]
        values = [f"cast(s.{quote(name)} as {target_types[name]})" for name in self.columns]
        values.append(quote_string(self.sink.context.run_id))
        values += ["false"] if soft else []

        compared = [name for name in self.columns if name not in self.key]
        compared += [DELETED_COLUMN] if soft else []
        if compared:
            updates = ", ".join(
                f"{quote(name)} = excluded.{quote(name)}" for name in [*compared, RUN_ID_COLUMN]
            )
            old = ", ".join(self._comparable("t", name, target_types) for name in compared)
            new = ", ".join(self._comparable("excluded", name, target_types) for name in compared)
            action = f"do update set {updates} where ({old}) is distinct from ({new})"
        else:
            action = "do nothing"
        key_list = ", ".join(quote(name) for name in self.key)
        counts = self.fetch(
            f"with written as (insert into {self.sink.target} as t "
            f"({', '.join(quote(name) for name in insert_columns)}) "
            f"select {', '.join(values)} from {STAGE_TABLE} as s "
            f"on conflict ({key_list}) {action} returning (xmax = 0) as inserted) "
            "select count(*) filter (where inserted), count(*) filter (where not inserted) "
            "from written"
        )[0]
        return int(counts[0]), int(counts[1])

    def apply_deletes(self, target_types: dict[str, str]) -> int:
        if self.options.deletes == "none":
            return 0
        if not self.fetch(f"select exists (select 1 from {STAGE_TABLE})")[0][0]:
            # An empty model more often means a broken upstream than an empty truth.
            existing = self.fetch(f"select count(*) from {self.sink.target}")[0][0]
            if existing:
                raise self.sink.error(
                    f"the model is empty, so deletes: {self.options.deletes} would remove all "
                    f"{existing} target rows; nothing was published. Check the model, or empty "
                    "the target by hand if that is intended."
                )
        matches = " and ".join(
            f"cast(s.{quote(name)} as {target_types[name]}) = t.{quote(name)}" for name in self.key
        )
        not_in_model = f"not exists (select 1 from {STAGE_TABLE} as s where {matches})"
        if self.options.deletes == "hard":
            statement = f"delete from {self.sink.target} as t where {not_in_model}"
        else:
            run_id = quote_string(self.sink.context.run_id)
            statement = (
                f"update {self.sink.target} as t set {DELETED_COLUMN} = true, "
                f"{RUN_ID_COLUMN} = {run_id} where not t.{DELETED_COLUMN} and {not_in_model}"
            )
        rows = self.fetch(f"with changed as ({statement} returning 1) select count(*) from changed")
        return int(rows[0][0])

    # --- helpers -------------------------------------------------------------------------

    def target_columns(self) -> dict[str, str]:
        rows = self.fetch(
            "select attname, format_type(atttypid, atttypmod) from pg_attribute "
            f"where attrelid = to_regclass({quote_string(self.sink.target)}) "
            "and attnum > 0 and not attisdropped order by attnum"
        )
        return {name: type_name for name, type_name in rows}

    def _comparable(self, alias: str, name: str, types: dict[str, str]) -> str:
        cast = COMPARE_AS.get(types.get(name, ""))
        return f"{alias}.{quote(name)}" + (f"::{cast}" if cast else "")

    def execute(self, sql: str) -> None:
        self.cursor.execute(sql)

    def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        self.cursor.execute(sql)
        return list(self.cursor.fetchall())

    def log(self, message: str, *args: Any) -> None:
        self.sink.context.log.info("sink %s: " + message, self.sink.label, *args)


# --- types ----------------------------------------------------------------------------------

INCOMPATIBLE = "incompatible"


def field_pg_type(field: pa.Field) -> str:
    """Return the PostgreSQL type of a column. Text tagged with a type in its metadata keeps it."""
    tagged = (field.metadata or {}).get(PG_TYPE_METADATA)
    return tagged.decode() if tagged else pg_type(field.type)


def pg_type(arrow_type: pa.DataType) -> str:
    """Return the PostgreSQL column type, as format_type() prints it, for an Arrow type."""
    if pa.types.is_dictionary(arrow_type):
        return pg_type(arrow_type.value_type)
    if pa.types.is_integer(arrow_type):
        return _integer_type(arrow_type)
    if pa.types.is_floating(arrow_type):
        return "double precision" if arrow_type.bit_width == 64 else "real"
    if pa.types.is_decimal(arrow_type):
        return f"numeric({arrow_type.precision},{arrow_type.scale})"
    if pa.types.is_timestamp(arrow_type):
        return TIMESTAMPS[1] if arrow_type.tz else TIMESTAMPS[0]

    for predicate, type_name in _FIXED_TYPES:
        if predicate(arrow_type):
            return type_name
    if _is_scalar_list(arrow_type):
        return pg_type(arrow_type.value_type) + "[]"
    return "jsonb"


_FIXED_TYPES = (
    (pa.types.is_boolean, "boolean"),
    (pa.types.is_string, "text"),
    (pa.types.is_large_string, "text"),
    (pa.types.is_null, "text"),
    (pa.types.is_binary, "bytea"),
    (pa.types.is_large_binary, "bytea"),
    (pa.types.is_fixed_size_binary, "bytea"),
    (pa.types.is_date, "date"),
    (pa.types.is_time, "time without time zone"),
    (pa.types.is_duration, "interval"),
    (pa.types.is_interval, "interval"),
)


def _integer_type(arrow_type: pa.DataType) -> str:
    width = arrow_type.bit_width + (0 if pa.types.is_signed_integer(arrow_type) else 1)
    if width <= 16:
        return "smallint"
    if width <= 32:
        return "integer"
    return "bigint" if width <= 64 else "numeric(20,0)"


def _is_scalar_list(arrow_type: pa.DataType) -> bool:
    if not (pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type)):
        return False
    value_type = arrow_type.value_type
    return not _is_nested(value_type) and pg_type(value_type) != "jsonb"


def _is_nested(arrow_type: pa.DataType) -> bool:
    return pa.types.is_nested(arrow_type) and not pa.types.is_dictionary(arrow_type)


def ingest_schema(schema: pa.Schema) -> pa.Schema:
    """Return the Arrow schema of the staging table: types ADBC can COPY in binary."""
    return pa.schema([pa.field(field.name, _ingest_type(field.type)) for field in schema])


def _ingest_type(arrow_type: pa.DataType) -> pa.DataType:
    target = pg_type(arrow_type)
    if target == "jsonb":
        return pa.string()
    if target == "numeric(20,0)":
        return pa.decimal128(20, 0)
    if pa.types.is_dictionary(arrow_type):
        return _ingest_type(arrow_type.value_type)
    if pa.types.is_null(arrow_type):
        return pa.string()
    if pa.types.is_timestamp(arrow_type) and arrow_type.unit != "us":
        return pa.timestamp("us", arrow_type.tz)
    return arrow_type


def to_ingest(table: pa.Table) -> pa.Table:
    """Convert nested values to JSON text and other types to what the staging table takes."""
    for index, column_field in enumerate(table.schema):
        target = _ingest_type(column_field.type)
        if target == column_field.type:
            continue
        column = table.column(index)
        if pg_type(column_field.type) == "jsonb":
            converted = pa.array(
                [
                    None if value is None else json.dumps(value, default=str)
                    for value in column.to_pylist()
                ],
                pa.string(),
            )
        else:
            # Timestamps are cut to microseconds, PostgreSQL's resolution.
            converted = pc.cast(column, target, safe=not pa.types.is_timestamp(target))
        table = table.set_column(index, column_field.name, converted)
    return table


def rebatch(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.Table]:
    """Regroup a stream of record batches into tables of `rows` rows (the last may be shorter)."""
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        pending.append(batch)
        count += batch.num_rows
        while count >= rows:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, rows)
            rest = table.slice(rows)
            pending, count = rest.to_batches(), rest.num_rows
    if count:
        yield pa.Table.from_batches(pending)


def widened_type(current: str, incoming: str) -> str | None:
    """Return the type a target column of type `current` must change to for `incoming` values.

    None means the column can store them as it is, and INCOMPATIBLE that no widening can.
    """
    if current == incoming:
        return None
    for rule in (_integer_rule, _float_rule, _numeric_rule, _text_rule, _time_rule):
        outcome = rule(current, incoming)
        if outcome is not _NO_RULE:
            return outcome
    return INCOMPATIBLE


_NO_RULE: Any = object()


def _integer_rule(current: str, incoming: str) -> Any:
    if current in INTEGERS and incoming in INTEGERS:
        return incoming if INTEGERS.index(incoming) > INTEGERS.index(current) else None
    return _NO_RULE


def _float_rule(current: str, incoming: str) -> Any:
    # float8 represents every smallint and integer exactly, float4 every smallint.
    exact_in_double = ("smallint", "integer", "real")
    if current == "double precision" and incoming in exact_in_double:
        return None
    if current == "real" and incoming in ("smallint",):
        return None
    if current in (*FLOATS, "smallint", "integer") and incoming in (*FLOATS, "integer"):
        return "double precision"
    return _NO_RULE


def _numeric_rule(current: str, incoming: str) -> Any:
    current_digits = _numeric_digits(current)
    incoming_digits = _numeric_digits(incoming)
    if current_digits is None or incoming_digits is None:
        return _NO_RULE
    if current_digits == (None, None):
        return None  # an unbounded numeric stores every number
    if incoming_digits == (None, None):
        return "numeric"
    (current_integer, current_scale), (incoming_integer, incoming_scale) = (
        current_digits,
        incoming_digits,
    )
    if incoming_integer <= current_integer and incoming_scale <= current_scale:
        return None
    scale = max(current_scale, incoming_scale)
    precision = max(current_integer, incoming_integer) + scale
    return f"numeric({precision},{scale})" if precision <= 1000 else "numeric"


def _numeric_digits(type_name: str) -> tuple[Any, Any] | None:
    """Return (integer digits, scale) of an integer or numeric type; (None, None) if unbounded."""
    if type_name in INTEGER_DIGITS:
        return INTEGER_DIGITS[type_name], 0
    if type_name == "numeric":
        return None, None
    match = re.fullmatch(r"numeric\((\d+),(\d+)\)", type_name)
    if match is None:
        return None
    precision, scale = int(match.group(1)), int(match.group(2))
    return precision - scale, scale


def _text_rule(current: str, incoming: str) -> Any:
    current_base = current.split("(")[0]
    incoming_base = incoming.split("(")[0]
    if current_base not in TEXTS or incoming_base not in TEXTS:
        return _NO_RULE
    return None if current == "text" else "text"


def _time_rule(current: str, incoming: str) -> Any:
    if current == "date" and incoming in TIMESTAMPS:
        return incoming
    return _NO_RULE
