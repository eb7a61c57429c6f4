"""One source of truth: the ports, environment variable names and probe paths of
deploy/defaults.env are the ones the service reads and serves, and the ones the
local cluster, compose and Kubernetes use."""

import re
import subprocess
import sys

import pytest

from chat import probes
from harness.deploy_files import (
    K8S_GATEWAY,
    K8S_SENTINEL,
    K8S_SHARDS,
    NGINX_COMPOSE,
    NGINX_LOCATIONS,
    ROOT,
    compose,
    compose_ha,
    defaults,
    k8s_config_file,
    k8s_container,
    k8s_env,
    k8s_object,
    kustomize,
    load_local_cluster,
    local_nginx_conf,
    nginx_listen_ports,
    service_settings_read,
)

DOCKERFILE = (ROOT / "services" / "chat" / "Dockerfile").read_text()
PROMETHEUS_COMPOSE = (ROOT / "deploy" / "prometheus" / "prometheus.compose.yml").read_text()
REDIS_START = (ROOT / "deploy" / "redis" / "redis-start.sh").read_text()


def port(name):
    return int(defaults()[name])


def test_probe_paths_are_the_ones_the_service_serves():
    """Tests that defaults.env names the paths that chat.probes answers."""
    assert defaults()["LIVENESS_PATH"] == probes.LIVENESS_PATH
    assert defaults()["READINESS_PATH"] == probes.READINESS_PATH
    assert defaults()["METRICS_PATH"] == probes.METRICS_PATH
    assert f"location = {defaults()['LB_HEALTH_PATH']} {{" in NGINX_LOCATIONS
    assert f"location = {defaults()['LB_READINESS_PATH']} {{" in NGINX_LOCATIONS


def test_k8s_probes_use_the_same_paths_and_ports():
    """Tests that Kubernetes' probes, ports, Services, nginx and Prometheus configs and
    network policy use defaults.env's paths and ports."""
    chat = k8s_container("chat")
    assert chat["readinessProbe"]["httpGet"]["path"] == defaults()["READINESS_PATH"]
    assert chat["livenessProbe"]["httpGet"]["path"] == defaults()["LIVENESS_PATH"]
    assert chat["ports"][0]["containerPort"] == port("CHAT_PORT")
    nginx = k8s_container("nginx")
    assert nginx["readinessProbe"]["httpGet"]["path"] == defaults()["LB_READINESS_PATH"]
    assert nginx["livenessProbe"]["httpGet"]["path"] == defaults()["LB_HEALTH_PATH"]
    assert nginx["ports"][0]["containerPort"] == port("LB_PORT")
    assert nginx_listen_ports(k8s_config_file("nginx-config", "nginx.conf")) == {port("LB_PORT")}
    assert f"server chat:{port('CHAT_PORT')};" in k8s_config_file("nginx-config", "nginx.conf")
    redis = k8s_container("redis")
    assert redis["ports"][0]["containerPort"] == port("REDIS_PORT")
    assert redis["args"][redis["args"].index("--port") + 1] == str(port("REDIS_PORT"))
    redis_url = next(e["value"] for e in chat["env"] if e["name"] == "REDIS_URLS")
    assert redis_url == f"redis://redis:{port('REDIS_PORT')}/0"
    assert k8s_object("Service", "redis")["spec"]["ports"][0]["port"] == port("REDIS_PORT")
    assert k8s_object("Service", "chat")["spec"]["ports"][0]["port"] == port("CHAT_PORT")
    prometheus = k8s_container("prometheus")
    assert prometheus["ports"][0]["containerPort"] == port("PROMETHEUS_PORT")
    assert f"port: {port('CHAT_PORT')}" in k8s_config_file("prometheus-config", "prometheus.yml")
    policies = {o["metadata"]["name"]: o for o in kustomize() if o["kind"] == "NetworkPolicy"}
    assert policies["redis-from-chat"]["spec"]["ingress"][0]["ports"] == [
        {"port": port("REDIS_PORT")}
    ]


def test_the_image_serves_on_chat_port_and_checks_readiness():
    """Tests that the Dockerfile's port and health check follow defaults.env."""
    assert f"EXPOSE {port('CHAT_PORT')}" in DOCKERFILE
    assert f'"--port", "{port("CHAT_PORT")}"' in DOCKERFILE
    assert f"127.0.0.1:{port('CHAT_PORT')}{defaults()['READINESS_PATH']}" in DOCKERFILE


def test_compose_uses_the_same_ports_and_paths():
    """Tests that compose's health checks, published ports, nginx and Prometheus configs and
    Redis address use defaults.env's paths and ports."""
    services = compose()["services"]
    chat_check = " ".join(services["chat"]["healthcheck"]["test"])
    assert f"127.0.0.1:{port('CHAT_PORT')}{defaults()['READINESS_PATH']}" in chat_check
    assert services["nginx"]["ports"] == ["127.0.0.1:${LB_PORT:?}:" + str(port("LB_PORT"))]
    nginx_check = " ".join(services["nginx"]["healthcheck"]["test"])
    assert f"127.0.0.1:{port('LB_PORT')}{defaults()['LB_HEALTH_PATH']}" in nginx_check
    assert nginx_listen_ports(NGINX_COMPOSE) == {port("LB_PORT")}
    assert f"set $chat_backend chat:{port('CHAT_PORT')};" in NGINX_COMPOSE
    assert services["chat"]["environment"]["REDIS_URLS"] == "redis://redis:${REDIS_PORT:?}/0"
    assert services["redis"]["environment"]["REDIS_PORT"] == "${REDIS_PORT:?}"
    assert services["prometheus"]["ports"] == [
        "127.0.0.1:${PROMETHEUS_PORT:?}:" + str(port("PROMETHEUS_PORT"))
    ]
    assert f"port: {port('CHAT_PORT')}" in PROMETHEUS_COMPOSE
    assert f"metrics_path: {defaults()['METRICS_PATH']}" in PROMETHEUS_COMPOSE


def test_every_redis_has_the_memory_limit_of_defaults_env():
    """Tests that the local cluster, compose and Kubernetes give Redis defaults.env's
    REDIS_MAXMEMORY and REDIS_MAXMEMORY_POLICY, below the container's memory limit."""
    limit, policy = defaults()["REDIS_MAXMEMORY"], defaults()["REDIS_MAXMEMORY_POLICY"]
    local = load_local_cluster()
    settings = local.ClusterConfig.from_environment(ROOT / ".run" / "unused", environ={})
    redis_conf = (ROOT / "deploy" / "redis" / "redis.conf.template").read_text()
    assert (settings.redis_maxmemory, settings.redis_maxmemory_policy) == (limit, policy)
    assert "maxmemory @{redis_maxmemory}\n" in redis_conf
    assert "maxmemory-policy @{redis_maxmemory_policy}\n" in redis_conf
    environment = compose()["services"]["redis"]["environment"]
    assert environment["REDIS_MAXMEMORY"] == "${REDIS_MAXMEMORY:?}"
    assert environment["REDIS_MAXMEMORY_POLICY"] == "${REDIS_MAXMEMORY_POLICY:?}"
    assert '--maxmemory "$REDIS_MAXMEMORY" --maxmemory-policy "$REDIS_MAXMEMORY_POLICY"' in (
        REDIS_START
    )
    for name in ("redis", "redis-replica", "redis-replica-2"):
        environment = compose_ha()["services"][name]["environment"]
        assert (environment["REDIS_MAXMEMORY"], environment["REDIS_MAXMEMORY_POLICY"]) == (
            limit,
            policy,
        )
        assert compose_ha()["services"][name]["mem_limit"] == str(256 * 2**20)
    args = k8s_container("redis")["args"]
    assert args[args.index("--maxmemory") + 1] == limit
    assert args[args.index("--maxmemory-policy") + 1] == policy
    for variant in (K8S_SENTINEL, K8S_SHARDS):
        server = k8s_container("redis", variant, kind="StatefulSet")
        environment = k8s_env(server)
        assert (environment["REDIS_MAXMEMORY"], environment["REDIS_MAXMEMORY_POLICY"]) == (
            limit,
            policy,
        ), variant
        assert server["resources"]["limits"]["memory"] == "256Mi", variant
    mebibytes = int(limit.removesuffix("mb"))
    assert limit.endswith("mb")
    assert k8s_container("redis")["resources"]["limits"]["memory"] == "256Mi"
    assert compose()["services"]["redis"]["mem_limit"] == "256m"
    assert mebibytes <= 256 * 0.7, "leave Redis room for fragmentation and client buffers"


def test_compose_reads_defaults_env():
    """Tests that compose's .env is deploy/defaults.env itself, not a copy."""
    env_file = ROOT / ".env"
    assert env_file.is_symlink()
    assert env_file.resolve() == (ROOT / "deploy" / "defaults.env").resolve()


def test_k8s_nginx_locations_are_the_shared_ones():
    """Tests that k8s's copy of the shared nginx locations (kustomize reads only below
    k8s/) is identical to deploy/nginx/chat-locations.conf."""
    assert (ROOT / "k8s" / "base" / "nginx" / "chat-locations.conf").read_text() == NGINX_LOCATIONS
    assert k8s_config_file("nginx-config", "chat-locations.conf") == NGINX_LOCATIONS


def test_every_variable_given_to_the_service_is_one_it_reads():
    """Tests that local cluster, compose and k8s set only variables the settings read."""
    read = service_settings_read()
    local = set(load_local_cluster().SERVICE_SETTINGS) | {
        "CHAT_REPLICA_ID",
        "CHAT_DRAIN_SECONDS",
        "REDIS_URLS",
        "DJANGO_SECRET_KEY",
    }
    composed = set(compose()["services"]["chat"]["environment"])
    composed_ha = set(compose_ha()["services"]["chat"]["environment"])
    kubernetes = {e["name"] for e in k8s_container("chat")["env"]}
    kubernetes_ha = set(k8s_env(k8s_container("chat", K8S_SENTINEL)))
    kubernetes_shards = set(k8s_env(k8s_container("chat", K8S_SHARDS)))
    for runtime, names in (
        ("local", local),
        ("compose", composed),
        ("compose HA", composed_ha),
        ("k8s", kubernetes),
        ("k8s redis-sentinel", kubernetes_ha),
        ("k8s redis-shards", kubernetes_shards),
    ):
        unread = names - read
        assert not unread, f"{runtime} sets variables the service never reads: {unread}"


def test_every_runtime_waits_out_the_drain():
    """Tests that defaults.env's CHAT_DRAIN_SECONDS is the service's own default, and that
    supervisord, compose and Kubernetes wait longer than a drain and its cleanup before
    they kill a replica."""
    code = (
        "import chatsite.settings as s, chatsite.serve as v;"
        "print(s.CHAT_DRAIN_SECONDS, v.CLEANUP_SECONDS)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={"PATH": "/usr/bin:/bin", "DJANGO_SECRET_KEY": "k"},
        cwd=ROOT / "services" / "chat",
        capture_output=True,
        text=True,
        check=True,
    )
    service_default, cleanup = map(int, result.stdout.split())
    drain = int(defaults()["CHAT_DRAIN_SECONDS"])
    assert service_default == drain

    local = load_local_cluster()
    assert cleanup == local.DRAIN_CLEANUP_SECONDS
    chat = compose()["services"]["chat"]
    assert chat["environment"]["CHAT_DRAIN_SECONDS"] == "${CHAT_DRAIN_SECONDS:?}"
    assert int(chat["stop_grace_period"].removesuffix("s")) > drain + cleanup
    pod = k8s_object("Deployment", "chat")["spec"]["template"]["spec"]
    container = k8s_container("chat")
    k8s_drain = int(next(e["value"] for e in container["env"] if e["name"] == "CHAT_DRAIN_SECONDS"))
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + k8s_drain + cleanup


def test_images_are_pinned_in_one_place():
    """Tests that compose takes its images from defaults.env and k8s repeats the same ones."""
    services = compose()["services"]
    assert services["redis"]["build"]["args"]["REDIS_IMAGE"].startswith("${REDIS_IMAGE:?")
    redis_dockerfile = (ROOT / "deploy" / "redis" / "Dockerfile").read_text()
    assert f"ARG REDIS_IMAGE={defaults()['REDIS_IMAGE']}" in redis_dockerfile
    for variant in (K8S_SENTINEL, K8S_SHARDS):
        variant_images = {
            c["image"]
            for o in kustomize(variant)
            if o["kind"] == "StatefulSet"
            for c in o["spec"]["template"]["spec"]["containers"]
        }
        assert variant_images == {defaults()["REDIS_IMAGE"]}, variant
    for service, variable in (
        ("nginx", "NGINX_IMAGE"),
        ("prometheus", "PROMETHEUS_IMAGE"),
        ("chat", "CHAT_IMAGE"),
    ):
        assert services[service]["image"].startswith("${" + variable + ":?"), service
    assert services["chat"]["build"]["args"]["PYTHON_IMAGE"].startswith("${PYTHON_IMAGE:?")
    assert f"ARG PYTHON_IMAGE={defaults()['PYTHON_IMAGE']}" in DOCKERFILE
    for name in ("chat", "nginx", "redis", "prometheus"):
        assert k8s_container(name)["image"] == defaults()[f"{name.upper()}_IMAGE"], name
    for variable in (
        "PYTHON_IMAGE",
        "NGINX_IMAGE",
        "REDIS_IMAGE",
        "PROMETHEUS_IMAGE",
        "CHAT_IMAGE",
    ):
        image = defaults()[variable]
        tag = image.rsplit(":", 1)[1]
        assert re.fullmatch(r"v?\d+\.\d+\.\d+(-[a-z0-9-]+)?", tag), image


def test_every_nginx_limits_websockets_per_address_as_defaults_env_says():
    """Tests that the local cluster renders defaults.env's LB_WS_* into nginx.conf and
    that compose's and Kubernetes' nginx configs repeat the same values, answering 429."""
    connections = defaults()["LB_WS_CONNECTIONS_PER_ADDRESS"]
    rate = defaults()["LB_WS_HANDSHAKES_PER_SECOND"]
    burst = defaults()["LB_WS_HANDSHAKE_BURST"]
    for runtime, text in (
        ("local", local_nginx_conf()),
        ("compose", NGINX_COMPOSE),
        ("k8s", k8s_config_file("nginx-config", "nginx.conf")),
    ):
        assert f"limit_conn ws_sockets {connections};" in text, runtime
        assert f"zone=ws_handshakes:10m rate={rate}r/s;" in text, runtime
        assert f"limit_req zone=ws_handshakes burst={burst} nodelay;" in text, runtime
        assert "limit_conn_status 429;" in text, runtime
        assert "limit_req_status 429;" in text, runtime
    overridden = local_nginx_conf({"LB_WS_CONNECTIONS_PER_ADDRESS": "7"})
    assert "limit_conn ws_sockets 7;" in overridden


def test_the_sentinel_settings_are_the_same_in_every_runtime():
    """Tests that compose's HA file and the Kubernetes variant use defaults.env's Sentinel
    port, master names, ack timeout and Redis port, give every Redis server and Sentinel
    the same Sentinels, and persist with the AOF (everysec), and that the base compose
    Redis follows REDIS_APPENDONLY."""
    settings = defaults()
    sentinel_port, masters = settings["REDIS_SENTINEL_PORT"], settings["REDIS_SENTINEL_MASTERS"]
    assert (settings["REDIS_SENTINELS"], settings["REDIS_ACK_REPLICAS"]) == ("", "0")
    assert settings["REDIS_APPENDONLY"] == "no"
    assert compose()["services"]["redis"]["environment"]["REDIS_APPENDONLY"] == (
        "${REDIS_APPENDONLY:?}"
    )
    assert 'no) set -- "$@" --appendonly no ;;' in REDIS_START
    assert 'everysec) set -- "$@" --appendonly yes --appendfsync everysec ;;' in REDIS_START

    services = compose_ha()["services"]
    sentinels = [f"sentinel-{n}:{sentinel_port}" for n in (1, 2, 3)]
    servers = ("redis", "redis-replica", "redis-replica-2")
    for name in ("chat", *servers, "sentinel-1", "sentinel-2", "sentinel-3"):
        environment = services[name]["environment"]
        assert environment["REDIS_SENTINELS"] == ",".join(sentinels), name
        assert environment["REDIS_SENTINEL_MASTERS"] == masters, name
    for name in ("redis", "redis-replica", "redis-replica-2"):
        assert services[name]["environment"]["REDIS_APPENDONLY"] == "everysec"
        assert services[name]["environment"]["REDIS_PORT"] == settings["REDIS_PORT"]
    for name in ("sentinel-1", "sentinel-2", "sentinel-3"):
        assert services[name]["environment"]["REDIS_SENTINEL_PORT"] == sentinel_port
    assert (
        services["chat"]["environment"]["REDIS_ACK_TIMEOUT_MS"]
        == (settings["REDIS_ACK_TIMEOUT_MS"])
    )

    k8s_sentinels = ",".join(
        f"redis-sentinel-{n}.redis-sentinel:{sentinel_port}" for n in (0, 1, 2)
    )
    chat = k8s_env(k8s_container("chat", K8S_SENTINEL))
    server = k8s_container("redis", K8S_SENTINEL, kind="StatefulSet")
    sentinel = k8s_container("redis-sentinel", K8S_SENTINEL, kind="StatefulSet")
    for name, environment in (
        ("chat", chat),
        ("redis", k8s_env(server)),
        ("sentinel", k8s_env(sentinel)),
    ):
        assert environment["REDIS_SENTINELS"] == k8s_sentinels, name
        assert environment["REDIS_SENTINEL_MASTERS"] == masters, name
    assert chat["REDIS_ACK_TIMEOUT_MS"] == settings["REDIS_ACK_TIMEOUT_MS"]
    assert k8s_env(server)["REDIS_APPENDONLY"] == "everysec"
    assert k8s_env(server)["REDIS_PORT"] == settings["REDIS_PORT"]
    assert server["ports"][0]["containerPort"] == port("REDIS_PORT")
    assert k8s_env(sentinel)["REDIS_SENTINEL_PORT"] == sentinel_port
    assert sentinel["ports"][0]["containerPort"] == int(sentinel_port)
    assert sentinel["readinessProbe"]["exec"]["command"] == [
        "sh",
        "/scripts/redis-start.sh",
        "sentinel-ready",
    ]
    assert k8s_env(sentinel)["REDIS_HOSTS"].count(",") == 2
    assert k8s_object("Service", "redis-sentinel", K8S_SENTINEL)["spec"]["ports"][0]["port"] == int(
        sentinel_port
    )
    policy = k8s_object("NetworkPolicy", "sentinel-from-chat-redis-and-sentinel", K8S_SENTINEL)
    assert policy["spec"]["ingress"][0]["ports"] == [{"port": int(sentinel_port)}]
    policy = k8s_object("NetworkPolicy", "redis-from-redis-and-sentinel", K8S_SENTINEL)
    assert policy["spec"]["ingress"][0]["ports"] == [{"port": int(settings["REDIS_PORT"])}]


@pytest.mark.parametrize("variant", [K8S_SENTINEL, K8S_SHARDS])
def test_k8s_redis_start_script_is_the_shared_one(variant):
    """Tests that k8s's one copy of deploy/redis/redis-start.sh (kustomize reads only below
    k8s/) is identical to it, and is the one each Redis variant's ConfigMap carries."""
    copy = (ROOT / "k8s" / "components" / "redis-start" / "redis-start.sh").read_text()
    assert copy == REDIS_START
    scripts = next(
        o
        for o in kustomize(variant)
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("redis-scripts")
    )
    assert scripts["data"]["redis-start.sh"] == REDIS_START


@pytest.mark.parametrize("variant", [K8S_SENTINEL, K8S_SHARDS, K8S_GATEWAY])
def test_k8s_variants_repeat_the_base_namespace(variant):
    """Tests that each variant gives its own objects the base's namespace."""
    base = (ROOT / "k8s" / "base" / "kustomization.yaml").read_text()
    assert "namespace: chat-cluster" in base
    assert {
        o["metadata"].get("namespace") for o in kustomize(variant) if o["kind"] != "Namespace"
    } == {"chat-cluster"}
