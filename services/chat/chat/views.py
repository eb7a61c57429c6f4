import asyncio
from urllib.parse import urlsplit

from django.conf import settings
from django.http import JsonResponse
from django.shortcuts import render
from redis import asyncio as aioredis
from redis.exceptions import RedisError

from . import protocol

# A readiness probe must answer well within the prober's own timeout.
REDIS_PING_TIMEOUT = 1.0


def index(request):
    return render(request, "chat/index.html")


def room(request, room_name):
    if protocol.room_group_name(room_name) is None:
        context = {"room_name": room_name, "rule": protocol.ROOM_NAME_RULE}
        return render(request, "chat/invalid_room.html", context, status=404)
    return render(
        request,
        "chat/room.html",
        {"room_name": room_name, "replica": settings.CHAT_REPLICA_ID},
    )


async def healthz(request):
    """Liveness: the process answers."""
    return JsonResponse({"status": "ok", "replica": settings.CHAT_REPLICA_ID})


async def readyz(request):
    """Readiness: every Redis of the channel layer answers a PING."""
    if settings.CHAT_CHANNEL_LAYER == "memory":
        redis = {"memory": "ok"}
    else:
        results = await asyncio.gather(*(_ping(url) for url in settings.REDIS_URLS))
        redis = {
            _display_name(url): result
            for url, result in zip(settings.REDIS_URLS, results, strict=True)
        }
    ready = all(state == "ok" for state in redis.values())
    return JsonResponse(
        {
            "status": "ok" if ready else "unavailable",
            "replica": settings.CHAT_REPLICA_ID,
            "redis": redis,
        },
        status=200 if ready else 503,
    )


def _display_name(url):
    # host:port only: a Redis URL may carry a password.
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 6379}"


async def _ping(url):
    client = aioredis.Redis.from_url(
        url, socket_timeout=REDIS_PING_TIMEOUT, socket_connect_timeout=REDIS_PING_TIMEOUT
    )
    try:
        await client.ping()
        return "ok"
    except (RedisError, OSError) as error:
        return f"unreachable: {error.__class__.__name__}"
    finally:
        await client.aclose()
