"""Pieces every command module shares: the settings object and the error handler.

They live apart from `mocra_elt.cli.main`, which imports every command module,
so that a command module can be imported on its own.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from mocra_elt.errors import ConfigError, MocraError, RunFailed

F = TypeVar("F", bound=Callable[..., Any])

EXIT_FAILED = 1
EXIT_USAGE = 2


class Settings:
    """Options shared by every command."""

    def __init__(self, project_dir: Path | None, target: str | None, debug: bool) -> None:
        self.project_dir = project_dir
        self.target = target
        self.debug = debug

    def project(self) -> Any:
        from mocra_elt.config.project import Project
        from mocra_elt.runtime.environment import configure_environment

        project = Project.discover(self.project_dir, self.target)
        configure_environment(project)
        return project


def handle_errors(command: F) -> F:
    """Turn mocra-elt errors into `Error: ...` and an exit code; `--debug` shows tracebacks."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        settings = click.get_current_context().find_object(Settings)
        try:
            return command(*args, **kwargs)
        except (ConfigError, RunFailed, MocraError) as error:
            if settings is not None and settings.debug:
                raise
            code = EXIT_USAGE if isinstance(error, ConfigError) else EXIT_FAILED
            if not isinstance(error, RunFailed):
                click.echo(f"Error: {error}", err=True)
            sys.exit(code)

    return wrapper  # type: ignore[return-value]


def command_path(name: str) -> str:
    """Return how to call this installation's `name` from the current folder.

    A virtual environment inside the current folder gives a relative path such as
    `.venv/bin/mocra-elt`; an executable on PATH gives its bare name.
    """
    import shutil

    executable = Path(sys.executable).parent / name
    if shutil.which(name) == str(executable):
        return name
    try:
        return str(executable.relative_to(Path.cwd()))
    except ValueError:
        return str(executable)
