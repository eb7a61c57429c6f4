"""The chat's WebSocket protocol, shared by the async and the sync consumer.

Client to server, one text frame per message (the tutorial's protocol):

    {"message": "hello"}

Server to client, text frames with a "type":

    {"type": "welcome", "replica": "chat-1", "room": "lobby", ...}
        only to clients that offer the subprotocol ``chat.v1``, so the
        tutorial's own client, which prints every frame's "message", is
        not shown a line it does not understand.
    {"type": "chat", "message": "hello", "name": "Ada", "sent_via": "chat-2"}
        a message of the room, with its sender's display name (?name=... in
        the WebSocket URL); "sent_via" names the replica it was sent to.
    {"type": "presence", "members": ["Ada", "Grace"]}
        who is in the room, on every replica, after each join and leave
        (chat.v1 clients, async consumer).
    {"type": "error", "code": "invalid_json", "detail": "..."}
        bad input; the connection stays open unless a close code follows.

Error codes and close codes are listed in ERRORS and CLOSE_* below and in README.md.
"""

import json
import re
import time
from urllib.parse import parse_qs

SUBPROTOCOL = "chat.v1"

# Channels accepts group names of ASCII letters, digits, "-", "_" and "."
# shorter than 100 characters; "chat_" plus 80 leaves room for a prefix.
ROOM_NAME_PATTERN = r"[A-Za-z0-9_.-]{1,80}"
ROOM_NAME_RULE = "1 to 80 characters, each an ASCII letter, a digit, '-', '_' or '.'"
_ROOM_NAME = re.compile(ROOM_NAME_PATTERN)

# Application close code (4000-4999 are free for applications, RFC 6455).
CLOSE_INVALID_ROOM = 4400

ERRORS = {
    "invalid_json": "Frame is not valid JSON.",
    "invalid_frame": 'Frame must be a JSON object such as {"message": "hello"}.',
    "invalid_message": 'Field "message" is missing or not a string.',
    "message_too_large": "Frame is larger than {limit} bytes.",
    "binary_not_supported": "Binary frames are not supported; send JSON text.",
    "invalid_room": "Room name must be " + ROOM_NAME_RULE + ".",
    "unavailable": "The message could not be sent; try again.",
}


class ProtocolError(Exception):
    """A client frame that breaks the protocol; answered with an error frame."""

    def __init__(self, code, **params):
        super().__init__(code)
        self.code = code
        # Only templated details take parameters: the others hold literal braces.
        self.detail = ERRORS[code].format(**params) if params else ERRORS[code]

    def frame(self):
        return json.dumps({"type": "error", "code": self.code, "detail": self.detail})


def room_group_name(room_name):
    """Returns the Channels group of a room, or None if the name is not valid."""
    if _ROOM_NAME.fullmatch(room_name):
        return f"chat_{room_name}"
    return None


def parse_client_frame(text_data, bytes_data, max_bytes):
    """Returns the chat message carried by a client frame, or raises ProtocolError."""
    if text_data is None:
        raise ProtocolError("binary_not_supported")
    # A character takes at most 4 bytes: skip encoding the short frames.
    if len(text_data) * 4 > max_bytes and len(text_data.encode()) > max_bytes:
        raise ProtocolError("message_too_large", limit=max_bytes)
    try:
        content = json.loads(text_data)
    except ValueError:
        raise ProtocolError("invalid_json") from None
    if not isinstance(content, dict):
        raise ProtocolError("invalid_frame")
    message = content.get("message")
    if not isinstance(message, str):
        raise ProtocolError("invalid_message")
    return message


def chat_event(message, replica, name):
    """Builds the group event for a message; its frame is encoded once, by the sender."""
    frame = json.dumps({"type": "chat", "message": message, "name": name, "sent_via": replica})
    return {"type": "chat.message", "frame": frame, "sent_at": time.time()}


def presence_event(members):
    """The group event that tells a room who is in it (display names, sorted)."""
    return {
        "type": "presence.update",
        "frame": json.dumps({"type": "presence", "members": members}),
    }


NAME_MAX_LENGTH = 32


def display_name(query_string, default):
    """The display name from the handshake's ?name=..., or `default` when missing or bad:
    1 to 32 printable characters, surrounding spaces dropped."""
    values = parse_qs(query_string.decode("latin-1")).get("name", [])
    name = values[0].strip() if values else ""
    if not name or len(name) > NAME_MAX_LENGTH or not name.isprintable():
        return default
    return name


def welcome_frame(replica, room_name, consumer, max_bytes, name):
    return json.dumps(
        {
            "type": "welcome",
            "replica": replica,
            "room": room_name,
            "consumer": consumer,
            "max_message_bytes": max_bytes,
            "name": name,
        }
    )


def choose_subprotocol(offered):
    return SUBPROTOCOL if SUBPROTOCOL in offered else None
