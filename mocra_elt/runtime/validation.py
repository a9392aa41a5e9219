"""Checks that need more than the YAML: stage support and dbt selections."""

from __future__ import annotations

from mocra_elt.config.model import Pipeline
from mocra_elt.config.project import Project
from mocra_elt.errors import ConfigError

SUPPORTED_SINKS: tuple[str, ...] = ("postgres", "object_storage", "kafka")


def check_runnable(project: Project, pipeline: Pipeline) -> None:
    """Raise ConfigError for parts of a definition this version cannot run."""
    from mocra_elt.publish.config import parse_sink
    from mocra_elt.quality.suites import check_pipeline_suites

    check_pipeline_suites(project, pipeline)
    if pipeline.quality is not None and project.target != "duckdb":
        # TODO(postgres): quality gates find failing rows by DuckDB's rowid; use ctid on pg.
        raise ConfigError(
            f"pipeline {pipeline.name!r} has quality gates, which run on the duckdb target only "
            f"in this version (target: {project.target}). Run it with --target duckdb, or remove "
            "its quality section for this target.",
            pipeline=pipeline.name,
            field="quality",
        )
    for index, sink in enumerate(pipeline.sinks):
        if sink.type not in SUPPORTED_SINKS:
            allowed = ", ".join(SUPPORTED_SINKS) or "none yet"
            raise ConfigError(
                f"pipeline {pipeline.name!r}: sinks[{index}].type {sink.type!r} is not a "
                f"supported sink (supported: {allowed}).",
                pipeline=pipeline.name,
                field=f"sinks[{index}].type",
            )
        parse_sink(sink, pipeline.name, index)


def check_transform(project: Project, pipeline: Pipeline) -> None:
    if pipeline.transform is None:
        return
    from mocra_elt.transform.dbt import check_selection

    check_selection(project, pipeline.transform, pipeline.name, project.sources_dir)
