"""The raw floor: a minimal broadcast server speaking the chat's protocol.

One process, asyncio `websockets`, rooms kept in memory, no Django, Channels,
Redis or nginx. Benchmarks measure it beside the chat to show what the stack
costs above a bare WebSocket server. `--drop-every N` drops every Nth delivery,
so that a test can prove the load test notices lost messages.

    python loadtests/floor_server.py --port 8090
"""

import argparse
import asyncio
import itertools
import json
import re
from collections import defaultdict

from websockets.asyncio.server import broadcast, serve

from chat.protocol import CLOSE_INVALID_ROOM, ROOM_NAME_PATTERN, choose_subprotocol

ROOM_PATH = re.compile(f"^/ws/chat/({ROOM_NAME_PATTERN})/$")
rooms = defaultdict(set)


async def chat(connection, drop_every):
    match = ROOM_PATH.match(connection.request.path)
    if not match:
        await connection.close(CLOSE_INVALID_ROOM, "invalid room name")
        return
    room = rooms[match.group(1)]
    room.add(connection)
    try:
        if connection.subprotocol:
            await connection.send(json.dumps({"type": "welcome", "replica": "floor"}))
        async for frame in connection:
            message = json.loads(frame)["message"]
            text = json.dumps({"type": "chat", "message": message, "sent_via": "floor"})
            members = [m for m in room if drop_every is None or next(deliveries) % drop_every]
            broadcast(members, text)
    finally:
        room.discard(connection)


deliveries = itertools.count(1)


async def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--drop-every", type=int, default=None)
    args = parser.parse_args()
    async with serve(
        lambda connection: chat(connection, args.drop_every),
        args.host,
        args.port,
        # chat.v1 when offered, else none, as the chat does: `subprotocols=` alone
        # answers the tutorial's own clients, which offer none, with HTTP 400.
        select_subprotocol=lambda _connection, offered: choose_subprotocol(offered),
        max_size=2**16,
    ) as server:
        print(f"floor server on ws://{args.host}:{args.port}", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
