"""Publishing from server code (chat.publish): send_to_room from a plain thread,
asend_to_room in a loop, the management command, idempotency keys, the tutorial's
group_send taken as a publish, and what bad input is answered; on the in-memory layer."""

import asyncio
import json
from io import StringIO

import pytest
from channels.layers import get_channel_layer
from django.core.management import CommandError, call_command

from chat import metrics
from chat.publish import KEY_PREFIX, PublishError, asend_to_room, publish_request, send_to_room

from .clients import ASYNC, join, quiet, receive, replayed

pytestmark = [pytest.mark.django_db(databases=[]), pytest.mark.usefixtures("replica")]


async def member(room="lobby", query=""):
    client = await join(ASYNC, room=room, query=query)
    await replayed(client)
    return client


def published(via):
    return metrics.service_publishes.labels(via)._value.get()


async def test_asend_to_room_publishes_a_system_message_with_the_next_id():
    client = await member()
    await client.send_json_to({"message": "from a person"})
    assert (await receive(client))["id"] == 1
    before = published("python")

    result = await asend_to_room("lobby", "deploy finished", sender="deploy-bot")
    frame = await receive(client)
    assert (result.id, result.duplicate) == (2, False)
    assert (frame["id"], frame["epoch"]) == (result.id, result.epoch)
    assert (frame["message"], frame["name"], frame["system"]) == (
        "deploy finished",
        "deploy-bot",
        True,
    )
    assert published("python") == before + 1
    await client.disconnect()


async def test_a_members_message_is_not_marked_system():
    client = await member()
    await client.send_json_to({"message": "hi", "system": True})
    assert "system" not in await receive(client)
    await client.disconnect()


async def test_send_to_room_works_from_a_plain_thread_while_the_replica_serves():
    client = await member()
    result = await asyncio.to_thread(send_to_room, "lobby", "from a worker thread")
    frame = await receive(client)
    assert (frame["id"], frame["message"]) == (result.id, "from a worker thread")
    await client.disconnect()


async def test_send_to_room_in_a_running_loop_is_refused_not_deadlocked():
    with pytest.raises(PublishError) as refused:
        send_to_room("lobby", "blocking the loop")
    assert refused.value.code == "wrong_context"


async def test_a_key_publishes_once_however_often_it_is_retried():
    client = await member()
    first = await asend_to_room("lobby", "once", key="task-41")
    again = await asyncio.to_thread(send_to_room, "lobby", "once", key="task-41")
    assert (again.id, again.epoch, again.duplicate) == (first.id, first.epoch, True)
    assert (await receive(client))["id"] == first.id
    assert await quiet(client)
    await client.disconnect()


async def test_a_client_resuming_from_before_gets_it_from_the_history():
    client = await member()
    result = await asend_to_room("lobby", "while you were away")
    await client.disconnect()
    resumed = await join(ASYNC, query=f"?last_id={result.id - 1}&epoch={result.epoch}")
    frames, _ = await replayed(resumed)
    assert [(frame["id"], frame.get("system")) for frame in frames] == [(result.id, True)]
    await resumed.disconnect()


@pytest.mark.parametrize(
    ("arguments", "code"),
    [
        (("no room!", "hi"), "invalid_room"),
        (("lobby", "   "), "invalid_text"),
        (("lobby", 42), "invalid_text"),
        (("lobby", "x" * 4097), "text_too_large"),
        (("lobby", "\ud800 a lone surrogate"), "invalid_text"),
        (("lobby", "hi", "x" * 33), "invalid_sender"),
        (("lobby", "hi", "\n"), "invalid_sender"),
        (("lobby", "hi", "bot", "a:b"), "invalid_key"),
    ],
)
async def test_bad_input_is_refused_with_its_code(arguments, code):
    room, text, *rest = arguments
    sender = rest[0] if rest else "system"
    key = rest[1] if len(rest) > 1 else None
    with pytest.raises(PublishError) as refused:
        await asend_to_room(room, text, sender=sender, key=key)
    assert refused.value.code == code


async def test_the_tutorials_group_send_is_published_like_a_message():
    client = await member()
    before = published("group_send")
    await get_channel_layer().group_send(
        "chat_lobby", {"type": "chat.message", "message": "from a django view"}
    )
    frame = await receive(client)
    assert (frame["id"], frame["message"], frame["system"]) == (1, "from a django view", True)
    assert published("group_send") == before + 1
    await client.disconnect()


@pytest.mark.parametrize(
    "event",
    [
        {"type": "chat.message"},
        {"type": "chat.message", "frame": "{}", "id": "1", "epoch": "e", "sent_at": 1.0},
        {"type": "chat.shout", "text": "hi"},
        {"type": "presence.update", "frame": 42},
        {"message": "no type"},
        {"type": 5},
    ],
)
async def test_a_malformed_group_event_leaves_the_member_connected(event):
    client = await member()
    await get_channel_layer().forward_group_send("chat_lobby", event)
    assert await quiet(client)
    await client.send_json_to({"message": "still here"})
    assert (await receive(client))["message"] == "still here"
    await client.disconnect()


def test_the_command_publishes_and_a_retried_key_publishes_nothing():
    def command(*arguments):
        output = StringIO()
        call_command("send_to_room", "cmd-room", "maintenance at 18:00", *arguments, stdout=output)
        return output.getvalue()

    first = json.loads(command("--key", "notice-1", "--json"))
    again = json.loads(command("--key", "notice-1", "--json"))
    assert (first["id"], first["duplicate"]) == (1, False)
    assert (again["id"], again["epoch"], again["duplicate"]) == (1, first["epoch"], True)
    assert command().startswith("published to cmd-room: id 2, epoch ")
    with pytest.raises(CommandError, match="invalid_room"):
        call_command("send_to_room", "bad room", "hi", stdout=StringIO())


async def test_no_answer_in_time_is_a_timeout_not_unavailable(replica, settings, monkeypatch):
    """Tests that a publish that outlives CHAT_PUBLISH_TIMEOUT is reported as such: Redis
    may hold it, so it must not be called "unavailable" (asyncio's TimeoutError is an
    OSError, as the layer's errors are)."""
    settings.CHAT_PUBLISH_TIMEOUT = 1

    async def hang(request):
        await asyncio.sleep(5)

    monkeypatch.setattr(replica.broker, "publish", hang)
    replica.adopt_running_loop()
    with pytest.raises(PublishError) as timed_out:
        await asend_to_room("lobby", "slow")
    assert timed_out.value.code == "timeout"


def test_only_a_key_is_remembered_for_its_ttl(settings):
    keyless = publish_request("lobby", "hi", "bot", None)
    keyed = publish_request("lobby", "hi", "bot", "job-1")
    assert (keyless.ref, keyless.ref_ttl) == (None, None)
    assert (keyed.ref, keyed.ref_ttl) == (f"{KEY_PREFIX}job-1", settings.CHAT_PUBLISH_KEY_TTL)
