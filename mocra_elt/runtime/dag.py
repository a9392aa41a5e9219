"""Order pipelines so each runs after the pipelines it depends on."""

from __future__ import annotations

from graphlib import CycleError, TopologicalSorter

from mocra_elt.config.model import Pipeline
from mocra_elt.errors import ConfigError


def execution_order(pipelines: dict[str, Pipeline], selected: list[str] | None = None) -> list[str]:
    """Return the selected pipelines (all when None) in dependency order, ties by name.

    Only the named pipelines run; their upstream pipelines are not added.
    """
    names = list(pipelines) if not selected else selected
    unknown = [name for name in names if name not in pipelines]
    if unknown:
        raise ConfigError(
            f"unknown pipeline {unknown[0]!r}. Defined pipelines: {', '.join(sorted(pipelines))}.",
            error_code="CONFIG_NOT_FOUND",
        )

    graph = {name: set(pipelines[name].depends_on) for name in pipelines}
    sorter = TopologicalSorter(graph)
    try:
        sorter.prepare()
    except CycleError as error:
        cycle = " -> ".join(error.args[1])
        raise ConfigError(f"pipelines depend on each other in a cycle: {cycle}.") from error

    ordered: list[str] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready())
        ordered.extend(ready)
        sorter.done(*ready)
    selected_names = set(names)
    return [name for name in ordered if name in selected_names]
