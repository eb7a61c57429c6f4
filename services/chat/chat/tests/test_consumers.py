import asyncio
import json
import time

import pytest
from channels.layers import get_channel_layer
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.apps import apps
from django.urls import re_path

from chat import protocol
from chat.consumers import ChatConsumer
from chat.replica import Replica
from chat.routing import ROOM_PATH
from chat.sync_consumers import SyncChatConsumer

pytestmark = pytest.mark.django_db(databases=[])

CONSUMERS = [ChatConsumer, SyncChatConsumer]
CONTROL_FRAMES = {"presence", "presence_diff", "history"}


def fresh_replica():
    """A new replica, built from the settings as they are now: empty rooms, no
    history, presence or connections."""
    replica = Replica.from_settings(get_channel_layer())
    apps.get_app_config("chat").replica = replica
    return replica


@pytest.fixture(autouse=True)
def replica():
    original = apps.get_app_config("chat").replica
    yield fresh_replica()
    apps.get_app_config("chat").replica = original


@pytest.fixture(params=CONSUMERS, ids=["async", "sync"])
def application(request):
    return URLRouter([re_path(ROOM_PATH, request.param.as_asgi())])


async def receive(communicator):
    """The next frame that is not a presence update or the end of a replay."""
    while True:
        frame = await communicator.receive_json_from()
        if frame["type"] not in CONTROL_FRAMES:
            return frame


async def quiet(communicator, timeout=0.2):
    """True if nothing but presence updates arrives within `timeout`."""
    while not await communicator.receive_nothing(timeout=timeout):
        if (await communicator.receive_json_from())["type"] not in CONTROL_FRAMES:
            return False
    return True


async def join(application, room="lobby", subprotocols=("chat.v1",), query=""):
    communicator = WebsocketCommunicator(
        application, f"/ws/chat/{room}/{query}", subprotocols=list(subprotocols)
    )
    connected, subprotocol = await communicator.connect()
    assert connected
    if subprotocols:
        assert subprotocol == "chat.v1"
        assert (await communicator.receive_json_from())["type"] == "welcome"
    return communicator


async def replayed(communicator):
    """The chat frames replayed on joining, and the history frame that ends them."""
    frames = []
    while (frame := await communicator.receive_json_from())["type"] != "history":
        assert frame["type"] == "chat", frame
        frames.append(frame)
    return frames, frame


async def test_join_sends_welcome_naming_the_replica(application):
    """Tests that a client offering chat.v1 is welcomed with replica and room."""
    communicator = WebsocketCommunicator(application, "/ws/chat/lobby/", subprotocols=["chat.v1"])
    connected, subprotocol = await communicator.connect()
    assert connected
    assert subprotocol == "chat.v1"
    welcome = await communicator.receive_json_from()
    assert welcome["type"] == "welcome"
    assert welcome["replica"] == "unit-test"
    assert welcome["room"] == "lobby"
    assert welcome["consumer"] in {"async", "sync"}
    assert welcome["max_message_bytes"] == 4096
    await communicator.disconnect()


async def test_tutorial_client_gets_no_welcome(application):
    """Tests that a client without the subprotocol sees only chat frames, as in the tutorial."""
    communicator = await join(application, subprotocols=())
    assert await communicator.receive_nothing(timeout=0.2)  # no welcome, no presence
    await communicator.send_json_to({"message": "hello"})
    frame = await communicator.receive_json_from()
    assert frame["message"] == "hello"
    await communicator.disconnect()


async def test_message_fans_out_to_everyone_in_the_room(application):
    """Tests that every member of the room, the sender included, gets a message once."""
    members = [await join(application) for _ in range(3)]
    await members[1].send_json_to({"message": "hello"})
    for member in members:
        frame = await receive(member)
        assert frame == {
            "type": "chat",
            "id": 1,
            "epoch": frame["epoch"],
            "message": "hello",
            "name": frame["name"],
            "sent_via": "unit-test",
            "time": frame["time"],
        }
        assert abs(frame["time"] / 1000 - time.time()) < 5
        assert frame["name"].startswith("guest-")
        assert await quiet(member, timeout=0.1)
    for member in members:
        await member.disconnect()


async def test_rooms_are_isolated(application):
    """Tests that a message in one room reaches no one in another."""
    lobby = await join(application, "lobby")
    other = await join(application, "other")
    await lobby.send_json_to({"message": "only lobby"})
    assert (await receive(lobby))["message"] == "only lobby"
    assert await quiet(other, timeout=0.3)
    await lobby.disconnect()
    await other.disconnect()


async def test_leaving_stops_delivery(application):
    """Tests that a disconnected member is removed from the room group."""
    stays = await join(application)
    leaves = await join(application)
    await leaves.disconnect()
    await stays.send_json_to({"message": "after"})
    assert (await receive(stays))["message"] == "after"
    await stays.disconnect()


BAD_FRAMES = [
    ({"text_data": "{"}, "invalid_json"),
    ({"text_data": "[1]"}, "invalid_frame"),
    ({"text_data": '{"text": "hi"}'}, "invalid_message"),
    ({"text_data": '{"message": 42}'}, "invalid_message"),
    ({"bytes_data": b"\x00\x01"}, "binary_not_supported"),
    ({"text_data": json.dumps({"message": "x" * 5000})}, "message_too_large"),
]


@pytest.mark.parametrize(("frame", "code"), BAD_FRAMES, ids=[code for _, code in BAD_FRAMES])
async def test_bad_frame_gets_error_and_connection_keeps_working(application, frame, code):
    """Tests that a bad frame is answered with its error code and costs nothing else."""
    sender = await join(application)
    bystander = await join(application)
    await sender.send_to(**frame)
    error = await receive(sender)
    assert error["type"] == "error"
    assert error["code"] == code
    assert error["detail"]
    assert await quiet(bystander, timeout=0.1)

    await sender.send_json_to({"message": "still here"})
    for member in (sender, bystander):
        assert (await receive(member))["message"] == "still here"
    await sender.disconnect()
    await bystander.disconnect()


@pytest.mark.parametrize("room", ["café", "x" * 81])
async def test_invalid_room_is_closed_with_documented_code(application, room):
    """Tests that a room name Channels cannot use gets an error frame and close 4400."""
    communicator = WebsocketCommunicator(application, f"/ws/chat/{room}/", subprotocols=["chat.v1"])
    connected, _ = await communicator.connect()
    assert connected
    error = await communicator.receive_json_from()
    assert error["code"] == "invalid_room"
    closed = await communicator.receive_output()
    assert closed["type"] == "websocket.close"
    assert closed["code"] == protocol.CLOSE_INVALID_ROOM
    await communicator.wait()


@pytest.mark.parametrize("query", ["", "name=", "name=" + "x" * 33, "name=%07bell"])
def test_bad_display_names_get_a_default(query):
    assert protocol.display_name(query.encode(), "guest-1") == "guest-1"


def test_display_name_is_kept_as_text():
    assert protocol.display_name(b"name=%3Cimg%20src%3Dx%3E", "guest") == "<img src=x>"


# --- Ids, history and recovery (the async consumer) ----------------------------

ASYNC = URLRouter([re_path(ROOM_PATH, ChatConsumer.as_asgi())])


async def say_all(communicator, messages):
    for message in messages:
        await communicator.send_json_to({"message": message})
        await receive(communicator)


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
    return sender, (await apps.get_app_config("chat").replica.history.replay("lobby")).epoch


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


async def test_bad_ref_is_refused():
    sender = await join(ASYNC)
    await replayed(sender)
    await sender.send_json_to({"message": "hi", "ref": "no spaces"})
    assert (await receive(sender))["code"] == "invalid_ref"
    await sender.disconnect()


async def test_rate_limit_refuses_the_excess_with_its_ref(settings):
    """Tests the token bucket: a burst passes, the excess gets rate_limited, nothing else."""
    settings.CHAT_RATE_LIMIT, settings.CHAT_RATE_BURST = 1, 3
    sender = await join(ASYNC)
    await replayed(sender)
    for number in range(5):
        await sender.send_json_to({"message": f"m{number}", "ref": f"r{number}"})
    frames = [await receive(sender) for _ in range(3 * 2 + 2)]
    limited = [frame["ref"] for frame in frames if frame["type"] == "error"]
    assert limited == ["r3", "r4"]
    assert all(frame["code"] == "rate_limited" for frame in frames if frame["type"] == "error")
    assert [frame["message"] for frame in frames if frame["type"] == "chat"] == ["m0", "m1", "m2"]
    await sender.disconnect()


async def test_connection_cap_refuses_with_server_full(settings):
    settings.CHAT_MAX_CONNECTIONS = 1
    fresh_replica()
    first = await join(ASYNC)
    refused = WebsocketCommunicator(ASYNC, "/ws/chat/lobby/", subprotocols=["chat.v1"])
    assert (await refused.connect())[0]
    assert (await refused.receive_json_from())["code"] == "server_full"
    closed = await refused.receive_output()
    assert closed == {"type": "websocket.close", "code": protocol.CLOSE_TRY_AGAIN_LATER}
    await first.disconnect()


async def test_draining_replica_refuses_with_service_restart(replica):
    replica.start_draining()
    refused = WebsocketCommunicator(ASYNC, "/ws/chat/lobby/", subprotocols=["chat.v1"])
    assert (await refused.connect())[0]
    closed = await refused.receive_output()
    assert closed == {"type": "websocket.close", "code": protocol.CLOSE_SERVICE_RESTART}


async def test_live_gap_is_filled_from_the_history(replica):
    """Tests that a live message whose predecessors never arrived brings them first."""
    listener = await join(ASYNC)
    await replayed(listener)
    store = replica.history
    # Stored without being published: what a replica cut off from Redis misses.
    group_send = store.channel_layer.group_send
    store.channel_layer.group_send = lambda *args: _nothing()
    await store.publish("lobby", "missed", "x", "elsewhere")
    store.channel_layer.group_send = group_send
    await store.publish("lobby", "live", "x", "elsewhere")
    assert [(await receive(listener))["message"] for _ in range(2)] == ["missed", "live"]
    await listener.disconnect()


async def _nothing():
    return None


async def test_a_consumer_cancelled_before_its_disconnect_leaves_the_room(replica):
    """Tests what Daphne does to a consumer still running 10 s after its socket closed
    (it cancels it): the consumer must not stay counted, listed or in its group."""
    application = URLRouter([re_path(ROOM_PATH, ChatConsumer.as_asgi())])
    communicator = await join(application)
    await replayed(communicator)
    assert len(replica.connections) == 1
    communicator.future.cancel()
    for _ in range(50):  # its leave is announced after CHAT_PRESENCE_COALESCE_MS
        await asyncio.sleep(0.05)
        if not replica.connections and replica.presence.settled():
            break
    assert replica.connections == set()
    joiner = await join(application)
    await replayed(joiner)
    presence = await joiner.receive_json_from()
    assert presence["type"] == "presence"
    assert presence["count"] == 1, presence
    await joiner.disconnect()
