"""Logging: every record about a run carries run_id and pipeline_id."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

PACKAGE_LOGGER = "mocra_elt"


class RunLogger(logging.LoggerAdapter[logging.Logger]):
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = dict(self.extra or {})
        extra.update(kwargs.get("extra") or {})
        kwargs["extra"] = extra
        return msg, kwargs


def run_logger(name: str, run_id: str, pipeline: str) -> logging.LoggerAdapter[logging.Logger]:
    return RunLogger(logging.getLogger(name), {"run_id": run_id, "pipeline_id": pipeline})


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ids = ""
        run_id = getattr(record, "run_id", None)
        if run_id:
            ids = f" run_id={run_id} pipeline_id={getattr(record, 'pipeline_id', '')}"
        when = self.formatTime(record, "%Y-%m-%dT%H:%M:%S")
        base = f"{when} {record.levelname:<7} {record.name}{ids}: {record.getMessage()}"
        if record.exc_info:
            base += "\n" + self.formatException(record.exc_info)
        return base


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("run_id", "pipeline_id", "stage"):
            if getattr(record, key, None) is not None:
                document[key] = getattr(record, key)
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str)


def configure_logging(level: str = "warning", log_format: str = "text") -> None:
    """Send mocra-elt's log records to stderr; libraries stay at warning."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    package = logging.getLogger(PACKAGE_LOGGER)
    package.handlers[:] = [handler]
    package.setLevel(level.upper())
    package.propagate = False
    # Great Expectations logs set-up chatter at INFO through the root logger.
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
