"""Releases a consumer's own channel when the consumer ends.

channels_redis' RedisPubSubChannelLayer unsubscribes a consumer's channel only when
its pending receive() is cancelled. Channels cancels it when the consumer stops,
but a receive that had already completed (a group message was waiting, which every
presence update makes likely) is never cancelled: the subscription and its queue
then stayed for the life of the replica, for 83 of 100 closed connections in a
measurement. Until channels_redis has a delete_channel(), this unsubscribes after
the consumer ends. It relies on channels_redis 4.3's layer internals (pinned) and
does nothing for other layers.
"""

from channels_redis.pubsub import RedisPubSubChannelLayer


async def release_channel(channel_layer, channel_name):
    if not isinstance(channel_layer, RedisPubSubChannelLayer) or not channel_name:
        return
    layer = channel_layer._get_layer()
    if layer.channels.pop(channel_name, None) is not None:
        await layer._get_shard(channel_name).unsubscribe(channel_name)
