"""Exclusive locks that keep two runs from writing one pipeline's target at the same time.

Locks are `flock` locks on files under `<data_dir>/locks/`, so they hold between
processes that share a data folder on one machine. The kernel releases them when
the holding process exits, even after SIGKILL, so a crashed run never leaves a
stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO

from mocra_elt.config.model import Pipeline
from mocra_elt.config.project import Project
from mocra_elt.errors import PipelineLockedError

POLL_SECONDS = 0.2


def lock_names(pipeline: Pipeline) -> list[str]:
    """Return the lock names a run takes: its pipeline and the raw table it writes."""
    return [f"pipeline.{pipeline.name}", f"table.{pipeline.dataset}.{pipeline.load.table}"]


@contextmanager
def run_locks(project: Project, pipeline: Pipeline, run_id: str, wait: float) -> Iterator[None]:
    """Hold every lock of the pipeline, waiting up to `wait` seconds for each."""
    # NOTE: with the pg target, runs on other machines do not see these locks.
    folder = project.data_dir / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        for name in lock_names(pipeline):
            stack.enter_context(_file_lock(folder / f"{name}.lock", pipeline.name, run_id, wait))
        yield


@contextmanager
def warehouse_lock(project: Project, holder: str, wait: float) -> Iterator[None]:
    """Hold the DuckDB warehouse for a whole command; no-op for server warehouses.

    DuckDB lets one process at a time open the file for writing, so two commands
    that write interleave their short connections and fail each other halfway.
    """
    if project.target != "duckdb":
        yield
        return
    folder = project.data_dir / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    with _file_lock(folder / "warehouse.lock", "", holder, wait, subject="the DuckDB warehouse"):
        yield


@contextmanager
def _file_lock(
    path: Path, pipeline: str, run_id: str, wait: float, subject: str = ""
) -> Iterator[None]:
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - closed in the finally below
    try:
        _acquire(handle, path, pipeline, wait, subject)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()} {run_id}\n")
        handle.flush()
        yield
    finally:
        handle.close()


def _acquire(handle: IO[str], path: Path, pipeline: str, wait: float, subject: str) -> None:
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                requester = f"pipeline {pipeline!r}" if pipeline else "this command"
                raise PipelineLockedError(
                    f"{requester} cannot start: {subject or path.stem} is held by {_holder(path)}. "
                    "Wait for it to finish, or pass --wait SECONDS to wait for it.",
                    pipeline=pipeline or None,
                ) from None
            time.sleep(POLL_SECONDS)


def _holder(path: Path) -> str:
    try:
        pid, holder = path.read_text(encoding="utf-8").split(maxsplit=1)
    except (OSError, ValueError):
        return "another run"
    holder = holder.strip()
    return f"{holder} (process {pid})" if " " in holder else f"run {holder} (process {pid})"
