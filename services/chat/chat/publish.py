"""Publishing into a room from server code: a view, a signal, a Celery task, a
management command. The one supported way to send from outside a consumer
(docs/sending.md):

    from chat.publish import send_to_room
    published = send_to_room("lobby", "Deploy finished", sender="deploy-bot", key=task_id)

A message goes through the broker's publish script as a member's does: it gets the
room's next id, is stored in the history, reaches every member on every replica
once, and is replayed to clients who resume. Its frame says "system": true, which no
client can send, beside the sender's name. An idempotency key makes a retry (Celery
retries a task whose worker died) publish nothing and return the first id.

Every publish of a process runs on one event loop, so that the broker's Redis
clients never cross loops (channels_redis 4 and redis-py 5 bind a connection to the
loop that made it: "Event loop is closed" when a loop of async_to_sync has gone):
the replica's serving loop where one runs (Daphne), else a thread of its own
(a worker, a command): Replica.publishing_loop(). send_to_room blocks its thread until the
message is published; asend_to_room is its twin for code in an event loop.

TutorialMessages takes the tutorial's own event, group_send of
{"type": "chat.message", "message": ...} to a room's group, as such a publish.
"""

import asyncio
import concurrent.futures
import logging
from dataclasses import dataclass

from django.conf import settings
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import events, metrics, protocol
from .broker import PublishRequest, PublishResult
from .channel_layer import LAYER_ERRORS, Event
from .replica import current

logger = logging.getLogger(__name__)

SYSTEM_SENDER = "system"
# Keys live beside the clients' refs (chat:ref:<room>:<ref>); ":" is no ref's.
KEY_PREFIX = "api:"

# The `via` label of chat_service_publishes_total.
VIA_PYTHON = "python"
VIA_HTTP = "http"
VIA_GROUP_SEND = "group_send"

ERRORS = {
    "invalid_room": "Room name must be " + protocol.ROOM_NAME_RULE + ".",
    "invalid_text": "Text must be a string that is not blank.",
    "text_too_large": "Text is larger than {limit} bytes of UTF-8.",
    "invalid_sender": "Sender must be 1 to 32 printable characters.",
    "invalid_key": 'Key must be 1 to 64 characters of A-Z, a-z, 0-9, "_" or "-".',
    "wrong_context": "send_to_room() was called in a running event loop: await asend_to_room().",
    "unavailable": "Redis could not take or confirm the message: retry with the same key,"
    " which publishes it once.",
    "timeout": "No answer within CHAT_PUBLISH_TIMEOUT: retry with the same key, which"
    " publishes it once.",
}


# The codes after which a retry (with the same key) may succeed.
RETRYABLE = ("unavailable", "timeout")


class PublishError(Exception):
    """A message that was not published, or not confirmed: `code` is a key of ERRORS.
    After "unavailable" or "timeout" Redis may hold it (it failed as it answered, or a
    WAIT was not met); a retry with the same key publishes it once either way."""

    def __init__(self, code: str, **params: object) -> None:
        self.code = code
        self.detail = ERRORS[code].format(**params) if params else ERRORS[code]
        super().__init__(f"{code}: {self.detail}")


@dataclass(frozen=True)
class Published:
    room: str
    id: int
    epoch: str
    duplicate: bool  # the key was published before: nothing was sent again


def check_message(text: object, sender: object, key: object) -> None:
    """Raises PublishError if the text, sender or key may not be published."""
    if not isinstance(text, str) or not text.strip():
        raise PublishError("invalid_text")
    try:
        size = len(text.encode())
    except UnicodeEncodeError:  # a lone surrogate ("\ud800" in JSON): no UTF-8 text
        raise PublishError("invalid_text") from None
    limit = settings.CHAT_MAX_MESSAGE_BYTES
    if size > limit:
        raise PublishError("text_too_large", limit=limit)
    if not (
        isinstance(sender, str)
        and 0 < len(sender.strip()) <= protocol.NAME_MAX_LENGTH
        and sender.isprintable()
    ):
        raise PublishError("invalid_sender")
    if key is not None and not (isinstance(key, str) and protocol.REF_PATTERN.fullmatch(key)):
        raise PublishError("invalid_key")


def publish_request(room: object, text: object, sender: object, key: object) -> PublishRequest:
    """The broker's request for a message of server code, or raises PublishError."""
    if not isinstance(room, str) or protocol.room_group_name(room) is None:
        raise PublishError("invalid_room")
    check_message(text, sender, key)
    assert isinstance(text, str)  # checked
    assert isinstance(sender, str)
    return PublishRequest(
        room,
        text,
        sender.strip(),
        current().name,
        ref=None if key is None else f"{KEY_PREFIX}{key}",
        ref_ttl=None if key is None else settings.CHAT_PUBLISH_KEY_TTL,
        system=True,
    )


def send_to_room(
    room: str, text: str, *, sender: str = SYSTEM_SENDER, key: str | None = None
) -> Published:
    """Publishes `text` to `room` from sync code and returns its id and epoch; raises
    PublishError. Not for a thread that runs an event loop: there, asend_to_room()."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass  # no loop runs in this thread: the one place it may block
    else:
        raise PublishError("wrong_context")
    request = publish_request(room, text, sender, key)
    future = asyncio.run_coroutine_threadsafe(
        publish_here(request, VIA_PYTHON), current().publishing_loop()
    )
    try:
        return future.result(timeout=settings.CHAT_PUBLISH_TIMEOUT)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise PublishError("timeout") from None


async def asend_to_room(
    room: str, text: str, *, sender: str = SYSTEM_SENDER, key: str | None = None
) -> Published:
    """send_to_room() for code in an event loop, whichever loop it is."""
    return await publish(publish_request(room, text, sender, key), VIA_PYTHON)


async def publish(request: PublishRequest, via: str) -> Published:
    """Publishes on the process's publishing loop, from whichever loop this runs on."""
    loop = current().publishing_loop()
    if asyncio.get_running_loop() is loop:
        return await publish_here(request, via)
    future = asyncio.run_coroutine_threadsafe(publish_here(request, via), loop)
    try:
        return await asyncio.wait_for(asyncio.wrap_future(future), settings.CHAT_PUBLISH_TIMEOUT)
    except TimeoutError:
        raise PublishError("timeout") from None


async def publish_here(request: PublishRequest, via: str) -> Published:
    """Publishes on the running loop, which must be the publishing loop."""
    try:
        async with asyncio.timeout(settings.CHAT_PUBLISH_TIMEOUT):
            result: PublishResult = await current().broker.publish(request)
    except (TimeoutError, RedisTimeoutError):  # before LAYER_ERRORS: both are OSErrors
        logger.warning("publishing to %s timed out", request.room)
        raise PublishError("timeout") from None
    except LAYER_ERRORS as error:
        logger.warning("publishing to %s failed: %r", request.room, error)
        raise PublishError("unavailable") from None
    metrics.service_publishes.labels(via).inc()
    return Published(request.room, result.id, result.epoch, result.duplicate)


class TutorialMessages:
    """Takes the tutorial's group_send of {"type": "chat.message", "message": ...} to a
    room's group as a publish from server code (chat.channel_layer.ChatLayer.group_send):
    numbered, stored and sent to every member once. A "sender" field names the sender.
    A message that cannot be published raises PublishError to the caller."""

    async def intercept(self, group: str, message: Event) -> bool:
        if not events.is_tutorial_message(message):
            return False
        room = protocol.room_of_group(group)
        if room is None:
            return False
        sender = message.get("sender", SYSTEM_SENDER)
        request = publish_request(room, message["message"], sender, message.get("key"))
        await publish(request, VIA_GROUP_SEND)
        return True
