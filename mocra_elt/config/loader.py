"""Read pipeline definitions from YAML and turn validation failures into `ConfigError`."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mocra_elt.config.model import Pipeline
from mocra_elt.errors import ConfigError

YAML_SUFFIXES = (".yml", ".yaml")


class UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that rejects a key given twice in one mapping."""

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} appears twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_pipeline_file(path: Path) -> Pipeline:
    """Parse and validate one definition. The pipeline name defaults to the file stem."""
    try:
        with path.open(encoding="utf-8") as stream:  # a stream lets PyYAML name the file
            document = yaml.load(stream, Loader=UniqueKeyLoader)
    except yaml.YAMLError as error:
        raise ConfigError(f"invalid YAML: {error}", path=path) from error
    except OSError as error:
        raise ConfigError(f"cannot read the file: {error.strerror}", path=path) from error

    if document is None:
        raise ConfigError(
            "the file is empty; a pipeline needs at least source and load.", path=path
        )
    if not isinstance(document, dict):
        raise ConfigError(
            f"expected a mapping of pipeline fields, found {type(document).__name__}.", path=path
        )

    document.setdefault("name", path.stem)
    try:
        return Pipeline.model_validate(document)
    except ValidationError as error:
        raise _to_config_error(error, path, str(document.get("name"))) from None


def load_pipelines(sources_dir: Path) -> dict[str, Pipeline]:
    """Load every definition in `sources_dir`, checking names are unique and dependencies exist."""
    if not sources_dir.is_dir():
        raise ConfigError(f"the pipeline folder {sources_dir} does not exist.")

    pipelines: dict[str, Pipeline] = {}
    origins: dict[str, Path] = {}
    for path in sorted(p for p in sources_dir.iterdir() if p.suffix in YAML_SUFFIXES):
        pipeline = load_pipeline_file(path)
        if pipeline.name in pipelines:
            raise ConfigError(
                f"pipeline name {pipeline.name!r} is also defined in {origins[pipeline.name]}; "
                "rename one of them.",
                path=path,
                pipeline=pipeline.name,
                field="name",
            )
        pipelines[pipeline.name] = pipeline
        origins[pipeline.name] = path

    for name, pipeline in pipelines.items():
        if name in pipeline.depends_on:
            raise ConfigError(
                f"pipeline {name!r}: depends_on names the pipeline itself; remove it.",
                path=origins[name],
                pipeline=name,
                field="depends_on",
            )
        for upstream in pipeline.depends_on:
            if upstream not in pipelines:
                raise ConfigError(
                    f"pipeline {name!r}: depends_on names {upstream!r}, which is not defined. "
                    f"Defined pipelines: {', '.join(sorted(pipelines))}.",
                    path=origins[name],
                    pipeline=name,
                    field="depends_on",
                    error_code="CONFIG_NOT_FOUND",
                )
    return pipelines


def _to_config_error(error: ValidationError, path: Path, pipeline: str) -> ConfigError:
    lines = []
    first_field = None
    for issue in error.errors():
        field = _format_location(issue["loc"])
        first_field = first_field or field
        lines.append(f"  {field}: {_describe(issue)}")
    noun = "error" if len(lines) == 1 else "errors"
    message = f"pipeline {pipeline!r} has {len(lines)} {noun}:\n" + "\n".join(lines)
    return ConfigError(message, path=path, pipeline=pipeline, field=first_field)


def _format_location(location: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for part in location:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif parts and parts[-1] != "" and part in _UNION_TAGS:
            continue  # pydantic puts the union member ("http", "bearer") in the location
        else:
            parts.append(("." if parts else "") + str(part))
    return "".join(parts) or "(top level)"


_UNION_TAGS = {
    "http",
    "files",
    "db",
    "kafka",
    "bearer",
    "api_key",
    "basic",
    "page_number",
    "offset",
    "cursor",
    "next_link",
    "header_link",
    "single_page",
}


def _describe(issue: Any) -> str:
    kind = issue["type"]
    context = issue.get("ctx") or {}
    if kind == "extra_forbidden":
        name = str(issue["loc"][-1])
        close = difflib.get_close_matches(name, _known_fields(), n=1)
        hint = f"did you mean {close[0]!r}?" if close else "see the pipeline reference in README.md"
        return f"unknown field; {hint}"
    if kind == "missing":
        return "required field is missing"
    if kind == "literal_error":
        return f"invalid value {issue['input']!r}; allowed: {context.get('expected')}"
    if kind == "union_tag_invalid":
        return f"invalid type {context.get('tag')!r}; allowed: {context.get('expected_tags')}"
    if kind == "union_tag_not_found":
        return f"the 'type' field is missing; allowed: {context.get('expected_tags', '')}".rstrip(
            ": "
        )
    if kind == "string_pattern_mismatch":
        return (
            f"invalid name {issue['input']!r}: use lower-case letters, digits and underscores, "
            "starting with a letter"
        )
    message = str(issue["msg"]).removeprefix("Value error, ")
    if "secrets may not be written" in message or not _short(issue):
        return message  # never echo a clear-text secret back
    if repr(issue["input"]) in message:
        return message
    return f"{message} (got {issue['input']!r})"


def _known_fields() -> list[str]:
    """Return every field name of the pipeline definition models, for spelling hints."""
    from pydantic import BaseModel

    from mocra_elt.config import model

    names: set[str] = set()
    for value in vars(model).values():
        if isinstance(value, type) and issubclass(value, BaseModel):
            names.update(value.model_fields)
    return sorted(names)


def _short(issue: Any) -> bool:
    value = issue.get("input")
    return isinstance(value, str | int | float | bool) and len(repr(value)) < 80
