"""A local cluster on free ports in its own run directory, driven through
deploy/local/cluster.py as a user would: the tests' fixture and the benchmarks use it."""

import json
import os
import random
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .local_modules import load_local_module
from .paths import ROOT
from .processes import pid_alive

CLUSTER_SCRIPT = ROOT / "deploy" / "local" / "cluster.py"
HOST = load_local_module("network").LOOPBACK
REDIS_SERVERS = load_local_module("redis_servers")
# Every client of the tests and load tests comes from 127.0.0.1: nginx's per-address
# WebSocket limits (deploy/defaults.env's LB_WS_*) are raised out of their way, near
# nginx's maxima. A cluster's own settings override them (tests/integration/test_edge.py).
LOOPBACK_EDGE_LIMITS = {
    "LB_WS_CONNECTIONS_PER_ADDRESS": "65535",
    "LB_WS_HANDSHAKES_PER_SECOND": "100000",
    "LB_WS_HANDSHAKE_BURST": "100000",
}


def ephemeral_ports_start():
    """The first port the kernel hands out to outgoing connections (32768 by default)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port_block(count):
    """A run of `count` consecutive free ports, so replicas can use CHAT_PORT + N - 1.
    Below the ephemeral range: a port free when chosen must not be taken, before its
    server binds it, by the local end of a connection (a replica's to Redis, say)."""
    for _ in range(200):
        base = random.randrange(20000, ephemeral_ports_start() - count)
        if all(port_is_free(port) for port in range(base, base + count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports")


def port_is_free(port):
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


@dataclass
class LocalCluster:
    run_dir: Path
    replicas: int
    settings: dict = field(default_factory=dict)

    def __post_init__(self):
        self.redis_shards = int(self.settings.get("REDIS_SHARDS", 1))
        self.sentinel = self.settings.get("REDIS_HA") == "sentinel"
        # With Sentinel each shard has its replicas, and the Sentinels watch them all.
        per_shard = 1 + REDIS_SERVERS.REPLICAS_PER_SHARD if self.sentinel else 1
        redis_servers = self.redis_shards * per_shard
        sentinels = REDIS_SERVERS.SENTINELS if self.sentinel else 0
        base = free_port_block(self.replicas + redis_servers + sentinels + 2)
        # nginx, the Redis servers (REDIS_PORT + N - 1), the Sentinels, Prometheus,
        # the replicas.
        self.lb_port, self.redis_port = base, base + 1
        self.sentinel_port = self.redis_port + redis_servers
        self.prometheus_port = self.sentinel_port + sentinels
        self.chat_port = self.prometheus_port + 1
        # The service's own settings come only from `settings`, never from the
        # shell or from the unit tests' settings module in this process.
        inherited = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("CHAT_", "DJANGO_", "REDIS_"))
        }
        self.environment = {
            **inherited,
            "REPLICAS": str(self.replicas),
            "LB_PORT": str(self.lb_port),
            "REDIS_PORT": str(self.redis_port),
            "REDIS_SENTINEL_PORT": str(self.sentinel_port),
            "CHAT_PORT": str(self.chat_port),
            "PROMETHEUS_PORT": str(self.prometheus_port),
            **LOOPBACK_EDGE_LIMITS,
            **self.settings,
        }
        # Where each program listens, from `describe` once up: 127.0.0.1, or its own
        # host's address with CLUSTER_NETWORK=netns; and that network's description.
        self.hosts = {}
        self.network = {"mode": "loopback"}

    def run(self, *arguments, check=True):
        return subprocess.run(
            [sys.executable, str(CLUSTER_SCRIPT), "--run-dir", str(self.run_dir), *arguments],
            env=self.environment,
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )

    def up(self):
        result = self.run("up", check=False)
        if result.returncode != 0:
            self.run("down", check=False)  # whatever did start
            raise AssertionError(result.stdout + result.stderr)
        description = self.describe()
        self.hosts, self.network = description["hosts"], description["network"]
        return result

    def down(self):
        """Stops the cluster; returns the PIDs of its processes still alive after."""
        try:
            description = self.describe()
            pids = [description["supervisor_pid"], *running(description).values()]
        except (subprocess.CalledProcessError, ValueError):
            pids = []  # supervisord does not answer: stop what can be stopped all the same
        self.run("down")
        return [pid for pid in pids if pid and pid_alive(pid)]

    def describe(self):
        return json.loads(self.run("describe").stdout)

    def process_pids(self):
        """PIDs of the supervised processes that run, by the names `status` shows."""
        return running(self.describe())

    def replica_pids(self, pids=None):
        """PIDs of the Daphne replicas that run, by name: of `pids` (process_pids()'s)
        when the caller has them."""
        pids = self.process_pids() if pids is None else pids
        replicas = self.replica_names()
        return {name: pid for name, pid in pids.items() if name in replicas}

    @property
    def lb_url(self):
        return f"http://{HOST}:{self.lb_port}"

    @property
    def origin(self):
        return self.lb_url

    @property
    def redis_ports(self):
        return [self.redis_port + shard for shard in range(self.redis_shards)]

    @property
    def redis_names(self):
        """The Redis shards' program names, as `status` shows them: redis, redis-2 ..."""
        return ["redis", *(f"redis-{n}" for n in range(2, self.redis_shards + 1))]

    def replica_port(self, number):
        return self.chat_port + number - 1

    def replica_host(self, number):
        return self.hosts.get(f"chat-{number}", HOST)

    def replica_url(self, number):
        """http://host:port of replica `number`, for its probes and metrics."""
        return f"http://{self.replica_host(number)}:{self.replica_port(number)}"

    def replica_names(self):
        return [f"chat-{number}" for number in range(1, self.replicas + 1)]

    def ws_url(self, room, replica=None):
        if replica is None:
            return f"ws://{HOST}:{self.lb_port}/ws/chat/{room}/"
        return f"ws://{self.replica_host(replica)}:{self.replica_port(replica)}/ws/chat/{room}/"

    def api_key(self):
        """The HTTP API's key the cluster made in its run directory."""
        return Path(self.describe()["api_keys_file"]).read_text().split()[0]

    def api_url(self, path, replica=1):
        """An HTTP API URL on a replica's own port (the load balancer answers 404)."""
        return f"{self.replica_url(replica)}{path}"

    def manage(self, *arguments):
        """A Django management command run with the replicas' settings."""
        return self.run("manage", *arguments, check=False)

    def log(self, name):
        return (self.run_dir / "logs" / f"{name}.log").read_text(errors="replace")


def start_cluster(tmp_path_factory, name, replicas, **settings):
    """A cluster brought up in a new directory of pytest's tmp_path_factory."""
    cluster = LocalCluster(tmp_path_factory.mktemp(name), replicas, settings)
    cluster.up()
    return cluster


def running(description):
    """Name -> PID of the processes `describe` reports running (a stopped one has None)."""
    return {name: pid for name, pid in description["processes"].items() if pid}
