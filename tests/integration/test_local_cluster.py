"""The local cluster's lifecycle: idempotent up, a busy port, down leaves nothing, and the
operator commands finding a cluster's settings from its run directory alone."""

import json
import os
import re
import socket
import subprocess
import sys
import time

from harness.cluster import CLUSTER_SCRIPT, LocalCluster, port_is_free
from harness.processes import pid_alive


def test_up_is_idempotent_and_down_stops_every_process(tmp_path):
    """Tests that a second up changes nothing and down stops every process by PID."""
    cluster = LocalCluster(tmp_path / "run", replicas=2)
    assert "started" in cluster.up().stdout
    pids = cluster.process_pids()
    assert set(pids) == {"redis", "nginx", "prometheus", "chat-1", "chat-2"}
    supervisor = cluster.describe()["supervisor_pid"]

    again = cluster.up()
    assert "already running" in again.stdout
    assert cluster.process_pids() == pids
    assert f"http://127.0.0.1:{cluster.lb_port}/chat/lobby/" in again.stdout

    assert cluster.down() == []
    assert not pid_alive(supervisor)
    assert not any(pid_alive(pid) for pid in pids.values())
    for port in (
        cluster.lb_port,
        cluster.redis_port,
        cluster.prometheus_port,
        cluster.chat_port,
        cluster.chat_port + 1,
    ):
        assert port_is_free(port)
    assert cluster.run("status", check=False).returncode == 1


def test_busy_port_gives_a_clear_error(tmp_path):
    """Tests that a port held by someone else stops up at once, naming the port."""
    cluster = LocalCluster(tmp_path / "run", replicas=1)
    with socket.socket() as squatter:
        # As free_port_block checked it: a port with connections in TIME_WAIT is free.
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", cluster.lb_port))
        squatter.listen()
        result = cluster.run("up", check=False)
    assert result.returncode == 1
    assert f"Port {cluster.lb_port} (LB_PORT)" in result.stderr
    assert "Traceback" not in result.stderr
    assert cluster.describe()["supervisor_pid"] is None


def test_commands_address_a_cluster_by_its_run_directory_alone(tmp_path):
    """Tests that status, logs, restart and down, given the run directory and an
    environment without the cluster's settings, act on the cluster up started with
    them; that status warns of a port the environment asks for; that up refuses it."""
    cluster = LocalCluster(tmp_path / "run", replicas=2, settings={"CHAT_DRAIN_SECONDS": "2"})
    cluster.up()
    bare = {"PATH": os.environ["PATH"]}

    def run(*arguments, **environ):
        command = [sys.executable, str(CLUSTER_SCRIPT), "--run-dir", str(cluster.run_dir)]
        return subprocess.run(
            [*command, *arguments],
            env={**bare, **environ},
            capture_output=True,
            text=True,
            timeout=60,
        )

    try:
        # A replica is STARTING, not RUNNING, for supervisord's startsecs after it is ready.
        deadline = time.monotonic() + 10
        while (status := run("status")).returncode != 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert status.returncode == 0, status.stdout + status.stderr
        assert f"LB_PORT={cluster.lb_port} " in status.stdout
        assert "REPLICAS=2 " in status.stdout
        for number in (1, 2):
            port = cluster.replica_port(number)
            assert re.search(
                rf"^chat-{number} +RUNNING .* port {port} +ready$", status.stdout, re.M
            )
        assert "chat-3" not in status.stdout
        assert status.stderr == ""

        logs = run("logs", "-n", "1")
        assert f"==> {cluster.run_dir}/logs/chat-2.log <==" in logs.stdout
        assert "chat-3.log" not in logs.stdout

        pids = cluster.process_pids()
        restart = run("restart", "chat-2", "--timeout", "20")
        assert restart.returncode == 0, restart.stdout + restart.stderr
        assert restart.stdout.startswith("chat-2: stopped in ")
        after = cluster.process_pids()
        assert after["chat-2"] != pids["chat-2"]
        assert after["chat-1"] == pids["chat-1"]

        warned = run("status", LB_PORT="9999")
        assert warned.stderr.startswith(
            f"warning: LB_PORT=9999 in the environment, but this cluster runs with "
            f"{cluster.lb_port}; to change it: make down RUN_DIR={cluster.run_dir}, then make up"
        )
        refused = run("up", LB_PORT="9999")
        assert refused.returncode == 1
        assert "LB_PORT cannot change while it runs; up changed nothing" in refused.stderr
        assert cluster.process_pids() == after

        description = json.loads(run("describe").stdout)
        processes = [description["supervisor_pid"], *after.values()]
        down = run("down")
        assert down.returncode == 0, down.stdout + down.stderr
        assert not [pid for pid in processes if pid_alive(pid)]
        assert port_is_free(cluster.lb_port)
        assert "is not running" in run("down").stdout
    finally:
        cluster.down()
