"""The events a consumer may be handed (chat.events): what is well-formed, why the rest
is dropped, and that each reason is logged once, without the event's content."""

import logging

import pytest

from chat import events
from chat.protocol import chat_event, room_of_group

GOOD = chat_event('{"type":"chat"}', 7, "e1", 1.5)


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (GOOD, None),
        ({"type": "presence.update"}, None),
        ({"type": "presence.update", "frame": "{}"}, None),
        ({"type": "history.catch_up"}, None),
        ({"type": "chat.message", "message": "from a view"}, events.TUTORIAL_SHAPE),
        ({**GOOD, "id": True}, events.BAD_FIELDS),
        ({**GOOD, "id": 0}, events.BAD_FIELDS),
        ({**GOOD, "epoch": 5}, events.BAD_FIELDS),
        ({key: value for key, value in GOOD.items() if key != "sent_at"}, events.BAD_FIELDS),
        ({**GOOD, "frame": "x" * 101}, events.OVERSIZED),
        ({"type": "presence.update", "frame": ["a"]}, events.BAD_FIELDS),
        ({"type": "chat.shout"}, events.UNKNOWN_TYPE),
        ({"message": "no type"}, events.UNKNOWN_TYPE),
        (["not", "a", "map"], events.BAD_FIELDS),
    ],
)
def test_problem_names_why_an_event_is_not_handed_over(event, reason):
    assert events.problem(event, max_bytes=100) == reason


def test_each_reason_is_logged_once_and_never_with_the_content(caplog):
    drops = events.Drops()
    secret = {"type": "chat.shout", "text": "do not log me"}
    with caplog.at_level(logging.WARNING, logger="chat.events"):
        for _ in range(3):
            drops.drop(events.UNKNOWN_TYPE, "asgi__group__chat_lobby", secret)
    assert len(caplog.records) == 1
    assert "'text'" in caplog.text
    assert "do not log me" not in caplog.text


def test_room_of_group_is_the_inverse_of_room_group_name():
    assert room_of_group("chat_lobby") == "lobby"
    assert room_of_group("chat_") is None
    assert room_of_group("presence_lobby") is None
    assert room_of_group("chat_" + "x" * 81) is None
