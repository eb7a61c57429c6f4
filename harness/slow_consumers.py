"""Sockets that stop reading in a busy room, against a running cluster: what each
replica's memory does, how the slow sockets are closed, whether the readers still
get everything, and what a slow client gets when it resumes. `loadtests/
slow_consumers.py` prints the figures; tests/integration/test_slow_consumers.py
asserts them."""

import asyncio
import json
import time
from dataclasses import dataclass, field

from websockets.exceptions import ConnectionClosed

from chat.protocol import CLOSE_SLOW_CONSUMER, chat_frame_parts

from .client import chat_query, join, message_frame
from .http import replica_counter
from .processes import rss_kb

# How long a slow socket, once reading again, may take to reach the server's close.
DRAIN_SECONDS = 30

# How every chat frame begins (chat.protocol builds them around their id).
CHAT_FRAME_START = chat_frame_parts("", "", "", 0)[0].encode()


@dataclass
class Scenario:
    slow: int = 20  # sockets that stop reading
    senders: int = 10  # members that send and read everything
    rate: float = 8  # messages per second per sender
    message_bytes: int = 4000
    seconds: float = 20  # of sending
    room: str = "slow-consumers"


@dataclass
class Outcome:
    sent: int = 0
    received_min: int = 0  # chat frames the readers got, fewest over readers
    rss_kb_start: dict = field(default_factory=dict)  # replica -> KB
    rss_kb_peak: dict = field(default_factory=dict)
    rss_kb_end: dict = field(default_factory=dict)
    slow_closes: dict = field(default_factory=dict)  # close code -> sockets
    closed_for: dict = field(default_factory=dict)  # the replicas' count, by reason
    slow_last_ids: list = field(default_factory=list)
    resumed_missing: int | None = None  # ids a resuming slow client was not replayed
    resumed_extra: int | None = None  # ids it was replayed that it already had

    def growth_mb(self, sample):
        return {
            name: round((kb - self.rss_kb_start[name]) / 1024, 1) for name, kb in sample.items()
        }


def slow_closes_counted(cluster):
    """Slow-consumer closes the replicas have counted, by reason."""
    counted = replica_counter(cluster, "chat_slow_consumer_disconnects_total", "reason")
    return {reason: int(count) for reason, count in counted.items()}


async def resume_when_closed(cluster, slow, deadline):
    """Lets the slow sockets read again once the servers have closed them all (so that
    they read the close within the server's patience), or when the sending ends."""
    while time.monotonic() < deadline:
        if sum((await asyncio.to_thread(slow_closes_counted, cluster)).values()) >= len(slow):
            break
        await asyncio.sleep(0.5)
    for client in slow:
        client.socket.transport.resume_reading()
    return await asyncio.gather(*(last_seen_and_close(client) for client in slow))


def replica_rss(pids):
    return {name: rss_kb(pid) or 0 for name, pid in pids.items()}


async def read_everything(client, counts, index):
    """Counts the chat frames a reader gets, by their first bytes: decoding 16 KB of JSON
    per frame would cost the test process more than the replicas' sending does."""
    try:
        while True:
            if (await client.socket.recv(decode=False)).startswith(CHAT_FRAME_START):
                counts[index] += 1
    except ConnectionClosed:
        return


async def send_steadily(client, scenario, deadline, sent):
    body = "x" * scenario.message_bytes
    interval = 1 / scenario.rate
    next_send = time.monotonic()
    while time.monotonic() < deadline:
        await client.socket.send(message_frame(body))
        sent[0] += 1
        next_send += interval
        await asyncio.sleep(max(0, next_send - time.monotonic()))


async def last_seen_and_close(client):
    """Reads a slow socket to its end: (close code, last chat id and epoch it got)."""
    last = (None, 0)
    try:
        while True:
            frame = json.loads(await asyncio.wait_for(client.socket.recv(), DRAIN_SECONDS))
            if frame["type"] == "chat":
                last = (frame["epoch"], frame["id"])
    except ConnectionClosed:
        pass
    except TimeoutError:
        return "open", last
    return client.socket.close_code, last


async def run(cluster, scenario, sample_every=0.5):
    """Runs the scenario on the cluster."""
    replica_pids = cluster.replica_pids()
    outcome = Outcome(rss_kb_start=replica_rss(replica_pids))
    readers = [await join(cluster, scenario.room) for _ in range(scenario.senders)]
    slow = [await join(cluster, scenario.room) for _ in range(scenario.slow)]
    for client in slow:
        client.socket.transport.pause_reading()
    counts = [0] * len(readers)
    reading = [
        asyncio.create_task(read_everything(client, counts, index))
        for index, client in enumerate(readers)
    ]
    sent = [0]
    deadline = time.monotonic() + scenario.seconds
    sending = [
        asyncio.create_task(send_steadily(client, scenario, deadline, sent)) for client in readers
    ]
    slow_ends = asyncio.create_task(resume_when_closed(cluster, slow, deadline))
    peak = dict(outcome.rss_kb_start)
    while not all(task.done() for task in sending):
        await asyncio.sleep(sample_every)
        for name, kb in replica_rss(replica_pids).items():
            peak[name] = max(peak[name], kb)
    await asyncio.gather(*sending)
    outcome.sent = sent[0]
    outcome.rss_kb_peak = peak

    # Every reader should hold every message: wait until they do, or 20 s.
    settle = time.monotonic() + 20
    while min(counts) < outcome.sent and time.monotonic() < settle:
        await asyncio.sleep(0.2)
    outcome.received_min = min(counts)

    ends = await slow_ends
    for code, last in ends:
        outcome.slow_closes[code] = outcome.slow_closes.get(code, 0) + 1
        outcome.slow_last_ids.append(last)
    outcome.rss_kb_end = replica_rss(replica_pids)
    outcome.closed_for = slow_closes_counted(cluster)
    await resume_one(cluster, scenario, ends, outcome)
    for client in readers:
        await client.close()
    await asyncio.gather(*reading)
    return outcome


async def resume_one(cluster, scenario, ends, outcome):
    """A slow client closed for being slow resumes from the last id it got: it must be
    replayed exactly the rest of the room's messages."""
    closed = [last for code, last in ends if code == CLOSE_SLOW_CONSUMER and last[0]]
    if not closed:
        return
    epoch, last_id = closed[0]
    client = await join(cluster, scenario.room, query=chat_query(last_id=last_id, epoch=epoch))
    replayed = [frame["id"] for frame in client.replayed]
    expected = set(range(last_id + 1, client.history["last_id"] + 1))
    outcome.resumed_missing = len(expected - set(replayed))
    outcome.resumed_extra = len([message_id for message_id in replayed if message_id <= last_id])
    await client.close()
