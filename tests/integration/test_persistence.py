"""REDIS_APPENDONLY=everysec: a Redis killed and started again keeps every room's
history, ids and epoch, so a resuming client gets what it missed instead of `reset`."""

import asyncio
import os
import signal

import pytest

from harness.client import chat_query, join
from harness.cluster import start_cluster
from harness.faults.injectors import wait_replaced


async def resume(cluster, ack, attempts=20):
    """Joins "kept" resuming after `ack`; as a client does, again after `unavailable`
    (the replica may still hold connections to the Redis that died)."""
    for _ in range(attempts):
        try:
            return await join(
                cluster, "kept", query=chat_query(last_id=ack["id"], epoch=ack["epoch"])
            )
        except AssertionError:  # a welcome that was an error frame
            await asyncio.sleep(0.5)
    raise AssertionError(f"could not resume in {attempts} attempts")


@pytest.fixture(scope="module")
def persistent(tmp_path_factory):
    cluster = start_cluster(tmp_path_factory, "aof", replicas=1, REDIS_APPENDONLY="everysec")
    yield cluster
    assert not cluster.down()


async def test_a_killed_redis_comes_back_with_the_histories(persistent):
    """Tests that after SIGKILL to Redis (supervisord starts it again, from its AOF) a
    client resuming after the first of three messages is replayed the other two in the
    same epoch, with no gap; without the AOF the room would start a new epoch (the
    redis drill of make chaos)."""
    sender = await join(persistent, "kept")
    acks = []
    for number in range(3):
        await sender.say(f"m{number}", ref=f"r{number}")
        while (frame := await sender.receive())["type"] != "ack":
            pass
        acks.append(frame)
    await sender.close()
    pid = persistent.process_pids()["redis"]
    os.kill(pid, signal.SIGKILL)
    await wait_replaced(persistent, "redis", pid)
    first = acks[0]
    resumed = await resume(persistent, first)
    assert resumed.history["gap"] == "none", resumed.history
    assert resumed.history["epoch"] == first["epoch"], resumed.history
    assert [frame["message"] for frame in resumed.replayed] == ["m1", "m2"]
    await resumed.say("after", ref="r-after")
    while (frame := await resumed.receive())["type"] != "ack":
        pass
    assert (frame["epoch"], frame["id"]) == (first["epoch"], acks[-1]["id"] + 1)
    await resumed.close()
