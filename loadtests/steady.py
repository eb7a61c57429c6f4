#!/usr/bin/env python3
"""`make loadtest`, second part: the steady-state sweep. One chat cluster (REPLICAS
async Daphne replicas on the pub/sub layer behind nginx, Redis) and the floor server
carry repeated load steps in one sitting, the cluster never restarted between them.
Writes loadtests/results/<date>-steady/: results.csv and a README.md with the table.

    python loadtests/steady.py                             # the sweep
    python loadtests/steady.py --bursts 3 --burst-rate 4000   # three identical bursts

The load generator is harness.load_generator: WORKERS processes per target, each
owning whole rooms; its own CPU is reported beside every step.
"""

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from harness.cluster import LocalCluster
from harness.floor import FloorServer
from harness.results import RESULTS_DIR, markdown_table, write_csv
from harness.steady import CHAT_SETTINGS, FIELDS, ChatTarget, FloorTarget, Load, burst_ratios
from harness.steady import bursts as run_bursts
from harness.steady import sweep as run_sweep

STEP_HEADER = [
    "round",
    "offered/s",
    "target",
    "delivered/s",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "lost",
    "errors, closes",
    "server CPU ms/delivery",
    "generator CPU % (busiest worker)",
]


def step_cells(r):
    return [
        r["round"],
        f"{r['offered_deliveries_per_s']:.0f}",
        r["target"],
        f"{r['delivered_per_s']:.0f}",
        f"{r['p50_ms']:.1f}",
        f"{r['p95_ms']:.1f}",
        f"{r['p99_ms']:.1f}",
        r["lost"],
        f"{r['errors']}, {r['closes']}",
        f"{r['server_cpu_ms_per_delivery']:.3f}",
        f"{r['generator_cpu_percent']:.0f} ({r['generator_busiest_percent']:.0f})",
    ]


def summary(rows):
    """Per offered rate and chat target: the lowest delivered/s, the worst p99, lost, and
    the median server CPU per delivery over the repeats; then the chat's cost over the
    floor's, and chat-api's over the chat's."""
    names = [n for n in ("chat", "chat-api", "floor") if any(r["target"] == n for r in rows)]
    lines = []
    for rate in dict.fromkeys(r["offered_deliveries_per_s"] for r in rows):
        at = {
            name: [r for r in rows if r["offered_deliveries_per_s"] == rate and r["target"] == name]
            for name in names
        }
        cost = {
            name: statistics.median(r["server_cpu_ms_per_delivery"] for r in steps)
            for name, steps in at.items()
            if steps
        }
        cells = [f"{rate:.0f}"]
        for name in names:
            steps = at[name]
            if name != "floor":
                cells += [
                    f"{min(r['delivered_per_s'] for r in steps):.0f}" if steps else "",
                    f"{max(r['p99_ms'] for r in steps):.1f}" if steps else "",
                    sum(r["lost"] for r in steps) if steps else "",
                ]
            cells.append(f"{cost[name]:.3f}" if name in cost else "")
        for over, under in (("chat", "floor"), ("chat-api", "chat")):
            if over in names and under in names:
                ratio = cost.get(over, 0) / cost[under] if cost.get(under) else None
                cells.append(f"{ratio:.2f}×" if ratio else "")
        lines.append(cells)
    header = ["offered/s"]
    for name in names:
        if name != "floor":
            header += [f"{name} delivered/s (lowest)", f"{name} p99 ms (highest)", f"{name} lost"]
        header.append(f"{name} CPU ms/delivery")
    for over, under in (("chat", "floor"), ("chat-api", "chat")):
        if over in names and under in names:
            header.append(f"{over} ÷ {under}")
    return markdown_table(header, lines)


def write_report(rows, args, command):
    measured = [r for r in rows if r["phase"] != "warmup"]
    tables = markdown_table(STEP_HEADER, [step_cells(r) for r in measured])
    if args.bursts:
        ratios = burst_ratios(rows)
        title = f"{args.bursts} identical bursts at {args.burst_rate:g} deliveries/s"
        result = "\n".join(
            f"- **{name}**: server CPU per delivery, burst {args.bursts} ÷ burst 1 = {ratio}"
            for name, ratio in ratios.items()
        )
        method = (
            f"Each burst: all {args.rooms} × {args.room_size} members join fresh rooms, send "
            f"for {args.seconds:g} s, and every connection is closed; {args.pause:g} s of "
            "quiet follow. The cluster is never restarted between bursts."
        )
    else:
        title = "steady-state sweep"
        result = summary(measured)
        method = (
            f"All {args.rooms} × {args.room_size} members of each target join once and stay "
            f"connected. One warm-up step ({args.warmup_rate:g}/s, {args.warmup_seconds:g} s, "
            f"in results.csv only), then the rates in turn, {args.repeats} round(s), the "
            f"targets ({args.targets}) step by step, their order reversed every other step. "
            "The cluster is never restarted. chat-api is the same cluster with every "
            f"{args.api_share}th message the members make (counted per generator process) "
            "posted to a replica's HTTP API (the replicas in turn) instead of sent on the "
            "member's socket."
        )
    report = f"""# Load test: {title}

Run on {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC by `{command}`.

## Summary

{result}

## Method

{method}

A step offers a rate of deliveries/s: sends/s = rate ÷ {args.room_size} (room
size), spread evenly over the members, each sending a {args.message_bytes}-byte message at a
fixed interval from a random phase, for {args.seconds:g} s. Every message carries its send
time; a member receives its own message too, so expected deliveries = sent × room size, and
lost = expected − delivered after up to {args.settle:g} s of settling. Delivered/s counts what
arrived within the send window; latency is receive time − send time (same clock). Server
CPU is utime+stime from /proc over the send window (chat: Daphne replicas, nginx master and
workers, Redis; floor: its one process) ÷ deliveries in the window. The generator's CPU is
its {args.workers} worker processes' over the window, as % of one core (the busiest worker in
brackets: near 100 it would be the bottleneck).

## Setup

- Machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()},
  {platform.platform()}. The generator shares the cores with the servers.
- Chat: {args.replicas} Daphne replicas behind nginx (least_conn), Redis as the settings say,
  {", ".join(f"{k}={v}" for k, v in settings(args).items())}.
- Floor: `loadtests/floor_server.py`, one process, no nginx or Redis.

## Results

{tables}

Raw figures: `results.csv`.

## Reproduce

```
{command}
```
"""
    (args.out / "README.md").write_text(report)
    return report


def settings(args):
    extra = dict(setting.split("=", 1) for setting in args.setting)
    return {**CHAT_SETTINGS, **extra}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="2000,4000,6000,8000,10000", help="deliveries/s")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=15, help="send window of a step")
    parser.add_argument("--settle", type=float, default=5, help="at most, after a step")
    parser.add_argument("--warmup-rate", type=float, help="default: the first of --rates")
    parser.add_argument("--warmup-seconds", type=float, help="default: --seconds")
    parser.add_argument("--rooms", type=int, default=40)
    parser.add_argument("--room-size", type=int, default=10)
    parser.add_argument("--workers", type=int, default=3, help="generator processes per target")
    parser.add_argument("--message-bytes", type=int, default=100)
    parser.add_argument("--replicas", type=int, default=int(os.environ.get("REPLICAS", 3)))
    parser.add_argument("--targets", default="chat,chat-api,floor", help="of chat, chat-api, floor")
    parser.add_argument(
        "--api-share",
        type=int,
        default=10,
        help="chat-api: every Nth message goes through the HTTP API",
    )
    parser.add_argument(
        "--setting", action="append", default=[], help="a chat setting, e.g. CHAT_CONSUMER=sync"
    )
    parser.add_argument("--bursts", type=int, default=0, help="run N identical bursts instead")
    parser.add_argument("--burst-rate", type=float, default=4000)
    parser.add_argument("--pause", type=float, default=5, help="quiet after each burst")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    args.rates = [float(rate) for rate in args.rates.split(",")]
    args.warmup_rate = args.warmup_rate or args.rates[0]
    args.warmup_seconds = args.warmup_seconds or args.seconds
    kind = "bursts" if args.bursts else "steady"
    args.out = args.out or RESULTS_DIR.with_name(f"{RESULTS_DIR.name}-{kind}")
    return args


def main(argv=None):
    args = parse_args(argv)
    command = "python loadtests/steady.py " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "command.txt").write_text(command.strip() + "\n")
    load = Load(
        args.rooms, args.room_size, args.workers, args.seconds, args.settle, args.message_bytes
    )
    rows = []

    def record(row):
        rows.append(row)
        write_csv(args.out / "results.csv", rows, FIELDS)
        print(" ".join(str(cell) for cell in step_cells(row)), f"[{row['phase']}]", flush=True)

    with ExitStack() as stack:
        targets, cluster = [], None
        for name in args.targets.split(","):
            if name in ("chat", "chat-api"):
                if cluster is None:  # one cluster for both
                    # Logs and generated configuration stay out of the results.
                    run_dir = Path(tempfile.mkdtemp(prefix="steady-"))
                    cluster = LocalCluster(run_dir, args.replicas, settings(args))
                    cluster.up()
                    stack.callback(cluster.down)
                share = args.api_share if name == "chat-api" else 0
                targets.append(ChatTarget(cluster, share))
            elif name == "floor":
                targets.append(FloorTarget(stack.enter_context(FloorServer())))
            else:
                raise SystemExit(f"unknown target {name!r}: chat, chat-api or floor")
        if args.bursts:
            run_bursts(targets, load, args.burst_rate, args.bursts, args.pause, record)
        else:
            run_sweep(
                targets,
                load,
                args.rates,
                args.repeats,
                args.warmup_rate,
                args.warmup_seconds,
                record,
            )
    print(write_report(rows, args, command.strip()))
    print(f"report: {args.out / 'README.md'}")


if __name__ == "__main__":
    main()
