#!/usr/bin/env python3
"""`make loadtest`: the same Locust scenario, at the same load steps, against each
variant of the chat (async and sync consumer, pub/sub and core channel layer) and
against the raw floor server, in one run. Writes loadtests/results/<date>/: the
figures as CSV, a Markdown report and PNG plots.

Each variant gets a fresh local cluster (REPLICAS Daphne replicas behind nginx,
Redis) on free ports. Each load step is one headless Locust run with
LOCUST_WORKERS worker processes: USERS users, in rooms of ROOM_SIZE, each sending
one message every SEND_INTERVAL seconds on average, so the offered load is
USERS / SEND_INTERVAL messages sent and ROOM_SIZE times as many deliveries per
second. Server CPU is read from /proc for every process of the cluster.
"""

import argparse
import csv
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from matplotlib.figure import Figure

from harness.cluster import LocalCluster, free_port_block
from harness.paths import ROOT
from harness.processes import cpu_seconds, process_tree
from harness.results import RESULTS_DIR, markdown_table, write_csv

LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
FLOOR_SERVER = ROOT / "loadtests" / "floor_server.py"
VARIANTS = {
    "async-pubsub": {"CHAT_CONSUMER": "async", "CHAT_CHANNEL_LAYER": "pubsub"},
    "sync-pubsub": {"CHAT_CONSUMER": "sync", "CHAT_CHANNEL_LAYER": "pubsub"},
    "async-core": {"CHAT_CONSUMER": "async", "CHAT_CHANNEL_LAYER": "core"},
    "sync-core": {"CHAT_CONSUMER": "sync", "CHAT_CHANNEL_LAYER": "core"},
    "floor": None,
}


@dataclass
class StepResult:
    variant: str
    users: int
    offered_sends_per_s: float
    offered_deliveries_per_s: float
    sent: int
    delivered: int
    delivered_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    lost: int
    errors: int
    server_cpu_s: float
    server_cpu_ms_per_delivery: float
    chat_cpu_s: float
    nginx_cpu_s: float
    redis_cpu_s: float
    locust_cpu_percent: float


def steady_rate(history_path, skip):
    """Deliveries per second after the ramp (the first `skip` seconds), from Locust's
    cumulative history. Workers report every few seconds, so the rate is taken between
    the first report after the ramp and the last one."""
    with open(history_path) as rows:
        points = [
            (int(row["Timestamp"]), int(row["Total Request Count"]))
            for row in csv.DictReader(rows)
            if row["Name"] == "deliver"
        ]
    if not points:
        return 0.0
    first_time = points[0][0]
    changes = [p for i, p in enumerate(points) if i == 0 or p[1] != points[i - 1][1]]
    after_ramp = [p for p in changes if p[0] >= first_time + skip] or changes
    start, end = after_ramp[0], changes[-1]
    return (end[1] - start[1]) / (end[0] - start[0]) if end[0] > start[0] else 0.0


class Target:
    """Where the load goes, and which processes serve it."""

    def __init__(self, name, settings, replicas, work_dir):
        self.name, self.settings, self.replicas = name, settings, replicas
        self.work_dir = work_dir / name
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.cluster = self.floor = None

    def __enter__(self):
        if self.settings is None:
            port = free_port_block(1)
            self.floor = subprocess.Popen(
                [sys.executable, FLOOR_SERVER, "--port", str(port)],
                stdout=subprocess.PIPE,
                text=True,
            )
            self.floor.stdout.readline()
            self.host = f"http://127.0.0.1:{port}"
        else:
            # Logs and generated configuration stay out of the results.
            run_dir = Path(tempfile.mkdtemp(prefix=f"loadtest-{self.name}-"))
            self.cluster = LocalCluster(run_dir, self.replicas, self.settings)
            self.cluster.up()
            self.host = self.cluster.lb_url
        return self

    def __exit__(self, *_):
        if self.floor:
            self.floor.terminate()
            self.floor.wait(timeout=10)
        if self.cluster:
            self.cluster.down()

    def processes(self):
        """Server PIDs by role."""
        if self.floor:
            return {"chat": [self.floor.pid]}
        pids = self.cluster.process_pids()
        return {
            "chat": list(self.cluster.replica_pids(pids).values()),
            "nginx": process_tree(pids["nginx"]),
            "redis": [pids["redis"]],
        }


def run_step(target, users, args, step_dir):
    environment = {
        **os.environ,
        "LOCUST_ROOM_SIZE": str(args.room_size),
        "LOCUST_SEND_INTERVAL": str(args.send_interval),
        "LOCUST_MESSAGE_BYTES": str(args.message_bytes),
        "LOCUST_ROOM_PREFIX": f"{target.name}-{users}",
    }
    processes = target.processes()
    before = {role: cpu_seconds(pids) for role, pids in processes.items()}
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        LOCUSTFILE,
        "ChatUser",
        "--headless",
        "--users",
        str(users),
        "--spawn-rate",
        str(max(users / 3, 1)),
        "--run-time",
        f"{args.step_seconds}s",
        "--processes",
        str(args.workers),
        "--host",
        target.host,
        "--csv",
        step_dir / "locust",
        "--csv-full-history",
        "--only-summary",
        "--exit-code-on-error",
        "0",
        "--stop-timeout",
        "2",
    ]
    started = time.monotonic()
    with open(step_dir / "locust.log", "w") as log:
        locust = subprocess.Popen(
            command, env=environment, stdout=subprocess.DEVNULL, stderr=log, cwd=step_dir
        )
        # Locust's own CPU: its processes are sampled while they run (they are gone after).
        locust_cpu = {}
        while locust.poll() is None:
            for pid in process_tree(locust.pid):
                locust_cpu[pid] = max(locust_cpu.get(pid, 0), cpu_seconds([pid]))
            time.sleep(0.5)
    elapsed = time.monotonic() - started
    if locust.returncode != 0:
        raise RuntimeError(f"locust failed; see {step_dir / 'locust.log'}")
    cpu = {role: cpu_seconds(pids) - before[role] for role, pids in processes.items()}

    stats = read_locust_csv(step_dir / "locust_stats.csv")
    deliver = stats.get("deliver", {})
    delivered = int(deliver.get("Request Count", 0))
    server_cpu = sum(cpu.values())
    return StepResult(
        variant=target.name,
        users=users,
        offered_sends_per_s=users / args.send_interval,
        offered_deliveries_per_s=users / args.send_interval * args.room_size,
        sent=int(stats.get("send", {}).get("Request Count", 0)),
        delivered=delivered,
        delivered_per_s=round(steady_rate(step_dir / "locust_stats_history.csv", skip=5), 1),
        p50_ms=float(deliver.get("50%", "nan")),
        p95_ms=float(deliver.get("95%", "nan")),
        p99_ms=float(deliver.get("99%", "nan")),
        lost=int(stats.get("lost", {}).get("Failure Count", 0)),
        errors=sum(
            int(row["Failure Count"])
            for name, row in stats.items()
            if name not in ("lost", "Aggregated")
        ),
        server_cpu_s=round(server_cpu, 2),
        server_cpu_ms_per_delivery=round(server_cpu * 1000 / max(1, delivered), 4),
        chat_cpu_s=round(cpu.get("chat", 0), 2),
        nginx_cpu_s=round(cpu.get("nginx", 0), 2),
        redis_cpu_s=round(cpu.get("redis", 0), 2),
        locust_cpu_percent=round(100 * sum(locust_cpu.values()) / elapsed, 1),
    )


def read_locust_csv(path):
    with open(path) as rows:
        return {row["Name"]: row for row in csv.DictReader(rows)}


def read_csv(path):
    """StepResults back from results.csv, to redo the report and plots (--report-only)."""
    types = {name: field.type for name, field in StepResult.__dataclass_fields__.items()}
    with open(path) as rows:
        return [
            StepResult(
                **{
                    name: (
                        value
                        if types[name] in (str, "str")
                        else (int if types[name] in (int, "int") else float)(value)
                    )
                    for name, value in row.items()
                }
            )
            for row in csv.DictReader(rows)
        ]


def plot(results, out_dir):
    variants = list(dict.fromkeys(r.variant for r in results))
    figure = Figure(figsize=(13, 5))
    throughput, latency = figure.subplots(1, 2)
    for variant in variants:
        rows = [r for r in results if r.variant == variant]
        offered = [r.offered_deliveries_per_s for r in rows]
        throughput.plot(offered, [r.delivered_per_s for r in rows], marker="o", label=variant)
        latency.plot(offered, [r.p99_ms for r in rows], marker="o", label=f"{variant} p99")
    top = max(r.offered_deliveries_per_s for r in results)
    throughput.plot([0, top], [0, top], linestyle=":", color="grey", label="offered")
    throughput.set(
        title="Delivered messages per second", xlabel="offered deliveries/s", ylabel="delivered/s"
    )
    latency.set(
        title="End-to-end latency, p99",
        xlabel="offered deliveries/s",
        ylabel="ms (log)",
        yscale="log",
    )
    for axes in (throughput, latency):
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out_dir / "throughput-latency.png", dpi=110)

    figure = Figure(figsize=(7, 5))
    axes = figure.subplots()
    for variant in variants:
        rows = [r for r in results if r.variant == variant]
        axes.plot(
            [r.offered_deliveries_per_s for r in rows],
            [r.server_cpu_ms_per_delivery for r in rows],
            marker="o",
            label=variant,
        )
    axes.set(
        title="Server CPU per delivered message",
        xlabel="offered deliveries/s",
        ylabel="ms of CPU (log)",
        yscale="log",
    )
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out_dir / "cpu-per-delivery.png", dpi=110)


def delivery_ratio(result, room_size):
    """Deliveries against sends times room size: below 100% by what was still queued when
    the step ended (and, slightly, by sends during the ramp, into rooms still filling)."""
    return result.delivered / max(1, result.sent * room_size)


def saturation(results, variant):
    rows = [r for r in results if r.variant == variant]
    return max(rows, key=lambda r: r.delivered_per_s) if rows else None


def write_report(results, args, out_dir, command):
    table = markdown_table(
        [
            "variant",
            "users",
            "offered deliveries/s",
            "delivered/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "delivered of sent × room",
            "lost",
            "errors",
            "server CPU ms/delivery",
            "chat / nginx / redis CPU s",
            "Locust CPU %",
        ],
        [
            [
                r.variant,
                r.users,
                f"{r.offered_deliveries_per_s:.0f}",
                f"{r.delivered_per_s:.0f}",
                f"{r.p50_ms:.0f}",
                f"{r.p95_ms:.0f}",
                f"{r.p99_ms:.0f}",
                f"{delivery_ratio(r, args.room_size):.0%}",
                r.lost,
                r.errors,
                f"{r.server_cpu_ms_per_delivery:.3f}",
                f"{r.chat_cpu_s} / {r.nginx_cpu_s} / {r.redis_cpu_s}",
                r.locust_cpu_percent,
            ]
            for r in results
        ],
    )
    peaks = {v: saturation(results, v) for v in dict.fromkeys(r.variant for r in results)}
    lines = [
        f"- **{v}**: {p.delivered_per_s:.0f} delivered/s at {p.users} users, p99 "
        f"{p.p99_ms:.0f} ms, {p.server_cpu_ms_per_delivery:.3f} ms server CPU per delivery"
        for v, p in peaks.items()
        if p
    ]
    ratios = []
    for layer in ("pubsub", "core"):
        fast, slow = peaks.get(f"async-{layer}"), peaks.get(f"sync-{layer}")
        if fast and slow and slow.delivered_per_s:
            ratios.append(
                f"- async / sync on the {layer} layer, at saturation: "
                f"{fast.delivered_per_s / slow.delivered_per_s:.2f}x"
            )
    report = f"""# Load test: async and sync consumer, pub/sub and core layer, and the raw floor

Run on {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC by `{command}`.

## Summary

Peak delivered messages per second of each variant (the best load step):

{chr(10).join(lines)}
{chr(10).join(ratios)}

## Method

One Locust scenario, the same load steps for every variant. Each step is a headless Locust
run of {args.step_seconds} s with {args.workers} worker processes: N users join rooms of
{args.room_size} through the load balancer and each sends a {args.message_bytes}-byte message
every {args.send_interval} s on average (exponential waits, so that users do not send in
lockstep). Offered load = N / {args.send_interval} sends/s, and {args.room_size} times as many
deliveries/s. Every delivery is a Locust request whose response time is the end-to-end latency
from the sender's timestamp in the message; lost messages are gaps in a sender's sequence
numbers, which a sender's later messages reveal; "delivered of sent × room" also counts
what was still queued when the step ended, so it shows a server that falls behind even where
no gap is seen. Delivered/s is counted from the first report after a 5 s ramp to the end of the
step. Server CPU is utime+stime from /proc of every cluster process (Daphne replicas,
nginx master and workers, Redis) over the step, divided by the messages delivered; Locust's
own CPU is its processes' share of one core over the step. Variants and steps run one after
another, each step on a fresh cluster.

## Setup

- Machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()},
  {platform.platform()}. Locust shares the cores with the servers, which is why server CPU per
  delivered message is the figure that holds across machines.
- Chat: {args.replicas} Daphne replicas behind nginx (least_conn), one Redis; the floor is
  `loadtests/floor_server.py`, one process, without nginx or Redis.

## Results

{table}

Plots: `throughput-latency.png` (delivered/s and p99 latency against offered load) and
`cpu-per-delivery.png`. Raw figures: `results.csv`; each step's Locust statistics are in
`<variant>/<users>/`.

## Reproduce

```
{command}
```
"""
    (out_dir / "README.md").write_text(report)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--users", default="100,200,400,800", help="load steps: users per step")
    parser.add_argument("--step-seconds", type=int, default=20)
    parser.add_argument("--room-size", type=int, default=10)
    parser.add_argument("--send-interval", type=float, default=1.0)
    parser.add_argument("--message-bytes", type=int, default=100)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="Locust worker processes")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="redo the report and plots from --out's results.csv",
    )
    args = parser.parse_args()
    command = "python loadtests/compare.py " + " ".join(sys.argv[1:])
    if args.report_only:
        results = read_csv(args.out / "results.csv")
        plot(results, args.out)
        write_report(results, args, args.out, (args.out / "command.txt").read_text().strip())
        return

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "command.txt").write_text(command + "\n")
    results = []
    for name in args.variants.split(","):
        for users in map(int, args.users.split(",")):
            # A fresh cluster per step: a replica that has served earlier steps costs
            # more CPU per delivery (results/2026-11-24/README.md), blurring the comparison.
            with Target(name, VARIANTS[name], args.replicas, args.out) as target:
                step_dir = target.work_dir / str(users)
                step_dir.mkdir(parents=True, exist_ok=True)
                result = run_step(target, users, args, step_dir)
            print(json.dumps(asdict(result)), flush=True)
            results.append(result)
            write_csv(args.out / "results.csv", [asdict(result) for result in results])
    plot(results, args.out)
    write_report(results, args, args.out, command.strip())
    print(f"report: {args.out / 'README.md'}")


if __name__ == "__main__":
    main()
