"""The chat's own Redis clients (history, presence), beside the channel layer's.

Commands time out after REDIS_COMMAND_TIMEOUT, so that a hung Redis is answered
with an error frame rather than silence. A broken connection is retried at once
on a new one, twice at most: after a Redis restart the pool still holds the dead
connections. Only connection errors are retried, not timeouts (each would cost
REDIS_COMMAND_TIMEOUT again), and every command sent is safe to repeat: reads,
and the publish script, which is idempotent through its message ref.

A connection is closed by a reset (SO_LINGER 0), never gracefully: on a timeout
redis-py closes it, and a graceful close leaves what the kernel has not delivered
yet in its send queue, retransmitted for minutes. Cut off from Redis for 10 s, a
replica answered a message `unavailable` and the kernel delivered its publish once
the network healed: the room got a message its sender was told had failed.
"""

import socket
import struct

from django.conf import settings
from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError

RETRIES = 2
ABORT_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets


class AbortingConnection(aioredis.Connection):
    """A Redis connection whose close discards what it has not delivered."""

    async def _connect(self):
        await super()._connect()
        raw = self._writer.transport.get_extra_info("socket")
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, ABORT_ON_CLOSE)


def chat_redis(url, **options):
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=settings.REDIS_POOL_SIZE,
        timeout=settings.REDIS_COMMAND_TIMEOUT,  # waiting for a free connection
        socket_timeout=settings.REDIS_COMMAND_TIMEOUT,
        socket_connect_timeout=settings.REDIS_CONNECTION_OPTIONS["socket_connect_timeout"],
        socket_keepalive=True,
        connection_class=AbortingConnection,
        retry=Retry(
            ExponentialWithJitterBackoff(base=0.05, cap=0.5),
            RETRIES,
            supported_errors=(RedisConnectionError,),
        ),
        **options,
    )
    return aioredis.Redis.from_pool(pool)  # the client owns it: aclose() closes it


def refuses_writes(error):
    """Whether Redis refused a write for memory: at maxmemory with nothing it may evict
    (README: Redis memory). Reads, SUBSCRIBE and PUBLISH still work then."""
    return isinstance(error, OutOfMemoryError)
