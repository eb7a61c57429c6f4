"""The HTTP API for other services: publish into rooms over HTTP, as Centrifugo's
server API does (docs/http-api.md; docs/api/openapi.yaml describes it).

    POST /api/v1/rooms/<room>/messages   {"text": ..., "sender": ..., "key": ...}
    POST /api/v1/broadcast               {"rooms": [...], "text": ..., "sender": ..., "key": ...}

Each replica serves it on its own port, beside /metrics; the public load balancer
answers 404 there. A request carries `Authorization: Bearer <key>`, one of
CHAT_API_KEYS (compared in constant time; never logged). A message is published by
chat.publish, as send_to_room does. Every answer is JSON; an error is
{"error": {"code": ..., "detail": ...}} with the status of STATUS.
"""

import asyncio
import hmac
import json
import logging
import os
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from django.conf import settings

from . import metrics
from .limits import TokenBucket
from .publish import (
    SYSTEM_SENDER,
    VIA_HTTP,
    Published,
    PublishError,
    check_message,
    publish,
    publish_request,
)
from .replica import current

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = Mapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PREFIX = "/api/"
ROOM_MESSAGES = re.compile(r"/api/v1/rooms/(?P<room>[^/]+)/messages")
BROADCAST = "/api/v1/broadcast"
# The API's paths, as docs/api/openapi.yaml names them (a test keeps the two equal).
ROUTES = ("/api/v1/rooms/{room}/messages", BROADCAST)

MESSAGE_FIELDS = {"text", "sender", "key"}
BROADCAST_FIELDS = {"rooms", *MESSAGE_FIELDS}
# Seconds a client should wait before trying again: a replica that drains is gone
# within CHAT_DRAIN_SECONDS; Redis is back, or failed over, within seconds.
RETRY_AFTER_SECONDS = 1

# Each error code's status; the publish errors of chat.publish among them.
STATUS = {
    "not_found": 404,
    "method_not_allowed": 405,
    "api_disabled": 403,
    "unauthorized": 401,
    "rate_limited": 429,
    "draining": 503,
    "unsupported_media_type": 415,
    "body_too_large": 413,
    "invalid_json": 400,
    "invalid_body": 400,
    "invalid_field": 400,
    "invalid_room": 400,
    "invalid_text": 400,
    "text_too_large": 400,
    "invalid_sender": 400,
    "invalid_key": 400,
    "unavailable": 503,
    "timeout": 503,
    "internal": 500,
}
DETAILS = {
    "not_found": "No such API path; see docs/http-api.md.",
    "method_not_allowed": "Only POST is allowed here.",
    "api_disabled": "No API keys are configured (CHAT_API_KEYS): the API is off.",
    "unauthorized": "Send a valid key as Authorization: Bearer <key>.",
    "rate_limited": "More than {rate} requests per second with this key; retry after a pause.",
    "draining": "This replica is shutting down; send to another.",
    "unsupported_media_type": "Send the body as Content-Type: application/json.",
    "body_too_large": "The body is larger than {limit} bytes.",
    "invalid_json": "The body is not valid JSON.",
    "invalid_body": "The body must be a JSON object.",
    "internal": "The replica failed to answer; this is a bug, logged on the replica.",
}
# The answers that say when to try again (Retry-After).
RETRY_AFTER_CODES = {"rate_limited", "draining", "unavailable", "timeout"}


class ApiError(Exception):
    def __init__(self, code: str, detail: str | None = None, **params: object) -> None:
        super().__init__(code)
        self.code = code
        self.detail = detail or DETAILS[code].format(**params)


class HttpApi:
    """The API as an ASGI application, under PREFIX (mounted by chat.probes)."""

    def __init__(self) -> None:
        # Each key's rate limit, under its settings (which tests change).
        self.buckets: dict[tuple[bytes, int, int], TokenBucket] = {}
        keys_file = settings.CHAT_API_KEYS_FILE
        if keys_file and not os.path.exists(keys_file):
            logger.warning("CHAT_API_KEYS_FILE %s does not exist: it holds no API key", keys_file)
        if not settings.CHAT_API_KEYS:
            logger.info("no API key is configured: the HTTP API answers 403 api_disabled")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            status, body = await self.answer(scope, receive)
        except ApiError as error:
            status, body = STATUS[error.code], error_body(error.code, error.detail)
        except Exception:  # a bug: answered in JSON like the rest, the request not logged
            logger.exception("the HTTP API failed on %s", scope.get("path"))
            status, body = STATUS["internal"], error_body("internal", DETAILS["internal"])
        metrics.api_requests.labels(str(status)).inc()
        await respond(send, status, body)

    async def answer(self, scope: Scope, receive: Receive) -> tuple[int, dict[str, Any]]:
        path = scope["path"]
        room_path = ROOM_MESSAGES.fullmatch(path)
        if room_path is None and path != BROADCAST:
            raise ApiError("not_found")
        if scope["method"] != "POST":
            raise ApiError("method_not_allowed")
        bucket = self.authorize(headers(scope))
        if current().draining:
            raise ApiError("draining")
        content = await read_json(scope, receive)
        if room_path is not None:
            check_fields(content, MESSAGE_FIELDS)
            published = await publish_one(room_path["room"], content)
            return 200, result(published)
        check_fields(content, BROADCAST_FIELDS)
        rooms = broadcast_rooms(content)
        # A broadcast costs a request per room; the first was taken by authorize().
        if not bucket.allow(len(rooms) - 1):
            raise ApiError("rate_limited", rate=settings.CHAT_API_RATE_LIMIT)
        return 200, {"results": await broadcast(rooms, content)}

    def authorize(self, request_headers: dict[bytes, bytes]) -> TokenBucket:
        """The key's rate limit, once it has allowed this request; raises ApiError."""
        keys = [key.encode() for key in settings.CHAT_API_KEYS]
        if not keys:
            raise ApiError("api_disabled")
        scheme, _, given = request_headers.get(b"authorization", b"").partition(b" ")
        given = given.strip()
        found = None
        # Every key compared, in constant time: neither timing nor order tells which.
        for key in keys:
            if hmac.compare_digest(given, key) and scheme.lower() == b"bearer":
                found = key
        if found is None:
            raise ApiError("unauthorized")
        rate, burst = settings.CHAT_API_RATE_LIMIT, settings.CHAT_API_RATE_BURST
        bucket = self.buckets.get((found, rate, burst))
        if bucket is None:
            bucket = self.buckets[found, rate, burst] = TokenBucket(rate, burst)
        if not bucket.allow():
            raise ApiError("rate_limited", rate=settings.CHAT_API_RATE_LIMIT)
        return bucket


async def publish_one(room: str, content: dict[str, Any]) -> Published:
    """Publishes the body's text to `room`, or raises ApiError with the publish error."""
    try:
        request = publish_request(
            room,
            content.get("text"),
            content.get("sender", SYSTEM_SENDER),
            content.get("key"),
        )
        return await publish(request, VIA_HTTP)
    except PublishError as error:
        raise ApiError(error.code, error.detail) from None


def broadcast_rooms(content: dict[str, Any]) -> list[str]:
    """The rooms of a broadcast, checked with the rest of its body: an error that would
    be every room's is the request's."""
    rooms = content.get("rooms")
    limit = settings.CHAT_API_MAX_ROOMS
    if (
        not isinstance(rooms, list)
        or not 0 < len(rooms) <= limit
        or not all(isinstance(room, str) for room in rooms)
        or len(set(rooms)) != len(rooms)
    ):
        detail = f'"rooms" must be a list of 1 to {limit} different room names.'
        raise ApiError("invalid_field", detail)
    try:
        check_message(content.get("text"), content.get("sender", SYSTEM_SENDER), content.get("key"))
    except PublishError as error:
        raise ApiError(error.code, error.detail) from None
    return rooms


async def broadcast(rooms: list[str], content: dict[str, Any]) -> list[dict[str, Any]]:
    """One result per room, in order: published, or its error. The rooms are published
    at once, each on its own (they may live on different shards): after a failure,
    retrying the whole request with the same key publishes only what was not."""

    async def publish_to(room: str) -> dict[str, Any]:
        try:
            return result(await publish_one(room, content))
        except ApiError as error:
            return {"room": room, **error_body(error.code, error.detail)}

    return list(await asyncio.gather(*(publish_to(room) for room in rooms)))


def check_fields(content: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(content) - allowed)
    if unknown:
        fields = ", ".join(f'"{name}"' for name in sorted(allowed))
        raise ApiError("invalid_field", f'Unknown field "{unknown[0]}"; the fields are {fields}.')


async def read_json(scope: Scope, receive: Receive) -> dict[str, Any]:
    """The request's JSON object body, read up to CHAT_API_MAX_BODY_BYTES."""
    request_headers = headers(scope)
    media_type = request_headers.get(b"content-type", b"").split(b";")[0].strip().lower()
    if media_type != b"application/json":
        raise ApiError("unsupported_media_type")
    # chatsite.serve refuses a larger body before it is read; this bounds it under any
    # other server too.
    limit = settings.CHAT_API_MAX_BODY_BYTES
    declared = request_headers.get(b"content-length", b"0")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError("body_too_large", limit=limit)
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ApiError("invalid_body", "The request ended before its body.")
        body += message.get("body", b"")
        if len(body) > limit:
            raise ApiError("body_too_large", limit=limit)
        if not message.get("more_body", False):
            break
    try:
        content = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested too deep
        raise ApiError("invalid_json") from None
    if not isinstance(content, dict):
        raise ApiError("invalid_body")
    return content


def headers(scope: Scope) -> dict[bytes, bytes]:
    return {name.lower(): value for name, value in scope.get("headers", [])}


def result(published: Published) -> dict[str, Any]:
    return {
        "room": published.room,
        "id": published.id,
        "epoch": published.epoch,
        "duplicate": published.duplicate,
    }


def error_body(code: str, detail: str) -> dict[str, Any]:
    return {"error": {"code": code, "detail": detail}}


async def respond(send: Send, status: int, body: dict[str, Any]) -> None:
    response_headers = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
    code = body.get("error", {}).get("code")
    if code in RETRY_AFTER_CODES:
        response_headers.append((b"retry-after", str(RETRY_AFTER_SECONDS).encode()))
    if code == "unauthorized":
        response_headers.append((b"www-authenticate", b'Bearer realm="chat-cluster"'))
    if code == "method_not_allowed":
        response_headers.append((b"allow", b"POST"))
    await send({"type": "http.response.start", "status": status, "headers": response_headers})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})
