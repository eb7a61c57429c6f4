"""The chat's WebSocket protocol, shared by the async and the sync consumer: frames, error
codes, close codes, gap kinds and the subprotocol.

docs/protocol.md describes it for clients; its tables of error codes, close codes and
constants are generated from ERRORS, CLOSE_* and the constants below.
"""

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

SUBPROTOCOL = "chat.v1"

# Channels accepts group names of ASCII letters, digits, "-", "_" and "."
# shorter than 100 characters; "chat_" plus 80 leaves room for a prefix.
ROOM_NAME_PATTERN = r"[A-Za-z0-9_.-]{1,80}"
ROOM_NAME_RULE = "1 to 80 characters, each an ASCII letter, a digit, '-', '_' or '.'"
_ROOM_NAME = re.compile(ROOM_NAME_PATTERN)

# Close codes (RFC 6455 and the IANA registry; 4000-4999 are free for applications).
CLOSE_MESSAGE_TOO_BIG = 1009  # a frame over CHAT_MAX_FRAME_BYTES, closed by Daphne
CLOSE_SERVICE_RESTART = 1012  # the replica is draining: reconnect and resume
CLOSE_TRY_AGAIN_LATER = 1013  # the replica is full, or Redis is unreachable on join
CLOSE_SLOW_CONSUMER = 4008  # the client did not read fast enough: reconnect and resume
CLOSE_INVALID_ROOM = 4400

# The "gap" of a history frame: what a joining or resuming client could not be sent.
GAP_NONE = "none"
GAP_TRIMMED = "trimmed"  # older than the history keeps (length or age)
GAP_RESET = "reset"  # the room's history was lost: a new epoch began

REF_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")

# The error codes a client acts on rather than only shows: it sends the message again
# (after a pause) when it was refused for one of these.
RATE_LIMITED = "rate_limited"
UNAVAILABLE = "unavailable"
RETRYABLE_ERRORS = (RATE_LIMITED, UNAVAILABLE)

ERRORS = {
    "invalid_json": "Frame is not valid JSON.",
    "invalid_frame": 'Frame must be a JSON object such as {"message": "hello"}.',
    "invalid_message": 'Field "message" is missing or not a string.',
    "message_too_large": "Frame is larger than {limit} bytes.",
    "binary_not_supported": "Binary frames are not supported; send JSON text.",
    "invalid_room": "Room name must be " + ROOM_NAME_RULE + ".",
    "invalid_ref": 'Field "ref" must be 1 to 64 characters of A-Z, a-z, 0-9, "_" or "-".',
    "invalid_resume": "last_id must be a whole number of at least 0; epoch comes only with it.",
    RATE_LIMITED: "More than {rate} messages per second; this one was not sent.",
    "server_full": "This replica serves its maximum of connections; try again later.",
    UNAVAILABLE: "The message could not be sent; try again.",
}


class ProtocolError(Exception):
    """A client frame that breaks the protocol; answered with an error frame."""

    def __init__(self, code: str, ref: str | None = None, **params: object) -> None:
        super().__init__(code)
        self.code = code
        self.ref = ref
        # Only templated details take parameters: the others hold literal braces.
        self.detail = ERRORS[code].format(**params) if params else ERRORS[code]

    def frame(self) -> str:
        error: dict[str, object] = {"type": "error", "code": self.code, "detail": self.detail}
        if self.ref is not None:
            error["ref"] = self.ref
        return json.dumps(error)


def room_group_name(room_name: str) -> str | None:
    """Returns the Channels group of a room, or None if the name is not valid."""
    if _ROOM_NAME.fullmatch(room_name):
        return f"chat_{room_name}"
    return None


def room_of_group(group: str) -> str | None:
    """The room whose Channels group this is, or None if it is no room's group."""
    room = group.removeprefix("chat_")
    return room if room != group and room_group_name(room) == group else None


def room_group(room_name: str) -> str:
    """The Channels group of a room whose name is known to be valid."""
    group = room_group_name(room_name)
    if group is None:
        raise ValueError(f"not a valid room name: {room_name!r}")
    return group


def parse_client_frame(
    text_data: str | None, bytes_data: bytes | None, max_bytes: int
) -> tuple[str, str | None]:
    """Returns the (message, ref) of a client frame, ref None if absent, or raises
    ProtocolError."""
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
    ref = content.get("ref")
    if ref is not None and not (isinstance(ref, str) and REF_PATTERN.fullmatch(ref)):
        raise ProtocolError("invalid_ref")
    message = content.get("message")
    if not isinstance(message, str):
        raise ProtocolError("invalid_message", ref=ref)
    return message, ref


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """A place in a room's stream of messages: its epoch and the last id up to it (0
    before the first). The epoch is None when the room has none, or a client resumes
    without naming one."""

    epoch: str | None
    offset: int


def resume_position(query_string: bytes) -> StreamPosition | None:
    """Where a client resumes from (?last_id=57&epoch=...), None for a new joiner, or
    raises ProtocolError("invalid_resume")."""
    params = parse_qs(query_string.decode("latin-1"))
    last_id = params.get("last_id", [None])[0]
    epoch = params.get("epoch", [None])[0]
    if last_id is None:
        if epoch is not None:
            raise ProtocolError("invalid_resume")
        return None
    if not last_id.isdigit() or len(last_id) > 18 or epoch is not None and len(epoch) > 32:
        raise ProtocolError("invalid_resume")
    return StreamPosition(epoch, int(last_id))


def chat_frame_parts(
    message: str, name: str, replica: str, sent_at: float, system: bool = False
) -> tuple[str, str, str]:
    """A chat frame in three parts around its id and epoch, which the history assigns
    when it stores the message: frame = head + id + middle + epoch + tail. sent_at is
    time.time() when the replica took the message. A message of server code (a
    notice, a bot: chat.publish) says so with "system": true, which no client can send."""
    fields: dict[str, object] = {
        "message": message,
        "name": name,
        "sent_via": replica,
        "time": int(sent_at * 1000),
    }
    if system:
        fields["system"] = True
    body = json.dumps(fields)
    return '{"type":"chat","id":', ',"epoch":"', '",' + body[1:]


def chat_frame(
    message_id: int,
    epoch: str,
    message: str,
    name: str,
    replica: str,
    sent_at: float,
    system: bool = False,
) -> str:
    head, middle, tail = chat_frame_parts(message, name, replica, sent_at, system)
    return f"{head}{message_id}{middle}{epoch}{tail}"


def ack_frame(ref: str, message_id: int, epoch: str, duplicate: bool) -> str:
    return json.dumps(
        {"type": "ack", "ref": ref, "id": message_id, "epoch": epoch, "duplicate": duplicate}
    )


def history_frame(position: StreamPosition, replayed: int, gap: str) -> str:
    """Ends a replay: the room's position, the messages replayed and the gap left."""
    return json.dumps(
        {
            "type": "history",
            "epoch": position.epoch,
            "last_id": position.offset,
            "replayed": replayed,
            "gap": gap,
        }
    )


# Group events: what the channel layer carries to every consumer of a room. A chat
# event is also written by the publish script (history), field for field.


def chat_event(frame: str, message_id: int, epoch: str, sent_at: float) -> dict[str, Any]:
    return {
        "type": "chat.message",
        "frame": frame,
        "id": message_id,
        "epoch": epoch,
        "sent_at": sent_at,
    }


def presence_event(frame: str | None = None) -> dict[str, str]:
    """The group event carrying a presence frame; without one, it asks a consumer to
    send its client a fresh snapshot (after a Redis outage)."""
    event = {"type": "presence.update"}
    if frame is not None:
        event["frame"] = frame
    return event


PRESENCE = "presence"
PRESENCE_DIFF = "presence_diff"


def member_id(channel_name: str) -> str:
    """A connection's id in presence frames: short, opaque, the same on every replica,
    and not its channel name, which would let a client address another's channel."""
    return hashlib.blake2s(channel_name.encode(), digest_size=6).hexdigest()


def presence_members(members: Iterable[tuple[str, str]]) -> list[dict[str, str]]:
    """(id, name) pairs as a frame lists them: sorted by name, then id."""
    ordered = sorted(members, key=lambda member: (member[1], member[0]))
    return [{"id": member, "name": name} for member, name in ordered]


def presence_frame(members: Iterable[tuple[str, str]], count: int) -> str:
    """The snapshot: `members` (id, name) pairs, at most CHAT_PRESENCE_MAX_LISTED of `count`."""
    return json.dumps({"type": PRESENCE, "members": presence_members(members), "count": count})


def presence_diff_parts(joined: Iterable[tuple[str, str]], left: Iterable[str]) -> tuple[str, str]:
    """A presence_diff frame in two parts around its count, which the presence script
    reads when it publishes: frame = head + count + tail. `joined` are (id, name)
    pairs, `left` ids."""
    body = json.dumps({"joined": presence_members(joined), "left": sorted(left)})
    return '{"type":"' + PRESENCE_DIFF + '","count":', "," + body[1:]


def presence_diff_frame(joined: Iterable[tuple[str, str]], left: Iterable[str], count: int) -> str:
    head, tail = presence_diff_parts(joined, left)
    return f"{head}{count}{tail}"


NAME_MAX_LENGTH = 32


def display_name(query_string: bytes, default: str) -> str:
    """The display name from the handshake's ?name=..., or `default` when missing or bad:
    1 to 32 printable characters, surrounding spaces dropped."""
    values = parse_qs(query_string.decode("latin-1")).get("name", [])
    name = values[0].strip() if values else ""
    if not name or len(name) > NAME_MAX_LENGTH or not name.isprintable():
        return default
    return name


def welcome_frame(
    replica: str,
    room_name: str,
    consumer: str,
    max_bytes: int,
    name: str,
    rate_limit: int,
    rate_burst: int,
) -> str:
    return json.dumps(
        {
            "type": "welcome",
            "replica": replica,
            "room": room_name,
            "consumer": consumer,
            "max_message_bytes": max_bytes,
            "name": name,
            "rate_limit": rate_limit,
            "rate_burst": rate_burst,
        }
    )


def choose_subprotocol(offered: Iterable[str]) -> str | None:
    return SUBPROTOCOL if SUBPROTOCOL in offered else None
