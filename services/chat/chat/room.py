"""What the async and the sync consumer share: the room and member a connection is,
its admission, its rate limit and the accounting of its frames."""

import logging
import time
import uuid

from django.conf import settings

from . import metrics, protocol
from .channel_layer import LAYER_ERRORS, release_channel
from .limits import TokenBucket
from .redis_clients import refuses_writes
from .replica import DRAINING, current

logger = logging.getLogger(__name__)

# The scope extension through which the server (chatsite.serve) tells a consumer
# when its socket can take more: writable() is None, or a future of True once the
# write buffer drained and False if the connection closes first; ready_to_write(),
# the same without waiting; send_shared(text, shared), a frame framed once for every
# connection it goes to (fan-out); and through which the consumer closes a slow
# consumer: close_slow_consumer(reason), counted once.
WRITE_FLOW = "chat.write_flow"


class RoomMember:
    """Mixed into a WebsocketConsumer: one member of one room."""

    consumer_kind = None
    recovers_history = False  # answers "history.catch_up" after a Redis outage
    keeps_presence = False  # in the room's presence, and answers "presence.update"
    room_name = None
    room_group_name = None
    joined = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.replica = current()

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Daphne cancels a consumer still running 10 s after its socket closed:
            # then its disconnect has not run, and it would stay counted for good.
            if self.joined:
                await self.leave_unfinished()
            try:
                await release_channel(
                    self.channel_layer, getattr(self, "channel_name", None), self.room_group_name
                )
            except LAYER_ERRORS as error:
                self.log_layer_error("release_channel", error)

    async def leave_unfinished(self):
        """Leaves the room of a consumer that ended without its disconnect."""
        self.count_leave()

    def resolve_room(self):
        self.room_name = self.scope["url_route"]["kwargs"]["room_name"]
        self.room_group_name = protocol.room_group_name(self.room_name)
        default_name = f"guest-{uuid.uuid4().hex[:4]}"
        self.name = protocol.display_name(self.scope.get("query_string", b""), default_name)
        self.rate_limit = TokenBucket(settings.CHAT_RATE_LIMIT, settings.CHAT_RATE_BURST)

    def refusal(self):
        """Why this connection may not join, as (error or None, close code), or None."""
        if self.room_group_name is None:
            return protocol.ProtocolError("invalid_room"), protocol.CLOSE_INVALID_ROOM
        reason = self.replica.refusal()
        if reason == DRAINING:
            return None, protocol.CLOSE_SERVICE_RESTART
        if reason is not None:
            metrics.errors.labels(reason).inc()
            return protocol.ProtocolError(reason), protocol.CLOSE_TRY_AGAIN_LATER
        return None

    def accept_arguments(self):
        subprotocol = protocol.choose_subprotocol(self.scope.get("subprotocols", ()))
        self.subprotocol = subprotocol
        headers = [(b"x-chat-replica", self.replica.name.encode())]
        return subprotocol, headers

    def welcome(self):
        return protocol.welcome_frame(
            self.replica.name,
            self.room_name,
            self.consumer_kind,
            settings.CHAT_MAX_MESSAGE_BYTES,
            self.name,
            settings.CHAT_RATE_LIMIT,
            settings.CHAT_RATE_BURST,
        )

    def log_layer_error(self, action, error):
        logger.warning("%s failed for %s: %r", action, self.room_group_name, error)
        metrics.errors.labels(f"{action}_failed").inc()
        if refuses_writes(error):
            metrics.redis_writes_refused.labels(action).inc()

    def count_join(self):
        self.joined = True
        self.replica.add(self)
        metrics.connects.inc()
        metrics.connections_open.inc()

    def count_leave(self):
        if self.joined:
            self.joined = False
            self.replica.discard(self)
            metrics.disconnects.inc()
            metrics.connections_open.dec()

    def parse(self, text_data, bytes_data):
        """((message, ref), None) for a client frame that may be sent, else (None, the
        ProtocolError to answer with)."""
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
            self.count_error(error)
            return None, error
        metrics.messages_received.inc()
        return (message, ref), None

    def publish_arguments(self, message, ref):
        return self.room_name, message, self.name, self.replica.name, ref

    @staticmethod
    def ack(ref, published):
        return protocol.ack_frame(ref, published.id, published.epoch, published.duplicate)

    @staticmethod
    def count_error(error):
        metrics.errors.labels(error.code).inc()

    @staticmethod
    def count_delivery(event):
        metrics.messages_delivered.inc()
        metrics.delivery_latency.observe(time.time() - event["sent_at"])
