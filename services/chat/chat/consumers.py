"""The chat consumer: the tutorial's AsyncWebsocketConsumer, made to recover. Every
message has an id; a joining or resuming client gets the room's history first; live
messages are sent in id order, each once (chat.recovery decides, this carries out).
The sync consumer of the tutorial, kept for benchmarks, is in chat.sync_consumers.
"""

import asyncio
import contextlib

from autobahn.exception import Disconnected
from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from . import metrics, protocol
from .channel_layer import LAYER_ERRORS, attach, detach
from .recovery import Action, Cursor
from .room import WRITE_FLOW, RoomMember

# A gap the history could not fill at once is retried: 0.2 s, doubling to 5 s, ~1 min.
CATCH_UP_ATTEMPTS = 15
CATCH_UP_FIRST_DELAY = 0.2
CATCH_UP_MAX_DELAY = 5

DUMMY_DATABASE = "django.db.backends.dummy"


def uses_database():
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

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cursor = Cursor()
        # Live delivery and catch_up() both send from the history; one at a time.
        self.delivery_lock = asyncio.Lock()
        self.catch_up_task = None
        self.closes_database_connections = uses_database()
        # Fan-out (deliver_now) from the end of connect(), once its queue is handled,
        # and not while a client's message is published: its ack goes before its echo.
        self.inbox = None
        self.live = False
        self.publishing = False

    @property
    def write_flow(self):
        return (self.scope.get("extensions") or {}).get(WRITE_FLOW)

    async def send_in_turn(self, frame):
        """Sends a chat frame once the socket can take it, so that a client's pace holds
        back its own deliveries (a slow one's wait in its bounded queue from Redis);
        False if the connection closed first (past CHAT_SEND_TIMEOUT, 4008)."""
        write_flow = self.write_flow
        waiting = write_flow.writable() if write_flow is not None else None
        if waiting is not None and not await waiting:
            return False
        await self.send(text_data=frame)
        return True

    async def send(self, text_data=None, bytes_data=None, close=False):
        # Daphne (autobahn) raises Disconnected on a send to a socket whose client has
        # begun to close. Nothing reaches that client any more; raised, it would end
        # the consumer before the frames still queued, such as a message the client
        # sent just before closing, and log a traceback.
        with contextlib.suppress(Disconnected):
            await super().send(text_data, bytes_data, close)

    async def dispatch(self, message):
        try:
            await self.handle(message)
        finally:
            if self.inbox is not None and not message["type"].startswith("websocket."):
                self.inbox.handled()  # a message from the channel layer's queue

    async def handle(self, message):
        # Channels' dispatch first closes stale database connections, a hop to the
        # sync thread per message. With no database there is nothing to close.
        # tests check that this is still Channels' dispatch without that hop.
        if self.closes_database_connections:
            return await super().dispatch(message)
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

        # Join room group before reading its history: a message published in
        # between then arrives live, after the replay, and is skipped by its id.
        history = self.replica.history
        try:
            await self.channel_layer.group_add(self.room_group_name, self.channel_name)
            self.inbox = attach(self.channel_layer, self.room_group_name, self.channel_name, self)
            replay = await history.replay(self.room_name, epoch, last_id)
        except LAYER_ERRORS as error:
            self.log_layer_error("join", error)
            refusal = protocol.ProtocolError(protocol.UNAVAILABLE), protocol.CLOSE_TRY_AGAIN_LATER
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
            await self.replica.start_maintenance()
        except LAYER_ERRORS as error:
            self.log_layer_error("heartbeat", error)
        presence = self.replica.presence
        try:
            # The list once, to the joiner; the room hears a diff (chat.presence). The
            # join is recorded even if the list cannot be read: the leave will be.
            snapshot = await presence.join(self.room_name, self.channel_name, self.name)
            if self.subprotocol:
                await self.send(text_data=snapshot)
        except LAYER_ERRORS as error:
            self.log_layer_error("presence_join", error)
        self.live = True

    async def leave_unfinished(self):
        await self.disconnect(None)

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
        self.live = False
        # Leave room group
        if self.room_group_name:
            detach(self.channel_layer, self.room_group_name, self.channel_name)
            presence = self.replica.presence
            try:
                await self.channel_layer.group_discard(self.room_group_name, self.channel_name)
                if was_joined:
                    await presence.leave(self.room_name, self.channel_name)
            except LAYER_ERRORS as error:
                self.log_layer_error("group_discard", error)

    # Receive message from WebSocket
    async def receive(self, text_data=None, bytes_data=None):
        accepted, error = self.parse(text_data, bytes_data)
        if error:
            await self.send(text_data=error.frame())
            return
        message, ref = accepted
        self.publishing = True
        try:
            await self.publish(message, ref)
        finally:
            self.publishing = False

    async def publish(self, message, ref):
        # Store, number and send to room group in one step
        try:
            with metrics.group_send_duration.time():
                published = await self.replica.history.publish(
                    *self.publish_arguments(message, ref)
                )
            metrics.group_sends.inc()
        except LAYER_ERRORS as error:
            self.log_layer_error("publish", error)
            await self.send(text_data=protocol.ProtocolError(protocol.UNAVAILABLE, ref).frame())
            return
        if ref is not None:
            await self.send(text_data=self.ack(ref, published))

    def deliver_now(self, event, shared):
        """A room's message, offered by the channel layer's fan-out as it arrives from
        Redis, before Channels' queue and dispatch: sent at once, framed once for the
        whole room, when nothing of this connection's is still on its way (its order
        holds) and its socket can take it; True if taken. Anything else, and every
        other kind of event, is left to the queue and chat_message()."""
        if not self.live or event["type"] != "chat.message":
            return False
        if self.inbox.unhandled or self.delivery_lock.locked() or self.publishing:
            return False
        write_flow = self.write_flow
        if write_flow is None or not write_flow.ready_to_write():
            return False
        decision = self.cursor.decide(event["id"], event["epoch"])
        if decision.action is Action.SKIP:
            metrics.duplicates_skipped.inc()
            return True
        if decision.action is Action.FILL_GAP or not write_flow.send_shared(event["frame"], shared):
            return False
        self.cursor.sent(event["id"])
        self.count_delivery(event)
        return True

    # Receive message from room group
    async def chat_message(self, event):
        async with self.delivery_lock:
            decision = self.cursor.decide(event["id"], event["epoch"])
            if decision.action is Action.SKIP:
                metrics.duplicates_skipped.inc()
                return
            if decision.action is Action.FILL_GAP:
                # Missed while this replica was cut off from Redis: from the history.
                missed = await self.history_between(decision.after_id, event["id"])
                if missed is None:
                    # The history cannot be read now: send nothing out of order; the
                    # catch-up sends this message too, after the missing ones.
                    self.schedule_catch_up()
                    return
                if not await self.send_frames(missed):
                    return
            # Send message to WebSocket
            if not await self.send_in_turn(event["frame"]):
                return
            self.cursor.sent(event["id"])
        self.count_delivery(event)

    async def channel_overflow(self, event):
        """Sent by the channel layer when this consumer's queue passed its bound."""
        if self.write_flow is not None:
            self.write_flow.close_slow_consumer("queue")  # counts it, unless closing
            return
        metrics.slow_consumer_disconnects.labels("queue").inc()
        await self.close(code=protocol.CLOSE_SLOW_CONSUMER)

    async def presence_update(self, event):
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

    async def send_frames(self, frames):
        """Sends frames of the history in turn; False if the connection closed first."""
        for message_id, frame in frames:
            if not await self.send_in_turn(frame):
                return False
            self.cursor.sent(message_id)
            metrics.messages_replayed.inc()
        return True

    async def send_replay(self, replay):
        frames = self.cursor.start(replay)
        await self.send_frames(frames)
        if replay.gap != protocol.GAP_NONE:
            metrics.history_gaps.labels(replay.gap).inc()
        if self.subprotocol:
            frame = protocol.history_frame(replay.epoch, replay.last_id, len(frames), replay.gap)
            await self.send(text_data=frame)

    async def history_between(self, after_id, before_id):
        """The frames after_id < id < before_id from the history, or None if it cannot
        be read; a client is told (a "history" frame) of any it no longer holds."""
        try:
            frames = await self.replica.history.between(self.room_name, after_id, before_id)
        except LAYER_ERRORS as error:
            self.log_layer_error("history", error)
            return None
        if len(frames) < before_id - after_id - 1:
            metrics.history_gaps.labels("live").inc()
            if self.subprotocol:
                gap = protocol.history_frame(
                    self.cursor.epoch, before_id - 1, len(frames), protocol.GAP_TRIMMED
                )
                await self.send(text_data=gap)
        return frames

    async def catch_up(self):
        """Sends what the room got while this replica could not hear it (Redis was
        unreachable or restarted): after Redis comes back (history_catch_up), and
        when a gap could not be filled at once (schedule_catch_up)."""
        async with self.delivery_lock:
            replay = await self.replica.history.replay(
                self.room_name, self.cursor.epoch, self.cursor.last_id
            )
            await self.send_frames(self.cursor.catch_up(replay))

    async def history_catch_up(self, event):
        """Sent by the replica after Redis came back, after what was queued before it."""
        try:
            await self.catch_up()
        except LAYER_ERRORS as error:
            self.log_layer_error("catch_up", error)
            self.schedule_catch_up()

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
