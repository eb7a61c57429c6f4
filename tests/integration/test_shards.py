"""Several Redis servers (REDIS_SHARDS=2): each room lives whole on one of them, fan-out
across replicas stays exact for rooms on either, and every replica is ready on both."""

import json
import secrets

import pytest
import redis

from chat.channel_layer import ChatChannelLayer, shard_of
from chat.protocol import room_group_name
from harness.client import join
from harness.http import get

from .conftest import start_cluster

ROOMS_PER_SHARD = 3


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    cluster = start_cluster(tmp_path_factory, "shards", replicas=3, REDIS_SHARDS="2")
    yield cluster
    assert not cluster.down()


def rooms_on_each_shard(cluster):
    """ROOMS_PER_SHARD new room names for each shard, by the chat's sharding policy."""
    layer = ChatChannelLayer(hosts=[f"redis://127.0.0.1:{port}/0" for port in cluster.redis_ports])
    rooms = {shard: [] for shard in range(cluster.redis_shards)}
    while any(len(names) < ROOMS_PER_SHARD for names in rooms.values()):
        room = f"shard-{secrets.token_hex(4)}"
        rooms[shard_of(layer, room_group_name(room), cluster.redis_shards)].append(room)
    return {shard: names[:ROOMS_PER_SHARD] for shard, names in rooms.items()}


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
    addresses = {f"127.0.0.1:{port}" for port in sharded.redis_ports}
    for number in range(1, sharded.replicas + 1):
        status, _, body = get(f"http://127.0.0.1:{sharded.replica_port(number)}/readyz")
        assert status == 200, body
        assert json.loads(body)["redis"] == dict.fromkeys(addresses, "ok")


def test_status_lists_every_shard(sharded):
    processes = sharded.process_pids()
    assert {"redis", "redis-2"} <= set(processes), processes
    status = sharded.run("status").stdout
    assert "redis-2" in status, status
