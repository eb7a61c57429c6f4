"""The capacity model (docs/performance/capacity-model.md): what a target of connections
and deliveries a second needs with this stack, from this project's own measurements.

    python loadtests/capacity_model.py            # the documentation's table
    python loadtests/capacity_model.py --connections 250000 --deliveries 120000

Every input is an option whose default is a measurement named in its help; a new
measurement updates the default, and the documentation's table is generated from it.
"""

import argparse
import math
from dataclasses import dataclass

MIB = 1024


@dataclass(frozen=True)
class Inputs:
    # Server CPU per delivery by part, at 4,000 deliveries/s in rooms of 10 on 3 replicas,
    # the mean of three runs: loadtests/results/2026-12-02-capacity-model (steady-N.csv,
    # replicas_cpu_s and nginx_cpu_s ÷ delivered).
    replica_ms_per_delivery: float = 0.192
    nginx_ms_per_delivery: float = 0.029
    # Redis CPU and commands per message (one Redis, 3 replicas subscribed): INFO cpu and
    # commandstats over the same runs (redis-N.csv).
    redis_ms_per_message: float = 0.155
    redis_commands_per_message: float = 9.1
    # Memory per idle connection and at rest (RSS): make capacity,
    # loadtests/results/2026-12-01-steady/capacity.csv.
    replica_kb_per_connection: float = 36.8
    nginx_kb_per_connection: float = 21.9
    redis_kb_per_connection: float = 0.7
    replica_base_mb: float = 79
    # The shipped limits: CHAT_MAX_CONNECTIONS, the chat pod's memory limit, and the
    # WebSockets one k8s nginx pod holds (1 worker, 8192 worker_connections, 2 a socket).
    max_connections: int = 10_000
    replica_memory_limit_mb: int = 512
    nginx_websockets_per_pod: int = 4096
    # Planned load per process: a replica and a Redis use one core each; the connection
    # autoscaling target is 60 % of CHAT_MAX_CONNECTIONS.
    cpu_target: float = 0.6
    connection_target: float = 0.6
    room_size: int = 10


@dataclass(frozen=True)
class Target:
    name: str
    connections: int
    deliveries_per_s: int


TARGETS = (
    Target("mid-size", 100_000, 50_000),
    Target("Centrifugo's published test", 1_000_000, 500_000),
)


def size(target, inputs):
    """{row: value} of what the target needs."""
    replica_cores = target.deliveries_per_s * inputs.replica_ms_per_delivery / 1000
    replicas = max(
        math.ceil(replica_cores / inputs.cpu_target),
        math.ceil(target.connections / (inputs.max_connections * inputs.connection_target)),
    )
    per_replica = math.ceil(target.connections / replicas)
    replica_mb = inputs.replica_base_mb + per_replica * inputs.replica_kb_per_connection / MIB
    nginx_cores = target.deliveries_per_s * inputs.nginx_ms_per_delivery / 1000
    messages = target.deliveries_per_s / inputs.room_size
    redis_cores = messages * inputs.redis_ms_per_message / 1000
    shards = max(1, math.ceil(redis_cores / inputs.cpu_target))
    nginx_pods = math.ceil(target.connections / inputs.nginx_websockets_per_pod)
    return {
        "chat replicas (one core each)": f"{replicas:,}",
        "connections per replica": f"{per_replica:,}",
        "replica memory (limit)": (
            f"{replica_mb:,.0f} MiB ({inputs.replica_memory_limit_mb} MiB)"
            + ("" if replica_mb < inputs.replica_memory_limit_mb else ": raise the limit")
        ),
        "replica CPU busy": f"{replica_cores:,.1f} cores",
        "nginx CPU busy": f"{nginx_cores:,.1f} cores",
        "nginx memory": f"{target.connections * inputs.nginx_kb_per_connection / MIB**2:,.1f} GiB",
        "nginx pods as shipped": f"{nginx_pods:,}",
        f"messages/s (rooms of {inputs.room_size})": f"{messages:,.0f}",
        "Redis commands/s": f"{messages * inputs.redis_commands_per_message:,.0f}",
        "Redis CPU busy": f"{redis_cores:,.1f} cores",
        "Redis shards (×3 pods with Sentinel)": f"{shards}",
        "Redis memory for presence": (
            f"{target.connections * inputs.redis_kb_per_connection / MIB:,.0f} MiB"
        ),
        "cores to provision (at the CPU target)": (
            f"{replicas + math.ceil(nginx_cores / inputs.cpu_target) + shards:,}"
        ),
    }


def table(inputs, targets=TARGETS):
    sized = [size(target, inputs) for target in targets]
    header = " | ".join(
        f"{t.name}: {t.connections:,} connections, {t.deliveries_per_s:,} deliveries/s"
        for t in targets
    )
    lines = [f"| | {header} |", "|---" * (len(targets) + 1) + "|"]
    lines += [f"| {row} | " + " | ".join(s[row] for s in sized) + " |" for row in sized[0]]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name, default in Inputs().__dict__.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    parser.add_argument("--connections", type=int, help="a target of your own")
    parser.add_argument("--deliveries", type=int, help="deliveries/s of your own target")
    args = vars(parser.parse_args(argv))
    connections, deliveries = args.pop("connections"), args.pop("deliveries")
    targets = TARGETS if connections is None else (Target("yours", connections, deliveries),)
    print(table(Inputs(**args), targets))


if __name__ == "__main__":
    main()
