"""The `kafka` sink: send each row of a model as one JSON message, keyed by its record key.

A publish sends every row of the model through an idempotent producer
(`enable.idempotence=true`, so `acks=all`), which keeps the messages of one
partition in order and never writes one twice because of a retry. The key
is the value of the single key column as text, or a JSON array of the values
of several key columns. Messages go to partitions by librdkafka's
`murmur2_random` partitioner, which librdkafka documents as compatible with the
Java producer, so a Java producer with its default partitioner sends a key to the
same partition. `properties.partitioner` overrides the choice.

The value is the row as a JSON object. Timestamps are ISO 8601 strings, in UTC
with a `Z` when the column has a time zone. Dates and times are ISO 8601 too,
decimals are numbers when they have at most 15 significant digits and strings
otherwise, binary values are base64 text, and NaN and infinite floats are null.

The stage succeeds only when the broker acknowledged every message: the sink
waits for every delivery report (`flush`), and a message still undelivered
after `delivery_timeout` seconds counts as failed. Failed messages are written
to a dead-letter payload (one JSON line per message: key, value, error) and
the stage fails. Delivery is at least once: a publish that is run again, after
a failure or a crash, sends every row again.
"""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from datetime import time as time_of_day
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from mocra_elt.errors import SinkError, StageError, TransientError
from mocra_elt.extract.kafka import ClientErrors, client_config
from mocra_elt.load.warehouse import quote
from mocra_elt.publish import PublishContext, SinkResult
from mocra_elt.publish.config import KafkaSinkOptions
from mocra_elt.publish.relation import ModelRelation, query_rows, read_arrow, resolve_model

if TYPE_CHECKING:
    from confluent_kafka import KafkaError, Message, Producer

# Decimals of up to this many significant digits convert to a double and back unchanged
# (DBL_DIG); longer ones are sent as strings.
EXACT_DIGITS = 15
METADATA_TIMEOUT = 30.0
# Seconds to wait for room in the producer queue before giving up on a message.
QUEUE_WAIT = 1.0
FAILED_EXAMPLES = 3


@dataclass
class Deliveries:
    """Delivery reports of one publish: counts per partition and the failed messages."""

    delivered: int = 0
    partitions: dict[int, int] = field(default_factory=dict)
    failed: list[dict[str, Any]] = field(default_factory=list)
    retriable: bool = True

    def report(self, error: KafkaError | None, message: Message) -> None:
        if error is None:
            self.delivered += 1
            partition = message.partition() or 0
            self.partitions[partition] = self.partitions.get(partition, 0) + 1
            return
        self.retriable = self.retriable and error.retriable()
        self.failed.append(
            {
                "key": _text(message.key()),
                "value": _text(message.value()),
                "error": error.str(),
            }
        )


class KafkaSink:
    def __init__(self, options: KafkaSinkOptions, index: int, context: PublishContext) -> None:
        self.options = options
        self.context = context
        self.pipeline = context.pipeline.name
        self.field_prefix = f"sinks[{index}]"
        self.label = f"kafka:{options.topic}"

    def publish(self) -> SinkResult:
        relation = resolve_model(self.context.warehouse, self.options, self.pipeline)
        self._check_keys(relation)
        producer = self._producer()
        self._check_topic(producer)

        deliveries = Deliveries()
        sql = f"select {relation.select_list} from {relation.name}"
        with read_arrow(self.context.warehouse, sql, self.options.batch_rows) as reader:
            rows = self._produce(producer, reader, deliveries)
        self._wait_for_reports(producer)

        if deliveries.failed:
            raise self._delivery_failed(deliveries, rows)
        self.context.log.info(
            "sink %s: the broker acknowledged all %d messages", self.label, deliveries.delivered
        )
        return SinkResult(
            sink=self.label,
            rows_read=rows,
            rows_written=deliveries.delivered,
            details={
                "topic": self.options.topic,
                "messages_per_partition": {
                    str(p): n for p, n in sorted(deliveries.partitions.items())
                },
            },
        )

    # --- producing ----------------------------------------------------------------------

    def _producer(self) -> Producer:
        from confluent_kafka import Producer

        config = client_config(self.options, self.pipeline, self.field_prefix)
        config.setdefault("partitioner", "murmur2_random")
        # A misspelt topic fails the publish instead of creating a topic with broker defaults.
        config.setdefault("allow.auto.create.topics", False)
        config.update(
            {
                "enable.idempotence": True,
                "acks": "all",
                "delivery.timeout.ms": int(self.options.delivery_timeout * 1000),
                "error_cb": ClientErrors(self.context.log, f"sink {self.label}"),
            }
        )
        return Producer(config)

    def _produce(
        self, producer: Producer, reader: pa.RecordBatchReader, deliveries: Deliveries
    ) -> int:
        rows = 0
        for batch in reader:
            for key, value in encode_rows(batch, list(self.options.key)):
                self._send(producer, key, value, deliveries)
            rows += batch.num_rows
            producer.poll(0)
            self.context.log.info("sink %s: queued %d messages", self.label, rows)
        return rows

    def _send(self, producer: Producer, key: bytes, value: bytes, deliveries: Deliveries) -> None:
        """Queue one message, waiting for room while the producer's queue is full."""
        deadline = time.monotonic() + self.options.delivery_timeout
        while True:
            try:
                producer.produce(
                    self.options.topic, value=value, key=key, on_delivery=deliveries.report
                )
                return
            except BufferError:
                if time.monotonic() > deadline:
                    raise self.error(
                        f"the producer queue stayed full for {self.options.delivery_timeout:g} s; "
                        "the broker accepts messages slower than they are produced.",
                        transient=True,
                    ) from None
                producer.poll(QUEUE_WAIT)

    def _wait_for_reports(self, producer: Producer) -> None:
        """Wait until every message has a delivery report; purge what is left at the timeout."""
        remaining = producer.flush(self.options.delivery_timeout + 5)
        if remaining:
            # Purged messages get a delivery report with an error, so they count as failed.
            producer.purge(in_queue=True, in_flight=True, blocking=True)
            producer.flush(5)

    def _check_keys(self, relation: ModelRelation) -> None:
        missing = [name for name in self.options.key if name not in relation.columns]
        if missing:
            raise self.error(
                f"key column {', '.join(map(repr, missing))} is not a column of the model "
                f"{relation.schema}.{relation.table} (columns: {', '.join(relation.columns)}).",
                column=missing[0],
            )
        counts = ", ".join(
            f"count(*) filter (where {quote(name)} is null)" for name in self.options.key
        )
        [nulls] = query_rows(self.context.warehouse, f"select {counts} from {relation.name}")
        for name, count in zip(self.options.key, nulls, strict=True):
            if count:
                raise self.error(
                    f"{count} model rows have NULL in key column {name!r}; nothing was published. "
                    "Filter or fill those rows in the model, or choose another key.",
                    code="SINK_CONSTRAINT_VIOLATION",
                    column=name,
                )

    def _check_topic(self, producer: Producer) -> None:
        from confluent_kafka import KafkaException

        try:
            timeout = min(METADATA_TIMEOUT, self.options.delivery_timeout)
            metadata = producer.list_topics(self.options.topic, timeout=timeout)
        except KafkaException as error:
            raise self.error(
                f"the Kafka cluster could not be reached: {error}. Check that the brokers are "
                f"running and that {self.field_prefix}.bootstrap_servers is right.",
                transient=True,
            ) from error
        topic = metadata.topics.get(self.options.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            raise self.error(
                f"topic {self.options.topic!r} does not exist on the cluster; nothing was "
                f"published. Create it, or fix {self.field_prefix}.topic."
            )

    # --- errors -------------------------------------------------------------------------

    def _delivery_failed(self, deliveries: Deliveries, rows: int) -> StageError:
        letter = self._dead_letter(deliveries)
        examples = "; ".join(
            sorted({failure["error"] for failure in deliveries.failed})[:FAILED_EXAMPLES]
        )
        return self.error(
            f"{len(deliveries.failed)} of {rows} messages were not delivered ({examples}). "
            f"{deliveries.delivered} were. The failed messages are saved in dead letter {letter}; "
            "fix the cause, then 'mocra-elt dlq replay' publishes the model again.",
            transient=deliveries.retriable,
            dead_letter=letter,
        )

    def _dead_letter(self, deliveries: Deliveries) -> str:
        """Save the failed messages as a publish-stage letter; return its id."""
        from mocra_elt.audit.dead_letters import DeadLetter, DeadLetterStore, letter_id

        run_id = self.context.run_id
        store = DeadLetterStore(self.context.warehouse, self.context.project.data_dir)
        lines = [json_bytes(failure).decode() for failure in deliveries.failed]
        name = f"publish-{self.options.topic}.jsonl"
        reference = store.save_payload(run_id, name, ("\n".join(lines) + "\n").encode())
        source_ref = f"{self.label} run {run_id}"
        error = f"{len(deliveries.failed)} messages to topic {self.options.topic!r} not delivered"
        letter = DeadLetter(
            id=letter_id(self.pipeline, "publish", source_ref, reference),
            run_id=run_id,
            pipeline_id=self.pipeline,
            stage="publish",
            error_code="SINK_FAILED",
            error=f"{error}: {deliveries.failed[0]['error']}",
            payload_ref=reference,
            source_ref=source_ref,
        )
        store.add([letter])
        return letter.id

    def error(
        self, message: str, *, code: str = "SINK_FAILED", transient: bool = False, **context: Any
    ) -> StageError:
        error_class: type[StageError] = TransientError if transient else SinkError
        return error_class(
            f"pipeline {self.pipeline!r}, sink {self.label}: {message}",
            pipeline=self.pipeline,
            stage="publish",
            error_code=code,
            **context,
        )


# --- encoding -----------------------------------------------------------------------------------


def encode_rows(batch: pa.RecordBatch, key: list[str]) -> Iterator[tuple[bytes, bytes]]:
    """Yield (key, value) message bytes for each row of `batch`."""
    for row in batch.to_pylist():
        document = {name: _json_value(value) for name, value in row.items()}
        yield message_key([document[name] for name in key]), json_bytes(document)


def message_key(values: list[Any]) -> bytes:
    """Return the key of one row: a single value as text, several as a JSON array."""
    if len(values) == 1:
        value = values[0]
        return (value if isinstance(value, str) else json.dumps(value)).encode()
    return json_bytes(values)


def json_bytes(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def _json_value(value: Any) -> Any:
    """Return `value` as a JSON-encodable value (see the module docstring for each type)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
            return value.isoformat() + "Z"
        return value.isoformat()
    if isinstance(value, date | time_of_day):
        return value.isoformat()
    if isinstance(value, Decimal):
        exact = len(value.as_tuple().digits) <= EXACT_DIGITS
        return float(value) if exact and value.is_finite() else str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dict):
        return {str(name): _json_value(item) for name, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(item) for item in value]
    return str(value)


def _text(data: bytes | None) -> str | None:
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii")
