//! The cluster files the project ships, rendered by the harness's own renderers
//! ([`HaproxyConfig::render`], [`NodeConfig::to_yaml`]), so the test harness, `make demo`,
//! `docker/` and `deploy/` cannot drift apart: the copies under `deploy/` and `docker/` are
//! the output of [`checked_in`], and a test fails when one differs from it.
//!
//! `pgbaton-dev render checked-in --write` rewrites them; `pgbaton-dev render haproxy|node`
//! prints one profile, with the nodes (or the node) given on the command line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde_json::json;

use crate::cluster::Timing;
use crate::demo::Layout;
use crate::haproxy::{Backend, HaproxyConfig, HaproxyPorts, HaproxyTiming};
use crate::node::{NodeConfig, PgAuth};

/// Which HAProxy configuration to render.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum HaproxyProfile {
    /// `make demo`'s: loopback, the demo's nodes, 1 s checks (the harness's configuration).
    Demo,
    /// `docker/haproxy/haproxy.cfg`: all addresses, node names resolved by Docker's DNS.
    Docker,
    /// `docker/haproxy/haproxy-region-b.cfg`: the same in front of the `region` profile's
    /// standby cluster (`node-b1`..`node-b3`).
    DockerRegionB,
    /// `deploy/haproxy.cfg`: a system service in front of three hosts, 3 s checks.
    Deploy,
}

/// Which node configuration to render.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum NodeProfile {
    /// One node of `make demo` (see [`Layout`]).
    Demo,
    /// `docker/node/pgbaton.yml`: shared by the compose nodes, which set their name and
    /// addresses in the environment.
    Docker,
    /// `docker/node/pgbaton-region-b.yml`: the `region` profile's standby cluster
    /// (`node-b1`..`node-b3`, its own etcd, replicating from the demo cluster).
    DockerRegionB,
}

/// `NAME=HOST:PG_PORT:REST_PORT`, one HAProxy server.
pub fn parse_backend(spec: &str) -> anyhow::Result<Backend> {
    let parsed = spec.split_once('=').and_then(|(name, rest)| {
        let mut parts = rest.rsplitn(3, ':');
        let rest_port = parts.next()?.parse().ok()?;
        let pg_port = parts.next()?.parse().ok()?;
        let host = parts.next()?;
        (!name.is_empty() && !host.is_empty()).then(|| Backend {
            name: name.to_owned(),
            host: host.to_owned(),
            pg_port,
            rest_port,
        })
    });
    parsed.with_context(|| format!("node {spec:?}: expected NAME=HOST:PG_PORT:REST_PORT"))
}

/// The HAProxy configuration of `profile` (`demo`: of the demo in `demo`).
pub fn haproxy_config(profile: HaproxyProfile, demo: &Layout) -> HaproxyConfig {
    match profile {
        HaproxyProfile::Demo => demo.haproxy_config(),
        HaproxyProfile::Docker => docker_haproxy(),
        HaproxyProfile::DockerRegionB => docker_haproxy_region_b(),
        HaproxyProfile::Deploy => deploy_haproxy(),
    }
}

fn deploy_haproxy() -> HaproxyConfig {
    let backends: Vec<Backend> = (1..=3)
        .map(|i| Backend {
            name: format!("pg{i}"),
            host: format!("10.0.0.{}", 10 + i),
            pg_port: 5432,
            rest_port: 8008,
        })
        .collect();
    HaproxyConfig {
        comment: "\
HAProxy in front of a 3-node pgbaton cluster (works unchanged with Patroni).
Rendered by `pgbaton-dev render haproxy --profile deploy` (integration-tests/src/render.rs);
`--node NAME=HOST:PG_PORT:REST_PORT` (once per node) renders it for your hosts.

Clients connect to this host:
  :5000  read-write, routed to the one node whose agent answers 200 on /primary
  :5001  read-only, balanced over the nodes whose agents answer 200 on /replica
  :7000  HAProxy's statistics page
Each server line points at the node's PostgreSQL port and health-checks its agent's REST API
(restapi.listen, 8008 by default). Replace pg1/pg2/pg3 and the addresses with your hosts.

Timing: a node is marked down after `fall` failed checks `inter` apart (here within ~9 s,
plus the check timeout), and up after `rise` good ones. `on-marked-down shutdown-sessions`
closes the client connections of a node that stops being the primary, so no client keeps
writing to a demoted server. The agent's /primary answers from its published state, so
checks are cheap; lower `inter` (e.g. 1s) for faster switchovers.

To let clients on :5001 skip lagging replicas, check `/replica?lag=16MB` instead; to keep a
node out of the read pool, set its `noloadbalance` tag."
            .to_owned(),
        maxconn: 1000,
        system_service: true,
        docker_dns: false,
        bind: "*".to_owned(),
        ports: HaproxyPorts::standard(),
        timeout_connect: Duration::from_secs(4),
        timeout_check: Duration::from_secs(5),
        stats_refresh: Some(Duration::from_secs(5)),
        timing: HaproxyTiming {
            inter: Duration::from_secs(3),
            fall: 3,
            rise: 2,
        },
        server_maxconn: 300,
        backends,
    }
}

/// The compose services `node1`..`node3`, as HAProxy and the nodes name them.
fn docker_nodes() -> Vec<String> {
    (1..=3).map(|i| format!("node{i}")).collect()
}

fn docker_haproxy() -> HaproxyConfig {
    docker_haproxy_for(docker_nodes())
}

/// The `region` profile's standby cluster: `node-b1`..`node-b3` (docker/docker-compose.yml).
fn region_b_nodes() -> Vec<String> {
    (1..=3).map(|i| format!("node-b{i}")).collect()
}

/// `docker/haproxy/haproxy-region-b.cfg`: the demo's HAProxy, in front of region B's nodes.
/// While region B is a standby cluster no agent answers 200 on `/primary`, so :5000 refuses
/// connections until a region switchover promotes it.
fn docker_haproxy_region_b() -> HaproxyConfig {
    let mut config = docker_haproxy_for(region_b_nodes());
    config.comment = format!(
        "\
HAProxy of region B of the docker-compose `region` profile (docker/README.md): the demo's
configuration (docker/haproxy/haproxy.cfg) with region B's nodes node-b1..node-b3.
Rendered by `pgbaton-dev render haproxy --profile docker-region-b`.
While region B is a standby cluster its standby leader answers 503 on /primary: :5000 has
no server until `pgbaton region-switchover` promotes region B.

{}",
        config
            .comment
            .split_once("\n\n")
            .map_or("", |(_, rest)| rest)
    );
    config
}

fn docker_haproxy_for(nodes: Vec<String>) -> HaproxyConfig {
    let backends: Vec<Backend> = nodes
        .into_iter()
        .map(|name| Backend {
            host: name.clone(),
            name,
            pg_port: 5432,
            rest_port: 8008,
        })
        .collect();
    HaproxyConfig {
        comment: "\
HAProxy for the docker-compose demo (deploy/haproxy.cfg is the production example).
Rendered by `pgbaton-dev render haproxy --profile docker` (integration-tests/src/render.rs).
  :5000  read-write: the one node whose agent answers 200 on /primary
  :5001  read-only: the nodes whose agents answer 200 on /replica
  :7000  statistics page
Node addresses come from Docker's DNS (resolvers below), so HAProxy starts before the nodes
and follows a node that is recreated with a new address; a stopped node's name stops
resolving and its server goes into maintenance until it is back.

No `log` line: HAProxy runs in the foreground (-db) and reports server state changes
(\"Server primary/node2 is UP ...\") on stderr, which `docker logs` shows."
            .to_owned(),
        maxconn: 300,
        system_service: false,
        docker_dns: true,
        bind: "*".to_owned(),
        ports: HaproxyPorts::standard(),
        timeout_connect: Duration::from_secs(2),
        timeout_check: Duration::from_secs(2),
        stats_refresh: Some(Duration::from_secs(5)),
        timing: HaproxyTiming::fast(),
        server_maxconn: 100,
        backends,
    }
}

/// The configuration of node `name` of `profile` (`demo`: of the demo in `demo`, with
/// PostgreSQL in `pg_bin_dir`), with the comment that heads its file.
pub fn node_config(
    profile: NodeProfile,
    name: &str,
    demo: &Layout,
    pg_bin_dir: &Path,
) -> anyhow::Result<(String, NodeConfig)> {
    match profile {
        NodeProfile::Demo => {
            let i = demo.node_index(name)?;
            Ok((
                format!(
                    "Patroni-format configuration of {name} of `make demo`. Rendered by\n\
                     `pgbaton-dev render node --profile demo --name {name}`."
                ),
                demo.node_config(i, pg_bin_dir),
            ))
        }
        NodeProfile::Docker => Ok((DOCKER_NODE_COMMENT.to_owned(), docker_node())),
        NodeProfile::DockerRegionB => {
            Ok((REGION_B_NODE_COMMENT.to_owned(), docker_node_region_b()))
        }
    }
}

const DOCKER_NODE_COMMENT: &str = "\
Patroni-format configuration shared by node1..node3 of the docker-compose demo.
Rendered by `pgbaton-dev render node --profile docker` (integration-tests/src/render.rs).
The per-node values come from the environment (see docker-compose.yml):
  PATRONI_NAME, PATRONI_RESTAPI_CONNECT_ADDRESS, PATRONI_POSTGRESQL_CONNECT_ADDRESS
Keys: docs/configuration.md. Check: pgbaton validate-config (the image build does).
The agent connects over the Unix socket as `postgres` (peer); everything else comes over
the compose network (HAProxy, the other nodes): `samenet` is whatever subnet Docker chose.
PostgreSQL logs to stderr (no logging_collector), which `docker logs` shows.";

/// The harness's node configuration, with what the containers differ in.
fn docker_node() -> NodeConfig {
    let dir = PathBuf::from("/var/lib/pgbaton");
    let repl = "replicator";
    NodeConfig {
        scope: "docker-demo".to_owned(),
        namespace: "/service/".to_owned(),
        name: String::new(),
        rest_port: 8008,
        pg_port: 5432,
        etcd_hosts: (1..=3).map(|i| format!("etcd{i}:2379")).collect(),
        data_dir: dir.join("data"),
        dir,
        bin_dir: PathBuf::from(crate::demo::DEFAULT_PG_BIN_DIR),
        timing: Timing {
            ttl: 10,
            loop_wait: 2,
            retry_timeout: 4,
        },
        auth: PgAuth {
            superuser: ("postgres".to_owned(), "pgbaton-docker".to_owned()),
            replication: (repl.to_owned(), "pgbaton-docker-repl".to_owned()),
            rewind: ("rewind_user".to_owned(), "pgbaton-docker-rewind".to_owned()),
        },
        // `null` deletes: the name and the addresses others use come from the environment.
        extra: json!({
            "name": null,
            "restapi": {
                "listen": "0.0.0.0:8008",
                "connect_address": null,
                "authentication": { "username": "admin", "password": "pgbaton-docker-admin" },
            },
            "postgresql": {
                "listen": "0.0.0.0:5432",
                "connect_address": null,
                "parameters": {
                    "unix_socket_directories": "/var/run/postgresql",
                    "logging_collector": null,
                    "log_directory": null,
                    "log_filename": null,
                },
                "pg_hba": [
                    "local all all peer",
                    "host all all 127.0.0.1/32 scram-sha-256",
                    format!("host replication {repl} samenet scram-sha-256"),
                    "host all all samenet scram-sha-256",
                ],
            },
        }),
    }
}

const REGION_B_NODE_COMMENT: &str = "\
Patroni-format configuration shared by node-b1..node-b3, region B of the docker-compose
`region` profile (docker/README.md): the demo's node configuration (docker/node/pgbaton.yml)
with its own scope and etcd, bootstrapped as a standby cluster of region A (the demo cluster)
through region A's HAProxy read-write port, which region B reaches over the network `wan`
(docker-compose.yml). Rendered by `pgbaton-dev render node --profile docker-region-b`.
The per-node values come from the environment (see docker-compose.yml):
  PATRONI_NAME, PATRONI_RESTAPI_CONNECT_ADDRESS, PATRONI_POSTGRESQL_CONNECT_ADDRESS
`samenet` admits the other region's nodes too: both regions' nodes share the network `wan`.";

/// Region B: the demo's node configuration as a standby cluster of region A.
fn docker_node_region_b() -> NodeConfig {
    let mut config = docker_node();
    config.scope = "docker-region-b".to_owned();
    config.etcd_hosts = vec!["etcd-b:2379".to_owned()];
    crate::node::deep_merge(
        &mut config.extra,
        &json!({
            "bootstrap": { "dcs": { "standby_cluster": { "host": "haproxy", "port": 5000 } } }
        }),
    );
    config
}

/// `comment` as YAML/HAProxy comment lines: `# ` and the line, `#` for an empty line.
pub fn comment_lines(comment: &str) -> String {
    comment
        .lines()
        .map(|l| {
            if l.is_empty() {
                "#\n".to_owned()
            } else {
                format!("# {l}\n")
            }
        })
        .collect()
}

/// A node configuration file: its comment, then the YAML.
pub fn node_file(comment: &str, config: &NodeConfig) -> anyhow::Result<String> {
    Ok(format!("{}{}", comment_lines(comment), config.to_yaml()?))
}

/// One file in the repository that is the renderer's output.
#[derive(Clone, Copy, Debug)]
pub struct CheckedIn {
    /// Relative to the repository's root.
    pub path: &'static str,
    /// The `pgbaton-dev` command that prints it.
    pub command: &'static str,
    pub render: fn() -> anyhow::Result<String>,
}

/// Every checked-in copy of a rendered file.
pub fn checked_in() -> Vec<CheckedIn> {
    vec![
        CheckedIn {
            path: "deploy/haproxy.cfg",
            command: "pgbaton-dev render haproxy --profile deploy",
            render: || Ok(deploy_haproxy().render()),
        },
        CheckedIn {
            path: "docker/haproxy/haproxy.cfg",
            command: "pgbaton-dev render haproxy --profile docker",
            render: || Ok(docker_haproxy().render()),
        },
        CheckedIn {
            path: "docker/node/pgbaton.yml",
            command: "pgbaton-dev render node --profile docker",
            render: || node_file(DOCKER_NODE_COMMENT, &docker_node()),
        },
        CheckedIn {
            path: "docker/haproxy/haproxy-region-b.cfg",
            command: "pgbaton-dev render haproxy --profile docker-region-b",
            render: || Ok(docker_haproxy_region_b().render()),
        },
        CheckedIn {
            path: "docker/node/pgbaton-region-b.yml",
            command: "pgbaton-dev render node --profile docker-region-b",
            render: || node_file(REGION_B_NODE_COMMENT, &docker_node_region_b()),
        },
    ]
}

/// The repository's root (this crate's parent directory).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// How to rewrite every checked-in copy.
pub const REGENERATE: &str =
    "cargo run -p baton-integration-tests --bin pgbaton-dev -- render checked-in --write";

/// Each checked-in copy under `root` that differs from the renderer's output: its path and a
/// line diff (`-` the file, `+` the renderer). Empty when all match.
pub fn drift(root: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for file in checked_in() {
        let want = (file.render)().with_context(|| format!("render {}", file.path))?;
        let path = root.join(file.path);
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        if have != want {
            out.push((file.path.to_owned(), line_diff(&have, &want)));
        }
    }
    Ok(out)
}

/// Write every checked-in copy under `root`; returns the paths that changed.
pub fn write_checked_in(root: &Path) -> anyhow::Result<Vec<String>> {
    let mut changed = Vec::new();
    for file in checked_in() {
        let want = (file.render)().with_context(|| format!("render {}", file.path))?;
        let path = root.join(file.path);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(want.as_str()) {
            std::fs::write(&path, want).with_context(|| format!("write {}", path.display()))?;
            changed.push(file.path.to_owned());
        }
    }
    Ok(changed)
}

/// A line diff of `old` → `new` (longest common subsequence; the files are short): unchanged
/// lines start with two spaces, removed ones with `- `, added ones with `+ `.
pub fn line_diff(old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    // lcs[i][j]: the common subsequence length of a[i..] and b[j..].
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push_str(&format!("  {}\n", a[i]));
            (i, j) = (i + 1, j + 1);
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push_str(&format!("- {}\n", a[i]));
            i += 1;
        } else {
            out.push_str(&format!("+ {}\n", b[j]));
            j += 1;
        }
    }
    if old.ends_with('\n') != new.ends_with('\n') {
        out.push_str("(the two differ in the newline at the end)\n");
    }
    out
}

#[cfg(test)]
mod tests;
