"""The steady-state sweep and the identical bursts (loadtests/steady.py): the chat
cluster and the floor server carry repeated load steps in one sitting, the chat never
restarted between them, so the figures are those of replicas that have carried load.

sweep(): every member of every room joins once; one warm-up step per target, then each
rate, `repeats` times, the chat and the floor step by step (the first of the two
alternates), all on the same connections.
bursts(): the same burst `count` times on each target: every member joins, sends for
the step, and every connection is closed before the next burst.
"""

import secrets
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass

from .load_generator import LoadGenerator
from .processes import process_tree

# The async consumer on the pub/sub layer, the product; the per-connection rate limit
# raised so that no step is refused (the generator checks the welcome's limit).
CHAT_SETTINGS = {
    "CHAT_CONSUMER": "async",
    "CHAT_CHANNEL_LAYER": "pubsub",
    "CHAT_RATE_LIMIT": "1000",
    "CHAT_RATE_BURST": "1000",
    "CHAT_API_RATE_LIMIT": "1000",
    "CHAT_API_RATE_BURST": "1000",
}
ROLES = ("replicas", "nginx", "redis", "floor")
FIELDS = [
    "phase",
    "target",
    "round",
    "offered_deliveries_per_s",
    "seconds",
    "sent",
    "api_posts",
    "expected",
    "delivered",
    "delivered_per_s",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "max_ms",
    "lost",
    "duplicated",
    "late",
    "acked",
    "errors",
    "closes",
    "settle_s",
    "server_cpu_s",
    "server_cpu_ms_per_delivery",
    *(f"{role}_cpu_s" for role in ROLES),
    "generator_cpu_s",
    "generator_cpu_percent",
    "generator_busiest_percent",
    "workers",
    "error_codes",
]


class ChatTarget:
    """A LocalCluster seen through nginx; its server CPU is the replicas', nginx's
    (master and workers) and every Redis server's and Sentinel's. With `api_share` N,
    every Nth message the members make is posted to the replicas' HTTP API instead (target
    "chat-api")."""

    def __init__(self, cluster, api_share=0):
        self.cluster = cluster
        self.api_share = api_share
        self.name = "chat-api" if api_share else "chat"

    @property
    def api(self):
        if not self.api_share:
            return None
        urls = [self.cluster.replica_url(n) for n in range(1, self.cluster.replicas + 1)]
        return {"urls": urls, "key": self.cluster.api_key(), "share": self.api_share}

    @property
    def base_url(self):
        return f"ws://127.0.0.1:{self.cluster.lb_port}"

    def server_pids(self):
        # Read at every step: supervisord restarts a process under a new PID.
        pids = self.cluster.process_pids()
        return {
            "replicas": list(self.cluster.replica_pids(pids).values()),
            "nginx": process_tree(pids["nginx"]),
            "redis": [pid for name, pid in pids.items() if name.startswith(("redis", "sentinel"))],
        }


class FloorTarget:
    """A harness.floor.FloorServer: one process."""

    name = "floor"
    api = None

    def __init__(self, floor):
        self.floor = floor

    @property
    def base_url(self):
        return f"ws://127.0.0.1:{self.floor.port}"

    def server_pids(self):
        return {"floor": [self.floor.pid]}


@dataclass
class Load:
    rooms: int = 40
    room_size: int = 10
    workers: int = 3  # generator processes per target
    seconds: float = 15.0  # per step: the send window
    settle_s: float = 5.0  # at most, after the window, for the last deliveries
    message_bytes: int = 100


def row(phase, target, number, result):
    """A StepResult as one CSV row (FIELDS)."""
    figures = asdict(result)
    cpu = figures.pop("server_cpu_by_role")
    codes = figures.pop("error_codes")
    return {
        "phase": phase,
        "target": target.name,
        "round": number,
        **figures,
        **{f"{role}_cpu_s": cpu.get(role, "") for role in ROLES},
        "error_codes": " ".join(f"{code}:{count}" for code, count in sorted(codes.items())),
    }


def generators(stack, targets, load):
    return {
        target.name: stack.enter_context(
            LoadGenerator(
                target.base_url,
                load.rooms,
                load.room_size,
                load.workers,
                load.message_bytes,
                target.api,
            )
        )
        for target in targets
    }


def run_step(generator, target, load, rate):
    return generator.step(rate, load.seconds, load.settle_s, target.server_pids())


def sweep(targets, load, rates, repeats, warmup_rate, warmup_seconds, on_row=print):
    """The steady-state sweep; returns its rows, the warm-up's first (phase "warmup")."""
    rows = []
    prefix = f"steady-{secrets.token_hex(3)}"
    with ExitStack() as stack:
        loads = generators(stack, targets, load)
        for target in targets:
            loads[target.name].connect(f"{prefix}-{target.name}")
        warmup = Load(**{**asdict(load), "seconds": warmup_seconds})
        for target in targets:
            result = run_step(loads[target.name], target, warmup, warmup_rate)
            rows.append(row("warmup", target, 0, result))
            on_row(rows[-1])
        for repeat in range(1, repeats + 1):
            for number, rate in enumerate(rates):
                # Who goes first alternates, so that neither always follows the other.
                order = targets if (repeat + number) % 2 else targets[::-1]
                for target in order:
                    result = run_step(loads[target.name], target, load, rate)
                    rows.append(row("sweep", target, repeat, result))
                    on_row(rows[-1])
        for generator in loads.values():
            generator.disconnect()
    return rows


def bursts(targets, load, rate, count=3, pause_s=5.0, on_row=print):
    """`count` identical bursts on each target (connect, send, close everything), with
    `pause_s` of quiet after each, so that the servers let go of the connections."""
    rows = []
    prefix = f"burst-{secrets.token_hex(3)}"
    with ExitStack() as stack:
        loads = generators(stack, targets, load)
        for number in range(1, count + 1):
            for target in targets:
                generator = loads[target.name]
                # Fresh rooms each time: no history replayed to the joiners.
                generator.connect(f"{prefix}-{number}-{target.name}")
                result = run_step(generator, target, load, rate)
                generator.disconnect()
                rows.append(row("burst", target, number, result))
                on_row(rows[-1])
            time.sleep(pause_s)
    return rows


def burst_ratios(rows):
    """Target -> server CPU per delivery of the last burst over the first's."""
    ratios = {}
    for name in dict.fromkeys(r["target"] for r in rows if r["phase"] == "burst"):
        costs = [
            r["server_cpu_ms_per_delivery"]
            for r in rows
            if r["phase"] == "burst" and r["target"] == name
        ]
        ratios[name] = round(costs[-1] / costs[0], 3) if costs[0] else None
    return ratios
