"""Publishing into a cluster's rooms as server code does: the HTTP API on a replica's
own port, Python run in a Django shell with the replicas' settings, and the
management command."""

import json
import re
import subprocess
import textwrap

from .http import post_json
from .paths import ROOT


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


def documented_commands(page, marker="curl"):
    """The ```bash blocks of a documentation page that contain `marker`, in order."""
    blocks = re.findall(r"```bash\n(.*?)```", page.read_text(), re.DOTALL)
    return [block for block in blocks if marker in block]


def run_documented(cluster, commands):
    """Runs the blocks in one bash, as a reader would paste them, against `cluster`:
    its key file and first replica instead of the default cluster's. Returns each
    JSON document printed, in order."""
    script = "\n".join(commands)
    script = script.replace(".run/local/api_keys", cluster.describe()["api_keys_file"])
    script = script.replace("http://127.0.0.1:8001", cluster.replica_url(1))
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    decoder, text, documents = json.JSONDecoder(), result.stdout.strip(), []
    while text:
        document, end = decoder.raw_decode(text)
        documents.append(document)
        text = text[end:].strip()
    return documents
