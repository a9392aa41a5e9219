"""Quality suites: what one YAML file in `expectations/` may contain.

A suite checks one relation, either a dbt model (`model: NAME`) or a warehouse
table (`table: SCHEMA.TABLE`), with a list of rules. Each rule is a mapping
whose first key names the rule and whose value names the column(s):

    model: mart_daily_departure_delay
    policy: block
    rules:
      - not_null: [flight_date, carrier, origin]
      - unique: [flight_date, carrier, origin]
      - between: avg_dep_delay
        min: -60
        max: 1440
        mostly: 0.99
        policy: warn
      - expectation: ExpectColumnMeanToBeBetween
        kwargs: {column: avg_dep_delay, min_value: 0, max_value: 60}

The parameters of a rule may also be given as the value itself
(`- between: {column: avg_dep_delay, min: -60}`). `not_null` with a list
checks each column; `unique` with a list checks the combination.

NULL handling: only `not_null` fails on NULL, and `between`, `in_set` and
`regex` pass it. `unique` ignores a row whose key columns are all NULL. NaN in
a double column is a value, not NULL, so it passes `not_null` and fails
`between`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mocra_elt.config.model import Pipeline, Quality, parse_duration
from mocra_elt.config.project import Project
from mocra_elt.errors import ConfigError

Policy = Literal["block", "warn", "quarantine"]
DEFAULT_POLICY: Policy = "block"
SUITE_SUFFIXES = (".yml", ".yaml")
IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_$]*$"
QUALIFIED_TABLE = r"^[A-Za-z_][A-Za-z0-9_$]*\.[A-Za-z_][A-Za-z0-9_$]*$"

Bound = int | float | date | datetime | str
Scalar = int | float | bool | date | datetime | str


class RuleBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(default=None, description="Rule id in results; generated if unset.")
    policy: Policy | None = Field(default=None, description="Overrides the suite policy.")
    description: str = ""

    @property
    def columns(self) -> list[str]:
        column = getattr(self, "column", None)
        return [column] if isinstance(column, str) else []

    @property
    def default_name(self) -> str:
        kind = getattr(self, "kind", "rule")
        return f"{kind}({','.join(self.columns)})" if self.columns else kind

    @property
    def rule_name(self) -> str:
        return self.name or self.default_name


class RowRule(RuleBase):
    mostly: float = Field(
        default=1.0, gt=0, le=1, description="Share of checked rows that must pass."
    )


class NotNull(RowRule):
    kind: Literal["not_null"]
    column: str


class Unique(RowRule):
    kind: Literal["unique"]
    columns_: list[str] = Field(alias="columns", min_length=1)

    @property
    def columns(self) -> list[str]:
        return list(self.columns_)


class Between(RowRule):
    kind: Literal["between"]
    column: str
    min: Bound | None = None
    max: Bound | None = None
    strict_min: bool = Field(default=False, description="Exclude min itself.")
    strict_max: bool = Field(default=False, description="Exclude max itself.")

    @model_validator(mode="after")
    def _check_bounds(self) -> Between:
        if self.min is None and self.max is None:
            raise ValueError("between needs min, max or both")
        if self.min is not None and self.max is not None:
            try:
                reversed_bounds = self.min > self.max  # type: ignore[operator]
            except TypeError:
                raise ValueError(
                    f"min {self.min!r} and max {self.max!r} are values of different types"
                ) from None
            if reversed_bounds:
                raise ValueError(f"min {self.min!r} is greater than max {self.max!r}")
        return self


class InSet(RowRule):
    kind: Literal["in_set"]
    column: str
    values: list[Scalar] = Field(min_length=1)


class Regex(RowRule):
    kind: Literal["regex"]
    column: str
    pattern: str = Field(description="Python regular expression, searched anywhere in the value.")

    @field_validator("pattern")
    @classmethod
    def _compile(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as error:
            raise ValueError(f"invalid regular expression {value!r}: {error}") from None
        return value


class RowCount(RuleBase):
    kind: Literal["row_count"]
    min: int | None = Field(default=None, ge=0)
    max: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _check_bounds(self) -> RowCount:
        if self.min is None and self.max is None:
            raise ValueError("row_count needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        return self


class Freshness(RuleBase):
    kind: Literal["freshness"]
    column: str
    max_age: str | int = Field(description="Maximum age of the newest value, e.g. '48h'.")

    @field_validator("max_age")
    @classmethod
    def _check_age(cls, value: str | int) -> str | int:
        parse_duration(value)
        return value

    @property
    def max_age_delta(self) -> timedelta:
        return parse_duration(self.max_age)


class CustomExpectation(RowRule):
    """Any Great Expectations expectation, by class name, with its keyword arguments."""

    kind: Literal["expectation"]
    expectation: str = Field(description="Class name, e.g. ExpectColumnMeanToBeBetween.")
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        found: list[str] = []
        for key in ("column", "column_A", "column_B"):
            if isinstance(self.kwargs.get(key), str):
                found.append(self.kwargs[key])
        for key in ("column_list", "column_set"):
            if isinstance(self.kwargs.get(key), list):
                found.extend(str(column) for column in self.kwargs[key])
        return found

    @property
    def default_name(self) -> str:
        suffix = f"({','.join(self.columns)})" if self.columns else ""
        return snake_case(self.expectation) + suffix


Rule = Annotated[
    NotNull | Unique | Between | InSet | Regex | RowCount | Freshness | CustomExpectation,
    Field(discriminator="kind"),
]
RULE_KINDS: tuple[str, ...] = (
    "not_null",
    "unique",
    "between",
    "in_set",
    "regex",
    "row_count",
    "freshness",
    "expectation",
)


class Suite(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str
    description: str = ""
    model: str | None = Field(default=None, pattern=IDENTIFIER, description="dbt model name.")
    table: str | None = Field(default=None, pattern=QUALIFIED_TABLE, description="schema.table")
    schema_name: str | None = Field(
        default=None,
        alias="schema",
        pattern=IDENTIFIER,
        description="Schema of the model when the dbt manifest cannot tell.",
    )
    policy: Policy | None = None
    rules: list[Rule] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _expand_rules(cls, document: Any) -> Any:
        if isinstance(document, dict) and isinstance(document.get("rules"), list):
            document = dict(document, rules=expand_rules(document["rules"]))
        return document

    @model_validator(mode="after")
    def _check_target(self) -> Suite:
        if (self.model is None) == (self.table is None):
            raise ValueError("a suite checks exactly one relation: set either model or table")
        if self.table is not None and self.schema_name is not None:
            raise ValueError("schema applies to model only; table already names its schema")
        names = [rule.rule_name for rule in self.rules]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise ValueError(
                f"rule names must be unique within a suite: {', '.join(duplicated)} appear "
                "more than once; give one of them a name"
            )
        return self

    @property
    def target(self) -> str:
        return self.table or str(self.model)


def expand_rules(rules: list[Any]) -> list[Any]:
    """Turn the YAML form of each rule into the tagged form the models validate.

    Entries that are not a mapping with exactly one rule key are left unchanged
    for the rule validation to report with its position.
    """
    expanded: list[Any] = []
    for entry in rules:
        kind = _rule_kind(entry)
        if kind is None:
            expanded.append(entry)
            continue
        options = {key: value for key, value in entry.items() if key != kind}
        value = entry[kind]
        if kind == "not_null" and isinstance(value, list) and value:
            expanded.extend({"kind": kind, "column": column, **options} for column in value)
            continue
        expanded.append({"kind": kind, **_rule_parameters(kind, value), **options})
    return expanded


def _rule_kind(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return None
    kinds = [key for key in entry if key in RULE_KINDS]
    return kinds[0] if len(kinds) == 1 else None


def _rule_parameters(kind: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return dict(value)
    if value is None:
        return {}
    if kind == "expectation":
        return {"expectation": value}
    if kind == "unique":
        return {"columns": value if isinstance(value, list) else [value]}
    return {"column": value}


# --- loading --------------------------------------------------------------------------------


def load_suite_file(path: Path) -> Suite:
    """Parse and validate one suite file; the suite name is the file stem."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"invalid YAML: {error}", path=path) from error
    except OSError as error:
        raise ConfigError(f"cannot read the suite file: {error.strerror}", path=path) from error
    if not isinstance(document, dict):
        found = "nothing" if document is None else type(document).__name__
        raise ConfigError(
            f"expected a mapping with model or table, and rules; found {found}.", path=path
        )
    if "name" in document:
        raise ConfigError(
            f"unknown field 'name': a suite is named after its file ({path.stem!r}); "
            "rename the file instead.",
            path=path,
            field="name",
        )
    _check_rule_entries(document.get("rules"), path)
    try:
        return Suite.model_validate({**document, "name": path.stem})
    except ValidationError as error:
        raise suite_error(error, path, document) from None


def _check_rule_entries(rules: Any, path: Path) -> None:
    if not isinstance(rules, list):
        return
    allowed = ", ".join(RULE_KINDS)
    for index, entry in enumerate(rules):
        if not isinstance(entry, dict):
            raise ConfigError(
                f"rules[{index}]: expected a mapping such as '- not_null: column', found "
                f"{entry!r}. Rule kinds: {allowed}.",
                path=path,
                field=f"rules[{index}]",
            )
        kinds = [key for key in entry if key in RULE_KINDS]
        if len(kinds) != 1:
            found = ", ".join(map(str, entry)) or "no keys"
            problem = "names no rule kind" if not kinds else f"names {len(kinds)} rule kinds"
            raise ConfigError(
                f"rules[{index}] {problem} (keys: {found}); start each rule with exactly one "
                f"of: {allowed}.",
                path=path,
                field=f"rules[{index}]",
            )


def list_suites(project: Project) -> dict[str, Path]:
    """Return the suite files in `expectations/` by name (file stem)."""
    folder = project.expectations_dir
    if not folder.is_dir():
        return {}
    paths = sorted(p for p in folder.iterdir() if p.suffix in SUITE_SUFFIXES and p.is_file())
    found: dict[str, Path] = {}
    for path in paths:
        if path.stem in found:
            raise ConfigError(
                f"suite {path.stem!r} is defined twice ({found[path.stem].name} and "
                f"{path.name}); remove one of them.",
                path=path,
            )
        found[path.stem] = path
    return found


def load_suites(project: Project, names: list[str], pipeline: str | None = None) -> list[Suite]:
    """Load the named suites; an unknown name raises ConfigError listing the known ones."""
    available = list_suites(project)
    missing = [name for name in names if name not in available]
    if missing:
        known = ", ".join(sorted(available)) or f"none: {project.expectations_dir} has no .yml"
        raise ConfigError(
            f"unknown quality suite {', '.join(map(repr, missing))}. Suites are the file names "
            f"in {project.expectations_dir}; known suites: {known}.",
            pipeline=pipeline,
            field="quality.suites",
            error_code="CONFIG_NOT_FOUND",
        )
    return [load_suite_file(available[name]) for name in names]


def check_pipeline_suites(project: Project, pipeline: Pipeline) -> None:
    """Raise ConfigError when a suite the pipeline names is missing or invalid."""
    if pipeline.quality is not None:
        load_suites(project, pipeline.quality.suite_names, pipeline.name)


# --- policies -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedRule:
    """A rule with its suite and the policy that applies to it in one pipeline."""

    suite: Suite
    index: int
    rule: RuleBase
    policy: Policy

    @property
    def name(self) -> str:
        return self.rule.rule_name


def resolve_policy(rule: RuleBase, suite: Suite, quality: Quality | None) -> Policy:
    """Pick the policy: the rule's, else the pipeline's for this suite, else the suite's.

    The pipeline's `quality.policy` applies last, to suites that set none.
    """
    if rule.policy is not None:
        return rule.policy
    entry = quality.policy_for(suite.name) if quality is not None else None
    policy: Policy = entry or suite.policy or (quality.policy if quality else DEFAULT_POLICY)
    return policy


def plan_rules(suite: Suite, quality: Quality | None) -> list[PlannedRule]:
    return [
        PlannedRule(suite, index, rule, resolve_policy(rule, suite, quality))
        for index, rule in enumerate(suite.rules)
    ]


# --- error messages -------------------------------------------------------------------------


def suite_error(error: ValidationError, path: Path, document: dict[str, Any]) -> ConfigError:
    rules = expand_rules(document.get("rules") or []) if isinstance(document, dict) else []
    lines = []
    first_field = None
    for issue in error.errors():
        field, subject = _locate(issue["loc"], rules)
        first_field = first_field or field
        lines.append(f"  {subject}: {_describe(issue)}")
    noun = "error" if len(lines) == 1 else "errors"
    message = f"suite {path.stem!r} has {len(lines)} {noun}:\n" + "\n".join(lines)
    return ConfigError(message, path=path, field=first_field)


def _locate(location: tuple[int | str, ...], rules: list[Any]) -> tuple[str, str]:
    """Name the field of an issue; a rule is named by position and kind, e.g. rules[2] (between)."""
    parts = list(location)
    if len(parts) >= 2 and parts[0] == "rules" and isinstance(parts[1], int):
        index = parts[1]
        entry = rules[index] if index < len(rules) else None
        kind = entry.get("kind") if isinstance(entry, dict) else None
        rest = [str(part) for part in parts[2:] if part != kind]
        rest = ["columns" if part == "columns_" else part for part in rest]
        subject = f"rules[{index}]" + (f" ({kind})" if kind else "")
        if rest:
            subject += " " + ".".join(rest)
        return f"rules[{index}]", subject
    field = ".".join("schema" if part == "schema_name" else str(part) for part in parts)
    return field or "(top level)", field or "(top level)"


def _describe(issue: Any) -> str:
    kind = issue["type"]
    context = issue.get("ctx") or {}
    if kind == "extra_forbidden":
        return f"unknown field; {_allowed_fields(issue['loc'])}"
    if kind == "missing":
        return "required field is missing"
    if kind == "literal_error":
        return f"invalid value {issue['input']!r}; allowed: {context.get('expected')}"
    if kind == "union_tag_invalid":
        return f"unknown rule kind; allowed: {', '.join(RULE_KINDS)}"
    if kind == "string_pattern_mismatch":
        return f"invalid name {issue['input']!r}: {_pattern_hint(issue['loc'])}"
    message = str(issue["msg"]).removeprefix("Value error, ")
    value = issue.get("input")
    if isinstance(value, str | int | float | bool) and len(repr(value)) < 80:
        return f"{message} (got {value!r})"
    return message


def _allowed_fields(location: tuple[int | str, ...]) -> str:
    if len(location) >= 3 and location[0] == "rules":
        model = RULE_MODELS.get(str(location[2]))
        if model is not None:
            names = [
                field.alias or name
                for name, field in model.model_fields.items()
                if name not in ("kind",)
            ]
            return f"allowed for {location[2]}: {', '.join(names)}"
    fields = [field.alias or name for name, field in Suite.model_fields.items() if name != "name"]
    return f"allowed: {', '.join(fields)}"


def _pattern_hint(location: tuple[int | str, ...]) -> str:
    if location and location[-1] == "table":
        return "use schema.table, e.g. raw_flights.flights"
    return "use letters, digits and underscores, starting with a letter"


RULE_MODELS: dict[str, type[RuleBase]] = {
    "not_null": NotNull,
    "unique": Unique,
    "between": Between,
    "in_set": InSet,
    "regex": Regex,
    "row_count": RowCount,
    "freshness": Freshness,
    "expectation": CustomExpectation,
}


def snake_case(name: str) -> str:
    """ExpectColumnMeanToBeBetween -> expect_column_mean_to_be_between."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower() if not name.islower() else name
