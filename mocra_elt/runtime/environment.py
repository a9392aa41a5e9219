"""Process-wide settings for the libraries mocra-elt drives, applied before they are imported."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from mocra_elt.config.project import Project

DEFAULTS = {
    # No usage statistics leave the machine from dbt, dlt or Great Expectations.
    "DO_NOT_TRACK": "1",
    "DBT_SEND_ANONYMOUS_USAGE_STATS": "False",
    "RUNTIME__DLTHUB_TELEMETRY": "false",
    # Arrow batches get _dlt_load_id, which crash recovery uses to find uncommitted rows.
    "NORMALIZE__PARQUET_NORMALIZER__ADD_DLT_LOAD_ID": "true",
    # The audit tables, not dlt's local state, hold the watermarks.
    "RESTORE_FROM_DESTINATION": "false",
    "DBT_PRINTER_WIDTH": "100",
}


def configure_environment(project: Project) -> None:
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ["DLT_DATA_DIR"] = str(project.data_dir / "dlt")
    # dlt reads `${secret:...}` references from <project>/.dlt/secrets.toml whatever the cwd.
    if os.environ.get("DLT_PROJECT_DIR") != str(project.root):
        os.environ["DLT_PROJECT_DIR"] = str(project.root)
        _reload_dlt_settings(project)


def _reload_dlt_settings(project: Project) -> None:
    """Point an already imported dlt at the project's .dlt folder; it caches the first one."""
    if "dlt" not in sys.modules:
        return
    from dlt.common.configuration.container import Container
    from dlt.common.configuration.specs.pluggable_run_context import PluggableRunContext

    Container()[PluggableRunContext].reload(str(project.root))


@contextmanager
def temporary_environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of the block, then restore the old values."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
