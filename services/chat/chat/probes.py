"""Probes, metrics and the HTTP API (chat.http_api), answered before Django so that
they need no allowed Host: kubelets, Prometheus and other services address a replica
by its IP. Every HTTP response, Django's
included, names the replica that served it (X-Chat-Replica)."""

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import make_asgi_app
from redis import asyncio as aioredis
from redis.exceptions import RedisError

from . import http_api, metrics
from .redis_clients import Server, as_server, refuses_writes, sentinel
from .replica import Replica, current

Scope = dict[str, Any]
Message = Mapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# A readiness probe must answer well within the prober's own timeout.
REDIS_PING_TIMEOUT = 1.0
# Readiness writes this key (per replica, short-lived) to learn whether Redis takes
# writes: at maxmemory with nothing to evict it refuses them (docs/operations/redis.md).
WRITE_PROBE_KEY = "chat:readiness:{replica}"
WRITE_PROBE_TTL_MS = 10_000

REDIS_OK = "ok"
# Reachable but out of memory: messages get `unavailable`. The replica stays ready:
# every replica shares the one Redis, so failing them all would only empty the load
# balancer, and joins and deliveries still work.
REDIS_REFUSING_WRITES = "refusing writes (maxmemory)"

LIVENESS_PATH = "/healthz"
READINESS_PATH = "/readyz"
METRICS_PATH = "/metrics"


class ProbeEndpoints:
    """ASGI middleware: /healthz, /readyz, /metrics and /api/ here, the rest to Django;
    the replica header on every response."""

    def __init__(self, application: ASGIApp) -> None:
        self.application = application
        self.metrics_app = make_asgi_app()
        self.api = http_api.HttpApi()
        self.replica_header = (b"x-chat-replica", current().name.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        current().adopt_running_loop()  # chat.publish publishes on it
        path = scope["path"]
        if path == LIVENESS_PATH:
            loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
            health = {"status": "ok", "replica": current().name, "event_loop": loop}
            await self.respond(send, 200, health)
        elif path == READINESS_PATH:
            replica = current()
            ready, status, redis = await check_readiness(replica)
            body = {"status": status, "replica": replica.name, "redis": redis}
            await self.respond(send, 200 if ready else 503, body)
        elif path == METRICS_PATH:
            await check_readiness(current())  # fresh chat_redis_* and chat_ready gauges
            await self.metrics_app(scope, receive, self.with_replica_header(send))
        elif path.startswith(http_api.PREFIX):
            await self.api(scope, receive, self.with_replica_header(send))
        else:
            await self.application(scope, receive, self.with_replica_header(send))

    async def respond(self, send: Send, status: int, body: dict[str, Any]) -> None:
        headers = [(b"content-type", b"application/json"), self.replica_header]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})

    def with_replica_header(self, send: Send) -> Send:
        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.replica_header]}
            await send(message)

        return send_with_header


async def check_readiness(replica: Replica) -> tuple[bool, str, dict[str, str]]:
    """(ready, status, redis states) of the replica now, kept in the chat_redis_* and
    chat_ready gauges."""
    redis = await redis_states(replica.redis_servers, replica.name)
    draining = replica.draining  # after the pings: a drain begun meanwhile counts
    ready, status = readiness(redis, draining)
    metrics.ready.set(ready)
    return ready, status, redis


def readiness(redis: dict[str, str], draining: bool) -> tuple[bool, str]:
    """(ready, status) of a replica whose Redis are in the states `redis`."""
    if draining:
        return False, "draining"
    if not all(state in (REDIS_OK, REDIS_REFUSING_WRITES) for state in redis.values()):
        return False, "unavailable"
    if REDIS_REFUSING_WRITES in redis.values():
        return True, "refusing_writes"
    return True, "ok"


async def redis_states(servers: list[Server], replica_name: str) -> dict[str, str]:
    """Each Redis of the replica, by host:port (with Sentinel, "master host:port" of the
    primary it names): whether it answers and takes writes."""
    if not servers:
        return {"memory": REDIS_OK}
    key = WRITE_PROBE_KEY.format(replica=replica_name)
    states = dict(await asyncio.gather(*(probe(as_server(server), key) for server in servers)))
    record(states)
    return states


def record(states: dict[str, str]) -> None:
    """The states as the chat_redis_up and chat_redis_writable gauges. Cleared first:
    after a failover the old primary's series must go."""
    metrics.redis_up.clear()
    metrics.redis_writable.clear()
    for name, state in states.items():
        metrics.redis_up.labels(name).set(state in (REDIS_OK, REDIS_REFUSING_WRITES))
        metrics.redis_writable.labels(name).set(state == REDIS_OK)


def redis_address(url: str) -> str:
    # host:port only: a Redis URL may carry a password.
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 6379}"


async def probe(server: Server, key: str) -> tuple[str, str]:
    """(name, state) of one server."""
    if "master_name" not in server:
        url = server["address"]
        return redis_address(url), await ping(
            aioredis.Redis.from_url(
                url, socket_timeout=REDIS_PING_TIMEOUT, socket_connect_timeout=REDIS_PING_TIMEOUT
            ),
            key,
        )
    name = server["master_name"]
    manager = sentinel(server, REDIS_PING_TIMEOUT)
    try:
        host, port = await manager.discover_master(name)
    except (RedisError, OSError) as error:
        return name, f"unreachable: {error.__class__.__name__}"
    finally:
        # Each probe's own connections to the Sentinels, closed as the pinged one is.
        await asyncio.gather(*(client.aclose() for client in manager.sentinels))
    client = aioredis.Redis(
        host=host,
        port=port,
        socket_timeout=REDIS_PING_TIMEOUT,
        socket_connect_timeout=REDIS_PING_TIMEOUT,
    )
    return f"{name} {host}:{port}", await ping(client, key)


async def ping(client: aioredis.Redis, key: str) -> str:
    try:
        await client.ping()
        await client.set(key, "1", px=WRITE_PROBE_TTL_MS)
        return REDIS_OK
    except (RedisError, OSError) as error:
        if refuses_writes(error):
            return REDIS_REFUSING_WRITES
        return f"unreachable: {error.__class__.__name__}"
    finally:
        await client.aclose()
