"""The faults, each injected into a running local cluster, noted in a `fault` dict:
kill (SIGKILL to the busiest replica), redis (restarted without its data), rolling
(every replica drained and restarted, one at a time)."""

import asyncio
import os
import signal
from collections import Counter

from .network import NETWORK_INJECTORS


async def process_pids(cluster):
    return await asyncio.to_thread(cluster.process_pids)


async def wait_ready(cluster, timeout=60):
    """Until `cluster.py status` says every process runs and every replica is ready."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        result = await asyncio.to_thread(cluster.run, "status", check=False)
        if result.returncode == 0:
            return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"cluster not ready after {timeout} s:\n{result.stdout}")


async def wait_replaced(cluster, name, old_pid, timeout=60):
    """Until supervisord runs a new process for `name` and the cluster is ready."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        pid = (await process_pids(cluster)).get(name)
        if pid and pid != old_pid:
            await wait_ready(cluster, max(deadline - loop.time(), 1))
            return pid
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{name} (pid {old_pid}) was not restarted within {timeout} s")


def last_line(text):
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


async def inject_kill(cluster, traffic, fault):
    serving = Counter(c.replica for c in traffic.clients if c.ready.is_set())
    name = max(cluster.replica_names(), key=lambda n: (serving[n], n == "chat-1"))
    pid = (await process_pids(cluster))[name]
    fault["action"] = f"SIGKILL {name} (pid {pid}, serving {serving[name]} clients)"
    os.kill(pid, signal.SIGKILL)
    fault["injected_at"] = asyncio.get_running_loop().time()
    new_pid = await wait_replaced(cluster, name, pid)
    fault["restarted"] = {name: [pid, new_pid]}
    fault["back_after_s"] = asyncio.get_running_loop().time() - fault["injected_at"]


async def inject_redis(cluster, traffic, fault):
    pid = (await process_pids(cluster))["redis"]
    fault["action"] = f"cluster.py restart redis (pid {pid}; nothing persisted)"
    fault["injected_at"] = asyncio.get_running_loop().time()
    result = await asyncio.to_thread(cluster.run, "restart", "redis", check=False)
    fault["back_after_s"] = asyncio.get_running_loop().time() - fault["injected_at"]
    fault["restarted"] = {"redis": [pid, (await process_pids(cluster)).get("redis")]}
    if result.returncode != 0:
        fault["errors"].append(f"cluster.py restart redis: {last_line(result.stderr)}")


async def inject_rolling(cluster, traffic, fault):
    before = await process_pids(cluster)
    names = cluster.replica_names()
    fault["action"] = f"cluster.py restart ({', '.join(names)}, one at a time)"
    fault["injected_at"] = asyncio.get_running_loop().time()
    result = await asyncio.to_thread(cluster.run, "restart", check=False)
    if result.returncode != 0:
        # The fault still has to happen: each replica gets SIGTERM by PID (it drains
        # and exits; supervisord starts it again), ready before the next.
        fault["errors"].append(f"cluster.py restart failed: {last_line(result.stderr)}")
        fault["action"] += "; it failed, so SIGTERM to each replica's PID instead"
        for name in names:
            pid = (await process_pids(cluster))[name]
            os.kill(pid, signal.SIGTERM)
            await wait_replaced(cluster, name, pid)
    else:
        fault["output"] = result.stdout.strip().splitlines()
    after = await process_pids(cluster)
    fault["restarted"] = {name: [before.get(name), after.get(name)] for name in names}
    unchanged = [name for name in names if before.get(name) == after.get(name)]
    if unchanged:
        fault["errors"].append(f"not restarted: {', '.join(unchanged)}")
    fault["back_after_s"] = asyncio.get_running_loop().time() - fault["injected_at"]


INJECTORS = {"kill": inject_kill, "redis": inject_redis, "rolling": inject_rolling}
INJECTORS.update(NETWORK_INJECTORS)  # partition, slow: on a CLUSTER_NETWORK=netns cluster
