#!/usr/bin/env bash
# The docker-compose demo's `region` profile: two clusters on separate networks, region B a
# standby cluster of region A (docker/docker-compose.yml, docker/README.md "Two regions").
#
#   scripts/docker-region.sh up          build (docker-demo.sh build), start both regions, wait
#                                        until region A has a primary and two replicas and
#                                        region B a standby leader streaming from region A
#                                        and two replicas streaming from it
#   scripts/docker-region.sh switchover  `pgbaton region-switchover` from the primary region to
#                                        the standby region (run it again to switch back)
#   scripts/docker-region.sh status      containers, both clusters' tables, who answers what
#   scripts/docker-region.sh down        stop and remove both regions (containers, networks,
#                                        volumes)
#
# Environment: as scripts/docker-demo.sh (PGBATON_DOCKER_PROJECT defaults to pgbaton-region
# here), plus PGBATON_DOCKER_B_PRIMARY_PORT / _B_REPLICA_PORT / _B_STATS_PORT, region B's
# HAProxy ports on the host (5100 / 5101 / 7100; 0 lets Docker choose).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
export PGBATON_DOCKER_PROJECT=${PGBATON_DOCKER_PROJECT:-pgbaton-region}
export PGBATON_DOCKER_PROFILES=region
# shellcheck source=scripts/docker-demo.sh
source "$REPO/scripts/docker-demo.sh"

NODES_A=(node1 node2 node3)
NODES_B=(node-b1 node-b2 node-b3)
CONFIG_A=/etc/pgbaton/pgbaton.yml
CONFIG_B=/etc/pgbaton/pgbaton-region-b.yml

rsay() { printf 'docker-region: %s\n' "$*" >&2; }
rdie() { printf 'docker-region: error: %s\n' "$*" >&2; exit 1; }

# "node code" per node for GET $2, asked from inside container $1 (the agents' ports are not
# published); 000: no answer.
# shellcheck disable=SC2016 # expanded by the container's bash
PROBE_NODES='path=$1; shift
for n in "$@"; do
    code=$(timeout 2 bash -c "exec 3<>/dev/tcp/$n/8008 || exit 1
        printf \"GET %s HTTP/1.0\r\nHost: %s\r\n\r\n\" \"\$0\" \"\$1\" >&3
        read -r _ c _ <&3; echo \"\$c\"" "$path" "$n" 2>/dev/null) || code=000
    echo "$n ${code:-000}"
done'
probe_nodes() { # container, path, nodes...
    docker exec "$1" bash -c "$PROBE_NODES" _ "$2" "${@:3}" 2>/dev/null || true
}

# SQL on one node's PostgreSQL over its Unix socket (peer authentication as postgres).
sql_node() { # service, sql
    docker exec "$(cid "$1")" psql -X -q -At -h /var/run/postgresql -U postgres -d postgres \
        -c "$2" 2>/dev/null
}

# The host port container port $2 of service $1 is published on.
published_port_of() { # service, container port
    docker port "$(cid "$1")" "$2/tcp" 2>/dev/null | sed -n 's/.*:\([0-9]*\)$/\1/p' | head -n 1
}

# Prints the node answering 200 on $2 (/primary or /standby-leader) when exactly one does and
# every other one answers 200 on /replica; else a reason on stderr. $1: a container on the
# region's network; the rest: the region's nodes.
region_leader() { # container, leader path, nodes...
    local from=$1 path=$2 leader="" n code replicas=0
    shift 2
    while read -r n code; do
        if [[ $code == 200 ]]; then
            [[ -z $leader ]] || { echo "$leader and $n both answer 200 on $path" >&2; return 1; }
            leader=$n
        fi
    done < <(probe_nodes "$from" "$path" "$@")
    [[ -n $leader ]] || { echo "no agent of $* answers 200 on $path" >&2; return 1; }
    while read -r n code; do
        [[ $n != "$leader" && $code == 200 ]] && replicas=$((replicas + 1))
    done < <(probe_nodes "$from" /replica "$@")
    (($# - 1 == replicas)) ||
        { echo "$replicas of $(($# - 1)) replicas of $leader answer 200 on /replica" >&2; return 1; }
    echo "$leader"
}

# A standby region: region_leader on /standby-leader, every node in recovery, the standby
# leader's WAL receiver streaming (from the other region) and every other node streaming from
# it. Prints the standby leader.
standby_region() { # container, nodes...
    local from=$1 leader n
    shift
    leader=$(region_leader "$from" /standby-leader "$@") || return 1
    for n in "$@"; do
        [[ $(sql_node "$n" "SELECT pg_is_in_recovery()") == t ]] ||
            { echo "$n is not in recovery" >&2; return 1; }
    done
    [[ $(sql_node "$leader" "SELECT status FROM pg_stat_wal_receiver") == streaming ]] ||
        { echo "the standby leader $leader does not stream from the other region" >&2; return 1; }
    local streaming
    streaming=$(sql_node "$leader" "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
    [[ $streaming == $(($# - 1)) ]] ||
        { echo "$streaming of $(($# - 1)) replicas stream from $leader" >&2; return 1; }
    echo "$leader"
}

# "a" or "b": the region whose agents have a primary now.
primary_region() {
    if region_leader "$(cid haproxy)" /primary "${NODES_A[@]}" >/dev/null 2>&1; then
        echo a
    elif region_leader "$(cid haproxy-b)" /primary "${NODES_B[@]}" >/dev/null 2>&1; then
        echo b
    else
        echo "neither region has a primary and healthy replicas" >&2
        return 1
    fi
}

# `pgbaton region-switchover` from region $1 (the primary one) to the other, run on a node of
# region $1 (the network `wan` reaches both regions' etcd and agents). Its output on stdout.
region_switchover() { # a|b
    local from config standby
    if [[ $1 == a ]]; then
        from=${NODES_A[0]} config=$CONFIG_A standby=$CONFIG_B
    else
        from=${NODES_B[0]} config=$CONFIG_B standby=$CONFIG_A
    fi
    docker exec "$(cid "$from")" pgbaton -c "$config" region-switchover \
        --standby-config "$standby" --force
}

rwait() { # timeout, description, command...
    local timeout=$1 what=$2 deadline out
    shift 2
    deadline=$((SECONDS + timeout))
    until out=$("$@" 2>"$STAGE/.why"); do
        if ((SECONDS >= deadline)); then
            show_logs
            rdie "$what: not within $timeout s ($(cat "$STAGE/.why")); left running, 'make docker-region-down' removes it"
        fi
        sleep 1
    done
    echo "$out"
}

rup() {
    if [[ -n $(docker ps -a -q --filter "label=com.docker.compose.project=$PROJECT") ]]; then
        rsay "project $PROJECT already exists; showing status. 'make docker-region-down' removes it."
        rstatus
        return 0
    fi
    build
    rsay "starting project $PROJECT (profile region)"
    compose up -d >&2
    local a b
    a=$(rwait "$HEALTHY_TIMEOUT" "region A: a primary and two replicas" \
        region_leader "$(cid haproxy)" /primary "${NODES_A[@]}")
    rsay "region A healthy: primary $a"
    b=$(rwait "$HEALTHY_TIMEOUT" "region B: a standby leader streaming from region A, two replicas" \
        standby_region "$(cid haproxy-b)" "${NODES_B[@]}")
    rsay "region B healthy: standby leader $b"
    rstatus
    cat <<EOF

Region A (primary):  psql -h 127.0.0.1 -p $(published_port_of haproxy 5000) -U postgres   (password $SUPERUSER_PASSWORD)
Region B (standby):  psql -h 127.0.0.1 -p $(published_port_of haproxy-b 5001) -U postgres   (read-only; its :$(published_port_of haproxy-b 5000) takes writes once it is the primary region)
Switch regions:      scripts/docker-region.sh switchover   (again to switch back)
Stop and remove:     make docker-region-down
EOF
}

rstatus() {
    compose ps
    local n
    for n in "${NODES_A[0]}" "${NODES_B[0]}"; do
        local c config=$CONFIG_A
        [[ $n == "${NODES_B[0]}" ]] && config=$CONFIG_B
        c=$(cid "$n")
        if [[ -n $c ]] && running "$c"; then
            echo
            docker exec "$c" pgbaton -c "$config" list || true
        fi
    done
}

rswitchover() {
    local from
    from=$(primary_region) || rdie "no region has a healthy primary"
    local to=b
    [[ $from == a ]] || to=a
    rsay "pgbaton region-switchover: region ${from^^} -> region ${to^^}"
    region_switchover "$from"
}

# scripts/docker-region-test.sh sources this file for its functions.
[[ ${BASH_SOURCE[0]} == "$0" ]] || return 0

case "${1:-}" in
    up) rup ;;
    down) down ;;
    status) rstatus ;;
    switchover) rswitchover ;;
    *)
        echo "usage: $0 up|switchover|status|down" >&2
        exit 2
        ;;
esac
