"""Faults of the network between the replicas and Redis, on a cluster whose replicas
and Redis are hosts of their own (CLUSTER_NETWORK=netns, deploy/local/network.py):

    partition  the replica serving the most clients cut off from Redis for
               PARTITION_S (iptables DROP both ways in its namespace; nginx still
               reaches it, so its clients stay connected to it), then healed
    slow       CLUSTER_REDIS_DELAY_MS=50 each way and CLUSTER_REDIS_LOSS_PERCENT=1
               between every replica and Redis for the whole run; the injection
               measures the path from a replica's namespace and watches for SLOW_S

During either, the replica's /readyz and metrics are sampled every second; they go
into the fault's notes. Rules live in the replica's namespace, which `down` deletes.
"""

import asyncio
import json
import math
import re
import subprocess
import sys
import time
from collections import Counter

from ..http import get
from ..recovery import first_fresh_delivery

PARTITION_S = 10.0
SLOW_S = 10.0
SAMPLE_INTERVAL_S = 1.0
RECEIVE_AGAIN_TIMEOUT_S = 30.0
PING_SAMPLES = 10
PARTITION_COMMENT = "chat-cluster-partition"
# The cluster each scenario needs, on top of the drill's own settings.
CLUSTER_SETTINGS = {
    "partition": {"CLUSTER_NETWORK": "netns"},
    "slow": {
        "CLUSTER_NETWORK": "netns",
        "CLUSTER_REDIS_DELAY_MS": "50",
        "CLUSTER_REDIS_LOSS_PERCENT": "1",
    },
}
# What a sample keeps of a replica's /metrics.
METRICS = re.compile(
    r"^(chat_connections_open|chat_errors_total\{code=\"\w+\"\}|chat_messages_received_total"
    r"|chat_messages_delivered_total|chat_history_gaps_total\{kind=\"\w+\"\}) (\S+)$",
    re.MULTILINE,
)
# Run in a replica's namespace: PING_SAMPLES Redis PINGs, their round trips in ms.
PING_SCRIPT = """
import json, socket, sys, time
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
times = []
with socket.create_connection((host, port), timeout=10) as s:
    for _ in range(count):
        started = time.monotonic()
        s.sendall(b"PING\\r\\n")
        reply = b""
        while not reply.endswith(b"\\r\\n"):
            reply += s.recv(64)
        times.append((time.monotonic() - started) * 1000)
print(json.dumps(times))
"""


def in_namespace(namespace, *command, timeout=20):
    return subprocess.run(
        ["ip", "netns", "exec", namespace, *command],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )


def redis_addresses(cluster):
    return sorted({address for name, address in cluster.hosts.items() if name.startswith("redis")})


def partition_rules(addresses):
    """The iptables rules (chain and match) that cut a namespace off from `addresses`."""
    comment = ("-m", "comment", "--comment", PARTITION_COMMENT, "-j", "DROP")
    for address in addresses:
        yield ("OUTPUT", "-d", address, *comment)
        yield ("INPUT", "-s", address, *comment)


def dropped_packets(namespace, comment=None):
    """Packets dropped by the DROP rules of `namespace` (those with `comment`, if given)."""
    listing = in_namespace(namespace, "iptables", "-L", "-v", "-n", "-x").stdout
    total = 0
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[2] == "DROP" and (comment is None or comment in line):
            total += int(fields[0])
    return total


def replica_sample(cluster, number, since):
    """The replica's readiness and a few metrics, now: one line of the fault's notes.
    `since` is a time of the event loop, whose clock is time.monotonic()."""
    try:
        status, _, body = get(f"{cluster.replica_url(number)}/readyz", timeout=3)
        readiness = json.loads(body)
        redis = ",".join(f"{k} {v}" for k, v in readiness.get("redis", {}).items())
        ready = f"{status} {readiness.get('status')} ({redis})"
    except (OSError, ValueError) as error:
        status, ready = None, f"no answer ({error!r})"
    try:
        text = get(f"{cluster.replica_url(number)}/metrics", timeout=3)[2]
        metrics = {name.removeprefix("chat_"): float(v) for name, v in METRICS.findall(text)}
    except OSError as error:
        metrics = {"error": repr(error)}
    return {"at_s": round(time.monotonic() - since, 1), "readyz": status, "ready": ready, **metrics}


async def watch(cluster, number, since, seconds):
    """Samples of replica `number` every SAMPLE_INTERVAL_S for `seconds`."""
    loop = asyncio.get_running_loop()
    until = loop.time() + seconds
    samples = []
    while loop.time() < until:
        samples.append(await asyncio.to_thread(replica_sample, cluster, number, since))
        await asyncio.sleep(max(min(SAMPLE_INTERVAL_S, until - loop.time()), 0))
    return samples


def notes(samples):
    """Sample lines for the report, the counters as changes since the first sample."""
    first = samples[0] if samples else {}
    lines = []
    for sample in samples:
        shown = {
            key: (int(value - first.get(key, 0)) if "total" in key else int(value))
            for key, value in sample.items()
            if key not in ("at_s", "readyz", "ready") and isinstance(value, float)
        }
        figures = " ".join(f"{k}={v}" for k, v in shown.items() if v or "open" in k)
        lines.append(f"+{sample['at_s']:>5} s  readyz {sample['ready']}  {figures}")
    return lines


def busiest_replica(cluster, traffic):
    serving = Counter(c.replica for c in traffic.clients if c.ready.is_set())
    name = max(cluster.replica_names(), key=lambda n: (serving[n], n == "chat-1"))
    return name, cluster.replica_names().index(name) + 1


async def receive_again(clients, since, timeout):
    """Until each of `clients` received a message sent after `since`: the worst time, inf
    if one did not within `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        firsts = [first_fresh_delivery(client, since) for client in clients]
        if all(first is not None for first in firsts):
            return max((first - since for first in firsts), default=0.0)
        await asyncio.sleep(0.2)
    return math.inf


async def inject_partition(cluster, traffic, fault):
    loop = asyncio.get_running_loop()
    name, number = busiest_replica(cluster, traffic)
    namespace = cluster.network["namespaces"][name]
    addresses = redis_addresses(cluster)
    cut = [c for c in traffic.clients if c.replica == name and c.ready.is_set()]
    connections = {c.name: c.connection for c in cut}
    fault["action"] = (
        f"{name} cut off from Redis ({', '.join(addresses)}) for {PARTITION_S:g} s, "
        f"serving {len(cut)} clients"
    )
    fault["cut_replica"] = name
    before = await asyncio.to_thread(replica_sample, cluster, number, loop.time())
    for rule in partition_rules(addresses):
        await asyncio.to_thread(in_namespace, namespace, "iptables", "-I", *rule)
    fault["injected_at"] = loop.time()
    try:
        samples = await watch(cluster, number, fault["injected_at"], PARTITION_S)
        fault["partition_dropped_packets"] = await asyncio.to_thread(
            dropped_packets, namespace, PARTITION_COMMENT
        )
    finally:
        for rule in partition_rules(addresses):
            await asyncio.to_thread(in_namespace, namespace, "iptables", "-D", *rule)
    healed = loop.time()
    fault["back_after_s"] = healed - fault["injected_at"]
    fault["unready_samples"] = sum(1 for sample in samples if sample["readyz"] != 200)
    fault["cut_clients"] = len(cut)
    fault["receive_again_s"] = round(await receive_again(cut, healed, RECEIVE_AGAIN_TIMEOUT_S), 2)
    fault["cut_clients_kept_connection"] = sum(c.connection == connections[c.name] for c in cut)
    after = await asyncio.to_thread(replica_sample, cluster, number, fault["injected_at"])
    fault["notes"] = [
        f"{name} before the cut, during it (from the cut), after the heal "
        f"(+{fault['back_after_s']:.1f} s):",
        *notes([before, *samples, after]),
        f"cut clients: {len(cut)}, kept their connection {fault['cut_clients_kept_connection']}"
        f", received a message sent after the heal within {fault['receive_again_s']} s; "
        f"packets dropped by the cut {fault['partition_dropped_packets']}",
    ]


async def inject_slow(cluster, traffic, fault):
    loop = asyncio.get_running_loop()
    name, number = busiest_replica(cluster, traffic)
    namespaces = cluster.network["namespaces"]
    address = redis_addresses(cluster)[0]
    port = cluster.redis_ports[0]
    delay, loss = cluster.network["delay_ms"], cluster.network["loss_percent"]
    fault["action"] = (
        f"{delay} ms each way and {loss:g} % packet loss between the replicas and Redis "
        f"(the whole run); watched {name} for {SLOW_S:g} s"
    )
    fault["injected_at"] = loop.time()
    result = await asyncio.to_thread(
        in_namespace, namespaces[name], sys.executable, "-c", PING_SCRIPT, address, str(port),
        str(PING_SAMPLES),
    )  # fmt: skip
    round_trips = sorted(json.loads(result.stdout))
    fault["one_way_ms"] = round(round_trips[len(round_trips) // 2] / 2, 1)
    samples = await watch(cluster, number, fault["injected_at"], SLOW_S)
    replicas = [namespaces[replica] for replica in cluster.replica_names()]
    dropped = [await asyncio.to_thread(dropped_packets, ns) for ns in replicas]
    fault["dropped_packets"] = sum(dropped)
    fault["loss_percent"] = loss
    fault["back_after_s"] = loop.time() - fault["injected_at"]
    fault["notes"] = [
        f"Redis PING from {name}'s namespace: round trips {round_trips[0]:.0f}-"
        f"{round_trips[-1]:.0f} ms, median one way {fault['one_way_ms']} ms; packets "
        f"dropped between replicas and Redis: {fault['dropped_packets']} {dropped}",
        *notes(samples),
    ]


NETWORK_INJECTORS = {"partition": inject_partition, "slow": inject_slow}
