import asyncio
import functools
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from asgiref.testing import ApplicationCommunicator
from channels.layers import get_channel_layer
from channels.testing import HttpCommunicator, WebsocketCommunicator
from django.apps import apps
from django.conf import settings

from chat import protocol
from chat.replica import Replica
from chatsite.asgi import application

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


async def http_get(path, host=b"10.1.2.3:8001"):
    """A request through the whole ASGI application, with a Host Django does not allow."""
    communicator = HttpCommunicator(application, "GET", path, headers=[(b"host", host)])
    response = await communicator.get_response()
    return response["status"], dict(response["headers"]), response["body"].decode()


async def test_probes_answer_any_host():
    """Tests that probes answer a kubelet or Prometheus that addresses the replica by IP."""
    status, headers, body = await http_get("/healthz")
    loop = type(asyncio.get_running_loop()).__module__.split(".")[
        0
    ]  # uvloop once serve is imported
    health = {"status": "ok", "replica": "unit-test", "event_loop": loop}
    assert (status, json.loads(body)) == (200, health)
    assert headers[b"x-chat-replica"] == b"unit-test"
    status, _, body = await http_get("/readyz")
    assert status == 200
    assert json.loads(body)["status"] == "ok"


async def test_a_draining_replica_is_not_ready(monkeypatch):
    """Tests that /readyz answers 503 "draining" once the replica drains, so that the
    load balancer and Kubernetes stop sending it connections."""
    draining = Replica.from_settings(get_channel_layer())
    monkeypatch.setattr(apps.get_app_config("chat"), "replica", draining)
    draining.draining = True  # as start_draining() leaves it, without its metric
    status, _, body = await http_get("/readyz")
    assert (status, json.loads(body)["status"]) == (503, "draining")
    _, _, body = await http_get("/metrics")
    assert "\nchat_ready 0.0\n" in body


async def test_django_still_checks_the_host():
    """Tests that pages, unlike probes, refuse a Host outside DJANGO_ALLOWED_HOSTS."""
    status, _, _ = await http_get("/chat/")
    assert status == 400
    status, _, _ = await http_get("/chat/", host=b"127.0.0.1:8080")
    assert status == 200


async def test_metrics_count_connections_and_messages():
    """Tests that /metrics exposes the chat counters and moves with traffic."""

    def sample(body, name):
        line = next(line for line in body.splitlines() if line.startswith(name + " "))
        return float(line.split()[1])

    _, _, before = await http_get("/metrics")
    communicator = WebsocketCommunicator(
        application, "/ws/chat/metrics/", headers=[(b"origin", b"http://127.0.0.1:8080")]
    )
    assert (await communicator.connect())[0]
    await communicator.send_json_to({"message": "count me"})
    await communicator.receive_json_from()
    await communicator.send_to(text_data="{")
    await communicator.receive_json_from()
    status, headers, after = await http_get("/metrics")
    await communicator.disconnect()

    assert status == 200
    assert headers[b"x-chat-replica"] == b"unit-test"
    for name in (
        "chat_connects_total",
        "chat_messages_received_total",
        "chat_messages_delivered_total",
        "chat_group_sends_total",
    ):
        assert sample(after, name) == sample(before, name) + 1, name
    assert sample(after, "chat_connections_open") == sample(before, "chat_connections_open") + 1
    assert 'chat_errors_total{code="invalid_json"}' in after
    assert "chat_delivery_latency_seconds_bucket" in after
    assert 'chat_info{channel_layer="memory",consumer="async",replica="unit-test"} 1.0' in after
    assert sample(after, "chat_ready") == 1
    assert sample(after, "chat_connections_limit") == settings.CHAT_MAX_CONNECTIONS


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


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("CHAT_CONSUMER", "threads", "CHAT_CONSUMER must be one of async, sync"),
        ("CHAT_CHANNEL_LAYER", "kafka", "CHAT_CHANNEL_LAYER must be one of"),
        ("CHAT_MAX_MESSAGE_BYTES", "lots", "must be a whole number"),
        ("DJANGO_SECRET_KEY", "", "DJANGO_SECRET_KEY or DJANGO_SECRET_KEY_FILE is required"),
    ],
)
def test_bad_settings_fail_fast_with_a_clear_message(variable, value, message):
    """Tests that a bad or missing setting stops start-up and names the variable."""
    environment = {"DJANGO_SECRET_KEY": "k", variable: value, "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", "import chatsite.settings"],
        env=environment,
        capture_output=True,
        text=True,
        cwd="services/chat",
    )
    assert result.returncode != 0
    assert message in result.stderr


def test_redis_hosts_have_no_socket_timeout_and_a_large_pool():
    """Tests the guard against redis-py 8's 5 s socket timeout and 100-connection pool."""
    code = "import json, chatsite.settings as s; print(json.dumps(s.CHANNEL_LAYERS))"
    environment = {
        "DJANGO_SECRET_KEY": "k",
        "REDIS_URLS": "redis://a:1/0,redis://b:2/0",
        "PATH": "/usr/bin:/bin",
    }
    for layer in ("pubsub", "core"):
        result = subprocess.run(
            [sys.executable, "-c", code],
            env={**environment, "CHAT_CHANNEL_LAYER": layer},
            capture_output=True,
            text=True,
            cwd="services/chat",
            check=True,
        )
        hosts = json.loads(result.stdout)["default"]["CONFIG"]["hosts"]
        assert [host["address"] for host in hosts] == ["redis://a:1/0", "redis://b:2/0"]
        for host in hosts:
            assert host["socket_timeout"] is None
            assert host["max_connections"] >= 1000


def test_secret_key_can_come_from_a_file(tmp_path):
    """Tests DJANGO_SECRET_KEY_FILE, as a mounted Kubernetes Secret provides it."""
    code = "import chatsite.settings as s; print(s.SECRET_KEY)"
    secret = tmp_path / "key"
    secret.write_text("from-a-file\n")
    run = functools.partial(
        subprocess.run,
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd="services/chat",
    )
    found = run(env={"DJANGO_SECRET_KEY_FILE": str(secret), "PATH": "/usr/bin:/bin"})
    assert found.stdout.strip() == "from-a-file"
    missing = run(env={"DJANGO_SECRET_KEY_FILE": str(tmp_path / "nope"), "PATH": "/usr/bin:/bin"})
    assert missing.returncode != 0
    assert "DJANGO_SECRET_KEY_FILE cannot be read" in missing.stderr


async def test_dashboard_queries_only_exported_metrics():
    """Tests that every metric the Grafana dashboard queries is one a replica exports."""
    _, _, body = await http_get("/metrics")
    samples = {line.split("{")[0].split(" ")[0] for line in body.splitlines() if line[:1] != "#"}
    # A labelled counter has no sample before its first use, but is declared.
    declared = {line.split()[2] for line in body.splitlines() if line.startswith("# TYPE ")}
    exported = samples | declared
    dashboard = json.loads(
        (Path(__file__).resolve().parents[4] / "deploy/grafana/chat-cluster.json").read_text()
    )
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    queried = {
        name for expr in expressions for name in re.findall(r"\b(?:chat|process)_[a-z_]+\b", expr)
    }
    assert queried, "the dashboard queries no metric"
    assert queried <= exported, queried - exported
