"""The warehouse a project loads into: a DuckDB file by default."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from mocra_elt.config.project import Project
from mocra_elt.errors import ConfigError, WarehouseLockedError

log = logging.getLogger(__name__)


class Cursor(Protocol):
    def execute(self, sql: str, parameters: Sequence[Any] = ...) -> Any: ...
    def fetchall(self) -> list[tuple[Any, ...]]: ...
    def fetchone(self) -> tuple[Any, ...] | None: ...


class Warehouse(Protocol):
    """What the runner and audit store need from a warehouse."""

    name: str

    def connect(self) -> Any: ...

    def dlt_destination(self) -> Any: ...

    def describe(self) -> str: ...


class DuckDBWarehouse:
    name = "duckdb"

    def __init__(self, path: Path) -> None:
        self.path = path

    def describe(self) -> str:
        return f"DuckDB file {self.path}"

    @contextmanager
    def connect(self) -> Iterator[Any]:
        """Open a connection for one unit of work.

        DuckDB lets one process at a time open a file for writing.
        """
        import duckdb

        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            connection = duckdb.connect(str(self.path))
        except duckdb.IOException as error:
            if "lock" in str(error).lower():
                raise WarehouseLockedError(
                    f"The warehouse {self.path} is locked by another process ({error}). Wait for "
                    "it to finish, or stop it, then run again."
                ) from error
            raise
        try:
            yield connection
        finally:
            connection.close()

    def dlt_destination(self) -> Any:
        import dlt

        return dlt.destinations.duckdb(credentials=str(self.path))


def open_warehouse(project: Project) -> Warehouse:
    if project.target == "duckdb":
        return DuckDBWarehouse(project.warehouse_path)
    raise ConfigError(
        f"warehouse target {project.target!r} is not supported yet; use --target duckdb."
    )


def table_exists(connection: Any, schema: str, table: str) -> bool:
    row = connection.execute(
        "select count(*) from information_schema.tables where table_schema = ? and table_name = ?",
        [schema, table],
    ).fetchone()
    return bool(row and row[0])


def column_names(connection: Any, schema: str, table: str) -> list[str]:
    rows = connection.execute(
        "select column_name from information_schema.columns "
        "where table_schema = ? and table_name = ? order by ordinal_position",
        [schema, table],
    ).fetchall()
    return [row[0] for row in rows]


def quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'
