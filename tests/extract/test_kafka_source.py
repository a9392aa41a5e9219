"""The `kafka` source against the real broker of scripts/services.sh (Tansu).

The crash tests run the pipeline in a child process and kill it with SIGKILL:
once from the outside while it consumes, and once from inside the transaction
that commits the load. Then a rerun must load every message exactly once.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest
from click.testing import CliRunner, Result

from mocra_elt.cli.main import cli
from tests.conftest import write_pipeline
from tests.conftest_services import KafkaBroker

PIPELINE = """\
    source:
      type: kafka
      bootstrap_servers: ${{env:MOCRA_KAFKA_BOOTSTRAP}}
      topic: {topic}
      max_records: {max_records}
      {extra}
    load:
      table: events
      write_disposition: {disposition}
      {key}
    """


def write_kafka_pipeline(
    project: Path,
    topic: str,
    *,
    max_records: int = 50_000,
    disposition: str = "append",
    key: str = "",
    extra: str = "",
) -> None:
    body = PIPELINE.format(
        topic=topic, max_records=max_records, disposition=disposition, key=key, extra=extra
    )
    write_pipeline(project, "events", body)


def events(count: int, start: int = 0) -> list[tuple[bytes | None, bytes | None]]:
    """Return `count` JSON events with ids from `start`, keyed by id."""
    return [
        (str(i).encode(), json.dumps({"id": i, "kind": f"k{i % 5}", "amount": i * 0.5}).encode())
        for i in range(start, start + count)
    ]


def mocra(project_dir: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--project-dir", str(project_dir), *args])


def run_ok(project_dir: Path) -> Result:
    result = mocra(project_dir, "run")
    assert result.exit_code == 0, result.output
    return result


def query(project_dir: Path, sql: str) -> list[tuple[Any, ...]]:
    path = project_dir / ".mocra" / "warehouse.duckdb"
    with duckdb.connect(str(path), read_only=True) as connection:
        return connection.execute(sql).fetchall()


def loaded_counts(project_dir: Path) -> tuple[int, int, int]:
    """Return (rows, distinct (partition, offset) pairs, distinct ids) of the events table."""
    [row] = query(
        project_dir,
        "select count(*), count(distinct (_kafka_partition, _kafka_offset)), count(distinct id) "
        "from raw_events.events",
    )
    return row


def stored_offsets(project_dir: Path, topic: str) -> dict[int, int]:
    rows = query(
        project_dir,
        "select cursor_name, value from mocra_audit.watermarks "
        "where cursor_name like 'kafka:%' order by committed_at",
    )
    offsets = {}
    for name, value in rows:
        prefix = f"kafka:{topic}:"
        if name.startswith(prefix):
            offsets[int(name[len(prefix) :])] = int(value)
    return offsets


def group_offsets(broker: KafkaBroker, group: str, topic: str) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group})
    try:
        committed = consumer.committed([TopicPartition(topic, n) for n in range(3)], timeout=10)
    finally:
        consumer.close()
    return {entry.partition: entry.offset for entry in committed if entry.offset >= 0}


def end_offsets(broker: KafkaBroker, topic: str) -> dict[int, int]:
    ends: dict[int, int] = {}
    for message in broker.consume_all(topic):
        ends[message.partition()] = max(ends.get(message.partition(), 0), message.offset() + 1)
    return ends


# --- loading ----------------------------------------------------------------------------------


def test_ten_thousand_messages_load_once(
    project_dir: Path, kafka_broker: KafkaBroker, kafka_topic: str
) -> None:
    kafka_broker.produce(kafka_topic, events(10_000))
    write_kafka_pipeline(project_dir, kafka_topic, max_records=1_500)

    run_ok(project_dir)
    assert loaded_counts(project_dir) == (10_000, 10_000, 10_000)
    [(partitions,)] = query(
        project_dir, "select count(distinct _kafka_partition) from raw_events.events"
    )
    assert partitions == 3
    assert stored_offsets(project_dir, kafka_topic) == end_offsets(kafka_broker, kafka_topic)

    run_ok(project_dir)
    assert loaded_counts(project_dir) == (10_000, 10_000, 10_000)

    kafka_broker.produce(kafka_topic, events(500, start=10_000))
    run_ok(project_dir)
    assert loaded_counts(project_dir) == (10_500, 10_500, 10_500)


def test_message_columns_and_types(
    project_dir: Path, kafka_broker: KafkaBroker, kafka_topic: str
) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap})
    value = {"id": 1, "sent_at": "2013-01-01T05:00:00Z", "detail": {"gate": "B7"}}
    producer.produce(
        kafka_topic,
        key=b"flight-1",
        value=json.dumps(value).encode(),
        partition=1,
        timestamp=1_356_998_400_000,
        headers=[("source", b"test"), ("raw", b"\xff")],
    )
    producer.produce(kafka_topic, key=None, value=None, partition=1)  # a tombstone
    assert producer.flush(10) == 0
    write_kafka_pipeline(project_dir, kafka_topic)

    run_ok(project_dir)
    rows = query(
        project_dir,
        "select id, cast(sent_at as varchar), detail, _kafka_key, _kafka_partition, _kafka_offset, "
        "cast(_kafka_timestamp as varchar), _kafka_headers from raw_events.events "
        "order by _kafka_offset",
    )
    assert rows[0][:7] == (
        1,
        "2013-01-01 05:00:00+00",
        '{"gate":"B7"}',
        "flight-1",
        1,
        0,
        "2013-01-01 00:00:00+00",
    )
    assert json.loads(rows[0][7]) == [["source", "test"], ["raw", {"base64": "/w=="}]]
    assert rows[1][0] is None
    assert rows[1][3:6] == (None, 1, 1)
    assert rows[1][7] is None


def test_avro_values_with_confluent_framing(
    project_dir: Path, kafka_broker: KafkaBroker, kafka_topic: str
) -> None:
    import fastavro

    schema = {
        "type": "record",
        "name": "FlightEvent",
        "fields": [
            {"name": "flight_id", "type": "long"},
            {"name": "status", "type": {"type": "enum", "name": "S", "symbols": ["DEP", "ARR"]}},
            {"name": "event_at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "gate", "type": ["null", "string"], "default": None},
            {"name": "crew", "type": {"type": "array", "items": "string"}},
        ],
    }
    (project_dir / "flight_event.avsc").write_text(json.dumps(schema))
    parsed = fastavro.parse_schema(schema)
    messages = []
    for number in range(20):
        buffer = io.BytesIO()
        record = {
            "flight_id": number,
            "status": "DEP" if number % 2 else "ARR",
            "event_at": 1_356_998_400_000 + number * 60_000,
            "gate": None if number % 3 else f"G{number}",
            "crew": ["a", "b"][: number % 3],
        }
        fastavro.schemaless_writer(buffer, parsed, record)
        messages.append((None, b"\x00\x00\x00\x00\x07" + buffer.getvalue()))
    messages.append((None, b"\x00\x00\x00\x00\x07\x99"))  # truncated record
    messages.append((None, b'{"flight_id": 1}'))  # not Confluent-framed Avro
    kafka_broker.produce(kafka_topic, messages, partition=0)
    extra = "format: avro\n      avro: {schema_file: flight_event.avsc, framing: confluent}"
    write_kafka_pipeline(project_dir, kafka_topic, extra=extra)

    run_ok(project_dir)
    rows = query(
        project_dir,
        "select flight_id, status, cast(event_at as varchar), gate, crew from raw_events.events "
        "order by flight_id",
    )
    assert len(rows) == 20
    assert rows[3] == (3, "DEP", "2013-01-01 00:03:00+00", "G3", "[]")
    assert rows[4] == (4, "ARR", "2013-01-01 00:04:00+00", None, '["a"]')
    letters = query(project_dir, "select source_ref, error from mocra_audit.dead_letters")
    assert sorted(ref for ref, _ in letters) == [f"{kafka_topic}/0/20", f"{kafka_topic}/0/21"]
    assert any("invalid Avro data" in error for _, error in letters)
    assert any("Confluent wire format" in error for _, error in letters)


# --- dead letters -----------------------------------------------------------------------------


def test_undecodable_messages_dead_lettered(
    project_dir: Path, kafka_broker: KafkaBroker, kafka_topic: str
) -> None:
    messages = events(100)
    messages[10] = (b"10", b'{"id": 10, "kind": ')
    messages[60] = (b"60", b"\x8f\x00binary")
    kafka_broker.produce(kafka_topic, messages, partition=2)
    write_kafka_pipeline(project_dir, kafka_topic, max_records=30)

    run_ok(project_dir)
    assert loaded_counts(project_dir) == (98, 98, 98)
    letters = query(
        project_dir,
        "select source_ref, record_key, error, payload_ref from mocra_audit.dead_letters "
        "order by source_ref",
    )
    assert [row[0] for row in letters] == [f"{kafka_topic}/2/10", f"{kafka_topic}/2/60"]
    assert letters[0][2].startswith("invalid JSON")
    assert "not UTF-8" in letters[1][2]
    assert stored_offsets(project_dir, kafka_topic)[2] == 100

    path, _, _ = letters[1][3].partition("#")
    payload = (project_dir / ".mocra" / path).read_text().strip()
    assert payload.startswith('{"_kafka_partition": 2, "_kafka_offset": 60, "_kafka_key": "60"')
    assert payload.endswith(", base64:jwBiaW5hcnk=}")

    run_ok(project_dir)
    [(count,)] = query(project_dir, "select count(*) from mocra_audit.dead_letters")
    assert count == 2


def test_fixed_payload_replays_into_table(
    project_dir: Path, kafka_broker: KafkaBroker, kafka_topic: str
) -> None:
    messages = events(10)
    messages[4] = (b"4", b'{"id": 4, "kind": "k4", "amount": }')
    kafka_broker.produce(kafka_topic, messages, partition=0)
    write_kafka_pipeline(
        project_dir,
        kafka_topic,
        disposition="merge",
        key="primary_key: [_kafka_partition, _kafka_offset]",
    )
    run_ok(project_dir)
    [(letter, reference)] = query(
        project_dir, "select id, payload_ref from mocra_audit.dead_letters"
    )

    unfixed = mocra(project_dir, "dlq", "replay", letter)
    assert unfixed.exit_code == 1, unfixed.output
    payload = project_dir / ".mocra" / reference.partition("#")[0]
    broken = payload.read_text()
    assert broken.rstrip().endswith('"amount":}')
    payload.write_text(broken.replace('"amount":}', '"amount": 2.0}'))
    fixed = mocra(project_dir, "dlq", "replay", letter)
    assert fixed.exit_code == 0, fixed.output

    rows = query(
        project_dir,
        "select id, kind, amount, _kafka_key, _kafka_partition, _kafka_offset, "
        "_kafka_timestamp is not null from raw_events.events order by _kafka_offset",
    )
    assert len(rows) == 10
    assert rows[4] == (4, "k4", 2.0, "4", 0, 4, True)
    [(status,)] = query(project_dir, "select status from mocra_audit.dead_letters")
    assert status == "replayed"


def test_type_change_dead_lettered(
    project_dir: Path, kafka_broker: KafkaBroker, kafka_topic: str
) -> None:
    messages = events(40)
    messages[25] = (b"25", b'{"id": "twenty-five", "kind": "k0", "amount": 1}')
    kafka_broker.produce(kafka_topic, messages, partition=1)
    write_kafka_pipeline(project_dir, kafka_topic, max_records=20)

    run_ok(project_dir)
    assert loaded_counts(project_dir) == (39, 39, 39)
    [(reference, error)] = query(
        project_dir, "select source_ref, error from mocra_audit.dead_letters"
    )
    assert reference == f"{kafka_topic}/1/25"
    assert "field 'id': expected int64" in error


# --- offsets ----------------------------------------------------------------------------------


def test_offsets_committed_to_group_after_load(
    project_dir: Path, kafka_broker: KafkaBroker, kafka_topic: str
) -> None:
    kafka_broker.produce(kafka_topic, events(300))
    write_kafka_pipeline(project_dir, kafka_topic, extra="group_id: mocra-test-group")

    run_ok(project_dir)
    offsets = group_offsets(kafka_broker, "mocra-test-group", kafka_topic)
    assert offsets == stored_offsets(project_dir, kafka_topic)
    assert sum(offsets.values()) == 300


def test_run_limit_continues_next_run(
    project_dir: Path, kafka_broker: KafkaBroker, kafka_topic: str
) -> None:
    kafka_broker.produce(kafka_topic, events(1_000))
    write_kafka_pipeline(
        project_dir, kafka_topic, max_records=100, extra="max_records_per_run: 400"
    )

    run_ok(project_dir)
    assert loaded_counts(project_dir) == (400, 400, 400)
    run_ok(project_dir)
    run_ok(project_dir)
    assert loaded_counts(project_dir) == (1_000, 1_000, 1_000)


def test_latest_start_skips_existing_messages(
    project_dir: Path, kafka_broker: KafkaBroker, kafka_topic: str
) -> None:
    kafka_broker.produce(kafka_topic, events(50), partition=0)
    write_kafka_pipeline(project_dir, kafka_topic, extra="start_offset: latest")

    run_ok(project_dir)
    assert stored_offsets(project_dir, kafka_topic) == {0: 50, 1: 0, 2: 0}
    kafka_broker.produce(kafka_topic, events(5, start=50), partition=0)
    run_ok(project_dir)
    assert query(project_dir, "select min(id), count(*) from raw_events.events") == [(50, 5)]


def test_offset_past_end_fails_or_resets(
    project_dir: Path, kafka_broker: KafkaBroker, kafka_topic: str
) -> None:
    kafka_broker.produce(kafka_topic, events(30), partition=0)
    write_kafka_pipeline(project_dir, kafka_topic)
    run_ok(project_dir)
    # What a recreated topic looks like: the stored offset lies past the partition's end.
    path = project_dir / ".mocra" / "warehouse.duckdb"
    with duckdb.connect(str(path)) as connection:
        connection.execute(
            "update mocra_audit.watermarks set value = '5000' where cursor_name = ?",
            [f"kafka:{kafka_topic}:0"],
        )

    failed = mocra(project_dir, "run")
    assert failed.exit_code == 1
    [(error,)] = query(
        project_dir, "select error from mocra_audit.runs order by run_id desc limit 1"
    )
    assert "stored offset 5000 is past the end of the partition" in error
    assert "source.offset_reset" in error

    write_kafka_pipeline(project_dir, kafka_topic, extra="offset_reset: earliest")
    run_ok(project_dir)
    assert loaded_counts(project_dir) == (60, 30, 30)
    assert stored_offsets(project_dir, kafka_topic)[0] == 30


def test_missing_topic_fails_with_hint(project_dir: Path, kafka_topic: str) -> None:
    write_kafka_pipeline(project_dir, f"{kafka_topic}-missing")
    result = mocra(project_dir, "run")
    assert result.exit_code == 1
    [(code, error)] = query(project_dir, "select error_code, error from mocra_audit.runs")
    assert code == "CONFIG_NOT_FOUND"
    assert f"topic '{kafka_topic}-missing' cannot be read" in error


# --- crashes ----------------------------------------------------------------------------------

KILL_IN_COMMIT = textwrap.dedent(
    """\
    import os, signal, sys
    from mocra_elt.audit.store import AuditStore
    from mocra_elt.config.loader import load_pipelines
    from mocra_elt.config.project import Project
    from mocra_elt.load.warehouse import open_warehouse
    from mocra_elt.runtime.environment import configure_environment
    from mocra_elt.runtime.runner import PipelineRun

    project = Project.discover(sys.argv[1])
    configure_environment(project)
    pipeline = load_pipelines(project.sources_dir)["events"]
    warehouse = open_warehouse(project)
    audit = AuditStore(warehouse)
    audit.ensure_schema()
    run = PipelineRun(project, pipeline, warehouse, audit)
    # Runs inside the transaction that would commit the load, after dlt wrote every row.
    run.state["on_load_commit"] = lambda connection: os.kill(os.getpid(), signal.SIGKILL)
    run.execute()
    """
)


def test_kill_in_load_commit_then_rerun(
    project_dir: Path, kafka_broker: KafkaBroker, kafka_topic: str
) -> None:
    kafka_broker.produce(kafka_topic, events(3_000))
    write_kafka_pipeline(project_dir, kafka_topic, max_records=500, extra="group_id: kill-group")

    child = subprocess.run(
        [sys.executable, "-c", KILL_IN_COMMIT, str(project_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    # dlt had written the rows, but neither the load nor its offsets committed.
    assert query(project_dir, "select count(*) from raw_events.events") == [(3_000,)]
    assert query(project_dir, "select count(*) from mocra_audit.loads") == [(0,)]
    assert stored_offsets(project_dir, kafka_topic) == {}
    assert group_offsets(kafka_broker, "kill-group", kafka_topic) == {}

    run_ok(project_dir)
    assert loaded_counts(project_dir) == (3_000, 3_000, 3_000)
    assert stored_offsets(project_dir, kafka_topic) == end_offsets(kafka_broker, kafka_topic)
    assert group_offsets(kafka_broker, "kill-group", kafka_topic) == stored_offsets(
        project_dir, kafka_topic
    )


def test_kill_while_consuming_then_rerun(
    project_dir: Path, kafka_broker: KafkaBroker, kafka_topic: str
) -> None:
    kafka_broker.produce(kafka_topic, events(10_000))
    write_kafka_pipeline(project_dir, kafka_topic, max_records=100)

    # Run the CLI and kill it as soon as it logs its fifth batch of 100 messages.
    command = [sys.executable, "-m", "mocra_elt", "--project-dir", str(project_dir)]
    child = subprocess.Popen(
        [*command, "--log-level", "info", "run"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert child.stderr is not None
    seen: list[str] = []
    deadline = time.monotonic() + 120
    for line in child.stderr:
        seen.append(line)
        if "read batch 5:" in line or time.monotonic() > deadline:
            break
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert any("read batch 5:" in line for line in seen), "".join(seen[-20:])
    [(status,)] = query(project_dir, "select status from mocra_audit.runs")
    assert status == "running"  # killed before the run could end
    assert stored_offsets(project_dir, kafka_topic) == {}

    run_ok(project_dir)
    assert loaded_counts(project_dir) == (10_000, 10_000, 10_000)
    assert stored_offsets(project_dir, kafka_topic) == end_offsets(kafka_broker, kafka_topic)


# --- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("properties: {sasl.password: hunter2}", "secrets may not be written in clear text"),
        ("properties: {group.id: other}", "group.id cannot be set in properties"),
        ("format: avro", "format 'avro' needs avro.schema_file"),
        ("max_seconds: 0", "greater than 0"),
    ],
)
def test_invalid_source_options(project_dir: Path, extra: str, message: str) -> None:
    write_kafka_pipeline(project_dir, "events", extra=extra)
    result = mocra(project_dir, "validate", "--skip-dbt")
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_zero_max_records_rejected(project_dir: Path) -> None:
    write_kafka_pipeline(project_dir, "events", max_records=0)
    result = mocra(project_dir, "validate", "--skip-dbt")
    assert result.exit_code == 2, result.output
    assert "greater than or equal to 1" in result.output


# --- the reference pipeline -------------------------------------------------------------------


def test_demo_events_merge_on_event_id(
    project_dir: Path, kafka_broker: KafkaBroker, kafka_topic: str
) -> None:
    import yaml

    from mocra_elt.demo.nycflights import read_flights

    example = Path(__file__).resolve().parents[2] / "sources" / "flight_events.yml"
    definition = yaml.safe_load(example.read_text())
    definition["source"]["topic"] = kafka_topic
    for upstream_part in ("transform", "depends_on"):
        definition.pop(upstream_part)  # they need the flights pipeline
    (project_dir / "sources" / "flight_events.yml").write_text(yaml.safe_dump(definition))
    produce = ["demo", "produce-events", "--topic", kafka_topic, "--rows", "1000"]

    first = mocra(project_dir, *produce, "--malformed", "1")
    assert first.exit_code == 0, first.output
    again = mocra(project_dir, *produce)  # the same events a second time
    assert again.exit_code == 0, again.output
    run_ok(project_dir)

    flights = read_flights(1000).to_pylist()
    cancelled = sum(1 for flight in flights if flight["dep_time"] is None)
    arrived = sum(1 for flight in flights if flight["air_time"] is not None)
    assert cancelled > 0
    rows = query(
        project_dir,
        "select event_type, count(*), count(distinct flight_id) "
        "from raw_flight_events.flight_events group by 1",
    )
    assert {row[0]: row[1:] for row in rows} == {
        "arrived": (arrived, arrived),
        "cancelled": (cancelled, cancelled),
        "departed": (1000 - cancelled, 1000 - cancelled),
    }
    [(event_at_type,)] = query(
        project_dir,
        "select data_type from information_schema.columns "
        "where table_schema = 'raw_flight_events' and table_name = 'flight_events' "
        "and column_name = 'event_at'",
    )
    assert event_at_type == "TIMESTAMP WITH TIME ZONE"
    [(letters,)] = query(project_dir, "select count(*) from mocra_audit.dead_letters")
    assert letters == 1
