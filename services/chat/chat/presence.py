"""Who is in each room, across replicas, and announcing it to the room as diffs.

Redis keeps, for each room, a hash of its connections (channel name -> display
name and replica instance), on the Redis that carries the room's group
(the channel layer's shard_of). A client is sent the room's list once, when it
joins (a "presence" snapshot, at most CHAT_PRESENCE_MAX_LISTED members and the
count); after that the room hears only who joined and left ("presence_diff"),
so filling a room of N costs each member O(N) bytes, not O(N²).

Each replica batches its rooms' joins and leaves: a room's first change is
announced at once, later ones at most once per CHAT_PRESENCE_COALESCE_MS, merged
into one diff. A batch is written to the hash and published in one script
(presence.lua), so the hash and what the room heard agree, and a diff's count is
the room's at that point in Redis' order. A batch Redis does not take is tried
again (chat.retry) until it does, before the changes that came since. A joiner
reads the hash after subscribing to the room: a diff published meanwhile reaches it
after its snapshot, and applying a diff twice changes nothing (ids are added and
dropped as a set).

Each live replica instance refreshes a key on every Redis that expires after
CHAT_PRESENCE_TTL seconds (default 15). A replica that dies stops refreshing; the
next sweep of any replica with members in the same room then drops the dead
instance's entries with a diff, so a ghost lasts at most the TTL plus one sweep
interval. A replica restarted under the same CHAT_REPLICA_ID is a new instance:
its predecessor's entries expire all the same. The heartbeat also tells a replica
that Redis lost its data (the key is gone); chat.replica then restores its
connections (announced as joins) and has each client sent a fresh snapshot.

With the in-memory channel layer (one process: tests, runserver) the same
interface is kept in a dict.
"""

import asyncio
import json
import logging
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from redis.asyncio import Redis

from .channel_layer import RoomLayer
from .protocol import (
    member_id,
    presence_diff_frame,
    presence_diff_parts,
    presence_event,
    presence_frame,
    room_group,
)
from .redis_clients import Server, chat_redis
from .retry import Backoff, retry

logger = logging.getLogger(__name__)

FLUSH_SCRIPT = (Path(__file__).parent / "presence.lua").read_text()
# A batch Redis did not take is tried again after this long, doubling.
FLUSH_BACKOFF = Backoff(first_delay=0.5, max_delay=5.0, attempts=None)

# A member of the presence list: (member id, display name).
Member = tuple[str, str]


@dataclass
class Changes:
    """The joins and leaves of one room that this replica has not announced yet."""

    joined: dict[str, str] = field(default_factory=dict)  # channel -> display name
    left: set[str] = field(default_factory=set)  # channels

    def join(self, channel: str, name: str) -> None:
        self.left.discard(channel)
        self.joined[channel] = name

    def leave(self, channel: str) -> None:
        # Announced even when its join was not: a joiner's snapshot may list it.
        self.joined.pop(channel, None)
        self.left.add(channel)

    def diff(self) -> tuple[list[Member], list[str]]:
        """The frame's joined (id, name) pairs and left ids."""
        joined = [(member_id(channel), name) for channel, name in self.joined.items()]
        return joined, [member_id(channel) for channel in self.left]


class Presence:
    """What both kinds share: batching a room's changes and sending snapshots."""

    sweep_interval: float

    def __init__(self, channel_layer: RoomLayer, max_listed: int, coalesce_seconds: float) -> None:
        self.channel_layer = channel_layer
        self.max_listed = max_listed
        self.coalesce_seconds = coalesce_seconds
        self.pending: dict[str, Changes] = {}  # room -> changes not announced yet
        self.flushers: dict[str, asyncio.Task[None]] = {}  # room -> the task announcing them
        self.local_rooms: Counter[str] = Counter()  # room -> connections on this replica

    async def read(self, room: str, channel: str) -> tuple[list[Member], int, bool]:
        """Up to about max_listed of the room's members, the count, and whether
        `channel` is written."""
        raise NotImplementedError

    async def apply(self, room: str, changes: Changes) -> None:
        """Writes a batch of changes and announces it to the room."""
        raise NotImplementedError

    async def heartbeat(self) -> bool:
        """Keeps this instance's entries alive; False if Redis had lost them."""
        raise NotImplementedError

    async def sweep(self) -> list[str]:
        """Queues the leaves of dead replicas' entries; returns the rooms changed."""
        raise NotImplementedError

    async def join(self, room: str, channel: str, name: str) -> str:
        """Records a connection, announced with the room's next diff; returns the
        snapshot frame for the joiner itself."""
        self.local_rooms[room] += 1
        self.queue(room).join(channel, name)
        return await self.snapshot_frame(room, channel, name)

    async def leave(self, room: str, channel: str) -> None:
        self.local_rooms[room] -= 1
        if self.local_rooms[room] <= 0:
            del self.local_rooms[room]
        self.queue(room).leave(channel)

    def settled(self) -> bool:
        """True when every change has been announced (nothing waits to be written)."""
        return not self.flushers

    def restore(self, room: str, channel: str, name: str) -> None:
        """After a Redis outage: puts a connection back, announced as a join."""
        self.queue(room).join(channel, name)

    async def snapshot_frame(self, room: str, channel: str, name: str) -> str:
        """The room's list for one of its connections, which is in it even if its
        own join is not written yet."""
        members, count, written = await self.read(room, channel)
        if not written:
            members.append((member_id(channel), name))
            count += 1
        members.sort(key=lambda member: (member[1], member[0]))
        return presence_frame(members[: self.max_listed], count)

    async def ask_for_snapshot(self, channel_name: str) -> None:
        """After an outage: has a consumer send its client a new snapshot, through its
        own queue, so that the diffs waiting there come before it."""
        await self.channel_layer.send(channel_name, presence_event())

    def queue(self, room: str) -> Changes:
        changes = self.pending.setdefault(room, Changes())
        if room not in self.flushers:
            loop = asyncio.get_running_loop()
            self.flushers[room] = loop.create_task(self.flush_room(room))
        return changes

    async def flush_room(self, room: str) -> None:
        """Announces a room's changes at once, then at most once per coalescing
        interval while more come; a batch Redis does not take is tried again before
        the changes that came since, so that nothing is announced out of order."""

        def not_announced(error: BaseException) -> None:
            logger.warning("presence of %s not announced: %r", room, error)

        try:
            while room in self.pending:
                await self.announce(room, self.pending.pop(room), not_announced)
                await asyncio.sleep(self.coalesce_seconds)
        finally:
            self.flushers.pop(room, None)

    async def announce(
        self, room: str, changes: Changes, on_error: Callable[[BaseException], None]
    ) -> None:
        await retry(lambda: self.apply(room, changes), FLUSH_BACKOFF, on_error)


class MemoryPresence(Presence):
    sweep_interval = 5.0  # nothing to sweep: one process

    def __init__(self, channel_layer: RoomLayer, max_listed: int, coalesce_seconds: float) -> None:
        super().__init__(channel_layer, max_listed, coalesce_seconds)
        self.rooms: dict[str, dict[str, str]] = {}  # room -> {channel: name}

    async def read(self, room: str, channel: str) -> tuple[list[Member], int, bool]:
        entries = self.rooms.get(room, {})
        members = [(member_id(other), name) for other, name in entries.items()]
        return members, len(entries), channel in entries

    async def apply(self, room: str, changes: Changes) -> None:
        entries = self.rooms.setdefault(room, {})
        entries.update(changes.joined)
        for channel in changes.left:
            entries.pop(channel, None)
        if not entries:
            del self.rooms[room]
        frame = presence_diff_frame(*changes.diff(), len(entries))
        await self.channel_layer.group_send(room_group(room), presence_event(frame))

    async def heartbeat(self) -> bool:
        return True

    async def sweep(self) -> list[str]:
        return []


class RedisPresence(Presence):
    def __init__(
        self,
        channel_layer: RoomLayer,
        servers: list[Server],
        replica: str,
        ttl: int,
        max_listed: int,
        coalesce_seconds: float,
    ) -> None:
        super().__init__(channel_layer, max_listed, coalesce_seconds)
        self.clients: list[Redis] = [
            chat_redis(server, decode_responses=True) for server in servers
        ]
        self.instance = f"{replica}/{uuid.uuid4().hex[:8]}"  # this process, not the name
        self.ttl = ttl
        self.sweep_interval = ttl / 3
        # Registering only hashes the script; it runs on the room's client.
        self.script = self.clients[0].register_script(FLUSH_SCRIPT)

    def client_for(self, room: str) -> Redis:
        return self.clients[self.shard_of(room)]

    def shard_of(self, room: str) -> int:
        return self.channel_layer.shard_of(room_group(room), len(self.clients))

    @staticmethod
    def room_key(room: str) -> str:
        return f"chat:presence:{room}"

    @staticmethod
    def instance_key(instance: str) -> str:
        return f"chat:replica:{instance}"

    async def read(self, room: str, channel: str) -> tuple[list[Member], int, bool]:
        """Up to about max_listed of the room's members (all, in a small room), the
        count, and whether `channel` is written."""
        client, key = self.client_for(room), self.room_key(room)
        async with client.pipeline(transaction=False) as pipe:
            pipe.hlen(key)
            pipe.hexists(key, channel)
            count, written = await pipe.execute()
        entries: dict[str, str] = {}
        cursor = 0
        while self.max_listed:
            cursor, batch = await client.hscan(key, cursor, count=self.max_listed)
            entries.update(cast(dict[str, str], batch))  # decode_responses
            if cursor == 0 or len(entries) >= self.max_listed:
                break
        members = [
            (member_id(other), json.loads(entry)["name"]) for other, entry in entries.items()
        ]
        return members, count, bool(written)

    async def apply(self, room: str, changes: Changes) -> None:
        client = self.client_for(room)
        group = room_group(room)
        head, tail = presence_diff_parts(*changes.diff())
        entries = [
            item
            for channel, name in changes.joined.items()
            for item in (channel, json.dumps({"name": name, "replica": self.instance}))
        ]
        channel = self.channel_layer.group_channel(group)
        count = await self.script(
            keys=[self.room_key(room)],
            args=[head, tail, channel or "", len(changes.joined), *entries, *changes.left],
            client=client,
        )
        if not channel:
            await self.channel_layer.group_send(group, presence_event(f"{head}{count}{tail}"))

    async def heartbeat(self) -> bool:
        """Refreshes this instance's key on every Redis, each whatever the others do (a
        Redis that is down must not let the key expire on the others); False if one had
        lost it, and raises the first error if one could not be reached."""
        key = self.instance_key(self.instance)
        results = await asyncio.gather(
            *(client.set(key, "1", ex=self.ttl, get=True) for client in self.clients),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return all(previous is not None for previous in results)

    async def sweep(self) -> list[str]:
        """Queues the leaves of replicas whose heartbeat expired; returns the rooms
        changed. Two round trips per Redis, however many rooms this replica serves."""
        rooms_of_shard: defaultdict[int, list[str]] = defaultdict(list)
        for room in self.local_rooms:
            rooms_of_shard[self.shard_of(room)].append(room)
        changed: list[str] = []
        for shard, rooms in rooms_of_shard.items():
            gone = await self.dead_entries(self.clients[shard], rooms)
            for room, channels in gone.items():
                for channel in channels:
                    self.queue(room).leave(channel)
            changed += gone
        return changed

    async def dead_entries(self, client: Redis, rooms: list[str]) -> dict[str, list[str]]:
        """room -> the channels in it of instances whose heartbeat expired."""
        async with client.pipeline(transaction=False) as pipe:
            for room in rooms:
                pipe.hgetall(self.room_key(room))
            entries_of_rooms = await pipe.execute()
        replica_of = {
            room: {channel: json.loads(entry)["replica"] for channel, entry in entries.items()}
            for room, entries in zip(rooms, entries_of_rooms, strict=True)
        }
        instances = sorted({instance for room in replica_of.values() for instance in room.values()})
        if not instances:
            return {}
        beats = await client.mget([self.instance_key(instance) for instance in instances])
        dead = {instance for instance, beat in zip(instances, beats, strict=True) if beat is None}
        gone = {
            room: [channel for channel, instance in channels.items() if instance in dead]
            for room, channels in replica_of.items()
        }
        return {room: channels for room, channels in gone.items() if channels}
