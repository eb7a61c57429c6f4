"""The fixtures of the integration tests: a real local cluster (Redis, Daphne replicas,
nginx) on free ports in a temporary run directory, stopped by its supervisor's PID;
Debian's chromium for the browser tests."""

from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from harness.browser import CHROMIUM, CHROMIUM_ARGS
from harness.cluster import start_cluster


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """The product: 3 async replicas on the pub/sub layer behind nginx."""
    cluster = start_cluster(tmp_path_factory, "cluster", replicas=3)
    yield cluster
    leftovers = cluster.down()
    assert not leftovers, f"processes left running after down: {leftovers}"


# --- Browser tests -------------------------------------------------------------


@pytest.fixture(scope="module")
def browser_cluster(tmp_path_factory):
    # A short history, so that a page that misses more than 5 messages sees a gap.
    cluster = start_cluster(
        tmp_path_factory,
        "browser",
        replicas=3,
        CHAT_PRESENCE_TTL="3",
        CHAT_HISTORY_MAX_LENGTH="5",
    )
    yield cluster
    assert not cluster.down()


@pytest.fixture
def faults_cluster(tmp_path_factory):
    """A cluster for one test's faults; replicas drain in 2 s instead of 10."""
    cluster = start_cluster(
        tmp_path_factory, "faults", replicas=3, CHAT_PRESENCE_TTL="3", CHAT_DRAIN_SECONDS="2"
    )
    yield cluster
    assert not cluster.down()


@pytest.fixture(scope="module")
def browser():
    assert Path(CHROMIUM).exists(), "chromium is missing: make deps installs it"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
