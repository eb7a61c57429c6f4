"""The settings (chatsite.settings), read from the environment in a fresh process."""

import json
import subprocess
import sys

import pytest


def settings_process(code, environment, check=False):
    """`code` run in a fresh process with only `environment` (and a PATH)."""
    return subprocess.run(
        [sys.executable, "-c", code],
        env={"PATH": "/usr/bin:/bin", **environment},
        capture_output=True,
        text=True,
        cwd="services/chat",
        check=check,
    )


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("CHAT_CONSUMER", "threads", "CHAT_CONSUMER must be one of async, sync"),
        ("CHAT_CHANNEL_LAYER", "kafka", "CHAT_CHANNEL_LAYER must be one of"),
        ("CHAT_MAX_MESSAGE_BYTES", "lots", "must be a whole number"),
        ("DJANGO_SECRET_KEY", "", "DJANGO_SECRET_KEY or DJANGO_SECRET_KEY_FILE is required"),
        ("CHAT_API_KEYS", "short", "every API key must be at least 16 characters long"),
        ("CHAT_API_KEYS_FILE", "/", "CHAT_API_KEYS_FILE cannot be read"),
        ("CHAT_API_MAX_ROOMS", "500", "CHAT_API_MAX_ROOMS must not be above CHAT_API_RATE_BURST"),
        ("CHAT_MAX_EVENT_BYTES", "1000", "CHAT_MAX_EVENT_BYTES must be at least 25600"),
    ],
)
def test_bad_settings_fail_fast_with_a_clear_message(variable, value, message):
    """Tests that a bad or missing setting stops start-up and names the variable."""
    environment = {"DJANGO_SECRET_KEY": "k", variable: value, "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", "import chatsite.settings"],
        env=environment,
        capture_output=True,
        text=True,
        cwd="services/chat",
    )
    assert result.returncode != 0
    assert message in result.stderr


def test_redis_hosts_have_no_socket_timeout_and_a_large_pool():
    """Tests the guard against redis-py 8's 5 s socket timeout and 100-connection pool."""
    code = "import json, chatsite.settings as s; print(json.dumps(s.CHANNEL_LAYERS))"
    environment = {
        "DJANGO_SECRET_KEY": "k",
        "REDIS_URLS": "redis://a:1/0,redis://b:2/0",
        "PATH": "/usr/bin:/bin",
    }
    for layer in ("pubsub", "core"):
        result = subprocess.run(
            [sys.executable, "-c", code],
            env={**environment, "CHAT_CHANNEL_LAYER": layer},
            capture_output=True,
            text=True,
            cwd="services/chat",
            check=True,
        )
        hosts = json.loads(result.stdout)["default"]["CONFIG"]["hosts"]
        assert [host["address"] for host in hosts] == ["redis://a:1/0", "redis://b:2/0"]
        for host in hosts:
            assert host["socket_timeout"] is None
            assert host["max_connections"] >= 1000


def test_secret_key_can_come_from_a_file(tmp_path):
    """Tests DJANGO_SECRET_KEY_FILE, as a mounted Kubernetes Secret provides it."""
    code = "import chatsite.settings as s; print(s.SECRET_KEY)"
    secret = tmp_path / "key"
    secret.write_text("from-a-file\n")
    found = settings_process(code, {"DJANGO_SECRET_KEY_FILE": str(secret)})
    assert found.stdout.strip() == "from-a-file"
    missing = settings_process(code, {"DJANGO_SECRET_KEY_FILE": str(tmp_path / "nope")})
    assert missing.returncode != 0
    assert "DJANGO_SECRET_KEY_FILE cannot be read" in missing.stderr


def test_api_keys_come_from_the_variable_and_the_file(tmp_path):
    """Tests that both sources are read, and that a keys file that does not exist (a
    Secret without the entry) holds none rather than stopping start-up."""
    code = "import json, chatsite.settings as s; print(json.dumps(s.CHAT_API_KEYS))"
    keys = tmp_path / "keys"
    keys.write_text("f" * 16 + "\n\n" + "g" * 16 + "\n")
    environment = {"DJANGO_SECRET_KEY": "k", "CHAT_API_KEYS": "e" * 16}
    both = settings_process(code, {**environment, "CHAT_API_KEYS_FILE": str(keys)}, check=True)
    assert json.loads(both.stdout) == ["e" * 16, "f" * 16, "g" * 16]
    absent_file = {**environment, "CHAT_API_KEYS_FILE": str(tmp_path / "nope")}
    absent = settings_process(code, absent_file, check=True)
    assert json.loads(absent.stdout) == ["e" * 16]


def test_the_event_bound_follows_the_message_bound():
    """Tests that, unset, CHAT_MAX_EVENT_BYTES is never below what a member's largest
    message needs once JSON-escaped."""
    code = "import chatsite.settings as s; print(s.CHAT_MAX_EVENT_BYTES)"
    environment = {"DJANGO_SECRET_KEY": "k", "CHAT_MAX_MESSAGE_BYTES": "20000"}
    result = settings_process(code, environment, check=True)
    assert int(result.stdout) == 6 * 20000 + 1024
