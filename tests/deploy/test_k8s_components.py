"""The Kubernetes extensions: the gateway component and its example overlay, the Redis
shards variant and the connection-autoscaling component (docs/operations/kubernetes.md)."""

import re
import subprocess

import jsonschema
import pytest
import yaml

from chatsite.variables import VARIABLES
from harness.deploy_files import (
    K8S_GATEWAY,
    K8S_SHARDS,
    KUBERNETES_VERSIONS,
    ROOT,
    defaults,
    gateway_api_validator,
    k8s_config_file,
    k8s_env,
    k8s_object,
    kustomize,
    kustomize_with,
    service_series,
    validate_k8s,
)

AUTOSCALING = ROOT / "k8s" / "components" / "connection-autoscaling"


def without_hash(manifest):
    """(kind, name) with a generated ConfigMap's hash suffix dropped."""
    name = manifest["metadata"]["name"]
    if manifest["kind"] == "ConfigMap":
        name = name.rsplit("-", 1)[0]
    return manifest["kind"], name


def test_the_httproute_validation_can_fail():
    """Tests that the vendored Gateway API schema, made strict, rejects a misspelt field and
    a timeout that is not a Gateway API duration."""
    route = k8s_object("HTTPRoute", "chat", K8S_GATEWAY)
    validator = gateway_api_validator(route["apiVersion"], route["kind"])
    validator.validate(route)
    rule = route["spec"]["rules"][0]
    for bad_rule in (
        {**rule, "timeout": rule["timeouts"]},
        {**rule, "timeouts": {"request": "1d"}},
    ):
        bad = {**route, "spec": {**route["spec"], "rules": [bad_rule]}}
        with pytest.raises(jsonschema.ValidationError):
            validator.validate(bad)


def test_the_gateway_overlay_routes_its_hostname_to_nginx():
    """Tests k8s/overlays/example: an HTTPRoute from chat.example.com to nginx's Service port,
    WebSockets without a timeout, the hostname first in DJANGO_ALLOWED_HOSTS, nginx trusting
    X-Forwarded-For, and nothing else of the base changed."""
    base = {without_hash(o): o for o in kustomize("k8s")}
    overlay = {without_hash(o): o for o in kustomize(K8S_GATEWAY)}
    assert set(overlay) - set(base) == {("HTTPRoute", "chat")}
    assert set(base) - set(overlay) == set()
    changed = {key for key in base if base[key] != overlay[key]}
    assert changed == {
        ("Deployment", "chat"),
        ("Deployment", "nginx"),
        ("ConfigMap", "nginx-config"),
    }

    route = overlay[("HTTPRoute", "chat")]
    assert route["metadata"]["namespace"] == "chat-cluster"
    assert route["spec"]["hostnames"] == ["chat.example.com"]
    assert route["spec"]["parentRefs"][0]["kind"] == "Gateway"
    nginx_port = overlay[("Service", "nginx")]["spec"]["ports"][0]["port"]
    rules = {r["matches"][0]["path"]["value"]: r for r in route["spec"]["rules"]}
    assert set(rules) == {"/ws/", "/"}
    for rule in rules.values():
        assert rule["backendRefs"] == [{"kind": "Service", "name": "nginx", "port": nginx_port}]
    assert rules["/ws/"]["timeouts"] == {"request": "0s", "backendRequest": "0s"}

    def allowed_hosts(objects):
        container = objects[("Deployment", "chat")]["spec"]["template"]["spec"]["containers"][0]
        return k8s_env(container)["DJANGO_ALLOWED_HOSTS"]

    assert allowed_hosts(overlay) == "chat.example.com," + allowed_hosts(base)

    nginx_config = overlay[("ConfigMap", "nginx-config")]["data"]
    assert "include /etc/nginx/real-ip*.conf;" in nginx_config["nginx.conf"]
    assert "real_ip_header X-Forwarded-For;" in nginx_config["real-ip.conf"]
    assert "real_ip_recursive on;" in nginx_config["real-ip.conf"]
    assert "real_ip" not in "".join(base[("ConfigMap", "nginx-config")]["data"].values())
    mounts = overlay[("Deployment", "nginx")]["spec"]["template"]["spec"]["containers"][0][
        "volumeMounts"
    ]
    assert {
        "name": "config",
        "mountPath": "/etc/nginx/real-ip.conf",
        "subPath": "real-ip.conf",
        "readOnly": True,
    } in mounts


def test_the_shards_variant_replaces_only_redis_and_the_chat_settings():
    """Tests that k8s/variants/redis-shards keeps every base object but the single Redis and
    the chat Deployment, which lists each shard once, in the StatefulSet's order."""
    base = {without_hash(o): o for o in kustomize("k8s")}
    variant = {without_hash(o): o for o in kustomize(K8S_SHARDS)}
    assert set(base) - set(variant) == {("Deployment", "redis"), ("Service", "redis")}
    changed = {key for key in base if key in variant and base[key] != variant[key]}
    assert changed == {("Deployment", "chat")}
    assert set(variant) - set(base) == {
        ("StatefulSet", "redis"),
        ("Service", "redis-headless"),
        ("PodDisruptionBudget", "redis"),
        ("ConfigMap", "redis-scripts"),
    }
    redis = variant[("StatefulSet", "redis")]["spec"]
    chat = variant[("Deployment", "chat")]["spec"]["template"]["spec"]["containers"][0]
    port = defaults()["REDIS_PORT"]
    assert k8s_env(chat)["REDIS_URLS"].split(",") == [
        f"redis://redis-{n}.{redis['serviceName']}:{port}/0" for n in range(redis["replicas"])
    ]
    assert redis["replicas"] == 2
    server = redis["template"]["spec"]["containers"][0]
    assert server["command"] == ["sh", "/scripts/redis-start.sh", "server"]
    assert k8s_env(server)["REDIS_APPENDONLY"] == "everysec"
    assert "REDIS_SENTINELS" not in k8s_env(server)
    assert {"name": "data", "mountPath": "/data"} in server["volumeMounts"]
    assert redis["volumeClaimTemplates"][0]["spec"]["accessModes"] == ["ReadWriteOnce"]
    pod = redis["template"]["spec"]
    assert pod["affinity"]["podAntiAffinity"]
    assert pod["topologySpreadConstraints"]
    headless = variant[("Service", "redis-headless")]["spec"]
    assert headless["clusterIP"] == "None"
    assert headless["publishNotReadyAddresses"] is True
    assert variant[("PodDisruptionBudget", "redis")]["spec"]["maxUnavailable"] == 1
    # The base's policies select the shards: only the chat pods reach them.
    policy = variant[("NetworkPolicy", "redis-from-chat")]["spec"]
    assert (
        policy["podSelector"]["matchLabels"].items()
        <= redis["template"]["metadata"]["labels"].items()
    )


def test_the_connection_metric_is_the_one_the_adapter_serves():
    """Tests k8s/components/connection-autoscaling: the HPA keeps CPU and adds a Pods metric
    that the prometheus-adapter rule exposes, from series the chat service exports and
    labels the Prometheus scrape attaches, with a target below CHAT_MAX_CONNECTIONS even
    after a replica's drain."""
    objects = kustomize_with("base", "connection-autoscaling")
    for manifest in objects:
        validate_k8s(manifest, KUBERNETES_VERSIONS[0])
    hpa = next(o for o in objects if o["kind"] == "HorizontalPodAutoscaler")
    cpu, connections = hpa["spec"]["metrics"]
    assert cpu["resource"]["name"] == "cpu"
    assert connections["type"] == "Pods"
    name = connections["pods"]["metric"]["name"]
    assert "selector" not in connections["pods"]["metric"]

    values = yaml.safe_load((AUTOSCALING / "prometheus-adapter-values.yaml").read_text())
    assert values["prometheus"] == {"url": "http://prometheus.chat-cluster.svc", "port": 9090}
    assert values["rules"]["default"] is False
    (rule,) = values["rules"]["custom"]
    exposed = re.sub(rule["name"]["matches"], rule["name"]["as"], rule["seriesQuery"].split("{")[0])
    assert exposed == name
    overrides = {label: r["resource"] for label, r in rule["resources"]["overrides"].items()}
    assert overrides == {"namespace": "namespace", "replica": "pod"}

    # Every series the rule reads is exported by the service (prometheus_client names)...
    metrics = (ROOT / "services" / "chat" / "chat" / "metrics.py").read_text()
    series = set(re.findall(r"\bchat_\w+", rule["seriesQuery"] + rule["metricsQuery"]))
    assert series == {"chat_info", "chat_connections_open"}
    assert series <= service_series()
    assert '"replica": replica' in metrics
    # ... and carries the labels the rule maps: `replica` is the pod's name, and the
    # scrape adds `namespace`.
    chat = k8s_object("Deployment", "chat")["spec"]["template"]["spec"]["containers"][0]
    replica_id = next(e for e in chat["env"] if e["name"] == "CHAT_REPLICA_ID")
    assert replica_id["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    prometheus = yaml.safe_load(k8s_config_file("prometheus-config", "prometheus.yml"))
    job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "chat")
    assert {"target_label": "namespace", "replacement": "chat-cluster"} in job["relabel_configs"]

    target = int(connections["pods"]["target"]["averageValue"])
    maximum = VARIABLES["CHAT_MAX_CONNECTIONS"].default
    minimum = hpa["spec"]["minReplicas"]
    assert target * minimum / (minimum - 1) * 1.1 <= maximum


def test_the_adapter_query_gives_each_pod_its_connections(tmp_path):
    """Tests the rule's metricsQuery in PromQL (promtool), filled in as prometheus-adapter
    fills it for the pods of the namespace: each pod's connections, by its name, from
    series labelled as the Kubernetes scrape labels them."""
    values = yaml.safe_load((AUTOSCALING / "prometheus-adapter-values.yaml").read_text())
    (rule,) = values["rules"]["custom"]
    query = (
        rule["metricsQuery"]
        .replace("<<.GroupBy>>", "replica")
        .replace("<<.Series>>", "chat_info")
        .replace("<<.LabelMatchers>>", 'namespace="chat-cluster",replica=~"chat-a|chat-b"')
    )
    scrape = 'job="chat", namespace="chat-cluster"'
    tests = {
        "rule_files": [],
        "evaluation_interval": "15s",
        "tests": [
            {
                "interval": "15s",
                "input_series": [
                    {
                        "series": f'chat_connections_open{{{scrape}, instance="10.0.0.1:8001"}}',
                        "values": "5800x4",
                    },
                    {
                        "series": f'chat_connections_open{{{scrape}, instance="10.0.0.2:8001"}}',
                        "values": "6200x4",
                    },
                    {
                        "series": f'chat_info{{{scrape}, instance="10.0.0.1:8001",'
                        ' replica="chat-a", consumer="async", channel_layer="pubsub"}',
                        "values": "1x4",
                    },
                    {
                        "series": f'chat_info{{{scrape}, instance="10.0.0.2:8001",'
                        ' replica="chat-b", consumer="async", channel_layer="pubsub"}',
                        "values": "1x4",
                    },
                ],
                "promql_expr_test": [
                    {
                        "expr": query,
                        "eval_time": "30s",
                        "exp_samples": [
                            {"labels": '{replica="chat-a"}', "value": 5800},
                            {"labels": '{replica="chat-b"}', "value": 6200},
                        ],
                    }
                ],
            }
        ],
    }
    (tmp_path / "adapter.test.yml").write_text(yaml.safe_dump(tests))
    result = subprocess.run(
        ["promtool", "test", "rules", "adapter.test.yml"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
