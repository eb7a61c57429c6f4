"""Publishing into a room from server code on a real cluster: the tutorial's
group_send, malformed events, send_to_room from a thread and from a loop, the
management command and the HTTP API, with members on every replica."""

import asyncio
import json
import socket
import uuid

from harness.client import chat_query, join
from harness.http import post_json, replica_counter
from harness.paths import ROOT
from harness.publishing import (
    api_post,
    django_shell,
    documented_commands,
    room_messages_path,
    run_documented,
)


def unique(text):
    return f"{text}-{uuid.uuid4().hex[:8]}"


async def members_on_every_replica(cluster, room):
    return [await join(cluster, room, replica=number) for number in (1, 2, 3)]


async def receive_all(members, count):
    """Each member's next `count` chat frames."""
    return [[await member.receive_chat() for _ in range(count)] for member in members]


def malformed_events(room):
    """Python for a Django shell that sends every kind of malformed event to the room's
    group, past the tutorial interception (forward_group_send: as a process without it
    would), and raw bytes no layer encodes."""
    return f"""
        import json
        from asgiref.sync import async_to_sync
        from channels.layers import get_channel_layer
        layer = get_channel_layer()
        group = "chat_{room}"
        for event in (
            {{"type": "chat.message", "message": "tutorial, sent raw"}},
            {{"type": "chat.message", "frame": "{{}}", "epoch": "e", "sent_at": 1.0}},
            {{"type": "chat.message", "frame": "{{}}", "id": "7", "epoch": "e", "sent_at": 1.0}},
            {{"type": "room.kick", "who": "everyone"}},
            {{"type": "chat.message", "frame": "x" * 70000, "id": 9, "epoch": "e", "sent_at": 1.0}},
        ):
            async_to_sync(layer.forward_group_send)(group, event)
        print(json.dumps("sent"))
    """


async def test_the_tutorials_group_send_is_published_and_malformed_events_harm_no_one(cluster):
    room = unique("robust")
    members = await members_on_every_replica(cluster, room)
    before = replica_counter(cluster, "chat_events_dropped_total", "reason")

    django_shell(
        cluster,
        f"""
        import json
        from asgiref.sync import async_to_sync
        from channels.layers import get_channel_layer
        async_to_sync(get_channel_layer().group_send)(
            "chat_{room}", {{"type": "chat.message", "message": "from a django view"}}
        )
        print(json.dumps("sent"))
        """,
    )
    for frames in await receive_all(members, 1):
        assert (frames[0]["id"], frames[0]["message"], frames[0]["system"]) == (
            1,
            "from a django view",
            True,
        )

    django_shell(cluster, malformed_events(room))
    junk = django_shell(
        cluster,
        f"""
        import json
        from asgiref.sync import async_to_sync
        from channels.layers import get_channel_layer
        from chat.replica import current
        layer = get_channel_layer()
        async def publish_junk():
            group_channel = layer.group_channel("chat_{room}")
            client = current().broker.client_for("{room}")
            return await client.publish(group_channel, b"\\xc1 not msgpack")
        print(json.dumps(async_to_sync(publish_junk)()))
        """,
    )
    assert junk == 3, "each replica's layer subscribes to the room's channel"

    await members[0].say("still here")
    for frames in await receive_all(members, 1):
        assert (frames[0]["id"], frames[0]["message"]) == (2, "still here")
    for member in members:
        await member.assert_silent(0.5)
    after = replica_counter(cluster, "chat_events_dropped_total", "reason")
    dropped = {reason: after.get(reason, 0) - before.get(reason, 0) for reason in after}
    # Each replica with members drops each event once, not once per member.
    assert dropped == {
        "tutorial_shape": 3,
        "bad_fields": 6,
        "unknown_type": 3,
        "oversized": 3,
        "undecodable": 3,
    }
    for member in members:
        await member.close()


async def test_every_way_to_publish_reaches_every_member_once_and_is_in_the_history(cluster):
    room = unique("publish")
    members = await members_on_every_replica(cluster, room)
    published = django_shell(
        cluster,
        f"""
        import asyncio, json, threading
        from chat.publish import asend_to_room, send_to_room
        results = []
        thread = threading.Thread(
            target=lambda: results.append(send_to_room("{room}", "from a thread", sender="bot"))
        )
        thread.start()
        thread.join()
        results.append(asyncio.run(asend_to_room("{room}", "from a loop", sender="bot")))
        print(json.dumps([(result.id, result.epoch) for result in results]))
        """,
    )
    command = cluster.manage("send_to_room", room, "from the command", "--json")
    assert command.returncode == 0, command.stderr
    status, _, posted = api_post(
        cluster, room_messages_path(room), {"text": "from the API", "sender": "svc"}, replica=2
    )
    assert status == 200, posted

    texts = ["from a thread", "from a loop", "from the command", "from the API"]
    epoch = published[0][1]
    for frames in await receive_all(members, 4):
        assert [(frame["id"], frame["message"]) for frame in frames] == list(
            zip([1, 2, 3, 4], texts, strict=True)
        )
        assert {(frame["epoch"], frame["system"]) for frame in frames} == {(epoch, True)}
    assert [message_id for message_id, _ in published] == [1, 2]
    assert (json.loads(command.stdout)["id"], posted["id"]) == (3, 4)
    for member in members:
        await member.assert_silent(0.5)
        await member.close()

    resumed = await join(cluster, room, query=chat_query(last_id=0, epoch=epoch))
    assert [frame["message"] for frame in resumed.replayed] == texts
    await resumed.close()


async def test_a_retried_key_is_published_once_across_replicas(cluster):
    room = unique("key")
    member = await join(cluster, room, replica=3)
    body = {"text": "exactly once", "key": "job-1234"}
    answers = [api_post(cluster, room_messages_path(room), body, replica=n) for n in (1, 2, 1)]
    assert [status for status, _, _ in answers] == [200, 200, 200]
    assert [answer["duplicate"] for _, _, answer in answers] == [False, True, True]
    assert len({answer["id"] for _, _, answer in answers}) == 1
    assert (await member.receive_chat())["message"] == "exactly once"
    await member.assert_silent(1.0)
    await member.close()


def test_the_api_is_not_served_through_the_load_balancer(cluster):
    path = room_messages_path("lobby")
    key = {"Authorization": f"Bearer {cluster.api_key()}"}
    lb_status, _, _ = post_json(cluster.lb_url + path, {"text": "hi"}, key)
    assert lb_status == 404
    assert api_post(cluster, path, {"text": "hi"}, key="")[0] == 401
    assert api_post(cluster, path, {"text": "hi"}, key="w" * 32)[0] == 401


async def test_the_documented_curl_examples_work(cluster):
    """Tests that docs/http-api.md's examples, pasted as they are, publish."""
    lobby = await join(cluster, "lobby", replica=2)
    commands = documented_commands(ROOT / "docs" / "http-api.md")
    assert len(commands) == 2
    posted, broadcast = run_documented(cluster, commands)
    frame = await lobby.receive_chat()
    assert (frame["id"], frame["name"], frame["system"]) == (posted["id"], "deploy-bot", True)
    results = broadcast["results"]
    assert [result["room"] for result in results] == ["lobby", "ops"]
    assert all("id" in result for result in results), results
    assert (await lobby.receive_chat())["message"] == "Maintenance at 18:00"
    await lobby.close()


def test_bad_input_is_answered_on_a_real_replica(cluster):
    answers = {
        "invalid_room": api_post(cluster, room_messages_path("a:b"), {"text": "hi"}),
        "invalid_text": api_post(cluster, room_messages_path("lobby"), {"text": " "}),
        "body_too_large": api_post(cluster, room_messages_path("lobby"), {"text": "x" * 70000}),
    }
    statuses = {
        code: (status, body["error"]["code"]) for code, (status, _, body) in answers.items()
    }
    assert statuses == {
        "invalid_room": (400, "invalid_room"),
        "invalid_text": (400, "invalid_text"),
        "body_too_large": (413, "body_too_large"),
    }


async def test_redis_down_is_503_and_the_retry_publishes_once(faults_cluster):
    cluster = faults_cluster
    room = unique("outage")
    path, body = room_messages_path(room), {"text": "after the outage", "key": "k-1"}
    cluster.run("stop", "redis")
    status, headers, answer = api_post(cluster, path, body)
    assert (status, answer["error"]["code"], headers.get("Retry-After")) == (
        503,
        "unavailable",
        "1",
    )
    cluster.run("start", "redis")
    await asyncio.sleep(2)
    member = await join(cluster, room, replica=2)
    for _ in range(20):
        status, _, answer = api_post(cluster, path, body)
        if status == 200:
            break
        await asyncio.sleep(0.5)
    assert (status, answer["id"], answer["duplicate"]) == (200, 1, False)
    assert (await member.receive_chat())["message"] == "after the outage"
    await member.assert_silent(1.0)
    await member.close()


def api_request_head(cluster, headers):
    lines = [
        f"POST {room_messages_path('lobby')} HTTP/1.1",
        f"Host: {cluster.replica_host(1)}",
        "Content-Type: application/json",
        f"Authorization: Bearer {cluster.api_key()}",
        *headers,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_a_body_declared_too_large_is_refused_before_it_is_sent(cluster):
    """Tests that the replica answers 413 on the headers alone: Daphne would otherwise
    hold the whole body before the application saw any of it."""
    address = (cluster.replica_host(1), cluster.replica_port(1))
    with socket.create_connection(address, timeout=5) as connection:
        connection.sendall(api_request_head(cluster, [f"Content-Length: {32 << 20}"]))
        answer = connection.recv(4096).decode()  # times out if the replica waits
    head, _, body = answer.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 413"), answer
    assert json.loads(body)["error"]["code"] == "body_too_large"


def test_a_chunked_body_past_the_limit_is_not_read_on(cluster):
    """Tests that a body without a declared length is cut off past the limit: the
    replica closes the connection long before 32 MiB are taken."""
    address = (cluster.replica_host(1), cluster.replica_port(1))
    chunk = b"%x\r\n%s\r\n" % (1 << 16, b"x" * (1 << 16))
    taken = 0
    with socket.create_connection(address, timeout=10) as connection:
        connection.sendall(api_request_head(cluster, ["Transfer-Encoding: chunked"]))
        try:
            for _ in range(512):  # 32 MiB
                connection.sendall(chunk)
                taken += len(chunk)
        except OSError:  # reset or broken pipe: the replica closed it
            pass
    assert taken < 16 << 20, f"the replica took {taken} bytes of body"
