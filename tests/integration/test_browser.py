"""The chat as people use it: real Chromium pages (Debian's chromium, driven by
Playwright) through nginx, on clusters of their own, since tests kill replicas and
restart Redis."""

import asyncio
import json
import os
import re
import secrets
import signal
import threading
import time
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import expect, sync_playwright
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidHandshake, WebSocketException
from websockets.sync.client import connect as sync_connect

from chat.protocol import CLOSE_SERVICE_RESTART, CLOSE_TRY_AGAIN_LATER, SUBPROTOCOL
from harness.paths import ROOT

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
# Run in every page before its own scripts: marks the load (a reload would set it
# anew) and records each WebSocket the page opens and the code it was closed with.
PAGE_PROBE = """
window.__loadedAt = performance.timeOrigin;
window.__sockets = [];
window.WebSocket = class extends window.WebSocket {
    constructor(...args) {
        super(...args);
        const socket = {openedAt: performance.now(), closedAt: null, code: null};
        window.__sockets.push(socket);
        this.addEventListener('close', (e) => {
            socket.closedAt = performance.now();
            socket.code = e.code;
        });
    }
};
"""


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


class ChatPage:
    """One person's tab: a browser context of its own (its own name in localStorage)."""

    def __init__(self, browser, cluster, room, name, route_sockets=None):
        self.context = browser.new_context(viewport={"width": 1100, "height": 560})
        self.context.add_init_script(f"localStorage.setItem('chat-display-name', '{name}')")
        self.context.add_init_script(PAGE_PROBE)
        if route_sockets:
            self.context.route_web_socket(re.compile(r"/ws/chat/"), route_sockets)
        self.page = self.context.new_page()
        self.page.goto(f"{cluster.lb_url}/chat/{room}/")
        self.wait_live()
        self.loaded_at = self.page.evaluate("window.__loadedAt")

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

    def lines(self):
        return self.log().splitlines()

    def notice(self):
        return self.page.locator("#chat-notice").text_content()

    def sockets(self):
        """Every WebSocket the page made: openedAt, closedAt (ms) and the close code."""
        return self.page.evaluate("window.__sockets")

    def assert_not_reloaded(self):
        assert self.page.evaluate("window.__loadedAt") == self.loaded_at, "the page was reloaded"

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


class SocketSwitch:
    """Between a page and the server (Playwright's WebSocket routing): passes frames
    through, or, cut off, holds the page on a socket that never hears anything. It
    can also answer the page's next message itself with an error, or keep acks back."""

    def __init__(self):
        self.cut = False
        self.current = None
        self.refuse_next = None  # an error code to answer the next message with
        self.drop_acks = False
        self.sent = []  # what the page sent, as parsed frames
        self.acks = []  # the acks the server sent

    def __call__(self, route):
        self.current = route
        if self.cut:
            return
        server = route.connect_to_server()
        route.on_message(lambda message: self.from_page(route, server, message))
        server.on_message(lambda message: self.from_server(route, message))

    def from_page(self, route, server, message):
        frame = json.loads(message)
        self.sent.append(frame)
        if self.refuse_next:
            error = {"type": "error", "code": self.refuse_next, "ref": frame["ref"]}
            route.send(json.dumps({**error, "detail": "Not sent (by the test); try again."}))
            self.refuse_next = None
        else:
            server.send(message)

    def from_server(self, route, message):
        frame = json.loads(message)
        if frame["type"] == "ack":
            self.acks.append(frame)
            if self.drop_acks:
                return
        route.send(message)

    def cut_off(self):
        self.cut = True
        self.current.close(code=CLOSE_SERVICE_RESTART, reason="cut off by the test")

    def restore(self):
        self.cut = False
        self.current.close(code=CLOSE_TRY_AGAIN_LATER, reason="back")


def say_many(cluster, room, messages):
    """Sends messages as "Bot" from a client of its own; returns when all are stored."""
    with sync_connect(
        cluster.ws_url(room) + "?name=Bot", origin=cluster.origin, subprotocols=[SUBPROTOCOL]
    ) as socket:
        for message in messages:
            socket.send(json.dumps({"message": message, "ref": secrets.token_hex(8)}))
        acks = 0
        while acks < len(messages):
            frame = json.loads(socket.recv(timeout=10))
            assert frame["type"] != "error", frame
            acks += frame["type"] == "ack"


def test_a_gap_in_the_history_is_shown_and_none_is_not(browser, browser_cluster):
    """Tests that a page that resumes after missing more than the room's history keeps
    (5 messages here) shows the newest, once each, and a notice; a resume without a gap
    shows no notice."""
    switch = SocketSwitch()
    ada = ChatPage(browser, browser_cluster, "gaps", "Ada", route_sockets=switch)
    ada.post("before")
    ada.expect_in_log("Ada: before")

    # Missing 2 messages: replayed, no notice.
    switch.cut_off()
    expect(ada.page.locator("#connection-state")).to_contain_text("reconnecting")
    say_many(browser_cluster, "gaps", ["missed-1", "missed-2"])
    switch.restore()
    ada.wait_live()
    ada.expect_in_log("Bot: missed-2")
    assert ada.lines() == ["Ada: before", "Bot: missed-1", "Bot: missed-2"]
    assert ada.notice() == ""

    # Missing 8: the oldest 3 are no longer kept.
    switch.cut_off()
    expect(ada.page.locator("#connection-state")).to_contain_text("reconnecting")
    say_many(browser_cluster, "gaps", [f"lost-{n}" for n in range(1, 9)])
    switch.restore()
    ada.wait_live()
    ada.expect_in_log("Bot: lost-8")
    expect(ada.page.locator("#chat-notice")).to_contain_text("may be missing")
    assert ada.lines() == ["Ada: before", "Bot: missed-1", "Bot: missed-2"] + [
        f"Bot: lost-{n}" for n in range(4, 9)
    ]
    ada.assert_not_reloaded()
    ada.close()


class Sender:
    """An independent client (Python websockets, through nginx) that sends numbered
    messages "msg-N" as "Bot" at a steady pace from a thread of its own, and records
    which were acknowledged and which refused. After a reconnect it sends the
    unanswered ones again with their refs, so that none is published twice."""

    def __init__(self, cluster, room, interval=0.2):
        self.url = cluster.ws_url(room) + "?name=Bot"
        self.origin = cluster.origin
        self.interval = interval
        self.prefix = secrets.token_hex(4)
        self.lock = threading.Lock()
        self.acked = {}  # number -> (epoch, id), in the order of the acks
        self.refused = {}  # number -> error code
        self.unanswered = {}  # ref -> number
        self.connections = 0
        self.failures = []  # why connections ended
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self.run()), daemon=True)

    def start(self):
        self.thread.start()

    def stop(self, timeout=20):
        """Stops sending new messages and returns once every sent one is answered."""
        self.stopping.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"unanswered after {timeout} s: {self.unanswered}"

    def done(self):
        return self.stopping.is_set() and not self.unanswered

    def frame(self, ref):
        return json.dumps({"message": f"msg-{self.unanswered[ref]}", "ref": ref})

    async def run(self):
        number = 0
        while not self.done():
            try:
                async with connect(
                    self.url, origin=self.origin, subprotocols=[SUBPROTOCOL], open_timeout=5
                ) as socket:
                    self.connections += 1
                    reader = asyncio.create_task(self.read(socket))
                    for ref in list(self.unanswered):
                        await socket.send(self.frame(ref))
                    while not self.done():
                        if not self.stopping.is_set():
                            number += 1
                            ref = f"{self.prefix}-{number}"
                            with self.lock:
                                self.unanswered[ref] = number
                            await socket.send(self.frame(ref))
                        finished, _ = await asyncio.wait({reader}, timeout=self.interval)
                        if finished:
                            reader.result()
                            self.failures.append(f"closed {socket.close_code}")
                            break
                    reader.cancel()
            except (OSError, TimeoutError, InvalidHandshake, WebSocketException) as error:
                self.failures.append(repr(error))
                await asyncio.sleep(0.3)

    async def read(self, socket):
        async for raw in socket:
            frame = json.loads(raw)
            if frame["type"] not in ("ack", "error") or "ref" not in frame:
                continue
            with self.lock:
                number = self.unanswered.pop(frame["ref"], None)
                if number is None:
                    continue
                if frame["type"] == "ack":
                    self.acked[number] = (frame["epoch"], frame["id"])
                else:
                    self.refused[number] = frame["code"]

    def acked_numbers(self):
        with self.lock:
            return list(self.acked)


def catch_up(page, sender, more=5, timeout=20):
    """Waits until the sender has `more` messages acknowledged, then until the page
    shows the newest one acknowledged."""
    deadline = time.monotonic() + timeout
    target = len(sender.acked_numbers()) + more
    while len(sender.acked_numbers()) < target:
        assert time.monotonic() < deadline, (
            f"sender stuck: {len(sender.acked_numbers())} acked, refused "
            f"{sender.refused}, connection failures {sender.failures}"
        )
        time.sleep(0.1)
    page.expect_in_log(f"Bot: msg-{max(sender.acked_numbers())}\n", timeout * 1000)


def in_background(cluster, *arguments):
    """Runs a cluster command in a thread; finished() waits for it and checks it."""
    result = {}
    thread = threading.Thread(
        target=lambda: result.update(completed=cluster.run(*arguments, check=False))
    )
    thread.start()
    return thread, result


def finished(background, timeout=60, check=True):
    thread, result = background
    thread.join(timeout)
    assert not thread.is_alive(), f"still running after {timeout} s"
    completed = result["completed"]
    assert not check or completed.returncode == 0, completed.stdout + completed.stderr
    return completed


def test_a_page_keeps_a_complete_log_through_faults_without_reloading(browser, faults_cluster):
    """Tests that a page shows every message a steady sender got acknowledged, once each
    and in order, and delivers its own, through (a) a SIGKILL of its replica, (b) a
    Redis restart that loses every key and (c) a rolling restart of all replicas, with
    no reload."""
    cluster = faults_cluster
    started = time.monotonic()
    ada = ChatPage(browser, cluster, "faults", "Ada")
    state = ada.page.locator("#connection-state")
    sender = Sender(cluster, "faults")
    sender.start()
    try:
        catch_up(ada, sender)

        # (a) The page's replica is killed; supervisord starts it again.
        victim = ada.replica
        os.kill(cluster.process_pids()[victim], signal.SIGKILL)
        expect(state).to_contain_text("reconnecting", timeout=5000)
        ada.post("ada-1 sent while reconnecting")
        ada.wait_live(timeout=20000)
        catch_up(ada, sender)
        ada.expect_in_log("Ada: ada-1 sent while reconnecting\n")
        assert ada.notice() == "", "a resume without a gap showed a notice"
        kill_seconds = time.monotonic() - started

        # (b) Redis restarts without persistence: history, ids and refs are lost.
        restart = in_background(cluster, "restart", "redis")
        time.sleep(0.3)
        ada.post("ada-2 sent while Redis restarts")
        finished(restart)
        expect(ada.page.locator("#chat-notice")).to_contain_text("may be missing", timeout=15000)
        catch_up(ada, sender)
        ada.expect_in_log("Ada: ada-2 sent while Redis restarts\n", timeout=15000)
        redis_seconds = time.monotonic() - started

        # (c) Rolling restart: each replica drains (1012) and is ready before the next.
        # The page's live socket is the last it opened; the restart drains it too.
        live_socket = len(ada.sockets()) - 1
        restart = in_background(cluster, "restart")
        time.sleep(0.5)
        ada.post("ada-3 sent during the rolling restart")
        rolled = finished(restart, timeout=80)
        catch_up(ada, sender)
        ada.expect_in_log("Ada: ada-3 sent during the rolling restart\n")
        # Closed with 1012 by a draining replica, the page was back within the jitter.
        sockets = ada.sockets()
        restarts = [
            n
            for n, s in enumerate(sockets)
            if n >= live_socket and s["code"] == CLOSE_SERVICE_RESTART
        ]
        assert restarts, f"no 1012 seen: {sockets}\n{rolled.stdout}"
        for n in restarts:
            assert sockets[n + 1]["openedAt"] - sockets[n]["closedAt"] < 1000, sockets
    finally:
        sender.stop()

    ada.expect_in_log(f"Bot: msg-{max(sender.acked_numbers())}\n")
    time.sleep(0.5)  # anything shown twice would arrive now
    lines = ada.lines()
    shown = [int(m[1]) for line in lines if (m := re.fullmatch(r"Bot: msg-(\d+)", line))]
    epochs = list(dict.fromkeys(epoch for epoch, _ in sender.acked.values()))
    acked = sorted(
        sender.acked, key=lambda n: (epochs.index(sender.acked[n][0]), sender.acked[n][1])
    )
    missing = sorted(set(acked) - set(shown))
    assert not missing, f"acknowledged but not shown: {missing}"
    assert len(shown) == len(set(shown)), (
        f"shown twice: {sorted(n for n in shown if shown.count(n) > 1)}"
    )
    assert not set(sender.refused) & set(sender.acked)
    # Shown: what was acknowledged, in id order; the sender's numbers rise with it.
    assert [n for n in shown if n in sender.acked] == acked
    assert shown == sorted(shown)
    for own in (
        "ada-1 sent while reconnecting",
        "ada-2 sent while Redis restarts",
        "ada-3 sent during the rolling restart",
    ):
        assert lines.count(f"Ada: {own}") == 1, own
    expect(ada.page.locator("#chat-pending li")).to_have_count(0)
    ada.assert_not_reloaded()

    seconds = time.monotonic() - started
    print(
        f"\n{len(acked)} messages acknowledged in {len(epochs)} epochs, all shown once; "
        f"refused {sender.refused}; page sockets closed with "
        f"{[socket['code'] for socket in ada.sockets()]}; "
        f"sender connections {sender.connections}; kill done at {kill_seconds:.1f} s, "
        f"Redis at {redis_seconds:.1f} s, rolling restart at {seconds:.1f} s"
    )
    assert seconds < 90
    ada.close()


def test_the_outbox_sends_until_acknowledged_and_never_twice(browser, browser_cluster):
    """Tests that a message refused as unavailable is sent again with its ref, that one
    sent while disconnected waits in the outbox, and that one whose ack was lost is sent
    again on reconnecting and shown once (the server acknowledges the ref as a duplicate)."""
    switch = SocketSwitch()
    ada = ChatPage(browser, browser_cluster, "outbox", "Ada", route_sockets=switch)
    pending = ada.page.locator("#chat-pending li")

    switch.refuse_next = "unavailable"
    ada.post("refused once")
    expect(ada.page.locator("#chat-error")).to_contain_text("Retrying")
    ada.expect_in_log("Ada: refused once\n")
    expect(pending).to_have_count(0)
    refs = [frame["ref"] for frame in switch.sent]
    assert refs == [refs[0], refs[0]], "the retry did not reuse the ref"

    switch.cut_off()
    expect(ada.page.locator("#connection-state")).to_contain_text("reconnecting")
    ada.post("typed while cut off")
    expect(pending).to_have_text(["typed while cut off"])
    assert ada.page.locator("#chat-message-input").input_value() == ""
    switch.restore()
    ada.wait_live()
    ada.expect_in_log("Ada: typed while cut off\n")
    expect(pending).to_have_count(0)

    switch.drop_acks = True
    ada.post("ack lost")
    ada.expect_in_log("Ada: ack lost\n")
    expect(pending).to_have_text(["ack lost"])
    switch.drop_acks = False
    switch.current.close(code=CLOSE_SERVICE_RESTART, reason="restart")
    expect(pending).to_have_count(0)
    refs = [frame["ref"] for frame in switch.sent if frame["message"] == "ack lost"]
    assert refs == [refs[0], refs[0]], "not sent again with its ref on reconnecting"
    assert [ack["duplicate"] for ack in switch.acks if ack["ref"] == refs[0]] == [False, True]
    time.sleep(0.5)
    assert ada.lines() == ["Ada: refused once", "Ada: typed while cut off", "Ada: ack lost"]
    ada.assert_not_reloaded()
    ada.close()
