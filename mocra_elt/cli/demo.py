"""`mocra-elt demo`: the reference data servers and file writers."""

from __future__ import annotations

import click


@click.group()
def demo() -> None:
    """Serve and publish the NYC 2013 flights reference data."""
