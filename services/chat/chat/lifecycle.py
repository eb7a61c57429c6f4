"""The replica as a whole: its live connections, draining, and recovery after Redis
was unreachable or restarted.

chatsite.serve sets `draining` on SIGTERM; /readyz then answers 503 and new
connections are refused with 1012. presence.RedisPresence notices Redis coming
back (its heartbeat fails, or its key is gone because Redis lost its data) and
calls redis_recovered().
"""

import asyncio
import logging

logger = logging.getLogger(__name__)

# The consumers joined to a room in this process.
live_consumers = set()

draining = False

ATTEMPTS = 3
RETRY_DELAY = 0.2  # seconds, growing with each attempt


async def redis_recovered(presence):
    """Puts back what a Redis restart loses, then sends every connection what its
    room published while this replica could not hear it."""
    from .consumers import LAYER_ERRORS, broadcast_presence

    consumers = list(live_consumers)
    rooms = {consumer.room_name for consumer in consumers}
    logger.warning("Redis is back: restoring %d connections, %d rooms", len(consumers), len(rooms))
    for consumer in consumers:
        try:
            # Group memberships: kept in Redis by the core layer. The pub/sub layer's
            # subscriptions are renewed by redis-py on reconnect; this is then a no-op.
            await consumer.channel_layer.group_add(consumer.room_group_name, consumer.channel_name)
            await presence.restore(consumer.room_name, consumer.channel_name, consumer.name)
        except LAYER_ERRORS as error:
            logger.warning("restoring %s failed: %r", consumer.channel_name, error)

    async def send_presence(room):
        await broadcast_presence(room, await presence.members(room))

    async def ask_to_catch_up(consumer):
        # Through the consumer's own queue: a catch-up must come after the messages
        # already waiting there, which may be of the epoch before the restart.
        await consumer.channel_layer.send(consumer.channel_name, {"type": "history.catch_up"})

    steps = [(f"presence of {room}", send_presence, room) for room in rooms]
    steps += [
        (f"catch-up of {consumer.channel_name}", ask_to_catch_up, consumer)
        for consumer in consumers
        if hasattr(consumer, "catch_up")
    ]
    await asyncio.gather(*(retrying(name, step, argument) for name, step, argument in steps))


async def retrying(name, step, argument):
    """Runs step(argument), again after a failure: the pools' connections may still be
    the ones Redis dropped, and a second attempt takes a new one."""
    from .consumers import LAYER_ERRORS

    for attempt in range(1, ATTEMPTS + 1):
        try:
            return await step(argument)
        except LAYER_ERRORS as error:
            if attempt == ATTEMPTS:
                logger.warning("%s failed: %r", name, error)
            else:
                await asyncio.sleep(RETRY_DELAY * attempt)
