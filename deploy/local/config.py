"""The local cluster's configuration: its settings (deploy/defaults.env, overridden by the
environment) and the ports, URLs and paths derived from them; rendering.py turns it into
the text of every file the cluster runs on. Nothing here writes a file or starts a
process; supervision.py does.
"""

import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from network import LOOPBACK, Layout, layout_environment, layout_settings
from network import SETTINGS as NETWORK_SETTINGS
from redis_servers import RedisLayout

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DEFAULTS_FILE = DEPLOY / "defaults.env"
SERVICE_DIR = ROOT / "services" / "chat"
HOST = LOOPBACK
# The Makefile's RUN_DIR: where a cluster's generated files, logs and settings go.
DEFAULT_RUN_DIR = ROOT / ".run" / "local"

# The cluster's own settings: each from the environment, else deploy/defaults.env.
# CLUSTER_NETWORK and its delay and loss are network.py's (NETWORK_SETTINGS).
CLUSTER_SETTINGS = (
    "REPLICAS",
    "LB_PORT",
    "CHAT_PORT",
    "REDIS_PORT",
    "PROMETHEUS_PORT",
    "CHAT_DRAIN_SECONDS",
    "LB_WS_CONNECTIONS_PER_ADDRESS",
    "LB_WS_HANDSHAKES_PER_SECOND",
    "LB_WS_HANDSHAKE_BURST",
    "REDIS_MAXMEMORY",
    "REDIS_MAXMEMORY_POLICY",
    "REDIS_SHARDS",
    "REDIS_HA",
    "REDIS_SENTINEL_PORT",
    "REDIS_SENTINEL_DOWN_AFTER_MS",
    "REDIS_APPENDONLY",
)

# Settings of the service that the cluster passes on to every replica when set.
SERVICE_SETTINGS = (
    "CHAT_CONSUMER",
    "CHAT_CHANNEL_LAYER",
    "CHAT_MAX_MESSAGE_BYTES",
    "CHAT_LAYER_CAPACITY",
    "CHAT_LOG_LEVEL",
    "CHAT_PRESENCE_TTL",
    "CHAT_PRESENCE_MAX_LISTED",
    "CHAT_PRESENCE_COALESCE_MS",
    "CHAT_MAX_FRAME_BYTES",
    "CHAT_MAX_SEND_BUFFER",
    "CHAT_SEND_TIMEOUT",
    "CHAT_HISTORY_MAX_LENGTH",
    "CHAT_HISTORY_MAX_AGE",
    "CHAT_HISTORY_ON_JOIN",
    "CHAT_RATE_LIMIT",
    "CHAT_EVENT_LOOP",
    "CHAT_RATE_BURST",
    "CHAT_MAX_CONNECTIONS",
    "CHAT_MAX_EVENT_BYTES",
    "CHAT_PUBLISH_TIMEOUT",
    "CHAT_PUBLISH_KEY_TTL",
    "CHAT_API_KEYS_FILE",
    "CHAT_API_MAX_BODY_BYTES",
    "CHAT_API_RATE_LIMIT",
    "CHAT_API_RATE_BURST",
    "CHAT_API_MAX_ROOMS",
    "REDIS_MAX_CONNECTIONS",
    "REDIS_CONNECT_TIMEOUT",
    "REDIS_COMMAND_TIMEOUT",
    "REDIS_POOL_SIZE",
    "REDIS_ACK_REPLICAS",
    "REDIS_ACK_TIMEOUT_MS",
    "DJANGO_ALLOWED_HOSTS",
    "DJANGO_DEBUG",
)

# Every setting ClusterConfig reads from the environment, in the order `status` shows them.
SETTINGS = (*CLUSTER_SETTINGS, *NETWORK_SETTINGS.values(), *SERVICE_SETTINGS)

# Redis' own spellings (redis.conf's "memory units"), and the policies a chat can
# live with (docs/decisions/0016-volatile-lru.md says why volatile-lru is the default).
REDIS_MEMORY_PATTERN = re.compile(r"\d+(b|k|kb|m|mb|g|gb)?", re.IGNORECASE)
REDIS_MAXMEMORY_POLICIES = ("volatile-lru", "noeviction")
REDIS_HA_MODES = ("none", "sentinel")
REDIS_APPENDONLY_MODES = ("no", "everysec")

# After the drain, chatsite.serve allows this long for cleanup; supervisord then
# waits as long again before it kills.
DRAIN_CLEANUP_SECONDS = 5


class ClusterError(Exception):
    """A failure explained to the user; printed without a traceback."""


def read_defaults(path=DEFAULTS_FILE):
    defaults = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            defaults[name.strip()] = value.strip()
    return defaults


def setting(name, defaults, environ):
    return environ.get(name) or defaults[name]


def resolve_settings(run_dir, environ, defaults):
    """Every setting as the cluster of `run_dir` would run with it, as a string: from
    `environ`, else the defaults (the network also from the run directory, as
    network.layout_settings says). The SERVICE_SETTINGS only when set."""
    return {
        **{name: setting(name, defaults, environ) for name in CLUSTER_SETTINGS},
        **layout_environment(layout_settings(run_dir, environ, defaults)),
        **{name: environ[name] for name in SERVICE_SETTINGS if environ.get(name)},
    }


def int_setting(settings, name, minimum=1, maximum=65535):
    value = settings[name]
    try:
        number = int(value)
    except ValueError:
        raise ClusterError(f"{name} must be a whole number, not {value!r}") from None
    if not minimum <= number <= maximum:
        raise ClusterError(f"{name} must be between {minimum} and {maximum}, not {number}")
    return number


def redis_memory_setting(settings):
    value = settings["REDIS_MAXMEMORY"]
    if not REDIS_MEMORY_PATTERN.fullmatch(value):
        raise ClusterError(f"REDIS_MAXMEMORY must be a size such as 160mb, not {value!r}")
    return value


def choice_setting(settings, name, choices):
    value = settings[name]
    if value not in choices:
        raise ClusterError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


def find_program(name):
    # nginx lives in /usr/sbin, which a non-root PATH often lacks.
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if not found:
        raise ClusterError(
            f"{name} is not installed. Run `make deps` as root, or install the Debian "
            "packages nginx-light, redis-server and prometheus."
        )
    return found


@dataclass(frozen=True)
class Programs:
    """The executables the generated supervisord.conf runs."""

    python: str
    redis_server: str
    nginx: str
    prometheus: str
    ip: str = "ip"  # iproute2, for CLUSTER_NETWORK=netns

    @classmethod
    def find(cls):
        return cls(
            python=sys.executable,
            redis_server=find_program("redis-server"),
            nginx=find_program("nginx"),
            prometheus=find_program("prometheus"),
            ip=shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin") or "ip",
        )


@dataclass(frozen=True)
class ClusterConfig:
    run_dir: Path
    replicas: int
    lb_port: int
    chat_port: int
    redis_port: int
    prometheus_port: int
    readiness_path: str
    lb_health_path: str
    metrics_path: str
    drain_seconds: int
    # nginx's per-address limits on /ws/.
    ws_connections_per_address: int
    ws_handshakes_per_second: int
    ws_handshake_burst: int
    redis_maxmemory: str = "0"
    redis_maxmemory_policy: str = "noeviction"
    redis_shards: int = 1
    redis_ha: str = "none"
    redis_sentinel_port: int = 26379
    redis_down_after_ms: int = 2000
    redis_appendonly: str = "no"
    # The SERVICE_SETTINGS that are set, passed on to every replica.
    service_settings: dict = field(default_factory=dict)
    # CLUSTER_NETWORK and its delay and loss (network.py).
    network_settings: dict = field(default_factory=lambda: {"mode": "loopback"})
    # Every setting above as a string, by its name (resolve_settings); what `up` records.
    settings: dict = field(default_factory=dict)

    @classmethod
    def from_environment(cls, run_dir, environ=os.environ, defaults=None):
        """The cluster that `environ` asks for, else the defaults; `environ` may also be
        the settings a run directory recorded (run_settings.py)."""
        defaults = read_defaults() if defaults is None else defaults
        settings = resolve_settings(run_dir, environ, defaults)
        return cls(
            run_dir=Path(run_dir).resolve(),
            replicas=int_setting(settings, "REPLICAS", maximum=64),
            lb_port=int_setting(settings, "LB_PORT"),
            chat_port=int_setting(settings, "CHAT_PORT"),
            redis_port=int_setting(settings, "REDIS_PORT"),
            prometheus_port=int_setting(settings, "PROMETHEUS_PORT"),
            readiness_path=defaults["READINESS_PATH"],
            lb_health_path=defaults["LB_HEALTH_PATH"],
            metrics_path=defaults["METRICS_PATH"],
            drain_seconds=int_setting(settings, "CHAT_DRAIN_SECONDS", minimum=0),
            # nginx refuses a limit_conn above 65535.
            ws_connections_per_address=int_setting(settings, "LB_WS_CONNECTIONS_PER_ADDRESS"),
            ws_handshakes_per_second=int_setting(
                settings, "LB_WS_HANDSHAKES_PER_SECOND", maximum=1_000_000
            ),
            ws_handshake_burst=int_setting(
                settings, "LB_WS_HANDSHAKE_BURST", minimum=0, maximum=1_000_000
            ),
            redis_maxmemory=redis_memory_setting(settings),
            redis_shards=int_setting(settings, "REDIS_SHARDS", maximum=16),
            redis_ha=choice_setting(settings, "REDIS_HA", REDIS_HA_MODES),
            redis_sentinel_port=int_setting(settings, "REDIS_SENTINEL_PORT"),
            redis_down_after_ms=int_setting(
                settings, "REDIS_SENTINEL_DOWN_AFTER_MS", minimum=100, maximum=600_000
            ),
            redis_appendonly=choice_setting(settings, "REDIS_APPENDONLY", REDIS_APPENDONLY_MODES),
            redis_maxmemory_policy=choice_setting(
                settings, "REDIS_MAXMEMORY_POLICY", REDIS_MAXMEMORY_POLICIES
            ),
            service_settings={n: settings[n] for n in SERVICE_SETTINGS if n in settings},
            network_settings=layout_settings(run_dir, settings, defaults),
            settings=settings,
        )

    def __post_init__(self):
        if self.redis_ha == "sentinel" and self.network.netns:
            raise ClusterError("REDIS_HA=sentinel does not run with CLUSTER_NETWORK=netns yet")

    # --- Layout -------------------------------------------------------------

    @property
    def log_dir(self):
        return self.run_dir / "logs"

    @property
    def directories(self):
        """The directories the generated files and the programs write into."""
        redis_dirs = tuple(self.run_dir / name for name in self.redis_layout.ports)
        return (self.run_dir, self.log_dir, self.run_dir / "nginx", *redis_dirs)

    @property
    def pid_file(self):
        return self.run_dir / "supervisord.pid"

    @property
    def supervisor_conf(self):
        return self.run_dir / "supervisord.conf"

    @property
    def supervisor_socket(self):
        return self.run_dir / "supervisor.sock"

    @property
    def secret_key_file(self):
        return self.run_dir / "secret_key"

    @property
    def api_keys_file(self):
        """The HTTP API's keys, one per line: the run directory's own unless
        CHAT_API_KEYS_FILE names another."""
        return Path(self.service_settings.get("CHAT_API_KEYS_FILE") or self.run_dir / "api_keys")

    # --- Addresses ----------------------------------------------------------

    @property
    def network(self):
        """Where each program runs and listens (network.py)."""
        return Layout(
            lb_port=self.lb_port,
            replicas=tuple(self.replica_ports),
            redis=tuple(self.redis_ports),
            **self.network_settings,
        )

    @property
    def replica_ports(self):
        return {f"chat-{n}": self.chat_port + n - 1 for n in range(1, self.replicas + 1)}

    @property
    def redis_layout(self):
        return RedisLayout(
            shards=self.redis_shards,
            port=self.redis_port,
            ha=self.redis_ha,
            sentinel_port=self.redis_sentinel_port,
            down_after_ms=self.redis_down_after_ms,
            appendonly=self.redis_appendonly,
        )

    @property
    def redis_ports(self):
        """Each Redis server's port, by program name: redis, then redis-2 ... redis-N,
        then (REDIS_HA=sentinel) their replicas redis-b ... redis-N-b."""
        return {server.name: server.port for server in self.redis_layout.servers}

    @property
    def sentinel_ports(self):
        return self.redis_layout.sentinel_ports

    @property
    def program_ports(self):
        """The port of every supervised program that listens on one, by program name."""
        return {
            **self.replica_ports,
            "nginx": self.lb_port,
            **self.redis_layout.ports,
            "prometheus": self.prometheus_port,
        }

    @property
    def redis_url(self):
        """The first shard's URL."""
        return self.redis_urls[0]

    @property
    def redis_urls(self):
        """Each shard's first server (its primary until a failover)."""
        return [
            f"redis://{self.network.address(server.name)}:{server.port}/0"
            for server in self.redis_layout.primaries
        ]

    @property
    def lb_url(self):
        return f"http://{HOST}:{self.lb_port}"

    @property
    def prometheus_url(self):
        return f"http://{HOST}:{self.prometheus_port}"

    @property
    def probe_urls(self):
        """The readiness URL of every program that has one, by program name."""
        urls = {
            name: f"http://{self.network.address(name)}:{port}{self.readiness_path}"
            for name, port in self.replica_ports.items()
        }
        urls["nginx"] = f"{self.lb_url}{self.lb_health_path}"
        urls["prometheus"] = f"{self.prometheus_url}/-/ready"
        return urls

    def ports(self):
        """Every port the cluster listens on, by the setting that chose it; they must differ."""
        ports = {"LB_PORT": self.lb_port, "PROMETHEUS_PORT": self.prometheus_port}
        for name, port in self.redis_ports.items():
            ports[f"REDIS_PORT ({name})"] = port
        for name, port in self.sentinel_ports.items():
            ports[f"REDIS_SENTINEL_PORT ({name})"] = port
        for name, port in self.replica_ports.items():
            ports[f"CHAT_PORT ({name})"] = port
        if len(set(ports.values())) != len(ports):
            raise ClusterError(f"Ports overlap: {ports}")
        return ports

    # --- The replicas -------------------------------------------------------

    @property
    def consumer(self):
        return self.service_settings.get("CHAT_CONSUMER") or "async"

    @property
    def channel_layer(self):
        return self.service_settings.get("CHAT_CHANNEL_LAYER") or "pubsub"

    @property
    def stop_wait_seconds(self):
        return self.drain_seconds + 2 * DRAIN_CLEANUP_SECONDS

    def replica_environment(self, name, secret_key):
        return {
            "CHAT_API_KEYS_FILE": str(self.api_keys_file),
            **self.service_settings,
            "DJANGO_SETTINGS_MODULE": "chatsite.settings",
            "DJANGO_SECRET_KEY": secret_key,
            "CHAT_REPLICA_ID": name,
            # The drain that stop_wait_seconds allows for.
            "CHAT_DRAIN_SECONDS": str(self.drain_seconds),
            **self.redis_layout.service_settings(self.service_settings, self.redis_urls),
            "PYTHONUNBUFFERED": "1",
        }
