"""A load generator of the chat protocol in several processes, so that it is not the
bottleneck at the rates it reports: each worker process runs asyncio `websockets`
clients of whole rooms, and the parent tells them what to do and merges their figures.

    with LoadGenerator("ws://127.0.0.1:8080", rooms=40, room_size=10, workers=3) as load:
        load.connect("sweep")                      # every member joins, welcome read
        result = load.step(6000, seconds=15, server_pids={"nginx": [...]})
        load.disconnect()                          # every connection closed

A step offers `deliveries_per_s` (sends/s = deliveries / room size, spread evenly over
the members, each at a fixed interval from a random phase). Every message carries its
step and send time (time.time(): the clients share the server's clock), so receivers
count it and its latency; a sender receives its own message too. Connections stay open
from connect() to disconnect(), across steps.
"""

import contextlib
import math
import socket
import subprocess
import sys
import time
from array import array
from collections import Counter
from dataclasses import dataclass
from multiprocessing.connection import Connection
from urllib.parse import urlsplit

from .load_worker import CONNECT_TIMEOUT_S, COUNTS, JOIN_FRAMES_TIMEOUT_S
from .paths import ROOT
from .processes import cpu_seconds

START_LEAD_S = 1.0  # a step starts this long after the parent sends it
REPLY_MARGIN_S = 60  # beyond its own timeouts, how long a worker may take to answer


@dataclass
class StepResult:
    offered_deliveries_per_s: float
    seconds: float
    sent: int
    api_posts: int  # of them, posted through the HTTP API
    expected: int  # sent × room size
    delivered: int  # by the end of the settle period
    delivered_per_s: float  # received within the send window, per second of it
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    lost: int  # expected - delivered, when positive
    duplicated: int  # delivered - expected, when positive
    late: int  # frames of an earlier step received during this one
    acked: int
    errors: int  # error frames, failed sends
    closes: int  # connections the server closed
    settle_s: float  # how long the deliveries took to come in after the window
    server_cpu_s: float  # utime+stime of `server_pids` over the send window
    server_cpu_ms_per_delivery: float  # over the deliveries within the window
    generator_cpu_s: float  # utime+stime of the worker processes over the window
    generator_cpu_percent: float  # the workers' CPU over the window, % of one core
    generator_busiest_percent: float  # the busiest worker's: near 100 it is the bottleneck
    workers: int
    server_cpu_by_role: dict
    error_codes: dict


def percentile(ordered, share):
    """Nearest-rank percentile of a sorted sequence; NaN when empty."""
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]


class LoadGenerator:
    """Worker processes, each owning whole rooms; rooms are `<prefix>-r<n>`."""

    def __init__(self, base_url, rooms, room_size, workers, message_bytes=100, api=None):
        """`api`: every api["share"]th message of a member is posted to the HTTP API of
        the replicas api["urls"], in turn, with api["key"] (harness.load_worker)."""
        self.base_url = base_url.rstrip("/")
        self.api = api
        self.rooms, self.room_size, self.message_bytes = rooms, room_size, message_bytes
        self.worker_count = max(1, min(workers, rooms))
        self.processes, self.pipes = [], []
        self.rate_limit = None  # the server's per-connection limit, from the welcome frames
        self.steps = 0

    def __enter__(self):
        scheme = "https" if self.base_url.startswith("wss") else "http"
        origin = f"{scheme}://{urlsplit(self.base_url).netloc}"
        try:
            for number in range(self.worker_count):
                # A plain subprocess, not multiprocessing: nothing of the caller's
                # __main__ is imported again in the worker.
                parent_end, worker_end = socket.socketpair()
                with worker_end:
                    process = subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "harness.load_worker",
                            *(str(worker_end.fileno()), str(number), self.base_url, origin),
                            str(self.message_bytes),
                        ],
                        pass_fds=[worker_end.fileno()],
                        cwd=ROOT,
                    )
                self.processes.append(process)
                self.pipes.append(Connection(parent_end.detach()))
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_):
        self.stop()

    @property
    def pids(self):
        return [process.pid for process in self.processes]

    def tell(self, commands):
        """Sends each worker its command (one for all, or a list in worker order)."""
        if isinstance(commands, tuple):
            commands = [commands] * len(self.pipes)
        for pipe, command in zip(self.pipes, commands, strict=True):
            pipe.send(command)

    def answers(self, what, timeout):
        """Every worker's answer, in worker order, waiting at most `timeout` s in all."""
        deadline = time.monotonic() + timeout
        answers = []
        for number, pipe in enumerate(self.pipes):
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"load worker {number} did not answer {what}")
            status, answer = pipe.recv()
            if status == "failed":
                raise RuntimeError(f"load worker {number} failed {what}: {answer}")
            answers.append(answer)
        return answers

    def connect(self, prefix):
        """Every member of every room joins; raises unless all did."""
        rooms = [f"{prefix}-r{number}" for number in range(self.rooms)]
        self.tell(
            [
                ("connect", rooms[n :: self.worker_count], self.room_size, self.api)
                for n in range(len(self.pipes))
            ]
        )
        answers = self.answers(
            "connect", CONNECT_TIMEOUT_S + JOIN_FRAMES_TIMEOUT_S + REPLY_MARGIN_S
        )
        failures = [failure for answer in answers for failure in answer["failures"]]
        if failures:
            raise RuntimeError(f"{len(failures)} clients did not join; first: {failures[:3]}")
        limits = [answer["rate_limit"] for answer in answers if answer["rate_limit"]]
        self.rate_limit = min(limits) if limits else None

    def step(self, deliveries_per_s, seconds, settle_s=5.0, server_pids=None):
        """One step of `seconds` at `deliveries_per_s`; server CPU is read from
        `server_pids` ({role: [pid, ...]}) at the edges of the send window."""
        if deliveries_per_s <= 0 or seconds <= 0:
            raise ValueError("a step needs a rate and a duration above 0")
        clients = self.rooms * self.room_size
        per_client = deliveries_per_s / self.room_size / clients
        if self.rate_limit is not None and per_client > self.rate_limit:
            raise ValueError(
                f"{per_client:.1f} messages/s per client is over the server's limit of "
                f"{self.rate_limit}/s: raise CHAT_RATE_LIMIT or add rooms"
            )
        self.steps += 1
        server_pids = server_pids or {}
        start_at = time.time() + START_LEAD_S
        self.tell(("step", f"s{self.steps}", 1 / per_client, start_at, seconds, settle_s))

        def sample():
            return (
                {role: cpu_seconds(pids) for role, pids in server_pids.items()},
                [cpu_seconds([pid]) for pid in self.pids],
            )

        time.sleep(max(0.0, start_at - time.time()))
        server_before, workers_before = sample()
        time.sleep(max(0.0, start_at + seconds - time.time()))
        server_after, workers_after = sample()
        answers = self.answers(f"step {self.steps}", settle_s + REPLY_MARGIN_S)
        server_cpu = {role: server_after[role] - server_before[role] for role in server_pids}
        worker_cpu = [
            after - before for before, after in zip(workers_before, workers_after, strict=True)
        ]
        return self.merge(deliveries_per_s, seconds, answers, server_cpu, worker_cpu)

    def merge(self, offered, seconds, answers, server_cpu, worker_cpu):
        latencies = array("f")
        for answer in answers:
            latencies.frombytes(answer["latencies"])
        latencies = sorted(latencies)
        total = {key: sum(answer[key] for answer in answers) for key in COUNTS}
        expected = total["sent"] * self.room_size
        server_total = sum(server_cpu.values())
        error_codes = sum((Counter(answer["error_codes"]) for answer in answers), Counter())
        return StepResult(
            offered_deliveries_per_s=offered,
            seconds=seconds,
            sent=total["sent"],
            api_posts=total["api_posts"],
            expected=expected,
            delivered=total["received"],
            delivered_per_s=round(total["in_window"] / seconds, 1),
            p50_ms=round(percentile(latencies, 0.50), 2),
            p95_ms=round(percentile(latencies, 0.95), 2),
            p99_ms=round(percentile(latencies, 0.99), 2),
            max_ms=round(latencies[-1], 2) if latencies else math.nan,
            lost=max(0, expected - total["received"]),
            duplicated=max(0, total["received"] - expected),
            late=total["late"],
            acked=total["acks"],
            errors=total["errors"],
            closes=total["closes"],
            settle_s=round(max(answer["settle_s"] for answer in answers), 2),
            server_cpu_s=round(server_total, 3),
            server_cpu_ms_per_delivery=round(server_total * 1000 / max(1, total["in_window"]), 4),
            generator_cpu_s=round(sum(worker_cpu), 3),
            generator_cpu_percent=round(100 * sum(worker_cpu) / seconds, 1),
            generator_busiest_percent=round(100 * max(worker_cpu) / seconds, 1),
            workers=len(self.pipes),
            server_cpu_by_role={role: round(value, 3) for role, value in server_cpu.items()},
            error_codes=dict(error_codes),
        )

    def disconnect(self):
        """Closes every connection and waits until they are closed."""
        self.tell(("disconnect",))
        self.answers("disconnect", JOIN_FRAMES_TIMEOUT_S + REPLY_MARGIN_S)

    def stop(self):
        """Stops the workers: asked first, then by PID; none is left behind."""
        for pipe in self.pipes:
            with contextlib.suppress(OSError):  # that worker is gone already
                pipe.send(("stop",))
        for process in self.processes:
            for stop in (None, process.terminate, process.kill):
                if stop:
                    stop()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    # A worker closes its connections first: up to JOIN_FRAMES_TIMEOUT_S.
                    process.wait(timeout=JOIN_FRAMES_TIMEOUT_S + 5)
                    break
        for pipe in self.pipes:
            pipe.close()
        self.processes, self.pipes = [], []
