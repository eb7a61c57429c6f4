"""The cluster's own Prometheus raises the alerts of deploy/prometheus/alerts.yml on a
real outage: a replica stopped and Redis stopped."""

import json
import time

import yaml

from harness.http import get

from ..deploy import ROOT

ALERTS = {
    rule["alert"]
    for group in yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())[
        "groups"
    ]
    for rule in group["rules"]
}


def prometheus(cluster, path):
    status, _, body = get(f"http://127.0.0.1:{cluster.prometheus_port}/api/v1/{path}")
    assert status == 200, body
    return json.loads(body)["data"]


def wait_for(what, check, seconds=60):
    deadline = time.monotonic() + seconds
    while not (found := check()):
        assert time.monotonic() < deadline, f"no {what} after {seconds} s"
        time.sleep(1)
    return found


def evaluated_rules(cluster):
    rules = [rule for group in prometheus(cluster, "rules")["groups"] for rule in group["rules"]]
    if all(rule["lastEvaluation"] > "2000" for rule in rules):
        return rules
    return None


def raised(cluster):
    """{(alert, instance)} of the alerts pending or firing now."""
    return {
        (alert["labels"]["alertname"], alert["labels"].get("instance"))
        for alert in prometheus(cluster, "alerts")["alerts"]
    }


def test_prometheus_raises_the_alerts_on_a_real_outage(faults_cluster):
    """Tests that every rule is loaded and evaluates without error on the replicas' real
    series, that none is raised on a healthy cluster, and that stopping a replica and
    Redis raises ChatReplicaDown for the one, and ChatRedisUnreachable and
    ChatReplicaNotReady for each of the others."""
    cluster = faults_cluster
    rules = wait_for("evaluation of every rule", lambda: evaluated_rules(cluster))
    assert {rule["name"] for rule in rules} == ALERTS
    assert {rule["health"] for rule in rules} == {"ok"}, rules
    assert raised(cluster) == set()

    names = cluster.replica_names()
    address = {
        name: f"{cluster.replica_host(number)}:{cluster.replica_port(number)}"
        for number, name in enumerate(names, start=1)
    }
    stopped, others = names[0], names[1:]
    cluster.run("stop", stopped, "redis")
    expected = {("ChatReplicaDown", address[stopped])} | {
        (alert, address[name])
        for alert in ("ChatRedisUnreachable", "ChatReplicaNotReady")
        for name in others
    }
    try:
        wait_for(f"{sorted(expected)}", lambda: expected <= raised(cluster))
    finally:
        cluster.run("start", "redis", stopped)
