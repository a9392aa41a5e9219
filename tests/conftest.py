"""Fixtures shared by every test: a clean environment and throwaway projects."""

from __future__ import annotations

import os
import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest_services import *  # noqa: F403 - the service fixtures

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Keep each test's project settings from leaking into the next test."""
    for key in list(os.environ):
        if key.startswith("MOCRA_") or key in ("DLT_DATA_DIR", "DLT_PROJECT_DIR"):
            monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("DO_NOT_TRACK", "1")
    monkeypatch.setenv("DBT_SEND_ANONYMOUS_USAGE_STATS", "False")
    monkeypatch.setenv("RUNTIME__DLTHUB_TELEMETRY", "false")
    yield


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    """An empty project: sources/, a dbt project with no models, and profiles.yml."""
    root = tmp_path / "project"
    (root / "sources").mkdir(parents=True)
    (root / "dbt_project" / "models").mkdir(parents=True)
    (root / "dbt_project" / "dbt_project.yml").write_text(
        textwrap.dedent(
            """\
            name: test_project
            version: "1.0"
            profile: mocra_elt
            model-paths: ["models"]
            """
        )
    )
    shutil.copy(REPO_ROOT / "profiles.yml", root / "profiles.yml")
    return root


def write_pipeline(project: Path, name: str, body: str) -> Path:
    """Write sources/NAME.yml from an indented YAML string."""
    path = project / "sources" / f"{name}.yml"
    path.write_text(textwrap.dedent(body))
    return path
