"""Recovery, drain and abuse limits on a real cluster: Redis history, Daphne's close
codes, SIGTERM, and Redis going away and coming back."""

import asyncio
import json
import os
import signal
import time
import urllib.error
import urllib.request

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from chat.protocol import (
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_SERVICE_RESTART,
    CLOSE_TRY_AGAIN_LATER,
    GAP_NONE,
    GAP_RESET,
    GAP_TRIMMED,
    SUBPROTOCOL,
)
from harness.client import join, read_until_closed
from harness.cluster import start_cluster

LIMITS = {
    "CHAT_HISTORY_MAX_LENGTH": "5",
    "CHAT_RATE_LIMIT": "2",
    "CHAT_RATE_BURST": "4",
    "CHAT_MAX_CONNECTIONS": "6",
    "CHAT_MAX_FRAME_BYTES": "16384",
    "CHAT_DRAIN_SECONDS": "2",
}


@pytest.fixture(scope="module")
def limits_cluster(tmp_path_factory):
    """Two replicas with small limits, so that each limit can be reached."""
    cluster = start_cluster(tmp_path_factory, "limits", replicas=2, **LIMITS)
    yield cluster
    assert not cluster.down()


async def say(client, message, ref):
    await client.socket.send(json.dumps({"message": message, "ref": ref}))


async def frames_until(client, predicate, timeout=5):
    """Frames up to and including the first one for which predicate is true."""
    frames = []
    while not frames or not predicate(frames[-1]):
        frames.append(await client.receive(timeout))
    return frames


async def send_acked(client, messages):
    """Sends each message with a ref; returns the acks, in order."""
    acks = []
    for number, message in enumerate(messages):
        ref = f"{message.replace(' ', '_')}-{number}"
        await say(client, message, ref)
        frames = await frames_until(client, lambda frame, ref=ref: frame.get("ref") == ref)
        assert frames[-1]["type"] == "ack", frames[-1]
        acks.append(frames[-1])
    return acks


async def test_resume_gets_exactly_the_missed_messages(cluster):
    """Tests that a client resuming on another replica gets what it missed, in order, once."""
    room = "resume-exact"
    sender = await join(cluster, room, replica=1)
    acks = await send_acked(sender, ["a", "b"])
    epoch, seen = acks[-1]["epoch"], acks[-1]["id"]
    await send_acked(sender, ["c", "d", "e"])

    resumed = await join(cluster, room, replica=2, query=f"?last_id={seen}&epoch={epoch}")
    assert [frame["message"] for frame in resumed.replayed] == ["c", "d", "e"]
    assert resumed.history == {
        "type": "history",
        "epoch": epoch,
        "last_id": seen + 3,
        "replayed": 3,
        "gap": GAP_NONE,
    }
    await send_acked(sender, ["live"])
    assert (await resumed.receive_chat())["message"] == "live"
    await resumed.assert_silent(0.3)
    for client in (sender, resumed):
        await client.close()


async def test_retried_ref_is_published_once(cluster):
    """Tests that resending a message with the same ref, on another replica, is acked
    with its first id and reaches nobody twice."""
    room = "idempotent"
    first = await join(cluster, room, replica=1)
    listener = await join(cluster, room, replica=3)
    ack = (await send_acked(first, ["once"]))[0]
    await first.close()
    retry = await join(cluster, room, replica=2)
    await say(retry, "once", "once-0")
    again = (await frames_until(retry, lambda frame: frame["type"] == "ack"))[-1]
    assert (again["id"], again["duplicate"]) == (ack["id"], True)
    assert (await listener.receive_chat())["id"] == ack["id"]
    await listener.assert_silent(0.5)
    for client in (retry, listener):
        await client.close()


async def test_resume_past_the_history_reports_the_gap(limits_cluster):
    """Tests that messages trimmed from Redis are reported as a gap, not skipped silently."""
    room = "trimmed"
    sender = await join(limits_cluster, room, replica=1)
    acks = await send_acked(sender, [f"m{number}" for number in range(4)])
    await asyncio.sleep(2)  # the rate limit: 2 a second after a burst of 4
    acks += await send_acked(sender, [f"m{number}" for number in range(4, 8)])
    epoch = acks[0]["epoch"]
    resumed = await join(limits_cluster, room, replica=2, query=f"?last_id=1&epoch={epoch}")
    assert [frame["id"] for frame in resumed.replayed] == [4, 5, 6, 7, 8]  # the last 5 kept
    assert resumed.history["gap"] == GAP_TRIMMED
    lost = await join(limits_cluster, room, replica=2, query="?last_id=3&epoch=gone")
    assert lost.history["gap"] == GAP_RESET
    for client in (sender, resumed, lost):
        await client.close()


async def test_rate_limit_refuses_the_excess(limits_cluster):
    """Tests that past the burst a connection's messages get rate_limited, with their ref."""
    client = await join(limits_cluster, "rate", replica=1)
    for number in range(6):
        await say(client, f"m{number}", f"r{number}")
    frames = await frames_until(client, lambda frame: frame.get("ref") == "r5")
    refused = [frame["ref"] for frame in frames if frame["type"] == "error"]
    assert refused == ["r4", "r5"]
    assert {frame["code"] for frame in frames if frame["type"] == "error"} == {"rate_limited"}
    await client.close()


async def test_oversized_frame_closes_with_1009(limits_cluster):
    """Tests that a frame over CHAT_MAX_FRAME_BYTES is refused unread, and others go on."""
    client = await join(limits_cluster, "huge", replica=1)
    bystander = await join(limits_cluster, "huge", replica=1)
    await client.socket.send(json.dumps({"message": "x" * 20000}))
    await read_until_closed(client)
    assert client.socket.close_code == CLOSE_MESSAGE_TOO_BIG
    await send_acked(bystander, ["still fine"])
    await bystander.close()


async def test_connection_cap_refuses_with_server_full(limits_cluster):
    """Tests that a replica at CHAT_MAX_CONNECTIONS says so and closes with 1013."""
    clients = [await join(limits_cluster, "full", replica=2) for _ in range(6)]
    socket = await connect(
        limits_cluster.ws_url("full", 2), origin=limits_cluster.origin, subprotocols=[SUBPROTOCOL]
    )
    assert json.loads(await socket.recv())["code"] == "server_full"
    with pytest.raises(ConnectionClosed):
        await socket.recv()
    assert socket.close_code == CLOSE_TRY_AGAIN_LATER
    for client in clients:
        await client.close()


def readiness(cluster, replica):
    url = f"http://127.0.0.1:{cluster.replica_port(replica)}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
    except urllib.error.URLError:
        return None, None


async def test_sigterm_drains_with_1012_and_clients_resume_elsewhere(limits_cluster):
    """Tests the drain: 1012 spread over CHAT_DRAIN_SECONDS, no new connections, exit,
    and a client that resumes through nginx misses nothing."""
    room = "drain"
    leaving = [await join(limits_cluster, room, replica=1) for _ in range(4)]
    sender = await join(limits_cluster, room, replica=2)
    pid = limits_cluster.process_pids()["chat-1"]
    started = time.monotonic()
    os.kill(pid, signal.SIGTERM)

    async def closed_at(client):
        await read_until_closed(client)
        return time.monotonic() - started, client.socket.close_code

    closes = await asyncio.wait_for(asyncio.gather(*map(closed_at, leaving)), 10)
    assert [code for _, code in closes] == [CLOSE_SERVICE_RESTART] * 4
    spread = max(at for at, _ in closes) - min(at for at, _ in closes)
    assert 0.8 < spread < 2.5, closes  # 4 closes over 2 s: 0.5 s apart
    assert readiness(limits_cluster, 1) == (None, None)  # no longer listening

    acks = await send_acked(sender, ["while away"])
    resume = f"?last_id={acks[0]['id'] - 1}&epoch={acks[0]['epoch']}"
    back = await join(limits_cluster, room, query=resume)
    assert [frame["message"] for frame in back.replayed] == ["while away"]
    deadline = time.monotonic() + 20
    while readiness(limits_cluster, 1)[0] != 200:  # supervisord starts it again
        assert time.monotonic() < deadline, "chat-1 did not come back"
        await asyncio.sleep(0.2)
    assert "drained; 0 connections were still busy" in limits_cluster.log("chat-1")
    for client in (sender, back):
        await client.close()


async def test_redis_outage_is_not_ready_refuses_sends_and_recovers(limits_cluster):
    """Tests Redis going away: replicas not ready, sends answered with unavailable; after
    it comes back empty, fan-out across replicas works again within 5 s, unprompted."""
    room = "outage"
    first = await join(limits_cluster, room, replica=1)
    second = await join(limits_cluster, room, replica=2)
    limits_cluster.run("stop", "redis")
    try:
        status, body = readiness(limits_cluster, 1)
        assert status == 503
        assert body["status"] == "unavailable"
        await say(first, "into the void", "void-1")
        error = (await frames_until(first, lambda frame: frame.get("ref") == "void-1"))[-1]
        assert (error["type"], error["code"]) == ("error", "unavailable")
    finally:
        limits_cluster.run("start", "redis")
    back = time.monotonic()
    delivered = None
    for attempt in range(50):
        await asyncio.sleep(0.1)
        await say(first, f"after {attempt}", f"after-{attempt}")
        try:
            delivered = await second.receive_chat(timeout=0.1)
            break
        except TimeoutError:
            continue
    assert delivered is not None, "fan-out did not recover within 5 s"
    recovery = time.monotonic() - back
    assert recovery < 5, recovery
    assert delivered["id"] == 1  # Redis came back empty: a new epoch
    assert readiness(limits_cluster, 2)[0] == 200
    for client in (first, second):
        await client.close()
