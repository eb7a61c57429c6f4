#!/usr/bin/env bash
# A private Docker engine, for a machine where none runs (such as CI here).
#
#   private-engine.sh start    install Debian's docker.io if missing, start dockerd,
#                              print DOCKER_HOST=... once it answers
#   private-engine.sh stop     remove its containers, stop dockerd by its PID, and undo
#                              the host network changes dockerd leaves behind
#
# State (images, the PID file) lives in ENGINE_DIR (default .run/engine), so that
# images built once are there the next time.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
state=$(mkdir -p "${ENGINE_DIR:-$repo/.run/engine}" && cd "${ENGINE_DIR:-$repo/.run/engine}" && pwd)
# containerd's sockets live under the exec root: keep its path short.
exec_root=/tmp/chat-cluster-engine.$(printf %s "$state" | md5sum | cut -c1-8)
socket=$state/docker.sock
pid_file=$state/dockerd.pid
export DOCKER_HOST=unix://$socket

running() { [ -s "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null; }

start() {
    if running; then echo "DOCKER_HOST=$DOCKER_HOST"; return; fi
    if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
        [ "$(id -u)" -eq 0 ] || { echo "error: install docker.io and debootstrap as root" >&2; exit 1; }
        echo "Installing docker.io and debootstrap from Debian" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap >/dev/null \
            || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap >/dev/null; }
    fi
    # What dockerd changes on the host and does not undo, to restore on stop.
    {
        echo "ip_forward=$(sysctl -n net.ipv4.ip_forward)"
        echo "forward_policy=$(iptables -S FORWARD 2>/dev/null | awk '/^-P FORWARD/ {print $3}')"
        echo "had_docker_chains=$(iptables-save 2>/dev/null | grep -c -i docker || true)"
    } >"$state/host-network.before"
    mkdir -p "$state/data"
    nohup dockerd --data-root "$state/data" --exec-root "$exec_root" --pidfile "$pid_file" \
        -H "$DOCKER_HOST" --default-ulimit nofile=20000:20000 \
        >>"$state/dockerd.log" 2>&1 </dev/null &
    local pid=$!
    for _ in $(seq 1 150); do
        if docker version >/dev/null 2>&1; then echo "DOCKER_HOST=$DOCKER_HOST"; return; fi
        kill -0 "$pid" 2>/dev/null || { echo "error: dockerd exited; see $state/dockerd.log" >&2; tail -20 "$state/dockerd.log" >&2; exit 1; }
        sleep 0.2
    done
    echo "error: dockerd did not answer within 30 s; see $state/dockerd.log" >&2
    exit 1
}

stop() {
    if running; then
        local pid ids
        pid=$(cat "$pid_file")
        ids=$(docker ps -aq 2>/dev/null || true)
        [ -z "$ids" ] || docker rm -f $ids >/dev/null 2>&1 || true
        kill -TERM "$pid"
        for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then echo "dockerd $pid did not stop; killing it" >&2; kill -KILL "$pid"; fi
        echo "stopped dockerd $pid" >&2
    fi
    rm -f "$pid_file"
    umount "$exec_root/netns/default" 2>/dev/null || true
    if [ -f "$state/host-network.before" ]; then
        # shellcheck disable=SC1091
        . "$state/host-network.before"
        for link in $(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E '^(docker0|br-[0-9a-f]{12})$' || true); do
            ip link delete "$link" 2>/dev/null || true
        done
        if [ "${had_docker_chains:-0}" = 0 ]; then
            iptables-save | grep -v -i docker | iptables-restore
        fi
        [ -z "${forward_policy:-}" ] || iptables -P FORWARD "$forward_policy"
        sysctl -qw "net.ipv4.ip_forward=${ip_forward:-0}"
        rm -f "$state/host-network.before"
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
