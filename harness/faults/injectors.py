"""The faults, each injected into a running local cluster, noted in a `fault` dict:
kill (SIGKILL to the busiest replica), redis (restarted without its data), rolling
(every replica drained and restarted, one at a time), shard (the last of several Redis
shards restarted without its data), failover (SIGKILL to the primary under Sentinel),
api (kill and failover at once, while a service posts through the HTTP API)."""

import asyncio
import os
import signal
from collections import Counter

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from .network import NETWORK_INJECTORS

FAILOVER_TIMEOUT_S = 60


async def process_pids(cluster):
    return await asyncio.to_thread(cluster.process_pids)


async def describe(cluster):
    return await asyncio.to_thread(cluster.describe)


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


async def restart_redis(cluster, name, fault):
    pid = (await process_pids(cluster))[name]
    fault["action"] = f"cluster.py restart {name} (pid {pid}; nothing persisted)"
    fault["injected_at"] = asyncio.get_running_loop().time()
    result = await asyncio.to_thread(cluster.run, "restart", name, check=False)
    fault["back_after_s"] = asyncio.get_running_loop().time() - fault["injected_at"]
    fault["restarted"] = {name: [pid, (await process_pids(cluster)).get(name)]}
    if result.returncode != 0:
        fault["errors"].append(f"cluster.py restart {name}: {last_line(result.stderr)}")


async def inject_redis(cluster, traffic, fault):
    await restart_redis(cluster, "redis", fault)


async def inject_shard(cluster, traffic, fault):
    """The last of the cluster's Redis shards restarts; the rooms on the others must not
    notice."""
    await restart_redis(cluster, cluster.redis_names[-1], fault)


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


async def sentinel_primary(cluster, master="chat"):
    """The port of the primary the cluster's first Sentinel names, or None."""
    client = aioredis.Redis(port=cluster.sentinel_port, socket_timeout=1)
    try:
        address = await client.sentinel_get_master_addr_by_name(master)
    except (RedisError, OSError):
        return None
    finally:
        await client.aclose()
    return int(address[1]) if address else None


async def inject_failover(cluster, traffic, fault):
    """SIGKILL to the first shard's primary, which stays down (a host that died) until
    the Sentinels have promoted a replica; then started again, to rejoin as a replica."""
    loop = asyncio.get_running_loop()
    names = {port: name for name, port in (await describe(cluster))["redis_ports"].items()}
    old_port = await sentinel_primary(cluster)
    name = names[old_port]
    pid = (await process_pids(cluster))[name]
    # With Sentinel supervisord leaves a dead Redis server down (redis_servers.py).
    fault["action"] = f"SIGKILL {name} (pid {pid}, the primary), down until a failover"
    os.kill(pid, signal.SIGKILL)
    fault["injected_at"] = loop.time()
    deadline = loop.time() + FAILOVER_TIMEOUT_S
    port = old_port
    while port in (old_port, None) and loop.time() < deadline:
        await asyncio.sleep(0.1)
        port = await sentinel_primary(cluster)
    if port in (old_port, None):
        fault["errors"].append(f"no failover within {FAILOVER_TIMEOUT_S} s")
        return
    fault["failover_s"] = loop.time() - fault["injected_at"]
    fault["new_primary"] = names[port]
    await asyncio.to_thread(cluster.run, "start", name, check=False)
    await wait_ready(cluster)  # status: every replica ready, every Redis in sync
    fault["restarted"] = {name: [pid, (await process_pids(cluster)).get(name)]}
    fault["back_after_s"] = loop.time() - fault["injected_at"]


async def inject_kill_and_failover(cluster, traffic, fault):
    """A replica SIGKILLed and the Redis primary SIGKILLed at the same moment: the
    publisher's posts meet both (harness/faults/publisher.py)."""
    kill, failover = {"errors": fault["errors"]}, {"errors": fault["errors"]}
    await asyncio.gather(
        inject_kill(cluster, traffic, kill), inject_failover(cluster, traffic, failover)
    )
    fault["action"] = f"{kill.get('action')}; and {failover.get('action')}"
    fault["injected_at"] = min(kill.get("injected_at") or 0, failover.get("injected_at") or 0)
    fault["restarted"] = {**kill.get("restarted", {}), **failover.get("restarted", {})}
    for name in ("failover_s", "new_primary"):
        if name in failover:
            fault[name] = failover[name]
    fault["back_after_s"] = max(kill.get("back_after_s", 0), failover.get("back_after_s", 0))


INJECTORS = {
    "kill": inject_kill,
    "redis": inject_redis,
    "rolling": inject_rolling,
    "shard": inject_shard,
    "failover": inject_failover,
    "api": inject_kill_and_failover,
}
INJECTORS.update(NETWORK_INJECTORS)  # partition, slow: on a CLUSTER_NETWORK=netns cluster
