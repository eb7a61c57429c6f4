"""The environment variables the chat service reads: each one's name, default and meaning,
written once. chatsite.settings reads every value through this table (and validates it);
the documentation's configuration page is generated from it (docs/configuration.md).

Defaults are what the service uses when a variable is unset or blank. Some are also in
deploy/defaults.env, which the runtimes give the service; a test keeps the two equal.
"""

import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class Variable:
    name: str
    default: object
    meaning: str
    # The default as the documentation says it, where the value itself would mislead.
    shown: str = ""


VARIABLES = {
    variable.name: variable
    for variable in (
        # Django
        Variable(
            "DJANGO_SECRET_KEY",
            None,
            "Django's secret key; every replica must have the same. The local cluster makes a"
            " random one per run directory, compose one in `.run/compose/`.",
            shown="none: it or `DJANGO_SECRET_KEY_FILE` is required unless `DJANGO_DEBUG` is on",
        ),
        Variable(
            "DJANGO_SECRET_KEY_FILE",
            None,
            "A file holding the key, read when `DJANGO_SECRET_KEY` is unset (a mounted"
            " Kubernetes Secret).",
        ),
        Variable("DJANGO_DEBUG", False, "Django's debug mode; never in a deployment."),
        Variable(
            "DJANGO_ALLOWED_HOSTS",
            "127.0.0.1,localhost,[::1]",
            "Comma-separated `Host` headers accepted, and the hosts a WebSocket handshake's"
            " `Origin` may name (403 otherwise).",
        ),
        # The replica
        Variable(
            "CHAT_REPLICA_ID",
            socket.gethostname(),
            "Names the replica in the `X-Chat-Replica` header, the welcome frame and"
            " `chat_info`; the local cluster sets `chat-N`, Kubernetes the pod's name.",
            shown="the host name",
        ),
        Variable("CHAT_LOG_LEVEL", "INFO", "Python log level of the service."),
        Variable(
            "CHAT_CONSUMER",
            "async",
            "`async` (the tutorial's part 3: the product) or `sync` (part 2, kept for benchmarks).",
        ),
        Variable(
            "CHAT_EVENT_LOOP",
            "uvloop",
            "The event loop under Daphne's Twisted reactor: `uvloop`, or `asyncio` (the"
            " standard library's); `/healthz` names the one running.",
        ),
        Variable(
            "CHAT_CHANNEL_LAYER",
            "pubsub",
            "`pubsub` (channels_redis' `RedisPubSubChannelLayer`, adapted in"
            " `chat/channel_layer.py`), `core` (`RedisChannelLayer`), or `memory` (one"
            " process: tests, `runserver`).",
        ),
        Variable(
            "CHAT_LAYER_CAPACITY",
            1000,
            "`core` layer only: messages a channel holds before new ones are dropped"
            " (silently: channels_redis' behaviour).",
        ),
        # Limits of one connection and one replica
        Variable(
            "CHAT_MAX_MESSAGE_BYTES",
            4096,
            "Largest client frame, in bytes of UTF-8; a larger one is answered"
            " `message_too_large`.",
        ),
        Variable(
            "CHAT_MAX_FRAME_BYTES",
            65536,
            "A frame over this closes the connection with 1009 before it is read whole"
            " (Daphne's limit).",
        ),
        Variable(
            "CHAT_RATE_LIMIT",
            10,
            "Messages per second one connection may send, sustained; the excess is answered"
            " `rate_limited` and not sent.",
        ),
        Variable("CHAT_RATE_BURST", 30, "Messages one connection may send at once."),
        Variable(
            "CHAT_MAX_CONNECTIONS",
            10000,
            "WebSockets per replica; more are refused with `server_full` and close 1013.",
        ),
        Variable(
            "CHAT_MAX_SEND_BUFFER",
            1024 * 1024,
            "Bytes a replica holds for one client that does not read (its queue from Redis,"
            " and frames written while its socket is full); past it the connection is closed"
            " with 4008. At least 65536.",
        ),
        Variable(
            "CHAT_SEND_TIMEOUT",
            10,
            "Seconds a client's socket may stay full before the connection is closed with"
            " 4008; as long again for it to read the close.",
        ),
        Variable(
            "CHAT_DRAIN_SECONDS",
            10,
            "On SIGTERM, seconds over which a replica closes its WebSockets with 1012 before"
            " exiting (then up to 5 s of cleanup).",
        ),
        Variable(
            "CHAT_MAX_EVENT_BYTES",
            65536,
            "Largest channel-layer event a replica hands its consumers; a larger one (sent to"
            " a room's group by other code) is dropped and counted in"
            " `chat_events_dropped_total`. At least 6 × `CHAT_MAX_MESSAGE_BYTES` + 1024.",
        ),
        # Publishing from server code and the HTTP API
        Variable(
            "CHAT_PUBLISH_TIMEOUT",
            10,
            "Seconds `send_to_room` waits for its message to be stored and published before"
            ' it raises `PublishError("timeout")`.',
        ),
        Variable(
            "CHAT_PUBLISH_KEY_TTL",
            86400,
            "Seconds an idempotency key of `send_to_room` or the HTTP API is remembered: a"
            " retry with the same key within it publishes nothing and returns the first id.",
        ),
        Variable(
            "CHAT_API_KEYS",
            "",
            "Comma-separated keys the HTTP API accepts as `Authorization: Bearer <key>`, each"
            " at least 16 characters; several, so that one can be rotated. With none (and no"
            " `CHAT_API_KEYS_FILE`) the API answers 403 `api_disabled`.",
        ),
        Variable(
            "CHAT_API_KEYS_FILE",
            None,
            "A file of API keys, one per line (a mounted Kubernetes Secret); read at start-up"
            " together with `CHAT_API_KEYS`. A file that does not exist holds none (logged);"
            " one that cannot be read stops start-up.",
        ),
        Variable(
            "CHAT_API_MAX_BODY_BYTES",
            65536,
            "Largest HTTP request body a replica reads, the HTTP API's included; a larger"
            " one is answered 413 `body_too_large` as soon as it is declared or found larger,"
            " the connection closed, and no more of it kept.",
        ),
        Variable(
            "CHAT_API_RATE_LIMIT",
            100,
            "HTTP API requests per second one key may make on one replica, sustained; the"
            " excess is answered 429 `rate_limited` with `Retry-After`.",
        ),
        Variable("CHAT_API_RATE_BURST", 200, "HTTP API requests one key may make at once."),
        Variable(
            "CHAT_API_MAX_ROOMS",
            100,
            "Rooms one `POST /api/v1/broadcast` may name; more are answered 400 `invalid_field`.",
        ),
        # History and presence
        Variable(
            "CHAT_HISTORY_MAX_LENGTH",
            1000,
            "Messages each room keeps in Redis for resuming clients.",
        ),
        Variable(
            "CHAT_HISTORY_MAX_AGE",
            3600,
            "Seconds a message stays replayable; a room's history expires this long after"
            " its last message.",
        ),
        Variable(
            "CHAT_HISTORY_ON_JOIN",
            20,
            "Newest messages replayed to a client that joins without `last_id` (0: none).",
        ),
        Variable(
            "CHAT_PRESENCE_TTL",
            15,
            "Seconds after which the people of a replica that died leave the room's presence"
            " list (at most this plus a third of it). At least 3.",
        ),
        Variable(
            "CHAT_PRESENCE_MAX_LISTED",
            100,
            "Members a joiner's `presence` frame lists, at most; a larger room's frame lists"
            " this many and counts everyone; later `presence_diff` frames name whoever joins"
            " (0: counts only).",
        ),
        Variable(
            "CHAT_PRESENCE_COALESCE_MS",
            200,
            "Each replica sends a room at most one `presence_diff` per this many"
            " milliseconds: a room's first change goes at once, later ones within the"
            " interval follow as one diff (0: one per change).",
        ),
        # Redis
        Variable(
            "REDIS_URLS",
            "redis://127.0.0.1:6379/0",
            "Comma-separated Redis URLs; with several, each room lives whole on one of them"
            " (shards). Every replica must list the same URLs in the same order. Not used"
            " when `REDIS_SENTINELS` is set.",
        ),
        Variable(
            "REDIS_SENTINELS",
            "",
            "Comma-separated `host:port` of Redis Sentinels; set, the replicas ask them for"
            " each shard's primary and follow it through failovers.",
        ),
        Variable(
            "REDIS_SENTINEL_MASTERS",
            "chat",
            "Comma-separated Sentinel master names, one per shard.",
        ),
        Variable(
            "REDIS_ACK_REPLICAS",
            0,
            "Redis replicas that must hold a message before its sender gets the `ack`"
            " (`WAIT`); the Sentinel deployments set 1.",
        ),
        Variable(
            "REDIS_ACK_TIMEOUT_MS",
            500,
            "How long those replicas have to confirm; past it the sender is answered"
            " `unavailable` and may resend with the same ref (no duplicate).",
        ),
        Variable(
            "REDIS_CONNECT_TIMEOUT",
            5,
            "Seconds to connect to Redis; the channel layer's reads have no timeout.",
        ),
        Variable(
            "REDIS_MAX_CONNECTIONS",
            1000,
            "Connections the channel layer may open per replica and Redis (redis-py 8's"
            " default of 100 turns connect bursts into HTTP 500s).",
        ),
        Variable(
            "REDIS_COMMAND_TIMEOUT",
            5,
            "Seconds a command of the chat's own Redis clients (history, presence) may take;"
            " a hung Redis is then answered `unavailable`.",
        ),
        Variable(
            "REDIS_POOL_SIZE",
            16,
            "Connections each of the chat's own Redis clients keeps to each Redis at most; a"
            " command waits up to `REDIS_COMMAND_TIMEOUT` for a free one.",
        ),
    )
}
