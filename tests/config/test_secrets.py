"""Secret references: environment variables and dlt's secrets.toml, resolved at run time."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from mocra_elt.config.loader import load_pipelines
from mocra_elt.config.project import Project
from mocra_elt.demo.flights_api import start_server
from mocra_elt.load.warehouse import open_warehouse
from mocra_elt.runtime.environment import configure_environment
from mocra_elt.runtime.runner import RunResult, run_pipelines
from tests.conftest import write_pipeline

TOKEN = "secrets-toml-token-5b1d"


def flights_pipeline(project_dir: Path, url: str, reference: str) -> None:
    write_pipeline(
        project_dir,
        "flights",
        f"""\
        source:
          type: http
          base_url: {url}
          path: /flights
          data_selector: data
          paginator: {{type: page_number, total_path: total_pages}}
          auth: {{type: bearer, token: "{reference}"}}
        load: {{table: flights}}
        """,
    )


def run(project_dir: Path) -> RunResult:
    project = Project.discover(project_dir)
    configure_environment(project)
    [result] = run_pipelines(project, load_pipelines(project.sources_dir), open_warehouse(project))
    return result


def test_token_from_secrets_toml(
    project_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = project_dir / ".dlt"
    settings.mkdir()
    (settings / "secrets.toml").write_text(f'[sources.flights]\ntoken = "{TOKEN}"\n')
    monkeypatch.chdir(tmp_path)  # the project's .dlt is found from any folder
    with start_server(tmp_path / "api", token=TOKEN, limit_rows=2000) as server:
        flights_pipeline(project_dir, server.url, "${secret:sources.flights.token}")
        result = run(project_dir)

    assert result.succeeded, result.error
    warehouse = project_dir / ".mocra" / "warehouse.duckdb"
    with duckdb.connect(str(warehouse), read_only=True) as connection:
        assert connection.execute("select count(*) from raw_flights.flights").fetchone()[0] > 0


def test_missing_secret_named(project_dir: Path, tmp_path: Path) -> None:
    with start_server(tmp_path / "api", token=TOKEN, limit_rows=2000) as server:
        flights_pipeline(project_dir, server.url, "${secret:sources.flights.token}")
        result = run(project_dir)

    assert result.error_code == "SECRET_MISSING"
    assert "secret 'sources.flights.token'" in (result.error or "")
    assert "SOURCES__FLIGHTS__TOKEN" in (result.error or "")


def test_missing_env_variable_named(project_dir: Path, tmp_path: Path) -> None:
    with start_server(tmp_path / "api", token=TOKEN, limit_rows=2000) as server:
        flights_pipeline(project_dir, server.url, "${env:NOT_SET_ANYWHERE}")
        result = run(project_dir)

    assert result.error_code == "SECRET_MISSING"
    assert "environment variable 'NOT_SET_ANYWHERE'" in (result.error or "")


def test_header_reference_resolved(
    project_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLIGHTS_AUTH_HEADER", f"Bearer {TOKEN}")
    with start_server(tmp_path / "api", token=TOKEN, limit_rows=2000) as server:
        write_pipeline(
            project_dir,
            "flights",
            f"""\
            source:
              type: http
              base_url: {server.url}
              path: /flights
              data_selector: data
              paginator: {{type: page_number, total_path: total_pages}}
              headers: {{Authorization: "${{env:FLIGHTS_AUTH_HEADER}}"}}
            load: {{table: flights}}
            """,
        )
        result = run(project_dir)

    assert result.succeeded, result.error
