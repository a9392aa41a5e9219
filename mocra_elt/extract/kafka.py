"""Read one Kafka topic in batch mode: every partition, from the stored offsets to the end.

Offsets live in the warehouse
-----------------------------
For each partition the reader reports a watermark named `kafka:<topic>:<partition>`
whose value is the offset of the next message to read. The load stage commits
these watermarks together with the load record, in one warehouse transaction
(`AuditStore.commit_load`), and the next run starts from them. So:

- A run killed before that commit counts for nothing: the next run reads the
  same messages again. Before loading, the load stage deletes the rows an
  uncommitted load left in an append table (`remove_uncommitted_rows`), and a
  merge of the same rows changes nothing. Each message lands exactly once, on
  append and merge targets alike.
- After the commit, `after_load_commit` also commits the offsets to the consumer
  group `group_id`, so the usual lag tools show the pipeline's progress. Those
  group offsets are never read back: a commit to Kafka cannot join the
  warehouse transaction, so they may lag behind after a crash, and a failed
  group commit only logs a warning.

Dead-lettered messages count as read: their offsets move with the load, and
the dead-letter queue keeps their payloads for a replay.

End of a run
------------
Partitions are assigned directly rather than through a group subscription, so
no group join or rebalance delays the start. At start the reader takes each
partition's end offset (its high watermark) and reads until every partition
has reached it or reported its end, so `mocra-elt run` terminates; messages
produced meanwhile wait for the next run. Batches passed on to the load hold
at most `max_records` messages and collect for at most `max_seconds`.

The end offset is raised once, to the high watermark of the first fetch
response of the partition. The Tansu broker (0.6.0) answers the ListOffsets
request with the base offset of the last record batch plus one, which is too
low when that batch contains several messages, while its fetch responses carry
the right high watermark. For the same reason a stored offset past the listed
end counts as out of range only once a fetch response or the client's
offset-reset event confirms it, and a partition that starts at its end
(`start_offset: latest`) takes that end from its first fetch response.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from mocra_elt.audit.store import Watermark
from mocra_elt.config.model import KafkaConnection, KafkaSource
from mocra_elt.config.secrets import resolve_secret
from mocra_elt.errors import SourceError, TransientError
from mocra_elt.extract.base import ExtractContext, SourceReader
from mocra_elt.extract.kafka_values import MessageDecoder

if TYPE_CHECKING:
    from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

log = logging.getLogger(__name__)

CURSOR_PREFIX = "kafka:"
# Messages taken from the client per consume() call.
CONSUME_CHUNK = 10_000
# consume() waits this long when fewer messages than requested are queued, as at the end.
POLL_SECONDS = 0.1
METADATA_TIMEOUT = 30.0
# librdkafka's offset value for "not known yet".
OFFSET_INVALID = -1001
# A client error that repeats (a broker that is down, every reconnect) is logged once per
# this many seconds, with the number of repeats.
REPEAT_SECONDS = 30.0


def cursor_name(topic: str, partition: int) -> str:
    return f"{CURSOR_PREFIX}{topic}:{partition}"


def stored_offsets(watermarks: dict[str, Watermark], topic: str) -> dict[int, int]:
    """Return {partition: next offset} from the committed watermarks of `topic`."""
    prefix = cursor_name(topic, 0)[:-1]
    offsets: dict[int, int] = {}
    for name, mark in watermarks.items():
        if name.startswith(prefix) and name[len(prefix) :].isdigit():
            offsets[int(name[len(prefix) :])] = int(mark.value)
    return offsets


class ClientLog:
    """Receives librdkafka's log lines and writes them at debug level.

    The errors among them also reach the client's error callback, which
    `ClientErrors` logs as warnings without the repeats.
    """

    def __init__(self) -> None:
        self.logger = logging.getLogger(f"{__name__}.librdkafka")

    def log(self, level: int, message: str, *args: Any) -> None:
        self.logger.debug(message, *args)


class ClientErrors:
    """The client's error callback: log each error, repeats at most once per REPEAT_SECONDS."""

    def __init__(self, log: logging.LoggerAdapter[logging.Logger], label: str) -> None:
        self.log = log
        self.label = label
        self.last: str | None = None
        self.seen: dict[str, tuple[float, int]] = {}

    def __call__(self, error: KafkaError) -> None:
        text = error.str()
        self.last = text
        logged_at, repeats = self.seen.get(text, (-REPEAT_SECONDS, 0))
        now = time.monotonic()
        if now - logged_at < REPEAT_SECONDS:
            self.seen[text] = (logged_at, repeats + 1)
            return
        self.seen[text] = (now, 0)
        again = f" (and {repeats} times since it was last logged)" if repeats else ""
        self.log.warning("%s: Kafka client error: %s%s", self.label, text, again)


def client_config(connection: KafkaConnection, pipeline: str, field_prefix: str) -> dict[str, Any]:
    """Return the librdkafka settings of a connection, with references resolved."""
    config: dict[str, Any] = {
        "bootstrap.servers": _resolve(
            connection.bootstrap_servers, pipeline, f"{field_prefix}.bootstrap_servers"
        ),
        "client.id": f"mocra-elt.{pipeline}",
        "logger": ClientLog(),
    }
    for name, value in connection.properties.items():
        config[name] = _resolve(value, pipeline, f"{field_prefix}.properties.{name}")
    return config


def _number(value: int | None) -> int:
    """Return a message's partition or offset, which the client sets on every delivered message."""
    assert value is not None
    return value


def _resolve(value: Any, pipeline: str, field: str) -> Any:
    if isinstance(value, str) and value.startswith("${"):
        return resolve_secret(value, pipeline=pipeline, field=field)
    return value


@dataclass
class PartitionProgress:
    """Start, current and end offsets of the read of one partition."""

    number: int
    start: int
    next: int
    end: int
    stored: int | None
    # True once a fetch response confirmed the end offset (see the module docstring).
    end_confirmed: bool = False
    # False while a stored offset past the listed end waits for the broker's confirmation.
    in_range: bool = True
    # True while a partition that starts at its end (start_offset latest) waits for the real
    # end offset from a fetch response. The messages it delivers meanwhile are dropped.
    seeking_end: bool = False
    done: bool = False


class KafkaReader(SourceReader):
    """Consume `source.topic` up to the end offsets taken at start, one Arrow table per batch."""

    def __init__(self, context: ExtractContext) -> None:
        super().__init__(context)
        source = self.pipeline.source
        assert isinstance(source, KafkaSource)
        self.source = source
        self.topic = source.topic
        self.group_id = source.group_id or f"mocra-elt.{self.pipeline.name}"
        self.stored = stored_offsets(context.watermarks, source.topic)
        self.decoder = MessageDecoder(source, context.project_root, self.pipeline.name)
        self.partitions: dict[int, PartitionProgress] = {}
        self.messages = 0
        self.batches_read = 0
        self.client_errors = ClientErrors(context.log, f"topic {source.topic!r}")

    # --- reading ------------------------------------------------------------------------

    def read(self) -> Iterator[pa.Table]:
        from confluent_kafka import Consumer

        consumer = Consumer(self.consumer_config())
        try:
            self.partitions = self._plan(consumer)
            consumer.assign([self._position(p.number, p.start) for p in self.partitions.values()])
            yield from self._consume(consumer)
        finally:
            consumer.close()
            self._update_stats()
        self.context.log.info(
            "read %d messages of topic %r in %d batches; next offsets %s",
            self.messages,
            self.topic,
            self.batches_read,
            {p.number: p.next for p in self.partitions.values()},
        )

    def consumer_config(self) -> dict[str, Any]:
        config = client_config(self.source, self.pipeline.name, "source")
        config.update(
            {
                "group.id": self.group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                # Out-of-range offsets come back as events, handled by source.offset_reset.
                "auto.offset.reset": "error",
                "enable.partition.eof": True,
                "error_cb": self.client_errors,
            }
        )
        return config

    def _consume(self, consumer: Consumer) -> Iterator[pa.Table]:
        pending: list[Message] = []
        batch_started = last_activity = time.monotonic()
        while self._active():
            room = self.source.max_records - len(pending)
            if self.source.max_records_per_run is not None:
                room = min(room, self.source.max_records_per_run - self.messages - len(pending))
            messages = consumer.consume(min(room, CONSUME_CHUNK), timeout=POLL_SECONDS)
            now = time.monotonic()
            if messages:
                last_activity = now
                batch_started = batch_started if pending else now
            for message in messages:
                error = message.error()
                if error is not None:
                    self._handle_event(consumer, message, error)
                    continue
                progress = self.partitions[message.partition() or 0]
                offset = message.offset() or 0
                if progress.end_confirmed and not progress.seeking_end and offset >= progress.next:
                    # The common case, inline because it runs for every message.
                    progress.next = offset + 1
                    pending.append(message)
                    if progress.next >= progress.end:
                        self._finish(consumer, progress)
                elif self._advance(consumer, progress, offset):
                    pending.append(message)
            self._check_ranges(consumer)
            self._check_run_limit(consumer, len(pending))

            full = len(pending) >= self.source.max_records
            if pending and (full or now - batch_started >= self.source.max_seconds):
                yield from self._batch(pending)
                pending = []
            elif not messages and now - last_activity > self.source.timeout:
                raise self._stalled()
        if pending:
            yield from self._batch(pending)

    def _batch(self, messages: list[Message]) -> Iterator[pa.Table]:
        decoded = self.decoder.decode(messages)
        self.context.rejected.extend(decoded.rejected)
        self.messages += len(messages)
        self.batches_read += 1
        self.bytes_read += decoded.bytes
        self._update_stats()
        self.context.log.info(
            "read batch %d: %d messages (%d rejected), %d in this run",
            self.batches_read,
            len(messages),
            len(decoded.rejected),
            self.messages,
        )
        if decoded.table.num_rows:
            yield decoded.table

    # --- offsets ------------------------------------------------------------------------

    def _plan(self, consumer: Consumer) -> dict[int, PartitionProgress]:
        """Return every partition of the topic with its start offset and listed end offset."""
        plan: dict[int, PartitionProgress] = {}
        for number in self._partition_numbers(consumer):
            low, high = self._listed_offsets(consumer, number)
            stored = self.stored.get(number)
            if stored is None:
                start = low if self.source.start_offset == "earliest" else high
            elif stored < low:
                start = self._reset_target(number, stored, low, high, "deleted by retention")
            else:
                start = stored
            progress = PartitionProgress(number, start, start, high, stored, in_range=start <= high)
            progress.seeking_end = stored is None and self.source.start_offset == "latest"
            progress.done = progress.in_range and start >= high and not progress.seeking_end
            plan[number] = progress
        self.context.log.info(
            "reading topic %r from offsets %s up to end offsets %s",
            self.topic,
            {p.number: p.start for p in plan.values()},
            {p.number: p.end for p in plan.values()},
        )
        return plan

    def _advance(self, consumer: Consumer, progress: PartitionProgress, offset: int) -> bool:
        """Move the partition past a message; return False if the message is not to be loaded."""
        if progress.seeking_end:
            self._start_at_end(consumer, progress, offset + 1)
            return False
        if offset < progress.next:
            return False  # fetched before a seek or a skip to the end moved the partition on
        if not progress.end_confirmed:
            self._confirm_end(consumer, progress)
        progress.next = offset + 1
        if progress.next >= progress.end:
            self._finish(consumer, progress)
        return True

    def _start_at_end(self, consumer: Consumer, progress: PartitionProgress, seen: int) -> None:
        """Start a `start_offset: latest` partition at the end offset a fetch response gave."""
        _, high = consumer.get_watermark_offsets(self._position(progress.number), cached=True)
        end = max(progress.end, seen, high)
        progress.start = progress.next = progress.end = end
        progress.seeking_end, progress.end_confirmed = False, True
        self._finish(consumer, progress)

    def _confirm_end(self, consumer: Consumer, progress: PartitionProgress) -> None:
        """Raise the end offset to the high watermark of the partition's first fetch response."""
        _, high = consumer.get_watermark_offsets(self._position(progress.number), cached=True)
        if high != OFFSET_INVALID:
            progress.end = max(progress.end, high)
            progress.end_confirmed = True

    def _check_ranges(self, consumer: Consumer) -> None:
        """Resolve stored offsets past the listed end once a fetch response gives the real end."""
        for progress in self.partitions.values():
            if (progress.in_range and not progress.seeking_end) or progress.done:
                continue
            _, high = consumer.get_watermark_offsets(self._position(progress.number), cached=True)
            if high == OFFSET_INVALID:
                continue
            if progress.seeking_end:
                self._start_at_end(consumer, progress, high)
                continue
            progress.end, progress.end_confirmed = max(progress.end, high), True
            if progress.next <= high:
                progress.in_range = True
                if progress.next >= high:
                    self._finish(consumer, progress)
            else:
                self._reset(consumer, progress, high, "past the end of the partition")

    def _handle_event(self, consumer: Consumer, message: Message, error: KafkaError) -> None:
        from confluent_kafka import KafkaError

        code = error.code()
        number = message.partition()
        progress = self.partitions.get(number) if number is not None else None
        out_of_range = code in (KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE)
        if code == KafkaError._PARTITION_EOF and progress is not None:
            # The end-of-partition offset also skips transaction markers after the last message.
            progress.next = max(progress.next, _number(message.offset()))
            progress.in_range = True
            self._finish(consumer, progress)
        elif out_of_range and progress is not None:
            # NOTE: Tansu 0.6.0 replies to such fetches without an error, so only _check_ranges
            # has run against a broker; Apache Kafka reports the range error and comes here.
            _, high = self._listed_offsets(consumer, progress.number)
            self._reset(consumer, progress, high, "outside the partition")
        elif code in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION):
            raise self._missing_topic(str(error))
        elif error.fatal() or code == KafkaError.TOPIC_AUTHORIZATION_FAILED:
            raise SourceError(
                f"pipeline {self.pipeline.name!r}: reading topic {self.topic!r} failed: "
                f"{error.str()}. Check source.bootstrap_servers and source.properties.",
                pipeline=self.pipeline.name,
                stage="extract",
            )
        else:
            self.client_errors(error)

    def _reset(
        self, consumer: Consumer, progress: PartitionProgress, high: int, reason: str
    ) -> None:
        low, _ = self._listed_offsets(consumer, progress.number)
        target = self._reset_target(progress.number, progress.next, low, high, reason)
        progress.start = progress.next = target
        progress.end = max(high, target)
        progress.in_range = True
        consumer.seek(self._position(progress.number, target))
        if target >= progress.end:
            self._finish(consumer, progress)

    def _reset_target(self, number: int, offset: int, low: int, high: int, reason: str) -> int:
        """Return where a partition whose stored offset is out of range restarts, or raise."""
        policy = self.source.offset_reset
        where = (
            f"partition {number} of topic {self.topic!r}: the stored offset {offset} is {reason} "
            f"(its first offset is {low}, its end offset {high})"
        )
        if policy == "fail":
            raise SourceError(
                f"pipeline {self.pipeline.name!r}, {where}. Set source.offset_reset to "
                "'earliest' to read the partition from its first message, or to 'latest' to "
                "skip to its end, and run again.",
                pipeline=self.pipeline.name,
                stage="extract",
            )
        target = low if policy == "earliest" else high
        self.context.log.warning(
            "%s; restarting at offset %d (offset_reset %s)", where, target, policy
        )
        return target

    def _finish(self, consumer: Consumer, progress: PartitionProgress) -> None:
        if not progress.done:
            progress.done = True
            consumer.pause([self._position(progress.number)])

    def _active(self) -> bool:
        return any(not progress.done for progress in self.partitions.values())

    def _check_run_limit(self, consumer: Consumer, pending: int) -> None:
        limit = self.source.max_records_per_run
        if limit is None or self.messages + pending < limit:
            return
        for progress in self.partitions.values():
            self._finish(consumer, progress)
        self.context.log.info("stopping at source.max_records_per_run (%d messages)", limit)

    def watermarks(self) -> list[Watermark]:
        """Return the record cursor's watermark, if any, and the next offset of each partition."""
        marks = super().watermarks()
        for progress in self.partitions.values():
            if progress.next != progress.stored:
                name = cursor_name(self.topic, progress.number)
                marks.append(Watermark(name, progress.next, "int"))
        return marks

    def after_load_commit(self) -> None:
        """Commit the loaded offsets to the consumer group; a failure only logs a warning."""
        from confluent_kafka import Consumer, KafkaException

        if not self.source.commit_to_group or not self.partitions:
            return
        offsets = [self._position(p.number, p.next) for p in self.partitions.values()]
        config = client_config(self.source, self.pipeline.name, "source")
        consumer = Consumer({**config, "group.id": self.group_id, "enable.auto.commit": False})
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as error:
            self.context.log.warning(
                "the load committed, but committing its offsets to consumer group %r failed: %s. "
                "The next run still starts from the offsets stored in the warehouse.",
                self.group_id,
                error,
            )
        finally:
            consumer.close()

    # --- broker requests ----------------------------------------------------------------

    def _partition_numbers(self, consumer: Consumer) -> list[int]:
        from confluent_kafka import KafkaError, KafkaException

        try:
            timeout = min(METADATA_TIMEOUT, self.source.timeout)
            metadata = consumer.list_topics(self.topic, timeout=timeout)
        except KafkaException as error:
            raise self._unavailable(error) from error
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None:
            code = topic.error.code() if topic is not None and topic.error else None
            if code not in (None, KafkaError.UNKNOWN_TOPIC_OR_PART):
                raise self._unavailable(topic.error if topic is not None else "no metadata")
            raise self._missing_topic("the broker does not know it")
        if not topic.partitions:
            raise self._missing_topic("it has no partitions")
        return sorted(topic.partitions)

    def _listed_offsets(self, consumer: Consumer, number: int) -> tuple[int, int]:
        from confluent_kafka import KafkaException

        try:
            low, high = consumer.get_watermark_offsets(
                self._position(number), timeout=min(METADATA_TIMEOUT, self.source.timeout)
            )
        except KafkaException as error:
            raise self._unavailable(error) from error
        return int(low), int(high)

    def _position(self, partition: int, offset: int | None = None) -> TopicPartition:
        from confluent_kafka import TopicPartition

        if offset is None:
            return TopicPartition(self.topic, partition)
        return TopicPartition(self.topic, partition, offset)

    # --- errors and stats ---------------------------------------------------------------

    def _missing_topic(self, detail: str) -> SourceError:
        return SourceError(
            f"pipeline {self.pipeline.name!r}: topic {self.topic!r} cannot be read ({detail}). "
            "Check source.topic, or create the topic.",
            pipeline=self.pipeline.name,
            stage="extract",
            error_code="CONFIG_NOT_FOUND",
        )

    def _unavailable(self, error: Any) -> TransientError:
        return TransientError(
            f"pipeline {self.pipeline.name!r}: the Kafka cluster could not be reached: {error}. "
            "Check that the brokers are running and that source.bootstrap_servers is right.",
            pipeline=self.pipeline.name,
            stage="extract",
            error_code="SOURCE_UNAVAILABLE",
        )

    def _stalled(self) -> TransientError:
        waiting = {p.number: p.next for p in self.partitions.values() if not p.done}
        cause = ""
        if self.client_errors.last:
            cause = f" The last client error was: {self.client_errors.last}."
        return TransientError(
            f"pipeline {self.pipeline.name!r}: no message and no end of partition arrived from "
            f"topic {self.topic!r} for {self.source.timeout:g} s; partitions still at offsets "
            f"{waiting}.{cause} Check the brokers, or raise source.timeout.",
            pipeline=self.pipeline.name,
            stage="extract",
            error_code="SOURCE_UNAVAILABLE",
        )

    def _update_stats(self) -> None:
        self.context.stats["kafka"] = {
            "topic": self.topic,
            "messages": self.messages,
            "batches": self.batches_read,
            "partitions": {
                str(p.number): {"start": p.start, "next": p.next, "end": p.end}
                for p in self.partitions.values()
            },
        }
