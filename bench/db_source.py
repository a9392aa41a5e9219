"""PostgreSQL table into DuckDB: a mocra-elt `db` pipeline against COPY read into Arrow by hand.

    .venv/bin/python bench/db_source.py [--scale 10] [--repeat 3]

Fills a fresh database with `pgbench -i -s SCALE` (SCALE x 100,000 rows in
pgbench_accounts: four columns, about 120 bytes a row) on the server in
MOCRA_PG_*, or on a throwaway one that scripts/services.sh starts and stops.
Then, in the same process and from the same table, it times:

- mocra-elt: an append pipeline of type `db` into a fresh DuckDB warehouse
  (ADBC binary COPY into Arrow batches, dlt normalize and load, audit rows);
- baseline: psycopg2 `COPY (SELECT ...) TO STDOUT (FORMAT csv)` into memory,
  parsed into one Arrow table by pyarrow.csv; nothing is written anywhere.

It prints the median of REPEAT runs of each, rows/s and the ratio. One more
line times the baseline followed by `CREATE TABLE AS` of its Arrow table in
DuckDB: the mocra-elt path's work without dlt and the audit rows.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    make_project,
    median_seconds,
    print_comparison,
    quiet_environment,
    run_project,
)
from bench.pg_common import DB_PIPELINE, create_database, pgbench_init, postgres_server  # noqa: E402

COPY_QUERY = "copy (select * from public.pgbench_accounts) to stdout (format csv)"
COLUMNS = ["aid", "bid", "abalance", "filler"]


def copy_to_arrow(info: Any) -> Any:
    """Read pgbench_accounts with text COPY and parse it into an Arrow table."""
    import psycopg2
    import pyarrow.csv as pcsv

    buffer = io.BytesIO()
    with psycopg2.connect(**info.dbapi_kwargs()) as connection, connection.cursor() as cursor:
        cursor.copy_expert(COPY_QUERY, buffer)
    connection.close()
    buffer.seek(0)
    options = pcsv.ReadOptions(column_names=COLUMNS)
    return pcsv.read_csv(buffer, read_options=options)


def load_into_duckdb(table: Any, path: Path) -> None:
    import duckdb

    with duckdb.connect(str(path)) as connection:
        connection.register("accounts_arrow", table)
        connection.execute("create table accounts as select * from accounts_arrow")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=10, help="pgbench scale: 100,000 rows each")
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()
    quiet_environment()

    with postgres_server() as server, tempfile.TemporaryDirectory(prefix="mocra-bench-") as scratch:
        info = create_database(server, f"bench_db_source_s{options.scale}")
        started = time.perf_counter()
        pgbench_init(info, options.scale)
        print(f"pgbench -i -s {options.scale}: {time.perf_counter() - started:.1f} s")
        scratch_dir = Path(scratch)

        def mocra(attempt: int) -> int:
            body = DB_PIPELINE.format(database=info.database)
            project = make_project(scratch_dir / f"project_{attempt}", "accounts", body)
            return run_project(project)

        def baseline(attempt: int) -> int:
            return int(copy_to_arrow(info).num_rows)

        def baseline_into_duckdb(attempt: int) -> int:
            table = copy_to_arrow(info)
            load_into_duckdb(table, scratch_dir / f"baseline_{attempt}.duckdb")
            return int(table.num_rows)

        ours, rows = median_seconds(mocra, options.repeat)
        theirs, baseline_rows = median_seconds(baseline, options.repeat)
        with_duckdb, _ = median_seconds(baseline_into_duckdb, options.repeat)
        expected = options.scale * 100_000
        if rows != expected or baseline_rows != expected:
            raise SystemExit(
                f"row counts differ: {expected} expected, mocra-elt {rows}, COPY {baseline_rows}"
            )
        print_comparison(
            f"PostgreSQL pgbench_accounts -> DuckDB, {rows:,} rows, median of {options.repeat}",
            rows,
            ours,
            theirs,
            "COPY TO STDOUT -> pyarrow.csv",
        )
        print(
            f"{'COPY -> pyarrow.csv -> DuckDB table':<34} {with_duckdb:>9.2f} "
            f"{rows / with_duckdb:>12,.0f}  (ratio {with_duckdb / ours:.2f})"
        )


if __name__ == "__main__":
    main()
