"""The channel layer's fan-out (chat.channel_layer) and the consumer's side of it
(ChatConsumer.deliver_now): who is sent a room's message at once, framed once for
all, and who gets it through the queue, in order."""

import time
from types import SimpleNamespace

import msgpack
import pytest

from chat.channel_layer import BoundedChannelQueue, ChatChannelLayer, FanOutShardConnection
from chat.consumers import ChatConsumer
from chat.room import WRITE_FLOW

GROUP_CHANNEL = "asgi__group__room.lobby"
EPOCH = "e1"


class WriteFlow:
    """What chatsite.serve's protocol offers the consumer, as far as fan-out uses it."""

    def __init__(self):
        self.sent = []
        self.full = False
        self.open = True

    def ready_to_write(self):
        return self.open and not self.full

    def writable(self):
        return None

    def send_shared(self, text, shared):
        if not self.open:
            return False
        self.sent.append(shared.setdefault("framed", [text.encode()]))  # framed once
        return True


def member(last_id=0):
    consumer = ChatConsumer()
    consumer.scope = {"extensions": {WRITE_FLOW: WriteFlow()}}
    consumer.inbox = BoundedChannelQueue(1 << 20, b"overflow")
    consumer.cursor.epoch, consumer.cursor.last_id = EPOCH, last_id
    consumer.live = True
    return consumer


def chat_event(message_id, epoch=EPOCH):
    frame = f'{{"type": "chat", "id": {message_id}}}'
    return {"type": "chat.message", "id": message_id, "epoch": epoch, "frame": frame,
            "sent_at": time.time()}  # fmt: skip


def sent(consumer):
    return consumer.write_flow.sent


def test_the_next_message_is_sent_at_once():
    consumer = member(last_id=4)
    assert consumer.deliver_now(chat_event(5), {})
    assert sent(consumer) == [[b'{"type": "chat", "id": 5}']]
    assert consumer.cursor.last_id == 5


def test_every_member_is_sent_the_same_framing():
    first, second, shared = member(), member(), {}
    assert first.deliver_now(chat_event(1), shared)
    assert second.deliver_now(chat_event(1), shared)
    assert sent(first)[0] is sent(second)[0]


def test_a_message_already_sent_is_skipped():
    consumer = member(last_id=5)
    assert consumer.deliver_now(chat_event(5), {})
    assert sent(consumer) == []


def test_a_gap_is_left_to_the_queue_which_fills_it_from_the_history():
    consumer = member(last_id=1)
    assert not consumer.deliver_now(chat_event(3), {})
    assert not consumer.deliver_now(chat_event(3, epoch="e2"), {})  # a new epoch: from 0
    assert sent(consumer) == []


def joining(consumer):
    consumer.live = False


def queued(consumer):
    consumer.inbox.put_nowait(b"an earlier message")


async def delivering(consumer):
    await consumer.delivery_lock.acquire()


def publishing(consumer):
    consumer.publishing = True


def full(consumer):
    consumer.write_flow.full = True


def closed(consumer):
    consumer.write_flow.open = False


@pytest.mark.parametrize(
    "state", [joining, queued, delivering, publishing, full, closed], ids=lambda s: s.__name__
)
async def test_a_member_with_something_on_its_way_gets_it_through_the_queue(state):
    """Tests that nothing is sent past what a connection still has to be sent (its
    replay, a queued or dispatched message, a catch-up), before its own ack, or to a
    socket that cannot take it."""
    consumer = member()
    result = state(consumer)
    if result is not None:
        await result
    assert not consumer.deliver_now(chat_event(1), {})
    assert sent(consumer) == []
    assert consumer.cursor.last_id == 0


def test_other_events_go_through_the_queue():
    consumer = member()
    assert not consumer.deliver_now({"type": "presence.update", "frame": "{}"}, {})


class Handling(ChatConsumer):
    async def test_event(self, event):
        pass

    async def websocket_test(self, event):
        pass


async def test_the_queue_counts_a_message_until_its_dispatch_ends():
    consumer = Handling()
    consumer.inbox = BoundedChannelQueue(1 << 20, b"overflow")
    consumer.inbox.put_nowait(b"message")
    await consumer.inbox.get()
    assert consumer.inbox.unhandled == 1  # taken out, not yet dispatched
    await consumer.dispatch({"type": "websocket.test"})  # from the socket, not the queue
    assert consumer.inbox.unhandled == 1
    await consumer.dispatch({"type": "test.event"})
    assert consumer.inbox.unhandled == 0


def test_messages_dropped_past_the_bound_are_not_counted():
    inbox = BoundedChannelQueue(10, b"overflow")
    for _ in range(5):
        inbox.put_nowait(b"12345678")
    assert inbox.qsize() == inbox.unhandled == 2  # one message and the overflow notice


class Member:
    def __init__(self, takes):
        self.takes = takes
        self.offered = []

    def deliver_now(self, event, shared):
        self.offered.append((event, shared))
        return self.takes


def test_the_layer_decodes_once_and_queues_only_what_members_do_not_take():
    taking, refusing = Member(takes=True), Member(takes=False)
    queues = {name: BoundedChannelQueue(1 << 20, b"overflow") for name in "abc"}
    loop_layer = SimpleNamespace(
        channel_layer=ChatChannelLayer(hosts=["redis://127.0.0.1:1/0"]),
        channels=queues,
        groups={GROUP_CHANNEL: {"a", "b", "c"}},
        attached={GROUP_CHANNEL: {"a": taking, "b": refusing}},  # c: not attached
    )
    shard = FanOutShardConnection("redis://127.0.0.1:1/0", loop_layer)
    data = msgpack.packb(chat_event(1))
    shard._receive_message({"channel": GROUP_CHANNEL.encode(), "data": data})
    assert [queues[name].qsize() for name in "abc"] == [0, 1, 1]
    assert queues["b"].get_nowait() == data
    assert taking.offered[0][0] is refusing.offered[0][0]  # one decode
    assert taking.offered[0][0]["id"] == 1
