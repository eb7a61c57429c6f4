"""What a connection is sent of its room's history, and in which order: pure
decisions, tested on their own; the consumer carries them out.

A room's messages have ids counting up from 1 within an epoch (chat.history). A
connection keeps a Cursor, the (epoch, id) of the last message it was sent. A
joining or resuming client first gets a Replay from the history; then each live
message is sent, skipped (already sent), or waits for the gap before it to be
filled from the history.
"""

import enum
import time
from dataclasses import dataclass, field

from .protocol import GAP_NONE, GAP_RESET, GAP_TRIMMED


@dataclass
class Replay:
    """What a joining or resuming client is sent before live messages."""

    epoch: str | None
    last_id: int  # the room's last id, 0 if it has none
    frames: list = field(default_factory=list)  # (id, frame), in id order
    gap: str = GAP_NONE


def plan_replay(entries, state_epoch, state_last_id, client_epoch, client_last_id, max_age):
    """Chooses, from the entries (id, frame, sent_at) after the client's last id (or the
    newest, for a new joiner), what to replay and which gap to report."""
    cutoff = time.time() - max_age
    fresh = [(entry_id, frame) for entry_id, frame, sent_at in entries if sent_at >= cutoff]
    replay = Replay(epoch=state_epoch, last_id=state_last_id, frames=fresh)
    if client_last_id is None:
        return replay
    if client_epoch is not None and client_epoch != state_epoch:
        replay.gap = GAP_RESET if client_last_id > 0 else GAP_NONE
        return replay
    if client_last_id > state_last_id:
        # Ids the room never reached: its counter was lost and restarted.
        replay.gap = GAP_RESET
        return replay
    expected_first = client_last_id + 1
    if state_last_id >= expected_first and (not fresh or fresh[0][0] != expected_first):
        replay.gap = GAP_TRIMMED
    return replay


class Action(enum.Enum):
    SEND = "send"
    SKIP = "skip"  # sent already, from the history
    FILL_GAP = "fill_gap"  # send the missing ids from the history first


@dataclass(frozen=True)
class Decision:
    action: Action
    after_id: int = 0  # with FILL_GAP: the missing ids are after_id < id < message_id


@dataclass
class Cursor:
    """The (epoch, id) of the last message a connection was sent."""

    epoch: str | None = None
    last_id: int = 0

    def start(self, replay):
        """Positions the cursor for a join or resume; returns the frames to send.
        Ids up to the room's last count as sent, replayed or not: a new joiner gets
        only the newest, and later ones arrive live."""
        self.epoch, self.last_id = replay.epoch, max(replay.last_id, last_frame_id(replay))
        return replay.frames

    def catch_up(self, replay):
        """After an outage: the frames of a replay from this cursor to send. A replay of
        another epoch that holds nothing is ignored: the live messages of the new
        epoch will move the cursor."""
        if replay.epoch != self.epoch:
            if not replay.frames:
                return []
            self.epoch, self.last_id = replay.epoch, 0
        self.last_id = max(self.last_id, replay.last_id, last_frame_id(replay))
        return replay.frames

    def decide(self, message_id, epoch):
        """What to do with a live message; a new epoch moves the cursor to its start."""
        if epoch != self.epoch:
            self.epoch, self.last_id = epoch, 0
        if message_id <= self.last_id:
            return Decision(Action.SKIP)
        if message_id > self.last_id + 1:
            return Decision(Action.FILL_GAP, self.last_id)
        return Decision(Action.SEND)

    def sent(self, message_id):
        self.last_id = max(self.last_id, message_id)


def last_frame_id(replay):
    return replay.frames[-1][0] if replay.frames else 0
