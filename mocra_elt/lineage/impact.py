"""Everything downstream of one column: derived columns, the sinks that publish them, exposures."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from mocra_elt.lineage.graph import ColumnLineage, LineageGraph, Node


@dataclass(frozen=True)
class ImpactedColumn:
    node: str
    column: str
    derived_from: str
    transformation: str
    distance: int


@dataclass
class Impact:
    """The columns derived from `node.column`, and what reads them without column lineage.

    `exposures` read an affected model as a whole. `untraced` lists columns downstream of an
    affected node whose own lineage is unresolved, so they may depend on the column too.
    """

    node: str
    column: str
    columns: list[ImpactedColumn] = field(default_factory=list)
    sinks: list[str] = field(default_factory=list)
    exposures: list[str] = field(default_factory=list)
    untraced: list[tuple[str, str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "column": f"{self.node}.{self.column}",
            "columns": [column.__dict__ for column in self.columns],
            "sinks": self.sinks,
            "exposures": self.exposures,
            "untraced": [
                {"node": node, "column": column, "reason": reason}
                for node, column, reason in self.untraced
            ],
        }


def column_impact(graph: LineageGraph, node_id: str, column: str) -> Impact:
    children = graph.column_children()
    impact = Impact(node_id, column)
    transformations = {
        (child_node, child_column, f"{parent_node}.{parent_column}"): transformation
        for (parent_node, parent_column), entries in children.items()
        for child_node, child_column, transformation in entries
    }
    for child_node, child_column, via, distance in graph.column_impact(node_id, column):
        transformation = transformations.get((child_node, child_column, via), "IDENTITY")
        impact.columns.append(
            ImpactedColumn(child_node, child_column, via, transformation, distance)
        )

    affected = {node_id} | {item.node for item in impact.columns}
    impact.sinks = sorted(n for n in affected if graph.nodes[n].kind == "sink")
    impact.exposures = sorted(
        child
        for node in affected
        for child in graph.children(node)
        if graph.nodes[child].kind == "exposure"
    )
    impact.untraced = _untraced(graph, affected)
    return impact


def _untraced(graph: LineageGraph, affected: set[str]) -> list[tuple[str, str, str]]:
    found = []
    downstream = {child for node in affected for child in graph.downstream_of(node)}
    for node_id in sorted(downstream):
        node = graph.nodes[node_id]
        for lineage in node.column_lineage.values():
            if lineage.status == "unresolved":
                found.append((node_id, lineage.column, lineage.reason or "unresolved"))
    return found


def impact_graph(graph: LineageGraph, impact: Impact) -> LineageGraph:
    """Return the part of `graph` that the impact covers, with only the impacted columns."""
    wanted: dict[str, set[str]] = {impact.node: {impact.column}}
    for item in impact.columns:
        wanted.setdefault(item.node, set()).add(item.column)
    keep = set(wanted) | set(impact.exposures)
    result = LineageGraph(dialect=graph.dialect)
    for node_id in keep:
        result.nodes[node_id] = _trimmed(graph.nodes[node_id], wanted.get(node_id, set()), wanted)
    result.edges = [e for e in graph.edges if e.upstream in keep and e.downstream in keep]
    return result


def _trimmed(node: Node, columns: set[str], wanted: dict[str, set[str]]) -> Node:
    lineage: dict[str, ColumnLineage] = {}
    for name in columns:
        entry = node.column_lineage.get(name)
        if entry is None:
            continue
        upstream = [u for u in entry.upstream if u.column in wanted.get(u.node, set())]
        lineage[name] = replace(entry, upstream=upstream, rows_of=[])
    return replace(
        node,
        columns=[name for name in node.columns if name in columns],
        column_lineage=lineage,
    )
