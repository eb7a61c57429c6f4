"""The replica as a whole: its connections, its fan-out (chat.fanout), the broker and
presence it uses, admission, draining, the presence heartbeat and sweeps, and
recovery after Redis was unreachable or lost its data.

One Replica is built per process, at start-up (chat.apps), and reached with
current(). chatsite.serve starts draining on SIGTERM: /readyz then answers 503 and
new connections are refused with 1012.
"""

import asyncio
import gc
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol, cast

from django.apps import apps
from django.conf import settings
from redis.exceptions import RedisError

from . import events, metrics
from .broker import Broker, HistoryLimits, MemoryBroker, RedisBroker
from .channel_layer import LAYER_ERRORS, RoomLayer
from .fanout import FanOut
from .loop_thread import LoopThread
from .presence import MemoryPresence, Presence, RedisPresence
from .redis_clients import Server, refuses_writes
from .retry import Backoff, retry

logger = logging.getLogger(__name__)

# Seconds between heartbeats: how soon a replica notices Redis is back.
HEARTBEAT_INTERVAL = 1.0
# Recovery steps are tried again: the pools' connections may still be the ones
# Redis dropped, and a second attempt takes a new one.
RECOVERY_BACKOFF = Backoff(first_delay=0.2, max_delay=1.0, attempts=3)
# How long recovery waits for the channel layer to subscribe again: channels_redis'
# receive loop retries once a second (channels_redis/pubsub.py, _do_receiving).
RESUBSCRIBE_TIMEOUT = 5.0

DRAINING = "draining"
FULL = "server_full"


class Connection(Protocol):
    """What the replica knows of a connection joined to a room."""

    channel_name: str
    name: str
    room_name: str
    room_group_name: str | None
    keeps_presence: bool  # in the room's presence
    recovers_history: bool  # answers "history.catch_up" after a Redis outage


class Replica:
    def __init__(
        self,
        name: str,
        channel_layer: RoomLayer,
        broker: Broker,
        presence: Presence,
        redis_servers: list[Server],
        max_connections: int,
        max_event_bytes: int,
    ) -> None:
        self.name = name
        self.channel_layer = channel_layer
        self.broker = broker
        self.presence = presence
        self.event_drops = events.Drops()
        self.fan_out = FanOut(channel_layer.decode, max_event_bytes, self.event_drops)
        channel_layer.hand_messages_to(self.fan_out)
        self.redis_servers = redis_servers  # none with the in-memory layer
        self.max_connections = max_connections
        self.connections: set[Connection] = set()  # joined to a room
        self.draining = False
        self.maintenance: asyncio.Task[None] | None = None
        self.redis_healthy = True
        # The loop that serves this replica's sockets and requests, where server code
        # publishes too (chat.publish); None until it has run something. A process that
        # serves nothing (a worker, a command) publishes on a thread of its own.
        self.serving_loop: asyncio.AbstractEventLoop | None = None
        self.publisher = LoopThread("chat-publisher")

    @classmethod
    def from_settings(cls, channel_layer: RoomLayer) -> "Replica":
        limits = HistoryLimits(
            settings.CHAT_HISTORY_MAX_LENGTH,
            settings.CHAT_HISTORY_MAX_AGE,
            settings.CHAT_HISTORY_ON_JOIN,
        )
        presence_limits = (
            settings.CHAT_PRESENCE_MAX_LISTED,
            settings.CHAT_PRESENCE_COALESCE_MS / 1000,
        )
        broker: Broker
        presence: Presence
        if settings.CHAT_CHANNEL_LAYER == "memory":
            broker = MemoryBroker(channel_layer, limits)
            presence = MemoryPresence(channel_layer, *presence_limits)
            redis_servers = []
        else:
            redis_servers = settings.REDIS_SERVERS
            broker = RedisBroker(
                channel_layer,
                redis_servers,
                limits,
                ack_redis_replicas=settings.REDIS_ACK_REPLICAS,
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
            broker,
            presence,
            redis_servers,
            settings.CHAT_MAX_CONNECTIONS,
            settings.CHAT_MAX_EVENT_BYTES,
        )

    def adopt_running_loop(self) -> None:
        """Notes the running loop as the serving loop, unless one that is not closed is
        known already: called by chatsite.serve at start-up, and by every request and
        connection (under `runserver` or tests, the first one names it)."""
        if self.serving_loop is None or self.serving_loop.is_closed():
            self.serving_loop = asyncio.get_running_loop()

    def publishing_loop(self) -> asyncio.AbstractEventLoop:
        """The serving loop once there is one, else the publisher thread's: the broker's
        Redis clients stay on one loop (a closed serving loop is one of tests)."""
        if self.serving_loop is not None and not self.serving_loop.is_closed():
            return self.serving_loop
        return self.publisher.running_loop()

    # Connections

    def refusal(self) -> str | None:
        """Why a new connection may not join now (DRAINING or FULL), or None."""
        if self.draining:
            return DRAINING
        if len(self.connections) >= self.max_connections:
            return FULL
        return None

    def add(self, connection: Connection) -> None:
        self.connections.add(connection)

    def discard(self, connection: Connection) -> None:
        self.connections.discard(connection)

    def resources(self) -> dict[str, int]:
        """What the replica holds now (chat.metrics.RESOURCES): after load, back to
        where it started."""
        channels, groups = self.channel_layer.occupancy()
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

    def start_draining(self) -> bool:
        """True the first time: new connections are refused from now on."""
        if self.draining:
            return False
        self.draining = True
        metrics.draining.set(1)
        return True

    # Heartbeat, sweeps and recovery

    async def start_maintenance(self) -> None:
        """Starts the heartbeat and sweeps with the first connection: only a replica
        that serves someone has presence entries to keep alive, in Redis."""
        if not self.redis_servers:
            return
        if self.maintenance is None or self.maintenance.done():
            # Set before the first await: joins arriving meanwhile start no other.
            self.maintenance = asyncio.get_running_loop().create_task(self.maintain_forever())
            await self.presence.heartbeat()

    async def maintain_forever(self) -> None:
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

    async def redis_recovered(self, since: float) -> None:
        """Puts back what a Redis restart loses, then sends every connection what its
        room published while this replica could not hear it: once the channel layer
        hears again, subscribed anew after `since` (loop time), the outage's start at
        the latest, so that nothing published in between is neither heard nor caught up."""
        if not await self.channel_layer.wait_subscribed(since, RESUBSCRIBE_TIMEOUT):
            logger.warning("the channel layer did not subscribe again in %s s", RESUBSCRIBE_TIMEOUT)
        connections = list(self.connections)
        rooms = {connection.room_name for connection in connections}
        logger.warning(
            "Redis is back: restoring %d connections, %d rooms", len(connections), len(rooms)
        )
        for connection in connections:
            if connection in self.connections:  # else it left meanwhile: its channel is gone
                await self.restore(connection)

        async def ask_to_catch_up(channel_name: str) -> None:
            # Through the consumer's own queue: a catch-up must come after the messages
            # already waiting there, which may be of the epoch before the restart.
            await self.channel_layer.send(channel_name, {"type": "history.catch_up"})

        # Diffs published while this replica could not hear them are lost: each of
        # its clients is sent a new snapshot, after what waits in its queue.
        steps = [
            (self.presence.ask_for_snapshot, connection.channel_name)
            for connection in connections
            if connection.keeps_presence
        ]
        steps += [
            (ask_to_catch_up, connection.channel_name)
            for connection in connections
            if connection.recovers_history
        ]
        await asyncio.gather(*(recovery_step(step, channel) for step, channel in steps))

    async def restore(self, connection: Connection) -> None:
        """Its group membership (kept in Redis by the core layer; the pub/sub layer's
        subscriptions are renewed by redis-py on reconnect, and this is a no-op) and
        its presence, announced as a join."""
        try:
            if connection.room_group_name is not None:
                await self.channel_layer.group_add(
                    connection.room_group_name, connection.channel_name
                )
            if connection.keeps_presence:
                self.presence.restore(
                    connection.room_name, connection.channel_name, connection.name
                )
        except LAYER_ERRORS as error:
            logger.warning("restoring %s failed: %r", connection.channel_name, error)


async def recovery_step(step: Callable[[str], Awaitable[None]], channel_name: str) -> None:
    """step(channel_name), tried again on a failure; logged if it never succeeds."""
    try:
        await retry(lambda: step(channel_name), RECOVERY_BACKOFF, on_error=ignore)
    except LAYER_ERRORS as error:
        logger.warning("%s of %s failed: %r", step.__name__, channel_name, error)


def ignore(error: BaseException) -> None:
    """Each failed attempt but the last is expected while Redis comes back."""


def live_objects(collect: bool) -> int:
    """Objects the collector tracks, but those frozen at start-up (chatsite.serve).
    With `collect` (an idle replica, where it costs nothing), after a full collection:
    what load left behind, not garbage not yet collected."""
    if collect:
        gc.collect()
    return len(gc.get_objects())


class HoldsReplica(Protocol):
    replica: Replica


def current() -> Replica:
    """The replica this process runs (chat.apps builds it at start-up)."""
    return cast(HoldsReplica, apps.get_app_config("chat")).replica
