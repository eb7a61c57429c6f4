#!/usr/bin/env bash
# Builds the stand-in base images (see README.md here) in the Docker engine that
# DOCKER_HOST names: debootstrap once (the root file system is cached), then
# `docker build` per image. Prints the variables that point compose at them.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${BASE_IMAGE_CACHE:-$here/../../../.run/docker}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
prefix=chat-cluster-base
mkdir -p "$cache"
log() { echo "[$(date +%T)] $*" >&2; }

if ! docker image inspect "$prefix/debian:bookworm" >/dev/null 2>&1; then
    rootfs_tar="$cache/bookworm-minbase.tar"
    if [ ! -s "$rootfs_tar" ]; then
        rootfs=$(mktemp -d "$cache/rootfs.XXXXXX")
        log "debootstrap bookworm (about a minute)"
        debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        : >"$rootfs/etc/resolv.conf"; : >"$rootfs/etc/hostname"  # docker provides both
        printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb %s-security bookworm-security main\n' \
            "$mirror" "$mirror" "$mirror" >"$rootfs/etc/apt/sources.list"
        tar --numeric-owner -C "$rootfs" -cf "$rootfs_tar.tmp" . && mv "$rootfs_tar.tmp" "$rootfs_tar"
        rm -rf "$rootfs"
    fi
    log "docker import $prefix/debian:bookworm"
    docker import -c 'CMD ["/bin/bash"]' -c 'ENV LANG=C.UTF-8' "$rootfs_tar" "$prefix/debian:bookworm" >/dev/null
fi

for name in python nginx redis prometheus; do
    tag="$prefix/$name:bookworm"
    if docker image inspect "$tag" >/dev/null 2>&1; then continue; fi
    context=$(mktemp -d)
    cp "$here/$name/Dockerfile" "$context/"
    mkdir -p "$context/certs"
    cp /usr/local/share/ca-certificates/*.crt "$context/certs/" 2>/dev/null || true
    log "docker build $tag"
    docker build --quiet --tag "$tag" "$context" >/dev/null
    rm -rf "$context"
done

echo "PYTHON_IMAGE=$prefix/python:bookworm"
echo "NGINX_IMAGE=$prefix/nginx:bookworm"
echo "REDIS_IMAGE=$prefix/redis:bookworm"
echo "PROMETHEUS_IMAGE=$prefix/prometheus:bookworm"
