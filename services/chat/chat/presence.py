"""Who is in each room, across replicas.

Redis keeps, for each room, a hash of its connections (channel name -> display
name and replica instance), and for each live replica instance a key that
expires after CHAT_PRESENCE_TTL seconds (default 15) unless the replica refreshes
it. A replica that dies stops refreshing; the next sweep of any replica with
members in the same room then drops the dead instance's entries and tells the
room, so a ghost lasts at most the TTL plus one sweep interval (a third of it).
A replica restarted under the same CHAT_REPLICA_ID is a new instance: its
predecessor's entries expire all the same.

With the in-memory channel layer (one process: tests, runserver) the same
interface is kept in a dict.
"""

import asyncio
import json
import logging
import uuid
from collections import Counter

from django.conf import settings
from redis import asyncio as aioredis
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)


class MemoryPresence:
    def __init__(self):
        self.rooms = {}

    async def join(self, room, channel, name):
        self.rooms.setdefault(room, {})[channel] = name
        return await self.members(room)

    async def leave(self, room, channel):
        self.rooms.get(room, {}).pop(channel, None)
        return await self.members(room)

    async def members(self, room):
        return sorted(self.rooms.get(room, {}).values())


class RedisPresence:
    def __init__(self, url, replica, ttl):
        self.redis = aioredis.Redis.from_url(
            url, socket_timeout=5, socket_connect_timeout=5, decode_responses=True
        )
        self.replica = f"{replica}/{uuid.uuid4().hex[:8]}"  # this process, not the name
        self.ttl = ttl
        self.local_rooms = Counter()  # room -> connections on this replica
        self.sweeper = None

    @staticmethod
    def room_key(room):
        return f"chat:presence:{room}"

    @staticmethod
    def replica_key(replica):
        return f"chat:replica:{replica}"

    async def join(self, room, channel, name):
        if self.sweeper is None or self.sweeper.done():
            await self.heartbeat()
            self.sweeper = asyncio.get_running_loop().create_task(self.sweep_forever())
        self.local_rooms[room] += 1
        entry = json.dumps({"name": name, "replica": self.replica})
        await self.redis.hset(self.room_key(room), channel, entry)
        return await self.members(room)

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
        await self.redis.set(self.replica_key(self.replica), "1", ex=self.ttl)

    async def sweep(self):
        """Drops the entries of replicas whose heartbeat expired; returns the rooms changed."""
        changed = []
        for room in list(self.local_rooms):
            entries = await self.redis.hgetall(self.room_key(room))
            replica_of = {
                channel: json.loads(entry)["replica"] for channel, entry in entries.items()
            }
            alive = {
                replica
                for replica in set(replica_of.values())
                if await self.redis.exists(self.replica_key(replica))
            }
            dead = [channel for channel, replica in replica_of.items() if replica not in alive]
            if dead:
                await self.redis.hdel(self.room_key(room), *dead)
                changed.append(room)
        return changed

    async def sweep_forever(self):
        from .consumers import broadcast_presence

        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                await self.heartbeat()
                for room in await self.sweep():
                    await broadcast_presence(room, await self.members(room))
            except (RedisError, OSError) as error:
                logger.warning("presence sweep failed: %r", error)


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
