"""What both consumers share (chat.membership): joining, admission and its refusals,
fan-out within a room, bad frames, the rate limit; each test runs on the async and the
sync consumer, on the in-memory layer."""

import json
import time

import pytest
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.urls import re_path

from chat import protocol
from chat.consumers import ChatConsumer
from chat.routing import ROOM_PATH
from chat.sync_consumers import SyncChatConsumer

from .clients import ASYNC, fresh_replica, join, quiet, receive, replayed

pytestmark = [pytest.mark.django_db(databases=[]), pytest.mark.usefixtures("replica")]

CONSUMERS = [ChatConsumer, SyncChatConsumer]


@pytest.fixture(params=CONSUMERS, ids=["async", "sync"])
def application(request):
    return URLRouter([re_path(ROOM_PATH, request.param.as_asgi())])


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
