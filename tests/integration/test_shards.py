"""Several Redis servers (REDIS_SHARDS=2): each room lives whole on one of them, fan-out
across replicas stays exact for rooms on either, and every replica is ready on both."""

import itertools
import json
import secrets
import time

import pytest
import redis

from harness.client import join
from harness.cluster import start_cluster
from harness.faults import scenarios
from harness.faults.report import details, table
from harness.http import get, prometheus_query
from harness.shards import rooms_per_shard

ROOMS_PER_SHARD = 3
FAULT_OPTIONS = scenarios.Options(
    clients=12, rooms=4, rate=5, seconds=8, warmup=3, settle=2, quiesce=15, drain_seconds=2
)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    cluster = start_cluster(tmp_path_factory, "shards", replicas=3, REDIS_SHARDS="2")
    yield cluster
    assert not cluster.down()


def rooms_on_each_shard(cluster):
    """ROOMS_PER_SHARD new room names for each shard, by the chat's sharding policy."""
    names = (f"shard-{secrets.token_hex(4)}" for _ in itertools.count())
    return rooms_per_shard(cluster, names, ROOMS_PER_SHARD)


def shards_holding(cluster, room):
    """The ports of the Redis servers that hold any of the room's keys."""
    return [port for port in cluster.redis_ports if redis.Redis(port=port).keys(f"chat:*{room}*")]


async def test_rooms_on_each_shard_reach_every_replica_exactly_once(sharded):
    """Tests fan-out across replicas for rooms on either shard, and that each room's
    keys are all on the shard the policy chose (the one its group's messages use)."""
    for shard, rooms in rooms_on_each_shard(sharded).items():
        for room in rooms:
            listeners = [await join(sharded, room, replica=n) for n in (1, 2, 3)]
            for sender in listeners:
                await sender.say(f"{sender.replica} in {room}")
            expected = sorted(f"{sender.replica} in {room}" for sender in listeners)
            for listener in listeners:
                received = [(await listener.receive_chat())["message"] for _ in expected]
                assert sorted(received) == expected, (room, listener.replica)
                await listener.assert_silent(0.3)  # no duplicates
            for listener in listeners:
                await listener.close()
            assert shards_holding(sharded, room) == [sharded.redis_ports[shard]], room


def test_every_replica_is_ready_on_both_shards(sharded):
    """Tests that every replica's readiness reports both shards as ok."""
    addresses = {f"127.0.0.1:{port}" for port in sharded.redis_ports}
    for number in range(1, sharded.replicas + 1):
        status, _, body = get(f"http://127.0.0.1:{sharded.replica_port(number)}/readyz")
        assert status == 200, body
        assert json.loads(body)["redis"] == dict.fromkeys(addresses, "ok")


def test_prometheus_sees_both_shards_from_every_replica(sharded):
    """Tests that every replica exports chat_redis_up and chat_redis_writable for each
    shard, and that the cluster's Prometheus has scraped them (it scrapes every 5 s)."""
    expected = {
        (f"127.0.0.1:{sharded.replica_port(number)}", f"127.0.0.1:{port}")
        for number in range(1, sharded.replicas + 1)
        for port in sharded.redis_ports
    }
    deadline = time.monotonic() + 30
    while True:
        seen = {
            metric: {
                (series["metric"]["instance"], series["metric"]["redis"]): series["value"][1]
                for series in prometheus_query(sharded, metric)
            }
            for metric in ("chat_redis_up", "chat_redis_writable")
        }
        if all(found == dict.fromkeys(expected, "1") for found in seen.values()):
            return
        assert time.monotonic() < deadline, f"Prometheus has {seen}, not 1 for each of {expected}"
        time.sleep(1)


def test_status_lists_every_shard(sharded):
    """Tests that the cluster supervises and `status` lists every shard."""
    processes = sharded.process_pids()
    assert {"redis", "redis-2"} <= set(processes), processes
    status = sharded.run("status").stdout
    assert "redis-2" in status, status


async def test_a_shard_restart_leaves_the_other_shards_rooms_untouched(sharded):
    """Tests, under steady resuming traffic in rooms on both shards, that restarting the
    second shard without its data neither interrupts nor errs the rooms on the first,
    and that its own rooms recover as from a Redis restart (make chaos runs it larger).
    Last in this module: it restarts a shard of the module's cluster."""
    result = await scenarios.run_scenario(sharded, "shard", FAULT_OPTIONS)
    report = f"\n{table([result])}\n{details(result)}"
    print(report)
    assert result["shards"]["untouched"]["rooms"] >= 1, report
    assert result["shards"]["restarted"]["rooms"] >= 1, report
    missed = [target for target, met in result["targets"].items() if not met]
    assert not missed, f"missed {missed}:{report}"
