"""The reference jobs behind `make run` and `make run-pg`: serve the demo data, run the pipelines.

`make run` runs the pipelines that need no server besides the demo flights API.
`make run-pg` also runs what carries a tag of SERVER_TAGS: the flights mart's
sink into PostgreSQL, the `ops_flights` pipeline, which reads a PostgreSQL table
and writes Parquet to an S3 API server, and `flight_events`, read from Kafka.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mocra_elt.config.project import Project
from mocra_elt.errors import ConfigError, MocraError, SourceError

log = logging.getLogger(__name__)

DEMO_TOKEN = "demo-token"
API_HOST = "127.0.0.1"
API_PORT = 8765

# Pipelines and sinks with these tags need PostgreSQL and the S3 server, or a Kafka broker.
SERVER_TAG = "postgres"
SERVER_TAGS = (SERVER_TAG, "kafka")
# With the variables of every tag in use set, the demo uses the servers they point to
# instead of starting its own.
TAG_VARIABLES = {
    SERVER_TAG: ("MOCRA_PG_HOST", "MOCRA_S3_ENDPOINT_URL"),
    "kafka": ("MOCRA_KAFKA_BOOTSTRAP",),
}
SERVER_VARIABLES = tuple(name for names in TAG_VARIABLES.values() for name in names)
EVENTS_TOPIC = "flight_events"
SERVICES_SCRIPT = Path("scripts") / "services.sh"


def prepare_demo_data(project: Project) -> None:
    """Publish the flights API's first state and write the monthly weather files."""
    from mocra_elt.demo.flights_state import ensure_initial_state
    from mocra_elt.demo.weather_files import write_weather_files

    ensure_initial_state(flights_state_dir(project))
    write_weather_files(weather_dir(project))


def prepare_postgres_data(limit_rows: int | None = None) -> int:
    """Create the operations table `ops.flights` unless it exists; return the rows copied.

    The connection comes from MOCRA_PG_HOST, _PORT, _USER, _PASSWORD and _DATABASE.
    """
    from mocra_elt.demo.flights_db import seed_flights
    from mocra_elt.load.postgres import info_from_env

    return seed_flights(info_from_env(), limit_rows)


def server_tags_in_use(project: Project) -> list[str]:
    """Return the tags of SERVER_TAGS that a pipeline or sink of the project carries."""
    from mocra_elt.config.loader import load_pipelines

    used: set[str] = set()
    for pipeline in load_pipelines(project.sources_dir).values():
        used.update(pipeline.tags)
        for sink in pipeline.sinks:
            used.update(sink.tags)
    return [tag for tag in SERVER_TAGS if tag in used]


def required_variables(tags: list[str]) -> tuple[str, ...]:
    return tuple(name for tag in tags for name in TAG_VARIABLES[tag])


def prepare_kafka_data(topic: str = EVENTS_TOPIC) -> int:
    """Produce the flights' status events to `topic` unless it has messages; return events sent."""
    from mocra_elt.demo.flight_events import flight_events, produce_events, topic_has_messages

    bootstrap = os.environ["MOCRA_KAFKA_BOOTSTRAP"]
    if topic_has_messages(bootstrap, topic):
        return 0
    return produce_events(bootstrap, topic, flight_events()).events


@contextmanager
def demo_servers(root: Path, required: tuple[str, ...] = SERVER_VARIABLES) -> Iterator[str]:
    """Use the servers that MOCRA_PG_* and MOCRA_S3_ENDPOINT_URL name, or start throwaway ones.

    When a variable of `required` is unset, `root`/scripts/services.sh starts
    PostgreSQL and the S3 API server on 127.0.0.1, exports their settings for the
    duration of the block, then stops them and deletes their data. Yields a
    description of the servers used.
    """
    if all(os.environ.get(name) for name in required):
        yield "the servers in " + " and ".join(required)
        return
    script = root / SERVICES_SCRIPT
    if not script.is_file():
        raise ConfigError(
            f"{script} not found, so PostgreSQL and the S3 API server cannot be started. "
            f"Set {', '.join(required)} and the other MOCRA_PG_* variables to use running "
            "servers."
        )
    from mocra_elt.runtime.environment import temporary_environment

    folder = tempfile.mkdtemp(prefix="mocra-services-")
    try:
        with temporary_environment(_start_services(script, folder)):
            yield f"throwaway servers started by {SERVICES_SCRIPT} (data in {folder})"
    finally:
        subprocess.run(["bash", str(script), "stop", folder], check=False)
        shutil.rmtree(folder, ignore_errors=True)


def _start_services(script: Path, folder: str) -> dict[str, str]:
    """Run `services.sh start` and return the variables its `export NAME=value` lines set."""
    result = subprocess.run(
        ["bash", str(script), "start", folder], stdout=subprocess.PIPE, text=True, check=False
    )
    if result.returncode != 0:
        raise MocraError(
            f"{SERVICES_SCRIPT} could not start the servers (exit code {result.returncode}); "
            "its messages are above."
        )
    variables = {}
    for line in result.stdout.splitlines():
        name, separator, value = line.removeprefix("export ").partition("=")
        if line.startswith("export ") and separator:
            variables[name] = value
    log.info("started servers: %s", ", ".join(sorted(variables)))
    return variables


def flights_state_dir(project: Project) -> Path:
    return project.data_dir / "demo" / "flights_api"


def weather_dir(project: Project) -> Path:
    return project.data_dir / "demo" / "weather"


@contextmanager
def flights_api(project: Project, port: int = API_PORT) -> Iterator[str]:
    """Run `mocra-elt demo serve` in a child process for the duration of the block."""
    if _port_in_use(API_HOST, port):
        raise ConfigError(
            f"port {port} on {API_HOST} is already in use, so the demo flights API cannot start. "
            "Stop the process that holds it (for example an earlier 'mocra-elt demo serve')."
        )
    os.environ.setdefault("FLIGHTS_API_TOKEN", DEMO_TOKEN)
    command = [
        sys.executable,
        "-m",
        "mocra_elt",
        "--project-dir",
        str(project.root),
        "demo",
        "serve",
        "--port",
        str(port),
    ]
    # The server's own stdout (its URL) would land between the run's progress lines.
    server = subprocess.Popen(
        command,
        env={**os.environ, "MOCRA_DATA_DIR": str(project.data_dir)},
        stdout=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(API_HOST, port, server)
        yield f"http://{API_HOST}:{port}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex((host, port)) == 0


def _wait_for_port(
    host: str, port: int, server: subprocess.Popen[bytes], timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SourceError(
                f"the demo flights API exited with code {server.returncode} before it listened "
                f"on {host}:{port}; its error output is above."
            )
        if _port_in_use(host, port):
            return
        time.sleep(0.1)
    raise SourceError(f"the demo flights API did not listen on {host}:{port} within {timeout} s.")
