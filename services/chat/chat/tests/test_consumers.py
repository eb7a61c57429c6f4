"""The async ChatConsumer (chat.consumers): ids, the history replayed on joining and
resuming, refs, live gaps filled from the history, leaving however it ends, and its
dispatch without Channels' database hop; on the in-memory layer."""

import ast
import asyncio
import inspect
import textwrap

import pytest
from channels import consumer as channels_consumer
from channels.consumer import AsyncConsumer
from django.apps import apps
from django.conf import settings
from django.db import connections

from chat.broker import PublishRequest
from chat.consumers import ChatConsumer

from .clients import ASYNC, fresh_replica, join, quiet, receive, replayed, say_all

pytestmark = [pytest.mark.django_db(databases=[]), pytest.mark.usefixtures("replica")]


async def test_ids_count_up_and_a_new_joiner_gets_the_newest(settings):
    """Tests that ids count from 1 and a joiner is replayed the newest CHAT_HISTORY_ON_JOIN."""
    settings.CHAT_HISTORY_ON_JOIN = 3
    fresh_replica()
    sender = await join(ASYNC, query="?name=Ada")
    await replayed(sender)
    await say_all(sender, [f"m{number}" for number in range(1, 6)])

    joiner = await join(ASYNC)
    frames, end = await replayed(joiner)
    assert [(frame["id"], frame["message"]) for frame in frames] == [
        (3, "m3"),
        (4, "m4"),
        (5, "m5"),
    ]
    assert end == {
        "type": "history",
        "epoch": frames[0]["epoch"],
        "last_id": 5,
        "replayed": 3,
        "gap": "none",
    }
    await sender.send_json_to({"message": "m6"})
    assert (await receive(joiner))["id"] == 6
    await sender.disconnect()
    await joiner.disconnect()


async def room_with(messages):
    """A member of "lobby" who has sent `messages`, and the room's epoch."""
    sender = await join(ASYNC)
    await replayed(sender)
    await say_all(sender, messages)
    replay = await apps.get_app_config("chat").replica.broker.replay("lobby")
    return sender, replay.position.epoch


async def test_resume_replays_exactly_the_missed_messages_in_order():
    """Tests that last_id and epoch bring back what came after, once, then live ones."""
    sender, epoch = await room_with(["a", "b", "c", "d"])

    resumed = await join(ASYNC, query=f"?last_id=2&epoch={epoch}")
    frames, end = await replayed(resumed)
    assert [frame["message"] for frame in frames] == ["c", "d"]
    assert (end["last_id"], end["replayed"], end["gap"]) == (4, 2, "none")
    await sender.send_json_to({"message": "e"})
    assert [(await receive(resumed))["message"]] == ["e"]
    assert await quiet(resumed, timeout=0.1)
    await sender.disconnect()
    await resumed.disconnect()


async def test_resume_past_the_history_reports_a_trimmed_gap(settings):
    """Tests that missed messages the history no longer has are reported, not hidden."""
    settings.CHAT_HISTORY_MAX_LENGTH = 2
    fresh_replica()
    sender, epoch = await room_with(["a", "b", "c", "d"])

    resumed = await join(ASYNC, query=f"?last_id=1&epoch={epoch}")
    frames, end = await replayed(resumed)
    assert [frame["id"] for frame in frames] == [3, 4]
    assert end["gap"] == "trimmed"
    await sender.disconnect()
    await resumed.disconnect()


async def test_resume_from_another_epoch_reports_a_reset():
    """Tests that a client holding a lost epoch is told, and given this epoch's messages."""
    sender = await join(ASYNC)
    await replayed(sender)
    await say_all(sender, ["a"])
    resumed = await join(ASYNC, query="?last_id=40&epoch=lost")
    frames, end = await replayed(resumed)
    assert [frame["message"] for frame in frames] == ["a"]
    assert end["gap"] == "reset"
    await sender.disconnect()
    await resumed.disconnect()


@pytest.mark.parametrize("query", ["?last_id=x", "?last_id=-1", "?epoch=abc"])
async def test_bad_resume_position_gets_an_error_and_a_plain_join(query):
    communicator = await join(ASYNC, query=query)
    error = await communicator.receive_json_from()
    assert error["code"] == "invalid_resume"
    frames, end = await replayed(communicator)
    assert end["gap"] == "none"
    await communicator.disconnect()


async def test_ref_is_acknowledged_and_a_retry_is_not_sent_twice():
    """Tests that a message with a ref is acked with its id, and resending it is a no-op."""
    sender = await join(ASYNC)
    other = await join(ASYNC)
    await replayed(sender)
    await sender.send_json_to({"message": "once", "ref": "r-1"})
    await sender.send_json_to({"message": "once", "ref": "r-1"})
    frames = [await receive(sender) for _ in range(3)]
    acks = sorted((f for f in frames if f["type"] == "ack"), key=lambda f: f["duplicate"])
    assert [(ack["id"], ack["duplicate"]) for ack in acks] == [(1, False), (1, True)]
    assert [f["message"] for f in frames if f["type"] == "chat"] == ["once"]
    assert (await receive(other))["message"] == "once"
    assert await quiet(other, timeout=0.1)
    await sender.disconnect()
    await other.disconnect()


async def test_live_gap_is_filled_from_the_history(replica):
    """Tests that a live message whose predecessors never arrived brings them first."""
    listener = await join(ASYNC)
    await replayed(listener)
    broker = replica.broker
    # Stored without being published: what a replica cut off from Redis misses.
    group_send = broker.channel_layer.group_send
    broker.channel_layer.group_send = lambda *args: _nothing()
    await broker.publish(PublishRequest("lobby", "missed", "x", "elsewhere"))
    broker.channel_layer.group_send = group_send
    await broker.publish(PublishRequest("lobby", "live", "x", "elsewhere"))
    assert [(await receive(listener))["message"] for _ in range(2)] == ["missed", "live"]
    await listener.disconnect()


async def _nothing():
    return None


async def test_a_consumer_cancelled_before_its_disconnect_leaves_the_room(replica):
    """Tests what Daphne does to a consumer still running 10 s after its socket closed
    (it cancels it): the consumer must not stay counted, listed or in its group."""
    communicator = await join(ASYNC)
    await replayed(communicator)
    assert len(replica.connections) == 1
    communicator.future.cancel()
    for _ in range(50):  # its leave is announced after CHAT_PRESENCE_COALESCE_MS
        await asyncio.sleep(0.05)
        if not replica.connections and replica.presence.settled():
            break
    assert replica.connections == set()
    joiner = await join(ASYNC)
    await replayed(joiner)
    presence = await joiner.receive_json_from()
    assert presence["type"] == "presence"
    assert presence["count"] == 1, presence
    await joiner.disconnect()


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
    DATABASES with a dummy default the first time a connection is asked for, in place."""
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
    event = {"type": "chat.message", "frame": "{}", "id": 1, "epoch": "e1", "sent_at": 1.0}
    await consumer.dispatch(event)
    assert delivered
    assert not hops
