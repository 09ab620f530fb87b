//! One PostgreSQL node: its Patroni-format configuration file and its `pgbaton agent` process.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};

use crate::cluster::Timing;
use crate::netns::NodeNet;
use crate::pg::PgTarget;
use crate::process::{Proc, kill_postmaster};
use crate::tools::Tools;

/// PostgreSQL users the agents create and use (Patroni's `postgresql.authentication`).
#[derive(Clone, Debug)]
pub struct PgAuth {
    pub superuser: (String, String),
    pub replication: (String, String),
    pub rewind: (String, String),
}

impl PgAuth {
    /// The fixed test credentials (loopback only).
    pub fn test_default() -> PgAuth {
        PgAuth {
            superuser: ("postgres".to_owned(), "baton-super".to_owned()),
            replication: ("replicator".to_owned(), "baton-repl".to_owned()),
            rewind: ("rewind_user".to_owned(), "baton-rewind".to_owned()),
        }
    }
}

/// Everything needed to render one node's configuration file.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub scope: String,
    pub namespace: String,
    pub name: String,
    pub rest_port: u16,
    pub pg_port: u16,
    /// `host:port` of each etcd member.
    pub etcd_hosts: Vec<String>,
    /// The node's own directory (owned by the agents' user); holds the data directory, the
    /// socket directory, `pgpass`, the PostgreSQL log directory.
    pub dir: PathBuf,
    pub data_dir: PathBuf,
    pub bin_dir: PathBuf,
    pub timing: Timing,
    pub auth: PgAuth,
    /// Deep-merged over the generated configuration (`null` deletes a key).
    pub extra: Value,
}

impl NodeConfig {
    /// The configuration as a JSON value, in Patroni's YAML schema.
    pub fn to_value(&self) -> Value {
        let rest = format!("127.0.0.1:{}", self.rest_port);
        let pg = format!("127.0.0.1:{}", self.pg_port);
        let user = |(u, p): &(String, String)| json!({ "username": u, "password": p });
        let mut v = json!({
            "scope": self.scope,
            "namespace": self.namespace,
            "name": self.name,
            "restapi": { "listen": rest, "connect_address": rest },
            "etcd3": { "hosts": self.etcd_hosts },
            "bootstrap": {
                "dcs": {
                    "ttl": self.timing.ttl,
                    "loop_wait": self.timing.loop_wait,
                    "retry_timeout": self.timing.retry_timeout,
                    "maximum_lag_on_failover": 1048576,
                    "postgresql": {
                        "use_pg_rewind": true,
                        "parameters": {
                            "wal_level": "replica",
                            "hot_standby": "on",
                            "wal_log_hints": "on",
                            "max_wal_senders": 10,
                            "max_replication_slots": 10,
                            "wal_keep_size": "128MB",
                        },
                    },
                },
                "initdb": [ { "encoding": "UTF8" }, "data-checksums" ],
            },
            "postgresql": {
                "listen": pg,
                "connect_address": pg,
                "data_dir": self.data_dir,
                "bin_dir": self.bin_dir,
                "pgpass": self.dir.join("pgpass"),
                "authentication": {
                    "superuser": user(&self.auth.superuser),
                    "replication": user(&self.auth.replication),
                    "rewind": user(&self.auth.rewind),
                },
                "parameters": {
                    "unix_socket_directories": self.dir,
                    "shared_buffers": "32MB",
                    "max_connections": 50,
                    "logging_collector": "on",
                    "log_directory": self.dir.join("pglog"),
                    "log_filename": "postgresql.log",
                    "log_line_prefix": "%m [%p] %q%u@%d ",
                },
                "pg_hba": [
                    "local all all trust",
                    format!("host replication {} 127.0.0.1/32 md5", self.auth.replication.0),
                    "host all all 127.0.0.1/32 md5",
                ],
            },
            "tags": {
                "nofailover": false,
                "noloadbalance": false,
                "clonefrom": false,
                "nosync": false,
            },
        });
        deep_merge(&mut v, &self.extra);
        v
    }

    /// The configuration file's text, keys in Patroni's documentation order (see
    /// [`value_to_yaml`]).
    pub fn to_yaml(&self) -> anyhow::Result<String> {
        value_to_yaml(&self.to_value())
    }
}

/// Render a JSON value as YAML, each mapping's keys in the order Patroni's documentation and
/// `examples/pgbaton.yml` write them (`scope`, `namespace`, `name`, `restapi`, ...), keys
/// without a place in that order after them, alphabetically. (JSON objects here are sorted
/// maps, so without this the file would start with `bootstrap` and bury `name`.)
pub(crate) fn value_to_yaml(v: &Value) -> anyhow::Result<String> {
    let mut yaml = serde_yaml::to_value(v).context("convert to YAML")?;
    order_keys(&mut yaml);
    serde_yaml::to_string(&yaml).context("render YAML")
}

/// Every key of every context in one sequence: the keys that share a mapping keep their
/// relative order here (`postgresql` follows `ttl` for `bootstrap.dcs` and `bootstrap` at
/// the top level).
const KEY_ORDER: &[&str] = &[
    "scope",
    "namespace",
    "name",
    "restapi",
    "etcd3",
    "hosts",
    "protocol",
    "bootstrap",
    "dcs",
    "ttl",
    "loop_wait",
    "retry_timeout",
    "maximum_lag_on_failover",
    "initdb",
    "postgresql",
    "listen",
    "connect_address",
    "data_dir",
    "bin_dir",
    "pgpass",
    "authentication",
    "superuser",
    "replication",
    "rewind",
    "username",
    "password",
    "use_pg_rewind",
    "use_slots",
    "parameters",
    "pg_hba",
    "tags",
    "nofailover",
    "noloadbalance",
    "clonefrom",
    "nosync",
    "vip",
];

fn order_keys(v: &mut serde_yaml::Value) {
    match v {
        serde_yaml::Value::Mapping(map) => {
            let mut entries: Vec<(serde_yaml::Value, serde_yaml::Value)> =
                std::mem::take(map).into_iter().collect();
            let rank = |k: &serde_yaml::Value| {
                let name = k.as_str().unwrap_or_default().to_owned();
                let place = KEY_ORDER.iter().position(|o| *o == name);
                (place.unwrap_or(KEY_ORDER.len()), name)
            };
            entries.sort_by_key(|(k, _)| rank(k));
            for (k, mut val) in entries {
                order_keys(&mut val);
                map.insert(k, val);
            }
        }
        serde_yaml::Value::Sequence(items) => items.iter_mut().for_each(order_keys),
        _ => {}
    }
}

/// Merge `overlay` into `base`: objects merge key by key, `null` deletes the key, anything
/// else replaces.
pub fn deep_merge(base: &mut Value, overlay: &Value) {
    match (base, overlay) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                if v.is_null() {
                    b.remove(k);
                } else if let Some(slot) = b.get_mut(k) {
                    deep_merge(slot, v);
                } else {
                    b.insert(k.clone(), v.clone());
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// Combine two overlays for [`deep_merge`]: like it, but `null`s are kept (so that they still
/// delete keys when the result is merged over a configuration).
pub(crate) fn compose_overlays(first: &mut Value, second: &Value) {
    match (first, second) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(k) {
                    Some(slot) if slot.is_object() && v.is_object() => compose_overlays(slot, v),
                    _ => {
                        a.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (a, b) => *a = b.clone(),
    }
}

/// A node: configuration, paths and the agent process (if started).
#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub config: NodeConfig,
    pub config_path: PathBuf,
    /// The agent's stdout and stderr (appended across restarts).
    pub log_path: PathBuf,
    agent: Option<Proc>,
    http: reqwest::Client,
    /// Set when the node is a host in a network namespace (see [`crate::Network`]).
    net: Option<NodeNet>,
}

impl Node {
    /// Create the node directory (owned by the agents' user) and write the configuration file.
    pub fn create(tools: &Tools, config: NodeConfig) -> anyhow::Result<Node> {
        Node::create_in(tools, config, None)
    }

    /// [`Node::create`] for a node that is a host in a network namespace (`net`), or on
    /// loopback (`None`). In a namespace, PostgreSQL and the REST API listen on every address
    /// of the namespace (so also on a floating IP) and advertise the host's address, `pg_hba`
    /// allows the subnet, and the agent runs inside the namespace with `CAP_NET_ADMIN` and
    /// `CAP_NET_RAW`. `config.extra` still wins over all of that.
    pub fn create_in(
        tools: &Tools,
        mut config: NodeConfig,
        net: Option<NodeNet>,
    ) -> anyhow::Result<Node> {
        if let Some(net) = &net {
            let mut extra = netns_overlay(&config, net);
            compose_overlays(&mut extra, &config.extra);
            config.extra = extra;
        }
        std::fs::create_dir_all(&config.dir)
            .with_context(|| format!("create {}", config.dir.display()))?;
        std::fs::set_permissions(&config.dir, std::fs::Permissions::from_mode(0o700))?;
        tools.chown_to_agent_user(&config.dir)?;
        let pglog = config.dir.join("pglog");
        std::fs::create_dir_all(&pglog)?;
        tools.chown_to_agent_user(&pglog)?;
        let node = Node {
            name: config.name.clone(),
            config_path: config.dir.join(format!("{}.yml", config.name)),
            log_path: config.dir.join("agent.log"),
            config,
            agent: None,
            http: http_client(),
            net,
        };
        node.write_config(tools)?;
        Ok(node)
    }

    /// (Re)write the configuration file from `self.config` (mode 600, owned by the agents' user).
    pub fn write_config(&self, tools: &Tools) -> anyhow::Result<()> {
        let yaml = self.config.to_yaml()?;
        std::fs::write(&self.config_path, yaml)
            .with_context(|| format!("write {}", self.config_path.display()))?;
        std::fs::set_permissions(&self.config_path, std::fs::Permissions::from_mode(0o600))?;
        tools.chown_to_agent_user(&self.config_path)
    }

    /// Start `pgbaton agent <config>` (as the agents' user), unless it is already running.
    /// `pgbaton` is the copy inside the test directory.
    pub fn start_agent(&mut self, tools: &Tools, pgbaton: &Path) -> anyhow::Result<()> {
        if self.agent.as_mut().is_some_and(Proc::is_running) {
            return Ok(());
        }
        let cmd = self.agent_command(tools, pgbaton)?;
        let banner = format!(
            "\n===== harness: starting agent {} at {:?} =====\n",
            self.name,
            std::time::SystemTime::now()
        );
        append(&self.log_path, &banner)?;
        self.agent = Some(Proc::spawn(
            &format!("agent {}", self.name),
            cmd,
            &self.log_path,
        )?);
        tools.chown_to_agent_user(&self.log_path).ok();
        Ok(())
    }

    /// `pgbaton agent <config>` as the agents' user (inside the node's namespace if it has
    /// one), run from the node's directory, without the environment variables that would
    /// change its configuration.
    pub fn agent_command(&self, tools: &Tools, pgbaton: &Path) -> anyhow::Result<Command> {
        let mut cmd = match &self.net {
            Some(net) => net.command_as_agent_user(tools, pgbaton)?,
            None => tools.command_as_agent_user(pgbaton),
        };
        cmd.arg("agent")
            .arg(&self.config_path)
            .current_dir(&self.config.dir);
        // Environment overrides would silently change the configuration under test, and libpq
        // variables would change where the agent connects.
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("PATRONI") || k.starts_with("PGBATON") || k.starts_with("PG") {
                cmd.env_remove(&key);
            }
        }
        Ok(cmd)
    }

    /// Whether the agent process is running.
    pub fn agent_running(&mut self) -> bool {
        self.agent.as_mut().is_some_and(Proc::is_running)
    }

    /// The agent's exit status, if it was started and has exited.
    pub fn agent_exit_status(&mut self) -> Option<ExitStatus> {
        self.agent.as_mut().and_then(Proc::exit_status)
    }

    /// The agent was started and has exited although the harness did not stop it.
    pub fn agent_exited_on_its_own(&self) -> bool {
        self.agent.as_ref().is_some_and(Proc::exited_on_its_own)
    }

    /// The agent's pid, if started.
    pub fn agent_pid(&self) -> Option<i32> {
        self.agent.as_ref().map(Proc::pid)
    }

    /// Stop the agent gracefully (SIGTERM, then SIGKILL after `timeout`). PostgreSQL is left
    /// to whatever the agent does on shutdown.
    pub async fn stop_agent(&mut self, timeout: Duration) -> Option<ExitStatus> {
        match self.agent.as_mut() {
            Some(p) => p.stop(timeout).await,
            None => None,
        }
    }

    /// `kill -9` of the agent: SIGKILL its process group (the agent behind its `runuser`
    /// wrapper). What it started detached lives on, as on a real host: PostgreSQL and the
    /// fence guard (each in a group of its own).
    pub fn kill_agent(&mut self) {
        if let Some(p) = self.agent.as_mut() {
            p.kill_group();
        }
    }

    /// The host dies: SIGKILL the agent and all its descendants (the fence guard too) and
    /// every PostgreSQL process of this data directory. Returns the postmaster pid that was
    /// killed, if PostgreSQL was running.
    pub fn kill_host(&mut self) -> Option<i32> {
        if let Some(p) = self.agent.as_mut() {
            p.kill();
        }
        kill_postmaster(&self.config.data_dir)
    }

    /// The postmaster's pid, if PostgreSQL runs on this data directory.
    pub fn postmaster_pid(&self) -> Option<i32> {
        crate::process::postmaster_pid(&self.config.data_dir)
    }

    /// The address the harness reaches the node at: its namespace's address, or 127.0.0.1.
    pub fn address(&self) -> String {
        match &self.net {
            Some(net) => net.address.to_string(),
            None => "127.0.0.1".to_owned(),
        }
    }

    /// The network namespace the node runs in, if any.
    pub fn netns(&self) -> Option<&str> {
        self.net.as_ref().map(|n| n.netns.as_str())
    }

    pub fn rest_base(&self) -> String {
        format!("http://{}:{}", self.address(), self.config.rest_port)
    }

    /// `GET <path>` on the agent's REST API; `(status, body)`.
    pub async fn http_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let url = format!("{}{path}", self.rest_base());
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await.unwrap_or_default()))
    }

    /// The status code of `GET <path>` (e.g. `/primary`, `/replica`, `/health`).
    pub async fn http_status(&self, path: &str) -> anyhow::Result<u16> {
        Ok(self.http_get(path).await?.0)
    }

    /// `GET /patroni` decoded (any status code with a JSON body is accepted).
    pub async fn patroni(&self) -> anyhow::Result<Value> {
        let (status, body) = self.http_get("/patroni").await?;
        serde_json::from_str(&body).with_context(|| {
            format!(
                "{}: /patroni answered {status} with non-JSON: {body}",
                self.name
            )
        })
    }

    /// How to reach this node's PostgreSQL as the superuser over TCP.
    pub fn pg(&self) -> PgTarget {
        PgTarget {
            host: self.address(),
            port: self.config.pg_port,
            user: self.config.auth.superuser.0.clone(),
            password: self.config.auth.superuser.1.clone(),
            dbname: "postgres".to_owned(),
        }
    }

    /// The PostgreSQL server log (when `logging_collector` is on, as configured here).
    pub fn pg_log_path(&self) -> PathBuf {
        self.config.dir.join("pglog").join("postgresql.log")
    }
}

/// The configuration of a node that is a host in a network namespace (under `extra`).
fn netns_overlay(config: &NodeConfig, net: &NodeNet) -> Value {
    let listen = |port: u16| format!("0.0.0.0:{port}");
    let connect = |port: u16| format!("{}:{port}", net.address);
    let repl = &config.auth.replication.0;
    json!({
        "restapi": {
            "listen": listen(config.rest_port),
            "connect_address": connect(config.rest_port),
        },
        "postgresql": {
            "listen": listen(config.pg_port),
            "connect_address": connect(config.pg_port),
            "pg_hba": [
                "local all all trust",
                format!("host replication {repl} 127.0.0.1/32 md5"),
                format!("host replication {repl} {} md5", net.subnet),
                "host all all 127.0.0.1/32 md5",
                format!("host all all {} md5", net.subnet),
            ],
        },
    })
}

fn append(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::options()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// The HTTP client used for REST and etcd-gateway calls: short timeouts, no proxies.
pub(crate) fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(3))
        .build()
        .expect("build HTTP client")
}
