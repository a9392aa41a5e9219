"""Per-run lineage in mocra_audit.run_lineage, and the OpenLineage events of a run."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import duckdb
import jsonschema
import pytest
from click.testing import CliRunner, Result
from lineage_helpers import project_environment, shop_project

from mocra_elt.cli.lineage import lineage
from mocra_elt.cli.main import cli
from mocra_elt.config.loader import load_pipelines
from mocra_elt.config.model import Pipeline
from mocra_elt.config.project import Project
from mocra_elt.lineage.openlineage import emit_run_event, openlineage_run_id
from mocra_elt.lineage.runs import built_nodes, read_run_lineage, record_run_lineage
from mocra_elt.load.warehouse import DuckDBWarehouse
from mocra_elt.transform.dbt import run_build

RUN_ID = "20240301T101500123Z-0a1b2c3d"
SCHEMA_FILE = Path(__file__).resolve().parent / "fixtures" / "openlineage_run_event.schema.json"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Build the orders pipeline's selection with dbt, then record the run's lineage."""
    project = shop_project(tmp_path_factory.mktemp("runs") / "shop")
    pipeline = load_pipelines(project.sources_dir)["orders"]
    warehouse = DuckDBWarehouse(project.warehouse_path)
    with project_environment(project.data_dir):
        assert pipeline.transform is not None
        run_build(project, pipeline.transform, RUN_ID, pipeline.name)
        summary = record_run_lineage(project, warehouse, RUN_ID, pipeline)
    return {"project": project, "pipeline": pipeline, "warehouse": warehouse, "summary": summary}


def stored(recorded: dict[str, Any], sql: str) -> list[tuple[Any, ...]]:
    connection = duckdb.connect(str(recorded["warehouse"].path), read_only=True)
    try:
        return connection.execute(sql, [RUN_ID]).fetchall()
    finally:
        connection.close()


def test_summary_lists_built_nodes(recorded: dict[str, Any]) -> None:
    summary = recorded["summary"]

    assert summary["built"] == ["model.shop.customer_orders", "seed.shop.customers"]
    assert summary["inputs"] == ["files:data/*.csv"]
    assert summary["outputs"] == [
        "model.customer_orders",
        "object_storage:s3://exports/customer_orders",
        "postgres:shop.reporting.customer_orders",
        "raw_shop.orders",
        "seed.customers",
    ]
    assert summary["unresolved"] == []


def test_rows_store_node_roles(recorded: dict[str, Any]) -> None:
    rows = stored(
        recorded,
        "select node_id, role from mocra_audit.run_lineage where run_id = ? and kind = 'node'",
    )

    assert dict(rows) == {
        "files:data/*.csv": "input",
        "raw_shop.orders": "output",
        "seed.customers": "output",
        "model.stg_customers": "ephemeral",
        "model.stg_orders": "ephemeral",
        "model.customer_orders": "output",
        "postgres:shop.reporting.customer_orders": "output",
        "object_storage:s3://exports/customer_orders": "output",
    }


def test_rows_store_column_lineage(recorded: dict[str, Any]) -> None:
    rows = stored(
        recorded,
        "select node_id, column_name, upstream_node_id, upstream_column, transformation, status "
        "from mocra_audit.run_lineage where run_id = ? and kind = 'column'",
    )

    assert (
        "model.customer_orders",
        "full_name",
        "model.stg_customers",
        "full_name",
        "IDENTITY",
        "resolved",
    ) in rows
    assert (
        "model.stg_customers",
        "full_name",
        "seed.customers",
        "first_name",
        "TRANSFORMATION",
        "resolved",
    ) in rows
    assert (
        "model.customer_orders",
        "order_count",
        "model.stg_orders",
        None,
        "ROWS",
        "resolved",
    ) in rows
    assert ("model.customer_orders", "source_system", None, None, None, "constant") in rows
    assert ("raw_shop.orders", "amount", "files:data/*.csv", None, None, "loaded") in rows


def test_rows_store_edges_and_schema(recorded: dict[str, Any]) -> None:
    edges = stored(
        recorded,
        "select upstream_node_id, node_id, transformation from mocra_audit.run_lineage "
        "where run_id = ? and kind = 'edge'",
    )
    schema = stored(
        recorded,
        "select column_name, position, data_type from mocra_audit.run_lineage "
        "where run_id = ? and kind = 'schema' and node_id = 'model.customer_orders' "
        "order by position",
    )

    assert ("files:data/*.csv", "raw_shop.orders", "extract") in edges
    assert ("model.stg_customers", "model.customer_orders", "ref") in edges
    assert ("model.customer_orders", "postgres:shop.reporting.customer_orders", "publish") in edges
    assert [name for name, _, _ in schema][:3] == ["customer_id", "full_name", "country_code"]
    assert schema[0][1] == 1
    assert dict((name, kind) for name, _, kind in schema)["total_amount"] == "double"


def test_recording_again_replaces_rows(recorded: dict[str, Any]) -> None:
    before = stored(recorded, "select count(*) from mocra_audit.run_lineage where run_id = ?")
    with project_environment(recorded["project"].data_dir):
        record_run_lineage(recorded["project"], recorded["warehouse"], RUN_ID, recorded["pipeline"])
    after = stored(recorded, "select count(*) from mocra_audit.run_lineage where run_id = ?")

    assert before == after
    assert before[0][0] > 0


def test_built_nodes_fall_back_to_dbt_ls(recorded: dict[str, Any]) -> None:
    project, pipeline = recorded["project"], recorded["pipeline"]
    with project_environment(project.data_dir):
        listed = built_nodes(project, pipeline, "another-run")

    assert listed == recorded["summary"]["built"]


# --- OpenLineage events ----------------------------------------------------------------------


def validate(event: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    errors = sorted(validator.iter_errors(event), key=lambda error: list(error.path))
    assert errors == [], [f"{list(e.path)}: {e.message}" for e in errors]


def emit_all(recorded: dict[str, Any]) -> list[dict[str, Any] | None]:
    project: Project = recorded["project"]
    pipeline: Pipeline = recorded["pipeline"]
    try:
        raise RuntimeError("the publish stage failed")
    except RuntimeError as error:
        failure = error
    return [
        emit_run_event(project, pipeline, RUN_ID, "START", warehouse=recorded["warehouse"]),
        emit_run_event(project, pipeline, RUN_ID, "COMPLETE", warehouse=recorded["warehouse"]),
        emit_run_event(project, pipeline, RUN_ID, "FAIL", failure, warehouse=recorded["warehouse"]),
    ]


def test_file_events_validate_against_schema(
    recorded: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events_file = tmp_path / "events.jsonl"
    monkeypatch.setenv("MOCRA_OPENLINEAGE_FILE", str(events_file))

    returned = emit_all(recorded)
    lines = [json.loads(line) for line in events_file.read_text().splitlines()]

    assert [event["eventType"] for event in lines] == ["START", "COMPLETE", "FAIL"]
    assert lines == returned
    for event in lines:
        validate(event)
    assert {event["run"]["runId"] for event in lines} == {openlineage_run_id(RUN_ID)}
    assert {event["job"]["name"] for event in lines} == {"orders"}


def test_events_carry_inputs_outputs_and_facets(
    recorded: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOCRA_OPENLINEAGE_FILE", str(tmp_path / "events.jsonl"))
    start, complete, fail = emit_all(recorded)
    assert start is not None
    assert complete is not None
    assert fail is not None
    warehouse = f"duckdb://{recorded['project'].warehouse_path}"
    outputs = {(d["namespace"], d["name"]): d for d in complete["outputs"]}

    assert [d["name"] for d in start["outputs"]] == ["warehouse.raw_shop.orders"]
    assert complete["inputs"][0]["namespace"] == "file"
    assert complete["inputs"][0]["name"].endswith("/data/*.csv")
    assert ("postgres://127.0.0.1:5432", "shop.reporting.customer_orders") in outputs
    assert ("s3://exports", "customer_orders") in outputs
    orders = outputs[(warehouse, "warehouse.analytics.customer_orders")]
    fields = orders["facets"]["columnLineage"]["fields"]
    assert [(f["name"], f["field"]) for f in fields["full_name"]["inputFields"]] == [
        ("warehouse.analytics.customers", "first_name"),
        ("warehouse.analytics.customers", "last_name"),
    ]
    transformation = fields["total_amount"]["inputFields"][0]["transformations"][0]
    assert transformation == {"type": "DIRECT", "subtype": "AGGREGATION"}
    assert orders["facets"]["schema"]["fields"][0]["name"] == "customer_id"
    assert fail["run"]["facets"]["errorMessage"]["message"] == "the publish stage failed"
    assert "RuntimeError" in fail["run"]["facets"]["errorMessage"]["stackTrace"]


def test_events_default_to_data_dir(recorded: dict[str, Any]) -> None:
    project: Project = recorded["project"]
    emit_run_event(project, recorded["pipeline"], RUN_ID, "START", warehouse=recorded["warehouse"])

    events = project.data_dir / "openlineage" / "events.jsonl"
    assert json.loads(events.read_text().splitlines()[-1])["eventType"] == "START"


def test_disabled_sends_nothing(
    recorded: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOCRA_OPENLINEAGE_DISABLED", "true")
    monkeypatch.setenv("MOCRA_OPENLINEAGE_FILE", str(tmp_path / "events.jsonl"))

    assert emit_run_event(recorded["project"], recorded["pipeline"], RUN_ID, "START") is None
    assert not (tmp_path / "events.jsonl").exists()


class LineageReceiver(BaseHTTPRequestHandler):
    received: list[tuple[str, dict[str, str], dict[str, Any]]] = []

    def do_POST(self) -> None:  # noqa: N802 - the name http.server dispatches to
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, dict(self.headers), json.loads(body)))
        self.send_response(201)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[str, dict[str, str], dict[str, Any]]]]]:
    received: list[tuple[str, dict[str, str], dict[str, Any]]] = []
    handler = type("Handler", (LineageReceiver,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_http_transport_posts_events(
    recorded: dict[str, Any],
    receiver: tuple[str, list[tuple[str, dict[str, str], dict[str, Any]]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, received = receiver
    monkeypatch.setenv("MOCRA_OPENLINEAGE_URL", url)
    monkeypatch.setenv("MOCRA_OPENLINEAGE_API_KEY", "test-key")
    default_file = recorded["project"].data_dir / "openlineage" / "events.jsonl"
    lines_before = default_file.read_text().count("\n") if default_file.exists() else 0

    returned = emit_all(recorded)

    assert [path for path, _, _ in received] == ["/api/v1/lineage"] * 3
    assert [body for _, _, body in received] == returned
    assert received[0][1]["Authorization"] == "Bearer test-key"
    for _, _, body in received:
        validate(body)
    lines_after = default_file.read_text().count("\n") if default_file.exists() else 0
    assert lines_after == lines_before, "with only a URL set, no event goes to the file"


def test_unreachable_endpoint_only_warns(
    recorded: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), LineageReceiver)
    port = server.server_address[1]
    server.server_close()
    monkeypatch.setenv("MOCRA_OPENLINEAGE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MOCRA_OPENLINEAGE_TIMEOUT", "1")

    with caplog.at_level(logging.WARNING, logger="mocra_elt.lineage.openlineage"):
        event = emit_run_event(recorded["project"], recorded["pipeline"], RUN_ID, "START")

    assert event is not None
    assert "cannot send the OpenLineage START event" in caplog.text


def test_read_run_lineage_of_unknown_run(recorded: dict[str, Any]) -> None:
    assert read_run_lineage(recorded["warehouse"], "no-such-run") == []


def test_invalid_timeout_only_warns(
    recorded: dict[str, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MOCRA_OPENLINEAGE_TIMEOUT", "soon")

    with caplog.at_level(logging.WARNING, logger="mocra_elt.lineage.openlineage"):
        event = emit_run_event(recorded["project"], recorded["pipeline"], RUN_ID, "START")

    assert event is None
    assert "MOCRA_OPENLINEAGE_TIMEOUT must be a number of seconds" in caplog.text


def run_command(recorded: dict[str, Any], *arguments: str) -> Result:
    cli.add_command(lineage)
    project: Project = recorded["project"]
    return CliRunner().invoke(
        cli,
        ["--project-dir", str(project.root), "lineage", "run", *arguments],
        env={"MOCRA_DATA_DIR": str(project.data_dir)},
    )


def test_run_command_shows_stored_lineage(recorded: dict[str, Any]) -> None:
    result = run_command(recorded, RUN_ID[:12], "--columns")

    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"run {RUN_ID} (pipeline orders)")
    assert "inputs\n  files:data/*.csv\n" in result.output
    assert "  files:data/*.csv -> raw_shop.orders (extract)" in result.output
    assert (
        "  model.customer_orders.full_name <- model.stg_customers.full_name (identity)"
        in result.output
    )
    assert "  model.customer_orders.order_count counts rows of model.stg_orders" in result.output


def test_run_command_json(recorded: dict[str, Any]) -> None:
    result = run_command(recorded, RUN_ID, "--format", "json")
    rows = json.loads(result.output)

    assert result.exit_code == 0
    assert {row["run_id"] for row in rows} == {RUN_ID}
    assert {row["kind"] for row in rows} == {"node", "edge", "schema", "column"}


def test_run_command_unknown_run(recorded: dict[str, Any]) -> None:
    result = run_command(recorded, "19990101")

    assert result.exit_code == 2
    assert "no stored lineage for run '19990101'" in result.output
