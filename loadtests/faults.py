#!/usr/bin/env python3
"""`make chaos`: faults injected into a live local cluster under steady chat traffic,
and what the clients saw; the command line over harness.faults (which
tests/integration/test_faults.py runs smaller):

    python loadtests/faults.py --scenario all --clients 30 --rooms 3 --rate 5

It starts its own cluster (3 replicas, Redis, nginx; harness.cluster.LocalCluster, free
ports, a temporary run directory whose logs/ it keeps) with CHAT_DRAIN_SECONDS=2.
Per scenario, in fresh rooms: independent asyncio `websockets` clients join through
nginx, so that they spread over the replicas; each sends numbered messages at a steady
rate, each with a unique ref. After --warmup seconds the fault is injected:

    kill     SIGKILL to the replica serving the most clients; supervisord restarts it
    redis    Redis restarted (`cluster.py restart redis`): the channel layer's
             connections break and every room's ids, history and refs are lost
    rolling  rolling restart of every replica (`cluster.py restart`): each drains
             (close 1012 over CHAT_DRAIN_SECONDS) and is ready before the next
    shard    on a cluster of its own with REDIS_SHARDS=2 and rooms on both shards,
             the second shard restarted (`cluster.py restart redis-2`) without its data
    failover on a cluster of its own with REDIS_HA=sentinel: SIGKILL to the primary,
             held down until the Sentinels promote a replica, then started again;
             clients resend a message refused with `unavailable` (as the page does)
    api      on the Sentinel cluster: the kill and the failover at once, while a
             service posts --api-rate messages a second through the HTTP API of the
             replicas in turn, each with its own idempotency key, retrying a post that
             got no 2xx (same key, next replica) for up to 30 s; every fourth
             acknowledged post is sent again with its key (harness/faults/publisher.py)
    partition  the replica serving the most clients cut off from Redis for 10 s
             (iptables DROP both ways in its namespace), then healed; nginx still
             reaches it, so its clients stay connected to it
    slow     50 ms each way and 1 % packet loss between the replicas and Redis, for
             the whole run; the injection measures the path and watches a replica

shard, failover, partition and slow run on clusters of their own; partition and slow
with CLUSTER_NETWORK=netns (each replica and Redis a host of its own, in a network
namespace; needs root). During partition and slow, the replica's /readyz and
metrics are sampled every second and printed under the table.

Traffic goes on until --seconds have passed and at least --settle seconds after the
injection finished; then sending stops and the run waits (at most --quiesce seconds)
until every message is answered and every client holds every acknowledged message of
its room.

A client reconnects on any close (short jittered backoff, bounded), resuming with the
last id and epoch it saw; after a reconnect it resends its pending messages (sent, not
answered) with the same ref, which the server acknowledges once; it paces its sends
below the rate limit its welcome frame states. A message refused with `unavailable` is
counted as refused and not resent: that is the honest outcome.

Figures per scenario:
    sent         messages the clients made (one ref each); resent = extra frames sent
    acked        messages acknowledged; refused: answered with an error (unavailable);
                 unanswered: neither, when the run ended
    delivered    distinct messages each client received (min and max over clients)
    lost         acknowledged messages, (epoch, id) from their acks, that some client
                 of their room never received; missing = (message, client) pairs
    duplicated   a frame with the same (epoch, id) received again by one client, across
                 its connections; republished: one ref delivered or acknowledged under
                 two different (epoch, id)
    refused_delivered  messages refused with an error that clients received anyway
    gaps         history frames whose gap was not "none", by kind
    recovery     from the injection until every client has received a message first
                 sent after it; a client that lost its connection after the injection
                 also counts from that loss (the worst client and moment)
    ack_recovery from the injection until every client's sends are acknowledged again
                 (a send made after its last refused one)
    (partition)  receive_again: from the heal until every client of the cut replica
                 received a message sent after the heal; unready samples; packets
                 the cut dropped
    (slow)       one_way_ms: half the median Redis PING from a replica's namespace;
                 packets the loss rules dropped

Targets: for kill and rolling 0 lost, 0 duplicated, 0 republished, every message
answered, and (rolling) every close the clients saw is 1012; for redis every
acknowledged message delivered to every client of its room, everything else refused
with an error, 0 duplicated, nothing refused delivered, and recovery (both) within
--recovery-limit (5) seconds; for shard, the redis targets for the rooms on the
restarted shard, and for the rooms on the other: nothing lost, duplicated, refused or
unanswered, no error frame, reconnect or gap, and no client more than 1 s without a
new message; for failover 0 lost, 0 duplicated, 0 republished, every message
answered and none refused for good, every room keeps its epoch, and acks back within
--recovery-limit of the failover; for api 0 lost, 0 duplicated and 0 republished over the
members' messages and the posts, every post answered 2xx in the end, every resent key
answered with its first id as a duplicate, every room keeps its epoch; for partition 0
lost, 0 duplicated, 0 republished, every message answered (refusals with `unavailable`
are allowed), nothing refused delivered, and the cut replica's clients receive again
within --recovery-limit of the heal; for slow as for kill. Every scenario must show its
fault took effect (partition: packets dropped and /readyz failing during the cut; slow:
one way >= 45 ms, packets dropped).
The exit status is 1 when a target is missed.
"""

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from harness.faults.report import details, table
from harness.faults.scenarios import SCENARIOS, Options, run


def parse_setting(text):
    name, separator, value = text.partition("=")
    if not separator or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, not {text!r}")
    return name, value


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    defaults = Options()
    parser.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    parser.add_argument("--clients", type=int, default=defaults.clients)
    parser.add_argument("--rooms", type=int, default=defaults.rooms)
    parser.add_argument(
        "--rate", type=float, default=defaults.rate, help="messages per second per client"
    )
    parser.add_argument(
        "--seconds", type=float, default=defaults.seconds, help="traffic per scenario, at least"
    )
    parser.add_argument(
        "--warmup", type=float, default=defaults.warmup, help="traffic before the fault"
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=defaults.settle,
        help="traffic after the injection finished, at least",
    )
    parser.add_argument(
        "--quiesce",
        type=float,
        default=defaults.quiesce,
        help="at most this long to wait for answers and deliveries after sending stops",
    )
    parser.add_argument("--drain-seconds", type=int, default=defaults.drain_seconds)
    parser.add_argument("--replicas", type=int, default=defaults.replicas)
    parser.add_argument("--recovery-limit", type=float, default=defaults.recovery_limit)
    parser.add_argument(
        "--api-rate",
        type=float,
        default=defaults.api_rate,
        help="HTTP API posts per second in the api scenario",
    )
    parser.add_argument(
        "--set",
        dest="settings",
        type=parse_setting,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="another service setting for the cluster, e.g. CHAT_RATE_LIMIT=20",
    )
    parser.add_argument("--run-dir", type=Path, help="the cluster's run directory (logs/)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.rooms < 1 or args.rooms > args.clients or args.rate <= 0:
        parser.error("need 1 <= --rooms <= --clients and --rate > 0")
    if args.replicas < 2:
        parser.error("faults need at least 2 replicas")
    options = Options(
        clients=args.clients,
        rooms=args.rooms,
        rate=args.rate,
        seconds=args.seconds,
        warmup=args.warmup,
        settle=args.settle,
        quiesce=args.quiesce,
        drain_seconds=args.drain_seconds,
        replicas=args.replicas,
        recovery_limit=args.recovery_limit,
        api_rate=args.api_rate,
        settings=dict(args.settings),
    )
    scenarios = SCENARIOS if args.scenario == "all" else (args.scenario,)
    started = time.monotonic()
    results, run_dirs = asyncio.run(run(options, scenarios, args.run_dir))
    print()
    print(table(results))
    print()
    for result in results:
        print(details(result))
    elapsed = time.monotonic() - started
    logs = ", ".join(f"{directory}/logs" for directory in run_dirs)
    print(f"\n{len(results)} scenarios in {elapsed:.0f} s; replica logs in {logs}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "command": " ".join(["python loadtests/faults.py", *(argv or sys.argv[1:])]),
            "options": asdict(options),
            "run_dirs": [str(directory) for directory in run_dirs],
            "seconds": round(elapsed, 1),
            "results": results,
        }
        args.json.write_text(json.dumps(document, indent=2, default=str) + "\n")
        print(f"figures written to {args.json}")
    return 0 if all(result["passed"] for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
