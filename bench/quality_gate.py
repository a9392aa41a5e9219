"""Time a quality gate through mocra-elt's engine against the same checks as plain DuckDB SQL.

    .venv/bin/python bench/quality_gate.py [--rows 1000000] [--repeat 3] [--batch-rows N]

Builds a table of ROWS flights-like rows in a temporary DuckDB file, then runs
not_null, unique, between and in_set rules on it twice: as a suite through
`mocra_elt.quality.gates.apply_gates` (Great Expectations on pandas, results
recorded), and as one DuckDB query that counts the failures of the same rules.
Prints the median of REPEAT runs of each and their ratio. `--batch-rows` forces
the batched path (row batches plus hash partitions for uniqueness).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

SUITE = """\
model: bench_flights
policy: block
rules:
  - not_null: [id, carrier, origin]
  - unique: id
  - between: dep_delay
    min: -120
    max: 1440
  - in_set: origin
    values: [EWR, JFK, LGA]
"""

SQL_CHECKS = """
select
    count(*) filter (where id is null) as id_nulls,
    count(*) filter (where carrier is null) as carrier_nulls,
    count(*) filter (where origin is null) as origin_nulls,
    count(id) - count(distinct id) as id_duplicates,
    count(*) filter (where dep_delay < -120 or dep_delay > 1440 or isnan(dep_delay))
        as delay_out_of_range,
    count(*) filter (where origin not in ('EWR', 'JFK', 'LGA')) as origin_not_in_set
from analytics.bench_flights
"""


def build_table(connection: object, rows: int) -> None:
    connection.execute("create schema if not exists analytics")  # type: ignore[attr-defined]
    connection.execute(  # type: ignore[attr-defined]
        f"""create or replace table analytics.bench_flights as
        select
            i as id,
            ['AA', 'B6', 'DL', 'EV', 'UA'][1 + (i % 5)] as carrier,
            ['EWR', 'JFK', 'LGA'][1 + (i % 3)] as origin,
            ((i * 7919) % 600)::double - 60 as dep_delay,
            date '2013-01-01' + (i % 365)::integer as flight_date
        from range({rows}) as r(i)"""
    )


def time_engine(folder: Path, warehouse: object, project: object, batch_rows: int | None) -> float:
    from mocra_elt.config.model import Pipeline
    from mocra_elt.quality.gates import apply_gates
    from mocra_elt.quality.suites import load_suites

    quality: dict[str, object] = {"suites": ["bench_flights"]}
    if batch_rows:
        quality["batch_rows"] = batch_rows
    pipeline = Pipeline.model_validate(
        {
            "name": "bench",
            "source": {"type": "files", "url": str(folder)},
            "load": {"table": "bench"},
            "quality": quality,
        }
    )
    suites = load_suites(project, ["bench_flights"], "bench")  # type: ignore[arg-type]
    with warehouse.connect() as connection:  # type: ignore[attr-defined]
        started = time.perf_counter()
        report = apply_gates(connection, project, pipeline, suites, "bench-run")  # type: ignore[arg-type]
        seconds = time.perf_counter() - started
    assert not report.blocked, "the generated data should pass every rule"
    return seconds


def time_sql(warehouse: object) -> float:
    with warehouse.connect() as connection:  # type: ignore[attr-defined]
        started = time.perf_counter()
        counts = connection.execute(SQL_CHECKS).fetchone()
        seconds = time.perf_counter() - started
    assert counts is not None and not any(counts), f"unexpected failures: {counts}"
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch-rows", type=int, default=None)
    arguments = parser.parse_args()
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

    from mocra_elt.config.project import Project
    from mocra_elt.load.warehouse import DuckDBWarehouse

    started = time.perf_counter()
    import great_expectations  # noqa: F401 - imported here to time it apart from the gate

    import_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="mocra-bench-") as name:
        folder = Path(name)
        (folder / "expectations").mkdir()
        (folder / "expectations" / "bench_flights.yml").write_text(SUITE)
        warehouse = DuckDBWarehouse(folder / "warehouse.duckdb")
        project = Project(root=folder, data_dir=folder / ".mocra", warehouse_path=warehouse.path)
        with warehouse.connect() as connection:
            build_table(connection, arguments.rows)

        engine_runs = [
            time_engine(folder, warehouse, project, arguments.batch_rows)
            for _ in range(arguments.repeat)
        ]
        sql_runs = [time_sql(warehouse) for _ in range(arguments.repeat)]

    engine = statistics.median(engine_runs)
    sql = statistics.median(sql_runs)
    mode = f"batches of {arguments.batch_rows} rows" if arguments.batch_rows else "memory budget"
    print(f"rows: {arguments.rows:,}, rules: not_null x3, unique, between, in_set ({mode})")
    print(f"great_expectations import (once, not in the gate): {import_seconds:.2f} s")
    print(
        f"mocra-elt gate (GE on pandas): {engine:.3f} s median of {arguments.repeat} "
        f"({arguments.rows / engine / 1e6:.2f} M rows/s)"
    )
    print(
        f"plain DuckDB SQL:              {sql:.3f} s median of {arguments.repeat} "
        f"({arguments.rows / sql / 1e6:.2f} M rows/s)"
    )
    print(f"ratio (gate / SQL): {engine / sql:.1f}x")


if __name__ == "__main__":
    main()
