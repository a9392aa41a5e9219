"""`mocra-elt demo`: the reference data servers and file writers."""

from __future__ import annotations

from pathlib import Path

import click

from mocra_elt.cli.common import Settings, handle_errors
from mocra_elt.errors import ConfigError

TOKEN_VARIABLE = "FLIGHTS_API_TOKEN"


@click.group()
def demo() -> None:
    """Serve and publish the NYC 2013 flights reference data."""


@demo.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    default=8765,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on; 0 picks a free one.",
)
@click.option(
    "--token",
    envvar=TOKEN_VARIABLE,
    help=f"Token that clients must send, as --auth sets. Default: ${TOKEN_VARIABLE}.",
)
@click.option(
    "--auth",
    type=click.Choice(["bearer", "api_key", "basic"]),
    default="bearer",
    show_default=True,
    help="How clients send the token: bearer header, X-API-Key header or api_key query "
    "parameter, or HTTP basic password.",
)
@click.option(
    "--limit-rows",
    type=click.IntRange(1),
    help="Use only the first N flights; applies when the state folder is first created.",
)
@click.option(
    "--transient-failures",
    default=0,
    type=click.IntRange(0),
    help="Respond to the first N data requests with --transient-status and a Retry-After header.",
)
@click.option(
    "--transient-status",
    default=503,
    show_default=True,
    type=click.IntRange(400, 599),
    help="HTTP status of the --transient-failures responses.",
)
@click.option(
    "--retry-after",
    default=1,
    show_default=True,
    type=click.IntRange(0),
    help="Retry-After header of the --transient-failures responses, in seconds.",
)
@click.option(
    "--fail-after-pages",
    type=click.IntRange(0),
    help="After N successful pages, respond to every data request with --fail-status.",
)
@click.option(
    "--fail-status",
    default=500,
    show_default=True,
    type=click.IntRange(400, 599),
    help="HTTP status of the responses after --fail-after-pages.",
)
@click.pass_obj
@handle_errors
def serve(
    settings: Settings,
    host: str,
    port: int,
    token: str | None,
    auth: str,
    limit_rows: int | None,
    transient_failures: int,
    transient_status: int,
    retry_after: int,
    fail_after_pages: int | None,
    fail_status: int,
) -> None:
    """Serve the published flights as a paginated JSON API until Ctrl-C."""
    from mocra_elt.cli.console import console
    from mocra_elt.demo.flights_api import FaultPlan, FlightsApiServer, ensure_initial_state
    from mocra_elt.demo.reference import flights_state_dir

    if not token:
        raise ConfigError(f"no API token: pass --token or set the {TOKEN_VARIABLE} variable.")
    state_dir = flights_state_dir(settings.project())
    summary = ensure_initial_state(state_dir, limit_rows)
    faults = FaultPlan(
        transient_failures=transient_failures,
        transient_status=transient_status,
        retry_after=retry_after,
        fail_after_pages=fail_after_pages,
        fail_status=fail_status,
    )
    server = FlightsApiServer(state_dir, host, port, token=token, auth=auth, faults=faults)
    server.snapshot()
    console.print(
        f"Serving {summary['total_published']:,} published flights at {server.url}/flights "
        f"({auth} authentication)."
    )
    console.print(f"State folder: {state_dir}. Stop with Ctrl-C.")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        console.print("Stopped.")
    finally:
        server.server_close()


@demo.command("publish")
@click.option(
    "--rows", default=0, type=click.IntRange(0), help="Publish the next N unpublished flights."
)
@click.option(
    "--updates",
    default=0,
    type=click.IntRange(0),
    help="Re-publish the first N published flights with a new updated_at, values unchanged.",
)
@click.pass_obj
@handle_errors
def publish_command(settings: Settings, rows: int, updates: int) -> None:
    """Add or update flights in the API's published state; a running server picks them up."""
    from mocra_elt.cli.console import console
    from mocra_elt.demo.flights_api import publish
    from mocra_elt.demo.reference import flights_state_dir

    summary = publish(flights_state_dir(settings.project()), rows=rows, updates=updates)
    console.print(
        f"Published {summary['published_rows']:,} new and {summary['updated_rows']:,} updated "
        f"flights at {summary['updated_at']}; {summary['total_published']:,} flights are "
        f"published in {summary['state_dir']}."
    )


@demo.command("publish-db")
@click.option(
    "--rows", default=10, show_default=True, type=click.IntRange(0), help="Insert N new flights."
)
@click.option(
    "--updates",
    default=10,
    show_default=True,
    type=click.IntRange(0),
    help="Correct N flights spread over the table: one more minute of air_time.",
)
@handle_errors
def publish_db_command(rows: int, updates: int) -> None:
    """Insert and correct flights in the PostgreSQL table ops.flights (MOCRA_PG_* variables)."""
    from mocra_elt.cli.console import console
    from mocra_elt.demo.flights_db import RELATION, publish_flights
    from mocra_elt.load.postgres import info_from_env

    change = publish_flights(info_from_env(), rows=rows, updates=updates)
    console.print(
        f"Inserted {len(change.inserted):,} and updated {len(change.updated):,} rows of "
        f"{RELATION} at {change.updated_at.isoformat()}."
    )


# --- weather files ----------------------------------------------------------------------------

WEATHER_FOLDER_HELP = "Folder to write into. Default: demo/weather under the project's data folder."


@demo.command("write-weather")
@click.option(
    "--folder", type=click.Path(file_okay=False, path_type=Path), help=WEATHER_FOLDER_HELP
)
@click.pass_obj
@handle_errors
def write_weather_command(settings: Settings, folder: Path | None) -> None:
    """Write the 2013 weather as monthly files: Parquet for January-June, CSV for July-December.

    Files whose content is unchanged are left as they are, so a files pipeline reads nothing new.
    """
    from mocra_elt.cli.console import console
    from mocra_elt.demo.reference import weather_dir
    from mocra_elt.demo.weather_files import write_weather_files

    target = folder if folder is not None else weather_dir(settings.project())
    written = write_weather_files(target)
    console.print(
        f"Wrote {len(written)} monthly weather files in {target}; "
        f"{12 - len(written)} were already up to date."
    )


@demo.command("correct-weather")
@click.option(
    "--folder", type=click.Path(file_okay=False, path_type=Path), help=WEATHER_FOLDER_HELP
)
@click.pass_obj
@handle_errors
def correct_weather_command(settings: Settings, folder: Path | None) -> None:
    """Write one small CSV file that corrects the JFK temperatures of six hours on 2013-07-15."""
    from mocra_elt.cli.console import console
    from mocra_elt.demo.reference import weather_dir
    from mocra_elt.demo.weather_files import publish_correction

    target = folder if folder is not None else weather_dir(settings.project())
    path = publish_correction(target)
    console.print(f"Wrote the weather correction {path}.")


# --- flight events ----------------------------------------------------------------------------


@demo.command("produce-events")
@click.option(
    "--bootstrap-servers",
    envvar="MOCRA_KAFKA_BOOTSTRAP",
    required=True,
    help="Kafka brokers as host:port[,host:port]. Default: $MOCRA_KAFKA_BOOTSTRAP.",
)
@click.option("--topic", default="flight_events", show_default=True, help="Topic to produce to.")
@click.option(
    "--rows",
    type=click.IntRange(1),
    help="Produce the events of the first N flights only. Default: all 336,776 flights.",
)
@click.option(
    "--partitions",
    default=3,
    show_default=True,
    type=click.IntRange(1),
    help="Partitions of the topic when it has to be created.",
)
@click.option(
    "--malformed",
    default=0,
    type=click.IntRange(0),
    help="Also send N messages that are not valid JSON, to see them dead-lettered.",
)
@handle_errors
def produce_events_command(
    bootstrap_servers: str, topic: str, rows: int | None, partitions: int, malformed: int
) -> None:
    """Produce departed, arrived and cancelled events of the 2013 flights to a Kafka topic.

    Events are keyed by flight id and carry a stable event_id, so producing them again
    and loading with a merge on event_id adds nothing twice.
    """
    from mocra_elt.cli.console import console
    from mocra_elt.demo.flight_events import flight_events, produce_events

    events = flight_events(rows)
    summary = produce_events(
        bootstrap_servers, topic, events, partitions=partitions, malformed=malformed
    )
    console.print(
        f"Produced {summary.events:,} events of {summary.flights:,} flights"
        + (f" and {summary.malformed} malformed messages" if summary.malformed else "")
        + f" to topic {summary.topic!r} ({summary.partitions} partitions) at {bootstrap_servers}."
    )
