"""A replica cut off from Redis (harness.faults.network's partition, which `make chaos`
runs larger) on a cluster whose replicas and Redis are hosts of their own
(CLUSTER_NETWORK=netns): 12 clients in 3 rooms at 5 messages/s, the busiest replica cut
off for 10 s. Needs root, as CI has: without it the cluster refuses to start and the
test fails saying so. After `down`, nothing of the cluster's network is left."""

import os
import subprocess

import pytest

from harness.faults import scenarios
from harness.faults.report import details, table

OPTIONS = scenarios.Options(
    clients=12,
    rooms=3,
    rate=5,
    seconds=8,
    warmup=3,
    settle=3,
    quiesce=20,
    drain_seconds=2,
    settings=scenarios.CLUSTER_SETTINGS["partition"],
)


def network_left(prefix):
    """Namespaces and links of this machine whose names start with `prefix`."""
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    found = [line.split()[0] for line in namespaces.splitlines() if line.startswith(prefix)]
    found += [line.split(":")[1].strip() for line in links.splitlines() if f" {prefix}" in line]
    return found


@pytest.fixture(scope="module")
def netns_cluster(tmp_path_factory):
    assert os.geteuid() == 0, "CLUSTER_NETWORK=netns needs root (ip netns, veth, iptables)"
    cluster = scenarios.start_cluster(OPTIONS, tmp_path_factory.mktemp("netns"))
    prefix = f"cc{cluster.lb_port}"
    assert network_left(prefix), "netns mode made no namespace"
    yield cluster
    leftovers = cluster.down()
    assert not leftovers, f"processes left running after down: {leftovers}"
    assert not network_left(prefix), f"left after down: {network_left(prefix)}"


def report(result):
    return f"\n{table([result])}\n{details(result)}"


def test_replicas_and_redis_are_hosts_of_their_own(netns_cluster):
    """Tests that each replica and Redis listen on an address of their own subnet,
    each in its namespace, and that nginx reaches the replicas there."""
    hosts = netns_cluster.hosts
    replicas = [hosts[name] for name in netns_cluster.replica_names()]
    assert len({*replicas, hosts["redis"]}) == netns_cluster.replicas + 1, hosts
    assert all(address.startswith("10.") for address in [*replicas, hosts["redis"]]), hosts
    namespaces = netns_cluster.network["namespaces"]
    assert set(namespaces) == {"redis", *netns_cluster.replica_names()}, namespaces
    status = netns_cluster.run("status", check=False)
    assert "network       netns" in status.stdout, status.stdout
    for address in replicas:
        assert f"{address}:" in status.stdout, status.stdout


async def test_partition_loses_nothing_and_the_cut_replica_recovers(netns_cluster):
    """Tests that a replica cut off from Redis for 10 s keeps its clients, fails its
    readiness, refuses with `unavailable` rather than losing an acknowledged message,
    delivers no message it refused, and that its clients receive again within 5 s of
    the heal."""
    result = await scenarios.run_scenario(netns_cluster, "partition", OPTIONS)
    print(report(result))
    fault = result["fault"]
    assert fault["unready_samples"] >= 1, report(result)
    assert fault["cut_clients"] >= 1, report(result)
    assert fault["cut_clients_kept_connection"] == fault["cut_clients"], report(result)
    missed = [target for target, met in result["targets"].items() if not met]
    assert not missed, f"missed {missed}:{report(result)}"
