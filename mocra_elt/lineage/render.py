"""Render a lineage graph as text, JSON, Mermaid or Graphviz DOT."""

from __future__ import annotations

import html
import json
from collections.abc import Iterator
from typing import Any

from mocra_elt.lineage.graph import ColumnLineage, LineageGraph, Node
from mocra_elt.lineage.impact import Impact

FORMATS = ("text", "json", "mermaid", "dot")
# Mermaid node shapes: [( )] cylinder for warehouse tables, [/ /] for external systems,
# {{ }} hexagon for sinks, ([ ]) stadium for exposures.
MERMAID_SHAPES = {
    "source_system": ('[/"', '"/]'),
    "sink": ('{{"', '"}}'),
    "exposure": ('(["', '"])'),
}
DOT_SHAPES = {"source_system": "parallelogram", "sink": "hexagon", "exposure": "ellipse"}


def render(
    graph: LineageGraph,
    output_format: str,
    *,
    focus: str | None = None,
    upstream: bool = True,
    downstream: bool = True,
    columns: bool = False,
) -> str:
    if output_format == "json":
        document = {"focus": focus, **graph.to_dict(with_columns=columns)}
        return json.dumps(document, indent=2, default=str)
    if output_format == "mermaid":
        return mermaid(graph, columns)
    if output_format == "dot":
        return dot(graph, columns)
    if focus is None:
        return text_overview(graph, columns)
    return text_focus(graph, focus, upstream, downstream, columns)


# --- text ------------------------------------------------------------------------------------


def text_overview(graph: LineageGraph, columns: bool) -> str:
    lines = [_summary(graph), ""]
    for node_id in graph.topological_order():
        node = graph.nodes[node_id]
        lines.append(f"{node_id}  [{_describe(node)}]")
        for edge in graph.edges:
            if edge.upstream == node_id:
                lines.append(f"  -> {edge.downstream} ({edge.via})")
        lines += [f"  ! {gap}" for gap in node.gaps]
        if columns:
            lines += ["    " + line for line in _column_lines(node)]
    return "\n".join(lines)


def text_focus(
    graph: LineageGraph, node_id: str, upstream: bool, downstream: bool, columns: bool
) -> str:
    node = graph.nodes[node_id]
    lines = [f"{node_id}  [{_describe(node)}]"]
    lines += [f"  ! {gap}" for gap in node.gaps]
    if upstream:
        lines += ["", "upstream", *_tree(node_id, graph.parents, set())]
    if downstream:
        lines += ["", "downstream", *_tree(node_id, graph.children, set())]
    if columns and upstream:
        lines += ["", "columns, upstream"]
        for name in node.columns:
            lines += _column_tree_up(graph, node_id, name)
    if columns and downstream:
        lines += ["", "columns, downstream"]
        children = graph.column_children()
        for name in node.columns:
            lines.append(name)
            lines += _column_tree_down(children, (node_id, name), "", set())
    return "\n".join(lines)


def _summary(graph: LineageGraph) -> str:
    statuses: dict[str, int] = {}
    for node in graph.nodes.values():
        for lineage in node.column_lineage.values():
            statuses[lineage.status] = statuses.get(lineage.status, 0) + 1
    counted = ", ".join(f"{count} {status}" for status, count in sorted(statuses.items()))
    summary = f"{len(graph.nodes)} nodes, {len(graph.edges)} edges"
    return summary + (f"; columns: {counted}" if counted else "")


def _describe(node: Node) -> str:
    parts = [node.kind.replace("_", " ")]
    if node.relation and node.relation != node.id:
        parts.append(node.relation)
    if node.details.get("materialized") not in (None, node.kind):
        parts.append(str(node.details["materialized"]))
    if node.pipelines:
        parts.append("pipeline " + ", ".join(node.pipelines))
    if node.columns_from:
        parts.append(f"{len(node.columns)} columns from {node.columns_from}")
    return "; ".join(parts)


def _tree(start: str, step: Any, seen: set[str], prefix: str = "") -> list[str]:
    lines = []
    neighbours = sorted(step(start))
    for position, neighbour in enumerate(neighbours):
        last = position == len(neighbours) - 1
        branch, indent = ("└── ", "    ") if last else ("├── ", "│   ")
        repeated = neighbour in seen
        lines.append(prefix + branch + neighbour + (" (see above)" if repeated else ""))
        if not repeated:
            seen.add(neighbour)
            lines += _tree(neighbour, step, seen, prefix + indent)
    return lines


def _column_lines(node: Node) -> list[str]:
    width = max((len(name) for name in node.column_lineage), default=0)
    return [
        f"{name.ljust(width)}  {_origin_text(lineage)}"
        for name, lineage in node.column_lineage.items()
    ]


def _origin_text(lineage: ColumnLineage) -> str:
    parts = [f"<- {item} ({item.transformation.lower()})" for item in lineage.upstream]
    if lineage.rows_of:
        parts.append("counts rows of " + ", ".join(lineage.rows_of))
    text = "; ".join(parts)
    if lineage.status in ("constant", "generated", "unresolved"):
        label = f"{lineage.status}: {lineage.reason}" if lineage.reason else lineage.status
        text = f"{text}; {label}" if text else label
    return text


def _column_tree_up(graph: LineageGraph, node_id: str, column: str) -> list[str]:
    lineage = graph.nodes[node_id].column_lineage.get(column)
    if lineage is None:
        return [column]
    header = column
    extras = [part for part in (_rows_text(lineage), _status_text(lineage)) if part]
    if extras:
        header += "  " + "; ".join(extras)
    return [header, *_column_branches(graph, lineage, "", set())]


def _column_branches(
    graph: LineageGraph, lineage: ColumnLineage, prefix: str, seen: set[tuple[str, str]]
) -> list[str]:
    lines = []
    for position, item in enumerate(lineage.upstream):
        last = position == len(lineage.upstream) - 1
        branch, indent = ("└── ", "    ") if last else ("├── ", "│   ")
        parent = graph.nodes.get(item.node)
        parent_lineage = parent.column_lineage.get(item.column) if parent else None
        notes = [item.transformation.lower()]
        if parent_lineage is not None:
            notes += [
                text for text in (_rows_text(parent_lineage), _status_text(parent_lineage)) if text
            ]
        lines.append(f"{prefix}{branch}{item}  ({'; '.join(notes)})")
        key = (item.node, item.column)
        if parent_lineage is not None and key not in seen:
            seen.add(key)
            lines += _column_branches(graph, parent_lineage, prefix + indent, seen)
    return lines


def _rows_text(lineage: ColumnLineage) -> str:
    return "counts rows of " + ", ".join(lineage.rows_of) if lineage.rows_of else ""


def _status_text(lineage: ColumnLineage) -> str:
    if lineage.status == "resolved":
        return ""
    return f"{lineage.status}: {lineage.reason}" if lineage.reason else lineage.status


def _column_tree_down(
    children: dict[tuple[str, str], list[tuple[str, str, str]]],
    key: tuple[str, str],
    prefix: str,
    seen: set[tuple[str, str]],
) -> list[str]:
    lines = []
    entries = sorted(children.get(key, []))
    for position, (node_id, column, transformation) in enumerate(entries):
        last = position == len(entries) - 1
        branch, indent = ("└── ", "    ") if last else ("├── ", "│   ")
        lines.append(f"{prefix}{branch}{node_id}.{column}  ({transformation.lower()})")
        if (node_id, column) not in seen:
            seen.add((node_id, column))
            lines += _column_tree_down(children, (node_id, column), prefix + indent, seen)
    return lines


def text_impact(graph: LineageGraph, impact: Impact) -> str:
    lines = [f"impact of {impact.node}.{impact.column}"]
    if not impact.columns:
        lines.append("  no column is derived from it")
    by_node: dict[str, list[str]] = {}
    for item in impact.columns:
        by_node.setdefault(item.node, []).append(
            f"{item.column}  <- {item.derived_from} ({item.transformation.lower()})"
        )
    for node_id in graph.topological_order():
        if node_id in by_node:
            lines += ["", f"{node_id}  [{graph.nodes[node_id].kind.replace('_', ' ')}]"]
            lines += [f"  {entry}" for entry in by_node[node_id]]
    if impact.sinks:
        lines += ["", "sinks", *[f"  {sink}" for sink in impact.sinks]]
    if impact.exposures:
        lines += ["", "exposures (they read affected models as a whole)"]
        lines += [f"  {exposure}" for exposure in impact.exposures]
    if impact.untraced:
        lines += ["", "not traced: downstream columns whose lineage is unresolved"]
        lines += [f"  {node}.{column}: {reason}" for node, column, reason in impact.untraced]
    return "\n".join(lines)


def text_run(rows: list[dict[str, Any]], columns: bool) -> str:
    """Render the stored lineage rows of one run (see `mocra_elt.lineage.runs`)."""
    first = rows[0]
    lines = [f"run {first['run_id']} (pipeline {first['pipeline']})"]
    nodes = [row for row in rows if row["kind"] == "node"]
    for role in ("input", "output", "ephemeral"):
        members = sorted(row["node_id"] for row in nodes if row["role"] == role)
        if members:
            lines += ["", f"{role}s", *[f"  {member}" for member in members]]
    edges = [row for row in rows if row["kind"] == "edge"]
    lines += ["", "edges"]
    lines += [f"  {e['upstream_node_id']} -> {e['node_id']} ({e['transformation']})" for e in edges]
    if columns:
        lines += ["", "columns"]
        lines += [f"  {_run_column_text(row)}" for row in rows if row["kind"] == "column"]
    return "\n".join(lines)


def _run_column_text(row: dict[str, Any]) -> str:
    target = f"{row['node_id']}.{row['column_name']}"
    if row["upstream_column"]:
        source = f"{row['upstream_node_id']}.{row['upstream_column']}"
        return f"{target} <- {source} ({str(row['transformation']).lower()})"
    if row["transformation"] == "ROWS":
        return f"{target} counts rows of {row['upstream_node_id']}"
    origin = f" from {row['upstream_node_id']}" if row["upstream_node_id"] else ""
    reason = f": {row['reason']}" if row["reason"] else ""
    return f"{target} {row['status']}{origin}{reason}"


# --- Mermaid ---------------------------------------------------------------------------------


def mermaid(graph: LineageGraph, columns: bool) -> str:
    ids = {node_id: f"n{number}" for number, node_id in enumerate(graph.topological_order())}
    lines = ["flowchart LR"]
    with_columns = {n for n in ids if columns and graph.nodes[n].columns}
    for node_id, short in ids.items():
        node = graph.nodes[node_id]
        if node_id in with_columns:
            lines.append(f'  subgraph {short}["{_mermaid_text(node_id)}"]')
            for index, name in enumerate(node.columns):
                lines.append(f'    {short}_c{index}["{_mermaid_text(name)}"]')
            lines.append("  end")
            continue
        opening, closing = MERMAID_SHAPES.get(node.kind, ('[("', '")]'))
        lines.append(f"  {short}{opening}{_mermaid_text(node_id)}{closing}")
    for edge in graph.edges:
        if columns and edge.upstream in with_columns and edge.downstream in with_columns:
            continue
        lines.append(f"  {ids[edge.upstream]} -->|{edge.via}| {ids[edge.downstream]}")
    for source, target, label in _column_edges(graph, with_columns, ids):
        lines.append(f"  {source} -->|{label}| {target}")
    return "\n".join(lines)


def _mermaid_text(text: str) -> str:
    return text.replace('"', "#quot;")


def _column_edges(
    graph: LineageGraph, with_columns: set[str], ids: dict[str, str]
) -> Iterator[tuple[str, str, str]]:
    """Yield (source, target, label) between column ids `n<node>_c<index>`.

    A `count(*)` column gets an edge from the whole node whose rows it counts (`n<node>`).
    """
    for node_id in sorted(with_columns, key=lambda n: ids[n]):
        node = graph.nodes[node_id]
        for index, name in enumerate(node.columns):
            lineage = node.column_lineage.get(name)
            if lineage is None:
                continue
            target = f"{ids[node_id]}_c{index}"
            for item in lineage.upstream:
                parent = graph.nodes.get(item.node)
                if parent is None or item.node not in with_columns:
                    continue
                if item.column in parent.columns:
                    source = f"{ids[item.node]}_c{parent.columns.index(item.column)}"
                    yield source, target, item.transformation.lower()
            for counted in lineage.rows_of:
                if counted in ids:
                    yield ids[counted], target, "count"


# --- Graphviz DOT ----------------------------------------------------------------------------


def dot(graph: LineageGraph, columns: bool) -> str:
    ids = {node_id: f"n{number}" for number, node_id in enumerate(graph.topological_order())}
    with_columns = {n for n in ids if columns and graph.nodes[n].columns}
    lines = [
        "digraph lineage {",
        "  rankdir=LR;",
        '  node [shape=box, fontname="Helvetica", fontsize=10];',
        '  edge [fontname="Helvetica", fontsize=8];',
    ]
    for node_id, short in ids.items():
        node = graph.nodes[node_id]
        if node_id in with_columns:
            lines.append(f"  {short} [shape=plain, label=<{_dot_table(node)}>];")
        else:
            shape = DOT_SHAPES.get(node.kind, "cylinder")
            lines.append(f"  {short} [shape={shape}, label={json.dumps(node_id)}];")
    for edge in graph.edges:
        if edge.upstream in with_columns and edge.downstream in with_columns:
            continue
        lines.append(
            f"  {ids[edge.upstream]} -> {ids[edge.downstream]} [label={json.dumps(edge.via)}];"
        )
    for source, target, label in _column_edges(graph, with_columns, ids):
        lines.append(
            f"  {_dot_port(source, 'e')} -> {_dot_port(target, 'w')} [label={json.dumps(label)}];"
        )
    lines.append("}")
    return "\n".join(lines)


def _dot_port(column_id: str, side: str) -> str:
    """Turn `n3_c2` into the port `n3:c2:<side>`; a node id without a column stays as it is."""
    node, separator, column = column_id.partition("_")
    return f"{node}:{column}:{side}" if separator else node


def _dot_table(node: Node) -> str:
    rows = [f'<tr><td bgcolor="lightgrey"><b>{html.escape(node.id)}</b></td></tr>']
    for index, name in enumerate(node.columns):
        rows.append(f'<tr><td port="c{index}" align="left">{html.escape(name)}</td></tr>')
    return '<table border="0" cellborder="1" cellspacing="0">' + "".join(rows) + "</table>"
