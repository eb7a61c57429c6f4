"""What a connection is sent of its room's history, and in which order: pure
decisions, tested on their own; the fan-out and the consumer carry them out.

A room's messages have ids counting up from 1 within an epoch (chat.broker). A
connection keeps a Cursor, the (epoch, id) of the last message it was sent. A
joining or resuming client first gets a Replay from the history; then each live
message is sent, skipped (already sent), or waits for the gap before it to be
filled from the history.
"""

import enum
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from .protocol import GAP_NONE, GAP_RESET, GAP_TRIMMED, StreamPosition

# A message of the history: (id, frame).
Frame = tuple[int, str]
# A stored entry: (id, frame, sent_at).
Entry = tuple[int, str, float]


@dataclass
class Replay:
    """What a joining or resuming client is sent before live messages."""

    position: StreamPosition  # the room's epoch and last id (0 if it has none)
    frames: list[Frame] = field(default_factory=list)  # in id order
    gap: str = GAP_NONE


def plan_replay(
    entries: Sequence[Entry],
    room: StreamPosition,
    since: StreamPosition | None,
    max_age: float,
) -> Replay:
    """Chooses, from the entries after the client's position `since` (or the newest,
    for a new joiner, `since` None), what to replay and which gap to report. `room` is
    the room's own position."""
    cutoff = time.time() - max_age
    fresh = [(entry_id, frame) for entry_id, frame, sent_at in entries if sent_at >= cutoff]
    replay = Replay(room, fresh)
    if since is None:
        return replay
    if since.epoch is not None and since.epoch != room.epoch:
        replay.gap = GAP_RESET if since.offset > 0 else GAP_NONE
        return replay
    if since.offset > room.offset:
        # Ids the room never reached: its counter was lost and restarted.
        replay.gap = GAP_RESET
        return replay
    expected_first = since.offset + 1
    if room.offset >= expected_first and (not fresh or fresh[0][0] != expected_first):
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


SEND = Decision(Action.SEND)
SKIP = Decision(Action.SKIP)


@dataclass
class Cursor:
    """The (epoch, id) of the last message a connection was sent."""

    epoch: str | None = None
    last_id: int = 0

    @property
    def position(self) -> StreamPosition:
        return StreamPosition(self.epoch, self.last_id)

    def start(self, replay: Replay) -> list[Frame]:
        """Positions the cursor for a join or resume; returns the frames to send.
        Ids up to the room's last count as sent, replayed or not: a new joiner gets
        only the newest, and later ones arrive live."""
        self.epoch = replay.position.epoch
        self.last_id = max(replay.position.offset, last_frame_id(replay))
        return replay.frames

    def catch_up(self, replay: Replay) -> list[Frame]:
        """After an outage: the frames of a replay from this cursor to send. A replay of
        another epoch that holds nothing is ignored: the live messages of the new
        epoch will move the cursor."""
        if replay.position.epoch != self.epoch:
            if not replay.frames:
                return []
            self.epoch, self.last_id = replay.position.epoch, 0
        self.last_id = max(self.last_id, replay.position.offset, last_frame_id(replay))
        return replay.frames

    def decide(self, message_id: int, epoch: str) -> Decision:
        """What to do with a live message; a new epoch moves the cursor to its start."""
        if epoch != self.epoch:
            self.epoch, self.last_id = epoch, 0
        if message_id <= self.last_id:
            return SKIP
        if message_id > self.last_id + 1:
            return Decision(Action.FILL_GAP, self.last_id)
        return SEND

    def sent(self, message_id: int) -> None:
        self.last_id = max(self.last_id, message_id)


def last_frame_id(replay: Replay) -> int:
    return replay.frames[-1][0] if replay.frames else 0
