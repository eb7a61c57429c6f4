"""A fault drill's scenarios on a local cluster of their own: steady traffic in fresh
rooms, the fault injected after a warm-up, traffic on until it settles, then figures."""

import asyncio
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from ..cluster import LocalCluster
from ..logs import log_findings, log_offsets
from ..recovery import ack_recovery, delivery_recovery, longest_silence, max_resume
from ..shards import room_shard, rooms_across_shards
from ..traffic import Traffic
from .injectors import INJECTORS, wait_ready
from .network import CLUSTER_SETTINGS as NETWORK_SETTINGS
from .publisher import ApiPublisher
from .report import summary_line
from .targets import targets

SCENARIOS = tuple(INJECTORS)
# What a scenario's cluster needs beyond Options.settings; scenarios that need the
# same share one cluster.
CLUSTER_SETTINGS = {
    "shard": {"REDIS_SHARDS": "2"},
    "failover": {"REDIS_HA": "sentinel"},
    "api": {"REDIS_HA": "sentinel"},
    **NETWORK_SETTINGS,  # partition, slow: CLUSTER_NETWORK=netns
}
# Scenarios whose clients resend a message refused with `unavailable` (as the browser
# page does), this many times a second apart: a failover's refusals are transient.
UNAVAILABLE_RETRIES = {"failover": 10, "api": 10}
# Scenarios in which a service also posts through the HTTP API (harness/faults/publisher.py).
PUBLISHING_SCENARIOS = ("api",)
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
    api_rate: float = 10.0  # HTTP API posts per second, in the publishing scenarios
    settings: dict = field(default_factory=dict)  # more service settings, NAME -> value

    def cluster_settings(self):
        return {"CHAT_DRAIN_SECONDS": str(self.drain_seconds), **self.settings}


async def run_scenario(cluster, scenario, options):
    """Runs one scenario on a running cluster; returns its figures (a dict)."""
    loop = asyncio.get_running_loop()
    await wait_ready(cluster)
    offsets = log_offsets(cluster)
    choose = partial(rooms_across_shards, cluster) if cluster.redis_shards > 1 else None
    traffic = Traffic(
        cluster,
        scenario,
        options.clients,
        options.rooms,
        options.rate,
        choose=choose,
        unavailable_retries=UNAVAILABLE_RETRIES.get(scenario, 0),
    )
    deadline = loop.time() + options.seconds + options.quiesce + CONNECTION_LOOP_SPARE_S
    fault = {"action": None, "injected_at": None, "errors": []}
    publisher = None
    if scenario in PUBLISHING_SCENARIOS:
        publisher = await asyncio.to_thread(ApiPublisher, cluster, traffic, options.api_rate)
    try:
        await traffic.join(deadline)
        spread = Counter(client.replica for client in traffic.clients)
        started = loop.time()
        sending_until = started + max(options.seconds, options.warmup + options.settle)
        traffic.start_sending(deadline)  # stopped below, once the fault is over
        if publisher is not None:
            publisher.start(until=deadline)
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
        if publisher is not None:
            publisher.stop()
        await traffic.stop_sending()
        stopped = loop.time()
        traffic_seconds = stopped - started
        if publisher is not None:
            await publisher.settle()
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
    if publisher is not None:
        figures["api"] = publisher.figures()
    if scenario == "shard":
        figures["shards"] = shard_figures(cluster, traffic, injected_at, stopped)
    figures["targets"] = targets(scenario, figures, options.recovery_limit)
    figures["passed"] = all(figures["targets"].values())
    return figures


def shard_figures(cluster, traffic, injected_at, stopped):
    """The figures of the rooms on the restarted (last) shard and of the others apart;
    silences are measured from the injection until sending stopped."""
    restarted = cluster.redis_shards - 1
    rooms = {"untouched": [], "restarted": []}
    for room in traffic.rooms:
        rooms["restarted" if room_shard(cluster, room) == restarted else "untouched"].append(room)
    figures = {}
    for part, names in rooms.items():
        clients = [client for client in traffic.clients if client.room in names]
        figures[part] = {
            **traffic.counts(names),
            "recovery_s": round(delivery_recovery(clients, injected_at), 2),
            "ack_recovery_s": round(ack_recovery(clients, injected_at), 2),
            "longest_silence_s": round(longest_silence(clients, injected_at, stopped), 2),
        }
    return figures


def start_cluster(options, run_dir=None, settings=None):
    run_dir = Path(run_dir) if run_dir else Path(tempfile.mkdtemp(prefix="faults-"))
    settings = {**options.cluster_settings(), **(settings or {})}
    cluster = LocalCluster(run_dir, options.replicas, settings)
    cluster.up()
    return cluster


def clusters_needed(scenarios):
    """The scenarios grouped by the cluster settings they need, in their order."""
    groups = {}
    for scenario in scenarios:
        settings = CLUSTER_SETTINGS.get(scenario, {})
        groups.setdefault(tuple(sorted(settings.items())), []).append(scenario)
    return [(dict(settings), names) for settings, names in groups.items()]


async def run(options, scenarios=SCENARIOS, run_dir=None, report=print):
    """Starts a cluster for each kind the scenarios need, runs them one after another,
    stops each by PID. Returns the figures and the run directories."""
    results, run_dirs = [], []
    for settings, names in clusters_needed(scenarios):
        directory = Path(run_dir) / names[0] if run_dir and settings else run_dir
        cluster = await asyncio.to_thread(start_cluster, options, directory, settings)
        run_dirs.append(cluster.run_dir)
        try:
            for scenario in names:
                report(f"{scenario}: running ({cluster.run_dir})")
                results.append(await run_scenario(cluster, scenario, options))
                report(summary_line(results[-1]))
        finally:
            leftovers = await asyncio.to_thread(cluster.down)
            if leftovers:
                report(f"processes left running after down: {leftovers}")
    return results, run_dirs
