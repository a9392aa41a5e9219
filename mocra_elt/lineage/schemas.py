"""Known columns of relations: from the warehouse, a seed's CSV header or the dbt docs."""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mocra_elt.config.project import Project
from mocra_elt.errors import MocraError
from mocra_elt.lineage.manifest import DbtNode

log = logging.getLogger(__name__)


@dataclass
class KnownColumns:
    """The columns of one relation, in order, and where they were read (`origin`)."""

    names: list[str]
    origin: str
    types: dict[str, str] = field(default_factory=dict)


RelationKey = tuple[str, str]


def relation_key(schema: str, table: str) -> RelationKey:
    return schema.lower(), table.lower()


def read_warehouse_columns(connection: Any, schemas: set[str]) -> dict[RelationKey, KnownColumns]:
    """Read the columns of every table and view in `schemas` from information_schema."""
    if not schemas:
        return {}
    placeholders = ", ".join("?" for _ in schemas)
    rows = connection.execute(
        "select table_schema, table_name, column_name, data_type from information_schema.columns "
        f"where lower(table_schema) in ({placeholders}) "
        "order by table_schema, table_name, ordinal_position",
        sorted(schema.lower() for schema in schemas),
    ).fetchall()
    found: dict[RelationKey, KnownColumns] = {}
    for schema, table, column, data_type in rows:
        known = found.setdefault(relation_key(schema, table), KnownColumns([], "warehouse"))
        known.names.append(column)
        known.types[column] = str(data_type).lower()
    return found


@contextmanager
def warehouse_for_reading(project: Project) -> Iterator[Any]:
    """Yield a read-only connection to the project's warehouse, or None when there is none yet.

    A missing DuckDB file or a warehouse that cannot be opened (locked by a running pipeline,
    server down) gives None and a warning: lineage then relies on the dbt docs and seed files.
    """
    if project.target == "duckdb":
        with _duckdb_read_only(project.warehouse_path) as connection:
            yield connection
        return

    from mocra_elt.load.warehouse import open_warehouse

    try:
        context = open_warehouse(project).connect()
        connection = context.__enter__()
    except (MocraError, OSError, ImportError) as error:
        log.warning("cannot read the warehouse's columns, so lineage uses the dbt docs: %s", error)
        yield None
        return
    try:
        yield connection
    finally:
        context.__exit__(None, None, None)


@contextmanager
def _duckdb_read_only(path: Path) -> Iterator[Any]:
    if not path.exists():
        yield None
        return
    import duckdb

    try:
        connection = duckdb.connect(str(path), read_only=True)
    except duckdb.Error as error:
        log.warning(
            "cannot open the warehouse %s to read its columns (%s); lineage uses the dbt docs "
            "and seed files instead",
            path,
            error,
        )
        yield None
        return
    try:
        yield connection
    finally:
        connection.close()


def seed_file_columns(node: DbtNode) -> KnownColumns | None:
    """Read the header of a seed's CSV file."""
    if node.root_path is None or not node.original_file_path:
        return None
    path = Path(node.root_path) / node.original_file_path
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            header = next(csv.reader(handle), None)
    except OSError as error:
        log.warning("cannot read the seed file %s: %s", path, error)
        return None
    if not header:
        return None
    names = [name.strip() for name in header]
    types = {
        name: str(node.documented_columns[name])
        for name in names
        if node.documented_columns.get(name)
    }
    return KnownColumns(names, "seed file", types)


def documented_columns(node: DbtNode) -> KnownColumns | None:
    if not node.documented_columns:
        return None
    types = {name: str(kind) for name, kind in node.documented_columns.items() if kind}
    return KnownColumns(list(node.documented_columns), "dbt docs", types)
