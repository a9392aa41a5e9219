"""Turn Kafka messages into Arrow tables: values (JSON or Avro), keys, headers, timestamps.

Every row carries the message's coordinates next to its value's fields:

    _kafka_partition  bigint     _kafka_offset   bigint
    _kafka_key        text       _kafka_timestamp  timestamp (UTC, from the message)
    _kafka_headers    text: a JSON array of [name, value] pairs, or NULL without headers

JSON values are parsed as the files source parses JSON lines, with pyarrow's JSON
reader: nested objects become struct columns and ISO 8601 strings timestamps.
Later batches are parsed with the schema of the earlier ones, so a column keeps
its type. A message whose value is not a JSON object, or does not fit that schema,
is rejected and dead-lettered, and the other messages of the batch load. A
tombstone (a message without a value) loads as a row whose value columns are NULL.
"""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa

from mocra_elt.config.model import AvroOptions, KafkaSource
from mocra_elt.errors import ConfigError
from mocra_elt.extract.base import RejectedRecord

if TYPE_CHECKING:
    from confluent_kafka import Message

PARTITION = "_kafka_partition"
OFFSET = "_kafka_offset"
KEY = "_kafka_key"
TIMESTAMP = "_kafka_timestamp"
HEADERS = "_kafka_headers"
KAFKA_COLUMNS = (PARTITION, OFFSET, KEY, TIMESTAMP, HEADERS)

CONFLUENT_MAGIC = 0
CONFLUENT_HEADER = 5

# Characters that str.splitlines() breaks on, which a dead-letter payload line may not contain.
# CR and LF become spaces, because that is what they are in JSON outside strings. The others
# become \\u escapes, which keep their value inside a JSON string.
LINE_BREAKS = re.compile("[\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


class UndecodableMessage(ValueError):
    """A message value that cannot be turned into a row."""


@dataclass
class DecodedBatch:
    """The rows of one batch and the messages set aside as dead letters."""

    table: pa.Table
    rejected: list[RejectedRecord] = field(default_factory=list)
    bytes: int = 0


class ValueDecoder(Protocol):
    def decode(self, values: Sequence[bytes | None]) -> tuple[pa.Table, dict[int, str]]:
        """Return a table with one row per decodable value and {index: reason} for the others."""
        ...


class MessageDecoder:
    """Build one Arrow table per batch of messages, rejecting those that cannot be decoded."""

    def __init__(self, source: KafkaSource, project_root: Path | None, pipeline: str) -> None:
        self.source = source
        self.values: ValueDecoder = (
            AvroDecoder(source.avro, project_root, pipeline)
            if source.avro is not None
            else JsonDecoder()
        )

    def decode(self, messages: Sequence[Message]) -> DecodedBatch:
        raw_keys = [message.key() for message in messages]
        raw_values = [message.value() for message in messages]
        keys, reasons = self.key_column(raw_keys)

        candidates = [index for index in range(len(messages)) if index not in reasons]
        if reasons:
            values, value_reasons = self.values.decode([raw_values[i] for i in candidates])
        else:
            values, value_reasons = self.values.decode(raw_values)
        reasons.update({candidates[position]: reason for position, reason in value_reasons.items()})

        kept = [index for index in range(len(messages)) if index not in reasons]
        rows = [messages[index] for index in kept] if reasons else messages
        # Value fields named like a _kafka_* column give way to the message's own data.
        columns = {
            name: values.column(name) for name in values.column_names if name not in KAFKA_COLUMNS
        }
        columns.update(message_columns(rows))
        columns[KEY] = keys.take(pa.array(kept, pa.int64())) if reasons else keys
        rejected = [
            rejected_message(self.source.topic, messages[i], self._key_text(raw_keys[i]), reason)
            for i, reason in sorted(reasons.items())
        ]
        size = sum(map(len, filter(None, raw_values))) + sum(map(len, filter(None, raw_keys)))
        return DecodedBatch(pa.table(columns), rejected, size)

    def key_column(self, keys: list[bytes | None]) -> tuple[pa.Array, dict[int, str]]:
        """Return the _kafka_key column and {index: reason} for keys that are not UTF-8 text."""
        if self.source.key_format == "base64":
            return pa.array([_base64(key) for key in keys], pa.string()), {}
        binary = pa.array(keys, pa.binary())
        try:
            return binary.cast(pa.string()), {}
        except pa.ArrowInvalid:
            pass
        reasons: dict[int, str] = {}
        for index, key in enumerate(keys):
            try:
                key.decode("utf-8") if key is not None else None
            except UnicodeDecodeError as error:
                reasons[index] = (
                    f"the message key is not UTF-8 text ({error.reason} at byte {error.start}); "
                    "set source.key_format to 'base64' to load binary keys"
                )
        texts = [None if i in reasons or k is None else k.decode() for i, k in enumerate(keys)]
        return pa.array(texts, pa.string()), reasons

    def _key_text(self, key: bytes | None) -> str | None:
        """Return a key as the dead-letter payload shows it: text, or base64 when not UTF-8."""
        if key is None or self.source.key_format == "base64":
            return _base64(key)
        try:
            return key.decode("utf-8")
        except UnicodeDecodeError:
            return _base64(key)


def message_columns(messages: Sequence[Message]) -> dict[str, pa.Array]:
    """Return the partition, offset, timestamp and headers columns of `messages`, in order."""
    stamps = [message.timestamp() for message in messages]
    return {
        PARTITION: pa.array([message.partition() for message in messages], pa.int64()),
        OFFSET: pa.array([message.offset() for message in messages], pa.int64()),
        # Timestamp type 0 means the message has none.
        TIMESTAMP: pa.array(
            [milliseconds if kind else None for kind, milliseconds in stamps],
            pa.timestamp("ms", tz="UTC"),
        ),
        HEADERS: pa.array([headers_json(message.headers()) for message in messages], pa.string()),
    }


def headers_json(headers: Any) -> str | None:
    """Encode headers as `[[name, value], ...]`; a value that is not UTF-8 is `{"base64": ...}`."""
    if not headers:
        return None
    items = headers.items() if isinstance(headers, dict) else headers
    pairs = [[name, _header_value(value)] for name, value in items]
    return json.dumps(pairs, separators=(",", ":"), ensure_ascii=False)


def _header_value(value: str | bytes | None) -> Any:
    if value is None or isinstance(value, str):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(value).decode("ascii")}


def _base64(data: bytes | None) -> str | None:
    return base64.b64encode(data).decode("ascii") if data is not None else None


# --- JSON values ------------------------------------------------------------------------------


class JsonDecoder:
    """Parse JSON object values with pyarrow, keeping each column's type across batches."""

    def __init__(self) -> None:
        self.schema: pa.Schema | None = None

    def decode(self, values: Sequence[bytes | None]) -> tuple[pa.Table, dict[int, str]]:
        documents = [b"{}" if value is None else value for value in values]
        if not documents:
            return pa.table({}), {}
        table = self._parse(documents, self.schema)
        if table is not None and table.num_rows == len(documents):
            self.schema = _widen(self.schema, table.schema)
            return _utc_timestamps(table), {}

        # Slow path: find the messages that are not JSON objects, or do not fit the types.
        reasons = _invalid_json(documents)
        misfits, schema = self._misfits(documents, reasons)
        reasons.update(misfits)
        good = [document for index, document in enumerate(documents) if index not in reasons]
        table = self._parse(good, schema) if good else pa.table({})
        if table is None:  # pragma: no cover - each good value parsed with this schema alone
            raise AssertionError("JSON values that parse one by one failed to parse together")
        self.schema = _widen(self.schema, table.schema)
        return _utc_timestamps(table), reasons

    def _parse(self, documents: Sequence[bytes], schema: pa.Schema | None) -> pa.Table | None:
        import pyarrow.json as pajson

        joined = b"\n".join(documents)
        options = pajson.ParseOptions(
            explicit_schema=schema,
            unexpected_field_behavior="infer",
            # More line breaks than separators: some value spans lines.
            newlines_in_values=joined.count(b"\n") >= len(documents),
        )
        try:
            table = pajson.read_json(io.BytesIO(joined), parse_options=options)
        except pa.ArrowInvalid:
            return None
        if table.num_columns == 0:
            # pyarrow reports no rows for objects without fields, such as tombstones.
            return pa.table({"__rows": pa.nulls(len(documents))}).drop_columns(["__rows"])
        return table

    def _misfits(
        self, documents: Sequence[bytes], invalid: dict[int, str]
    ) -> tuple[dict[int, str], pa.Schema | None]:
        """Return the valid objects that do not fit the column types, and the schema they set.

        A field keeps the type of the first message that has it, so a message that
        gives it another type is the one set aside. Failing ranges are halved until
        single messages remain, which takes about k * log2(n) parses for k misfits.
        """
        reasons: dict[int, str] = {}
        schema = self.schema
        pending = [[index for index in range(len(documents)) if index not in invalid]]
        while pending:
            chunk = pending.pop()
            table = self._parse([documents[index] for index in chunk], schema)
            if table is not None and table.num_rows == len(chunk):
                schema = _widen(schema, table.schema)
            elif len(chunk) == 1:
                detail = _type_detail(documents[chunk[0]], schema)
                reasons[chunk[0]] = (
                    f"the value does not fit the column types of earlier messages{detail}"
                )
            else:
                middle = len(chunk) // 2
                pending += [chunk[middle:], chunk[:middle]]  # the first half is taken next
        return reasons, schema


def _utc_timestamps(table: pa.Table) -> pa.Table:
    """Mark pyarrow's zone-less timestamps as UTC, in microseconds.

    pyarrow's JSON reader converts ISO 8601 strings with an offset to UTC and
    drops the zone. The loader takes zone-less values as UTC too, so the values
    stay the same, and dlt gets a type it stores without a precision warning.
    """
    for index, column_field in enumerate(table.schema):
        column_type = column_field.type
        if pa.types.is_timestamp(column_type) and column_type.tz is None:
            target = pa.timestamp("us", tz="UTC")
            table = table.set_column(index, column_field.name, table.column(index).cast(target))
    return table


def _widen(schema: pa.Schema | None, seen: pa.Schema) -> pa.Schema:
    """Return `schema` plus the fields of `seen` it lacks; null-typed fields stay open."""
    fields = list(schema) if schema is not None else []
    names = {schema_field.name for schema_field in fields}
    for seen_field in seen:
        if seen_field.name not in names and not pa.types.is_null(seen_field.type):
            fields.append(seen_field)
    return pa.schema(fields)


def _type_detail(document: bytes, schema: pa.Schema | None) -> str:
    """Return ' (field: expected TYPE)' for the first top-level field that does not fit."""
    import pyarrow.json as pajson

    if schema is None:
        return ""
    parsed = json.loads(document)
    for name in parsed:
        if name not in schema.names:
            continue
        single = pa.schema([schema.field(name)])
        options = pajson.ParseOptions(explicit_schema=single, unexpected_field_behavior="ignore")
        try:
            value = json.dumps({name: parsed[name]}).encode()
            pajson.read_json(io.BytesIO(value), parse_options=options)
        except pa.ArrowInvalid:
            found = json.dumps(parsed[name])
            found = found if len(found) <= 60 else found[:57] + "..."
            return f" (field {name!r}: expected {schema.field(name).type}, found {found})"
    return ""


def _invalid_json(documents: Sequence[bytes]) -> dict[int, str]:
    reasons: dict[int, str] = {}
    for index, document in enumerate(documents):
        try:
            parsed = json.loads(document.decode("utf-8"))
        except UnicodeDecodeError as error:
            reasons[index] = f"the value is not UTF-8 text ({error.reason} at byte {error.start})"
            continue
        except ValueError as error:
            reasons[index] = f"invalid JSON: {error}"
            continue
        if not isinstance(parsed, dict):
            reasons[index] = f"expected a JSON object, found {_json_kind(parsed)}"
    return reasons


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


# --- Avro values ------------------------------------------------------------------------------

# Arrow types of Avro primitive and logical types; other types load as JSON text.
AVRO_PRIMITIVES: dict[str, pa.DataType] = {
    "boolean": pa.bool_(),
    "int": pa.int32(),
    "long": pa.int64(),
    "float": pa.float32(),
    "double": pa.float64(),
    "string": pa.string(),
    "bytes": pa.binary(),
    "enum": pa.string(),
    "fixed": pa.binary(),
}
AVRO_LOGICAL: dict[str, pa.DataType] = {
    "timestamp-millis": pa.timestamp("ms", tz="UTC"),
    "timestamp-micros": pa.timestamp("us", tz="UTC"),
    "local-timestamp-millis": pa.timestamp("ms"),
    "local-timestamp-micros": pa.timestamp("us"),
    "date": pa.date32(),
    "time-millis": pa.time32("ms"),
    "time-micros": pa.time64("us"),
    "uuid": pa.string(),
}


class AvroDecoder:
    """Decode schemaless Avro records of one record schema into typed columns.

    Fields of record, array or map type, and unions of more than one non-null
    type, load as JSON text.
    """

    def __init__(self, options: AvroOptions, project_root: Path | None, pipeline: str) -> None:
        try:
            import fastavro
        except ModuleNotFoundError as error:
            raise ConfigError(
                f"pipeline {pipeline!r}: source.format 'avro' needs the Python package "
                "fastavro, which is not installed. Install it with 'pip install fastavro'.",
                pipeline=pipeline,
                field="source.format",
            ) from error

        self.framing = options.framing
        document = _read_schema(options.schema_file, project_root, pipeline)
        try:
            self.parsed = fastavro.parse_schema(document)
        except (fastavro.schema.SchemaParseException, KeyError, TypeError, ValueError) as error:
            raise ConfigError(
                f"pipeline {pipeline!r}: source.avro.schema_file {options.schema_file!r} is not "
                f"a valid Avro schema: {error}.",
                pipeline=pipeline,
                field="source.avro.schema_file",
            ) from error
        if not isinstance(document, dict) or document.get("type") != "record":
            raise ConfigError(
                f"pipeline {pipeline!r}: source.avro.schema_file {options.schema_file!r} must "
                "hold a record schema, whose fields become columns.",
                pipeline=pipeline,
                field="source.avro.schema_file",
            )
        self.schema = pa.schema(
            [pa.field(item["name"], avro_arrow_type(item["type"])) for item in document["fields"]]
        )

    def decode(self, values: Sequence[bytes | None]) -> tuple[pa.Table, dict[int, str]]:
        rows: dict[str, list[Any]] = {name: [] for name in self.schema.names}
        reasons: dict[int, str] = {}
        for index, value in enumerate(values):
            try:
                record = self._record(value)
            except UndecodableMessage as error:
                reasons[index] = str(error)
                continue
            for schema_field in self.schema:
                rows[schema_field.name].append(_column_value(record, schema_field))
        columns = [pa.array(rows[f.name], f.type) for f in self.schema]
        return pa.Table.from_arrays(columns, schema=self.schema), reasons

    def _record(self, value: bytes | None) -> dict[str, Any]:
        import fastavro

        if value is None:
            return {}
        payload = value
        if self.framing == "confluent":
            if len(value) < CONFLUENT_HEADER or value[0] != CONFLUENT_MAGIC:
                raise UndecodableMessage(
                    "the value does not start with the Confluent wire format header "
                    "(magic byte 0 and a 4-byte schema id); check source.avro.framing"
                )
            payload = value[CONFLUENT_HEADER:]
        stream = io.BytesIO(payload)
        try:
            record = fastavro.schemaless_reader(stream, self.parsed, None)
        except Exception as error:  # noqa: BLE001 - fastavro raises many types on corrupt input
            raise UndecodableMessage(
                f"invalid Avro data: {type(error).__name__}: {error}"
            ) from None
        if stream.tell() != len(payload):
            raise UndecodableMessage(
                f"invalid Avro data: {len(payload) - stream.tell()} bytes left after the record; "
                "the value was written with another schema"
            )
        assert isinstance(record, dict)
        return record


def avro_arrow_type(avro_type: Any) -> pa.DataType:
    """Return the column type of an Avro field type; complex types become JSON text."""
    if isinstance(avro_type, list):
        branches = [branch for branch in avro_type if branch != "null"]
        return avro_arrow_type(branches[0]) if len(branches) == 1 else pa.string()
    if isinstance(avro_type, dict):
        logical = avro_type.get("logicalType")
        if logical in AVRO_LOGICAL:
            return AVRO_LOGICAL[logical]
        if logical == "decimal":
            return pa.decimal128(avro_type["precision"], avro_type.get("scale", 0))
        return avro_arrow_type(avro_type["type"]) if avro_type["type"] != "record" else pa.string()
    return AVRO_PRIMITIVES.get(avro_type, pa.string())


def _column_value(record: dict[str, Any], schema_field: pa.Field) -> Any:
    value = record.get(schema_field.name)
    if value is None or not pa.types.is_string(schema_field.type) or isinstance(value, str):
        return value
    if isinstance(value, dict | list | bool | int | float):
        return json.dumps(value, separators=(",", ":"), default=_json_default)
    return str(value)  # an enum symbol, a UUID


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _read_schema(schema_file: str, project_root: Path | None, pipeline: str) -> Any:
    path = Path(schema_file)
    if not path.is_absolute():
        path = (project_root or Path.cwd()) / path
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(
            f"pipeline {pipeline!r}: cannot read source.avro.schema_file {str(path)!r}: "
            f"{error.strerror}.",
            pipeline=pipeline,
            field="source.avro.schema_file",
        ) from error
    except ValueError as error:
        raise ConfigError(
            f"pipeline {pipeline!r}: source.avro.schema_file {str(path)!r} is not JSON: {error}.",
            pipeline=pipeline,
            field="source.avro.schema_file",
        ) from error


# --- dead letters -----------------------------------------------------------------------------


def rejected_message(topic: str, message: Message, key: str | None, reason: str) -> RejectedRecord:
    """Return the dead letter of a message, with a payload line that a replay can load.

    The payload is one JSON object line: the _kafka_* columns, then the value's own
    text with its outer braces removed, so fixing the value's JSON in place makes
    the line a loadable row. A value that is not UTF-8 text appears as
    `base64:<bytes>`, which the fix replaces with the value's fields. Until it is
    fixed the line is not valid JSON, so a replay fails again rather than loading
    a wrong row.
    """
    members = json.dumps(_coordinates(message, key), ensure_ascii=False)[1:-1]
    return RejectedRecord(
        source_ref=f"{topic}/{message.partition()}/{message.offset()}",
        payload="{" + members + ", " + _value_body(message.value()) + "}",
        payload_format="jsonl",
        error=reason,
    )


def _coordinates(message: Message, key: str | None) -> dict[str, Any]:
    kind, milliseconds = message.timestamp()
    timestamp = None
    if kind != 0:
        moment = datetime.fromtimestamp(milliseconds / 1000, UTC)
        timestamp = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {
        PARTITION: message.partition(),
        OFFSET: message.offset(),
        KEY: key,
        TIMESTAMP: timestamp,
        HEADERS: headers_json(message.headers()),
    }


def _value_body(value: bytes | None) -> str:
    if value is None:
        return ""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(value).decode("ascii")
    text = LINE_BREAKS.sub(_escape_break, text).strip()
    if text.startswith("{"):
        text = text[1:-1] if text.endswith("}") else text[1:]
    return text.strip()


def _escape_break(match: re.Match[str]) -> str:
    character = match.group(0)
    return " " if character in "\r\n" else f"\\u{ord(character):04x}"
