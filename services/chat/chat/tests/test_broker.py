"""The broker (chat.broker): the publish script's arguments named once, and the
in-memory broker's ids, refs and replays. The Redis broker runs against a real Redis
in tests/integration (test_wire_format, test_history_redis)."""

import re
from pathlib import Path

from chat.broker import (
    SCRIPT_ARGUMENTS,
    HistoryLimits,
    MemoryBroker,
    PublishRequest,
    RedisBroker,
)
from chat.channel_layer import MemoryChannelLayer
from chat.protocol import GAP_NONE, GAP_RESET, StreamPosition

SCRIPT = (Path(__file__).resolve().parents[1] / "publish.lua").read_text()


def test_the_script_arguments_are_named_in_the_scripts_order():
    """Tests that SCRIPT_ARGUMENTS lists publish.lua's ARGV in the order the script reads
    them, so that no argument goes to the wrong place."""
    read = {int(index): name for name, index in re.findall(r"(\w+) = ARGV\[(\d+)\]", SCRIPT)}
    read |= {
        int(index): name
        for names, indexes in re.findall(
            r"local ([\w, ]+) = (ARGV\[\d+\](?:, ARGV\[\d+\])*)", SCRIPT
        )
        for name, index in zip(names.split(", "), re.findall(r"\d+", indexes), strict=True)
    }
    assert [read[index] for index in sorted(read)] == list(SCRIPT_ARGUMENTS)


def test_a_request_becomes_the_scripts_arguments():
    broker = RedisBroker.__new__(RedisBroker)
    broker.limits = HistoryLimits(max_length=50, max_age=60, on_join=5)
    request = PublishRequest("lobby", "hi", "Ada", "chat-1", ref="r1")
    arguments = dict(
        zip(SCRIPT_ARGUMENTS, broker.script_arguments(request, 1.5, "ch"), strict=True)
    )
    assert arguments["sent_at"] == "1.5"
    assert (arguments["max_length"], arguments["history_ttl"]) == (50, 60_000)
    assert arguments["channel"] == "ch"
    assert arguments["ref_ttl"] == 600_000
    frame = f"{arguments['head']}7{arguments['middle']}e1{arguments['tail']}"
    assert '"id":7,"epoch":"e1"' in frame
    assert '"message": "hi"' in frame


async def test_the_memory_broker_numbers_and_keeps_refs():
    broker = MemoryBroker(MemoryChannelLayer(), HistoryLimits(max_length=3, max_age=60, on_join=2))
    first = await broker.publish(PublishRequest("lobby", "a", "Ada", "chat-1", ref="r1"))
    again = await broker.publish(PublishRequest("lobby", "a", "Ada", "chat-1", ref="r1"))
    second = await broker.publish(PublishRequest("lobby", "b", "Ada", "chat-1"))
    assert (first.id, again.id, again.duplicate, second.id) == (1, 1, True, 2)
    joined = await broker.replay("lobby")
    assert [message_id for message_id, _ in joined.frames] == [1, 2]
    resumed = await broker.replay("lobby", StreamPosition(first.epoch, 1))
    assert ([message_id for message_id, _ in resumed.frames], resumed.gap) == ([2], GAP_NONE)
    lost = await broker.replay("lobby", StreamPosition("gone", 9))
    assert lost.gap == GAP_RESET
    assert await broker.between("lobby", 0, 2) == [joined.frames[0]]
