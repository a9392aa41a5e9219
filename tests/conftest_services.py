"""Fixtures for tests against the servers that scripts/services.sh starts.

`make test` starts PostgreSQL, an S3 API server and a Kafka-protocol broker, and
exports their settings. A test that needs
a server which is not there is skipped, or fails when CI=true or
MOCRA_REQUIRE_SERVICES=1, so a CI run cannot pass without running it.
Start the servers for a local run with:

    eval "$(scripts/services.sh start /tmp/mocra-services)"
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from mocra_elt.publish import SinkResult

__all__ = [
    "kafka_broker",
    "kafka_topic",
    "model_warehouse",
    "pg_database",
    "pg_env",
    "postgres_server",
    "s3_bucket",
    "s3_server",
]

# Read at import: the autouse `clean_environment` fixture removes MOCRA_* before each test.
SERVICE_ENV = {
    key: value
    for key, value in os.environ.items()
    if key.startswith(("MOCRA_PG_", "MOCRA_S3_", "MOCRA_KAFKA_", "AWS_"))
}
START_HINT = 'start them with: eval "$(scripts/services.sh start /tmp/mocra-services)"'


def services_required() -> bool:
    return os.environ.get("CI") == "true" or os.environ.get("MOCRA_REQUIRE_SERVICES") == "1"


def service_missing(reason: str) -> None:
    """Fail when the services are required here, else skip the test."""
    message = f"{reason}; {START_HINT}"
    if services_required():
        pytest.fail(message + " (CI or MOCRA_REQUIRE_SERVICES=1 requires them)", pytrace=False)
    pytest.skip(message)


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    password: str

    def connect(self, database: str) -> Any:
        import psycopg2

        connection = psycopg2.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=database,
            connect_timeout=5,
        )
        connection.autocommit = True
        return connection


@dataclass(frozen=True)
class PgDatabase:
    """A fresh database on the test server, dropped after the test."""

    server: PostgresServer
    name: str

    def env(self) -> dict[str, str]:
        """Return the MOCRA_PG_* variables that point at this database."""
        return {
            "MOCRA_PG_HOST": self.server.host,
            "MOCRA_PG_PORT": str(self.server.port),
            "MOCRA_PG_USER": self.server.user,
            "MOCRA_PG_PASSWORD": self.server.password,
            "MOCRA_PG_DATABASE": self.name,
        }

    def url(self) -> str:
        server = self.server
        return (
            f"postgresql://{server.user}:{server.password}@{server.host}:{server.port}/{self.name}"
        )

    def execute(self, sql: str, parameters: Any = None) -> None:
        connection = self.server.connect(self.name)
        try:
            connection.cursor().execute(sql, parameters)
        finally:
            connection.close()

    def query(self, sql: str, parameters: Any = None) -> list[tuple[Any, ...]]:
        connection = self.server.connect(self.name)
        try:
            cursor = connection.cursor()
            cursor.execute(sql, parameters)
            return list(cursor.fetchall())
        finally:
            connection.close()


@pytest.fixture(scope="session")
def postgres_server() -> PostgresServer:
    if "MOCRA_PG_PORT" not in SERVICE_ENV:
        service_missing("the PostgreSQL test server is not running (MOCRA_PG_PORT is not set)")
    server = PostgresServer(
        host=SERVICE_ENV.get("MOCRA_PG_HOST", "127.0.0.1"),
        port=int(SERVICE_ENV["MOCRA_PG_PORT"]),
        user=SERVICE_ENV.get("MOCRA_PG_USER", "postgres"),
        password=SERVICE_ENV.get("MOCRA_PG_PASSWORD", ""),
    )
    import psycopg2

    try:
        server.connect(SERVICE_ENV.get("MOCRA_PG_DATABASE", "postgres")).close()
    except psycopg2.OperationalError as error:
        service_missing(f"cannot connect to PostgreSQL on port {server.port}: {error}")
    return server


@pytest.fixture
def pg_database(postgres_server: PostgresServer) -> Iterator[PgDatabase]:
    name = f"test_{uuid.uuid4().hex[:12]}"
    admin = postgres_server.connect("postgres")
    try:
        admin.cursor().execute(f"create database {name}")
        yield PgDatabase(postgres_server, name)
        admin.cursor().execute(f"drop database {name} with (force)")
    finally:
        admin.close()


@pytest.fixture
def pg_env(pg_database: PgDatabase, monkeypatch: pytest.MonkeyPatch) -> PgDatabase:
    """A fresh database whose settings are exported as MOCRA_PG_*."""
    for key, value in pg_database.env().items():
        monkeypatch.setenv(key, value)
    return pg_database


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str

    def filesystem(self) -> Any:
        import s3fs

        return s3fs.S3FileSystem(endpoint_url=self.endpoint_url, skip_instance_cache=True)


@pytest.fixture(scope="session")
def s3_server() -> S3Server:
    endpoint = SERVICE_ENV.get("MOCRA_S3_ENDPOINT_URL")
    if endpoint is None:
        service_missing("the S3 test server is not running (MOCRA_S3_ENDPOINT_URL is not set)")
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=5).close()
    except (urllib.error.URLError, OSError) as error:
        service_missing(f"cannot reach the S3 test server at {endpoint}: {error}")
    return S3Server(str(endpoint))


@pytest.fixture
def s3_bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new, empty bucket; MOCRA_S3_ENDPOINT_URL and the AWS_* variables are set."""
    for key, value in SERVICE_ENV.items():
        if not key.startswith("MOCRA_PG_"):
            monkeypatch.setenv(key, value)
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3_server.filesystem().mkdir(name)
    return name


@dataclass(frozen=True)
class KafkaBroker:
    """The Kafka-protocol broker (Tansu) of scripts/services.sh."""

    bootstrap: str

    def create_topic(self, name: str, partitions: int = 3) -> None:
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1)]
        )
        futures[name].result(timeout=30)

    def produce(
        self,
        topic: str,
        messages: list[tuple[bytes | None, bytes | None]],
        partition: int | None = None,
    ) -> None:
        """Produce (key, value) pairs and wait until the broker acknowledged every one."""
        from confluent_kafka import Producer

        producer = Producer(
            {"bootstrap.servers": self.bootstrap, "enable.idempotence": True, "linger.ms": 5}
        )
        failures: list[str] = []

        def delivered(error: Any, message: Any) -> None:
            if error is not None:
                failures.append(str(error))

        for key, value in messages:
            extra = {} if partition is None else {"partition": partition}
            producer.produce(topic, key=key, value=value, on_delivery=delivered, **extra)
            producer.poll(0)
        remaining = producer.flush(30)
        assert remaining == 0, f"{remaining} messages undelivered"
        assert not failures, f"delivery errors: {failures}"

    def consume_all(self, topic: str, timeout: float = 30) -> list[Any]:
        """Return every message of the topic, read from the start of each partition."""
        import time

        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"test-{uuid.uuid4().hex[:8]}",
                "enable.partition.eof": True,
                "enable.auto.commit": False,
            }
        )
        try:
            partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
            consumer.assign([TopicPartition(topic, number, 0) for number in partitions])
            messages, ended = [], set()
            deadline = time.monotonic() + timeout
            while len(ended) < len(partitions) and time.monotonic() < deadline:
                for message in consumer.consume(1000, timeout=0.5):
                    if message.error() is None:
                        messages.append(message)
                    elif message.error().code() == -191:  # end of partition
                        ended.add(message.partition())
            assert len(ended) == len(partitions), f"only partitions {ended} reached their end"
            return messages
        finally:
            consumer.close()


@pytest.fixture(scope="session")
def kafka_broker() -> KafkaBroker:
    bootstrap = SERVICE_ENV.get("MOCRA_KAFKA_BOOTSTRAP")
    if bootstrap is None:
        service_missing("the Kafka test broker is not running (MOCRA_KAFKA_BOOTSTRAP is not set)")
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    try:
        AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
    except KafkaException as error:
        service_missing(f"cannot reach the Kafka test broker at {bootstrap}: {error}")
    return KafkaBroker(str(bootstrap))


@pytest.fixture
def kafka_topic(kafka_broker: KafkaBroker, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new topic with 3 partitions; MOCRA_KAFKA_BOOTSTRAP is set for the test."""
    monkeypatch.setenv("MOCRA_KAFKA_BOOTSTRAP", kafka_broker.bootstrap)
    name = f"test-{uuid.uuid4().hex[:12]}"
    kafka_broker.create_topic(name, partitions=3)
    return name


class ModelWarehouse:
    """A DuckDB warehouse file that a test fills with model tables, and publishes from."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / ".mocra" / "warehouse.duckdb"
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def sql(self, statement: str) -> list[tuple[Any, ...]]:
        import duckdb

        with duckdb.connect(str(self.path)) as connection:
            connection.execute("create schema if not exists analytics")
            return connection.execute(statement).fetchall()

    def publish(self, sink: dict[str, Any], run_id: str) -> SinkResult:
        """Run the publish stage of a pipeline whose only sink is `sink`."""
        from mocra_elt.config.model import Pipeline
        from mocra_elt.config.project import Project
        from mocra_elt.load.warehouse import DuckDBWarehouse
        from mocra_elt.publish import PublishContext, publish_sinks
        from mocra_elt.runtime.logs import run_logger

        pipeline = Pipeline.model_validate(
            {
                "name": "shop",
                "source": {"type": "files", "url": "unused"},
                "load": {"table": "unused"},
                "sinks": [sink],
            }
        )
        project = Project(root=self.root, data_dir=self.path.parent, warehouse_path=self.path)
        context = PublishContext(
            run_id=run_id,
            pipeline=pipeline,
            project=project,
            warehouse=DuckDBWarehouse(self.path),
            log=run_logger(__name__, run_id, pipeline.name),
        )
        [result] = publish_sinks(context)
        return result


@pytest.fixture
def model_warehouse(tmp_path: Path) -> ModelWarehouse:
    return ModelWarehouse(tmp_path / "project")
