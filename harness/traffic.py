"""Steady traffic from resuming clients in fresh rooms of one cluster, and its figures:
what was sent, answered, delivered, lost and duplicated."""

import asyncio
import itertools
import random
import secrets
from collections import Counter

from chat.protocol import CLOSE_SERVICE_RESTART, UNAVAILABLE

from .client import ResumingClient
from .ledger import Message

LOST_EXAMPLES = 20  # lost messages described in the figures


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
        choose=None,
        unavailable_retries=0,
    ):
        """`clients` spread over `rooms` fresh rooms; `choose(names, rooms)`, if given,
        picks the rooms from an endless list of fresh names (e.g. some on each Redis
        shard). Clients resend a message refused with `unavailable` that many times."""
        self.cluster = cluster
        self.prefix = f"{label}-{secrets.token_hex(3)}"
        if choose:
            names = (f"{self.prefix}-r{number}" for number in itertools.count())
            self.rooms = choose(names, rooms)
        else:
            self.rooms = [f"{self.prefix}-r{number}" for number in range(rooms)]
        self.rate = rate
        self.messages = {}  # ref -> Message
        self.clients = [
            ResumingClient(
                cluster,
                self.rooms[n % rooms],
                f"c{n}",
                self.messages,
                keep_timeline,
                unavailable_retries,
            )
            for n in range(clients)
        ]
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
        self.senders = [loop.create_task(self.send_steadily(c)) for c in self.clients]

    async def send_steadily(self, client):
        """One message every 1/rate seconds until `sending_until`."""
        loop = asyncio.get_running_loop()
        interval = 1 / self.rate
        next_at = loop.time() + random.uniform(0, interval)
        while not client.closing and loop.time() < self.sending_until:
            now = loop.time()
            if now < next_at:
                await asyncio.sleep(min(next_at - now, 0.2))
                continue
            next_at += interval
            client.sequence += 1
            message = Message(f"{self.prefix}-{client.name}-{client.sequence}", client, now)
            self.messages[message.ref] = message
            await client.submit(message)

    async def stop_sending(self, timeout=10):
        self.sending_until = 0
        _, running = await asyncio.wait(self.senders, timeout=timeout)
        for task in running:
            task.cancel()

    def acked_by_room(self, rooms=None):
        acked = {room: set() for room in rooms or self.rooms}
        for message in self.messages.values():
            if message.outcome == "acked" and message.client.room in acked:
                acked[message.client.room].add(message.key)
        return acked

    def settled(self):
        if any(client.pending or not client.ready.is_set() for client in self.clients):
            return False
        acked = self.acked_by_room()
        return all(all(key in c.received for key in acked[c.room]) for c in self.clients)

    async def quiesce(self, timeout, grace=1.0):
        """Waits until everything is answered and delivered, or `timeout`; then
        `grace` seconds for late duplicates. Returns the seconds it took and whether
        it settled."""
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
        if not tasks:
            return
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

    def counts(self, rooms=None):
        """The figures every run reports (loadtests/faults.py's docstring says each), of
        `rooms` only if given."""
        rooms = rooms or self.rooms
        clients = [client for client in self.clients if client.room in rooms]
        messages = [m for m in self.messages.values() if m.client.room in rooms]
        acked = self.acked_by_room(rooms)
        missing = Counter()
        lost = {}  # (room, key) -> clients that never received it
        for client in clients:
            absent = [key for key in acked[client.room] if key not in client.received]
            missing[client.name] = len(absent)
            for key in absent:
                lost.setdefault((client.room, key), []).append(client)
        by_key = {(m.client.room, m.key): m for m in messages if m.outcome == "acked"}
        epochs = [len({key[0] for key in keys}) for keys in acked.values()]
        delivered = [client.received.distinct() for client in clients]
        outcomes = Counter(message.outcome for message in messages)
        closes = Counter()
        for client in clients:
            closes.update(client.closes)
        return {
            "clients": len(clients),
            "rooms": len(rooms),
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
            "epochs_per_room_min": min(epochs, default=0),
            "epochs_per_room_max": max(epochs, default=0),
            "resent_after_unavailable": sum(m.retries[UNAVAILABLE] for m in messages),
            "lost": len(lost),
            "missing_deliveries": sum(missing.values()),
            "lost_examples": [
                self.describe_lost(by_key[room_key], missed_by)
                for room_key, missed_by in sorted(lost.items(), key=lambda i: by_key[i[0]].created)
            ][:LOST_EXAMPLES],
            "duplicated": sum(client.received.duplicates() for client in clients),
            "republished": sum(1 for m in messages if len(m.keys_seen | {m.key} - {None}) > 1),
            "client_crashes": [c.crashed for c in clients if c.crashed],
            "refused_delivered": sum(1 for m in messages if m.outcome == "refused" and m.keys_seen),
            "gaps": dict(sum((client.gaps for client in clients), Counter())),
            "connections": sum(client.connection for client in clients),
            "reconnects": sum(len(client.resumed) for client in clients),
            "reconnects_per_client": [len(client.resumed) for client in clients],
            "connection_losses_min": min((len(c.losses) for c in clients), default=0),
            "unresumed": [c.name for c in clients if c.lost_at is not None],
            "closes": {str(code): n for code, n in sorted(closes.items(), key=str)},
            "connect_failures": dict(
                sum((client.connect_failures for client in clients), Counter())
            ),
            "errors": dict(sum((client.errors for client in clients), Counter())),
            "unknown_frames": sum(client.unknown_frames for client in clients),
            "odd_closes": [
                {"client": c.name, "at_s": round(at - self.started, 2), "replica": r, "code": code}
                for c in clients
                for at, r, code in c.close_log
                if code != CLOSE_SERVICE_RESTART
            ][:LOST_EXAMPLES],
        }
