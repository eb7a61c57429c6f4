"""The rate limits of a connection and of an API key (chat.limits)."""

from chat.limits import TokenBucket


def test_token_bucket_allows_the_burst_then_the_rate():
    now = [0.0]
    bucket = TokenBucket(rate=2, burst=3, clock=lambda: now[0])
    assert [bucket.allow() for _ in range(4)] == [True, True, True, False]
    now[0] = 0.5  # one token back
    assert [bucket.allow(), bucket.allow()] == [True, False]


def test_a_costlier_request_takes_several_tokens_or_none():
    bucket = TokenBucket(rate=1, burst=5, clock=lambda: 0.0)
    assert bucket.allow(4)
    assert not bucket.allow(2)  # one left: nothing taken
    assert bucket.allow()
