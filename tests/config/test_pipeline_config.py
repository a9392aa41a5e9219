"""Pipeline definitions: what loads, and the errors invalid files get."""

from __future__ import annotations

from pathlib import Path

import pytest

from mocra_elt.config.loader import load_pipeline_file, load_pipelines
from mocra_elt.config.model import parse_duration
from mocra_elt.errors import ConfigError
from mocra_elt.runtime.dag import execution_order
from tests.conftest import write_pipeline

MINIMAL = """\
source:
  type: files
  url: data
load:
  table: events
"""


def error_for(project: Path, body: str, name: str = "broken") -> ConfigError:
    path = write_pipeline(project, name, body)
    with pytest.raises(ConfigError) as caught:
        load_pipeline_file(path)
    return caught.value


def test_minimal_pipeline_gets_defaults(project_dir: Path) -> None:
    pipeline = load_pipeline_file(write_pipeline(project_dir, "events", MINIMAL))

    assert pipeline.name == "events"
    assert pipeline.dataset == "raw_events"
    assert pipeline.load.write_disposition == "append"
    assert pipeline.retry_policy.for_stage("extract").attempts == 1
    assert pipeline.transform is None


def test_reference_pipelines_load() -> None:
    root = Path(__file__).resolve().parents[2]
    pipelines = load_pipelines(root / "sources")

    assert set(pipelines) == {"flights", "flight_events", "ops_flights", "weather"}
    assert execution_order(pipelines) == ["ops_flights", "weather", "flights", "flight_events"]
    assert pipelines["ops_flights"].tags == ["postgres"]
    assert [sink.tags for sink in pipelines["flights"].sinks] == [["postgres"]]
    assert pipelines["flights"].retry_policy.for_stage("extract").attempts == 3


def test_unknown_field_names_file_and_field(project_dir: Path) -> None:
    error = error_for(project_dir, MINIMAL + "shedule: '0 * * * *'\n")

    assert "broken.yml" in str(error)
    assert "shedule: unknown field" in str(error)
    assert error.pipeline == "broken"
    assert error.field == "shedule"


def test_invalid_disposition_lists_allowed(project_dir: Path) -> None:
    error = error_for(project_dir, MINIMAL + "  write_disposition: upsert\n")

    assert "load.write_disposition" in str(error)
    assert "'upsert'" in str(error)
    assert "'append', 'replace' or 'merge'" in str(error)


def test_unknown_source_type_lists_types(project_dir: Path) -> None:
    error = error_for(project_dir, "source:\n  type: ftp\nload:\n  table: t\n")

    assert "source" in str(error)
    assert "'ftp'" in str(error)
    assert "'http'" in str(error)


def test_merge_needs_primary_key(project_dir: Path) -> None:
    error = error_for(project_dir, MINIMAL + "  write_disposition: merge\n")

    assert "needs a primary_key" in str(error)


def test_lookback_needs_merge(project_dir: Path) -> None:
    body = MINIMAL + "  incremental:\n    cursor: updated_at\n    lookback: 2h\n"
    error = error_for(project_dir, body)

    assert "lookback" in str(error)
    assert "merge" in str(error)


def test_clear_text_secret_rejected(project_dir: Path) -> None:
    body = """\
        source:
          type: http
          base_url: http://127.0.0.1:1
          auth: {type: bearer, token: abc123}
        load:
          table: t
        """
    error = error_for(project_dir, body)

    assert "source.auth.token" in str(error)
    assert "${env:VARIABLE}" in str(error)
    assert "abc123" not in str(error)


def test_invalid_cron_rejected(project_dir: Path) -> None:
    error = error_for(project_dir, MINIMAL + "schedule: every hour\n")

    assert "schedule" in str(error)
    assert "'every hour' is not a valid cron expression" in str(error)


def test_invalid_yaml_names_file(project_dir: Path) -> None:
    error = error_for(project_dir, "source: [unclosed\n")

    assert "broken.yml: invalid YAML" in str(error)


def test_empty_file_rejected(project_dir: Path) -> None:
    error = error_for(project_dir, "")

    assert "the file is empty" in str(error)


def test_list_document_rejected(project_dir: Path) -> None:
    error = error_for(project_dir, "- a\n- b\n")

    assert "expected a mapping" in str(error)


def test_invalid_name_explained(project_dir: Path) -> None:
    error = error_for(project_dir, "name: Bad-Name\n" + MINIMAL)

    assert "invalid name 'Bad-Name'" in str(error)


def test_unknown_dependency_rejected(project_dir: Path) -> None:
    write_pipeline(project_dir, "events", MINIMAL + "depends_on: [nothing]\n")
    with pytest.raises(ConfigError) as caught:
        load_pipelines(project_dir / "sources")

    assert "depends_on names 'nothing'" in str(caught.value)
    assert caught.value.error_code == "CONFIG_NOT_FOUND"


def test_duplicate_names_rejected(project_dir: Path) -> None:
    write_pipeline(project_dir, "a", "name: same\n" + MINIMAL)
    write_pipeline(project_dir, "b", "name: same\n" + MINIMAL)
    with pytest.raises(ConfigError) as caught:
        load_pipelines(project_dir / "sources")

    assert "'same' is also defined in" in str(caught.value)


def test_dependency_cycle_rejected(project_dir: Path) -> None:
    write_pipeline(project_dir, "a", MINIMAL + "depends_on: [b]\n")
    write_pipeline(project_dir, "b", MINIMAL + "depends_on: [a]\n")
    pipelines = load_pipelines(project_dir / "sources")
    with pytest.raises(ConfigError) as caught:
        execution_order(pipelines)

    assert "cycle" in str(caught.value)


def test_order_respects_dependencies(project_dir: Path) -> None:
    write_pipeline(project_dir, "a", MINIMAL + "depends_on: [c]\n")
    write_pipeline(project_dir, "b", MINIMAL)
    write_pipeline(project_dir, "c", MINIMAL + "depends_on: [b]\n")
    pipelines = load_pipelines(project_dir / "sources")

    assert execution_order(pipelines) == ["b", "c", "a"]
    assert execution_order(pipelines, ["a", "b"]) == ["b", "a"]


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("15m", 900), ("2h", 7200), ("7d", 604800), (30, 30)]
)
def test_duration_parsing(text: str | int, seconds: int) -> None:
    assert parse_duration(text).total_seconds() == seconds


def test_duration_rejects_unknown_unit() -> None:
    with pytest.raises(ValueError, match="invalid duration '2w'"):
        parse_duration("2w")


@pytest.mark.parametrize(
    ("section", "name"),
    [("headers", "Authorization"), ("headers", "X-API-Key"), ("params", "api_key")],
)
def test_clear_text_credential_rejected(project_dir: Path, section: str, name: str) -> None:
    body = f"""\
        source:
          type: http
          base_url: http://127.0.0.1:1
          {section}: {{{name}: "Bearer abc123"}}
        load:
          table: t
        """
    error = error_for(project_dir, body)

    assert f"source.{section}" in str(error)
    assert f"{name!r} looks like a credential" in str(error)
    assert "abc123" not in str(error)


def test_referenced_header_accepted(project_dir: Path) -> None:
    body = """\
        source:
          type: http
          base_url: http://127.0.0.1:1
          headers: {Authorization: "${env:API_AUTH}", Accept: application/json}
        load:
          table: t
        """
    pipeline = load_pipeline_file(write_pipeline(project_dir, "ok", body))

    assert pipeline.source.headers["Authorization"] == "${env:API_AUTH}"


def test_misspelt_field_suggests_name(project_dir: Path) -> None:
    error = error_for(project_dir, MINIMAL + "  write_dispositon: merge\n")

    assert "load.write_dispositon: unknown field; did you mean 'write_disposition'?" in str(error)


def test_invalid_lookback_located(project_dir: Path) -> None:
    body = MINIMAL + "  write_disposition: merge\n  primary_key: id\n"
    body += "  incremental: {cursor: updated_at, lookback: two hours}\n"
    error = error_for(project_dir, body)

    assert "load.incremental.lookback: invalid duration 'two hours'" in str(error)


def test_self_dependency_rejected(project_dir: Path) -> None:
    write_pipeline(project_dir, "events", MINIMAL + "depends_on: [events]\n")
    with pytest.raises(ConfigError) as caught:
        load_pipelines(project_dir / "sources")

    assert "depends_on names the pipeline itself" in str(caught.value)
    assert caught.value.field == "depends_on"


def test_duplicate_key_rejected(project_dir: Path) -> None:
    error = error_for(project_dir, "name: orders\nname: orders2\n" + MINIMAL)

    assert "invalid YAML" in str(error)
    assert "the key 'name' appears twice" in str(error)


@pytest.mark.parametrize(
    "source",
    [
        "{type: http, base_url: 'http://user:pass@127.0.0.1:1'}",
        "{type: http, base_url: 'http://127.0.0.1:1', path: '/x?api_key=abc123'}",
        "{type: files, url: 's3://AKIAEXAMPLE:secretsecret@bucket/p'}",
    ],
)
def test_credentials_in_url_rejected(project_dir: Path, source: str) -> None:
    error = error_for(project_dir, f"source: {source}\nload: {{table: t}}\n")

    assert "secrets may not be written in clear text" in str(error)
    assert "abc123" not in str(error)
    assert "secretsecret" not in str(error)


def test_huge_duration_rejected(project_dir: Path) -> None:
    body = MINIMAL + "  write_disposition: merge\n  primary_key: id\n"
    body += "  incremental: {cursor: updated_at, lookback: 99999999999999d}\n"
    error = error_for(project_dir, body)

    assert "load.incremental.lookback: duration '99999999999999d' is too large" in str(error)
