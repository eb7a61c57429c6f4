"""The one retry policy of the service: a step that failed on Redis is tried again
after a pause that doubles from first_delay up to max_delay (tenacity's exponential
wait), a number of times or until it succeeds (docs/decisions/0039-one-retry-policy.md)."""

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_never,
    wait_exponential,
)

from .channel_layer import LAYER_ERRORS

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    first_delay: float  # seconds
    max_delay: float
    attempts: int | None  # None: until it succeeds (or its task is cancelled)


async def retry(
    step: Callable[[], Awaitable[T]],
    backoff: Backoff,
    on_error: Callable[[BaseException], None],
    *,
    after_failure: bool = False,
) -> T:
    """step(), again after each failure on Redis, which on_error() hears of; the last
    error is raised once backoff.attempts have failed. after_failure: the caller's own
    attempt just failed, so the first one here waits too."""
    if after_failure:
        await asyncio.sleep(backoff.first_delay)

    def heard(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        if error is not None:
            on_error(error)

    retrying = AsyncRetrying(
        stop=stop_never if backoff.attempts is None else stop_after_attempt(backoff.attempts),
        wait=wait_exponential(multiplier=backoff.first_delay, max=backoff.max_delay),
        retry=retry_if_exception_type(LAYER_ERRORS),
        after=heard,
        reraise=True,
    )

    async def attempt() -> T:
        # A coroutine function: tenacity would not await what a plain callable returns.
        return await step()

    result: T = await retrying(attempt)
    return result
