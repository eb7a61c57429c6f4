#!/usr/bin/env python3
"""`make soak`: a long, moderate, steady chat load on a fresh local cluster, and the
replicas' memory over time. Writes soak.csv and soak.md beside the other benchmarks
(loadtests/results/<date>/ by default).

    python loadtests/soak.py --minutes 30

It starts a 3-replica cluster (harness.cluster.LocalCluster: free ports, a temporary run
directory) and --clients independent WebSocket clients (harness.traffic's resuming
clients, paced under the rate limit their welcome frame states) in rooms of
--room-size, each sending --rate messages per second through nginx with a ref, for
--minutes. Every --sample-seconds it reads the resident
memory (VmRSS, /proc/<pid>/status) of every replica, of Redis and of this load
generator, and chat_connections_open and chat_messages_delivered_total from each
replica's /metrics. Then sending stops, the clients wait (at most --quiesce seconds)
for every acknowledgement and delivery, and it reports messages sent, acknowledged,
delivered, lost (acknowledged, not received by a member of the room) and duplicated.
The exit status is 1 if a message was lost, duplicated or left unanswered.
"""

import argparse
import asyncio
import math
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from harness.cluster import LocalCluster
from harness.processes import rss_kb
from harness.results import RESULTS_DIR, markdown_table, write_csv
from harness.traffic import Traffic

METRICS = ("chat_connections_open", "chat_messages_delivered_total")
FIELDS = ["elapsed_s", "phase", "process", "pid", "rss_kb", *METRICS]
TIME_TABLE_ROWS = 30  # rows of the report's RSS-over-time table, at most


def replica_metrics(port):
    """The METRICS of one replica's /metrics, None where it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return dict.fromkeys(METRICS)
    values = dict.fromkeys(METRICS)
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in values:
            values[name] = float(value)
    return values


def sample(cluster, elapsed, phase):
    """One row per replica, Redis and this load generator (blocking: run in a thread)."""
    pids = cluster.process_pids()
    rows = []
    for number in range(1, cluster.replicas + 1):
        name = f"chat-{number}"
        pid = pids.get(name)
        rows.append(
            {
                "process": name,
                "pid": pid,
                "rss_kb": rss_kb(pid) if pid else None,
                **replica_metrics(cluster.replica_port(number)),
            }
        )
    redis = pids.get("redis")
    rows.append({"process": "redis", "pid": redis, "rss_kb": rss_kb(redis) if redis else None})
    rows.append({"process": "loadgen", "pid": "self", "rss_kb": rss_kb("self")})
    for row in rows:
        row.update(elapsed_s=round(elapsed, 1), phase=phase)
    return rows


async def soak(args, log=print):
    run_dir = Path(tempfile.mkdtemp(prefix="soak-"))
    cluster = LocalCluster(run_dir, args.replicas)
    await asyncio.to_thread(cluster.up)
    rooms = math.ceil(args.clients / args.room_size)
    rows = []
    loop = asyncio.get_running_loop()
    seconds = args.minutes * 60
    traffic = Traffic(cluster, "soak", args.clients, rooms, args.rate, keep_timeline=False)
    try:
        deadline = loop.time() + seconds + args.quiesce + 120
        await traffic.join(deadline)
        started = loop.time()
        rows += await asyncio.to_thread(sample, cluster, 0, "joined")
        traffic.start_sending(started + seconds)
        next_sample = started + args.sample_seconds
        while loop.time() < traffic.sending_until:
            await asyncio.sleep(max(min(next_sample, traffic.sending_until) - loop.time(), 0))
            if loop.time() >= traffic.sending_until:
                break
            next_sample += args.sample_seconds
            taken = await asyncio.to_thread(sample, cluster, loop.time() - started, "traffic")
            rows += taken
            log(progress(taken, traffic))
        rows += await asyncio.to_thread(sample, cluster, loop.time() - started, "traffic")
        await traffic.stop_sending()
        quiesced, settled = await traffic.quiesce(args.quiesce)
        rows += await asyncio.to_thread(sample, cluster, loop.time() - started, "quiesced")
    finally:
        await traffic.close()
        leftovers = await asyncio.to_thread(cluster.down)
        if leftovers:
            log(f"processes left running after down: {leftovers}")
    figures = traffic.counts()
    figures.update(quiesce_s=round(quiesced, 1), settled=settled, run_dir=str(run_dir))
    return rows, figures


def progress(rows, traffic):
    replicas = "  ".join(
        f"{r['process']} {r['rss_kb'] / 1024:.1f} MB/{r['chat_connections_open'] or 0:.0f} conn"
        for r in rows
        if r["process"].startswith("chat-") and r["rss_kb"]
    )
    return f"{rows[0]['elapsed_s']:>7.0f} s  {replicas}  sent {len(traffic.messages)}"


def slope_mb_per_hour(points):
    """Least-squares slope of (seconds, KB) points, in MB per hour; nan if undefined."""
    if len(points) < 2:
        return float("nan")
    mean_t = sum(t for t, _ in points) / len(points)
    mean_kb = sum(kb for _, kb in points) / len(points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if not spread:
        return float("nan")
    slope = sum((t - mean_t) * (kb - mean_kb) for t, kb in points) / spread
    return slope * 3600 / 1024


def memory_summary(rows):
    """Per process: start (first sample under traffic), end (last under traffic), max,
    growth, and the slope over the second half of the traffic."""
    summary = {}
    for process in dict.fromkeys(row["process"] for row in rows):
        own = [r for r in rows if r["process"] == process and r["rss_kb"]]
        traffic = [r for r in own if r["phase"] == "traffic"]
        if not traffic:
            continue
        half = traffic[-1]["elapsed_s"] / 2
        start, end = traffic[0], traffic[-1]
        summary[process] = {
            "pids": list(dict.fromkeys(r["pid"] for r in own)),
            "joined_mb": own[0]["rss_kb"] / 1024,
            "start_mb": start["rss_kb"] / 1024,
            "end_mb": end["rss_kb"] / 1024,
            "max_mb": max(r["rss_kb"] for r in own) / 1024,
            "growth_mb": (end["rss_kb"] - start["rss_kb"]) / 1024,
            "late_slope_mb_per_h": slope_mb_per_hour(
                [(r["elapsed_s"], r["rss_kb"]) for r in traffic if r["elapsed_s"] >= half]
            ),
        }
    return summary


def time_table(rows, processes):
    """Elapsed seconds against each process's RSS in MB, at most TIME_TABLE_ROWS rows."""
    times = list(dict.fromkeys(r["elapsed_s"] for r in rows))
    step = max(1, math.ceil(len(times) / TIME_TABLE_ROWS))
    chosen = set(times[::step]) | {times[-1]}
    by_time = {}
    for row in rows:
        if row["elapsed_s"] in chosen:
            by_time.setdefault((row["elapsed_s"], row["phase"]), {})[row["process"]] = row
    lines = []
    for (elapsed, phase), found in by_time.items():
        memory = [
            f"{found[p]['rss_kb'] / 1024:.1f}" if p in found and found[p]["rss_kb"] else "-"
            for p in processes
        ]
        connections = "/".join(
            f"{found[p]['chat_connections_open']:.0f}"
            if p in found and found[p].get("chat_connections_open") is not None
            else "-"
            for p in processes
            if p.startswith("chat-")
        )
        lines.append([f"{elapsed:.0f}", phase, *memory, connections])
    header = ["elapsed s", "phase", *(f"{p} MB" for p in processes), "connections"]
    return markdown_table(header, lines)


def report(args, command, started_at, elapsed, rows, figures, summary):
    replicas = [p for p in summary if p.startswith("chat-")]
    processes = [*replicas, *(p for p in ("redis", "loadgen") if p in summary)]
    memory = markdown_table(
        ["process", "PIDs", "joined MB", "start MB", "end MB", "max MB", "growth MB"]
        + ["late slope MB/h"],
        [
            [
                name,
                ", ".join(str(p) for p in s["pids"]),
                f"{s['joined_mb']:.1f}",
                f"{s['start_mb']:.1f}",
                f"{s['end_mb']:.1f}",
                f"{s['max_mb']:.1f}",
                f"{s['growth_mb']:+.1f}",
                f"{s['late_slope_mb_per_h']:+.1f}",
            ]
            for name, s in summary.items()
        ],
    )
    growth = ", ".join(
        f"{name} {summary[name]['start_mb']:.1f} → {summary[name]['end_mb']:.1f} MB "
        f"({summary[name]['growth_mb']:+.1f})"
        for name in replicas
    )
    verdict = (
        "nothing was lost, duplicated or left unanswered"
        if passed(figures)
        else f"**{figures['lost']} lost, {figures['duplicated']} duplicated, "
        f"{figures['unanswered']} unanswered**"
    )
    restarted = [name for name in replicas if len(summary[name]["pids"]) > 1]
    restarts = (
        f" Replicas restarted during the run (several PIDs): {', '.join(restarted)}."
        if restarted
        else ""
    )
    minutes = f"{args.minutes:g} minute{'' if args.minutes == 1 else 's'}"
    return f"""# Soak: {args.replicas} replicas under steady chat load for {minutes}

`{command}`, started {started_at:%Y-%m-%d %H:%M} UTC, {elapsed / 60:.1f} minutes in all.

## Summary

- Resident memory under traffic, first to last sample: {growth}.
- Messages: {figures["sent"]} sent, {figures["acked"]} acknowledged, {figures["refused"]} refused,
  {figures["delivered_total"]} delivered (per client {figures["delivered_min"]} to
  {figures["delivered_max"]}); {verdict}.{restarts}

## Method

A fresh local cluster ({args.replicas} Daphne replicas, async consumer, pub/sub layer, behind
nginx, one Redis) on free ports. {figures["clients"]} independent asyncio WebSocket clients
(harness.traffic's, which resume after any close) join {figures["rooms"]} rooms of up to
{args.room_size} through nginx; each sends {args.rate:g} message(s) per second with a unique
ref, steadily, for {minutes}, so the cluster carries
{figures["clients"] * args.rate:g} messages/s and about
{figures["clients"] * args.rate * args.room_size:g} deliveries/s. Every {args.sample_seconds:g} s
the run reads VmRSS from /proc/<pid>/status for each replica (PIDs from `cluster.py describe`),
Redis and the load generator, and `chat_connections_open` from each replica's /metrics.
"start" is the first sample under traffic, "end" the last one; "late slope" is the
least-squares slope over the second half of the traffic, which leaves out warm-up. After the
traffic the clients wait up to {args.quiesce:g} s for every acknowledgement and delivery
(took {figures["quiesce_s"]} s); lost = acknowledged messages some member of the room never
received. The load generator's own memory grows by design: it keeps a record of every message;
Redis' grows until each room's history holds its CHAT_HISTORY_MAX_LENGTH messages.

## Results

{memory}

RSS over time (connections per replica from /metrics):

{time_table(rows, processes)}

Messages: sent {figures["sent"]}, acknowledged {figures["acked"]}, refused
{figures["refused"]}, unanswered {figures["unanswered"]}, resent {figures["resent"]}, delivered
{figures["delivered_total"]}, lost {figures["lost"]} ({figures["missing_deliveries"]} missing
deliveries), duplicated {figures["duplicated"]}; reconnects {figures["reconnects"]}, close codes
{figures["closes"] or "none"}, errors {figures["errors"] or "none"}. Every sample is in
`soak.csv` ({", ".join(FIELDS)}).

## Reproduce

`{command}` (`make soak`); `--minutes 1` for a quick check.
"""


def passed(figures):
    return not (figures["lost"] or figures["duplicated"] or figures["unanswered"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--clients", type=int, default=60)
    parser.add_argument("--room-size", type=int, default=10)
    parser.add_argument("--rate", type=float, default=1, help="messages per second per client")
    parser.add_argument("--sample-seconds", type=float, default=10)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--quiesce", type=float, default=30)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if not (0 < args.minutes <= 24 * 60 and args.clients >= 1 and args.room_size >= 1):
        parser.error("need 0 < --minutes <= 1440, --clients >= 1 and --room-size >= 1")
    if not (args.rate > 0 and args.sample_seconds >= 1):
        parser.error("need --rate > 0 and --sample-seconds >= 1")
    command = " ".join(["python loadtests/soak.py", *(argv or sys.argv[1:])])
    started_at = datetime.now(UTC)
    started = time.monotonic()
    rows, figures = asyncio.run(soak(args))
    elapsed = time.monotonic() - started
    summary = memory_summary(rows)

    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "soak.csv", rows, FIELDS)
    text = report(args, command, started_at, elapsed, rows, figures, summary)
    (args.out / "soak.md").write_text(text)
    print()
    print("| process | start MB | end MB | max MB | growth MB | late slope MB/h |")
    for name, s in summary.items():
        print(
            f"| {name} | {s['start_mb']:.1f} | {s['end_mb']:.1f} | {s['max_mb']:.1f} | "
            f"{s['growth_mb']:+.1f} | {s['late_slope_mb_per_h']:+.1f} |"
        )
    keys = ("sent", "acked", "refused", "unanswered", "delivered_total", "lost", "duplicated")
    print("messages: " + ", ".join(f"{key} {figures[key]}" for key in keys))
    print(f"wrote {args.out / 'soak.csv'} and {args.out / 'soak.md'}; logs in {figures['run_dir']}")
    return 0 if passed(figures) else 1


if __name__ == "__main__":
    sys.exit(main())
