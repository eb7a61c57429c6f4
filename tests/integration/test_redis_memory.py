"""Redis at its memory limit (REDIS_MAXMEMORY) under chat traffic through nginx: 4 KB
messages fill a small Redis while resuming clients chat. With either policy no replica
crashes or logs a traceback, clients get the documented error or gap, and the chat
recovers once room is freed; docs/operations/redis.md gives the figures."""

import asyncio
import json
import urllib.error
import urllib.request

import pytest
import redis

from chat.protocol import UNAVAILABLE
from harness.client import join, message_frame
from harness.cluster import start_cluster
from harness.http import replica_counter
from harness.logs import log_offsets
from harness.traffic import Traffic

MAXMEMORY = "4mb"
FILLERS = 6
FILL_SECONDS = 8
FILLER_BYTES = 4000
SETTINGS = {
    "CHAT_RATE_LIMIT": "50",
    "CHAT_RATE_BURST": "50",
    "CHAT_PRESENCE_TTL": "5",
    "CHAT_DRAIN_SECONDS": "2",
}


@pytest.fixture(params=["volatile-lru", "noeviction"])
def full_cluster(request, tmp_path_factory):
    cluster = start_cluster(
        tmp_path_factory,
        f"redis-{request.param}",
        replicas=3,
        REDIS_MAXMEMORY=MAXMEMORY,
        REDIS_MAXMEMORY_POLICY=request.param,
        **SETTINGS,
    )
    cluster.policy = request.param
    yield cluster
    assert not cluster.down()


def get_json(url):
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def writes_refused(cluster):
    """chat_redis_writes_refused_total of every replica, summed by operation."""
    return replica_counter(cluster, "chat_redis_writes_refused_total", "operation")


async def fill(cluster, number, until, counts):
    """Sends 4 KB messages as fast as the rate limit allows, through nginx, in a room of
    its own; counts acks and errors by code."""
    client = await join(cluster, f"filler-{number}")
    body = "x" * FILLER_BYTES
    sequence = 0
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        sequence += 1
        ref = f"f{number}-{sequence}"
        await client.socket.send(message_frame(body, ref))
        while True:
            frame = await client.receive(timeout=10)
            if frame.get("ref") == ref:
                break
        key = "acked" if frame["type"] == "ack" else frame["code"]
        counts[key] = counts.get(key, 0) + 1
        await asyncio.sleep(1 / 40)
    await client.close()


async def test_a_full_redis_refuses_or_evicts_and_the_chat_recovers(full_cluster):
    """Tests that Redis at maxmemory under chat traffic crashes no replica, logs no
    traceback, gives clients `unavailable` (noeviction) or keeps the chat going with
    gaps reported (volatile-lru), and that the chat recovers when room is freed."""
    cluster = full_cluster
    pids = cluster.process_pids()
    offsets = log_offsets(cluster)
    store = redis.Redis(port=cluster.redis_port)
    loop = asyncio.get_running_loop()

    traffic = Traffic(cluster, "mem", clients=12, rooms=4, rate=4)
    await traffic.join(loop.time() + 120)
    traffic.start_sending(loop.time() + 120)
    await asyncio.sleep(2)

    filled = {}
    fill_until = loop.time() + FILL_SECONDS
    fillers = [
        loop.create_task(fill(cluster, number, fill_until, filled)) for number in range(FILLERS)
    ]
    readiness = []
    while loop.time() < fill_until:
        await asyncio.sleep(1)
        readiness.append(get_json(f"http://127.0.0.1:{cluster.replica_port(1)}/readyz"))
    await asyncio.gather(*fillers)
    memory = store.info("memory")
    stats = store.info("stats")
    during = {
        "filler": filled,
        "used_memory": memory["used_memory"],
        "maxmemory": memory["maxmemory"],
        "evicted_keys": stats["evicted_keys"],
        "readiness": sorted({(status, body["status"]) for status, body in readiness}),
        "writes_refused": writes_refused(cluster),
        "traffic": {
            outcome: sum(1 for m in traffic.messages.values() if m.outcome == outcome)
            for outcome in ("acked", "refused")
        },
    }

    # Room is freed: the limit raised, as an operator would (CONFIG SET, no restart).
    store.config_set("maxmemory", "64mb")
    freed = loop.time()
    await asyncio.sleep(5)
    await traffic.stop_sending()
    took, settled = await traffic.quiesce(timeout=20)
    counts = traffic.counts()
    await traffic.close()
    after = [m for m in traffic.messages.values() if m.created > freed + 1]
    print(json.dumps({"policy": cluster.policy, "during": during, "counts": counts}, indent=1))

    # No replica crashed or logged a traceback.
    assert cluster.process_pids() == pids
    for name in cluster.replica_names():
        with (cluster.run_dir / "logs" / f"{name}.log").open("rb") as log:
            log.seek(offsets.get(f"{name}.log", 0))
            assert b"Traceback" not in log.read(), name
    assert not counts["client_crashes"]
    # Readiness stayed 200 throughout: a full Redis does not empty the load balancer.
    assert {status for status, _ in during["readiness"]} == {200}

    if cluster.policy == "noeviction":
        # Writes were refused with the documented error, and said so.
        assert during["filler"].get(UNAVAILABLE, 0) > 0
        assert counts["refused_by_code"].get(UNAVAILABLE, 0) > 0
        assert set(counts["refused_by_code"]) == {UNAVAILABLE}
        assert (200, "refusing_writes") in during["readiness"]
        assert during["writes_refused"].get("publish", 0) > 0
        assert during["evicted_keys"] == 0
    else:
        # The oldest keys went instead, and the chat kept going.
        assert during["evicted_keys"] > 0
        assert during["filler"].get(UNAVAILABLE, 0) == 0
        assert counts["refused"] == 0
    assert counts["refused_delivered"] == 0
    assert counts["duplicated"] == 0

    # The chat recovered: every message made after room was freed was acknowledged
    # and reached every member of its room.
    assert settled, (took, counts)
    assert after
    assert all(m.outcome == "acked" for m in after)
    members = {room: [c for c in traffic.clients if c.room == room] for room in traffic.rooms}
    for message in after:
        assert all(message.key in c.received for c in members[message.client.room]), message.ref
    status, body = get_json(f"http://127.0.0.1:{cluster.replica_port(1)}/readyz")
    assert (status, body["status"]) == (200, "ok")
