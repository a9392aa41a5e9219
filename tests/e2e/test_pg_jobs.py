"""The PostgreSQL reference jobs end to end: `mocra-elt demo run --with-postgres`, twice.

Job 1 is the flights pipeline's sink: the mart mart_daily_departure_delay upserted
into reporting.daily_departure_delay. Job 2 is the ops_flights pipeline: the
table ops.flights read incrementally by updated_at, merged into raw_ops.flights
and exported to the S3 API server as Parquet partitioned by flight date.

Between the two runs, `demo publish` adds 10 flights to the API and re-publishes
10 with unchanged values, and `demo publish-db` inserts 10 rows into ops.flights
and corrects 10. The second run must touch exactly what those changes affect.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest

from mocra_elt.demo.flights_db import seed_flights
from mocra_elt.demo.flights_state import ensure_initial_state
from mocra_elt.load.postgres import PgConnectionInfo
from tests.conftest_services import SERVICE_ENV, PgDatabase, PostgresServer, S3Server
from tests.e2e.test_reference_run import copy_reference_project, free_port

pytestmark = pytest.mark.slow

# The first flights of flights.csv, for both the API and ops.flights: 22 days, with
# 2013-01-23 held back for the publishes.
LIMIT_ROWS = 20_000
CHANGED = 10
EXPORT_PREFIX = "ops_flights"
MANIFEST = "_mocra_manifest.json"
MART_COUNT = "select count(*) from analytics.mart_daily_departure_delay"


@dataclass
class JobsRun:
    """A reference project after two `demo run --with-postgres`, and what changed in between."""

    root: Path
    database: PgDatabase
    s3: S3Server
    bucket: str
    environment: dict[str, str]
    first: dict[str, str] = field(default_factory=dict)
    second: dict[str, str] = field(default_factory=dict)
    api_ids_before: set[int] = field(default_factory=set)
    mart_rows_before: int = 0
    db_changed_ids: set[int] = field(default_factory=set)
    sink_before: dict[tuple[Any, ...], tuple[Any, ...]] = field(default_factory=dict)
    sink_after: dict[tuple[Any, ...], tuple[Any, ...]] = field(default_factory=dict)
    objects_before: dict[str, tuple[str, str]] = field(default_factory=dict)
    objects_after: dict[str, tuple[str, str]] = field(default_factory=dict)

    def mocra(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "mocra_elt", *args],
            cwd=self.root,
            env=self.environment,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result

    def warehouse(self, sql: str) -> list[tuple[Any, ...]]:
        path = self.root / ".mocra" / "warehouse.duckdb"
        with duckdb.connect(str(path), read_only=True) as connection:
            return connection.execute(sql).fetchall()

    def newest_runs(self) -> dict[str, str]:
        rows = self.warehouse(
            "select pipeline, max(run_id) from mocra_audit.runs group by pipeline"
        )
        return dict(rows)

    @property
    def export_root(self) -> str:
        return f"{self.bucket}/{EXPORT_PREFIX}"


@contextmanager
def fresh_database(server: PostgresServer) -> Iterator[PgDatabase]:
    name = f"test_{uuid.uuid4().hex[:12]}"
    admin = server.connect("postgres")
    try:
        admin.cursor().execute(f"create database {name}")
        yield PgDatabase(server, name)
        admin.cursor().execute(f"drop database {name} with (force)")
    finally:
        admin.close()


def sink_rows(database: PgDatabase) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    """Return reporting.daily_departure_delay by key: (flights_scheduled, _mocra_run_id)."""
    rows = database.query(
        "select flight_date, carrier_code, origin, flights_scheduled, _mocra_run_id "
        "from reporting.daily_departure_delay"
    )
    return {row[:3]: row[3:] for row in rows}


def object_listing(s3: S3Server, root: str) -> dict[str, tuple[str, str]]:
    """Return each object under root with its ETag and last-modified time."""
    listing = s3.filesystem().find(root, detail=True)
    return {
        path.removeprefix(root + "/"): (info["ETag"], str(info["LastModified"]))
        for path, info in listing.items()
    }


def prepare_project(root: Path, bucket: str, database: PgDatabase) -> None:
    """Copy the reference project onto a free API port and a fresh bucket, with small data."""
    copy_reference_project(root)
    port = free_port()
    flights_yml = root / "sources" / "flights.yml"
    flights_yml.write_text(flights_yml.read_text().replace(":8765", f":{port}"))
    # The Kafka pipeline has tests of its own; these cover the PostgreSQL jobs.
    (root / "sources" / "flight_events.yml").unlink()
    ops_yml = root / "sources" / "ops_flights.yml"
    ops_yml.write_text(ops_yml.read_text().replace("s3://mocra-demo/", f"s3://{bucket}/"))
    root.joinpath("port").write_text(str(port))

    ensure_initial_state(root / ".mocra" / "demo" / "flights_api", limit_rows=LIMIT_ROWS)
    server = database.server
    info = PgConnectionInfo(server.host, server.port, server.user, server.password, database.name)
    assert seed_flights(info, limit_rows=LIMIT_ROWS) > 0


def job_environment(database: PgDatabase) -> dict[str, str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("MOCRA_") and key != "DLT_DATA_DIR"
    }
    services = {
        key: value for key, value in SERVICE_ENV.items() if key.startswith(("MOCRA_S3_", "AWS_"))
    }
    return environment | services | database.env()


@pytest.fixture(scope="module")
def jobs(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer, s3_server: S3Server
) -> Iterator[JobsRun]:
    with fresh_database(postgres_server) as database:
        bucket = f"test-{uuid.uuid4().hex[:12]}"
        s3_server.filesystem().mkdir(bucket)
        root = tmp_path_factory.mktemp("pg_jobs")
        prepare_project(root, bucket, database)
        state = JobsRun(root, database, s3_server, bucket, job_environment(database))
        port = root.joinpath("port").read_text()

        state.mocra("demo", "run", "--with-postgres", "--port", port)
        state.first = state.newest_runs()
        state.sink_before = sink_rows(database)
        state.mart_rows_before = state.warehouse(MART_COUNT)[0][0]
        state.objects_before = object_listing(s3_server, state.export_root)
        state.api_ids_before = {
            row[0] for row in state.warehouse("select id from raw_flights.flights")
        }

        state.mocra("demo", "publish", "--rows", str(CHANGED), "--updates", str(CHANGED))
        state.mocra("demo", "publish-db", "--rows", str(CHANGED), "--updates", str(CHANGED))
        state.db_changed_ids = {
            row[0]
            for row in database.query(
                "select id from ops.flights where updated_at = (select max(updated_at) "
                "from ops.flights)"
            )
        }
        state.mocra("demo", "run", "--with-postgres", "--port", port)
        state.second = state.newest_runs()
        state.sink_after = sink_rows(database)
        state.objects_after = object_listing(s3_server, state.export_root)
        yield state


def rows_loaded_by(jobs: JobsRun, table: str, run_id: str) -> set[int]:
    rows = jobs.warehouse(f"select id from {table} where _mocra_run_id = '{run_id}'")
    return {row[0] for row in rows}


# --- both runs --------------------------------------------------------------------------------


def test_each_run_ran_every_pipeline(jobs: JobsRun) -> None:
    assert sorted(jobs.first) == ["flights", "ops_flights", "weather"]
    for pipeline in jobs.first:
        assert jobs.second[pipeline] > jobs.first[pipeline]
    statuses = jobs.warehouse("select distinct status from mocra_audit.runs")
    assert statuses == [("succeeded",)]


# --- job 1: flights API -> mart -> PostgreSQL ----------------------------------------------------


def test_first_run_publishes_whole_mart(jobs: JobsRun) -> None:
    assert len(jobs.sink_before) == jobs.mart_rows_before
    assert jobs.mart_rows_before > 600
    assert {run_id for _, run_id in jobs.sink_before.values()} == {jobs.first["flights"]}


def test_second_run_loads_exactly_published_flights(jobs: JobsRun) -> None:
    reloaded = rows_loaded_by(jobs, "raw_flights.flights", jobs.second["flights"])

    assert len(reloaded) == 2 * CHANGED
    assert len(reloaded - jobs.api_ids_before) == CHANGED


def test_sink_changes_only_rows_of_new_flights(jobs: JobsRun) -> None:
    new_ids = rows_loaded_by(jobs, "raw_flights.flights", jobs.second["flights"])
    new_ids -= jobs.api_ids_before
    id_list = ", ".join(map(str, sorted(new_ids)))
    affected = set(
        jobs.warehouse(
            "select distinct make_date(cast(year as integer), cast(month as integer), "
            "cast(day as integer)), carrier, origin from raw_flights.flights "
            f"where id in ({id_list})"
        )
    )
    changed = {
        key for key, (_, run_id) in jobs.sink_after.items() if run_id == jobs.second["flights"]
    }

    # The re-published flights kept their values, so only the new flights' mart rows change.
    assert changed == affected
    assert len(jobs.sink_after) == len(jobs.sink_before) + len(affected - set(jobs.sink_before))
    assert len(jobs.sink_after) == jobs.warehouse(MART_COUNT)[0][0]
    unchanged = {key: row for key, row in jobs.sink_after.items() if key not in changed}
    assert unchanged == {key: jobs.sink_before[key] for key in unchanged}


# --- job 2: ops.flights -> raw_ops.flights -> Parquet on S3 ---------------------------------


def test_second_run_reads_only_changed_source_rows(jobs: JobsRun) -> None:
    loaded = rows_loaded_by(jobs, "raw_ops.flights", jobs.second["ops_flights"])
    source_count = jobs.database.query("select count(*) from ops.flights")[0][0]

    assert len(jobs.db_changed_ids) == 2 * CHANGED
    assert loaded == jobs.db_changed_ids
    assert jobs.warehouse("select count(*) from raw_ops.flights")[0][0] == source_count


def test_export_rewrites_only_changed_days(jobs: JobsRun) -> None:
    id_list = ", ".join(map(str, sorted(jobs.db_changed_ids)))
    days = jobs.database.query(
        f"select distinct flight_date::text from ops.flights where id in ({id_list})"
    )
    expected = {f"dt={day}/part-00000.parquet" for (day,) in days}
    data_files = [path for path in jobs.objects_after if path != MANIFEST]
    changed = {
        path for path in data_files if jobs.objects_after[path] != jobs.objects_before.get(path)
    }

    # 22 days in the first run; the inserted flights add the held-back 2013-01-23.
    assert len(jobs.objects_before) == 22 + 1
    assert len(data_files) == 23
    assert changed == expected
    assert 1 < len(changed) < len(data_files)


def test_export_holds_changed_rows_once(jobs: JobsRun) -> None:
    fs = jobs.s3.filesystem()
    run_id = jobs.second["ops_flights"]
    ids_by_run: list[int] = []
    total = 0
    for path in jobs.objects_after:
        if path == MANIFEST:
            continue
        with fs.open(f"{jobs.export_root}/{path}", "rb") as handle:
            table = pq.read_table(handle, columns=["id", "_mocra_run_id"])
        total += table.num_rows
        rows = table.to_pylist()
        ids_by_run += [row["id"] for row in rows if row["_mocra_run_id"] == run_id]

    assert sorted(ids_by_run) == sorted(jobs.db_changed_ids)
    assert total == jobs.database.query("select count(*) from ops.flights")[0][0]


# --- metrics ------------------------------------------------------------------------------------


def test_metrics_cover_both_jobs(jobs: JobsRun) -> None:
    output = jobs.mocra("metrics", "--format", "json").stdout
    entries = {(entry["pipeline"], entry["stage"]): entry for entry in json.loads(output)}

    for pipeline in ("flights", "ops_flights"):
        run = entries[(pipeline, None)]
        assert run["runs"] == 2
        assert run["success_rate"] == 1.0
        assert run["p50_seconds"] > 0
        assert run["p95_seconds"] >= run["p50_seconds"]
        assert run["rows_per_second"] > 0
        assert run["retries"] == 0
        assert run["dead_letters"] == 0
        publish = entries[(pipeline, "publish")]
        assert publish["succeeded"] == 2
        assert publish["rows_per_second"] > 0
