"""The WebSocket protocol's write flow (chatsite.serve): how a consumer waits for a
slow client's socket, and hears when the connection goes."""

import pytest

from chatsite.serve import ChatWebSocketProtocol


class Transport:
    def unregisterProducer(self):
        pass


@pytest.fixture
def socket():
    protocol = ChatWebSocketProtocol()
    protocol.state = ChatWebSocketProtocol.STATE_OPEN
    protocol.transport = Transport()
    yield protocol
    protocol.resumeProducing()  # cancels the send timeout's timer


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
async def test_a_writer_hears_when_the_connection_goes(socket, going):
    """Tests that a consumer waiting to write is released when autobahn drops the
    connection (it unregisters the producer first) or Twisted loses it: else the
    consumer never handles its disconnect, and its connection is counted for ever."""
    socket.pauseProducing()
    waiting = socket.writable()
    getattr(socket, going)()
    assert waiting.result() is False
    assert socket.full_timeout is None


async def test_a_closing_socket_is_not_waited_for(socket):
    socket.pauseProducing()
    socket.state = ChatWebSocketProtocol.STATE_CLOSING
    assert socket.writable().result() is False
