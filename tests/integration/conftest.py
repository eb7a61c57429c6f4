"""One fixture starts a real local cluster (Redis, Daphne replicas, nginx) on free
ports in a temporary run directory, and stops it by its supervisor's PID."""

import pytest

from harness.cluster import LocalCluster


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
