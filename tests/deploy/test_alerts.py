"""The alerting rules: valid, unit-tested with promtool, written against metrics the
service exports, and loaded by the Prometheus of every runtime."""

import re
import shutil
import subprocess

import yaml

from harness.deploy_files import (
    ROOT,
    alert_rules,
    compose,
    k8s_config_file,
    load_local_cluster,
    load_local_rendering,
    service_series,
)

PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "alerts.yml"
PROMTOOL = shutil.which("promtool")
# PromQL words in the expressions that are not series.
PROMQL_WORDS = {"sum", "rate", "increase", "or", "absent", "unless", "and", "histogram_quantile"}


def promtool(*arguments, cwd=PROMETHEUS_DIR):
    assert PROMTOOL, "promtool is missing: make deps installs Debian's prometheus"
    return subprocess.run([PROMTOOL, *arguments], capture_output=True, text=True, cwd=cwd)


def test_promtool_accepts_the_rules():
    """Tests that `promtool check rules` accepts alerts.yml and counts every rule."""
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_rejects_a_broken_rule(tmp_path):
    """Tests that the check above can fail."""
    broken = RULES.read_text().replace("chat_redis_up == 0", "chat_redis_up ==")
    (tmp_path / "alerts.yml").write_text(broken)
    assert promtool("check", "rules", "alerts.yml", cwd=tmp_path).returncode != 0


def test_the_rules_pass_their_unit_tests():
    """Tests alerts.test.yml: each alert fires on the series that should raise it, with
    its labels and annotations, and not on its nearest miss."""
    result = promtool("test", "rules", "alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test_a_severity_and_a_runbook():
    """Tests that every alert has a promtool unit test, a severity, a runbook link, a summary,
    and a description; the alerts table lives in docs/operations/metrics.md."""
    tested = set(re.findall(r"alertname: (\w+)", (PROMETHEUS_DIR / "alerts.test.yml").read_text()))
    for rule in alert_rules():
        assert rule["alert"] in tested, rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["runbook"] == "docs/operations/metrics.md#alerts", rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]


def test_every_series_an_alert_reads_is_one_the_service_exports():
    """Tests that a renamed metric cannot leave an alert silently watching nothing."""
    exported = service_series()
    for rule in alert_rules():
        # Without label matchers, ranges, strings and label lists, what is left are
        # functions, operators and series.
        expr = re.sub(r'\{[^}]*\}|\[[^]]*\]|"[^"]*"|\b(by|on)\s*\([^)]*\)', " ", rule["expr"])
        names = set(re.findall(r"\b[a-z_]+\b", expr)) - PROMQL_WORDS
        assert names, rule["alert"]
        assert names - {"up"} <= exported, f"{rule['alert']} reads {names - exported}"


def test_every_runtime_loads_the_rules(tmp_path):
    """Tests that the local cluster's rendered prometheus.yml passes `promtool check
    config` with the rules (promtool loads them), and that compose mounts them and
    Kubernetes carries an identical copy where its prometheus.yml looks."""
    local = load_local_cluster()
    settings = local.ClusterConfig.from_environment(tmp_path, environ={})
    programs = local.Programs("python", "redis-server", "nginx", "prometheus")
    rendered = load_local_rendering().rendered_files(settings, programs, "secret", False)
    (tmp_path / "prometheus.yml").write_text(rendered["prometheus.yml"])
    result = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout

    compose_prometheus = compose()["services"]["prometheus"]
    assert (
        "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro"
        in (compose_prometheus["volumes"])
    )
    compose_config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.compose.yml").read_text())
    assert compose_config["rule_files"] == ["/etc/prometheus/alerts.yml"]

    assert k8s_config_file("prometheus-config", "alerts.yml") == RULES.read_text()
    assert (ROOT / "k8s" / "base" / "prometheus" / "alerts.yml").read_text() == RULES.read_text()
    k8s_config = yaml.safe_load(k8s_config_file("prometheus-config", "prometheus.yml"))
    assert k8s_config["rule_files"] == ["/etc/prometheus/alerts.yml"]
