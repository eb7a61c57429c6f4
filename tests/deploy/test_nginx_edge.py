"""The public edge in every runtime's nginx config (docs/operations/edge.md): only the
chat is proxied, workers are counted explicitly, and a stopping nginx lets go of its
WebSockets within the time its runtime gives it."""

import re

import pytest

from harness.deploy_files import (
    NGINX_COMPOSE,
    NGINX_LOCATIONS,
    ROOT,
    compose,
    defaults,
    k8s_config_file,
    k8s_container,
    k8s_object,
    local_nginx_conf,
)

# (modifier, pattern, body) of each location of the shared file, in order.
LOCATION_BLOCKS = re.findall(
    r"^location\s+(=|~|\^~)?\s*(\S+)\s*\{(.*?)^\}", NGINX_LOCATIONS, re.M | re.S
)


def chosen_location(path):
    """The body of the location nginx picks for a path: an exact match, else the longest
    prefix unless a regex (in order) matches first."""
    for modifier, pattern, body in LOCATION_BLOCKS:
        if modifier == "=" and pattern == path:
            return body
    prefixes = [(p, m, b) for m, p, b in LOCATION_BLOCKS if m in ("", "^~") and path.startswith(p)]
    prefix, modifier, body = max(prefixes, key=lambda found: len(found[0]))
    if modifier != "^~":
        for regex_modifier, pattern, regex_body in LOCATION_BLOCKS:
            if regex_modifier == "~" and re.search(pattern, path):
                return regex_body
    return body


@pytest.mark.parametrize("name", ["LIVENESS_PATH", "READINESS_PATH", "METRICS_PATH"])
def test_metrics_and_probes_are_not_proxied(name):
    """Tests that nginx answers the replicas' probe and metrics paths itself, with 404."""
    body = chosen_location(defaults()[name])
    assert "proxy_pass" not in body
    assert "return 404;" in body


@pytest.mark.parametrize(
    "path", ["/", "/chat/", "/chat/lobby/", "/static/chat/room.js", "/ws/chat/lobby/"]
)
def test_the_chat_is_proxied(path):
    """Tests that nginx proxies the chat's pages, static files and WebSockets to the replicas."""
    assert "proxy_pass http://$chat_backend;" in chosen_location(path)


def nginx_configs():
    return {
        "local": local_nginx_conf(),
        "compose": NGINX_COMPOSE,
        "k8s": k8s_config_file("nginx-config", "nginx.conf"),
    }


def directive(text, name):
    return re.search(rf"^\s*{name}\s+(\S+);", text, re.M).group(1)


@pytest.mark.parametrize("runtime", ["local", "compose", "k8s"])
def test_workers_and_their_files_are_explicit(runtime):
    """Tests that every nginx counts its workers itself ("auto" counts a node's CPUs, not
    a container's) and may open a file per connection."""
    text = nginx_configs()[runtime]
    assert directive(text, "worker_processes").isdigit()
    assert int(directive(text, "worker_rlimit_nofile")) > int(directive(text, "worker_connections"))


def shutdown_seconds(text):
    return int(directive(text, "worker_shutdown_timeout").removesuffix("s"))


def test_a_stopping_nginx_closes_its_websockets_before_it_is_killed():
    """Tests that worker_shutdown_timeout ends within compose's stop_grace_period and
    Kubernetes' grace period after the preStop pause."""
    configs = nginx_configs()
    assert shutdown_seconds(configs["local"]) > 0
    grace = int(compose()["services"]["nginx"]["stop_grace_period"].removesuffix("s"))
    assert shutdown_seconds(configs["compose"]) < grace
    pod = k8s_object("Deployment", "nginx")["spec"]["template"]["spec"]
    pre_stop = int(k8s_container("nginx")["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert shutdown_seconds(configs["k8s"]) < pod["terminationGracePeriodSeconds"] - pre_stop


def test_the_copies_of_the_nginx_config_are_the_ones_tested():
    """Tests that k8s/base/nginx/nginx.conf is the file the ConfigMap tested here carries."""
    assert (ROOT / "k8s" / "base" / "nginx" / "nginx.conf").read_text() == nginx_configs()["k8s"]
