"""The chat's own Redis clients (chat.redis_clients)."""

import asyncio
import socket
import struct

import uvloop
from redis.asyncio.sentinel import SentinelManagedConnection

from chat import redis_connections
from chat.redis_clients import chat_redis
from chat.redis_connections import AbortingSentinelConnection


async def linger_of_a_connection():
    """SO_LINGER (on, seconds) of a connection of a chat_redis client's pool."""
    server = await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = chat_redis(f"redis://127.0.0.1:{port}/0")
    pool = client.connection_pool
    connection = pool.connection_class(**pool.connection_kwargs)  # as the pool makes them
    try:
        await connection._connect()  # the socket, without Redis' handshake
        raw = connection._writer.transport.get_extra_info("socket")
        return struct.unpack("ii", raw.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8))
    finally:
        await connection.disconnect()
        await client.aclose()
        server.close()


def test_connections_reset_on_close_so_an_unsent_command_is_dropped():
    """Tests that closing a connection discards what the kernel did not deliver (SO_LINGER
    0): after a timeout during a partition a graceful close left the publish in the
    send queue, and Redis ran it once the network healed, though the sender had been
    answered `unavailable`. Under uvloop, the replicas' loop, and asyncio's."""
    assert asyncio.run(linger_of_a_connection()) == (1, 0)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(linger_of_a_connection()) == (1, 0)


def test_sentinel_connections_reset_too_and_still_follow_the_sentinels():
    """Tests that a client that follows Sentinel gets connections that both ask the
    Sentinels for the primary and reset on close."""
    client = chat_redis({"master_name": "chat", "sentinels": [("127.0.0.1", 1)]})
    connection_class = client.connection_pool.connection_class
    assert issubclass(connection_class, SentinelManagedConnection)
    assert issubclass(connection_class, AbortingSentinelConnection)
    asyncio.run(client.aclose())


def test_the_redis_internals_relied_on_are_there():
    redis_connections.check_internals()
