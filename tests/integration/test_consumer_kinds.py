"""The sync consumer, kept for benchmarks, on a real cluster: same protocol, same fan-out."""

import time

import pytest

from harness.client import join
from harness.cluster import start_cluster


@pytest.fixture(scope="module")
def sync_cluster(tmp_path_factory):
    cluster = start_cluster(tmp_path_factory, "sync", replicas=2, CHAT_CONSUMER="sync")
    yield cluster
    assert not cluster.down()


async def test_sync_consumer_fans_out_across_replicas(sync_cluster):
    """Tests that CHAT_CONSUMER=sync serves the same protocol across replicas."""
    first = await join(sync_cluster, "sync-room", replica=1)
    second = await join(sync_cluster, "sync-room", replica=2)
    assert first.welcome["consumer"] == second.welcome["consumer"] == "sync"

    await second.say("from the sync consumer")
    for client in (first, second):
        frame = await client.receive_chat()
        assert frame == {
            "type": "chat",
            "id": 1,
            "epoch": frame["epoch"],
            "message": "from the sync consumer",
            "name": second.welcome["name"],
            "sent_via": "chat-2",
            "time": frame["time"],
        }
        assert abs(frame["time"] / 1000 - time.time()) < 5
        await client.assert_silent(0.3)

    await first.socket.send("{")
    assert (await first.receive())["code"] == "invalid_json"
    for client in (first, second):
        await client.close()
    assert "Traceback" not in sync_cluster.log("chat-1")
