"""The floor server speaks the chat's protocol to both kinds of client: those that offer
the subprotocol, and the tutorial's own, which offer none."""

import asyncio
import json

from websockets.asyncio.client import connect

from chat.protocol import SUBPROTOCOL
from harness.floor import FloorServer


async def test_client_without_subprotocol_is_accepted_and_hears_the_room():
    """Tests that a client offering no subprotocol joins, gets no welcome, and receives
    the room's messages, its own included, like a chat.v1 client."""
    with FloorServer() as floor:
        url = floor.ws_url("lobby")
        async with (
            connect(url) as tutorial,
            connect(url, subprotocols=[SUBPROTOCOL]) as versioned,
        ):
            assert tutorial.subprotocol is None
            assert versioned.subprotocol == SUBPROTOCOL
            welcome = json.loads(await asyncio.wait_for(versioned.recv(), 5))
            assert welcome["type"] == "welcome"

            await tutorial.send(json.dumps({"message": "hello"}))
            for client in (tutorial, versioned):
                frame = json.loads(await asyncio.wait_for(client.recv(), 5))
                assert (frame["type"], frame["message"]) == ("chat", "hello")
