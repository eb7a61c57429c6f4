"""The record of a run's messages: what each was sent as and answered with, and what
each client received."""

from collections import Counter
from dataclasses import dataclass, field


@dataclass(eq=False)
class Message:
    ref: str
    client: object  # the ResumingClient that made it
    created: float  # when the client made it (its send time, had it been connected)
    last_sent: float | None = None  # the latest attempt
    attempts: int = 0
    connection: int | None = None  # the connection it was last sent on
    outcome: str | None = None  # "acked" or "refused"
    key: tuple | None = None  # (epoch, id) from its ack
    duplicate_ack: bool = False
    answered_at: float | None = None
    refusal: str | None = None
    retries: Counter = field(default_factory=Counter)  # by error code
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
