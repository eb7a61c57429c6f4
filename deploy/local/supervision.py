"""The local cluster's processes: writes the generated files to the run directory,
starts supervisord and drives it over XML-RPC (apply changed settings, stop and
start single programs, rolling restart, stop everything), and waits for readiness.

Named supervision, not supervisor: the script's directory comes first on sys.path,
and a supervisor.py there would shadow the supervisor package.
"""

import os
import secrets
import signal
import subprocess
import sys
import time
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path

from config import ClusterError, Programs
from readiness import check_ports_free, not_in_sync, readiness, redis_roles
from rendering import rendered_files
from supervisor.xmlrpc import SupervisorTransport


@dataclass(frozen=True)
class Stopped:
    """What `stop_all` stopped."""

    supervisor_pid: int
    processes: int
    killed: list  # PIDs still alive after the timeout, then killed
    timeout: float


@dataclass(frozen=True)
class Restarted:
    """One program of a rolling restart, with how long each half took."""

    name: str
    stop_seconds: float
    ready_seconds: float


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited; its parent just has not reaped it yet.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


class Supervisor:
    """The supervisord of one run directory and the programs it runs."""

    def __init__(self, config):
        self.config = config

    # --- The run directory --------------------------------------------------

    def secret_key(self):
        # One random key per run directory, kept across restarts.
        path = self.config.secret_key_file
        if not path.exists():
            path.write_text(secrets.token_urlsafe(50))
            path.chmod(0o600)
        return path.read_text().strip()

    def api_key(self):
        """The HTTP API's first key; the run directory's file is made with one random
        key, kept across restarts (a file CHAT_API_KEYS_FILE names is left as it is)."""
        path = self.config.api_keys_file
        if not path.exists() and path.parent == self.config.run_dir:
            path.write_text(secrets.token_urlsafe(32) + "\n")
            path.chmod(0o600)
        lines = path.read_text().split() if path.exists() else []
        return lines[0] if lines else None

    def write_configuration(self):
        """Writes the generated files; returns the names of those that changed."""
        for directory in self.config.directories:
            directory.mkdir(parents=True, exist_ok=True)
        self.api_key()  # before any replica reads it
        files = rendered_files(
            self.config, Programs.find(), self.secret_key(), run_as_root=os.geteuid() == 0
        )
        changed = []
        for name, text in files.items():
            path = self.config.run_dir / name
            if not path.exists() or path.read_text() != text:
                path.write_text(text)
                path.chmod(0o600)
                changed.append(name)
        return changed

    def reset_sentinels(self, keep):
        """Gives each Sentinel a copy of its generated config to run on and rewrite: a
        fresh one when the cluster starts (its Redis servers start anew), else only if
        it has none (`keep`), so that a running Sentinel keeps what it learnt."""
        for name in self.config.sentinel_ports:
            state = self.config.run_dir / name / "sentinel.conf"
            if not (keep and state.exists()):
                state.write_text((self.config.run_dir / f"{name}.conf").read_text())
                state.chmod(0o600)

    def log_paths(self):
        return sorted(self.config.log_dir.glob("*.log"))

    def log_tail(self, lines):
        tails = []
        for path in self.log_paths():
            text = path.read_text(errors="replace").splitlines()[-lines:]
            tails.append(f"==> {path} <==\n" + "\n".join(text))
        return "\n\n".join(tails)

    # --- supervisord --------------------------------------------------------

    def pid(self):
        """The PID of this run directory's supervisord, or None if it is not running."""
        try:
            pid = int(self.config.pid_file.read_text())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        conf = str(self.config.supervisor_conf).encode()
        if b"supervisord" not in cmdline or conf not in cmdline:
            return None  # a stale pid file; the PID now belongs to someone else
        return pid

    def rpc(self):
        transport = SupervisorTransport(None, None, f"unix://{self.config.supervisor_socket}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor

    def processes(self):
        return self.rpc().getAllProcessInfo()

    def process_pids(self):
        """{name: PID, or None when stopped} of every supervised program; {} when not running."""
        if self.pid() is None:
            return {}
        return {p["name"]: p["pid"] or None for p in self.processes()}

    def start(self):
        check_ports_free(self.config.ports())
        self.write_configuration()
        self.reset_sentinels(keep=False)
        command = ["-m", "supervisor.supervisord", "-c", str(self.config.supervisor_conf)]
        subprocess.run([sys.executable, *command], check=True)
        deadline = time.monotonic() + 10
        while self.pid() is None:
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"supervisord did not start; see {self.config.log_dir}/supervisord.log"
                )
            time.sleep(0.1)

    def apply_changes(self):
        """Writes the generated files and makes the running programs follow those that
        changed; returns their names."""
        changed = self.write_configuration()
        self.reset_sentinels(keep=True)
        if "supervisord.conf" in changed:
            self.update_programs(self.rpc())
        if "nginx.conf" in changed:
            self.rpc().signalProcess("nginx", "HUP")
        if "prometheus.yml" in changed:
            self.rpc().signalProcess("prometheus", "HUP")
        return changed

    def update_programs(self, rpc):
        """Does what `supervisorctl update` does: starts added programs, drops removed ones."""
        added, changed, removed = rpc.reloadConfig()[0]
        for group in changed + removed:
            rpc.stopProcessGroup(group)
            rpc.removeProcessGroup(group)
        for group in changed + added:
            rpc.addProcessGroup(group)

    def wait_until_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            failed = [p["name"] for p in self.processes() if p["statename"] in ("FATAL", "EXITED")]
            if failed:
                raise ClusterError(f"{', '.join(failed)} failed to start.\n{self.log_tail(20)}")
            states = readiness(self.config.probe_urls)
            if self.config.redis_ha == "sentinel":
                # A replica not yet in sync would refuse every message (WAIT): not ready.
                roles = redis_roles(self.config.redis_layout.ports)
                states.update({name: role for name, role in roles.items() if not_in_sync(role)})
            if all(state == "ready" for state in states.values()):
                return
            if time.monotonic() > deadline:
                waiting = {name: state for name, state in states.items() if state != "ready"}
                raise ClusterError(f"Not ready after {timeout} s: {waiting}.\n{self.log_tail(20)}")
            time.sleep(0.2)

    def stop_all(self, timeout=60):
        """Stops supervisord by its PID, and so every program it started; kills what is
        left after `timeout`. Returns None if it was not running."""
        pid = self.pid()
        if pid is None:
            return None
        children = [p["pid"] for p in self.processes() if p["pid"]]
        os.kill(pid, signal.SIGTERM)  # supervisord stops its programs, then itself
        deadline = time.monotonic() + timeout
        while any(alive(p) for p in [pid, *children]) and time.monotonic() < deadline:
            time.sleep(0.1)
        leftovers = [p for p in [pid, *children] if alive(p)]
        for leftover in leftovers:
            os.kill(leftover, signal.SIGKILL)
        self.config.supervisor_socket.unlink(missing_ok=True)
        return Stopped(pid, len(children), leftovers, timeout)

    # --- Single programs ----------------------------------------------------

    def program_names(self, rpc):
        """supervisord's names ("group:name") by the names people use (chat-1, redis)."""
        return {
            p["name"]: f"{p['group']}:{p['name']}" if p["group"] != p["name"] else p["name"]
            for p in rpc.getAllProcessInfo()
        }

    def resolve(self, rpc, names):
        if self.pid() is None:
            raise ClusterError(f"chat-cluster is not running ({self.config.run_dir})")
        known = self.program_names(rpc)
        unknown = [name for name in names if name not in known]
        if unknown:
            raise ClusterError(f"no program {', '.join(unknown)}; programs: {', '.join(known)}")
        return [known[name] for name in names]

    def control(self, action, names):
        """Stops or starts single programs (fault drills: `stop redis`), yielding each
        name once done. `action` is "stop" or "start"."""
        rpc = self.rpc()
        for name, full_name in zip(names, self.resolve(rpc, names), strict=True):
            getattr(rpc, f"{action}Process")(full_name, True)
            yield name

    def rolling_restart(self, names, timeout):
        """Restarts programs one at a time, each ready before the next, yielding a
        Restarted for each: a replica drains (SIGTERM, chatsite.serve) and its clients
        resume on the others."""
        rpc = self.rpc()
        for name, full_name in zip(names, self.resolve(rpc, names), strict=True):
            started = time.monotonic()
            rpc.stopProcess(full_name, True)
            stopped = time.monotonic()
            rpc.startProcess(full_name, True)
            self.wait_until_ready(timeout)
            yield Restarted(name, stopped - started, time.monotonic() - stopped)
