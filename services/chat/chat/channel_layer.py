"""The channel layers, and the one module that knows channels_redis' internals.

Every layer the settings may name (CHAT_CHANNEL_LAYER) implements RoomLayer: Channels'
layer API and what the chat needs beyond it, so that no call site asks which layer it
has. PubSubChannelLayer, channels_redis' RedisPubSubChannelLayer, is the product:
  - a group's pub/sub channel and the shard that carries it, so that the broker's
    publish script publishes to the group itself and every key of a room lives on
    that shard (one sharding policy: spread());
  - a bound on each consumer's queue (max_queued_bytes): past it the consumer is
    sent "channel.overflow" and closes, and its client resumes;
  - releasing a consumer's channel when the consumer ends: channels_redis
    unsubscribes only when a pending receive() is cancelled;
  - each message it receives handed to a MessageHandler (chat.fanout.FanOut) with
    the inboxes of its recipients on this replica, instead of queued for each;
  - a start-up check that the internals used here are still there and that the
    layer decodes what the publish script writes (msgpack, no prefix, no encryption).
They rely on channels_redis 4.3 (requirements.in bounds it); an upgrade that changes
them fails check_internals() at start-up, and the tests. CoreChannelLayer and
MemoryChannelLayer add nothing to their Channels layers: every message goes through
the consumers' queues.

This module is the adapter to channels_redis and nothing more: it imports nothing
of the fan-out or the consumers (test_architecture checks).
"""

import asyncio
import hashlib
import inspect
import logging
from collections.abc import Collection, Mapping
from typing import Any, Protocol

import msgpack
from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer
from channels_redis.core import RedisChannelLayer
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

Event = dict[str, Any]

# What a consumer whose queue overflowed is sent, once, after what it holds.
OVERFLOW: Event = {"type": "channel.overflow"}
# How often wait_subscribed() looks again.
RESUBSCRIBE_POLL_S = 0.05


class ChannelLayerMismatch(RuntimeError):
    """channels_redis is not what this module was written against."""


class Inbox(Protocol):
    """A consumer's queue of encoded messages on this replica."""

    def enqueue(self, data: bytes) -> bool:
        """Queues a message; False if it was dropped (the queue is past its bound)."""


class MessageHandler(Protocol):
    """What the pub/sub layer hands each message it receives to (chat.fanout.FanOut),
    with the inboxes of the recipients on this replica."""

    def handle_channel_message(self, channel_name: str, data: bytes, inbox: Inbox) -> None: ...

    def handle_group_message(
        self,
        group_channel: str,
        data: bytes,
        members: Collection[str],
        inboxes: Mapping[str, Inbox],
    ) -> None: ...


class GroupSendInterceptor(Protocol):
    """What may take a group_send before the layer sends it (chat.publish.TutorialMessages)."""

    async def intercept(self, group: str, message: Event) -> bool:
        """True if it took the message: the layer then sends nothing."""


class RoomLayer(Protocol):
    """A channel layer as the chat uses it: Channels' API and the chat's additions."""

    async def new_channel(self, prefix: str = ...) -> str: ...
    async def send(self, channel: str, message: Event) -> None: ...
    async def receive(self, channel: str) -> Event: ...
    async def group_add(self, group: str, channel: str) -> None: ...
    async def group_discard(self, group: str, channel: str) -> None: ...
    async def group_send(self, group: str, message: Event) -> None: ...
    async def flush(self) -> None: ...

    def group_channel(self, group: str) -> str | None: ...
    def shard_of(self, group: str, shard_count: int) -> int: ...
    def decode(self, data: bytes) -> Event: ...
    def hand_messages_to(self, handler: MessageHandler) -> None: ...
    async def wait_subscribed(self, since: float, timeout: float) -> bool: ...
    def occupancy(self) -> tuple[int, int]: ...
    async def release_channel(self, channel_name: str, group: str | None = None) -> None: ...
    def check_internals(self) -> None: ...
    def intercept_group_sends_with(self, interceptor: GroupSendInterceptor) -> None: ...
    async def forward_group_send(self, group: str, message: Event) -> None: ...


class ChatLayer:
    """RoomLayer's additions for a layer that keeps group messages in the consumers'
    queues (the core and in-memory layers): no pub/sub channel of its own, nothing
    handed to a handler, nothing to wait for or release; and, for every layer, the
    group_sends an interceptor takes instead."""

    _interceptor: GroupSendInterceptor | None = None

    def intercept_group_sends_with(self, interceptor: GroupSendInterceptor) -> None:
        self._interceptor = interceptor

    async def group_send(self, group: str, message: Event) -> None:
        interceptor = self._interceptor
        if interceptor is not None and await interceptor.intercept(group, message):
            return
        await self.forward_group_send(group, message)

    async def forward_group_send(self, group: str, message: Event) -> None:
        """The layer's own group_send."""
        await super().group_send(group, message)  # type: ignore[misc]

    def group_channel(self, group: str) -> str | None:
        """The Redis pub/sub channel carrying a group's messages, on which a Lua script
        may publish them itself; None: the caller group_sends them."""
        return None

    def shard_of(self, group: str, shard_count: int) -> int:
        """Which of shard_count Redis servers carries the group, its history and
        presence: the one sharding policy."""
        shard: int = _consistent_hash(group, shard_count)
        return shard

    def decode(self, data: bytes) -> Event:
        raise TypeError(f"{type(self).__name__} hands no encoded messages over")

    def hand_messages_to(self, handler: MessageHandler) -> None:
        """This layer's messages reach consumers through their queues alone."""

    async def wait_subscribed(self, since: float, timeout: float) -> bool:
        """True: this layer keeps what it could not deliver (or runs in one process)."""
        return True

    def occupancy(self) -> tuple[int, int]:
        """(consumer channels, groups) the layer holds; (0, 0) if it cannot tell."""
        return 0, 0

    async def release_channel(self, channel_name: str, group: str | None = None) -> None:
        """Nothing is subscribed per channel."""

    def check_internals(self) -> None:
        """Nothing of this layer's internals is used."""


class CoreChannelLayer(ChatLayer, RedisChannelLayer):
    """channels_redis' RedisChannelLayer (CHAT_CHANNEL_LAYER=core)."""


class MemoryChannelLayer(ChatLayer, InMemoryChannelLayer):
    """Channels' in-memory layer (CHAT_CHANNEL_LAYER=memory): one process, for tests."""


class BoundedChannelQueue(asyncio.Queue[bytes]):
    """A consumer's queue of serialized messages, bounded in bytes. Past the bound the
    rest is dropped and the consumer gets the overflow message: nothing is lost for
    a client that resumes from the last id it was sent."""

    def __init__(self, max_bytes: int, overflow_payload: bytes) -> None:
        super().__init__()
        self.max_bytes = max_bytes
        self.overflow_payload = overflow_payload
        self.bytes = 0
        self.overflowed = False

    def enqueue(self, data: bytes) -> bool:
        if self.overflowed:
            return False
        if self.bytes + len(data) > self.max_bytes and self.qsize():
            self.overflowed = True
            data = self.overflow_payload
        super().put_nowait(data)
        return True

    def put_nowait(self, item: bytes) -> None:
        # channels_redis' own path, for channels without a handler.
        self.enqueue(item)

    def _put(self, item: bytes) -> None:
        self.bytes += len(item)
        super()._put(item)

    def _get(self) -> bytes:
        item = super()._get()
        self.bytes -= len(item)
        return item


class SubscriptionWatch:
    """When a shard's pub/sub connection was last made, its subscriptions renewed:
    redis-py re-subscribes in PubSub.on_connect, which this wraps (a bound method, as
    redis-py keeps connect callbacks as weak methods)."""

    def __init__(self, pubsub: PubSub) -> None:
        self.pubsub = pubsub
        # Loop time. The first connection is made, and subscribed on, right after this;
        # redis-py calls on_connect only for the ones after.
        self.connected_at = asyncio.get_running_loop().time()
        pubsub.on_connect = self.on_connect  # type: ignore[method-assign]

    async def on_connect(self, connection: Any) -> None:
        await type(self.pubsub).on_connect(self.pubsub, connection)
        self.connected_at = asyncio.get_running_loop().time()


class ShardConnection(RedisSingleShardConnection):
    """channels_redis' connection to one Redis, which hands what it receives to the
    layer's handler and notes when it last subscribed again (after Redis came back,
    or a failover)."""

    watch: SubscriptionWatch | None = None

    def _ensure_redis(self) -> None:
        if self._redis is None:
            super()._ensure_redis()
            self.watch = SubscriptionWatch(self._pubsub)

    def subscribed_since(self, since: float) -> bool:
        """Whether this connection, if it has subscriptions, is connected and was made
        at or after `since` (loop time). Connected too: during a failover it may have
        reached the old primary, restarted for a moment, and lost it again."""
        if not self._subscribed_to:
            return True
        if self.watch is None or self.watch.connected_at < since:
            return False
        connection = self._pubsub.connection
        return connection is not None and connection.is_connected

    def _receive_message(self, message: Mapping[str, Any] | None) -> None:
        layer = self.channel_layer
        handler = layer.channel_layer.handler
        if message is None or handler is None:
            super()._receive_message(message)
            return
        name, data = message["channel"], message["data"]
        if isinstance(name, bytes):
            name = name.decode()
        inbox = layer.channels.get(name)
        if inbox is not None:
            handler.handle_channel_message(name, data, inbox)
        elif name in layer.groups:
            handler.handle_group_message(name, data, layer.groups[name], layer.channels)


def spread(name: str, shard_count: int) -> int:
    """Which of shard_count Redis servers carries a channel or group: a blake2b hash of
    its name, modulo. channels_redis' own choice, the low 12 bits of a CRC-32, puts
    similar names together (CRC is linear: 8 of the rooms lobby-0 ... lobby-9 on one
    of two shards)."""
    if shard_count == 1:
        return 0
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shard_count


class ChatLoopLayer(RedisPubSubLoopLayer):
    """channels_redis' layer of one event loop, with bounded consumer queues, its
    messages handed to the handler, and its shards chosen by spread()."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        shards = getattr(self, "_shards", ())
        self._shards = [ShardConnection(shard.host, self) for shard in shards]

    def _get_shard(self, channel_or_group_name: str) -> ShardConnection:
        return self._shards[spread(channel_or_group_name, len(self._shards))]

    async def _subscribe_to_channel(self, channel: str) -> None:
        self.channels[channel] = BoundedChannelQueue(
            self.channel_layer.max_queued_bytes, self.channel_layer.serialize(OVERFLOW)
        )
        await self._get_shard(channel).subscribe(channel)


class PubSubChannelLayer(ChatLayer, RedisPubSubChannelLayer):
    """channels_redis' RedisPubSubChannelLayer (CHAT_CHANNEL_LAYER=pubsub)."""

    def __init__(self, *args: Any, max_queued_bytes: int = 1024 * 1024, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_queued_bytes = max_queued_bytes
        self.handler: MessageHandler | None = None

    def _get_layer(self) -> ChatLoopLayer:
        # RedisPubSubChannelLayer._get_layer, making a ChatLoopLayer.
        loop = asyncio.get_running_loop()
        layer: ChatLoopLayer | None = self._layers.get(loop)
        if layer is None:
            layer = ChatLoopLayer(*self._args, **self._kwargs, channel_layer=self)
            self._layers[loop] = layer
            _wrap_close(self, loop)
        return layer

    def hand_messages_to(self, handler: MessageHandler) -> None:
        self.handler = handler

    async def forward_group_send(self, group: str, message: Event) -> None:
        # RedisPubSubChannelLayer has no group_send of its own: its __getattr__ hands
        # the call to the loop's layer.
        await self._get_layer().group_send(group, message)

    async def wait_subscribed(self, since: float, timeout: float) -> bool:
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

    def group_channel(self, group: str) -> str:
        name: str = self._get_layer()._get_group_channel_name(group)
        return name

    def shard_of(self, group: str, shard_count: int) -> int:
        """The shard the loop layer subscribes to for the group's pub/sub channel."""
        return spread(self.group_channel(group), shard_count)

    async def release_channel(self, channel_name: str, group: str | None = None) -> None:
        layer = self._get_layer()
        try:
            if group is not None:
                # A consumer cancelled before its disconnect never left its group.
                await self.group_discard(group, channel_name)
        finally:
            if layer.channels.pop(channel_name, None) is not None:
                await layer._get_shard(channel_name).unsubscribe(channel_name)

    def occupancy(self) -> tuple[int, int]:
        layers = list(self._layers.values())
        channels = sum(len(layer.channels) for layer in layers)
        return channels, sum(len(layer.groups) for layer in layers)

    def decode(self, data: bytes) -> Event:
        """A message as a consumer of the layer receives it from Redis."""
        event: Event = self.deserialize(data)
        return event

    def check_internals(self) -> None:
        """Fails loudly if channels_redis no longer works the way this module uses it."""
        problems = internals_problems(self)
        if problems:
            raise ChannelLayerMismatch(
                "channels_redis is not the version chat.channel_layer was written for: "
                + "; ".join(problems)
            )


def internals_problems(layer: PubSubChannelLayer) -> list[str]:
    serializer = layer._serializer
    problems = []
    if type(serializer) is not MsgPackSerializer:
        problems.append(f"serializer is {type(serializer).__name__}, not msgpack")
    if serializer.crypter is not None or serializer.random_prefix_length:
        problems.append("messages are encrypted or prefixed")
    # A loop layer makes no connection until it is used.
    loop_layer = ChatLoopLayer(*layer._args, **layer._kwargs, channel_layer=layer)
    for name in ("_layers", "_args", "_kwargs"):
        if name not in vars(layer):
            problems.append(f"RedisPubSubChannelLayer has no {name}")
    for name in ("_receive_message", "_ensure_redis"):
        if name not in vars(RedisSingleShardConnection):
            problems.append(f"RedisSingleShardConnection has no {name}()")
    if not loop_layer._shards:
        problems.append("the loop layer keeps its shards elsewhere than _shards")
    shard = loop_layer._shards[0] if loop_layer._shards else None
    if shard is not None and not isinstance(getattr(shard, "_subscribed_to", None), set):
        problems.append("a shard keeps no set _subscribed_to")
    if "register_connect_callback(self.on_connect)" not in inspect.getsource(PubSub.connect):
        problems.append("redis-py's PubSub.connect() no longer registers self.on_connect")
    if "_subscribe_to_channel" not in vars(RedisPubSubLoopLayer):
        problems.append("RedisPubSubLoopLayer has no _subscribe_to_channel()")
    for name in ("channels", "groups"):
        if not isinstance(getattr(loop_layer, name, None), dict):
            problems.append(f"the loop layer keeps no dict of its {name}")
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
        if layer.decode(msgpack.packb(sample)) != sample:
            problems.append("a msgpack map does not decode to itself")
    except Exception as error:  # noqa: BLE001 - any failure is the mismatch reported
        problems.append(f"decoding msgpack failed: {error!r}")
    return problems
