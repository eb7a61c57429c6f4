"""The tutorial's synchronous WebsocketConsumer, kept to benchmark against the async
ChatConsumer (CHAT_CONSUMER=sync). It speaks the same protocol, without history
replay or presence, and shares the rest with it (chat.membership)."""

import contextlib

from asgiref.sync import async_to_sync
from autobahn.exception import Disconnected
from channels.generic.websocket import WebsocketConsumer

from . import metrics, protocol
from .channel_layer import LAYER_ERRORS, Event
from .membership import Refusal, RoomMember


class SyncChatConsumer(RoomMember, WebsocketConsumer):
    consumer_kind = "sync"

    def send(
        self, text_data: str | None = None, bytes_data: bytes | None = None, close: bool = False
    ) -> None:
        # As in ChatConsumer.send: nothing reaches a client that began to close.
        with contextlib.suppress(Disconnected):
            super().send(text_data, bytes_data, close)

    async def dispatch(self, message: Event) -> None:
        # Channels' dispatch runs the handler in the sync thread; a malformed event
        # is dropped before that hop (chat.events).
        if self.acceptable(message):
            await super().dispatch(message)

    def connect(self) -> None:
        refusal = self.admit()
        if refusal is not None:
            self.refuse(refusal)
            return
        try:
            async_to_sync(self.join_group)()
        except LAYER_ERRORS as error:
            self.refuse(self.unavailable("join", error))
            return

        self.accept(self.subprotocol, self.accept_headers())
        self.count_join()
        for frame in self.welcome():
            self.send(text_data=frame)

    def refuse(self, refusal: Refusal) -> None:
        self.accept(self.subprotocol, self.accept_headers())
        if refusal.error:
            self.send(text_data=refusal.error.frame())
        self.close(code=refusal.code)

    def disconnect(self, close_code: int | None) -> None:
        self.count_leave()
        async_to_sync(self.leave_group)()

    # Receive message from WebSocket
    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        reply = async_to_sync(self.answer)(text_data, bytes_data)
        if reply is not None:
            self.send(text_data=reply)

    # Receive message from room group
    def chat_message(self, event: Event) -> None:
        # Send message to WebSocket
        self.send(text_data=event["frame"])
        metrics.count_delivery(event["sent_at"])

    def channel_overflow(self, event: Event) -> None:
        # As in ChatConsumer.channel_overflow.
        metrics.slow_consumer_disconnects.labels("queue").inc()
        self.close(code=protocol.CLOSE_SLOW_CONSUMER)

    def presence_update(self, event: Event) -> None:
        if self.subprotocol:
            self.send(text_data=event["frame"])
