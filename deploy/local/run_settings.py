"""What a run directory's cluster runs with. `up` records every setting, as resolved
(ClusterConfig.settings), in the run directory's settings.json; status, logs, restart,
stop, start, down and describe read them back, so that the run directory alone names a
cluster started with other settings. Also what the environment asks for otherwise, and
how to say so. Pure, but for record() and read().

JSON rather than defaults.env's NAME=value lines: the values are environment strings,
which may hold any character (a newline, "#", blanks at either end), and they must come
back exactly to be compared; network.json beside it is JSON too.
"""

import json
import os
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path

from config import DEFAULT_RUN_DIR, ROOT, SERVICE_SETTINGS, SETTINGS, ClusterError

SETTINGS_FILE = "settings.json"
FORMAT = 1

# What `up` applies whole to a running cluster: Supervisor.apply_changes restarts the
# replicas when their programs change and reloads nginx and Prometheus. The rest
# (ports, Redis, the network) would be applied by half (a Redis keeps its port and its
# memory limit while the replicas are told another), so they change only with down, then up.
APPLIED_WHILE_RUNNING = (
    "REPLICAS",
    "CHAT_DRAIN_SECONDS",
    "LB_WS_CONNECTIONS_PER_ADDRESS",
    "LB_WS_HANDSHAKES_PER_SECOND",
    "LB_WS_HANDSHAKE_BURST",
    *SERVICE_SETTINGS,
)


def settings_path(run_dir):
    return Path(run_dir) / SETTINGS_FILE


def record(run_dir, settings):
    """Writes `settings` ({name: value}) to the run directory's settings.json atomically:
    a reader finds the old file or the new one, whole."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ordered = {name: settings[name] for name in SETTINGS if name in settings}
    text = json.dumps({"format": FORMAT, "settings": ordered}, indent=2) + "\n"
    # mkstemp's file, readable by its owner only, in the same directory: os.replace is atomic.
    with tempfile.NamedTemporaryFile(
        "w", dir=run_dir, prefix=f".{SETTINGS_FILE}.", delete=False
    ) as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    try:
        os.replace(file.name, settings_path(run_dir))
    except OSError:
        os.unlink(file.name)
        raise


def read(run_dir):
    """The settings `up` recorded in `run_dir`, or None if it recorded none (never
    started there, or started by a version that did not record them)."""
    path = settings_path(run_dir)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as error:
        data = str(error)
    settings = data.get("settings") if isinstance(data, dict) else None
    if (
        not isinstance(data, dict)
        or data.get("format") != FORMAT
        or not isinstance(settings, dict)
        or not all(isinstance(value, str) for value in settings.values())
    ):
        raise ClusterError(
            f"{path} is not the settings file `up` writes (format {FORMAT}). Delete it; the "
            "commands then take the settings from the environment, as `up` did."
        )
    return settings


def asked(environ):
    """The settings `environ` sets (empty is unset), by name, in SETTINGS' order."""
    return {name: environ[name] for name in SETTINGS if environ.get(name)}


@dataclass(frozen=True)
class Difference:
    """A setting asked for with another value than the running cluster has."""

    name: str
    asked: str
    running: str | None  # None: not set, so the service's own default

    @property
    def applies_while_running(self):
        return self.name in APPLIED_WHILE_RUNNING

    def __str__(self):
        has = "without it" if self.running is None else f"with {self.running}"
        return f"{self.name}={self.asked} in the environment, but this cluster runs {has}"

    def change(self):
        return f"{self.name} {'unset' if self.running is None else self.running} -> {self.asked}"


def differences(running, wanted):
    """What `wanted` ({name: value}) sets otherwise than `running`, in SETTINGS' order."""
    return [
        Difference(name, wanted[name], running.get(name))
        for name in SETTINGS
        if name in wanted and wanted[name] != running.get(name)
    ]


def in_force(settings, defaults):
    """Those of `settings` that are not deploy/defaults.env's, in SETTINGS' order."""
    return {
        name: settings[name]
        for name in SETTINGS
        if name in settings and settings[name] != defaults.get(name)
    }


def assignments(settings):
    return [f"{name}={shlex.quote(value)}" for name, value in settings.items()]


def summary(settings, defaults, source):
    """The settings in force, compactly, as words to wrap: those that are not
    deploy/defaults.env's, then `source`, where they come from."""
    changed = in_force(settings, defaults)
    if not changed:
        return [f"as defaults.env ({source})"]
    return [*assignments(changed), f"(others as defaults.env; {source})"]


def make_command(target, run_dir, settings=None):
    """`make <target>` for the cluster of `run_dir` (RUN_DIR unless the Makefile's default)."""
    run_dir = Path(run_dir).resolve()
    words = ["make", target]
    if run_dir != DEFAULT_RUN_DIR:
        shown = run_dir.relative_to(ROOT) if run_dir.is_relative_to(ROOT) else run_dir
        words.append(f"RUN_DIR={shlex.quote(str(shown))}")
    return " ".join([*words, *assignments(settings or {})])


def advice(changes, running, defaults, run_dir):
    """How to give the cluster of `run_dir` what `changes` ask for: `up` for settings it
    applies to a running cluster (on top of the recorded ones); else down, then up with
    every setting that is not a default, since a stopped cluster starts with the
    environment's."""
    wanted = {change.name: change.asked for change in changes}
    them = "it" if len(changes) == 1 else "them"
    if all(change.applies_while_running for change in changes):
        return f"to apply {them}: {make_command('up', run_dir, wanted)}"
    return (
        f"to change {them}: {make_command('down', run_dir)}, then "
        f"{make_command('up', run_dir, in_force({**running, **wanted}, defaults))}"
    )


def warnings(changes, running, defaults, run_dir):
    """The lines that warn of `changes`, the environment asking for other settings than
    the cluster of `run_dir` runs with; none without changes."""
    if not changes:
        return []
    how = advice(changes, running, defaults, run_dir)
    if len(changes) == 1:
        return [f"warning: {changes[0]}; {how}"]
    return [*(f"warning: {change}" for change in changes), f"  {how}"]


def refusal(changes, running, defaults, run_dir):
    """Why `up` changed nothing: some of `changes` cannot be applied to a running cluster."""
    fixed = [change for change in changes if not change.applies_while_running]
    listed = "\n".join(f"  {change}" for change in changes)
    names = ", ".join(change.name for change in fixed)
    return (
        f"this cluster ({run_dir}) runs with other settings than the environment asks for, "
        f"and {names} cannot change while it runs; up changed nothing:\n{listed}\n"
        f"{advice(changes, running, defaults, run_dir)}"
    )
