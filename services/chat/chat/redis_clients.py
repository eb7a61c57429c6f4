"""The chat's own Redis clients (history, presence), beside the channel layer's.

A server is one shard's Redis, in channels_redis' host form (settings.REDIS_SERVERS):
{"address": url}, or {"master_name": name, "sentinels": [(host, port), ...]} to follow
whichever Redis Sentinel says is the primary (docs/operations/redis.md). A URL
string is taken as {"address": url}.

Commands time out after REDIS_COMMAND_TIMEOUT, so that a hung Redis is answered
with an error frame rather than silence. A broken connection is retried at once
on a new one, twice at most: after a Redis restart or a failover the pool still holds
the dead connections. Only connection errors are retried, not timeouts (each would
cost REDIS_COMMAND_TIMEOUT again), and every command sent is safe to repeat: reads,
and the publish script, which is idempotent through its message ref.

Connections close with a reset (chat.redis_connections): a command that timed out
must not reach Redis later.
"""

from typing import Any

from django.conf import settings
from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError

from .redis_connections import AbortingConnection, AbortingSentinelConnection

RETRIES = 2

# One shard's Redis: {"address": url} or {"master_name": name, "sentinels": [...]}.
Server = dict[str, Any]


class BlockingSentinelConnectionPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """Connections to the primary Sentinel names, at most max_connections of them: a
    command waits `timeout` for a free one, as with BlockingConnectionPool."""


def as_server(server: Server | str) -> Server:
    return {"address": server} if isinstance(server, str) else server


def sentinel(server: Server, timeout: float) -> Sentinel:
    """A Sentinel client for the server's Sentinels."""
    options = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    return Sentinel(server["sentinels"], sentinel_kwargs=options)


def chat_redis(server: Server | str, **options: Any) -> aioredis.Redis:
    server = as_server(server)
    options = dict(
        max_connections=settings.REDIS_POOL_SIZE,
        timeout=settings.REDIS_COMMAND_TIMEOUT,  # waiting for a free connection
        socket_timeout=settings.REDIS_COMMAND_TIMEOUT,
        socket_connect_timeout=settings.REDIS_CONNECTION_OPTIONS["socket_connect_timeout"],
        socket_keepalive=True,
        retry=Retry(
            ExponentialWithJitterBackoff(base=0.05, cap=0.5),
            RETRIES,
            supported_errors=(RedisConnectionError,),
        ),
        **options,
    )
    pool: aioredis.ConnectionPool
    if "master_name" in server:
        manager = sentinel(server, options["socket_connect_timeout"])
        options["connection_class"] = AbortingSentinelConnection
        pool = BlockingSentinelConnectionPool(  # type: ignore[no-untyped-call]
            server["master_name"], manager, **options
        )
    else:
        options["connection_class"] = AbortingConnection
        pool = aioredis.BlockingConnectionPool.from_url(server["address"], **options)
    return aioredis.Redis.from_pool(pool)  # the client owns it: aclose() closes it


def refuses_writes(error: BaseException) -> bool:
    """Whether Redis refused a write for memory: at maxmemory with nothing it may evict
    (docs/operations/redis.md). Reads, SUBSCRIBE and PUBLISH still work then."""
    return isinstance(error, OutOfMemoryError)
