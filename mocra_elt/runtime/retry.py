"""Run a stage under its retry policy: only transient errors are retried."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_exponential_jitter,
)

from mocra_elt.config.model import StageRetry
from mocra_elt.errors import MocraError

T = TypeVar("T")


def is_transient(error: BaseException) -> bool:
    return isinstance(error, MocraError) and error.transient


def call_with_retry(
    policy: StageRetry,
    function: Callable[[], T],
    log: logging.LoggerAdapter[logging.Logger],
    stage: str,
    on_attempt: Callable[[int], None] | None = None,
) -> T:
    """Call `function` until it succeeds, a terminal error occurs, or attempts run out."""
    backoff = policy.backoff
    wait: wait_exponential | wait_exponential_jitter
    if backoff.jitter:
        wait = wait_exponential_jitter(
            initial=backoff.initial,
            max=backoff.maximum,
            exp_base=backoff.multiplier,
            jitter=backoff.initial,
        )
    else:
        wait = wait_exponential(
            multiplier=backoff.initial, max=backoff.maximum, exp_base=backoff.multiplier
        )

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "stage %s failed on attempt %d of %d with %s: %s Retrying in %.1f s.",
            stage,
            state.attempt_number,
            policy.attempts,
            getattr(error, "error_code", "?"),
            error,
            delay,
        )

    retrying = Retrying(
        stop=stop_after_attempt(policy.attempts),
        wait=wait,
        retry=retry_if_exception(is_transient),
        before_sleep=before_sleep,
        reraise=True,
    )
    for attempt in retrying:
        with attempt:
            if on_attempt is not None:
                on_attempt(attempt.retry_state.attempt_number)
            return function()
    raise AssertionError("tenacity ended without a result")  # pragma: no cover
