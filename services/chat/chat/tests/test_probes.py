"""Probes and metrics (chat.probes, chat.metrics), answered before Django."""

import asyncio
import json
import re
from pathlib import Path

import pytest
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.apps import apps
from django.conf import settings

from chat.replica import Replica
from chatsite.asgi import application

from .clients import http_get

pytestmark = pytest.mark.django_db(databases=[])


async def test_probes_answer_any_host():
    """Tests that probes answer a kubelet or Prometheus that addresses the replica by IP."""
    status, headers, body = await http_get("/healthz")
    loop = type(asyncio.get_running_loop()).__module__.split(".")[
        0
    ]  # uvloop once serve is imported
    health = {"status": "ok", "replica": "unit-test", "event_loop": loop}
    assert (status, json.loads(body)) == (200, health)
    assert headers[b"x-chat-replica"] == b"unit-test"
    status, _, body = await http_get("/readyz")
    assert status == 200
    assert json.loads(body)["status"] == "ok"


async def test_a_draining_replica_is_not_ready(monkeypatch):
    """Tests that /readyz answers 503 "draining" once the replica drains, so that the
    load balancer and Kubernetes stop sending it connections."""
    draining = Replica.from_settings(get_channel_layer())
    monkeypatch.setattr(apps.get_app_config("chat"), "replica", draining)
    draining.draining = True  # as start_draining() leaves it, without its metric
    status, _, body = await http_get("/readyz")
    assert (status, json.loads(body)["status"]) == (503, "draining")
    _, _, body = await http_get("/metrics")
    assert "\nchat_ready 0.0\n" in body


async def test_metrics_count_connections_and_messages():
    """Tests that /metrics exposes the chat counters and moves with traffic."""

    def sample(body, name):
        line = next(line for line in body.splitlines() if line.startswith(name + " "))
        return float(line.split()[1])

    _, _, before = await http_get("/metrics")
    communicator = WebsocketCommunicator(
        application, "/ws/chat/metrics/", headers=[(b"origin", b"http://127.0.0.1:8080")]
    )
    assert (await communicator.connect())[0]
    await communicator.send_json_to({"message": "count me"})
    await communicator.receive_json_from()
    await communicator.send_to(text_data="{")
    await communicator.receive_json_from()
    status, headers, after = await http_get("/metrics")
    await communicator.disconnect()

    assert status == 200
    assert headers[b"x-chat-replica"] == b"unit-test"
    for name in (
        "chat_connects_total",
        "chat_messages_received_total",
        "chat_messages_delivered_total",
        "chat_publishes_total",
    ):
        assert sample(after, name) == sample(before, name) + 1, name
    assert sample(after, "chat_connections_open") == sample(before, "chat_connections_open") + 1
    assert 'chat_errors_total{code="invalid_json"}' in after
    assert "chat_delivery_latency_seconds_bucket" in after
    assert 'chat_info{channel_layer="memory",consumer="async",replica="unit-test"} 1.0' in after
    assert sample(after, "chat_ready") == 1
    assert sample(after, "chat_connections_limit") == settings.CHAT_MAX_CONNECTIONS


async def test_dashboard_queries_only_exported_metrics():
    """Tests that every metric the Grafana dashboard queries is one a replica exports."""
    _, _, body = await http_get("/metrics")
    samples = {line.split("{")[0].split(" ")[0] for line in body.splitlines() if line[:1] != "#"}
    # A labelled counter has no sample before its first use, but is declared.
    declared = {line.split()[2] for line in body.splitlines() if line.startswith("# TYPE ")}
    exported = samples | declared
    dashboard = json.loads(
        (Path(__file__).resolve().parents[4] / "deploy/grafana/chat-cluster.json").read_text()
    )
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    queried = {
        name for expr in expressions for name in re.findall(r"\b(?:chat|process)_[a-z_]+\b", expr)
    }
    assert queried, "the dashboard queries no metric"
    assert queried <= exported, queried - exported
