"""A replica's recovery after Redis came back (chat.replica.Replica.redis_recovered)."""

import asyncio
from dataclasses import dataclass

from chat.channel_layer import PubSubChannelLayer
from chat.replica import Replica


class Presence:
    def __init__(self, calls):
        self.calls = calls

    def restore(self, room, channel_name, name):
        self.calls.append(("restore", channel_name))

    async def ask_for_snapshot(self, channel_name):
        self.calls.append(("snapshot", channel_name))


@dataclass(eq=False)
class Member:
    """What recovery reads of a consumer."""

    channel_name: str
    name: str = "Ada"
    room_name: str = "lobby"
    room_group_name: str = "chat_lobby"
    keeps_presence: bool = True
    recovers_history: bool = True


async def test_recovery_catches_up_only_once_the_layer_hears_again():
    """Tests that after Redis comes back a replica sends its connections' catch-ups and
    presence snapshots only once its channel layer has subscribed again (after the
    outage began): a catch-up before that misses what the room publishes until the
    layer hears again, and only the room's next message would reveal it."""
    calls = []
    heard = asyncio.Event()
    layer = PubSubChannelLayer(hosts=["redis://127.0.0.1:1/0"])

    async def wait_subscribed(since, timeout):
        calls.append(("wait_subscribed", since))
        await heard.wait()
        return True

    async def send(channel, message):
        calls.append(("send", channel, message["type"]))

    async def group_add(group, channel):
        calls.append(("group_add", channel))

    layer.wait_subscribed, layer.send, layer.group_add = wait_subscribed, send, group_add
    replica = Replica("chat-1", layer, None, Presence(calls), ["redis://127.0.0.1:1/0"], 10, 65536)
    for number in (1, 2):
        replica.add(Member(f"specific.c{number}"))

    recovery = asyncio.get_running_loop().create_task(replica.redis_recovered(since=12.5))
    await asyncio.sleep(0.1)
    assert calls == [("wait_subscribed", 12.5)], "acted before the layer heard again"
    heard.set()
    await asyncio.wait_for(recovery, 5)
    catch_ups = {call[1] for call in calls if call[0] == "send" and call[2] == "history.catch_up"}
    assert catch_ups == {"specific.c1", "specific.c2"}
    assert {call[1] for call in calls if call[0] == "snapshot"} == catch_ups
