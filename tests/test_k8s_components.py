"""The Kubernetes extensions: the Redis shards variant (README: Kubernetes)."""

from .deploy import defaults, k8s_env, kustomize
from .test_manifests import SHARDS


def without_hash(manifest):
    """(kind, name) with a generated ConfigMap's hash suffix dropped."""
    name = manifest["metadata"]["name"]
    if manifest["kind"] == "ConfigMap":
        name = name.rsplit("-", 1)[0]
    return manifest["kind"], name


def test_the_shards_variant_replaces_only_redis_and_the_chat_settings():
    """Tests that k8s/variants/redis-shards keeps every base object but the single Redis and
    the chat Deployment, which lists each shard once, in the StatefulSet's order."""
    base = {without_hash(o): o for o in kustomize("k8s")}
    variant = {without_hash(o): o for o in kustomize(SHARDS)}
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
