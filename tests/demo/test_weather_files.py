"""The demo weather files, and the reference weather pipeline that loads them."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

from mocra_elt.cli.main import cli
from mocra_elt.config.loader import load_pipelines
from mocra_elt.config.project import Project
from mocra_elt.demo.nycflights import data_dir
from mocra_elt.demo.weather_files import publish_correction, write_weather_files
from mocra_elt.errors import ConfigError
from mocra_elt.load.warehouse import open_warehouse
from mocra_elt.runtime.environment import configure_environment
from mocra_elt.runtime.runner import RunResult, run_pipelines

REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCE_CSV = data_dir() / "weather.csv"
WEATHER_ROWS = 26_115
COLUMNS = [
    "origin",
    "year",
    "month",
    "day",
    "hour",
    "temp",
    "dewp",
    "humid",
    "wind_dir",
    "wind_speed",
    "wind_gust",
    "precip",
    "pressure",
    "visib",
    "time_hour",
]


def modification_times(folder: Path) -> dict[str, int]:
    return {path.name: path.stat().st_mtime_ns for path in sorted(folder.iterdir())}


def source_lines() -> list[str]:
    return SOURCE_CSV.read_text().splitlines()


# --- the writer -------------------------------------------------------------------------------


def test_writes_parquet_then_csv_months(tmp_path: Path) -> None:
    written = write_weather_files(tmp_path)

    names = [path.name for path in written]
    assert names[:6] == [f"weather_2013_{month:02d}.parquet" for month in range(1, 7)]
    assert names[6:] == [f"weather_2013_{month:02d}.csv" for month in range(7, 13)]
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(names)


def test_files_hold_every_source_row(tmp_path: Path) -> None:
    write_weather_files(tmp_path)

    parquet_rows = [pq.read_table(path) for path in sorted(tmp_path.glob("*.parquet"))]
    csv_lines = [path.read_text().splitlines() for path in sorted(tmp_path.glob("*.csv"))]
    assert (
        sum(table.num_rows for table in parquet_rows) + sum(len(lines) - 1 for lines in csv_lines)
        == WEATHER_ROWS
    )
    for table in parquet_rows:
        assert table.column_names == COLUMNS
        assert table.schema.field("time_hour").type == pa.timestamp("us", tz="UTC")

    # CSV months keep the source lines byte for byte, header included.
    header, *rows = source_lines()
    for month, lines in zip(range(7, 13), csv_lines, strict=True):
        assert lines[0] == header
        assert lines[1:] == [line for line in rows if int(line.split(",")[2]) == month]


def test_parquet_values_match_source(tmp_path: Path) -> None:
    write_weather_files(tmp_path, months=[3])

    march = pq.read_table(tmp_path / "weather_2013_03.parquet")
    source = pacsv.read_csv(SOURCE_CSV, convert_options=pacsv.ConvertOptions(null_values=["NA"]))
    source = source.filter(pc.equal(source.column("month"), 3))
    assert march.num_rows == source.num_rows == 2227
    assert march.column("temp").equals(source.column("temp"))
    assert march.column("wind_gust").null_count == source.column("wind_gust").null_count
    assert (
        march.column("time_hour")
        .cast(pa.timestamp("s", tz="UTC"))
        .equals(source.column("time_hour"))
    )


def test_rewrite_keeps_unchanged_files(tmp_path: Path) -> None:
    write_weather_files(tmp_path)
    before = modification_times(tmp_path)

    assert write_weather_files(tmp_path) == []
    assert modification_times(tmp_path) == before


def test_rewrite_replaces_changed_files_only(tmp_path: Path) -> None:
    write_weather_files(tmp_path)
    (tmp_path / "weather_2013_02.parquet").write_bytes(b"damaged")
    (tmp_path / "weather_2013_08.csv").write_text("origin\nEWR\n")
    before = modification_times(tmp_path)

    written = write_weather_files(tmp_path)

    assert [path.name for path in written] == ["weather_2013_02.parquet", "weather_2013_08.csv"]
    after = modification_times(tmp_path)
    assert {name for name in after if after[name] != before[name]} == {
        "weather_2013_02.parquet",
        "weather_2013_08.csv",
    }
    assert pq.read_table(tmp_path / "weather_2013_02.parquet").num_rows == 2010
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]


def test_month_subset_and_invalid_month(tmp_path: Path) -> None:
    written = write_weather_files(tmp_path, months=[1, 12])
    assert [path.name for path in written] == ["weather_2013_01.parquet", "weather_2013_12.csv"]

    with pytest.raises(ConfigError, match="month 13"):
        write_weather_files(tmp_path, months=[13])


def test_correction_shifts_temperature(tmp_path: Path) -> None:
    path = publish_correction(tmp_path, origin="LGA", day=date(2013, 8, 2), hours=[0, 1, 2])

    assert path.name == "weather_2013_08_02_LGA_correction.csv"
    header, *rows = path.read_text().splitlines()
    assert header == source_lines()[0]
    originals = [
        line.split(",")
        for line in source_lines()[1:]
        if line.startswith("LGA,2013,8,2,") and line.split(",")[4] in ("0", "1", "2")
    ]
    assert len(rows) == len(originals) == 3
    for row, original in zip(rows, originals, strict=True):
        fields = row.split(",")
        assert float(fields[5]) == pytest.approx(float(original[5]) + 1.8)
        assert fields[:5] + fields[6:] == original[:5] + original[6:]

    mtime = path.stat().st_mtime_ns
    assert publish_correction(tmp_path, origin="LGA", day=date(2013, 8, 2), hours=[0, 1, 2]) == path
    assert path.stat().st_mtime_ns == mtime


def test_correction_rejects_unknown_origin(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'SFO'"):
        publish_correction(tmp_path, origin="SFO")


def test_cli_write_weather(tmp_path: Path) -> None:
    folder = tmp_path / "weather"
    runner = CliRunner()

    first = runner.invoke(cli, ["demo", "write-weather", "--folder", str(folder)])
    second = runner.invoke(cli, ["demo", "write-weather", "--folder", str(folder)])

    assert first.exit_code == 0, first.output
    assert "Wrote 12 monthly weather files" in first.output
    assert second.exit_code == 0, second.output
    assert "Wrote 0 monthly weather files" in second.output
    assert len(list(folder.iterdir())) == 12


def test_cli_default_folder(project_dir: Path) -> None:
    result = CliRunner().invoke(cli, ["--project-dir", str(project_dir), "demo", "write-weather"])

    assert result.exit_code == 0, result.output
    assert len(list((project_dir / ".mocra" / "demo" / "weather").glob("weather_*"))) == 12


# --- the reference pipeline -------------------------------------------------------------------


def copy_expectations(project_dir: Path) -> None:
    shutil.copytree(REPO_ROOT / "expectations", project_dir / "expectations", dirs_exist_ok=True)


def weather_project(project_dir: Path, folder: Path) -> None:
    """Copy sources/weather.yml and its quality suites, reading `folder`, without dbt."""
    copy_expectations(project_dir)
    definition = yaml.safe_load((REPO_ROOT / "sources" / "weather.yml").read_text())
    definition["source"]["url"] = str(folder)
    definition.pop("transform")
    definition.pop("depends_on", None)
    text = yaml.safe_dump(definition, sort_keys=False)
    (project_dir / "sources" / "weather.yml").write_text(text)


def run_weather(project_dir: Path) -> RunResult:
    project = Project.discover(project_dir)
    configure_environment(project)
    results = run_pipelines(project, load_pipelines(project.sources_dir), open_warehouse(project))
    assert [result.pipeline for result in results] == ["weather"]
    assert results[0].succeeded, results[0].error
    return results[0]


def loaded(result: RunResult) -> int | None:
    return next(stage.rows_out for stage in result.stages if stage.stage == "load")


def warehouse_rows(project_dir: Path, sql: str) -> list[tuple[object, ...]]:
    with open_warehouse(Project.discover(project_dir)).connect() as connection:
        return list(connection.execute(sql).fetchall())


@pytest.mark.slow
def test_reference_pipeline_loads_all_weather(project_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "weather"
    write_weather_files(folder)
    weather_project(project_dir, folder)

    assert loaded(run_weather(project_dir)) == WEATHER_ROWS
    assert loaded(run_weather(project_dir)) == 0
    assert warehouse_rows(project_dir, "select count(*) from raw_weather.weather") == [
        (WEATHER_ROWS,)
    ]

    # Sums per origin, computed from the source CSV by a separate DuckDB connection.
    expected = duckdb.sql(
        "select origin, round(sum(temp), 4), count(wind_gust), min(time_hour), max(time_hour) "
        f"from read_csv('{SOURCE_CSV}', nullstr = 'NA') group by origin order by origin"
    ).fetchall()
    actual = warehouse_rows(
        project_dir,
        "select origin, round(sum(temp), 4), count(wind_gust), min(time_hour), max(time_hour) "
        "from raw_weather.weather group by origin order by origin",
    )
    assert actual == expected
    types = dict(
        warehouse_rows(
            project_dir,
            "select column_name, data_type from information_schema.columns "
            "where table_schema = 'raw_weather' and table_name = 'weather'",
        )
    )
    assert types["wind_dir"] == "DOUBLE"
    assert types["year"] == "BIGINT"
    assert types["time_hour"] == "TIMESTAMP WITH TIME ZONE"
    files = warehouse_rows(
        project_dir, "select count(distinct _source_file) from raw_weather.weather"
    )
    assert files == [(12,)]


@pytest.mark.slow
def test_reference_pipeline_merges_correction(project_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "weather"
    write_weather_files(folder, months=[7])
    weather_project(project_dir, folder)
    assert loaded(run_weather(project_dir)) == 2228
    before = warehouse_rows(
        project_dir,
        "select sum(temp) from raw_weather.weather where origin = 'JFK' "
        "and year = 2013 and month = 7 and day = 15 and hour between 12 and 17",
    )[0][0]

    correction = publish_correction(folder)
    assert loaded(run_weather(project_dir)) == 6

    assert warehouse_rows(project_dir, "select count(*) from raw_weather.weather") == [(2228,)]
    after = warehouse_rows(
        project_dir,
        "select sum(temp), min(_source_file), max(_source_file) from raw_weather.weather "
        "where origin = 'JFK' and year = 2013 and month = 7 and day = 15 "
        "and hour between 12 and 17",
    )[0]
    assert after[0] == pytest.approx(before + 6 * 1.8)
    assert after[1] == after[2] == correction.name


def test_reference_url_is_relative_to_project(project_dir: Path) -> None:
    # sources/weather.yml reads .mocra/demo/weather under the project root.
    write_weather_files(project_dir / ".mocra" / "demo" / "weather", months=[1])
    copy_expectations(project_dir)
    definition = yaml.safe_load((REPO_ROOT / "sources" / "weather.yml").read_text())
    definition.pop("transform")
    (project_dir / "sources" / "weather.yml").write_text(yaml.safe_dump(definition))

    assert loaded(run_weather(project_dir)) == 2226
