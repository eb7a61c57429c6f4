"""The local cluster's network (CLUSTER_NETWORK): every program on 127.0.0.1
(loopback), or each replica and each Redis shard a host of its own (netns).

In netns mode each replica and each Redis shard runs in its own network namespace,
cc<LB_PORT>-<program> (chat-1, redis, ...), with lo up and one veth into a bridge,
cc<LB_PORT>-br, in the root namespace. The bridge has the subnet's first address;
nginx, Prometheus, the harness and `status` stay in the root namespace and reach
the hosts through it. The subnet is 10.<LB_PORT // 256>.<LB_PORT % 256>.0/24, one per
LB_PORT, so tests run beside a `make up` cluster. Supervisord starts a program in
its namespace with `ip netns exec`, which execs: the PID is the program's.

CLUSTER_REDIS_DELAY_MS puts a delaying relay (relay.py) in front of each Redis, in
its namespace, on the shard's address and port (Redis then listens on 127.0.0.1
there). This kernel has no sch_netem (`tc qdisc ... netem` is unknown), and netem
would need per-destination filters in every namespace, so the relay makes the delay
on any kernel. CLUSTER_REDIS_LOSS_PERCENT is real packet loss: iptables' statistic
match drops that share of the packets between each replica and the Redis hosts, in
the replica's namespace.

Everything created is recorded in the run directory (network.json) before it is
made; `remove` deletes what is recorded there, and only that. Deleting a namespace
deletes its veth pair and its iptables rules.
"""

import ipaddress
import json
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

MODES = ("loopback", "netns")
LOOPBACK = "127.0.0.1"
STATE_FILE = "network.json"
# The settings of this module, by their key in layout_settings().
SETTINGS = {
    "mode": "CLUSTER_NETWORK",
    "delay_ms": "CLUSTER_REDIS_DELAY_MS",
    "loss_percent": "CLUSTER_REDIS_LOSS_PERCENT",
}
# Host numbers in the subnet: the bridge, Redis shard N, replica N.
BRIDGE_HOST, FIRST_REDIS_HOST, FIRST_REPLICA_HOST = 1, 2, 32
IFNAMSIZ = 15  # the kernel's limit on an interface name
COMMAND_TIMEOUT_S = 20


class NetworkError(Exception):
    """A failure explained to the user; printed without a traceback."""


@dataclass(frozen=True)
class Layout:
    """Names and addresses of one cluster's hosts; pure, derived from its settings."""

    mode: str
    lb_port: int
    replicas: tuple  # program names: chat-1 ...
    redis: tuple  # program names: redis, redis-2 ...
    delay_ms: int = 0
    loss_percent: float = 0.0

    @property
    def netns(self):
        return self.mode == "netns"

    @property
    def prefix(self):
        return f"cc{self.lb_port}"

    @property
    def subnet(self):
        return ipaddress.ip_network(f"10.{self.lb_port >> 8}.{self.lb_port & 255}.0/24")

    @property
    def bridge(self):
        return f"{self.prefix}-br"

    @property
    def gateway(self):
        return str(self.subnet[BRIDGE_HOST])

    @property
    def hosts(self):
        """The programs that are hosts of their own, in the order of their veths."""
        return (*self.redis, *self.replicas) if self.netns else ()

    def address(self, name):
        """The address program `name` listens on and is reached at."""
        if name in self.redis and self.netns:
            return str(self.subnet[FIRST_REDIS_HOST + self.redis.index(name)])
        if name in self.replicas and self.netns:
            return str(self.subnet[FIRST_REPLICA_HOST + self.replicas.index(name)])
        return LOOPBACK

    def redis_bind(self, name):
        """Where Redis itself listens: behind the relay, on its namespace's loopback."""
        return LOOPBACK if self.delay_ms else self.address(name)

    def redis_conf(self):
        """What Redis' configuration adds in this mode."""
        if not self.netns or self.delay_ms:
            return ""
        # Protected mode answers only loopback clients; the replicas are other hosts.
        # The bridge's private subnet is all that reaches this address.
        return "\n# CLUSTER_NETWORK=netns: the replicas are other hosts.\nprotected-mode no\n"

    def namespace(self, name):
        return f"{self.prefix}-{name}" if name in self.hosts else None

    def veth(self, name):
        """(root side, namespace side) of the host's veth pair."""
        index = self.hosts.index(name)
        return f"{self.prefix}h{index}", f"{self.prefix}n{index}"

    def exec_prefix(self, ip_command, name):
        """What goes before a program's command so that it runs in its namespace."""
        namespace = self.namespace(name)
        return f"{ip_command} netns exec {namespace} " if namespace else ""

    def relay_name(self, redis_name):
        return f"{redis_name}-delay"

    def describe(self):
        """What `cluster.py describe` and `status` show: mode, subnet, each host."""
        if not self.netns:
            return {"mode": self.mode}
        return {
            "mode": self.mode,
            "subnet": str(self.subnet),
            "bridge": f"{self.bridge} {self.gateway}",
            "delay_ms": self.delay_ms,
            "loss_percent": self.loss_percent,
            "namespaces": {name: self.namespace(name) for name in self.hosts},
        }

    def check(self):
        """Raises NetworkError for a layout that cannot be made."""
        if self.mode not in MODES:
            raise NetworkError(f"CLUSTER_NETWORK must be one of {', '.join(MODES)}")
        if not self.netns:
            if self.delay_ms or self.loss_percent:
                raise NetworkError(
                    "CLUSTER_REDIS_DELAY_MS and CLUSTER_REDIS_LOSS_PERCENT need "
                    "CLUSTER_NETWORK=netns: on loopback there is no link to slow down"
                )
            return
        if not 0 <= self.loss_percent < 100 or not 0 <= self.delay_ms <= 10_000:
            raise NetworkError(
                "CLUSTER_REDIS_LOSS_PERCENT must be 0 to 99, CLUSTER_REDIS_DELAY_MS 0 to 10000"
            )
        too_long = [n for n in (self.bridge, *self.veth(self.hosts[-1])) if len(n) > IFNAMSIZ]
        if too_long:
            raise NetworkError(f"interface names longer than {IFNAMSIZ} characters: {too_long}")


def layout_settings(run_dir, environ, defaults):
    """CLUSTER_NETWORK, CLUSTER_REDIS_DELAY_MS and CLUSTER_REDIS_LOSS_PERCENT: from the
    environment, else as the running cluster of `run_dir` was made, else the defaults,
    so that `make status` and `make down` need not repeat them."""
    recorded = read_state(run_dir) or {}
    if environ.get("CLUSTER_NETWORK"):
        recorded = {}  # another mode: the rest from the environment or the defaults
    values = {
        key: environ.get(name) or recorded.get(key) or defaults[name]
        for key, name in SETTINGS.items()
    }
    try:
        return {
            "mode": str(values["mode"]),
            "delay_ms": int(values["delay_ms"]),
            "loss_percent": float(values["loss_percent"]),
        }
    except ValueError as error:
        raise NetworkError(f"CLUSTER_REDIS_DELAY_MS, CLUSTER_REDIS_LOSS_PERCENT: {error}") from None


def layout_environment(settings):
    """layout_settings' values as the environment spells them, by setting name."""
    return {
        "CLUSTER_NETWORK": settings["mode"],
        "CLUSTER_REDIS_DELAY_MS": str(settings["delay_ms"]),
        "CLUSTER_REDIS_LOSS_PERCENT": f"{settings['loss_percent']:g}",
    }


# --- The machine ---------------------------------------------------------------


def ip_command():
    found = shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin")
    if not found:
        raise NetworkError("CLUSTER_NETWORK=netns needs the `ip` command (Debian's iproute2)")
    return found


def run(*command, check=True):
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
    )
    if check and result.returncode != 0:
        raise NetworkError(f"`{' '.join(command)}` failed: {result.stderr.strip()}")
    return result


def state_path(run_dir):
    return Path(run_dir) / STATE_FILE


def read_state(run_dir):
    try:
        return json.loads(state_path(run_dir).read_text())
    except (FileNotFoundError, ValueError):
        return None


def namespaces():
    result = run(ip_command(), "netns", "list", check=False)
    return {line.split()[0] for line in result.stdout.splitlines() if line.strip()}


def link_exists(name):
    return run(ip_command(), "link", "show", "dev", name, check=False).returncode == 0


def clashing_routes(subnet, bridge):
    """Routes and addresses of this machine that overlap `subnet`, but the bridge's own."""
    clashes = []
    for kind in ("route", "addr"):
        result = run(ip_command(), "-j", "-4", kind, "show", check=False)
        for entry in json.loads(result.stdout or "[]"):
            if kind == "route":
                found = [(entry.get("dst"), entry.get("dev"))]
            else:
                found = [
                    (f"{a['local']}/{a['prefixlen']}", entry.get("ifname"))
                    for a in entry.get("addr_info", [])
                ]
            for destination, device in found:
                if not destination or destination == "default" or device == bridge:
                    continue
                if ipaddress.ip_network(destination, strict=False).overlaps(subnet):
                    clashes.append(f"{destination} dev {device}")
    return clashes


def create(layout, run_dir):
    """Makes the bridge, the namespaces and their veths of `layout` (netns mode), after
    removing what a crashed run of `run_dir` left. Records each name before making it."""
    remove(run_dir)
    if not layout.netns:
        return
    if os.geteuid() != 0:
        raise NetworkError(
            "CLUSTER_NETWORK=netns runs each replica and Redis in a network namespace "
            "(ip netns, veth, iptables), which needs root. Run as root, or use "
            "CLUSTER_NETWORK=loopback."
        )
    ip = ip_command()
    clashes = clashing_routes(layout.subnet, layout.bridge)
    if clashes:
        raise NetworkError(
            f"The subnet {layout.subnet} (derived from LB_PORT={layout.lb_port}) overlaps "
            f"this machine's {', '.join(clashes)}. Choose another LB_PORT."
        )
    taken = sorted({layout.namespace(name) for name in layout.hosts} & namespaces())
    taken += [name for name in (layout.bridge,) if link_exists(name)]
    if taken:
        raise NetworkError(
            f"{', '.join(taken)} exist but {run_dir} did not make them: another cluster "
            f"with LB_PORT={layout.lb_port}? Stop it, or choose another LB_PORT."
        )
    state = {**asdict(layout), "links": [layout.bridge], "namespaces": []}
    record(run_dir, state)
    run(ip, "link", "add", layout.bridge, "type", "bridge")
    run(ip, "addr", "add", f"{layout.gateway}/{layout.subnet.prefixlen}", "dev", layout.bridge)
    run(ip, "link", "set", layout.bridge, "up")
    for name in layout.hosts:
        namespace = layout.namespace(name)
        state["namespaces"].append(namespace)
        state["links"].append(layout.veth(name)[0])
        record(run_dir, state)
        add_host(ip, layout, name, namespace)
    for name in layout.replicas:
        if layout.loss_percent:
            drop_share(ip, layout, name)


def add_host(ip, layout, name, namespace):
    outside, inside = layout.veth(name)
    in_namespace = (ip, "-n", namespace)
    run(ip, "netns", "add", namespace)
    run(ip, "link", "add", outside, "type", "veth", "peer", "name", inside, "netns", namespace)
    run(ip, "link", "set", outside, "master", layout.bridge, "up")
    run(*in_namespace, "link", "set", "lo", "up")
    run(*in_namespace, "link", "set", inside, "name", "eth0")
    address = f"{layout.address(name)}/{layout.subnet.prefixlen}"
    run(*in_namespace, "addr", "add", address, "dev", "eth0")
    run(*in_namespace, "link", "set", "eth0", "up")


def drop_share(ip, layout, name):
    """CLUSTER_REDIS_LOSS_PERCENT: random drops between replica `name` and every Redis."""
    probability = f"{layout.loss_percent / 100:.4f}"
    for redis in layout.redis:
        address = layout.address(redis)
        for chain, direction in (("OUTPUT", "-d"), ("INPUT", "-s")):
            run(
                *(ip, "netns", "exec", layout.namespace(name), "iptables", "-A", chain),
                *(direction, address, "-m", "statistic", "--mode", "random"),
                *("--probability", probability, "-j", "DROP"),
            )


def record(run_dir, state):
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    state_path(run_dir).write_text(json.dumps(state, indent=1) + "\n")


def remove(run_dir):
    """Deletes the namespaces and the bridge that `run_dir` recorded; returns their names."""
    state = read_state(run_dir)
    if state is None:
        return []
    removed = []
    if state.get("mode") == "netns":
        ip = ip_command()
        # The veths first: a namespace's own end goes with it only once the kernel
        # gets round to it, after `netns delete` returned.
        for link in reversed(state.get("links", [])):
            if link_exists(link):
                run(ip, "link", "delete", link)
                removed.append(link)
        present = namespaces()
        for namespace in state.get("namespaces", []):
            if namespace in present:
                run(ip, "netns", "delete", namespace)
                removed.append(namespace)
    state_path(run_dir).unlink(missing_ok=True)
    return removed
