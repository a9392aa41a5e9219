"""The exception hierarchy of mocra-elt.

Every error raised on purpose derives from `MocraError`. Each carries a stable
`error_code` that audit rows and dead letters store, and a `transient` flag that
the retry policy reads: only transient errors are retried.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Stable error codes, written to the audit tables. Add codes, never rename them.
ERROR_CODES: dict[str, str] = {
    "CONFIG_INVALID": "A pipeline definition or project setting is invalid.",
    "CONFIG_NOT_FOUND": "A pipeline, file or dbt selection that was named does not exist.",
    "SECRET_MISSING": "A secret reference names an environment variable or key that is not set.",
    "SOURCE_HTTP_4XX": "The HTTP source answered with a client error other than 429.",
    "SOURCE_HTTP_5XX": "The HTTP source answered 429 or a server error after all retries.",
    "SOURCE_UNAVAILABLE": "The source could not be reached (connection refused, DNS, timeout).",
    "SOURCE_AUTH": "The source rejected the credentials.",
    "SOURCE_FILE_UNREADABLE": "A source file could not be read or parsed.",
    "RECORD_PARSE_ERROR": "A record could not be parsed.",
    "LOAD_FAILED": "The load into the warehouse failed.",
    "WAREHOUSE_LOCKED": "The warehouse is locked by another process.",
    "PIPELINE_LOCKED": "Another run of the pipeline, or of one writing the same table, is active.",
    "TRANSFORM_FAILED": "A dbt model or test failed.",
    "QUALITY_BLOCKED": "A quality gate with the block policy failed.",
    "SINK_FAILED": "Publishing to a sink failed.",
    "SINK_CONSTRAINT_VIOLATION": "The sink rejected rows (key or constraint violation).",
    "RUN_ABANDONED": "The process running the run ended before it finished, e.g. killed.",
    "UPSTREAM_FAILED": "A pipeline this one depends on failed in the same invocation.",
    "INTERNAL": "An unexpected error; the message and traceback tell more.",
}


class MocraError(Exception):
    """Root of every error that mocra-elt raises on purpose."""

    error_code = "INTERNAL"
    transient = False

    def __init__(self, message: str, *, error_code: str | None = None, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        if error_code is not None:
            if error_code not in ERROR_CODES:
                raise ValueError(f"Unknown error code {error_code!r}.")
            self.error_code = error_code
        self.context = {key: value for key, value in context.items() if value is not None}

    def __str__(self) -> str:
        return self.message


class ConfigError(MocraError):
    """An invalid pipeline definition or project setting; the CLI exits 2 on it."""

    error_code = "CONFIG_INVALID"

    def __init__(
        self,
        message: str,
        *,
        path: Path | str | None = None,
        pipeline: str | None = None,
        field: str | None = None,
        error_code: str | None = None,
    ) -> None:
        prefix = f"{path}: " if path is not None else ""
        super().__init__(
            prefix + message, error_code=error_code, path=path, pipeline=pipeline, field=field
        )
        self.path = path
        self.pipeline = pipeline
        self.field = field


class SecretError(ConfigError):
    """A secret reference that cannot be resolved."""

    error_code = "SECRET_MISSING"


class StageError(MocraError):
    """A failure inside one stage of a run."""

    error_code = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        pipeline: str | None = None,
        stage: str | None = None,
        error_code: str | None = None,
        transient: bool | None = None,
        **context: Any,
    ) -> None:
        super().__init__(message, error_code=error_code, pipeline=pipeline, stage=stage, **context)
        self.pipeline = pipeline
        self.stage = stage
        if transient is not None:
            self.transient = transient


class TransientError(StageError):
    """A failure that may pass on its own (network, timeout, 429/5xx, lock); retried."""

    transient = True


class SourceError(StageError):
    """The source rejected the request or returned data that cannot be read."""

    error_code = "SOURCE_FILE_UNREADABLE"


class LoadError(StageError):
    error_code = "LOAD_FAILED"


class TransformError(StageError):
    error_code = "TRANSFORM_FAILED"


class QualityError(StageError):
    error_code = "QUALITY_BLOCKED"


class SinkError(StageError):
    error_code = "SINK_FAILED"


class WarehouseLockedError(TransientError):
    error_code = "WAREHOUSE_LOCKED"


class PipelineLockedError(StageError):
    """Another run holds the pipeline's lock; retried only by waiting, not by the retry policy."""

    error_code = "PIPELINE_LOCKED"


class RunFailed(MocraError):
    """Raised by the CLI layer when one or more pipelines of an invocation failed."""
