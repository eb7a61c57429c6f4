"""Redis memory per room, per message of history (100 B and 4,000 B, the most a
frame of CHAT_MAX_MESSAGE_BYTES carries with its JSON), per ref and per connection, measured
with MEMORY USAGE on a real 1-replica cluster (docs/operations/redis.md):

    .venv/bin/python loadtests/redis_sizing.py --messages 1000
"""

import argparse
import asyncio
import json
import tempfile

import redis

from harness.client import join, message_frame
from harness.cluster import LocalCluster

CONNECTIONS = 50


async def send(cluster, room, count, size):
    client = await join(cluster, room)
    for number in range(count):
        ref = f"{room}-{number}"
        await client.socket.send(message_frame("m" * size, ref))
        while (await client.receive(timeout=10)).get("ref") != ref:
            pass
    await client.close()


async def measure(cluster, count):
    store = redis.Redis(port=cluster.redis_port)
    figures = {}
    for room, size in (("size-100", 100), ("size-4000", 4000)):
        await send(cluster, room, count, size)
        stream = store.memory_usage(f"chat:history:{room}", samples=0)
        figures[f"history of {count} x {size} B messages"] = stream
        figures[f"per {size} B message"] = round(stream / count)
    figures["room state hash"] = store.memory_usage("chat:room:size-100", samples=0)
    figures["ref key"] = store.memory_usage("chat:ref:size-100:size-100-0", samples=0)
    members = [await join(cluster, "size-presence") for _ in range(CONNECTIONS)]
    await asyncio.sleep(1)  # each member's presence entry is written after its join
    key = "chat:presence:size-presence"
    presence, entries = store.memory_usage(key, samples=0), store.hlen(key)
    figures[f"presence hash of {entries} connections"] = presence
    figures["per connection (presence entry)"] = round(presence / entries)
    for member in members:
        await member.close()
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as run_dir:
        # The default history length; a rate limit that lets one client send quickly.
        cluster = LocalCluster(run_dir, 1, {"CHAT_RATE_LIMIT": "1000", "CHAT_RATE_BURST": "1000"})
        cluster.up()
        try:
            print(json.dumps(asyncio.run(measure(cluster, arguments.messages)), indent=1))
        finally:
            cluster.down()


if __name__ == "__main__":
    main()
