"""Helpers shared by the PostgreSQL benchmarks: servers, pgbench data and a DB pipeline."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT

DB_PIPELINE = """\
    source:
      type: db
      host: ${{env:MOCRA_PG_HOST}}
      port: ${{env:MOCRA_PG_PORT}}
      user: ${{env:MOCRA_PG_USER}}
      password: ${{env:MOCRA_PG_PASSWORD}}
      database: {database}
      table: public.pgbench_accounts
    load:
      table: accounts
      write_disposition: append
    """


@contextmanager
def postgres_server() -> Iterator[Any]:
    """Yield the connection settings of the server in MOCRA_PG_*, or of a throwaway one.

    Without MOCRA_PG_HOST, scripts/services.sh starts PostgreSQL (and the S3 API
    server, unused here) for the duration of the block.
    """
    from mocra_elt.demo.reference import demo_servers
    from mocra_elt.load.postgres import info_from_env

    with demo_servers(REPO_ROOT, required=("MOCRA_PG_HOST",)) as servers:
        print(f"PostgreSQL: {servers}")
        yield info_from_env()


def create_database(info: Any, name: str) -> Any:
    """Create database `name` on the server of `info`, replacing an older one; return its info."""
    from dataclasses import replace

    from mocra_elt.load.postgres import connect_dbapi

    with connect_dbapi(replace(info, database="postgres")) as connection:
        connection.execute(f"drop database if exists {name} with (force)")
        connection.execute(f"create database {name}")
    return replace(info, database=name)


def pgbench_init(info: Any, scale: int) -> None:
    """Fill the database of `info` with `pgbench -i -s scale`: scale x 100,000 accounts."""
    command = [
        _pgbench(),
        "--initialize",
        "--quiet",
        f"--scale={scale}",
        f"--host={info.host}",
        f"--port={info.port}",
        f"--username={info.user}",
        info.database,
    ]
    environment = {**os.environ, "PGPASSWORD": info.password}
    subprocess.run(command, env=environment, check=True, capture_output=True, text=True)


def _pgbench() -> str:
    found = shutil.which("pgbench")
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"))
    if not candidates:
        raise SystemExit("pgbench not found; install it with 'apt-get install -y postgresql'.")
    return str(candidates[-1])
