"""The demo flights API: published state, pagination, filters, auth and faults."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner

from mocra_elt.cli.main import cli
from mocra_elt.demo.flights_api import (
    INITIAL_UPDATE_DELAY,
    FaultPlan,
    FlightsApiServer,
    ensure_initial_state,
    publish,
    start_server,
)
from mocra_elt.demo.flights_state import read_state
from mocra_elt.demo.nycflights import read_flights

TOKEN = "test-token"
LIMIT_ROWS = 2000
# The first 2000 rows of flights.csv are 2013-01-01, 2013-01-02 and part of 2013-01-03.
HELD_BACK = 2000 - 842 - 943


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "flights_api"
    ensure_initial_state(path, limit_rows=LIMIT_ROWS)
    return path


@pytest.fixture
def api(state_dir: Path) -> Iterator[FlightsApiServer]:
    server = start_server(state_dir, token=TOKEN)
    yield server
    server.stop()


def get(server: FlightsApiServer, path: str = "/flights", **params: Any) -> requests.Response:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    return requests.get(server.url + path, params=params, headers=headers, timeout=30)


def all_pages(server: FlightsApiServer, page_size: int, **params: Any) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    page = 1
    while True:
        body = get(server, page=page, page_size=page_size, **params).json()
        records += body["data"]
        if page >= body["total_pages"]:
            return records
        page += 1


def test_read_flights_numbers_rows_from_one() -> None:
    flights = read_flights(limit_rows=3)

    assert flights.column("id").to_pylist() == [1, 2, 3]
    assert flights.column("tailnum").to_pylist() == ["N14228", "N24211", "N619AA"]


def test_read_flights_reads_na_as_null() -> None:
    flights = read_flights()

    assert flights.num_rows == 336_776
    assert flights.column("dep_time").null_count == 8255


def test_initial_state_holds_back_latest_date(state_dir: Path) -> None:
    published = read_state(state_dir)
    days = set(zip(published["month"].to_pylist(), published["day"].to_pylist(), strict=True))

    assert published.num_rows == LIMIT_ROWS - HELD_BACK
    assert days == {(1, 1), (1, 2)}
    scheduled = published["time_hour"].to_pylist()
    updated = published["updated_at"].to_pylist()
    assert updated == [hour + INITIAL_UPDATE_DELAY for hour in scheduled]


def test_initial_state_is_written_once(state_dir: Path) -> None:
    publish(state_dir, rows=5)

    summary = ensure_initial_state(state_dir, limit_rows=10)

    assert summary["total_published"] == LIMIT_ROWS - HELD_BACK + 5
    assert summary["limit_rows"] == LIMIT_ROWS


def test_pages_return_every_row_once(api: FlightsApiServer) -> None:
    first = get(api, page_size=300).json()
    records = all_pages(api, page_size=300)
    ids = [record["id"] for record in records]

    assert first["total"] == LIMIT_ROWS - HELD_BACK
    assert first["total_pages"] == 6
    assert first["page"] == 1
    assert first["page_size"] == 300
    assert len(ids) == first["total"]
    assert len(set(ids)) == len(ids)


def test_records_carry_id_timestamps_and_nulls(api: FlightsApiServer) -> None:
    records = {record["id"]: record for record in all_pages(api, page_size=2000)}

    assert records[1]["time_hour"] == "2013-01-01T10:00:00Z"
    assert records[1]["updated_at"] == "2013-01-01T22:00:00.000000Z"
    assert records[1]["carrier"] == "UA"
    assert records[1]["arr_delay"] == 11
    assert records[839]["dep_time"] is None
    assert len(records[1]) == 21


def test_page_past_the_end_is_empty(api: FlightsApiServer) -> None:
    body = get(api, page=99, page_size=500).json()

    assert body["data"] == []
    assert body["total_pages"] == 4


def test_updated_since_keeps_later_rows(api: FlightsApiServer, state_dir: Path) -> None:
    summary = publish(state_dir, rows=7, updates=3)

    since = get(api, updated_since=summary["updated_at"], page_size=100).json()
    before = get(api, updated_since="2013-01-01T00:00:00Z", page_size=100).json()
    after = get(api, updated_since="2100-01-01T00:00:00+00:00", page_size=100).json()

    assert since["total"] == 10
    assert {record["updated_at"] for record in since["data"]} == {summary["updated_at"]}
    assert before["total"] == LIMIT_ROWS - HELD_BACK + 7
    assert after["total"] == 0
    assert after["total_pages"] == 0


def test_rows_are_ordered_by_updated_at_then_id(api: FlightsApiServer, state_dir: Path) -> None:
    publish(state_dir, updates=2)

    records = all_pages(api, page_size=1000)
    keys = [(record["updated_at"], record["id"]) for record in records]

    assert keys == sorted(keys)
    assert [record["id"] for record in records[-2:]] == [1, 2]


def test_missing_token_gets_401(api: FlightsApiServer) -> None:
    response = requests.get(api.url + "/flights", timeout=30)

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_wrong_token_gets_401(api: FlightsApiServer) -> None:
    headers = {"Authorization": "Bearer not-the-token"}
    response = requests.get(api.url + "/flights", headers=headers, timeout=30)

    assert response.status_code == 401


def test_health_needs_no_token(api: FlightsApiServer) -> None:
    response = requests.get(api.url + "/health", timeout=30)

    assert response.status_code == 200


@pytest.mark.parametrize(
    "params",
    [{"page": "0"}, {"page_size": "x"}, {"page_size": "20000"}, {"updated_since": "yesterday"}],
)
def test_invalid_parameter_gets_400(api: FlightsApiServer, params: dict[str, str]) -> None:
    response = get(api, **params)

    assert response.status_code == 400
    assert list(params)[0] in response.json()["error"]


def test_offset_style_pages_by_offset(api: FlightsApiServer) -> None:
    body = get(api, "/flights/offset", offset=1700, limit=100).json()

    assert body["total"] == LIMIT_ROWS - HELD_BACK
    assert len(body["data"]) == 85
    assert body["offset"] == 1700


def test_cursor_style_ends_with_null_cursor(api: FlightsApiServer) -> None:
    ids: list[int] = []
    cursor = None
    for _ in range(10):
        params = {"page_size": 500, **({"cursor": cursor} if cursor else {})}
        body = get(api, "/flights/cursor", **params).json()
        ids += [record["id"] for record in body["data"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break

    assert cursor is None
    assert sorted(ids) == sorted(set(ids))
    assert len(ids) == LIMIT_ROWS - HELD_BACK


def test_invalid_cursor_gets_400(api: FlightsApiServer) -> None:
    response = get(api, "/flights/cursor", cursor="bm90LWEtY3Vyc29y")

    assert response.status_code == 400


def test_next_link_keeps_filter(api: FlightsApiServer) -> None:
    body = get(
        api, "/flights/next_link", page_size=500, updated_since="2013-01-01T00:00:00Z"
    ).json()

    assert "page=2" in body["next"]
    assert "updated_since=2013-01-01T00%3A00%3A00Z" in body["next"]
    assert body["next"].startswith(api.url + "/flights/next_link?")


def test_link_header_points_to_next_page(api: FlightsApiServer) -> None:
    first = get(api, "/flights/link_header", page_size=1000)
    last = get(api, "/flights/link_header", page_size=1000, page=2)

    assert isinstance(first.json(), list)
    assert first.links["next"]["url"].endswith("/flights/link_header?page_size=1000&page=2")
    assert "next" not in last.links
    assert len(first.json()) + len(last.json()) == LIMIT_ROWS - HELD_BACK


def test_publish_adds_next_unpublished_rows(state_dir: Path) -> None:
    summary = publish(state_dir, rows=50)
    published = read_state(state_dir)
    new_ids = sorted(set(published["id"].to_pylist()) - set(range(1, 842 + 943 + 1)))

    assert summary["published_rows"] == 50
    assert new_ids == list(range(842 + 943 + 1, 842 + 943 + 51))


def test_publish_stops_at_last_flight(state_dir: Path) -> None:
    summary = publish(state_dir, rows=HELD_BACK + 100)

    assert summary["published_rows"] == HELD_BACK
    assert summary["total_published"] == LIMIT_ROWS


def test_publish_updates_keep_values(state_dir: Path) -> None:
    before = read_state(state_dir).sort_by("id").slice(0, 20).drop_columns(["updated_at"])

    summary = publish(state_dir, updates=20)
    after = read_state(state_dir).sort_by("id").slice(0, 20)

    assert summary["updated_rows"] == 20
    assert after.drop_columns(["updated_at"]).equals(before)
    assert {value.isoformat() for value in after["updated_at"].to_pylist()} == {
        datetime.fromisoformat(summary["updated_at"].replace("Z", "+00:00")).isoformat()
    }


def test_publish_instants_strictly_increase(state_dir: Path) -> None:
    instants = [publish(state_dir, updates=1)["updated_at"] for _ in range(3)]

    assert instants == sorted(set(instants))
    assert instants[0] > datetime(2020, 1, 1, tzinfo=UTC).isoformat()


def test_server_serves_publish_made_while_running(api: FlightsApiServer, state_dir: Path) -> None:
    before = get(api).json()["total"]

    publish(state_dir, rows=30)
    after = get(api).json()["total"]

    assert after == before + 30


def test_publish_is_safe_during_reads(api: FlightsApiServer, state_dir: Path) -> None:
    statuses: list[int] = []
    totals: list[int] = []
    mismatches: list[tuple[int, int]] = []
    stop = threading.Event()

    def read_repeatedly() -> None:
        while not stop.is_set():
            response = get(api, page_size=2000)
            statuses.append(response.status_code)
            body = response.json()
            totals.append(body["total"])
            if len(body["data"]) != body["total"]:
                mismatches.append((len(body["data"]), body["total"]))

    readers = [threading.Thread(target=read_repeatedly) for _ in range(3)]
    for reader in readers:
        reader.start()
    for _ in range(5):
        publish(state_dir, rows=10, updates=5)
    stop.set()
    for reader in readers:
        reader.join()

    assert set(statuses) == {200}
    assert mismatches == []
    assert all(LIMIT_ROWS - HELD_BACK <= total <= LIMIT_ROWS - HELD_BACK + 50 for total in totals)
    assert get(api).json()["total"] == LIMIT_ROWS - HELD_BACK + 50


def test_transient_failures_send_retry_after(state_dir: Path) -> None:
    faults = FaultPlan(transient_failures=2, transient_status=429, retry_after=3)
    with start_server(state_dir, token=TOKEN, faults=faults) as server:
        responses = [get(server) for _ in range(3)]

    assert [response.status_code for response in responses] == [429, 429, 200]
    assert responses[0].headers["Retry-After"] == "3"


def test_fail_after_pages_fails_later_requests(state_dir: Path) -> None:
    faults = FaultPlan(fail_after_pages=2, fail_status=503)
    with start_server(state_dir, token=TOKEN, faults=faults) as server:
        statuses = [get(server, page=page).status_code for page in (1, 2, 3, 1)]
        counts = dict(server.status_counts)

    assert statuses == [200, 200, 503, 503]
    assert counts == {200: 2, 503: 2}


@pytest.mark.parametrize(
    ("auth", "headers", "params"),
    [
        ("api_key", {"X-API-Key": TOKEN}, {}),
        ("api_key", {}, {"api_key": TOKEN}),
        ("basic", {"Authorization": "Basic dXNlcjp0ZXN0LXRva2Vu"}, {}),
    ],
)
def test_other_auth_schemes_accept_token(
    state_dir: Path, auth: str, headers: dict[str, str], params: dict[str, str]
) -> None:
    with start_server(state_dir, token=TOKEN, auth=auth) as server:
        accepted = requests.get(server.url + "/flights", headers=headers, params=params, timeout=30)
        bearer = get(server)

    assert accepted.status_code == 200
    assert bearer.status_code == 401


def test_cli_publish_prints_counts(project_dir: Path) -> None:
    state = project_dir / ".mocra" / "demo" / "flights_api"
    ensure_initial_state(state, limit_rows=LIMIT_ROWS)

    result = CliRunner().invoke(
        cli, ["--project-dir", str(project_dir), "demo", "publish", "--rows", "4", "--updates", "2"]
    )

    assert result.exit_code == 0, result.output
    assert "Published 4 new and 2 updated flights" in result.output
    assert read_state(state).num_rows == LIMIT_ROWS - HELD_BACK + 4


def test_cli_serve_needs_token(project_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLIGHTS_API_TOKEN", raising=False)

    result = CliRunner().invoke(cli, ["--project-dir", str(project_dir), "demo", "serve"])

    assert result.exit_code == 2
    assert "FLIGHTS_API_TOKEN" in result.output


def test_cli_serve_answers_requests(project_dir: Path) -> None:
    command = [
        sys.executable, "-m", "mocra_elt", "--project-dir", str(project_dir), "demo", "serve",
        "--port", "0", "--limit-rows", str(LIMIT_ROWS),
    ]  # fmt: skip
    environment = {**os.environ, "FLIGHTS_API_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=environment)
    try:
        assert server.stdout is not None
        banner = server.stdout.readline()
        url = banner.split(" at ")[1].split()[0]
        response = requests.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    finally:
        server.terminate()
        server.wait(timeout=30)

    assert response.status_code == 200
    assert response.json()["total"] == LIMIT_ROWS - HELD_BACK
