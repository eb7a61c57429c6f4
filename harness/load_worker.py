"""A worker process of harness.load_generator: the chat clients of whole rooms, driven
by the parent's commands over a pipe ("connect", "step", "disconnect", "stop"), each
answered with ("ok", figures) or ("failed", why). It exits by itself when the parent
goes away or is silent for IDLE_EXIT_S."""

import asyncio
import contextlib
import json
import random
import sys
import time
from array import array
from collections import Counter
from multiprocessing.connection import Connection

import httpx
from websockets.exceptions import ConnectionClosed

from .client import message_frame, open_socket
from .publishing import room_messages_path

CONNECT_CONCURRENCY = 50  # handshakes in flight per worker
CONNECT_TIMEOUT_S = 30
JOIN_FRAMES_TIMEOUT_S = 10  # for the welcome and history frames
IDLE_EXIT_S = 900
SETTLE_POLL_S = 0.05
COUNTS = ("sent", "received", "in_window", "late", "acks", "errors", "closes", "api_posts")
API_TIMEOUT_S = 10


class Member:
    __slots__ = ("socket", "room", "tag", "sequence", "closed", "receiver")

    def __init__(self, socket, room, tag):
        self.socket, self.room, self.tag = socket, room, tag
        self.sequence = 0
        self.closed = False
        self.receiver = None


class Worker:
    """The clients of some rooms, and their figures for the current step."""

    def __init__(self, pipe, number, base_url, origin, message_bytes):
        self.pipe, self.number = pipe, number
        self.base_url, self.origin = base_url, origin
        self.message_bytes = message_bytes
        self.members = []
        self.room_size = 1
        self.label = None  # the current step's, carried in each message
        self.window_end = 0.0
        self.disconnecting = False
        # With the HTTP API: {"urls": [replica URL, ...], "key": ..., "share": N}: every
        # Nth message of the worker's is posted to a replica's API, the replicas in turn.
        self.api = None
        self.api_client = None
        self.api_turn = 0
        self.messages_made = 0  # by all of this worker's members: every Nth goes to the API
        self.reset()

    def reset(self):
        self.counts = dict.fromkeys(COUNTS, 0)
        self.latencies = array("f")
        self.error_codes = Counter()

    async def run(self):
        loop = asyncio.get_running_loop()
        commands = asyncio.Queue()

        def readable():
            try:
                commands.put_nowait(self.pipe.recv())
            except (EOFError, OSError):  # the parent is gone
                loop.remove_reader(self.pipe.fileno())
                commands.put_nowait(("stop",))

        loop.add_reader(self.pipe.fileno(), readable)
        try:
            while True:
                command = await asyncio.wait_for(commands.get(), IDLE_EXIT_S)
                if command[0] == "stop":
                    return
                handler = getattr(self, f"do_{command[0]}")
                try:
                    answer = ("ok", await handler(*command[1:]))
                except Exception as error:  # the parent reports it; this worker goes on
                    answer = ("failed", repr(error))
                self.pipe.send(answer)
        finally:
            loop.remove_reader(self.pipe.fileno())
            await self.do_disconnect()
            if self.api_client is not None:
                await self.api_client.aclose()

    async def do_connect(self, rooms, room_size, api=None):
        self.room_size, self.disconnecting = room_size, False
        self.api = api
        if api is not None and self.api_client is None:
            headers = {"Authorization": f"Bearer {api['key']}"}
            self.api_client = httpx.AsyncClient(headers=headers, timeout=API_TIMEOUT_S)
        self.reset()
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
        # Short refs (at most 64 characters): unique in a room, whose members are all here.
        members = [room for room in rooms for _ in range(room_size)]
        joins = [
            self.join(gate, room, f"w{self.number}-{index}") for index, room in enumerate(members)
        ]
        outcomes = await asyncio.gather(*joins, return_exceptions=True)
        failures = [repr(outcome) for outcome in outcomes if isinstance(outcome, BaseException)]
        limits = [outcome for outcome in outcomes if isinstance(outcome, int)]
        return {"failures": failures, "rate_limit": min(limits) if limits else None}

    async def join(self, gate, room, tag):
        """Opens one member's socket and reads up to its first live frame: the welcome,
        and for the async consumer the replayed history up to its "history" frame.
        Returns the server's rate limit, when the welcome states one."""
        async with gate:
            socket = await open_socket(
                f"{self.base_url}/ws/chat/{room}/",
                self.origin,
                open_timeout=CONNECT_TIMEOUT_S,
                compression=None,  # as browsers' deflate is off in Daphne: both sides equal
            )
        member = Member(socket, room, tag)
        self.members.append(member)
        async with asyncio.timeout(JOIN_FRAMES_TIMEOUT_S):
            welcome = json.loads(await socket.recv())
            if welcome.get("type") != "welcome":
                raise RuntimeError(f"expected a welcome frame, got {welcome}")
            if welcome.get("consumer") == "async":
                while json.loads(await socket.recv()).get("type") != "history":
                    pass
        member.receiver = asyncio.create_task(self.receive(member))
        return welcome.get("rate_limit")

    async def receive(self, member):
        try:
            async for text in member.socket:
                frame = json.loads(text)
                kind = frame.get("type")
                if kind == "chat":
                    self.count_chat(frame.get("message", ""))
                elif kind == "ack":
                    self.counts["acks"] += 1
                elif kind == "error":
                    self.counts["errors"] += 1
                    self.error_codes[frame.get("code")] += 1
        except ConnectionClosed:
            pass
        finally:
            member.closed = True
            if not self.disconnecting:
                self.counts["closes"] += 1

    def count_chat(self, message):
        now = time.time()
        label, _, rest = message.partition(" ")
        if label != self.label:
            self.counts["late"] += 1
            return
        self.counts["received"] += 1
        if now <= self.window_end:
            self.counts["in_window"] += 1
        self.latencies.append((now - float(rest.partition(" ")[0])) * 1000)

    async def do_step(self, label, interval, start_at, seconds, settle_s):
        loop = asyncio.get_running_loop()
        self.label, self.window_end = label, start_at + seconds
        start = loop.time() + (start_at - time.time())
        end = start + seconds
        senders = [
            asyncio.create_task(self.send_steadily(member, label, interval, start, end))
            for member in self.members
            if not member.closed
        ]
        # The senders stop by themselves at `end`; the margin covers sends blocked on a
        # full socket.
        _, pending = await asyncio.wait(senders, timeout=end - loop.time() + settle_s + 5)
        for task in pending:
            task.cancel()
        settle_until = loop.time() + settle_s
        while self.counts["received"] < self.counts["sent"] * self.room_size:
            if loop.time() >= settle_until:
                break
            await asyncio.sleep(SETTLE_POLL_S)
        answer = {
            **self.counts,
            "settle_s": max(0.0, loop.time() - end),
            "latencies": self.latencies.tobytes(),
            "error_codes": dict(self.error_codes),
        }
        # What comes from now on counts in the next step: late frames, errors, closes.
        self.label = None
        self.reset()
        return answer

    async def send_steadily(self, member, label, interval, start, end):
        """One message every `interval` s from a random phase, until `end`; a sender
        that falls behind catches up within the window, never after it."""
        loop = asyncio.get_running_loop()
        next_at = start + random.uniform(0, interval)
        while next_at < end and not member.closed:
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            member.sequence += 1
            text = f"{label} {time.time():.6f} "
            text += "x" * (self.message_bytes - len(text))
            self.messages_made += 1
            # Counted over the worker, not per member: members send in step, so each
            # member's Nth would put whole steps' shares on one side.
            if self.api is not None and self.messages_made % self.api["share"] == 0:
                await self.post(member, text)
                next_at += interval
                continue
            try:
                await member.socket.send(message_frame(text, f"{member.tag}-{member.sequence}"))
            except ConnectionClosed:
                self.counts["errors"] += 1
                self.error_codes["send_failed"] += 1
                return
            self.counts["sent"] += 1
            next_at += interval

    async def post(self, member, text):
        """Posts a member's message through the HTTP API instead of its socket, as a
        service would; its room receives it like the others."""
        urls = self.api["urls"]
        url = urls[self.api_turn % len(urls)] + room_messages_path(member.room)
        self.api_turn += 1
        try:
            response = await self.api_client.post(url, json={"text": text, "sender": "load"})
        except httpx.HTTPError as error:
            self.counts["errors"] += 1
            self.error_codes[f"api_{type(error).__name__}"] += 1
            return
        if response.status_code != 200:
            self.counts["errors"] += 1
            self.error_codes[f"api_{response.status_code}"] += 1
            return
        self.counts["sent"] += 1
        self.counts["api_posts"] += 1

    async def do_disconnect(self):
        self.disconnecting = True
        members, self.members = self.members, []
        if members:
            closing = [member.socket.close() for member in members]
            try:
                await asyncio.wait_for(
                    asyncio.gather(*closing, return_exceptions=True), JOIN_FRAMES_TIMEOUT_S
                )
            except TimeoutError:  # a server that does not answer the close: drop them
                for member in members:
                    member.socket.transport.abort()
            receivers = [member.receiver for member in members if member.receiver]
            for task in receivers:
                task.cancel()
            await asyncio.gather(*receivers, return_exceptions=True)
        return {"closed": len(members)}


def main():
    """python -m harness.load_worker FD NUMBER BASE_URL ORIGIN MESSAGE_BYTES, as
    LoadGenerator starts it: FD is its end of the command socket."""
    fd, number, base_url, origin, message_bytes = sys.argv[1:]
    worker = Worker(Connection(int(fd)), int(number), base_url, origin, int(message_bytes))
    # Stopped by the parent's signal, or idle too long.
    with contextlib.suppress(KeyboardInterrupt, TimeoutError):
        asyncio.run(worker.run())


if __name__ == "__main__":
    main()
