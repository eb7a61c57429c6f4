"""redis-py's connections, closed by a reset: the one module that relies on redis-py's
internals (Connection._connect and its _writer), checked at start-up by
check_internals() and bounded in services/chat/requirements.in.

A connection of the chat's own clients is closed by a reset (SO_LINGER 0), never
gracefully: a command that timed out, and was answered `unavailable`, must not reach
Redis later from the kernel's send queue (docs/decisions/0025-reset-on-close.md).
"""

import inspect
import socket
import struct

from redis import asyncio as aioredis
from redis.asyncio.sentinel import SentinelManagedConnection

ABORT_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets


def abort_on_close(connection: aioredis.Connection) -> None:
    writer = connection._writer
    assert writer is not None  # connected
    raw = writer.transport.get_extra_info("socket")
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, ABORT_ON_CLOSE)


class AbortingConnection(aioredis.Connection):
    """A Redis connection whose close discards what it has not delivered."""

    async def _connect(self) -> None:
        await super()._connect()  # type: ignore[no-untyped-call]
        abort_on_close(self)


class AbortingSentinelConnection(SentinelManagedConnection):
    """The same, to whichever primary the Sentinels name."""

    async def _connect(self) -> None:
        await super()._connect()  # type: ignore[no-untyped-call]
        abort_on_close(self)


def check_internals() -> None:
    """Raises RuntimeError if redis-py no longer opens its socket in _connect() and keeps
    the stream writer as _writer: the connections above would then not reset."""
    problems = []
    for connection_class in (aioredis.Connection, SentinelManagedConnection):
        if not callable(getattr(connection_class, "_connect", None)):
            problems.append(f"{connection_class.__name__} has no _connect()")
    if "self._writer" not in inspect.getsource(aioredis.Connection._connect):
        problems.append("Connection._connect() no longer sets self._writer")
    if problems:
        raise RuntimeError(
            "redis-py changed what chat.redis_connections relies on: " + "; ".join(problems)
        )
