"""The container and Kubernetes files: valid, pinned, non-root, lint- and scan-clean."""

import json
import os
import re
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest

from .deploy import ROOT, compose, kustomize

# The newest schemas kubernetes-validate ships, and the oldest release still supported.
KUBERNETES_VERSIONS = [kubernetes_validate.latest_version(), "1.32.0"]
VARIANTS = ["k8s", "k8s/variants/sync-consumer"]
VENV_BIN = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin"
SCAN_BIN = ROOT / ".venv-scan" / "bin"


def workloads(path):
    return [o for o in kustomize(path) if o["kind"] == "Deployment"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", VARIANTS)
def test_every_object_validates_against_the_kubernetes_schemas(path, version):
    """Tests that every rendered object validates strictly (no unknown fields)."""
    objects = kustomize(path)
    assert len(objects) >= 20
    for manifest in objects:
        kubernetes_validate.validate(manifest, version, strict=True)


def test_schema_validation_can_fail():
    """Tests that the validation above rejects a misspelt field."""
    deployment = {**workloads("k8s")[0]}
    deployment["spec"] = {**deployment["spec"], "replica": 3}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


def test_the_variant_changes_only_the_consumer():
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
    kinds = {(o["kind"], o["metadata"]["name"]) for o in kustomize("k8s")}
    for expected in [
        ("Namespace", "chat-cluster"),
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


def test_only_chat_pods_reach_redis():
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
    result = subprocess.run(
        [VENV_BIN / "hadolint", ROOT / "services" / "chat" / "Dockerfile"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_checkov_finds_nothing(tmp_path):
    """Tests the Dockerfile and the rendered k8s objects with checkov; skips are in
    .checkov.yaml, each with its reason."""
    rendered = tmp_path / "k8s.yaml"
    rendered.write_text(
        subprocess.run(
            ["kubectl", "kustomize", ROOT / "k8s"], capture_output=True, text=True, check=True
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
    environment = {k: v for k, v in os.environ.items() if k != "DJANGO_SECRET_KEY"}
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0:
        installed = subprocess.run(
            [ROOT / "deploy" / "docker" / "install-compose.sh"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        environment.update(line.split("=", 1) for line in installed.splitlines() if "=" in line)
    return environment


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
