"""Node ids of the systems outside the warehouse: pipeline sources and sinks.

Ids never contain secrets: URLs lose their user info and query string, and connection
fields that are `${env:...}` references stay references.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from mocra_elt.config.model import DbSource, FilesSource, HttpSource, Pipeline, Sink

# Sink fields that name where a sink writes, tried in this order for sink types without
# their own rule below.
SINK_TARGET_FIELDS = ("table", "url", "topic", "path", "name")


def strip_url(url: str) -> str:
    """Drop user info, query and fragment from a URL: `https://u:p@h/x?k=v` -> `https://h/x`."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def source_system_id(pipeline: Pipeline) -> str:
    source = pipeline.source
    if isinstance(source, HttpSource):
        return f"http:{strip_url(source.base_url + source.path)}"
    if isinstance(source, FilesSource):
        location = strip_url(source.url) if "://" in source.url else source.url
        return f"files:{location.rstrip('/')}/{source.glob}"
    if isinstance(source, DbSource):
        location = _postgres_location(source.url, source.host, source.port, source.database)
        return f"db:{location}/{qualified_table(source.table)}"
    return f"{source.type}:{pipeline.name}"  # pragma: no cover - every source type is above


def source_system_details(pipeline: Pipeline) -> dict[str, Any]:
    source = pipeline.source
    details: dict[str, Any] = {"type": source.type}
    if isinstance(source, HttpSource):
        details["url"] = strip_url(source.base_url + source.path)
    elif isinstance(source, FilesSource):
        details["url"] = source.url
        details["glob"] = source.glob
    elif isinstance(source, DbSource):
        details["table"] = qualified_table(source.table)
        details["host"] = source.host
        details["database"] = source.database
    return details


def raw_table_id(pipeline: Pipeline) -> str:
    return f"{pipeline.dataset}.{pipeline.load.table}"


def sink_target(sink: Sink) -> str:
    """Return where a sink writes: `schema.table`, a URL or a topic."""
    extra = sink.model_extra or {}
    if sink.type == "postgres":
        name = str(extra.get("table") or sink.model.rpartition(".")[2])
        return qualified_table(name)
    for key in SINK_TARGET_FIELDS:
        value = extra.get(key)
        if isinstance(value, str) and value:
            return strip_url(value) if "://" in value else value
    return sink.model


def sink_id(sink: Sink) -> str:
    extra = sink.model_extra or {}
    target = sink_target(sink)
    database = extra.get("database")
    if sink.type == "postgres" and isinstance(database, str) and "${" not in database:
        target = f"{database}.{target}"
    return f"{sink.type}:{target}"


def sink_details(sink: Sink) -> dict[str, Any]:
    extra = sink.model_extra or {}
    details: dict[str, Any] = {"type": sink.type, "target": sink_target(sink)}
    for key in ("host", "port", "database", "topic", "format", "key"):
        value = extra.get(key)
        if value is not None:
            details[key] = value
    if isinstance(extra.get("url"), str):
        details["url"] = strip_url(extra["url"]) if "://" in extra["url"] else extra["url"]
    if sink_columns(sink):
        details["columns"] = sink_columns(sink)
    return details


def sink_columns(sink: Sink) -> list[str]:
    """Return the columns a sink names in `columns`, or an empty list for every column."""
    columns = (sink.model_extra or {}).get("columns") or []
    return [str(column) for column in columns]


def qualified_table(table: str) -> str:
    """Return `schema.table`, with the schema public when `table` has none."""
    return table if "." in table else f"public.{table}"


def _postgres_location(url: str | None, host: str | None, port: Any, database: str | None) -> str:
    if url is not None:
        return url
    return f"{host}:{port}/{database}"
