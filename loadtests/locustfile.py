"""Locust users that chat over WebSocket through the load balancer.

Each user joins a room, sends messages at random intervals (exponential, so that
users do not send in lockstep) and listens. Every message a user receives is
reported as a request event named "deliver" whose response time is the
end-to-end latency from the timestamp the sender put in the message; sends are
reported as "send", joins as "connect". Missing messages are failures named
"lost", counted from gaps in each sender's sequence numbers; duplicated or
reordered ones are failures named "duplicate".

Configured by LOCUST_* variables (Locust's own, such as LOCUST_HOST and
LOCUST_USERS, work too):

    LOCUST_ROOM_SIZE        users per room (default 10); 0 puts everyone in one room
    LOCUST_SEND_INTERVAL    mean seconds between one user's messages (default 1)
    LOCUST_MESSAGE_BYTES    size of each message (default 100)
    LOCUST_MESSAGES         if set, each user sends exactly this many messages once
                            every user has joined, then waits for every delivery it
                            expects: the bounded mode of the smoke test (one process)
    LOCUST_CHURN_INTERVAL   ChurnUser: mean seconds a connection lives (default 5)
    LOCUST_ROOM_PREFIX      room name prefix (default "load"), to keep runs apart

websocket-client is used because Locust runs on gevent, whose patched sockets it
uses; asyncio clients such as `websockets` do not run under Locust.
"""

import itertools
import json
import os
import random
import time
import uuid
from urllib.parse import urlsplit

import gevent
import websocket
from locust import User, events, task
from locust.exception import StopUser

ROOM_SIZE = int(os.environ.get("LOCUST_ROOM_SIZE", "10"))
SEND_INTERVAL = float(os.environ.get("LOCUST_SEND_INTERVAL", "1"))
MESSAGE_BYTES = int(os.environ.get("LOCUST_MESSAGE_BYTES", "100"))
MESSAGES = int(os.environ.get("LOCUST_MESSAGES", "0"))
CHURN_INTERVAL = float(os.environ.get("LOCUST_CHURN_INTERVAL", "5"))
ROOM_PREFIX = os.environ.get("LOCUST_ROOM_PREFIX", "load")
# How long the bounded mode waits for the last deliveries.
DRAIN_SECONDS = 10
# chat.protocol.SUBPROTOCOL, mirrored: the Locust image holds only this file
# (tests/loadtests/test_locustfile.py checks that the two agree).
SUBPROTOCOL = "chat.v1"

_user_numbers = itertools.count()


def ws_url(host, room):
    parts = urlsplit(host)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}/ws/chat/{room}/"


def report(name, started, length=0, exception=None, response_time=None):
    if response_time is None:
        response_time = (time.perf_counter() - started) * 1000
    events.request.fire(
        request_type="WS",
        name=name,
        response_time=response_time,
        response_length=length,
        exception=exception,
        context={},
    )


class ChatUser(User):
    """A person in a chat room: sends now and then, reads everything."""

    def on_start(self):
        self.number = next(_user_numbers)
        self.user_id = uuid.uuid4().hex[:12]
        self.room = self.choose_room()
        self.sequence = 0
        self.next_expected = {}  # sender -> next sequence number
        self.delivered = 0
        self.socket = None
        self.receiver = None
        self.connect()

    def choose_room(self):
        if ROOM_SIZE <= 0:
            return f"{ROOM_PREFIX}-all"
        if MESSAGES:
            # Bounded mode: fixed rooms, so that each user knows its room's size.
            return f"{ROOM_PREFIX}-{self.number // ROOM_SIZE}"
        # Round robin over the rooms, in each worker process: rooms stay near
        # ROOM_SIZE members (random rooms would vary, and fan-out with them).
        rooms = max(1, self.environment.parsed_options.num_users // ROOM_SIZE)
        return f"{ROOM_PREFIX}-{self.number % rooms}"

    def connect(self):
        started = time.perf_counter()
        try:
            self.socket = websocket.create_connection(
                ws_url(self.host, self.room),
                origin=self.host.rstrip("/"),
                subprotocols=[SUBPROTOCOL],
                timeout=30,
                enable_multithread=True,
            )
            welcome = json.loads(self.socket.recv())
            if welcome.get("type") != "welcome":
                raise ValueError(f"expected a welcome frame, got {welcome}")
            # The async consumer first replays the room's newest messages, up to a
            # "history" frame: sent before this user joined, they are not deliveries.
            self.live = welcome.get("consumer") != "async"
        except Exception as error:  # noqa: BLE001 - every failure is reported to Locust
            report("connect", started, exception=error)
            self.socket = None
            raise StopUser() from None
        report("connect", started)
        connected_users.add(self.user_id)
        self.receiver = gevent.spawn(self.receive_forever, self.socket)

    def disconnect(self):
        connected_users.discard(self.user_id)
        # Stop the reader first: websocket-client's close() reads, and drops, the frames
        # that arrive until the server's close frame, and a reader still running would
        # then see the frames after them as a gap: a false "lost".
        if self.receiver is not None:
            self.receiver.kill()
            self.receiver = None
        if self.socket is not None:
            socket, self.socket = self.socket, None
            socket.close()

    def on_stop(self):
        self.disconnect()

    def receive_forever(self, socket):
        while True:
            try:
                frame = socket.recv()
            except (websocket.WebSocketException, OSError):
                return
            # websocket-client returns "" when the peer closes. disconnect() stops this
            # reader first, so the server closed it: a replica draining (1012), or this
            # load generator too slow to read (4008), which the run must show.
            if not frame:
                report("closed", time.perf_counter(), exception=RuntimeError("closed by server"))
                return
            self.on_frame(frame)

    def on_frame(self, frame):
        received_at = time.time()
        data = json.loads(frame)
        if data["type"] == "error":
            report("error", time.perf_counter(), exception=RuntimeError(data["code"]))
            return
        if data["type"] == "history":
            self.live = True
        if data["type"] != "chat" or not self.live:
            return
        sender, sequence, sent_at = data["message"].split(" ", 3)[:3]
        sequence = int(sequence)
        report("deliver", 0, len(frame), response_time=(received_at - float(sent_at)) * 1000)
        self.delivered += 1
        expected = self.next_expected.get(sender)
        if expected is not None and sequence > expected:
            missing = sequence - expected
            report(
                "lost",
                0,
                response_time=0,
                exception=RuntimeError(f"{missing} message(s) of {sender} lost"),
            )
        elif expected is not None and sequence < expected:
            report(
                "duplicate",
                0,
                response_time=0,
                exception=RuntimeError(f"message {sequence} of {sender} again"),
            )
        self.next_expected[sender] = max(sequence + 1, expected or 0)

    def send_message(self):
        self.sequence += 1
        header = f"{self.user_id} {self.sequence} {time.time():.6f} "
        message = header + "x" * max(0, MESSAGE_BYTES - len(header))
        started = time.perf_counter()
        try:
            self.socket.send(json.dumps({"message": message}))
        except (websocket.WebSocketException, OSError, AttributeError) as error:
            report("send", started, exception=error)
            raise StopUser() from None
        report("send", started, len(message))

    @task
    def chat(self):
        if MESSAGES:
            self.chat_bounded()
        gevent.sleep(random.expovariate(1 / SEND_INTERVAL))
        self.send_message()

    def chat_bounded(self):
        """Smoke mode: all join, each sends MESSAGES, each checks it got every one."""
        users = self.environment.parsed_options.num_users
        while len(connected_users) < users:
            gevent.sleep(0.1)
        for _ in range(MESSAGES):
            gevent.sleep(random.expovariate(1 / SEND_INTERVAL))
            self.send_message()
        room_members = min(ROOM_SIZE, users - (self.number // ROOM_SIZE) * ROOM_SIZE)
        expected = room_members * MESSAGES
        deadline = time.monotonic() + DRAIN_SECONDS
        while self.delivered < expected and time.monotonic() < deadline:
            gevent.sleep(0.1)
        if self.delivered < expected:
            report(
                "lost",
                0,
                response_time=0,
                exception=RuntimeError(
                    f"{expected - self.delivered} of {expected} messages never arrived"
                ),
            )
        # Stay in the room until everyone has finished, then idle.
        finished_users.add(self.user_id)
        while len(finished_users) < users:
            gevent.sleep(0.1)
        if self.number == 0:
            # Everyone is done: end the run (outside this user's greenlet).
            gevent.spawn_later(0.5, self.environment.runner.quit)
        raise StopUser()


# Bounded mode runs in one process, so module state is shared by every user.
connected_users = set()
finished_users = set()


class ChurnUser(ChatUser):
    """Connects, chats a little, leaves and comes back: connection churn."""

    @task
    def chat(self):
        lifetime = random.expovariate(1 / CHURN_INTERVAL)
        deadline = time.monotonic() + lifetime
        while time.monotonic() < deadline:
            gevent.sleep(random.expovariate(1 / SEND_INTERVAL))
            self.send_message()
        self.disconnect()
        self.next_expected.clear()  # a new membership: earlier gaps are not losses
        self.connect()
