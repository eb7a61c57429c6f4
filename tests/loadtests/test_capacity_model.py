"""loadtests/capacity_model.py: a target of your own (docs/performance/capacity-model.md
shows its default table, generated when the site is built)."""

import subprocess
import sys

from harness.paths import ROOT

MODEL = ROOT / "loadtests" / "capacity_model.py"


def model(*arguments):
    return subprocess.run(
        [sys.executable, MODEL, *arguments], capture_output=True, text=True, check=True
    ).stdout


def test_the_model_sizes_a_target_of_your_own():
    """Tests one row by hand: 60,000 connections at 6,000 a replica need 10 replicas, and
    1,000 deliveries/s of 0.192 ms a fifth of one core."""
    table = model("--connections", "60000", "--deliveries", "1000")
    assert "| chat replicas (one core each) | 10 |" in table
    assert "| replica CPU busy | 0.2 cores |" in table
    assert "| Redis shards (×3 pods with Sentinel) | 1 |" in table
