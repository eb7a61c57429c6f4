"""Real Chromium pages of the chat (Debian's chromium, driven by Playwright), and the
clients and helpers the browser tests drive them with."""

import asyncio
import json
import re
import secrets
import threading
import time

from PIL import Image
from playwright.sync_api import expect
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidHandshake, WebSocketException
from websockets.sync.client import connect as sync_connect

from chat.protocol import CLOSE_SERVICE_RESTART, CLOSE_TRY_AGAIN_LATER, SUBPROTOCOL

from .paths import ROOT

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

# Run before the page's own scripts: records every violation of the page's policy.
CSP_PROBE = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', (e) =>
    window.__cspViolations.push(e.violatedDirective + ' ' + e.blockedURI));
"""


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
        # The room page keeps the tutorial's textarea value on its message list.
        return self.page.locator("#chat-log").evaluate("log => log.value")

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
