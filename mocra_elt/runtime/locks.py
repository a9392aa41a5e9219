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
def _file_lock(path: Path, pipeline: str, run_id: str, wait: float) -> Iterator[None]:
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - closed in the finally below
    try:
        _acquire(handle, path, pipeline, wait)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()} {run_id}\n")
        handle.flush()
        yield
    finally:
        handle.close()


def _acquire(handle: IO[str], path: Path, pipeline: str, wait: float) -> None:
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise PipelineLockedError(
                    f"pipeline {pipeline!r} cannot start: {path.stem} is held by "
                    f"{_holder(path)}. Wait for that run to finish, or pass --wait SECONDS "
                    "to wait for it.",
                    pipeline=pipeline,
                ) from None
            time.sleep(POLL_SECONDS)


def _holder(path: Path) -> str:
    try:
        pid, run_id = path.read_text(encoding="utf-8").split()
    except (OSError, ValueError):
        return "another run"
    return f"run {run_id} (process {pid})"
