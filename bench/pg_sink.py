"""Upsert into PostgreSQL: the `postgres` sink against COPY plus INSERT ... ON CONFLICT by hand.

    .venv/bin/python bench/pg_sink.py [--rows 1000000] [--changed 0.1] [--repeat 3]

Builds a model of ROWS accounts (id, bid, balance, 84-character filler) in a
DuckDB warehouse and publishes it once to a starting table on the server in
MOCRA_PG_*, or on a throwaway one that scripts/services.sh starts and stops.
Then it changes the balance of a CHANGED share of the model's rows and, for
each attempt, copies the starting table into a fresh target and times, in the same
process and from the same model:

- mocra-elt: the `postgres` sink's publish (DuckDB -> Arrow -> ADBC binary COPY
  into a temporary staging table, NULL and duplicate key checks, upsert that
  writes only rows whose values differ, one transaction);
- baseline: by hand with psycopg2: DuckDB -> Arrow -> CSV in memory -> COPY
  into a temporary staging table, then the same `INSERT ... ON CONFLICT DO
  UPDATE ... WHERE (...) IS DISTINCT FROM (...)`, one transaction.

It prints the median of REPEAT runs of each, model rows/s and the ratio.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import median_seconds, print_comparison, quiet_environment  # noqa: E402
from bench.pg_common import create_database, postgres_server  # noqa: E402

MODEL = """
create or replace table analytics.accounts as
select cast(i as bigint) as aid, cast(i // 100000 + 1 as integer) as bid,
       cast(0 as integer) as abalance, repeat('x', 84) as filler
from range(1, {rows} + 1) as t(i)
"""
VALUE_COLUMNS = ("bid", "abalance", "filler")
UPSERT = """
insert into {target} as t (aid, bid, abalance, filler, _mocra_run_id)
select aid, bid, abalance, filler, %s from accounts_stage
on conflict (aid) do update set bid = excluded.bid, abalance = excluded.abalance,
    filler = excluded.filler, _mocra_run_id = excluded._mocra_run_id
where (t.bid, t.abalance, t.filler) is distinct from (excluded.bid, excluded.abalance,
    excluded.filler)
"""


@dataclass
class Bench:
    """The scratch folder, the DuckDB warehouse holding the model, and the target database."""

    root: Path
    info: Any

    @property
    def warehouse_path(self) -> Path:
        return self.root / ".mocra" / "warehouse.duckdb"

    def duckdb(self, sql: str) -> None:
        import duckdb

        self.warehouse_path.parent.mkdir(parents=True, exist_ok=True)
        with duckdb.connect(str(self.warehouse_path)) as connection:
            connection.execute("create schema if not exists analytics")
            connection.execute(sql)

    def postgres(self, *statements: str) -> list[tuple[Any, ...]]:
        from mocra_elt.load.postgres import connect_dbapi

        with connect_dbapi(self.info) as connection:
            rows: list[tuple[Any, ...]] = []
            for statement in statements:
                cursor = connection.execute(statement)
                rows = cursor.fetchall() if cursor.description else []
            return rows

    def fresh_target(self, name: str) -> str:
        """Copy the starting table, with its primary key, into bench.NAME; return its name."""
        target = f"bench.{name}"
        self.postgres(
            f"drop table if exists {target}",
            f"create table {target} (like bench.seed including all)",
            f"insert into {target} select * from bench.seed",
            f"analyze {target}",
        )
        return target

    def publish(self, table: str, run_id: str) -> Any:
        """Run the publish stage of a pipeline whose only sink upserts the model into `table`."""
        from mocra_elt.config.model import Pipeline
        from mocra_elt.config.project import Project
        from mocra_elt.load.warehouse import DuckDBWarehouse
        from mocra_elt.publish import PublishContext, publish_sinks
        from mocra_elt.runtime.logs import run_logger

        sink = {
            "type": "postgres",
            "model": "accounts",
            "table": table,
            "key": "aid",
            "host": self.info.host,
            "port": self.info.port,
            "user": self.info.user,
            "password": "${env:MOCRA_PG_PASSWORD}",
            "database": self.info.database,
        }
        pipeline = Pipeline.model_validate(
            {
                "name": "bench",
                "source": {"type": "files", "url": "unused"},
                "load": {"table": "unused"},
                "sinks": [sink],
            }
        )
        project = Project(self.root, self.warehouse_path.parent, self.warehouse_path)
        warehouse = DuckDBWarehouse(self.warehouse_path)
        log = run_logger(__name__, run_id, pipeline.name)
        [result] = publish_sinks(PublishContext(run_id, pipeline, project, warehouse, log))
        return result


def upsert_by_hand(bench: Bench, target: str, run_id: str) -> int:
    """Upsert the model with psycopg2: CSV COPY into a staging table, then ON CONFLICT."""
    import duckdb
    import psycopg2
    import pyarrow.csv as pcsv

    with duckdb.connect(str(bench.warehouse_path), read_only=True) as connection:
        table = connection.execute("select * from analytics.accounts").to_arrow_table()
    buffer = io.BytesIO()
    pcsv.write_csv(table, buffer, pcsv.WriteOptions(include_header=False))
    buffer.seek(0)

    connection = psycopg2.connect(**bench.info.dbapi_kwargs())
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(
                "create temporary table accounts_stage (aid bigint, bid integer, "
                "abalance integer, filler text) on commit drop"
            )
            cursor.copy_expert("copy accounts_stage from stdin (format csv)", buffer)
            cursor.execute(UPSERT.format(target=target), [run_id])
            return int(cursor.rowcount)
    finally:
        connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--changed", type=float, default=0.1, help="share of rows changed")
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()
    quiet_environment()
    step = round(1 / options.changed)

    with postgres_server() as server, tempfile.TemporaryDirectory(prefix="mocra-bench-") as scratch:
        bench = Bench(Path(scratch), create_database(server, "bench_pg_sink"))
        bench.duckdb(MODEL.format(rows=options.rows))
        bench.postgres("create schema bench")
        bench.publish("bench.seed", "seed")
        bench.duckdb(
            f"update analytics.accounts set abalance = abalance + 1 where aid % {step} = 0"
        )
        changed_rows = options.rows // step

        def mocra(attempt: int) -> int:
            target = bench.fresh_target(f"mocra_{attempt}")
            result = bench.publish(target, f"mocra_{attempt}")
            _check_changed(result.rows_written, changed_rows, "mocra-elt")
            return int(result.rows_read)

        def baseline(attempt: int) -> int:
            target = bench.fresh_target(f"by_hand_{attempt}")
            _check_changed(upsert_by_hand(bench, target, f"hand_{attempt}"), changed_rows, "COPY")
            return options.rows

        ours, rows = median_seconds(mocra, options.repeat)
        theirs, _ = median_seconds(baseline, options.repeat)
        print_comparison(
            f"Upsert into PostgreSQL, {rows:,} model rows of which {changed_rows:,} changed, "
            f"median of {options.repeat}",
            rows,
            ours,
            theirs,
            "COPY + INSERT ON CONFLICT by hand",
        )


def _check_changed(written: int, expected: int, path: str) -> None:
    if written != expected:
        raise SystemExit(f"{path} wrote {written} rows, expected the {expected} changed ones")


if __name__ == "__main__":
    main()
