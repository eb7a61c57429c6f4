"""What the async and the sync chat consumer share: the room and member a connection
is, its admission, joining and leaving the room's group, a client's message answered
(parsed, rate-limited, published, acknowledged), and the accounting of its frames.
Each consumer carries these out in its own style, awaited or through async_to_sync."""

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from . import events, metrics, protocol
from .broker import PublishRequest, PublishResult
from .channel_layer import LAYER_ERRORS, Event, RoomLayer
from .limits import TokenBucket
from .redis_clients import refuses_writes
from .replica import DRAINING, current

logger = logging.getLogger(__name__)

REPLICA_HEADER = b"x-chat-replica"


@dataclass(frozen=True)
class Refusal:
    """Why a connection may not join: the error frame it is sent, if any, and the code
    it is closed with, after being accepted so that the client can read why."""

    error: protocol.ProtocolError | None
    code: int


class RoomMember:
    """Mixed into a Channels WebsocketConsumer: one member of one room."""

    consumer_kind = ""
    recovers_history = False  # answers "history.catch_up" after a Redis outage
    keeps_presence = False  # in the room's presence, and answers "presence.update"
    room_name = ""
    room_group_name: str | None = None
    name = ""
    subprotocol: str | None = None
    joined = False
    # Set by Channels' consumer.
    scope: dict[str, Any]
    channel_layer: RoomLayer
    channel_name: str

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.replica = current()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)  # type: ignore[misc]
        finally:
            await self.finish()

    async def finish(self) -> None:
        """After the consumer ended, however it ended. Daphne cancels a consumer still
        running 10 s after its socket closed: then its disconnect has not run, and it
        would stay counted, in its group and subscribed for good."""
        if self.joined:
            await self.leave_unfinished()
        channel_name = getattr(self, "channel_name", None)
        if channel_name is None:
            return
        try:
            await self.channel_layer.release_channel(channel_name, self.room_group_name)
        except LAYER_ERRORS as error:
            self.log_layer_error("release_channel", error)

    async def leave_unfinished(self) -> None:
        """Leaves the room of a consumer that ended without its disconnect."""
        self.count_leave()

    def acceptable(self, message: Event) -> bool:
        """Whether the consumer may handle a message: the server's own (websocket.*) or
        a well-formed chat event; anything else sent to its group or channel is dropped
        and counted (chat.events), and the consumer goes on."""
        if events.is_from_the_socket(message):
            return True
        reason = events.problem(message, settings.CHAT_MAX_EVENT_BYTES)
        if reason is None:
            return True
        self.replica.event_drops.drop(reason, self.room_group_name or self.channel_name, message)
        return False

    # Joining

    def admit(self) -> Refusal | None:
        """Resolves the room and the member from the handshake; why it may not join
        now, or None."""
        self.room_name = self.scope["url_route"]["kwargs"]["room_name"]
        self.room_group_name = protocol.room_group_name(self.room_name)
        query_string = self.scope.get("query_string", b"")
        self.name = protocol.display_name(query_string, f"guest-{uuid.uuid4().hex[:4]}")
        self.rate_limit = TokenBucket(settings.CHAT_RATE_LIMIT, settings.CHAT_RATE_BURST)
        self.subprotocol = protocol.choose_subprotocol(self.scope.get("subprotocols", ()))
        if self.room_group_name is None:
            error = protocol.ProtocolError("invalid_room")
            return Refusal(error, protocol.CLOSE_INVALID_ROOM)
        reason = self.replica.refusal()
        if reason == DRAINING:
            return Refusal(None, protocol.CLOSE_SERVICE_RESTART)
        if reason is not None:
            metrics.errors.labels(reason).inc()
            return Refusal(protocol.ProtocolError(reason), protocol.CLOSE_TRY_AGAIN_LATER)
        return None

    def unavailable(self, action: str, error: BaseException) -> Refusal:
        """The refusal of a join that Redis could not take."""
        self.log_layer_error(action, error)
        error_frame = protocol.ProtocolError(protocol.UNAVAILABLE)
        return Refusal(error_frame, protocol.CLOSE_TRY_AGAIN_LATER)

    def accept_headers(self) -> list[tuple[bytes, bytes]]:
        return [(REPLICA_HEADER, self.replica.name.encode())]

    async def join_group(self) -> None:
        # Join room group
        assert self.room_group_name is not None  # admitted
        await self.channel_layer.group_add(self.room_group_name, self.channel_name)

    async def leave_group(self) -> None:
        # Leave room group
        if self.room_group_name is None:
            return
        try:
            await self.channel_layer.group_discard(self.room_group_name, self.channel_name)
        except LAYER_ERRORS as error:
            self.log_layer_error("group_discard", error)

    def welcome(self) -> list[str]:
        """The frames a joined client is sent first: the welcome, to chat.v1 clients."""
        if not self.subprotocol:
            return []
        welcome = protocol.welcome_frame(
            self.replica.name,
            self.room_name,
            self.consumer_kind,
            settings.CHAT_MAX_MESSAGE_BYTES,
            self.name,
            settings.CHAT_RATE_LIMIT,
            settings.CHAT_RATE_BURST,
        )
        return [welcome]

    def count_join(self) -> None:
        self.joined = True
        self.replica.add(self)
        metrics.connects.inc()
        metrics.connections_open.inc()

    def count_leave(self) -> None:
        if self.joined:
            self.joined = False
            self.replica.discard(self)
            metrics.disconnects.inc()
            metrics.connections_open.dec()

    # A client's message

    async def answer(self, text_data: str | None, bytes_data: bytes | None) -> str | None:
        """Handles a client's frame: the frame to answer it with (an error, or the ack
        of a message with a ref), or None."""
        if not self.joined:
            return None  # a refused connection's frames, before it closed
        try:
            message, ref = self.parse(text_data, bytes_data)
        except protocol.ProtocolError as error:
            return error.frame()
        # Store, number and send to room group in one step
        request = PublishRequest(self.room_name, message, self.name, self.replica.name, ref)
        try:
            with metrics.publish_duration.time():
                published = await self.replica.broker.publish(request)
            metrics.publishes.inc()
        except LAYER_ERRORS as error:
            self.log_layer_error("publish", error)
            return protocol.ProtocolError(protocol.UNAVAILABLE, ref).frame()
        return None if ref is None else ack(ref, published)

    def parse(self, text_data: str | None, bytes_data: bytes | None) -> tuple[str, str | None]:
        """The (message, ref) of a client frame that may be sent, or raises the
        ProtocolError to answer with (counted)."""
        allowed = self.rate_limit.allow()  # every frame counts, bad ones too
        try:
            message, ref = protocol.parse_client_frame(
                text_data, bytes_data, settings.CHAT_MAX_MESSAGE_BYTES
            )
            if not allowed:
                raise protocol.ProtocolError(
                    protocol.RATE_LIMITED, ref, rate=settings.CHAT_RATE_LIMIT
                )
        except protocol.ProtocolError as error:
            count_error(error)
            raise
        metrics.messages_received.inc()
        return message, ref

    def log_layer_error(self, action: str, error: BaseException) -> None:
        logger.warning("%s failed for %s: %r", action, self.room_group_name, error)
        metrics.errors.labels(f"{action}_failed").inc()
        if refuses_writes(error):
            metrics.redis_writes_refused.labels(action).inc()


def ack(ref: str, published: PublishResult) -> str:
    return protocol.ack_frame(ref, published.id, published.epoch, published.duplicate)


def count_error(error: protocol.ProtocolError) -> None:
    metrics.errors.labels(error.code).inc()
