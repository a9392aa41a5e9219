"""The lineage graph: nodes from source systems to sinks, table edges and column lineage.

Node ids are readable and stable across runs:

- `http:<base_url><path>`, `files:<url>/<glob>`, `db:<host>:<port>/<database>.<table>`:
  the source system of a pipeline, without query string or credentials;
- `<schema>.<table>`: a warehouse relation that dbt does not build, that is, a raw table a
  pipeline loads, a dbt source, or a relation that SQL reads without declaring it;
- `model.<name>`, `seed.<name>`, `snapshot.<name>`, `exposure.<name>`: dbt nodes
  (`model.<package>.<name>` when two packages define the same name);
- `<sink type>:<target>`, such as `postgres:reporting.orders` or
  `object_storage:s3://bucket/prefix`: where a pipeline publishes a model.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from mocra_elt.errors import ConfigError

KINDS = (
    "source_system",
    "raw_table",
    "source",
    "relation",
    "seed",
    "model",
    "snapshot",
    "exposure",
    "sink",
)
# Transformations from an upstream column to an output column, weakest first. The names are
# the DIRECT subtypes of OpenLineage's column lineage facet.
TRANSFORMATIONS = ("IDENTITY", "TRANSFORMATION", "AGGREGATION")


@dataclass(frozen=True)
class Upstream:
    """One upstream column of an output column, with how the value is derived from it."""

    node: str
    column: str
    transformation: str = "IDENTITY"

    def __str__(self) -> str:
        return f"{self.node}.{self.column}"


@dataclass
class ColumnLineage:
    """The origin of one column of a node.

    `status` is `resolved` (the upstream columns are known), `constant` (the SQL sets the value
    without reading a column, such as a literal), `generated` (dbt writes it, such as a
    snapshot's validity columns) or `unresolved` (unknown, and `reason` gives the cause).
    `rows_of` lists nodes whose rows the value counts without reading a column (`count(*)`).
    """

    column: str
    status: str = "resolved"
    upstream: list[Upstream] = field(default_factory=list)
    rows_of: list[str] = field(default_factory=list)
    reason: str | None = None
    expression: str | None = None

    def to_dict(self) -> dict[str, Any]:
        document = asdict(self)
        document["upstream"] = [asdict(item) for item in self.upstream]
        return document


@dataclass
class Node:
    id: str
    kind: str
    name: str
    relation: str | None = None
    unique_id: str | None = None
    pipelines: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    columns: list[str] = field(default_factory=list)
    column_types: dict[str, str] = field(default_factory=dict)
    columns_from: str | None = None
    column_lineage: dict[str, ColumnLineage] = field(default_factory=dict)
    gaps: list[str] = field(default_factory=list)

    def to_dict(self, with_columns: bool = True) -> dict[str, Any]:
        document: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "name": self.name,
            "relation": self.relation,
            "unique_id": self.unique_id,
            "pipelines": self.pipelines,
            "details": self.details,
            "gaps": self.gaps,
        }
        if with_columns:
            document["columns"] = [
                {"name": name, "type": self.column_types.get(name)} for name in self.columns
            ]
            document["columns_from"] = self.columns_from
            document["column_lineage"] = [
                lineage.to_dict() for lineage in self.column_lineage.values()
            ]
        return document


@dataclass(frozen=True)
class Edge:
    """A table-level dependency. `via` names what creates it: extract, ref, source, sql, ..."""

    upstream: str
    downstream: str
    via: str
    pipeline: str | None = None


@dataclass
class LineageGraph:
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)
    dialect: str = "duckdb"
    # Parents and children per node, rebuilt when the number of edges changes.
    _adjacency: tuple[int, dict[str, list[str]], dict[str, list[str]]] = field(
        default=(-1, {}, {}), init=False, repr=False, compare=False
    )

    # --- building -----------------------------------------------------------------------

    def add_node(self, node: Node) -> Node:
        """Add a node, or merge it into the node with the same id (a raw table that is a source)."""
        existing = self.nodes.get(node.id)
        if existing is None:
            self.nodes[node.id] = node
            return node
        for pipeline in node.pipelines:
            if pipeline not in existing.pipelines:
                existing.pipelines.append(pipeline)
        existing.details.update(
            {k: v for k, v in node.details.items() if k not in existing.details}
        )
        existing.unique_id = existing.unique_id or node.unique_id
        existing.relation = existing.relation or node.relation
        return existing

    def add_edge(
        self, upstream: str, downstream: str, via: str, pipeline: str | None = None
    ) -> None:
        if upstream == downstream:
            return
        if upstream not in self.parents(downstream):
            self.edges.append(Edge(upstream, downstream, via, pipeline))

    # --- navigation ---------------------------------------------------------------------

    def parents(self, node_id: str) -> list[str]:
        return list(self._adjacent()[0].get(node_id, []))

    def children(self, node_id: str) -> list[str]:
        return list(self._adjacent()[1].get(node_id, []))

    def _adjacent(self) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        count, parents, children = self._adjacency
        if count != len(self.edges):
            parents, children = {}, {}
            for edge in self.edges:
                parents.setdefault(edge.downstream, []).append(edge.upstream)
                children.setdefault(edge.upstream, []).append(edge.downstream)
            self._adjacency = (len(self.edges), parents, children)
        return parents, children

    def upstream_of(self, node_id: str, depth: int | None = None) -> list[str]:
        """Return every node `node_id` depends on, nearest first (breadth-first)."""
        return self._reach(node_id, self.parents, depth)

    def downstream_of(self, node_id: str, depth: int | None = None) -> list[str]:
        return self._reach(node_id, self.children, depth)

    def _reach(self, start: str, step: Any, depth: int | None) -> list[str]:
        seen = {start}
        order: list[str] = []
        queue = deque([(start, 0)])
        while queue:
            current, distance = queue.popleft()
            if depth is not None and distance >= depth:
                continue
            for neighbour in step(current):
                if neighbour not in seen:
                    seen.add(neighbour)
                    order.append(neighbour)
                    queue.append((neighbour, distance + 1))
        return order

    def topological_order(self) -> list[str]:
        """Return node ids with every node after its parents; nodes in a cycle come last."""
        incoming = {node_id: 0 for node_id in self.nodes}
        for edge in self.edges:
            incoming[edge.downstream] = incoming.get(edge.downstream, 0) + 1
        ready = deque(sorted(node_id for node_id, count in incoming.items() if count == 0))
        order: list[str] = []
        while ready:
            current = ready.popleft()
            order.append(current)
            for child in sorted(self.children(current)):
                incoming[child] -= 1
                if incoming[child] == 0:
                    ready.append(child)
        return order + sorted(set(self.nodes) - set(order))

    def subgraph(self, node_ids: Iterable[str]) -> LineageGraph:
        keep = set(node_ids)
        graph = LineageGraph(dialect=self.dialect)
        graph.nodes = {node_id: node for node_id, node in self.nodes.items() if node_id in keep}
        graph.edges = [e for e in self.edges if e.upstream in keep and e.downstream in keep]
        return graph

    # --- finding nodes and columns ------------------------------------------------------

    def resolve(self, name: str) -> str:
        """Return the id of the node that `name` means; raises ConfigError when none or several.

        Accepted: a node id, a dbt unique_id, a dbt name (`stg_flights`), a relation
        (`analytics.stg_flights`), or a unique suffix of a node id.
        """
        if name in self.nodes:
            return name
        lowered = name.lower()
        for matcher in (_same_unique_id, _same_name, _same_relation, _id_suffix):
            found = sorted({node.id for node in self.nodes.values() if matcher(node, lowered)})
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                raise ConfigError(
                    f"{name!r} matches several lineage nodes: {', '.join(found)}. Pass one of "
                    "these ids."
                )
        raise ConfigError(
            f"no lineage node matches {name!r}. Run 'mocra-elt lineage' to list the nodes; "
            "ids look like model.stg_flights, raw_flights.flights or seed.airlines."
        )

    def resolve_column(self, reference: str) -> tuple[str, str]:
        """Split `NODE.COLUMN` into a node id and a column name of that node."""
        node_part, dot, column = reference.rpartition(".")
        if not dot or not node_part or not column:
            raise ConfigError(
                f"{reference!r} is not NODE.COLUMN: write it like stg_flights.origin or "
                "model.stg_flights.origin."
            )
        node_id = self.resolve(node_part)
        node = self.nodes[node_id]
        known = {name.lower(): name for name in [*node.columns, *node.column_lineage]}
        if column.lower() not in known:
            listed = ", ".join(node.columns) or "none known"
            raise ConfigError(
                f"{node_id} has no column {column!r}. Its columns: {listed}.",
            )
        return node_id, known[column.lower()]

    # --- column navigation --------------------------------------------------------------

    def column_children(self) -> dict[tuple[str, str], list[tuple[str, str, str]]]:
        """Map (node, column) to the (node, column, transformation) derived from it."""
        children: dict[tuple[str, str], list[tuple[str, str, str]]] = {}
        for node in self.nodes.values():
            for lineage in node.column_lineage.values():
                for upstream in lineage.upstream:
                    key = (upstream.node, upstream.column)
                    children.setdefault(key, []).append(
                        (node.id, lineage.column, upstream.transformation)
                    )
        return children

    def column_impact(self, node_id: str, column: str) -> list[tuple[str, str, str, int]]:
        """Return every column derived from (node_id, column), as (node, column, via, distance).

        `via` is the column it was derived from (`node.column`), so the list is a tree.
        """
        children = self.column_children()
        seen = {(node_id, column)}
        found: list[tuple[str, str, str, int]] = []
        queue = deque([(node_id, column, 0)])
        while queue:
            current_node, current_column, distance = queue.popleft()
            for child_node, child_column, _ in children.get((current_node, current_column), []):
                if (child_node, child_column) in seen:
                    continue
                seen.add((child_node, child_column))
                found.append(
                    (child_node, child_column, f"{current_node}.{current_column}", distance + 1)
                )
                queue.append((child_node, child_column, distance + 1))
        return found

    def column_origins(self, node_id: str, column: str) -> Iterator[tuple[str, str, int]]:
        """Yield the upstream columns of (node_id, column) depth-first as (node, column, depth)."""
        stack = [(node_id, column, 0)]
        seen: set[tuple[str, str]] = set()
        while stack:
            current_node, current_column, depth = stack.pop()
            node = self.nodes.get(current_node)
            lineage = node.column_lineage.get(current_column) if node else None
            if lineage is None:
                continue
            for upstream in reversed(lineage.upstream):
                key = (upstream.node, upstream.column)
                if key in seen:
                    continue
                seen.add(key)
                yield upstream.node, upstream.column, depth + 1
                stack.append((upstream.node, upstream.column, depth + 1))

    def to_dict(self, with_columns: bool = True) -> dict[str, Any]:
        order = [node_id for node_id in self.topological_order() if node_id in self.nodes]
        return {
            "nodes": [self.nodes[node_id].to_dict(with_columns) for node_id in order],
            "edges": [asdict(edge) for edge in self.edges],
        }


def _same_unique_id(node: Node, name: str) -> bool:
    return (node.unique_id or "").lower() == name


def _same_name(node: Node, name: str) -> bool:
    return node.kind in ("seed", "model", "snapshot", "exposure") and node.name.lower() == name


def _same_relation(node: Node, name: str) -> bool:
    return (node.relation or "").lower() == name


def _id_suffix(node: Node, name: str) -> bool:
    return node.id.lower().endswith(name)
