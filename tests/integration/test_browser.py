"""The chat as people use it: real Chromium pages (Debian's chromium, driven by
Playwright) through nginx, on a cluster of their own, since one test kills a replica."""

import os
import re
import signal
import time
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import expect, sync_playwright

from tests.cluster import ROOT

from .conftest import start_cluster

CHROMIUM = "/usr/bin/chromium"
# Debian's chromium as root, on a machine whose network reaches nothing but loopback.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = ROOT / "test-results" / "browser"


@pytest.fixture(scope="module")
def browser_cluster(tmp_path_factory):
    cluster = start_cluster(tmp_path_factory, "browser", replicas=3, CHAT_PRESENCE_TTL="3")
    yield cluster
    assert not cluster.down()


@pytest.fixture(scope="module")
def browser():
    assert Path(CHROMIUM).exists(), "chromium is missing: make deps installs it"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class ChatPage:
    """One person's tab: a browser context of its own (its own name in localStorage)."""

    def __init__(self, browser, cluster, room, name):
        self.context = browser.new_context(viewport={"width": 1100, "height": 560})
        self.context.add_init_script(f"localStorage.setItem('chat-display-name', '{name}')")
        self.page = self.context.new_page()
        self.page.goto(f"{cluster.lb_url}/chat/{room}/")
        self.wait_live()

    def wait_live(self, timeout=15000):
        expect(self.page.locator("#connection-state")).to_have_text("live", timeout=timeout)
        expect(self.page.locator("#socket-replica")).to_have_text(
            re.compile(r"chat-\d"), timeout=timeout
        )

    @property
    def replica(self):
        return self.page.locator("#socket-replica").text_content()

    def post(self, text):
        self.page.fill("#chat-message-input", text)
        self.page.click("#chat-message-submit")

    def log(self):
        return self.page.locator("#chat-log").input_value()

    def expect_in_log(self, text, timeout=10000):
        deadline = time.monotonic() + timeout / 1000
        while text not in self.log():
            assert time.monotonic() < deadline, f"{text!r} not in {self.log()!r}"
            time.sleep(0.1)

    def presence(self):
        return self.page.locator("#presence li").all_text_contents()

    def close(self):
        self.context.close()


def pages_on_two_replicas(browser, cluster, room, names=("Ada", "Grace")):
    """Two pages whose sockets are served by different replicas (asserted, not hoped)."""
    first = ChatPage(browser, cluster, room, names[0])
    for _ in range(6):
        second = ChatPage(browser, cluster, room, names[1])
        if second.replica != first.replica:
            return first, second
        second.close()
    raise AssertionError("nginx kept sending both pages to one replica")


def side_by_side(pages, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    shots = []
    for index, page in enumerate(pages):
        shot = path.with_name(f"{path.stem}-{index}.png")
        page.page.screenshot(path=shot)
        shots.append(Image.open(shot))
    canvas = Image.new(
        "RGB", (sum(s.width for s in shots) + 10, max(s.height for s in shots)), "white"
    )
    x = 0
    for shot in shots:
        canvas.paste(shot, (x, 0))
        x += shot.width + 10
    canvas.save(path)


def test_two_pages_on_different_replicas_chat_and_other_rooms_see_nothing(browser, browser_cluster):
    """Tests the tutorial's part-4 scenarios on two replicas, with presence on both."""
    ada, grace = pages_on_two_replicas(browser, browser_cluster, "lobby")
    elsewhere = ChatPage(browser, browser_cluster, "elsewhere", "Linus")

    ada.post("hello from Ada")
    ada.expect_in_log("Ada: hello from Ada")
    grace.expect_in_log("Ada: hello from Ada")
    grace.post("hello from Grace")
    ada.expect_in_log("Grace: hello from Grace")
    expect(ada.page.locator("#presence li")).to_have_text(["Ada", "Grace"])
    expect(grace.page.locator("#presence li")).to_have_text(["Ada", "Grace"])

    time.sleep(0.5)
    assert elsewhere.log() == ""
    assert elsewhere.presence() == ["Linus"]
    side_by_side([ada, grace], SCREENSHOTS / "two-pages.png")
    for page in (ada, grace, elsewhere):
        page.close()


def test_presence_drops_a_closed_page(browser, browser_cluster):
    ada, grace = pages_on_two_replicas(browser, browser_cluster, "presence")
    expect(ada.page.locator("#presence li")).to_have_text(["Ada", "Grace"])
    grace.close()
    expect(ada.page.locator("#presence li")).to_have_text(["Ada"])
    ada.close()


def test_markup_is_shown_as_text(browser, browser_cluster):
    """Tests that a message and a name made of HTML are shown literally, never run."""
    attack = '<img src=x onerror="window.__owned = 1">'
    ada = ChatPage(browser, browser_cluster, "xss", '<b onmouseover="x">Ada</b>')
    ada.post(attack)
    ada.expect_in_log(attack)
    expect(ada.page.locator("#presence li")).to_have_text(['<b onmouseover="x">Ada</b>'])
    assert ada.page.evaluate("window.__owned") is None
    assert ada.page.locator("#chat-log img, #presence b").count() == 0
    ada.close()


def test_killed_replica_costs_a_visible_reconnect_and_nothing_typed(browser, browser_cluster):
    """Tests that killing the replica behind a page shows it reconnecting, brings it back,
    keeps what the person typed, and chat goes on both ways."""
    ada, grace = pages_on_two_replicas(browser, browser_cluster, "failover")
    victim = browser_cluster.process_pids()[ada.replica]
    ada.page.fill("#chat-message-input", "typed before the crash")
    os.kill(victim, signal.SIGKILL)

    expect(ada.page.locator("#connection-state")).to_contain_text("reconnecting", timeout=5000)
    started = time.monotonic()
    ada.wait_live(timeout=20000)
    reconnect_seconds = time.monotonic() - started
    print(f"reconnected after {reconnect_seconds:.1f} s, now on {ada.replica}")
    assert ada.page.locator("#chat-message-input").input_value() == "typed before the crash"

    ada.page.click("#chat-message-submit")
    grace.expect_in_log("Ada: typed before the crash")
    grace.post("welcome back")
    ada.expect_in_log("Grace: welcome back")
    assert reconnect_seconds < 15
    # The killed replica's entry for Ada is a ghost until CHAT_PRESENCE_TTL (3 s here)
    # and a sweep have passed; then each name is listed once.
    expect(grace.page.locator("#presence li")).to_have_text(["Ada", "Grace"], timeout=10000)
    expect(ada.page.locator("#presence li")).to_have_text(["Ada", "Grace"], timeout=10000)
    for page in (ada, grace):
        page.close()
