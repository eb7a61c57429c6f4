"""The tutorial's synchronous WebsocketConsumer, kept to benchmark against the async
ChatConsumer (CHAT_CONSUMER=sync). It speaks the same protocol, without history
replay or presence."""

import contextlib

from asgiref.sync import async_to_sync
from autobahn.exception import Disconnected
from channels.generic.websocket import WebsocketConsumer

from . import metrics, protocol
from .channel_layer import LAYER_ERRORS
from .room import RoomMember


class SyncChatConsumer(RoomMember, WebsocketConsumer):
    consumer_kind = "sync"

    def send(self, text_data=None, bytes_data=None, close=False):
        # As in ChatConsumer.send: nothing reaches a client that began to close.
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
            refusal = protocol.ProtocolError(protocol.UNAVAILABLE), protocol.CLOSE_TRY_AGAIN_LATER
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
        # Store, number and send to room group in one step
        try:
            with metrics.group_send_duration.time():
                published = async_to_sync(self.replica.history.publish)(
                    *self.publish_arguments(message, ref)
                )
            metrics.group_sends.inc()
        except LAYER_ERRORS as error:
            self.log_layer_error("publish", error)
            self.send(text_data=protocol.ProtocolError(protocol.UNAVAILABLE, ref).frame())
            return
        if ref is not None:
            self.send(text_data=self.ack(ref, published))

    # Receive message from room group
    def chat_message(self, event):
        # Send message to WebSocket
        self.send(text_data=event["frame"])
        self.count_delivery(event)

    def channel_overflow(self, event):
        # As in ChatConsumer.channel_overflow.
        metrics.slow_consumer_disconnects.labels("queue").inc()
        self.close(code=protocol.CLOSE_SLOW_CONSUMER)

    def presence_update(self, event):
        if self.subprotocol:
            self.send(text_data=event["frame"])
