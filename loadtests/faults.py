#!/usr/bin/env python3
"""`make chaos`: faults injected into a live local cluster under steady chat traffic,
and what the clients saw. A library (tests/integration/test_faults.py) and a CLI:

    python loadtests/faults.py --scenario all --clients 30 --rooms 3 --rate 5

It starts its own cluster (3 replicas, Redis, nginx; tests.cluster.LocalCluster, free
ports, a temporary run directory whose logs/ it keeps) with CHAT_DRAIN_SECONDS=2.
Per scenario, in fresh rooms: independent asyncio `websockets` clients join through
nginx, so that they spread over the replicas; each sends numbered messages at a steady
rate, each with a unique ref. After --warmup seconds the fault is injected:

    kill     SIGKILL to the replica serving the most clients; supervisord restarts it
    redis    Redis restarted (`cluster.py restart redis`): the channel layer's
             connections break and every room's ids, history and refs are lost
    rolling  rolling restart of every replica (`cluster.py restart`): each drains
             (close 1012 over CHAT_DRAIN_SECONDS) and is ready before the next

Traffic goes on until --seconds have passed and at least --settle seconds after the
injection finished; then sending stops and the run waits (at most --quiesce seconds)
until every message is answered and every client holds every acknowledged message of
its room.

A client reconnects on any close (short jittered backoff, bounded), resuming with the
last id and epoch it saw; after a reconnect it resends its pending messages (sent, not
answered) with the same ref, which the server acknowledges once. A message refused with
`unavailable` is counted as refused and not resent: that is the honest outcome.

Figures per scenario:
    sent         messages the clients made (one ref each); resent = extra frames sent
    acked        messages acknowledged; refused: answered with an error (unavailable);
                 unanswered: neither, when the run ended
    delivered    distinct messages each client received (min and max over clients)
    lost         acknowledged messages, (epoch, id) from their acks, that some client
                 of their room never received; missing = (message, client) pairs
    duplicated   a frame with the same (epoch, id) received again by one client, across
                 its connections; republished: one ref delivered or acknowledged under
                 two different (epoch, id)
    refused_delivered  messages refused with an error that clients received anyway
    gaps         history frames whose gap was not "none", by kind
    recovery     from the injection until every client has received a message first
                 sent after it; a client that lost its connection after the injection
                 also counts from that loss (the worst client and moment)
    ack_recovery from the injection until every client's sends are acknowledged again
                 (a send made after its last refused one)

Targets: for kill and rolling 0 lost, 0 duplicated, 0 republished, every message
answered, and (rolling) every close the clients saw is 1012; for redis every
acknowledged message delivered to every client of its room, everything else refused
with an error, 0 duplicated, nothing refused delivered, and recovery (both) within
--recovery-limit (5) seconds. The exit status is 1 when a target is missed.
"""

import argparse
import asyncio
import json
import os
import random
import re
import secrets
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlencode

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.cluster import LocalCluster  # noqa: E402

SCENARIOS = ("kill", "redis", "rolling")
SUBPROTOCOL = "chat.v1"
CLOSE_SERVICE_RESTART = 1012
CLOSE_TRY_AGAIN_LATER = 1013

CONNECT_ERRORS = (OSError, TimeoutError, EOFError, WebSocketException)
MAX_CONNECTS = 500  # per client and run: a bound on the reconnect loop
MAX_RATE_LIMITED_RETRIES = 40  # 0.5 s apart
# The service's default per-connection limit (CHAT_RATE_LIMIT, CHAT_RATE_BURST); clients
# pace themselves below it, so that the backlog resent after a reconnect gets through.
RATE_LIMIT, RATE_BURST = 10, 30
BACKOFF_FIRST, BACKOFF_CAP = 0.1, 1.0  # seconds, doubling, full jitter
LOST_EXAMPLES = 20  # lost messages described in the figures
LOG_PATTERN = re.compile(r"Traceback|\bERROR\b|\bCRITICAL\b|\bWARNING\b|Exception")
LOG_NOISE = ("Memory overcommit must be enabled",)  # Redis' start-up advice


@dataclass
class Options:
    clients: int = 30
    rooms: int = 3
    rate: float = 5.0  # messages per second per client
    seconds: float = 12.0  # traffic per scenario, at least
    warmup: float = 4.0  # traffic before the fault
    settle: float = 3.0  # traffic after the injection finished, at least
    quiesce: float = 20.0  # at most, after sending stopped
    drain_seconds: int = 2
    replicas: int = 3
    recovery_limit: float = 5.0
    settings: dict = field(default_factory=dict)  # more service settings, NAME -> value

    def cluster_settings(self):
        return {"CHAT_DRAIN_SECONDS": str(self.drain_seconds), **self.settings}


# --- Clients -----------------------------------------------------------------------


@dataclass(eq=False)
class Message:
    ref: str
    client: "Client"
    created: float  # when the client made it (its send time, had it been connected)
    last_sent: float | None = None  # the latest attempt
    attempts: int = 0
    connection: int | None = None  # the connection it was last sent on
    outcome: str | None = None  # "acked" or "refused"
    key: tuple | None = None  # (epoch, id) from its ack
    duplicate_ack: bool = False
    answered_at: float | None = None
    refusal: str | None = None
    rate_limited: int = 0
    keys_seen: set = field(default_factory=set)  # (epoch, id) it was delivered under


class Received:
    """What one client received: receive counts by epoch and id, compactly (a soak
    run holds millions)."""

    def __init__(self):
        self.counts = {}  # epoch -> bytearray indexed by id

    def add(self, epoch, message_id):
        """Counts a delivery; returns how many times it was received before."""
        counts = self.counts.setdefault(epoch, bytearray())
        if message_id >= len(counts):
            counts.extend(bytes(max(message_id + 1 - len(counts), len(counts))))
        before = counts[message_id]
        counts[message_id] = min(before + 1, 255)
        return before

    def __contains__(self, key):
        counts = self.counts.get(key[0])
        return counts is not None and key[1] < len(counts) and counts[key[1]] > 0

    def distinct(self):
        return sum(len(counts) - counts.count(0) for counts in self.counts.values())

    def duplicates(self):
        return sum(sum(c - 1 for c in counts if c > 1) for counts in self.counts.values())


class Pacer:
    """A token bucket that waits: the client's own rate limit."""

    def __init__(self, rate, burst):
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated = None

    async def wait(self):
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


class Client:
    """One chat user: a connection loop that reconnects and resumes, and a sender."""

    def __init__(self, traffic, index, room):
        self.traffic = traffic
        self.index = index
        self.room = room
        self.name = f"c{index}"
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
        self.pacer = Pacer(traffic.rate_limit * 0.8, max(traffic.rate_burst // 2, 1))

    # Connection

    def url(self):
        query = {"name": self.name}
        if self.last_id is not None:
            query["last_id"] = self.last_id
            if self.epoch is not None:
                query["epoch"] = self.epoch
        return f"{self.traffic.cluster.ws_url(self.room)}?{urlencode(query)}"

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
                    delay += 0.5
                backoff = min(backoff * 2, BACKOFF_CAP)
                await asyncio.sleep(delay)
        except Exception as error:  # a bug here must show in the figures, not hang
            self.crashed = repr(error)
            raise

    socket_was_ready = False
    lost_at = None
    crashed = None

    async def session(self):
        """One connection, until it closes: its close code, or None if it did not open."""
        self.connection += 1
        self.socket_was_ready = False
        try:
            socket = await connect(
                self.url(),
                origin=self.traffic.cluster.origin,
                subprotocols=[SUBPROTOCOL],
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
            if frame.get("gap", "none") != "none":
                self.gaps[frame["gap"]] += 1
            self.set_position(frame.get("epoch"), frame.get("last_id") or 0, replace=True)
            self.socket = socket
            self.socket_was_ready = True
            if self.lost_at is not None:
                self.resumed.append((self.lost_at, now))
                self.lost_at = None
            self.ready.set()
            self.flusher = asyncio.get_running_loop().create_task(self.flush())
        elif kind == "welcome":
            self.replica = frame.get("replica")
            self.replicas[self.replica] += 1
        elif kind != "presence":
            self.unknown_frames += 1

    def set_position(self, epoch, message_id, replace=False):
        if replace or epoch != self.epoch or self.last_id is None or message_id > self.last_id:
            self.epoch, self.last_id = epoch, message_id

    def on_chat(self, frame, now):
        epoch, message_id = frame["epoch"], frame["id"]
        self.set_position(epoch, message_id)
        before = self.received.add(epoch, message_id)
        message = self.traffic.messages.get(frame.get("message"))
        if message is None:
            self.unknown_frames += 1
            return
        message.keys_seen.add((epoch, message_id))
        if before == 0 and self.traffic.keep_timeline:
            self.timeline.append((now, message.created))

    def on_ack(self, frame, now):
        message = self.traffic.messages.get(frame.get("ref"))
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
        message = self.traffic.messages.get(frame.get("ref"))
        if message is None or message.outcome is not None:
            return
        if code == "rate_limited" and message.rate_limited < MAX_RATE_LIMITED_RETRIES:
            message.rate_limited += 1
            message.connection = None
            asyncio.get_running_loop().call_later(0.5, self.retry, message)
            return
        message.outcome, message.refusal, message.answered_at = "refused", code, now
        self.refusals.append(message.last_sent)
        self.pending.pop(message.ref, None)

    # Sending

    async def transmit(self, message):
        if self.socket is None:
            return
        await self.pacer.wait()
        socket = self.socket
        if socket is None or message.outcome is not None:
            return
        loop = asyncio.get_running_loop()
        message.connection = self.connection
        message.attempts += 1
        message.last_sent = loop.time()
        try:
            await socket.send(json.dumps({"message": message.ref, "ref": message.ref}))
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

    async def send_steadily(self):
        """One message every 1/rate seconds until the traffic's `sending_until`."""
        loop = asyncio.get_running_loop()
        interval = 1 / self.traffic.rate
        next_at = loop.time() + random.uniform(0, interval)
        while not self.closing and loop.time() < self.traffic.sending_until:
            now = loop.time()
            if now < next_at:
                await asyncio.sleep(min(next_at - now, 0.2))
                continue
            next_at += interval
            self.sequence += 1
            message = Message(f"{self.traffic.prefix}-{self.name}-{self.sequence}", self, now)
            self.traffic.messages[message.ref] = message
            self.pending[message.ref] = message
            await self.transmit(message)

    async def close(self):
        self.closing = True
        socket = self.socket
        if socket is not None:
            await socket.close()


class Traffic:
    """Clients in fresh rooms of one cluster: join, send steadily, settle, count."""

    def __init__(
        self,
        cluster,
        label,
        clients,
        rooms,
        rate,
        keep_timeline=True,
        rate_limit=RATE_LIMIT,
        rate_burst=RATE_BURST,
    ):
        self.cluster = cluster
        self.rate_limit = rate_limit
        self.rate_burst = rate_burst
        self.prefix = f"{label}-{secrets.token_hex(3)}"
        self.rooms = [f"{self.prefix}-r{number}" for number in range(rooms)]
        self.rate = rate
        self.keep_timeline = keep_timeline
        self.clients = [Client(self, n, self.rooms[n % rooms]) for n in range(clients)]
        self.messages = {}
        self.senders = []
        self.started = None
        self.sending_until = 0

    async def join(self, deadline, timeout=30):
        loop = asyncio.get_running_loop()
        for client in self.clients:
            client.task = loop.create_task(client.run(deadline))
        waiting = [client.ready.wait() for client in self.clients]
        try:
            await asyncio.wait_for(asyncio.gather(*waiting), timeout)
        except TimeoutError:
            missing = [c.name for c in self.clients if not c.ready.is_set()]
            raise RuntimeError(f"{len(missing)} clients did not join in {timeout} s") from None

    def start_sending(self, until):
        """Every client sends until `until` (loop time), which may be moved later."""
        loop = asyncio.get_running_loop()
        self.started = loop.time()
        self.sending_until = until
        self.senders = [loop.create_task(c.send_steadily()) for c in self.clients]

    async def stop_sending(self, timeout=10):
        self.sending_until = 0
        _, running = await asyncio.wait(self.senders, timeout=timeout)
        for task in running:
            task.cancel()

    def acked_by_room(self):
        rooms = {room: set() for room in self.rooms}
        for message in self.messages.values():
            if message.outcome == "acked":
                rooms[message.client.room].add(message.key)
        return rooms

    def settled(self):
        if any(client.pending or not client.ready.is_set() for client in self.clients):
            return False
        acked = self.acked_by_room()
        return all(all(key in c.received for key in acked[c.room]) for c in self.clients)

    async def quiesce(self, timeout, grace=1.0):
        """Waits until everything is answered and delivered, or `timeout`; then
        `grace` seconds for late duplicates. Returns the seconds it took."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        while loop.time() - started < timeout and not self.settled():
            await asyncio.sleep(0.25)
        took, settled = loop.time() - started, self.settled()
        await asyncio.sleep(grace)
        return took, settled

    async def close(self):
        await asyncio.gather(*(c.close() for c in self.clients), return_exceptions=True)
        tasks = [c.task for c in self.clients if c.task]
        _, running = await asyncio.wait(tasks, timeout=5)
        for task in running:
            task.cancel()

    def describe_lost(self, message, clients):
        """One lost message: when it was made and acknowledged (seconds after the traffic
        started), by whom, and who never received it (name@replica of their connection)."""
        return {
            "ref": message.ref,
            "key": list(message.key),
            "made_s": round(message.created - self.started, 3),
            "acked_s": round(message.answered_at - self.started, 3),
            "sender": f"{message.client.name}@{message.client.replica}",
            "attempts": message.attempts,
            "missing_on": [f"{c.name}@{c.replica}" for c in clients],
        }

    def counts(self):
        """The figures every run reports (see the module docstring)."""
        messages = list(self.messages.values())
        acked = self.acked_by_room()
        missing = Counter()
        lost = {}  # (room, key) -> clients that never received it
        for client in self.clients:
            absent = [key for key in acked[client.room] if key not in client.received]
            missing[client.name] = len(absent)
            for key in absent:
                lost.setdefault((client.room, key), []).append(client)
        by_key = {(m.client.room, m.key): m for m in messages if m.outcome == "acked"}
        delivered = [client.received.distinct() for client in self.clients]
        outcomes = Counter(message.outcome for message in messages)
        closes = Counter()
        for client in self.clients:
            closes.update(client.closes)
        return {
            "clients": len(self.clients),
            "rooms": len(self.rooms),
            "sent": len(messages),
            "resent": sum(max(m.attempts - 1, 0) for m in messages),
            "acked": outcomes["acked"],
            "acked_as_duplicate": sum(m.duplicate_ack for m in messages),
            "refused": outcomes["refused"],
            "refused_by_code": dict(Counter(m.refusal for m in messages if m.refusal)),
            "unanswered": outcomes[None],
            "delivered_min": min(delivered, default=0),
            "delivered_max": max(delivered, default=0),
            "delivered_total": sum(delivered),
            "epochs_per_room_min": min(
                (len({key[0] for key in keys}) for keys in acked.values()), default=0
            ),
            "lost": len(lost),
            "missing_deliveries": sum(missing.values()),
            "lost_examples": [
                self.describe_lost(by_key[room_key], clients)
                for room_key, clients in sorted(lost.items(), key=lambda i: by_key[i[0]].created)
            ][:LOST_EXAMPLES],
            "duplicated": sum(client.received.duplicates() for client in self.clients),
            "republished": sum(1 for m in messages if len(m.keys_seen | {m.key} - {None}) > 1),
            "client_crashes": [c.crashed for c in self.clients if c.crashed],
            "refused_delivered": sum(1 for m in messages if m.outcome == "refused" and m.keys_seen),
            "gaps": dict(sum((client.gaps for client in self.clients), Counter())),
            "connections": sum(client.connection for client in self.clients),
            "reconnects": sum(len(client.resumed) for client in self.clients),
            "reconnects_per_client": [len(client.resumed) for client in self.clients],
            "connection_losses_min": min((len(c.losses) for c in self.clients), default=0),
            "unresumed": [c.name for c in self.clients if c.lost_at is not None],
            "closes": {str(code): n for code, n in sorted(closes.items(), key=str)},
            "connect_failures": dict(
                sum((client.connect_failures for client in self.clients), Counter())
            ),
            "errors": dict(sum((client.errors for client in self.clients), Counter())),
            "unknown_frames": sum(client.unknown_frames for client in self.clients),
            "odd_closes": [
                {"client": c.name, "at_s": round(at - self.started, 2), "replica": r, "code": code}
                for c in self.clients
                for at, r, code in c.close_log
                if code != CLOSE_SERVICE_RESTART
            ][:LOST_EXAMPLES],
        }


# --- Recovery ----------------------------------------------------------------------


def first_fresh_delivery(client, since):
    """When the client first received a message created at or after `since`, after it."""
    return min((got for got, created in client.timeline if created >= since), default=None)


def delivery_recovery(clients, injected_at):
    """The worst, over clients and their outages from the injection on, of the time until
    the client received a message sent after the outage began; inf if one never did."""
    worst = 0.0
    for client in clients:
        starts = [injected_at, *(lost for lost in client.losses if lost >= injected_at)]
        for start in starts:
            got = first_fresh_delivery(client, start)
            worst = max(worst, float("inf") if got is None else got - start)
    return worst


def ack_recovery(clients, injected_at):
    """The worst, over clients, of the time from the injection until an ack of a send made
    after both the injection and the client's last refused send; inf if none came."""
    worst = 0.0
    for client in clients:
        refused = [sent for sent in client.refusals if sent is not None and sent >= injected_at]
        since = max([injected_at, *refused])
        acks = [got for got, sent in client.acks if sent is not None and sent >= since]
        worst = max(worst, min(acks) - injected_at if acks else float("inf"))
    return worst


# --- Faults ------------------------------------------------------------------------


def replica_names(cluster):
    return [f"chat-{number}" for number in range(1, cluster.replicas + 1)]


async def process_pids(cluster):
    return await asyncio.to_thread(cluster.process_pids)


async def wait_ready(cluster, timeout=60):
    """Until `cluster.py status` says every process runs and every replica is ready."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        result = await asyncio.to_thread(cluster.run, "status", check=False)
        if result.returncode == 0:
            return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"cluster not ready after {timeout} s:\n{result.stdout}")


async def wait_replaced(cluster, name, old_pid, timeout=60):
    """Until supervisord runs a new process for `name` and the cluster is ready."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        pid = (await process_pids(cluster)).get(name)
        if pid and pid != old_pid:
            await wait_ready(cluster, max(deadline - loop.time(), 1))
            return pid
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{name} (pid {old_pid}) was not restarted within {timeout} s")


async def inject_kill(cluster, traffic, fault):
    serving = Counter(c.replica for c in traffic.clients if c.ready.is_set())
    name = max(replica_names(cluster), key=lambda n: (serving[n], n == "chat-1"))
    pid = (await process_pids(cluster))[name]
    fault["action"] = f"SIGKILL {name} (pid {pid}, serving {serving[name]} clients)"
    os.kill(pid, signal.SIGKILL)
    fault["injected_at"] = asyncio.get_running_loop().time()
    new_pid = await wait_replaced(cluster, name, pid)
    fault["restarted"] = {name: [pid, new_pid]}
    fault["back_after_s"] = asyncio.get_running_loop().time() - fault["injected_at"]


async def inject_redis(cluster, traffic, fault):
    pid = (await process_pids(cluster))["redis"]
    fault["action"] = f"cluster.py restart redis (pid {pid}; nothing persisted)"
    fault["injected_at"] = asyncio.get_running_loop().time()
    result = await asyncio.to_thread(cluster.run, "restart", "redis", check=False)
    fault["back_after_s"] = asyncio.get_running_loop().time() - fault["injected_at"]
    fault["restarted"] = {"redis": [pid, (await process_pids(cluster)).get("redis")]}
    if result.returncode != 0:
        fault["errors"].append(f"cluster.py restart redis: {last_line(result.stderr)}")


async def inject_rolling(cluster, traffic, fault):
    before = await process_pids(cluster)
    names = replica_names(cluster)
    fault["action"] = f"cluster.py restart ({', '.join(names)}, one at a time)"
    fault["injected_at"] = asyncio.get_running_loop().time()
    result = await asyncio.to_thread(cluster.run, "restart", check=False)
    if result.returncode != 0:
        # The fault still has to happen: each replica gets SIGTERM by PID (it drains
        # and exits; supervisord starts it again), ready before the next.
        fault["errors"].append(f"cluster.py restart failed: {last_line(result.stderr)}")
        fault["action"] += "; it failed, so SIGTERM to each replica's PID instead"
        for name in names:
            pid = (await process_pids(cluster))[name]
            os.kill(pid, signal.SIGTERM)
            await wait_replaced(cluster, name, pid)
    else:
        fault["output"] = result.stdout.strip().splitlines()
    after = await process_pids(cluster)
    fault["restarted"] = {name: [before.get(name), after.get(name)] for name in names}
    unchanged = [name for name in names if before.get(name) == after.get(name)]
    if unchanged:
        fault["errors"].append(f"not restarted: {', '.join(unchanged)}")
    fault["back_after_s"] = asyncio.get_running_loop().time() - fault["injected_at"]


INJECTORS = {"kill": inject_kill, "redis": inject_redis, "rolling": inject_rolling}


def last_line(text):
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


# --- Logs --------------------------------------------------------------------------


def log_offsets(cluster):
    return {path.name: path.stat().st_size for path in (cluster.run_dir / "logs").glob("*.log")}


def log_findings(cluster, offsets, excerpt=20):
    """Warnings, errors and tracebacks each log got since `offsets`, with the first lines."""
    findings = {}
    for path in sorted((cluster.run_dir / "logs").glob("*.log")):
        if path.name.startswith(("prometheus", "supervisord")):
            continue
        with path.open("rb") as log:
            log.seek(offsets.get(path.name, 0))
            lines = log.read().decode(errors="replace").splitlines()
        matched = [line for line in lines if LOG_PATTERN.search(line)]
        matched = [line for line in matched if not any(n in line for n in LOG_NOISE)]
        if matched:
            findings[path.stem] = {
                "lines": len(matched),
                "tracebacks": sum("Traceback" in line for line in matched),
                "first": [line for line in matched if "Traceback" not in line][:excerpt],
            }
    return findings


# --- Scenarios ---------------------------------------------------------------------


def fault_took_effect(scenario, figures):
    """Whether the fault happened as meant, so that a quiet run cannot pass for a good one."""
    restarted = figures["fault"].get("restarted", {})
    replaced = bool(restarted) and all(old != new and new for old, new in restarted.values())
    if scenario == "kill":
        return replaced and figures["reconnects"] >= 1
    if scenario == "redis":
        return replaced and figures["epochs_per_room_min"] >= 2
    return replaced and figures["connection_losses_min"] >= 1


def targets(scenario, figures, options):
    answered = figures["unanswered"] == 0
    sound = {
        "no client failed (client_crashes)": not figures["client_crashes"],
        "the fault took effect": fault_took_effect(scenario, figures),
    }
    if scenario == "redis":
        limit = options.recovery_limit
        return {
            "every acknowledged message delivered to its room (lost == 0)": figures["lost"] == 0,
            "everything else refused with an error (unanswered == 0)": answered,
            "refused messages not delivered": figures["refused_delivered"] == 0,
            "duplicated == 0": figures["duplicated"] == 0,
            f"delivery recovery <= {limit:g} s": figures["recovery_s"] <= limit,
            f"ack recovery <= {limit:g} s": figures["ack_recovery_s"] <= limit,
            "every client resumed after losing its connection": not figures["unresumed"],
            **sound,
        }
    checks = {
        "lost == 0": figures["lost"] == 0,
        "duplicated == 0": figures["duplicated"] == 0,
        "republished == 0": figures["republished"] == 0,
        "every message answered (unanswered == 0)": answered,
        "every client resumed after losing its connection": not figures["unresumed"],
        "every client recovered": figures["recovery_s"] < float("inf"),
        **sound,
    }
    if scenario == "rolling":
        closes = figures["closes"]
        checks["every close during the drain is 1012"] = bool(closes) and set(closes) == {
            str(CLOSE_SERVICE_RESTART)
        }
    return checks


async def run_scenario(cluster, scenario, options):
    """Runs one scenario on a running cluster; returns its figures (a dict)."""
    loop = asyncio.get_running_loop()
    await wait_ready(cluster)
    offsets = log_offsets(cluster)
    limits = options.cluster_settings()
    traffic = Traffic(
        cluster,
        scenario,
        options.clients,
        options.rooms,
        options.rate,
        rate_limit=int(limits.get("CHAT_RATE_LIMIT", RATE_LIMIT)),
        rate_burst=int(limits.get("CHAT_RATE_BURST", RATE_BURST)),
    )
    # A hard bound for the connection loops: everything below, with room to spare.
    deadline = loop.time() + 30 + options.seconds + options.quiesce + 120
    fault = {"action": None, "injected_at": None, "errors": []}
    try:
        await traffic.join(deadline)
        spread = Counter(client.replica for client in traffic.clients)
        started = loop.time()
        sending_until = started + max(options.seconds, options.warmup + options.settle)
        traffic.start_sending(deadline)  # stopped below, once the fault is over
        await asyncio.sleep(options.warmup)
        injection = loop.create_task(INJECTORS[scenario](cluster, traffic, fault))
        try:
            await asyncio.wait_for(asyncio.shield(injection), 180)
        except TimeoutError:
            fault["errors"].append("the injection did not finish in 180 s")
        except Exception as error:  # reported: "the fault took effect" then fails
            fault["errors"].append(f"the injection failed: {error!r}")
        injected_done = loop.time()
        remaining = max(sending_until - loop.time(), injected_done + options.settle - loop.time())
        await asyncio.sleep(max(remaining, 0))
        await traffic.stop_sending()
        traffic_seconds = loop.time() - started
        quiesced, settled = await traffic.quiesce(options.quiesce)
        if not injection.done():
            injection.cancel()
    finally:
        await traffic.close()
    injected_at = fault["injected_at"] or injected_done
    figures = {
        "scenario": scenario,
        **traffic.counts(),
        "rate": options.rate,
        "traffic_s": round(traffic_seconds, 1),
        "quiesce_s": round(quiesced, 1),
        "settled": settled,
        "spread": dict(sorted(spread.items())),
        "fault": {
            **{k: v for k, v in fault.items() if k != "injected_at"},
            "injected_after_s": round(injected_at - started, 2),
            "back_after_s": round(fault.get("back_after_s", float("nan")), 2),
        },
        "recovery_s": round(delivery_recovery(traffic.clients, injected_at), 2),
        "ack_recovery_s": round(ack_recovery(traffic.clients, injected_at), 2),
        "max_resume_s": round(
            max((back - lost for c in traffic.clients for lost, back in c.resumed), default=0),
            2,
        ),
        "logs": log_findings(cluster, offsets),
    }
    figures["targets"] = targets(scenario, figures, options)
    figures["passed"] = all(figures["targets"].values())
    return figures


def start_cluster(options, run_dir=None):
    run_dir = Path(run_dir) if run_dir else Path(tempfile.mkdtemp(prefix="faults-"))
    cluster = LocalCluster(run_dir, options.replicas, options.cluster_settings())
    cluster.up()
    return cluster


async def run(options, scenarios=SCENARIOS, run_dir=None, report=print):
    """Starts a cluster, runs the scenarios one after another, stops it by PID."""
    cluster = await asyncio.to_thread(start_cluster, options, run_dir)
    results = []
    try:
        for scenario in scenarios:
            report(f"{scenario}: running ({cluster.run_dir})")
            results.append(await run_scenario(cluster, scenario, options))
            report(summary_line(results[-1]))
    finally:
        leftovers = await asyncio.to_thread(cluster.down)
        if leftovers:
            report(f"processes left running after down: {leftovers}")
    return results, cluster.run_dir


# --- Report ------------------------------------------------------------------------

COLUMNS = [
    ("scenario", "scenario", "{}"),
    ("sent", "sent", "{}"),
    ("acked", "acked", "{}"),
    ("refused", "refused", "{}"),
    ("unans", "unanswered", "{}"),
    ("resent", "resent", "{}"),
    ("dlv min", "delivered_min", "{}"),
    ("dlv max", "delivered_max", "{}"),
    ("lost", "lost", "{}"),
    ("dup", "duplicated", "{}"),
    ("repub", "republished", "{}"),
    ("gaps", "gaps", "{}"),
    ("reconn", "reconnects", "{}"),
    ("closes", "closes", "{}"),
    ("recov s", "recovery_s", "{:.2f}"),
    ("ack s", "ack_recovery_s", "{:.2f}"),
    ("result", "passed", "{}"),
]


def cell(result, key, template):
    value = result[key]
    if key == "passed":
        return "ok" if value else "FAILED"
    if isinstance(value, dict):
        return ",".join(f"{k}:{v}" for k, v in value.items()) or "-"
    return template.format(value)


def table(results):
    rows = [[title for title, _, _ in COLUMNS]]
    rows += [[cell(r, key, template) for _, key, template in COLUMNS] for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(line.rstrip() for line in lines)


def summary_line(result):
    keys = ("sent", "acked", "refused", "unanswered", "lost", "duplicated", "recovery_s")
    figures = ", ".join(f"{key} {result[key]}" for key in keys)
    return f"{result['scenario']}: {'ok' if result['passed'] else 'FAILED'}: {figures}"


def details(result):
    """What the table leaves out: the fault, the spread, missed targets, log findings."""
    fault = result["fault"]
    lines = [
        f"{result['scenario']}: {fault['action']}, {fault['injected_after_s']} s into "
        f"{result['traffic_s']} s of traffic, back after {fault['back_after_s']} s; "
        f"clients per replica {result['spread']}; delivered {result['delivered_total']}; "
        f"acked as duplicate {result['acked_as_duplicate']}; max resume {result['max_resume_s']}"
        f" s; settled after {result['quiesce_s']} s: {result['settled']}",
    ]
    for error in fault.get("errors", []):
        lines.append(f"  fault note: {error}")
    names = ("refused_by_code", "errors", "connect_failures", "client_crashes", "unresumed")
    for name in names:
        if result[name]:
            lines.append(f"  {name}: {result[name]}")
    if result["missing_deliveries"] or result["refused_delivered"] or result["unknown_frames"]:
        lines.append(
            f"  missing deliveries {result['missing_deliveries']}, refused but delivered "
            f"{result['refused_delivered']}, unknown frames {result['unknown_frames']}"
        )
    for example in result["lost_examples"][:10]:
        lines.append(f"  lost: {example}")
    if result["scenario"] != "kill":
        lines.extend(f"  close not 1012: {close}" for close in result["odd_closes"][:10])
    for target, met in result["targets"].items():
        if not met:
            lines.append(f"  MISSED: {target}")
    for name, found in result["logs"].items():
        lines.append(
            f"  log {name}: {found['lines']} warning/error lines, "
            f"{found['tracebacks']} tracebacks; first:"
        )
        lines.extend(f"    {line[:200]}" for line in found["first"][:10])
    return "\n".join(lines)


def parse_setting(text):
    name, separator, value = text.partition("=")
    if not separator or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, not {text!r}")
    return name, value


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    defaults = Options()
    parser.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    parser.add_argument("--clients", type=int, default=defaults.clients)
    parser.add_argument("--rooms", type=int, default=defaults.rooms)
    parser.add_argument(
        "--rate", type=float, default=defaults.rate, help="messages per second per client"
    )
    parser.add_argument(
        "--seconds", type=float, default=defaults.seconds, help="traffic per scenario, at least"
    )
    parser.add_argument(
        "--warmup", type=float, default=defaults.warmup, help="traffic before the fault"
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=defaults.settle,
        help="traffic after the injection finished, at least",
    )
    parser.add_argument(
        "--quiesce",
        type=float,
        default=defaults.quiesce,
        help="at most this long to wait for answers and deliveries after sending stops",
    )
    parser.add_argument("--drain-seconds", type=int, default=defaults.drain_seconds)
    parser.add_argument("--replicas", type=int, default=defaults.replicas)
    parser.add_argument("--recovery-limit", type=float, default=defaults.recovery_limit)
    parser.add_argument(
        "--set",
        dest="settings",
        type=parse_setting,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="another service setting for the cluster, e.g. CHAT_RATE_LIMIT=20",
    )
    parser.add_argument("--run-dir", type=Path, help="the cluster's run directory (logs/)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.rooms < 1 or args.rooms > args.clients or args.rate <= 0:
        parser.error("need 1 <= --rooms <= --clients and --rate > 0")
    if args.replicas < 2:
        parser.error("faults need at least 2 replicas")
    options = Options(
        clients=args.clients,
        rooms=args.rooms,
        rate=args.rate,
        seconds=args.seconds,
        warmup=args.warmup,
        settle=args.settle,
        quiesce=args.quiesce,
        drain_seconds=args.drain_seconds,
        replicas=args.replicas,
        recovery_limit=args.recovery_limit,
        settings=dict(args.settings),
    )
    scenarios = SCENARIOS if args.scenario == "all" else (args.scenario,)
    started = time.monotonic()
    results, run_dir = asyncio.run(run(options, scenarios, args.run_dir))
    print()
    print(table(results))
    print()
    for result in results:
        print(details(result))
    elapsed = time.monotonic() - started
    print(f"\n{len(results)} scenarios in {elapsed:.0f} s; replica logs in {run_dir}/logs")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "command": " ".join(["python loadtests/faults.py", *(argv or sys.argv[1:])]),
            "options": asdict(options),
            "run_dir": str(run_dir),
            "seconds": round(elapsed, 1),
            "results": results,
        }
        args.json.write_text(json.dumps(document, indent=2, default=str) + "\n")
        print(f"figures written to {args.json}")
    return 0 if all(result["passed"] for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
