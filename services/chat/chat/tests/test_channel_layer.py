import ast
import inspect
import textwrap
from collections import Counter

import pytest
from channels import consumer as channels_consumer
from channels.consumer import AsyncConsumer
from channels_redis.pubsub import RedisPubSubLoopLayer
from django.conf import settings
from django.db import connections

from chat.channel_layer import ChannelLayerMismatch, ChatChannelLayer, shard_of
from chat.consumers import ChatConsumer

HOSTS = ["redis://127.0.0.1:1/0"]  # never connected to: the checks are offline


def test_the_installed_channels_redis_passes_the_start_up_check():
    ChatChannelLayer(hosts=HOSTS).check_internals()


def test_a_layer_that_does_not_decode_msgpack_fails_the_check():
    """Tests that the publish script's encoding (msgpack) is what the layer must decode."""
    with pytest.raises(ChannelLayerMismatch, match="serializer is JSONSerializer"):
        ChatChannelLayer(hosts=HOSTS, serializer_format="json").check_internals()


def test_an_encrypting_layer_fails_the_check():
    with pytest.raises(ChannelLayerMismatch, match="encrypted"):
        ChatChannelLayer(hosts=HOSTS, symmetric_encryption_keys=["k"]).check_internals()


def test_a_layer_without_the_internals_used_fails_the_check(monkeypatch):
    """Tests that a channels_redis upgrade renaming what chat.channel_layer uses is caught."""
    monkeypatch.delattr(RedisPubSubLoopLayer, "_get_group_channel_name")
    with pytest.raises(ChannelLayerMismatch, match="_get_group_channel_name"):
        ChatChannelLayer(hosts=HOSTS).check_internals()


# The dispatch of the Channels version ChatConsumer.dispatch was written against.
CHANNELS_DISPATCH = """\
handler = getattr(self, get_handler_name(message), None)
if handler:
    await aclose_old_connections()
    await handler(message)
else:
    raise ValueError('No handler for message type %s' % message['type'])"""


def test_dispatch_is_channels_dispatch_without_the_database_hop():
    """Tests that Channels' AsyncConsumer.dispatch is still the one ChatConsumer.dispatch
    copies without the database hop: an upgrade that changes it must be looked at."""
    assert body(AsyncConsumer.dispatch) == CHANNELS_DISPATCH
    ours = body(ChatConsumer.handle)
    assert "handler = getattr(self, get_handler_name(message), None)" in ours
    assert "await handler(message)" in ours


def body(function):
    """The function's statements, without its docstring, as source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    statements = tree.body[0].body
    if isinstance(statements[0], ast.Expr) and isinstance(statements[0].value, ast.Constant):
        statements = statements[1:]
    return "\n".join(ast.unparse(statement) for statement in statements)


async def test_dispatch_makes_no_database_hop_after_django_filled_in_databases(monkeypatch):
    """Tests the hop stays skipped once the replica has run: Django fills the empty
    DATABASES with a dummy default the first time a connection is asked for, in place
    (it did, at the first disconnect, and every later message took the hop)."""
    hops = []

    async def aclose_old_connections():
        hops.append(True)

    monkeypatch.setattr(channels_consumer, "aclose_old_connections", aclose_old_connections)
    monkeypatch.setattr(settings, "DATABASES", {})
    # What Django does the first time a connection is asked for:
    monkeypatch.setattr(connections, "settings", connections.configure_settings(None))
    assert settings.DATABASES, "Django no longer fills in DATABASES: simplify uses_database()"
    delivered = []

    class Consumer(ChatConsumer):
        async def chat_message(self, event):
            delivered.append(event)

    consumer = Consumer()
    await consumer.dispatch({"type": "chat.message"})
    assert delivered
    assert not hops


@pytest.mark.parametrize(
    ("rooms", "shards", "fewest"),
    # channels_redis' CRC gives these 2 of 10, 32 of 100 and 22 of 100.
    [(10, 2, 3), (100, 2, 35), (100, 3, 25)],
)
async def test_sequential_room_names_spread_over_the_shards(rooms, shards, fewest):
    """Tests the sharding policy where channels_redis' CRC clusters: rooms that differ
    only in a number."""
    layer = ChatChannelLayer(hosts=HOSTS * shards)
    counts = Counter(layer.shard_of(f"chat_room-{n}", shards) for n in range(rooms))
    assert len(counts) == shards
    assert min(counts.values()) >= fewest, counts


async def test_the_layer_subscribes_a_group_on_the_shard_its_keys_live_on():
    """Tests the one sharding policy: where the loop layer subscribes a group's channel
    is where chat.history and chat.presence keep the room's keys."""
    layer = ChatChannelLayer(hosts=[f"redis://127.0.0.1:{port}/0" for port in (1, 2, 3)])
    loop_layer = layer._get_layer()
    for n in range(30):
        group = f"chat_room-{n}"
        chosen = loop_layer._get_shard(layer.group_channel(group))
        assert chosen is loop_layer._shards[shard_of(layer, group, 3)]


def test_a_layer_that_shards_elsewhere_fails_the_check(monkeypatch):
    async def group_add(self, group, channel):
        return self.channels

    monkeypatch.setattr(RedisPubSubLoopLayer, "group_add", group_add)
    with pytest.raises(ChannelLayerMismatch, match="group_add"):
        ChatChannelLayer(hosts=HOSTS).check_internals()
