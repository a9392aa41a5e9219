"""Column lineage of the reference project: marts resolve to raw columns through staging."""

from __future__ import annotations

import pytest
from lineage_helpers import origins, project_environment, reference_project, upstream

from mocra_elt.config.project import Project
from mocra_elt.lineage.build import build_lineage
from mocra_elt.lineage.graph import LineageGraph
from mocra_elt.lineage.manifest import manifest_path, read_manifest

MODELS = (
    "model.stg_flights",
    "model.stg_weather",
    "model.stg_airlines",
    "model.stg_airports",
    "model.int_departed_flights",
    "model.mart_daily_departure_delay",
    "model.mart_delay_weather",
)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    return reference_project(tmp_path_factory.mktemp("reference") / "data")


@pytest.fixture(scope="module")
def graph(project: Project) -> LineageGraph:
    with project_environment(project.data_dir):
        return build_lineage(project)


def test_graph_joins_pipelines_models_and_seeds(graph: LineageGraph) -> None:
    assert graph.parents("raw_flights.flights") == ["http:http://127.0.0.1:8765/flights"]
    assert graph.parents("raw_weather.weather") == ["files:.mocra/demo/weather/*.{parquet,csv}"]
    assert graph.parents("model.stg_flights") == ["raw_flights.flights"]
    assert graph.parents("model.stg_airlines") == ["seed.airlines"]
    assert set(graph.parents("model.mart_delay_weather")) == {
        "model.stg_flights",
        "model.stg_weather",
        "model.stg_airports",
    }
    assert graph.nodes["raw_flights.flights"].kind == "raw_table"
    assert (
        graph.nodes["raw_flights.flights"].unique_id == "source.mocra_reference.raw_flights.flights"
    )
    assert graph.nodes["raw_flights.flights"].pipelines == ["flights"]


def test_raw_columns_come_from_warehouse(graph: LineageGraph) -> None:
    weather = graph.nodes["raw_weather.weather"]

    assert weather.columns_from == "warehouse"
    assert "_source_file" in weather.columns
    assert weather.column_types["time_hour"] == "timestamp with time zone"


def test_every_model_column_resolves(graph: LineageGraph) -> None:
    for model in MODELS:
        node = graph.nodes[model]
        unresolved = [c.column for c in node.column_lineage.values() if c.status == "unresolved"]
        assert unresolved == [], f"{model} has unresolved columns {unresolved}"
        assert node.gaps == [], f"{model}: {node.gaps}"
        assert node.columns_from == "compiled SQL"


def test_derived_columns_match_documented_columns(graph: LineageGraph, project: Project) -> None:
    manifest = read_manifest(manifest_path(project))
    for model in MODELS:
        node = graph.nodes[model]
        documented = manifest.nodes[node.unique_id or ""].documented_columns
        assert node.columns == list(documented), model


def test_star_expands_through_ctes(graph: LineageGraph) -> None:
    # stg_flights ends in `select * from with_local_timestamps`, itself `select *, ...`.
    node = graph.nodes["model.stg_flights"]

    assert node.columns[0] == "flight_id"
    assert node.columns[-2:] == ["scheduled_departure_local", "departed_at_local"]
    assert upstream(graph, "model.stg_flights", "flight_id") == {
        "raw_flights.flights.id": "TRANSFORMATION"
    }
    assert upstream(graph, "model.stg_flights", "origin") == {
        "raw_flights.flights.origin": "IDENTITY"
    }


def test_macro_expression_reads_all_its_columns(graph: LineageGraph) -> None:
    assert origins(graph, "model.stg_flights", "departed_at_local") == {
        "raw_flights.flights.year",
        "raw_flights.flights.month",
        "raw_flights.flights.day",
        "raw_flights.flights.sched_dep_time",
        "raw_flights.flights.dep_delay",
    }


def test_case_column_reads_its_condition(graph: LineageGraph) -> None:
    assert upstream(graph, "model.stg_weather", "precipitation_intensity") == {
        "raw_weather.weather.precip": "TRANSFORMATION"
    }


def test_weather_mart_resolves_to_raw_columns(graph: LineageGraph) -> None:
    mart = "model.mart_delay_weather"

    assert origins(graph, mart, "avg_departure_delay_minutes") == {"raw_flights.flights.dep_delay"}
    assert origins(graph, mart, "precipitation_intensity") == {"raw_weather.weather.precip"}
    assert origins(graph, mart, "visibility_band") == {"raw_weather.weather.visib"}
    assert origins(graph, mart, "observed_hours") == {"raw_weather.weather.time_hour"}
    assert origins(graph, mart, "origin_name") == {"seed.airports.name"}
    assert origins(graph, mart, "flights_cancelled") == {"raw_flights.flights.dep_time"}


def test_weather_mart_goes_through_staging(graph: LineageGraph) -> None:
    mart = "model.mart_delay_weather"

    assert upstream(graph, mart, "origin") == {"model.stg_flights.origin": "IDENTITY"}
    assert upstream(graph, mart, "avg_departure_delay_minutes") == {
        "model.stg_flights.departure_delay_minutes": "AGGREGATION"
    }
    assert upstream(graph, mart, "precipitation_intensity") == {
        "model.stg_weather.precipitation_intensity": "TRANSFORMATION"
    }
    assert upstream(graph, mart, "origin_name") == {"model.stg_airports.airport_name": "IDENTITY"}


def test_count_star_counts_joined_rows(graph: LineageGraph) -> None:
    lineage = graph.nodes["model.mart_delay_weather"].column_lineage["flights_scheduled"]

    assert lineage.status == "resolved"
    assert lineage.upstream == []
    assert lineage.rows_of == ["model.stg_flights", "model.stg_weather"]


def test_run_id_literal_is_constant(graph: LineageGraph) -> None:
    lineage = graph.nodes["model.mart_daily_departure_delay"].column_lineage["_mocra_run_id"]

    assert lineage.status == "constant"
    assert lineage.upstream == []
    assert lineage.expression == "'manual'"


def test_daily_mart_joins_seeded_names(graph: LineageGraph) -> None:
    mart = "model.mart_daily_departure_delay"

    assert origins(graph, mart, "carrier_name") == {"seed.airlines.name"}
    assert origins(graph, mart, "max_departure_delay_minutes") == {"raw_flights.flights.dep_delay"}
    # The share divides by count(*) of departed flights: a row count, so no column of it.
    share = graph.nodes[mart].column_lineage["delayed_over_15_minutes_share"]
    assert origins(graph, mart, "delayed_over_15_minutes_share") == {
        "raw_flights.flights.dep_delay"
    }
    assert share.rows_of == ["model.int_departed_flights"]
