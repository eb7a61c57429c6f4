"""What the deployment files say, read once for the static tests."""

import importlib.util
import json
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


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
def kustomize(path="k8s"):
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / path)], capture_output=True, text=True, check=True
    ).stdout
    return [document for document in yaml.safe_load_all(rendered) if document]


def k8s_object(kind, name, path="k8s"):
    return next(o for o in kustomize(path) if o["kind"] == kind and o["metadata"]["name"] == name)


def k8s_container(name, path="k8s"):
    deployment = k8s_object("Deployment", name, path)
    return deployment["spec"]["template"]["spec"]["containers"][0]


def k8s_config_file(config_map_prefix, file_name):
    config_map = next(
        o
        for o in kustomize()
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith(config_map_prefix)
    )
    return config_map["data"][file_name]


@cache
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


@cache
def load_local_cluster():
    """deploy/local/config.py, the local cluster's settings and generated files: a module
    beside a script, not in a package, so loaded by its path; its one sibling import,
    network.py, is found as the script finds it, in the script's directory."""
    path = ROOT / "deploy" / "local" / "config.py"
    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))
    spec = importlib.util.spec_from_file_location("local_cluster_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nginx_listen_ports(text):
    return {int(port) for port in re.findall(r"^\s*listen\s+(?:[\d.]+:)?(\d+)", text, re.M)}
