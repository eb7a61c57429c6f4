"""The pub/sub channel layer on the cluster's real Redis: it tells when it has
subscribed again after losing its connection, which a replica's recovery waits for."""

import asyncio

from redis import asyncio as aioredis

from chat.channel_layer import PubSubChannelLayer


async def drop_connection(redis_url, pubsub):
    """Has Redis close this PubSub's connection (CLIENT KILL by its address): only
    ours, not the cluster replicas'."""
    host, port = pubsub.connection._writer.get_extra_info("sockname")[:2]
    admin = aioredis.Redis.from_url(redis_url)
    try:
        assert await admin.client_kill_filter(_type="pubsub", addr=f"{host}:{port}") == 1
    finally:
        await admin.aclose()


async def test_the_layer_says_when_it_hears_again_after_losing_redis(cluster):
    """Tests that wait_subscribed(since) holds while the pub/sub connection is older
    than `since`, returns once it has been dropped and made again (redis-py subscribes
    anew), and that a message sent then is received."""
    redis_url = cluster.describe()["redis_url"]
    layer = PubSubChannelLayer(hosts=[redis_url])
    loop = asyncio.get_running_loop()
    try:
        channel = await layer.new_channel()
        shard = layer._get_layer()._get_shard(channel)
        assert await layer.wait_subscribed(loop.time() - 60, timeout=1)
        dropped_at = loop.time()
        # Connected before dropped_at, and not since: it waits.
        assert not await layer.wait_subscribed(dropped_at, timeout=0.3)
        await drop_connection(redis_url, shard._pubsub)
        assert await layer.wait_subscribed(dropped_at, timeout=5)
        await layer.send(channel, {"type": "probe"})
        assert await asyncio.wait_for(layer.receive(channel), 5) == {"type": "probe"}
    finally:
        await layer.flush()
