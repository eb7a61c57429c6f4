"""The steady-state sweep and the identical bursts (loadtests/steady.py, harness.steady) at
a tiny scale against real servers: figures that add up, and no process left behind."""

import csv
import os
import subprocess
import sys

import pytest

from harness.floor import FloorServer
from harness.load_generator import LoadGenerator
from harness.paths import ROOT
from harness.processes import process_tree
from harness.steady import ChatTarget, FloorTarget, Load, burst_ratios, bursts

ROOM_SIZE = 3
TINY = ["--rooms", "2", "--room-size", str(ROOM_SIZE), "--workers", "2", "--seconds", "3"]


def descendants():
    return set(process_tree(os.getpid())) - {os.getpid()}


def assert_sane(row, rate, seconds, cpu=True):
    """A step's figures add up: every message delivered to every member, none lost;
    with `cpu`, the step was long enough for /proc's ticks to count the CPU used."""
    sent = int(row["sent"])
    assert sent == pytest.approx(rate / ROOM_SIZE * seconds, abs=3), row
    assert int(row["expected"]) == sent * ROOM_SIZE, row
    assert int(row["delivered"]) == int(row["expected"]), row
    for name in ("lost", "duplicated", "late", "errors", "closes"):
        assert int(row[name]) == 0, (name, row)
    assert float(row["delivered_per_s"]) == pytest.approx(rate, rel=0.25), row
    assert 0 < float(row["p50_ms"]) <= float(row["p99_ms"]) < 1000, row
    if row["target"] == "chat":
        assert int(row["acked"]) == sent, row
    if row["target"] == "chat-api":  # every 3rd message posted to the HTTP API, not acked
        assert int(row["api_posts"]) == pytest.approx(sent / 3, abs=2), row
        assert int(row["acked"]) == sent - int(row["api_posts"]), row
    if cpu:
        assert float(row["server_cpu_s"]) > 0, row
        assert float(row["generator_cpu_percent"]) > 0, row


def test_sweep_reports_sane_figures(tmp_path):
    """Tests loadtests/steady.py end to end, tiny: its own cluster and floor server, a
    warm-up and one step each, every message delivered, CPU measured, CSV and report;
    the chat-api target posts every third message through the HTTP API."""
    rate = 300
    result = subprocess.run(
        [sys.executable, ROOT / "loadtests" / "steady.py", *TINY, "--rates", str(rate)]
        + ["--repeats", "1", "--warmup-seconds", "1", "--out", tmp_path]
        + ["--targets", "chat,chat-api,floor", "--api-share", "3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with (tmp_path / "results.csv").open() as rows:
        rows = list(csv.DictReader(rows))
    assert sorted((row["phase"], row["target"]) for row in rows) == [
        ("sweep", "chat"),
        ("sweep", "chat-api"),
        ("sweep", "floor"),
        ("warmup", "chat"),
        ("warmup", "chat-api"),
        ("warmup", "floor"),
    ]
    for row in rows:
        measured = row["phase"] == "sweep"
        assert_sane(row, rate, 3 if measured else 1, cpu=measured)
    report = (tmp_path / "README.md").read_text()
    assert "| 300 |" in report
    assert "## Reproduce" in report


def test_bursts_on_one_cluster_close_everything(cluster):
    """Tests three identical bursts on the shared cluster: each adds up, the ratio of the
    third to the first is computed, and no generator process outlives them."""
    before = descendants()
    rate = 120  # 6.7 messages/s per client: under the cluster's default limit of 10
    rows = bursts(
        [ChatTarget(cluster)],
        Load(rooms=2, room_size=ROOM_SIZE, workers=2, seconds=2, settle_s=5),
        rate,
        count=3,
        pause_s=0.5,
        on_row=lambda row: None,
    )
    assert [row["round"] for row in rows] == [1, 2, 3]
    for row in rows:
        assert_sane({name: str(value) for name, value in row.items()}, rate, 2)
    assert burst_ratios(rows)["chat"] > 0
    assert descendants() <= before


def test_a_step_over_the_servers_rate_limit_is_refused(cluster):
    """Tests that the generator refuses to offer more per client than the welcome frame's
    rate limit allows, rather than count the refusals as lost messages."""
    with LoadGenerator(ChatTarget(cluster).base_url, rooms=1, room_size=2, workers=1) as load:
        load.connect("over-limit")
        with pytest.raises(ValueError, match="CHAT_RATE_LIMIT"):
            load.step(100, seconds=1)  # 25 messages/s per client
        load.disconnect()


def test_lost_deliveries_are_counted():
    """Tests that the generator notices deliveries the server drops: the floor server
    drops every 10th."""
    with (
        FloorServer("--drop-every", 10) as floor,
        LoadGenerator(FloorTarget(floor).base_url, rooms=2, room_size=ROOM_SIZE, workers=2) as load,
    ):
        load.connect("lossy")
        result = load.step(150, seconds=1, settle_s=1)
        load.disconnect()
    assert result.sent > 0
    assert result.lost == pytest.approx(result.expected / 10, abs=2)
    assert result.delivered == result.expected - result.lost
