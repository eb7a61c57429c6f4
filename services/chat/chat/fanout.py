"""The replica's fan-out: who on this replica is sent a room's message, how, and when.

The channel layer hands every message it receives to FanOut (its MessageHandler), with
the inboxes of the recipients on this replica. FanOut decodes a room's message once,
and for each member it subscribed (each ChatConsumer in the room) decides: sent at
once from here, framed once for the whole room (WriteFlow.send_shared), or put in the
member's inbox, which its consumer handles in order (ChatConsumer.chat_message).

The rules that keep each connection's order are FanOut.takes_now(), and nowhere else.
A member takes a message at once only when
  - it is live: its join's replay has been sent;
  - it is not publishing: its own message's ack goes out before anyone's echo of it;
  - nothing of its inbox is waiting or being handled: nothing is sent past it;
  - it is not sending already (a queued message, a gap being filled, a catch-up):
    one send at a time;
  - its socket can take the frame now: a full socket takes the queue path, where its
    consumer waits for the socket to drain.
Whatever the path, the member's Cursor decides send, skip or fill the gap
(chat.recovery), and Subscription counts what was delivered.

The model is centrifuge's Hub (hub.go): the broker only hands a publication to the
node; the hub owns the subscriptions, encodes once and writes to each client
(docs/decisions/0036-fan-out-owner.md, 0022-fan-out-bypass.md).
"""

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from . import events, metrics
from .channel_layer import Event, Inbox
from .recovery import SKIP, Action, Cursor, Decision
from .write_flow import SharedFrame, WriteFlow

logger = logging.getLogger(__name__)

CHAT_MESSAGE = events.CHAT_MESSAGE


@dataclass(eq=False)
class Subscription:
    """One connection's place in its room on this replica: what the fan-out knows of it.
    Only FanOut changes `live`, `publishing` and `queued`."""

    channel_name: str
    group_channel: str | None  # its room's pub/sub channel (None: the layer has none)
    writer: WriteFlow | None  # None: every live message takes the queue path
    cursor: Cursor = field(default_factory=Cursor)
    live: bool = False  # its replay has been sent: live messages may follow
    publishing: bool = False  # its client's own message is on its way to Redis
    queued: int = 0  # in its inbox, or taken out and not yet handled
    sending: asyncio.Lock = field(default_factory=asyncio.Lock)  # one send at a time

    def decide(self, event: Event) -> Decision:
        """The cursor's decision on a live chat message; a skip is counted."""
        decision = self.cursor.decide(event["id"], event["epoch"])
        if decision is SKIP:
            metrics.duplicates_skipped.inc()
        return decision

    def delivered(self, event: Event) -> None:
        """A live chat message was sent to the socket."""
        self.cursor.sent(event["id"])
        metrics.count_delivery(event["sent_at"])

    def replayed(self, message_id: int) -> None:
        """A message of the history was sent to the socket."""
        self.cursor.sent(message_id)
        metrics.messages_replayed.inc()


@dataclass(slots=True)
class Publication:
    """A message of a room, decoded once for every member on this replica."""

    event: Event
    frame: SharedFrame | None  # a chat message's frame, framed once for all


class FanOut:
    """The fan-out of one replica (built once, chat.replica.Replica)."""

    def __init__(
        self, decode: Callable[[bytes], Event], max_event_bytes: int, drops: events.Drops
    ) -> None:
        self.decode = decode
        self.max_event_bytes = max_event_bytes
        self.drops = drops
        self.subscriptions: dict[str, Subscription] = {}  # channel name -> its subscription
        self.rooms: Counter[str] = Counter()  # group channel -> its subscriptions here

    def subscribe(
        self, channel_name: str, group_channel: str | None, writer: WriteFlow | None
    ) -> Subscription:
        """From now on the messages for channel_name and its room go through the rules;
        subscribed before its group_add, so that none comes past them."""
        subscription = Subscription(channel_name, group_channel, writer)
        self.subscriptions[channel_name] = subscription
        if group_channel is not None:
            self.rooms[group_channel] += 1
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        subscription.live = False
        if self.subscriptions.get(subscription.channel_name) is not subscription:
            return
        del self.subscriptions[subscription.channel_name]
        group_channel = subscription.group_channel
        if group_channel is not None:
            self.rooms[group_channel] -= 1
            if self.rooms[group_channel] <= 0:
                del self.rooms[group_channel]

    # The member's side.

    def go_live(self, subscription: Subscription) -> None:
        """Its replay is sent: live messages may now be sent at once."""
        subscription.live = True

    @contextmanager
    def publishing(self, subscription: Subscription | None) -> Iterator[None]:
        """While a member's own message is published and acknowledged, the room's
        messages wait in its inbox: its ack goes out before the echo."""
        if subscription is None:
            yield
            return
        subscription.publishing = True
        try:
            yield
        finally:
            subscription.publishing = False

    def handled(self, subscription: Subscription | None) -> None:
        """The member's consumer has handled a message of its inbox."""
        if subscription is not None and subscription.queued:
            subscription.queued -= 1

    # The rules.

    @staticmethod
    def takes_now(subscription: Subscription) -> bool:
        """Whether a member may be sent a room's message at once, here (module doc)."""
        writer = subscription.writer
        return (
            subscription.live
            and not subscription.publishing
            and not subscription.queued
            and not subscription.sending.locked()
            and writer is not None
            and writer.ready_to_write()
        )

    def offer(self, subscription: Subscription, publication: Publication) -> bool:
        """Delivers a publication at once if the rules allow: True if it was sent or
        skipped, False if it must take the queue path."""
        event = publication.event
        if event.get("type") != CHAT_MESSAGE or not self.takes_now(subscription):
            return False
        decision = subscription.decide(event)
        if decision.action is Action.FILL_GAP:
            return False
        if decision.action is Action.SEND:
            writer, frame = subscription.writer, publication.frame
            if writer is None or frame is None or not writer.send_shared(frame):
                return False
            subscription.delivered(event)
        return True

    # What the channel layer hands over (chat.channel_layer.MessageHandler).

    def handle_channel_message(self, channel_name: str, data: bytes, inbox: Inbox) -> None:
        self.enqueue(inbox, data, self.subscriptions.get(channel_name))

    def handle_group_message(
        self,
        group_channel: str,
        data: bytes,
        members: Collection[str],
        inboxes: Mapping[str, Inbox],
    ) -> None:
        publication = None
        if group_channel in self.rooms:
            publication = self.publication(group_channel, data)
            if publication is None:
                return  # dropped for every member here (chat.events)
        for channel_name in members:
            inbox = inboxes.get(channel_name)
            if inbox is None:
                continue
            subscription = self.subscriptions.get(channel_name)
            if (
                subscription is not None
                and publication is not None
                and self.offer_safely(subscription, publication)
            ):
                continue
            self.enqueue(inbox, data, subscription)

    def publication(self, group_channel: str, data: bytes) -> Publication | None:
        """The message decoded once for the room, or None if it is no event a member
        may be handed: then it is dropped, counted and logged (chat.events)."""
        reason = events.OVERSIZED if len(data) > self.max_event_bytes else None
        event: Event = {}
        if reason is None:
            try:
                event = self.decode(data)
            except Exception:  # noqa: BLE001 - whatever the decoder raises, it is dropped
                reason = events.UNDECODABLE
        reason = reason or events.problem(event, self.max_event_bytes, on_group=True)
        if reason is not None:
            self.drops.drop(reason, group_channel, event)
            return None
        frame = event.get("frame") if event.get("type") == CHAT_MESSAGE else None
        return Publication(event, SharedFrame(frame) if isinstance(frame, str) else None)

    def offer_safely(self, subscription: Subscription, publication: Publication) -> bool:
        # Raised here, it would stop channels_redis' receive loop for a second.
        try:
            return self.offer(subscription, publication)
        except Exception:
            logger.exception("fan-out to %s failed; queued instead", subscription.channel_name)
            return False

    @staticmethod
    def enqueue(inbox: Inbox, data: bytes, subscription: Subscription | None) -> None:
        if inbox.enqueue(data) and subscription is not None:
            subscription.queued += 1
