"""One room of 1,000 chat.v1 clients through nginx on 3 replicas: presence costs each
client O(N) bytes, not O(N²), joins stay quick, and a message afterwards reaches
everyone."""

import asyncio
import resource

import pytest

from harness.cluster import start_cluster
from harness.presence_scale import fill_room

# Bytes of presence one client may be sent while a room fills to N, at most: about
# 50 per member that joins after it (a diff entry: id, name and JSON), the capped
# snapshot (100 members) and the frames' own fields. The whole list after every join
# instead of diffs would be 100 times this at N=1,000.
BYTES_PER_MEMBER, FIXED_BYTES = 60, 8000
JOIN_SECONDS = 5  # from opening the socket to the presence list, for every client
SIZES = (200, 1000)


@pytest.fixture(scope="module")
def large_room_cluster(tmp_path_factory):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * max(SIZES) + 256
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))
    cluster = start_cluster(
        tmp_path_factory,
        "large-room",
        replicas=3,
        CHAT_MAX_CONNECTIONS="10000",
        # nginx's per-address limits: every client here is 127.0.0.1.
        LB_WS_CONNECTIONS_PER_ADDRESS="65535",
        LB_WS_HANDSHAKES_PER_SECOND="100000",
        LB_WS_HANDSHAKE_BURST="100000",
    )
    yield cluster
    assert not cluster.down()


def test_presence_in_a_room_of_1000_grows_linearly(large_room_cluster):
    """Tests that filling a room to 200 and to 1,000 sends each client presence bytes
    within BYTES_PER_MEMBER·N + FIXED_BYTES (so growing linearly), that each client
    had its list within JOIN_SECONDS, that every list converges on N, and that one
    message then reaches all N."""
    results = {}
    for size in SIZES:
        url = large_room_cluster.ws_url(f"large-{size}")
        results[size] = asyncio.run(fill_room(url, large_room_cluster.origin, size))
    print(results)
    for size, figures in results.items():
        assert figures["presence_bytes_max"] <= BYTES_PER_MEMBER * size + FIXED_BYTES, figures
        assert figures["join_seconds_max"] <= JOIN_SECONDS, figures
        assert figures["settled"], figures
        assert figures["message_reached"] == size, figures
    small, large = results[SIZES[0]], results[SIZES[-1]]
    # Five times the members: at most about five times the bytes each (quadratic: 25).
    assert large["presence_bytes_mean"] <= 6 * small["presence_bytes_mean"], results
