"""The local cluster's network plan (deploy/local/network.py) and its delaying relay
(deploy/local/relay.py): names, addresses and settings, and the relay's order and
delay against a local echo server. Nothing here needs root."""

import asyncio
import importlib.util
import sys

import pytest

from harness.deploy_files import ROOT, defaults, load_local_cluster, load_local_rendering

config = load_local_cluster()
rendering = load_local_rendering()
network = sys.modules["network"]


def load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "deploy" / "local" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


relay = load("relay")


def layout(mode="netns", lb_port=8080, replicas=3, shards=1, **options):
    return network.Layout(
        mode=mode,
        lb_port=lb_port,
        replicas=tuple(f"chat-{n}" for n in range(1, replicas + 1)),
        redis=("redis", *(f"redis-{n}" for n in range(2, shards + 1))),
        **options,
    )


def test_names_and_addresses_are_derived_from_the_lb_port():
    """Tests that every name and the subnet come from LB_PORT, every interface name fits
    the kernel's 15 characters, and every host has its own address."""
    plan = layout(lb_port=65535, replicas=64, shards=16)
    plan.check()
    assert str(plan.subnet) == "10.255.255.0/24"
    assert plan.bridge == "cc65535-br"
    assert plan.gateway == "10.255.255.1"
    assert plan.namespace("chat-64") == "cc65535-chat-64"
    assert plan.veth("chat-64") == ("cc65535h79", "cc65535n79")
    addresses = [plan.address(name) for name in plan.hosts]
    assert len(set(addresses)) == 80
    assert plan.gateway not in addresses
    assert plan.address("redis") == "10.255.255.2"
    assert plan.address("chat-1") == "10.255.255.32"
    assert plan.address("nginx") == "127.0.0.1"
    assert plan.namespace("nginx") is None
    assert str(layout(lb_port=8080).subnet) == "10.31.144.0/24"


def test_loopback_is_every_program_on_127_0_0_1():
    """Tests that in loopback mode every program is on 127.0.0.1 in no namespace, and that a
    delay, which needs its own hosts, is refused."""
    plan = layout(mode="loopback")
    assert {plan.address(name) for name in ("chat-1", "redis", "nginx")} == {"127.0.0.1"}
    assert plan.hosts == ()
    assert plan.exec_prefix("ip", "chat-1") == ""
    with pytest.raises(network.NetworkError, match="need CLUSTER_NETWORK=netns"):
        layout(mode="loopback", delay_ms=50).check()


def test_programs_run_in_their_namespace_and_listen_on_its_address(tmp_path):
    """Tests the generated files of a netns cluster: each replica and Redis started with
    ip netns exec in its namespace and bound to its address, nginx, Prometheus and
    the replicas' REDIS_URLS pointing there; with a delay, a relay in front of Redis."""
    environ = {"CLUSTER_NETWORK": "netns", "LB_PORT": "31080", "CLUSTER_REDIS_DELAY_MS": "50"}
    cluster = config.ClusterConfig.from_environment(tmp_path / "run", environ=environ)
    programs = config.Programs("/py", "/redis-server", "/nginx", "/prometheus", ip="/ip")
    files = rendering.rendered_files(cluster, programs, "key", run_as_root=True)
    supervisord = files["supervisord.conf"]
    assert "command=/ip netns exec cc31080-chat-2 /py -m chatsite.serve --bind 10.121.104.33" in (
        supervisord
    )
    assert "command=/ip netns exec cc31080-redis /redis-server" in supervisord
    relay_command = "netns exec cc31080-redis /py"
    assert relay_command in supervisord
    assert "--listen 10.121.104.2:6380" in supervisord
    assert "bind 127.0.0.1" in files["redis.conf"]  # behind the relay
    assert "server 10.121.104.32:8001 max_fails=0;" in files["nginx.conf"]
    assert '"10.121.104.34:8003"' in files["prometheus.yml"]
    assert 'REDIS_URLS="redis://10.121.104.2:6380/0"' in supervisord
    assert cluster.probe_urls["chat-1"] == "http://10.121.104.32:8001/readyz"


def test_a_running_clusters_network_is_read_from_its_run_directory(tmp_path):
    """Tests that `make status` and `make down` without CLUSTER_NETWORK use the mode the
    run directory's cluster was made with, and CLUSTER_NETWORK given wins."""
    network.record(tmp_path, {"mode": "netns", "delay_ms": 50, "loss_percent": 1})
    settings = network.layout_settings(tmp_path, {}, defaults())
    assert settings == {"mode": "netns", "delay_ms": 50, "loss_percent": 1.0}
    again = network.layout_settings(tmp_path, {"CLUSTER_NETWORK": "loopback"}, defaults())
    assert again == {"mode": "loopback", "delay_ms": 0, "loss_percent": 0.0}
    assert network.layout_settings(tmp_path / "none", {}, defaults())["mode"] == "loopback"


async def echo(reader, writer):
    while data := await reader.read(1024):
        writer.write(data)
        await writer.drain()
    writer.close()


async def test_the_relay_delays_each_direction_and_keeps_the_order():
    """Tests that the relay forwards every byte in order, each direction `delay` late:
    a round trip through it to an echo server takes twice the delay."""
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    upstream = server.sockets[0].getsockname()[:2]
    started = asyncio.get_running_loop().create_future()
    serving = asyncio.ensure_future(relay.serve(("127.0.0.1", 0), upstream, 0.05, started))
    try:
        reader, writer = await asyncio.open_connection(*await started)
        loop = asyncio.get_running_loop()
        sent_at = loop.time()
        chunks = [f"{n:05d};".encode() for n in range(200)]
        for chunk in chunks:
            writer.write(chunk)
        await writer.drain()
        first = await reader.readexactly(6)
        first_after = loop.time() - sent_at
        rest = await asyncio.wait_for(reader.readexactly(6 * 199), 5)
        assert first + rest == b"".join(chunks)
        # To the microsecond: differences of the loop's large float clock are off by
        # about 1e-12, so two 0.05 s delays can come to 0.0999999999985 s.
        assert 0.1 <= round(first_after, 6) < 0.5, first_after
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the close goes through
        writer.close()
    finally:
        serving.cancel()
        server.close()


def test_netns_needs_root(tmp_path, monkeypatch):
    """Tests that `make up CLUSTER_NETWORK=netns` by another user fails saying why, and
    makes nothing."""
    monkeypatch.setattr(network.os, "geteuid", lambda: 1000)
    with pytest.raises(network.NetworkError, match="needs root"):
        network.create(layout(lb_port=31080), tmp_path)
    assert not (tmp_path / network.STATE_FILE).exists()
