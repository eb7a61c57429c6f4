"""The public edge, through nginx on real clusters (docs/operations/edge.md): only the
chat is served, its pages carry a Content-Security-Policy (the room page works under
it in Chromium: test_edge_browser.py), and one client address has a bounded number
of WebSockets and handshakes while other addresses are unaffected."""

import asyncio

import pytest
from websockets.exceptions import InvalidStatus

from harness.client import join
from harness.cluster import start_cluster
from harness.http import get

# Loopback is a /8: a client socket bound to 127.0.0.2 is another client address to
# nginx, which listens on 127.0.0.1.
ADDRESS, OTHER_ADDRESS = "127.0.0.1", "127.0.0.2"
LIMITED = 429  # limit_conn_status and limit_req_status


@pytest.mark.parametrize(
    "path", ["/metrics", "/healthz", "/readyz", "//metrics", "/%6Detrics", "/readyz?x=1"]
)
def test_metrics_and_probes_are_not_public(cluster, path):
    """Tests that nginx answers the replicas' metrics and probe paths, however spelt,
    with 404: no replica answers."""
    status, headers, body = get(f"{cluster.lb_url}{path}")
    assert status == 404
    assert "X-Chat-Replica" not in headers, "a replica answered"
    assert "chat_" not in body
    assert "redis" not in body


@pytest.mark.parametrize("path", ["/metrics", "/healthz", "/readyz"])
def test_replicas_still_serve_metrics_and_probes_on_their_own_ports(cluster, path):
    """Tests that each replica answers its metrics and probe paths on its own port."""
    for number in range(1, cluster.replicas + 1):
        assert get(f"http://127.0.0.1:{cluster.replica_port(number)}{path}")[0] == 200


@pytest.mark.parametrize("path", ["/chat/", "/chat/lobby/", "/chat/caf%C3%A9/"])
def test_pages_carry_the_security_headers(cluster, path):
    """Tests the policy and the usual headers on every page, the not-found one included."""
    _, headers, _ = get(f"{cluster.lb_url}{path}")
    policy = dict(
        directive.strip().split(" ", 1)
        for directive in headers["Content-Security-Policy"].split(";")
    )
    assert policy["default-src"] == "'none'"
    for directive in ("script-src", "style-src", "connect-src"):
        assert policy[directive] == "'self'", directive
    assert policy["frame-ancestors"] == "'none'"
    assert "unsafe-inline" not in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "same-origin"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Cross-Origin-Opener-Policy"] == "same-origin"


async def handshake_status(cluster, address, room):
    """101 when a WebSocket from `address` opens (it is returned too), else the HTTP
    status nginx answered the handshake with."""
    try:
        client = await join(cluster, room, local_addr=(address, 0))
    except InvalidStatus as refused:
        return refused.response.status_code, None
    return 101, client


@pytest.fixture(scope="module")
def few_sockets_cluster(tmp_path_factory):
    cluster = start_cluster(
        tmp_path_factory, "edge-sockets", replicas=1, LB_WS_CONNECTIONS_PER_ADDRESS="3"
    )
    yield cluster
    assert not cluster.down()


async def test_one_address_gets_its_limit_of_websockets_and_another_is_unaffected(
    few_sockets_cluster,
):
    """Tests LB_WS_CONNECTIONS_PER_ADDRESS=3: a 4th WebSocket from one address is refused
    with 429, one from another address opens, and a closed one frees its place."""
    opened = []
    for _ in range(3):
        status, client = await handshake_status(few_sockets_cluster, ADDRESS, "edge")
        assert status == 101
        opened.append(client)
    assert (await handshake_status(few_sockets_cluster, ADDRESS, "edge"))[0] == LIMITED
    status, other = await handshake_status(few_sockets_cluster, OTHER_ADDRESS, "edge")
    assert status == 101
    await opened.pop().close()
    # nginx counts the socket until its upstream side has closed too.
    for _ in range(20):
        await asyncio.sleep(0.1)
        status, again = await handshake_status(few_sockets_cluster, ADDRESS, "edge")
        if status == 101:
            break
    assert status == 101
    for client in (*opened, other, again):
        await client.close()


@pytest.fixture(scope="module")
def slow_handshakes_cluster(tmp_path_factory):
    cluster = start_cluster(
        tmp_path_factory,
        "edge-handshakes",
        replicas=1,
        LB_WS_HANDSHAKES_PER_SECOND="1",
        LB_WS_HANDSHAKE_BURST="2",
    )
    yield cluster
    assert not cluster.down()


async def test_one_address_gets_its_rate_of_handshakes_and_another_is_unaffected(
    slow_handshakes_cluster,
):
    """Tests LB_WS_HANDSHAKES_PER_SECOND=1 with LB_WS_HANDSHAKE_BURST=2: of 6 handshakes
    at once from one address, 1 + 2 open and the rest get 429; another address opens."""
    results = await asyncio.gather(
        *(handshake_status(slow_handshakes_cluster, ADDRESS, "rate") for _ in range(6))
    )
    assert sorted(status for status, _ in results) == [101] * 3 + [LIMITED] * 3
    status, other = await handshake_status(slow_handshakes_cluster, OTHER_ADDRESS, "rate")
    assert status == 101
    for _, client in results:
        if client:
            await client.close()
    await other.close()
