"""Read a paginated JSON API with dlt's REST client, one Arrow table per page.

Requests go through dlt's retrying `Client`: 429, 5xx, connection errors and
timeouts are retried up to `source.max_attempts` times per request, honouring a
`Retry-After` header. Whatever still fails becomes a mocra-elt error whose
message names the URL without its query string, because a query may carry an
API key.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import pyarrow as pa

from mocra_elt.config.model import (
    SECRET_REFERENCE,
    ApiKeyAuth,
    BasicAuth,
    BearerAuth,
    CursorPaginator,
    HeaderLinkPaginator,
    HttpSource,
    NextLinkPaginator,
    OffsetPaginator,
    PageNumberPaginator,
)
from mocra_elt.config.secrets import resolve_secret
from mocra_elt.errors import MocraError, SourceError, StageError, TransientError
from mocra_elt.extract.base import ExtractContext, SourceReader

if TYPE_CHECKING:
    from requests import Response, Session
    from requests.auth import AuthBase
    from tenacity import RetryCallState

AUTH_STATUSES = (401, 403)
ERROR_BODY_CHARACTERS = 300


class HttpReader(SourceReader):
    """Page through `source.base_url + source.path` and yield each page as an Arrow table."""

    def __init__(self, context: ExtractContext) -> None:
        super().__init__(context)
        source = self.pipeline.source
        assert isinstance(source, HttpSource)
        self.source = source
        self.requests = 0
        self.retries = 0
        self.pages = 0
        self._secrets: list[str] = []

    @property
    def endpoint(self) -> str:
        """The URL of the first page, for messages: no query string, so no secret."""
        return _without_query(self.source.base_url + _leading_slash(self.source.path))

    def read(self) -> Iterator[pa.Table]:
        from dlt.sources.helpers.rest_client import RESTClient

        auth = self._auth()
        session = self._session()
        client = RESTClient(
            base_url=self.source.base_url,
            headers=self._resolved(self.source.headers, "source.headers"),
            auth=auth,
            paginator=build_paginator(self.source),
            data_selector=self.source.data_selector,
            session=session,
        )
        pages = client.paginate(
            self.source.path,
            params=self._params(),
            hooks={"response": [self._observe_response]},
        )
        try:
            for page in pages:
                self.pages += 1
                self._update_stats()
                if page:
                    yield records_to_table(list(page))
                elif self.pages == 1:
                    self._check_data_selector(page.response)
        except MocraError:
            raise
        except Exception as error:
            raise self._translate(error) from error
        finally:
            session.close()
            self._update_stats()
        self.context.log.info(
            "read %d pages in %d requests (%d retried) from %s",
            self.pages,
            self.requests,
            self.retries,
            self.endpoint,
        )

    # --- request set-up ---------------------------------------------------------------------

    def _resolved(self, values: Mapping[str, Any], field: str) -> dict[str, Any]:
        """Replace secret references among header or parameter values by their values."""
        return {
            name: self._secret(value, f"{field}.{name}")
            if isinstance(value, str) and SECRET_REFERENCE.match(value)
            else value
            for name, value in values.items()
        }

    def _params(self) -> dict[str, Any]:
        params: dict[str, Any] = self._resolved(self.source.params, "source.params")
        paginator = self.source.paginator
        if isinstance(paginator, PageNumberPaginator) and paginator.page_size_param:
            if paginator.page_size is not None:
                params[paginator.page_size_param] = paginator.page_size
        if self.source.cursor_param and self.cursor is not None:
            start = self.cursor.start_value()
            if start is not None:
                params[self.source.cursor_param] = format_cursor_value(start)
                self.context.log.info(
                    "requesting %s=%s", self.source.cursor_param, params[self.source.cursor_param]
                )
        return params

    def _auth(self) -> AuthBase | None:
        from dlt.sources.helpers.rest_client.auth import APIKeyAuth, BearerTokenAuth, HttpBasicAuth

        auth = self.source.auth
        if auth is None:
            return None
        if isinstance(auth, BearerAuth):
            return BearerTokenAuth(token=self._secret(auth.token, "source.auth.token"))
        if isinstance(auth, ApiKeyAuth):
            key = self._secret(auth.api_key, "source.auth.api_key")
            return APIKeyAuth(name=auth.name, api_key=key, location=auth.location)
        assert isinstance(auth, BasicAuth)
        password = self._secret(auth.password, "source.auth.password")
        return HttpBasicAuth(username=auth.username, password=password)

    def _secret(self, reference: str, field: str) -> str:
        value = resolve_secret(reference, pipeline=self.pipeline.name, field=field)
        self._secrets.append(value)
        return value

    def _session(self) -> Session:
        """Return a dlt retrying session whose retries are counted and logged."""
        from dlt.sources.helpers.requests import Client

        client = Client(
            request_timeout=self.source.timeout,
            request_max_attempts=self.source.max_attempts,
            raise_for_status=False,
        )
        session = client.session
        # dlt wraps `session.send` in a tenacity Retrying, which tenacity exposes as `.retry`.
        retrying = getattr(session.send, "retry", None)
        if retrying is not None:
            retrying.before_sleep = self._before_retry
        else:
            self.context.log.debug("cannot observe request retries of this dlt version")
        return session

    # --- observing requests -----------------------------------------------------------------

    def _observe_response(self, response: Response, *args: Any, **kwargs: Any) -> None:
        """Count the request and its body bytes, then raise on an error status."""
        from requests import HTTPError

        self.requests += 1
        self.bytes_read += len(response.content)
        if response.status_code >= 400:
            url = _without_query(response.url)
            raise HTTPError(f"HTTP {response.status_code} from {url}", response=response)

    def _before_retry(self, state: RetryCallState) -> None:
        self.retries += 1
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        if error is None and outcome is not None:
            response = outcome.result()
        else:
            response = getattr(error, "response", None)
        if response is not None:
            reason = f"HTTP {response.status_code}"
        else:
            reason = type(error).__name__ if error is not None else "an unknown error"
        delay = state.next_action.sleep if state.next_action else 0.0
        self.context.log.warning(
            "request to %s failed with %s on attempt %d of %d; retrying in %.1f s",
            self.endpoint,
            reason,
            state.attempt_number,
            self.source.max_attempts,
            delay,
        )

    def _check_data_selector(self, response: Response) -> None:
        """Raise if `source.data_selector` matches nothing, which dlt reads as an empty page."""
        from dlt.common import jsonpath

        selector = self.source.data_selector
        if not selector:
            return
        body = response.json()
        if jsonpath.find_values(selector, body):
            return
        keys = ", ".join(sorted(body)) if isinstance(body, dict) else type(body).__name__
        raise SourceError(
            f"pipeline {self.pipeline.name!r}: source.data_selector {selector!r} matches nothing "
            f"in the response from {self.endpoint} (top level: {keys}). Set it to the path of "
            "the record list, e.g. 'data' or 'results.items'.",
            pipeline=self.pipeline.name,
            stage="extract",
            error_code="RECORD_PARSE_ERROR",
            url=self.endpoint,
        )

    def _update_stats(self) -> None:
        self.context.stats.update(
            http_requests=self.requests, http_retries=self.retries, http_pages=self.pages
        )

    # --- errors -----------------------------------------------------------------------------

    def _translate(self, error: Exception) -> MocraError:
        """Map a requests or paginator error to a mocra-elt error with a next step."""
        import requests

        if isinstance(error, requests.HTTPError) and error.response is not None:
            return self._http_error(error.response)
        if isinstance(error, requests.Timeout):
            return self._unavailable(
                f"timed out after {self.source.timeout:g} s",
                "Raise source.timeout, or run again when the server is less busy.",
            )
        if isinstance(error, requests.ConnectionError | requests.exceptions.ChunkedEncodingError):
            return self._unavailable(
                f"could not be reached: {_connection_problem(error)}",
                "Check that the server is running and that source.base_url is right.",
            )
        if isinstance(error, ValueError):
            return SourceError(
                self._redact(
                    f"pipeline {self.pipeline.name!r}: the response from {self.endpoint} could "
                    f"not be read ({_first_line(error)}). Check source.data_selector and "
                    "source.paginator against the API's response format."
                ),
                pipeline=self.pipeline.name,
                stage="extract",
                error_code="RECORD_PARSE_ERROR",
                url=self.endpoint,
            )
        raise error

    def _http_error(self, response: Response) -> MocraError:
        status = response.status_code
        url = _without_query(response.url)
        prefix = f"pipeline {self.pipeline.name!r}: {url} returned HTTP {status} {response.reason}"
        error_class: type[StageError] = SourceError
        if status in AUTH_STATUSES:
            code = "SOURCE_AUTH"
            message = f"{prefix}: the credentials were rejected. Check source.auth and the "
            message += "secret it refers to."
        elif status == 429 or status >= 500:
            error_class, code = TransientError, "SOURCE_HTTP_5XX"
            message = f"{prefix} after {_attempts(self.source.max_attempts)}. The server is "
            message += "overloaded or failing: run again later, or raise source.max_attempts."
        else:
            body = response.text[:ERROR_BODY_CHARACTERS].strip()
            code = "SOURCE_HTTP_4XX"
            message = prefix + (f" ({body})" if body else "")
            message += ". Check source.base_url, source.path, source.params and source.paginator."
        return error_class(
            self._redact(message),
            pipeline=self.pipeline.name,
            stage="extract",
            error_code=code,
            url=url,
            status=status,
        )

    def _unavailable(self, problem: str, advice: str) -> TransientError:
        return TransientError(
            self._redact(
                f"pipeline {self.pipeline.name!r}: {self.endpoint} {problem} "
                f"({_attempts(self.source.max_attempts)}). {advice}"
            ),
            pipeline=self.pipeline.name,
            stage="extract",
            error_code="SOURCE_UNAVAILABLE",
            url=self.endpoint,
        )

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret:
                text = text.replace(secret, "***")
        return text


def build_paginator(source: HttpSource) -> Any:
    """Return the dlt paginator for `source.paginator`."""
    from dlt.sources.helpers.rest_client import paginators

    config = source.paginator
    if isinstance(config, PageNumberPaginator):
        return paginators.PageNumberPaginator(
            base_page=config.base_page,
            page_param=config.page_param,
            total_path=config.total_path,
            maximum_page=config.maximum_page,
        )
    if isinstance(config, OffsetPaginator):
        return paginators.OffsetPaginator(
            limit=config.limit,
            offset_param=config.offset_param,
            limit_param=config.limit_param,
            total_path=config.total_path,
        )
    if isinstance(config, CursorPaginator):
        return paginators.JSONResponseCursorPaginator(
            cursor_path=config.cursor_path, cursor_param=config.cursor_param
        )
    if isinstance(config, NextLinkPaginator):
        return paginators.JSONLinkPaginator(next_url_path=config.next_url_path)
    if isinstance(config, HeaderLinkPaginator):
        return paginators.HeaderLinkPaginator()
    return paginators.SinglePagePaginator()


def records_to_table(records: list[Any]) -> pa.Table:
    """Build an Arrow table from JSON records, with one column per key seen in any record.

    Nested objects and lists become JSON text, so they load as one column rather
    than as child tables. A column whose values Arrow cannot give one type
    (numbers and text mixed, say) is loaded as text.
    """
    rows = [record if isinstance(record, dict) else {"value": record} for record in records]
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    columns = {name: _column([row.get(name) for row in rows]) for name in names}
    return pa.table(columns)


def _column(values: list[Any]) -> pa.Array:
    try:
        array = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return pa.array([_as_text(value) for value in values], pa.string())
    if pa.types.is_nested(array.type):
        return pa.array([_as_text(value) for value in values], pa.string())
    return array


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), default=str)
    return str(value)


def format_cursor_value(value: Any) -> str:
    """Format a watermark for a query string; datetimes as ISO 8601 in UTC with `Z`."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value.isoformat() + "Z"
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _without_query(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def _leading_slash(path: str) -> str:
    return path if not path or path.startswith("/") else "/" + path


def _connection_problem(error: BaseException) -> str:
    """Return the operating system's reason for a failed connection, e.g. 'Connection refused'."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            return current.strerror
        reason = getattr(current, "reason", None)
        nested = [arg for arg in current.args if isinstance(arg, BaseException)]
        pending += [current.__cause__, current.__context__, *nested]
        pending += [reason] if isinstance(reason, BaseException) else []
    return "the connection failed"


def _attempts(count: int) -> str:
    return "1 attempt" if count == 1 else f"{count} attempts"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
