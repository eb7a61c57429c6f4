"""The chat consumer: the tutorial's AsyncWebsocketConsumer, made to recover. Every
message has an id; a joining or resuming client gets the room's history first; live
messages are sent in id order, each once. The replica's fan-out (chat.fanout) decides
which live messages are sent at once and which reach this consumer's queue; the
cursor (chat.recovery) decides what to send; this carries the decisions out.
The sync consumer of the tutorial, kept for benchmarks, is in chat.sync_consumers.
"""

import asyncio
import contextlib
from typing import Any

from autobahn.exception import Disconnected
from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from . import events, metrics, protocol
from .channel_layer import LAYER_ERRORS, Event
from .fanout import FanOut, Subscription
from .membership import Refusal, RoomMember
from .protocol import StreamPosition
from .recovery import Action, Frame, Replay
from .retry import Backoff, retry
from .write_flow import write_flow_of

# A gap the history could not fill at once is retried: 0.2 s, doubling to 5 s, ~1 min.
CATCH_UP_BACKOFF = Backoff(first_delay=0.2, max_delay=5.0, attempts=15)

DUMMY_DATABASE = "django.db.backends.dummy"


def uses_database() -> bool:
    """Whether a real database is configured. Not `bool(settings.DATABASES)`: the first
    time anything asks for a connection, Django fills an empty DATABASES with a dummy
    default, in place."""
    return any(
        database.get("ENGINE", DUMMY_DATABASE) != DUMMY_DATABASE
        for database in settings.DATABASES.values()
    )


class ChatConsumer(RoomMember, AsyncWebsocketConsumer):
    consumer_kind = "async"
    recovers_history = True
    keeps_presence = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.subscription: Subscription | None = None
        self.catch_up_task: asyncio.Task[None] | None = None
        self.closes_database_connections = uses_database()

    @property
    def fan_out(self) -> FanOut:
        return self.replica.fan_out

    async def send(
        self, text_data: str | None = None, bytes_data: bytes | None = None, close: bool = False
    ) -> None:
        # Daphne (autobahn) raises Disconnected on a send to a socket whose client has
        # begun to close. Nothing reaches that client any more; raised, it would end
        # the consumer before the frames still queued, such as a message the client
        # sent just before closing, and log a traceback.
        with contextlib.suppress(Disconnected):
            await super().send(text_data, bytes_data, close)

    async def dispatch(self, message: Event) -> None:
        try:
            if self.acceptable(message):
                await self.handle(message)
        finally:
            if not events.is_from_the_socket(message):
                self.fan_out.handled(self.subscription)  # a message from its inbox

    async def handle(self, message: Event) -> None:
        # Channels' dispatch first closes stale database connections, a hop to the
        # sync thread per message. With no database there is nothing to close.
        # tests check that this is still Channels' dispatch without that hop.
        if self.closes_database_connections:
            await super().dispatch(message)
            return
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def connect(self) -> None:
        self.replica.adopt_running_loop()  # chat.publish publishes on it
        refusal = self.admit()
        if refusal is not None:
            await self.refuse(refusal)
            return
        try:
            since = protocol.resume_position(self.scope.get("query_string", b""))
            resume_error = None
        except protocol.ProtocolError as error:
            since, resume_error = None, error
            metrics.errors.labels(error.code).inc()
        try:
            replay = await self.join(since)
        except LAYER_ERRORS as error:
            await self.refuse(self.unavailable("join", error))
            return

        await self.accept(self.subprotocol, self.accept_headers())
        self.count_join()
        for frame in self.welcome():
            await self.send(text_data=frame)
        if resume_error:
            await self.send(text_data=resume_error.frame())
        await self.send_replay(replay)
        await self.join_presence()
        assert self.subscription is not None  # joined
        self.fan_out.go_live(self.subscription)

    async def join(self, since: StreamPosition | None) -> Replay:
        """Subscribes to the fan-out, then joins the room's group, then reads its history:
        a message published in between arrives live, after the replay, and is skipped
        by its id."""
        assert self.room_group_name is not None  # admitted
        group_channel = self.channel_layer.group_channel(self.room_group_name)
        writer = write_flow_of(self.scope)
        self.subscription = self.fan_out.subscribe(self.channel_name, group_channel, writer)
        await self.join_group()
        return await self.replica.broker.replay(self.room_name, since)

    async def join_presence(self) -> None:
        try:
            await self.replica.start_maintenance()
        except LAYER_ERRORS as error:
            self.log_layer_error("heartbeat", error)
        try:
            # The list once, to the joiner; the room hears a diff (chat.presence). The
            # join is recorded even if the list cannot be read: the leave will be.
            presence = self.replica.presence
            snapshot = await presence.join(self.room_name, self.channel_name, self.name)
            if self.subprotocol:
                await self.send(text_data=snapshot)
        except LAYER_ERRORS as error:
            self.log_layer_error("presence_join", error)

    async def refuse(self, refusal: Refusal) -> None:
        await self.accept(self.subprotocol, self.accept_headers())
        if refusal.error:
            await self.send(text_data=refusal.error.frame())
        await self.close(code=refusal.code)

    async def disconnect(self, close_code: int | None) -> None:
        if self.catch_up_task is not None:
            self.catch_up_task.cancel()
        was_joined = self.joined
        self.count_leave()
        if self.subscription is not None:
            self.fan_out.unsubscribe(self.subscription)
        await self.leave_group()
        if was_joined:
            try:
                await self.replica.presence.leave(self.room_name, self.channel_name)
            except LAYER_ERRORS as error:
                self.log_layer_error("presence_leave", error)

    async def leave_unfinished(self) -> None:
        await self.disconnect(None)

    async def finish(self) -> None:
        if self.subscription is not None:
            self.fan_out.unsubscribe(self.subscription)
        await super().finish()

    # Receive message from WebSocket
    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        with self.fan_out.publishing(self.subscription):
            reply = await self.answer(text_data, bytes_data)
            if reply is not None:
                await self.send(text_data=reply)

    # Receive message from room group
    async def chat_message(self, event: Event) -> None:
        """A room's message that the fan-out put in this consumer's queue."""
        subscription = self.subscription
        if subscription is None:
            return
        async with subscription.sending:
            decision = subscription.decide(event)
            if decision.action is Action.SKIP:
                return
            # Missed while this replica was cut off from Redis: from the history.
            filled = decision.action is not Action.FILL_GAP or await self.fill_gap(
                decision.after_id, event["id"]
            )
            if not filled:
                return
            # Send message to WebSocket
            if not await self.send_in_turn(event["frame"]):
                return
            subscription.delivered(event)

    async def send_in_turn(self, frame: str) -> bool:
        """Sends a chat frame once the socket can take it, so that a client's pace holds
        back its own deliveries (a slow one's wait in its bounded queue from Redis);
        False if the connection closed first (past CHAT_SEND_TIMEOUT, 4008)."""
        writer = write_flow_of(self.scope)
        waiting = writer.writable() if writer is not None else None
        if waiting is not None and not await waiting:
            return False
        await self.send(text_data=frame)
        return True

    async def channel_overflow(self, event: Event) -> None:
        """Sent by the channel layer when this consumer's queue passed its bound."""
        writer = write_flow_of(self.scope)
        if writer is not None:
            writer.close_slow_consumer("queue")  # counts it, unless closing
            return
        metrics.slow_consumer_disconnects.labels("queue").inc()
        await self.close(code=protocol.CLOSE_SLOW_CONSUMER)

    async def presence_update(self, event: Event) -> None:
        # The tutorial's client prints every frame's "message": chat.v1 clients only.
        if not self.subprotocol:
            return
        frame = event.get("frame")
        if frame is None:  # asked for after a Redis outage: this client's own snapshot
            try:
                presence = self.replica.presence
                frame = await presence.snapshot_frame(self.room_name, self.channel_name, self.name)
            except LAYER_ERRORS as error:
                self.log_layer_error("presence_snapshot", error)
                return
        await self.send(text_data=frame)

    # Recovery

    async def send_frames(self, frames: list[Frame]) -> bool:
        """Sends frames of the history in turn; False if the connection closed first."""
        assert self.subscription is not None  # joined
        for message_id, frame in frames:
            if not await self.send_in_turn(frame):
                return False
            self.subscription.replayed(message_id)
        return True

    async def send_replay(self, replay: Replay) -> None:
        assert self.subscription is not None  # joined
        frames = self.subscription.cursor.start(replay)
        await self.send_frames(frames)
        if replay.gap != protocol.GAP_NONE:
            metrics.history_gaps.labels(replay.gap).inc()
        if self.subprotocol:
            frame = protocol.history_frame(replay.position, len(frames), replay.gap)
            await self.send(text_data=frame)

    async def fill_gap(self, after_id: int, before_id: int) -> bool:
        """Sends the frames after_id < id < before_id from the history; False if the
        history cannot be read now (nothing is sent out of order: the catch-up sends
        the message after them too) or the connection closed."""
        missed = await self.history_between(after_id, before_id)
        if missed is None:
            self.schedule_catch_up()
            return False
        return await self.send_frames(missed)

    async def history_between(self, after_id: int, before_id: int) -> list[Frame] | None:
        """The frames after_id < id < before_id from the history, or None if it cannot
        be read; a client is told (a "history" frame) of any it no longer holds."""
        try:
            frames = await self.replica.broker.between(self.room_name, after_id, before_id)
        except LAYER_ERRORS as error:
            self.log_layer_error("history", error)
            return None
        if len(frames) < before_id - after_id - 1:
            metrics.history_gaps.labels("live").inc()
            if self.subprotocol and self.subscription is not None:
                position = StreamPosition(self.subscription.cursor.epoch, before_id - 1)
                gap = protocol.history_frame(position, len(frames), protocol.GAP_TRIMMED)
                await self.send(text_data=gap)
        return frames

    async def catch_up(self) -> None:
        """Sends what the room got while this replica could not hear it (Redis was
        unreachable or restarted): after Redis comes back (history_catch_up), and
        when a gap could not be filled at once (schedule_catch_up)."""
        subscription = self.subscription
        if subscription is None:
            return
        async with subscription.sending:
            position = subscription.cursor.position
            replay = await self.replica.broker.replay(self.room_name, position)
            await self.send_frames(subscription.cursor.catch_up(replay))

    async def history_catch_up(self, event: Event) -> None:
        """Sent by the replica after Redis came back, after what was queued before it."""
        try:
            await self.catch_up()
        except LAYER_ERRORS as error:
            self.log_layer_error("catch_up", error)
            self.schedule_catch_up()

    def schedule_catch_up(self) -> None:
        if self.catch_up_task is None or self.catch_up_task.done():
            self.catch_up_task = asyncio.get_running_loop().create_task(self.keep_catching_up())

    async def keep_catching_up(self) -> None:
        def failed(error: BaseException) -> None:
            self.log_layer_error("catch_up", error)

        with contextlib.suppress(*LAYER_ERRORS):  # logged; the client resumes on reconnect
            await retry(self.catch_up, CATCH_UP_BACKOFF, failed, after_failure=True)
