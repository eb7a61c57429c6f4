"""A service publishing through the HTTP API during a fault drill: posts to the drill's
rooms on the replicas' own ports, in turn, each with its own idempotency key, as a
careful caller does. A post that is not answered 2xx (a killed replica's refused
connection, 503 during a failover, a timeout) is sent again, with the same key, to the
next replica, until it is answered or its time is up. Some acknowledged posts are sent
again on purpose: they must be answered with the same id, as duplicates.

Each post is a harness.ledger.Message in the drill's ledger, its text its ref, so that
the drill's figures count it like a client's message: lost if a member of its room
never received its (epoch, id), duplicated if one received it twice, republished if it
reached the room under two ids."""

import asyncio
import itertools
from collections import Counter
from dataclasses import dataclass

from ..ledger import Message
from ..publishing import api_post, room_messages_path

RETRY_PAUSE_S = 0.2
POST_TIMEOUT_S = 5


@dataclass
class RoomPoster:
    """The publisher as the ledger's Message.client: the room it posts to, and the
    replica that acknowledged its latest post."""

    room: str
    name: str = "api"
    replica: str | None = None


class ApiPublisher:
    def __init__(self, cluster, traffic, rate, retry_for_s=30.0, repost_every=4):
        self.cluster = cluster
        self.traffic = traffic
        self.rate = rate  # posts per second, over all rooms
        self.retry_for_s = retry_for_s
        self.repost_every = repost_every
        self.key = cluster.api_key()
        self.posters = [RoomPoster(room) for room in traffic.rooms]
        self.replicas = itertools.cycle(range(1, cluster.replicas + 1))
        self.statuses = Counter()  # every answer's status; "no answer" for none
        self.reposts = 0
        self.repost_mismatches = []
        self.posts = []  # the tasks of every post
        self.task = None

    def start(self, until):
        """Posts at `rate` until `until` (loop time)."""
        self.task = asyncio.get_running_loop().create_task(self.run(until))

    async def run(self, until):
        loop = asyncio.get_running_loop()
        interval = 1 / self.rate
        for number in itertools.count():
            if loop.time() >= until:
                return
            poster = self.posters[number % len(self.posters)]
            text = f"{self.traffic.prefix}-api-{number}"
            message = Message(text, poster, loop.time())
            self.traffic.messages[text] = message
            self.posts.append(
                loop.create_task(self.post(message, repost=number % self.repost_every == 0))
            )
            await asyncio.sleep(interval)

    def stop(self):
        """No new posts from now on."""
        if self.task is not None:
            self.task.cancel()

    async def settle(self):
        """Waits for the posts in flight, each bounded by its retry time."""
        await asyncio.gather(*self.posts, return_exceptions=True)

    async def post(self, message, repost):
        answer = await self.send(message)
        if answer is None:
            message.outcome, message.refusal = "refused", "no_2xx_in_time"
            return
        loop = asyncio.get_running_loop()
        message.outcome, message.answered_at = "acked", loop.time()
        message.key = (answer["epoch"], answer["id"])
        message.duplicate_ack = answer["duplicate"]
        if repost:
            self.reposts += 1
            again = await self.send(message)
            if again is None or (again["epoch"], again["id"], again["duplicate"]) != (
                *message.key,
                True,
            ):
                mismatch = {"text": message.ref, "first": message.key, "again": again}
                self.repost_mismatches.append(mismatch)

    async def send(self, message):
        """The 2xx answer to the message's post, retried with its key; None if none came
        within retry_for_s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry_for_s
        body = {"text": message.ref, "sender": "drill-api", "key": message.ref[-64:]}
        path = room_messages_path(message.client.room)
        while loop.time() < deadline:
            replica = next(self.replicas)
            message.attempts += 1
            message.last_sent = loop.time()
            try:
                status, _, answer = await asyncio.to_thread(
                    api_post,
                    self.cluster,
                    path,
                    body,
                    replica=replica,
                    key=self.key,
                    timeout=POST_TIMEOUT_S,
                )
            except OSError:  # refused, reset or timed out: a killed or restarting replica
                self.statuses["no answer"] += 1
                status, answer = None, None
            else:
                self.statuses[str(status)] += 1
            if status == 200:
                message.client.replica = f"chat-{replica}"
                return answer
            if isinstance(answer, dict) and "error" in answer:
                message.retries[answer["error"]["code"]] += 1
            await asyncio.sleep(RETRY_PAUSE_S)
        return None

    def figures(self):
        messages = [m for m in self.traffic.messages.values() if isinstance(m.client, RoomPoster)]
        outcomes = Counter(message.outcome for message in messages)
        return {
            "posts": len(messages),
            "acked": outcomes["acked"],
            "refused": outcomes["refused"],
            "unanswered": outcomes[None],
            "attempts": sum(message.attempts for message in messages),
            "acked_as_duplicate_on_first_answer": sum(m.duplicate_ack for m in messages),
            "statuses": dict(sorted(self.statuses.items())),
            "retried_by_code": dict(sum((m.retries for m in messages), Counter())),
            "reposted_keys": self.reposts,
            "repost_mismatches": self.repost_mismatches[:10],
        }
