"""The local cluster's configuration (deploy/local/config.py): settings, derived
addresses and the generated files, rendered into strings without starting anything."""

import configparser
import re

import pytest

from harness.deploy_files import (
    defaults,
    load_local_cluster,
    load_local_rendering,
    nginx_listen_ports,
)

config = load_local_cluster()
rendering = load_local_rendering()

PROGRAMS = config.Programs(
    python="/opt/py/bin/python",
    redis_server="/opt/bin/redis-server",
    nginx="/opt/sbin/nginx",
    prometheus="/opt/bin/prometheus",
)
PORTS = {
    "LB_PORT": "31080",
    "CHAT_PORT": "31001",
    "REDIS_PORT": "31380",
    "PROMETHEUS_PORT": "31090",
}


def cluster(tmp_path, **environ):
    return config.ClusterConfig.from_environment(tmp_path / "run", environ=environ)


def render(cluster, secret_key="s3cret", run_as_root=False):
    return rendering.rendered_files(cluster, PROGRAMS, secret_key, run_as_root)


def supervisord_sections(text):
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    return parser


def environment_of(program):
    """supervisord's `environment=` value, KEY="value",..., as a dict."""
    return dict(re.findall(r'(\w+)="([^"]*)"', program["environment"]))


def test_settings_default_to_defaults_env(tmp_path):
    """Tests that with an empty environment the ports, replica count and drain time are
    the ones defaults.env gives, and replica N listens on CHAT_PORT + N - 1."""
    settings = cluster(tmp_path)
    chat_port = int(defaults()["CHAT_PORT"])
    assert settings.lb_port == int(defaults()["LB_PORT"])
    assert settings.redis_port == int(defaults()["REDIS_PORT"])
    assert settings.prometheus_port == int(defaults()["PROMETHEUS_PORT"])
    assert settings.drain_seconds == int(defaults()["CHAT_DRAIN_SECONDS"])
    assert settings.replica_ports == {
        f"chat-{n}": chat_port + n - 1 for n in range(1, int(defaults()["REPLICAS"]) + 1)
    }


def test_environment_overrides_defaults_and_empty_values_do_not(tmp_path):
    """Tests that a set variable overrides defaults.env and an empty one does not."""
    settings = cluster(tmp_path, REPLICAS="2", LB_PORT="", **{"CHAT_PORT": "31001"})
    assert settings.replica_ports == {"chat-1": 31001, "chat-2": 31002}
    assert settings.lb_port == int(defaults()["LB_PORT"])


def test_addresses_follow_the_ports(tmp_path):
    """Tests that every URL, probe and program port is derived from the port settings."""
    settings = cluster(tmp_path, REPLICAS="2", **PORTS)
    assert settings.lb_url == "http://127.0.0.1:31080"
    assert settings.prometheus_url == "http://127.0.0.1:31090"
    assert settings.redis_url == "redis://127.0.0.1:31380/0"
    assert settings.probe_urls == {
        "chat-1": f"http://127.0.0.1:31001{defaults()['READINESS_PATH']}",
        "chat-2": f"http://127.0.0.1:31002{defaults()['READINESS_PATH']}",
        "nginx": f"http://127.0.0.1:31080{defaults()['LB_HEALTH_PATH']}",
        "prometheus": "http://127.0.0.1:31090/-/ready",
    }
    assert settings.program_ports == {
        "chat-1": 31001,
        "chat-2": 31002,
        "nginx": 31080,
        "redis": 31380,
        "prometheus": 31090,
    }
    assert settings.log_dir == tmp_path / "run" / "logs"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("LB_PORT", "eighty", "LB_PORT must be a whole number, not 'eighty'"),
        ("REDIS_PORT", "70000", "REDIS_PORT must be between 1 and 65535, not 70000"),
        ("REPLICAS", "0", "REPLICAS must be between 1 and 64, not 0"),
        ("REPLICAS", "65", "REPLICAS must be between 1 and 64, not 65"),
        ("CHAT_DRAIN_SECONDS", "-1", "CHAT_DRAIN_SECONDS must be between 0 and 65535, not -1"),
    ],
)
def test_bad_settings_are_refused_with_their_name(tmp_path, name, value, message):
    """Tests that a malformed or out-of-range setting is refused, naming it and its value."""
    with pytest.raises(config.ClusterError, match=re.escape(message)):
        cluster(tmp_path, **{name: value})


def test_a_drain_of_zero_is_allowed(tmp_path):
    """Tests that CHAT_DRAIN_SECONDS=0 is accepted: supervisord still waits out the cleanup."""
    assert cluster(tmp_path, CHAT_DRAIN_SECONDS="0").stop_wait_seconds == (
        2 * config.DRAIN_CLEANUP_SECONDS
    )


def test_overlapping_ports_are_refused(tmp_path):
    """Tests that a replica port landing on another program's port is an error."""
    settings = cluster(tmp_path, **{**PORTS, "REPLICAS": "3", "LB_PORT": "31003"})
    with pytest.raises(config.ClusterError, match="Ports overlap"):
        settings.ports()
    assert set(cluster(tmp_path, **PORTS).ports().values()) == {
        31080,
        31380,
        31090,
        31001,
        31002,
        31003,
    }


def test_rendering_writes_nothing(tmp_path):
    """Tests that rendering every file leaves the run directory uncreated."""
    files = render(cluster(tmp_path, **PORTS))
    assert set(files) == {"supervisord.conf", "nginx.conf", "redis.conf", "prometheus.yml"}
    assert not (tmp_path / "run").exists()


def test_nginx_listens_on_lb_port_and_balances_over_every_replica(tmp_path):
    """Tests that nginx.conf listens on LB_PORT, lists every replica as an upstream, keeps its
    PID file in the run directory and runs as root only when asked."""
    settings = cluster(tmp_path, REPLICAS="3", **PORTS)
    nginx = render(settings)["nginx.conf"]
    assert nginx_listen_ports(nginx) == {31080}
    servers = re.findall(r"^\s*server (\S+) max_fails=0;$", nginx, re.M)
    assert servers == ["127.0.0.1:31001", "127.0.0.1:31002", "127.0.0.1:31003"]
    assert f"pid {settings.run_dir}/nginx/nginx.pid;" in nginx
    assert "user root;" not in nginx
    assert "user root;" in render(settings, run_as_root=True)["nginx.conf"]


def test_redis_and_prometheus_use_their_ports(tmp_path):
    """Tests that redis.conf and prometheus.yml use their ports, the run directory and
    the replicas' metrics path."""
    settings = cluster(tmp_path, REPLICAS="2", **PORTS)
    files = render(settings)
    assert re.search(r"^port 31380$", files["redis.conf"], re.M)
    assert f"dir {settings.run_dir}/redis" in files["redis.conf"]
    prometheus = files["prometheus.yml"]
    assert '"127.0.0.1:31001", "127.0.0.1:31002"' in prometheus
    assert '"127.0.0.1:31090"' in prometheus
    assert f"metrics_path: {defaults()['METRICS_PATH']}" in prometheus


def test_supervisord_runs_every_program_on_its_port(tmp_path):
    """Tests that supervisord.conf starts every replica, Redis, nginx and Prometheus on its
    port, with its log and socket in the run directory."""
    settings = cluster(tmp_path, REPLICAS="2", **PORTS)
    sections = supervisord_sections(render(settings)["supervisord.conf"])
    assert sections["group:chat"]["programs"] == "chat-1,chat-2"
    for name, port in (("chat-1", 31001), ("chat-2", 31002)):
        program = sections[f"program:{name}"]
        assert program["command"].startswith(f"{PROGRAMS.python} -m chatsite.serve ")
        assert f"--bind 127.0.0.1 --port {port} " in program["command"]
        assert program["stdout_logfile"] == f"{settings.log_dir}/{name}.log"
    assert (
        sections["program:redis"]["command"]
        == f"{PROGRAMS.redis_server} {settings.run_dir}/redis.conf"
    )
    assert sections["program:nginx"]["command"].startswith(f"{PROGRAMS.nginx} ")
    assert "--web.listen-address=127.0.0.1:31090" in sections["program:prometheus"]["command"]
    assert sections["unix_http_server"]["file"] == str(settings.supervisor_socket)
    assert sections["supervisord"]["pidfile"] == str(settings.pid_file)


def test_each_redis_shard_runs_on_its_port_and_every_replica_uses_them_all(tmp_path):
    """Tests REDIS_SHARDS: shard N on REDIS_PORT + N - 1 with a directory of its own,
    supervised as redis, redis-2, ...; every replica gets every shard in REDIS_URLS."""
    settings = cluster(tmp_path, REPLICAS="2", REDIS_SHARDS="3", **PORTS)
    assert settings.redis_ports == {"redis": 31380, "redis-2": 31381, "redis-3": 31382}
    files = render(settings)
    sections = supervisord_sections(files["supervisord.conf"])
    for name, port in settings.redis_ports.items():
        assert re.search(rf"^port {port}$", files[f"{name}.conf"], re.M)
        assert f"dir {settings.run_dir}/{name}\n" in files[f"{name}.conf"]
        program = sections[f"program:{name}"]
        assert program["command"] == f"{PROGRAMS.redis_server} {settings.run_dir}/{name}.conf"
        assert settings.run_dir / name in settings.directories
    urls = environment_of(sections["program:chat-1"])["REDIS_URLS"].split(",")
    assert urls == [f"redis://127.0.0.1:{port}/0" for port in (31380, 31381, 31382)]


def test_sentinel_mode_gives_each_shard_two_replicas_and_three_sentinels(tmp_path):
    """Tests REDIS_HA=sentinel: per shard a primary and two replicas (replicaof it), all
    with the AOF and left down by supervisord when they die (the Sentinels fail over);
    three Sentinels watching every shard's primary, restarted when they die; and the
    replicas pointed at the Sentinels, acking once a replica holds a message."""
    settings = cluster(
        tmp_path, REDIS_HA="sentinel", REDIS_SHARDS="2", REDIS_SENTINEL_PORT="31500", **PORTS
    )
    assert settings.redis_ports == {
        "redis": 31380,
        "redis-2": 31381,
        "redis-b": 31382,
        "redis-2-b": 31383,
        "redis-c": 31384,
        "redis-2-c": 31385,
    }
    files = render(settings)
    sections = supervisord_sections(files["supervisord.conf"])
    for name, port in settings.redis_ports.items():
        conf = files[f"{name}.conf"]
        assert "appendonly yes\nappendfsync everysec\nrepl-diskless-sync-delay 0\n" in conf, name
        primary = 31380 if name in ("redis", "redis-b", "redis-c") else 31381
        assert (f"replicaof 127.0.0.1 {primary}\n" in conf) == (port != primary), name
        assert sections[f"program:{name}"]["autorestart"] == "false", name
    for number, name in enumerate(("sentinel-1", "sentinel-2", "sentinel-3")):
        conf = files[f"{name}.conf"]
        assert f"port {31500 + number}\n" in conf
        assert "sentinel monitor chat 127.0.0.1 31380 2\n" in conf
        assert "sentinel monitor chat-2 127.0.0.1 31381 2\n" in conf
        program = sections[f"program:{name}"]
        assert program["autorestart"] == "true"
        assert program["command"].endswith(f"{name}/sentinel.conf --sentinel")
    environment = environment_of(sections["program:chat-1"])
    assert environment["REDIS_SENTINELS"] == "127.0.0.1:31500,127.0.0.1:31501,127.0.0.1:31502"
    assert environment["REDIS_SENTINEL_MASTERS"] == "chat,chat-2"
    assert environment["REDIS_ACK_REPLICAS"] == "1"
    assert "REDIS_URLS" not in environment


def test_a_redis_shard_may_not_take_a_replicas_port(tmp_path):
    """Tests that a Redis shard's port landing on a replica's port is an error."""
    with pytest.raises(config.ClusterError, match="overlap"):
        cluster(tmp_path, REDIS_SHARDS="2", REDIS_PORT="31000", CHAT_PORT="31001").ports()


@pytest.mark.parametrize("drain", ["0", "10", "45"])
def test_stopwaitsecs_outlasts_the_drain_and_its_cleanup(tmp_path, drain):
    """Tests that supervisord waits CHAT_DRAIN_SECONDS plus twice the cleanup before it
    kills a replica, and tells the replica the same drain time."""
    settings = cluster(tmp_path, CHAT_DRAIN_SECONDS=drain, **PORTS)
    program = supervisord_sections(render(settings)["supervisord.conf"])["program:chat-1"]
    assert int(program["stopwaitsecs"]) == int(drain) + 2 * config.DRAIN_CLEANUP_SECONDS
    assert environment_of(program)["CHAT_DRAIN_SECONDS"] == drain


def test_replica_environment(tmp_path):
    """Tests that each replica gets its name, the cluster's Redis, secret key and API
    keys file, the service settings that are set, and nothing else of the environment."""
    settings = cluster(
        tmp_path,
        REPLICAS="2",
        CHAT_CONSUMER="sync",
        CHAT_LOG_LEVEL="",
        CHAT_NOT_A_SETTING="x",
        HOME="/root",
        **PORTS,
    )
    sections = supervisord_sections(render(settings, secret_key="k3y")["supervisord.conf"])
    for name in ("chat-1", "chat-2"):
        assert environment_of(sections[f"program:{name}"]) == {
            "CHAT_API_KEYS_FILE": str(settings.run_dir / "api_keys"),
            "CHAT_CONSUMER": "sync",
            "CHAT_DRAIN_SECONDS": defaults()["CHAT_DRAIN_SECONDS"],
            "CHAT_REPLICA_ID": name,
            "DJANGO_SECRET_KEY": "k3y",
            "DJANGO_SETTINGS_MODULE": "chatsite.settings",
            "PYTHONUNBUFFERED": "1",
            "REDIS_URLS": "redis://127.0.0.1:31380/0",
        }
    assert settings.consumer == "sync"
    assert settings.channel_layer == "pubsub"


def test_an_operators_api_keys_file_replaces_the_run_directorys(tmp_path):
    settings = cluster(tmp_path, CHAT_API_KEYS_FILE="/etc/chat/api_keys", **PORTS)
    program = supervisord_sections(render(settings)["supervisord.conf"])["program:chat-1"]
    assert environment_of(program)["CHAT_API_KEYS_FILE"] == "/etc/chat/api_keys"


def test_percent_signs_reach_the_replica_escaped_for_supervisord(tmp_path):
    """Tests that a % in a setting is doubled for supervisord, which would expand it."""
    settings = cluster(tmp_path, DJANGO_ALLOWED_HOSTS="a%b", **PORTS)
    program = supervisord_sections(render(settings)["supervisord.conf"])["program:chat-1"]
    assert environment_of(program)["DJANGO_ALLOWED_HOSTS"] == "a%%b"
