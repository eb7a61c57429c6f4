"""The WebSocket protocol (chat.protocol): room names, client frames, the chat frame's
parts, resume positions and display names."""

import json

import pytest

from chat import protocol


def test_room_group_name_accepts_channels_safe_names():
    """Tests that valid room names map to the tutorial's group names."""
    assert protocol.room_group_name("lobby") == "chat_lobby"
    assert protocol.room_group_name("a.b-c_9") == "chat_a.b-c_9"
    assert protocol.room_group_name("x" * 80) == "chat_" + "x" * 80


@pytest.mark.parametrize("name", ["café", "x" * 81, "", "a b", "a/b", "日本"])
def test_room_group_name_rejects_names_channels_cannot_use(name):
    """Tests that names Channels would refuse as group names are rejected."""
    assert protocol.room_group_name(name) is None


def test_parse_client_frame_returns_message():
    """Tests that the tutorial's frame yields its message, extra fields ignored."""
    assert protocol.parse_client_frame('{"message": "hi", "x": 1}', None, 100) == ("hi", None)
    assert protocol.parse_client_frame('{"message": ""}', None, 100) == ("", None)
    assert protocol.parse_client_frame('{"message": "a", "ref": "r-1"}', None, 100) == ("a", "r-1")


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("{", "invalid_json"),
        ("", "invalid_json"),
        ("[1, 2]", "invalid_frame"),
        ('"message"', "invalid_frame"),
        ("{}", "invalid_message"),
        ('{"message": 5}', "invalid_message"),
        ('{"message": null}', "invalid_message"),
    ],
)
def test_parse_client_frame_rejects_bad_frames(text, code):
    """Tests that each kind of bad frame raises its documented error code."""
    with pytest.raises(protocol.ProtocolError) as raised:
        protocol.parse_client_frame(text, None, 100)
    assert raised.value.code == code
    frame = json.loads(raised.value.frame())
    assert frame == {"type": "error", "code": code, "detail": protocol.ERRORS[code]}


def test_parse_client_frame_rejects_binary():
    """Tests that a binary frame is refused."""
    with pytest.raises(protocol.ProtocolError) as raised:
        protocol.parse_client_frame(None, b"{}", 100)
    assert raised.value.code == "binary_not_supported"


def test_size_limit_counts_utf8_bytes():
    """Tests that the size limit is in bytes of UTF-8, not characters."""
    fits = json.dumps({"message": "é" * 10}, ensure_ascii=False)  # 15 + 20 bytes
    assert len(fits.encode()) == 35
    assert protocol.parse_client_frame(fits, None, 35) == ("é" * 10, None)
    with pytest.raises(protocol.ProtocolError) as raised:
        protocol.parse_client_frame(fits, None, 34)
    assert raised.value.code == "message_too_large"
    assert "34 bytes" in raised.value.detail


def test_chat_frame_parts_make_the_documented_chat_frame():
    """Tests that the parts the publish script joins around id and epoch make the frame."""
    head, middle, tail = protocol.chat_frame_parts('hello <b> "é"', "Ada", "chat-2", 1.2345)
    frame = head + "7" + middle + "ab" + tail
    assert frame == protocol.chat_frame(7, "ab", 'hello <b> "é"', "Ada", "chat-2", 1.2345)
    assert json.loads(frame) == {
        "type": "chat",
        "id": 7,
        "epoch": "ab",
        "message": 'hello <b> "é"',
        "name": "Ada",
        "sent_via": "chat-2",
        "time": 1234,
    }


@pytest.mark.parametrize(
    ("query", "position"),
    [
        (b"", None),
        (b"last_id=0", protocol.StreamPosition(None, 0)),
        (b"name=a&last_id=7&epoch=ab", protocol.StreamPosition("ab", 7)),
    ],
)
def test_resume_position(query, position):
    assert protocol.resume_position(query) == position
