"""Fan-out across replicas of a real cluster: Redis, Daphne replicas, nginx."""

import asyncio
import subprocess
import uuid

from harness.client import join


def unique(text):
    return f"{text}-{uuid.uuid4().hex[:8]}"


async def test_message_through_nginx_reaches_clients_on_replicas_1_and_3(cluster):
    """Tests that clients connected straight to replicas 1 and 3 get a message sent via nginx."""
    room = unique("fanout")
    first = await join(cluster, room, replica=1)
    third = await join(cluster, room, replica=3)
    assert (first.replica, third.replica) == ("chat-1", "chat-3")
    sender = await join(cluster, room)

    await sender.say("hello from nginx")
    for client in (first, third, sender):
        frame = await client.receive_chat()
        assert frame["message"] == "hello from nginx"
        assert frame["sent_via"] == sender.replica
    for client in (first, third, sender):
        await client.close()


async def test_every_replica_delivers_every_message_exactly_once(cluster):
    """Tests that a client on each replica gets each message once, whichever replica took it."""
    room = unique("exactly-once")
    listeners = [await join(cluster, room, replica=n) for n in (1, 2, 3)]
    sent = []
    for sender in listeners:
        for index in range(5):
            message = f"{sender.replica}-{index}"
            sent.append(message)
            await sender.say(message)

    for listener in listeners:
        received = [(await listener.receive_chat())["message"] for _ in sent]
        assert sorted(received) == sorted(sent), listener.replica
        # Each sender's own messages keep their order.
        for replica in ("chat-1", "chat-2", "chat-3"):
            own = [m for m in received if m.startswith(replica)]
            assert own == [f"{replica}-{i}" for i in range(5)]
        await listener.assert_silent(0.5)  # no duplicates
    for listener in listeners:
        await listener.close()


async def test_rooms_are_isolated_across_replicas(cluster):
    """Tests that a message is not seen in another room, on any replica."""
    room, other_room = unique("room"), unique("other")
    sender = await join(cluster, room, replica=1)
    others = [await join(cluster, other_room, replica=n) for n in (1, 2, 3)]
    await sender.say("not for you")
    assert (await sender.receive_chat())["message"] == "not for you"
    await asyncio.gather(*(other.assert_silent(1.0) for other in others))
    for client in (sender, *others):
        await client.close()


async def test_connections_through_nginx_spread_over_replicas(cluster):
    """Tests that nginx balances WebSocket connections over every replica."""
    clients = [await join(cluster, unique("spread")) for _ in range(9)]
    replicas = {client.replica for client in clients}
    assert replicas == {"chat-1", "chat-2", "chat-3"}
    for client in clients:
        await client.close()


async def test_closed_connections_leave_no_redis_subscription(cluster):
    """Tests that every connection's own pub/sub channel is unsubscribed when it closes,
    also one whose last receive had completed (a message was waiting): channels_redis
    unsubscribes only when a pending receive is cancelled."""

    def own_channels():
        output = subprocess.run(
            ["redis-cli", "-p", str(cluster.redis_port), "pubsub", "channels", "*specific*"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return set(output.split())

    before = own_channels()
    room = unique("subscriptions")
    clients = [await join(cluster, room, replica=1 + n % 3) for n in range(30)]
    await clients[0].say("traffic, so that receives complete")
    for client in clients:
        await client.receive_chat()
    assert len(own_channels() - before) >= 30
    for client in clients:
        await client.close()
    deadline = asyncio.get_running_loop().time() + 10
    while own_channels() - before and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.2)
    assert own_channels() - before == set()
