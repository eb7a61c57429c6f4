"""The HTTP API (chat.http_api) through the whole ASGI application: publishing to a
room and to several, keys, and each bad request's answer; on the in-memory layer."""

import json
import logging

import pytest
from channels.testing import HttpCommunicator
from redis.exceptions import ConnectionError as RedisConnectionError

from chat import http_api
from chat.http_api import STATUS
from chatsite.asgi import application

from .clients import ASYNC, join, quiet, receive, replayed

pytestmark = [pytest.mark.django_db(databases=[]), pytest.mark.usefixtures("replica")]

KEY = "k" * 24
OLD_KEY = "o" * 24
MESSAGES = "/api/v1/rooms/lobby/messages"
BROADCAST = "/api/v1/broadcast"


@pytest.fixture(autouse=True)
def api_keys(settings):
    settings.CHAT_API_KEYS = [OLD_KEY, KEY]


async def post(path=MESSAGES, body=None, *, key=KEY, method="POST", headers=None, raw=None):
    request_headers = [(b"host", b"10.1.2.3:8001"), (b"content-type", b"application/json")]
    if key is not None:
        request_headers.append((b"authorization", f"Bearer {key}".encode()))
    request_headers += headers or []
    data = raw if raw is not None else json.dumps(body or {}).encode()
    communicator = HttpCommunicator(application, method, path, data, request_headers)
    response = await communicator.get_response()
    return response["status"], dict(response["headers"]), json.loads(response["body"])


def error_code(answer):
    status, _, body = answer
    return status, body["error"]["code"]


async def test_a_post_reaches_the_room_with_the_next_id():
    client = await join(ASYNC)
    await replayed(client)
    status, headers, body = await post(body={"text": "build green", "sender": "ci"})
    assert status == 200
    assert headers[b"x-chat-replica"] == b"unit-test"
    frame = await receive(client)
    assert body == {"room": "lobby", "id": frame["id"], "epoch": frame["epoch"], "duplicate": False}
    assert (frame["message"], frame["name"], frame["system"]) == ("build green", "ci", True)
    await client.disconnect()


async def test_either_key_of_a_rotation_is_taken_and_a_retried_key_posts_once():
    client = await join(ASYNC)
    await replayed(client)
    _, _, first = await post(body={"text": "once", "key": "import-7"}, key=OLD_KEY)
    status, _, again = await post(body={"text": "once", "key": "import-7"})
    assert status == 200
    assert (again["id"], again["duplicate"]) == (first["id"], True)
    assert (await receive(client))["id"] == first["id"]
    assert await quiet(client)
    await client.disconnect()


async def test_broadcast_publishes_to_each_room_and_answers_per_room():
    members = {room: await join(ASYNC, room=room) for room in ("a", "b")}
    for member in members.values():
        await replayed(member)
    status, _, body = await post(
        "/api/v1/broadcast", {"rooms": ["a", "b", "no room"], "text": "hi"}
    )
    assert status == 200
    results = body["results"]
    assert [result["room"] for result in results] == ["a", "b", "no room"]
    assert results[2]["error"]["code"] == "invalid_room"
    for room, member in members.items():
        assert (await receive(member))["message"] == "hi", room
        await member.disconnect()


@pytest.mark.parametrize(
    ("request_arguments", "code"),
    [
        ({"path": "/api/v1/nothing"}, "not_found"),
        ({"path": "/api/v1/rooms/lobby/messages/x"}, "not_found"),
        ({"method": "GET"}, "method_not_allowed"),
        ({"key": None}, "unauthorized"),
        ({"key": "w" * 24}, "unauthorized"),
        ({"key": KEY[:-1]}, "unauthorized"),
        ({"headers": [(b"content-type", b"text/plain")]}, "unsupported_media_type"),
        ({"raw": b"{not json"}, "invalid_json"),
        ({"raw": b'["text"]'}, "invalid_body"),
        ({"raw": b"[" * 60000}, "invalid_json"),
        ({"key": None, "headers": [(b"authorization", f"Basic {KEY}".encode())]}, "unauthorized"),
        ({"raw": b'{"text": "\\ud800 lone"}'}, "invalid_text"),
        ({"body": {"message": "the tutorial's field"}}, "invalid_field"),
        ({"path": "/api/v1/rooms/no:room/messages", "body": {"text": "hi"}}, "invalid_room"),
        ({"body": {"text": ""}}, "invalid_text"),
        ({"body": {"text": 5}}, "invalid_text"),
        ({"body": {"text": "x" * 4097}}, "text_too_large"),
        ({"body": {"text": "hi", "sender": ""}}, "invalid_sender"),
        ({"body": {"text": "hi", "key": "a b"}}, "invalid_key"),
        ({"path": "/api/v1/broadcast", "body": {"rooms": [], "text": "hi"}}, "invalid_field"),
        (
            {"path": "/api/v1/broadcast", "body": {"rooms": ["a", "a"], "text": "hi"}},
            "invalid_field",
        ),
    ],
)
async def test_each_bad_request_gets_its_status_and_code(request_arguments, code):
    assert error_code(await post(**request_arguments)) == (STATUS[code], code)


async def test_the_wrong_media_type_is_refused_even_with_a_json_body():
    communicator = HttpCommunicator(
        application,
        "POST",
        MESSAGES,
        b'{"text": "hi"}',
        [(b"content-type", b"text/plain"), (b"authorization", f"Bearer {KEY}".encode())],
    )
    response = await communicator.get_response()
    assert response["status"] == 415


async def test_no_key_configured_turns_the_api_off(settings):
    settings.CHAT_API_KEYS = []
    assert error_code(await post(body={"text": "hi"})) == (403, "api_disabled")


async def test_unauthorized_names_the_scheme_and_logs_no_key(caplog):
    with caplog.at_level(logging.DEBUG):
        status, headers, _ = await post(body={"text": "hi"}, key="s3cret-s3cret-s3cret")
    assert status == 401
    assert headers[b"www-authenticate"].startswith(b"Bearer")
    assert "s3cret" not in caplog.text


async def test_a_body_over_the_limit_is_refused_before_it_is_read(settings):
    settings.CHAT_API_MAX_BODY_BYTES = 100
    declared = [(b"content-length", b"101")]
    assert error_code(await post(body={"text": "hi"}, headers=declared)) == (413, "body_too_large")
    assert error_code(await post(body={"text": "x" * 200})) == (413, "body_too_large")


async def test_a_key_past_its_rate_is_told_when_to_retry(settings):
    settings.CHAT_API_RATE_LIMIT, settings.CHAT_API_RATE_BURST = 1, 2
    answers = [await post(body={"text": f"n{number}"}) for number in range(3)]
    assert [status for status, _, _ in answers] == [200, 200, 429]
    assert answers[2][1][b"retry-after"] == b"1"
    assert answers[2][2]["error"]["code"] == "rate_limited"


async def test_a_draining_replica_sends_the_caller_elsewhere(replica):
    replica.start_draining()
    status, headers, body = await post(body={"text": "hi"})
    assert (status, body["error"]["code"], headers[b"retry-after"]) == (503, "draining", b"1")


async def test_redis_unavailable_is_503_with_retry_after(replica, monkeypatch):
    async def refuse(request):
        raise RedisConnectionError("Redis is down")

    monkeypatch.setattr(replica.broker, "publish", refuse)
    status, headers, body = await post(body={"text": "hi"})
    assert (status, body["error"]["code"], headers[b"retry-after"]) == (503, "unavailable", b"1")


async def test_a_broadcast_costs_a_request_per_room(settings):
    settings.CHAT_API_RATE_LIMIT, settings.CHAT_API_RATE_BURST = 1, 3
    status, _, _ = await post(BROADCAST, {"rooms": ["a", "b", "c"], "text": "hi"})
    assert status == 200
    assert error_code(await post(body={"text": "one more"})) == (429, "rate_limited")


async def test_a_bug_is_answered_500_in_json(monkeypatch):
    async def fails(room, content):
        raise RuntimeError("a bug")

    monkeypatch.setattr(http_api, "publish_one", fails)
    assert error_code(await post(body={"text": "hi"})) == (500, "internal")
