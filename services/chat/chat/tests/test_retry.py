"""The one retry policy (chat.retry)."""

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from chat.retry import Backoff, retry

QUICK = Backoff(first_delay=0.001, max_delay=0.002, attempts=3)


async def test_a_step_is_tried_again_until_it_succeeds():
    attempts, heard = [], []

    async def step():
        attempts.append(1)
        if len(attempts) < 3:
            raise RedisConnectionError("down")
        return "done"

    assert await retry(step, QUICK, heard.append) == "done"
    assert len(attempts) == 3
    assert [str(error) for error in heard] == ["down", "down"]


async def test_the_last_error_is_raised_after_the_attempts():
    heard = []

    async def step():
        raise RedisConnectionError("down")

    with pytest.raises(RedisConnectionError):
        await retry(step, QUICK, heard.append)
    assert len(heard) == 3


async def test_other_errors_are_not_retried():
    attempts = []

    async def step():
        attempts.append(1)
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        await retry(step, QUICK, lambda error: None)
    assert len(attempts) == 1
