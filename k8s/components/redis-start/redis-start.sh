#!/bin/sh
# Starts a Redis server or a Sentinel of chat-cluster, in compose (docker-compose.yml,
# docker-compose.ha.yml) and Kubernetes (k8s/components/redis-start/ holds a copy that
# tests/deploy/test_single_source.py keeps identical).
#
#   redis-start.sh server          redis-server; with REDIS_SENTINELS empty a lone Redis
#   redis-start.sh sentinel        redis-server --sentinel, its config written to SENTINEL_DIR
#   redis-start.sh sentinel-ready  exit 0 once this Sentinel could fail the primary over
#
# A server's role is decided at every start, as bitnami/charts' redis start-node.sh does:
# a replica of the primary the Sentinels name, the primary if they name this server. If no
# Sentinel answers, the server that says it is a primary (ROLE) is followed; if none does (a new
# deployment), the first of REDIS_HOSTS is the primary. A Sentinel monitors the same primary.
#
# Settings (deploy/defaults.env): REDIS_PORT, REDIS_MAXMEMORY, REDIS_MAXMEMORY_POLICY,
# REDIS_APPENDONLY, REDIS_SENTINELS, REDIS_SENTINEL_MASTERS, REDIS_SENTINEL_PORT. With Sentinel
# also REDIS_HOSTS (every Redis server's host, the initial primary first) and REDIS_SELF (the
# host others reach this server or Sentinel at); REDIS_BIND, an address to listen on alone.
set -eu

: "${REDIS_PORT:?}"
REDIS_DIR=${REDIS_DIR:-/data}
REDIS_APPENDONLY=${REDIS_APPENDONLY:-no}
REDIS_SENTINELS=${REDIS_SENTINELS:-}
# One master per shard; this script runs one shard.
MASTER=${REDIS_SENTINEL_MASTERS:-chat}
MASTER=${MASTER%%,*}

log() { echo "redis-start: $*" >&2; }
words() { echo "$1" | tr ',' ' '; }

# "host port" of the primary that the first Sentinel to answer names.
primary_from_sentinels() {
    for sentinel in $(words "$REDIS_SENTINELS"); do
        reply=$(timeout 3 redis-cli -h "${sentinel%:*}" -p "${sentinel##*:}" --raw \
            SENTINEL get-master-addr-by-name "$MASTER" 2>/dev/null) || continue
        # shellcheck disable=SC2086  # host and port, one a line
        set -- $reply
        if [ $# -eq 2 ]; then echo "$1 $2"; return; fi
    done
}

# "host port" of the first other server that says it is a primary.
primary_from_servers() {
    for host in $(words "$REDIS_HOSTS"); do
        [ "$host" != "$REDIS_SELF" ] || continue
        role=$(timeout 3 redis-cli -h "$host" -p "$REDIS_PORT" --raw ROLE 2>/dev/null | head -n 1)
        if [ "$role" = master ]; then echo "$host $REDIS_PORT"; return; fi
    done
}

find_primary() {
    found=$(primary_from_sentinels)
    [ -n "$found" ] || found=$(primary_from_servers)
    [ -n "$found" ] || found="${REDIS_HOSTS%%,*} $REDIS_PORT"
    echo "$found"
}

server() {
    : "${REDIS_MAXMEMORY:?}" "${REDIS_MAXMEMORY_POLICY:?}"
    set -- --port "$REDIS_PORT" --dir "$REDIS_DIR" --save "" \
        --maxmemory "$REDIS_MAXMEMORY" --maxmemory-policy "$REDIS_MAXMEMORY_POLICY" \
        --protected-mode no ${REDIS_BIND:+--bind "$REDIS_BIND"}
    case "$REDIS_APPENDONLY" in
        no) set -- "$@" --appendonly no ;;
        everysec) set -- "$@" --appendonly yes --appendfsync everysec ;;
        *) log "REDIS_APPENDONLY is no or everysec, not '$REDIS_APPENDONLY'"; exit 2 ;;
    esac
    if [ -n "$REDIS_SENTINELS" ]; then
        : "${REDIS_HOSTS:?}" "${REDIS_SELF:?}"
        # A primary restarted empty before the Sentinels notice would be followed by its
        # replica, which would then drop everything too (Redis' replication docs, "Safety of
        # replication when master has persistence turned off").
        if [ "$REDIS_APPENDONLY" = no ]; then
            log "with Sentinel every Redis server persists: set REDIS_APPENDONLY=everysec"
            exit 2
        fi
        # Others and the Sentinels know this server by its stable name, not its address.
        set -- "$@" --replica-announce-ip "$REDIS_SELF" --replica-announce-port "$REDIS_PORT"
        # A replica that needs a full copy after a failover gets it at once, not after
        # Redis' 5 s wait for others: until it has it, no message is acknowledged.
        set -- "$@" --repl-diskless-sync-delay 0
        primary=$(find_primary)
        if [ "${primary% *}" = "$REDIS_SELF" ]; then
            log "$REDIS_SELF starts as the primary of $MASTER"
        else
            log "$REDIS_SELF starts as a replica of $primary"
            # shellcheck disable=SC2086  # host and port
            set -- "$@" --replicaof $primary
        fi
    fi
    exec redis-server "$@"
}

sentinel() {
    : "${REDIS_HOSTS:?}" "${REDIS_SELF:?}" "${REDIS_SENTINEL_PORT:?}"
    dir=${SENTINEL_DIR:-/tmp}
    primary=$(find_primary)
    log "$REDIS_SELF monitors $MASTER at $primary"
    # Sentinel rewrites its config as it learns: a writable copy, made anew at each start.
    # A stable myid (as bitnami's start-sentinel.sh derives it) lets the other Sentinels
    # recognise a restarted one.
    cat >"$dir/sentinel.conf" <<EOF
port $REDIS_SENTINEL_PORT
${REDIS_BIND:+bind $REDIS_BIND}
dir $dir
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel announce-ip $REDIS_SELF
sentinel announce-port $REDIS_SENTINEL_PORT
sentinel myid $(printf %s "$REDIS_SELF" | sha1sum | cut -c1-40)
sentinel monitor $MASTER $primary ${SENTINEL_QUORUM:-2}
sentinel down-after-milliseconds $MASTER ${SENTINEL_DOWN_AFTER_MS:-2000}
sentinel failover-timeout $MASTER ${SENTINEL_FAILOVER_TIMEOUT_MS:-3000}
sentinel parallel-syncs $MASTER 1
EOF
    exec redis-server "$dir/sentinel.conf" --sentinel
}

# The Sentinel's health check and readiness probe: enough Sentinels answer to authorise a
# failover (ckquorum), and this one knows every replica. It learns of them from the
# primary's INFO, every 10 s; until then it has no replica to promote, and a primary lost
# meanwhile stays lost.
sentinel_ready() {
    : "${REDIS_HOSTS:?}" "${REDIS_SENTINEL_PORT:?}"
    redis-cli -p "$REDIS_SENTINEL_PORT" --raw SENTINEL ckquorum "$MASTER" | grep -q '^OK' || exit 1
    # shellcheck disable=SC2046  # one word a host
    set -- $(words "$REDIS_HOSTS")
    replicas=$(redis-cli -p "$REDIS_SENTINEL_PORT" --raw SENTINEL replicas "$MASTER" | grep -cx name)
    [ "$replicas" -ge $(($# - 1)) ]
}

case "${1:-}" in
    server) server ;;
    sentinel) sentinel ;;
    sentinel-ready) sentinel_ready ;;
    *) log "usage: $0 server|sentinel|sentinel-ready"; exit 2 ;;
esac
