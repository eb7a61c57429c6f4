"""The server (chatsite.serve): the WebSocket's write flow, how a consumer waits for a
slow client's socket and hears when the connection goes, and the fan-out's direct
writes with the start-up check of the Twisted and autobahn internals they read."""

import socket as stdlib_socket

import pytest
from twisted.internet import reactor, tcp

from chatsite import serve
from chatsite.serve import ChatWebSocketProtocol, check_server_internals


class Transport:
    def unregisterProducer(self):
        pass


@pytest.fixture
def protocol():
    protocol = ChatWebSocketProtocol()
    protocol.state = ChatWebSocketProtocol.STATE_OPEN
    protocol.transport = Transport()
    yield protocol
    protocol.flow.resumeProducing()  # cancels the send timeout's timer


@pytest.fixture
def socket(protocol):
    """The protocol's write side: the socket's producer and the consumer's write flow."""
    return protocol.flow


async def test_a_socket_with_room_is_writable_at_once(socket):
    assert socket.writable() is None


async def test_a_writer_waits_until_the_buffer_drains(socket):
    socket.pauseProducing()
    waiting = socket.writable()
    assert not waiting.done()
    socket.resumeProducing()
    assert waiting.result() is True
    assert socket.writable() is None


async def test_twisted_pausing_again_does_not_restart_the_count(socket):
    """Tests that the pause Twisted repeats on every write while the buffer is full
    keeps the first one's time, so the send timeout is not pushed back."""
    socket.pauseProducing()
    since, timer = socket.full_since, socket.full_timeout
    socket.bytes_while_full = 5000
    socket.pauseProducing()
    assert (socket.full_since, socket.full_timeout, socket.bytes_while_full) == (since, timer, 5000)


@pytest.mark.parametrize("going", ["unregisterProducer", "stopProducing"])
async def test_a_writer_hears_when_the_connection_goes(protocol, socket, going):
    """Tests that a consumer waiting to write is released when autobahn drops the
    connection (it unregisters the producer first) or Twisted loses it: else the
    consumer never handles its disconnect, and its connection is counted for ever."""
    socket.pauseProducing()
    waiting = socket.writable()
    getattr(protocol if going == "unregisterProducer" else socket, going)()
    assert waiting.result() is False
    assert socket.full_timeout is None


async def test_a_closing_socket_is_not_waited_for(protocol, socket):
    socket.pauseProducing()
    protocol.state = ChatWebSocketProtocol.STATE_CLOSING
    assert socket.writable().result() is False


# Writes of the fan-out: at once to the socket when Twisted holds nothing for it.


def test_the_internals_the_writes_rely_on_are_there():
    check_server_internals()


def test_a_changed_twisted_fails_the_check(monkeypatch):
    monkeypatch.setattr(serve, "WRITE_INTERNALS", (*serve.WRITE_INTERNALS, "_renamedBuffer"))
    with pytest.raises(serve.ServerInternalsChanged, match="_renamedBuffer"):
        check_server_internals()


@pytest.fixture
def connected():
    """A protocol on a real Twisted TCP connection over a socket pair: (protocol, peer)."""
    mine, peer = stdlib_socket.socketpair()
    peer.setblocking(False)
    protocol = ChatWebSocketProtocol()
    protocol.state = ChatWebSocketProtocol.STATE_OPEN
    protocol.transport = tcp.Connection(mine, protocol, reactor)
    protocol.transport.connected = True
    yield protocol, peer
    mine.close()
    peer.close()


def test_a_frame_goes_to_the_socket_at_once(connected):
    protocol, peer = connected
    protocol.write_now(b"frame 1")
    assert peer.recv(100) == b"frame 1"
    assert not protocol.transport._tempDataBuffer


def test_a_frame_waits_behind_what_twisted_holds(connected):
    """Tests the order: a frame written while Twisted still holds an earlier one for
    the socket is queued behind it, not sent past it."""
    protocol, peer = connected
    protocol.transport.write(b"frame 1")  # buffered until the reactor's next turn
    protocol.write_now(b"frame 2")
    with pytest.raises(BlockingIOError):
        peer.recv(100)
    protocol.transport.doWrite()
    assert peer.recv(100) == b"frame 1frame 2"
