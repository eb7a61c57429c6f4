"""The room broker: the whole write path of a message, and the history clients
recover from.

Every chat message gets an id that counts up from 1 in its room, and an epoch: a
random name for one run of that count. The count, the history and the epoch live
in Redis; if Redis loses them (a restart without persistence), the next message
starts a new epoch at id 1, and a client that still holds the old epoch is told
that its missed messages cannot be recovered, instead of being shown wrong ones.

Storing and publishing are one Lua script (publish.lua): a message is either
stored, numbered, published to the room's channel-layer group and acknowledged, or
none of these. Publishing inside the script also means subscribers receive a
room's messages in id order, so a consumer sees a gap in ids only when it really
missed something.

With REDIS_ACK_REPLICAS (Redis with Sentinel), a message is published only after
that many Redis replicas hold it (WAIT): a failover then loses no message anyone was
acknowledged or shown. Publishing is a second step; consumers fill the gaps that its
reordering leaves from the history.

Keys, per room, on the Redis that carries the room's group (chat.channel_layer):
    chat:history:<room>   stream of the last CHAT_HISTORY_MAX_LENGTH frames, id "<id>-0"
    chat:room:<room>      hash: last_id, epoch
    chat:ref:<room>:<ref> the id given to a message's ref (idempotent retries)

Messages older than CHAT_HISTORY_MAX_AGE are not replayed, and a room's history
expires that long after its last message.

RedisBroker and MemoryBroker (the in-memory channel layer: one process, unit tests)
implement Broker.
"""

import asyncio
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from .channel_layer import RoomLayer
from .protocol import StreamPosition, chat_event, chat_frame, chat_frame_parts, room_group
from .recovery import Entry, Frame, Replay, plan_replay
from .redis_clients import Server, chat_redis

PUBLISH_SCRIPT = (Path(__file__).parent / "publish.lua").read_text()
# publish.lua's ARGV, in order (a test reads them from the script).
SCRIPT_ARGUMENTS = (
    "head",
    "middle",
    "tail",
    "sent_at",
    "max_length",
    "history_ttl",
    "state_ttl",
    "new_epoch",
    "channel",
    "ref_ttl",
)

# The room's counter and epoch outlive its history, so that an idle room keeps
# counting where it stopped; a week, or twice the history's age if longer.
ROOM_STATE_MIN_TTL = 7 * 24 * 3600
# How long a client's message ref is remembered: its retries within this are
# acknowledged with the first id instead of being sent again. Clients resend right
# after reconnecting; each ref costs Redis about 100 bytes for this long.
REF_TTL = 600
# A message without a client ref gets one of the server's, so that the Redis
# client may retry the script on a broken connection without publishing twice.
SERVER_REF_TTL = 60


class NotReplicated(RedisError):
    """The primary stored the message, but too few Redis replicas confirmed it in time:
    the sender is told "unavailable" and resends with the same ref."""


@dataclass(frozen=True)
class PublishRequest:
    """A message to number, store and publish to its room."""

    room: str
    text: str
    sender: str  # the display name shown with it
    replica: str  # the replica that took it
    ref: str | None = None  # the client's ref: a retry of it is not published twice
    ref_ttl: int | None = None  # seconds the ref is remembered; None: REF_TTL (SERVER_REF_TTL)
    system: bool = False  # sent by server code (chat.publish), not a member


@dataclass(frozen=True)
class PublishResult:
    id: int
    epoch: str
    duplicate: bool  # a retry of a ref already published: nothing was sent again


@dataclass
class HistoryLimits:
    max_length: int  # messages kept per room
    max_age: int  # seconds a message stays replayable
    on_join: int  # newest messages replayed to a new joiner


class Broker(Protocol):
    """What the consumers and the replica need of the broker."""

    async def publish(self, request: PublishRequest) -> PublishResult: ...

    async def replay(self, room: str, since: StreamPosition | None = None) -> Replay:
        """The messages a joining client is sent first: those after `since` when it
        resumes, else the newest on_join."""

    async def between(self, room: str, after_id: int, before_id: int) -> list[Frame]:
        """The stored frames with after_id < id < before_id, in order."""


def new_epoch() -> str:
    return secrets.token_hex(4)


class RedisBroker:
    def __init__(
        self,
        channel_layer: RoomLayer,
        servers: list[Server],
        limits: HistoryLimits,
        ack_redis_replicas: int = 0,
        ack_timeout_ms: int = 500,
    ) -> None:
        self.channel_layer = channel_layer
        self.clients: list[Redis] = [chat_redis(server) for server in servers]
        self.limits = limits
        self.ack_redis_replicas = ack_redis_replicas
        self.ack_timeout_ms = ack_timeout_ms
        # Registering only hashes the script; it runs on the room's client.
        self.script = self.clients[0].register_script(PUBLISH_SCRIPT)

    def client_for(self, room: str) -> Redis:
        group = room_group(room)
        return self.clients[self.channel_layer.shard_of(group, len(self.clients))]

    @staticmethod
    def keys(room: str, ref: str | None = None) -> list[str]:
        return [f"chat:history:{room}", f"chat:room:{room}", f"chat:ref:{room}:{ref or ''}"]

    def script_arguments(
        self, request: PublishRequest, sent_at: float, channel: str
    ) -> list[str | int]:
        head, middle, tail = chat_frame_parts(
            request.text, request.sender, request.replica, sent_at, request.system
        )
        max_age_ms = self.limits.max_age * 1000
        values: dict[str, str | int] = {
            "head": head,
            "middle": middle,
            "tail": tail,
            "sent_at": repr(sent_at),
            "max_length": self.limits.max_length,
            "history_ttl": max_age_ms,
            "state_ttl": max(ROOM_STATE_MIN_TTL * 1000, 2 * max_age_ms),
            "new_epoch": new_epoch(),
            "channel": channel,
            "ref_ttl": (request.ref_ttl or (REF_TTL if request.ref else SERVER_REF_TTL)) * 1000,
        }
        return [values[name] for name in SCRIPT_ARGUMENTS]

    async def publish(self, request: PublishRequest) -> PublishResult:
        """Numbers, stores and publishes a message in one step (publish.lua)."""
        group = room_group(request.room)
        sent_at = time.time()
        # Replicated first, published after: the script then does not publish.
        channel = None if self.ack_redis_replicas else self.channel_layer.group_channel(group)
        keys = self.keys(request.room, request.ref or f"server-{secrets.token_hex(8)}")
        arguments = self.script_arguments(request, sent_at, channel or "")
        if self.ack_redis_replicas:
            stored = await self.store_replicated(request.room, keys, arguments)
        else:
            stored = await self.script(keys, arguments, client=self.client_for(request.room))
        message_id, epoch, duplicate, frame = stored
        epoch = epoch.decode()
        # With replication, a retry re-publishes what it finds stored: its first attempt
        # may have been stored and never published; members skip ids they already have.
        if frame and not channel and (not duplicate or self.ack_redis_replicas):
            event = chat_event(frame.decode(), message_id, epoch, sent_at)
            await self.channel_layer.group_send(group, event)
        return PublishResult(message_id, epoch, bool(duplicate))

    async def store_replicated(
        self, room: str, keys: list[str], arguments: list[str | int]
    ) -> list[Any]:
        """Runs the script and then WAIT on the same connection (one round trip): the
        message is acknowledged only once ack_redis_replicas hold it, so that a
        failover to one of them loses no acknowledged message."""
        async with self.client_for(room).pipeline(transaction=False) as pipe:
            await self.script(keys, arguments, client=pipe)  # queued: runs at execute()
            pipe.execute_command("WAIT", self.ack_redis_replicas, self.ack_timeout_ms)
            stored, confirmed = await pipe.execute()
        if confirmed < self.ack_redis_replicas:
            raise NotReplicated(
                f"{confirmed} of {self.ack_redis_replicas} Redis replicas"
                f" within {self.ack_timeout_ms} ms"
            )
        result: list[Any] = stored
        return result

    async def replay(self, room: str, since: StreamPosition | None = None) -> Replay:
        stream, state, _ = self.keys(room)
        client = self.client_for(room)
        async with client.pipeline(transaction=True) as pipe:
            pipe.hmget(state, "epoch", "last_id")
            if since is None:
                pipe.xrevrange(stream, count=max(self.limits.on_join, 1))
            else:
                pipe.xrange(stream, min=f"({since.offset}-0", count=self.limits.max_length)
            (epoch, last_id), raw = await pipe.execute()
        epoch = epoch.decode() if epoch else None
        on_join = self.limits.on_join
        if epoch is None:
            # The room's state is gone (evicted, or expired before its stream): the
            # stream's ids belong to no epoch now, and a new one starts at 1.
            raw = []
        elif since is None:
            raw = list(reversed(raw))[-on_join:] if on_join else []
        elif since.epoch not in (None, epoch) and since.offset > 0:
            # Another epoch's ids mean nothing here: replay this epoch from its start.
            raw = await client.xrange(stream, count=self.limits.max_length)
        entries = [parse_entry(entry) for entry in raw]
        room_position = StreamPosition(epoch, int(last_id or 0))
        return plan_replay(entries, room_position, since, self.limits.max_age)

    async def between(self, room: str, after_id: int, before_id: int) -> list[Frame]:
        stream, _, _ = self.keys(room)
        raw = await self.client_for(room).xrange(
            stream, min=f"({after_id}-0", max=f"({before_id}-0"
        )
        return [(entry_id, frame) for entry_id, frame, _ in map(parse_entry, raw or [])]


def parse_entry(entry: Any) -> Entry:
    """(id, frame, sent_at) of a stream entry as redis-py returns it (bytes)."""
    stream_id, fields = entry
    return (
        int(stream_id.split(b"-")[0]),
        fields[b"f"].decode(),
        float(fields[b"t"]),
    )


@dataclass
class MemoryRoom:
    epoch: str
    last_id: int
    entries: deque[Entry]
    refs: dict[str, int] = field(default_factory=dict)


class MemoryBroker:
    """The same for the in-memory channel layer (one process)."""

    def __init__(self, channel_layer: RoomLayer, limits: HistoryLimits) -> None:
        self.channel_layer = channel_layer
        self.limits = limits
        self.rooms: dict[str, MemoryRoom] = {}
        self.lock = asyncio.Lock()

    def room(self, name: str) -> MemoryRoom:
        if name not in self.rooms:
            entries: deque[Entry] = deque(maxlen=self.limits.max_length)
            self.rooms[name] = MemoryRoom(new_epoch(), 0, entries)
        return self.rooms[name]

    async def publish(self, request: PublishRequest) -> PublishResult:
        async with self.lock:  # ids in publish order, as the script gives
            state = self.room(request.room)
            if request.ref is not None and request.ref in state.refs:
                return PublishResult(state.refs[request.ref], state.epoch, True)
            state.last_id += 1
            message_id, epoch, sent_at = state.last_id, state.epoch, time.time()
            frame = chat_frame(
                message_id,
                epoch,
                request.text,
                request.sender,
                request.replica,
                sent_at,
                request.system,
            )
            state.entries.append((message_id, frame, sent_at))
            if request.ref:
                state.refs[request.ref] = message_id
            group = room_group(request.room)
            await self.channel_layer.group_send(
                group, chat_event(frame, message_id, epoch, sent_at)
            )
        return PublishResult(message_id, epoch, False)

    async def replay(self, room: str, since: StreamPosition | None = None) -> Replay:
        state = self.room(room)
        entries = list(state.entries)
        if since is None:
            entries = entries[-self.limits.on_join :] if self.limits.on_join else []
        elif since.epoch is None or since.epoch == state.epoch:
            entries = [entry for entry in entries if entry[0] > since.offset]
        room_position = StreamPosition(state.epoch, state.last_id)
        return plan_replay(entries, room_position, since, self.limits.max_age)

    async def between(self, room: str, after_id: int, before_id: int) -> list[Frame]:
        return [
            (entry_id, frame)
            for entry_id, frame, _ in self.room(room).entries
            if after_id < entry_id < before_id
        ]
