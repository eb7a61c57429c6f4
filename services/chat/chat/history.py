"""Message ids and the bounded history of each room, from which clients recover.

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
that many replicas hold it (WAIT): a failover then loses no message anyone was
acknowledged or shown. Publishing is a second step; consumers fill the gaps that its
reordering leaves from the history.

Keys, per room, on the Redis that carries the room's group (chat.channel_layer):
    chat:history:<room>   stream of the last CHAT_HISTORY_MAX_LENGTH frames, id "<id>-0"
    chat:room:<room>      hash: last_id, epoch
    chat:ref:<room>:<ref> the id given to a message's ref (idempotent retries)

Messages older than CHAT_HISTORY_MAX_AGE are not replayed, and a room's history
expires that long after its last message.

With the in-memory channel layer (one process: unit tests, runserver) the same
interface is kept in memory.
"""

import asyncio
import secrets
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from redis.exceptions import RedisError

from .channel_layer import script_channel, shard_of
from .protocol import chat_event, chat_frame, chat_frame_parts, room_group_name
from .recovery import plan_replay
from .redis_clients import chat_redis

PUBLISH_SCRIPT = (Path(__file__).parent / "publish.lua").read_text()

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
    """The primary stored the message, but too few replicas confirmed it in time: the
    sender is told "unavailable" and resends with the same ref."""


@dataclass
class Published:
    id: int
    epoch: str
    duplicate: bool  # a retry of a ref already published: nothing was sent again


def new_epoch():
    return secrets.token_hex(4)


class RedisHistory:
    def __init__(
        self,
        channel_layer,
        servers,
        max_length,
        max_age,
        on_join,
        ack_replicas=0,
        ack_timeout_ms=500,
    ):
        self.channel_layer = channel_layer
        self.clients = [chat_redis(server) for server in servers]
        self.max_length = max_length
        self.max_age = max_age
        self.on_join = on_join
        self.ack_replicas = ack_replicas
        self.ack_timeout_ms = ack_timeout_ms
        # Registering only hashes the script; it runs on the room's client.
        self.script = self.clients[0].register_script(PUBLISH_SCRIPT)

    def client_for(self, room):
        return self.clients[shard_of(self.channel_layer, room_group_name(room), len(self.clients))]

    @staticmethod
    def keys(room, ref=None):
        return [f"chat:history:{room}", f"chat:room:{room}", f"chat:ref:{room}:{ref or ''}"]

    async def publish(self, room, message, name, replica, ref=None):
        group = room_group_name(room)
        sent_at = time.time()
        # Replicated first, published after: the script then does not publish.
        channel = "" if self.ack_replicas else script_channel(self.channel_layer, group)
        ref_ttl = REF_TTL if ref else SERVER_REF_TTL
        keys = self.keys(room, ref or f"server-{secrets.token_hex(8)}")
        args = [
            *chat_frame_parts(message, name, replica, sent_at),
            repr(sent_at),
            self.max_length,
            self.max_age * 1000,
            max(ROOM_STATE_MIN_TTL, 2 * self.max_age) * 1000,
            new_epoch(),
            channel,
            ref_ttl * 1000,
        ]
        if self.ack_replicas:
            message_id, epoch, duplicate, frame = await self.store_replicated(room, keys, args)
        else:
            client = self.client_for(room)
            message_id, epoch, duplicate, frame = await self.script(keys, args, client=client)
        epoch = epoch.decode()
        # With replication, a retry re-publishes what it finds stored: its first attempt
        # may have been stored and never published; members skip ids they already have.
        if frame and not channel and (not duplicate or self.ack_replicas):
            event = chat_event(frame.decode(), message_id, epoch, sent_at)
            await self.channel_layer.group_send(group, event)
        return Published(message_id, epoch, bool(duplicate))

    async def store_replicated(self, room, keys, args):
        """Runs the script and then WAIT on the same connection (one round trip): the
        message is acknowledged only once ack_replicas replicas hold it, so that a
        failover to one of them loses no acknowledged message."""
        async with self.client_for(room).pipeline(transaction=False) as pipe:
            await self.script(keys, args, client=pipe)  # queued: runs at execute()
            pipe.execute_command("WAIT", self.ack_replicas, self.ack_timeout_ms)
            stored, replicas = await pipe.execute()
        if replicas < self.ack_replicas:
            raise NotReplicated(
                f"{replicas} of {self.ack_replicas} replicas within {self.ack_timeout_ms} ms"
            )
        return stored

    async def replay(self, room, client_epoch=None, client_last_id=None):
        """The messages a joining client is sent first: those after its last id when it
        resumes, else the newest CHAT_HISTORY_ON_JOIN."""
        stream, state, _ = self.keys(room)
        client = self.client_for(room)
        async with client.pipeline(transaction=True) as pipe:
            pipe.hmget(state, "epoch", "last_id")
            if client_last_id is None:
                pipe.xrevrange(stream, count=max(self.on_join, 1))
            else:
                pipe.xrange(stream, min=f"({client_last_id}-0", count=self.max_length)
            (epoch, last_id), raw = await pipe.execute()
        epoch = epoch.decode() if epoch else None
        if epoch is None:
            # The room's state is gone (evicted, or expired before its stream): the
            # stream's ids belong to no epoch now, and a new one starts at 1.
            raw = []
        elif client_last_id is None:
            raw = list(reversed(raw))[-self.on_join :] if self.on_join else []
        elif client_epoch not in (None, epoch) and client_last_id > 0:
            # Another epoch's ids mean nothing here: replay this epoch from its start.
            raw = await client.xrange(stream, count=self.max_length)
        entries = [parse_entry(entry) for entry in raw]
        return plan_replay(
            entries, epoch, int(last_id or 0), client_epoch, client_last_id, self.max_age
        )

    async def between(self, room, after_id, before_id):
        """The stored frames with after_id < id < before_id, in order."""
        stream, _, _ = self.keys(room)
        raw = await self.client_for(room).xrange(
            stream, min=f"({after_id}-0", max=f"({before_id}-0"
        )
        return [(entry_id, frame) for entry_id, frame, _ in map(parse_entry, raw)]


def parse_entry(entry):
    stream_id, fields = entry
    return (
        int(stream_id.split(b"-")[0]),
        fields[b"f"].decode(),
        float(fields[b"t"]),
    )


class MemoryHistory:
    """The same interface for the in-memory channel layer (one process)."""

    def __init__(self, channel_layer, max_length, max_age, on_join):
        self.channel_layer = channel_layer
        self.max_length = max_length
        self.max_age = max_age
        self.on_join = on_join
        self.rooms = {}  # room -> {"epoch", "last_id", "entries": deque, "refs": {}}
        self.lock = asyncio.Lock()

    def room(self, name):
        return self.rooms.setdefault(
            name,
            {
                "epoch": new_epoch(),
                "last_id": 0,
                "entries": deque(maxlen=self.max_length),
                "refs": {},
            },
        )

    async def publish(self, room, message, name, replica, ref=None):
        async with self.lock:  # ids in publish order, as the script gives
            state = self.room(room)
            if ref in state["refs"]:
                return Published(state["refs"][ref], state["epoch"], True)
            state["last_id"] += 1
            message_id, epoch, sent_at = state["last_id"], state["epoch"], time.time()
            frame = chat_frame(message_id, epoch, message, name, replica, sent_at)
            state["entries"].append((message_id, frame, sent_at))
            if ref:
                state["refs"][ref] = message_id
            await self.channel_layer.group_send(
                room_group_name(room), chat_event(frame, message_id, epoch, sent_at)
            )
        return Published(message_id, epoch, False)

    async def replay(self, room, client_epoch=None, client_last_id=None):
        state = self.room(room)
        entries = list(state["entries"])
        if client_last_id is None:
            entries = entries[-self.on_join :] if self.on_join else []
        elif client_epoch is None or client_epoch == state["epoch"]:
            entries = [entry for entry in entries if entry[0] > client_last_id]
        return plan_replay(
            entries, state["epoch"], state["last_id"], client_epoch, client_last_id, self.max_age
        )

    async def between(self, room, after_id, before_id):
        return [
            (entry_id, frame)
            for entry_id, frame, _ in self.room(room)["entries"]
            if after_id < entry_id < before_id
        ]
