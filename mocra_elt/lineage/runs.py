"""The lineage a run used, stored per run in `mocra_audit.run_lineage`.

After the transform stage the runner calls `record_run_lineage`. It stores the pipeline's
part of the graph: its source system, its raw table, the dbt nodes its `dbt build` built
(and the ephemeral models they inline), their direct parents, and its sinks. Each row has a
`kind`:

- `node`: one node, with `role` input (read by the run) or output (written by the run);
  ephemeral models, which hold no rows, have the role `ephemeral`;
- `edge`: a table dependency from `upstream_node_id` to `node_id`, and `transformation`
  names what creates it (extract, ref, source, publish, sql);
- `schema`: one column of a node, with its `position` (from 1) and its type when known;
- `column`: one upstream column of an output column (`upstream_column` is null for a
  `count(*)` of the upstream node's rows, and `upstream_node_id` too when the column has no
  upstream), with the transformation and the lineage status.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mocra_elt.audit.store import SCHEMA, utcnow
from mocra_elt.config.model import Pipeline
from mocra_elt.config.project import Project
from mocra_elt.errors import ConfigError
from mocra_elt.lineage import naming
from mocra_elt.lineage.graph import LineageGraph, Node
from mocra_elt.load.warehouse import Warehouse

log = logging.getLogger(__name__)

TABLE = f"{SCHEMA}.run_lineage"
COLUMNS = (
    "run_id",
    "pipeline",
    "kind",
    "node_id",
    "node_kind",
    "role",
    "relation",
    "column_name",
    "position",
    "data_type",
    "upstream_node_id",
    "upstream_column",
    "transformation",
    "status",
    "reason",
    "recorded_at",
)
DDL = (
    f"create schema if not exists {SCHEMA}",
    f"""create table if not exists {TABLE} (
        run_id varchar not null,
        pipeline varchar not null,
        kind varchar not null,
        node_id varchar not null,
        node_kind varchar,
        role varchar,
        relation varchar,
        column_name varchar,
        position integer,
        data_type varchar,
        upstream_node_id varchar,
        upstream_column varchar,
        transformation varchar,
        status varchar,
        reason varchar,
        recorded_at timestamp not null
    )""",
)
DBT_RELATION_TYPES = ("model", "seed", "snapshot")
INSERT_BATCH = 200


@dataclass
class RunLineage:
    """The rows of one run, grouped; `to_dict()` is what `record_run_lineage` returns."""

    run_id: str
    pipeline: str
    roles: dict[str, str] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    built: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        columns = [row for row in self.rows if row["kind"] == "column"]
        unresolved = sorted(
            {
                f"{row['node_id']}.{row['column_name']}: {row['reason']}"
                for row in columns
                if row["status"] == "unresolved"
            }
        )
        return {
            "run_id": self.run_id,
            "pipeline": self.pipeline,
            "built": self.built,
            "inputs": sorted(n for n, role in self.roles.items() if role == "input"),
            "outputs": sorted(n for n, role in self.roles.items() if role == "output"),
            "edges": sum(1 for row in self.rows if row["kind"] == "edge"),
            "column_rows": len(columns),
            "unresolved": unresolved,
        }


def ensure_table(connection: Any) -> None:
    for statement in DDL:
        connection.execute(statement)


def record_run_lineage(
    project: Project, warehouse: Warehouse, run_id: str, pipeline: Pipeline
) -> dict[str, Any]:
    """Store the lineage of the nodes this run built, replacing rows the run stored before.

    Call it after the transform stage; for a pipeline without transform it stores the
    source system, the raw table and the sinks. Raises MocraError subclasses when dbt cannot
    compile the project or the warehouse cannot be written.
    """
    from mocra_elt.lineage.build import build_lineage
    from mocra_elt.lineage.manifest import load_manifest

    pipelines = _pipelines(project, pipeline)
    built = built_nodes(project, pipeline, run_id) if pipeline.transform else []
    manifest = load_manifest(project, compiled=False)
    focus = set(built) | _ephemeral_ancestors(manifest, built)
    if focus:
        manifest = load_manifest(project, compiled=focus)

    with warehouse.connect() as connection:
        graph = build_lineage(
            project, connection=connection, focus=focus, pipelines=pipelines, manifest=manifest
        )
    lineage = run_lineage_rows(graph, pipeline, run_id, focus)
    lineage.built = sorted(built)

    with warehouse.connect() as connection:
        ensure_table(connection)
        _replace_rows(connection, run_id, lineage.rows)
    summary = lineage.to_dict()
    log.info(
        "recorded lineage of run %s (pipeline %s): %d inputs, %d outputs, %d column rows",
        run_id,
        pipeline.name,
        len(summary["inputs"]),
        len(summary["outputs"]),
        summary["column_rows"],
    )
    return summary


def _pipelines(project: Project, pipeline: Pipeline) -> dict[str, Pipeline]:
    from mocra_elt.config.loader import load_pipelines

    try:
        pipelines = load_pipelines(project.sources_dir)
    except ConfigError as error:
        log.warning("lineage uses pipeline %s alone: %s", pipeline.name, error)
        pipelines = {}
    pipelines[pipeline.name] = pipeline
    return pipelines


def built_nodes(project: Project, pipeline: Pipeline, run_id: str) -> list[str]:
    """Return the unique_ids of the models, seeds and snapshots the run's `dbt build` built.

    dbt's run_results.json lists them when its vars carry this run_id; otherwise the
    pipeline's selection is listed again with `dbt ls`.
    """
    results_path = project.data_dir / "dbt_target" / "run_results.json"
    from_results = _built_from_results(results_path, run_id)
    if from_results is not None:
        return from_results
    log.info("run_results.json is not from run %s; listing the selection with dbt ls", run_id)
    return _selected_nodes(project, pipeline)


def _built_from_results(path: Path, run_id: str) -> list[str] | None:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    variables = (document.get("args") or {}).get("vars") or {}
    if isinstance(variables, str):
        try:
            variables = json.loads(variables)
        except ValueError:
            return None
    if not isinstance(variables, dict) or variables.get("mocra_run_id") != run_id:
        return None
    return sorted(
        result["unique_id"]
        for result in document.get("results") or []
        if result.get("unique_id", "").split(".")[0] in DBT_RELATION_TYPES
        and result.get("status") == "success"
    )


def _selected_nodes(project: Project, pipeline: Pipeline) -> list[str]:
    """List the pipeline's selection with `dbt ls`, leaving out ephemeral models."""
    from mocra_elt.transform.dbt import dbt_args, invoke

    assert pipeline.transform is not None
    arguments = ["--select", *pipeline.transform.select, "--output", "json"]
    # The listing is read from the result; "--log-level none" keeps dbt from printing it.
    arguments += ["--resource-types", *DBT_RELATION_TYPES, "--log-level", "none"]
    if pipeline.transform.exclude:
        arguments += ["--exclude", *pipeline.transform.exclude]
    outcome = invoke(project, dbt_args(project, "ls", *arguments))
    found = []
    for line in outcome.result or []:
        try:
            document = json.loads(line)
        except (TypeError, ValueError):
            continue
        if (document.get("config") or {}).get("materialized") != "ephemeral":
            found.append(document["unique_id"])
    return sorted(found)


def _ephemeral_ancestors(manifest: Any, built: list[str]) -> set[str]:
    found: set[str] = set()
    stack = list(built)
    while stack:
        node = manifest.nodes.get(stack.pop())
        for parent_id in node.depends_on if node else []:
            parent = manifest.nodes.get(parent_id)
            if parent is not None and parent.is_ephemeral and parent_id not in found:
                found.add(parent_id)
                stack.append(parent_id)
    return found


# --- the rows --------------------------------------------------------------------------------


def run_lineage_rows(
    graph: LineageGraph, pipeline: Pipeline, run_id: str, focus: set[str]
) -> RunLineage:
    """Select the run's part of the graph and turn it into run_lineage rows."""
    lineage = RunLineage(run_id, pipeline.name)
    system = naming.source_system_id(pipeline)
    raw_table = naming.raw_table_id(pipeline)
    lineage.roles[system] = "input"
    lineage.roles[raw_table] = "output"
    written = [node.id for node in graph.nodes.values() if node.unique_id in focus]
    for node_id in written:
        ephemeral = graph.nodes[node_id].details.get("materialized") == "ephemeral"
        lineage.roles[node_id] = "ephemeral" if ephemeral else "output"
    for sink in pipeline.sinks:
        lineage.roles[naming.sink_id(sink)] = "output"
    for node_id in list(lineage.roles):
        if lineage.roles[node_id] != "input":
            for parent in graph.parents(node_id):
                lineage.roles.setdefault(parent, "input")

    now = utcnow()
    for node_id, role in lineage.roles.items():
        lineage.rows += _node_rows(graph, node_id, role, lineage, now)
    return lineage


def _node_rows(
    graph: LineageGraph, node_id: str, role: str, lineage: RunLineage, now: Any
) -> list[dict[str, Any]]:
    node = graph.nodes.get(node_id)
    base = {
        "run_id": lineage.run_id,
        "pipeline": lineage.pipeline,
        "node_id": node_id,
        "node_kind": node.kind if node else None,
        "role": role,
        "relation": node.relation if node else None,
        "recorded_at": now,
    }
    rows = [_row(base, kind="node", reason="; ".join(node.gaps) if node and node.gaps else None)]
    if node is None:
        return rows
    for edge in graph.edges:
        if edge.downstream == node_id and edge.upstream in lineage.roles and role != "input":
            rows.append(
                _row(base, kind="edge", upstream_node_id=edge.upstream, transformation=edge.via)
            )
    for position, name in enumerate(node.columns, start=1):
        rows.append(
            _row(
                base,
                kind="schema",
                column_name=name,
                position=position,
                data_type=node.column_types.get(name),
            )
        )
    if role != "input":
        rows += _column_rows(graph, node_id, base)
    return rows


def _column_rows(graph: LineageGraph, node_id: str, base: dict[str, Any]) -> list[dict[str, Any]]:
    node = graph.nodes[node_id]
    rows = []
    if node.kind in ("raw_table", "seed"):
        return _loaded_column_rows(graph, node, base)
    for lineage in node.column_lineage.values():
        common = {
            "kind": "column",
            "column_name": lineage.column,
            "status": lineage.status,
            "reason": lineage.reason,
        }
        for upstream in lineage.upstream:
            rows.append(
                _row(
                    base,
                    **common,
                    upstream_node_id=upstream.node,
                    upstream_column=upstream.column,
                    transformation=upstream.transformation,
                )
            )
        for counted in lineage.rows_of:
            rows.append(_row(base, **common, upstream_node_id=counted, transformation="ROWS"))
        if not lineage.upstream and not lineage.rows_of:
            rows.append(_row(base, **common))
    return rows


def _loaded_column_rows(
    graph: LineageGraph, node: Node, base: dict[str, Any]
) -> list[dict[str, Any]]:
    """Rows for the columns of a raw table (from its source system) or a seed (from its file)."""
    system = next(
        (p for p in graph.parents(node.id) if graph.nodes[p].kind == "source_system"), None
    )
    reason = (
        "loaded by the pipeline from its source"
        if node.kind == "raw_table"
        else "loaded by dbt seed from the seed's CSV file"
    )
    return [
        _row(
            base,
            kind="column",
            column_name=name,
            upstream_node_id=system,
            status="loaded",
            reason=reason,
        )
        for name in node.columns
    ]


def _row(base: dict[str, Any], **values: Any) -> dict[str, Any]:
    row = dict.fromkeys(COLUMNS)
    row.update(base)
    row.update(values)
    return row


def _replace_rows(connection: Any, run_id: str, rows: list[dict[str, Any]]) -> None:
    """Delete the run's rows and insert the new ones in one transaction, 200 rows a statement."""
    placeholders = "(" + ", ".join("?" for _ in COLUMNS) + ")"
    connection.execute("begin")
    try:
        connection.execute(f"delete from {TABLE} where run_id = ?", [run_id])
        for start in range(0, len(rows), INSERT_BATCH):
            batch = rows[start : start + INSERT_BATCH]
            connection.execute(
                f"insert into {TABLE} ({', '.join(COLUMNS)}) values "
                + ", ".join(placeholders for _ in batch),
                [row[column] for row in batch for column in COLUMNS],
            )
        connection.execute("commit")
    except BaseException:
        connection.execute("rollback")
        raise


def read_run_lineage(warehouse: Warehouse, run_id: str) -> list[dict[str, Any]]:
    """Return the stored rows of one run, or [] when none were recorded."""
    with warehouse.connect() as connection:
        if not _table_exists(connection):
            return []
        cursor = connection.execute(
            f"select {', '.join(COLUMNS)} from {TABLE} where run_id = ? "
            "order by kind, node_id, position, column_name, upstream_node_id, upstream_column",
            [run_id],
        )
        return [dict(zip(COLUMNS, row, strict=True)) for row in cursor.fetchall()]


def _table_exists(connection: Any) -> bool:
    row = connection.execute(
        "select count(*) from information_schema.tables "
        "where table_schema = ? and table_name = 'run_lineage'",
        [SCHEMA],
    ).fetchone()
    return bool(row and row[0])


def find_run_lineage(warehouse: Warehouse, run_id: str) -> list[dict[str, Any]]:
    """Return the stored rows of the run whose id is or starts with `run_id`.

    Raises ConfigError when no run, or more than one, matches.
    """
    with warehouse.connect() as connection:
        if not _table_exists(connection):
            matches: list[str] = []
        else:
            found = connection.execute(
                f"select distinct run_id from {TABLE} where substr(run_id, 1, ?) = ? "
                "order by run_id",
                [len(run_id), run_id],
            ).fetchall()
            matches = [row[0] for row in found]
    if run_id in matches:
        matches = [run_id]
    if not matches:
        raise ConfigError(
            f"no stored lineage for run {run_id!r}. Lineage is recorded after the transform "
            "stage; list runs with 'mocra-elt runs list'.",
            error_code="CONFIG_NOT_FOUND",
        )
    if len(matches) > 1:
        raise ConfigError(f"run id {run_id!r} matches {len(matches)} runs: {', '.join(matches)}.")
    return read_run_lineage(warehouse, matches[0])
