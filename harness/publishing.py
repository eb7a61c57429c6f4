"""Publishing into a cluster's rooms as server code does: the HTTP API on a replica's
own port, Python run in a Django shell with the replicas' settings, and the
management command."""

import json
import textwrap

from .http import post_json


def room_messages_path(room):
    return f"/api/v1/rooms/{room}/messages"


def api_post(cluster, path, body, *, replica=1, key=None, timeout=10):
    """(status, headers, JSON body) of a POST to the HTTP API of replica `replica`,
    with the cluster's key unless `key` is given ("" sends none)."""
    key = cluster.api_key() if key is None else key
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return post_json(cluster.api_url(path, replica), body, headers, timeout)


def django_shell(cluster, code):
    """Runs `code` in `manage.py shell` with the replicas' settings; returns what it
    printed last, as JSON. Fails with its output if it failed."""
    result = cluster.manage("shell", "-c", textwrap.dedent(code))
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])
