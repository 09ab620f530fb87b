#!/usr/bin/env bash
# The docker-compose demo: three etcd members, three PostgreSQL 15 + pgbaton nodes, HAProxy.
#
#   scripts/docker-demo.sh build   base image (docker/build-base.sh), stage the pgbaton binary,
#                                  build the images (Docker's cache: only what changed)
#   scripts/docker-demo.sh up      build, start the compose project, wait until healthy
#   scripts/docker-demo.sh down    stop and remove the project's containers, network, volumes
#   scripts/docker-demo.sh status  containers, the cluster table, each agent's /primary answer
#
# Environment:
#   PGBATON_DOCKER_PROJECT   compose project name (default pgbaton-demo)
#   PGBATON_DOCKER_BIND      host address to publish on (default 127.0.0.1)
#   PGBATON_DOCKER_PRIMARY_PORT / _REPLICA_PORT / _STATS_PORT   host ports (5000 / 5001 / 7000;
#                            0 lets Docker choose)
#   PGBATON_BIN              use this pgbaton binary instead of building one with cargo
#   PGBATON_BASE_IMAGE       base image to build FROM (default: what docker/build-base.sh picks)
#   PGBATON_DOCKER_TIMEOUT   seconds `up` waits for a healthy cluster (default 240)
#   PGBATON_DOCKER_PROFILES  compose profiles to enable, space-separated (scripts/docker-region.sh
#                            sets `region`; default none)
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
DOCKER_DIR=$REPO/docker
STAGE=$DOCKER_DIR/.build
COMPOSE_FILE=$DOCKER_DIR/docker-compose.yml
PROJECT=${PGBATON_DOCKER_PROJECT:-pgbaton-demo}
NODES=(node1 node2 node3)
IMAGES=(etcd haproxy node)
CONFIG=/etc/pgbaton/pgbaton.yml
SUPERUSER_PASSWORD=pgbaton-docker # docker/node/pgbaton.yml
HEALTHY_TIMEOUT=${PGBATON_DOCKER_TIMEOUT:-240}
IMAGE_LABEL=io.pgbaton.docker-demo

say() { printf 'docker-demo: %s\n' "$*" >&2; }
die() { printf 'docker-demo: error: %s\n' "$*" >&2; exit 1; }

# `docker compose` (v2 plugin) or `docker-compose` (v1), whichever exists.
COMPOSE=()
compose() {
    if ((${#COMPOSE[@]} == 0)); then
        if docker compose version >/dev/null 2>&1; then
            COMPOSE=(docker compose)
        elif command -v docker-compose >/dev/null; then
            COMPOSE=(docker-compose)
        else
            die "neither 'docker compose' nor 'docker-compose' is installed (Debian: apt-get install docker-compose)"
        fi
    fi
    local profiles=() p
    for p in ${PGBATON_DOCKER_PROFILES:-}; do
        profiles+=(--profile "$p")
    done
    "${COMPOSE[@]}" -f "$COMPOSE_FILE" -p "$PROJECT" "${profiles[@]}" "$@"
}

# Container id of a service of the project (empty when it has none), found by the labels
# both docker-compose v1 and `docker compose` set (faster than `compose ps`); cached in CIDS
# by load_cids.
declare -A CIDS=()
cid() {
    if [[ -n ${CIDS[$1]:-} ]]; then
        echo "${CIDS[$1]}"
    else
        docker ps -a -q --no-trunc --filter "label=com.docker.compose.project=$PROJECT" \
            --filter "label=com.docker.compose.service=$1" | head -n 1
    fi
}
load_cids() {
    local s
    for s in etcd1 etcd2 etcd3 "${NODES[@]}" haproxy; do
        CIDS[$s]=$(cid "$s")
    done
}

running() { [[ $(docker inspect -f '{{.State.Running}}' "$1" 2>/dev/null) == true ]]; }

# The pgbaton binary to put into the node image.
find_pgbaton() {
    if [[ -n ${PGBATON_BIN:-} ]]; then
        echo "$PGBATON_BIN"
        return
    fi
    command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs) or set PGBATON_BIN"
    say "building pgbaton and pgbaton-fence-guard (dev profile)"
    (cd "$REPO" && cargo build -q -p baton-cli --bin pgbaton --bin pgbaton-fence-guard) >&2
    local target=${CARGO_TARGET_DIR:-}
    if [[ -z $target ]]; then
        target=$(cd "$REPO" && cargo metadata --no-deps --format-version 1 |
            sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    fi
    echo "$target/debug/pgbaton"
}

# Copy the binaries, stripped, to docker/.build/bin/: pgbaton, and the fence guard binary
# beside it (pgbaton-fence-guard: without it the agent runs its built-in guard, with a warning),
# unless those copies are already of them.
stage_binary() {
    local src guard stamp
    src=$(find_pgbaton)
    [[ -x $src ]] || die "pgbaton binary not found at $src"
    guard=$(dirname "$src")/pgbaton-fence-guard
    stamp="$(readlink -f "$src") $(stat -c '%s %Y' "$src")"
    if [[ -x $guard ]]; then
        stamp+=" $(stat -c '%s %Y' "$guard")"
    fi
    mkdir -p "$STAGE/bin"
    if [[ -x $STAGE/bin/pgbaton && $(cat "$STAGE/pgbaton.source" 2>/dev/null) == "$stamp" ]]; then
        return
    fi
    rm -f "$STAGE/pgbaton" "$STAGE/bin/pgbaton-fence-guard"
    stage_one "$src" pgbaton
    if [[ -x $guard ]]; then
        stage_one "$guard" pgbaton-fence-guard
    else
        say "warning: no $guard: the image's agents run the built-in fence guard"
    fi
    echo "$stamp" >"$STAGE/pgbaton.source"
}

stage_one() { # source, name in $STAGE/bin
    say "staging $1 (stripped) in ${STAGE#"$REPO"/}/bin/$2"
    if command -v strip >/dev/null; then
        strip -o "$STAGE/bin/$2.tmp" "$1"
    else
        cp "$1" "$STAGE/bin/$2.tmp"
    fi
    chmod 755 "$STAGE/bin/$2.tmp"
    mv "$STAGE/bin/$2.tmp" "$STAGE/bin/$2"
}

build_image() { # name, base image
    local name=$1 base=$2 tag="pgbaton/$1:latest" context before after log
    case $name in
        node) context=$DOCKER_DIR ;; # needs .build/pgbaton (docker/.dockerignore keeps it small)
        *) context=$DOCKER_DIR/$name ;;
    esac
    before=$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)
    log=$STAGE/build-$name.log
    if ! docker build --build-arg "BASE_IMAGE=$base" --label "$IMAGE_LABEL=$name" \
        -t "$tag" -f "$DOCKER_DIR/$name/Dockerfile" "$context" >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        die "building $tag failed (whole log: $log)"
    fi
    after=$(docker image inspect -f '{{.Id}}' "$tag")
    if [[ $before == "$after" ]]; then
        say "image $tag: up to date"
    else
        say "image $tag: built ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))"
    fi
}

build() {
    docker info >/dev/null 2>&1 || die "no Docker engine answers (docker info failed)"
    local base
    mkdir -p "$STAGE"
    base=$("$DOCKER_DIR/build-base.sh")
    stage_binary
    local image
    for image in "${IMAGES[@]}"; do
        build_image "$image" "$base"
    done
    # Drop the untagged predecessors of our own images (never anything else).
    docker image prune -f --filter "label=$IMAGE_LABEL" >/dev/null 2>&1 || true
}

# The HTTP status each node's agent answers on GET $1, one "node code" line per node, asked
# from inside the HAProxy container (the agents' ports are not published). 000: no answer.
# shellcheck disable=SC2016 # expanded by the container's bash
PROBE='for n in node1 node2 node3; do
    code=$(timeout 2 bash -c "exec 3<>/dev/tcp/$n/8008 || exit 1
        printf \"GET %s HTTP/1.0\r\nHost: %s\r\n\r\n\" \"\$0\" \"\$1\" >&3
        read -r _ c _ <&3; echo \"\$c\"" "$1" "$n" 2>/dev/null) || code=000
    echo "$n ${code:-000}"
done'
probe() { # haproxy container, path
    docker exec "$1" bash -c "$PROBE" _ "$2" 2>/dev/null || true
}

# SQL through HAProxy's primary port, from the host's psql when there is one, else from a node
# container's psql over the compose network.
sql_primary() { # sql
    if command -v psql >/dev/null; then
        PGPASSWORD=$SUPERUSER_PASSWORD PGCONNECT_TIMEOUT=3 psql -X -q -At -h 127.0.0.1 \
            -p "$(published_port 5000)" -U postgres -d postgres -c "$1" 2>/dev/null
    else
        docker exec -e PGPASSWORD=$SUPERUSER_PASSWORD -e PGCONNECT_TIMEOUT=3 "$(cid node1)" \
            psql -X -q -At -h haproxy -p 5000 -U postgres -d postgres -c "$1" 2>/dev/null
    fi
}

# The host port HAProxy's container port $1 is published on.
published_port() {
    local hap
    hap=$(cid haproxy)
    docker port "$hap" "$1/tcp" 2>/dev/null | sed -n 's/.*:\([0-9]*\)$/\1/p' | head -n 1
}

# One check: prints the leader when one agent answers 200 on /primary, the other two 200 on
# /replica and HAProxy's primary port reaches a writable server; else a reason on stderr.
check_healthy() {
    local hap leader="" replicas=0 n code
    hap=$(cid haproxy)
    if [[ -z $hap ]] || ! running "$hap"; then
        echo "haproxy is not running" >&2
        return 2
    fi
    for n in "${NODES[@]}"; do
        local c
        c=$(cid "$n")
        if [[ -z $c ]] || ! running "$c"; then
            echo "$n is not running" >&2
            return 2
        fi
    done
    while read -r n code; do
        if [[ $code == 200 ]]; then
            [[ -z $leader ]] || { echo "two agents answer 200 on /primary" >&2; return 1; }
            leader=$n
        fi
    done < <(probe "$hap" /primary)
    [[ -n $leader ]] || { echo "no agent answers 200 on /primary yet" >&2; return 1; }
    while read -r n code; do
        [[ $n != "$leader" && $code == 200 ]] && replicas=$((replicas + 1))
    done < <(probe "$hap" /replica)
    ((replicas == 2)) || { echo "$replicas of 2 replicas answer 200 on /replica" >&2; return 1; }
    [[ $(sql_primary "SELECT pg_is_in_recovery()") == f ]] ||
        { echo "HAProxy's primary port does not reach a writable server yet" >&2; return 1; }
    echo "$leader"
}

show_logs() {
    compose logs --no-color --tail=60 >&2 || true
}

up() {
    local existing
    existing=$(docker ps -a -q --filter "label=com.docker.compose.project=$PROJECT")
    if [[ -n $existing ]]; then
        say "project $PROJECT already exists; showing status. 'make docker-demo-down' removes it."
        status
        return 0
    fi
    build
    local bind=${PGBATON_DOCKER_BIND:-127.0.0.1} p
    for p in "${PGBATON_DOCKER_PRIMARY_PORT:-5000}" "${PGBATON_DOCKER_REPLICA_PORT:-5001}" \
        "${PGBATON_DOCKER_STATS_PORT:-7000}"; do
        [[ $p == 0 ]] && continue
        # shellcheck disable=SC2016 # arguments of the inner bash
        if timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "${bind/0.0.0.0/127.0.0.1}" "$p" 2>/dev/null; then
            die "port $p is in use (is 'make demo' running?); stop it or set PGBATON_DOCKER_*_PORT"
        fi
    done
    say "starting project $PROJECT"
    compose up -d >&2
    load_cids
    say "waiting (up to ${HEALTHY_TIMEOUT} s) for a leader, two replicas and HAProxy"
    local deadline=$((SECONDS + HEALTHY_TIMEOUT)) leader rc why=""
    while true; do
        rc=0
        leader=$(check_healthy 2>"$STAGE/.why") || rc=$?
        why=$(cat "$STAGE/.why")
        ((rc == 0)) && break
        if ((rc == 2)) || ((SECONDS >= deadline)); then
            show_logs
            die "cluster not healthy: $why (left running for inspection; 'make docker-demo-down' removes it)"
        fi
        sleep 1
    done
    rm -f "$STAGE/.why"
    say "healthy: leader $leader"
    echo
    docker exec "$(cid node1)" pgbaton -c "$CONFIG" list || true
    local bind_shown=${bind/0.0.0.0/127.0.0.1}
    cat <<EOF

Connect (password: $SUPERUSER_PASSWORD):
  primary (read-write):  psql -h $bind_shown -p $(published_port 5000) -U postgres
  replicas (read-only):  psql -h $bind_shown -p $(published_port 5001) -U postgres
  HAProxy stats:         http://$bind_shown:$(published_port 7000)/
  cluster state:         scripts/docker-demo.sh status
  a node's shell:        ${COMPOSE[*]} -f docker/docker-compose.yml -p $PROJECT exec node1 bash
Try a failover: docker kill \$(${COMPOSE[*]} -f docker/docker-compose.yml -p $PROJECT ps -q $leader)
  (bring it back with '... start $leader': it rejoins as a replica)
Stop and remove everything: make docker-demo-down
EOF
}

down() {
    if [[ -z $(docker ps -a -q --filter "label=com.docker.compose.project=$PROJECT") ]] &&
        [[ -z $(docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT") ]] &&
        [[ -z $(docker network ls -q --filter "label=com.docker.compose.project=$PROJECT") ]]; then
        say "project $PROJECT: nothing to remove"
        return 0
    fi
    compose down --volumes --remove-orphans --timeout 30 >&2
    say "project $PROJECT removed (containers, network, volumes)"
}

status() {
    compose ps
    local n c hap
    for n in "${NODES[@]}"; do
        c=$(cid "$n")
        if [[ -n $c ]] && running "$c"; then
            echo
            docker exec "$c" pgbaton -c "$CONFIG" list || true
            break
        fi
    done
    hap=$(cid haproxy)
    if [[ -n $hap ]] && running "$hap"; then
        echo
        echo "GET /primary:"
        probe "$hap" /primary | sed 's/^/  /'
    fi
}

# scripts/docker-test.sh sources this file for its functions.
[[ ${BASH_SOURCE[0]} == "$0" ]] || return 0

case "${1:-}" in
    build) build ;;
    up) up ;;
    down) down ;;
    status) load_cids && status ;;
    *)
        echo "usage: $0 build|up|down|status" >&2
        exit 2
        ;;
esac
