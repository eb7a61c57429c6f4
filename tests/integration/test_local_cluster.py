"""The local cluster's lifecycle: idempotent up, a busy port, down leaves nothing."""

import socket

from harness.cluster import LocalCluster, port_is_free
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
