"""The settings a local cluster runs with (deploy/local/run_settings.py): what `up`
records in the run directory, how the other commands read it back, what differs from
the environment and how `status` and `up` say so; nothing is started."""

import json
import re
import stat

import pytest

from harness.deploy_files import ROOT, defaults, load_local_cluster, load_local_module

config = load_local_cluster()
run_settings = load_local_module("run_settings")
cluster_script = load_local_module("cluster")

PORTS = {"LB_PORT": "18080", "CHAT_PORT": "18001", "REDIS_PORT": "18380", "REPLICAS": "2"}
RUN_DIR = ROOT / ".run" / "x"  # never created: make_command only names it


class ReadLog(dict):
    """An environment that notes every name read from it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.read = set()

    def get(self, name, default=None):
        self.read.add(name)
        return super().get(name, default)

    def __getitem__(self, name):
        self.read.add(name)
        return super().__getitem__(name)


def recorded_cluster(tmp_path, **environ):
    """The settings `up` records for `environ`, as read back from the run directory."""
    settings = config.ClusterConfig.from_environment(tmp_path, environ=environ).settings
    run_settings.record(tmp_path, settings)
    return run_settings.read(tmp_path)


def test_every_setting_read_from_the_environment_is_recorded(tmp_path):
    """Tests that ClusterConfig.settings holds every name ClusterConfig reads from the
    environment, resolved: the environment's value, else defaults.env's; the service's
    settings only when set."""
    environ = ReadLog(PORTS, CHAT_CONSUMER="sync", CHAT_LOG_LEVEL="", PATH="/bin")
    settings = config.ClusterConfig.from_environment(tmp_path / "run", environ=environ).settings
    assert environ.read == set(config.SETTINGS)
    assert set(settings) == {*config.CLUSTER_SETTINGS, *config.NETWORK_SETTINGS.values()} | {
        "CHAT_CONSUMER"
    }
    assert settings["LB_PORT"] == "18080"
    assert settings["CHAT_CONSUMER"] == "sync"
    assert settings["PROMETHEUS_PORT"] == defaults()["PROMETHEUS_PORT"]
    assert settings["CLUSTER_NETWORK"] == "loopback"
    assert settings["CLUSTER_REDIS_LOSS_PERCENT"] == "0"


def test_recorded_settings_rebuild_the_same_cluster(tmp_path):
    """Tests that a config made from the recorded settings alone, whatever the
    environment says, is the one `up` made."""
    environ = {**PORTS, "CHAT_DRAIN_SECONDS": "2", "DJANGO_ALLOWED_HOSTS": "a%b"}
    made = config.ClusterConfig.from_environment(tmp_path, environ=environ)
    recorded = recorded_cluster(tmp_path, **environ)
    assert config.ClusterConfig.from_environment(tmp_path, environ=recorded) == made


def test_record_and_read_keep_any_value_exactly(tmp_path):
    """Tests that values come back as written, whatever characters they hold, in a file
    only its owner reads, with no temporary file left."""
    odd = {"LB_PORT": "18080", "DJANGO_ALLOWED_HOSTS": ' a,#b=c\n"d" '}
    run_settings.record(tmp_path / "run", odd)
    assert run_settings.read(tmp_path / "run") == odd
    path = tmp_path / "run" / "settings.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["settings.json"]
    assert json.loads(path.read_text())["format"] == run_settings.FORMAT


def test_a_failed_record_leaves_the_old_settings(tmp_path, monkeypatch):
    """Tests that a write that fails before its rename leaves the previous file whole."""
    run_settings.record(tmp_path, {"LB_PORT": "18080"})

    def fail(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(run_settings.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        run_settings.record(tmp_path, {"LB_PORT": "9999"})
    assert run_settings.read(tmp_path) == {"LB_PORT": "18080"}
    assert [p.name for p in tmp_path.iterdir()] == ["settings.json"]


def test_a_run_directory_without_settings_reads_none_and_a_bad_file_is_refused(tmp_path):
    """Tests that a run directory without settings reads as None, and that a file of
    another format or version is refused saying what to do."""
    assert run_settings.read(tmp_path / "missing") is None
    (tmp_path / "settings.json").write_text("LB_PORT=18080\n")
    with pytest.raises(config.ClusterError, match=r"settings\.json is not the settings file"):
        run_settings.read(tmp_path)
    (tmp_path / "settings.json").write_text('{"format": 1, "settings": {"LB_PORT": 18080}}')
    with pytest.raises(config.ClusterError, match="Delete it"):
        run_settings.read(tmp_path)


def test_only_the_settings_the_environment_sets_are_compared(tmp_path):
    """Tests that empty and unknown variables ask for nothing, and that a service setting
    the cluster runs without shows as such."""
    recorded = recorded_cluster(tmp_path, **PORTS)
    environ = {**PORTS, "LB_PORT": "9999", "CHAT_PORT": "", "PATH": "/bin", "CHAT_CONSUMER": "sync"}
    changes = run_settings.differences(recorded, run_settings.asked(environ))
    assert changes == [
        run_settings.Difference("LB_PORT", "9999", "18080"),
        run_settings.Difference("CHAT_CONSUMER", "sync", None),
    ]
    assert [str(change) for change in changes] == [
        "LB_PORT=9999 in the environment, but this cluster runs with 18080",
        "CHAT_CONSUMER=sync in the environment, but this cluster runs without it",
    ]
    assert run_settings.differences(recorded, run_settings.asked(PORTS)) == []


def test_the_warning_says_how_to_change_a_setting_fixed_while_running(tmp_path):
    """Tests the warning of `status` for a port: down, then up with every setting that is
    not a default, the new one included."""
    recorded = recorded_cluster(tmp_path, **PORTS, CHAT_CONSUMER="sync")
    changes = run_settings.differences(recorded, {"LB_PORT": "9999"})
    assert run_settings.warnings(changes, recorded, defaults(), RUN_DIR) == [
        "warning: LB_PORT=9999 in the environment, but this cluster runs with 18080; "
        "to change it: make down RUN_DIR=.run/x, then make up RUN_DIR=.run/x "
        "REPLICAS=2 LB_PORT=9999 CHAT_PORT=18001 REDIS_PORT=18380 CHAT_CONSUMER=sync"
    ]


def test_the_warning_says_up_applies_what_a_running_cluster_takes(tmp_path):
    """Tests that for the replicas' settings the advice is up alone; with several
    changes, a line each; the Makefile's own run directory is not named."""
    recorded = recorded_cluster(tmp_path, **PORTS)
    changes = run_settings.differences(recorded, {"REPLICAS": "4", "CHAT_LOG_LEVEL": "DEBUG"})
    assert run_settings.warnings(changes, recorded, defaults(), config.DEFAULT_RUN_DIR) == [
        "warning: REPLICAS=4 in the environment, but this cluster runs with 2",
        "warning: CHAT_LOG_LEVEL=DEBUG in the environment, but this cluster runs without it",
        "  to apply them: make up REPLICAS=4 CHAT_LOG_LEVEL=DEBUG",
    ]
    assert run_settings.warnings([], recorded, defaults(), RUN_DIR) == []


def test_a_run_directory_outside_the_repository_is_named_whole(tmp_path):
    """Tests that advice names a run directory outside the repository by its full, quoted path."""
    assert (
        run_settings.make_command("down", tmp_path / "a b") == f"make down RUN_DIR='{tmp_path}/a b'"
    )


def test_the_settings_in_force_are_those_that_are_not_defaults(tmp_path):
    """Tests that the summary lists only the settings that differ from defaults.env."""
    recorded = recorded_cluster(tmp_path, **{**PORTS, "REDIS_PORT": defaults()["REDIS_PORT"]})
    assert run_settings.summary(recorded, defaults(), "recorded") == [
        "REPLICAS=2",
        "LB_PORT=18080",
        "CHAT_PORT=18001",
        "(others as defaults.env; recorded)",
    ]
    assert run_settings.summary(recorded_cluster(tmp_path), defaults(), "recorded") == [
        "as defaults.env (recorded)"
    ]


def test_up_on_a_running_cluster_refuses_a_port_and_changes_nothing(tmp_path, monkeypatch):
    """Tests that up, given a port and a replica count for a running cluster, refuses
    both, naming the port, and records nothing."""
    recorded = recorded_cluster(tmp_path, **PORTS)
    current = config.ClusterConfig.from_environment(tmp_path, environ=recorded)
    monkeypatch.setattr(cluster_script.os, "environ", {"LB_PORT": "9999", "REPLICAS": "3"})
    message = "LB_PORT cannot change while it runs; up changed nothing:\n"
    with pytest.raises(config.ClusterError, match=re.escape(message)):
        cluster_script.settings_for_running(current, recorded, defaults())
    assert run_settings.read(tmp_path) == recorded


def test_up_on_a_running_cluster_applies_what_it_takes_over_the_recorded_settings(
    tmp_path, monkeypatch
):
    """Tests that up with REPLICAS alone keeps the recorded ports; and that without
    recorded settings (an older version's cluster) the environment is taken whole."""
    recorded = recorded_cluster(tmp_path, **PORTS)
    current = config.ClusterConfig.from_environment(tmp_path, environ=recorded)
    monkeypatch.setattr(cluster_script.os, "environ", {"REPLICAS": "3"})
    wanted, changes = cluster_script.settings_for_running(current, recorded, defaults())
    assert wanted.replica_ports == {"chat-1": 18001, "chat-2": 18002, "chat-3": 18003}
    assert wanted.lb_port == 18080
    assert [change.change() for change in changes] == ["REPLICAS 2 -> 3"]

    legacy, changes = cluster_script.settings_for_running(current, None, defaults())
    assert (legacy.lb_port, legacy.replicas, changes) == (int(defaults()["LB_PORT"]), 3, [])
