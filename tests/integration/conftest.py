"""One fixture starts a real local cluster (Redis, Daphne replicas, nginx) on free
ports in a temporary run directory, and stops it by its supervisor's PID."""

import asyncio
import json

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.cluster import LocalCluster


def start_cluster(tmp_path_factory, name, replicas, **settings):
    cluster = LocalCluster(tmp_path_factory.mktemp(name), replicas, settings)
    cluster.up()
    return cluster


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """The product: 3 async replicas on the pub/sub layer behind nginx."""
    cluster = start_cluster(tmp_path_factory, "cluster", replicas=3)
    yield cluster
    leftovers = cluster.down()
    assert not leftovers, f"processes left running after down: {leftovers}"


# --- WebSocket clients ----------------------------------------------------------


class ChatClient:
    """An independent WebSocket client of the chat protocol."""

    def __init__(self, socket, welcome):
        self.socket = socket
        self.welcome = welcome
        self.members = None
        self.replayed = []  # chat frames replayed on joining (async consumer)
        self.history = None  # the "history" frame that ended them

    @property
    def replica(self):
        return self.welcome["replica"]

    async def say(self, message):
        await self.socket.send(json.dumps({"message": message}))

    async def receive(self, timeout=5):
        """The next frame, presence updates aside (they follow every join and leave)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            frame = json.loads(await asyncio.wait_for(self.socket.recv(), max(remaining, 0)))
            if frame["type"] != "presence":
                return frame
            self.members = frame["members"]

    async def receive_chat(self, timeout=5):
        frame = await self.receive(timeout)
        assert frame["type"] == "chat", frame
        return frame

    async def assert_silent(self, timeout=0.5):
        try:
            frame = await self.receive(timeout)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected frame: {frame}")

    async def close(self):
        await self.socket.close()


async def join(cluster, room="lobby", replica=None, query="", **options):
    """Connects through nginx, or straight to replica number `replica`; `query` is
    the URL's query string, such as "?last_id=3&epoch=ab"."""
    socket = await connect(
        cluster.ws_url(room, replica) + query,
        origin=cluster.origin,
        subprotocols=["chat.v1"],
        open_timeout=30,
        **options,
    )
    welcome = json.loads(await asyncio.wait_for(socket.recv(), 5))
    assert welcome["type"] == "welcome", welcome
    client = ChatClient(socket, welcome)
    if welcome["consumer"] == "async":
        # The room's newest messages come first, ended by a "history" frame.
        while (frame := await client.receive())["type"] != "history":
            client.replayed.append(frame)
        client.history = frame
    return client


async def read_until_closed(client, timeout=15):
    """Reads and drops frames until the server closes the socket."""
    try:
        while True:
            await asyncio.wait_for(client.socket.recv(), timeout)
    except ConnectionClosed:
        return
