"""Redis with Sentinel (REDIS_HA=sentinel): a primary with two replicas and three
Sentinels; the replicas follow the primary the Sentinels name, acknowledge a message
only once a replica holds it, and lose none through a failover, nor an HTTP API post."""

import asyncio
import contextlib
import json

import pytest

from harness.client import join
from harness.cluster import start_cluster
from harness.faults import scenarios
from harness.faults.injectors import inject_failover, sentinel_primary, wait_ready
from harness.faults.report import details, table
from harness.http import get

FAULT_OPTIONS = scenarios.Options(
    clients=12, rooms=3, rate=5, seconds=10, warmup=3, settle=3, quiesce=20, drain_seconds=2
)


@pytest.fixture(scope="module")
def sentinel_cluster(tmp_path_factory):
    cluster = start_cluster(
        tmp_path_factory,
        "sentinel",
        replicas=3,
        REDIS_HA="sentinel",
        CHAT_DRAIN_SECONDS="2",
    )
    yield cluster
    assert not cluster.down()


def test_status_shows_each_redis_role_and_every_sentinel(sentinel_cluster):
    """Tests that `status` shows the primary, each replica's link and every Sentinel knowing
    the primary, both replicas and the other Sentinels."""
    status = sentinel_cluster.run("status").stdout
    lines = {line.split()[0]: line for line in status.splitlines()}
    assert "primary, 2 replicas" in lines["redis"], status
    for replica in ("redis-b", "redis-c"):
        assert "(link up)" in lines[replica], status
    for sentinel in ("sentinel-1", "sentinel-2", "sentinel-3"):
        # A Sentinel that did not know both replicas could not fail over: `up` waits.
        assert "sentinel: 1 primaries, 2 replicas and 2 Sentinels each" in lines[sentinel]
        assert "(learning)" not in lines[sentinel], status


def test_readiness_names_the_primary_the_sentinels_chose(sentinel_cluster):
    """Tests that a replica's readiness names the primary the Sentinels gave it."""
    status, _, body = get(f"http://127.0.0.1:{sentinel_cluster.replica_port(1)}/readyz")
    assert status == 200, body
    primary = f"chat 127.0.0.1:{sentinel_cluster.redis_port}"
    assert json.loads(body)["redis"] == {primary: "ok"}


async def acknowledged(sender, text, deadline):
    """Sends `text` until it is acknowledged (resent after `unavailable`); its ack."""
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        await sender.say(text, ref=text)
        while (frame := await sender.receive(timeout=10))["type"] == "chat":
            pass
        if frame["type"] == "ack":
            return frame
        await asyncio.sleep(0.2)  # unavailable: the primary is gone or not yet named
    raise AssertionError(f"{text} was not acknowledged")


async def test_a_quiet_room_hears_what_was_sent_just_after_a_failover(sentinel_cluster):
    """Tests that the last messages acknowledged just after a failover reach a listener
    on another replica without a later message to reveal them: a replica catches its
    clients up only once its channel layer has subscribed on the new primary (it did so
    on the heartbeat's word alone, up to a second before, and a message published in
    between reached the room only with the next one)."""
    loop = asyncio.get_running_loop()
    listener = await join(sentinel_cluster, "quiet", replica=2)
    sender = await join(sentinel_cluster, "quiet", replica=1)
    fault = {"errors": []}
    failover = loop.create_task(inject_failover(sentinel_cluster, None, fault))
    acks, deadline = [], loop.time() + 120
    while "failover_s" not in fault and not failover.done():
        acks.append(await acknowledged(sender, f"during-{len(acks)}", deadline))
        await asyncio.sleep(0.1)
    for number in range(3):  # the first acks on the new primary, then silence
        acks.append(await acknowledged(sender, f"after-{number}", deadline))
    await failover
    assert not fault["errors"], fault
    heard = set()
    with contextlib.suppress(TimeoutError):
        while len(heard) < len(acks):
            heard.add((await listener.receive_chat(timeout=5))["id"])
    missing = [ack["ref"] for ack in acks if ack["id"] not in heard]
    assert not missing, f"not delivered: {missing}; failover {fault}"
    for client in (sender, listener):
        await client.close()


async def test_a_failover_loses_no_acknowledged_message_and_no_history(sentinel_cluster):
    """Tests, under steady resuming traffic, that SIGKILL to the primary loses and
    duplicates no acknowledged message, keeps every room's epoch (no reset) and has
    acks back soon after the Sentinels promote a replica (make chaos runs it larger).
    It changes which server is the primary."""
    result = await scenarios.run_scenario(sentinel_cluster, "failover", FAULT_OPTIONS)
    report = f"\n{table([result])}\n{details(result)}"
    print(report)
    missed = [target for target, met in result["targets"].items() if not met]
    assert not missed, f"missed {missed}:{report}"


async def test_api_posts_through_a_replica_kill_and_a_failover_arrive_once(sentinel_cluster):
    """Tests that a service posting through the HTTP API, retrying with its keys, while a
    replica is SIGKILLed and the primary fails over, has every post answered 2xx in the
    end and delivered once to every member; a resent key answers its first id."""
    result = await scenarios.run_scenario(sentinel_cluster, "api", FAULT_OPTIONS)
    report = f"\n{table([result])}\n{details(result)}"
    print(report)
    missed = [target for target, met in result["targets"].items() if not met]
    assert not missed, f"missed {missed}:{report}"
    assert result["api"]["posts"] >= 50, report


async def test_no_ack_until_a_replica_holds_the_message(sentinel_cluster):
    """Tests that with both replicas stopped a message is refused with `unavailable`
    (WAIT finds no replica), not acknowledged or shown to the room; and that once
    they are back its resend with the same ref is acknowledged and delivered once.
    Last in this module: for a while after replicas are stopped and started again, the
    Sentinels find none good to promote (-failover-abort-no-good-slave)."""
    listener = await join(sentinel_cluster, "wait-room", replica=2)
    sender = await join(sentinel_cluster, "wait-room", replica=1)
    primary = await sentinel_primary(sentinel_cluster)
    ports = sentinel_cluster.describe()["redis_ports"]
    replicas = [name for name, port in ports.items() if port != primary]
    sentinel_cluster.run("stop", *replicas)
    try:
        await sender.say("held", ref="r-held")
        refusal = await sender.receive(timeout=10)
        assert (refusal["type"], refusal["code"]) == ("error", "unavailable"), refusal
        await listener.assert_silent(0.5)
    finally:
        sentinel_cluster.run("start", *replicas)
        await wait_ready(sentinel_cluster)  # the replicas in sync again
    await sender.say("held", ref="r-held")
    ack = await sender.receive(timeout=10)
    assert (ack["type"], ack["ref"]) == ("ack", "r-held"), ack
    delivered = await listener.receive_chat()
    assert (delivered["message"], delivered["id"]) == ("held", ack["id"])
    await listener.assert_silent(0.5)  # once
    for client in (sender, listener):
        await client.close()
