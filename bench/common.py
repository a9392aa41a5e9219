"""Helpers shared by the benchmarks: temporary projects, timing and the printed table."""

from __future__ import annotations

import os
import platform
import statistics
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]


def quiet_environment() -> None:
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "False")
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")


def make_project(root: Path, pipeline: str, body: str) -> Any:
    """Create a project with one pipeline and no dbt models; return its `Project`."""
    from mocra_elt.config.project import Project
    from mocra_elt.runtime.environment import configure_environment

    (root / "sources").mkdir(parents=True, exist_ok=True)
    (root / "dbt_project").mkdir(exist_ok=True)
    (root / "sources" / f"{pipeline}.yml").write_text(textwrap.dedent(body))
    for key in ("MOCRA_WAREHOUSE", "MOCRA_DATA_DIR", "DLT_DATA_DIR"):
        os.environ.pop(key, None)
    project = Project.discover(root)
    configure_environment(project)
    return project


def run_project(project: Any) -> int:
    """Run every pipeline of the project; return the rows loaded, raising if a run failed."""
    from mocra_elt.config.loader import load_pipelines
    from mocra_elt.load.warehouse import open_warehouse
    from mocra_elt.runtime.runner import run_pipelines

    results = run_pipelines(project, load_pipelines(project.sources_dir), open_warehouse(project))
    rows = 0
    for result in results:
        if not result.succeeded:
            raise RuntimeError(f"benchmark run of {result.pipeline} failed: {result.error}")
        rows += next(s.rows_out or 0 for s in result.stages if s.stage == "load")
    return rows


def median_seconds(function: Callable[[int], int], repeat: int) -> tuple[float, int]:
    """Call function(attempt) `repeat` times; return the median seconds and the rows it reported."""
    timings, rows = [], 0
    for attempt in range(repeat):
        started = time.perf_counter()
        rows = function(attempt)
        timings.append(time.perf_counter() - started)
    return statistics.median(timings), rows


def print_comparison(title: str, rows: int, ours: float, baseline: float, label: str) -> None:
    print(f"\n{title}")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(f"{'path':<34} {'seconds':>9} {'rows/s':>12}")
    print(f"{'mocra-elt':<34} {ours:>9.2f} {rows / ours:>12,.0f}")
    print(f"{label:<34} {baseline:>9.2f} {rows / baseline:>12,.0f}")
    print(f"ratio (mocra-elt rows/s / baseline rows/s): {baseline / ours:.2f}")
