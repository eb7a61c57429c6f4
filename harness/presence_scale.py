"""One large room filled through nginx: what each client is sent of presence while
it fills, how long joins take, and whether one message then reaches everyone
(tests/integration/test_presence_scale.py, loadtests/presence_scale.py).

It measures the protocol before presence diffs too (a whole "presence" list after
every join and leave), for the before/after figures: so it names the two presence
frame types itself, and reads the member list from either, rather than taking
chat.protocol's constants, which the older code does not have.
"""

import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field
from urllib.parse import urlencode

from websockets.asyncio.client import connect

PRESENCE_TYPES = ("presence", "presence_diff")  # chat.protocol, before and after diffs
SUBPROTOCOL = "chat.v1"


@dataclass
class Member:
    name: str
    socket: object = None
    joined_in: float = None  # seconds from opening the socket to the presence list
    presence_bytes: int = 0
    presence_frames: int = 0
    members: dict = field(default_factory=dict)  # id (or name, from a server without diffs) -> name
    count: int = 0
    received: set = field(default_factory=set)  # chat messages received
    listed: asyncio.Event = field(default_factory=asyncio.Event)

    def apply(self, frame):
        members = frame.get("members")
        if frame["type"] == "presence" and members and isinstance(members[0], str):
            # A server without diffs: the whole list of names each time.
            self.members = dict(enumerate(members))
            self.count = len(members)
            return
        if frame["type"] == "presence":
            self.members = {member["id"]: member["name"] for member in members}
        else:
            for member in frame["left"]:
                self.members.pop(member, None)
            self.members.update((member["id"], member["name"]) for member in frame["joined"])
        self.count = frame["count"]


async def read(member, started):
    async for text in member.socket:
        frame = json.loads(text)
        kind = frame.get("type")
        if kind in PRESENCE_TYPES:
            member.presence_bytes += len(text.encode())
            member.presence_frames += 1
            member.apply(frame)
            if member.joined_in is None:
                member.joined_in = time.monotonic() - started
                member.listed.set()
        elif kind == "chat":
            member.received.add(frame["message"])


async def open_member(url, origin, member, readers):
    started = time.monotonic()
    member.socket = await connect(
        f"{url}?{urlencode({'name': member.name})}",
        origin=origin,
        subprotocols=[SUBPROTOCOL],
        open_timeout=60,
        max_size=None,
        compression=None,
    )
    readers.append(asyncio.get_running_loop().create_task(read(member, started)))
    await asyncio.wait_for(member.listed.wait(), 60)


async def wait_until(condition, timeout, step=0.2):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(step)
    return True


async def fill_room(url, origin, size, batch=50, settle_timeout=120, message_timeout=60):
    """Opens `size` chat.v1 connections to the room at `url`, `batch` at a time, each
    waiting for its presence list; then waits until every client counts `size`,
    sends one message and waits until everyone has it. Returns the figures."""
    members = [Member(f"m{number:05d}") for number in range(size)]
    readers = []
    started = time.monotonic()
    try:
        for first in range(0, size, batch):
            chunk = members[first : first + batch]
            await asyncio.gather(*(open_member(url, origin, m, readers) for m in chunk))
        fill_seconds = time.monotonic() - started
        settled = await wait_until(
            lambda: all(m.count == size and len(m.members) >= min(size, 100) for m in members),
            settle_timeout,
        )
        settle_seconds = time.monotonic() - started - fill_seconds
        presence = [m.presence_bytes for m in members]  # the filling, before the message
        frames = [m.presence_frames for m in members]
        await members[0].socket.send(json.dumps({"message": "after the fill"}))
        delivered = await wait_until(
            lambda: all("after the fill" in m.received for m in members), message_timeout
        )
        return {
            "clients": size,
            "presence_bytes_mean": round(statistics.mean(presence)),
            "presence_bytes_max": max(presence),
            "presence_frames_mean": round(statistics.mean(frames), 1),
            "join_seconds_max": round(max(m.joined_in for m in members), 3),
            "fill_seconds": round(fill_seconds, 2),
            "settled": settled,
            "settle_seconds": round(settle_seconds, 2),
            "listed_min": min(len(m.members) for m in members),
            "message_reached": sum("after the fill" in m.received for m in members),
            "message_reached_all": delivered,
        }
    finally:
        for task in readers:
            task.cancel()
        await asyncio.gather(
            *(m.socket.close() for m in members if m.socket is not None), return_exceptions=True
        )
