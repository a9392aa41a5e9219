"""Suite files: the YAML an analyst writes, and the errors a mistake produces."""

from __future__ import annotations

from pathlib import Path

import pytest
from quality_helpers import make_project, pipeline_with, write_suite

from mocra_elt.config.model import Pipeline
from mocra_elt.errors import ConfigError
from mocra_elt.quality.suites import (
    Between,
    CustomExpectation,
    Freshness,
    InSet,
    NotNull,
    Regex,
    RowCount,
    Unique,
    load_suite_file,
    load_suites,
    plan_rules,
)

FULL_SUITE = """\
description: Daily departure delay per carrier and airport.
model: mart_daily
policy: quarantine
rules:
  - not_null: [flight_date, carrier]
  - unique: [flight_date, carrier, origin]
  - unique: id
  - between: avg_delay
    min: -60
    max: 1440
    strict_max: true
    mostly: 0.99
    policy: warn
  - in_set: origin
    values: [EWR, JFK, LGA]
  - regex: carrier
    pattern: '^[A-Z0-9]{2}$'
  - row_count:
    min: 1
  - freshness: loaded_at
    max_age: 48h
  - expectation: ExpectColumnMeanToBeBetween
    kwargs: {column: avg_delay, min_value: 0, max_value: 60}
"""


def load(tmp_path: Path, text: str, name: str = "suite") -> object:
    make_project(tmp_path, {})
    return load_suite_file(write_suite(tmp_path, name, text))


def config_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, text, "broken")
    return str(raised.value)


def test_full_suite_parses_every_rule_kind(tmp_path: Path) -> None:
    suite = load(tmp_path, FULL_SUITE, "mart_daily")

    kinds = [type(rule) for rule in suite.rules]  # type: ignore[attr-defined]
    assert kinds == [
        NotNull,
        NotNull,
        Unique,
        Unique,
        Between,
        InSet,
        Regex,
        RowCount,
        Freshness,
        CustomExpectation,
    ]
    assert suite.name == "mart_daily"  # type: ignore[attr-defined]
    assert suite.model == "mart_daily"  # type: ignore[attr-defined]


def test_not_null_list_checks_each_column(tmp_path: Path) -> None:
    suite = load(tmp_path, FULL_SUITE)

    names = [rule.rule_name for rule in suite.rules[:2]]  # type: ignore[attr-defined]
    assert names == ["not_null(flight_date)", "not_null(carrier)"]


def test_unique_list_is_one_compound_key(tmp_path: Path) -> None:
    suite = load(tmp_path, FULL_SUITE)

    compound, single = suite.rules[2], suite.rules[3]  # type: ignore[attr-defined]
    assert compound.columns == ["flight_date", "carrier", "origin"]
    assert single.columns == ["id"]


def test_mapping_form_equals_sibling_form(tmp_path: Path) -> None:
    siblings = load(tmp_path, "table: raw.t\nrules:\n  - between: x\n    min: 1\n    max: 2\n")
    mapping = load(tmp_path, "table: raw.t\nrules:\n  - between: {column: x, min: 1, max: 2}\n")

    assert siblings.rules == mapping.rules  # type: ignore[attr-defined]


def test_rule_options_parsed(tmp_path: Path) -> None:
    between = load(tmp_path, FULL_SUITE).rules[4]  # type: ignore[attr-defined]

    assert between.mostly == 0.99
    assert between.policy == "warn"
    assert between.strict_max is True
    assert between.strict_min is False


def test_unknown_rule_kind_lists_allowed(tmp_path: Path) -> None:
    message = config_error(tmp_path, "model: m\nrules:\n  - not_nul: a\n")

    assert "broken.yml" in message
    assert "rules[0]" in message
    assert "not_null, unique, between, in_set, regex, row_count, freshness, expectation" in message


def test_two_rule_kinds_in_one_entry_rejected(tmp_path: Path) -> None:
    message = config_error(tmp_path, "model: m\nrules:\n  - not_null: a\n    unique: a\n")

    assert "rules[0] names 2 rule kinds" in message


def test_unknown_rule_field_names_rule_and_allowed(tmp_path: Path) -> None:
    message = config_error(tmp_path, "model: m\nrules:\n  - between: a\n    mn: 1\n")

    assert "rules[0] (between) mn: unknown field" in message
    assert "allowed for between: name, policy, description, mostly, column, min, max" in message


def test_invalid_policy_lists_allowed_values(tmp_path: Path) -> None:
    message = config_error(tmp_path, "model: m\nrules:\n  - not_null: a\n    policy: blok\n")

    assert "rules[0] (not_null) policy: invalid value 'blok'" in message
    assert "'block', 'warn' or 'quarantine'" in message


def test_invalid_suite_policy_named(tmp_path: Path) -> None:
    message = config_error(tmp_path, "model: m\npolicy: stop\nrules:\n  - not_null: a\n")

    assert "policy: invalid value 'stop'" in message


def test_unknown_top_level_field_rejected(tmp_path: Path) -> None:
    message = config_error(tmp_path, "model: m\nrule: []\nrules:\n  - not_null: a\n")

    assert "rule: unknown field" in message


def test_between_needs_a_bound(tmp_path: Path) -> None:
    message = config_error(tmp_path, "model: m\nrules:\n  - between: a\n")

    assert "between needs min, max or both" in message


def test_between_rejects_reversed_bounds(tmp_path: Path) -> None:
    message = config_error(tmp_path, "model: m\nrules:\n  - between: a\n    min: 5\n    max: 1\n")

    assert "min 5 is greater than max 1" in message


def test_mostly_outside_range_rejected(tmp_path: Path) -> None:
    message = config_error(tmp_path, "model: m\nrules:\n  - not_null: a\n    mostly: 1.5\n")

    assert "rules[0] (not_null) mostly" in message


def test_row_count_takes_no_mostly(tmp_path: Path) -> None:
    message = config_error(tmp_path, "model: m\nrules:\n  - row_count: {min: 1, mostly: 0.5}\n")

    assert "rules[0] (row_count) mostly: unknown field" in message


def test_invalid_regex_rejected(tmp_path: Path) -> None:
    message = config_error(tmp_path, "model: m\nrules:\n  - regex: a\n    pattern: '(['\n")

    assert "invalid regular expression" in message


def test_invalid_max_age_rejected(tmp_path: Path) -> None:
    message = config_error(tmp_path, "model: m\nrules:\n  - freshness: a\n    max_age: 2 weeks\n")

    assert "invalid duration '2 weeks'" in message


def test_suite_needs_model_or_table(tmp_path: Path) -> None:
    message = config_error(tmp_path, "rules:\n  - not_null: a\n")

    assert "set either model or table" in message


def test_table_needs_schema(tmp_path: Path) -> None:
    message = config_error(tmp_path, "table: flights\nrules:\n  - not_null: a\n")

    assert "use schema.table" in message


def test_duplicate_rule_names_rejected(tmp_path: Path) -> None:
    message = config_error(tmp_path, "model: m\nrules:\n  - not_null: a\n  - not_null: a\n")

    assert "not_null(a) appear more than once" in message


def test_name_field_rejected(tmp_path: Path) -> None:
    message = config_error(tmp_path, "name: other\nmodel: m\nrules:\n  - not_null: a\n")

    assert "named after its file" in message


def test_empty_rules_rejected(tmp_path: Path) -> None:
    message = config_error(tmp_path, "model: m\nrules: []\n")

    assert "rules" in message
    assert "at least 1" in message


def test_unknown_suite_name_lists_known(tmp_path: Path) -> None:
    project = make_project(tmp_path, {"orders": "model: m\nrules:\n  - not_null: a\n"})

    with pytest.raises(ConfigError) as raised:
        load_suites(project, ["order"], "shop")

    assert "unknown quality suite 'order'" in str(raised.value)
    assert "known suites: orders" in str(raised.value)
    assert raised.value.error_code == "CONFIG_NOT_FOUND"


def test_rule_policy_beats_pipeline_and_suite(tmp_path: Path) -> None:
    project = make_project(
        tmp_path,
        {
            "orders": """\
            model: m
            policy: warn
            rules:
              - not_null: a
              - not_null: b
                policy: quarantine
            """
        },
    )
    suite = load_suites(project, ["orders"])[0]

    pipeline_default = pipeline_with({"suites": ["orders"], "policy": "quarantine"}).quality
    per_suite = pipeline_with({"suites": [{"name": "orders", "policy": "block"}]}).quality

    assert [p.policy for p in plan_rules(suite, pipeline_default)] == ["warn", "quarantine"]
    assert [p.policy for p in plan_rules(suite, per_suite)] == ["block", "quarantine"]


def test_pipeline_policy_fills_suites_without_one(tmp_path: Path) -> None:
    project = make_project(tmp_path, {"orders": "model: m\nrules:\n  - not_null: a\n"})
    suite = load_suites(project, ["orders"])[0]
    quality = pipeline_with({"suites": ["orders"], "policy": "warn"}).quality

    assert [p.policy for p in plan_rules(suite, quality)] == ["warn"]
    assert [p.policy for p in plan_rules(suite, None)] == ["block"]


def test_pipeline_lists_suite_twice_rejected() -> None:
    with pytest.raises(ValueError, match="listed more than once"):
        Pipeline.model_validate(
            {
                "name": "shop",
                "source": {"type": "files", "url": "data"},
                "load": {"table": "orders"},
                "quality": {"suites": ["orders", {"name": "orders", "policy": "warn"}]},
            }
        )
