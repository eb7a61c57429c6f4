"""A fault drill's scenarios on a local cluster of their own: steady traffic in fresh
rooms, the fault injected after a warm-up, traffic on until it settles, then figures."""

import asyncio
import tempfile
from collections import Counter
from dataclasses import dataclass, field, replace
from itertools import groupby
from pathlib import Path

from ..cluster import LocalCluster
from ..logs import log_findings, log_offsets
from ..recovery import ack_recovery, delivery_recovery, max_resume
from ..traffic import Traffic
from .injectors import INJECTORS, wait_ready
from .network import cluster_settings
from .report import summary_line
from .targets import targets

SCENARIOS = tuple(INJECTORS)
INJECTION_TIMEOUT_S = 180
# Beyond every phase of a scenario, a hard bound for the clients' connection loops.
CONNECTION_LOOP_SPARE_S = 150


@dataclass
class Options:
    clients: int = 30
    rooms: int = 3
    rate: float = 5.0  # messages per second per client
    seconds: float = 12.0  # traffic per scenario, at least
    warmup: float = 4.0  # traffic before the fault
    settle: float = 3.0  # traffic after the injection finished, at least
    quiesce: float = 20.0  # at most, after sending stopped
    drain_seconds: int = 2
    replicas: int = 3
    recovery_limit: float = 5.0
    settings: dict = field(default_factory=dict)  # more service settings, NAME -> value

    def cluster_settings(self):
        return {"CHAT_DRAIN_SECONDS": str(self.drain_seconds), **self.settings}


async def run_scenario(cluster, scenario, options):
    """Runs one scenario on a running cluster; returns its figures (a dict)."""
    loop = asyncio.get_running_loop()
    await wait_ready(cluster)
    offsets = log_offsets(cluster)
    traffic = Traffic(cluster, scenario, options.clients, options.rooms, options.rate)
    deadline = loop.time() + options.seconds + options.quiesce + CONNECTION_LOOP_SPARE_S
    fault = {"action": None, "injected_at": None, "errors": []}
    try:
        await traffic.join(deadline)
        spread = Counter(client.replica for client in traffic.clients)
        started = loop.time()
        sending_until = started + max(options.seconds, options.warmup + options.settle)
        traffic.start_sending(deadline)  # stopped below, once the fault is over
        await asyncio.sleep(options.warmup)
        injection = loop.create_task(INJECTORS[scenario](cluster, traffic, fault))
        try:
            await asyncio.wait_for(asyncio.shield(injection), INJECTION_TIMEOUT_S)
        except TimeoutError:
            fault["errors"].append(f"the injection did not finish in {INJECTION_TIMEOUT_S} s")
        except Exception as error:  # reported: "the fault took effect" then fails
            fault["errors"].append(f"the injection failed: {error!r}")
        injected_done = loop.time()
        remaining = max(sending_until - loop.time(), injected_done + options.settle - loop.time())
        await asyncio.sleep(max(remaining, 0))
        await traffic.stop_sending()
        traffic_seconds = loop.time() - started
        quiesced, settled = await traffic.quiesce(options.quiesce)
        if not injection.done():
            injection.cancel()
    finally:
        await traffic.close()
    injected_at = fault["injected_at"] or injected_done
    figures = {
        "scenario": scenario,
        **traffic.counts(),
        "rate": options.rate,
        "traffic_s": round(traffic_seconds, 1),
        "quiesce_s": round(quiesced, 1),
        "settled": settled,
        "spread": dict(sorted(spread.items())),
        "fault": {
            **{k: v for k, v in fault.items() if k != "injected_at"},
            "injected_after_s": round(injected_at - started, 2),
            "back_after_s": round(fault.get("back_after_s", float("nan")), 2),
        },
        "recovery_s": round(delivery_recovery(traffic.clients, injected_at), 2),
        "ack_recovery_s": round(ack_recovery(traffic.clients, injected_at), 2),
        "max_resume_s": round(max_resume(traffic.clients), 2),
        "logs": log_findings(cluster, offsets),
    }
    figures["targets"] = targets(scenario, figures, options.recovery_limit)
    figures["passed"] = all(figures["targets"].values())
    return figures


def start_cluster(options, run_dir=None):
    run_dir = Path(run_dir) if run_dir else Path(tempfile.mkdtemp(prefix="faults-"))
    cluster = LocalCluster(run_dir, options.replicas, options.cluster_settings())
    cluster.up()
    return cluster


async def run(options, scenarios=SCENARIOS, run_dir=None, report=print):
    """Starts a cluster, runs the scenarios one after another, stops it by PID. Scenarios
    that need another network (network.cluster_settings) get a cluster of their own,
    in a directory of run_dir named after the first of them."""
    run_dir = Path(run_dir) if run_dir else Path(tempfile.mkdtemp(prefix="faults-"))
    results = []
    for settings, group in groupby(scenarios, cluster_settings):
        group = list(group)
        cluster_options = replace(options, settings={**settings, **options.settings})
        cluster_dir = run_dir / group[0] if settings else run_dir
        cluster = await asyncio.to_thread(start_cluster, cluster_options, cluster_dir)
        try:
            for scenario in group:
                report(f"{scenario}: running ({cluster.run_dir})")
                results.append(await run_scenario(cluster, scenario, cluster_options))
                report(summary_line(results[-1]))
        finally:
            leftovers = await asyncio.to_thread(cluster.down)
            if leftovers:
                report(f"processes left running after down: {leftovers}")
    return results, run_dir
