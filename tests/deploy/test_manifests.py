"""The container and Kubernetes files: valid, pinned, non-root, lint- and scan-clean."""

import json
import os
import re
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from harness import deploy_files
from harness.deploy_files import (
    K8S_GATEWAY,
    K8S_SENTINEL,
    K8S_SHARDS,
    KUBERNETES_VERSIONS,
    ROOT,
    compose,
    compose_ha,
    k8s_config_file,
    k8s_env,
    k8s_object,
    kustomize,
    validate_k8s,
)

VARIANTS = ["k8s", "k8s/variants/sync-consumer", K8S_SENTINEL, K8S_SHARDS, K8S_GATEWAY]
VENV_BIN = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin"
SCAN_BIN = ROOT / ".venv-scan" / "bin"


def workloads(path):
    return [o for o in kustomize(path) if o["kind"] in ("Deployment", "StatefulSet")]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", VARIANTS)
def test_every_object_validates_against_the_kubernetes_schemas(path, version):
    """Tests that every rendered object validates strictly (no unknown fields)."""
    objects = kustomize(path)
    assert len(objects) >= 20
    for manifest in objects:
        validate_k8s(manifest, version)


def test_schema_validation_can_fail():
    """Tests that the validation above rejects a misspelt field."""
    deployment = {**workloads("k8s")[0]}
    deployment["spec"] = {**deployment["spec"], "replica": 3}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


def test_the_variant_changes_only_the_consumer():
    """Tests that k8s/variants/sync-consumer differs from the base only in the chat
    Deployment's CHAT_CONSUMER=sync."""
    base, variant = kustomize("k8s"), kustomize("k8s/variants/sync-consumer")
    assert [o["metadata"]["name"] for o in base] == [o["metadata"]["name"] for o in variant]
    changed = [
        (a["kind"], a["metadata"]["name"]) for a, b in zip(base, variant, strict=True) if a != b
    ]
    assert changed == [("Deployment", "chat")]
    env = {
        e["name"]: e.get("value")
        for e in next(
            o for o in variant if o["kind"] == "Deployment" and o["metadata"]["name"] == "chat"
        )["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["CHAT_CONSUMER"] == "sync"


def test_the_expected_objects_are_there():
    """Tests that the base renders every expected object, with an autoscaling/v2 HPA."""
    kinds = {(o["kind"], o["metadata"]["name"]) for o in kustomize("k8s")}
    for expected in [
        ("Deployment", "chat"),
        ("Service", "chat"),
        ("Service", "chat-replicas"),
        ("HorizontalPodAutoscaler", "chat"),
        ("PodDisruptionBudget", "chat"),
        ("Deployment", "nginx"),
        ("Service", "nginx"),
        ("Deployment", "redis"),
        ("Service", "redis"),
        ("Deployment", "prometheus"),
        ("Service", "prometheus"),
        ("NetworkPolicy", "default-deny-ingress"),
        ("NetworkPolicy", "redis-from-chat"),
    ]:
        assert expected in kinds
    hpa = next(o for o in kustomize("k8s") if o["kind"] == "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"


@pytest.mark.parametrize("name", ["chat", "nginx"])
def test_the_chat_and_nginx_pods_spread_over_nodes_and_zones(name):
    """Tests pods spread evenly over nodes (a hard constraint) and zones (preferred), each
    counted within one rollout."""
    pod = k8s_object("Deployment", name)["spec"]["template"]["spec"]
    constraints = {c["topologyKey"]: c for c in pod["topologySpreadConstraints"]}
    assert set(constraints) == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    assert constraints["kubernetes.io/hostname"]["whenUnsatisfiable"] == "DoNotSchedule"
    # Tainted nodes the pods cannot use must not count as empty domains.
    assert constraints["kubernetes.io/hostname"]["nodeTaintsPolicy"] == "Honor"
    for constraint in constraints.values():
        assert constraint["maxSkew"] == 1
        assert constraint["labelSelector"]["matchLabels"] == {"app.kubernetes.io/name": name}
        assert constraint["matchLabelKeys"] == ["pod-template-hash"]


@pytest.mark.parametrize("path", VARIANTS)
def test_no_kustomization_owns_the_namespace(path):
    """Tests that `kubectl delete -k` cannot delete the namespace, and with it the Secret
    made by hand and the PVCs."""
    assert not [o for o in kustomize(path) if o["kind"] == "Namespace"]


def test_the_namespace_file_is_the_kustomizations_and_restricted():
    namespace = yaml.safe_load((ROOT / "k8s" / "namespace.yaml").read_text())
    base = yaml.safe_load((ROOT / "k8s" / "base" / "kustomization.yaml").read_text())
    assert namespace["metadata"]["name"] == base["namespace"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("path", VARIANTS)
def test_a_workload_an_hpa_scales_sets_no_replica_count(path):
    """Tests that no apply resets what the HorizontalPodAutoscaler scaled to."""
    objects = kustomize(path)
    scaled = [
        o["spec"]["scaleTargetRef"] for o in objects if o["kind"] == "HorizontalPodAutoscaler"
    ]
    assert scaled
    for target in scaled:
        workload = next(
            o
            for o in objects
            if (o["kind"], o["metadata"]["name"]) == (target["kind"], target["name"])
        )
        assert "replicas" not in workload["spec"], f"{path}: {target['name']} sets replicas"


def test_prometheus_scrapes_replicas_while_they_drain():
    """Tests that the headless Service Prometheus finds the replicas by lists not-ready
    (draining) pods as well."""
    service = k8s_object("Service", "chat-replicas")["spec"]
    assert service["clusterIP"] == "None"
    assert service["publishNotReadyAddresses"] is True
    scrape = k8s_config_file("prometheus-config", "prometheus.yml")
    assert "chat-replicas.chat-cluster.svc.cluster.local" in scrape


def test_only_chat_pods_reach_redis():
    """Tests that the network policy lets only the chat pods reach Redis."""
    policy = next(o for o in kustomize("k8s") if o["metadata"]["name"] == "redis-from-chat")
    assert policy["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "redis"}
    assert policy["spec"]["ingress"][0]["from"] == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "chat"}}}
    ]


@pytest.mark.parametrize("path", VARIANTS)
def test_every_k8s_container_is_hardened(path):
    """Tests non-root, read-only root, no capabilities, probes and resources on every container."""
    for deployment in workloads(path):
        pod = deployment["spec"]["template"]["spec"]
        name = deployment["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert (
            pod["securityContext"]["runAsUser"] >= 10000
            or pod["securityContext"]["runAsUser"] == 65534
        ), name
        assert pod["automountServiceAccountToken"] is False, name
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            assert container["readinessProbe"], name
            assert container["livenessProbe"], name
            assert container["resources"]["requests"], name
            assert container["resources"]["limits"], name
            assert not container["image"].endswith(":latest"), name
    chat = next(d for d in workloads(path) if d["metadata"]["name"] == "chat")
    spec = chat["spec"]["template"]["spec"]
    assert spec["containers"][0]["lifecycle"]["preStop"]
    assert spec["terminationGracePeriodSeconds"] > 5
    probes = spec["containers"][0]
    assert probes["readinessProbe"]["httpGet"]["path"] != probes["livenessProbe"]["httpGet"]["path"]


def test_no_compose_service_runs_as_root():
    """Tests that every compose service has a non-root user (the images built here set
    theirs in their Dockerfiles)."""
    built = {"chat": ROOT / "services" / "chat", "locust": ROOT / "loadtests"}
    for name, service in compose()["services"].items():
        user = service.get("user")
        if name in built:
            assert user is None, name
            assert service["build"]["context"] == str(built[name].relative_to(ROOT)), name
            assert re.search(
                r"^USER 100\d\d:100\d\d$", (built[name] / "Dockerfile").read_text(), re.M
            ), name
            continue
        if "build" in service:
            # Redis: the pinned image with a script and a /data its user owns.
            dockerfile = (ROOT / service["build"]["context"] / "Dockerfile").read_text()
            assert re.search(f"^USER {user}$", dockerfile, re.M), name
        assert user, name
        assert user.split(":")[0] not in ("0", "root"), name
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert service["mem_limit"], name
        assert service["healthcheck"]["test"], name


def test_compose_publishes_only_the_load_balancer_and_prometheus():
    """Tests published ports: nginx and Prometheus, and Locust only in its profile."""
    services = compose()["services"]
    published = {
        name
        for name, service in services.items()
        if "ports" in service and "profiles" not in service
    }
    assert published == {"nginx", "prometheus"}
    assert services["locust"]["profiles"] == ["loadtest"]
    for name in published:
        assert all(p.startswith("127.0.0.1:") for p in compose()["services"][name]["ports"])
    for name, service in compose()["services"].items():
        assert "container_name" not in service
        for dependency in service.get("depends_on", {}).values():
            assert dependency == {"condition": "service_healthy"}, name


def test_dockerfile_passes_hadolint():
    """Tests that the chat image's Dockerfile passes hadolint."""
    result = subprocess.run(
        [VENV_BIN / "hadolint", ROOT / "services" / "chat" / "Dockerfile"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", ["k8s", K8S_SENTINEL, K8S_SHARDS, K8S_GATEWAY])
def test_checkov_finds_nothing(tmp_path, path):
    """Tests the Dockerfile and the rendered k8s objects with checkov; skips are in
    .checkov.yaml, each with its reason."""
    rendered = tmp_path / "k8s.yaml"
    rendered.write_text(
        subprocess.run(
            ["kubectl", "kustomize", ROOT / path], capture_output=True, text=True, check=True
        ).stdout
    )
    result = subprocess.run(
        [
            SCAN_BIN / "checkov",
            "--config-file",
            ROOT / ".checkov.yaml",
            "--file",
            rendered,
            "--file",
            ROOT / "services" / "chat" / "Dockerfile",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "kubernetes scan results" in result.stdout
    assert "dockerfile scan results" in result.stdout


@pytest.fixture(scope="module")
def compose_environment():
    """Compose v2 as a CLI plugin (from PyPI); `config` needs no engine."""
    return deploy_files.compose_environment()


def test_docker_compose_config_accepts_the_file(compose_environment):
    """Tests that Compose itself accepts docker-compose.yml, with 3 chat replicas."""
    result = subprocess.run(
        ["docker", "compose", "config", "--format", "json"],
        env={**compose_environment, "DJANGO_SECRET_KEY": "k"},
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert config["services"]["chat"]["deploy"]["replicas"] == 3
    assert config["services"]["nginx"]["ports"][0]["published"] == "8080"
    assert "locust" not in config["services"]  # only with --profile loadtest
    with_locust = subprocess.run(
        ["docker", "compose", "--profile", "loadtest", "config", "--format", "json"],
        env={**compose_environment, "DJANGO_SECRET_KEY": "k"},
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    assert "locust" in json.loads(with_locust.stdout)["services"]


def test_docker_compose_requires_the_secret_key(compose_environment):
    """Tests that a missing DJANGO_SECRET_KEY stops compose with a clear message."""
    result = subprocess.run(
        ["docker", "compose", "config", "--quiet"],
        env=compose_environment,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode != 0
    assert "set DJANGO_SECRET_KEY" in result.stderr


def test_the_sentinel_variant_replaces_only_redis_and_the_chat_settings():
    """Tests that k8s/variants/redis-sentinel keeps every base object but the single Redis
    (Deployment and Service) and the chat Deployment, which it points at the Sentinels."""
    base = {(o["kind"], o["metadata"]["name"]): o for o in kustomize("k8s")}
    variant = {(o["kind"], o["metadata"]["name"]): o for o in kustomize(K8S_SENTINEL)}
    removed = set(base) - set(variant)
    assert removed == {("Deployment", "redis"), ("Service", "redis")}
    changed = {key for key in base if key in variant and base[key] != variant[key]}
    assert changed == {("Deployment", "chat")}
    added = set(variant) - set(base)
    assert {(kind, name) for kind, name in added if kind != "ConfigMap"} == {
        ("StatefulSet", "redis"),
        ("Service", "redis-headless"),
        ("PodDisruptionBudget", "redis"),
        ("ServiceAccount", "redis-sentinel"),
        ("StatefulSet", "redis-sentinel"),
        ("Service", "redis-sentinel"),
        ("PodDisruptionBudget", "redis-sentinel"),
        ("NetworkPolicy", "redis-from-redis-and-sentinel"),
        ("NetworkPolicy", "sentinel-from-chat-redis-and-sentinel"),
    }
    env = k8s_env(variant[("Deployment", "chat")]["spec"]["template"]["spec"]["containers"][0])
    assert "REDIS_URLS" not in env
    assert env["REDIS_ACK_REPLICAS"] == "1"
    assert env["REDIS_SENTINELS"].count(":26379") == 3


def test_the_sentinel_variant_persists_replicates_and_keeps_a_quorum():
    """Tests 2 Redis pods with a volume each and the AOF, 3 Sentinels, headless Services
    that publish pods before they are ready, disruption budgets that keep a server and the
    quorum, and pods spread over nodes."""
    redis = k8s_object("StatefulSet", "redis", K8S_SENTINEL)["spec"]
    sentinel = k8s_object("StatefulSet", "redis-sentinel", K8S_SENTINEL)["spec"]
    assert redis["replicas"] == 3
    assert sentinel["replicas"] == 3
    assert redis["serviceName"] == "redis-headless"
    assert sentinel["serviceName"] == "redis-sentinel"
    claim = redis["volumeClaimTemplates"][0]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    server = redis["template"]["spec"]["containers"][0]
    assert {"name": "data", "mountPath": "/data"} in server["volumeMounts"]
    assert k8s_env(server)["REDIS_APPENDONLY"] == "everysec"
    assert redis["template"]["spec"]["securityContext"]["fsGroup"] == 10999
    for name in ("redis-headless", "redis-sentinel"):
        service = k8s_object("Service", name, K8S_SENTINEL)["spec"]
        assert service["clusterIP"] == "None"
        assert service["publishNotReadyAddresses"] is True
    assert k8s_object("PodDisruptionBudget", "redis", K8S_SENTINEL)["spec"]["maxUnavailable"] == 1
    assert (
        k8s_object("PodDisruptionBudget", "redis-sentinel", K8S_SENTINEL)["spec"]["minAvailable"]
        == 2
    )
    for spec in (redis, sentinel):
        pod = spec["template"]["spec"]
        assert pod["affinity"]["podAntiAffinity"], spec["serviceName"]
        assert pod["topologySpreadConstraints"], spec["serviceName"]


def test_the_sentinel_variant_lets_the_pods_reach_each_other():
    """Tests the added network policies: Redis from Redis and the Sentinels, the Sentinels
    from chat, Redis and each other."""
    policies = {
        o["metadata"]["name"]: o["spec"]
        for o in kustomize(K8S_SENTINEL)
        if o["kind"] == "NetworkPolicy"
    }

    def sources(name):
        return {
            peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
            for peer in policies[name]["ingress"][0]["from"]
        }

    assert sources("redis-from-chat") == {"chat"}
    assert sources("redis-from-redis-and-sentinel") == {"redis", "redis-sentinel"}
    assert sources("sentinel-from-chat-redis-and-sentinel") == {
        "chat",
        "redis",
        "redis-sentinel",
    }


def test_compose_ha_adds_two_replicas_and_three_sentinels():
    """Tests docker-compose.ha.yml as Compose renders it over docker-compose.yml: two
    replicas and 3 Sentinels, hardened like the rest, the servers persisting on volumes
    of their own, and the chat replicas waiting for them all."""
    services = compose_ha()["services"]
    assert set(services) == set(compose()["services"]) - {"locust"} | {
        "redis-replica",
        "redis-replica-2",
        "sentinel-1",
        "sentinel-2",
        "sentinel-3",
    }
    servers = {name: services[name] for name in ("redis", "redis-replica", "redis-replica-2")}
    sentinels = {name: services[name] for name in ("sentinel-1", "sentinel-2", "sentinel-3")}
    for name, service in {**servers, **sentinels}.items():
        assert service["user"] == "10999:10999", name
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert service["healthcheck"]["test"], name
        assert service["environment"]["REDIS_SELF"] == name
        assert service["environment"]["REDIS_HOSTS"] == "redis,redis-replica,redis-replica-2"
    for name, service in servers.items():
        assert service["command"] == ["redis-start.sh", "server"]
        assert service["environment"]["REDIS_APPENDONLY"] == "everysec"
        assert service["mem_limit"] == services["redis"]["mem_limit"]
        assert [(v["type"], v["source"], v["target"]) for v in service["volumes"]] == [
            ("volume", f"{name}-data", "/data")
        ]
    for service in sentinels.values():
        assert service["command"] == ["redis-start.sh", "sentinel"]
        assert [(v["type"], v["target"]) for v in service["volumes"]] == [("tmpfs", "/data")]
    chat = services["chat"]
    assert set(chat["depends_on"]) == {"redis", *servers, *sentinels}
    for name, service in services.items():
        for dependency in service.get("depends_on", {}).values():
            assert dependency["condition"] == "service_healthy", name
    assert chat["environment"]["REDIS_ACK_REPLICAS"] == "1"
    assert chat["environment"]["REDIS_SENTINELS"] == ",".join(f"{name}:26379" for name in sentinels)
