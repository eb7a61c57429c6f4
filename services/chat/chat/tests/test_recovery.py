"""The pure decisions of recovery (chat.recovery): the gap a replay reports, and each
connection's Cursor: send, skip, fill a gap, follow a new epoch."""

import pytest

from chat.protocol import GAP_NONE, GAP_RESET, GAP_TRIMMED, StreamPosition
from chat.recovery import Action, Cursor, Decision, Replay, plan_replay

P = StreamPosition
FRESH = 1e12  # sent far in the future: never too old


def test_plan_replay_gaps():
    """Tests the gap a joining or resuming client is told of."""
    entries = [(3, "c", FRESH), (4, "d", FRESH)]
    assert plan_replay(entries, P("e1", 4), P("e1", 2), 60).gap == GAP_NONE
    assert plan_replay(entries, P("e1", 4), P("e1", 1), 60).gap == GAP_TRIMMED
    assert plan_replay([], P("e1", 4), P("e1", 4), 60).gap == GAP_NONE
    assert plan_replay(entries, P("e2", 4), P("e1", 9), 60).gap == GAP_RESET
    assert plan_replay(entries, P("e1", 4), P(None, 9), 60).gap == GAP_RESET
    old = [(3, "c", 0.0), (4, "d", FRESH)]
    too_old = plan_replay(old, P("e1", 4), P("e1", 2), 60)
    assert (too_old.frames, too_old.gap) == ([(4, "d")], GAP_TRIMMED)


def test_a_new_joiner_counts_the_whole_room_as_sent():
    """Tests that ids before the replayed newest ones are not fetched as a gap."""
    cursor = Cursor()
    frames = cursor.start(Replay(P("e1", 10), [(9, "i"), (10, "j")]))
    assert frames == [(9, "i"), (10, "j")]
    assert (cursor.epoch, cursor.last_id) == ("e1", 10)
    assert cursor.decide(11, "e1") == Decision(Action.SEND)


def test_the_next_id_is_sent():
    cursor = Cursor("e1", 4)
    assert cursor.decide(5, "e1") == Decision(Action.SEND)
    cursor.sent(5)
    assert cursor.decide(6, "e1") == Decision(Action.SEND)


@pytest.mark.parametrize("message_id", [1, 3, 4])
def test_an_id_already_sent_is_skipped(message_id):
    """Tests that a live message the replay already sent is not sent twice."""
    cursor = Cursor("e1", 4)
    assert cursor.decide(message_id, "e1") == Decision(Action.SKIP)
    assert cursor.last_id == 4


def test_a_gap_is_filled_before_the_message_after_it():
    """Tests that ids missed between the cursor and a live message come first."""
    cursor = Cursor("e1", 4)
    decision = cursor.decide(8, "e1")
    assert decision == Decision(Action.FILL_GAP, after_id=4)
    for message_id in (5, 6, 7, 8):
        cursor.sent(message_id)
    assert cursor.last_id == 8


def test_out_of_order_arrival_fills_then_skips():
    """Tests two ids arriving swapped (the core layer can): the later one brings the
    earlier from the history, and the earlier, arriving after, is skipped."""
    cursor = Cursor("e1", 3)
    assert cursor.decide(5, "e1") == Decision(Action.FILL_GAP, after_id=3)
    cursor.sent(4)  # from the history
    cursor.sent(5)
    assert cursor.decide(4, "e1") == Decision(Action.SKIP)
    assert cursor.decide(6, "e1") == Decision(Action.SEND)


def test_a_new_epoch_starts_the_count_again():
    """Tests that after Redis lost the room, its new ids are sent though lower."""
    cursor = Cursor("e1", 40)
    assert cursor.decide(1, "e2") == Decision(Action.SEND)
    assert (cursor.epoch, cursor.last_id) == ("e2", 0)
    cursor.sent(1)
    assert cursor.decide(2, "e2") == Decision(Action.SEND)


def test_a_new_epoch_seen_late_fills_its_start():
    """Tests that a first message of a new epoch heard at id 3 brings ids 1 and 2."""
    cursor = Cursor("e1", 40)
    assert cursor.decide(3, "e2") == Decision(Action.FILL_GAP, after_id=0)
    assert cursor.epoch == "e2"


def test_any_change_of_epoch_starts_from_its_start():
    """Tests that a message of the epoch before a restart, queued behind the new
    epoch's first one, is followed too: the consumer's queue holds publish order."""
    cursor = Cursor("e1", 40)
    cursor.decide(1, "e2")
    cursor.sent(1)
    assert (cursor.epoch, cursor.last_id) == ("e2", 1)
    assert cursor.decide(41, "e1") == Decision(Action.FILL_GAP, after_id=0)


def test_catch_up_sends_what_came_after_the_cursor():
    cursor = Cursor("e1", 4)
    frames = cursor.catch_up(Replay(P("e1", 6), [(5, "e"), (6, "f")]))
    assert frames == [(5, "e"), (6, "f")]
    assert cursor.last_id == 6


def test_catch_up_into_a_new_epoch_starts_from_its_messages():
    """Tests that the old epoch's last id does not hide the new epoch's messages."""
    cursor = Cursor("e1", 40)
    frames = cursor.catch_up(Replay(P("e2", 2), [(1, "a"), (2, "b")], gap=GAP_RESET))
    assert frames == [(1, "a"), (2, "b")]
    assert (cursor.epoch, cursor.last_id) == ("e2", 2)


def test_an_empty_replay_of_another_epoch_leaves_the_cursor():
    """Tests that a catch-up finding a new epoch with nothing in it waits for live ones."""
    cursor = Cursor("e1", 40)
    assert cursor.catch_up(Replay(P("e2", 0))) == []
    assert (cursor.epoch, cursor.last_id) == ("e1", 40)
