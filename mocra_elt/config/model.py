"""The pipeline definition: what one YAML file in `sources/` may contain.

Models forbid unknown keys, so a misspelt option is an error rather than a
silent default. Secret values (tokens, passwords, keys) must be references of
the form `${env:NAME}` or `${secret:dotted.key}`, resolved only at run time.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import timedelta
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

STAGES = ("extract", "load", "transform", "quality", "publish")
Stage = Literal["extract", "load", "transform", "quality", "publish"]

NAME_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
SECRET_REFERENCE = re.compile(r"^\$\{(env|secret):([A-Za-z_][A-Za-z0-9_.]*)\}$")
# Header and parameter names whose values must be secret references.
SENSITIVE_NAME = re.compile(
    r"auth|token|secret|password|passwd|api[-_]?key|apikey|cookie|signature|credential|session",
    re.IGNORECASE,
)
DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d)\s*$")
DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_duration(value: str | int | float) -> timedelta:
    """Parse `90s`, `15m`, `2h`, `7d` or a number of seconds into a timedelta."""
    try:
        if isinstance(value, int | float):
            return timedelta(seconds=value)
        match = DURATION.match(value)
        if match is None:
            raise ValueError(
                f"invalid duration {value!r}: use a number with s, m, h or d, e.g. '2h'"
            )
        amount, unit = match.groups()
        return timedelta(**{DURATION_UNITS[unit]: int(amount)})
    except OverflowError:
        raise ValueError(f"duration {value!r} is too large") from None


def check_url_credentials(url: str) -> str:
    """Reject a URL that carries a password or a credential-like query parameter."""
    from urllib.parse import parse_qsl, urlsplit

    parts = urlsplit(url)
    if "@" in parts.netloc:
        raise ValueError(
            "secrets may not be written in clear text: remove the user and password from "
            "the URL and use auth or storage_options with '${env:VARIABLE}' references"
        )
    for name, _ in parse_qsl(parts.query, keep_blank_values=True):
        if SENSITIVE_NAME.search(name):
            raise ValueError(
                f"secrets may not be written in clear text: the query parameter {name!r} looks "
                "like a credential; pass it under params as '${env:VARIABLE}'"
            )
    return url


def check_secret_reference(value: str | None) -> str | None:
    if value is None or SECRET_REFERENCE.match(value):
        return value
    raise ValueError(
        "secrets may not be written in clear text: use '${env:VARIABLE}' or "
        "'${secret:key.in.secrets_toml}'"
    )


SecretRef = Annotated[str, Field(description="${env:NAME} or ${secret:dotted.key}")]


# --- authentication -------------------------------------------------------------------------


class BearerAuth(Strict):
    type: Literal["bearer"]
    token: SecretRef

    _check = field_validator("token")(check_secret_reference)


class ApiKeyAuth(Strict):
    type: Literal["api_key"]
    name: str = "X-API-Key"
    location: Literal["header", "query"] = "header"
    api_key: SecretRef

    _check = field_validator("api_key")(check_secret_reference)


class BasicAuth(Strict):
    type: Literal["basic"]
    username: str
    password: SecretRef

    _check = field_validator("password")(check_secret_reference)


Auth = Annotated[BearerAuth | ApiKeyAuth | BasicAuth, Field(discriminator="type")]


# --- pagination -----------------------------------------------------------------------------


class PageNumberPaginator(Strict):
    type: Literal["page_number"]
    page_param: str = "page"
    base_page: int = 1
    page_size_param: str | None = None
    page_size: int | None = Field(default=None, gt=0)
    total_path: str | None = None
    maximum_page: int | None = Field(default=None, gt=0)


class OffsetPaginator(Strict):
    type: Literal["offset"]
    limit: int = Field(gt=0)
    offset_param: str = "offset"
    limit_param: str = "limit"
    total_path: str | None = None


class CursorPaginator(Strict):
    """A cursor token taken from the response body and sent back as a query parameter."""

    type: Literal["cursor"]
    cursor_path: str = "next_cursor"
    cursor_param: str = "cursor"


class NextLinkPaginator(Strict):
    """A full URL of the next page taken from the response body."""

    type: Literal["next_link"]
    next_url_path: str = "next"


class HeaderLinkPaginator(Strict):
    """The `Link: <...>; rel="next"` response header (RFC 8288)."""

    type: Literal["header_link"]


class SinglePage(Strict):
    type: Literal["single_page"]


Paginator = Annotated[
    PageNumberPaginator
    | OffsetPaginator
    | CursorPaginator
    | NextLinkPaginator
    | HeaderLinkPaginator
    | SinglePage,
    Field(discriminator="type"),
]


# --- sources --------------------------------------------------------------------------------


class HttpSource(Strict):
    type: Literal["http"]
    base_url: str
    path: str = ""
    params: dict[str, str | int | float | bool] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    data_selector: str | None = Field(
        default=None, description="JSONPath of the record list in each page, e.g. 'data'."
    )
    paginator: Paginator = Field(default_factory=lambda: SinglePage(type="single_page"))
    auth: Auth | None = None
    cursor_param: str | None = Field(
        default=None,
        description="Query parameter that receives the watermark of load.incremental.cursor.",
    )
    timeout: float = Field(default=30.0, gt=0, description="Seconds per request.")
    max_attempts: int = Field(
        default=5, ge=1, description="Attempts per request on 429, 5xx and connection errors."
    )

    @field_validator("headers", "params")
    @classmethod
    def _check_sensitive_values(cls, values: dict[str, Any]) -> dict[str, Any]:
        for name, value in values.items():
            if SENSITIVE_NAME.search(name) and not SECRET_REFERENCE.match(str(value)):
                raise ValueError(
                    f"{name!r} looks like a credential, and secrets may not be written in clear "
                    "text: use '${env:VARIABLE}' or '${secret:key.in.secrets_toml}'"
                )
        return values

    @field_validator("base_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not re.match(r"^https?://", value):
            raise ValueError(f"base_url {value!r} must start with http:// or https://")
        return check_url_credentials(value).rstrip("/")

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        return check_url_credentials(value)


class CsvOptions(Strict):
    delimiter: str = ","
    header: bool = True
    null_values: list[str] = Field(default_factory=lambda: ["", "NA", "NULL", "null"])


class FilesSource(Strict):
    """CSV, JSON lines or Parquet files in a local folder or an S3 bucket.

    Every row gets a `_source_file` column: the file's path relative to `url`.
    """

    # storage_options keys that must be secret references.
    SECRET_OPTIONS: ClassVar[tuple[str, ...]] = (
        "key",
        "secret",
        "token",
        "password",
        "aws_secret_access_key",
    )

    type: Literal["files"]
    url: str = Field(
        description="Local folder (relative to the project root), file:// or s3://bucket/prefix."
    )
    glob: str = Field(
        default="**/*",
        description="Files to read under url, with ** for any depth and {a,b} for alternatives.",
    )
    format: Literal["csv", "jsonl", "parquet"] | None = Field(
        default=None, description="File format; by default taken from each file's extension."
    )
    csv: CsvOptions = Field(default_factory=CsvOptions)
    incremental_by_modified: bool = Field(
        default=True, description="Skip files not modified since the last committed load."
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options; secret values must be references."
    )

    @field_validator("url")
    @classmethod
    def _check_scheme(cls, value: str) -> str:
        scheme, separator, _ = value.partition("://")
        if separator and scheme not in ("file", "s3"):
            raise ValueError(
                f"url {value!r} has the unsupported scheme {scheme!r}: use a local folder, "
                "file:// or s3://"
            )
        return check_url_credentials(value) if separator else value

    @field_validator("storage_options")
    @classmethod
    def _check_storage_secrets(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in cls.SECRET_OPTIONS:
            if key in value:
                check_secret_reference(str(value[key]))
        return value


PG_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")


def check_reference_or_plain(value: str | int | None) -> str | int | None:
    """Accept a plain value or a `${env:NAME}` / `${secret:key}` reference, nothing in between."""
    if isinstance(value, str) and "${" in value:
        check_secret_reference(value)
    return value


def check_table_name(value: str) -> str:
    """Accept `table` or `schema.table`; each part is used exactly as written (quoted)."""
    parts = value.split(".")
    if len(parts) > 2 or not all(PG_IDENTIFIER.match(part) for part in parts):
        raise ValueError(
            f"invalid table name {value!r}: use 'table' or 'schema.table' with letters, digits "
            "and underscores"
        )
    return value


class PostgresConnection(Strict):
    """Connection settings of a PostgreSQL database: a URL reference, or one field per setting.

    Plain values are allowed for host, port, user and database; the password and
    the URL (which contains the password) must be references.
    """

    url: SecretRef | None = Field(
        default=None,
        description="Reference to postgresql://user:password@host:port/database?sslmode=...",
    )
    host: str | None = None
    port: int | str = 5432
    user: str | None = None
    password: SecretRef | None = None
    database: str | None = None

    _check_url = field_validator("url", "password")(check_secret_reference)
    _check_plain = field_validator("host", "port", "user", "database")(check_reference_or_plain)

    @model_validator(mode="after")
    def _check_fields(self) -> PostgresConnection:
        fields = {"host": self.host, "user": self.user, "database": self.database}
        if self.url is not None:
            also_set = [name for name, value in fields.items() if value is not None]
            if also_set or self.password is not None:
                raise ValueError(
                    "give either url or host/port/user/password/database, not both "
                    f"(also set: {', '.join(also_set or ['password'])})"
                )
            return self
        missing = [name for name, value in fields.items() if value is None]
        if missing:
            raise ValueError(
                "a connection needs url, or host, user and database (missing: "
                f"{', '.join(missing)})"
            )
        return self


class DbSource(PostgresConnection):
    """A PostgreSQL table or view, read in Arrow batches over binary COPY.

    With load.incremental, the predicate `cursor >= start` runs in the database,
    so only rows at or past the committed watermark (minus the lookback) are read.
    `where` is trusted SQL: it is sent to the database as written, so it must
    come from the pipeline's author, never from data.
    """

    type: Literal["db"]
    table: str = Field(description="'table' (in schema public) or 'schema.table'.")
    columns: list[str] = Field(
        default_factory=list, description="Columns to read; all columns when empty."
    )
    where: str | None = Field(
        default=None, description="A single SQL boolean expression that filters the rows."
    )

    _check_table = field_validator("table")(check_table_name)

    @field_validator("columns")
    @classmethod
    def _check_columns(cls, value: list[str]) -> list[str]:
        invalid = [name for name in value if not PG_IDENTIFIER.match(name)]
        if invalid:
            raise ValueError(f"invalid column names: {', '.join(map(repr, invalid))}")
        if len(set(value)) != len(value):
            raise ValueError("columns lists a column more than once")
        return value

    @field_validator("where")
    @classmethod
    def _check_where(cls, value: str | None) -> str | None:
        if value is None:
            return value
        from mocra_elt.extract.db import check_filter_expression

        check_filter_expression(value)
        return value


# Kafka topic names: letters, digits, '.', '_' and '-', at most 249 characters.
KAFKA_TOPIC = r"^[A-Za-z0-9._-]{1,249}$"
# Client properties whose names contain one of these contain secrets, so their values must be
# references: sasl.password, ssl.key.password, sasl.jaas.config, ssl.key.pem, ...
KAFKA_SECRET_MARKERS = ("password", "secret", "jaas", "key.pem")


class KafkaConnection(Strict):
    """The connection of a Kafka client: bootstrap servers and librdkafka properties."""

    # librdkafka properties that mocra-elt sets itself; subclasses add their own.
    RESERVED_PROPERTIES: ClassVar[tuple[str, ...]] = ("bootstrap.servers",)

    bootstrap_servers: str = Field(
        description="host:port[,host:port...], plain or a ${env:NAME} reference."
    )
    properties: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="librdkafka client properties, such as security.protocol or sasl.mechanism; "
        "secret values must be references.",
    )

    _check_servers = field_validator("bootstrap_servers")(check_reference_or_plain)

    @field_validator("properties")
    @classmethod
    def _check_properties(
        cls, value: dict[str, str | int | float | bool]
    ) -> dict[str, str | int | float | bool]:
        reserved = sorted(name for name in value if name in cls.RESERVED_PROPERTIES)
        if reserved:
            raise ValueError(
                f"{', '.join(reserved)} cannot be set in properties, because mocra-elt sets it"
            )
        for name, option in value.items():
            if any(marker in name for marker in KAFKA_SECRET_MARKERS):
                check_secret_reference(str(option))
            elif isinstance(option, str):
                check_reference_or_plain(option)
        return value


class AvroOptions(Strict):
    schema_file: str = Field(description="Avro schema (.avsc), relative to the project root.")
    framing: Literal["none", "confluent"] = Field(
        default="none",
        description="none: plain Avro binary; confluent: a magic byte 0 and a 4-byte schema id "
        "come first, as Confluent's serializers write.",
    )


class KafkaSource(KafkaConnection):
    """One topic, all partitions, read from the stored offsets up to the end offsets at start.

    Offsets are stored in the warehouse with each load (see mocra_elt.extract.kafka).
    """

    RESERVED_PROPERTIES: ClassVar[tuple[str, ...]] = (
        "bootstrap.servers",
        "group.id",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "auto.offset.reset",
        "enable.partition.eof",
    )

    type: Literal["kafka"]
    topic: str = Field(pattern=KAFKA_TOPIC)
    group_id: str | None = Field(
        default=None,
        description="Consumer group that receives the offsets after each load, for lag "
        "monitoring; default: mocra-elt.<pipeline>.",
    )
    commit_to_group: bool = Field(
        default=True, description="Commit the loaded offsets to group_id after each load."
    )
    format: Literal["json", "avro"] = Field(default="json", description="Message value format.")
    avro: AvroOptions | None = None
    key_format: Literal["text", "base64"] = Field(
        default="text", description="Encoding of the message key in _kafka_key: text or base64."
    )
    start_offset: Literal["earliest", "latest"] = Field(
        default="earliest", description="Where a partition with no stored offset starts."
    )
    offset_reset: Literal["fail", "earliest", "latest"] = Field(
        default="fail",
        description="What to do when a stored offset is outside the partition (deleted by "
        "retention, or the topic was recreated): fail the run, or restart there.",
    )
    max_records: int = Field(default=50_000, ge=1, description="Messages per Arrow batch.")
    max_seconds: float = Field(
        default=5.0, gt=0, description="Seconds a batch collects messages before it is passed on."
    )
    max_records_per_run: int | None = Field(
        default=None, ge=1, description="Stop a run after this many messages; the rest waits."
    )
    timeout: float = Field(
        default=60.0,
        gt=0,
        description="Seconds without a message or an end of partition before the run fails.",
    )

    @model_validator(mode="after")
    def _check_format(self) -> KafkaSource:
        if self.format == "avro" and self.avro is None:
            raise ValueError("format 'avro' needs avro.schema_file")
        if self.format != "avro" and self.avro is not None:
            raise ValueError("avro options apply only to format 'avro'")
        return self


Source = Annotated[HttpSource | FilesSource | DbSource | KafkaSource, Field(discriminator="type")]


# --- load, transform, quality, sinks ----------------------------------------------------------


class Incremental(Strict):
    cursor: str = Field(description="Record field whose maximum becomes the watermark.")
    initial_value: str | int | None = Field(
        default=None, description="Watermark used before the first committed load."
    )
    lookback: str | int | None = Field(
        default=None, description="Reload this much before the watermark, e.g. '2h' or 100."
    )

    @field_validator("lookback")
    @classmethod
    def _check_lookback(cls, value: str | int | None) -> str | int | None:
        if value is not None:
            parse_duration(value)
        return value


class Load(Strict):
    dataset: str | None = Field(default=None, pattern=NAME_PATTERN)
    table: str = Field(pattern=NAME_PATTERN)
    write_disposition: Literal["append", "replace", "merge"] = "append"
    primary_key: list[str] = Field(default_factory=list)
    incremental: Incremental | None = None
    columns: dict[str, Literal["text", "bigint", "double", "bool", "timestamp", "date"]] = Field(
        default_factory=dict, description="Column types to cast to before loading."
    )

    @field_validator("primary_key", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_merge(self) -> Load:
        if self.write_disposition == "merge" and not self.primary_key:
            raise ValueError("write_disposition 'merge' needs a primary_key")
        if self.incremental and self.incremental.lookback is not None:
            if self.write_disposition != "merge":
                raise ValueError(
                    "incremental.lookback reloads rows already loaded, so it needs "
                    "write_disposition 'merge' to avoid duplicates"
                )
        return self


class Transform(Strict):
    select: list[str] = Field(description="dbt selection the pipeline builds, e.g. '+marts'.")
    exclude: list[str] = Field(default_factory=list)
    full_refresh: bool = False

    @field_validator("select", "exclude", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class QualitySuite(Strict):
    """A suite entry with a policy for this pipeline: `{name: NAME, policy: warn}`."""

    name: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
    policy: Literal["block", "warn", "quarantine"] | None = None


class Quality(Strict):
    """Quality gates run after transform and before publish.

    A rule's policy is its own, else this pipeline's policy for its suite, else
    the suite file's, else `policy` here.
    """

    suites: list[QualitySuite] = Field(
        min_length=1, description="Suite names (file stems in expectations/), or {name, policy}."
    )
    policy: Literal["block", "warn", "quarantine"] = Field(
        default="block", description="Policy of suites that set none."
    )
    memory_budget_mb: int = Field(
        default=512, ge=16, description="Memory for one batch of rows checked in pandas, in MiB."
    )
    batch_rows: int | None = Field(
        default=None, ge=1, description="Rows per checked batch; overrides memory_budget_mb."
    )

    @field_validator("suites", mode="before")
    @classmethod
    def _name_entries(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list):
            return [{"name": entry} if isinstance(entry, str) else entry for entry in value]
        return value

    @field_validator("suites")
    @classmethod
    def _check_unique(cls, value: list[QualitySuite]) -> list[QualitySuite]:
        names = [entry.name for entry in value]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"suite {', '.join(repeated)} is listed more than once")
        return value

    @property
    def suite_names(self) -> list[str]:
        return [entry.name for entry in self.suites]

    def policy_for(self, suite: str) -> Literal["block", "warn", "quarantine"] | None:
        """Return the policy this pipeline sets for one suite, if any."""
        return next((entry.policy for entry in self.suites if entry.name == suite), None)


Tag = Annotated[str, Field(pattern=NAME_PATTERN)]


class Sink(Strict):
    model_config = ConfigDict(extra="allow", frozen=True)

    type: str = Field(description="Sink kind, such as postgres or object_storage.")
    model: str = Field(description="dbt model or raw table to publish.")
    tags: list[Tag] = Field(
        default_factory=list, description="Labels that `mocra-elt run --exclude-tag` skips."
    )

    @field_validator("tags", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class Backoff(Strict):
    initial: float = Field(default=1.0, ge=0, description="Seconds before the first retry.")
    maximum: float = Field(default=60.0, ge=0, description="Upper bound of one delay in seconds.")
    multiplier: float = Field(default=2.0, ge=1)
    jitter: bool = True


class StageRetry(Strict):
    attempts: int = Field(default=1, ge=1, le=100)
    backoff: Backoff = Field(default_factory=Backoff)


class RetryPolicy(Strict):
    default: StageRetry = Field(default_factory=StageRetry)
    extract: StageRetry | None = None
    load: StageRetry | None = None
    transform: StageRetry | None = None
    quality: StageRetry | None = None
    publish: StageRetry | None = None

    def for_stage(self, stage: str) -> StageRetry:
        specific = getattr(self, stage, None)
        return specific if isinstance(specific, StageRetry) else self.default


class Pipeline(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    source: Source
    load: Load
    transform: Transform | None = None
    quality: Quality | None = None
    sinks: list[Sink] = Field(default_factory=list)
    schedule: str | None = Field(default=None, description="Cron expression, five fields.")
    retry_policy: RetryPolicy = Field(default_factory=RetryPolicy)
    depends_on: list[str] = Field(default_factory=list)
    tags: list[Tag] = Field(
        default_factory=list,
        description="Labels that `mocra-elt run --tag` selects and `--exclude-tag` skips.",
    )

    @field_validator("schedule")
    @classmethod
    def _check_cron(cls, value: str | None) -> str | None:
        if value is None:
            return value
        from croniter import croniter

        if not croniter.is_valid(value):
            raise ValueError(f"schedule {value!r} is not a valid cron expression")
        return value

    @field_validator("depends_on", "tags", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @property
    def dataset(self) -> str:
        return self.load.dataset or f"raw_{self.name}"

    def without_sinks_tagged(self, tags: Iterable[str]) -> Pipeline:
        """Return this pipeline without the sinks that carry one of `tags`."""
        excluded = set(tags)
        remaining = [sink for sink in self.sinks if excluded.isdisjoint(sink.tags)]
        if len(remaining) == len(self.sinks):
            return self
        return self.model_copy(update={"sinks": remaining})
