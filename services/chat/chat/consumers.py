"""The chat consumers: the async one serves, the sync one is kept for benchmarks.

Both speak the protocol in chat.protocol and keep the tutorial's shape.
"""

import asyncio
import contextlib
import logging
import time
import uuid

from asgiref.sync import async_to_sync
from autobahn.exception import Disconnected
from channels.consumer import get_handler_name
from channels.db import aclose_old_connections
from channels.exceptions import ChannelFull
from channels.generic.websocket import AsyncWebsocketConsumer, WebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings
from redis.exceptions import RedisError

from . import lifecycle, metrics, protocol
from .history import GAP_NONE, GAP_TRIMMED, Replay, get_history
from .layers import release_channel
from .limits import TokenBucket
from .presence import get_presence

logger = logging.getLogger(__name__)

# What the channel layer raises when Redis cannot take a message.
LAYER_ERRORS = (RedisError, OSError, ChannelFull)

# A gap the history could not fill at once is retried: 0.2 s, doubling to 5 s, ~1 min.
CATCH_UP_ATTEMPTS = 15
CATCH_UP_FIRST_DELAY = 0.2
CATCH_UP_MAX_DELAY = 5


class RoomMixin:
    """What both consumers derive from the scope and settings."""

    consumer_kind = None
    room_group_name = None
    joined = False

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await release_channel(self.channel_layer, getattr(self, "channel_name", None))
            except LAYER_ERRORS as error:
                self.log_layer_error("release_channel", error)

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
        if lifecycle.draining:
            return None, protocol.CLOSE_SERVICE_RESTART
        if len(lifecycle.live_consumers) >= settings.CHAT_MAX_CONNECTIONS:
            metrics.errors.labels("server_full").inc()
            return protocol.ProtocolError("server_full"), protocol.CLOSE_TRY_AGAIN_LATER
        return None

    def accept_arguments(self):
        subprotocol = protocol.choose_subprotocol(self.scope.get("subprotocols", ()))
        self.subprotocol = subprotocol
        headers = [(b"x-chat-replica", settings.CHAT_REPLICA_ID.encode())]
        return subprotocol, headers

    def welcome(self):
        return protocol.welcome_frame(
            settings.CHAT_REPLICA_ID,
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

    def count_join(self):
        self.joined = True
        lifecycle.live_consumers.add(self)
        metrics.connects.inc()
        metrics.connections_open.inc()

    def count_leave(self):
        if self.joined:
            self.joined = False
            lifecycle.live_consumers.discard(self)
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
                raise protocol.ProtocolError("rate_limited", ref, rate=settings.CHAT_RATE_LIMIT)
        except protocol.ProtocolError as error:
            self.count_error(error)
            return None, error
        metrics.messages_received.inc()
        return (message, ref), None

    def publish_arguments(self, message, ref):
        replica = settings.CHAT_REPLICA_ID
        return self.room_name, self.room_group_name, message, self.name, replica, ref

    @staticmethod
    def count_error(error):
        metrics.errors.labels(error.code).inc()

    @staticmethod
    def count_delivery(event):
        metrics.messages_delivered.inc()
        metrics.delivery_latency.observe(time.time() - event["sent_at"])


class ChatConsumer(RoomMixin, AsyncWebsocketConsumer):
    consumer_kind = "async"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Live delivery and catch_up() both send from the history; one at a time.
        self.delivery_lock = asyncio.Lock()

    async def send(self, text_data=None, bytes_data=None, close=False):
        # Daphne (autobahn) raises Disconnected on a send to a socket whose client has
        # begun to close. Nothing reaches that client any more; raised, it would end
        # the consumer before the frames still queued, such as a message the client
        # sent just before closing, and log a traceback.
        with contextlib.suppress(Disconnected):
            await super().send(text_data, bytes_data, close)

    async def dispatch(self, message):
        # Channels closes stale database connections before every handler, with
        # a hop to the sync thread (sync_to_async): profiled, a third of a
        # replica's CPU under load. Without a database there is nothing to close.
        if settings.DATABASES:
            await aclose_old_connections()
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def connect(self):
        self.resolve_room()
        subprotocol, headers = self.accept_arguments()
        refusal = self.refusal()
        if refusal:
            # Accept first, so that the client can read why it is refused.
            await self.refuse(subprotocol, headers, *refusal)
            return
        try:
            epoch, last_id = protocol.resume_position(self.scope.get("query_string", b""))
            resume_error = None
        except protocol.ProtocolError as error:
            (epoch, last_id), resume_error = (None, None), error
            self.count_error(error)

        # Join the room group before reading its history: a message published in
        # between then arrives live, after the replay, and is skipped by its id.
        try:
            await self.channel_layer.group_add(self.room_group_name, self.channel_name)
            replay = await get_history().replay(
                self.room_name, self.room_group_name, epoch, last_id
            )
        except LAYER_ERRORS as error:
            self.log_layer_error("join", error)
            refusal = protocol.ProtocolError("unavailable"), protocol.CLOSE_TRY_AGAIN_LATER
            await self.refuse(subprotocol, headers, *refusal)
            return

        await self.accept(subprotocol, headers)
        self.count_join()
        if subprotocol:
            await self.send(text_data=self.welcome())
        if resume_error:
            await self.send(text_data=resume_error.frame())
        await self.send_replay(replay)
        try:
            members = await get_presence().join(self.room_name, self.channel_name, self.name)
            await broadcast_presence(self.room_name, members)
        except LAYER_ERRORS as error:
            self.log_layer_error("presence_join", error)

    async def refuse(self, subprotocol, headers, error, code):
        await self.accept(subprotocol, headers)
        if error:
            await self.send(text_data=error.frame())
        await self.close(code=code)

    async def disconnect(self, close_code):
        if self.catch_up_task is not None:
            self.catch_up_task.cancel()
        was_joined = self.joined
        self.count_leave()
        # Leave room group
        if self.room_group_name:
            try:
                await self.channel_layer.group_discard(self.room_group_name, self.channel_name)
                if was_joined:
                    members = await get_presence().leave(self.room_name, self.channel_name)
                    await broadcast_presence(self.room_name, members)
            except LAYER_ERRORS as error:
                self.log_layer_error("group_discard", error)

    # Receive message from WebSocket
    async def receive(self, text_data=None, bytes_data=None):
        accepted, error = self.parse(text_data, bytes_data)
        if error:
            await self.send(text_data=error.frame())
            return
        message, ref = accepted
        # Store, number and send to the room group in one step
        try:
            with metrics.group_send_duration.time():
                published = await get_history().publish(*self.publish_arguments(message, ref))
            metrics.group_sends.inc()
        except LAYER_ERRORS as error:
            self.log_layer_error("publish", error)
            await self.send(text_data=protocol.ProtocolError("unavailable", ref).frame())
            return
        if ref is not None:
            await self.send(text_data=protocol.ack_frame(ref, published))

    # Receive message from room group
    async def chat_message(self, event):
        async with self.delivery_lock:
            if event["epoch"] != self.epoch:
                # The room's history was lost and restarted (Redis lost its data).
                self.epoch, self.last_id = event["epoch"], 0
            message_id = event["id"]
            if message_id <= self.last_id:
                metrics.duplicates_skipped.inc()
                return
            if message_id > self.last_id + 1:
                # Missed while this replica was cut off from Redis: from the history.
                missed = await self.history_between(self.last_id, message_id)
                if missed is None:
                    # The history cannot be read now: send nothing out of order; the
                    # catch-up sends this message too, after the missing ones.
                    self.schedule_catch_up()
                    return
                await self.send_frames(missed)
            # Send message to WebSocket
            await self.send(text_data=event["frame"])
            self.last_id = message_id
        self.count_delivery(event)

    async def presence_update(self, event):
        # The tutorial's client prints every frame's "message": chat.v1 clients only.
        if self.subprotocol:
            await self.send(text_data=event["frame"])

    # Recovery

    epoch = None
    last_id = 0

    async def send_frames(self, frames):
        for message_id, frame in frames:
            await self.send(text_data=frame)
            self.last_id = message_id
        metrics.messages_replayed.inc(len(frames))

    async def send_replay(self, replay):
        self.epoch = replay.epoch
        self.last_id = 0
        await self.send_frames(replay.frames)
        # Ids up to the room's last count as seen, replayed or not (a new joiner
        # gets only the newest); later ones arrive live.
        self.last_id = max(self.last_id, replay.last_id)
        if replay.gap != GAP_NONE:
            metrics.history_gaps.labels(replay.gap).inc()
        if self.subprotocol:
            await self.send(text_data=protocol.history_frame(replay, len(replay.frames)))

    async def history_between(self, after_id, before_id):
        """The frames after_id < id < before_id from the history, or None if it cannot
        be read; a client is told (a "history" frame) of any it no longer holds."""
        try:
            frames = await get_history().between(
                self.room_name, self.room_group_name, after_id, before_id
            )
        except LAYER_ERRORS as error:
            self.log_layer_error("history", error)
            return None
        if len(frames) < before_id - after_id - 1:
            metrics.history_gaps.labels("live").inc()
            if self.subprotocol:
                gap = Replay(self.epoch, before_id - 1, gap=GAP_TRIMMED)
                await self.send(text_data=protocol.history_frame(gap, len(frames)))
        return frames

    async def catch_up(self):
        """Sends what the room got while this replica could not hear it (Redis was
        unreachable or restarted): after Redis comes back (history_catch_up), and
        when a gap could not be filled at once (schedule_catch_up)."""
        async with self.delivery_lock:
            replay = await get_history().replay(
                self.room_name, self.room_group_name, self.epoch, self.last_id
            )
            if replay.epoch == self.epoch or replay.frames:
                await self.send_frames(replay.frames)
                self.epoch = replay.epoch
                self.last_id = max(self.last_id, replay.last_id)

    async def history_catch_up(self, event):
        """Sent by lifecycle.redis_recovered, after what was queued before it."""
        try:
            await self.catch_up()
        except LAYER_ERRORS as error:
            self.log_layer_error("catch_up", error)
            self.schedule_catch_up()

    catch_up_task = None

    def schedule_catch_up(self):
        if self.catch_up_task is None or self.catch_up_task.done():
            self.catch_up_task = asyncio.get_running_loop().create_task(self.keep_catching_up())

    async def keep_catching_up(self):
        for attempt in range(CATCH_UP_ATTEMPTS):
            await asyncio.sleep(min(CATCH_UP_FIRST_DELAY * 2**attempt, CATCH_UP_MAX_DELAY))
            try:
                await self.catch_up()
                return
            except LAYER_ERRORS as error:
                self.log_layer_error("catch_up", error)


class SyncChatConsumer(RoomMixin, WebsocketConsumer):
    consumer_kind = "sync"

    def send(self, text_data=None, bytes_data=None, close=False):
        # As in ChatConsumer.send.
        with contextlib.suppress(Disconnected):
            super().send(text_data, bytes_data, close)

    def connect(self):
        self.resolve_room()
        subprotocol, headers = self.accept_arguments()
        refusal = self.refusal()
        if refusal:
            self.refuse(subprotocol, headers, *refusal)
            return

        # Join room group
        try:
            async_to_sync(self.channel_layer.group_add)(self.room_group_name, self.channel_name)
        except LAYER_ERRORS as error:
            self.log_layer_error("join", error)
            refusal = protocol.ProtocolError("unavailable"), protocol.CLOSE_TRY_AGAIN_LATER
            self.refuse(subprotocol, headers, *refusal)
            return

        self.accept(subprotocol, headers)
        self.count_join()
        if subprotocol:
            self.send(text_data=self.welcome())

    def refuse(self, subprotocol, headers, error, code):
        self.accept(subprotocol, headers)
        if error:
            self.send(text_data=error.frame())
        self.close(code=code)

    def disconnect(self, close_code):
        self.count_leave()
        # Leave room group
        if self.room_group_name:
            try:
                async_to_sync(self.channel_layer.group_discard)(
                    self.room_group_name, self.channel_name
                )
            except LAYER_ERRORS as error:
                self.log_layer_error("group_discard", error)

    # Receive message from WebSocket
    def receive(self, text_data=None, bytes_data=None):
        accepted, error = self.parse(text_data, bytes_data)
        if error:
            self.send(text_data=error.frame())
            return
        message, ref = accepted
        # Store, number and send to the room group in one step
        try:
            with metrics.group_send_duration.time():
                published = async_to_sync(get_history().publish)(
                    *self.publish_arguments(message, ref)
                )
            metrics.group_sends.inc()
        except LAYER_ERRORS as error:
            self.log_layer_error("publish", error)
            self.send(text_data=protocol.ProtocolError("unavailable", ref).frame())
            return
        if ref is not None:
            self.send(text_data=protocol.ack_frame(ref, published))

    # Receive message from room group
    def chat_message(self, event):
        # Send message to WebSocket
        self.send(text_data=event["frame"])
        self.count_delivery(event)

    def presence_update(self, event):
        if self.subprotocol:
            self.send(text_data=event["frame"])


async def broadcast_presence(room_name, members):
    """Tells every member of the room, on every replica, who is in it."""
    await get_channel_layer().group_send(
        protocol.room_group_name(room_name), protocol.presence_event(members)
    )
