"""Message ids and the bounded history of each room, from which clients recover.

Every chat message gets an id that counts up from 1 in its room, and an epoch: a
random name for one run of that count. The count, the history and the epoch live
in Redis; if Redis loses them (a restart without persistence), the next message
starts a new epoch at id 1, and a client that still holds the old epoch is told
that its missed messages cannot be recovered, instead of being shown wrong ones.

Storing and publishing are one Lua script: a message is either stored, numbered,
published to the room's channel-layer group and acknowledged, or none of these.
Publishing inside the script also means subscribers receive a room's messages in
id order, so a consumer sees a gap in ids only when it really missed something.

Keys, per room (the channel-layer shard that carries the room's group holds them):
    chat:history:<room>   stream of the last CHAT_HISTORY_MAX_LENGTH frames, id "<id>-0"
    chat:room:<room>      hash: last_id, epoch
    chat:ref:<room>:<ref> the id given to a message's ref (idempotent retries)

Messages older than CHAT_HISTORY_MAX_AGE are not replayed, and a room's history
expires that long after its last message.

With the in-memory channel layer (one process: unit tests, runserver) the same
interface is kept in memory.
"""

import asyncio
import json
import secrets
import time
from collections import deque
from dataclasses import dataclass, field

from channels.layers import get_channel_layer
from channels_redis.pubsub import RedisPubSubChannelLayer
from channels_redis.utils import _consistent_hash
from django.conf import settings

from .redis_clients import chat_redis

# The room's counter and epoch outlive its history, so that an idle room keeps
# counting where it stopped; a week, or twice the history's age if longer.
ROOM_STATE_MIN_TTL = 7 * 24 * 3600
# How long a client's message ref is remembered: its retries within this are
# acknowledged with the first id instead of being sent again. Clients resend right
# after reconnecting; each ref costs Redis about 100 bytes for this long (an hour
# made refs most of Redis' growth in the soak: 60 messages/s, +15 MB in 30 min).
REF_TTL = 600
# A message without a client ref gets one of the server's, so that the Redis
# client may retry the script on a broken connection without publishing twice.
SERVER_REF_TTL = 60

# Gap kinds in the "history" frame (see chat.protocol).
GAP_NONE = "none"
GAP_TRIMMED = "trimmed"  # older than the history's length or age
GAP_RESET = "reset"  # the room's history was lost (new epoch)

# KEYS: stream, room state, ref key.
# ARGV: frame tail (the JSON object after its opening brace, without id and epoch),
#       sent_at, max length, history ttl ms, state ttl ms, a new epoch if needed,
#       pub/sub channel to publish on ("" not to), ref ttl ms.
# Returns {id, epoch, duplicate (0 or 1), frame}.
PUBLISH_SCRIPT = """
local stream, state, ref_key = KEYS[1], KEYS[2], KEYS[3]
local tail, sent_at, max_length = ARGV[1], ARGV[2], ARGV[3]
local history_ttl, state_ttl, new_epoch = ARGV[4], ARGV[5], ARGV[6]
local channel, ref_ttl = ARGV[7], ARGV[8]
do
  local known = redis.call('GET', ref_key)
  if known then
    local epoch = redis.call('HGET', state, 'epoch') or ''
    return {tonumber(known), epoch, 1, ''}
  end
end
local id = redis.call('HINCRBY', state, 'last_id', 1)
local epoch = redis.call('HGET', state, 'epoch')
if not epoch then
  epoch = new_epoch
  redis.call('HSET', state, 'epoch', epoch)
end
local frame = '{"type":"chat","id":' .. id .. ',"epoch":"' .. epoch .. '",' .. tail
redis.call('XADD', stream, 'MAXLEN', max_length, id .. '-0', 'f', frame, 't', sent_at)
redis.call('PEXPIRE', stream, history_ttl)
redis.call('PEXPIRE', state, state_ttl)
redis.call('SET', ref_key, id, 'PX', ref_ttl)
if channel ~= '' then
  redis.call('PUBLISH', channel, cmsgpack.pack({
    type = 'chat.message', frame = frame, id = id, epoch = epoch, sent_at = tonumber(sent_at)
  }))
end
return {id, epoch, 0, frame}
"""


@dataclass
class Published:
    id: int
    epoch: str
    duplicate: bool  # a retry of a ref already published: nothing was sent again


@dataclass
class Replay:
    """What a joining or resuming client is sent before live messages."""

    epoch: str | None
    last_id: int  # the room's last id, 0 if it has none
    frames: list = field(default_factory=list)  # (id, frame), in id order
    gap: str = GAP_NONE


def new_epoch():
    return secrets.token_hex(4)


def frame_tail(message, name, replica):
    """The chat frame without its opening brace, id and epoch, which the store adds."""
    return json.dumps({"message": message, "name": name, "sent_via": replica})[1:]


def chat_event(frame, message_id, epoch, sent_at):
    return {
        "type": "chat.message",
        "frame": frame,
        "id": message_id,
        "epoch": epoch,
        "sent_at": sent_at,
    }


def plan_replay(entries, state_epoch, state_last_id, client_epoch, client_last_id, max_age):
    """Chooses, from the entries after the client's last id (or the newest, for a new
    joiner), what to replay and which gap to report. Pure: tested on its own."""
    cutoff = time.time() - max_age
    fresh = [(entry_id, frame) for entry_id, frame, sent_at in entries if sent_at >= cutoff]
    replay = Replay(epoch=state_epoch, last_id=state_last_id, frames=fresh)
    if client_last_id is None:
        return replay
    if client_epoch is not None and client_epoch != state_epoch:
        replay.gap = GAP_RESET if client_last_id > 0 else GAP_NONE
        return replay
    if client_last_id > state_last_id:
        # Ids the room never reached: its counter was lost and restarted.
        replay.gap = GAP_RESET
        return replay
    expected_first = client_last_id + 1
    if state_last_id >= expected_first and (not fresh or fresh[0][0] != expected_first):
        replay.gap = GAP_TRIMMED
    return replay


class RedisHistory:
    def __init__(self, channel_layer, urls, max_length, max_age, on_join):
        self.channel_layer = channel_layer
        self.clients = [chat_redis(url) for url in urls]
        self.max_length = max_length
        self.max_age = max_age
        self.on_join = on_join
        self.script = None
        # Publishing inside the script needs the pub/sub layer's channel names and
        # encoding (msgpack, no encryption: as configured in settings). Other layers
        # get a separate group_send; consumers then fill the gaps reordering leaves.
        self.publishes_in_script = isinstance(channel_layer, RedisPubSubChannelLayer)

    def group_channel(self, group):
        return self.channel_layer._get_layer()._get_group_channel_name(group)

    def client_for(self, group):
        # The shard that carries the group's pub/sub channel (channels_redis' own hash).
        shard_key = self.group_channel(group) if self.publishes_in_script else group
        return self.clients[_consistent_hash(shard_key, len(self.clients))]

    @staticmethod
    def keys(room, ref=None):
        return [f"chat:history:{room}", f"chat:room:{room}", f"chat:ref:{room}:{ref or ''}"]

    async def publish(self, room, group, message, name, replica, ref=None):
        client = self.client_for(group)
        if self.script is None:
            self.script = client.register_script(PUBLISH_SCRIPT)
        sent_at = time.time()
        channel = self.group_channel(group) if self.publishes_in_script else ""
        ref_ttl = REF_TTL if ref else SERVER_REF_TTL
        message_id, epoch, duplicate, frame = await self.script(
            keys=self.keys(room, ref or f"server-{secrets.token_hex(8)}"),
            args=[
                frame_tail(message, name, replica),
                repr(sent_at),
                self.max_length,
                self.max_age * 1000,
                max(ROOM_STATE_MIN_TTL, 2 * self.max_age) * 1000,
                new_epoch(),
                channel,
                ref_ttl * 1000,
            ],
            client=client,
        )
        epoch = epoch.decode()
        if not duplicate and not self.publishes_in_script:
            event = chat_event(frame.decode(), message_id, epoch, sent_at)
            await self.channel_layer.group_send(group, event)
        return Published(message_id, epoch, bool(duplicate))

    async def replay(self, room, group, client_epoch=None, client_last_id=None):
        """The messages a joining client is sent first: those after its last id when it
        resumes, else the newest CHAT_HISTORY_ON_JOIN."""
        stream, state, _ = self.keys(room)
        client = self.client_for(group)
        async with client.pipeline(transaction=True) as pipe:
            pipe.hmget(state, "epoch", "last_id")
            if client_last_id is None:
                pipe.xrevrange(stream, count=max(self.on_join, 1))
            else:
                pipe.xrange(stream, min=f"({client_last_id}-0", count=self.max_length)
            (epoch, last_id), raw = await pipe.execute()
        epoch = epoch.decode() if epoch else None
        if client_last_id is None:
            raw = list(reversed(raw))[-self.on_join :] if self.on_join else []
        elif client_epoch not in (None, epoch) and client_last_id > 0:
            # Another epoch's ids mean nothing here: replay this epoch from its start.
            raw = await client.xrange(stream, count=self.max_length)
        entries = [parse_entry(entry) for entry in raw]
        return plan_replay(
            entries, epoch, int(last_id or 0), client_epoch, client_last_id, self.max_age
        )

    async def between(self, room, group, after_id, before_id):
        """The stored frames with after_id < id < before_id, in order."""
        stream, _, _ = self.keys(room)
        raw = await self.client_for(group).xrange(
            stream, min=f"({after_id}-0", max=f"({before_id}-0"
        )
        return [(entry_id, frame) for entry_id, frame, _ in map(parse_entry, raw)]


def parse_entry(entry):
    stream_id, fields = entry
    return (
        int(stream_id.split(b"-")[0]),
        fields[b"f"].decode(),
        float(fields[b"t"]),
    )


class MemoryHistory:
    """The same interface for the in-memory channel layer (one process)."""

    def __init__(self, channel_layer, max_length, max_age, on_join):
        self.channel_layer = channel_layer
        self.max_length = max_length
        self.max_age = max_age
        self.on_join = on_join
        self.rooms = {}  # room -> {"epoch", "last_id", "entries": deque, "refs": {}}
        self.lock = asyncio.Lock()

    def room(self, name):
        return self.rooms.setdefault(
            name,
            {
                "epoch": new_epoch(),
                "last_id": 0,
                "entries": deque(maxlen=self.max_length),
                "refs": {},
            },
        )

    async def publish(self, room, group, message, name, replica, ref=None):
        async with self.lock:  # ids in publish order, as the script gives
            state = self.room(room)
            if ref in state["refs"]:
                return Published(state["refs"][ref], state["epoch"], True)
            state["last_id"] += 1
            message_id, epoch, sent_at = state["last_id"], state["epoch"], time.time()
            frame = f'{{"type":"chat","id":{message_id},"epoch":"{epoch}",'
            frame += frame_tail(message, name, replica)
            state["entries"].append((message_id, frame, sent_at))
            if ref:
                state["refs"][ref] = message_id
            await self.channel_layer.group_send(
                group, chat_event(frame, message_id, epoch, sent_at)
            )
        return Published(message_id, epoch, False)

    async def replay(self, room, group, client_epoch=None, client_last_id=None):
        state = self.room(room)
        entries = list(state["entries"])
        if client_last_id is None:
            entries = entries[-self.on_join :] if self.on_join else []
        elif client_epoch is None or client_epoch == state["epoch"]:
            entries = [entry for entry in entries if entry[0] > client_last_id]
        return plan_replay(
            entries, state["epoch"], state["last_id"], client_epoch, client_last_id, self.max_age
        )

    async def between(self, room, group, after_id, before_id):
        return [
            (entry_id, frame)
            for entry_id, frame, _ in self.room(room)["entries"]
            if after_id < entry_id < before_id
        ]


_history = None


def get_history():
    global _history
    if _history is None:
        layer = get_channel_layer()
        arguments = (
            settings.CHAT_HISTORY_MAX_LENGTH,
            settings.CHAT_HISTORY_MAX_AGE,
            settings.CHAT_HISTORY_ON_JOIN,
        )
        if settings.CHAT_CHANNEL_LAYER == "memory":
            _history = MemoryHistory(layer, *arguments)
        else:
            _history = RedisHistory(layer, settings.REDIS_URLS, *arguments)
    return _history
