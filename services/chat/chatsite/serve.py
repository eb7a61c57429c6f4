"""Daphne, with a graceful drain on SIGTERM. Takes the same arguments as `daphne`:

    python -m chatsite.serve --bind 0.0.0.0 --port 8001 --proxy-headers chatsite.asgi:application

Daphne stops on SIGTERM at once: every WebSocket is cut (1006) and its consumer
cancelled (daphne#38). Here SIGTERM instead
  1. marks the replica draining: /readyz answers 503 and a handshake that still
     arrives is closed with 1012;
  2. stops listening, so the load balancer sends new connections elsewhere;
  3. closes the open WebSockets with 1012 (service restart), spread evenly over
     CHAT_DRAIN_SECONDS so that their reconnects do not land on the other
     replicas at once; clients resume from their last id (chat.broker);
  4. exits when every consumer has finished (left its group and presence), or
     CHAT_DRAIN_SECONDS + CLEANUP_SECONDS after the signal.
A second SIGTERM or SIGINT stops at once. Kubernetes' terminationGracePeriodSeconds
and supervisord's stopwaitsecs must exceed CHAT_DRAIN_SECONDS + CLEANUP_SECONDS.

Each WebSocket is also bounded in what it holds for a client that does not read:
Daphne writes every frame at once, and Twisted would buffer them without end. The
protocol registers as its socket's producer, so Twisted says when the write buffer
passes its high-water mark (64 KiB) and when it has drained. Past CHAT_MAX_SEND_BUFFER
bytes written while it is full, or CHAT_SEND_TIMEOUT seconds full, the socket is
closed with 4008 (slow consumer); the client resumes from its last id. The protocol
is also the scope's WRITE_FLOW extension: the chat consumer waits for the buffer to
drain before each chat frame, so that a replay goes at the client's pace, and a
slow client's messages wait in its queue from Redis, which is bounded too.
"""

import asyncio
import gc
import inspect
import io
import json
import logging
import os
import signal
import socket
import sys
from types import FrameType
from typing import Any

import uvloop

from chatsite import settings as chat_settings

# Daphne makes the event loop of its Twisted reactor when daphne.server is imported:
# uvloop's, unless CHAT_EVENT_LOOP=asyncio.
EVENT_LOOPS = {"uvloop": uvloop.EventLoopPolicy, "asyncio": asyncio.DefaultEventLoopPolicy}
asyncio.set_event_loop_policy(EVENT_LOOPS[chat_settings.CHAT_EVENT_LOOP]())

from autobahn.twisted.websocket import WebSocketServerFactory  # noqa: E402
from autobahn.websocket.protocol import (  # noqa: E402
    WebSocketProtocol as AutobahnWebSocketProtocol,
)
from daphne.cli import CommandLineInterface  # noqa: E402
from daphne.http_protocol import HTTPFactory, WebRequest  # noqa: E402
from daphne.server import Server  # noqa: E402
from daphne.ws_protocol import WebSocketProtocol  # noqa: E402
from django.conf import settings  # noqa: E402
from twisted.internet import reactor as twisted_reactor  # noqa: E402
from twisted.internet import tcp  # noqa: E402
from twisted.internet.base import DelayedCall  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402
from twisted.web import http  # noqa: E402

from chat import http_api, metrics, protocol  # noqa: E402
from chat.replica import current  # noqa: E402
from chat.write_flow import WRITE_FLOW, SharedFrame, WriteFlow  # noqa: E402

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

logger = logging.getLogger("chatsite.serve")

# Twisted's stubs type the reactor as a module; it provides zope interfaces.
reactor: Any = twisted_reactor

# After the last close: time for consumers to leave their groups and presence.
CLEANUP_SECONDS = 5
POLL_SECONDS = 0.2


class ChatWebSocketProtocol(WebSocketProtocol):
    """Daphne's WebSocket protocol, with its write side (SocketWriteFlow) as the socket's
    producer and the scope's WRITE_FLOW extension."""

    flow: "SocketWriteFlow"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.flow = SocketWriteFlow(self)

    def onOpen(self) -> None:
        super().onOpen()
        # The HTTP channel that took the upgrade request is still the producer, and
        # would stop reading the socket when the buffer fills: this one only counts.
        self.transport.unregisterProducer()
        self.transport.registerProducer(self.flow, True)

    def unregisterProducer(self) -> None:
        # autobahn unregisters before it drops the connection; Twisted then calls no
        # stopProducing: a consumer waiting to write must hear of it now, or it would
        # never handle its disconnect.
        self.flow.release_writers()
        super().unregisterProducer()

    def connectionLost(self, reason: Failure) -> None:
        self.flow.release_writers()
        super().connectionLost(reason)

    def open_now(self) -> bool:
        return bool(self.state == WebSocketProtocol.STATE_OPEN)

    def send_prepared(self, prepared: Any) -> None:
        """A message framed once (autobahn's PreparedMessage) written to this socket."""
        if self._perMessageCompress is None:
            self.write_now(prepared.payloadHybi)
        else:
            self.sendPreparedMessage(prepared)

    def write_now(self, data: bytes) -> None:
        """Writes to the socket at once if Twisted holds nothing for it, as asyncio's
        transports do: Twisted would buffer the frame and register the socket for
        writing (two epoll_ctl calls and a turn of the loop per frame). What the
        socket does not take, and all while Twisted holds something, goes through
        Twisted's buffer, in order."""
        transport = self.transport
        if (
            transport.dataBuffer
            or transport._tempDataBuffer
            or not transport.connected
            or transport.disconnecting
            or transport._writeDisconnected
        ):
            transport.write(data)
            return
        try:
            sent = transport.socket.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            transport.write(data)  # Twisted finds the connection lost
            return
        if sent < len(data):
            transport.write(data[sent:])

    def sendMessage(self, payload: bytes, *args: Any, **kwargs: Any) -> None:
        # Frames the consumer did not hold back (presence, errors, the sync consumer's).
        self.flow.count_while_full(len(payload))
        super().sendMessage(payload, *args, **kwargs)

    def sendPreparedMessage(self, preparedMsg: Any) -> None:
        self.flow.count_while_full(len(preparedMsg.payload))
        if self.state == WebSocketProtocol.STATE_OPEN:  # unlike sendMessage, it does not check
            super().sendPreparedMessage(preparedMsg)

    def serverClose(self, code: int | None = None) -> None:
        if code == protocol.CLOSE_SLOW_CONSUMER:
            # The close frame waits behind what the client has not read: it gets as
            # long to read them as it had for the rest, then the connection is dropped.
            self.closeHandshakeTimeout = settings.CHAT_SEND_TIMEOUT
        # autobahn's sendClose() takes only 1000 and 3000-4999, and raises on the
        # codes RFC 6455's registry gives servers: 1012 (restart) and 1013 (try
        # again later). Its sendCloseFrame() sends any code.
        self.sendCloseFrame(code=1000 if code is None else code, isReply=False)

    def dropConnection(self, abort: bool = False) -> None:
        # After a clean closing handshake autobahn resets the TCP connection (abort).
        # A reset makes the kernel discard what the proxy has not read yet, and nginx
        # then cut some clients off with 1006 instead of passing on the close: end
        # with a FIN instead. A peer that failed (timeouts) is still reset.
        super().dropConnection(abort=abort and not self.wasClean)


class BoundedRequest(WebRequest):
    """Daphne's HTTP request, its body bounded by CHAT_API_MAX_BODY_BYTES: Twisted keeps
    a whole body (in a temporary file past 100 kB), and Daphne queues all of it for the
    application before it reads any. A body declared or found larger is answered 413 at
    once, the connection closed, and nothing more of it kept. The service takes no
    larger bodies: its pages are GETs, the HTTP API's bodies are this small."""

    too_large = False
    body_bytes = 0

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > settings.CHAT_API_MAX_BODY_BYTES:
            self.content = io.BytesIO()
            self.refuse_body()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.too_large:
            return
        self.body_bytes += len(data)
        if self.body_bytes > settings.CHAT_API_MAX_BODY_BYTES:
            self.refuse_body()
            return
        super().handleContentChunk(data)

    def process(self) -> Any:
        if not self.too_large:
            return super().process()
        return None

    def refuse_body(self) -> None:
        """413, written straight to the socket before the body is read, then closed."""
        self.too_large = True
        limit = settings.CHAT_API_MAX_BODY_BYTES
        error = {"code": "body_too_large", "detail": f"The body is larger than {limit} bytes."}
        body = json.dumps({"error": error}).encode()
        head = (
            "HTTP/1.1 413 Request Entity Too Large\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"X-Chat-Replica: {current().name}\r\n"
            "Connection: close\r\n\r\n"
        )
        if self.uri.startswith(http_api.PREFIX.encode()):
            metrics.api_requests.labels("413").inc()
        self.channel.transport.write(head.encode() + body)
        self.channel.transport.loseConnection()


def bound_request_bodies(factory: HTTPFactory) -> None:
    """Makes the factory's connections use BoundedRequest instead of Daphne's request."""
    build = factory.buildProtocol

    def build_bounded(address: Any) -> Any:
        connection = build(address)
        connection.requestFactory = BoundedRequest
        return connection

    factory.buildProtocol = build_bounded


class SocketWriteFlow:
    """A WebSocket's write side: the socket's producer, which Twisted tells as its write
    buffer fills and drains (IPushProducer), and the write flow the consumer sees
    (chat.write_flow.WriteFlow). An object of its own, typed, so that the type checker
    holds it to WriteFlow (docs/decisions/0038-typed-contracts.md)."""

    __slots__ = ("socket", "full_since", "bytes_while_full", "full_timeout", "drain_waiters")

    def __init__(self, socket: ChatWebSocketProtocol) -> None:
        self.socket = socket
        self.full_since: float | None = None  # reactor time the buffer passed its mark
        self.bytes_while_full = 0
        self.full_timeout: DelayedCall | None = None
        self.drain_waiters: list[asyncio.Future[bool]] = []

    # IPushProducer

    def pauseProducing(self) -> None:
        if self.full_since is not None:
            return  # Twisted calls it again on every write while the buffer is full
        self.full_since = reactor.seconds()
        self.bytes_while_full = 0
        self.full_timeout = reactor.callLater(
            settings.CHAT_SEND_TIMEOUT, self.close_slow_consumer, "timeout"
        )

    def resumeProducing(self) -> None:
        self.full_since = None
        if self.full_timeout is not None and self.full_timeout.active():
            self.full_timeout.cancel()
        self.full_timeout = None
        self.wake_writers(True)

    def stopProducing(self) -> None:
        self.release_writers()

    def release_writers(self) -> None:
        """The connection is going: nothing waits to write to it any more."""
        self.wake_writers(False)
        self.resumeProducing()

    def wake_writers(self, drained: bool) -> None:
        waiters, self.drain_waiters = self.drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(drained)

    # WriteFlow

    def writable(self) -> asyncio.Future[bool] | None:
        if self.full_since is None:
            return None
        waiter = asyncio.get_running_loop().create_future()
        if self.socket.open_now():
            self.drain_waiters.append(waiter)
        else:
            waiter.set_result(False)
        return waiter

    def ready_to_write(self) -> bool:
        return self.full_since is None and self.socket.open_now()

    def send_shared(self, frame: SharedFrame) -> bool:
        """Framed once for all the connections of the socket's factory."""
        socket = self.socket
        if not socket.open_now():
            return False
        factory = socket.factory
        prepared = frame.prepared.get(factory)
        if prepared is None:
            prepared = frame.prepared[factory] = factory.prepareMessage(frame.text.encode())
        socket.send_prepared(prepared)
        return True

    def close_slow_consumer(self, reason: str) -> None:
        """Closes with 4008 and counts why, once: later reasons find it closing."""
        if not self.socket.open_now():
            return
        metrics.slow_consumer_disconnects.labels(reason).inc()
        self.socket.serverClose(code=protocol.CLOSE_SLOW_CONSUMER)
        self.wake_writers(False)

    def count_while_full(self, size: int) -> None:
        """A frame written that the consumer did not hold back: past
        CHAT_MAX_SEND_BUFFER while the buffer is full, the connection is closed."""
        if self.full_since is not None:
            self.bytes_while_full += size
            if self.bytes_while_full > settings.CHAT_MAX_SEND_BUFFER:
                self.close_slow_consumer("buffer")  # a send then raises Disconnected


def offered_write_flow(socket: ChatWebSocketProtocol) -> WriteFlow:
    """What the consumer is offered as the scope's WRITE_FLOW extension."""
    return socket.flow


class ServerInternalsChanged(RuntimeError):
    """Twisted, autobahn or Daphne is not what this module was written for."""


def check_server_internals() -> None:
    """Fails loudly if Twisted, autobahn or Daphne no longer work the way write_now(),
    send_shared() and BoundedRequest use them (requirements.in bounds them)."""
    problems = []
    left, right = socket.socketpair()
    try:
        connection = tcp.Connection(left, None, reactor)  # type: ignore[arg-type]
        for name in WRITE_INTERNALS:
            if not hasattr(connection, name):
                problems.append(f"a Twisted TCP connection has no {name}")
    finally:
        left.close()
        right.close()
    factory = WebSocketServerFactory()  # type: ignore[no-untyped-call]
    prepared = factory.prepareMessage(b"check")
    if not isinstance(getattr(prepared, "payloadHybi", None), bytes):
        problems.append("autobahn's prepared message has no framed payloadHybi")
    # Where autobahn sets it for each connection (its base protocol's _connectionMade).
    made = AutobahnWebSocketProtocol._connectionMade
    if "self._perMessageCompress = None" not in inspect.getsource(made):
        problems.append("autobahn keeps the negotiated compression elsewhere")
    if "protocol.requestFactory = WebRequest" not in inspect.getsource(HTTPFactory.buildProtocol):
        problems.append("Daphne's HTTP factory no longer sets its request class per connection")
    for name in ("gotLength", "handleContentChunk"):
        if name not in vars(http.Request):
            problems.append(f"Twisted's Request has no {name}()")
    if problems:
        raise ServerInternalsChanged("; ".join(problems))


# What write_now() reads of a Twisted connection to know it holds nothing to write.
WRITE_INTERNALS = (
    "socket",
    "dataBuffer",
    "_tempDataBuffer",
    "connected",
    "disconnecting",
    "_writeDisconnected",
)


class DrainingServer(Server):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Frames over the limit close the connection (1009) before being buffered.
        kwargs["websocket_max_message_size"] = settings.CHAT_MAX_FRAME_BYTES
        kwargs["websocket_max_frame_size"] = settings.CHAT_MAX_FRAME_BYTES
        kwargs["signal_handlers"] = False  # run() installs the drain's own
        super().__init__(*args, **kwargs)
        self.ports: list[Any] = []  # Twisted's listening ports
        self.drain_deadline = 0.0

    def run(self) -> None:
        check_server_internals()  # at start-up, not on the first message
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.on_signal)
        # run() makes the factories; the reactor accepts no connection before this.
        reactor.callWhenRunning(self.configure_factories)
        # Server code of this process publishes on the serving loop (chat.publish).
        reactor.callWhenRunning(current().adopt_running_loop)
        # What start-up made lives as long as the process: the collector need not
        # walk it again on every full collection.
        gc.collect()
        gc.freeze()
        super().run()

    def configure_factories(self) -> None:
        self.ws_factory.protocol = ChatWebSocketProtocol
        bound_request_bodies(self.http_factory)
        # A protocol violation, such as a frame over the size limit, is answered with
        # its close code (1009) rather than a dropped TCP connection (1006).
        self.ws_factory.setProtocolOptions(failByDrop=False)

    def create_application(self, protocol: Any, scope: dict[str, Any]) -> Any:
        if isinstance(protocol, ChatWebSocketProtocol):
            flow = offered_write_flow(protocol)
            extensions = {**(scope.get("extensions") or {}), WRITE_FLOW: flow}
            scope = {**scope, "extensions": extensions}
        return super().create_application(protocol, scope)

    def listen_success(self, port: Any) -> None:
        self.ports.append(port)
        super().listen_success(port)

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        # In the main thread between bytecodes: hand over to the reactor.
        reactor.callFromThread(self.drain, signal.Signals(signum).name)

    def open_websockets(self) -> list[ChatWebSocketProtocol]:
        return [
            connection
            for connection in self.connections
            if isinstance(connection, WebSocketProtocol)
            and connection.state == WebSocketProtocol.STATE_OPEN
        ]

    def drain(self, signal_name: str) -> None:
        if signal_name == "SIGINT" or not current().start_draining():
            logger.warning("%s: stopping now", signal_name)
            self.stop()
            return
        for port in self.ports:
            port.stopListening()
        sockets = self.open_websockets()
        seconds = settings.CHAT_DRAIN_SECONDS
        logger.warning("%s: draining %d WebSockets over %d s", signal_name, len(sockets), seconds)
        interval = seconds / len(sockets) if sockets else 0
        for number, websocket in enumerate(sockets):
            reactor.callLater(number * interval, self.close_socket, websocket)
        self.drain_deadline = reactor.seconds() + seconds + CLEANUP_SECONDS
        reactor.callLater(POLL_SECONDS, self.stop_when_drained)

    @staticmethod
    def close_socket(socket: ChatWebSocketProtocol) -> None:
        if socket.state == WebSocketProtocol.STATE_OPEN:
            socket.serverClose(code=protocol.CLOSE_SERVICE_RESTART)

    def stop_when_drained(self) -> None:
        # Busy: a consumer still leaving its group, or a socket whose closing
        # handshake has not ended; exiting would reset it, and the proxy would then
        # drop the close frame it has not passed on yet (the client sees 1006).
        busy = [
            connection
            for connection, details in self.connections.items()
            if (details.get("application_instance") and not details["application_instance"].done())
            or (
                isinstance(connection, WebSocketProtocol)
                and connection.state != WebSocketProtocol.STATE_CLOSED
            )
        ]
        # The presence of the last connections to leave is written after them.
        settled = current().presence.settled()
        if (not busy and settled) or reactor.seconds() >= self.drain_deadline:
            logger.warning("drained; %d connections were still busy", len(busy))
            self.stop()
        else:
            reactor.callLater(POLL_SECONDS, self.stop_when_drained)


class DrainingCommandLineInterface(CommandLineInterface):
    server_class = DrainingServer


if __name__ == "__main__":
    sys.exit(DrainingCommandLineInterface().run(sys.argv[1:]))
