"""The per-connection rate limit (chat.limits)."""

from chat.limits import TokenBucket


def test_token_bucket_allows_the_burst_then_the_rate():
    now = [0.0]
    bucket = TokenBucket(rate=2, burst=3, clock=lambda: now[0])
    assert [bucket.allow() for _ in range(4)] == [True, True, True, False]
    now[0] = 0.5  # one token back
    assert [bucket.allow(), bucket.allow()] == [True, False]
