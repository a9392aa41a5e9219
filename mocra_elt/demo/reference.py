"""The reference job behind `make run`: serve the demo data, then run every pipeline."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mocra_elt.config.project import Project
from mocra_elt.errors import ConfigError, SourceError

DEMO_TOKEN = "demo-token"
API_HOST = "127.0.0.1"
API_PORT = 8765


def prepare_demo_data(project: Project) -> None:
    """Publish the flights API's first state and write the monthly weather files."""
    from mocra_elt.demo.flights_state import ensure_initial_state
    from mocra_elt.demo.weather_files import write_weather_files

    ensure_initial_state(flights_state_dir(project))
    write_weather_files(weather_dir(project))


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
    server = subprocess.Popen(command, env={**os.environ, "MOCRA_DATA_DIR": str(project.data_dir)})
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
