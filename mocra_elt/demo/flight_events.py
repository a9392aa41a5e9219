"""Produce flight status events to a Kafka topic, derived from the NYC 2013 flights.

Each flight yields the events its row implies, in UTC:

- `departed` at the scheduled departure plus the departure delay,
- `arrived` at the departure plus the air time (wheels on, not at the gate),
- `cancelled` at the scheduled departure, for a flight with no departure time.

A flight without an air time, which the data gives diverted flights, yields
only `departed`. Scheduled times are New York local times. Events are sent in
time order, keyed by the flight id, so all events of a flight go to one
partition in order. The value is a JSON object whose `event_id`
(`<flight id>-<event type>`) identifies an event across repeated productions,
so a pipeline that merges on it loads each event once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from mocra_elt.errors import SourceError

NEW_YORK = ZoneInfo("America/New_York")
DEFAULT_TOPIC = "flight_events"


@dataclass
class ProduceSummary:
    topic: str
    partitions: int
    flights: int
    events: int
    malformed: int


def flight_events(limit_rows: int | None = None) -> list[dict[str, Any]]:
    """Return the events of the first `limit_rows` flights (all when None), oldest first."""
    from mocra_elt.demo.nycflights import read_flights

    columns = [
        "id", "year", "month", "day", "sched_dep_time", "dep_time", "dep_delay",
        "arr_time", "air_time", "carrier", "flight", "origin", "dest",
    ]  # fmt: skip
    flights = read_flights(limit_rows).select(columns).to_pylist()
    events = [event for flight in flights for event in _events_of(flight)]
    events.sort(key=lambda event: (event["event_at"], event["event_id"]))
    return events


def _events_of(flight: dict[str, Any]) -> list[dict[str, Any]]:
    scheduled = _scheduled_departure(flight)
    if flight["dep_time"] is None or flight["dep_delay"] is None:
        return [_event(flight, "cancelled", scheduled)]
    departed = scheduled + timedelta(minutes=flight["dep_delay"])
    events = [_event(flight, "departed", departed, delay_minutes=int(flight["dep_delay"]))]
    if flight["air_time"] is not None:
        arrived = departed + timedelta(minutes=flight["air_time"])
        events.append(_event(flight, "arrived", arrived))
    return events


def _scheduled_departure(flight: dict[str, Any]) -> datetime:
    hours, minutes = divmod(int(flight["sched_dep_time"]), 100)
    local = datetime(flight["year"], flight["month"], flight["day"], tzinfo=NEW_YORK)
    # Adding to midnight keeps 2400, which the data uses for midnight, on the right day.
    return (local + timedelta(hours=hours, minutes=minutes)).astimezone(UTC)


def _event(
    flight: dict[str, Any], event_type: str, at: datetime, delay_minutes: int | None = None
) -> dict[str, Any]:
    return {
        "event_id": f"{flight['id']}-{event_type}",
        "flight_id": flight["id"],
        "event_type": event_type,
        "event_at": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "carrier": flight["carrier"],
        "flight_number": flight["flight"],
        "origin": flight["origin"],
        "destination": flight["dest"],
        "delay_minutes": delay_minutes,
    }


def produce_events(
    bootstrap_servers: str,
    topic: str,
    events: list[dict[str, Any]],
    *,
    partitions: int = 3,
    malformed: int = 0,
) -> ProduceSummary:
    """Create the topic if missing, send `events` and `malformed` bad messages, wait for acks."""
    from confluent_kafka import Producer

    partition_count = ensure_topic(bootstrap_servers, topic, partitions)
    producer = Producer(
        {"bootstrap.servers": bootstrap_servers, "enable.idempotence": True, "linger.ms": 20}
    )
    failures: list[str] = []

    def delivered(error: Any, message: Any) -> None:
        if error is not None:
            failures.append(error.str())

    messages = [(str(event["flight_id"]), json.dumps(event)) for event in events]
    # Truncated JSON, which a pipeline sets aside as dead letters.
    messages += [(f"malformed-{n}", '{"event_id": "broken", ') for n in range(1, malformed + 1)]
    for key, value in messages:
        _produce(producer, topic, key.encode(), value.encode(), delivered)
    remaining = producer.flush(60)
    if remaining or failures:
        raise SourceError(
            f"{remaining + len(failures)} of {len(messages)} events were not delivered to topic "
            f"{topic!r} at {bootstrap_servers} ({'; '.join(sorted(set(failures))[:3])}). "
            "Check that the broker is running, then produce again: events carry stable ids."
        )
    flights = len({event["flight_id"] for event in events})
    return ProduceSummary(topic, partition_count, flights, len(events), malformed)


def _produce(producer: Any, topic: str, key: bytes, value: bytes, callback: Any) -> None:
    while True:
        try:
            producer.produce(topic, key=key, value=value, on_delivery=callback)
            return
        except BufferError:
            producer.poll(0.5)  # the local queue is full: let deliveries drain it


def ensure_topic(bootstrap_servers: str, topic: str, partitions: int) -> int:
    """Create `topic` with `partitions` partitions unless it exists; return its partition count."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    try:
        # Listing every topic, not just this one, cannot make the broker auto-create it.
        existing = admin.list_topics(timeout=15).topics.get(topic)
        if existing is not None and existing.error is None and existing.partitions:
            return len(existing.partitions)
        futures = admin.create_topics([NewTopic(topic, partitions, replication_factor=1)])
        futures[topic].result(timeout=30)
    except KafkaException as error:
        raise SourceError(
            f"cannot create topic {topic!r} at {bootstrap_servers}: {error}. Check that the "
            "broker is running and that --bootstrap-servers is right."
        ) from error
    return partitions


def topic_has_messages(bootstrap_servers: str, topic: str) -> bool:
    """Return whether `topic` exists and any of its partitions contains a message."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": bootstrap_servers, "group.id": "mocra-elt-demo-probe"}
    )
    try:
        metadata = consumer.list_topics(timeout=15).topics.get(topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            return False
        for partition in metadata.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=15)
            if high > low:
                return True
        return False
    finally:
        consumer.close()
