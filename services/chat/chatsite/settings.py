"""Settings of the chat service, read from environment variables.

Each variable's name, default and meaning is in chatsite.variables, which the
documentation's configuration page is generated from; this module reads and validates
them. Defaults are safe for a single machine; production mode (DJANGO_DEBUG off, the
default) refuses to start without a secret key.
"""

import os
from collections.abc import Sequence
from typing import Any

from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured

from chatsite.variables import VARIABLES

# Every variable the settings read, for tests/deploy/test_single_source.py.
ENVIRONMENT_VARIABLES: set[str] = set()


def text(name: str) -> str | None:
    """The variable as set, or None when it is unset or blank."""
    if name not in VARIABLES:
        raise KeyError(f"{name} is read but not described in chatsite.variables")
    ENVIRONMENT_VARIABLES.add(name)
    return os.environ.get(name, "").strip() or None


def default(name: str) -> Any:
    return VARIABLES[name].default


def env(name: str) -> str | None:
    value = text(name)
    if value is None:
        fallback = default(name)
        return None if fallback is None else str(fallback)
    return value


def env_str(name: str) -> str:
    """A variable whose default is a text (never None)."""
    value = text(name)
    return str(default(name)) if value is None else value


def env_bool(name: str) -> bool:
    value = text(name)
    if value is None:
        return bool(default(name))
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, not {value!r}")


def items(value: str | None) -> list[str]:
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def env_list(name: str) -> list[str]:
    """A comma-separated setting's items, without blanks; the default's if it has none."""
    return items(text(name)) or items(default(name))


def host_and_port(name: str, address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ImproperlyConfigured(f"{name} must list host:port addresses, not {address!r}")
    return host, int(port)


def env_int(name: str, minimum: int = 1) -> int:
    value = text(name)
    if value is None:
        return int(default(name))
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a whole number, not {value!r}") from None
    if number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {number}")
    return number


def env_choice(name: str, choices: Sequence[str]) -> str:
    value = env_str(name)
    if value not in choices:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


DEBUG = env_bool("DJANGO_DEBUG")

# From the variable, or from a file (a mounted Kubernetes Secret) named by _FILE.
SECRET_KEY = env("DJANGO_SECRET_KEY")
SECRET_KEY_FILE = env("DJANGO_SECRET_KEY_FILE")
if SECRET_KEY is None and SECRET_KEY_FILE:
    try:
        with open(SECRET_KEY_FILE) as secret_file:
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
ALLOWED_HOSTS = env_str("DJANGO_ALLOWED_HOSTS").split(",")

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

# Security headers of every page (docs/operations/edge.md). SecurityMiddleware's
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
DATABASES: dict[str, dict[str, Any]] = {}

USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"
# Each replica serves the pages' scripts and style (chat/static/) with WhiteNoise, found
# where the app keeps them: no collectstatic step (docs/decisions/0011-whitenoise.md).
WHITENOISE_USE_FINDERS = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("CHAT_LOG_LEVEL")},
}

# --- The chat service -------------------------------------------------------

CHAT_REPLICA_ID = env_str("CHAT_REPLICA_ID")

CHAT_CONSUMER = env_choice("CHAT_CONSUMER", ("async", "sync"))
CHAT_EVENT_LOOP = env_choice("CHAT_EVENT_LOOP", ("uvloop", "asyncio"))

CHAT_MAX_MESSAGE_BYTES = env_int("CHAT_MAX_MESSAGE_BYTES")
CHAT_MAX_FRAME_BYTES = env_int("CHAT_MAX_FRAME_BYTES")

CHAT_PRESENCE_TTL = env_int("CHAT_PRESENCE_TTL", minimum=3)
CHAT_PRESENCE_MAX_LISTED = env_int("CHAT_PRESENCE_MAX_LISTED", minimum=0)
CHAT_PRESENCE_COALESCE_MS = env_int("CHAT_PRESENCE_COALESCE_MS", minimum=0)

CHAT_HISTORY_MAX_LENGTH = env_int("CHAT_HISTORY_MAX_LENGTH")
CHAT_HISTORY_MAX_AGE = env_int("CHAT_HISTORY_MAX_AGE")
CHAT_HISTORY_ON_JOIN = env_int("CHAT_HISTORY_ON_JOIN", minimum=0)

CHAT_RATE_LIMIT = env_int("CHAT_RATE_LIMIT")
CHAT_RATE_BURST = env_int("CHAT_RATE_BURST")
CHAT_MAX_CONNECTIONS = env_int("CHAT_MAX_CONNECTIONS")

# Slow consumers (docs/decisions/0013-bounded-consumer-queue-and-4008.md).
CHAT_MAX_SEND_BUFFER = env_int("CHAT_MAX_SEND_BUFFER", minimum=65536)
CHAT_SEND_TIMEOUT = env_int("CHAT_SEND_TIMEOUT", minimum=1)

CHAT_DRAIN_SECONDS = env_int("CHAT_DRAIN_SECONDS", minimum=0)

# Room events from other code are bounded (chat.events); a member's own message, its
# text JSON-escaped at worst 6 bytes a byte, must always fit.
MIN_EVENT_BYTES = 6 * CHAT_MAX_MESSAGE_BYTES + 1024
# Unset, at least the minimum: the default is below it past 10 KiB messages.
CHAT_MAX_EVENT_BYTES = max(env_int("CHAT_MAX_EVENT_BYTES", MIN_EVENT_BYTES), MIN_EVENT_BYTES)

# Publishing from server code (chat.publish) and the HTTP API (chat.http_api).
CHAT_PUBLISH_TIMEOUT = env_int("CHAT_PUBLISH_TIMEOUT")
CHAT_PUBLISH_KEY_TTL = env_int("CHAT_PUBLISH_KEY_TTL")
CHAT_API_KEYS = env_list("CHAT_API_KEYS")
CHAT_API_KEYS_FILE = env("CHAT_API_KEYS_FILE")
# A file that does not exist holds no keys (a Secret without the entry): the API is off
# and says so (chat.http_api); one that cannot be read stops start-up.
if CHAT_API_KEYS_FILE and os.path.exists(CHAT_API_KEYS_FILE):
    try:
        with open(CHAT_API_KEYS_FILE) as keys_file:
            CHAT_API_KEYS += [line.strip() for line in keys_file if line.strip()]
    except OSError as error:
        raise ImproperlyConfigured(f"CHAT_API_KEYS_FILE cannot be read: {error}") from None
if any(len(key) < 16 for key in CHAT_API_KEYS):
    # Never the key itself in the message: it ends up in logs.
    raise ImproperlyConfigured("every API key must be at least 16 characters long")
CHAT_API_MAX_BODY_BYTES = env_int("CHAT_API_MAX_BODY_BYTES")
CHAT_API_RATE_LIMIT = env_int("CHAT_API_RATE_LIMIT")
CHAT_API_RATE_BURST = env_int("CHAT_API_RATE_BURST")
CHAT_API_MAX_ROOMS = env_int("CHAT_API_MAX_ROOMS")
if CHAT_API_MAX_ROOMS > CHAT_API_RATE_BURST:
    # A broadcast costs one request per room: a larger one could never be taken.
    raise ImproperlyConfigured("CHAT_API_MAX_ROOMS must not be above CHAT_API_RATE_BURST")

# --- Channel layer ----------------------------------------------------------
#
# "pubsub" by default: it keeps nothing for an absent consumer, and the core layer
# drops messages silently past `capacity` (docs/decisions/0003-pubsub-channel-layer.md).
CHAT_CHANNEL_LAYER = env_choice("CHAT_CHANNEL_LAYER", ("pubsub", "core", "memory"))

REDIS_URLS = env_str("REDIS_URLS").split(",")
# With Sentinel each shard is the primary the Sentinels name; REDIS_URLS is not used.
REDIS_SENTINELS = [host_and_port("REDIS_SENTINELS", item) for item in env_list("REDIS_SENTINELS")]
REDIS_SENTINEL_MASTERS = env_list("REDIS_SENTINEL_MASTERS")
# An ack waits for this many replicas (docs/decisions/0026-wait-on-acks.md).
REDIS_ACK_REPLICAS = env_int("REDIS_ACK_REPLICAS", minimum=0)
REDIS_ACK_TIMEOUT_MS = env_int("REDIS_ACK_TIMEOUT_MS")

# Not redis-py 8's defaults: no read timeout, which would end the layer's idle receive
# loop, and a larger pool (docs/decisions/0019-redis-client-limits.md).
REDIS_CONNECTION_OPTIONS = {
    "socket_timeout": None,
    "socket_connect_timeout": env_int("REDIS_CONNECT_TIMEOUT"),
    "socket_keepalive": True,
    "max_connections": env_int("REDIS_MAX_CONNECTIONS"),
}
REDIS_COMMAND_TIMEOUT = env_int("REDIS_COMMAND_TIMEOUT")
REDIS_POOL_SIZE = env_int("REDIS_POOL_SIZE", minimum=1)
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
                "capacity": env_int("CHAT_LAYER_CAPACITY"),
                # Must not be lower than Daphne's websocket timeout (86400 s).
                "group_expiry": 86400,
            },
        }
    }
else:
    # One process only: for tests and `manage.py runserver`.
    CHANNEL_LAYERS = {"default": {"BACKEND": "chat.channel_layer.MemoryChannelLayer"}}
