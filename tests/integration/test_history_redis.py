"""The history on the cluster's real Redis, where keys can be evicted one by one."""

from redis import asyncio as aioredis

from chat.broker import HistoryLimits, PublishRequest, RedisBroker
from chat.channel_layer import PubSubChannelLayer
from chat.protocol import GAP_RESET, StreamPosition


async def test_a_room_whose_state_was_evicted_replays_nothing_of_its_stream(cluster):
    """Tests that when Redis evicts a room's state but keeps its stream, a consumer
    catching up from its position is sent nothing again (the stream's ids belong to
    no epoch any more) and a resuming client is told its messages are lost."""
    redis_url = cluster.describe()["redis_url"]
    layer = PubSubChannelLayer(hosts=[redis_url])
    broker = RedisBroker(layer, [{"address": redis_url}], HistoryLimits(100, 3600, 20))
    room = "evicted-state"
    for number in range(3):
        published = await broker.publish(PublishRequest(room, f"m{number}", "Ada", "chat-9"))
    raw = aioredis.Redis.from_url(redis_url)
    await raw.delete(broker.keys(room)[1])  # the state hash, as an eviction would

    catching_up = await broker.replay(room, StreamPosition(published.epoch, published.id))
    assert catching_up.position.epoch is None
    assert (catching_up.frames, catching_up.gap) == ([], GAP_RESET)
    resuming = await broker.replay(room, StreamPosition(published.epoch, 1))
    assert (resuming.frames, resuming.gap) == ([], GAP_RESET)
    await raw.aclose()
