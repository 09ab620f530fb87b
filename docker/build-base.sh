#!/usr/bin/env bash
# Make sure a Debian 12 (bookworm) base image exists locally and print its name on stdout
# (everything else goes to stderr). The images in docker/ are built FROM it (ARG BASE_IMAGE).
#
#   1. $PGBATON_BASE_IMAGE, if set: used as it is (must exist locally or be pullable);
#   2. debian:bookworm-slim, if it is present locally;
#   3. pgbaton/bookworm-base:latest, if a previous run built it;
#   4. debian:bookworm-slim, if `docker pull` succeeds within $PGBATON_PULL_TIMEOUT s (20);
#   5. otherwise: `debootstrap --variant=minbase bookworm` from $DEBIAN_MIRROR
#      (http://deb.debian.org/debian) into a temporary directory, trimmed like the official
#      slim image (no docs, man pages, translations, apt lists), and `docker import`ed as
#      pgbaton/bookworm-base:latest. Needs root; installs debootstrap with apt if missing.
#
# --rebuild forces step 5 (replacing pgbaton/bookworm-base:latest).
set -euo pipefail

LOCAL_TAG=pgbaton/bookworm-base:latest
UPSTREAM=debian:bookworm-slim
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
PULL_TIMEOUT=${PGBATON_PULL_TIMEOUT:-20}

say() { printf 'build-base: %s\n' "$*" >&2; }
die() { printf 'build-base: error: %s\n' "$*" >&2; exit 1; }
have_image() { docker image inspect "$1" >/dev/null 2>&1; }

rebuild=false
case "${1:-}" in
    --rebuild) rebuild=true ;;
    "") ;;
    *) die "usage: $0 [--rebuild]" ;;
esac

if ! $rebuild; then
    if [[ -n ${PGBATON_BASE_IMAGE:-} ]]; then
        have_image "$PGBATON_BASE_IMAGE" || docker pull "$PGBATON_BASE_IMAGE" >&2 ||
            die "PGBATON_BASE_IMAGE=$PGBATON_BASE_IMAGE is neither local nor pullable"
        echo "$PGBATON_BASE_IMAGE"
        exit 0
    fi
    for image in "$UPSTREAM" "$LOCAL_TAG"; do
        if have_image "$image"; then
            say "using $image (present locally)"
            echo "$image"
            exit 0
        fi
    done
    say "trying docker pull $UPSTREAM (at most ${PULL_TIMEOUT} s)"
    if timeout "$PULL_TIMEOUT" docker pull -q "$UPSTREAM" >&2 2>&1 && have_image "$UPSTREAM"; then
        echo "$UPSTREAM"
        exit 0
    fi
    say "cannot pull $UPSTREAM: building $LOCAL_TAG with debootstrap instead"
fi

((EUID == 0)) || die "debootstrap needs root (run as root, or provide $UPSTREAM / PGBATON_BASE_IMAGE)"
if ! command -v debootstrap >/dev/null; then
    say "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -qq -y --no-install-recommends debootstrap >&2 || {
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -qq -y --no-install-recommends debootstrap >&2
    }
fi

ROOTFS=$(mktemp -d /tmp/pgbaton-rootfs.XXXXXX)
LOG=$(mktemp /tmp/pgbaton-debootstrap.XXXXXX.log)
trap 'rm -rf --one-file-system "$ROOTFS"; rm -f "$LOG"' EXIT

say "debootstrap --variant=minbase bookworm $MIRROR (about a minute)"
debootstrap --variant=minbase bookworm "$ROOTFS" "$MIRROR" >"$LOG" 2>&1 || {
    tail -n 30 "$LOG" >&2
    tail -n 30 "$ROOTFS/debootstrap/debootstrap.log" >&2 2>/dev/null || true
    die "debootstrap failed"
}

# The same trimming the official slim image does, for this and every later apt-get install.
cat >"$ROOTFS/etc/dpkg/dpkg.cfg.d/docker" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
CFG
cat >"$ROOTFS/etc/apt/apt.conf.d/docker-clean" <<'CFG'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CFG
echo 'Acquire::Languages "none";' >"$ROOTFS/etc/apt/apt.conf.d/docker-no-languages"
echo 'APT::Install-Recommends "false";' >"$ROOTFS/etc/apt/apt.conf.d/docker-no-recommends"
# No service may start during image builds.
printf '#!/bin/sh\nexit 101\n' >"$ROOTFS/usr/sbin/policy-rc.d"
chmod 755 "$ROOTFS/usr/sbin/policy-rc.d"
rm -f "$ROOTFS/etc/apt/sources.list"
cat >"$ROOTFS/etc/apt/sources.list.d/debian.sources" <<CFG
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
CFG
# Docker provides these at run time; the host's copies must not end up in the image.
: >"$ROOTFS/etc/resolv.conf"
: >"$ROOTFS/etc/hostname"
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* \
    "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
    "$ROOTFS"/usr/share/locale/* "$ROOTFS"/var/log/*.log "$ROOTFS"/var/log/apt/* \
    "$ROOTFS"/debootstrap "$ROOTFS"/tmp/* "$ROOTFS"/var/tmp/*

say "importing as $LOCAL_TAG"
tar --numeric-owner --xattrs -C "$ROOTFS" \
    --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -cf - . |
    docker import \
        -c 'ENV LANG=C.UTF-8' \
        -c 'CMD ["bash"]' \
        -m "debootstrap --variant=minbase bookworm $MIRROR" \
        - "$LOCAL_TAG" >/dev/null
say "built $LOCAL_TAG ($(docker image inspect -f '{{.Size}}' "$LOCAL_TAG" | awk '{printf "%.0f MB", $1/1e6}'))"
echo "$LOCAL_TAG"
