"""Guards against redis-py 8 defaults that break channels_redis, on both layer kinds:
a 5 s socket timeout that kills idle receive loops, and a 100-connection pool cap."""

import asyncio

import pytest

from harness.client import join
from harness.cluster import start_cluster


@pytest.fixture(scope="module", params=["pubsub", "core"])
def layer_cluster(request, tmp_path_factory):
    cluster = start_cluster(
        tmp_path_factory, f"layer-{request.param}", replicas=2, CHAT_CHANNEL_LAYER=request.param
    )
    yield cluster
    assert not cluster.down()


async def test_idle_socket_still_works_after_10_seconds(layer_cluster):
    """Tests that a replica idle for longer than redis-py's default timeout still delivers."""
    idle = await join(layer_cluster, "idle", replica=1)
    await asyncio.sleep(11)
    sender = await join(layer_cluster, "idle", replica=2)
    await sender.say("wake up")
    assert (await idle.receive_chat())["message"] == "wake up"
    assert (await sender.receive_chat())["message"] == "wake up"
    await idle.close()
    await sender.close()


async def test_200_simultaneous_connects_to_one_replica(layer_cluster):
    """Tests that a burst of 200 connects to one replica all join, and all get a message."""
    clients = await asyncio.gather(*(join(layer_cluster, "burst", replica=1) for _ in range(200)))
    assert len(clients) == 200
    sender = await join(layer_cluster, "burst", replica=2)
    await sender.say("to all 200")
    frames = await asyncio.gather(*(client.receive_chat(timeout=15) for client in clients))
    assert all(frame["message"] == "to all 200" for frame in frames)
    assert "Traceback" not in layer_cluster.log("chat-1")
    await asyncio.gather(*(client.close() for client in (*clients, sender)))
