"""What the operators' checks say in a real outage of replicas and Redis: the cluster's
own Prometheus raises the alerts of deploy/prometheus/alerts.yml, and nginx's readiness
(LB_READINESS_PATH) fails while no replica is ready."""

import time

import pytest

from harness.cluster import start_cluster
from harness.deploy_files import alert_rules, defaults
from harness.http import get, prometheus_api

ALERTS = {rule["alert"] for rule in alert_rules()}


@pytest.fixture(scope="module")
def outage_cluster(tmp_path_factory):
    cluster = start_cluster(tmp_path_factory, "outage", replicas=3, CHAT_DRAIN_SECONDS="2")
    yield cluster
    assert not cluster.down()


def wait_for(what, check, seconds=60):
    deadline = time.monotonic() + seconds
    while not (found := check()):
        assert time.monotonic() < deadline, f"no {what} after {seconds} s"
        time.sleep(1)
    return found


def evaluated_rules(cluster):
    rules = [
        rule for group in prometheus_api(cluster, "rules")["groups"] for rule in group["rules"]
    ]
    if all(rule["lastEvaluation"] > "2000" for rule in rules):
        return rules
    return None


def raised(cluster):
    """{(alert, instance)} of the alerts pending or firing now."""
    return {
        (alert["labels"]["alertname"], alert["labels"].get("instance"))
        for alert in prometheus_api(cluster, "alerts")["alerts"]
    }


def test_prometheus_raises_the_alerts_on_a_real_outage(outage_cluster):
    """Tests that every rule is loaded and evaluates without error on the replicas' real
    series, that none is raised on a healthy cluster, and that stopping a replica and
    Redis raises ChatReplicaDown for the one, and ChatRedisUnreachable and
    ChatReplicaNotReady for each of the others."""
    cluster = outage_cluster
    rules = wait_for("evaluation of every rule", lambda: evaluated_rules(cluster))
    assert {rule["name"] for rule in rules} == ALERTS
    assert {rule["health"] for rule in rules} == {"ok"}, rules
    # Until the first scrapes, ChatNoReplicaUp may be pending.
    wait_for("a healthy cluster with no alert", lambda: raised(cluster) == set())

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


def lb_ready(cluster):
    status, _, body = get(cluster.lb_url + defaults()["LB_READINESS_PATH"], timeout=5)
    return status, body


def test_nginx_is_ready_while_a_replica_is(outage_cluster):
    """Tests 200 from nginx's readiness while any replica is ready, also with one stopped,
    and 503 while Redis is down (every replica unready) and while no replica runs, with
    nginx's liveness 200 throughout."""
    cluster = outage_cluster
    names = cluster.replica_names()
    stopped = []

    def stop(*programs):
        cluster.run("stop", *programs)
        stopped.extend(programs)

    def start(*programs):
        cluster.run("start", *programs)
        stopped[:] = [name for name in stopped if name not in programs]

    wait_for("ready nginx", lambda: lb_ready(cluster) == (200, "ready\n"))
    try:
        stop(names[0])
        assert lb_ready(cluster) == (200, "ready\n")
        stop("redis")
        wait_for("unready nginx", lambda: lb_ready(cluster) == (503, "no ready replica\n"))
        assert get(cluster.lb_url + defaults()["LB_HEALTH_PATH"])[0] == 200
        start("redis")
        wait_for("ready nginx again", lambda: lb_ready(cluster) == (200, "ready\n"))
        stop(*names[1:])
        assert lb_ready(cluster) == (503, "no ready replica\n")
        assert get(cluster.lb_url + defaults()["LB_HEALTH_PATH"])[0] == 200
    finally:
        if stopped:
            start(*stopped)
    wait_for("ready nginx after the outage", lambda: lb_ready(cluster) == (200, "ready\n"))
