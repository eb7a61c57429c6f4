"""The compose stacks brought up for real: a Docker engine (a private one started here
when none answers, stopped by its PID afterwards), Compose v2 and the base images, shared
by the session; over it, each test module brings up its own compose project (its own
name and ports) and takes it down with its volumes: docker-compose.yml (3 chat replicas
behind nginx, Redis and Prometheus), and the same with docker-compose.ha.yml."""

import contextlib
import json
import os
import secrets
import subprocess
import uuid
from dataclasses import dataclass

import pytest

from harness.cluster import free_port_block
from harness.paths import ROOT

DOCKER = ROOT / "deploy" / "docker"


def run(command, environment, timeout=600, check=True):
    result = subprocess.run(
        command, env=environment, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, command))} failed:\n{result.stdout[-3000:]}\n"
            f"{result.stderr[-3000:]}"
        )
    return result


def exported(output):
    """NAME=value lines printed by the deploy/docker scripts."""
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


def unavailable(reason):
    if os.environ.get("CI"):
        pytest.fail(f"compose test cannot run in CI: {reason}")
    pytest.skip(reason)


@dataclass
class Stack:
    """One compose project: its environment names the project, its files and its ports."""

    environment: dict
    lb_port: int
    prometheus_port: int
    api_key: str = ""

    def docker(self, *arguments, timeout=600, check=True):
        return run(["docker", *arguments], self.environment, timeout, check)

    def compose(self, *arguments, timeout=600, check=True):
        return self.docker("compose", *arguments, timeout=timeout, check=check)

    @property
    def origin(self):
        return f"http://127.0.0.1:{self.lb_port}"

    def ws_url(self, room, replica=None):
        assert replica is None, "compose publishes only the load balancer"
        return f"ws://127.0.0.1:{self.lb_port}/ws/chat/{room}/"

    def containers(self, service):
        output = self.compose("ps", "--format", "json", service).stdout
        # Compose prints one JSON object per line (or a list, in older releases).
        rows = [json.loads(line) for line in output.splitlines() if line.strip()]
        return [row for group in rows for row in (group if isinstance(group, list) else [group])]


@pytest.fixture(scope="session")
def engine():
    """The environment in which `docker` reaches an engine with Compose v2 and the images."""
    environment = {**os.environ, "COMPOSE_BAKE": "false"}
    started_engine = False
    if run(["docker", "version"], environment, check=False).returncode != 0:
        if os.geteuid() != 0:
            unavailable("no Docker engine answers and starting one needs root")
        result = run([DOCKER / "private-engine.sh", "start"], environment, check=False)
        if result.returncode != 0:
            unavailable(f"no Docker engine could be started: {result.stderr[-2000:]}")
        environment.update(exported(result.stdout))
        started_engine = True
    try:
        if run(["docker", "compose", "version"], environment, check=False).returncode != 0:
            environment.update(exported(run([DOCKER / "install-compose.sh"], environment).stdout))
        # No registry is reachable here: stand-ins built from Debian replace the pinned images.
        if not os.environ.get("COMPOSE_TEST_PULL_IMAGES"):
            built = run([DOCKER / "base-images" / "build.sh"], environment, timeout=1200)
            environment.update(exported(built.stdout))
        yield environment
    finally:
        if started_engine:
            run([DOCKER / "private-engine.sh", "stop"], environment)


@contextlib.contextmanager
def compose_stack(engine, name, files=("docker-compose.yml",)):
    """Brings up the compose project of `files` on free ports, under a project name of its
    own; afterwards keeps its logs in .run/compose-test-<name>.log and takes it down with
    its volumes, also when bringing it up failed."""
    base = free_port_block(2)
    stack = Stack(dict(engine), base, base + 1, api_key=secrets.token_urlsafe(24))
    stack.environment.update(
        COMPOSE_PROJECT_NAME=f"chat-cluster-test-{name}-{uuid.uuid4().hex[:6]}",
        COMPOSE_FILE=os.pathsep.join(files),
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        CHAT_API_KEYS=stack.api_key,
        LB_PORT=str(stack.lb_port),
        PROMETHEUS_PORT=str(stack.prometheus_port),
        CHAT_IMAGE="chat-cluster/chat:compose-test",
    )
    try:
        stack.compose("build", timeout=1200)
        stack.compose("up", "--detach", "--wait", "--wait-timeout", "240", timeout=400)
        yield stack
    finally:
        logs = stack.compose("logs", "--no-color", timeout=120, check=False).stdout
        (ROOT / ".run").mkdir(exist_ok=True)
        (ROOT / ".run" / f"compose-test-{name}.log").write_text(logs)
        stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "10")


@pytest.fixture(scope="module")
def stack(engine):
    """docker-compose.yml: 3 chat replicas behind nginx, Redis and Prometheus."""
    with compose_stack(engine, "base") as stack:
        yield stack


@pytest.fixture(scope="module")
def ha_stack(engine):
    """docker-compose.yml with docker-compose.ha.yml: a Redis primary, two replicas and
    three Sentinels."""
    with compose_stack(
        engine, "ha", files=("docker-compose.yml", "docker-compose.ha.yml")
    ) as stack:
        yield stack
