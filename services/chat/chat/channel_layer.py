"""The channel layer, and the one module that knows channels_redis' internals.

ChatChannelLayer is channels_redis' RedisPubSubChannelLayer (settings name it as the
BACKEND) with what the chat needs beyond the Channels layer API:
  - the pub/sub channel of a group, and the shard that carries it, so that the
    history's publish script can publish to the group itself (chat.history) and
    every key of a room lives on that shard (one sharding policy);
  - a bound on each consumer's queue (max_queued_bytes): past it the consumer is
    sent "channel.overflow" and closes, and its client resumes, instead of the
    queue growing without end for a consumer that cannot keep up;
  - releasing a consumer's channel when the consumer ends: channels_redis
    unsubscribes only when a pending receive() is cancelled, and a receive that had
    already completed never is, so the subscription and its queue would stay for
    the life of the replica;
  - fan-out that decodes a group's message once per replica: a member attached to
    its group (attach()) is offered the decoded event first, and takes it if it can
    send it at once (chat.consumers: deliver_now); only the rest are queued, each
    a copy of the encoded message that its consumer decodes, as in channels_redis;
  - a start-up check that the layer decodes what the script writes (msgpack, no
    prefix, no encryption), and that the internals used here are still there.
They rely on channels_redis 4.3 (services/chat/requirements.in bounds it); an
upgrade that changes them fails check_internals() at start-up, and the tests.
"""

import asyncio
import hashlib
import inspect
import logging

import msgpack
from channels.exceptions import ChannelFull
from channels_redis.pubsub import (
    RedisPubSubChannelLayer,
    RedisPubSubLoopLayer,
    RedisSingleShardConnection,
)
from channels_redis.serializers import MsgPackSerializer
from channels_redis.utils import _consistent_hash, _wrap_close
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

# What a channel layer raises when Redis cannot take or give a message.
LAYER_ERRORS = (RedisError, OSError, ChannelFull)


class ChannelLayerMismatch(RuntimeError):
    """channels_redis is not what this module was written against."""


# What a consumer whose queue overflowed is sent, once, after what it holds.
OVERFLOW = {"type": "channel.overflow"}
# How often wait_subscribed() looks again.
RESUBSCRIBE_POLL_S = 0.05


class BoundedChannelQueue(asyncio.Queue):
    """A consumer's queue of serialized messages, bounded in bytes. Past the bound the
    rest is dropped and the consumer gets the overflow message: nothing is lost for
    a client that resumes from the last id it was sent."""

    def __init__(self, max_bytes, overflow_payload):
        super().__init__()
        self.max_bytes = max_bytes
        self.overflow_payload = overflow_payload
        self.bytes = 0
        self.overflowed = False
        # Put and not yet handled (handled()): taken out but still being dispatched
        # counts, so that fan-out sends nothing past a message still on its way.
        self.unhandled = 0

    def put_nowait(self, item):
        if self.overflowed:
            return
        if self.bytes + len(item) > self.max_bytes and self.qsize():
            self.overflowed = True
            item = self.overflow_payload
        super().put_nowait(item)
        self.unhandled += 1

    def handled(self):
        """The consumer has handled a message it received from this queue."""
        self.unhandled = max(0, self.unhandled - 1)

    def _put(self, item):
        self.bytes += len(item)
        super()._put(item)

    def _get(self):
        item = super()._get()
        self.bytes -= len(item)
        return item


class SubscriptionWatch:
    """When a shard's pub/sub connection was last made, its subscriptions renewed:
    redis-py re-subscribes in PubSub.on_connect, which this wraps (a bound method, as
    redis-py keeps connect callbacks as weak methods)."""

    def __init__(self, pubsub):
        self.pubsub = pubsub
        # Loop time. The first connection is made, and subscribed on, right after this;
        # redis-py calls on_connect only for the ones after.
        self.connected_at = asyncio.get_running_loop().time()
        pubsub.on_connect = self.on_connect  # what PubSub.connect() registers

    async def on_connect(self, connection):
        await type(self.pubsub).on_connect(self.pubsub, connection)
        self.connected_at = asyncio.get_running_loop().time()


class FanOutShardConnection(RedisSingleShardConnection):
    """channels_redis' connection to one Redis, whose group messages are decoded once
    and offered to the group's attached members before any is queued, and which notes
    when it last subscribed again (after Redis came back, or a failover)."""

    watch = None

    def _ensure_redis(self):
        if self._redis is None:
            super()._ensure_redis()
            self.watch = SubscriptionWatch(self._pubsub)

    def subscribed_since(self, since):
        """Whether this connection, if it has subscriptions, is connected and was made
        at or after `since` (loop time). Connected too: during a failover it may have
        reached the old primary, restarted for a moment, and lost it again."""
        if not self._subscribed_to:
            return True
        if self.watch is None or self.watch.connected_at < since:
            return False
        connection = self._pubsub.connection
        return connection is not None and connection.is_connected

    def _receive_message(self, message):
        layer = self.channel_layer
        name = message and message["channel"]
        if isinstance(name, bytes):
            name = name.decode()
        members = layer.attached.get(name)
        if not members:
            super()._receive_message(message)
            return
        data = message["data"]
        try:
            event, shared = layer.channel_layer.decode(data), {}
        except Exception:  # noqa: BLE001 - each consumer then fails on it alone, as before
            super()._receive_message(message)
            return
        for channel_name in layer.groups.get(name, ()):
            queue = layer.channels.get(channel_name)
            if queue is None:
                continue
            member = members.get(channel_name)
            if member is None or not offer(member, event, shared):
                queue.put_nowait(data)


def offer(member, event, shared):
    # Raised here, it would stop channels_redis' receive loop for a second.
    try:
        return member.deliver_now(event, shared)
    except Exception:
        logger.exception("fan-out to %r failed; queued instead", member)
        return False


def spread(name, shard_count):
    """Which of shard_count Redis servers carries a channel or group: a blake2b hash of
    its name, modulo. channels_redis' own choice, the low 12 bits of a CRC-32, puts
    similar names together (CRC is linear: 8 of the rooms lobby-0 ... lobby-9 on one
    of two shards)."""
    if shard_count == 1:
        return 0
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shard_count


class ChatLoopLayer(RedisPubSubLoopLayer):
    """channels_redis' layer of one event loop, with bounded consumer queues, fan-out
    to attached members, and its shards chosen by spread()."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.attached = {}  # group channel -> {channel name: member}
        shards = getattr(self, "_shards", ())
        self._shards = [FanOutShardConnection(shard.host, self) for shard in shards]

    async def flush(self):
        self.attached = {}
        await super().flush()

    def _get_shard(self, channel_or_group_name):
        return self._shards[spread(channel_or_group_name, len(self._shards))]

    async def _subscribe_to_channel(self, channel):
        self.channels[channel] = BoundedChannelQueue(
            self.channel_layer.max_queued_bytes, self.channel_layer.serialize(OVERFLOW)
        )
        await self._get_shard(channel).subscribe(channel)


class ChatChannelLayer(RedisPubSubChannelLayer):
    def __init__(self, *args, max_queued_bytes=1024 * 1024, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_queued_bytes = max_queued_bytes

    def _get_layer(self):
        # RedisPubSubChannelLayer._get_layer, making a ChatLoopLayer.
        loop = asyncio.get_running_loop()
        layer = self._layers.get(loop)
        if layer is None:
            layer = ChatLoopLayer(*self._args, **self._kwargs, channel_layer=self)
            self._layers[loop] = layer
            _wrap_close(self, loop)
        return layer

    async def wait_subscribed(self, since, timeout):
        """Until every Redis connection of this loop's layer that has subscriptions has
        connected again at or after `since` (loop time): messages published before that
        may not have been heard. False after `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        shards = self._get_layer()._shards
        while not all(shard.subscribed_since(since) for shard in shards):
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(RESUBSCRIBE_POLL_S)
        return True

    def group_channel(self, group):
        """The Redis pub/sub channel that carries a group's messages."""
        return self._get_layer()._get_group_channel_name(group)

    def shard_of(self, group, shard_count):
        """Which of shard_count Redis servers carries the group: the one the loop layer
        subscribes to for its pub/sub channel."""
        return spread(self.group_channel(group), shard_count)

    def attach(self, group, channel_name, member):
        """From now on the group's messages for channel_name are offered first to
        member.deliver_now(event, shared): True if it took the event, False to have it
        queued. `shared` is one dict per message, for what all members can share."""
        layer = self._get_layer()
        group_channel = layer._get_group_channel_name(group)
        layer.attached.setdefault(group_channel, {})[channel_name] = member

    def detach(self, group, channel_name):
        layer = self._get_layer()
        group_channel = layer._get_group_channel_name(group)
        members = layer.attached.get(group_channel, {})
        members.pop(channel_name, None)
        if not members:
            layer.attached.pop(group_channel, None)

    def inbox(self, channel_name):
        """The BoundedChannelQueue of a consumer's channel, or None."""
        return self._get_layer().channels.get(channel_name)

    async def release_channel(self, channel_name, group=None):
        layer = self._get_layer()
        try:
            if group is not None:
                # A consumer cancelled before its disconnect never left its group.
                self.detach(group, channel_name)
                await self.group_discard(group, channel_name)
        finally:
            if layer.channels.pop(channel_name, None) is not None:
                await layer._get_shard(channel_name).unsubscribe(channel_name)

    def occupancy(self):
        """(consumer channels, groups) subscribed in this layer, on every loop."""
        layers = list(self._layers.values())
        channels = sum(len(layer.channels) for layer in layers)
        return channels, sum(len(layer.groups) for layer in layers)

    def decode(self, payload):
        """A message as a consumer of the layer receives it from Redis."""
        return self.deserialize(payload)

    def check_internals(self):
        """Fails loudly if channels_redis no longer works the way this module uses it."""
        serializer = self._serializer
        problems = []
        if type(serializer) is not MsgPackSerializer:
            problems.append(f"serializer is {type(serializer).__name__}, not msgpack")
        if serializer.crypter is not None or serializer.random_prefix_length:
            problems.append("messages are encrypted or prefixed")
        # A loop layer makes no connection until it is used.
        loop_layer = ChatLoopLayer(*self._args, **self._kwargs, channel_layer=self)
        for name in ("_layers", "_args", "_kwargs"):
            if name not in vars(self):
                problems.append(f"RedisPubSubChannelLayer has no {name}")
        if "_receive_message" not in vars(RedisSingleShardConnection):
            problems.append("RedisSingleShardConnection has no _receive_message()")
        if not loop_layer._shards:
            problems.append("the loop layer keeps its shards elsewhere than _shards")
        shard = loop_layer._shards[0] if loop_layer._shards else None
        if shard is not None and not isinstance(getattr(shard, "_subscribed_to", None), set):
            problems.append("a shard keeps no set _subscribed_to")
        if "_ensure_redis" not in vars(RedisSingleShardConnection):
            problems.append("RedisSingleShardConnection has no _ensure_redis()")
        if "register_connect_callback(self.on_connect)" not in inspect.getsource(PubSub.connect):
            problems.append("redis-py's PubSub.connect() no longer registers self.on_connect")
        if "_subscribe_to_channel" not in vars(RedisPubSubLoopLayer):
            problems.append("RedisPubSubLoopLayer has no _subscribe_to_channel()")
        if not isinstance(getattr(loop_layer, "channels", None), dict):
            problems.append("the loop layer keeps no dict of its channels")
        for method in ("send", "group_add", "group_discard", "group_send"):
            if "self._get_shard(" not in inspect.getsource(getattr(RedisPubSubLoopLayer, method)):
                problems.append(f"RedisPubSubLoopLayer.{method}() no longer asks _get_shard()")
        if not callable(getattr(loop_layer, "_get_shard", None)):
            problems.append("the loop layer has no _get_shard()")
        elif not hasattr(loop_layer._get_shard("check"), "unsubscribe"):
            problems.append("a shard has no unsubscribe()")
        group_channel = getattr(loop_layer, "_get_group_channel_name", lambda group: None)
        if not isinstance(group_channel("check"), str):
            problems.append("the loop layer has no _get_group_channel_name()")
        sample = {"type": "chat.message", "id": 1, "epoch": "ab", "sent_at": 1.5}
        try:
            if self.decode(msgpack.packb(sample)) != sample:
                problems.append("a msgpack map does not decode to itself")
        except Exception as error:  # noqa: BLE001 - any failure is the mismatch reported
            problems.append(f"decoding msgpack failed: {error!r}")
        if problems:
            raise ChannelLayerMismatch(
                "channels_redis is not the version chat.channel_layer was written for: "
                + "; ".join(problems)
            )


def shard_of(channel_layer, group, shard_count):
    """The one sharding policy: a room's group, history, refs and presence live on the
    Redis that carries its group's messages."""
    if isinstance(channel_layer, ChatChannelLayer):
        return channel_layer.shard_of(group, shard_count)
    return _consistent_hash(group, shard_count)


def script_channel(channel_layer, group):
    """The pub/sub channel on which a Lua script publishes a group's event itself (in
    the layer's encoding), or "" on another layer: the caller then group_sends it, and
    consumers fill the gaps that reordering leaves."""
    if isinstance(channel_layer, ChatChannelLayer):
        return channel_layer.group_channel(group)
    return ""


async def wait_subscribed(channel_layer, since, timeout):
    """ChatChannelLayer.wait_subscribed; True at once on another layer (the core layer
    keeps what it could not deliver)."""
    if isinstance(channel_layer, ChatChannelLayer):
        return await channel_layer.wait_subscribed(since, timeout)
    return True


def occupancy(channel_layer):
    """(consumer channels, groups) the layer holds, or (0, 0) if it cannot tell."""
    if isinstance(channel_layer, ChatChannelLayer):
        return channel_layer.occupancy()
    return 0, 0


def attach(channel_layer, group, channel_name, member):
    """Fan-out to member (ChatChannelLayer.attach); the inbox whose handled() the member
    calls for each message it handles from its queue, or None on another layer."""
    if not isinstance(channel_layer, ChatChannelLayer):
        return None
    channel_layer.attach(group, channel_name, member)
    return channel_layer.inbox(channel_name)


def detach(channel_layer, group, channel_name):
    if isinstance(channel_layer, ChatChannelLayer):
        channel_layer.detach(group, channel_name)


async def release_channel(channel_layer, channel_name, group=None):
    if isinstance(channel_layer, ChatChannelLayer) and channel_name:
        await channel_layer.release_channel(channel_name, group)
