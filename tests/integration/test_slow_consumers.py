"""Clients that stop reading in a busy room, through nginx on a real cluster: the
replicas' memory stays bounded, the slow sockets are closed with 4008, everyone else
gets everything, and a slow client that resumes loses nothing."""

import pytest

from chat.protocol import CLOSE_SLOW_CONSUMER
from harness import slow_consumers
from harness.cluster import start_cluster

SCENARIO = slow_consumers.Scenario(slow=10, senders=10, rate=12, message_bytes=16000, seconds=25)
# Each reader gets 1.9 MB/s. The replicas, nginx and this process share two cores: the
# readers must keep up with room to spare, or they are closed as slow too, rightly. A send
# buffer of 2 MiB lets one fall behind for 1 s (the default 1 MiB allows 0.5 s).
SEND_BUFFER_BYTES = 2 * 1024 * 1024
# Per replica: 5 slow sockets, each holding at most about SEND_BUFFER_BYTES in its
# queue plus Twisted's 64 KiB (bounded, a replica grows by about 6 MB); unbounded, this
# scenario grows each replica by about 40 MB (loadtests/slow_consumers.py --unbounded
# --slow 10 --rate 12 --message-bytes 16000 --seconds 25 --replicas 2).
RSS_GROWTH_LIMIT_MB = 20


@pytest.fixture(scope="module")
def busy_cluster(tmp_path_factory):
    cluster = start_cluster(
        tmp_path_factory,
        "slow-consumers",
        replicas=2,
        CHAT_RATE_LIMIT=str(SCENARIO.rate + 5),
        CHAT_MAX_MESSAGE_BYTES=str(SCENARIO.message_bytes + 200),
        CHAT_HISTORY_MAX_LENGTH="100000",
        CHAT_MAX_SEND_BUFFER=str(SEND_BUFFER_BYTES),
    )
    yield cluster
    assert not cluster.down()


async def test_slow_consumers_are_closed_and_lose_nothing(busy_cluster):
    """Tests that readers that stop are closed with 4008 while every other reader gets every
    message, each replica's memory grows by less than RSS_GROWTH_LIMIT_MB, a slow
    reader that resumes misses nothing and gets nothing twice, and no replica logs a
    traceback."""
    outcome = await slow_consumers.run(busy_cluster, SCENARIO)

    assert outcome.received_min == outcome.sent, "a reader missed messages"
    assert outcome.slow_closes == {CLOSE_SLOW_CONSUMER: SCENARIO.slow}
    growth = outcome.growth_mb(outcome.rss_kb_peak)
    assert max(growth.values()) < RSS_GROWTH_LIMIT_MB, growth
    assert (outcome.resumed_missing, outcome.resumed_extra) == (0, 0)
    for name in busy_cluster.replica_names():
        assert "Traceback" not in busy_cluster.log(name)
