"""The http source through the real runner, against the demo flights API on 127.0.0.1."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from mocra_elt.config.loader import load_pipelines
from mocra_elt.config.project import Project
from mocra_elt.demo.flights_api import FaultPlan, FlightsApiServer, publish, start_server
from mocra_elt.demo.flights_state import read_state
from mocra_elt.extract.http import format_cursor_value, records_to_table
from mocra_elt.load.warehouse import open_warehouse
from mocra_elt.runtime.environment import configure_environment
from mocra_elt.runtime.runner import RunResult, run_pipelines
from tests.conftest import write_pipeline

TOKEN = "s3cret-flights-token"
WRONG_TOKEN = "wrong-token-value"
LIMIT_ROWS = 1500
# Rows 1-842 are 2013-01-01 and 843-1500 are 2013-01-02, the held-back latest date.
PUBLISHED = 842
TABLE = "raw_flights.flights"

PAGE_NUMBER = (
    "{type: page_number, total_path: total_pages, page_size_param: page_size, page_size: 200}"
)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "flights_api"


@pytest.fixture
def api(state_dir: Path) -> Iterator[FlightsApiServer]:
    server = start_server(state_dir, token=TOKEN, limit_rows=LIMIT_ROWS)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def token_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLIGHTS_TEST_TOKEN", TOKEN)


def write_flights_pipeline(
    project_dir: Path,
    url: str,
    *,
    path: str = "/flights",
    paginator: str = PAGE_NUMBER,
    auth: str = '{type: bearer, token: "${env:FLIGHTS_TEST_TOKEN}"}',
    params: str = "{}",
    data_selector: str = "data",
    incremental: bool = True,
    max_attempts: int = 1,
    timeout: float = 10,
) -> None:
    cursor = "cursor_param: updated_since" if incremental else ""
    load_incremental = "incremental: {cursor: updated_at}" if incremental else ""
    write_pipeline(
        project_dir,
        "flights",
        f"""\
        name: flights
        source:
          type: http
          base_url: {url}
          path: {path}
          {data_selector and f"data_selector: {data_selector}"}
          params: {params}
          paginator: {paginator}
          auth: {auth}
          timeout: {timeout}
          max_attempts: {max_attempts}
          {cursor}
        load:
          table: flights
          write_disposition: merge
          primary_key: id
          columns: {{updated_at: timestamp, time_hour: timestamp}}
          {load_incremental}
        """,
    )


def run_flights(project_dir: Path) -> RunResult:
    project = Project.discover(project_dir)
    configure_environment(project)
    pipelines = load_pipelines(project.sources_dir)
    [result] = run_pipelines(project, pipelines, open_warehouse(project))
    return result


def query(
    project_dir: Path, sql: str, parameters: list[Any] | None = None
) -> list[tuple[Any, ...]]:
    path = Project.discover(project_dir).warehouse_path
    with duckdb.connect(str(path), read_only=True) as connection:
        return connection.execute(sql, parameters or []).fetchall()


def table_counts(project_dir: Path) -> tuple[int, int]:
    [(rows, ids)] = query(project_dir, f"select count(*), count(distinct id) from {TABLE}")
    return rows, ids


def stage_row(project_dir: Path, run_id: str, stage: str) -> dict[str, Any]:
    cursor_rows = query(
        project_dir,
        "select status, rows_in, rows_out, error_code, error, details from mocra_audit.stage_runs "
        "where run_id = ? and stage = ?",
        [run_id, stage],
    )
    status, rows_in, rows_out, error_code, error, details = cursor_rows[0]
    return {
        "status": status,
        "rows_in": rows_in,
        "rows_out": rows_out,
        "error_code": error_code,
        "error": error,
        "details": json.loads(details) if details else {},
    }


def watermark_rows(project_dir: Path) -> list[tuple[Any, ...]]:
    return query(
        project_dir,
        "select cursor_name, value, boundary_keys, run_id from mocra_audit.watermarks "
        "where pipeline = 'flights' order by committed_at, run_id",
    )


def table_contents(project_dir: Path) -> list[tuple[Any, ...]]:
    return query(project_dir, f"select * from {TABLE} order by id")


# --- paginators ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "paginator", "requests"),
    [
        ("/flights", PAGE_NUMBER, 5),
        ("/flights", "{type: page_number, page_size_param: page_size, page_size: 200}", 6),
        ("/flights/offset", "{type: offset, limit: 200, total_path: total}", 5),
        ("/flights/cursor", "{type: cursor, cursor_path: next_cursor, cursor_param: cursor}", 5),
        ("/flights/next_link", "{type: next_link, next_url_path: next}", 5),
        ("/flights/link_header", "{type: header_link}", 5),
        ("/flights", "{type: single_page}", 1),
    ],
    ids=["page_number", "page_number_until_empty", "offset", "cursor", "next_link", "header_link",
         "single_page"],
)  # fmt: skip
def test_paginator_loads_every_row_once(
    project_dir: Path, api: FlightsApiServer, path: str, paginator: str, requests: int
) -> None:
    params = "{page_size: 1000}" if "single_page" in paginator else "{page_size: 200}"
    # The link_header style returns a bare list, which dlt finds without a selector.
    selector = "" if path == "/flights/link_header" else "data"
    write_flights_pipeline(
        project_dir, api.url, path=path, paginator=paginator, params=params, data_selector=selector
    )

    result = run_flights(project_dir)

    assert result.status == "succeeded", result.error
    assert table_counts(project_dir) == (PUBLISHED, PUBLISHED)
    assert api.status_counts == {200: requests}
    assert stage_row(project_dir, result.run_id, "extract")["details"]["http_requests"] == requests


# --- authentication -----------------------------------------------------------------------------


AUTH_CASES = {
    "bearer": '{type: bearer, token: "${env:FLIGHTS_TEST_TOKEN}"}',
    "api_key_header": '{type: api_key, api_key: "${env:FLIGHTS_TEST_TOKEN}"}',
    "api_key_query": (
        '{type: api_key, name: api_key, location: query, api_key: "${env:FLIGHTS_TEST_TOKEN}"}'
    ),
    "basic": '{type: basic, username: loader, password: "${env:FLIGHTS_TEST_TOKEN}"}',
}
SERVER_AUTH = {"bearer": "bearer", "api_key_header": "api_key", "api_key_query": "api_key"}


@pytest.mark.parametrize("case", sorted(AUTH_CASES))
def test_auth_with_right_secret_loads(project_dir: Path, state_dir: Path, case: str) -> None:
    server_auth = SERVER_AUTH.get(case, "basic")
    with start_server(state_dir, token=TOKEN, auth=server_auth, limit_rows=LIMIT_ROWS) as server:
        write_flights_pipeline(project_dir, server.url, auth=AUTH_CASES[case])
        result = run_flights(project_dir)

    assert result.status == "succeeded", result.error
    assert table_counts(project_dir) == (PUBLISHED, PUBLISHED)


@pytest.mark.parametrize("case", sorted(AUTH_CASES))
def test_auth_with_wrong_secret_fails_clearly(
    project_dir: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    monkeypatch.setenv("FLIGHTS_TEST_TOKEN", WRONG_TOKEN)
    server_auth = SERVER_AUTH.get(case, "basic")
    with start_server(state_dir, token=TOKEN, auth=server_auth, limit_rows=LIMIT_ROWS) as server:
        write_flights_pipeline(project_dir, server.url, auth=AUTH_CASES[case], max_attempts=3)
        result = run_flights(project_dir)
        statuses = dict(server.status_counts)

    stage = stage_row(project_dir, result.run_id, "extract")
    assert result.status == "failed"
    assert result.error_code == "SOURCE_AUTH"
    assert stage["error_code"] == "SOURCE_AUTH"
    assert "returned HTTP 401" in stage["error"]
    assert "Check source.auth" in stage["error"]
    assert f"{server.url}/flights " in stage["error"]
    for text in (result.error or "", stage["error"]):
        assert WRONG_TOKEN not in text
        assert TOKEN not in text
    assert statuses == {401: 1}


# --- incremental loads --------------------------------------------------------------------------


def test_incremental_loads_new_and_updated_rows(
    project_dir: Path, api: FlightsApiServer, state_dir: Path
) -> None:
    write_flights_pipeline(project_dir, api.url)

    initial_maximum = max(read_state(state_dir)["updated_at"].to_pylist())
    first = run_flights(project_dir)
    second = run_flights(project_dir)
    publish(state_dir, rows=50)
    third = run_flights(project_dir)
    values_before_update = table_contents(project_dir)
    update = publish(state_dir, updates=20)
    fourth = run_flights(project_dir)

    loaded = [stage_row(project_dir, run.run_id, "load")["rows_out"] for run in (first, second)]
    assert [run.status for run in (first, second, third, fourth)] == ["succeeded"] * 4
    assert loaded == [PUBLISHED, 0]
    assert stage_row(project_dir, third.run_id, "load")["rows_out"] == 50
    assert stage_row(project_dir, fourth.run_id, "load")["rows_out"] == 20
    assert table_counts(project_dir) == (PUBLISHED + 50, PUBLISHED + 50)

    changed = query(
        project_dir,
        f"select id, _mocra_run_id from {TABLE} where _mocra_run_id = ? order by id",
        [fourth.run_id],
    )
    assert [row[0] for row in changed] == list(range(1, 21))
    after = {row[0]: row for row in table_contents(project_dir)}
    before = {row[0]: row for row in values_before_update}
    values = slice(1, 20)  # every flights column but id and updated_at
    assert all(after[key][values] == before[key][values] for key in before)

    marks = watermark_rows(project_dir)
    assert [mark[3] for mark in marks] == [first.run_id, third.run_id, fourth.run_id]
    assert datetime.fromisoformat(marks[0][1]) == initial_maximum.replace(tzinfo=None)
    latest = datetime.fromisoformat(update["updated_at"].replace("Z", ""))
    assert datetime.fromisoformat(marks[-1][1]) == latest
    assert len(json.loads(marks[-1][2])) == 20


def test_cursor_param_sends_watermark(
    project_dir: Path, api: FlightsApiServer, state_dir: Path
) -> None:
    write_flights_pipeline(project_dir, api.url)
    run_flights(project_dir)
    publish(state_dir, rows=5)
    publish(state_dir, rows=3)
    run_flights(project_dir)

    # The watermark is now the second publish, so the server returns only its 3 rows.
    api.status_counts.clear()
    third = run_flights(project_dir)

    extract = stage_row(project_dir, third.run_id, "extract")
    assert extract["rows_in"] == 3
    assert extract["rows_out"] == 0
    assert api.status_counts == {200: 1}


# --- failures -----------------------------------------------------------------------------------


def test_failure_mid_read_changes_nothing(project_dir: Path, state_dir: Path) -> None:
    with start_server(state_dir, token=TOKEN, limit_rows=LIMIT_ROWS) as server:
        write_flights_pipeline(project_dir, server.url)
        assert run_flights(project_dir).succeeded
    # Enough new and updated rows for the incremental read to need more than two pages.
    publish(state_dir, rows=400, updates=300)
    table_before = table_contents(project_dir)
    marks_before = watermark_rows(project_dir)

    faults = FaultPlan(fail_after_pages=2, fail_status=500)
    with start_server(state_dir, token=TOKEN, faults=faults) as server:
        write_flights_pipeline(project_dir, server.url)
        result = run_flights(project_dir)
        statuses = dict(server.status_counts)

    assert result.status == "failed"
    assert result.error_code == "SOURCE_HTTP_5XX"
    assert "returned HTTP 500" in (result.error or "")
    assert statuses == {200: 2, 500: 1}
    assert stage_row(project_dir, result.run_id, "load")["status"] == "skipped"
    assert query(
        project_dir, "select status from mocra_audit.runs where run_id = ?", [result.run_id]
    ) == [("failed",)]
    assert watermark_rows(project_dir) == marks_before
    assert table_contents(project_dir) == table_before


def test_retry_absorbs_two_503s(project_dir: Path, state_dir: Path) -> None:
    faults = FaultPlan(transient_failures=2, transient_status=503, retry_after=1)
    with start_server(state_dir, token=TOKEN, limit_rows=LIMIT_ROWS, faults=faults) as server:
        write_flights_pipeline(project_dir, server.url, max_attempts=3)
        result = run_flights(project_dir)
        statuses = dict(server.status_counts)

    details = stage_row(project_dir, result.run_id, "extract")["details"]
    assert result.status == "succeeded", result.error
    assert table_counts(project_dir) == (PUBLISHED, PUBLISHED)
    assert statuses == {503: 2, 200: 5}
    assert details["http_retries"] == 2
    assert details["http_requests"] == 7


def test_retries_exhausted_fail_as_transient(project_dir: Path, state_dir: Path) -> None:
    faults = FaultPlan(transient_failures=5, transient_status=429, retry_after=1)
    with start_server(state_dir, token=TOKEN, limit_rows=LIMIT_ROWS, faults=faults) as server:
        write_flights_pipeline(project_dir, server.url, max_attempts=2)
        result = run_flights(project_dir)

    assert result.status == "failed"
    assert result.error_code == "SOURCE_HTTP_5XX"
    assert "after 2 attempts" in (result.error or "")


def test_connection_refused_is_unavailable(project_dir: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    write_flights_pipeline(project_dir, f"http://127.0.0.1:{port}")

    result = run_flights(project_dir)

    assert result.status == "failed"
    assert result.error_code == "SOURCE_UNAVAILABLE"
    assert "could not be reached: Connection refused (1 attempt)" in (result.error or "")
    assert f"http://127.0.0.1:{port}/flights" in (result.error or "")


def test_silent_server_times_out(project_dir: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        write_flights_pipeline(project_dir, url, timeout=0.3, max_attempts=2)

        result = run_flights(project_dir)

    assert result.status == "failed"
    assert result.error_code == "SOURCE_UNAVAILABLE"
    assert "timed out after 0.3 s (2 attempts)" in (result.error or "")


def test_missing_endpoint_is_client_error(project_dir: Path, api: FlightsApiServer) -> None:
    write_flights_pipeline(project_dir, api.url, path="/no_such_endpoint", max_attempts=3)

    result = run_flights(project_dir)

    assert result.status == "failed"
    assert result.error_code == "SOURCE_HTTP_4XX"
    assert "returned HTTP 404" in (result.error or "")
    assert api.status_counts == {404: 1}


def test_bad_request_message_shows_server_reason(project_dir: Path, api: FlightsApiServer) -> None:
    write_flights_pipeline(
        project_dir, api.url, paginator="{type: single_page}", params="{page_size: 999999}"
    )

    result = run_flights(project_dir)

    assert result.error_code == "SOURCE_HTTP_4XX"
    assert "page_size=999999 must be at least 1" in (result.error or "")


def test_wrong_data_selector_names_top_level_keys(project_dir: Path, api: FlightsApiServer) -> None:
    write_flights_pipeline(project_dir, api.url, data_selector="results")

    result = run_flights(project_dir)

    assert result.error_code == "RECORD_PARSE_ERROR"
    assert "'results' matches nothing" in (result.error or "")
    assert "top level: data, page, page_size, total, total_pages" in (result.error or "")


def test_empty_source_loads_nothing(project_dir: Path, api: FlightsApiServer) -> None:
    write_flights_pipeline(
        project_dir, api.url, params="{updated_since: '2100-01-01T00:00:00Z'}", incremental=False
    )

    result = run_flights(project_dir)

    assert result.status == "succeeded", result.error
    assert stage_row(project_dir, result.run_id, "load")["rows_out"] == 0


def test_missing_secret_is_config_error(
    project_dir: Path, api: FlightsApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLIGHTS_TEST_TOKEN")
    write_flights_pipeline(project_dir, api.url)

    result = run_flights(project_dir)

    assert result.error_code == "SECRET_MISSING"
    assert "FLIGHTS_TEST_TOKEN" in (result.error or "")
    assert api.status_counts == {}


# --- records to Arrow ---------------------------------------------------------------------------


def test_records_keep_keys_missing_from_first_record() -> None:
    table = records_to_table([{"a": 1}, {"a": 2, "b": "x"}])

    assert table.column_names == ["a", "b"]
    assert table.column("b").to_pylist() == [None, "x"]


def test_nested_values_become_json_text() -> None:
    table = records_to_table(
        [{"tags": ["a", "b"], "owner": {"id": 7}}, {"tags": None, "owner": None}]
    )

    assert table.schema.field("tags").type == pa.string()
    assert table.column("tags").to_pylist() == ['["a","b"]', None]
    assert table.column("owner").to_pylist() == ['{"id":7}', None]


def test_mixed_types_become_text() -> None:
    table = records_to_table([{"code": 1}, {"code": "A1"}])

    assert table.column("code").to_pylist() == ["1", "A1"]


def test_scalar_records_become_value_column() -> None:
    table = records_to_table([3, 4])

    assert table.column("value").to_pylist() == [3, 4]


def test_cursor_value_is_iso_with_z() -> None:
    assert (
        format_cursor_value(datetime(2013, 12, 31, 0, 0, 0, 250)) == "2013-12-31T00:00:00.000250Z"
    )
    assert format_cursor_value(42) == "42"
