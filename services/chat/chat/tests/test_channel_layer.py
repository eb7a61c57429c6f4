"""The channel layers (chat.channel_layer): the start-up check of channels_redis'
internals, the one sharding policy, what the pub/sub layer hands its handler, the
bounded consumer queue, and one interface for every layer."""

import inspect
from collections import Counter

import msgpack
import pytest
from channels_redis.pubsub import RedisPubSubLoopLayer

from chat.channel_layer import (
    BoundedChannelQueue,
    ChannelLayerMismatch,
    ChatLayer,
    CoreChannelLayer,
    MemoryChannelLayer,
    PubSubChannelLayer,
    RoomLayer,
    ShardConnection,
)

HOSTS = ["redis://127.0.0.1:1/0"]  # never connected to: the checks are offline


def test_the_installed_channels_redis_passes_the_start_up_check():
    PubSubChannelLayer(hosts=HOSTS).check_internals()


def test_a_layer_that_does_not_decode_msgpack_fails_the_check():
    """Tests that the publish script's encoding (msgpack) is what the layer must decode."""
    with pytest.raises(ChannelLayerMismatch, match="serializer is JSONSerializer"):
        PubSubChannelLayer(hosts=HOSTS, serializer_format="json").check_internals()


def test_an_encrypting_layer_fails_the_check():
    with pytest.raises(ChannelLayerMismatch, match="encrypted"):
        PubSubChannelLayer(hosts=HOSTS, symmetric_encryption_keys=["k"]).check_internals()


def test_a_layer_without_the_internals_used_fails_the_check(monkeypatch):
    """Tests that a channels_redis upgrade renaming what chat.channel_layer uses is caught."""
    monkeypatch.delattr(RedisPubSubLoopLayer, "_get_group_channel_name")
    with pytest.raises(ChannelLayerMismatch, match="_get_group_channel_name"):
        PubSubChannelLayer(hosts=HOSTS).check_internals()


@pytest.mark.parametrize(
    ("rooms", "shards", "fewest"),
    # channels_redis' CRC gives these 2 of 10, 32 of 100 and 22 of 100.
    [(10, 2, 3), (100, 2, 35), (100, 3, 25)],
)
async def test_sequential_room_names_spread_over_the_shards(rooms, shards, fewest):
    """Tests the sharding policy where channels_redis' CRC clusters: rooms that differ
    only in a number."""
    layer = PubSubChannelLayer(hosts=HOSTS * shards)
    counts = Counter(layer.shard_of(f"chat_room-{n}", shards) for n in range(rooms))
    assert len(counts) == shards
    assert min(counts.values()) >= fewest, counts


async def test_the_layer_subscribes_a_group_on_the_shard_its_keys_live_on():
    """Tests the one sharding policy: where the loop layer subscribes a group's channel
    is where chat.broker and chat.presence keep the room's keys."""
    layer = PubSubChannelLayer(hosts=[f"redis://127.0.0.1:{port}/0" for port in (1, 2, 3)])
    loop_layer = layer._get_layer()
    for n in range(30):
        group = f"chat_room-{n}"
        chosen = loop_layer._get_shard(layer.group_channel(group))
        assert chosen is loop_layer._shards[layer.shard_of(group, 3)]


def test_a_layer_that_shards_elsewhere_fails_the_check(monkeypatch):
    async def group_add(self, group, channel):
        return self.channels

    monkeypatch.setattr(RedisPubSubLoopLayer, "group_add", group_add)
    with pytest.raises(ChannelLayerMismatch, match="group_add"):
        PubSubChannelLayer(hosts=HOSTS).check_internals()


class Handler:
    """What the pub/sub layer hands its messages to (chat.fanout.FanOut)."""

    def __init__(self):
        self.calls = []

    def handle_channel_message(self, channel_name, data, inbox):
        self.calls.append(("channel", channel_name, data, inbox))

    def handle_group_message(self, group_channel, data, members, inboxes):
        self.calls.append(("group", group_channel, data, set(members), inboxes))


async def test_the_layer_hands_what_it_receives_to_its_handler():
    """Tests that every message a shard receives goes to the handler with the inboxes of
    its recipients here: a consumer's own channel, or a group's members."""
    layer = PubSubChannelLayer(hosts=HOSTS)
    handler = Handler()
    layer.hand_messages_to(handler)
    loop_layer = layer._get_layer()
    inbox = BoundedChannelQueue(1 << 20, b"overflow")
    loop_layer.channels["specific.a"] = inbox
    loop_layer.groups["asgi__group__chat_lobby"] = {"specific.a"}
    shard = loop_layer._shards[0]
    shard._receive_message({"channel": b"specific.a", "data": b"direct"})
    shard._receive_message({"channel": b"asgi__group__chat_lobby", "data": b"to the room"})
    shard._receive_message({"channel": b"unknown", "data": b"nobody"})
    shard._receive_message(None)
    assert handler.calls == [
        ("channel", "specific.a", b"direct", inbox),
        ("group", "asgi__group__chat_lobby", b"to the room", {"specific.a"}, loop_layer.channels),
    ]
    assert inbox.qsize() == 0  # the handler decides what is queued


async def test_without_a_handler_the_layer_queues_as_channels_redis_does():
    layer = PubSubChannelLayer(hosts=HOSTS)
    loop_layer = layer._get_layer()
    inboxes = {name: BoundedChannelQueue(1 << 20, b"overflow") for name in ("a", "b")}
    loop_layer.channels.update(inboxes)
    loop_layer.groups["asgi__group__chat_lobby"] = {"a", "b"}
    shard = loop_layer._shards[0]
    assert isinstance(shard, ShardConnection)
    shard._receive_message({"channel": b"asgi__group__chat_lobby", "data": b"m"})
    assert [inbox.qsize() for inbox in inboxes.values()] == [1, 1]


def test_a_full_queue_sends_the_overflow_notice_once_and_drops_the_rest():
    inbox = BoundedChannelQueue(10, b"overflow")
    assert [inbox.enqueue(b"12345678") for _ in range(4)] == [True, True, False, False]
    assert [inbox.get_nowait(), inbox.get_nowait()] == [b"12345678", b"overflow"]
    assert inbox.bytes == 0


@pytest.mark.parametrize(
    "layer",
    [
        PubSubChannelLayer(hosts=HOSTS),
        CoreChannelLayer(hosts=HOSTS),
        MemoryChannelLayer(),
    ],
    ids=["pubsub", "core", "memory"],
)
def test_every_layer_the_settings_may_name_implements_the_room_layer(layer):
    """Tests that no call site needs to ask which layer it has: each has every method
    of RoomLayer, and the chat's additions with RoomLayer's parameters."""
    assert isinstance(layer, ChatLayer)
    methods = {name for name in vars(RoomLayer) if not name.startswith("_")}
    additions = {name for name in vars(ChatLayer) if not name.startswith("_")}
    assert additions <= methods
    for name in methods:
        assert callable(getattr(layer, name)), name
    for name in additions:
        expected = list(inspect.signature(getattr(RoomLayer, name)).parameters)[1:]
        found = list(inspect.signature(getattr(layer, name)).parameters)
        assert found == expected, (name, found)


async def test_layers_without_pub_sub_channels_leave_publishing_to_the_caller():
    for layer in (CoreChannelLayer(hosts=HOSTS), MemoryChannelLayer()):
        assert layer.group_channel("chat_lobby") is None
        assert await layer.wait_subscribed(0, timeout=0) is True
        assert layer.occupancy() == (0, 0)
        assert layer.shard_of("chat_lobby", 1) == 0
    layer = PubSubChannelLayer(hosts=HOSTS)
    assert layer.group_channel("chat_lobby") == "asgi__group__chat_lobby"
    assert layer.decode(msgpack.packb({"type": "x"})) == {"type": "x"}
