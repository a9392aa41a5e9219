"""`mocra-elt lineage [NODE]` and `mocra-elt lineage impact NODE.COLUMN`."""

from __future__ import annotations

from typing import Any

import click

from mocra_elt.cli.common import Settings, handle_errors

FORMATS = ("text", "json", "mermaid", "dot")


class DefaultCommandGroup(click.Group):
    """A group that runs `show` when the first argument is not one of its commands.

    So `mocra-elt lineage stg_flights` means `mocra-elt lineage show stg_flights`, and a
    node named like a command is reached with `mocra-elt lineage show NAME`.
    """

    default_command = "show"

    def parse_args(self, context: click.Context, args: list[str]) -> list[str]:
        help_options = set(context.help_option_names)
        if not args or (args[0] not in self.commands and args[0] not in help_options):
            args = [self.default_command, *args]
        return super().parse_args(context, args)


format_option = click.option(
    "--format",
    "output_format",
    type=click.Choice(FORMATS),
    default="text",
    show_default=True,
    help="Output format: text for reading, json for tools, mermaid or dot for diagrams.",
)
refresh_option = click.option(
    "--refresh",
    is_flag=True,
    help="Run dbt compile first, even when the manifest is newer than the dbt project.",
)


@click.group(cls=DefaultCommandGroup)
def lineage() -> None:
    """Show table and column lineage from source systems through dbt models to sinks.

    Node ids: `http:URL`, `files:PATH/GLOB` and `db:...` for source systems,
    `SCHEMA.TABLE` for raw tables and dbt sources, `model.NAME`, `seed.NAME`,
    `snapshot.NAME`, `exposure.NAME` for dbt nodes, and `TYPE:TARGET` for sinks.
    """


@lineage.command("show")
@click.argument("node", required=False)
@click.option("--upstream", is_flag=True, help="Only what NODE depends on.")
@click.option("--downstream", is_flag=True, help="Only what depends on NODE.")
@click.option("--columns", is_flag=True, help="Show column lineage too.")
@click.option("--depth", type=click.IntRange(1), help="Follow at most this many edges from NODE.")
@format_option
@refresh_option
@click.pass_obj
@handle_errors
def show(
    settings: Settings,
    node: str | None,
    upstream: bool,
    downstream: bool,
    columns: bool,
    depth: int | None,
    output_format: str,
    refresh: bool,
) -> None:
    """Show the lineage of NODE, or of the whole project when NODE is left out.

    NODE is a node id, a dbt name (stg_flights), a relation (analytics.stg_flights) or a
    unique end of a node id. Without --upstream or --downstream both directions are shown.
    """
    from mocra_elt.lineage.build import build_lineage
    from mocra_elt.lineage.render import render

    if (upstream or downstream or depth) and node is None:
        raise click.UsageError("--upstream, --downstream and --depth need a NODE.")
    both = not upstream and not downstream
    graph = build_lineage(settings.project(), columns=columns, refresh=refresh)
    focus = None
    if node is not None:
        focus = graph.resolve(node)
        reach = {focus}
        if upstream or both:
            reach.update(graph.upstream_of(focus, depth))
        if downstream or both:
            reach.update(graph.downstream_of(focus, depth))
        graph = graph.subgraph(reach)
    click.echo(
        render(
            graph,
            output_format,
            focus=focus,
            upstream=upstream or both,
            downstream=downstream or both,
            columns=columns,
        )
    )


@lineage.command("impact")
@click.argument("column")
@format_option
@refresh_option
@click.pass_obj
@handle_errors
def impact(settings: Settings, column: str, output_format: str, refresh: bool) -> None:
    """Show everything downstream of COLUMN (NODE.COLUMN): columns, sinks and exposures.

    COLUMN is a node and a column, such as stg_flights.origin or raw_flights.flights.dep_delay.
    """
    import json

    from mocra_elt.lineage.build import build_lineage
    from mocra_elt.lineage.impact import column_impact, impact_graph
    from mocra_elt.lineage.render import dot, mermaid, text_impact

    graph = build_lineage(settings.project(), columns=True, refresh=refresh)
    node_id, column_name = graph.resolve_column(column)
    result = column_impact(graph, node_id, column_name)
    rendered: Any
    if output_format == "json":
        rendered = json.dumps(result.to_dict(), indent=2)
    elif output_format == "mermaid":
        rendered = mermaid(impact_graph(graph, result), columns=True)
    elif output_format == "dot":
        rendered = dot(impact_graph(graph, result), columns=True)
    else:
        rendered = text_impact(graph, result)
    click.echo(rendered)


@lineage.command("run")
@click.argument("run_id")
@click.option("--columns", is_flag=True, help="Show the column lineage rows too.")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(("text", "json")),
    default="text",
    show_default=True,
    help="Output format: text for reading, json for tools.",
)
@click.pass_obj
@handle_errors
def run_lineage(settings: Settings, run_id: str, columns: bool, output_format: str) -> None:
    """Show the lineage a run stored: its inputs, outputs, edges and columns.

    RUN_ID is a run id from 'mocra-elt runs list', or a unique start of one.
    """
    import json

    from mocra_elt.lineage.render import text_run
    from mocra_elt.lineage.runs import find_run_lineage
    from mocra_elt.load.warehouse import open_warehouse

    rows = find_run_lineage(open_warehouse(settings.project()), run_id)
    if output_format == "json":
        click.echo(json.dumps(rows, indent=2, default=str))
    else:
        click.echo(text_run(rows, columns))
