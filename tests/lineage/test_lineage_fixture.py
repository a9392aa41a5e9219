"""Lineage of the shop fixture: an ephemeral model, a snapshot, a seed, an exposure and sinks."""

from __future__ import annotations

from pathlib import Path

import pytest
from lineage_helpers import origins, project_environment, shop_project, upstream

from mocra_elt.config.project import Project
from mocra_elt.errors import ConfigError
from mocra_elt.lineage.build import build_lineage
from mocra_elt.lineage.graph import LineageGraph
from mocra_elt.lineage.impact import column_impact
from mocra_elt.lineage.manifest import manifest_path

# Models that read relations dbt does not know, added to a copy of the fixture.
UNDECLARED_MODELS = {
    "legacy_orders.sql": "select order_id, amount * 2 as doubled_amount\n"
    "from some_schema.unknown_table",
    "legacy_everything.sql": "select * from some_schema.other_unknown",
    "legacy_join.sql": "select order_id, note\n"
    "from some_schema.unknown_table as a\n"
    "join some_schema.other_unknown as b using (order_id)",
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    return shop_project(tmp_path_factory.mktemp("shop") / "shop")


@pytest.fixture(scope="module")
def graph(project: Project) -> LineageGraph:
    with project_environment(project.data_dir):
        return build_lineage(project)


def test_manifest_is_compiled_on_demand(graph: LineageGraph, project: Project) -> None:
    assert manifest_path(project).exists()
    assert "model.customer_orders" in graph.nodes


def test_ephemeral_model_is_a_node(graph: LineageGraph) -> None:
    node = graph.nodes["model.stg_customers"]

    assert node.kind == "model"
    assert node.relation is None
    assert node.details["materialized"] == "ephemeral"
    assert graph.parents("model.stg_customers") == ["seed.customers"]
    assert set(graph.parents("model.customer_orders")) == {
        "model.stg_customers",
        "model.stg_orders",
    }


def test_lineage_goes_through_ephemeral_to_seed(graph: LineageGraph) -> None:
    assert upstream(graph, "model.customer_orders", "full_name") == {
        "model.stg_customers.full_name": "IDENTITY"
    }
    assert upstream(graph, "model.stg_customers", "full_name") == {
        "seed.customers.first_name": "TRANSFORMATION",
        "seed.customers.last_name": "TRANSFORMATION",
    }
    assert origins(graph, "model.customer_orders", "customer_id") == {"seed.customers.id"}
    assert origins(graph, "model.customer_orders", "country_code") == {"seed.customers.country"}


def test_seed_columns_from_warehouse_or_file(graph: LineageGraph) -> None:
    seed = graph.nodes["seed.customers"]

    assert seed.columns == ["id", "first_name", "last_name", "country", "updated_at"]
    assert seed.columns_from in ("seed file", "warehouse")


def test_snapshot_columns_resolve_to_seed(graph: LineageGraph) -> None:
    snapshot = "snapshot.customers_snapshot"

    assert graph.parents(snapshot) == ["model.stg_customers"]
    assert origins(graph, snapshot, "full_name") == {
        "seed.customers.first_name",
        "seed.customers.last_name",
    }
    assert graph.nodes[snapshot].columns[-4:] == [
        "dbt_scd_id",
        "dbt_updated_at",
        "dbt_valid_from",
        "dbt_valid_to",
    ]


def test_snapshot_meta_columns_are_generated(graph: LineageGraph) -> None:
    lineage = graph.nodes["snapshot.customers_snapshot"].column_lineage

    assert lineage["dbt_valid_from"].status == "generated"
    assert upstream(graph, "snapshot.customers_snapshot", "dbt_valid_from") == {
        "model.stg_customers.updated_at": "IDENTITY"
    }
    assert upstream(graph, "snapshot.customers_snapshot", "dbt_scd_id") == {
        "model.stg_customers.customer_id": "TRANSFORMATION",
        "model.stg_customers.updated_at": "TRANSFORMATION",
    }
    assert origins(graph, "model.customer_history", "valid_from") == {"seed.customers.updated_at"}


def test_aggregate_window_and_constant(graph: LineageGraph) -> None:
    lineage = graph.nodes["model.customer_orders"].column_lineage

    assert upstream(graph, "model.customer_orders", "total_amount") == {
        "model.stg_orders.amount": "AGGREGATION"
    }
    assert upstream(graph, "model.customer_orders", "amount_rank") == {
        "model.stg_orders.amount": "AGGREGATION"
    }
    assert lineage["order_count"].rows_of == ["model.stg_orders"]
    assert lineage["source_system"].status == "constant"
    assert origins(graph, "model.customer_orders", "total_amount") == {"raw_shop.orders.amount"}


def test_pipeline_source_and_sinks(graph: LineageGraph) -> None:
    assert graph.parents("raw_shop.orders") == ["files:data/*.csv"]
    assert graph.nodes["raw_shop.orders"].columns_from == "warehouse"
    assert set(graph.children("model.customer_orders")) == {
        "exposure.customer_dashboard",
        "postgres:shop.reporting.customer_orders",
        "object_storage:s3://exports/customer_orders",
    }
    sink = graph.nodes["postgres:shop.reporting.customer_orders"]
    assert sink.kind == "sink"
    assert sink.pipelines == ["orders"]
    assert upstream(graph, sink.id, "total_amount") == {
        "model.customer_orders.total_amount": "IDENTITY"
    }


def test_impact_reaches_sinks_and_exposure(graph: LineageGraph) -> None:
    impact = column_impact(graph, "seed.customers", "first_name")
    reached = {(item.node, item.column) for item in impact.columns}

    assert ("model.stg_customers", "full_name") in reached
    assert ("model.customer_orders", "full_name") in reached
    assert ("snapshot.customers_snapshot", "full_name") in reached
    assert ("model.customer_history", "full_name") in reached
    assert ("postgres:shop.reporting.customer_orders", "full_name") in reached
    assert ("model.customer_orders", "total_amount") not in reached
    assert impact.sinks == [
        "object_storage:s3://exports/customer_orders",
        "postgres:shop.reporting.customer_orders",
    ]
    assert impact.exposures == ["exposure.customer_dashboard"]


def test_resolve_accepts_names_and_ids(graph: LineageGraph) -> None:
    assert graph.resolve("customer_orders") == "model.customer_orders"
    assert graph.resolve("model.shop.customer_orders") == "model.customer_orders"
    assert graph.resolve("analytics.customer_orders") == "model.customer_orders"
    assert graph.resolve("raw_shop.orders") == "raw_shop.orders"
    with pytest.raises(ConfigError, match="no lineage node matches"):
        graph.resolve("no_such_model")
    with pytest.raises(ConfigError, match="has no column"):
        graph.resolve_column("customer_orders.no_such_column")


# --- relations dbt does not know -----------------------------------------------------------


@pytest.fixture(scope="module")
def undeclared_graph(tmp_path_factory: pytest.TempPathFactory) -> LineageGraph:
    project = shop_project(tmp_path_factory.mktemp("undeclared") / "shop")
    models = project.dbt_project_dir / "models" / "marts"
    for name, sql in UNDECLARED_MODELS.items():
        (models / name).write_text(sql + "\n")
    with project_environment(project.data_dir):
        return build_lineage(project)


def test_unknown_relation_is_reported(undeclared_graph: LineageGraph) -> None:
    node = undeclared_graph.nodes["model.legacy_orders"]
    relation = undeclared_graph.nodes["some_schema.unknown_table"]

    assert relation.kind == "relation"
    assert undeclared_graph.parents("model.legacy_orders") == ["some_schema.unknown_table"]
    assert any(
        "some_schema.unknown_table" in gap and "not a dbt source" in gap for gap in node.gaps
    )
    assert any("columns are unknown" in gap for gap in relation.gaps)


def test_unknown_relation_single_source_columns(undeclared_graph: LineageGraph) -> None:
    # With one relation in FROM, a column can only come from it, even with its columns unknown.
    assert upstream(undeclared_graph, "model.legacy_orders", "doubled_amount") == {
        "some_schema.unknown_table.amount": "TRANSFORMATION"
    }


def test_star_over_unknown_relation_is_unresolved(undeclared_graph: LineageGraph) -> None:
    node = undeclared_graph.nodes["model.legacy_everything"]

    assert node.columns == []
    assert any("selects * from some_schema.other_unknown" in gap for gap in node.gaps)


def test_ambiguous_column_is_unresolved(undeclared_graph: LineageGraph) -> None:
    lineage = undeclared_graph.nodes["model.legacy_join"].column_lineage["note"]

    assert lineage.status == "unresolved"
    assert lineage.upstream == []
    assert "cannot be tied to one relation" in (lineage.reason or "")


def test_known_models_unaffected_by_gaps(undeclared_graph: LineageGraph) -> None:
    assert origins(undeclared_graph, "model.customer_orders", "full_name") == {
        "seed.customers.first_name",
        "seed.customers.last_name",
    }


def test_manifest_refreshes_after_model_change(project: Project, tmp_path: Path) -> None:
    model = project.dbt_project_dir / "models" / "marts" / "customer_history.sql"
    original = model.read_text()
    model.write_text(original.replace("full_name,", "full_name as customer_name,"))
    try:
        with project_environment(project.data_dir):
            graph = build_lineage(project)
    finally:
        model.write_text(original)

    assert "customer_name" in graph.nodes["model.customer_history"].columns
    assert "full_name" not in graph.nodes["model.customer_history"].columns
