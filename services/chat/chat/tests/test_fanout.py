"""The replica's fan-out (chat.fanout.FanOut): which members are sent a room's message
at once, framed once for all, and which get it through their inbox, in order."""

import time

import msgpack
import pytest

from chat import events, metrics
from chat.channel_layer import BoundedChannelQueue
from chat.fanout import FanOut, Subscription
from chat.write_flow import SharedFrame

GROUP_CHANNEL = "asgi__group__chat_lobby"
EPOCH = "e1"
MAX_EVENT_BYTES = 4096


class Socket:
    """What chatsite.serve's protocol offers as the write flow, as far as fan-out uses it."""

    def __init__(self):
        self.sent = []
        self.full = False
        self.open = True

    def ready_to_write(self):
        return self.open and not self.full

    def writable(self):
        return None

    def send_shared(self, frame):
        if not self.open:
            return False
        framed = frame.prepared.setdefault("factory", frame.text.encode())  # framed once
        self.sent.append(framed)
        return True

    def close_slow_consumer(self, reason):
        self.open = False


def chat_event(message_id, epoch=EPOCH):
    frame = f'{{"type": "chat", "id": {message_id}}}'
    return {"type": "chat.message", "id": message_id, "epoch": epoch, "frame": frame,
            "sent_at": time.time()}  # fmt: skip


def encoded(event):
    return msgpack.packb(event)


@pytest.fixture
def fan_out():
    return FanOut(msgpack.unpackb, MAX_EVENT_BYTES, events.Drops())


def member(fan_out, name="a", last_id=0):
    """A live member of the room, its cursor at last_id: (subscription, socket, inbox)."""
    socket = Socket()
    subscription = fan_out.subscribe(name, GROUP_CHANNEL, socket)
    subscription.cursor.epoch, subscription.cursor.last_id = EPOCH, last_id
    fan_out.go_live(subscription)
    return subscription, socket, BoundedChannelQueue(1 << 20, b"overflow")


def publish(fan_out, event, *members):
    """Hands an event to the fan-out as the channel layer does, for these members."""
    inboxes = {subscription.channel_name: inbox for subscription, _, inbox in members}
    fan_out.handle_group_message(GROUP_CHANNEL, encoded(event), list(inboxes), inboxes)


def test_the_next_message_is_sent_at_once(fan_out):
    subscription, socket, inbox = ours = member(fan_out, last_id=4)
    publish(fan_out, chat_event(5), ours)
    assert socket.sent == [b'{"type": "chat", "id": 5}']
    assert subscription.cursor.last_id == 5
    assert inbox.qsize() == 0


def test_every_member_is_sent_the_same_framing(fan_out):
    first, second = member(fan_out, "a"), member(fan_out, "b")
    publish(fan_out, chat_event(1), first, second)
    assert first[1].sent[0] is second[1].sent[0]


def test_a_message_already_sent_is_skipped(fan_out):
    subscription, socket, inbox = ours = member(fan_out, last_id=5)
    publish(fan_out, chat_event(5), ours)
    assert socket.sent == []
    assert inbox.qsize() == 0


def test_a_gap_is_left_to_the_queue_which_fills_it_from_the_history(fan_out):
    subscription, socket, inbox = ours = member(fan_out, last_id=1)
    publish(fan_out, chat_event(3), ours)
    assert socket.sent == []
    assert inbox.qsize() == 1


def test_a_new_epoch_starts_from_its_first_message(fan_out):
    subscription, socket, _ = ours = member(fan_out, last_id=9)
    publish(fan_out, chat_event(1, epoch="e2"), ours)
    assert (subscription.cursor.epoch, subscription.cursor.last_id) == ("e2", 1)
    assert len(socket.sent) == 1


# The rules: each state below holds a message back to the queue path.


def joining(fan_out, subscription, socket, inbox):
    subscription.live = False  # its replay is still being sent


HELD = []  # contexts entered by a state, kept open for the test


def publishing(fan_out, subscription, socket, inbox):
    """Its own message is on its way: its ack goes out before the echo."""
    context = fan_out.publishing(subscription)
    context.__enter__()
    HELD.append(context)


def queued(fan_out, subscription, socket, inbox):
    """An earlier message waits in its inbox: nothing is sent past it."""
    fan_out.handle_channel_message(subscription.channel_name, b"earlier", inbox)


async def sending(fan_out, subscription, socket, inbox):
    """A queued message, a gap or a catch-up is being sent: one send at a time."""
    await subscription.sending.acquire()


def full(fan_out, subscription, socket, inbox):
    """Its socket's write buffer is full: the consumer waits for it on the queue path."""
    socket.full = True


def closed(fan_out, subscription, socket, inbox):
    socket.open = False


def no_write_flow(fan_out, subscription, socket, inbox):
    subscription.writer = None


@pytest.mark.parametrize(
    "state",
    [joining, publishing, queued, sending, full, closed, no_write_flow],
    ids=lambda state: state.__name__,
)
async def test_a_member_with_something_on_its_way_gets_it_through_the_queue(fan_out, state):
    """Tests each rule of FanOut.takes_now(): in each state a live message goes to the
    member's inbox, counted, and its cursor does not move."""
    subscription, socket, inbox = ours = member(fan_out)
    result = state(fan_out, subscription, socket, inbox)
    if result is not None:
        await result
    before = inbox.qsize()
    publish(fan_out, chat_event(1), ours)
    assert socket.sent == []
    assert subscription.cursor.last_id == 0
    assert inbox.qsize() == before + 1
    assert subscription.queued == inbox.qsize()


def test_a_member_ready_again_takes_messages_at_once_again(fan_out):
    """Tests that each hold ends: its ack sent, its queue handled, it is at once again."""
    subscription, socket, inbox = ours = member(fan_out)
    with fan_out.publishing(subscription):
        publish(fan_out, chat_event(1), ours)
    assert subscription.queued == 1
    inbox.get_nowait()
    fan_out.handled(subscription)  # its consumer sent it
    subscription.cursor.sent(1)
    publish(fan_out, chat_event(2), ours)
    assert socket.sent == [b'{"type": "chat", "id": 2}']


def test_the_queue_counts_a_message_until_it_is_handled(fan_out):
    """Tests that a message taken out of the inbox but not yet handled still holds the
    member back: the count goes down when its consumer has handled it, not before."""
    subscription, socket, inbox = ours = member(fan_out)
    fan_out.handle_channel_message("a", b"catch up", inbox)
    inbox.get_nowait()
    publish(fan_out, chat_event(1), ours)
    assert socket.sent == []
    fan_out.handled(subscription)
    fan_out.handled(subscription)
    assert subscription.queued == 0
    fan_out.handled(subscription)  # the handled count never goes below zero
    assert subscription.queued == 0


def test_messages_dropped_past_the_bound_are_not_counted(fan_out):
    subscription, _, _ = member(fan_out)
    inbox = BoundedChannelQueue(10, b"overflow")
    for _ in range(5):
        fan_out.handle_channel_message("a", b"12345678", inbox)
    assert inbox.qsize() == subscription.queued == 2  # one message and the overflow notice


def test_other_events_go_through_the_queue(fan_out):
    subscription, socket, inbox = ours = member(fan_out)
    publish(fan_out, {"type": "presence.update", "frame": "{}"}, ours)
    assert socket.sent == []
    assert inbox.qsize() == 1


def test_the_fan_out_decodes_once_and_queues_only_what_members_do_not_take():
    decoded = []

    def decode(data):
        decoded.append(data)
        return msgpack.unpackb(data)

    fan_out = FanOut(decode, MAX_EVENT_BYTES, events.Drops())
    taking, refusing = member(fan_out, "a"), member(fan_out, "b")
    refusing[1].full = True
    unsubscribed = BoundedChannelQueue(1 << 20, b"overflow")  # e.g. a sync consumer
    inboxes = {"a": taking[2], "b": refusing[2], "c": unsubscribed}
    data = encoded(chat_event(1))
    fan_out.handle_group_message(GROUP_CHANNEL, data, ["a", "b", "c"], inboxes)
    assert decoded == [data]
    assert [inbox.qsize() for inbox in inboxes.values()] == [0, 1, 1]
    assert refusing[2].get_nowait() == data


def test_a_room_without_subscriptions_here_is_not_decoded():
    fan_out = FanOut(lambda data: pytest.fail("decoded"), MAX_EVENT_BYTES, events.Drops())
    inbox = BoundedChannelQueue(1 << 20, b"overflow")
    fan_out.handle_group_message(GROUP_CHANNEL, b"\x81", ["c"], {"c": inbox})
    assert inbox.qsize() == 1


def dropped(reason):
    return metrics.events_dropped.labels(reason)._value.get()


MALFORMED = {
    events.TUTORIAL_SHAPE: encoded({"type": "chat.message", "message": "from a view"}),
    events.BAD_FIELDS: encoded({**chat_event(1), "id": "1"}),
    events.UNKNOWN_TYPE: encoded({"type": "chat.shout", "text": "hi"}),
    events.OVERSIZED: encoded({**chat_event(1), "frame": "x" * MAX_EVENT_BYTES}),
    events.UNDECODABLE: b"\xc1",
}


@pytest.mark.parametrize("reason", sorted(MALFORMED))
def test_a_malformed_event_is_dropped_for_every_member_and_counted(fan_out, reason):
    members = [member(fan_out, name) for name in ("a", "b")]
    before = dropped(reason)
    inboxes = {subscription.channel_name: inbox for subscription, _, inbox in members}
    fan_out.handle_group_message(GROUP_CHANNEL, MALFORMED[reason], list(inboxes), inboxes)
    assert dropped(reason) == before + 1
    for subscription, socket, inbox in members:
        assert (socket.sent, inbox.qsize(), subscription.queued) == ([], 0, 0)
    publish(fan_out, chat_event(1), *members)  # the room goes on
    assert all(len(socket.sent) == 1 for _, socket, _ in members)


@pytest.mark.parametrize("kind", ["channel.overflow", "history.catch_up"])
def test_a_consumers_own_event_sent_to_the_group_is_dropped(fan_out, kind):
    """Tests that an event the replica sends one consumer cannot be sent to a room: a
    group_send of channel.overflow would close every member."""
    members = [member(fan_out, name) for name in ("a", "b")]
    publish(fan_out, {"type": kind}, *members)
    for subscription, socket, inbox in members:
        assert (socket.sent, inbox.qsize(), subscription.queued) == ([], 0, 0)


def test_a_failing_member_gets_it_through_the_queue_and_the_others_at_once(fan_out):
    broken, working = member(fan_out, "a"), member(fan_out, "b")

    def fails(frame):
        raise RuntimeError("boom")

    broken[1].send_shared = fails
    publish(fan_out, chat_event(1), broken, working)
    assert broken[2].qsize() == 1
    assert len(working[1].sent) == 1


def test_unsubscribing_ends_the_room_here(fan_out):
    subscription, _, _ = member(fan_out)
    fan_out.unsubscribe(subscription)
    fan_out.unsubscribe(subscription)
    assert fan_out.subscriptions == {}
    assert GROUP_CHANNEL not in fan_out.rooms
    assert not subscription.live


def test_a_subscription_counts_what_it_delivers():
    subscription = Subscription("a", GROUP_CHANNEL, None)
    subscription.cursor.epoch = EPOCH
    subscription.delivered(chat_event(3))
    subscription.replayed(4)
    assert subscription.cursor.last_id == 4


def test_a_shared_frame_is_framed_once_per_factory():
    frame = SharedFrame("hello")
    assert frame.prepared == {}
    assert frame.text == "hello"
