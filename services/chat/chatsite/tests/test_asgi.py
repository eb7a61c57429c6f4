"""The ASGI application (chatsite.asgi): WebSockets behind the Origin check."""

import pytest
from channels.testing import WebsocketCommunicator

from chatsite.asgi import application

pytestmark = pytest.mark.django_db(databases=[])


@pytest.mark.parametrize(
    ("headers", "accepted"),
    [
        ([(b"origin", b"http://127.0.0.1:8080")], True),
        ([(b"origin", b"http://evil.example")], False),
        ([], False),
    ],
    ids=["allowed-host", "foreign", "missing"],
)
async def test_origin_is_checked_against_allowed_hosts(headers, accepted):
    """Tests that the ASGI application validates Origin as Channels recommends."""
    communicator = WebsocketCommunicator(application, "/ws/chat/lobby/", headers=headers)
    connected, _ = await communicator.connect()
    assert connected is accepted
    await communicator.disconnect()
