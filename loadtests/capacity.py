#!/usr/bin/env python3
"""`make capacity`: idle WebSocket connections held through nginx against the
replicas' memory. Opens connections in steps up to --connections, waits for the
replicas to settle at each step, and reports resident memory (VmRSS from /proc)
of the Daphne replicas, nginx and Redis, and KB per connection. Writes
capacity.csv and capacity.md beside the load test results.
"""

import argparse
import asyncio
import contextlib
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

from websockets.exceptions import ConnectionClosed

from harness.client import join
from harness.cluster import LocalCluster
from harness.http import replica_gauges
from harness.processes import process_tree, total_rss_kb
from harness.results import RESULTS_DIR, markdown_table, write_csv

BATCH = 250  # connections opened at once


def memory(cluster):
    pids = cluster.process_pids()
    return {
        "chat_kb": total_rss_kb(cluster.replica_pids(pids).values()),
        "nginx_kb": total_rss_kb(process_tree(pids["nginx"])),
        "redis_kb": total_rss_kb([pids["redis"]]),
    }


async def open_connections(cluster, count, rooms, opened, readers):
    def one(index):
        return join(cluster, f"idle-{index % rooms}", open_timeout=60, ping_interval=None)

    start = len(opened)
    for first in range(start, start + count, BATCH):
        batch = range(first, min(first + BATCH, start + count))
        clients = await asyncio.gather(*(one(index) for index in batch))
        opened.extend(clients)
        readers.extend(asyncio.create_task(keep_reading(client)) for client in clients)


async def keep_reading(client):
    """Reads what an idle member is sent (its room's presence), as a browser does: a
    client that reads nothing is closed as a slow consumer (4008)."""
    with contextlib.suppress(ConnectionClosed):
        while True:
            await client.socket.recv()


def connections_open(cluster):
    return sum(
        replica["chat_connections_open"]
        for replica in replica_gauges(cluster, ["chat_connections_open"])
    )


async def measure(args):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # This client holds one descriptor per connection; nginx two, spread over its workers.
    limit = min(args.connections, hard - 200)
    steps = sorted({n for n in (0, 1000, 2500, 5000, 7500, 10000, args.connections) if n <= limit})
    run_dir = Path(tempfile.mkdtemp(prefix="capacity-"))
    cluster = LocalCluster(run_dir, args.replicas)
    cluster.up()
    rows, opened, readers = [], [], []
    try:
        for target in steps:
            await open_connections(cluster, target - len(opened), args.rooms, opened, readers)
            await asyncio.sleep(args.settle)
            row = {"connections": len(opened), **memory(cluster)}
            # Every connection is still open on the replicas, not only on this side.
            holding = connections_open(cluster)
            assert holding == len(opened), (holding, row)
            rows.append(row)
            print(json.dumps(row), flush=True)
        # Every connection is still alive: a message reaches one room's members.
        readers[-1].cancel()
        await opened[-1].say("still here")
        frame = await opened[-1].receive_chat(10)
        assert frame["message"] == "still here", frame
    finally:
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*(client.close() for client in opened), return_exceptions=True)
        cluster.down()
    return rows, limit, hard


def per_connection(rows, key):
    first, last = rows[0], rows[-1]
    connections = last["connections"] - first["connections"]
    return (last[key] - first[key]) / connections if connections else float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10000)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--settle", type=float, default=5, help="seconds to wait at each step")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    started = time.monotonic()
    rows, limit, hard = asyncio.run(measure(args))

    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "capacity.csv", rows)
    chat, nginx, redis = (per_connection(rows, k) for k in ("chat_kb", "nginx_kb", "redis_kb"))
    limited = (
        f"Limited to {limit} connections by the file descriptor limit ({hard})."
        if limit < args.connections
        else "No limit was reached."
    )
    table = markdown_table(
        ["connections", "replicas MB", "nginx MB", "Redis MB"],
        [
            [r["connections"], *(f"{r[k] / 1024:.1f}" for k in ("chat_kb", "nginx_kb", "redis_kb"))]
            for r in rows
        ],
    )
    (args.out / "capacity.md").write_text(f"""# Capacity: idle connections against memory

`python loadtests/capacity.py {" ".join(sys.argv[1:])}`, {time.monotonic() - started:.0f} s.

{args.replicas} Daphne replicas (async consumer, pub/sub layer) behind nginx; idle WebSocket
connections opened through nginx, {BATCH} at a time, spread over {args.rooms} rooms; resident
memory (VmRSS) read from /proc {args.settle:.0f} s after each step. {limited} After the last step
a message still reached its room.

**Per idle connection: {chat:.1f} KB in the Daphne replicas**, {nginx:.1f} KB in nginx,
{redis:.1f} KB in Redis (its pub/sub subscriptions).

{table}
""")
    print(f"KB per connection: replicas {chat:.1f}, nginx {nginx:.1f}, redis {redis:.1f}")


if __name__ == "__main__":
    main()
