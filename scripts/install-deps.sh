#!/usr/bin/env bash
# Install the non-Rust programs pgbaton's tests and demo need, on Debian 12 (bookworm).
#
#   scripts/install-deps.sh          install what is missing (as root), stop packaged services
#   scripts/install-deps.sh --check  exit 0 if nothing is missing, 1 otherwise (any user)
#
# Idempotent: a second run installs nothing. `apt-get update` runs only when something must
# be installed. The packaged PostgreSQL cluster and etcd service are stopped if they run
# (tests and demo use their own instances on other ports, and never 5432/2379).
set -euo pipefail

# Debian package -> a file it provides (how we tell it is installed and usable).
declare -A PROVIDES=(
    [postgresql-15]=/usr/lib/postgresql/15/bin/postgres
    [etcd-server]=/usr/bin/etcd
    [etcd-client]=/usr/bin/etcdctl
    [haproxy]=/usr/sbin/haproxy
    [protobuf-compiler]=/usr/bin/protoc
    # protoc's well-known types (google/protobuf/*.proto), imported by etcd-client's protos;
    # only a Recommends of protobuf-compiler, so --no-install-recommends would skip it.
    [libprotobuf-dev]=/usr/include/google/protobuf/descriptor.proto
    [iproute2]=/usr/sbin/ip
    [iptables]=/usr/sbin/iptables
    [procps]=/usr/bin/ps
    [make]=/usr/bin/make
    # HTTP load generator for `make bench` (GET /primary throughput).
    [wrk]=/usr/bin/wrk
    # `python3 -m venv` (with ensurepip) for the virtualenv of Patroni's patronictl, which
    # integration-tests/tests/patronictl.rs runs against a pgbaton cluster.
    [python3-venv]=/usr/lib/python3.11/ensurepip/__init__.py
)
ORDER=(postgresql-15 etcd-server etcd-client haproxy protobuf-compiler libprotobuf-dev iproute2 iptables procps make wrk python3-venv)

say() { printf 'install-deps: %s\n' "$*"; }

missing=()
for pkg in "${ORDER[@]}"; do
    if [[ ! -e ${PROVIDES[$pkg]} ]]; then
        missing+=("$pkg")
    fi
done
postgres_user_missing=0
id -u postgres >/dev/null 2>&1 || postgres_user_missing=1

if [[ ${1:-} == --check ]]; then
    if ((${#missing[@]} == 0 && postgres_user_missing == 0)); then
        exit 0
    fi
    say "missing: ${missing[*]:-}$( ((postgres_user_missing)) && echo ' (user postgres)')"
    exit 1
fi

if ((${#missing[@]} == 0)); then
    say "all packages present: ${ORDER[*]}"
else
    if ((EUID != 0)); then
        say "missing ${missing[*]}; run this script as root (sudo $0)" >&2
        exit 1
    fi
    if [[ ! -r /etc/debian_version ]] || ! command -v apt-get >/dev/null; then
        say "missing ${missing[*]}, and this is not a Debian system with apt-get; install them by hand" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    # Keep packaged services from starting during installation (Debian's policy-rc.d
    # protocol: exit 101 = action forbidden). Only when no policy is in place already.
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        created_policy=1
        trap '[[ $created_policy == 1 ]] && rm -f "$policy"' EXIT
    fi
    say "installing ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
    if ((created_policy)); then
        rm -f "$policy"
        created_policy=0
    fi
    for pkg in "${missing[@]}"; do
        [[ -e ${PROVIDES[$pkg]} ]] || { say "installed $pkg but ${PROVIDES[$pkg]} is missing" >&2; exit 1; }
    done
    say "installed ${missing[*]}"
fi

if ! id -u postgres >/dev/null 2>&1; then
    if ((EUID != 0)); then
        say "user postgres is missing; run as root" >&2
        exit 1
    fi
    useradd --system --user-group --home-dir /var/lib/postgresql --create-home --shell /bin/bash postgres
    say "created user postgres"
fi

# Stop packaged services that auto-started, best effort (only as root).
if ((EUID == 0)); then
    if command -v pg_lsclusters >/dev/null; then
        while read -r ver name _port status _rest; do
            if [[ $status == online* ]]; then
                if pg_ctlcluster "$ver" "$name" stop; then
                    say "stopped packaged PostgreSQL cluster $ver/$name"
                fi
            fi
        done < <(pg_lsclusters --no-header 2>/dev/null || true)
    fi
    if [[ -d /run/systemd/system ]]; then
        for unit in etcd postgresql; do
            if systemctl is-enabled --quiet "$unit" 2>/dev/null; then
                systemctl disable --now "$unit" >/dev/null 2>&1 && say "disabled packaged service $unit" || true
            fi
        done
    elif [[ -x /etc/init.d/etcd ]] && service etcd status >/dev/null 2>&1; then
        service etcd stop >/dev/null 2>&1 && say "stopped packaged etcd service" || true
    fi
fi
say "done"
