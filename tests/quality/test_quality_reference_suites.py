"""The reference project's suites in expectations/ match its dbt models and raw tables."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mocra_elt.quality.suites import Suite, load_suite_file

REPO_ROOT = Path(__file__).resolve().parents[2]
SUITE_FILES = sorted((REPO_ROOT / "expectations").glob("*.yml"))


def documented_columns() -> dict[str, set[str]]:
    """Map each dbt model name and each source table (schema.table) to its documented columns."""
    columns: dict[str, set[str]] = {}
    for path in (REPO_ROOT / "dbt_project" / "models").rglob("*.yml"):
        document = yaml.safe_load(path.read_text()) or {}
        for model in document.get("models", []):
            columns[model["name"]] = {column["name"] for column in model.get("columns", [])}
        for source in document.get("sources", []):
            schema = source.get("schema", source["name"])
            for table in source.get("tables", []):
                names = {column["name"] for column in table.get("columns", [])}
                columns[f"{schema}.{table['name']}"] = names
    return columns


def rule_columns(suite: Suite) -> set[str]:
    return {column for rule in suite.rules for column in rule.columns}


def test_reference_suites_exist() -> None:
    names = {path.stem for path in SUITE_FILES}

    assert {"mart_daily_departure_delay", "mart_delay_weather"} <= names


@pytest.mark.parametrize("path", SUITE_FILES, ids=lambda path: path.stem)
def test_reference_suite_columns_documented(path: Path) -> None:
    suite = load_suite_file(path)
    documented = documented_columns()

    assert suite.target in documented, f"{suite.target} is not a dbt model or source table"
    missing = rule_columns(suite) - documented[suite.target]
    assert not missing, f"{path.name} names columns {sorted(missing)} not in {suite.target}"
