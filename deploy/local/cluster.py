#!/usr/bin/env python3
"""The local cluster: Redis, N Daphne replicas, nginx and Prometheus under supervisord.

    cluster.py up          start, or apply changed settings to a running cluster
    cluster.py down        stop everything `up` started, by the supervisor's PID
    cluster.py restart     rolling restart: each replica drains and is ready before the next
    cluster.py stop NAME   stop single programs (start NAME starts them again)
    cluster.py status      the processes and each replica's readiness
    cluster.py logs        the last lines of every log (--follow to keep reading)
    cluster.py describe    the cluster's addresses and PIDs as JSON, for tests
    cluster.py manage ...  a Django management command with the replicas' settings,
                           e.g. `manage send_to_room lobby "hello"`

Settings come from deploy/defaults.env, overridden by the environment. Every
generated file goes to the run directory (default .run/local, git-ignored), so
several clusters can run side by side on different ports. `up` records the settings
there (settings.json, run_settings.py) and the other commands use them, so that
--run-dir alone names a cluster started with other settings; `status` warns when the
environment asks for others. On a running cluster `up` applies the settings the
environment sets, on top of the recorded ones, or changes nothing if one of them
cannot change while it runs (a port, Redis, the network).

This file is the command line; config.py (settings and generated files) and
supervision.py (supervisord and its programs) beside it do the work.
"""

import argparse
import json
import os
import subprocess
import sys

import network
import run_settings
from config import (
    DEFAULT_RUN_DIR,
    HOST,
    SERVICE_DIR,
    ClusterConfig,
    ClusterError,
    read_defaults,
)
from readiness import not_in_sync, readiness, redis_roles
from supervision import Supervisor


def up(current, recorded, defaults, timeout):
    """`current`: the run directory's cluster as recorded, else as the environment says."""
    if Supervisor(current).pid() is None:
        # A stopped cluster starts anew with what the environment asks for.
        config = ClusterConfig.from_environment(current.run_dir, defaults=defaults)
        validate_and_record(config)
        supervisor = Supervisor(config)
        # The namespaces before the programs that run in them; a crashed run's first.
        network.create(config.network, config.run_dir)
        supervisor.start()
        action = "started"
    else:
        config, changes = settings_for_running(current, recorded, defaults)
        check_network_unchanged(config)
        validate_and_record(config)
        supervisor = Supervisor(config)
        changed = [change.change() for change in changes] + supervisor.apply_changes()
        action = f"updated ({', '.join(changed)})" if changed else "already running"
    supervisor.wait_until_ready(timeout)
    ports = list(config.replica_ports.values())
    commands = ", ".join(
        run_settings.make_command(target, config.run_dir) for target in ("logs", "status", "down")
    )
    first, last = config.network.address("chat-1"), config.network.address(f"chat-{len(ports)}")
    print(
        f"chat-cluster {action}: {config.replicas} replicas, {config.consumer} consumer, "
        f"{config.channel_layer} channel layer\n"
        f"  Chat        {config.lb_url}/chat/lobby/   (open it in two tabs)\n"
        f"  Replicas    http://{first}:{ports[0]} ... http://{last}:{ports[-1]}\n"
        f"  HTTP API    http://{first}:{ports[0]}/api/v1/rooms/lobby/messages"
        f"   (key in {config.api_keys_file}; docs/http-api.md)\n"
        f"  Network     {network_line(config.network)}\n"
        f"  Prometheus  {config.prometheus_url}/targets\n"
        f"  Redis       {redis_summary(config)}\n"
        f"  Logs        {config.log_dir}   ({commands})"
    )


def settings_for_running(current, recorded, defaults):
    """What `up` gives a running cluster, and what changes: the recorded settings with
    those the environment sets, refused whole if one of these cannot change while it
    runs. Without a record (an older version's cluster), the environment's."""
    if recorded is None:
        return ClusterConfig.from_environment(current.run_dir, defaults=defaults), []
    wanted = {**recorded, **run_settings.asked(os.environ)}
    config = ClusterConfig.from_environment(current.run_dir, wanted, defaults)
    changes = run_settings.differences(recorded, config.settings)
    if not all(change.applies_while_running for change in changes):
        raise ClusterError(run_settings.refusal(changes, recorded, defaults, current.run_dir))
    return config, changes


def check_network_unchanged(config):
    recorded = network.read_state(config.run_dir) or {"mode": "loopback"}
    if recorded["mode"] != config.network.mode or (
        config.network.netns and recorded.get("replicas") != list(config.replica_ports)
    ):
        raise ClusterError(
            f"The running cluster's network is {recorded['mode']} with "
            f"{recorded.get('replicas', 'its')} replicas: `make down` first to change "
            "CLUSTER_NETWORK, or REPLICAS and REDIS_SHARDS in netns mode."
        )


def validate_and_record(config):
    """Checks what the settings alone can tell, then records them: before anything
    starts, so that `down` with the run directory alone stops a failed start."""
    config.network.check()
    config.ports()
    run_settings.record(config.run_dir, config.settings)


def warn(config, recorded, defaults):
    """Warns, on stderr, of each setting the environment asks for that the cluster of
    the run directory does not run with."""
    if recorded is None:
        return
    changes = run_settings.differences(recorded, run_settings.asked(os.environ))
    for line in run_settings.warnings(changes, recorded, defaults, config.run_dir):
        print(line, file=sys.stderr)


def settings_lines(config, recorded, defaults, indent, width=100):
    """`status`' first lines: the settings in force that are not defaults.env's."""
    source = (
        f"recorded in {run_settings.SETTINGS_FILE}"
        if recorded is not None
        else f"from the environment, no {run_settings.SETTINGS_FILE}: an older version's cluster"
    )
    lines = [f"{'settings':{indent - 1}}"]
    for word in run_settings.summary(config.settings, defaults, source):
        if len(lines[-1]) + 1 + len(word) > width and len(lines[-1]) >= indent:
            lines.append(" " * (indent - 1))
        lines[-1] += f" {word}"
    return "\n".join(lines)


def redis_summary(config):
    if config.redis_ha != "sentinel":
        return " ".join(config.redis_urls)
    layout = config.redis_layout
    sentinels = " ".join(f"{HOST}:{port}" for port in layout.sentinel_ports.values())
    return f"{len(layout.servers)} servers, primaries found through the Sentinels {sentinels}"


def network_line(layout):
    if not layout.netns:
        return "loopback: every program on 127.0.0.1"
    slow = f", {layout.delay_ms} ms to Redis" if layout.delay_ms else ""
    loss = f", {layout.loss_percent:g} % loss to Redis" if layout.loss_percent else ""
    return f"netns: a host per replica and Redis in {layout.subnet}{slow}{loss}"


def down(config, supervisor):
    try:
        stopped = supervisor.stop_all()
    finally:
        # Also when start-up failed, or supervisord is gone: what this run dir made.
        removed = network.remove(config.run_dir)
    if removed:
        print(f"network removed: {', '.join(removed)}")
    if stopped is None:
        print(f"chat-cluster is not running ({config.run_dir})")
        return
    note = f"; killed {stopped.killed} after {stopped.timeout} s" if stopped.killed else ""
    print(
        f"chat-cluster stopped: supervisord {stopped.supervisor_pid} "
        f"and {stopped.processes} processes{note}"
    )


def control(supervisor, action, names):
    for name in supervisor.control(action, names):
        print(f"{name}: {'stopped' if action == 'stop' else 'started'}")


def restart(supervisor, names, timeout):
    for restarted in supervisor.rolling_restart(names, timeout):
        print(
            f"{restarted.name}: stopped in {restarted.stop_seconds:.1f} s, "
            f"ready again {restarted.ready_seconds:.1f} s later",
            flush=True,
        )


def status(config, supervisor, recorded, defaults):
    """Prints the settings in force and each process, and warns of settings the
    environment asks for otherwise; True if all run and are ready."""
    if supervisor.pid() is None:
        print(f"chat-cluster is not running ({config.run_dir})")
        return False
    states = readiness(config.probe_urls)
    # With Sentinel, which server is each shard's primary now.
    roles = redis_roles(config.redis_layout.ports) if config.redis_ha == "sentinel" else {}
    processes = supervisor.processes()
    ports = config.program_ports
    layout = config.network
    wide = 13 if layout.netns else 10
    print(settings_lines(config, recorded, defaults, wide + 1))
    for process in processes:
        name = process["name"]
        # A relay listens where its Redis is reached.
        host = layout.address(name.removesuffix("-delay"))
        port = ports.get(name.removesuffix("-delay"), "-")
        where = f"{host}:{port}" if layout.netns else f"port {port}"
        state = states.get(name) or roles.get(name, "")
        print(
            f"{name:{wide}} {process['statename']:9} pid {process['pid']:<8} "
            f"{where:<{17 if layout.netns else 11}} {state}".rstrip()
        )
    if layout.netns:
        print(f"network       {network_line(layout)}")
    sys.stdout.flush()  # the warnings, on stderr, after the table
    warn(config, recorded, defaults)
    return (
        all(p["statename"] == "RUNNING" for p in processes)
        and all(state == "ready" for state in states.values())
        and not any(not_in_sync(role) for role in roles.values())
    )


def logs(config, supervisor, lines, follow):
    paths = [str(path) for path in supervisor.log_paths()]
    if not paths:
        raise ClusterError(f"No logs in {config.log_dir}")
    os.execvp("tail", ["tail", "-n", str(lines), *(["-F"] if follow else []), *paths])


def describe(config, supervisor):
    print(
        json.dumps(
            {
                "lb_url": config.lb_url,
                "prometheus_url": config.prometheus_url,
                "replica_ports": config.replica_ports,
                # Where each program listens: 127.0.0.1, or its host's address (netns).
                "hosts": {name: config.network.address(name) for name in config.program_ports},
                "network": config.network.describe(),
                "redis_url": config.redis_url,
                "redis_urls": config.redis_urls,
                "redis_ha": config.redis_ha,
                "redis_ports": config.redis_ports,
                "sentinel_ports": config.sentinel_ports,
                "log_dir": str(config.log_dir),
                "api_keys_file": str(config.api_keys_file),
                # Every setting as resolved: settings.json's once `up` recorded them.
                "settings": config.settings,
                "supervisor_pid": supervisor.pid(),
                # The names `status` prints first; null for a stopped program.
                "processes": supervisor.process_pids(),
            }
        )
    )


def parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--run-dir",
        default=os.environ.get("RUN_DIR") or DEFAULT_RUN_DIR,
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
    commands.add_parser("describe", help="the cluster's addresses and PIDs as JSON, for tests")
    manage = commands.add_parser("manage", help="a Django management command on the cluster")
    manage.add_argument("arguments", nargs=argparse.REMAINDER)
    return parser


def manage(config, supervisor, arguments):
    """Runs manage.py with a replica's settings (its Redis, secret key and limits)."""
    environment = config.replica_environment("manage", supervisor.secret_key())
    command = [sys.executable, "manage.py", *arguments]
    return subprocess.run(command, cwd=SERVICE_DIR, env={**os.environ, **environment}).returncode


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        defaults = read_defaults()
        recorded = run_settings.read(args.run_dir)
        # The cluster as `up` made it; without settings.json (never started, or by an
        # older version), as the environment says.
        environ = os.environ if recorded is None else recorded
        config = ClusterConfig.from_environment(args.run_dir, environ, defaults)
        supervisor = Supervisor(config)
        if args.command == "up":
            up(config, recorded, defaults, args.timeout)
        elif args.command == "down":
            down(config, supervisor)
        elif args.command in ("stop", "start"):
            control(supervisor, args.command, args.programs)
        elif args.command == "restart":
            warn(config, recorded, defaults)
            restart(supervisor, args.programs or list(config.replica_ports), args.timeout)
        elif args.command == "status":
            return 0 if status(config, supervisor, recorded, defaults) else 1
        elif args.command == "logs":
            logs(config, supervisor, args.lines, args.follow)
        elif args.command == "describe":
            describe(config, supervisor)
        elif args.command == "manage":
            return manage(config, supervisor, args.arguments)
    except (ClusterError, network.NetworkError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
