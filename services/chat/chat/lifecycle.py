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
    for room in rooms:
        try:
            await broadcast_presence(room, await presence.members(room))
        except LAYER_ERRORS as error:
            logger.warning("presence of %s not sent: %r", room, error)
    catching_up = [consumer.catch_up() for consumer in consumers if hasattr(consumer, "catch_up")]
    for result in await asyncio.gather(*catching_up, return_exceptions=True):
        if isinstance(result, Exception):
            logger.warning("catch-up failed: %r", result)
