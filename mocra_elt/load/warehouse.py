"""The warehouse a project loads into: a DuckDB file by default, or a PostgreSQL database.

`connect()` of either yields a connection whose `execute(sql, parameters)`
takes `?` parameters, returns a cursor (`fetchone`, `fetchall`, `description`)
and commits each statement unless an explicit `begin` opened a transaction.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from mocra_elt.config.project import Project
from mocra_elt.errors import ConfigError, WarehouseLockedError

if TYPE_CHECKING:
    from mocra_elt.load.postgres import PgConnectionInfo

log = logging.getLogger(__name__)

# How long a connection waits for another process to release the DuckDB file.
LOCK_RETRY_SECONDS = 10.0

# dlt's postgres credentials require a password, even when the server trusts the
# client and ignores it. dlt gets this one when MOCRA_PG_PASSWORD and PGPASSWORD are empty.
UNUSED_PASSWORD = "unused-password-for-trust-auth"


class Cursor(Protocol):
    def execute(self, sql: str, parameters: Sequence[Any] = ...) -> Any: ...
    def fetchall(self) -> list[tuple[Any, ...]]: ...
    def fetchone(self) -> tuple[Any, ...] | None: ...


class Warehouse(Protocol):
    """Interface through which the runner and the audit store reach a warehouse."""

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

        DuckDB lets one process at a time open a file. Another process's connection
        is usually short (`runs list`, an audit write), so a conflict is retried for
        up to LOCK_RETRY_SECONDS before WarehouseLockedError is raised.
        """
        import duckdb

        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + LOCK_RETRY_SECONDS
        while True:
            try:
                connection = duckdb.connect(str(self.path))
                break
            except duckdb.IOException as error:
                if "lock" not in str(error).lower():
                    raise
                if time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                raise WarehouseLockedError(
                    f"The warehouse {self.path} is locked by another process ({error}). Wait for "
                    "it to finish, or stop it, then run again."
                ) from error
        try:
            yield connection
        finally:
            connection.close()

    def dlt_destination(self) -> Any:
        import dlt

        return dlt.destinations.duckdb(credentials=str(self.path))


class PostgresWarehouse:
    """A PostgreSQL database: dlt datasets, dbt's `analytics` and `mocra_audit` are its schemas.

    The connection settings come from MOCRA_PG_HOST, _PORT, _USER, _PASSWORD and
    _DATABASE, the same variables profiles.yml's `pg` target reads.
    """

    name = "postgres"
    # dlt loads Parquet through ADBC's binary COPY. A 300,000-row merge (3 columns, 2 cores)
    # loaded 262-328k rows/s this way against 175-225k rows/s with dlt's CSV COPY. dlt then
    # creates JSON columns as `json`, not `jsonb`, because ADBC cannot COPY into jsonb.
    loader_file_format = "parquet"

    def __init__(self, info: PgConnectionInfo) -> None:
        self.info = info

    @classmethod
    def from_env(cls) -> PostgresWarehouse:
        from mocra_elt.load.postgres import info_from_env

        return cls(info_from_env())

    def describe(self) -> str:
        return f"PostgreSQL database {self.info.describe()}"

    @contextmanager
    def connect(self) -> Iterator[Any]:
        """Open a psycopg2 connection in autocommit mode that takes `?` parameters."""
        from mocra_elt.load.postgres import connect_dbapi

        with connect_dbapi(self.info) as connection:
            yield connection

    def dlt_destination(self) -> Any:
        import dlt

        return dlt.destinations.postgres(credentials=self.dlt_credentials())

    def dlt_credentials(self) -> dict[str, Any]:
        # NOTE: the placeholder also hides a password in ~/.pgpass from dlt, so set
        # MOCRA_PG_PASSWORD or PGPASSWORD when the server requires one.
        password = self.info.password or os.environ.get("PGPASSWORD") or UNUSED_PASSWORD
        return {
            "database": self.info.database,
            "username": self.info.user,
            "password": password,
            "host": self.info.host,
            "port": self.info.port,
        }


def open_warehouse(project: Project) -> Warehouse:
    if project.target == "duckdb":
        return DuckDBWarehouse(project.warehouse_path)
    if project.target == "pg":
        return PostgresWarehouse.from_env()
    raise ConfigError(
        f"warehouse target {project.target!r} is not supported; use --target duckdb or pg."
    )


def fetch_dicts(connection: Any, sql: str, parameters: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """Run a query and return its rows as dicts keyed by column name."""
    cursor = connection.execute(sql, list(parameters))
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


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
