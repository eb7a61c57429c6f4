"""Bad input over real WebSockets: documented errors, nothing lost, no traceback."""

import json

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from chat.protocol import CLOSE_INVALID_ROOM
from harness.client import join

BAD_FRAMES = [
    ("not json {", "invalid_json"),
    ("[1, 2, 3]", "invalid_frame"),
    ('"just a string"', "invalid_frame"),
    ('{"text": "no message field"}', "invalid_message"),
    ('{"message": ["not", "a", "string"]}', "invalid_message"),
    (b"\x89PNG binary", "binary_not_supported"),
    (json.dumps({"message": "x" * 4097}), "message_too_large"),
    (json.dumps({"message": "é" * 2100}, ensure_ascii=False), "message_too_large"),
]


@pytest.mark.parametrize(("frame", "code"), BAD_FRAMES, ids=[c for _, c in BAD_FRAMES])
async def test_bad_frame_is_answered_and_nobody_else_notices(cluster, frame, code):
    """Tests that a bad frame gets its error code while the room keeps working on every replica."""
    room = f"bad-{code}"
    offender = await join(cluster, room, replica=1)
    bystanders = [await join(cluster, room, replica=n) for n in (2, 3)]

    await offender.socket.send(frame)
    error = await offender.receive()
    assert error["type"] == "error"
    assert error["code"] == code
    for bystander in bystanders:
        await bystander.assert_silent(0.3)

    await offender.say("after the bad frame")
    for client in (offender, *bystanders):
        assert (await client.receive_chat())["message"] == "after the bad frame"
    for client in (offender, *bystanders):
        await client.close()


async def test_largest_allowed_frame_is_delivered(cluster):
    """Tests that a frame of exactly the documented limit still goes through."""
    client = await join(cluster, "limit")
    overhead = len(json.dumps({"message": ""}))
    message = "y" * (client.welcome["max_message_bytes"] - overhead)
    await client.say(message)
    assert (await client.receive_chat())["message"] == message
    await client.close()


@pytest.mark.parametrize("room", ["caf%C3%A9", "x" * 81, "a%20b"])
async def test_invalid_room_gets_error_frame_and_close_4400(cluster, room):
    """Tests that a room Channels cannot use as a group is refused with close code 4400."""
    async with connect(cluster.ws_url(room), origin=cluster.origin) as socket:
        error = json.loads(await socket.recv())
        assert error["code"] == "invalid_room"
        with pytest.raises(ConnectionClosed) as closed:
            await socket.recv()
    assert closed.value.rcvd.code == CLOSE_INVALID_ROOM


async def test_foreign_origin_is_refused(cluster):
    """Tests that a handshake from a foreign Origin is refused with HTTP 403."""
    with pytest.raises(InvalidStatus) as refused:
        await connect(cluster.ws_url("lobby"), origin="http://evil.example")
    assert refused.value.response.status_code == 403


def test_no_traceback_in_any_replica_log(cluster):
    """Tests that none of the bad input above left a traceback in the replicas' logs."""
    for number in range(1, cluster.replicas + 1):
        log = cluster.log(f"chat-{number}")
        assert "WSCONNECT" in log  # the log is the right one, and it is written
        assert "Traceback" not in log, log[-3000:]
