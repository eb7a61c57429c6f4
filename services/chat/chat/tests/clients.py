"""What the unit tests share: a fresh replica, and clients of the whole ASGI
application or of a consumer alone (Channels' communicators)."""

import json
from typing import Any

from channels.layers import get_channel_layer
from channels.routing import URLRouter
from channels.testing import HttpCommunicator, WebsocketCommunicator
from django.apps import apps
from django.urls import re_path

from chat.consumers import ChatConsumer
from chat.replica import Replica
from chat.routing import ROOM_PATH
from chatsite.asgi import application

ASYNC = URLRouter([re_path(ROOM_PATH, ChatConsumer.as_asgi())])
CONTROL_FRAMES = {"presence", "presence_diff", "history"}


def fresh_replica() -> Replica:
    """A new replica, built from the settings as they are now: empty rooms, no
    history, presence or connections."""
    replica = Replica.from_settings(get_channel_layer())
    apps.get_app_config("chat").replica = replica
    return replica


async def http_get(path: str, host: bytes = b"10.1.2.3:8001") -> tuple[int, dict, str]:
    """A request through the whole ASGI application, with a Host Django does not allow."""
    communicator = HttpCommunicator(application, "GET", path, headers=[(b"host", host)])
    response = await communicator.get_response()
    return response["status"], dict(response["headers"]), response["body"].decode()


async def join(
    application: Any = ASYNC,
    room: str = "lobby",
    subprotocols: tuple[str, ...] = ("chat.v1",),
    query: str = "",
) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(
        application, f"/ws/chat/{room}/{query}", subprotocols=list(subprotocols)
    )
    connected, subprotocol = await communicator.connect()
    assert connected
    if subprotocols:
        assert subprotocol == "chat.v1"
        assert (await communicator.receive_json_from())["type"] == "welcome"
    return communicator


async def receive(communicator: WebsocketCommunicator) -> dict:
    """The next frame that is not a presence update or the end of a replay."""
    while True:
        frame = await communicator.receive_json_from()
        if frame["type"] not in CONTROL_FRAMES:
            return frame


async def quiet(communicator: WebsocketCommunicator, timeout: float = 0.2) -> bool:
    """True if nothing but presence updates arrives within `timeout`."""
    while not await communicator.receive_nothing(timeout=timeout):
        if (await communicator.receive_json_from())["type"] not in CONTROL_FRAMES:
            return False
    return True


async def replayed(communicator: WebsocketCommunicator) -> tuple[list[dict], dict]:
    """The chat frames replayed on joining, and the history frame that ends them."""
    frames = []
    while (frame := await communicator.receive_json_from())["type"] != "history":
        assert frame["type"] == "chat", frame
        frames.append(frame)
    return frames, frame


async def say_all(communicator: WebsocketCommunicator, messages: list[str]) -> None:
    for message in messages:
        await communicator.send_json_to({"message": message})
        await receive(communicator)


def frame_json(output: dict) -> dict:
    return json.loads(output["text"])
