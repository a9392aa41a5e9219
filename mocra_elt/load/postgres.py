"""PostgreSQL connections shared by the warehouse, the `db` source and the `postgres` sink.

Two drivers are used. psycopg2 (through dlt's postgres extra) runs small
statements and backs the warehouse's `connect()`. ADBC
(adbc-driver-postgresql) moves Arrow data in and out over binary COPY, for
bulk reads and writes.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from mocra_elt.config.model import SECRET_REFERENCE, PostgresConnection
from mocra_elt.errors import (
    ConfigError,
    LoadError,
    MocraError,
    SinkError,
    SourceError,
    TransientError,
)

log = logging.getLogger(__name__)

APPLICATION_NAME = "mocra-elt"
CONNECT_TIMEOUT_S = 15

# Session settings for every connection: UTC for timestamp literals and
# conversions, and standard strings so that only '' escapes a quote in a literal.
SESSION_SETTINGS = ("set time zone 'UTC'", "set standard_conforming_strings = on")

_UNAVAILABLE_MARKERS = (
    "could not connect",
    "connection refused",
    "timeout expired",
    "timed out",
    "could not translate host name",
    "server closed the connection",
    "the database system is starting up",
    "the database system is shutting down",
    "too many clients",
    "connection reset",
)
_AUTH_MARKERS = (
    "password authentication failed",
    "no password supplied",
    "pg_hba.conf",
    "authentication failed",
)


@dataclass(frozen=True)
class PgConnectionInfo:
    """Resolved connection settings. `describe()` leaves the password out."""

    host: str
    port: int
    user: str
    password: str
    database: str
    options: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_url(cls, url: str) -> PgConnectionInfo:
        parts = urlsplit(url)
        if parts.scheme not in ("postgres", "postgresql"):
            raise ConfigError(
                "a PostgreSQL URL must start with postgresql:// (got scheme "
                f"{parts.scheme or 'none'!r})."
            )
        options = dict(parse_qsl(parts.query))
        host = options.pop("host", None) or parts.hostname or "127.0.0.1"
        return cls(
            host=host,
            port=int(options.pop("port", None) or parts.port or 5432),
            user=unquote(parts.username or ""),
            password=unquote(parts.password or ""),
            database=unquote(parts.path.lstrip("/")),
            options=options,
        )

    def describe(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"

    def uri(self) -> str:
        """Return a libpq URI; a host that is a socket folder goes in the query string."""
        credentials = quote(self.user, safe="")
        if self.password:
            credentials += ":" + quote(self.password, safe="")
        query = {"application_name": APPLICATION_NAME, **self.options}
        if self.host.startswith("/"):
            query |= {"host": self.host, "port": str(self.port)}
            location = ""
        else:
            location = f"{self.host}:{self.port}"
        return (
            f"postgresql://{credentials}@{location}/{quote(self.database, safe='')}"
            f"?{urlencode(query)}"
        )

    def dbapi_kwargs(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password or None,
            "dbname": self.database,
            "application_name": APPLICATION_NAME,
            "connect_timeout": CONNECT_TIMEOUT_S,
            **self.options,
        }


def info_from_env() -> PgConnectionInfo:
    """Read MOCRA_PG_HOST, _PORT, _USER, _PASSWORD and _DATABASE, as profiles.yml's pg target."""
    port = os.environ.get("MOCRA_PG_PORT", "5432")
    if not port.isdigit():
        raise ConfigError(f"MOCRA_PG_PORT must be a port number, not {port!r}.")
    return PgConnectionInfo(
        host=os.environ.get("MOCRA_PG_HOST", "127.0.0.1"),
        port=int(port),
        user=os.environ.get("MOCRA_PG_USER", "postgres"),
        password=os.environ.get("MOCRA_PG_PASSWORD", ""),
        database=os.environ.get("MOCRA_PG_DATABASE", "mocra"),
    )


def resolve_connection(
    config: PostgresConnection, *, pipeline: str, field_prefix: str
) -> PgConnectionInfo:
    """Resolve the references of a connection block into settings."""
    if config.url is not None:
        url = _resolve(config.url, pipeline, f"{field_prefix}.url")
        return PgConnectionInfo.from_url(url)
    port = _resolve(str(config.port), pipeline, f"{field_prefix}.port")
    if not port.isdigit():
        raise ConfigError(
            f"pipeline {pipeline!r}: {field_prefix}.port must be a port number, not {port!r}.",
            pipeline=pipeline,
            field=f"{field_prefix}.port",
        )
    password = config.password
    return PgConnectionInfo(
        host=_resolve(str(config.host), pipeline, f"{field_prefix}.host"),
        port=int(port),
        user=_resolve(str(config.user), pipeline, f"{field_prefix}.user"),
        password=_resolve(password, pipeline, f"{field_prefix}.password") if password else "",
        database=_resolve(str(config.database), pipeline, f"{field_prefix}.database"),
    )


def _resolve(value: str, pipeline: str, field_name: str) -> str:
    if not SECRET_REFERENCE.match(value):
        return value
    from mocra_elt.config.secrets import resolve_secret

    return resolve_secret(value, pipeline=pipeline, field=field_name)


# --- errors -----------------------------------------------------------------------------------


def connection_error(
    error: Exception, info: PgConnectionInfo, *, stage: str | None, pipeline: str | None = None
) -> MocraError:
    """Map a driver error raised while connecting onto a mocra-elt error for `stage`."""
    text = first_line(error)
    lowered = str(error).lower()
    where = info.describe()
    if any(marker in lowered for marker in _AUTH_MARKERS):
        message = (
            f"PostgreSQL at {where} rejected the credentials: {text}. Check the user and "
            "password references."
        )
        if stage == "extract":
            return SourceError(message, pipeline=pipeline, stage=stage, error_code="SOURCE_AUTH")
        if stage == "publish":
            return SinkError(message, pipeline=pipeline, stage=stage)
        return LoadError(message, pipeline=pipeline, stage=stage)
    if any(marker in lowered for marker in _UNAVAILABLE_MARKERS):
        code = {"extract": "SOURCE_UNAVAILABLE", "publish": "SINK_FAILED"}.get(stage or "")
        return TransientError(
            f"cannot reach PostgreSQL at {where}: {text}. Check that the server runs and "
            "accepts connections from this host.",
            pipeline=pipeline,
            stage=stage,
            error_code=code or "LOAD_FAILED",
        )
    message = f"cannot connect to PostgreSQL at {where}: {text}"
    if stage == "extract":
        return SourceError(message, pipeline=pipeline, stage=stage, error_code="SOURCE_UNAVAILABLE")
    if stage == "publish":
        return SinkError(message, pipeline=pipeline, stage=stage)
    return LoadError(message, pipeline=pipeline, stage=stage)


def first_line(error: BaseException) -> str:
    """Return the first non-empty line of a driver message, without libpq's prefixes."""
    for line in str(error).splitlines():
        line = re.sub(r"^(\[libpq\]\s*|IO:\s*|INTERNAL:\s*)+", "", line.strip())
        if line:
            return line
    return type(error).__name__


# --- psycopg2: small statements -----------------------------------------------------------


@contextmanager
def connect_dbapi(
    info: PgConnectionInfo, *, stage: str | None = None, pipeline: str | None = None
) -> Iterator[QmarkConnection]:
    """Open a psycopg2 connection in autocommit mode, wrapped for `?` parameters."""
    import psycopg2

    try:
        raw = psycopg2.connect(**info.dbapi_kwargs())
    except psycopg2.OperationalError as error:
        raise connection_error(error, info, stage=stage, pipeline=pipeline) from error
    raw.autocommit = True
    connection = QmarkConnection(raw)
    try:
        for statement in SESSION_SETTINGS:
            connection.execute(statement)
        yield connection
    finally:
        raw.close()


class QmarkConnection:
    """A psycopg2 connection that follows DuckDB's calling convention.

    `execute(sql, parameters)` returns the cursor, `?` marks a parameter, and
    each statement commits on its own unless an explicit `begin` opened a
    transaction. A `?` inside a string literal, a quoted identifier or a comment
    is left alone. Because `?` marks parameters, PostgreSQL's jsonb operators
    `?`, `?|` and `?&` cannot appear in a statement that has parameters.
    """

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def execute(self, sql: str, parameters: Sequence[Any] | None = None) -> Any:
        cursor = self.raw.cursor()
        if parameters:
            cursor.execute(qmark_to_format(sql), list(parameters))
        else:
            cursor.execute(sql)
        return cursor

    def close(self) -> None:
        self.raw.close()


# Quoted strings, quoted identifiers, dollar-quoted strings and comments, which keep their `?`.
_SKIPPED = re.compile(
    r"""'(?:[^']|'')*'|"(?:[^"]|"")*"|(\$(?:[A-Za-z_][A-Za-z_0-9]*)?\$).*?\1|--[^\n]*|/\*.*?\*/""",
    re.DOTALL,
)


def qmark_to_format(sql: str) -> str:
    """Rewrite `?` parameters as psycopg2's `%s`, doubling every `%` outside skipped text."""
    pieces: list[str] = []
    position = 0
    for match in _SKIPPED.finditer(sql):
        pieces.append(_convert_code(sql[position : match.start()]))
        pieces.append(match.group(0).replace("%", "%%"))
        position = match.end()
    pieces.append(_convert_code(sql[position:]))
    return "".join(pieces)


def _convert_code(text: str) -> str:
    return text.replace("%", "%%").replace("?", "%s")


# --- ADBC: Arrow in and out ---------------------------------------------------------------


@contextmanager
def connect_arrow(
    info: PgConnectionInfo, *, stage: str | None = None, pipeline: str | None = None
) -> Iterator[Any]:
    """Open an ADBC connection (not autocommit: the caller commits)."""
    try:
        import adbc_driver_manager
        import adbc_driver_postgresql.dbapi as adbc
    except ImportError as error:
        raise ConfigError(
            f"reading or writing PostgreSQL tables needs the adbc-driver-postgresql package "
            f"({error}). Install the project's dependencies with 'make install'."
        ) from error

    try:
        connection = adbc.connect(info.uri())
    except adbc_driver_manager.Error as error:
        raise connection_error(error, info, stage=stage, pipeline=pipeline) from error
    try:
        with connection.cursor() as cursor:
            for statement in SESSION_SETTINGS:
                cursor.execute(statement)
        yield connection
    finally:
        connection.close()


# --- Arrow types of ADBC results ----------------------------------------------------------

# Field metadata key naming the PostgreSQL type of a column that Arrow stores as text.
PG_TYPE_METADATA = b"mocra.pg_type"


class NumericValueError(ValueError):
    """A numeric value that does not fit the Arrow decimal type chosen for its column."""

    def __init__(self, column: str, target: Any, detail: str) -> None:
        super().__init__(f"column {column!r}: a value does not fit {target} ({detail})")
        self.column = column


def plain_arrow_reader(reader: Any, *, numeric_as_text: bool = False) -> Any:
    """Return `reader` with ADBC's PostgreSQL extension types replaced by plain Arrow types.

    numeric(p,s) becomes decimal(p,s). numeric without a precision becomes
    decimal(38,9), which raises NumericValueError on a value with more digits,
    or, with `numeric_as_text`, text tagged as numeric in the field metadata.
    uuid becomes its canonical text, json and jsonb become text tagged as jsonb,
    and any other extension type becomes its storage type.
    """
    import pyarrow as pa

    fields = [_plain_field(field, numeric_as_text) for field in reader.schema]
    schema = pa.schema(fields)

    def batches() -> Iterator[Any]:
        for batch in reader:
            columns = [
                _plain_column(batch.column(index), source, target)
                for index, (source, target) in enumerate(zip(reader.schema, fields, strict=True))
            ]
            yield pa.RecordBatch.from_arrays(columns, schema=schema)

    return pa.RecordBatchReader.from_batches(schema, batches())


def _plain_field(field: Any, numeric_as_text: bool) -> Any:
    import pyarrow as pa

    arrow_type = field.type
    if not isinstance(arrow_type, pa.BaseExtensionType):
        return pa.field(field.name, arrow_type)
    name = arrow_type.extension_name
    if name == "arrow.json":
        return pa.field(field.name, pa.string(), metadata={PG_TYPE_METADATA: b"jsonb"})
    if name == "arrow.uuid":
        return pa.field(field.name, pa.string())
    if getattr(arrow_type, "type_name", None) == "numeric":
        typmod = int((field.metadata or {}).get(b"POSTGRESQL:typmod", b"-1"))
        if typmod >= 4:
            precision, scale = (typmod - 4) >> 16, (typmod - 4) & 0xFFFF
            decimal = pa.decimal128 if precision <= 38 else pa.decimal256
            return pa.field(field.name, decimal(precision, scale))
        if numeric_as_text:
            return pa.field(field.name, pa.string(), metadata={PG_TYPE_METADATA: b"numeric"})
        return pa.field(field.name, pa.decimal128(38, 9))
    return pa.field(field.name, arrow_type.storage_type)


def _plain_column(column: Any, source: Any, target: Any) -> Any:
    import uuid

    import pyarrow as pa

    if not isinstance(source.type, pa.BaseExtensionType):
        return column
    storage = column.storage
    if source.type.extension_name == "arrow.uuid":
        values = [None if raw is None else str(uuid.UUID(bytes=raw)) for raw in storage.to_pylist()]
        return pa.array(values, pa.string())
    if storage.type == target.type:
        return storage
    try:
        return storage.cast(target.type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        raise NumericValueError(source.name, target.type, str(error)) from error


def sql_literal(value: Any) -> str:
    """Render a Python value as a PostgreSQL literal; strings are quoted with ''."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | Decimal):
        return str(value)
    if isinstance(value, float):
        return repr(value) if value == value and abs(value) != float("inf") else f"'{value}'"
    if isinstance(value, datetime | date):
        return quote_string(value.isoformat())
    return quote_string(str(value))


def quote_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
