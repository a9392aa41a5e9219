"""The options of each sink type, checked when a pipeline is validated and again at publish."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from mocra_elt.config.model import (
    KAFKA_TOPIC,
    PG_IDENTIFIER,
    KafkaConnection,
    PostgresConnection,
    Sink,
    Strict,
    check_reference_or_plain,
    check_secret_reference,
    check_table_name,
)
from mocra_elt.errors import ConfigError

# Columns dlt adds to raw tables; a sink leaves them out unless `columns` names them.
DLT_COLUMNS = ("_dlt_load_id", "_dlt_id")


def _check_identifiers(value: list[str]) -> list[str]:
    invalid = [name for name in value if not PG_IDENTIFIER.match(name)]
    if invalid:
        raise ValueError(f"invalid column names: {', '.join(map(repr, invalid))}")
    if len(set(value)) != len(value):
        raise ValueError("a column is listed more than once")
    return value


def _check_optional_table(value: str | None) -> str | None:
    return None if value is None else check_table_name(value)


class SinkOptions(Strict):
    type: str
    model: str = Field(
        description="dbt model in schema analytics, or 'schema.table' for any warehouse table."
    )
    columns: list[str] = Field(
        default_factory=list,
        description="Columns to publish; by default every column except dlt's _dlt_* columns.",
    )

    _check_model = field_validator("model")(check_table_name)
    _check_columns = field_validator("columns")(_check_identifiers)


class PostgresSinkOptions(SinkOptions, PostgresConnection):
    """Upsert a model into a PostgreSQL table on its key, in one transaction per publish."""

    type: Literal["postgres"]
    table: str | None = Field(
        default=None, description="Target 'table' or 'schema.table'; default: public.<model>."
    )
    key: list[str] = Field(min_length=1, description="Record key that the upsert matches on.")
    deletes: Literal["none", "soft", "hard"] = Field(
        default="none",
        description="Rows in the target whose key is gone from the model: keep them (none), "
        "set _mocra_deleted (soft), or delete them (hard).",
    )
    batch_rows: int = Field(
        default=100_000, ge=1, description="Rows per COPY into the staging table."
    )

    _check_key = field_validator("key")(_check_identifiers)
    _check_target = field_validator("table")(_check_optional_table)

    @field_validator("key", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_key_columns(self) -> PostgresSinkOptions:
        missing = [name for name in self.key if self.columns and name not in self.columns]
        if missing:
            raise ValueError(f"key column {', '.join(missing)} is not in columns")
        return self

    @property
    def target(self) -> tuple[str, str]:
        name = self.table or self.model.rpartition(".")[2]
        schema, _, table = name.rpartition(".")
        return schema or "public", table


class PartitionBy(Strict):
    column: str = Field(description="Record field whose value chooses the partition.")
    granularity: Literal["value", "hour", "day", "month", "year"] | None = Field(
        default=None,
        description="Cut a date or timestamp to this unit; default: day for dates and "
        "timestamps, the value itself for other types.",
    )
    name: str | None = Field(
        default=None, description="Partition key in the path (name=value/); default: column."
    )

    @field_validator("column", "name")
    @classmethod
    def _check_name(cls, value: str | None) -> str | None:
        if value is not None and not PG_IDENTIFIER.match(value):
            raise ValueError(f"invalid column name {value!r}")
        return value

    @property
    def key(self) -> str:
        return self.name or self.column


class ObjectStorageSinkOptions(SinkOptions):
    """Write a model as files under hive-style partition folders (`dt=2013-01-01/`)."""

    type: Literal["object_storage"]
    url: str = Field(
        description="s3://bucket/prefix, file:///path, or a folder relative to the project root."
    )
    format: Literal["parquet", "csv", "jsonl"] = "parquet"
    compression: Literal["snappy", "zstd", "gzip", "none"] = Field(
        default="snappy", description="Parquet compression codec."
    )
    partition_by: PartitionBy
    order_by: list[str] = Field(
        default_factory=list, description="Sort order of the rows inside each partition file."
    )
    delete_missing_partitions: bool = Field(
        default=False,
        description="Delete partitions this sink wrote earlier whose rows are gone from the model.",
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="fsspec options such as endpoint_url; values may be ${env:NAME} references.",
    )

    _check_order = field_validator("order_by")(_check_identifiers)

    @field_validator("url")
    @classmethod
    def _check_scheme(cls, value: str) -> str:
        scheme, separator, _ = value.partition("://")
        if separator and scheme not in ("file", "s3"):
            raise ValueError(f"url {value!r} must be s3://, file:// or a local folder")
        return value.rstrip("/")

    @field_validator("storage_options")
    @classmethod
    def _check_storage_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key, option in value.items():
            if key in ("key", "secret", "token", "password", "aws_secret_access_key"):
                check_secret_reference(str(option))
            elif isinstance(option, str):
                check_reference_or_plain(option)
        return value


class KafkaSinkOptions(SinkOptions, KafkaConnection):
    """Send each row of a model as one JSON message, keyed by the record key, to a topic."""

    RESERVED_PROPERTIES: ClassVar[tuple[str, ...]] = (
        "bootstrap.servers",
        "enable.idempotence",
        "acks",
        "transactional.id",
    )

    type: Literal["kafka"]
    topic: str = Field(pattern=KAFKA_TOPIC)
    key: list[str] = Field(
        min_length=1,
        description="Columns whose values form the message key: one column's value as text, "
        "several as a JSON array.",
    )
    format: Literal["json"] = Field(default="json", description="Message value format.")
    delivery_timeout: float = Field(
        default=120.0,
        gt=0,
        description="Seconds the client may spend delivering one message, retries included.",
    )
    batch_rows: int = Field(
        default=10_000, ge=1, description="Rows read from the warehouse at a time."
    )

    _check_key = field_validator("key")(_check_identifiers)

    @field_validator("key", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_key_columns(self) -> KafkaSinkOptions:
        missing = [name for name in self.key if self.columns and name not in self.columns]
        if missing:
            raise ValueError(f"key column {', '.join(missing)} is not in columns")
        return self


SINK_OPTIONS: dict[str, type[SinkOptions]] = {
    "postgres": PostgresSinkOptions,
    "object_storage": ObjectStorageSinkOptions,
    "kafka": KafkaSinkOptions,
}


def parse_sink(sink: Sink, pipeline: str, index: int) -> SinkOptions:
    """Validate one entry of `sinks` against its type's options; raises ConfigError."""
    options_class = SINK_OPTIONS.get(sink.type)
    if options_class is None:
        allowed = ", ".join(SINK_OPTIONS)
        raise ConfigError(
            f"pipeline {pipeline!r}: sinks[{index}].type {sink.type!r} is not a supported sink "
            f"(supported: {allowed}).",
            pipeline=pipeline,
            field=f"sinks[{index}].type",
        )
    document = {"type": sink.type, "model": sink.model, **(sink.model_extra or {})}
    try:
        return options_class.model_validate(document)
    except ValidationError as error:
        raise _to_config_error(error, pipeline, index) from None


def _to_config_error(error: ValidationError, pipeline: str, index: int) -> ConfigError:
    lines = []
    for issue in error.errors():
        location = ".".join(str(part) for part in issue["loc"])
        field_name = f"sinks[{index}]" + (f".{location}" if location else "")
        message = str(issue["msg"]).removeprefix("Value error, ")
        if issue["type"] == "extra_forbidden":
            message = "unknown field; check the spelling against the sink options in README.md"
        lines.append(f"  {field_name}: {message}")
    first = error.errors()[0]["loc"] if error.errors() else ()
    return ConfigError(
        f"pipeline {pipeline!r} has invalid sink options:\n" + "\n".join(lines),
        pipeline=pipeline,
        field=f"sinks[{index}]." + ".".join(str(part) for part in first),
    )
