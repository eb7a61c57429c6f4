"""The events a consumer may be handed, checked before any client sees one.

A room's group is open to any code that holds the channel layer: Channels documents
`group_send` from outside a consumer, and the tutorial's event is
{"type": "chat.message", "message": "..."}. An event that is not one the chat
consumers answer, or lacks what they need of it, is dropped here, before it reaches
anyone: counted in chat_events_dropped_total by reason and logged once per reason
per process, never a traceback per member and never a closed socket. The tutorial's
own shape is taken as a publish where it is sent (chat.publish.TutorialMessages);
one that arrives raw, from a process without it, is dropped as `tutorial_shape`.
On the pub/sub layer the fan-out checks each of a room's events once, knowing it came
to the group; on the core and in-memory layers, which queue a group's events with a
consumer's own, each consumer checks what it is handed.

docs/protocol.md lists the events and what each must carry.
"""

import logging
from collections.abc import Mapping
from typing import Any

from . import metrics

logger = logging.getLogger(__name__)

CHAT_MESSAGE = "chat.message"
PRESENCE_UPDATE = "presence.update"
# Sent to one consumer's own channel by its replica or its layer.
HISTORY_CATCH_UP = "history.catch_up"
CHANNEL_OVERFLOW = "channel.overflow"

# Why an event was dropped: the `reason` label of chat_events_dropped_total.
TUTORIAL_SHAPE = "tutorial_shape"  # {"type": "chat.message", "message": ...} sent raw
UNKNOWN_TYPE = "unknown_type"
BAD_FIELDS = "bad_fields"  # a known type without the fields it needs, or mistyped
OVERSIZED = "oversized"  # larger than CHAT_MAX_EVENT_BYTES
UNDECODABLE = "undecodable"  # not what the channel layer encodes
REASONS = (TUTORIAL_SHAPE, UNKNOWN_TYPE, BAD_FIELDS, OVERSIZED, UNDECODABLE)

HINTS = {
    TUTORIAL_SHAPE: "send with chat.publish.send_to_room() (docs/sending.md), not group_send",
    UNKNOWN_TYPE: "the chat consumers answer chat.message and presence.update only",
    BAD_FIELDS: "see docs/protocol.md for the fields each event carries",
    OVERSIZED: "CHAT_MAX_EVENT_BYTES bounds an event",
    UNDECODABLE: "the event is not msgpack as channels_redis encodes it",
}


def is_from_the_socket(message: Mapping[str, Any]) -> bool:
    """A message of the consumer's own WebSocket (websocket.connect, .receive, ...), which
    the server makes: not a channel-layer event, and not checked here."""
    kind = message.get("type")
    return isinstance(kind, str) and kind.startswith("websocket.")


def is_chat_message(event: Mapping[str, Any]) -> bool:
    """A numbered chat message as the broker publishes it (chat.protocol.chat_event)."""
    message_id = event.get("id")
    return (
        isinstance(event.get("frame"), str)
        and isinstance(message_id, int)
        and not isinstance(message_id, bool)
        and message_id > 0
        and isinstance(event.get("epoch"), str)
        and isinstance(event.get("sent_at"), (int, float))
    )


def is_tutorial_message(event: Mapping[str, Any]) -> bool:
    """The tutorial's chat.message: a text to publish, not yet numbered or stored."""
    return (
        event.get("type") == CHAT_MESSAGE
        and isinstance(event.get("message"), str)
        and "id" not in event
        and "frame" not in event
    )


def problem(event: object, max_bytes: int, on_group: bool = False) -> str | None:
    """Why a consumer must not handle `event` (a reason of REASONS), or None. On a
    room's group (`on_group`) only a room's events are; the replica's own, sent to one
    consumer's channel, are not (a group_send of "channel.overflow" would close every
    member). Only a frame can be large; it is measured in characters, a lower bound of
    its bytes."""
    if not isinstance(event, Mapping):
        return BAD_FIELDS
    kind = event.get("type")
    if kind == CHAT_MESSAGE:
        if is_chat_message(event):
            return OVERSIZED if len(event["frame"]) > max_bytes else None
        return TUTORIAL_SHAPE if is_tutorial_message(event) else BAD_FIELDS
    if kind == PRESENCE_UPDATE:
        frame = event.get("frame")
        if frame is not None and not isinstance(frame, str):
            return BAD_FIELDS
        return OVERSIZED if frame is not None and len(frame) > max_bytes else None
    if kind in (HISTORY_CATCH_UP, CHANNEL_OVERFLOW) and not on_group:
        return None
    return UNKNOWN_TYPE


class Drops:
    """The events a replica dropped: counted, and each reason logged once (the replica
    holds one, chat.replica)."""

    def __init__(self) -> None:
        self.logged: set[str] = set()

    def drop(self, reason: str, where: str, event: object = None) -> None:
        """Counts a dropped event; logs the first of each reason with what it looked
        like (its type and field names, never its content)."""
        metrics.events_dropped.labels(reason).inc()
        if reason in self.logged:
            return
        self.logged.add(reason)
        shape = ""
        if isinstance(event, Mapping):
            shape = f" type={event.get('type')!r} fields={sorted(map(str, event))}"
        logger.warning(
            "dropped an event on %s (%s)%s: %s; further ones are only counted"
            " (chat_events_dropped_total)",
            where,
            reason,
            shape,
            HINTS[reason],
        )
