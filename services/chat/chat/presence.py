"""Who is in each room, across replicas.

Redis keeps, for each room, a hash of its connections (channel name -> display
name and replica instance), and for each live replica instance a key that
expires after CHAT_PRESENCE_TTL seconds (default 15) unless the replica refreshes
it (every second). A replica that dies stops refreshing; the next sweep of any replica with
members in the same room then drops the dead instance's entries and tells the
room, so a ghost lasts at most the TTL plus one sweep interval (a third of it).
A replica restarted under the same CHAT_REPLICA_ID is a new instance: its
predecessor's entries expire all the same.

The heartbeat also tells a replica that Redis was unreachable or lost its data
(the key is gone): it then restores its entries, group memberships and missed
messages (lifecycle.redis_recovered).

With the in-memory channel layer (one process: tests, runserver) the same
interface is kept in a dict.
"""

import asyncio
import json
import logging
import uuid
from collections import Counter

from django.conf import settings
from redis.exceptions import RedisError

from .redis_clients import chat_redis

logger = logging.getLogger(__name__)

# Seconds between heartbeats: how soon a replica notices Redis is back.
HEARTBEAT_INTERVAL = 1.0


class MemoryPresence:
    def __init__(self):
        self.rooms = {}

    async def join(self, room, channel, name):
        self.rooms.setdefault(room, {})[channel] = name
        return await self.members(room)

    async def restore(self, room, channel, name):
        self.rooms.setdefault(room, {})[channel] = name

    async def leave(self, room, channel):
        self.rooms.get(room, {}).pop(channel, None)
        return await self.members(room)

    async def members(self, room):
        return sorted(self.rooms.get(room, {}).values())


class RedisPresence:
    def __init__(self, url, replica, ttl):
        self.redis = chat_redis(url, decode_responses=True)
        self.replica = f"{replica}/{uuid.uuid4().hex[:8]}"  # this process, not the name
        self.ttl = ttl
        self.local_rooms = Counter()  # room -> connections on this replica
        self.sweeper = None
        self.redis_healthy = True

    @staticmethod
    def room_key(room):
        return f"chat:presence:{room}"

    @staticmethod
    def replica_key(replica):
        return f"chat:replica:{replica}"

    async def join(self, room, channel, name):
        if self.sweeper is None or self.sweeper.done():
            # Set before the first await: joins arriving meanwhile must not start
            # sweepers of their own (a burst of joins once started a hundred).
            self.sweeper = asyncio.get_running_loop().create_task(self.sweep_forever())
            await self.heartbeat()
        self.local_rooms[room] += 1
        await self.restore(room, channel, name)
        return await self.members(room)

    async def restore(self, room, channel, name):
        entry = json.dumps({"name": name, "replica": self.replica})
        await self.redis.hset(self.room_key(room), channel, entry)

    async def leave(self, room, channel):
        self.local_rooms[room] -= 1
        if self.local_rooms[room] <= 0:
            del self.local_rooms[room]
        await self.redis.hdel(self.room_key(room), channel)
        return await self.members(room)

    async def members(self, room):
        entries = await self.redis.hgetall(self.room_key(room))
        return sorted(json.loads(entry)["name"] for entry in entries.values())

    async def heartbeat(self):
        """Refreshes this instance's key; False if the key was gone (Redis lost it)."""
        previous = await self.redis.set(self.replica_key(self.replica), "1", ex=self.ttl, get=True)
        return previous is not None

    async def sweep(self):
        """Drops the entries of replicas whose heartbeat expired; returns the rooms
        changed. Three round trips, however many rooms this replica serves."""
        rooms = list(self.local_rooms)
        if not rooms:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for room in rooms:
                pipe.hgetall(self.room_key(room))
            entries_of_rooms = await pipe.execute()
        replica_of = {
            room: {channel: json.loads(entry)["replica"] for channel, entry in entries.items()}
            for room, entries in zip(rooms, entries_of_rooms, strict=True)
        }
        replicas = sorted({replica for room in replica_of.values() for replica in room.values()})
        if not replicas:
            return []
        beats = await self.redis.mget([self.replica_key(replica) for replica in replicas])
        dead = {replica for replica, beat in zip(replicas, beats, strict=True) if beat is None}
        changed = {
            room: [channel for channel, replica in channels.items() if replica in dead]
            for room, channels in replica_of.items()
        }
        changed = {room: channels for room, channels in changed.items() if channels}
        if changed:
            async with self.redis.pipeline(transaction=False) as pipe:
                for room, channels in changed.items():
                    pipe.hdel(self.room_key(room), *channels)
                await pipe.execute()
        return list(changed)

    async def sweep_forever(self):
        from .consumers import broadcast_presence
        from .lifecycle import redis_recovered

        loop = asyncio.get_running_loop()
        next_sweep = loop.time() + self.ttl / 3
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            try:
                key_kept = await self.heartbeat()
                if not (self.redis_healthy and key_kept):
                    self.redis_healthy = True
                    await redis_recovered(self)
                if loop.time() >= next_sweep:
                    next_sweep = loop.time() + self.ttl / 3
                    for room in await self.sweep():
                        await broadcast_presence(room, await self.members(room))
            except (RedisError, OSError) as error:
                if self.redis_healthy:
                    logger.warning("Redis unreachable: %r", error)
                self.redis_healthy = False


_presence = None


def get_presence():
    global _presence
    if _presence is None:
        if settings.CHAT_CHANNEL_LAYER == "memory":
            _presence = MemoryPresence()
        else:
            _presence = RedisPresence(
                settings.REDIS_URLS[0], settings.CHAT_REPLICA_ID, settings.CHAT_PRESENCE_TTL
            )
    return _presence
