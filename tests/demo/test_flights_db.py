"""The demo operations table ops.flights: seeding and publishing on a real PostgreSQL server."""

from __future__ import annotations

from datetime import date

import pytest

from mocra_elt.demo.flights_db import publish_flights, seed_flights
from mocra_elt.errors import ConfigError
from mocra_elt.load.postgres import PgConnectionInfo
from tests.conftest_services import PgDatabase

# The first 3,000 flights span 2013-01-01 to 2013-01-04; the 4th is held back.
LIMIT_ROWS = 3000
HELD_BACK = date(2013, 1, 4)


def connection_info(database: PgDatabase) -> PgConnectionInfo:
    server = database.server
    return PgConnectionInfo(server.host, server.port, server.user, server.password, database.name)


@pytest.fixture
def seeded(pg_database: PgDatabase) -> PgDatabase:
    assert seed_flights(connection_info(pg_database), limit_rows=LIMIT_ROWS) > 0
    return pg_database


def test_seed_holds_back_latest_date(seeded: PgDatabase) -> None:
    [(count, first, last, ids)] = seeded.query(
        "select count(*), min(flight_date), max(flight_date), count(distinct id) from ops.flights"
    )
    held_back = seeded.query(
        "select count(*) from ops.flights where flight_date = %s", [HELD_BACK]
    )[0][0]

    assert count == ids
    assert count < LIMIT_ROWS
    assert (first, last) == (date(2013, 1, 1), date(2013, 1, 3))
    assert held_back == 0


def test_seed_sets_updated_at_after_schedule(seeded: PgDatabase) -> None:
    offsets = seeded.query("select distinct updated_at - time_hour from ops.flights")

    assert [str(offset) for (offset,) in offsets] == ["12:00:00"]


def test_second_seed_changes_nothing(seeded: PgDatabase) -> None:
    before = seeded.query("select count(*) from ops.flights")[0][0]

    assert seed_flights(connection_info(seeded), limit_rows=LIMIT_ROWS) == 0
    assert seeded.query("select count(*) from ops.flights")[0][0] == before


def test_publish_inserts_next_unpublished(seeded: PgDatabase) -> None:
    # flights.csv is in date order early in January, so the published ids are 1..N.
    [(last_published, count)] = seeded.query("select max(id), count(*) from ops.flights")

    change = publish_flights(connection_info(seeded), rows=5, updates=0)

    rows = seeded.query(
        "select flight_date, updated_at from ops.flights where id = any(%s)", [change.inserted]
    )
    assert last_published == count
    assert change.inserted == list(range(last_published + 1, last_published + 6))
    assert change.updated == []
    assert {flight_date for flight_date, _ in rows} == {HELD_BACK}
    assert {updated_at for _, updated_at in rows} == {change.updated_at}


def test_publish_corrects_rows_on_several_dates(seeded: PgDatabase) -> None:
    before = dict(seeded.query("select id, air_time from ops.flights"))
    latest_before = seeded.query("select max(updated_at) from ops.flights")[0][0]

    change = publish_flights(connection_info(seeded), rows=0, updates=6)

    rows = seeded.query(
        "select id, flight_date, air_time, updated_at from ops.flights where id = any(%s)",
        [change.updated],
    )
    assert len(rows) == 6
    assert len({flight_date for _, flight_date, _, _ in rows}) >= 3
    for flight_id, _, air_time, updated_at in rows:
        expected = None if before[flight_id] is None else before[flight_id] + 1
        assert air_time == expected
        assert updated_at == change.updated_at
    assert change.updated_at > latest_before
    assert seeded.query("select count(*) from ops.flights")[0][0] == len(before)


def test_publish_without_table_is_config_error(pg_database: PgDatabase) -> None:
    with pytest.raises(ConfigError, match="ops.flights does not exist"):
        publish_flights(connection_info(pg_database))


def test_publish_rejects_negative_counts(seeded: PgDatabase) -> None:
    with pytest.raises(ConfigError, match="must be zero or more"):
        publish_flights(connection_info(seeded), rows=-1)
