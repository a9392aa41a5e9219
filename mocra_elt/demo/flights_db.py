"""The demo operations database: NYC 2013 flights in a PostgreSQL table, `ops.flights`.

`seed_flights` creates the table and copies every flight except those of the
latest date into it, as the demo flights API first publishes them. Each row
gets a `flight_date` and an `updated_at` of `time_hour` + 12 hours.
`publish_flights` then plays the operations system: it inserts the next
unpublished flights in file order and corrects a few published ones, stamping
both with one new `updated_at`. The `ops_flights` pipeline reads the table
incrementally by `updated_at`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from mocra_elt.demo.flights_state import INITIAL_UPDATE_DELAY
from mocra_elt.errors import ConfigError
from mocra_elt.load.postgres import PgConnectionInfo, connect_arrow, quote_string

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

SCHEMA = "ops"
TABLE = "flights"
RELATION = f"{SCHEMA}.{TABLE}"


@dataclass(frozen=True)
class PublishedChange:
    """The ids a `publish_flights` call inserted and updated, and their new `updated_at`."""

    inserted: list[int]
    updated: list[int]
    updated_at: datetime


def seed_flights(info: PgConnectionInfo, limit_rows: int | None = None) -> int:
    """Create `ops.flights` with the first state of the demo data; return the rows copied.

    Does nothing and returns 0 when the table exists. `limit_rows` keeps only
    the first rows of flights.csv, for small test data.
    """
    import pyarrow.compute as pc

    with connect_arrow(info) as connection:
        if _table_exists(connection):
            log.info("%s already exists in %s; not seeding it", RELATION, info.describe())
            return 0
        flights = with_flight_date(_universe(limit_rows))
        held_back = pc.max(flights.column("flight_date"))
        first_state = flights.filter(pc.not_equal(flights.column("flight_date"), held_back))
        first_state = _with_initial_updated_at(first_state)
        with connection.cursor() as cursor:
            cursor.execute(f"create schema if not exists {SCHEMA}")
            cursor.adbc_ingest(TABLE, first_state, mode="create", db_schema_name=SCHEMA)
            cursor.execute(f"alter table {RELATION} add primary key (id)")
            cursor.execute(f"create index on {RELATION} (updated_at)")
        connection.commit()
    log.info("copied %d flights into %s (%s)", first_state.num_rows, RELATION, info.describe())
    return int(first_state.num_rows)


def publish_flights(info: PgConnectionInfo, rows: int = 10, updates: int = 10) -> PublishedChange:
    """Insert the next `rows` unpublished flights and correct `updates` published ones.

    New flights are the unpublished ones with the lowest ids. Corrected flights
    are spread evenly over the published ids, so they fall on different dates;
    each gets one more minute of `air_time` (a NULL stays NULL). Both get one
    `updated_at`: now, or just past the latest `updated_at` in the table if the
    clock lags.
    """
    if rows < 0 or updates < 0:
        raise ConfigError(f"rows ({rows}) and updates ({updates}) must be zero or more.")
    with connect_arrow(info) as connection:
        if not _table_exists(connection):
            raise ConfigError(
                f"{RELATION} does not exist in {info.describe()}. Create it with "
                "'mocra-elt demo run --with-postgres' first."
            )
        with connection.cursor() as cursor:
            instant = _next_instant(cursor)
            updated = _correct_flights(cursor, updates, instant)
            new_rows = _unpublished(cursor, rows, instant)
            if new_rows.num_rows:
                cursor.adbc_ingest(TABLE, new_rows, mode="append", db_schema_name=SCHEMA)
        connection.commit()
    inserted = new_rows.column("id").to_pylist()
    log.info("inserted %d and updated %d rows of %s", len(inserted), len(updated), RELATION)
    return PublishedChange(inserted=inserted, updated=updated, updated_at=instant)


def with_flight_date(flights: pa.Table) -> pa.Table:
    """Add `flight_date`, the scheduled local departure date, from `year`, `month` and `day`."""
    import pyarrow as pa
    import pyarrow.compute as pc

    text = pc.binary_join_element_wise(
        pc.cast(flights.column("year"), pa.string()),
        pc.utf8_lpad(pc.cast(flights.column("month"), pa.string()), 2, "0"),
        pc.utf8_lpad(pc.cast(flights.column("day"), pa.string()), 2, "0"),
        "-",
    )
    dates = pc.cast(pc.strptime(text, "%Y-%m-%d", "s"), pa.date32())
    return flights.append_column("flight_date", dates)


# --- steps ------------------------------------------------------------------------------------


def _universe(limit_rows: int | None) -> pa.Table:
    from mocra_elt.demo.nycflights import read_flights

    return read_flights(limit_rows)


def _with_initial_updated_at(flights: pa.Table) -> pa.Table:
    import pyarrow as pa
    import pyarrow.compute as pc

    scheduled = flights.column("time_hour").cast(pa.timestamp("us", tz="UTC"))
    delay = pa.scalar(INITIAL_UPDATE_DELAY, pa.duration("us"))
    return flights.append_column("updated_at", pc.add(scheduled, delay))


def _table_exists(connection: Any) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(f"select to_regclass({quote_string(RELATION)}) is not null")
        return bool(cursor.fetchone()[0])


def _next_instant(cursor: Any) -> datetime:
    cursor.execute(f"select max(updated_at) from {RELATION}")
    latest = cursor.fetchone()[0]
    now = datetime.now(UTC)
    if latest is not None and now <= latest:
        return latest + timedelta(microseconds=1)
    return now


def _correct_flights(cursor: Any, count: int, instant: datetime) -> list[int]:
    if count == 0:
        return []
    cursor.execute(
        "with numbered as (select id, row_number() over (order by id) - 1 as position, "
        f"count(*) over () as total from {RELATION}) "
        f"update {RELATION} as f set air_time = f.air_time + 1, "
        f"updated_at = {quote_string(instant.isoformat())}::timestamptz "
        f"from numbered where numbered.id = f.id "
        f"and numbered.position % greatest(numbered.total / {count}, 1) = 0 "
        f"and numbered.position < greatest(numbered.total / {count}, 1) * {count} "
        "returning f.id"
    )
    return sorted(row[0] for row in cursor.fetchall())


def _unpublished(cursor: Any, count: int, instant: datetime) -> pa.Table:
    """Return the next `count` flights by id that the table lacks, shaped like its rows."""
    import pyarrow as pa
    import pyarrow.compute as pc

    cursor.execute(f"select id from {RELATION}")
    published = cursor.fetch_arrow_table().column("id")
    flights = with_flight_date(_universe(None))
    missing = flights.filter(pc.invert(pc.is_in(flights.column("id"), value_set=published)))
    new_rows = missing.sort_by("id").slice(0, count)
    stamps = pa.array([instant] * new_rows.num_rows, pa.timestamp("us", tz="UTC"))
    return new_rows.append_column("updated_at", stamps)
