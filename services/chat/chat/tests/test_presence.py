"""Presence as a snapshot for the joiner and diffs for the room (chat.presence), on
the in-memory layer with the async consumer."""

import asyncio
import json

import pytest
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.apps import apps
from django.urls import re_path
from redis.exceptions import ConnectionError as RedisConnectionError

from chat import protocol
from chat.consumers import ChatConsumer
from chat.presence import Changes
from chat.routing import ROOM_PATH
from chat.sync_consumers import SyncChatConsumer
from harness.client import apply_presence

from .clients import fresh_replica

pytestmark = pytest.mark.django_db(databases=[])

ASYNC = URLRouter([re_path(ROOM_PATH, ChatConsumer.as_asgi())])
SYNC = URLRouter([re_path(ROOM_PATH, SyncChatConsumer.as_asgi())])
PRESENCE_FRAMES = {protocol.PRESENCE, protocol.PRESENCE_DIFF}


@pytest.fixture(autouse=True)
def replica(settings):
    original = apps.get_app_config("chat").replica
    settings.CHAT_PRESENCE_COALESCE_MS = 50
    yield fresh_replica()
    apps.get_app_config("chat").replica = original


class Member:
    """A chat.v1 connection that applies the presence frames it gets, as the page does."""

    def __init__(self, communicator):
        self.communicator = communicator
        self.members = {}
        self.count = None
        self.frames = []  # presence frames, as sent
        self.other = []  # any other frame after the welcome

    async def read(self, timeout=0.3):
        """Reads until nothing comes for `timeout` seconds."""
        while not await self.communicator.receive_nothing(timeout=timeout):
            output = await self.communicator.receive_output()
            if output["type"] != "websocket.send":
                continue
            frame = json.loads(output["text"])
            if frame["type"] in PRESENCE_FRAMES:
                self.frames.append(output["text"])
                apply_presence(self.members, frame)
                self.count = frame["count"]
            elif frame["type"] not in ("history", "chat"):
                self.other.append(frame)
        return self

    def names(self):
        return sorted(self.members.values())

    def presence_bytes(self):
        return sum(len(text.encode()) for text in self.frames)


async def enter(name, application=ASYNC, room="presence", subprotocols=("chat.v1",), query=""):
    communicator = WebsocketCommunicator(
        application, f"/ws/chat/{room}/?name={name}{query}", subprotocols=list(subprotocols)
    )
    assert (await communicator.connect())[0]
    return Member(communicator)


def test_a_leave_in_the_window_of_its_join_is_still_announced():
    """Tests that a join and leave merged in one batch leave the member in "left": a
    joiner's snapshot may have listed it."""
    changes = Changes()
    changes.join("c1", "Ada")
    changes.join("c2", "Grace")
    changes.leave("c1")
    assert changes.joined == {"c2": "Grace"}
    assert changes.left == {"c1"}
    changes.join("c1", "Ada")
    assert changes.joined == {"c1": "Ada", "c2": "Grace"}
    assert changes.left == set()


def test_member_ids_are_short_stable_and_not_the_channel_name():
    channel = "specific.abc!def"
    assert protocol.member_id(channel) == protocol.member_id(channel)
    assert protocol.member_id(channel) != protocol.member_id("specific.abc!deg")
    assert channel not in protocol.member_id(channel)
    assert len(protocol.member_id(channel)) == 12


def test_a_diff_frame_is_its_parts_around_the_count():
    joined, left = [("b2", "Grace"), ("a1", "Ada")], ["c3"]
    head, tail = protocol.presence_diff_parts(joined, left)
    assert json.loads(f"{head}7{tail}") == {
        "type": "presence_diff",
        "count": 7,
        "joined": [{"id": "a1", "name": "Ada"}, {"id": "b2", "name": "Grace"}],
        "left": ["c3"],
    }


async def test_the_joiner_gets_the_list_and_the_room_a_diff():
    """Tests that a joiner gets a snapshot holding itself, the others a diff of the
    joiner only, and a leave a diff of its id; a resuming client gets the list too."""
    ada = await (await enter("Ada")).read()
    assert ada.names() == ["Ada"]
    assert ada.count == 1
    snapshot = json.loads(ada.frames[0])
    assert snapshot["type"] == "presence"
    (ada_id,) = [member["id"] for member in snapshot["members"]]

    grace = await (await enter("Grace")).read()
    await ada.read()
    assert json.loads(grace.frames[0])["type"] == "presence"
    assert grace.names() == ["Ada", "Grace"]
    assert grace.count == 2
    diff = json.loads(ada.frames[-1])
    assert diff["type"] == "presence_diff"
    assert [member["name"] for member in diff["joined"]] == ["Grace"]
    assert diff["left"] == []
    assert diff["count"] == 2
    assert ada.names() == ["Ada", "Grace"]

    resumed = await (await enter("Linus", query="&last_id=0")).read()
    assert json.loads(resumed.frames[0])["type"] == "presence"
    assert resumed.names() == ["Ada", "Grace", "Linus"]
    await resumed.communicator.disconnect()

    await ada.communicator.disconnect()
    await grace.read()
    diff = json.loads(grace.frames[-1])
    assert diff["type"] == "presence_diff"
    assert diff["left"] == [ada_id]
    assert grace.names() == ["Grace"]
    assert grace.count == 1
    await grace.communicator.disconnect()


async def test_two_tabs_of_one_name_are_two_members():
    """Tests that the same display name twice is two ids, and one tab leaving keeps the
    other listed."""
    first = await (await enter("Ada")).read()
    second = await (await enter("Ada")).read()
    await first.read()
    assert first.names() == ["Ada", "Ada"]
    assert first.count == 2
    await second.communicator.disconnect()
    await first.read()
    assert first.names() == ["Ada"]
    assert first.count == 1
    await first.communicator.disconnect()


async def test_a_burst_of_joins_is_one_diff_per_interval(settings):
    """Tests that joins within the coalescing interval reach the room as one diff."""
    settings.CHAT_PRESENCE_COALESCE_MS = 500
    fresh_replica()
    ada = await (await enter("Ada")).read(timeout=0.6)  # past the interval of its own join
    before = len(ada.frames)
    others = [await enter(f"guest-{number}") for number in range(8)]
    await ada.read(timeout=0.7)
    diffs = [json.loads(text) for text in ada.frames[before:]]
    assert 1 <= len(diffs) <= 2, diffs  # the first change at once, the rest merged
    assert sum(len(diff["joined"]) for diff in diffs) == 8
    assert ada.count == 9
    assert len(ada.members) == 9
    for other in others:
        await other.communicator.disconnect()
    await ada.communicator.disconnect()


async def test_a_large_rooms_snapshot_lists_at_most_max_listed(settings):
    """Tests that the snapshot lists CHAT_PRESENCE_MAX_LISTED members and counts all."""
    settings.CHAT_PRESENCE_MAX_LISTED = 3
    fresh_replica()
    present = [await enter(f"guest-{number}") for number in range(5)]
    await asyncio.sleep(0.2)  # their joins written
    late = await (await enter("zed")).read()
    snapshot = json.loads(late.frames[0])
    assert snapshot["count"] == 6
    assert [member["name"] for member in snapshot["members"]] == ["guest-0", "guest-1", "guest-2"]
    for member in [*present, late]:
        await member.communicator.disconnect()


async def test_presence_bytes_per_member_grow_linearly():
    """Tests that filling a room costs its first member O(N) presence bytes, not O(N²):
    twice the members, about twice the bytes (the whole list each time made it 4x)."""

    async def first_members_bytes(size):
        fresh_replica()
        first = await enter("first", room=f"fill-{size}")
        others = []
        for number in range(size - 1):
            others.append(await enter(f"guest-{number:04d}", room=f"fill-{size}"))
            await first.read(timeout=0.06)  # one join per interval: no merging helps
        await first.read()
        assert first.count == size
        assert len(first.members) == size
        for member in [*others, first]:
            await member.communicator.disconnect()
        return first.presence_bytes()

    small, large = await first_members_bytes(20), await first_members_bytes(40)
    assert large < 2.5 * small, (small, large)


async def test_the_tutorial_client_and_the_sync_consumer_get_no_presence():
    """Tests that a client without chat.v1 sees no presence frame, however the room
    changes, and that the sync consumer sends none."""
    tutorial = await enter("Tut", subprotocols=())
    ada = await enter("Ada")
    await ada.communicator.disconnect()
    assert await tutorial.communicator.receive_nothing(timeout=0.3)
    await tutorial.communicator.disconnect()

    # A cluster runs one kind of consumer: the sync one keeps no presence.
    sync = await (await enter("Sync", application=SYNC)).read()
    other = await enter("Ada", application=SYNC)
    await other.communicator.disconnect()
    await sync.read()
    assert sync.frames == []
    await sync.communicator.disconnect()


async def test_asked_for_a_snapshot_a_consumer_sends_its_client_one():
    """Tests the step after a Redis outage: each client is sent the list anew."""
    ada = await (await enter("Ada")).read()
    grace = await (await enter("Grace")).read()
    await ada.read()
    presence = apps.get_app_config("chat").replica.presence
    consumer = next(iter(apps.get_app_config("chat").replica.connections))
    await presence.ask_for_snapshot(consumer.channel_name)
    for member in (ada, grace):
        await member.read()
    refreshed = [m for m in (ada, grace) if json.loads(m.frames[-1])["type"] == "presence"]
    assert len(refreshed) == 1
    assert refreshed[0].names() == ["Ada", "Grace"]
    for member in (ada, grace):
        await member.communicator.disconnect()


async def test_a_batch_redis_did_not_take_is_announced_later():
    """Tests that a batch whose write failed is kept, ahead of newer changes, and sent
    once Redis takes it."""
    presence = apps.get_app_config("chat").replica.presence
    real_apply, failures = presence.apply, []

    async def failing_once(room, changes):
        if not failures:
            failures.append(room)
            raise RedisConnectionError("down")
        await real_apply(room, changes)

    presence.apply = failing_once
    presence.restore("flaky", "c1", "Ada")
    await asyncio.sleep(0.1)
    presence.restore("flaky", "c2", "Grace")
    await asyncio.sleep(0.1)
    assert failures == ["flaky"]
    assert "flaky" not in presence.rooms
    await asyncio.sleep(0.6)  # the first retry
    assert presence.rooms["flaky"] == {"c1": "Ada", "c2": "Grace"}
