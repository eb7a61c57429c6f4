"""How a chat consumer writes to its socket: the contract between the server
(chatsite.serve, which implements it) and the fan-out and consumers (which use it).

The server puts its WebSocket protocol in the scope's extensions under WRITE_FLOW. A
consumer without it (Channels' test communicator, another server) sends through
Channels as usual, and every live message takes the queue path.
"""

import asyncio
from collections.abc import Mapping
from typing import Any, Protocol

WRITE_FLOW = "chat.write_flow"


class SharedFrame:
    """A text frame on its way to many connections: encoded and framed once for all of
    them. The fan-out makes one per message; the server fills `prepared`, one framing
    per protocol factory."""

    __slots__ = ("text", "prepared")

    def __init__(self, text: str) -> None:
        self.text = text
        self.prepared: dict[object, Any] = {}


class WriteFlow(Protocol):
    """A WebSocket's write side, as the server offers it to the chat consumer."""

    def writable(self) -> asyncio.Future[bool] | None:
        """None if a frame can be written now; else a future: True once the write
        buffer has drained, False if the connection closes first."""

    def ready_to_write(self) -> bool:
        """Whether a frame can be written now, without waiting: open and not full."""

    def send_shared(self, frame: SharedFrame) -> bool:
        """Sends a frame framed once for every connection; False if not open."""

    def close_slow_consumer(self, reason: str) -> None:
        """Closes with 4008 (slow consumer) and counts why, once."""


def write_flow_of(scope: Mapping[str, Any]) -> WriteFlow | None:
    """The scope's write flow, or None where the server offers none."""
    extensions = scope.get("extensions") or {}
    flow: WriteFlow | None = extensions.get(WRITE_FLOW)
    return flow
