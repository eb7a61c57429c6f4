"""The chat consumers: the async one serves, the sync one is kept for benchmarks.

Both speak the protocol in chat.protocol and keep the tutorial's shape.
"""

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

from . import metrics, protocol
from .layers import release_channel
from .presence import get_presence

logger = logging.getLogger(__name__)

# What the channel layer raises when Redis cannot take a message.
LAYER_ERRORS = (RedisError, OSError, ChannelFull)

# WebSocket close code "try again later" (RFC 6455, IANA registry).
CLOSE_TRY_AGAIN_LATER = 1013


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
        return self.room_group_name is not None

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
        )

    def log_layer_error(self, action, error):
        logger.warning("%s failed for %s: %r", action, self.room_group_name, error)
        metrics.errors.labels(f"{action}_failed").inc()

    def count_join(self):
        self.joined = True
        metrics.connects.inc()
        metrics.connections_open.inc()

    def count_leave(self):
        if self.joined:
            self.joined = False
            metrics.disconnects.inc()
            metrics.connections_open.dec()

    @staticmethod
    def count_error(error):
        metrics.errors.labels(error.code).inc()

    @staticmethod
    def count_delivery(event):
        metrics.messages_delivered.inc()
        metrics.delivery_latency.observe(time.time() - event["sent_at"])


class ChatConsumer(RoomMixin, AsyncWebsocketConsumer):
    consumer_kind = "async"

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
        valid_room = self.resolve_room()
        subprotocol, headers = self.accept_arguments()
        if not valid_room:
            # Accept first, so that the client can read why it is refused.
            await self.accept(subprotocol, headers)
            await self.send(text_data=protocol.ProtocolError("invalid_room").frame())
            await self.close(code=protocol.CLOSE_INVALID_ROOM, reason="invalid room name")
            return

        # Join room group
        try:
            await self.channel_layer.group_add(self.room_group_name, self.channel_name)
        except LAYER_ERRORS as error:
            self.log_layer_error("group_add", error)
            await self.accept(subprotocol, headers)
            await self.send(text_data=protocol.ProtocolError("unavailable").frame())
            await self.close(code=CLOSE_TRY_AGAIN_LATER)
            return

        await self.accept(subprotocol, headers)
        self.count_join()
        if subprotocol:
            await self.send(text_data=self.welcome())
        try:
            members = await get_presence().join(self.room_name, self.channel_name, self.name)
            await broadcast_presence(self.room_name, members)
        except LAYER_ERRORS as error:
            self.log_layer_error("presence_join", error)

    async def disconnect(self, close_code):
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
        try:
            message = protocol.parse_client_frame(
                text_data, bytes_data, settings.CHAT_MAX_MESSAGE_BYTES
            )
        except protocol.ProtocolError as error:
            self.count_error(error)
            await self.send(text_data=error.frame())
            return

        metrics.messages_received.inc()
        # Send message to room group
        try:
            with metrics.group_send_duration.time():
                await self.channel_layer.group_send(
                    self.room_group_name,
                    protocol.chat_event(message, settings.CHAT_REPLICA_ID, self.name),
                )
            metrics.group_sends.inc()
        except LAYER_ERRORS as error:
            self.log_layer_error("group_send", error)
            await self.send(text_data=protocol.ProtocolError("unavailable").frame())

    # Receive message from room group
    async def chat_message(self, event):
        # Send message to WebSocket
        await self.send(text_data=event["frame"])
        self.count_delivery(event)

    async def presence_update(self, event):
        # The tutorial's client prints every frame's "message": chat.v1 clients only.
        if self.subprotocol:
            await self.send(text_data=event["frame"])


class SyncChatConsumer(RoomMixin, WebsocketConsumer):
    consumer_kind = "sync"

    def send(self, text_data=None, bytes_data=None, close=False):
        # As in ChatConsumer.send.
        with contextlib.suppress(Disconnected):
            super().send(text_data, bytes_data, close)

    def connect(self):
        valid_room = self.resolve_room()
        subprotocol, headers = self.accept_arguments()
        if not valid_room:
            self.accept(subprotocol, headers)
            self.send(text_data=protocol.ProtocolError("invalid_room").frame())
            self.close(code=protocol.CLOSE_INVALID_ROOM, reason="invalid room name")
            return

        # Join room group
        try:
            async_to_sync(self.channel_layer.group_add)(self.room_group_name, self.channel_name)
        except LAYER_ERRORS as error:
            self.log_layer_error("group_add", error)
            self.accept(subprotocol, headers)
            self.send(text_data=protocol.ProtocolError("unavailable").frame())
            self.close(code=CLOSE_TRY_AGAIN_LATER)
            return

        self.accept(subprotocol, headers)
        self.count_join()
        if subprotocol:
            self.send(text_data=self.welcome())

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
        try:
            message = protocol.parse_client_frame(
                text_data, bytes_data, settings.CHAT_MAX_MESSAGE_BYTES
            )
        except protocol.ProtocolError as error:
            self.count_error(error)
            self.send(text_data=error.frame())
            return

        metrics.messages_received.inc()
        # Send message to room group
        try:
            with metrics.group_send_duration.time():
                async_to_sync(self.channel_layer.group_send)(
                    self.room_group_name,
                    protocol.chat_event(message, settings.CHAT_REPLICA_ID, self.name),
                )
            metrics.group_sends.inc()
        except LAYER_ERRORS as error:
            self.log_layer_error("group_send", error)
            self.send(text_data=protocol.ProtocolError("unavailable").frame())

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
