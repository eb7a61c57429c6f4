"""The chat protocol's client (asyncio `websockets`), in two kinds over one connect:

ChatClient: one connection, read frame by frame; what the tests use.
ResumingClient: a chat user that reconnects after every close, resumes from the last
message it saw and resends, with the same ref, what was not answered; what load tests
and fault drills use. A message refused with an error is recorded, not resent, except
`rate_limited` ones, and, if asked, `unavailable` ones (as the browser page does), which
are resent with the same ref a bounded number of times.
"""

import asyncio
import json
import random
from collections import Counter
from urllib.parse import urlencode

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from chat.protocol import (
    CLOSE_TRY_AGAIN_LATER,
    GAP_NONE,
    PRESENCE,
    PRESENCE_DIFF,
    RATE_LIMITED,
    SUBPROTOCOL,
    UNAVAILABLE,
)

from .ledger import Received

CONNECT_ERRORS = (OSError, TimeoutError, EOFError, WebSocketException)
MAX_CONNECTS = 500  # per client and run: a bound on the reconnect loop
MAX_RATE_LIMITED_RETRIES = 40
RATE_LIMITED_RETRY_S = 0.5
UNAVAILABLE_RETRY_S = 1.0  # as room.js
BACKOFF_FIRST, BACKOFF_CAP = 0.1, 1.0  # seconds, doubling, full jitter
TRY_AGAIN_LATER_EXTRA_S = 0.5
# Clients pace themselves below the limit the welcome frame states, so that the
# backlog resent after a reconnect gets through.
PACE_SHARE_OF_RATE, PACE_SHARE_OF_BURST = 0.8, 0.5


async def open_socket(url, origin, open_timeout=30, **options):
    """A WebSocket to the chat at `url` that offers the protocol's subprotocol."""
    return await connect(
        url, origin=origin, subprotocols=[SUBPROTOCOL], open_timeout=open_timeout, **options
    )


def chat_query(name=None, last_id=None, epoch=None):
    """The handshake's query string: a display name, and where to resume from."""
    query = {}
    if name is not None:
        query["name"] = name
    if last_id is not None:
        query["last_id"] = last_id
        if epoch is not None:
            query["epoch"] = epoch
    return f"?{urlencode(query)}" if query else ""


def apply_presence(members, frame):
    """Applies a presence snapshot or diff to `members` (id -> display name), as the
    room page does: a diff adds and drops by id, so one applied twice changes
    nothing. Returns the room's count."""
    if frame["type"] == PRESENCE:
        members.clear()
        members.update((member["id"], member["name"]) for member in frame["members"])
    else:
        for member in frame["left"]:
            members.pop(member, None)
        members.update((member["id"], member["name"]) for member in frame["joined"])
    return frame["count"]


def message_frame(message, ref=None):
    return json.dumps({"message": message} if ref is None else {"message": message, "ref": ref})


class ChatClient:
    """One connection of the chat protocol, read frame by frame."""

    def __init__(self, socket, welcome):
        self.socket = socket
        self.welcome = welcome
        self.members = {}  # id -> display name, from the presence frames
        self.member_count = None  # the room's, from the latest presence frame
        self.presence_frames = self.presence_bytes = 0
        self.replayed = []  # chat frames replayed on joining (async consumer)
        self.history = None  # the "history" frame that ended them

    @property
    def replica(self):
        return self.welcome["replica"]

    async def say(self, message, ref=None):
        await self.socket.send(message_frame(message, ref))

    async def receive(self, timeout=5):
        """The next frame, presence frames aside: they are applied to `members`."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            text = await asyncio.wait_for(self.socket.recv(), max(remaining, 0))
            frame = json.loads(text)
            if frame["type"] not in (PRESENCE, PRESENCE_DIFF):
                return frame
            self.member_count = apply_presence(self.members, frame)
            self.presence_frames += 1
            self.presence_bytes += len(text.encode())

    def names(self):
        """The display names of `members`, sorted, once per connection."""
        return sorted(self.members.values())

    async def receive_chat(self, timeout=5):
        frame = await self.receive(timeout)
        assert frame["type"] == "chat", frame
        return frame

    async def assert_silent(self, timeout=0.5):
        try:
            frame = await self.receive(timeout)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected frame: {frame}")

    async def close(self):
        await self.socket.close()


async def join(cluster, room="lobby", replica=None, query="", open_timeout=30, **options):
    """Connects through nginx, or straight to replica number `replica`; `query` is
    the URL's query string, such as chat_query(last_id=3, epoch="ab")."""
    socket = await open_socket(
        cluster.ws_url(room, replica) + query, cluster.origin, open_timeout, **options
    )
    welcome = json.loads(await asyncio.wait_for(socket.recv(), 5))
    assert welcome["type"] == "welcome", welcome
    client = ChatClient(socket, welcome)
    if welcome["consumer"] == "async":
        # The room's newest messages come first, ended by a "history" frame.
        while (frame := await client.receive())["type"] != "history":
            client.replayed.append(frame)
        client.history = frame
    return client


async def read_until_closed(client, timeout=15):
    """Reads and drops frames until the server closes the socket."""
    try:
        while True:
            await asyncio.wait_for(client.socket.recv(), timeout)
    except ConnectionClosed:
        return


class Pacer:
    """A token bucket that waits: the client's own rate limit, unpaced until set."""

    def __init__(self):
        self.rate = None
        self.burst = self.tokens = 0
        self.updated = None

    def set_limit(self, rate, burst):
        if self.rate is None:
            self.tokens = burst
        self.rate, self.burst = rate, burst
        self.tokens = min(self.tokens, burst)

    async def wait(self):
        if self.rate is None:
            return
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            if self.updated is not None:
                self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            if self.tokens >= 1:
                self.tokens -= 1
                return
            await asyncio.sleep((1 - self.tokens) / self.rate)


class ResumingClient:
    """One chat user: a connection loop that reconnects and resumes, and a sender.
    `messages` maps the ref of every message of the run to its ledger.Message; a
    message's text is its ref."""

    def __init__(self, cluster, room, name, messages, keep_timeline=True, unavailable_retries=0):
        self.cluster = cluster
        # Error code -> (times a message is resent after it, seconds to wait first).
        self.retries = {
            RATE_LIMITED: (MAX_RATE_LIMITED_RETRIES, RATE_LIMITED_RETRY_S),
            UNAVAILABLE: (unavailable_retries, UNAVAILABLE_RETRY_S),
        }
        self.room = room
        self.name = name
        self.messages = messages
        self.keep_timeline = keep_timeline
        self.epoch = None  # resume position: the last (epoch, id) seen
        self.last_id = None
        self.received = Received()
        self.timeline = []  # (received at, created at) of first receptions
        self.pending = {}  # ref -> Message, sent or to send, not answered
        self.sequence = 0
        self.socket = None  # the connection, once its history frame came
        self.connection = 0  # connections made
        self.ready = asyncio.Event()
        self.closing = False
        self.replica = None
        self.replicas = Counter()  # connections per replica
        self.closes = Counter()  # close codes of connections the client did not end
        self.connect_failures = Counter()
        self.gaps = Counter()
        self.errors = Counter()
        self.losses = []  # times a connection was lost
        self.resumed = []  # (lost at, resumed at)
        self.acks = []  # (received at, sent at): for ack recovery
        self.refusals = []  # sent at, of refused attempts
        self.unknown_frames = 0
        self.task = None
        self.flusher = None
        self.close_log = []  # (at, replica, code) of closes the client did not ask for
        self.pacer = Pacer()
        self.socket_was_ready = False
        self.lost_at = None
        self.crashed = None

    # Connection

    def url(self):
        return self.cluster.ws_url(self.room) + chat_query(self.name, self.last_id, self.epoch)

    async def run(self, deadline):
        """Connects, and reconnects after every close, until closed or `deadline`."""
        loop = asyncio.get_running_loop()
        backoff = BACKOFF_FIRST
        try:
            while not self.closing and loop.time() < deadline and self.connection < MAX_CONNECTS:
                code = await self.session()
                if self.closing:
                    return
                if self.socket_was_ready:  # a working connection was lost
                    self.lost_at = loop.time()
                    self.losses.append(self.lost_at)
                    backoff = BACKOFF_FIRST
                delay = random.uniform(0, backoff)
                if code == CLOSE_TRY_AGAIN_LATER:
                    delay += TRY_AGAIN_LATER_EXTRA_S
                backoff = min(backoff * 2, BACKOFF_CAP)
                await asyncio.sleep(delay)
        except Exception as error:  # a bug here must show in the figures, not hang
            self.crashed = repr(error)
            raise

    async def session(self):
        """One connection, until it closes: its close code, or None if it did not open."""
        self.connection += 1
        self.socket_was_ready = False
        try:
            socket = await open_socket(
                self.url(),
                self.cluster.origin,
                open_timeout=5,
                close_timeout=2,
                proxy=None,
                compression=None,
            )
        except InvalidStatus as error:
            self.connect_failures[f"HTTP {error.response.status_code}"] += 1
            return None
        except CONNECT_ERRORS as error:
            self.connect_failures[type(error).__name__] += 1
            return None
        try:
            while True:
                self.handle(json.loads(await socket.recv()), socket)
        except ConnectionClosed:
            pass
        finally:
            self.socket = None
            self.ready.clear()
            if self.flusher:
                self.flusher.cancel()
        code = socket.close_code
        if not self.closing:
            self.closes[code] += 1
            self.close_log.append((asyncio.get_running_loop().time(), self.replica, code))
        return code

    # Frames from the server

    def handle(self, frame, socket):
        kind = frame.get("type")
        now = asyncio.get_running_loop().time()
        if kind == "chat":
            self.on_chat(frame, now)
        elif kind == "ack":
            self.on_ack(frame, now)
        elif kind == "error":
            self.on_error(frame, now)
        elif kind == "history":
            self.on_history(frame, socket, now)
        elif kind == "welcome":
            self.replica = frame.get("replica")
            self.replicas[self.replica] += 1
            self.pacer.set_limit(
                frame["rate_limit"] * PACE_SHARE_OF_RATE,
                max(int(frame["rate_burst"] * PACE_SHARE_OF_BURST), 1),
            )
        elif kind not in (PRESENCE, PRESENCE_DIFF):
            self.unknown_frames += 1

    def on_history(self, frame, socket, now):
        if frame.get("gap", GAP_NONE) != GAP_NONE:
            self.gaps[frame["gap"]] += 1
        self.set_position(frame.get("epoch"), frame.get("last_id") or 0, replace=True)
        self.socket = socket
        self.socket_was_ready = True
        if self.lost_at is not None:
            self.resumed.append((self.lost_at, now))
            self.lost_at = None
        self.ready.set()
        self.flusher = asyncio.get_running_loop().create_task(self.flush())

    def set_position(self, epoch, message_id, replace=False):
        if replace or epoch != self.epoch or self.last_id is None or message_id > self.last_id:
            self.epoch, self.last_id = epoch, message_id

    def on_chat(self, frame, now):
        epoch, message_id = frame["epoch"], frame["id"]
        self.set_position(epoch, message_id)
        before = self.received.add(epoch, message_id)
        message = self.messages.get(frame.get("message"))
        if message is None:
            self.unknown_frames += 1
            return
        message.keys_seen.add((epoch, message_id))
        if before == 0 and self.keep_timeline:
            self.timeline.append((now, message.created))

    def on_ack(self, frame, now):
        message = self.messages.get(frame.get("ref"))
        if message is None:
            self.unknown_frames += 1
            return
        key = (frame["epoch"], frame["id"])
        if message.outcome is None:
            message.outcome, message.key, message.answered_at = "acked", key, now
            message.duplicate_ack = bool(frame.get("duplicate"))
            self.acks.append((now, message.last_sent))
        elif message.key != key:
            message.keys_seen.add(key)  # acknowledged again under another id
        self.pending.pop(message.ref, None)

    def on_error(self, frame, now):
        code = frame.get("code")
        self.errors[code] += 1
        message = self.messages.get(frame.get("ref"))
        if message is None or message.outcome is not None:
            return
        limit, delay = self.retries.get(code, (0, 0))
        if message.retries[code] < limit:
            message.retries[code] += 1
            message.connection = None
            asyncio.get_running_loop().call_later(delay, self.retry, message)
            return
        message.outcome, message.refusal, message.answered_at = "refused", code, now
        self.refusals.append(message.last_sent)
        self.pending.pop(message.ref, None)

    # Sending

    async def submit(self, message):
        """Sends a new message now if connected, else after the next resume."""
        self.pending[message.ref] = message
        await self.transmit(message)

    async def transmit(self, message):
        if self.socket is None:
            return
        await self.pacer.wait()
        socket = self.socket
        if socket is None or message.outcome is not None:
            return
        message.connection = self.connection
        message.attempts += 1
        message.last_sent = asyncio.get_running_loop().time()
        try:
            await socket.send(message_frame(message.ref, message.ref))
        except ConnectionClosed:
            message.connection = None  # resent after the reconnect

    def retry(self, message):
        if message.outcome is None and self.socket is not None and message.connection is None:
            asyncio.get_running_loop().create_task(self.transmit(message))

    async def flush(self):
        """Sends, in order, what is pending and was not sent on this connection."""
        for message in list(self.pending.values()):
            if self.socket is None:
                return
            if message.outcome is None and message.connection != self.connection:
                await self.transmit(message)

    async def close(self):
        self.closing = True
        socket = self.socket
        if socket is not None:
            await socket.close()
