"""docker-compose.yml brought up for real (`make test-compose`)."""

import asyncio
import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from chat.protocol import CLOSE_SERVICE_RESTART
from harness.client import join, read_until_closed

# Building the images on a fresh machine (debootstrap, apt, pip) takes minutes.
pytestmark = [pytest.mark.compose, pytest.mark.timeout(1800)]


def test_three_chat_replicas_are_healthy(stack):
    """Tests that compose started 3 chat replicas and every service is healthy."""
    chat = stack.containers("chat")
    assert len(chat) == 3
    for service in ("chat", "redis", "nginx", "prometheus"):
        for container in stack.containers(service):
            assert container["State"] == "running", container
            assert container["Health"] == "healthy", container


def test_replicas_run_on_uvloop(stack):
    """Tests that the image's server (chatsite.serve) runs Daphne's reactor on uvloop."""
    health = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8001/healthz').read().decode())"
    for container in stack.containers("chat"):
        result = stack.docker("exec", container["ID"], "python", "-c", health)
        assert json.loads(result.stdout)["event_loop"] == "uvloop", result.stdout


def test_no_container_runs_as_root(stack):
    """Tests the UID of each container's main process, read from the host's /proc."""
    for service in ("chat", "redis", "nginx", "prometheus"):
        for container in stack.containers(service):
            inspect = json.loads(stack.docker("inspect", container["ID"]).stdout)[0]
            status = Path(f"/proc/{inspect['State']['Pid']}/status").read_text()
            uid = int(
                next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1]
            )
            assert uid != 0, f"{service} runs as root"


async def test_message_through_nginx_reaches_every_replica(stack):
    """Tests cross-replica fan-out: clients spread by nginx over replicas all get a message."""
    clients = [await join(stack, "compose-fanout") for _ in range(9)]
    replicas = {client.replica for client in clients}
    assert len(replicas) >= 2, replicas
    await clients[0].say("hello from compose")
    for client in clients:
        frame = await client.receive_chat()
        assert frame["message"] == "hello from compose"
        assert frame["sent_via"] == clients[0].replica
    await asyncio.gather(*(client.assert_silent(0.5) for client in clients))
    for client in clients:
        await client.close()


# Run in a chat container: a service on the compose network posting to the API.
API_POST = """
import json, sys, urllib.request
request = urllib.request.Request(
    "http://chat:8001/api/v1/rooms/compose-api/messages",
    json.dumps({"text": "from a service", "sender": "svc"}).encode(),
    {"Content-Type": "application/json", "Authorization": "Bearer " + sys.argv[1]},
)
print(urllib.request.urlopen(request, timeout=10).read().decode())
"""


async def test_the_api_answers_on_the_network_and_not_through_nginx(stack):
    """Tests that a service on the compose network publishes through a replica's API,
    with the key compose gave the replicas, and that nginx answers 404 there."""
    member = await join(stack, "compose-api")
    container = stack.containers("chat")[0]["ID"]
    result = stack.docker("exec", container, "python", "-c", API_POST, stack.api_key)
    answer = json.loads(result.stdout)
    frame = await member.receive_chat()
    assert (frame["id"], frame["system"]) == (answer["id"], True)
    assert frame["message"] == "from a service"
    request = urllib.request.Request(
        f"{stack.origin}/api/v1/rooms/compose-api/messages",
        b'{"text": "through nginx"}',
        {"Content-Type": "application/json", "Authorization": f"Bearer {stack.api_key}"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 404
    await member.assert_silent(0.5)
    await member.close()


async def test_stopped_replica_drains_with_1012_and_its_client_resumes(stack):
    """Tests the drain in a container: `docker stop` (SIGTERM to chatsite.serve, PID 1)
    closes the replica's WebSockets with 1012, and a client resuming through nginx gets
    what was sent meanwhile."""
    leaving = await join(stack, "compose-drain")
    staying = await join(stack, "compose-drain")
    for _ in range(20):
        if staying.replica != leaving.replica:
            break
        await staying.close()
        staying = await join(stack, "compose-drain")
    assert staying.replica != leaving.replica
    container = next(c for c in stack.containers("chat") if c["ID"].startswith(leaving.replica))

    stopping = asyncio.create_task(
        asyncio.to_thread(stack.docker, "stop", "--time", "30", container["ID"])
    )
    await read_until_closed(leaving)
    assert leaving.socket.close_code == CLOSE_SERVICE_RESTART
    await stopping

    await staying.socket.send(json.dumps({"message": "while you moved", "ref": "moved-1"}))
    ack = None
    while ack is None:
        frame = await staying.receive()
        ack = frame if frame["type"] == "ack" else None
    back = await join(
        stack, "compose-drain", query=f"?last_id={ack['id'] - 1}&epoch={ack['epoch']}"
    )
    assert [frame["message"] for frame in back.replayed] == ["while you moved"]
    for client in (staying, back):
        await client.close()


async def test_nginx_and_prometheus_find_scaled_replicas(stack):
    """Tests that after `--scale chat=5` nginx balances over and Prometheus scrapes all 5."""
    stack.compose(
        "up", "--detach", "--wait", "--wait-timeout", "180", "--scale", "chat=5", timeout=300
    )
    assert len(stack.containers("chat")) == 5

    deadline = time.monotonic() + 60
    replicas = set()
    while len(replicas) < 5 and time.monotonic() < deadline:
        client = await join(stack, "compose-scale")
        replicas.add(client.replica)
        await client.close()
        await asyncio.sleep(0.2)
    assert len(replicas) == 5, replicas

    url = f"http://127.0.0.1:{stack.prometheus_port}/api/v1/targets"
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url, timeout=5) as response:
            targets = json.load(response)["data"]["activeTargets"]
        up = [t for t in targets if t["labels"]["job"] == "chat" and t["health"] == "up"]
        if len(up) == 5:
            break
        await asyncio.sleep(1)
    assert len(up) == 5, targets
