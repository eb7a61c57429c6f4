"""The smoke load test: a small, bounded Locust run through nginx that fails on any
lost message or error, and proof that it notices a lost message."""

import json
import os
import subprocess
import sys

import pytest

from harness.cluster import free_port_block
from harness.paths import ROOT

USERS, ROOM_SIZE, MESSAGES = 30, 5, 10


def run_locust(host, tmp_path, user_class="ChatUser", users=USERS, run_time="90s", **settings):
    """One headless Locust run; returns the process result and its statistics by name."""
    environment = {
        **os.environ,
        "LOCUST_ROOM_PREFIX": f"{user_class}-{tmp_path.name}",
        **settings,
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "locust",
            "-f",
            ROOT / "loadtests" / "locustfile.py",
            user_class,
            "--headless",
            "--users",
            str(users),
            "--spawn-rate",
            str(users),
            "--host",
            host,
            "--run-time",
            run_time,
            "--json-file",
            tmp_path / "stats",
            "--only-summary",
            "--stop-timeout",
            "2",
        ],
        env=environment,
        capture_output=True,
        text=True,
        timeout=150,
        cwd=tmp_path,
    )
    stats = {entry["name"]: entry for entry in json.loads((tmp_path / "stats.json").read_text())}
    return result, stats


def run_smoke(host, tmp_path):
    """The bounded mode: every user sends MESSAGES once all have joined."""
    return run_locust(
        host,
        tmp_path,
        LOCUST_MESSAGES=str(MESSAGES),
        LOCUST_ROOM_SIZE=str(ROOM_SIZE),
        LOCUST_SEND_INTERVAL="0.05",
    )


def test_smoke_load_through_nginx_loses_nothing(cluster, tmp_path):
    """Tests that every message of a bounded load reaches every member of its room."""
    result, stats = run_smoke(cluster.lb_url, tmp_path)
    failures = {name: entry["num_failures"] for name, entry in stats.items()}
    assert result.returncode == 0, (failures, result.stderr[-3000:])
    assert stats["connect"]["num_requests"] == USERS
    assert stats["send"]["num_requests"] == USERS * MESSAGES
    assert stats["deliver"]["num_requests"] == USERS * MESSAGES * ROOM_SIZE
    assert "lost" not in stats
    assert "duplicate" not in stats
    assert all(entry["num_failures"] == 0 for entry in stats.values())


@pytest.fixture
def lossy_server():
    """The floor server, told to drop every 40th delivery."""
    port = free_port_block(1)
    process = subprocess.Popen(
        [
            sys.executable,
            ROOT / "loadtests" / "floor_server.py",
            "--port",
            str(port),
            "--drop-every",
            "40",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert "floor server" in process.stdout.readline()
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=10)


def test_smoke_load_notices_a_lost_message(lossy_server, tmp_path):
    """Tests that the same smoke run fails when deliveries are dropped."""
    result, stats = run_smoke(lossy_server, tmp_path)
    assert result.returncode != 0
    assert stats["lost"]["num_failures"] > 0
    assert stats["deliver"]["num_requests"] < USERS * MESSAGES * ROOM_SIZE


@pytest.mark.parametrize(
    ("user_class", "settings"),
    [("ChurnUser", {"LOCUST_CHURN_INTERVAL": "1"}), ("ChatUser", {"LOCUST_ROOM_SIZE": "0"})],
    ids=["connection-churn", "one-large-room"],
)
def test_other_scenarios_run_clean(cluster, tmp_path, user_class, settings):
    """Tests the churn and large-room scenarios briefly: no error, no loss, and churn
    really reconnects."""
    users = 20
    result, stats = run_locust(
        cluster.lb_url, tmp_path, user_class, users, "8s", LOCUST_SEND_INTERVAL="0.2", **settings
    )
    failures = {name: entry["num_failures"] for name, entry in stats.items()}
    assert result.returncode == 0, (failures, result.stderr[-3000:])
    assert all(entry["num_failures"] == 0 for entry in stats.values()), stats
    assert stats["deliver"]["num_requests"] > stats["send"]["num_requests"]
    if user_class == "ChurnUser":
        assert stats["connect"]["num_requests"] > users
