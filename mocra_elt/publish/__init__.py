"""Publish stage: copy models from the warehouse to the pipeline's sinks.

Each sink type is a module (`postgres`, `object_storage`, `kafka`) with a class whose
`publish()` returns a `SinkResult`. `publish_sinks` runs the sinks in the order
the pipeline lists them and stops at the first failure.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mocra_elt.config.model import Pipeline
    from mocra_elt.config.project import Project
    from mocra_elt.load.warehouse import Warehouse


@dataclass
class SinkResult:
    """The outcome of one sink: rows read from the model, rows changed, details for the audit."""

    sink: str
    rows_read: int
    rows_written: int
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class PublishContext:
    run_id: str
    pipeline: Pipeline
    project: Project
    warehouse: Warehouse
    log: logging.LoggerAdapter[logging.Logger]


def publish_sinks(context: PublishContext) -> list[SinkResult]:
    """Publish to every sink of the pipeline, in order; raises the first sink's error."""
    from mocra_elt.publish.config import (
        KafkaSinkOptions,
        ObjectStorageSinkOptions,
        PostgresSinkOptions,
        parse_sink,
    )

    results = []
    for index, sink in enumerate(context.pipeline.sinks):
        options = parse_sink(sink, context.pipeline.name, index)
        if isinstance(options, PostgresSinkOptions):
            from mocra_elt.publish.postgres import PostgresSink

            result = PostgresSink(options, index, context).publish()
        elif isinstance(options, ObjectStorageSinkOptions):
            from mocra_elt.publish.object_storage import ObjectStorageSink

            result = ObjectStorageSink(options, index, context).publish()
        elif isinstance(options, KafkaSinkOptions):
            from mocra_elt.publish.kafka import KafkaSink

            result = KafkaSink(options, index, context).publish()
        else:  # pragma: no cover - parse_sink accepts only the types above
            raise AssertionError(f"no publisher for sink type {sink.type!r}")
        context.log.info(
            "sink %s published: %d rows read, %d rows written",
            result.sink,
            result.rows_read,
            result.rows_written,
        )
        results.append(result)
    return results
