"""Steady traffic on a Sentinel cluster (REDIS_HA=sentinel, as the failover drill's), no
fault: replica CPU per delivery, delivery latency percentiles, and optionally a py-spy
profile of chat-1 mid-run. Run from a tree's root with its venv:

    .venv/bin/python <this file> <profile file, or -> [messages per second per client]
"""

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from harness.faults.scenarios import Options, start_cluster
from harness.traffic import Traffic

OUT = sys.argv[1]
RATE = float(sys.argv[2]) if len(sys.argv) > 2 else 5
SECONDS = 25
PY_SPY = "/work/main/.venv/bin/py-spy"


def replica_cpu(pids):
    """Seconds of CPU (user and system) the processes have used."""
    total = 0
    for pid in pids.values():
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def quantile(values, share):
    return values[min(len(values) - 1, int(share * len(values)))]


async def main():
    options = Options(clients=60, rooms=6, rate=RATE, drain_seconds=2)
    cluster = await asyncio.to_thread(start_cluster, options, None, {"REDIS_HA": "sentinel"})
    try:
        loop = asyncio.get_running_loop()
        traffic = Traffic(cluster, "load", 60, 6, RATE, unavailable_retries=10)
        deadline = loop.time() + SECONDS + 60
        await traffic.join(deadline)
        started = loop.time()
        pids = cluster.replica_pids()
        cpu_start = replica_cpu(pids)
        traffic.start_sending(deadline)
        await asyncio.sleep(8)
        if OUT != "-":
            pid = str(pids["chat-1"])
            command = [PY_SPY, "record", "-d", "10", "-r", "200", "-p", pid, "-f", "raw", "-o", OUT]
            await asyncio.to_thread(subprocess.run, command, capture_output=True)
        await asyncio.sleep(max(0, SECONDS - (loop.time() - started)))
        await traffic.stop_sending()
        await traffic.quiesce(20)
        cpu_used = replica_cpu(pids) - cpu_start
    finally:
        await traffic.close()
        await asyncio.to_thread(cluster.down)
    latencies = sorted(
        got - created
        for client in traffic.clients
        for got, created in client.timeline
        if created >= started + 3
    )
    print("run_dir", cluster.run_dir)
    print(f"replica cpu {cpu_used:.1f} s, per delivery {cpu_used / len(latencies) * 1000:.3f} ms")
    p50, p90, p99 = (quantile(latencies, share) * 1000 for share in (0.5, 0.9, 0.99))
    print(f"deliveries {len(latencies)} p50 {p50:.0f} ms p90 {p90:.0f} p99 {p99:.0f}")


asyncio.run(main())
