"""Settings of the chat service, read from environment variables.

Every variable is documented in the configuration table of README.md. Defaults
are safe for a single machine; production mode (DJANGO_DEBUG off, the default)
refuses to start without a secret key.
"""

import os
import socket

from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured

# Every variable the settings read, for tests/test_single_source.py.
ENVIRONMENT_VARIABLES = set()


def env(name, default=None):
    ENVIRONMENT_VARIABLES.add(name)
    value = os.environ.get(name, "").strip()
    return value if value else default


def env_bool(name, default):
    value = env(name)
    if value is None:
        return default
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, not {value!r}")


def env_list(name):
    """A comma-separated setting's items, without blanks."""
    return [item.strip() for item in (env(name) or "").split(",") if item.strip()]


def host_and_port(name, address):
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ImproperlyConfigured(f"{name} must list host:port addresses, not {address!r}")
    return host, int(port)


def env_int(name, default, minimum=1):
    value = env(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a whole number, not {value!r}") from None
    if number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {number}")
    return number


def env_choice(name, default, choices):
    value = env(name, default)
    if value not in choices:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


DEBUG = env_bool("DJANGO_DEBUG", False)

# From the variable, or from a file (a mounted Kubernetes Secret) named by _FILE.
SECRET_KEY = env("DJANGO_SECRET_KEY")
if SECRET_KEY is None and env("DJANGO_SECRET_KEY_FILE"):
    try:
        with open(env("DJANGO_SECRET_KEY_FILE")) as secret_file:
            SECRET_KEY = secret_file.read().strip() or None
    except OSError as error:
        raise ImproperlyConfigured(f"DJANGO_SECRET_KEY_FILE cannot be read: {error}") from None
if SECRET_KEY is None:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY or DJANGO_SECRET_KEY_FILE is required when DJANGO_DEBUG is off"
        )
    SECRET_KEY = "insecure-development-key-used-only-with-DJANGO_DEBUG"

# Also checked against the Origin header of every WebSocket handshake.
ALLOWED_HOSTS = env("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]").split(",")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.staticfiles",
    "channels",
    "chat",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
]

# Security headers of every page (README: the public edge). SecurityMiddleware's
# defaults already send X-Content-Type-Options: nosniff, Referrer-Policy: same-origin
# and Cross-Origin-Opener-Policy: same-origin; XFrameOptionsMiddleware sends
# X-Frame-Options: DENY. django-csp adds the Content-Security-Policy: the pages have no
# inline code, so their own files are all they may run. Browsers of CSP Level 3 let
# 'self' cover ws:/wss: to the page's host, which is all the room's socket needs.
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [NONE],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF],
        "connect-src": [SELF],
        "base-uri": [NONE],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}

ROOT_URLCONF = "chatsite.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    },
]

ASGI_APPLICATION = "chatsite.asgi.application"

# The chat keeps no relational data.
DATABASES = {}

USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"
# Each replica serves the pages' scripts and style (chat/static/) with WhiteNoise,
# the standard for Django in production; Django's own static serving
# (ASGIStaticFilesHandler, runserver) is documented as not for production. As
# Django middleware it runs under Daphne like any other. It finds the files where
# the app keeps them, once at start-up, so that the local cluster (the source
# tree), the image and the unit tests serve them with no collectstatic step. Names
# are not hashed, so WhiteNoise sends a short cache lifetime (60 s), never a long one.
WHITENOISE_USE_FINDERS = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env("CHAT_LOG_LEVEL", "INFO")},
}

# --- The chat service -------------------------------------------------------

# Names the replica in the X-Chat-Replica header and the welcome frame.
CHAT_REPLICA_ID = env("CHAT_REPLICA_ID", socket.gethostname())

# "async" is the product (tutorial part 3); "sync" (part 2) is kept for benchmarks.
CHAT_CONSUMER = env_choice("CHAT_CONSUMER", "async", ("async", "sync"))
# The event loop under Daphne's Twisted reactor (chatsite.serve).
CHAT_EVENT_LOOP = env_choice("CHAT_EVENT_LOOP", "uvloop", ("uvloop", "asyncio"))

# Largest text frame a client may send, in bytes of UTF-8.
CHAT_MAX_MESSAGE_BYTES = env_int("CHAT_MAX_MESSAGE_BYTES", 4096)

# Frames larger than this close the connection with 1009 before they are read whole
# (Daphne's limit); frames over CHAT_MAX_MESSAGE_BYTES but under it get an error frame.
CHAT_MAX_FRAME_BYTES = env_int("CHAT_MAX_FRAME_BYTES", 65536)

# Seconds after which the people of a replica that died leave the presence lists.
CHAT_PRESENCE_TTL = env_int("CHAT_PRESENCE_TTL", 15, minimum=3)
# Presence in large rooms: a joiner's snapshot lists at most this many members (and
# the count); each replica sends a room at most one diff per interval, a burst merged.
CHAT_PRESENCE_MAX_LISTED = env_int("CHAT_PRESENCE_MAX_LISTED", 100, minimum=0)
CHAT_PRESENCE_COALESCE_MS = env_int("CHAT_PRESENCE_COALESCE_MS", 200, minimum=0)

# History each room keeps in Redis, for new joiners and for clients that resume.
CHAT_HISTORY_MAX_LENGTH = env_int("CHAT_HISTORY_MAX_LENGTH", 1000)
CHAT_HISTORY_MAX_AGE = env_int("CHAT_HISTORY_MAX_AGE", 3600)  # seconds
CHAT_HISTORY_ON_JOIN = env_int("CHAT_HISTORY_ON_JOIN", 20, minimum=0)

# Abuse limits, per connection (a token bucket) and per replica.
CHAT_RATE_LIMIT = env_int("CHAT_RATE_LIMIT", 10)  # messages per second, sustained
CHAT_RATE_BURST = env_int("CHAT_RATE_BURST", 30)  # messages at once
CHAT_MAX_CONNECTIONS = env_int("CHAT_MAX_CONNECTIONS", 10000)

# Slow consumers: what a replica holds for one client that does not read fast enough,
# in bytes written to its socket while its write buffer is full, and again in its
# queue of messages from Redis; and how long its write buffer may stay full. Past
# either the connection is closed with 4008, and the client resumes.
CHAT_MAX_SEND_BUFFER = env_int("CHAT_MAX_SEND_BUFFER", 1024 * 1024, minimum=65536)
CHAT_SEND_TIMEOUT = env_int("CHAT_SEND_TIMEOUT", 10, minimum=1)  # seconds

# On SIGTERM: seconds over which the replica closes its WebSockets (1012).
CHAT_DRAIN_SECONDS = env_int("CHAT_DRAIN_SECONDS", 10, minimum=0)

# --- Channel layer ----------------------------------------------------------
#
# "pubsub" (RedisPubSubChannelLayer) is the default: it delivers at most once and
# keeps nothing for an absent consumer, which is what a live chat wants, while the
# core RedisChannelLayer drops messages silently past `capacity` (README.md, "Why the
# pub/sub channel layer"). "core" stays selectable.
CHAT_CHANNEL_LAYER = env_choice("CHAT_CHANNEL_LAYER", "pubsub", ("pubsub", "core", "memory"))

REDIS_URLS = env("REDIS_URLS", "redis://127.0.0.1:6379/0").split(",")
# With Sentinel (README: Redis with Sentinel), each shard is a primary that the
# Sentinels name, followed through failovers; REDIS_URLS is then not used.
REDIS_SENTINELS = [host_and_port("REDIS_SENTINELS", item) for item in env_list("REDIS_SENTINELS")]
REDIS_SENTINEL_MASTERS = env_list("REDIS_SENTINEL_MASTERS") or ["chat"]
# An ack means the message is on the primary and on this many of its replicas (WAIT);
# a sender whose message is not on them within REDIS_ACK_TIMEOUT_MS is told
# "unavailable" and resends it with the same ref.
REDIS_ACK_REPLICAS = env_int("REDIS_ACK_REPLICAS", 0, minimum=0)
REDIS_ACK_TIMEOUT_MS = env_int("REDIS_ACK_TIMEOUT_MS", 500)

# redis-py 8 gives every socket a 5 s timeout and caps a pool at 100
# connections. The first kills each idle replica's blocking receive loop (every
# WebSocket then closes with 1011); the second turns connect bursts into HTTP
# 500s. So: no read timeout, a bounded connect timeout, a larger pool.
REDIS_CONNECTION_OPTIONS = {
    "socket_timeout": None,
    "socket_connect_timeout": env_int("REDIS_CONNECT_TIMEOUT", 5),
    "socket_keepalive": True,
    "max_connections": env_int("REDIS_MAX_CONNECTIONS", 1000),
}
# Commands of the chat's own Redis clients (history, presence) fail after this many
# seconds, so that a hung Redis is answered with an error frame, not silence.
REDIS_COMMAND_TIMEOUT = env_int("REDIS_COMMAND_TIMEOUT", 5)
# Connections each of them keeps to each Redis at most; a command waits for a free
# one up to REDIS_COMMAND_TIMEOUT.
REDIS_POOL_SIZE = env_int("REDIS_POOL_SIZE", 16, minimum=1)
# Each shard's Redis, in channels_redis' host form (chat.redis_clients).
if REDIS_SENTINELS:
    REDIS_SERVERS = [
        {"master_name": name, "sentinels": REDIS_SENTINELS} for name in REDIS_SENTINEL_MASTERS
    ]
    SENTINEL_OPTIONS = {
        "sentinel_kwargs": {
            "socket_timeout": REDIS_CONNECTION_OPTIONS["socket_connect_timeout"],
            "socket_connect_timeout": REDIS_CONNECTION_OPTIONS["socket_connect_timeout"],
        }
    }
else:
    REDIS_SERVERS = [{"address": url} for url in REDIS_URLS]
    SENTINEL_OPTIONS = {}
REDIS_HOSTS = [
    {**server, **SENTINEL_OPTIONS, **REDIS_CONNECTION_OPTIONS} for server in REDIS_SERVERS
]

if CHAT_CHANNEL_LAYER == "pubsub":
    CHANNEL_LAYERS = {
        "default": {
            # channels_redis' RedisPubSubChannelLayer, with what the chat adds to it.
            "BACKEND": "chat.channel_layer.PubSubChannelLayer",
            "CONFIG": {"hosts": REDIS_HOSTS, "max_queued_bytes": CHAT_MAX_SEND_BUFFER},
        }
    }
elif CHAT_CHANNEL_LAYER == "core":
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "chat.channel_layer.CoreChannelLayer",
            "CONFIG": {
                "hosts": REDIS_HOSTS,
                # Messages past this many per channel are dropped silently.
                "capacity": env_int("CHAT_LAYER_CAPACITY", 1000),
                # Must not be lower than Daphne's websocket timeout (86400 s).
                "group_expiry": 86400,
            },
        }
    }
else:
    # One process only: for tests and `manage.py runserver`.
    CHANNEL_LAYERS = {"default": {"BACKEND": "chat.channel_layer.MemoryChannelLayer"}}
