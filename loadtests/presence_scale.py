"""Presence in one large room: fills a room of each size through nginx on a fresh
3-replica cluster and prints what each client was sent of presence (the figures of
docs/architecture.md, presence). A thin command line over harness.presence_scale.

    python loadtests/presence_scale.py --sizes 200,1000
"""

import argparse
import asyncio
import json
import resource
import tempfile
from pathlib import Path

from harness.cluster import LocalCluster
from harness.presence_scale import fill_room

# Out of the way of 1,000 clients from one address (deploy/defaults.env's LB_WS_*).
SETTINGS = {
    "CHAT_MAX_CONNECTIONS": "10000",
    "LB_WS_CONNECTIONS_PER_ADDRESS": "65535",
    "LB_WS_HANDSHAKES_PER_SECOND": "100000",
    "LB_WS_HANDSHAKE_BURST": "100000",
}


def raise_file_limit(needed):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="200,1000")
    parser.add_argument("--replicas", type=int, default=3)
    arguments = parser.parse_args()
    sizes = [int(size) for size in arguments.sizes.split(",")]
    raise_file_limit(2 * max(sizes) + 256)
    for size in sizes:
        with tempfile.TemporaryDirectory() as run_dir:
            cluster = LocalCluster(Path(run_dir), arguments.replicas, dict(SETTINGS))
            cluster.up()
            try:
                url = cluster.ws_url(f"large-{size}")
                figures = asyncio.run(fill_room(url, cluster.origin, size))
            finally:
                cluster.down()
        print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
