# pgbaton: O(1) entry points; everything else is cargo.
#
#   make build       build every crate, test and binary (dev profile)
#   make test        install missing system packages (as root), build once, run every test
#                    with real etcd/PostgreSQL/HAProxy required, then fmt check and clippy
#   make lint        cargo fmt --check + clippy -D warnings
#   make fmt         cargo fmt
#   make demo        start a local 3-node cluster (etcd + 3 agents + HAProxy) in .demo/
#   make demo-down   stop it and remove .demo/
#   make docker-demo       the same cluster in docker-compose (3 etcd, 3 nodes, HAProxy); see docker/
#   make docker-demo-down  stop it and remove its containers, network and volumes
#   make docker-test       failover test on the docker-compose cluster (skipped without Docker)
#   make docker-region     the compose `region` profile: that cluster plus a standby cluster of
#                          it on another network (etcd, 3 nodes, HAProxy); see docker/README.md
#   make docker-region-down  stop it and remove its containers, networks and volumes
#   make docker-region-test  region-switchover under a writer on it (skipped without Docker;
#                          not part of `make test`: 1.5-3 minutes on a 2-core VM)
#   make test-clean  kill processes left behind by interrupted test runs
#   make chaos       the long fault suite (real processes in network namespaces, as root):
#                    report in target/chaos/ (PGBATON_CHAOS_ITERATIONS=N, PGBATON_CHAOS_SEED=S)
#   make bench       benchmark figures (3-node loopback cluster) -> target/bench/ (BENCH_ARGS=...)
#   make bench-patroni  the same, also with Patroni (venv in PATRONI_VENV) and ratios
#   make fuzz        every cargo-fuzz target in fuzz/ for FUZZ_SECONDS (default 30) each (nightly
#                    and cargo-fuzz; FUZZ_TARGETS=..., FUZZ_SANITIZER=address); see docs/testing.md
#   make bench-scale    many simulated members on one 3-member etcd -> target/bench/scale.* (SCALE_ARGS=...)
#
# An externally set CARGO_TARGET_DIR is respected (cargo reads it from the environment).

CARGO ?= cargo
SHELL := /bin/bash

ifdef CARGO_TARGET_DIR
export CARGO_TARGET_DIR
endif

.PHONY: build test deps lint fmt fmt-check clippy demo demo-down test-clean bench bench-patroni bench-release bench-scale sim \
	docker-demo docker-demo-down docker-test docker-region docker-region-down docker-region-test \
	chaos fuzz

build:
	$(CARGO) build --workspace --all-targets

# Installs missing Debian packages only when something is missing (needs root then).
deps:
	@scripts/install-deps.sh --check >/dev/null 2>&1 || scripts/install-deps.sh

test: deps build
	PGBATON_REQUIRE_ETCD=1 PGBATON_REQUIRE_PG=1 PGBATON_REQUIRE_INTEGRATION=1 \
		$(CARGO) test --workspace
	scripts/docker-test.sh
	$(MAKE) --no-print-directory lint

lint: fmt-check clippy

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

demo:
	scripts/demo.sh up

demo-down:
	scripts/demo.sh down

# Images build FROM a local base image (docker/build-base.sh: debootstrap when nothing can be
# pulled); Docker's cache rebuilds only what changed. See docker/README.md.
docker-demo:
	scripts/docker-demo.sh up

docker-demo-down:
	scripts/docker-demo.sh down

# Skipped (exit 0) when no Docker engine answers, unless PGBATON_REQUIRE_DOCKER=1.
docker-test: build
	scripts/docker-test.sh

docker-region:
	scripts/docker-region.sh up

docker-region-down:
	scripts/docker-region.sh down

# Skipped (exit 0) when no Docker engine answers, unless PGBATON_REQUIRE_DOCKER=1.
docker-region-test: build
	scripts/docker-region-test.sh

test-clean:
	scripts/kill-test-leftovers.sh

# The fault suite's long profile: 30 iterations of every fault (`make test` runs the short
# one, one iteration per fault on one cluster, with the other tests). PGBATON_CHAOS_PARALLEL=N
# clusters run at once (default: two per core, at most 4), the iterations dealt over them;
# PGBATON_CHAOS_ITERATIONS=N overrides the 30. Report (merged over the clusters):
# target/chaos/report-<unix>.{md,json}. The agents and fence guards are the release binary (what
# ships is what the long suite tests, as `make bench` measures it); the harness is the dev build.
# See docs/testing.md, "Fault suite".
chaos: deps build bench-release
	PGBATON_REQUIRE_INTEGRATION=1 PGBATON_CHAOS=long PGBATON_BIN=$(BENCH_BIN) \
		$(CARGO) test -p baton-integration-tests --test chaos -- --nocapture

# Figures are reported (table on stdout, target/bench/bench.{json,md}), never asserted.
# The agents measured are the release binary ([profile.release] in Cargo.toml; only these
# targets build it, `make test` never does); the harness itself is a dev build.
# See README.md, "Benchmarks".
BENCH_ARGS ?=
PATRONI_VENV ?= /tmp/patroni-venv
BENCH_TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
BENCH_BIN := $(abspath $(BENCH_TARGET_DIR))/release/pgbaton

bench-release:
	$(CARGO) build --release -p baton-cli

bench: deps bench-release
	PGBATON_BIN=$(BENCH_BIN) $(CARGO) run -p baton-integration-tests --bin bench -- $(BENCH_ARGS)

# Patroni 4.1 from PyPI in a virtualenv the postgres user can run (system python3, so no
# interpreter under /root is needed).
PATRONI_VERSION ?= 4.1.*
$(PATRONI_VENV)/bin/patroni:
	/usr/bin/python3 -m venv $(PATRONI_VENV)
	$(PATRONI_VENV)/bin/pip install -q "patroni[etcd3,psycopg2]==$(PATRONI_VERSION)" psycopg2-binary
	chmod -R a+rX $(PATRONI_VENV)

bench-patroni: deps bench-release $(PATRONI_VENV)/bin/patroni
	PGBATON_BIN=$(BENCH_BIN) BATON_REFERENCE_BIN_DIR=$(PATRONI_VENV)/bin \
		$(CARGO) run -p baton-integration-tests --bin bench -- --peer patroni $(BENCH_ARGS)

# 3, 100, 300 and 1,000 members (3-member clusters) and one cluster of 50, each member a release
# `pgbaton agent --simulated-postgres`, on one real 3-member etcd: etcd load, watch fan-out and a
# killed leader's failover. SCALE_ARGS="--fleets 3,100 --idle-secs 30". See README.md.
SCALE_ARGS ?=
bench-scale: deps bench-release
	PGBATON_BIN=$(BENCH_BIN) $(CARGO) run -p baton-integration-tests --bin bench-scale -- $(SCALE_ARGS)

# Random seeds of the deterministic cluster simulator; prints and replays any failing seed.
# SIM_ARGS=--allow-known fails only on problems not yet listed as open findings.
SEEDS ?= 200
sim:
	$(CARGO) run -q -p baton-sim --release -- --seeds $(SEEDS) $(SIM_ARGS)

# The cargo-fuzz targets over every parser of outside input (fuzz/, a workspace of its own:
# needs nightly and `cargo install cargo-fuzz`; `make test` never builds it and runs the same
# properties as proptest smoke tests on stable). Each target runs FUZZ_SECONDS; a crash stops
# with its input in fuzz/artifacts/<target>/ (replay: cargo +nightly fuzz run <target> <file>).
# fuzz/seeds/<target>/ (committed: real configuration files, /config values) seed the corpus.
# Safe Rust: panics are what is looked for, so no sanitizer by default (several times the
# executions per second); FUZZ_SANITIZER=address for the unsafe code of dependencies.
# See docs/testing.md, "Fuzzing".
FUZZ_SECONDS ?= 30
FUZZ_SANITIZER ?= none
FUZZ_TARGETS ?= config_yaml dynamic_config dcs_records dcs_roundtrip rest_request merge_patch sync_names pg_output
# Its own build (nightly, instrumented) beside the workspace's, never mixed with it.
FUZZ_TARGET_DIR := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)/fuzz
fuzz:
	@for t in $(FUZZ_TARGETS); do \
		echo "== fuzz $$t ($(FUZZ_SECONDS) s)"; \
		mkdir -p fuzz/corpus/$$t; \
		seeds=$$(test -d fuzz/seeds/$$t && echo seeds/$$t); \
		(cd fuzz && CARGO_TARGET_DIR=$(FUZZ_TARGET_DIR) $(CARGO) +nightly fuzz run -s $(FUZZ_SANITIZER) $$t corpus/$$t $$seeds -- \
			-max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -print_final_stats=1) || exit 1; \
	done
