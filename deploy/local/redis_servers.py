"""The local cluster's Redis servers: one per shard (REDIS_SHARDS), and with
REDIS_HA=sentinel two replicas for each and three Sentinels that watch them all. Names,
ports, roles and the settings the replicas get; rendering.py renders their files.

Program names stay with the process, not the role: after a failover `redis-b` may be
a shard's primary and `redis` a replica (`make status` shows the roles).
"""

from dataclasses import dataclass

from network import LOOPBACK as HOST

SENTINELS = 3
# Replicas of each shard's primary. Two, so that after a failover the new primary still
# has one to confirm each message (REDIS_ACK_REPLICAS=1) while the old one is away:
# with one, every message would be refused until the old primary came back.
REPLICAS_PER_SHARD = 2
# A majority of the Sentinels must agree that a primary is down.
SENTINEL_QUORUM = 2
# A failover not done in this long is given up, and one is tried again after twice it.
# Short: a first attempt aborts when the Sentinels' last INFO from the replicas is more
# than 5 s old (-failover-abort-no-good-slave; they ask every 10 s until the primary is
# down), and with 10 s the next came 20 s later.
SENTINEL_FAILOVER_TIMEOUT_MS = 3_000


def shard_suffix(shard):
    return "" if shard == 1 else f"-{shard}"


@dataclass(frozen=True)
class RedisServer:
    name: str  # the supervised program
    port: int
    shard: int  # 1 ... shards
    replica_of: int | None = None  # the port of the primary it starts as a replica of

    @property
    def master_name(self):
        """The Sentinel name of its shard: chat, chat-2 ..."""
        return f"chat{shard_suffix(self.shard)}"


@dataclass(frozen=True)
class RedisLayout:
    shards: int
    port: int  # REDIS_PORT: shard N's (first) server listens on port + N - 1
    ha: str = "none"  # or "sentinel"
    sentinel_port: int = 26379
    down_after_ms: int = 2000
    appendonly: str = "no"  # or "everysec"

    @property
    def sentinel(self):
        return self.ha == "sentinel"

    @property
    def servers(self):
        """Every Redis server: the shards' first servers, then (HA) their replicas, -b
        and -c, on the ports after them."""
        primaries = [
            RedisServer(f"redis{shard_suffix(n)}", self.port + n - 1, n)
            for n in range(1, self.shards + 1)
        ]
        if not self.sentinel:
            return primaries
        replicas = [
            RedisServer(f"{first.name}-{letter}", port, first.shard, first.port)
            for copy, letter in enumerate("bc"[:REPLICAS_PER_SHARD], start=1)
            for first in primaries
            for port in [self.port + copy * self.shards + first.shard - 1]
        ]
        return primaries + replicas

    @property
    def primaries(self):
        """The servers that start as their shard's primary."""
        return [server for server in self.servers if server.replica_of is None]

    @property
    def sentinel_ports(self):
        """Each Sentinel's port, by program name: sentinel-1 ... sentinel-3."""
        if not self.sentinel:
            return {}
        return {f"sentinel-{n}": self.sentinel_port + n - 1 for n in range(1, SENTINELS + 1)}

    @property
    def ports(self):
        """The port of every Redis and Sentinel program, by name."""
        return {**{server.name: server.port for server in self.servers}, **self.sentinel_ports}

    @property
    def restarts_servers(self):
        """Whether supervisord starts a Redis server that died again. Not with Sentinel:
        there one that dies stays down, as a failed host would, and the Sentinels promote
        a replica (`cluster.py start redis` brings it back, as a replica). Started again
        at once, from its AOF, it would often be back before the Sentinels noticed, and
        a failover would neither happen nor be drilled."""
        return not self.sentinel

    @property
    def persistence(self):
        # A primary restarted empty, before the Sentinels notice, would be followed by
        # its replica and wipe it: with Sentinel every server keeps an append-only file.
        return "everysec" if self.sentinel else self.appendonly

    def service_settings(self, environ, urls):
        """The Redis settings every replica gets; `urls` are the primaries' URLs."""
        if not self.sentinel:
            return {"REDIS_URLS": ",".join(urls)}
        return {
            "REDIS_SENTINELS": ",".join(f"{HOST}:{port}" for port in self.sentinel_ports.values()),
            "REDIS_SENTINEL_MASTERS": ",".join(s.master_name for s in self.primaries),
            # An ack waits for the replica unless the environment asks otherwise.
            "REDIS_ACK_REPLICAS": environ.get("REDIS_ACK_REPLICAS") or "1",
        }

    def server_options(self, server):
        """redis.conf lines particular to one server."""
        lines = [
            f"appendonly {'no' if self.persistence == 'no' else 'yes'}",
            "appendfsync everysec",
        ]
        if self.sentinel:
            # A replica that needs a full copy after a failover gets it at once, not
            # after Redis' 5 s wait for others: until then WAIT 1 refuses every message.
            lines.append("repl-diskless-sync-delay 0")
        if server.replica_of:
            lines.append(f"replicaof {HOST} {server.replica_of}")
        return "\n".join(lines)

    def sentinel_monitors(self):
        """The sentinel.conf lines that watch every shard's primary."""
        lines = []
        for primary in self.primaries:
            name = primary.master_name
            lines += [
                f"sentinel monitor {name} {HOST} {primary.port} {SENTINEL_QUORUM}",
                f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
                f"sentinel failover-timeout {name} {SENTINEL_FAILOVER_TIMEOUT_MS}",
                f"sentinel parallel-syncs {name} 1",
            ]
        return "\n".join(lines)
