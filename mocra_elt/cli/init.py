"""`mocra-elt init DIR`: scaffold a new project."""

from __future__ import annotations

import click


@click.command()
@click.argument("directory", type=click.Path())
def init(directory: str) -> None:
    """Create a new project in DIRECTORY with one example pipeline."""
    raise click.ClickException("init is not available yet")
