"""Plain HTTP against a cluster: pages, probes, and the replicas' own metrics."""

import json
import re
import urllib.error
import urllib.request
from urllib.parse import urlencode


def get(url, timeout=10):
    """(status, headers, body) of a GET, whatever the status."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()


def replica_metrics(cluster):
    """Each replica's /metrics text, scraped from its own port, in replica order."""
    return [
        get(f"{cluster.replica_url(number)}/metrics", timeout=5)[2]
        for number in range(1, cluster.replicas + 1)
    ]


def replica_counter(cluster, metric, label):
    """A labelled counter of every replica, summed by the label's value: {value: total}."""
    sample = re.compile(rf'^{metric}\{{{label}="([^"]*)"\}} (\S+)$', re.MULTILINE)
    totals = {}
    for text in replica_metrics(cluster):
        for value, count in sample.findall(text):
            totals[value] = totals.get(value, 0) + float(count)
    return totals


def replica_gauges(cluster, metrics):
    """Unlabelled gauges of every replica: [{metric: value}] in replica order."""
    values = []
    for text in replica_metrics(cluster):
        found = dict(re.findall(r"^(\w+) (\S+)$", text, re.MULTILINE))
        values.append({metric: float(found[metric]) for metric in metrics})
    return values


def prometheus_api(cluster, path):
    """The "data" of the cluster's Prometheus' answer to /api/v1/<path> ("rules", ...)."""
    status, _, body = get(f"http://127.0.0.1:{cluster.prometheus_port}/api/v1/{path}")
    assert status == 200, body
    return json.loads(body)["data"]


def prometheus_query(cluster, query):
    """The instant vector of a PromQL query on the cluster's Prometheus: a list of
    {"metric": labels, "value": [time, "value"]}."""
    return prometheus_api(cluster, "query?" + urlencode({"query": query}))["result"]


def post_json(url, body, headers=None, timeout=10):
    """(status, headers, JSON body) of a POST of `body` as JSON, whatever the status."""
    data = json.dumps(body).encode()
    request_headers = {"Content-Type": "application/json", **(headers or {})}
    request = urllib.request.Request(url, data, request_headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, response_headers, text = response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        status, response_headers, text = error.code, error.headers, error.read()
    try:
        answer = json.loads(text)
    except ValueError:
        answer = text.decode(errors="replace")  # not the API: nginx's page, say
    return status, dict(response_headers), answer
