"""The reference project end to end, run as a user does: `mocra-elt demo run` in a copy."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest

from tests.transform.test_reference_models import (
    SourceData,
    assert_daily_matches,
    assert_weather_matches,
    expected_daily,
    expected_weather,
    is_dec_31,
    nycflights_data_dir,
    read_source_csv,
)

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
PROJECT_PARTS = ("sources", "dbt_project", "macros", "expectations", "profiles.yml")
FLIGHTS_TOTAL = 336_776
WEATHER_TOTAL = 26_115


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def copy_reference_project(root: Path) -> None:
    for part in PROJECT_PARTS:
        source = REPO_ROOT / part
        if source.is_dir():
            ignore = shutil.ignore_patterns("target", "logs", "dbt_packages", ".user.yml")
            shutil.copytree(source, root / part, ignore=ignore)
        else:
            shutil.copy(source, root / part)


def mocra(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("MOCRA_") and key != "DLT_DATA_DIR"
    }
    return subprocess.run(
        [sys.executable, "-m", "mocra_elt", *args],
        cwd=root,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )


def query(root: Path, sql: str) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(root / ".mocra" / "warehouse.duckdb"), read_only=True) as connection:
        return connection.execute(sql).fetchall()


def loaded_rows(root: Path, run_ids: list[str]) -> dict[str, int]:
    """Return rows loaded per pipeline by the given runs, from the audit tables."""
    placeholders = ", ".join(f"'{run_id}'" for run_id in run_ids)
    rows = query(
        root,
        "select r.pipeline, s.rows_out from mocra_audit.runs r join mocra_audit.stage_runs s "
        f"using (run_id) where s.stage = 'load' and r.run_id in ({placeholders})",
    )
    return {pipeline: rows_out for pipeline, rows_out in rows}


def newest_runs(root: Path, count: int) -> list[str]:
    rows = query(root, f"select run_id from mocra_audit.runs order by run_id desc limit {count}")
    return [row[0] for row in rows]


@pytest.fixture(scope="module")
def source_data() -> SourceData:
    data = nycflights_data_dir()
    flights = read_source_csv(data / "flights.csv.zip")
    flights.insert(0, "id", np.arange(1, len(flights) + 1, dtype="int64"))
    return SourceData(
        flights=flights,
        weather=read_source_csv(data / "weather.csv"),
        airlines=read_source_csv(data / "airlines.csv"),
        airports=read_source_csv(data / "airports.csv"),
    )


@pytest.fixture(scope="module")
def reference_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the reference project after its first `mocra-elt demo run`."""
    root = tmp_path_factory.mktemp("reference")
    copy_reference_project(root)
    port = free_port()
    flights_yml = root / "sources" / "flights.yml"
    flights_yml.write_text(flights_yml.read_text().replace(":8765", f":{port}"))
    root.joinpath("port").write_text(str(port))

    result = mocra(root, "demo", "run", "--port", str(port))

    assert result.returncode == 0, result.stdout + result.stderr
    return root


def read_marts(root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    path = root / ".mocra" / "warehouse.duckdb"
    with duckdb.connect(str(path), read_only=True) as connection:
        daily = connection.sql(
            "select * replace (cast(flight_date as varchar) as flight_date) "
            "from analytics.mart_daily_departure_delay"
        ).df()
        weather = connection.sql("select * from analytics.mart_delay_weather").df()
    return daily, weather


def test_first_run_loads_published_rows(reference_root: Path, source_data: SourceData) -> None:
    dec_31 = int(is_dec_31(source_data.flights).sum())

    assert query(reference_root, "select count(*) from raw_flights.flights") == [
        (FLIGHTS_TOTAL - dec_31,)
    ]
    assert query(reference_root, "select count(*) from raw_weather.weather") == [(WEATHER_TOTAL,)]
    assert query(reference_root, "select count(distinct id) from raw_flights.flights") == [
        (FLIGHTS_TOTAL - dec_31,)
    ]


def test_marts_match_source_files(reference_root: Path, source_data: SourceData) -> None:
    published = source_data.flights[~is_dec_31(source_data.flights)]
    daily, weather = read_marts(reference_root)

    assert_daily_matches(daily, expected_daily(source_data, published))
    assert_weather_matches(weather, expected_weather(source_data, published))


def test_rerun_then_publish_loads_exactly_new(reference_root: Path) -> None:
    port = reference_root.joinpath("port").read_text()

    rerun = mocra(reference_root, "demo", "run", "--port", port)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert loaded_rows(reference_root, newest_runs(reference_root, 2)) == {
        "flights": 0,
        "weather": 0,
    }

    before = query(reference_root, "select count(*) from raw_flights.flights")[0][0]
    published = mocra(reference_root, "demo", "publish", "--rows", "50")
    assert published.returncode == 0, published.stderr
    after_publish = mocra(reference_root, "demo", "run", "--port", port)
    assert after_publish.returncode == 0, after_publish.stdout + after_publish.stderr

    assert loaded_rows(reference_root, newest_runs(reference_root, 2)) == {
        "flights": 50,
        "weather": 0,
    }
    assert query(reference_root, "select count(*) from raw_flights.flights")[0][0] == before + 50


def test_dbt_build_by_hand(reference_root: Path) -> None:
    dbt = Path(sys.executable).parent / "dbt"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MOCRA_")}
    result = subprocess.run(
        [str(dbt), "build", "--project-dir", "dbt_project"],
        cwd=reference_root,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    run_ids = query(
        reference_root, "select distinct _mocra_run_id from analytics.mart_daily_departure_delay"
    )
    assert run_ids == [("manual",)]


def test_runs_show_lists_stages(reference_root: Path) -> None:
    run_id = newest_runs(reference_root, 1)[0]
    result = mocra(reference_root, "runs", "show", run_id[:22])

    assert result.returncode == 0, result.stderr
    for stage in ("extract", "load", "transform", "quality", "publish"):
        assert stage in result.stdout
    assert "watermark after: updated_at" in result.stdout
