"""What the local cluster asks the network: whether its ports are free before it
starts, whether each program answers its readiness URL, and each Redis' role."""

import socket
import urllib.error
import urllib.request

import redis
from config import HOST, ClusterError


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
    """What each Redis server of `ports` ({name: port}) is now: "primary", "replica of
    <port>", "sentinel: <n> primaries", or "down"."""
    roles = {}
    for name, port in ports.items():
        client = redis.Redis(HOST, port, socket_timeout=1, socket_connect_timeout=1)
        try:
            info = client.info("replication" if not name.startswith("sentinel") else "sentinel")
        except (redis.RedisError, OSError):
            roles[name] = "down"
            continue
        finally:
            client.close()
        if "sentinel_masters" in info:
            roles[name] = f"sentinel: {info['sentinel_masters']} primaries"
        elif info.get("role") == "master":
            roles[name] = f"primary, {info.get('connected_slaves', 0)} replicas"
        else:
            link = info.get("master_link_status", "?")
            roles[name] = f"replica of {info.get('master_port')} (link {link})"
    return roles


def not_in_sync(role):
    """Whether a redis_roles() role is a server that cannot serve yet."""
    return role == "down" or "(link down)" in role
