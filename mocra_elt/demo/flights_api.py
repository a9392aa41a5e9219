"""A paginated JSON API over the published NYC 2013 flights, for demos and tests.

`GET /flights?page=N&page_size=M&updated_since=ISO8601` returns
`{"data": [...], "page": N, "page_size": M, "total_pages": T, "total": R}`.
Rows are ordered by (`updated_at`, `id`); `updated_since` keeps rows whose
`updated_at` is at or after it. The same rows are served in other pagination
styles under `/flights/offset` (offset and limit), `/flights/cursor` (an opaque
`next_cursor` token), `/flights/next_link` (a `next` URL in the body) and
`/flights/link_header` (a bare list with an RFC 8288 `Link` header).

The server re-reads the state folder (see `flights_state`) when the Parquet file
changes, so `mocra-elt demo publish` in another process shows on the next request.
Each state is encoded to JSON once; a page is a slice of that encoding.

NOTE: pages are positions in the current state. A publish between two page
requests of one read moves updated rows to the end, which can shift a row past
a page boundary. A reader that passes `updated_since` picks such rows up on its
next run, because their new `updated_at` is later than the watermark.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hmac
import json
import logging
import os
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode, urlsplit

from mocra_elt.demo.flights_state import (
    INITIAL_UPDATE_DELAY,
    ensure_initial_state,
    publish,
    state_path,
)

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "INITIAL_UPDATE_DELAY",
    "FaultPlan",
    "FlightsApiServer",
    "ensure_initial_state",
    "publish",
    "start_server",
]

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 1000
MAX_PAGE_SIZE = 10_000
AUTH_SCHEMES = ("bearer", "api_key", "basic")
API_KEY_HEADER = "X-API-Key"
API_KEY_PARAM = "api_key"
STYLES = {
    "/flights": "page_number",
    "/flights/offset": "offset",
    "/flights/cursor": "cursor",
    "/flights/next_link": "next_link",
    "/flights/link_header": "link_header",
}


class RequestInvalid(Exception):
    """A query parameter the API cannot use; the server responds with 400."""


# --- the encoded state --------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """One published state, encoded: row i is `body[offsets[i]:offsets[i + 1] - 1]`.

    Each encoded row ends with a comma, so a run of rows is one slice minus its
    last byte. `updated_us` contains each row's `updated_at` in microseconds since
    the epoch, in serving order.
    """

    signature: tuple[int, int, int]
    body: bytes
    offsets: list[int]
    updated_us: list[int]

    @property
    def rows(self) -> int:
        return len(self.updated_us)

    def first_row_since(self, since_us: int | None) -> int:
        return 0 if since_us is None else bisect.bisect_left(self.updated_us, since_us)

    def json_rows(self, start: int, stop: int) -> bytes:
        start, stop = min(start, self.rows), min(stop, self.rows)
        if stop <= start:
            return b""
        return self.body[self.offsets[start] : self.offsets[stop] - 1]


def load_snapshot(path: Path) -> Snapshot:
    """Read the state file and encode every row to JSON, ordered by (updated_at, id)."""
    import pyarrow.parquet as pq

    with open(path, "rb") as handle:
        stat = os.fstat(handle.fileno())
        table = pq.read_table(handle)
    encoded = _encode_rows(_naive_utc(table))
    column = encoded.column("row_json").combine_chunks()
    signature = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
    return Snapshot(
        signature=signature,
        body=_data_buffer(column),
        offsets=_offsets(column),
        updated_us=encoded.column("updated_us").to_pylist(),
    )


def _encode_rows(table: pa.Table) -> pa.Table:
    import duckdb

    fields = []
    for name in table.column_names:
        value = _quote(name)
        if name == "updated_at":
            value = f"strftime({value}, '%Y-%m-%dT%H:%M:%S.%fZ')"
        elif name == "time_hour":
            value = f"strftime({value}, '%Y-%m-%dT%H:%M:%SZ')"
        fields.append(f"{_quote(name)} := {value}")
    query = (
        f"select to_json(struct_pack({', '.join(fields)})) || ',' as row_json, "
        "epoch_us(updated_at) as updated_us from published order by updated_at, id"
    )
    connection = duckdb.connect()
    try:
        connection.register("published", table)
        return connection.execute(query).to_arrow_table()
    finally:
        connection.close()


def _naive_utc(table: pa.Table) -> pa.Table:
    """Drop the UTC zone from timestamp columns, so DuckDB formats them without a zone setting."""
    import pyarrow as pa

    for index, schema_field in enumerate(table.schema):
        if pa.types.is_timestamp(schema_field.type) and schema_field.type.tz is not None:
            naive = table.column(index).cast(pa.timestamp(schema_field.type.unit))
            table = table.set_column(index, schema_field.name, naive)
    return table


def _offsets(column: pa.Array) -> list[int]:
    import pyarrow as pa

    column = column.cast(pa.large_string())
    offsets = pa.Array.from_buffers(
        pa.int64(), len(column) + 1, [None, column.buffers()[1]], offset=column.offset
    )
    return offsets.to_pylist()


def _data_buffer(column: pa.Array) -> bytes:
    import pyarrow as pa

    buffer = column.cast(pa.large_string()).buffers()[2]
    return buffer.to_pybytes() if buffer is not None else b""


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# --- faults for tests -----------------------------------------------------------------------


@dataclass
class FaultPlan:
    """Failures the server injects into data requests, counted across all styles.

    The first `transient_failures` requests get `transient_status` and a
    `Retry-After` of `retry_after` seconds. After `fail_after_pages` successful
    pages, every data request gets `fail_status`.
    """

    transient_failures: int = 0
    transient_status: int = 503
    retry_after: int = 1
    fail_after_pages: int | None = None
    fail_status: int = 500
    pages_served: int = 0
    transient_sent: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def next_failure(self) -> tuple[int, dict[str, str]] | None:
        """Return the status and headers to fail this request with, or None to serve it."""
        with self.lock:
            if self.transient_sent < self.transient_failures:
                self.transient_sent += 1
                return self.transient_status, {"Retry-After": str(self.retry_after)}
            if self.fail_after_pages is not None and self.pages_served >= self.fail_after_pages:
                return self.fail_status, {}
            self.pages_served += 1
            return None


# --- the server -------------------------------------------------------------------------------


class FlightsApiServer(ThreadingHTTPServer):
    """The HTTP server; `start_server` runs it in a thread, `serve` in the foreground."""

    daemon_threads = True

    def __init__(
        self,
        state_dir: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str | None = None,
        auth: str = "bearer",
        faults: FaultPlan | None = None,
    ) -> None:
        if auth not in AUTH_SCHEMES:
            raise ValueError(f"auth {auth!r} is not one of {', '.join(AUTH_SCHEMES)}")
        super().__init__((host, port), FlightsRequestHandler)
        self.state_dir = Path(state_dir)
        self.token = token
        self.auth = auth
        self.faults = faults or FaultPlan()
        self.status_counts: Counter[int] = Counter()
        self._snapshot: Snapshot | None = None
        self._snapshot_lock = threading.Lock()
        self._status_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def snapshot(self) -> Snapshot:
        """Return the encoded state, re-reading it if the state file was replaced."""
        path = state_path(self.state_dir)
        stat = os.stat(path)
        signature = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        with self._snapshot_lock:
            if self._snapshot is None or self._snapshot.signature != signature:
                self._snapshot = load_snapshot(path)
                log.info("loaded %d published flights from %s", self._snapshot.rows, path)
            return self._snapshot

    def record_status(self, status: int) -> None:
        with self._status_lock:
            self.status_counts[status] += 1

    def start(self) -> FlightsApiServer:
        """Serve in a daemon thread; return self."""
        # A short poll interval lets stop() return quickly; idle wake-ups cost little.
        self._thread = threading.Thread(
            target=self.serve_forever, args=(0.05,), name="flights-api", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> FlightsApiServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_server(
    state_dir: Path,
    host: str = "127.0.0.1",
    port: int = 0,
    token: str | None = None,
    *,
    auth: str = "bearer",
    limit_rows: int | None = None,
    faults: FaultPlan | None = None,
) -> FlightsApiServer:
    """Create the first state if needed, then serve it in a background thread.

    `token=None` turns authentication off. `auth` chooses how the token must be
    sent: `bearer` (`Authorization: Bearer TOKEN`), `api_key` (an `X-API-Key`
    header or an `api_key` query parameter) or `basic` (any user name, the token
    as password). `limit_rows` applies only when the state is created.
    Port 0 picks a free port; read it from `.url`. Stop the server with `.stop()`.
    """
    ensure_initial_state(state_dir, limit_rows)
    server = FlightsApiServer(state_dir, host, port, token=token, auth=auth, faults=faults)
    server.snapshot()
    return server.start()


class FlightsRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FlightsApiServer

    def do_GET(self) -> None:  # noqa: N802 - name fixed by BaseHTTPRequestHandler
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        if parts.path == "/health":
            self._send_json(HTTPStatus.OK, {"status": "ok"})
            return
        style = STYLES.get(parts.path.rstrip("/") or "/")
        if style is None:
            self._send_json(HTTPStatus.NOT_FOUND, {"error": f"no endpoint {parts.path}"})
            return
        if not self._authorized(query):
            log.info(
                "rejected GET %s: missing or invalid %s credentials", parts.path, self.server.auth
            )
            self._send_json(
                HTTPStatus.UNAUTHORIZED,
                {"error": f"missing or invalid credentials ({self.server.auth})"},
                {"WWW-Authenticate": _challenge(self.server.auth)},
            )
            return
        failure = self.server.faults.next_failure()
        if failure is not None:
            status, headers = failure
            log.info("injected HTTP %d into GET %s", status, parts.path)
            self._send_json(status, {"error": "injected failure"}, headers)
            return
        try:
            self._serve_rows(style, parts.path, query)
        except RequestInvalid as error:
            log.info("rejected GET %s: %s", parts.path, error)
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": str(error)})
        except Exception:
            log.exception("GET %s failed", parts.path)
            self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error"})

    def _serve_rows(self, style: str, path: str, query: dict[str, list[str]]) -> None:
        snapshot = self.server.snapshot()
        start = snapshot.first_row_since(_since_us(query))
        if style == "offset":
            self._serve_offset(snapshot, start, query)
        elif style == "cursor":
            self._serve_cursor(snapshot, start, query)
        else:
            self._serve_page(snapshot, start, style, path, query)

    def _serve_offset(self, snapshot: Snapshot, start: int, query: dict[str, list[str]]) -> None:
        offset = _int_param(query, "offset", 0, minimum=0)
        limit = _int_param(query, "limit", DEFAULT_PAGE_SIZE, minimum=1, maximum=MAX_PAGE_SIZE)
        rows = snapshot.json_rows(start + offset, start + offset + limit)
        self._send_page(rows, {"offset": offset, "limit": limit, "total": snapshot.rows - start})

    def _serve_cursor(self, snapshot: Snapshot, start: int, query: dict[str, list[str]]) -> None:
        position = _decode_cursor(_str_param(query, "cursor"))
        size = _page_size(query)
        rows = snapshot.json_rows(start + position, start + position + size)
        after = position + size
        more = after < snapshot.rows - start
        self._send_page(rows, {"next_cursor": _encode_cursor(after) if more else None})

    def _serve_page(
        self, snapshot: Snapshot, start: int, style: str, path: str, query: dict[str, list[str]]
    ) -> None:
        """Serve one numbered page in the page_number, next_link or link_header style."""
        page, size = _int_param(query, "page", 1, minimum=1), _page_size(query)
        total = snapshot.rows - start
        first = start + (page - 1) * size
        rows = snapshot.json_rows(first, first + size)
        next_url = self._next_url(path, query, page + 1) if page * size < total else None

        if style == "next_link":
            self._send_page(rows, {"next": next_url})
        elif style == "link_header":
            headers = {"Link": f'<{next_url}>; rel="next"'} if next_url else {}
            self._send_body(HTTPStatus.OK, b"[" + rows + b"]", headers)
        else:
            total_pages = -(-total // size)
            meta = {"page": page, "page_size": size, "total_pages": total_pages, "total": total}
            self._send_page(rows, meta)

    def _authorized(self, query: dict[str, list[str]]) -> bool:
        token = self.server.token
        if token is None:
            return True
        header = self.headers.get("Authorization", "")
        if self.server.auth == "bearer":
            return _same(header, f"Bearer {token}")
        if self.server.auth == "api_key":
            key = self.headers.get(API_KEY_HEADER) or _str_param(query, API_KEY_PARAM) or ""
            return _same(key, token)
        return _same(_basic_password(header) or "", token)

    def _next_url(self, path: str, query: dict[str, list[str]], page: int) -> str:
        params = {key: values[-1] for key, values in query.items() if key != API_KEY_PARAM}
        params["page"] = str(page)
        host = self.headers.get("Host") or self.server.url.removeprefix("http://")
        return f"http://{host}{path}?{urlencode(params)}"

    def _send_page(self, rows: bytes, meta: dict[str, Any]) -> None:
        """Send `{"data": [rows], **meta}`; `meta` must not be empty."""
        members = json.dumps(meta, separators=(",", ":"))[1:]
        self._send_body(HTTPStatus.OK, b'{"data":[' + rows + b"]," + members.encode())

    def _send_json(
        self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        self._send_body(status, json.dumps(payload).encode(), headers)

    def _send_body(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.server.record_status(int(status))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base class name
        """Log requests at debug level, with the path only, since a query may carry a key."""
        log.debug("%s %s: " + format, self.command, urlsplit(self.path).path, *args)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.debug("%s %s responded %s", self.command, urlsplit(self.path).path, code)


# --- query parameters -----------------------------------------------------------------------


def _str_param(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def _int_param(
    query: dict[str, list[str]],
    name: str,
    default: int,
    *,
    minimum: int,
    maximum: int | None = None,
) -> int:
    text = _str_param(query, name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise RequestInvalid(f"{name}={text!r} is not an integer") from None
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and at most {maximum}" if maximum is not None else ""
        raise RequestInvalid(f"{name}={value} must be at least {minimum}{upper}")
    return value


def _page_size(query: dict[str, list[str]]) -> int:
    return _int_param(query, "page_size", DEFAULT_PAGE_SIZE, minimum=1, maximum=MAX_PAGE_SIZE)


def _since_us(query: dict[str, list[str]]) -> int | None:
    """Return `updated_since` in microseconds since the epoch; a value without zone is UTC."""
    text = _str_param(query, "updated_since")
    if not text:
        return None
    try:
        instant = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise RequestInvalid(
            f"updated_since={text!r} is not an ISO 8601 timestamp such as 2013-12-31T00:00:00Z"
        ) from None
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)
    delta = instant - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _encode_cursor(position: int) -> str:
    return base64.urlsafe_b64encode(f"position:{position}".encode()).decode()


def _decode_cursor(token: str | None) -> int:
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
        prefix, _, number = text.partition(":")
        if prefix != "position":
            raise ValueError(prefix)
        return max(int(number), 0)
    except (ValueError, binascii.Error):
        raise RequestInvalid(f"cursor {token!r} is not a cursor this API returned") from None


def _basic_password(header: str) -> str | None:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, _, password = base64.b64decode(encoded).decode().partition(":")
    except (ValueError, binascii.Error):
        return None
    return password if user else None


def _same(given: str, expected: str) -> bool:
    """Compare credentials in constant time."""
    return hmac.compare_digest(given.encode(), expected.encode())


def _challenge(auth: str) -> str:
    if auth == "basic":
        return 'Basic realm="flights"'
    if auth == "api_key":
        return f'ApiKey header="{API_KEY_HEADER}"'
    return 'Bearer realm="flights"'
