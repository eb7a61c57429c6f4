"""docker-compose.yml with docker-compose.ha.yml brought up for real (`make test-compose`):
a Redis primary, two replicas and three Sentinels, and a failover that loses no
acknowledged message and no history."""

import asyncio
import json
import subprocess
import time

import pytest

from chat.protocol import GAP_NONE, UNAVAILABLE
from harness.client import chat_query, join
from harness.deploy_files import defaults

pytestmark = [pytest.mark.compose, pytest.mark.timeout(1800)]

SERVERS = ("redis", "redis-replica", "redis-replica-2")
SENTINELS = ("sentinel-1", "sentinel-2", "sentinel-3")
MASTER = defaults()["REDIS_SENTINEL_MASTERS"].split(",")[0]
READYZ = (
    "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8001/readyz').read().decode())"
)
# Down-after 2 s, then the Sentinels' election and promotion: 3-4 s. But a Sentinel whose
# timer is held up over 2 s (the host can stall at the moment of `docker kill`)
# enters TILT and does nothing for 30 s (Redis' Sentinel docs, "TILT mode"), then fails over.
PROMOTION_TIMEOUT_S = 75
ACK_TIMEOUT_S = 30
REJOIN_TIMEOUT_S = 60


def primary(stack, sentinel="sentinel-1"):
    """The "host:port" that a Sentinel names as the primary, or None (also when it does
    not answer within 10 s)."""
    try:
        result = stack.compose(
            "exec", "-T", sentinel, "redis-cli", "-p", defaults()["REDIS_SENTINEL_PORT"],
            "sentinel", "get-master-addr-by-name", MASTER, timeout=10, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return None
    address = result.stdout.split()
    return ":".join(address) if result.returncode == 0 and len(address) == 2 else None


def sentinel_logs(stack):
    return stack.compose(
        "logs", "--no-color", "sentinel-1", "sentinel-2", "sentinel-3", timeout=60, check=False
    ).stdout.splitlines()


def container_health(stack, container):
    return stack.docker(
        "inspect", "--format", "{{.State.Health.Status}}", container["ID"]
    ).stdout.strip()


def readiness(stack, container):
    return json.loads(stack.docker("exec", container["ID"], "python3", "-c", READYZ).stdout)


async def two_replicas(stack, room):
    """A listener and a sender in `room`, joined through nginx to different replicas."""
    listener = await join(stack, room)
    for _ in range(20):
        sender = await join(stack, room)
        if sender.replica != listener.replica:
            return listener, sender
        await sender.close()
    raise AssertionError("nginx sent 20 joins in a row to one replica")


async def acknowledged(sender, message, ref, timeout):
    """Sends `message` until it is acknowledged, resending it with the same ref after
    `unavailable` (as the page does) for up to `timeout` seconds; returns the ack."""
    deadline = time.monotonic() + timeout
    refusals = 0
    while time.monotonic() < deadline:
        await sender.say(message, ref=ref)
        # The sender is shown the room's messages, its own too: the answer is the frame
        # that carries the ref.
        while (frame := await sender.receive(max(deadline - time.monotonic(), 0.1))).get(
            "ref"
        ) != ref:
            assert frame["type"] == "chat", frame
        if frame["type"] == "ack":
            return frame, refusals
        assert (frame["type"], frame.get("code")) == ("error", UNAVAILABLE), frame
        refusals += 1
        await asyncio.sleep(1)
    raise AssertionError(f"{message!r} not acknowledged in {timeout} s ({refusals} refusals)")


def test_every_service_is_healthy(ha_stack):
    """Tests that the three Redis servers, three Sentinels, 3 chat replicas, nginx and
    Prometheus are all running and healthy, and that the primary has two replicas."""
    for service in (*SERVERS, *SENTINELS, "chat", "nginx", "prometheus"):
        containers = ha_stack.containers(service)
        assert len(containers) == (3 if service == "chat" else 1), (service, containers)
        for container in containers:
            assert (container["State"], container["Health"]) == ("running", "healthy"), container
    port = defaults()["REDIS_PORT"]
    replication = ha_stack.compose(
        "exec", "-T", "redis", "redis-cli", "-p", port, "info", "replication"
    )
    assert "role:master" in replication.stdout, replication.stdout
    assert "connected_slaves:2" in replication.stdout, replication.stdout


def test_readiness_names_the_primary_the_sentinels_chose(ha_stack):
    """Tests that every Sentinel names `redis` and every chat replica's /readyz reports it."""
    expected = f"redis:{defaults()['REDIS_PORT']}"
    assert [primary(ha_stack, sentinel) for sentinel in SENTINELS] == [expected] * 3
    for container in ha_stack.containers("chat"):
        body = readiness(ha_stack, container)
        assert (body["status"], body["redis"]) == ("ok", {f"{MASTER} {expected}": "ok"}), body


async def test_a_failover_loses_no_acknowledged_message_and_no_history(ha_stack):
    """Tests that after SIGKILL to the primary's container the Sentinels promote a
    replica, a new message is acknowledged and delivered to a client of another replica,
    a client resuming after the first message is replayed the second in the same epoch,
    with no gap, and the killed server, started again, rejoins as a replica of the new
    primary. Last in this module: it changes which server is the primary."""
    room = "compose-failover"
    listener, sender = await two_replicas(ha_stack, room)
    first, _ = await acknowledged(sender, "before", "r-before", timeout=10)
    assert (await listener.receive_chat())["id"] == first["id"]

    old = primary(ha_stack)
    host = old.split(":")[0]
    [container] = ha_stack.containers(host)
    killed = time.monotonic()
    ha_stack.docker("kill", "--signal", "KILL", container["ID"])
    new = None
    while time.monotonic() - killed < PROMOTION_TIMEOUT_S:
        if (new := primary(ha_stack)) not in (None, old):
            break
        await asyncio.sleep(0.2)
    promoted_s = time.monotonic() - killed
    tilts = [line for line in sentinel_logs(ha_stack) if "+tilt" in line]
    assert new not in (None, old), (
        f"no Sentinel named a new primary in {PROMOTION_TIMEOUT_S} s; TILT: {tilts}"
    )
    assert new.split(":")[0] in SERVERS

    second, refusals = await acknowledged(sender, "after", "r-after", ACK_TIMEOUT_S)
    acked_s = time.monotonic() - killed
    assert (second["epoch"], second["id"]) == (first["epoch"], first["id"] + 1), second
    # Live, with no later message to reveal it: a replica catches up only once its
    # channel layer has subscribed again on the new primary.
    delivered = [await listener.receive_chat(timeout=10)]
    assert (delivered[0]["message"], delivered[0]["id"]) == ("after", second["id"]), delivered
    await listener.assert_silent(0.5)  # once

    resumed = await join(
        ha_stack, room, query=chat_query(last_id=first["id"], epoch=first["epoch"])
    )
    assert resumed.history["gap"] == GAP_NONE, resumed.history
    assert resumed.history["epoch"] == first["epoch"], resumed.history
    assert [frame["message"] for frame in resumed.replayed] == [f["message"] for f in delivered]
    for client in (listener, sender, resumed):
        await client.close()

    for chat in ha_stack.containers("chat"):
        assert readiness(ha_stack, chat)["redis"] == {f"{MASTER} {new}": "ok"}

    # `docker kill` counts as a manual stop: the restart policy leaves the container
    # down. Started again, redis-start.sh asks the Sentinels and it rejoins as a replica.
    state = json.loads(ha_stack.docker("inspect", container["ID"]).stdout)[0]
    print(
        f"\nfailover: {old} killed, {new} named after {promoted_s:.1f} s ({len(tilts)} TILT),"
        " the next message "
        f"acknowledged after {acked_s:.1f} s ({refusals} unavailable) and delivered live; "
        f"the killed container was {state['State']['Status']}, restarted "
        f"{state['RestartCount']} times"
    )
    ha_stack.docker("start", container["ID"])
    deadline = time.monotonic() + REJOIN_TIMEOUT_S
    while container_health(ha_stack, container) != "healthy":
        assert time.monotonic() < deadline, f"{host} not healthy {REJOIN_TIMEOUT_S} s after start"
        await asyncio.sleep(0.5)
    replication = ha_stack.compose(
        "exec", "-T", host, "redis-cli", "-p", defaults()["REDIS_PORT"], "info", "replication"
    ).stdout
    assert "role:slave" in replication, replication
    assert f"master_host:{new.split(':')[0]}" in replication, replication
