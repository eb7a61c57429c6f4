"""Who is in each room, across replicas, and announcing it to the room.

Redis keeps, for each room, a hash of its connections (channel name -> display
name and replica instance), on the Redis that carries the room's group
(chat.channel_layer.shard_of). Each live replica instance refreshes a key on every
Redis that expires after CHAT_PRESENCE_TTL seconds (default 15). A replica that
dies stops refreshing; the next sweep of any replica with members in the same room
then drops the dead instance's entries and tells the room, so a ghost lasts at most
the TTL plus one sweep interval. A replica restarted under the same CHAT_REPLICA_ID
is a new instance: its predecessor's entries expire all the same.

The heartbeat also tells a replica that Redis lost its data (the key is gone).
chat.replica runs the heartbeat and the sweeps, and restores what Redis lost.

With the in-memory channel layer (one process: tests, runserver) the same
interface is kept in a dict.
"""

import asyncio
import json
import uuid
from collections import Counter, defaultdict

from .channel_layer import shard_of
from .protocol import presence_event, room_group_name
from .redis_clients import chat_redis


class Presence:
    """What both kinds share: telling a room who is in it."""

    def __init__(self, channel_layer):
        self.channel_layer = channel_layer

    async def announce(self, room, members=None):
        """Tells every member of the room, on every replica, who is in it."""
        if members is None:
            members = await self.members(room)
        await self.channel_layer.group_send(room_group_name(room), presence_event(members))


class MemoryPresence(Presence):
    sweep_interval = 5.0  # nothing to sweep: one process

    def __init__(self, channel_layer):
        super().__init__(channel_layer)
        self.rooms = {}

    async def join(self, room, channel, name):
        await self.restore(room, channel, name)
        return await self.members(room)

    async def restore(self, room, channel, name):
        self.rooms.setdefault(room, {})[channel] = name

    async def leave(self, room, channel):
        self.rooms.get(room, {}).pop(channel, None)
        return await self.members(room)

    async def members(self, room):
        return sorted(self.rooms.get(room, {}).values())

    async def heartbeat(self):
        return True

    async def sweep(self):
        return []


class RedisPresence(Presence):
    def __init__(self, channel_layer, urls, replica, ttl):
        super().__init__(channel_layer)
        self.clients = [chat_redis(url, decode_responses=True) for url in urls]
        self.instance = f"{replica}/{uuid.uuid4().hex[:8]}"  # this process, not the name
        self.ttl = ttl
        self.sweep_interval = ttl / 3
        self.local_rooms = Counter()  # room -> connections on this replica

    def client_for(self, room):
        return self.clients[self.shard_of(room)]

    def shard_of(self, room):
        return shard_of(self.channel_layer, room_group_name(room), len(self.clients))

    @staticmethod
    def room_key(room):
        return f"chat:presence:{room}"

    @staticmethod
    def instance_key(instance):
        return f"chat:replica:{instance}"

    async def join(self, room, channel, name):
        self.local_rooms[room] += 1
        await self.restore(room, channel, name)
        return await self.members(room)

    async def restore(self, room, channel, name):
        entry = json.dumps({"name": name, "replica": self.instance})
        await self.client_for(room).hset(self.room_key(room), channel, entry)

    async def leave(self, room, channel):
        self.local_rooms[room] -= 1
        if self.local_rooms[room] <= 0:
            del self.local_rooms[room]
        await self.client_for(room).hdel(self.room_key(room), channel)
        return await self.members(room)

    async def members(self, room):
        entries = await self.client_for(room).hgetall(self.room_key(room))
        return sorted(json.loads(entry)["name"] for entry in entries.values())

    async def heartbeat(self):
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

    async def sweep(self):
        """Drops the entries of replicas whose heartbeat expired; returns the rooms
        changed. Three round trips per Redis, however many rooms this replica serves."""
        rooms_of_shard = defaultdict(list)
        for room in self.local_rooms:
            rooms_of_shard[self.shard_of(room)].append(room)
        changed = []
        for shard, rooms in rooms_of_shard.items():
            changed += await self.sweep_shard(self.clients[shard], rooms)
        return changed

    async def sweep_shard(self, client, rooms):
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
            return []
        beats = await client.mget([self.instance_key(instance) for instance in instances])
        dead = {instance for instance, beat in zip(instances, beats, strict=True) if beat is None}
        gone = {
            room: [channel for channel, instance in channels.items() if instance in dead]
            for room, channels in replica_of.items()
        }
        gone = {room: channels for room, channels in gone.items() if channels}
        if gone:
            async with client.pipeline(transaction=False) as pipe:
                for room, channels in gone.items():
                    pipe.hdel(self.room_key(room), *channels)
                await pipe.execute()
        return list(gone)
