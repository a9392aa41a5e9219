"""`mocra-elt run --tag / --exclude-tag`: pipelines and sinks chosen by their tags."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from mocra_elt.cli.main import cli
from mocra_elt.config.loader import load_pipeline_file
from mocra_elt.errors import ConfigError
from tests.conftest import write_pipeline

ORDERS = """\
    description: Orders from CSV files, exported by day to a local folder.
    tags: [{tags}]
    source: {{type: files, url: data/{name}, glob: "*.csv"}}
    load: {{table: {name}, write_disposition: append}}
    sinks:
      - type: object_storage
        tags: [export]
        model: raw_{name}.{name}
        url: exports/{name}
        partition_by: {{column: day}}
    """


@pytest.fixture
def tagged_project(project_dir: Path) -> Path:
    """Two pipelines, `orders` (tagged nightly) and `refunds` (untagged), each with a sink."""
    for name, tags in (("orders", "nightly"), ("refunds", "")):
        folder = project_dir / "data" / name
        folder.mkdir(parents=True)
        (folder / "part.csv").write_text("id,day\n1,2024-01-01\n2,2024-01-02\n")
        write_pipeline(project_dir, name, ORDERS.format(name=name, tags=tags))
    return project_dir


def run(project: Path, *options: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["--project-dir", str(project), "run", *options])
    return result.exit_code, result.output


def loaded_pipelines(project: Path) -> list[str]:
    path = project / ".mocra" / "warehouse.duckdb"
    with duckdb.connect(str(path), read_only=True) as connection:
        rows = connection.execute("select pipeline from mocra_audit.runs order by pipeline")
        return [row[0] for row in rows.fetchall()]


def test_tag_runs_only_tagged_pipelines(tagged_project: Path) -> None:
    exit_code, output = run(tagged_project, "--tag", "nightly")

    assert exit_code == 0, output
    assert loaded_pipelines(tagged_project) == ["orders"]


def test_exclude_tag_skips_pipelines(tagged_project: Path) -> None:
    exit_code, output = run(tagged_project, "--exclude-tag", "nightly")

    assert exit_code == 0, output
    assert loaded_pipelines(tagged_project) == ["refunds"]


def test_exclude_tag_skips_tagged_sinks(tagged_project: Path) -> None:
    exit_code, output = run(tagged_project, "--exclude-tag", "export")

    assert exit_code == 0, output
    assert loaded_pipelines(tagged_project) == ["orders", "refunds"]
    assert not (tagged_project / "exports").exists()


def test_untagged_run_publishes_every_sink(tagged_project: Path) -> None:
    exit_code, output = run(tagged_project)

    assert exit_code == 0, output
    assert sorted(path.name for path in (tagged_project / "exports").iterdir()) == [
        "orders",
        "refunds",
    ]


def test_unmatched_tag_is_usage_error(tagged_project: Path) -> None:
    exit_code, output = run(tagged_project, "--tag", "hourly")

    assert exit_code == 2
    assert "no pipeline matches --tag hourly" in output
    assert "Tags in use: nightly" in output


def test_tags_accept_one_string(project_dir: Path) -> None:
    path = write_pipeline(
        project_dir,
        "orders",
        """\
        tags: nightly
        source: {type: files, url: data}
        load: {table: orders}
        sinks:
          - {type: object_storage, model: raw_orders.orders, url: out, tags: export,
             partition_by: {column: day}}
        """,
    )
    pipeline = load_pipeline_file(path)

    assert pipeline.tags == ["nightly"]
    assert pipeline.sinks[0].tags == ["export"]
    assert pipeline.without_sinks_tagged(["export"]).sinks == []
    assert pipeline.without_sinks_tagged(["other"]) is pipeline


def test_invalid_tag_is_rejected(project_dir: Path) -> None:
    path = write_pipeline(
        project_dir,
        "orders",
        """\
        tags: [Nightly Run]
        source: {type: files, url: data}
        load: {table: orders}
        """,
    )
    with pytest.raises(ConfigError, match=r"tags\[0\]: invalid name 'Nightly Run'"):
        load_pipeline_file(path)
