"""One fixture starts a real local cluster (Redis, Daphne replicas, nginx) on free
ports in a temporary run directory, and stops it by its supervisor's PID."""

import asyncio
import json
import os
import random
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SCRIPT = ROOT / "deploy" / "local" / "cluster.py"
HOST = "127.0.0.1"


def free_port_block(count):
    """A run of `count` consecutive free ports, so replicas can use CHAT_PORT + N - 1."""
    for _ in range(200):
        base = random.randrange(20000, 45000)
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


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class LocalCluster:
    run_dir: Path
    replicas: int
    settings: dict = field(default_factory=dict)

    def __post_init__(self):
        base = free_port_block(self.replicas + 3)
        self.lb_port, self.redis_port, self.prometheus_port = base, base + 1, base + 2
        self.chat_port = base + 3
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
            "CHAT_PORT": str(self.chat_port),
            "PROMETHEUS_PORT": str(self.prometheus_port),
            **self.settings,
        }

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
        assert result.returncode == 0, result.stdout + result.stderr
        return result

    def down(self):
        description = self.describe()
        pids = [description["supervisor_pid"], *self.process_pids().values()]
        self.run("down")
        return [pid for pid in pids if pid and pid_alive(pid)]

    def describe(self):
        return json.loads(self.run("describe").stdout)

    def process_pids(self):
        """PIDs of the supervised processes, by name, from `status`."""
        lines = self.run("status", check=False).stdout.splitlines()
        return {line.split()[0]: int(line.split()[3]) for line in lines if " pid " in line}

    @property
    def lb_url(self):
        return f"http://{HOST}:{self.lb_port}"

    @property
    def origin(self):
        return self.lb_url

    def replica_port(self, number):
        return self.chat_port + number - 1

    def ws_url(self, room, replica=None):
        port = self.lb_port if replica is None else self.replica_port(replica)
        return f"ws://{HOST}:{port}/ws/chat/{room}/"

    def log(self, name):
        return (self.run_dir / "logs" / f"{name}.log").read_text(errors="replace")


def start_cluster(tmp_path_factory, name, replicas, **settings):
    cluster = LocalCluster(tmp_path_factory.mktemp(name), replicas, settings)
    cluster.up()
    return cluster


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """The product: 3 async replicas on the pub/sub layer behind nginx."""
    cluster = start_cluster(tmp_path_factory, "cluster", replicas=3)
    yield cluster
    leftovers = cluster.down()
    assert not leftovers, f"processes left running after down: {leftovers}"


# --- WebSocket clients ----------------------------------------------------------


class ChatClient:
    """An independent WebSocket client of the chat protocol."""

    def __init__(self, socket, welcome):
        self.socket = socket
        self.welcome = welcome

    @property
    def replica(self):
        return self.welcome["replica"]

    async def say(self, message):
        await self.socket.send(json.dumps({"message": message}))

    async def receive(self, timeout=5):
        return json.loads(await asyncio.wait_for(self.socket.recv(), timeout))

    async def receive_chat(self, timeout=5):
        frame = await self.receive(timeout)
        assert frame["type"] == "chat", frame
        return frame

    async def assert_silent(self, timeout=0.5):
        try:
            frame = await asyncio.wait_for(self.socket.recv(), timeout)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected frame: {frame}")

    async def close(self):
        await self.socket.close()


async def join(cluster, room="lobby", replica=None, **options):
    """Connects through nginx, or straight to replica number `replica`."""
    socket = await connect(
        cluster.ws_url(room, replica),
        origin=cluster.origin,
        subprotocols=["chat.v1"],
        open_timeout=30,
        **options,
    )
    welcome = json.loads(await asyncio.wait_for(socket.recv(), 5))
    assert welcome["type"] == "welcome", welcome
    return ChatClient(socket, welcome)
