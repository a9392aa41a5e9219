"""Build the lineage graph of a project: pipelines, the dbt manifest and the sinks, joined.

The graph runs source system -> raw table (a pipeline's extract and load) -> dbt sources,
seeds, models and snapshots (the manifest's dependencies) -> exposures and sinks (the
pipelines' `sinks`). Column lineage is computed per model or snapshot from its compiled SQL,
in dependency order, so each model's output columns are the schema its children are read with.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mocra_elt.config.model import Pipeline, Sink
from mocra_elt.config.project import Project
from mocra_elt.lineage import naming
from mocra_elt.lineage.columns import RelationIndex, query_lineage
from mocra_elt.lineage.graph import ColumnLineage, LineageGraph, Node, Upstream
from mocra_elt.lineage.manifest import DbtNode, Manifest, load_manifest
from mocra_elt.lineage.schemas import (
    KnownColumns,
    RelationKey,
    documented_columns,
    read_warehouse_columns,
    relation_key,
    seed_file_columns,
    warehouse_for_reading,
)
from mocra_elt.lineage.snapshots import snapshot_columns

log = logging.getLogger(__name__)

# Columns dlt adds to every raw table; a sink without `columns` leaves them out.
DLT_COLUMNS = ("_dlt_load_id", "_dlt_id")
DIALECTS = {"duckdb": "duckdb", "postgres": "postgres", "pg": "postgres"}


def build_lineage(
    project: Project,
    *,
    columns: bool = True,
    refresh: bool = False,
    connection: Any = None,
    focus: Iterable[str] | None = None,
    pipelines: dict[str, Pipeline] | None = None,
    manifest: Manifest | None = None,
) -> LineageGraph:
    """Build the graph of the whole project.

    `columns=False` skips column lineage (and so needs no compiled SQL). `focus` limits column
    lineage to these dbt unique_ids; other models take their columns from the warehouse.
    `connection` is an open warehouse connection to read columns from; by default the
    project's warehouse is opened read-only, when it exists.
    """
    from mocra_elt.config.loader import load_pipelines

    if pipelines is None:
        pipelines = load_pipelines(project.sources_dir)
    focus_ids = set(focus) if focus is not None else None
    if manifest is None:
        compiled: bool | set[str] = columns
        if columns and focus_ids is not None:
            compiled = focus_ids
        manifest = load_manifest(project, compiled=compiled, refresh=refresh)

    builder = GraphBuilder(manifest, pipelines)
    builder.add_pipelines()
    builder.add_dbt_nodes()
    builder.add_sinks()
    if not columns:
        return builder.graph
    if connection is not None:
        builder.read_warehouse(connection)
    else:
        with warehouse_for_reading(project) as reader:
            if reader is not None:
                builder.read_warehouse(reader)
    builder.add_columns(focus_ids)
    return builder.graph


@dataclass
class GraphBuilder:
    manifest: Manifest
    pipelines: dict[str, Pipeline]
    graph: LineageGraph = field(init=False)
    index: RelationIndex = field(default_factory=RelationIndex)
    ids: dict[str, str] = field(default_factory=dict)
    warehouse: dict[RelationKey, KnownColumns] = field(default_factory=dict)
    known: dict[str, KnownColumns] = field(default_factory=dict)

    def __post_init__(self) -> None:
        dialect = DIALECTS.get(self.manifest.adapter_type, self.manifest.adapter_type)
        self.graph = LineageGraph(dialect=dialect)
        databases = Counter(
            node.database.lower() for node in self.manifest.nodes.values() if node.database
        )
        self.index.default_catalog = databases.most_common(1)[0][0] if databases else None

    # --- table lineage ------------------------------------------------------------------

    def add_pipelines(self) -> None:
        for name, pipeline in sorted(self.pipelines.items()):
            system = self.graph.add_node(
                Node(
                    id=naming.source_system_id(pipeline),
                    kind="source_system",
                    name=naming.source_system_id(pipeline),
                    pipelines=[name],
                    details=naming.source_system_details(pipeline),
                )
            )
            raw_id = naming.raw_table_id(pipeline)
            self.graph.add_node(
                Node(
                    id=raw_id,
                    kind="raw_table",
                    name=raw_id,
                    relation=raw_id,
                    pipelines=[name],
                    details={"write_disposition": pipeline.load.write_disposition},
                )
            )
            self.index.add(raw_id, None, pipeline.dataset, pipeline.load.table)
            self.graph.add_edge(system.id, raw_id, "extract", name)

    def add_dbt_nodes(self) -> None:
        self._assign_ids()
        for unique_id, node_id in self.ids.items():
            self.graph.add_node(self._node_for(self.manifest.nodes[unique_id], node_id))
        for unique_id, node_id in self.ids.items():
            dbt_node = self.manifest.nodes[unique_id]
            for parent in dbt_node.depends_on:
                if parent in self.ids:
                    self.graph.add_edge(self.ids[parent], node_id, self._via(parent, dbt_node))

    def _via(self, parent: str, child: DbtNode) -> str:
        if child.resource_type == "exposure":
            return "exposure"
        return "source" if self.manifest.nodes[parent].resource_type == "source" else "ref"

    def _assign_ids(self) -> None:
        names = Counter(
            (node.resource_type, node.name.lower())
            for node in self.manifest.nodes.values()
            if node.resource_type != "source"
        )
        for node in self.manifest.nodes.values():
            if node.resource_type == "source":
                self.ids[node.unique_id] = self._relation_id(
                    node.database, node.schema or "", node.identifier or node.name
                )
            elif names[(node.resource_type, node.name.lower())] > 1:
                self.ids[node.unique_id] = f"{node.resource_type}.{node.package}.{node.name}"
            else:
                self.ids[node.unique_id] = f"{node.resource_type}.{node.name}"

    def _relation_id(self, database: str | None, schema: str, table: str) -> str:
        if (
            database
            and self.index.default_catalog
            and database.lower() != self.index.default_catalog
        ):
            return f"{database}.{schema}.{table}"
        return f"{schema}.{table}"

    def _node_for(self, dbt_node: DbtNode, node_id: str) -> Node:
        relation = None
        parts = dbt_node.relation_parts
        if parts is not None:
            relation = f"{parts[0]}.{parts[1]}"
            self.index.add(node_id, dbt_node.database, *parts)
        if dbt_node.is_ephemeral:
            self.index.add_ephemeral(node_id, dbt_node.name)
            self.index.add_ephemeral(node_id, dbt_node.identifier or dbt_node.name)
        kind = "source" if dbt_node.resource_type == "source" else dbt_node.resource_type
        details: dict[str, Any] = {"path": dbt_node.original_file_path}
        if dbt_node.materialized:
            details["materialized"] = dbt_node.materialized
        if dbt_node.description:
            details["description"] = dbt_node.description
        if dbt_node.resource_type == "exposure":
            details.update({k: v for k, v in dbt_node.config.items() if v})
        return Node(
            id=node_id,
            kind=kind,
            name=dbt_node.name,
            relation=relation,
            unique_id=dbt_node.unique_id,
            details=details,
        )

    def add_sinks(self) -> None:
        for name, pipeline in sorted(self.pipelines.items()):
            for sink in pipeline.sinks:
                sink_node = self.graph.add_node(
                    Node(
                        id=naming.sink_id(sink),
                        kind="sink",
                        name=naming.sink_id(sink),
                        pipelines=[name],
                        details={**naming.sink_details(sink), "model": sink.model},
                    )
                )
                model_id = self._published_node(sink)
                if model_id is None:
                    sink_node.gaps.append(
                        f"publishes {sink.model!r}, which is neither a dbt model nor a known "
                        "warehouse table"
                    )
                    continue
                self.graph.add_edge(model_id, sink_node.id, "publish", name)

    def _published_node(self, sink: Sink) -> str | None:
        if "." in sink.model:
            for node in self.graph.nodes.values():
                if (node.relation or "").lower() == sink.model.lower():
                    return node.id
            return None
        for kind in ("model", "snapshot", "seed"):
            candidates = [
                node.id
                for node in self.graph.nodes.values()
                if node.kind == kind and node.name.lower() == sink.model.lower()
            ]
            if candidates:
                return candidates[0]
        return None

    # --- columns ------------------------------------------------------------------------

    def read_warehouse(self, connection: Any) -> None:
        schemas = {
            node.relation.split(".")[-2] for node in self.graph.nodes.values() if node.relation
        }
        try:
            self.warehouse = read_warehouse_columns(connection, schemas)
        except Exception as error:  # noqa: BLE001 - any driver error leaves the docs to use
            log.warning("cannot read columns from the warehouse: %s", error)

    def add_columns(self, focus: set[str] | None) -> None:
        for node_id in self.graph.topological_order():
            node = self.graph.nodes[node_id]
            if node.kind in ("model", "snapshot"):
                self._model_columns(node, focus)
            elif node.kind in ("raw_table", "source", "seed"):
                self._set_known(node, self._stored_columns(node))
        for node in list(self.graph.nodes.values()):
            if node.kind == "sink":
                self._sink_columns(node)

    def known_columns(self, node_id: str) -> KnownColumns | None:
        """Return the columns of a node, reading undeclared relations from the warehouse."""
        if node_id in self.known:
            return self.known[node_id]
        node = self.graph.nodes.get(node_id)
        if node is None:
            schema, _, table = node_id.rpartition(".")
            return self.warehouse.get(relation_key(schema.rpartition(".")[2], table))
        return None

    def _stored_columns(self, node: Node) -> KnownColumns | None:
        """Return a relation's columns: the warehouse first, then seed files, then the docs."""
        if node.relation is not None:
            schema, table = node.relation.rsplit(".", 1)
            found = self.warehouse.get(relation_key(schema.rpartition(".")[2], table))
            if found is not None:
                return found
        dbt_node = self.manifest.nodes.get(node.unique_id or "")
        if dbt_node is None:
            return None
        if dbt_node.resource_type == "seed":
            from_file = seed_file_columns(dbt_node)
            if from_file is not None:
                return from_file
        return documented_columns(dbt_node)

    def _set_known(self, node: Node, known: KnownColumns | None) -> None:
        if known is None:
            node.gaps.append(
                "its columns are unknown: it is not in the warehouse and has no documented columns"
            )
            return
        self.known[node.id] = known
        node.columns = list(known.names)
        node.column_types = dict(known.types)
        node.columns_from = known.origin

    def _model_columns(self, node: Node, focus: set[str] | None) -> None:
        dbt_node = self.manifest.nodes[node.unique_id or ""]
        stored = None if dbt_node.is_ephemeral else self._stored_columns(node)
        if focus is not None and dbt_node.unique_id not in focus and stored is not None:
            self._set_known(node, stored)
            return
        if not dbt_node.compiled_code:
            self._set_known(node, stored)
            node.gaps.append(
                "no compiled SQL in the manifest: run 'dbt compile' for column lineage"
            )
            self._mark_unresolved(node, "no compiled SQL in the manifest")
            return

        result = query_lineage(
            dbt_node.compiled_code,
            dialect=self.graph.dialect,
            index=self.index,
            known=self.known_columns,
        )
        self._note_reads(node, dbt_node, result.reads, result.undeclared)
        if result.error is not None:
            self._set_known(node, stored)
            node.gaps.append(f"sqlglot could not analyse the compiled SQL: {result.error}")
            self._mark_unresolved(node, f"the compiled SQL could not be analysed ({result.error})")
            return
        lineage = dict(result.lineage)
        output = result.columns
        if dbt_node.resource_type == "snapshot" and output is not None:
            output, lineage = snapshot_columns(dbt_node, output, lineage)
        if output is None:
            self._set_known(node, stored)
            reason = lineage["*"].reason or "the query's columns are unknown"
            node.gaps.append(reason)
            self._mark_unresolved(node, reason)
            return
        types = stored.types if stored is not None else {}
        self._set_known(node, KnownColumns(output, "compiled SQL", types))
        node.column_lineage = {name: lineage[name] for name in output}
        self._compare_with_warehouse(node, stored)

    def _mark_unresolved(self, node: Node, reason: str) -> None:
        node.column_lineage = {
            name: ColumnLineage(name, "unresolved", reason=reason) for name in node.columns
        }

    def _compare_with_warehouse(self, node: Node, stored: KnownColumns | None) -> None:
        if stored is None or stored.origin != "warehouse":
            return
        derived = {name.lower() for name in node.columns}
        built = {name.lower() for name in stored.names}
        if derived != built:
            node.gaps.append(
                "the warehouse relation's columns differ from the compiled SQL's "
                f"(only in SQL: {sorted(derived - built)}, only in the warehouse: "
                f"{sorted(built - derived)}); rebuild the model with dbt"
            )

    def _note_reads(
        self, node: Node, dbt_node: DbtNode, reads: list[str], undeclared: list[str]
    ) -> None:
        parents = {self.ids[parent] for parent in dbt_node.depends_on if parent in self.ids}
        for relation_id in reads:
            if relation_id in parents or relation_id == node.id:
                continue
            if relation_id not in self.graph.nodes:
                found = self.known_columns(relation_id)
                self.graph.add_node(
                    Node(id=relation_id, kind="relation", name=relation_id, relation=relation_id)
                )
                self._set_known(self.graph.nodes[relation_id], found)
            where = (
                ""
                if relation_id not in undeclared
                else (", which is not a dbt source, seed, model or snapshot")
            )
            node.gaps.append(
                f"reads {relation_id}{where} without ref() or source(), so dbt does not order "
                "or track it; declare it as a source"
            )
            self.graph.add_edge(relation_id, node.id, "sql")

    def _sink_columns(self, node: Node) -> None:
        parents = self.graph.parents(node.id)
        if not parents:
            return
        model = self.graph.nodes[parents[0]]
        listed = [str(column) for column in node.details.get("columns", [])]
        wanted = listed or [name for name in model.columns if name not in DLT_COLUMNS]
        available = {name.lower(): name for name in model.columns}
        node.columns = []
        for column in wanted:
            source_column = available.get(column.lower())
            if source_column is None:
                node.gaps.append(f"publishes column {column!r}, which {model.id} does not have")
                continue
            node.columns.append(source_column)
            node.column_lineage[source_column] = ColumnLineage(
                source_column, "resolved", [Upstream(model.id, source_column)]
            )
        node.column_types = {k: v for k, v in model.column_types.items() if k in node.columns}
        node.columns_from = model.id
