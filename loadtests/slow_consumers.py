#!/usr/bin/env python3
"""Slow consumers: sockets that stop reading in a busy room, on a fresh local cluster.
Prints each replica's resident memory before, at its peak and after, how the slow
sockets were closed, whether every reader still got every message, and what a slow
client gets when it resumes:

    python loadtests/slow_consumers.py --slow 50 --senders 10 --rate 8 --seconds 45

--unbounded lifts the service's bounds (CHAT_MAX_SEND_BUFFER 1 GiB, CHAT_SEND_TIMEOUT
an hour), to show what they save.
"""

import argparse
import asyncio
import resource
import tempfile
from pathlib import Path

from harness import slow_consumers
from harness.cluster import LocalCluster
from harness.results import markdown_table

UNBOUNDED = {"CHAT_MAX_SEND_BUFFER": str(2**30), "CHAT_SEND_TIMEOUT": "3600"}


def cluster_settings(scenario, options):
    settings = {
        # Room for the senders' pace and message size, and a history that holds the
        # whole run, so that a resuming client can be checked id by id.
        "CHAT_RATE_LIMIT": str(int(scenario.rate) + 5),
        "CHAT_MAX_MESSAGE_BYTES": str(scenario.message_bytes + 200),
        "CHAT_HISTORY_MAX_LENGTH": "100000",
    }
    if options.unbounded:
        settings.update(UNBOUNDED)
    if options.max_send_buffer:
        settings["CHAT_MAX_SEND_BUFFER"] = str(options.max_send_buffer)
    if options.send_timeout:
        settings["CHAT_SEND_TIMEOUT"] = str(options.send_timeout)
    return settings


def report(outcome, scenario, settings):
    rows = [
        [
            name,
            round(outcome.rss_kb_start[name] / 1024, 1),
            round(outcome.rss_kb_peak[name] / 1024, 1),
            round(outcome.rss_kb_end[name] / 1024, 1),
            outcome.growth_mb(outcome.rss_kb_peak)[name],
        ]
        for name in sorted(outcome.rss_kb_start)
    ]
    print(f"settings: {settings}")
    print(
        f"{scenario.slow} slow sockets, {scenario.senders} senders x {scenario.rate}/s of "
        f"{scenario.message_bytes} bytes for {scenario.seconds} s: sent {outcome.sent}, "
        f"fewest received by a reader {outcome.received_min}"
    )
    print(markdown_table(["replica", "RSS MB start", "peak", "end", "peak growth MB"], rows))
    print(f"slow sockets' ends (close code: sockets): {outcome.slow_closes}")
    print(f"closed as slow consumers, by what was exceeded: {outcome.closed_for}")
    print(
        f"a slow client resuming: missing {outcome.resumed_missing}, "
        f"sent again {outcome.resumed_extra}"
    )


async def main(options):
    scenario = slow_consumers.Scenario(
        slow=options.slow,
        senders=options.senders,
        rate=options.rate,
        message_bytes=options.message_bytes,
        seconds=options.seconds,
    )
    settings = cluster_settings(scenario, options)
    with tempfile.TemporaryDirectory(prefix="slow-consumers-") as run_dir:
        cluster = LocalCluster(Path(run_dir), options.replicas, settings)
        cluster.up()
        try:
            outcome = await slow_consumers.run(cluster, scenario)
        finally:
            cluster.down()
    report(outcome, scenario, settings)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slow", type=int, default=50)
    parser.add_argument("--senders", type=int, default=10)
    parser.add_argument("--rate", type=float, default=8)
    parser.add_argument("--message-bytes", type=int, default=4000)
    parser.add_argument("--seconds", type=float, default=45)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--unbounded", action="store_true", help="lift the service's bounds")
    parser.add_argument("--max-send-buffer", type=int, help="CHAT_MAX_SEND_BUFFER, bytes")
    parser.add_argument("--send-timeout", type=int, help="CHAT_SEND_TIMEOUT, seconds")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(main(parser.parse_args()))
