"""Column lineage of one compiled query with sqlglot: each output column's upstream columns.

The query is qualified against the known columns of the relations it reads, so `select *`
expands, and sqlglot's lineage walk follows CTEs, subqueries, joins, aggregates, CASE and
window functions down to physical relations. Ephemeral models that dbt inlined as
`__dbt__cte__<name>` CTEs are cut out of the query and read as relations of their own, so
the lineage goes through the ephemeral model's node rather than past it.

A column is never attributed by guesswork: when sqlglot cannot tie a column to a relation
(an unknown relation's columns behind `select *`, an ambiguous name in a join of unknown
relations), the column is `unresolved` with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mocra_elt.lineage.graph import TRANSFORMATIONS, ColumnLineage, Upstream
from mocra_elt.lineage.manifest import EPHEMERAL_PREFIX
from mocra_elt.lineage.schemas import KnownColumns

if TYPE_CHECKING:
    from sqlglot import exp
    from sqlglot.lineage import Node as SqlNode

log = logging.getLogger(__name__)

# Ephemeral models are put in the sqlglot schema under this catalog and schema, because the
# schema needs the same depth (catalog.schema.table) for every relation.
EPHEMERAL_CATALOG = "__dbt__"
EPHEMERAL_SCHEMA = "ephemeral"


@dataclass
class RelationIndex:
    """Maps the tables that compiled SQL names to lineage node ids."""

    by_full_name: dict[tuple[str, str, str], str] = field(default_factory=dict)
    by_schema_table: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    ephemeral: dict[str, str] = field(default_factory=dict)
    default_catalog: str | None = None

    def add(self, node_id: str, database: str | None, schema: str, table: str) -> None:
        key = (schema.lower(), table.lower())
        if database:
            self.by_full_name[(database.lower(), *key)] = node_id
        if node_id not in self.by_schema_table.setdefault(key, []):
            self.by_schema_table[key].append(node_id)

    def add_ephemeral(self, node_id: str, name: str) -> None:
        self.ephemeral[name.lower()] = node_id

    def node_for(self, table: exp.Table) -> tuple[str, bool]:
        """Return (node id, declared) for a physical table; undeclared ids are `schema.table`."""
        catalog, schema, name = table.catalog.lower(), table.db.lower(), table.name.lower()
        if catalog == EPHEMERAL_CATALOG and name in self.ephemeral:
            return self.ephemeral[name], True
        if catalog and (catalog, schema, name) in self.by_full_name:
            return self.by_full_name[(catalog, schema, name)], True
        candidates = self.by_schema_table.get((schema, name), [])
        if len(candidates) == 1 and (not catalog or catalog == self.default_catalog):
            return candidates[0], True
        parts = [part for part in (schema, name) if part]
        if catalog and catalog != (self.default_catalog or ""):
            parts.insert(0, catalog)
        return ".".join(parts), False


@dataclass
class QueryLineage:
    """The result of analysing one query: output columns, their lineage and the relations read."""

    columns: list[str] | None
    lineage: dict[str, ColumnLineage]
    reads: list[str] = field(default_factory=list)
    undeclared: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class _Context:
    index: RelationIndex
    known: Callable[[str], KnownColumns | None]
    cte_tables: dict[str, list[exp.Table]]
    dialect: str
    reads: set[str] = field(default_factory=set)
    undeclared: set[str] = field(default_factory=set)


def query_lineage(
    sql: str,
    *,
    dialect: str,
    index: RelationIndex,
    known: Callable[[str], KnownColumns | None],
) -> QueryLineage:
    """Compute the lineage of every output column of one compiled SELECT.

    `known(node_id)` returns the known columns of a node, or None when they are unknown.
    """
    from sqlglot.errors import SqlglotError

    try:
        expression = _parse(sql, dialect)
        _cut_ephemeral_ctes(expression, index)
        schema = _schema_for(expression, index, known)
        return _analyse(expression, dialect, schema, index, known)
    except (SqlglotError, ValueError) as error:
        return QueryLineage(None, {}, error=f"{type(error).__name__}: {error}")
    except Exception as error:  # noqa: BLE001 - any analyser failure becomes a reported gap
        log.warning("sqlglot failed on a query: %s", error, exc_info=True)
        return QueryLineage(None, {}, error=f"{type(error).__name__}: {error}")


def _schema_for(
    expression: exp.Expr,
    index: RelationIndex,
    known: Callable[[str], KnownColumns | None],
) -> dict[str, Any]:
    """Build sqlglot's schema {catalog: {schema: {table: {column: type}}}} of the tables read."""
    from sqlglot import exp

    cte_names = {cte.alias.lower() for cte in expression.find_all(exp.CTE)}
    mapping: dict[str, Any] = {}
    for table in expression.find_all(exp.Table):
        if not table.db and table.name.lower() in cte_names:
            continue
        columns = known(index.node_for(table)[0])
        if columns is None:
            continue
        catalog = table.catalog or index.default_catalog or "memory"
        tables = mapping.setdefault(catalog, {}).setdefault(table.db or "main", {})
        tables[table.name] = {name: columns.types.get(name) or "unknown" for name in columns.names}
    return mapping


def _parse(sql: str, dialect: str) -> exp.Expr:
    import sqlglot
    from sqlglot import exp

    statements = [s for s in sqlglot.parse(sql, dialect=dialect) if s is not None]
    if len(statements) != 1:
        raise ValueError(f"expected one SQL statement, found {len(statements)}")
    statement = statements[0]
    if not isinstance(statement, exp.Query):
        raise ValueError(f"expected a query, found {type(statement).__name__}")
    return statement


def _cut_ephemeral_ctes(expression: exp.Expr, index: RelationIndex) -> None:
    """Replace the `__dbt__cte__<name>` CTEs dbt inlined with references to their models."""
    from sqlglot import exp

    inlined = set()
    for cte in list(expression.find_all(exp.CTE)):
        alias = cte.alias.lower()
        name = alias.removeprefix(EPHEMERAL_PREFIX)
        if alias.startswith(EPHEMERAL_PREFIX) and name in index.ephemeral:
            inlined.add(alias)
            with_clause = cte.parent
            cte.pop()
            if isinstance(with_clause, exp.With) and not with_clause.expressions:
                with_clause.pop()
    for table in list(expression.find_all(exp.Table)):
        alias = table.name.lower()
        if alias in inlined and not table.db:
            replacement = exp.table_(
                alias.removeprefix(EPHEMERAL_PREFIX),
                db=EPHEMERAL_SCHEMA,
                catalog=EPHEMERAL_CATALOG,
                alias=table.alias or alias,
            )
            table.replace(replacement)


def _analyse(
    expression: exp.Expr,
    dialect: str,
    schema: dict[str, Any],
    index: RelationIndex,
    known: Callable[[str], KnownColumns | None],
) -> QueryLineage:
    from sqlglot import exp
    from sqlglot.lineage import lineage
    from sqlglot.optimizer.qualify import qualify

    qualified = qualify(
        expression,
        dialect=dialect,
        schema=schema,
        validate_qualify_columns=False,
        identify=False,
    )
    nodes = lineage(None, qualified, schema, dialect=dialect)
    context = _Context(index, known, _cte_tables(qualified), dialect)
    for table in qualified.find_all(exp.Table):
        if not table.db and table.name in context.cte_tables:
            continue
        _note_relation(context, table)

    output_columns: list[str] | None = [name for name in nodes if name != "*"]
    results: dict[str, ColumnLineage] = {}
    for name, node in nodes.items():
        if name == "*":
            output_columns = None
            continue
        results[name] = _column_lineage(name, node, context)
    if output_columns is None:
        star = _describe_star(nodes["*"], context)
        results = {"*": ColumnLineage("*", "unresolved", reason=star)}
    return QueryLineage(
        output_columns,
        results,
        reads=sorted(context.reads),
        undeclared=sorted(context.undeclared),
    )


def _cte_tables(expression: exp.Expr) -> dict[str, list[exp.Table]]:
    from sqlglot import exp

    return {
        cte.alias: list(cte.this.find_all(exp.Table))
        for cte in expression.find_all(exp.CTE)
        if cte.alias
    }


def _note_relation(context: _Context, table: exp.Table) -> str:
    node_id, declared = context.index.node_for(table)
    context.reads.add(node_id)
    if not declared:
        context.undeclared.add(node_id)
    return node_id


# --- one output column -------------------------------------------------------------------


@dataclass
class _Walk:
    upstream: dict[tuple[str, str], str] = field(default_factory=dict)
    rows_of: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


def _column_lineage(name: str, root: SqlNode, context: _Context) -> ColumnLineage:
    walk = _Walk()
    _visit(root, 0, walk, context, set())
    expression = _expression_sql(root, context.dialect)
    upstream = [
        Upstream(node_id, column, transformation)
        for (node_id, column), transformation in sorted(walk.upstream.items())
    ]
    if walk.problems:
        reason = "; ".join(dict.fromkeys(walk.problems))
        return ColumnLineage(name, "unresolved", upstream, sorted(walk.rows_of), reason, expression)
    if not upstream and not walk.rows_of:
        return ColumnLineage(
            name,
            "constant",
            reason="the query computes it without reading a column",
            expression=expression,
        )
    return ColumnLineage(name, "resolved", upstream, sorted(walk.rows_of), None, expression)


def _visit(node: SqlNode, level: int, walk: _Walk, context: _Context, seen: set[Any]) -> None:
    from sqlglot import exp

    key = (id(node), level)
    if key in seen:
        return
    seen.add(key)
    level = max(level, _step_level(node.expression))
    _count_rows(node, walk, context)

    if node.downstream:
        for child in node.downstream:
            _visit(child, level, walk, context, seen)
        return
    if isinstance(node.expression, exp.Table):
        if node.name.endswith("*") or node.name == "*":
            walk.problems.append(_unknown_star(node.expression, context))
            return
        _add_leaf(node, level, walk, context)
        return
    if isinstance(node.expression, exp.Placeholder):
        walk.problems.append(
            f"column {node.name!r} cannot be tied to one relation: its relations' columns "
            "are unknown or it is ambiguous"
        )
    elif isinstance(node.expression, exp.Star) or isinstance(node.expression, exp.Query):
        walk.problems.append("it comes from a `select *` over a query whose columns are unknown")


def _add_leaf(node: SqlNode, level: int, walk: _Walk, context: _Context) -> None:
    from sqlglot import exp

    table = node.expression
    assert isinstance(table, exp.Table)
    node_id = _note_relation(context, table)
    column = _column_name(node.name, context.dialect)
    known = context.known(node_id)
    if known is not None:
        matches = [name for name in known.names if name.lower() == column.lower()]
        if not matches:
            walk.problems.append(f"{node_id} has no column {column!r} ({known.origin})")
            return
        column = matches[0]
    key = (node_id, column)
    previous = walk.upstream.get(key)
    transformation = TRANSFORMATIONS[level]
    if previous is None or TRANSFORMATIONS.index(previous) < level:
        walk.upstream[key] = transformation


def _column_name(reference: str, dialect: str) -> str:
    import sqlglot
    from sqlglot import exp
    from sqlglot.errors import SqlglotError

    try:
        parsed = sqlglot.parse_one(reference, dialect=dialect)
    except SqlglotError:
        return reference.rpartition(".")[2]
    return parsed.name if isinstance(parsed, exp.Column) else reference.rpartition(".")[2]


def _step_level(expression: exp.Expr) -> int:
    """Rank one projection: 0 passes a column through, 1 transforms it, 2 aggregates it."""
    from sqlglot import exp

    inner = expression.this if isinstance(expression, exp.Alias) else expression
    if isinstance(inner, exp.Column | exp.Table | exp.Star | exp.Placeholder | exp.Query):
        return 0
    if inner.find(exp.AggFunc):
        return 2
    return 1


def _count_rows(node: SqlNode, walk: _Walk, context: _Context) -> None:
    """Record the relations whose rows a `count(*)` in this projection counts."""
    from sqlglot import exp

    counts = [
        count for count in node.expression.find_all(exp.Count) if isinstance(count.this, exp.Star)
    ]
    if not counts or not isinstance(node.source, exp.Select):
        return
    from_clause = node.source.args.get("from_")
    tables = [] if from_clause is None else list(from_clause.find_all(exp.Table))
    for join in node.source.args.get("joins") or []:
        tables += list(join.find_all(exp.Table))
    for table in tables:
        walk.rows_of.update(_physical_relations(table, context, set()))


def _physical_relations(table: exp.Table, context: _Context, visiting: set[str]) -> set[str]:
    if not table.db and table.name in context.cte_tables:
        if table.name in visiting:
            return set()
        visiting.add(table.name)
        found: set[str] = set()
        for inner in context.cte_tables[table.name]:
            found |= _physical_relations(inner, context, visiting)
        return found
    return {_note_relation(context, table)}


def _unknown_star(table: exp.Table, context: _Context) -> str:
    node_id = _note_relation(context, table)
    return f"it comes from `select *` over {node_id}, whose columns are unknown"


def _describe_star(node: SqlNode, context: _Context) -> str:
    from sqlglot import exp

    relations = []
    for child in node.walk():
        if isinstance(child.expression, exp.Table) and child is not node:
            relations.append(_note_relation(context, child.expression))
    listed = ", ".join(sorted(set(relations))) or "a relation"
    return (
        f"the query selects * from {listed}, whose columns are unknown: load the table into "
        "the warehouse or document its columns in a schema.yml"
    )


def _expression_sql(node: SqlNode, dialect: str) -> str | None:
    """Return the SQL that defines the column, past CTEs and subqueries that only pass it on."""
    from sqlglot import exp

    def inner(current: SqlNode) -> exp.Expr:
        expression = current.expression
        return expression.this if isinstance(expression, exp.Alias) else expression

    while (
        isinstance(inner(node), exp.Column)
        and len(node.downstream) == 1
        and not isinstance(node.downstream[0].expression, exp.Table | exp.Placeholder)
    ):
        node = node.downstream[0]
    defining = inner(node)
    if not isinstance(defining, exp.Expr) or isinstance(defining, exp.Table):
        return None
    text: str = defining.sql(dialect=dialect)
    return text if len(text) <= 500 else text[:497] + "..."
