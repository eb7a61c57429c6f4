"""The replica as a whole: its connections, admission, draining, the presence
heartbeat and sweeps, and recovery after Redis was unreachable or lost its data.

One Replica is built per process, at start-up (chat.apps), and reached with
current(). chatsite.serve starts draining on SIGTERM: /readyz then answers 503 and
new connections are refused with 1012.
"""

import asyncio
import gc
import logging

from django.apps import apps
from django.conf import settings
from redis.exceptions import RedisError

from . import metrics
from .channel_layer import LAYER_ERRORS, occupancy, wait_subscribed
from .history import MemoryHistory, RedisHistory
from .presence import MemoryPresence, RedisPresence
from .redis_clients import refuses_writes

logger = logging.getLogger(__name__)

# Seconds between heartbeats: how soon a replica notices Redis is back.
HEARTBEAT_INTERVAL = 1.0
# Recovery steps are tried again: the pools' connections may still be the ones
# Redis dropped, and a second attempt takes a new one.
RECOVERY_ATTEMPTS = 3
RECOVERY_RETRY_DELAY = 0.2  # seconds, growing with each attempt
# How long recovery waits for the channel layer to subscribe again: channels_redis'
# receive loop retries once a second (channels_redis/pubsub.py, _do_receiving).
RESUBSCRIBE_TIMEOUT = 5.0

DRAINING = "draining"
FULL = "server_full"


class Replica:
    def __init__(self, name, channel_layer, history, presence, redis_servers, max_connections):
        self.name = name
        self.channel_layer = channel_layer
        self.history = history
        self.presence = presence
        self.redis_servers = redis_servers  # none with the in-memory layer
        self.max_connections = max_connections
        self.connections = set()  # consumers joined to a room
        self.draining = False
        self.maintenance = None
        self.redis_healthy = True

    @classmethod
    def from_settings(cls, channel_layer):
        history_limits = (
            settings.CHAT_HISTORY_MAX_LENGTH,
            settings.CHAT_HISTORY_MAX_AGE,
            settings.CHAT_HISTORY_ON_JOIN,
        )
        presence_limits = (
            settings.CHAT_PRESENCE_MAX_LISTED,
            settings.CHAT_PRESENCE_COALESCE_MS / 1000,
        )
        if settings.CHAT_CHANNEL_LAYER == "memory":
            history = MemoryHistory(channel_layer, *history_limits)
            presence = MemoryPresence(channel_layer, *presence_limits)
            redis_servers = []
        else:
            redis_servers = settings.REDIS_SERVERS
            history = RedisHistory(
                channel_layer,
                redis_servers,
                *history_limits,
                ack_replicas=settings.REDIS_ACK_REPLICAS,
                ack_timeout_ms=settings.REDIS_ACK_TIMEOUT_MS,
            )
            presence = RedisPresence(
                channel_layer,
                redis_servers,
                settings.CHAT_REPLICA_ID,
                settings.CHAT_PRESENCE_TTL,
                *presence_limits,
            )
        return cls(
            settings.CHAT_REPLICA_ID,
            channel_layer,
            history,
            presence,
            redis_servers,
            settings.CHAT_MAX_CONNECTIONS,
        )

    # Connections

    def refusal(self):
        """Why a new connection may not join now (DRAINING or FULL), or None."""
        if self.draining:
            return DRAINING
        if len(self.connections) >= self.max_connections:
            return FULL
        return None

    def add(self, consumer):
        self.connections.add(consumer)

    def discard(self, consumer):
        self.connections.discard(consumer)

    def resources(self):
        """What the replica holds now (chat.metrics.RESOURCES): after load, back to
        where it started."""
        channels, groups = occupancy(self.channel_layer)
        try:
            tasks = len(asyncio.all_tasks())
        except RuntimeError:  # no loop runs in this thread
            tasks = 0
        return {
            "layer_channels": channels,
            "layer_groups": groups,
            "asyncio_tasks": tasks,
            "gc_objects": live_objects(collect=not self.connections),
        }

    def start_draining(self):
        """True the first time: new connections are refused from now on."""
        if self.draining:
            return False
        self.draining = True
        metrics.draining.set(1)
        return True

    # Heartbeat, sweeps and recovery

    async def start_maintenance(self):
        """Starts the heartbeat and sweeps with the first connection: only a replica
        that serves someone has presence entries to keep alive, in Redis."""
        if not self.redis_servers:
            return
        if self.maintenance is None or self.maintenance.done():
            # Set before the first await: joins arriving meanwhile start no other.
            self.maintenance = asyncio.get_running_loop().create_task(self.maintain_forever())
            await self.presence.heartbeat()

    async def maintain_forever(self):
        loop = asyncio.get_running_loop()
        sweep_interval = self.presence.sweep_interval
        next_sweep = loop.time() + sweep_interval
        heard_at = loop.time()  # the last heartbeat Redis answered as expected
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            try:
                key_kept = await self.presence.heartbeat()
                if not (self.redis_healthy and key_kept):
                    self.redis_healthy = True
                    await self.redis_recovered(since=heard_at)
                heard_at = loop.time()
                if loop.time() >= next_sweep:
                    next_sweep = loop.time() + sweep_interval
                    await self.presence.sweep()  # announces the leaves it finds
            except (RedisError, OSError) as error:
                if refuses_writes(error):
                    metrics.redis_writes_refused.labels("heartbeat").inc()
                if self.redis_healthy:
                    logger.warning("Redis unreachable or full: %r", error)
                self.redis_healthy = False

    async def redis_recovered(self, since):
        """Puts back what a Redis restart loses, then sends every connection what its
        room published while this replica could not hear it: once the channel layer
        hears again, subscribed anew after `since` (loop time), the outage's start at
        the latest, so that nothing published in between is neither heard nor caught up."""
        if not await wait_subscribed(self.channel_layer, since, RESUBSCRIBE_TIMEOUT):
            logger.warning("the channel layer did not subscribe again in %s s", RESUBSCRIBE_TIMEOUT)
        consumers = list(self.connections)
        rooms = {consumer.room_name for consumer in consumers}
        logger.warning(
            "Redis is back: restoring %d connections, %d rooms", len(consumers), len(rooms)
        )
        for consumer in consumers:
            if consumer not in self.connections:
                continue  # left meanwhile: its channel is gone
            try:
                # Group memberships: kept in Redis by the core layer. The pub/sub
                # layer's subscriptions are renewed by redis-py on reconnect; this is
                # then a no-op.
                await self.channel_layer.group_add(consumer.room_group_name, consumer.channel_name)
                if consumer.keeps_presence:
                    self.presence.restore(consumer.room_name, consumer.channel_name, consumer.name)
            except LAYER_ERRORS as error:
                logger.warning("restoring %s failed: %r", consumer.channel_name, error)

        async def ask_to_catch_up(consumer):
            # Through the consumer's own queue: a catch-up must come after the messages
            # already waiting there, which may be of the epoch before the restart.
            await self.channel_layer.send(consumer.channel_name, {"type": "history.catch_up"})

        # Diffs published while this replica could not hear them are lost: each of
        # its clients is sent a new snapshot, after what waits in its queue.
        steps = [
            (f"presence of {consumer.channel_name}", self.presence.ask_for_snapshot, consumer)
            for consumer in consumers
            if consumer.keeps_presence
        ]
        steps += [
            (f"catch-up of {consumer.channel_name}", ask_to_catch_up, consumer)
            for consumer in consumers
            if consumer.recovers_history
        ]
        await asyncio.gather(*(retrying(name, step, argument) for name, step, argument in steps))


async def retrying(name, step, argument):
    """Runs step(argument), again after a failure, RECOVERY_ATTEMPTS times at most."""
    for attempt in range(1, RECOVERY_ATTEMPTS + 1):
        try:
            return await step(argument)
        except LAYER_ERRORS as error:
            if attempt == RECOVERY_ATTEMPTS:
                logger.warning("%s failed: %r", name, error)
            else:
                await asyncio.sleep(RECOVERY_RETRY_DELAY * attempt)


def live_objects(collect):
    """Objects the collector tracks, but those frozen at start-up (chatsite.serve).
    With `collect` (an idle replica, where it costs nothing), after a full collection:
    what load left behind, not garbage not yet collected."""
    if collect:
        gc.collect()
    return len(gc.get_objects())


def current():
    """The replica this process runs (chat.apps builds it at start-up)."""
    return apps.get_app_config("chat").replica
