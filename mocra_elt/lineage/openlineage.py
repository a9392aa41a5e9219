"""OpenLineage run events (START, COMPLETE, FAIL) for pipeline runs, sent with openlineage-python.

Settings come from the environment:

- `MOCRA_OPENLINEAGE_URL`: send each event to this HTTP endpoint (an OpenLineage API such as
  Marquez), at the path `MOCRA_OPENLINEAGE_ENDPOINT` (default `api/v1/lineage`), with
  `MOCRA_OPENLINEAGE_API_KEY` as a bearer token when set;
- `MOCRA_OPENLINEAGE_FILE`: append each event as one JSON line to this file. When neither
  variable is set, events go to `<data_dir>/openlineage/events.jsonl`;
- `MOCRA_OPENLINEAGE_NAMESPACE`: the job namespace (default `mocra-elt`); the job name is
  the pipeline name;
- `MOCRA_OPENLINEAGE_TIMEOUT`: seconds per HTTP request (default 5);
- `MOCRA_OPENLINEAGE_DISABLED=true`: send nothing.

A failed send is logged as a warning and never fails the run. The OpenLineage run id is a
UUIDv7 derived from the mocra run id, so the events of one run share it.
"""

from __future__ import annotations

import logging
import os
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mocra_elt import __version__
from mocra_elt.config.model import DbSource, FilesSource, HttpSource, Pipeline, Sink
from mocra_elt.config.project import Project
from mocra_elt.lineage import naming
from mocra_elt.load.warehouse import Warehouse

log = logging.getLogger(__name__)

EVENT_TYPES = ("START", "COMPLETE", "FAIL", "ABORT")
PRODUCER = f"urn:mocra-elt:{__version__}"
DEFAULT_NAMESPACE = "mocra-elt"
DEFAULT_ENDPOINT = "api/v1/lineage"
# The HTTP transport retries a failed POST this many times, so a down endpoint delays the
# run by at most about (retries + 1) x timeout.
HTTP_RETRIES = 2


@dataclass(frozen=True)
class EmitSettings:
    namespace: str
    file: Path | None
    url: str | None
    endpoint: str
    api_key: str | None
    timeout: float


def emit_settings(project: Project) -> EmitSettings | None:
    """Read the MOCRA_OPENLINEAGE_* variables; None when sending is disabled."""
    from mocra_elt.errors import ConfigError

    if os.environ.get("MOCRA_OPENLINEAGE_DISABLED", "").strip().lower() in ("1", "true", "yes"):
        return None
    url = os.environ.get("MOCRA_OPENLINEAGE_URL") or None
    file_setting = os.environ.get("MOCRA_OPENLINEAGE_FILE") or None
    file = Path(file_setting) if file_setting else None
    if url is None and file is None:
        file = project.data_dir / "openlineage" / "events.jsonl"
    timeout_text = os.environ.get("MOCRA_OPENLINEAGE_TIMEOUT", "5")
    try:
        timeout = float(timeout_text)
    except ValueError:
        raise ConfigError(
            f"MOCRA_OPENLINEAGE_TIMEOUT must be a number of seconds, not {timeout_text!r}."
        ) from None
    return EmitSettings(
        namespace=os.environ.get("MOCRA_OPENLINEAGE_NAMESPACE") or DEFAULT_NAMESPACE,
        file=file,
        url=url,
        endpoint=os.environ.get("MOCRA_OPENLINEAGE_ENDPOINT") or DEFAULT_ENDPOINT,
        api_key=os.environ.get("MOCRA_OPENLINEAGE_API_KEY") or None,
        timeout=timeout,
    )


def emit_run_event(
    project: Project,
    pipeline: Pipeline,
    run_id: str,
    event_type: str,
    error: BaseException | str | None = None,
    *,
    warehouse: Warehouse | None = None,
) -> dict[str, Any] | None:
    """Send one run event and return it as a JSON document; None when sending is disabled.

    Never raises for lineage problems: an invalid setting, an unreadable warehouse or a failed
    send is logged as a warning, so the caller's run goes on.

    START lists the source system as input and the raw table as output. COMPLETE and FAIL
    list what `record_run_lineage` stored for the run, with the schema and column lineage
    facets on the outputs, and FAIL carries `error` in the errorMessage facet.
    """
    from openlineage.client.serde import Serde

    from mocra_elt.errors import ConfigError

    if event_type not in EVENT_TYPES:
        raise ValueError(f"event_type {event_type!r} is not one of {', '.join(EVENT_TYPES)}")
    try:
        settings = emit_settings(project)
    except ConfigError as invalid:
        log.warning("OpenLineage events are off for run %s: %s", run_id, invalid)
        return None
    if settings is None:
        return None
    rows = [] if event_type == "START" else _stored_rows(project, warehouse, run_id)
    try:
        event = build_run_event(
            project, pipeline, run_id, event_type, rows, settings.namespace, error
        )
    except Exception as failure:  # noqa: BLE001 - a lineage problem never fails the run
        log.warning(
            "cannot build the OpenLineage %s event of run %s: %s", event_type, run_id, failure
        )
        return None
    for transport in _transports(settings):
        try:
            transport.emit(event)
        except Exception as failure:  # noqa: BLE001 - lineage delivery never fails a run
            log.warning(
                "cannot send the OpenLineage %s event of run %s (pipeline %s) to %s: %s",
                event_type,
                run_id,
                pipeline.name,
                transport.kind,
                failure,
            )
    document: dict[str, Any] = Serde.to_dict(event)
    return document


def _stored_rows(
    project: Project, warehouse: Warehouse | None, run_id: str
) -> list[dict[str, Any]]:
    from mocra_elt.lineage.runs import read_run_lineage
    from mocra_elt.load.warehouse import open_warehouse

    try:
        return read_run_lineage(warehouse or open_warehouse(project), run_id)
    except Exception as error:  # noqa: BLE001 - any driver error leaves the planned datasets
        log.warning("cannot read the stored lineage of run %s: %s", run_id, error)
        return []


def _transports(settings: EmitSettings) -> list[Any]:
    from openlineage.client.transport.file import FileConfig, FileTransport
    from openlineage.client.transport.http import (
        ApiKeyTokenProvider,
        HttpConfig,
        HttpTransport,
        TokenProvider,
    )

    transports: list[Any] = []
    if settings.file is not None:
        settings.file.parent.mkdir(parents=True, exist_ok=True)
        transports.append(FileTransport(FileConfig(log_file_path=str(settings.file), append=True)))
    if settings.url is not None:
        auth = (
            ApiKeyTokenProvider({"api_key": settings.api_key})
            if settings.api_key
            else TokenProvider({})
        )
        config = HttpConfig(
            url=settings.url,
            endpoint=settings.endpoint,
            timeout=settings.timeout,
            auth=auth,
            retry={
                "total": HTTP_RETRIES,
                "backoff_factor": 0.5,
                "status_forcelist": [500, 502, 503, 504],
                "allowed_methods": ["POST"],
            },
        )
        transports.append(HttpTransport(config))
    return transports


# --- the event -------------------------------------------------------------------------------


def openlineage_run_id(run_id: str) -> str:
    """Return a UUIDv7 for a mocra run id: its time part is the run's start time when known."""
    from openlineage.client.uuid import generate_static_uuid

    try:
        started = datetime.strptime(run_id[:18], "%Y%m%dT%H%M%S%f").replace(tzinfo=UTC)
    except ValueError:
        started = datetime(1970, 1, 1, tzinfo=UTC)
    return str(generate_static_uuid(started, run_id.encode("utf-8")))


def build_run_event(
    project: Project,
    pipeline: Pipeline,
    run_id: str,
    event_type: str,
    rows: list[dict[str, Any]],
    namespace: str,
    error: BaseException | str | None = None,
) -> Any:
    from openlineage.client.event_v2 import Job, Run, RunEvent, RunState
    from openlineage.client.facet_v2 import (
        documentation_job,
        error_message_run,
        job_type_job,
        processing_engine_run,
    )

    run_facets: dict[str, Any] = {
        "processing_engine": processing_engine_run.ProcessingEngineRunFacet(
            version=__version__, name="mocra-elt", producer=PRODUCER
        )
    }
    if event_type == "FAIL" and error is not None:
        run_facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
            message=str(error),
            programmingLanguage="python",
            stackTrace=_stack_trace(error),
            producer=PRODUCER,
        )
    job_facets: dict[str, Any] = {
        "jobType": job_type_job.JobTypeJobFacet(
            processingType="BATCH", integration="MOCRA_ELT", jobType="PIPELINE", producer=PRODUCER
        )
    }
    if pipeline.description:
        job_facets["documentation"] = documentation_job.DocumentationJobFacet(
            description=pipeline.description, producer=PRODUCER
        )
    inputs, outputs = datasets(project, pipeline, rows)
    return RunEvent(
        eventType=RunState[event_type],
        eventTime=datetime.now(UTC).isoformat(),
        run=Run(runId=openlineage_run_id(run_id), facets=run_facets),
        job=Job(namespace=namespace, name=pipeline.name, facets=job_facets),
        inputs=inputs,
        outputs=outputs,
        producer=PRODUCER,
    )


def _stack_trace(error: BaseException | str) -> str | None:
    if isinstance(error, BaseException) and error.__traceback__ is not None:
        return "".join(traceback.format_exception(error))
    return None


def datasets(
    project: Project, pipeline: Pipeline, rows: list[dict[str, Any]]
) -> tuple[list[Any], list[Any]]:
    """Turn stored run lineage rows into OpenLineage input and output datasets."""
    from openlineage.client.event_v2 import InputDataset, OutputDataset

    names = DatasetNames(project, pipeline)
    nodes = [row for row in rows if row["kind"] == "node"]
    if not nodes:
        system = names.of(naming.source_system_id(pipeline), "source_system", None)
        raw = names.of(naming.raw_table_id(pipeline), "raw_table", naming.raw_table_id(pipeline))
        return (
            [InputDataset(namespace=system[0], name=system[1])],
            [OutputDataset(namespace=raw[0], name=raw[1])],
        )

    schemas = _schemas(rows)
    lineage = _column_sources(rows, names)
    inputs, outputs = [], []
    for row in nodes:
        if row["role"] == "ephemeral":
            continue
        namespace, name = names.of(row["node_id"], row["node_kind"], row["relation"])
        facets = _dataset_facets(schemas.get(row["node_id"]), namespace)
        if row["role"] == "input":
            inputs.append(InputDataset(namespace=namespace, name=name, facets=facets))
            continue
        column_facet = _column_lineage_facet(lineage.get(row["node_id"], {}))
        if column_facet is not None:
            facets["columnLineage"] = column_facet
        outputs.append(OutputDataset(namespace=namespace, name=name, facets=facets))
    return inputs, outputs


def _schemas(rows: list[dict[str, Any]]) -> dict[str, list[tuple[str, str | None]]]:
    found: dict[str, list[tuple[str, str | None]]] = {}
    for row in rows:
        if row["kind"] == "schema":
            found.setdefault(row["node_id"], []).append((row["column_name"], row["data_type"]))
    return found


def _dataset_facets(columns: list[tuple[str, str | None]] | None, namespace: str) -> dict[str, Any]:
    from openlineage.client.facet_v2 import datasource_dataset, schema_dataset

    facets: dict[str, Any] = {
        "dataSource": datasource_dataset.DatasourceDatasetFacet(
            name=namespace, uri=namespace, producer=PRODUCER
        )
    }
    if columns:
        facets["schema"] = schema_dataset.SchemaDatasetFacet(
            fields=[
                schema_dataset.SchemaDatasetFacetFields(name=name, type=data_type)
                for name, data_type in columns
            ],
            producer=PRODUCER,
        )
    return facets


ColumnSources = dict[str, dict[str, dict[tuple[str, str, str], str]]]


def _column_sources(rows: list[dict[str, Any]], names: DatasetNames) -> ColumnSources:
    """Map node -> column -> {(namespace, name, field): subtype}, going through ephemeral models.

    An ephemeral model is no dataset, so a column read from one is traced on to the columns
    the ephemeral model reads, keeping the stronger of the two transformations.
    """
    direct: dict[tuple[str, str], list[tuple[str, str, str]]] = {}
    kinds = {
        row["node_id"]: (row["node_kind"], row["relation"], row["role"])
        for row in rows
        if row["kind"] == "node"
    }
    for row in rows:
        if row["kind"] == "column" and row["upstream_node_id"] and row["upstream_column"]:
            direct.setdefault((row["node_id"], row["column_name"]), []).append(
                (
                    row["upstream_node_id"],
                    row["upstream_column"],
                    row["transformation"] or "IDENTITY",
                )
            )

    def resolve(
        node: str, column: str, seen: frozenset[tuple[str, str]]
    ) -> list[tuple[str, str, str]]:
        found = []
        for upstream, upstream_column, subtype in direct.get((node, column), []):
            if (
                kinds.get(upstream, (None, None, None))[2] == "ephemeral"
                and (upstream, upstream_column) not in seen
            ):
                for origin in resolve(
                    upstream, upstream_column, seen | {(upstream, upstream_column)}
                ):
                    found.append((origin[0], origin[1], _stronger(origin[2], subtype)))
            else:
                found.append((upstream, upstream_column, subtype))
        return found

    result: ColumnSources = {}
    for node, column in direct:
        if kinds.get(node, (None, None, None))[2] != "output":
            continue
        for upstream, upstream_column, subtype in resolve(node, column, frozenset()):
            kind, relation, _ = kinds.get(upstream, (None, None, None))
            namespace, name = names.of(upstream, kind, relation)
            fields = result.setdefault(node, {}).setdefault(column, {})
            key = (namespace, name, upstream_column)
            fields[key] = _stronger(fields.get(key, "IDENTITY"), subtype)
    return result


def _stronger(first: str, second: str) -> str:
    from mocra_elt.lineage.graph import TRANSFORMATIONS

    rank = {name: position for position, name in enumerate(TRANSFORMATIONS)}
    return first if rank.get(first, 1) >= rank.get(second, 1) else second


def _column_lineage_facet(columns: dict[str, dict[tuple[str, str, str], str]]) -> Any:
    # NOTE: only DIRECT transformations are sent. Columns read by joins, filters and GROUP BY
    # (INDIRECT) and the rows a count(*) counts are not in the facet's `dataset` list.
    from openlineage.client.facet_v2 import column_lineage_dataset as facet

    if not columns:
        return None
    fields = {
        column: facet.Fields(
            inputFields=[
                facet.InputField(
                    namespace=namespace,
                    name=name,
                    field=field_name,
                    transformations=[facet.Transformation(type="DIRECT", subtype=subtype)],
                )
                for (namespace, name, field_name), subtype in sorted(sources.items())
            ]
        )
        for column, sources in sorted(columns.items())
    }
    return facet.ColumnLineageDatasetFacet(fields=fields, producer=PRODUCER)


# --- dataset names -----------------------------------------------------------------------------


class DatasetNames:
    """OpenLineage (namespace, name) of nodes, after the OpenLineage dataset naming rules.

    Warehouse relations are `duckdb://<file>` with `<catalog>.<schema>.<table>`, or
    `postgres://<host>:<port>` with `<database>.<schema>.<table>`.
    """

    def __init__(self, project: Project, pipeline: Pipeline) -> None:
        self.project = project
        self.pipeline = pipeline

    def of(self, node_id: str, kind: str | None, relation: str | None) -> tuple[str, str]:
        if node_id == naming.source_system_id(self.pipeline):
            return self._source(self.pipeline)
        for sink in self.pipeline.sinks:
            if naming.sink_id(sink) == node_id:
                return self._sink(sink)
        if relation:
            return self._warehouse(relation)
        return DEFAULT_NAMESPACE, node_id

    def _warehouse(self, relation: str) -> tuple[str, str]:
        if self.project.target == "pg":
            from mocra_elt.load.postgres import info_from_env

            info = info_from_env()
            return f"postgres://{info.host}:{info.port}", f"{info.database}.{relation}"
        path = self.project.warehouse_path
        return f"duckdb://{path}", f"{path.stem}.{relation}"

    def _source(self, pipeline: Pipeline) -> tuple[str, str]:
        source = pipeline.source
        if isinstance(source, HttpSource):
            parts = urlsplit(naming.strip_url(source.base_url + source.path))
            return f"{parts.scheme}://{parts.netloc}", parts.path or "/"
        if isinstance(source, FilesSource):
            return _location(source.url, source.glob, self.project.root)
        if isinstance(source, DbSource):
            return _postgres(source, pipeline.name, "source", naming.qualified_table(source.table))
        return DEFAULT_NAMESPACE, naming.source_system_id(pipeline)  # pragma: no cover

    def _sink(self, sink: Sink) -> tuple[str, str]:
        extra = sink.model_extra or {}
        target = naming.sink_target(sink)
        if sink.type == "postgres":
            return _postgres(_connection_fields(extra), self.pipeline.name, "sinks", target)
        if sink.type == "object_storage":
            return _location(str(extra.get("url", target)), None, self.project.root)
        if sink.type == "kafka":
            servers = str(extra.get("bootstrap_servers") or extra.get("brokers") or "unknown")
            return f"kafka://{servers.split(',')[0]}", target
        return sink.type, target


def _location(url: str, glob: str | None, root: Path) -> tuple[str, str]:
    suffix = f"/{glob}" if glob else ""
    if url.startswith("s3://"):
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        return f"s3://{bucket}", (prefix.rstrip("/") + suffix).lstrip("/") or "/"
    path = Path(url.removeprefix("file://"))
    if not path.is_absolute():
        path = root / path
    return "file", f"{path.resolve()}{suffix}"


def _connection_fields(extra: dict[str, Any]) -> Any:
    from mocra_elt.config.model import PostgresConnection

    fields = {
        key: extra.get(key)
        for key in ("url", "host", "port", "user", "password", "database")
        if extra.get(key) is not None
    }
    try:
        return PostgresConnection.model_validate(fields)
    except ValueError:
        return None


def _postgres(connection: Any, pipeline: str, field_prefix: str, table: str) -> tuple[str, str]:
    """Name a PostgreSQL table; references are resolved for host, port and database only."""
    from mocra_elt.errors import MocraError
    from mocra_elt.load.postgres import resolve_connection

    if connection is None:
        return "postgres://unknown", table
    try:
        info = resolve_connection(connection, pipeline=pipeline, field_prefix=field_prefix)
    except MocraError:
        return "postgres://unknown", table
    return f"postgres://{info.host}:{info.port}", f"{info.database}.{table}"
