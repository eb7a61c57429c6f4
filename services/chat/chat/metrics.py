"""Prometheus metrics of one replica, served at /metrics.

Names follow Prometheus conventions (namespace_name_unit, counters end in
_total). The replica, consumer kind and channel layer are labels of one info
metric rather than of every series; Prometheus adds `instance` to each.
"""

import time
from collections.abc import Callable, Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeMetricFamily

NAMESPACE = "chat"

# Buckets for work that takes from a tenth of a millisecond to seconds.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
)

replica_info = Info(NAMESPACE, "The replica, its consumer kind and channel layer.")

draining = Gauge(
    "draining", "1 while the replica drains its connections before exiting.", namespace=NAMESPACE
)
connections_open = Gauge("connections_open", "WebSocket connections open now.", namespace=NAMESPACE)
connections_limit = Gauge(
    "connections_limit",
    "CHAT_MAX_CONNECTIONS: a connection past it is closed with 1013 (server_full).",
    namespace=NAMESPACE,
)
ready = Gauge(
    "ready",
    "1 while the replica answers /readyz with 200 (not draining, every Redis reachable),"
    " as of the last probe or scrape.",
    namespace=NAMESPACE,
)
connects = Counter("connects", "WebSocket connections accepted into a room.", namespace=NAMESPACE)
disconnects = Counter(
    "disconnects", "WebSocket connections closed after joining a room.", namespace=NAMESPACE
)
messages_received = Counter(
    "messages_received", "Chat messages received from clients and accepted.", namespace=NAMESPACE
)
messages_delivered = Counter(
    "messages_delivered", "Chat messages sent to clients of this replica.", namespace=NAMESPACE
)
publishes = Counter(
    "publishes",
    "Client messages published: numbered, stored in the room's history and sent to the room"
    " (the broker's publish script), a retried ref included.",
    namespace=NAMESPACE,
)
messages_replayed = Counter(
    "messages_replayed",
    "Chat messages sent from the room's history: on join, resume or to fill a gap.",
    namespace=NAMESPACE,
)
duplicates_skipped = Counter(
    "duplicates_skipped",
    "Live messages not sent because the connection already had them from the history.",
    namespace=NAMESPACE,
)
history_gaps = Counter(
    "history_gaps",
    "Missed messages the history could not supply, by kind (trimmed, reset, live).",
    ["kind"],
    namespace=NAMESPACE,
)
errors = Counter(
    "errors",
    "Client frames or operations answered with an error, by error code.",
    ["code"],
    namespace=NAMESPACE,
)
# Set from the pings of every /readyz and every scrape of /metrics (chat.probes), so that
# Prometheus sees each Redis of each replica, shards and Sentinel primaries included.
redis_up = Gauge(
    "redis_up",
    "1 while this Redis answers, 0 when it does not, by host:port (with Sentinel: the master's"
    " name and the primary the Sentinels name).",
    ["redis"],
    namespace=NAMESPACE,
)
redis_writable = Gauge(
    "redis_writable",
    "1 while this Redis takes writes, 0 when it is unreachable or full (maxmemory).",
    ["redis"],
    namespace=NAMESPACE,
)
redis_writes_refused = Counter(
    "redis_writes_refused",
    "Redis writes refused because Redis is full (OOM at maxmemory), by operation.",
    ["operation"],
    namespace=NAMESPACE,
)
slow_consumer_disconnects = Counter(
    "slow_consumer_disconnects",
    "Connections closed with 4008 because the client did not read fast enough, by what was"
    " exceeded: buffer (CHAT_MAX_SEND_BUFFER written while the socket was full), timeout"
    " (full for CHAT_SEND_TIMEOUT) or queue (messages from Redis waiting to be sent).",
    ["reason"],
    namespace=NAMESPACE,
)
events_dropped = Counter(
    "events_dropped",
    "Channel-layer events dropped before reaching any client because they are not"
    " well-formed chat events, by reason (tutorial_shape, unknown_type, bad_fields,"
    " oversized, undecodable). Code that sends to a room's group by hand is the usual cause.",
    ["reason"],
    namespace=NAMESPACE,
)
service_publishes = Counter(
    "service_publishes",
    "Messages published by server code rather than a member: chat.publish, the"
    " send_to_room command, the HTTP API, or a tutorial-shaped group_send taken as a"
    " publish; by way (python, http, group_send).",
    ["via"],
    namespace=NAMESPACE,
)
api_requests = Counter(
    "api_requests",
    "Requests to the HTTP API (/api/v1/...), by response status.",
    ["status"],
    namespace=NAMESPACE,
)
publish_duration = Histogram(
    "publish_duration_seconds",
    "Time a publish took, as seen by the sending replica: the publish script and, with"
    " REDIS_ACK_REPLICAS, the WAIT for the Redis replicas.",
    namespace=NAMESPACE,
    buckets=LATENCY_BUCKETS,
)
delivery_latency = Histogram(
    "delivery_latency_seconds",
    "From the sending replica taking the message to the frame sent on this replica "
    "(wall clocks of two replicas: meaningful on one host or with synchronised clocks).",
    namespace=NAMESPACE,
    buckets=LATENCY_BUCKETS,
)


def count_delivery(sent_at: float) -> None:
    """A live chat message sent to a client, taken by its sending replica at sent_at."""
    messages_delivered.inc()
    delivery_latency.observe(time.time() - sent_at)


def describe_replica(replica: str, consumer: str, channel_layer: str) -> None:
    replica_info.info({"replica": replica, "consumer": consumer, "channel_layer": channel_layer})


# What a replica holds, read at each scrape: after load they return to where they
# started, or something leaks (docs/operations/metrics.md).
RESOURCES = {
    "layer_channels": "Consumer channels subscribed in this replica's channel layer.",
    "layer_groups": "Room groups with a member in this replica's channel layer.",
    "asyncio_tasks": "Tasks alive on the replica's event loop.",
    "gc_objects": "Objects the collector tracks, but those frozen at start-up; counted"
    " after a full collection while no connection is open.",
}


class ResourceCollector:
    """Gauges of what a replica holds, from read_resources() -> {name: value}."""

    def __init__(self, read_resources: Callable[[], dict[str, int]]) -> None:
        self.read_resources = read_resources

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, value in self.read_resources().items():
            gauge = GaugeMetricFamily(f"{NAMESPACE}_{name}", RESOURCES[name])
            gauge.add_metric([], value)
            yield gauge


def watch_resources(read_resources: Callable[[], dict[str, int]]) -> None:
    REGISTRY.register(ResourceCollector(read_resources))
