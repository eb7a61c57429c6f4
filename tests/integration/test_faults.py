"""Faults under steady traffic, on a cluster of their own (drain 2 s): a replica
SIGKILLed, Redis restarted without its data, a rolling restart. Each runs through
harness.faults (which `make chaos` runs larger) with 12 independent clients in 3 rooms
sending 5 messages/s each; the assertion messages carry the figures."""

import pytest

from harness.faults import scenarios
from harness.faults.report import details, table

OPTIONS = scenarios.Options(
    clients=12, rooms=3, rate=5, seconds=8, warmup=3, settle=2, quiesce=15, drain_seconds=2
)


@pytest.fixture(scope="module")
def fault_cluster(tmp_path_factory):
    """A 3-replica cluster that these tests may break: not the session's `cluster`."""
    cluster = scenarios.start_cluster(OPTIONS, tmp_path_factory.mktemp("faults"))
    yield cluster
    leftovers = cluster.down()
    assert not leftovers, f"processes left running after down: {leftovers}"


def report(result):
    return f"\n{table([result])}\n{details(result)}"


async def run_scenario(cluster, scenario):
    result = await scenarios.run_scenario(cluster, scenario, OPTIONS)
    print(report(result))
    return result


def missed(result):
    return [target for target, met in result["targets"].items() if not met]


async def test_replica_killed_loses_and_duplicates_nothing(fault_cluster):
    """Tests that SIGKILL of the busiest replica neither loses nor duplicates an
    acknowledged message: its clients resume on the others and resend what was pending."""
    result = await run_scenario(fault_cluster, "kill")
    assert result["reconnects"] >= 1, f"no client lost its connection:{report(result)}"
    assert not missed(result), f"missed {missed(result)}:{report(result)}"


async def test_redis_restart_delivers_every_acknowledged_message(fault_cluster):
    """Tests that after Redis restarts without its data every acknowledged message
    reaches every client of its room, every other one is refused with an error, and
    sends and deliveries recover within 5 s."""
    result = await run_scenario(fault_cluster, "redis")
    assert result["epochs_per_room_min"] >= 2, f"no new epoch after the restart:{report(result)}"
    assert result["sent"] == result["acked"] + result["refused"], report(result)
    assert not missed(result), f"missed {missed(result)}:{report(result)}"


async def test_rolling_restart_drains_with_1012_and_loses_nothing(fault_cluster):
    """Tests that a rolling restart closes every client with 1012, once or more, and
    that resuming loses and duplicates no acknowledged message."""
    result = await run_scenario(fault_cluster, "rolling")
    assert min(result["reconnects_per_client"]) >= 1, f"a client never moved:{report(result)}"
    assert not missed(result), f"missed {missed(result)}:{report(result)}"
