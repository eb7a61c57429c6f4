"""The pages (chat.views): the tutorial's element ids, no inline code, the protocol's
constants for the scripts, static files, and the invalid-room page."""

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from asgiref.testing import ApplicationCommunicator

from chat import protocol
from chatsite.asgi import application

from .clients import http_get

pytestmark = pytest.mark.django_db(databases=[])


TUTORIAL_IDS = ["room-name-input", "room-name-submit"]

ROOM_IDS = ["chat-log", "chat-message-input", "chat-message-submit"]


async def test_index_page_keeps_tutorial_ids():
    """Tests that the index page, through the whole ASGI application, has the tutorial's
    element ids and names its replica."""
    status, headers, page = await http_get("/chat/", host=b"127.0.0.1:8080")
    assert status == 200
    assert headers[b"x-chat-replica"] == b"unit-test"
    for element_id in TUTORIAL_IDS:
        assert f'id="{element_id}"' in page


def test_room_page_keeps_tutorial_ids(client):
    """Tests that the room page has the tutorial's element ids and the room name as JSON."""
    response = client.get("/chat/lobby/")
    assert response.status_code == 200
    page = response.content.decode()
    for element_id in ROOM_IDS:
        assert f'id="{element_id}"' in page
    assert '<script id="room-name" type="application/json">"lobby"</script>' in page


class PageCode(HTMLParser):
    """The scripts and styles of a page: what a Content-Security-Policy without
    'unsafe-inline' would block, and the files it would have to allow."""

    def __init__(self):
        super().__init__()
        self.sources, self.stylesheets, self.inline, self.handlers = [], [], [], []
        self.open = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.handlers += [name for name in attrs if name.startswith("on")]
        if "style" in attrs:
            self.inline.append(f"style attribute on <{tag}>")
        if tag == "link" and attrs.get("rel") == "stylesheet":
            self.stylesheets.append(attrs["href"])
        if tag == "script" and "src" in attrs:
            self.sources.append(attrs["src"])
        if tag == "style" or tag == "script" and attrs.get("type") != "application/json":
            self.open = tag

    def handle_data(self, data):
        if self.open and data.strip():
            self.inline.append(f"<{self.open}>{data.strip()[:40]}")

    def handle_endtag(self, tag):
        self.open = None


def page_code(response):
    parser = PageCode()
    parser.feed(response.content.decode())
    return parser


@pytest.mark.parametrize(
    ("path", "scripts", "stylesheets"),
    [
        ("/chat/", ["/static/chat/names.js", "/static/chat/index.js"], ["/static/chat/chat.css"]),
        (
            "/chat/lobby/",
            ["/static/chat/names.js", "/static/chat/room.js"],
            ["/static/chat/chat.css"],
        ),
        ("/chat/caf%C3%A9/", [], ["/static/chat/chat.css"]),
    ],
    ids=["index", "room", "invalid-room"],
)
def test_pages_have_no_inline_script_or_style(client, path, scripts, stylesheets):
    """Tests that the pages load their code from static files, with no inline script,
    style or event handler attribute (JSON data blocks are not code)."""
    code = page_code(client.get(path))
    assert code.inline == []
    assert code.handlers == []
    assert code.sources == scripts
    assert code.stylesheets == stylesheets


@pytest.mark.parametrize("path", ["/chat/", "/chat/lobby/"])
def test_pages_give_their_scripts_the_protocol_constants(client, path):
    """Tests that the pages' scripts read the protocol's constants and name rules from the
    page, from chat.protocol, and repeat none of them."""
    page = client.get(path).content.decode()
    found = re.search(r'<script id="chat-protocol" type="application/json">(.*?)</script>', page)
    names = ("SUBPROTOCOL", "CLOSE_SERVICE_RESTART", "CLOSE_INVALID_ROOM", "GAP_TRIMMED")
    names += ("GAP_RESET", "RATE_LIMITED", "UNAVAILABLE")
    names += ("ROOM_NAME_PATTERN", "ROOM_NAME_RULE", "NAME_MAX_LENGTH")
    assert json.loads(found.group(1)) == {name: getattr(protocol, name) for name in names}
    for script in ("room.js", "index.js", "names.js"):
        code = re.sub(r"//.*", "", (STATIC / "chat" / script).read_text())
        for literal in (
            "chat.v1",
            "1012",
            "4400",
            "'trimmed'",
            "'reset'",
            "unavailable",
            "rate_limited",
            "A-Za-z0-9",
            "32",
            "80",
        ):
            assert literal not in code, (script, literal)


STATIC = Path(__file__).resolve().parents[1] / "static"


# WhiteNoise's middleware is synchronous: Django reads its file responses in a thread,
# and warns so once per process. Fine for a few small files.
@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume synchronous iterators")
@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("chat/room.js", "text/javascript"),
        ("chat/index.js", "text/javascript"),
        ("chat/chat.css", "text/css"),
    ],
)
async def test_static_files_are_served_by_the_replica(name, content_type):
    """Tests that, with DEBUG off as in production, the whole ASGI application (Daphne's
    view of a replica) serves the pages' static files, with a short cache lifetime."""
    communicator = ApplicationCommunicator(
        application,
        {
            "type": "http",
            "method": "GET",
            "path": f"/static/{name}",
            "headers": [(b"host", b"127.0.0.1:8080")],
        },
    )
    await communicator.send_input({"type": "http.request", "body": b""})
    start = await communicator.receive_output()
    status = start["status"]
    headers = {name.lower(): value for name, value in start["headers"]}
    # A file is streamed: its last message may have no body (HttpCommunicator expects one).
    body, more = b"", True
    while more:
        message = await communicator.receive_output()
        body, more = body + message.get("body", b""), message.get("more_body", False)
    assert status == 200
    assert headers[b"content-type"].decode().split(";")[0] == content_type
    assert headers[b"cache-control"] == b"max-age=60, public"
    assert headers[b"x-chat-replica"] == b"unit-test"
    assert body == (STATIC / name).read_bytes()


@pytest.mark.parametrize("room", ["caf%C3%A9", "x" * 81])
def test_invalid_room_page_is_404_with_the_rule(client, room):
    """Tests that a bad room name gets a page saying what a room name may be."""
    response = client.get(f"/chat/{room}/")
    assert response.status_code == 404
    assert "1 to 80 characters" in response.content.decode()


def test_room_name_is_escaped_in_page(client):
    """Tests that markup in a room URL is not rendered (it is also an invalid name)."""
    response = client.get("/chat/%3Cb%3Ex%3C%2Fb%3E/")
    assert response.status_code == 404
    assert "<b>x</b>" not in response.content.decode()


def test_root_redirects_to_index(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"] == "/chat/"


async def test_django_still_checks_the_host():
    """Tests that pages, unlike probes, refuse a Host outside DJANGO_ALLOWED_HOSTS."""
    status, _, _ = await http_get("/chat/")
    assert status == 400
    status, _, _ = await http_get("/chat/", host=b"127.0.0.1:8080")
    assert status == 200
