"""`mocra-elt init DIR`: scaffold a new project."""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from mocra_elt.cli.common import command_path, handle_errors
from mocra_elt.errors import ConfigError

SCAFFOLD = Path(__file__).resolve().parents[1] / "scaffold"
RENAMED = {"gitignore": ".gitignore"}
SKIPPED = {"__init__.py", "__pycache__"}


@click.command()
@click.argument("directory", type=click.Path(path_type=Path))
@handle_errors
def init(directory: Path) -> None:
    """Create a new project in DIRECTORY with one example pipeline that runs as it is."""
    from mocra_elt.cli.console import console

    if directory.exists() and any(directory.iterdir()):
        raise ConfigError(f"{directory} already exists and is not empty; choose a new folder name.")
    copy_scaffold(directory)
    mocra = command_path("mocra-elt")
    if "/" in mocra:
        mocra = str(Path(mocra).resolve())  # the hint runs from inside the new folder
    console.print(
        f"Created a mocra-elt project in {directory}.\n"
        f"Next: cd {directory} && {mocra} run && {mocra} runs list"
    )


def copy_scaffold(directory: Path) -> None:
    for source in sorted(SCAFFOLD.rglob("*")):
        relative = source.relative_to(SCAFFOLD)
        if source.is_dir() or SKIPPED & set(relative.parts):
            continue
        target = directory / relative.parent / RENAMED.get(relative.name, relative.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
