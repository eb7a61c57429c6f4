"""The publish script writes the group event itself (chat/publish.lua); the channel
layer's consumers must decode exactly what it wrote. Against the cluster's real Redis."""

import asyncio

from redis import asyncio as aioredis

from chat.broker import HistoryLimits, PublishRequest, RedisBroker
from chat.channel_layer import PubSubChannelLayer
from chat.protocol import StreamPosition, chat_event, room_group_name

ROOM = "wire-format"


async def test_the_layer_decodes_what_the_publish_script_publishes(cluster):
    """Tests that a message published by the script reaches a layer consumer as the
    chat event, field for field and type for type."""
    redis_url = cluster.describe()["redis_url"]
    layer = PubSubChannelLayer(hosts=[redis_url])
    broker = RedisBroker(layer, [{"address": redis_url}], HistoryLimits(10, 60, 5))
    channel = await layer.new_channel()
    await layer.group_add(room_group_name(ROOM), channel)
    raw = aioredis.Redis.from_url(redis_url)
    async with raw.pubsub() as pubsub:
        await pubsub.subscribe(layer.group_channel(room_group_name(ROOM)))
        await pubsub.get_message(timeout=5)  # the subscription's confirmation
        request = PublishRequest(ROOM, "hello é", "Ada", "chat-9", ref="wire-1")
        published = await broker.publish(request)
        payload = (await pubsub.get_message(timeout=5))["data"]
    received = await asyncio.wait_for(layer.receive(channel), 5)

    replay = await broker.replay(ROOM, StreamPosition(published.epoch, published.id - 1))
    [(message_id, frame)] = replay.frames
    expected = chat_event(frame, published.id, published.epoch, received["sent_at"])
    assert received == expected
    assert layer.decode(payload) == expected
    assert [type(received[key]) for key in ("id", "epoch", "frame", "sent_at")] == [
        int,
        str,
        str,
        float,
    ]
    await layer.group_discard(room_group_name(ROOM), channel)
    await layer.flush()
    await raw.aclose()
