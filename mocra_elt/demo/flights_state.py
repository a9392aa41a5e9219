"""The published state of the demo flights API, and the `publish` step that changes it.

The state folder contains `flights.parquet`, the flights the API serves, each with
an `updated_at` column, and `state.json`, which records how the data set was
chosen. `publish` replaces the Parquet file atomically (temporary file plus
`os.replace`), so a server reading it concurrently sees either the old or the new
state, never a partial one. Publishers take an exclusive lock on `publish.lock`.

The first state holds every flight except those of the data set's latest date
(2013-12-31 for the full data). Each first-state row gets `updated_at` =
`time_hour` + INITIAL_UPDATE_DELAY, as if the record last changed after the
flight, so a watermark taken on it is shared by one hour's flights at most.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mocra_elt.errors import ConfigError
from mocra_elt.files import write_atomically

if TYPE_CHECKING:
    import pyarrow as pa

INITIAL_UPDATE_DELAY = timedelta(hours=12)
STATE_FILE = "flights.parquet"
SETTINGS_FILE = "state.json"
LOCK_FILE = "publish.lock"


@dataclass(frozen=True)
class StateSettings:
    """The choice of data set for a state folder, fixed when its first state is written."""

    limit_rows: int | None
    held_back_date: str

    def to_json(self) -> str:
        return json.dumps({"limit_rows": self.limit_rows, "held_back_date": self.held_back_date})


def state_path(state_dir: Path) -> Path:
    return Path(state_dir) / STATE_FILE


def ensure_initial_state(state_dir: Path, limit_rows: int | None = None) -> dict[str, Any]:
    """Write the first published state unless the folder already has one; return a summary.

    `limit_rows` restricts the data set to the first rows of flights.csv, for
    small test data. It is stored in the folder, and later calls ignore theirs.
    """
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    with _publish_lock(state_dir):
        if state_path(state_dir).exists():
            return summarize(state_dir)
        flights = _universe(limit_rows)
        held_back = _latest_date(flights)
        initial = flights.filter(_on_date(flights, held_back, negate=True))
        _write_state(state_dir, _with_initial_updated_at(initial))
        settings = StateSettings(limit_rows, held_back.isoformat())
        write_atomically(state_dir / SETTINGS_FILE, settings.to_json().encode())
    return summarize(state_dir)


def publish(state_dir: Path, rows: int = 0, updates: int = 0) -> dict[str, Any]:
    """Publish the next `rows` unpublished flights and re-publish `updates` published ones.

    New flights are taken in file order. Updated flights are the first `updates`
    published flights by `id`, with their values unchanged. Both get one new
    `updated_at`: the current UTC time in microseconds, later than every
    `updated_at` already published. Returns counts and the new `updated_at`.
    """
    if rows < 0 or updates < 0:
        raise ConfigError(f"rows ({rows}) and updates ({updates}) must be zero or more.")
    ensure_initial_state(state_dir)
    state_dir = Path(state_dir)
    with _publish_lock(state_dir):
        published = read_state(state_dir)
        settings = read_settings(state_dir)
        instant = _next_instant(published)
        new_rows = _unpublished(published, settings.limit_rows, rows)
        updated = _first_by_id(published, updates)
        combined = _combine(published, updated, new_rows, instant)
        if new_rows.num_rows or updated.num_rows:
            _write_state(state_dir, combined)
    return {
        "published_rows": new_rows.num_rows,
        "updated_rows": updated.num_rows,
        "updated_at": _iso(instant),
        **summarize(state_dir),
    }


def summarize(state_dir: Path) -> dict[str, Any]:
    """Return how many flights are published and unpublished, and the latest `updated_at`."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = state_path(Path(state_dir))
    metadata = pq.read_metadata(path)
    latest = pc.max(pq.read_table(path, columns=["updated_at"]).column("updated_at")).as_py()
    settings = read_settings(Path(state_dir))
    return {
        "state_dir": str(state_dir),
        "total_published": metadata.num_rows,
        "unpublished": _universe(settings.limit_rows).num_rows - metadata.num_rows,
        "latest_updated_at": _iso(latest) if latest is not None else None,
        "held_back_date": settings.held_back_date,
        "limit_rows": settings.limit_rows,
    }


def read_state(state_dir: Path) -> pa.Table:
    import pyarrow.parquet as pq

    path = state_path(state_dir)
    if not path.exists():
        raise ConfigError(
            f"the demo flights API has no published state in {state_dir}. "
            "Create it with 'mocra-elt demo publish'."
        )
    return pq.read_table(path)


def read_settings(state_dir: Path) -> StateSettings:
    path = Path(state_dir) / SETTINGS_FILE
    values = json.loads(path.read_text())
    return StateSettings(values["limit_rows"], values["held_back_date"])


# --- building the next state ------------------------------------------------------------------


def _universe(limit_rows: int | None) -> pa.Table:
    from mocra_elt.demo.nycflights import read_flights

    return read_flights(limit_rows)


def _latest_date(flights: pa.Table) -> date:
    import pyarrow.compute as pc

    key = pc.add(pc.multiply(flights.column("month"), 100), flights.column("day"))
    latest = pc.max(pc.add(pc.multiply(flights.column("year"), 10_000), key)).as_py()
    return date(latest // 10_000, latest // 100 % 100, latest % 100)


def _on_date(flights: pa.Table, day: date, negate: bool = False) -> pa.ChunkedArray:
    import pyarrow.compute as pc

    match = pc.and_(
        pc.and_(
            pc.equal(flights.column("year"), day.year), pc.equal(flights.column("month"), day.month)
        ),
        pc.equal(flights.column("day"), day.day),
    )
    return pc.invert(match) if negate else match


def _with_initial_updated_at(table: pa.Table) -> pa.Table:
    import pyarrow as pa
    import pyarrow.compute as pc

    scheduled = table.column("time_hour").cast(pa.timestamp("us", tz="UTC"))
    delay = pa.scalar(INITIAL_UPDATE_DELAY, pa.duration("us"))
    table = table.drop_columns([n for n in ("updated_at",) if n in table.column_names])
    return table.append_column("updated_at", pc.add(scheduled, delay))


def _with_updated_at(table: pa.Table, instant: datetime) -> pa.Table:
    import pyarrow as pa

    if "updated_at" in table.column_names:
        table = table.drop_columns(["updated_at"])
    values = pa.array([instant] * table.num_rows, pa.timestamp("us", tz="UTC"))
    return table.append_column("updated_at", values)


def _next_instant(published: pa.Table) -> datetime:
    """Return now in UTC, moved past the latest published `updated_at` if the clock lags."""
    import pyarrow.compute as pc

    now = datetime.now(UTC)
    latest = pc.max(published.column("updated_at")).as_py()
    if latest is not None and now <= latest:
        now = latest + timedelta(microseconds=1)
    return now


def _unpublished(published: pa.Table, limit_rows: int | None, count: int) -> pa.Table:
    import pyarrow.compute as pc

    if count == 0:
        return published.slice(0, 0).drop_columns(["updated_at"])
    flights = _universe(limit_rows)
    is_published = pc.is_in(flights.column("id"), value_set=published.column("id"))
    return flights.filter(pc.invert(is_published)).slice(0, count)


def _first_by_id(published: pa.Table, count: int) -> pa.Table:
    return published.sort_by("id").slice(0, count)


def _combine(
    published: pa.Table, updated: pa.Table, new_rows: pa.Table, instant: datetime
) -> pa.Table:
    import pyarrow as pa
    import pyarrow.compute as pc

    unchanged = published.filter(pc.invert(pc.is_in(published.column("id"), updated.column("id"))))
    changed = [_with_updated_at(table, instant) for table in (updated, new_rows)]
    schema = published.schema
    parts = [unchanged, *(table.select(schema.names).cast(schema) for table in changed)]
    return pa.concat_tables(parts).sort_by("id")


def _write_state(state_dir: Path, table: pa.Table) -> None:
    import pyarrow.parquet as pq

    with tempfile.NamedTemporaryFile(dir=state_dir, suffix=".parquet.tmp", delete=False) as handle:
        temporary = Path(handle.name)
    try:
        pq.write_table(table, temporary)
        os.replace(temporary, state_path(state_dir))
    finally:
        temporary.unlink(missing_ok=True)


@contextmanager
def _publish_lock(state_dir: Path) -> Iterator[None]:
    with open(state_dir / LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _iso(instant: datetime) -> str:
    """Format an aware datetime as ISO 8601 in UTC with a `Z` suffix."""
    return instant.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
