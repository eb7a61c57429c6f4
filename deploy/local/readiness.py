"""What the local cluster asks the network: whether its ports are free before it
starts, whether each program answers its readiness URL, and each Redis' role."""

import socket
import urllib.error
import urllib.request

import redis
from config import HOST, ClusterError
from redis_servers import REPLICAS_PER_SHARD, SENTINELS


def check_ports_free(ports):
    """Raises ClusterError naming the first busy port of `ports` ({setting: port})."""
    for name, port in ports.items():
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


def readiness(urls):
    """The state of each of `urls` ({name: url}): ready, HTTP <status> or down (<reason>)."""
    states = {}
    for name, url in urls.items():
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                states[name] = "ready" if response.status == 200 else f"HTTP {response.status}"
        except urllib.error.HTTPError as error:
            states[name] = f"HTTP {error.code}"
        except (urllib.error.URLError, OSError) as error:
            states[name] = f"down ({getattr(error, 'reason', error)})"
    return states


def redis_roles(ports):
    """What each Redis server or Sentinel of `ports` ({name: port}) is now: "primary,
    <n> replicas", "replica of <port> (link up|down)", "sentinel: ...", or "down"."""
    roles = {}
    for name, port in ports.items():
        client = redis.Redis(HOST, port, socket_timeout=1, socket_connect_timeout=1)
        try:
            roles[name] = sentinel_role(client) if name.startswith("sentinel") else role(client)
        except (redis.RedisError, OSError):
            roles[name] = "down"
        finally:
            client.close()
    return roles


def role(client):
    info = client.info("replication")
    if info.get("role") == "master":
        return f"primary, {info.get('connected_slaves', 0)} replicas"
    link = info.get("master_link_status", "?")
    return f"replica of {info.get('master_port')} (link {link})"


def sentinel_role(client):
    """What a Sentinel knows. It learns of replicas from its primaries' INFO, every 10 s:
    until it knows them all, a failover would find none to promote."""
    masters = client.sentinel_masters()
    replicas = min(
        (
            sum(not (r["is_sdown"] or r["is_disconnected"]) for r in client.sentinel_slaves(name))
            for name in masters
        ),
        default=0,
    )
    others = min((int(m["num-other-sentinels"]) for m in masters.values()), default=0)
    learning = replicas < REPLICAS_PER_SHARD or others < SENTINELS - 1
    return (
        f"sentinel: {len(masters)} primaries, {replicas} replicas and {others} Sentinels"
        f" each{' (learning)' if learning else ''}"
    )


def not_in_sync(role):
    """Whether a redis_roles() role is a server that cannot serve yet, or a Sentinel that
    could not fail over yet."""
    return role == "down" or "(link down)" in role or "(learning)" in role
