"""`mocra-elt lineage` in every format, and `mocra-elt lineage impact`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner, Result
from lineage_helpers import project_environment, shop_project

from mocra_elt.cli.lineage import lineage
from mocra_elt.cli.main import cli
from mocra_elt.config.project import Project
from mocra_elt.lineage.build import build_lineage

cli.add_command(lineage)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """The shop fixture with its manifest compiled once for every test in this module."""
    project = shop_project(tmp_path_factory.mktemp("cli") / "shop")
    with project_environment(project.data_dir):
        build_lineage(project, columns=True)
    return project


def run(project: Project, *arguments: str) -> Result:
    environment = {"MOCRA_DATA_DIR": str(project.data_dir)}
    return CliRunner().invoke(
        cli, ["--project-dir", str(project.root), "lineage", *arguments], env=environment
    )


def test_text_lists_every_node(project: Project) -> None:
    result = run(project)

    assert result.exit_code == 0, result.output
    assert result.output.startswith("11 nodes, 10 edges")
    assert "files:data/*.csv  [source system; pipeline orders]" in result.output
    assert "  -> raw_shop.orders (extract)" in result.output
    assert "  -> postgres:shop.reporting.customer_orders (publish)" in result.output


def test_text_upstream_tree(project: Project) -> None:
    result = run(project, "customer_orders", "--upstream")

    assert result.exit_code == 0, result.output
    assert "├── model.stg_customers\n│   └── seed.customers" in result.output
    assert "└── raw_shop.orders\n        └── files:data/*.csv" in result.output
    assert "downstream" not in result.output
    assert "postgres:" not in result.output


def test_text_downstream_tree(project: Project) -> None:
    result = run(project, "seed.customers", "--downstream")

    assert result.exit_code == 0, result.output
    assert "upstream" not in result.output
    assert "model.customer_history" in result.output
    assert "object_storage:s3://exports/customer_orders" in result.output


def test_text_column_trees(project: Project) -> None:
    result = run(project, "model.customer_orders", "--columns", "--upstream")

    assert result.exit_code == 0, result.output
    assert (
        "full_name\n"
        "└── model.stg_customers.full_name  (identity)\n"
        "    ├── seed.customers.first_name  (transformation)\n"
        "    └── seed.customers.last_name  (transformation)"
    ) in result.output
    assert "order_count  counts rows of model.stg_orders" in result.output
    assert "source_system  constant: the query computes it" in result.output


def test_depth_limits_tree(project: Project) -> None:
    result = run(project, "customer_orders", "--upstream", "--depth", "1")

    assert result.exit_code == 0, result.output
    assert "model.stg_customers" in result.output
    assert "seed.customers" not in result.output


def test_json_format(project: Project) -> None:
    result = run(project, "stg_customers", "--format", "json", "--columns")
    document = json.loads(result.output)
    nodes = {node["id"]: node for node in document["nodes"]}

    assert result.exit_code == 0
    assert document["focus"] == "model.stg_customers"
    assert set(nodes) == {
        "seed.customers",
        "model.stg_customers",
        "model.customer_orders",
        "snapshot.customers_snapshot",
        "model.customer_history",
        "exposure.customer_dashboard",
        "postgres:shop.reporting.customer_orders",
        "object_storage:s3://exports/customer_orders",
    }
    lineage = {c["column"]: c for c in nodes["model.stg_customers"]["column_lineage"]}
    assert lineage["customer_id"]["upstream"] == [
        {"node": "seed.customers", "column": "id", "transformation": "IDENTITY"}
    ]
    assert {
        "upstream": "seed.customers",
        "downstream": "model.stg_customers",
        "via": "ref",
        "pipeline": None,
    } in document["edges"]


def test_json_without_columns_omits_lineage(project: Project) -> None:
    document = json.loads(run(project, "--format", "json").output)

    assert "column_lineage" not in document["nodes"][0]
    assert len(document["edges"]) == 10


def test_mermaid_format(project: Project) -> None:
    result = run(project, "raw_shop.orders", "--downstream", "--format", "mermaid")
    lines = result.output.splitlines()

    assert result.exit_code == 0, result.output
    assert lines[0] == "flowchart LR"
    assert sum("-->" in line for line in lines) == 5
    assert any('[("raw_shop.orders")]' in line for line in lines)
    assert any('{{"postgres:shop.reporting.customer_orders"}}' in line for line in lines)


def test_mermaid_columns_use_subgraphs(project: Project) -> None:
    result = run(project, "stg_orders", "--columns", "--downstream", "--format", "mermaid")

    assert result.exit_code == 0, result.output
    assert '  subgraph n0["model.stg_orders"]' in result.output
    assert "-->|aggregation|" in result.output
    assert "-->|count|" in result.output
    assert result.output.count("subgraph") == result.output.count("  end")


def test_dot_format(project: Project) -> None:
    result = run(project, "--format", "dot")
    lines = result.output.strip().splitlines()

    assert result.exit_code == 0, result.output
    assert lines[0] == "digraph lineage {"
    assert lines[-1] == "}"
    assert sum(" -> " in line for line in lines) == 10
    assert any('shape=parallelogram, label="files:data/*.csv"' in line for line in lines)


def test_dot_columns_use_ports(project: Project) -> None:
    result = run(project, "stg_customers", "--columns", "--format", "dot")

    assert result.exit_code == 0, result.output
    assert 'port="c0"' in result.output
    assert ":e -> " in result.output
    assert ':w [label="identity"]' in result.output


def test_impact_text(project: Project) -> None:
    result = run(project, "impact", "customers.first_name")

    assert result.exit_code == 0, result.output
    assert result.output.startswith("impact of seed.customers.first_name")
    assert "full_name  <- seed.customers.first_name (transformation)" in result.output
    assert "sinks\n  object_storage:s3://exports/customer_orders\n" in result.output
    assert "exposures (they read affected models as a whole)" in result.output


def test_impact_json(project: Project) -> None:
    result = run(project, "impact", "raw_shop.orders.amount", "--format", "json")
    document = json.loads(result.output)
    columns = {(c["node"], c["column"]) for c in document["columns"]}

    assert document["column"] == "raw_shop.orders.amount"
    assert ("model.stg_orders", "amount") in columns
    assert ("model.customer_orders", "total_amount") in columns
    assert ("model.customer_orders", "customer_size") in columns
    assert ("postgres:shop.reporting.customer_orders", "amount_rank") in columns
    assert ("model.customer_orders", "full_name") not in columns
    assert document["exposures"] == ["exposure.customer_dashboard"]


def test_impact_diagrams(project: Project) -> None:
    mermaid = run(project, "impact", "stg_orders.amount", "--format", "mermaid")
    dot = run(project, "impact", "stg_orders.amount", "--format", "dot")

    assert mermaid.output.startswith("flowchart LR")
    assert "full_name" not in mermaid.output
    assert "total_amount" in mermaid.output
    assert dot.output.startswith("digraph lineage {")
    assert "total_amount" in dot.output


def test_unknown_node_is_usage_error(project: Project) -> None:
    result = run(project, "no_such_model")

    assert result.exit_code == 2
    assert "no lineage node matches 'no_such_model'" in result.output


def test_unknown_column_is_usage_error(project: Project) -> None:
    result = run(project, "impact", "customer_orders.nope")

    assert result.exit_code == 2
    assert "has no column 'nope'" in result.output


def test_direction_without_node_is_usage_error(project: Project) -> None:
    result = run(project, "--upstream")

    assert result.exit_code == 2
    assert "need a NODE" in result.output


def test_help_lists_commands(project: Project) -> None:
    result = run(project, "--help")

    assert result.exit_code == 0
    assert "impact" in result.output
    assert "show" in result.output


def test_cli_module_imports_no_heavy_library() -> None:
    code = (
        "import sys, mocra_elt.cli.lineage; "
        "print(sorted(m for m in ('sqlglot', 'dbt', 'duckdb', 'openlineage') if m in sys.modules))"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout

    assert output.strip() == "[]"
