import json

import pytest
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.urls import re_path

from chat import protocol
from chat.consumers import ChatConsumer, SyncChatConsumer
from chat.routing import ROOM_PATH

pytestmark = pytest.mark.django_db(databases=[])

CONSUMERS = [ChatConsumer, SyncChatConsumer]


@pytest.fixture(params=CONSUMERS, ids=["async", "sync"])
def application(request):
    return URLRouter([re_path(ROOM_PATH, request.param.as_asgi())])


async def receive(communicator):
    """The next frame that is not a presence update (those follow every join and leave)."""
    while True:
        frame = await communicator.receive_json_from()
        if frame["type"] != "presence":
            return frame


async def quiet(communicator, timeout=0.2):
    """True if nothing but presence updates arrives within `timeout`."""
    while not await communicator.receive_nothing(timeout=timeout):
        if (await communicator.receive_json_from())["type"] != "presence":
            return False
    return True


async def join(application, room="lobby", subprotocols=("chat.v1",)):
    communicator = WebsocketCommunicator(
        application, f"/ws/chat/{room}/", subprotocols=list(subprotocols)
    )
    connected, subprotocol = await communicator.connect()
    assert connected
    if subprotocols:
        assert subprotocol == "chat.v1"
        assert (await communicator.receive_json_from())["type"] == "welcome"
    return communicator


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
            "message": "hello",
            "name": frame["name"],
            "sent_via": "unit-test",
        }
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


async def test_presence_lists_the_room_and_follows_leaves():
    """Tests that members learn who is in the room, by display name, on join and leave."""
    application = URLRouter([re_path(ROOM_PATH, ChatConsumer.as_asgi())])

    async def named(name):
        communicator = WebsocketCommunicator(
            application, f"/ws/chat/presence/?name={name}", subprotocols=["chat.v1"]
        )
        assert (await communicator.connect())[0]
        welcome = await communicator.receive_json_from()
        assert welcome["name"] == name
        return communicator

    async def latest_presence(communicator):
        members = None
        while not await communicator.receive_nothing(timeout=0.1):
            frame = await communicator.receive_json_from()
            assert frame["type"] == "presence"
            members = frame["members"]
        return members

    ada = await named("Ada")
    assert await latest_presence(ada) == ["Ada"]
    grace = await named("Grace")
    assert await latest_presence(ada) == ["Ada", "Grace"]
    assert await latest_presence(grace) == ["Ada", "Grace"]
    await grace.disconnect()
    assert await latest_presence(ada) == ["Ada"]
    await ada.disconnect()


@pytest.mark.parametrize("query", ["", "name=", "name=" + "x" * 33, "name=%07bell"])
def test_bad_display_names_get_a_default(query):
    assert protocol.display_name(query.encode(), "guest-1") == "guest-1"


def test_display_name_is_kept_as_text():
    assert protocol.display_name(b"name=%3Cimg%20src%3Dx%3E", "guest") == "<img src=x>"
