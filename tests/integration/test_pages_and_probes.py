"""Pages and probes served through nginx by a real cluster."""

import json
import time

import pytest

from harness.http import get


def test_index_and_room_pages_are_served_through_nginx(cluster):
    """Tests that the tutorial's pages come through nginx, naming the replica that served them."""
    status, headers, page = get(f"{cluster.lb_url}/chat/")
    assert status == 200
    assert 'id="room-name-input"' in page
    assert headers["X-Chat-Replica"].startswith("chat-")

    status, headers, page = get(f"{cluster.lb_url}/chat/lobby/")
    assert status == 200
    for element_id in ("chat-log", "chat-message-input", "chat-message-submit"):
        assert f'id="{element_id}"' in page
    port = headers["X-Upstream-Addr"].rsplit(":", 1)[1]
    assert headers["X-Chat-Replica"] == f"chat-{int(port) - cluster.chat_port + 1}"


def test_http_requests_through_nginx_reach_several_replicas(cluster):
    """Tests that plain HTTP is balanced too."""
    replicas = {get(f"{cluster.lb_url}/chat/")[1]["X-Chat-Replica"] for _ in range(12)}
    assert len(replicas) > 1


def test_probes(cluster):
    """Tests nginx's own health location and each replica's readiness, Redis included."""
    status, _, body = get(f"{cluster.lb_url}/lb-health")
    assert (status, body) == (200, "ok\n")
    for number in range(1, cluster.replicas + 1):
        status, _, body = get(f"http://127.0.0.1:{cluster.replica_port(number)}/readyz")
        assert status == 200
        assert json.loads(body) == {
            "status": "ok",
            "replica": f"chat-{number}",
            "redis": {f"127.0.0.1:{cluster.redis_port}": "ok"},
        }
        status, _, body = get(f"http://127.0.0.1:{cluster.replica_port(number)}/healthz")
        assert status == 200
        # Daphne's reactor runs on uvloop (chatsite.serve, CHAT_EVENT_LOOP).
        assert json.loads(body)["event_loop"] == "uvloop"
        status, _, body = get(f"http://127.0.0.1:{cluster.replica_port(number)}/metrics")
        assert status == 200
        assert f'consumer="async",replica="chat-{number}"' in body


@pytest.mark.parametrize("room", ["caf%C3%A9", "x" * 81])
def test_invalid_room_page_through_nginx(cluster, room):
    """Tests that a room name the service refuses gets a 404 page saying why."""
    status, _, page = get(f"{cluster.lb_url}/chat/{room}/")
    assert status == 404
    assert "1 to 80 characters" in page


def test_prometheus_scrapes_every_replica(cluster):
    """Tests that the local cluster's Prometheus lists every replica as a target, up: it
    scrapes the replicas' own ports, since nginx does not serve /metrics."""
    deadline = time.monotonic() + 30
    while True:
        _, _, body = get(f"http://127.0.0.1:{cluster.prometheus_port}/api/v1/targets")
        targets = json.loads(body)["data"]["activeTargets"]
        chat = {
            t["labels"]["instance"]: t["health"] for t in targets if t["labels"]["job"] == "chat"
        }
        if list(chat.values()).count("up") == cluster.replicas or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert chat == {
        f"127.0.0.1:{cluster.replica_port(n)}": "up" for n in range(1, cluster.replicas + 1)
    }
