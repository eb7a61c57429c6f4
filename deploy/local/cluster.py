#!/usr/bin/env python3
"""The local cluster: Redis, N Daphne replicas and nginx under supervisord.

    cluster.py up        start, or apply changed settings to a running cluster
    cluster.py down      stop everything `up` started, by the supervisor's PID
    cluster.py status    the processes and each replica's readiness
    cluster.py logs      the last lines of every log (--follow to keep reading)

Settings come from deploy/defaults.env, overridden by the environment. Every
generated file goes to the run directory (default .run/local, git-ignored), so
several clusters can run side by side on different ports.
"""

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
import urllib.error
import urllib.request
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path

from supervisor.xmlrpc import SupervisorTransport

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DEFAULTS_FILE = DEPLOY / "defaults.env"
SERVICE_DIR = ROOT / "services" / "chat"
HOST = "127.0.0.1"

# Settings of the service that the cluster passes on to every replica when set.
SERVICE_SETTINGS = (
    "CHAT_CONSUMER",
    "CHAT_CHANNEL_LAYER",
    "CHAT_MAX_MESSAGE_BYTES",
    "CHAT_LAYER_CAPACITY",
    "CHAT_LOG_LEVEL",
    "CHAT_PRESENCE_TTL",
    "CHAT_MAX_FRAME_BYTES",
    "CHAT_HISTORY_MAX_LENGTH",
    "CHAT_HISTORY_MAX_AGE",
    "CHAT_HISTORY_ON_JOIN",
    "CHAT_RATE_LIMIT",
    "CHAT_RATE_BURST",
    "CHAT_MAX_CONNECTIONS",
    "REDIS_MAX_CONNECTIONS",
    "REDIS_CONNECT_TIMEOUT",
    "REDIS_COMMAND_TIMEOUT",
    "DJANGO_ALLOWED_HOSTS",
    "DJANGO_DEBUG",
)


# After the drain, chatsite.serve allows this long for cleanup; supervisord then
# waits as long again before it kills.
DRAIN_CLEANUP_SECONDS = 5


class ClusterError(Exception):
    """A failure explained to the user; printed without a traceback."""


class ConfigTemplate(string.Template):
    # nginx and supervisord use "$" and "%" themselves.
    delimiter = "@"


def read_defaults(path=DEFAULTS_FILE):
    defaults = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            defaults[name.strip()] = value.strip()
    return defaults


def setting(name, defaults):
    return os.environ.get(name) or defaults[name]


def int_setting(name, defaults, minimum=1, maximum=65535):
    value = setting(name, defaults)
    try:
        number = int(value)
    except ValueError:
        raise ClusterError(f"{name} must be a whole number, not {value!r}") from None
    if not minimum <= number <= maximum:
        raise ClusterError(f"{name} must be between {minimum} and {maximum}, not {number}")
    return number


def render(template_path, **values):
    return ConfigTemplate(template_path.read_text()).substitute(**values)


def find_program(name):
    # nginx lives in /usr/sbin, which a non-root PATH often lacks.
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if not found:
        raise ClusterError(
            f"{name} is not installed. Run `make deps` as root, or install the Debian "
            "packages nginx-light and redis-server."
        )
    return found


@dataclass
class Cluster:
    run_dir: Path
    replicas: int
    lb_port: int
    chat_port: int
    redis_port: int
    prometheus_port: int
    readiness_path: str
    lb_health_path: str
    metrics_path: str
    drain_seconds: int

    @classmethod
    def from_environment(cls, run_dir):
        defaults = read_defaults()
        return cls(
            run_dir=Path(run_dir).resolve(),
            replicas=int_setting("REPLICAS", defaults, maximum=64),
            lb_port=int_setting("LB_PORT", defaults),
            chat_port=int_setting("CHAT_PORT", defaults),
            redis_port=int_setting("REDIS_PORT", defaults),
            prometheus_port=int_setting("PROMETHEUS_PORT", defaults),
            readiness_path=defaults["READINESS_PATH"],
            lb_health_path=defaults["LB_HEALTH_PATH"],
            metrics_path=defaults["METRICS_PATH"],
            drain_seconds=int_setting("CHAT_DRAIN_SECONDS", defaults, minimum=0),
        )

    # --- Layout -------------------------------------------------------------

    @property
    def log_dir(self):
        return self.run_dir / "logs"

    @property
    def pid_file(self):
        return self.run_dir / "supervisord.pid"

    @property
    def supervisor_conf(self):
        return self.run_dir / "supervisord.conf"

    @property
    def replica_ports(self):
        return {f"chat-{n}": self.chat_port + n - 1 for n in range(1, self.replicas + 1)}

    @property
    def redis_url(self):
        return f"redis://{HOST}:{self.redis_port}/0"

    @property
    def lb_url(self):
        return f"http://{HOST}:{self.lb_port}"

    @property
    def prometheus_url(self):
        return f"http://{HOST}:{self.prometheus_port}"

    def ports(self):
        ports = {
            "LB_PORT": self.lb_port,
            "REDIS_PORT": self.redis_port,
            "PROMETHEUS_PORT": self.prometheus_port,
        }
        for name, port in self.replica_ports.items():
            ports[f"CHAT_PORT ({name})"] = port
        if len(set(ports.values())) != len(ports):
            raise ClusterError(f"Ports overlap: {ports}")
        return ports

    # --- Configuration ------------------------------------------------------

    def secret_key(self):
        # One random key per run directory, kept across restarts.
        path = self.run_dir / "secret_key"
        if not path.exists():
            path.write_text(secrets.token_urlsafe(50))
            path.chmod(0o600)
        return path.read_text().strip()

    def replica_environment(self, name):
        environment = {name: os.environ[name] for name in SERVICE_SETTINGS if os.environ.get(name)}
        environment.update(
            DJANGO_SETTINGS_MODULE="chatsite.settings",
            DJANGO_SECRET_KEY=self.secret_key(),
            CHAT_REPLICA_ID=name,
            # The drain that stop_wait_seconds allows for.
            CHAT_DRAIN_SECONDS=str(self.drain_seconds),
            REDIS_URLS=self.redis_url,
            PYTHONUNBUFFERED="1",
        )
        # supervisord reads "%" as the start of an expansion.
        return ",".join(
            f'{key}="{value.replace("%", "%%")}"' for key, value in sorted(environment.items())
        )

    @property
    def stop_wait_seconds(self):
        return self.drain_seconds + 2 * DRAIN_CLEANUP_SECONDS

    def rendered_files(self):
        values = dict(
            run_dir=self.run_dir,
            log_dir=self.log_dir,
            host=HOST,
            lb_port=self.lb_port,
            redis_port=self.redis_port,
            prometheus_port=self.prometheus_port,
            deploy_dir=DEPLOY,
        )
        replicas = "".join(
            render(
                DEPLOY / "local" / "replica.conf.template",
                name=name,
                port=port,
                host=HOST,
                python=sys.executable,
                service_dir=SERVICE_DIR,
                log_dir=self.log_dir,
                environment=self.replica_environment(name),
                stop_wait_seconds=self.stop_wait_seconds,
            )
            for name, port in self.replica_ports.items()
        )
        upstream = "\n".join(
            # max_fails=0: a refused connect (a replica restarting or dead) still moves
            # on to the next replica, but does not bar the replica for fail_timeout: a
            # WebSocket never ends the bar, so a drained replica, once back, got almost
            # no new connections while the others were drained in turn.
            f"        server {HOST}:{port} max_fails=0;"
            for port in self.replica_ports.values()
        )
        return {
            "supervisord.conf": render(
                DEPLOY / "local" / "supervisord.conf.template",
                redis_server=find_program("redis-server"),
                nginx=find_program("nginx"),
                prometheus=find_program("prometheus"),
                replica_names=",".join(self.replica_ports),
                replica_programs=replicas,
                **values,
            ),
            "nginx.conf": render(
                DEPLOY / "nginx" / "nginx.conf.template",
                upstream_servers=upstream,
                # Workers of a root master would otherwise run as nobody.
                user_directive="user root;" if os.geteuid() == 0 else "",
                **values,
            ),
            "redis.conf": render(DEPLOY / "redis" / "redis.conf.template", **values),
            "prometheus.yml": render(
                DEPLOY / "prometheus" / "prometheus.local.yml.template",
                metrics_path=self.metrics_path,
                replica_targets=", ".join(
                    f'"{HOST}:{port}"' for port in self.replica_ports.values()
                ),
                **values,
            ),
        }

    def write_configuration(self):
        """Writes the generated files; returns the names of those that changed."""
        for directory in (
            self.run_dir,
            self.log_dir,
            self.run_dir / "nginx",
            self.run_dir / "redis",
        ):
            directory.mkdir(parents=True, exist_ok=True)
        changed = []
        for name, text in self.rendered_files().items():
            path = self.run_dir / name
            if not path.exists() or path.read_text() != text:
                path.write_text(text)
                path.chmod(0o600)
                changed.append(name)
        return changed

    # --- The supervisor -----------------------------------------------------

    def supervisor_pid(self):
        """The PID of this run directory's supervisord, or None if it is not running."""
        try:
            pid = int(self.pid_file.read_text())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        if b"supervisord" not in cmdline or str(self.supervisor_conf).encode() not in cmdline:
            return None  # a stale pid file; the PID now belongs to someone else
        return pid

    def rpc(self):
        socket_url = f"unix://{self.run_dir}/supervisor.sock"
        transport = SupervisorTransport(None, None, socket_url)
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor

    def processes(self):
        return self.rpc().getAllProcessInfo()

    def check_ports_free(self):
        for name, port in self.ports().items():
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((HOST, port))
                except OSError as error:
                    setting_name = name.split()[0]
                    raise ClusterError(
                        f"Port {port} ({name}) on {HOST} is busy: {error.strerror}. "
                        f"Stop what holds it, or choose another port, e.g. "
                        f"`make up {setting_name}={port + 1000}`."
                    ) from None

    def start_supervisor(self):
        self.check_ports_free()
        self.write_configuration()
        subprocess.run(
            [sys.executable, "-m", "supervisor.supervisord", "-c", str(self.supervisor_conf)],
            check=True,
        )
        deadline = time.monotonic() + 10
        while self.supervisor_pid() is None:
            if time.monotonic() > deadline:
                raise ClusterError(f"supervisord did not start; see {self.log_dir}/supervisord.log")
            time.sleep(0.1)

    def apply_changes(self):
        changed = self.write_configuration()
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

    # --- Health -------------------------------------------------------------

    def probe_urls(self):
        urls = {
            name: f"http://{HOST}:{port}{self.readiness_path}"
            for name, port in self.replica_ports.items()
        }
        urls["nginx"] = f"{self.lb_url}{self.lb_health_path}"
        urls["prometheus"] = f"{self.prometheus_url}/-/ready"
        return urls

    def readiness(self):
        states = {}
        for name, url in self.probe_urls().items():
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    states[name] = "ready" if response.status == 200 else f"HTTP {response.status}"
            except urllib.error.HTTPError as error:
                states[name] = f"HTTP {error.code}"
            except (urllib.error.URLError, OSError) as error:
                states[name] = f"down ({getattr(error, 'reason', error)})"
        return states

    def wait_until_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            failed = [p["name"] for p in self.processes() if p["statename"] in ("FATAL", "EXITED")]
            if failed:
                raise ClusterError(f"{', '.join(failed)} failed to start.\n{self.log_tail(20)}")
            states = self.readiness()
            if all(state == "ready" for state in states.values()):
                return
            if time.monotonic() > deadline:
                waiting = {name: state for name, state in states.items() if state != "ready"}
                raise ClusterError(f"Not ready after {timeout} s: {waiting}.\n{self.log_tail(20)}")
            time.sleep(0.2)

    def log_tail(self, lines):
        tails = []
        for path in sorted(self.log_dir.glob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            tails.append(f"==> {path} <==\n" + "\n".join(text))
        return "\n\n".join(tails)

    # --- Commands -----------------------------------------------------------

    def up(self, timeout):
        if self.supervisor_pid() is None:
            self.start_supervisor()
            action = "started"
        else:
            changed = self.apply_changes()
            action = f"updated ({', '.join(changed)})" if changed else "already running"
        self.wait_until_ready(timeout)
        ports = list(self.replica_ports.values())
        consumer = os.environ.get("CHAT_CONSUMER") or "async"
        layer = os.environ.get("CHAT_CHANNEL_LAYER") or "pubsub"
        print(
            f"chat-cluster {action}: {self.replicas} replicas, {consumer} consumer, "
            f"{layer} channel layer\n"
            f"  Chat        {self.lb_url}/chat/lobby/   (open it in two tabs)\n"
            f"  Replicas    http://{HOST}:{ports[0]} ... http://{HOST}:{ports[-1]}\n"
            f"  Prometheus  {self.prometheus_url}/targets\n"
            f"  Redis       {self.redis_url}\n"
            f"  Logs        {self.log_dir}   (make logs, make status, make down)"
        )

    def down(self, timeout=60):
        pid = self.supervisor_pid()
        if pid is None:
            print(f"chat-cluster is not running ({self.run_dir})")
            return
        children = [p["pid"] for p in self.processes() if p["pid"]]
        os.kill(pid, signal.SIGTERM)  # supervisord stops its programs, then itself
        deadline = time.monotonic() + timeout
        while any(alive(p) for p in [pid, *children]) and time.monotonic() < deadline:
            time.sleep(0.1)
        leftovers = [p for p in [pid, *children] if alive(p)]
        for leftover in leftovers:
            os.kill(leftover, signal.SIGKILL)
        (self.run_dir / "supervisor.sock").unlink(missing_ok=True)
        note = f"; killed {leftovers} after {timeout} s" if leftovers else ""
        print(f"chat-cluster stopped: supervisord {pid} and {len(children)} processes{note}")

    def program_names(self, rpc):
        """supervisord's names ("group:name") by the names people use (chat-1, redis)."""
        return {
            p["name"]: f"{p['group']}:{p['name']}" if p["group"] != p["name"] else p["name"]
            for p in rpc.getAllProcessInfo()
        }

    def resolve(self, rpc, names):
        if self.supervisor_pid() is None:
            raise ClusterError(f"chat-cluster is not running ({self.run_dir})")
        known = self.program_names(rpc)
        unknown = [name for name in names if name not in known]
        if unknown:
            raise ClusterError(f"no program {', '.join(unknown)}; programs: {', '.join(known)}")
        return [known[name] for name in names]

    def control(self, action, names):
        """Stops or starts single programs (fault drills: `stop redis`)."""
        rpc = self.rpc()
        for name, full_name in zip(names, self.resolve(rpc, names), strict=True):
            getattr(rpc, f"{action}Process")(full_name, True)
            print(f"{name}: {'stopped' if action == 'stop' else 'started'}")

    def restart(self, names, timeout):
        """Restarts programs one at a time, each ready before the next: a replica
        drains (SIGTERM, chatsite.serve) and its clients resume on the others."""
        rpc = self.rpc()
        programs = zip(names, self.resolve(rpc, names), strict=True)
        for name, full_name in programs:
            started = time.monotonic()
            rpc.stopProcess(full_name, True)
            stopped = time.monotonic()
            rpc.startProcess(full_name, True)
            self.wait_until_ready(timeout)
            print(
                f"{name}: stopped in {stopped - started:.1f} s, "
                f"ready again {time.monotonic() - stopped:.1f} s later",
                flush=True,
            )

    def status(self):
        if self.supervisor_pid() is None:
            print(f"chat-cluster is not running ({self.run_dir})")
            return False
        readiness = self.readiness()
        processes = self.processes()
        ports = {
            **self.replica_ports,
            "nginx": self.lb_port,
            "redis": self.redis_port,
            "prometheus": self.prometheus_port,
        }
        for process in processes:
            name = process["name"]
            print(
                f"{name:10} {process['statename']:9} pid {process['pid']:<8} "
                f"port {ports.get(name, '-'):<6} {readiness.get(name, '')}"
            )
        return all(p["statename"] == "RUNNING" for p in processes) and all(
            state == "ready" for state in readiness.values()
        )

    def logs(self, lines, follow):
        paths = sorted(str(path) for path in self.log_dir.glob("*.log"))
        if not paths:
            raise ClusterError(f"No logs in {self.log_dir}")
        command = ["tail", "-n", str(lines), *(["-F"] if follow else []), *paths]
        os.execvp("tail", command)


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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--run-dir",
        default=os.environ.get("RUN_DIR") or ROOT / ".run" / "local",
        help="where generated configuration, logs and PIDs go",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start, or apply changed settings")
    up.add_argument("--timeout", type=float, default=60, help="seconds to wait for readiness")
    commands.add_parser("down", help="stop everything up started")
    restart = commands.add_parser(
        "restart", help="rolling restart: each replica drains and is ready before the next"
    )
    restart.add_argument("programs", nargs="*", help="programs to restart (default: replicas)")
    restart.add_argument("--timeout", type=float, default=60, help="seconds to wait for each")
    for action in ("stop", "start"):
        control = commands.add_parser(action, help=f"{action} single programs, e.g. redis")
        control.add_argument("programs", nargs="+")
    commands.add_parser("status", help="processes and readiness")
    logs = commands.add_parser("logs", help="the last lines of every log")
    logs.add_argument("-n", "--lines", type=int, default=50)
    logs.add_argument("-f", "--follow", action="store_true")
    commands.add_parser("describe", help="the cluster's addresses as JSON, for tests")
    args = parser.parse_args(argv)

    try:
        cluster = Cluster.from_environment(args.run_dir)
        if args.command == "up":
            cluster.up(args.timeout)
        elif args.command == "down":
            cluster.down()
        elif args.command in ("stop", "start"):
            cluster.control(args.command, args.programs)
        elif args.command == "restart":
            cluster.restart(args.programs or list(cluster.replica_ports), args.timeout)
        elif args.command == "status":
            return 0 if cluster.status() else 1
        elif args.command == "logs":
            cluster.logs(args.lines, args.follow)
        elif args.command == "describe":
            print(
                json.dumps(
                    {
                        "lb_url": cluster.lb_url,
                        "prometheus_url": cluster.prometheus_url,
                        "replica_ports": cluster.replica_ports,
                        "redis_url": cluster.redis_url,
                        "log_dir": str(cluster.log_dir),
                        "supervisor_pid": cluster.supervisor_pid(),
                    }
                )
            )
    except ClusterError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
