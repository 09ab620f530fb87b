//! A whole test cluster: etcd, N nodes (agents + their PostgreSQL) and optionally HAProxy, in
//! one temporary directory, torn down on drop.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::etcd::Etcd;
use crate::haproxy::{Backend, Haproxy, HaproxyPlace, HaproxyTiming};
use crate::netns::{NetTools, Network};
use crate::node::{Node, NodeConfig, PgAuth};
use crate::pg::PgTarget;
use crate::ports::free_port;
use crate::process::kill_processes_under;
use crate::sampler::{PrimarySampler, SampleTarget};
use crate::tools::{Tools, scaled};
use crate::wait::{Check, wait_for};

/// The HA timing written to `bootstrap.dcs` (seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub ttl: u32,
    pub loop_wait: u32,
    pub retry_timeout: u32,
}

impl Timing {
    /// Fast failover for tests: ttl 10, loop_wait 1, retry_timeout 3
    /// (`loop_wait + 2 * retry_timeout = 7 <= ttl`).
    pub fn fast() -> Timing {
        Timing {
            ttl: 10,
            loop_wait: 1,
            retry_timeout: 3,
        }
    }

    /// Patroni's rule `loop_wait + 2 * retry_timeout <= ttl`.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.loop_wait + 2 * self.retry_timeout > self.ttl {
            bail!(
                "timing violates loop_wait + 2*retry_timeout <= ttl: {} + 2*{} > {}",
                self.loop_wait,
                self.retry_timeout,
                self.ttl
            );
        }
        Ok(())
    }

    pub fn ttl(&self) -> Duration {
        Duration::from_secs(u64::from(self.ttl))
    }
}

/// What to start. Build with [`ClusterSpec::new`] and adjust the public fields.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// Number of PostgreSQL nodes (agents), named `node1`, `node2`, ...
    pub nodes: usize,
    pub scope: String,
    /// Patroni `namespace` (default `/service/`).
    pub namespace: String,
    pub timing: Timing,
    /// etcd members (1 for most tests; 3 for DCS fault tests).
    pub etcd_members: usize,
    /// Start HAProxy in front of the nodes (with this health-check timing).
    pub haproxy: Option<HaproxyTiming>,
    /// Deep-merged into every node's configuration (`null` deletes a key), e.g.
    /// `json!({"bootstrap": {"dcs": {"synchronous_mode": true}}})`.
    pub extra_config: Value,
    /// [`Cluster::start`] starts etcd (otherwise call [`Cluster::start_etcd`] later).
    pub start_etcd: bool,
    /// [`Cluster::start`] starts every agent.
    pub start_agents: bool,
    /// Each node is a host in its own network namespace on a bridge, beside a client
    /// namespace (see [`Network`]; [`Cluster::network`]). Nodes listen on every address of
    /// their namespace and advertise theirs (all on the same two ports, as real hosts would);
    /// etcd is reached through [`Network::service_address`]; [`Cluster::kill_host`] also takes
    /// the host off the network and [`Cluster::start_agent`] boots it again. Needs root (see
    /// [`Tools::for_netns_test`]); HAProxy runs in the client namespace, bound to the
    /// client's address (reachable from the harness too), and reaches the nodes over the bridge.
    pub netns: bool,
}

impl ClusterSpec {
    /// `nodes` nodes, one etcd member, HAProxy with `inter 1s fall 2 rise 1`, [`Timing::fast`].
    pub fn new(nodes: usize) -> ClusterSpec {
        ClusterSpec {
            nodes,
            scope: "batman".to_owned(),
            namespace: "/service/".to_owned(),
            timing: Timing::fast(),
            etcd_members: 1,
            haproxy: Some(HaproxyTiming::fast()),
            extra_config: Value::Object(Default::default()),
            start_etcd: true,
            start_agents: true,
            netns: false,
        }
    }
}

/// The healthy topology found by [`Cluster::wait_healthy`].
#[derive(Clone, Debug)]
pub struct Healthy {
    pub leader: String,
    pub replicas: Vec<String>,
    /// The leader's timeline per `/patroni`, if it reports one.
    pub timeline: Option<i64>,
}

/// A running test cluster. Everything it started is killed when it is dropped.
/// Call [`Cluster::finish`] at the end of a passing test; a cluster dropped without it (a
/// panic, or an early `?` return) prints the tail of every log.
pub struct Cluster {
    tools: Tools,
    spec: ClusterSpec,
    pgbaton: PathBuf,
    etcd: Etcd,
    nodes: Vec<Node>,
    haproxy: Option<Haproxy>,
    /// The namespaces, when `spec.netns` (deleted after every process is dead).
    net: Option<Network>,
    finished: bool,
    /// Last: removed after every process is dead.
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("dir", &self.dir.path())
            .field("nodes", &self.names())
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Create the directory, copy `pgbaton` (and the fence guard binary) into it, allocate ports and write every
    /// configuration file, without starting anything.
    pub fn create(tools: &Tools, spec: ClusterSpec) -> anyhow::Result<Cluster> {
        spec.timing.check()?;
        crate::process::start_reaper();
        let mut dir = tempfile::Builder::new()
            .prefix("pgbaton-it-")
            .tempdir_in(&tools.tmp_root)
            .with_context(|| format!("create a test directory in {}", tools.tmp_root.display()))?;
        if keep_dirs() {
            dir.disable_cleanup(true);
        }
        let root = dir.path().to_owned();
        // The agents' user must traverse it.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))?;
        // For scripts/kill-test-leftovers.sh: processes here outlive a killed test process.
        std::fs::write(root.join("harness.pid"), std::process::id().to_string())?;
        // The cargo target dir may be unreadable for postgres (e.g. under /root): use a copy.
        let bin_dir = root.join("bin");
        std::fs::create_dir_all(&bin_dir)?;
        // The fence guard binary goes beside it (the agent starts it from there).
        let pgbaton = tools.install_pgbaton(&bin_dir)?;
        let etcd = Etcd::prepare(&tools.etcd, &root, spec.etcd_members)?;
        let names: Vec<String> = (1..=spec.nodes).map(|i| format!("node{i}")).collect();
        let (net, etcd_hosts, shared_ports) = if spec.netns {
            let net_tools = NetTools::discover().map_err(|missing| {
                anyhow::anyhow!("network namespaces need: {}", missing.join("; "))
            })?;
            let mut net = Network::create(&net_tools, &names)?;
            let mut hosts = Vec::new();
            for host in etcd.hosts() {
                let port: u16 = host
                    .rsplit_once(':')
                    .and_then(|(_, p)| p.parse().ok())
                    .with_context(|| format!("etcd host {host}"))?;
                let to = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                hosts.push(net.relay_tcp(port, to)?.to_string());
            }
            (Some(net), hosts, Some((free_port()?, free_port()?)))
        } else {
            (None, etcd.hosts(), None)
        };
        let mut nodes = Vec::with_capacity(spec.nodes);
        for name in names {
            let ndir = root.join(&name);
            let (rest_port, pg_port) = match shared_ports {
                Some(ports) => ports,
                None => (free_port()?, free_port()?),
            };
            let config = NodeConfig {
                scope: spec.scope.clone(),
                namespace: spec.namespace.clone(),
                name: name.clone(),
                rest_port,
                pg_port,
                etcd_hosts: etcd_hosts.clone(),
                data_dir: ndir.join("data"),
                dir: ndir,
                bin_dir: tools.pg_bin_dir.clone(),
                timing: spec.timing,
                auth: PgAuth::test_default(),
                extra: spec.extra_config.clone(),
            };
            let node_net = net.as_ref().map(|n| n.node_net(&name)).transpose()?;
            nodes.push(Node::create_in(tools, config, node_net)?);
        }
        eprintln!(
            "harness: cluster in {} (etcd {}, nodes: {})",
            root.display(),
            etcd_hosts.join(","),
            nodes
                .iter()
                .map(|n| format!(
                    "{} {} pg {} rest {}",
                    n.name,
                    n.address(),
                    n.config.pg_port,
                    n.config.rest_port
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
        Ok(Cluster {
            tools: tools.clone(),
            spec,
            pgbaton,
            etcd,
            nodes,
            haproxy: None,
            net,
            finished: false,
            dir,
        })
    }

    /// [`Cluster::create`], then start etcd, the agents and HAProxy as the spec says.
    /// Does not wait for the cluster to become healthy: see [`Cluster::wait_healthy`].
    pub async fn start(tools: &Tools, spec: ClusterSpec) -> anyhow::Result<Cluster> {
        let mut cluster = Cluster::create(tools, spec)?;
        if cluster.spec.start_etcd {
            cluster.start_etcd().await?;
        }
        if cluster.spec.start_agents {
            for name in cluster.names() {
                cluster.start_agent(&name)?;
            }
        }
        if let Some(timing) = cluster.spec.haproxy {
            cluster.start_haproxy(timing).await?;
        }
        Ok(cluster)
    }

    /// Start every etcd member and wait until etcd answers.
    pub async fn start_etcd(&mut self) -> anyhow::Result<()> {
        self.etcd.start_all().await
    }

    /// Start HAProxy in front of every node: on loopback, or with `netns` inside the client
    /// namespace (bound to the client's address, reaching the nodes over the bridge).
    pub async fn start_haproxy(&mut self, timing: HaproxyTiming) -> anyhow::Result<()> {
        let backends: Vec<Backend> = self
            .nodes
            .iter()
            .map(|n| Backend {
                name: n.name.clone(),
                host: n.address(),
                pg_port: n.config.pg_port,
                rest_port: n.config.rest_port,
            })
            .collect();
        let place = match &self.net {
            Some(net) => HaproxyPlace {
                address: net.client().address.to_string(),
                netns: Some((net.tools().nsenter.clone(), net.client().netns.clone())),
            },
            None => HaproxyPlace::loopback(),
        };
        let dir = self.dir.path().join("haproxy");
        self.haproxy =
            Some(Haproxy::start_at(&self.tools.haproxy, &dir, &backends, timing, &place).await?);
        Ok(())
    }

    // ----- accessors -----

    pub fn spec(&self) -> &ClusterSpec {
        &self.spec
    }

    pub fn tools(&self) -> &Tools {
        &self.tools
    }

    /// The test directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// An executable shell script `name` in the test directory (readable by the agents' user).
    pub fn script(&self, name: &str, body: &str) -> anyhow::Result<std::path::PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir().join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n"))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        Ok(path)
    }

    /// The copy of `pgbaton` the agents run.
    pub fn pgbaton(&self) -> &Path {
        &self.pgbaton
    }

    pub fn names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node named {name}"))
    }

    pub fn node_mut(&mut self, name: &str) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node named {name}"))
    }

    pub fn etcd(&self) -> &Etcd {
        &self.etcd
    }

    pub fn etcd_mut(&mut self) -> &mut Etcd {
        &mut self.etcd
    }

    pub fn haproxy(&self) -> &Haproxy {
        self.haproxy.as_ref().expect("HAProxy was not started")
    }

    pub fn haproxy_mut(&mut self) -> Option<&mut Haproxy> {
        self.haproxy.as_mut()
    }

    /// The hosts' network (panics unless the spec asked for `netns`).
    pub fn network(&self) -> &Network {
        self.net
            .as_ref()
            .expect("the cluster was not started with netns")
    }

    pub fn network_mut(&mut self) -> &mut Network {
        self.net
            .as_mut()
            .expect("the cluster was not started with netns")
    }

    /// Cut node `name` from etcd only (packets dropped silently both ways; it still reaches
    /// and is reached by the other nodes and the harness). Needs `netns`.
    pub fn cut_from_etcd(&mut self, name: &str) -> anyhow::Result<()> {
        self.network_mut().cut_from_services(name)
    }

    /// Undo every cut of node `name`. Needs `netns`.
    pub fn heal(&mut self, name: &str) -> anyhow::Result<()> {
        self.network_mut().heal(name)
    }

    /// The cluster's key prefix, e.g. `/service/batman/`.
    pub fn key_prefix(&self) -> String {
        let joined = format!("/{}/{}/", self.spec.namespace, self.spec.scope);
        let mut out = String::with_capacity(joined.len());
        for c in joined.chars() {
            if !(c == '/' && out.ends_with('/')) {
                out.push(c);
            }
        }
        out
    }

    /// `<prefix><suffix>`, e.g. `key("leader")`.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.key_prefix())
    }

    /// The leader key's value (the leader's name), read linearizably from etcd.
    pub async fn leader(&self) -> anyhow::Result<Option<String>> {
        Ok(self.etcd.get(&self.key("leader")).await?.map(|kv| kv.value))
    }

    /// SQL through HAProxy's primary port.
    pub fn via_haproxy_primary(&self) -> PgTarget {
        self.via_haproxy(self.haproxy().primary_port)
    }

    /// SQL through HAProxy's replica port.
    pub fn via_haproxy_replicas(&self) -> PgTarget {
        self.via_haproxy(self.haproxy().replica_port)
    }

    fn via_haproxy(&self, port: u16) -> PgTarget {
        PgTarget {
            host: self.haproxy().address.clone(),
            ..self.nodes[0].pg().with_port(port)
        }
    }

    /// Run `query` on node `name` (fresh superuser connection); rows as text.
    pub async fn sql(&self, name: &str, query: &str) -> anyhow::Result<Vec<Vec<Option<String>>>> {
        self.node(name).pg().query(query).await
    }

    // ----- process control -----

    /// Start node `name`'s agent (no-op if running). With `netns`, a host that
    /// [`Cluster::kill_host`] took off the network boots first (see [`Network::boot`]).
    pub fn start_agent(&mut self, name: &str) -> anyhow::Result<()> {
        if let Some(net) = &mut self.net {
            net.boot(name)?;
        }
        let (tools, pgbaton) = (self.tools.clone(), self.pgbaton.clone());
        self.node_mut(name).start_agent(&tools, &pgbaton)
    }

    /// Deep-merge `overlay` into node `name`'s configuration (`null` deletes a key) and
    /// rewrite its file; takes effect when the agent (re)reads it, e.g. after
    /// [`Cluster::restart_agent`].
    pub fn update_config(&mut self, name: &str, overlay: &Value) -> anyhow::Result<()> {
        let tools = self.tools.clone();
        let node = self.node_mut(name);
        crate::node::compose_overlays(&mut node.config.extra, overlay);
        node.write_config(&tools)
    }

    /// Stop node `name`'s agent gracefully (SIGTERM; SIGKILL after 30 s).
    pub async fn stop_agent(&mut self, name: &str) {
        self.node_mut(name)
            .stop_agent(scaled(Duration::from_secs(30)))
            .await;
    }

    /// SIGKILL node `name`'s agent only (PostgreSQL survives if detached).
    pub fn kill_agent(&mut self, name: &str) {
        self.node_mut(name).kill_agent();
    }

    /// Pause (SIGSTOP) or resume (SIGCONT) node `name`'s agent process only; PostgreSQL runs
    /// on, as when the agent's VM or process is stalled.
    pub fn pause_agent(&self, name: &str, paused: bool) -> anyhow::Result<()> {
        let pid = self
            .node(name)
            .agent_pid()
            .with_context(|| format!("pause_agent({name}): the agent was never started"))?;
        let sig = if paused {
            nix::sys::signal::Signal::SIGSTOP
        } else {
            nix::sys::signal::Signal::SIGCONT
        };
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
            .with_context(|| format!("send {sig} to agent {name} (pid {pid})"))
    }

    /// SIGKILL node `name`'s postmaster and every PostgreSQL process of its data directory;
    /// the agent stays up. Returns the postmaster's pid; fails if none was running.
    pub fn kill_postgres(&self, name: &str) -> anyhow::Result<i32> {
        let data_dir = &self.node(name).config.data_dir;
        let pid = crate::process::kill_postmaster(data_dir).with_context(|| {
            format!(
                "kill_postgres({name}): no PostgreSQL runs on {}",
                data_dir.display()
            )
        })?;
        eprintln!("harness: killed postmaster {pid} of {name}");
        Ok(pid)
    }

    /// The host dies: SIGKILL the agent and all PostgreSQL processes of node `name`; with
    /// `netns`, its interface also goes down without its addresses ([`Network::power_off`]).
    /// Fails if no PostgreSQL was running on that node (the test would be meaningless).
    pub fn kill_host(&mut self, name: &str) -> anyhow::Result<()> {
        let node = self.node_mut(name);
        let killed = node.kill_host();
        let data_dir = node.config.data_dir.clone();
        let survived = node.postmaster_pid().is_some();
        if let Some(net) = &mut self.net {
            net.power_off(name)?;
        }
        let Some(pid) = killed else {
            bail!(
                "kill_host({name}): no PostgreSQL was running on {}",
                data_dir.display()
            );
        };
        if survived || crate::process::pid_alive(pid) {
            bail!("kill_host({name}): postmaster {pid} survived SIGKILL");
        }
        eprintln!("harness: killed host {name} (agent and postmaster {pid})");
        Ok(())
    }

    /// Restart node `name`'s agent: stop it gracefully if it runs, then start it again.
    pub async fn restart_agent(&mut self, name: &str) -> anyhow::Result<()> {
        if self.node_mut(name).agent_running() {
            self.stop_agent(name).await;
        }
        self.start_agent(name)
    }

    /// Run the `pgbaton` CLI (the test directory's copy) with `args`, with a 60 s limit.
    pub async fn pgbaton_cli(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut cmd = tokio::process::Command::new(&self.pgbaton);
        cmd.args(args)
            .current_dir(self.dir.path())
            .kill_on_drop(true);
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("PATRONI") || k.starts_with("PGBATON") || k.starts_with("PG") {
                cmd.env_remove(&key);
            }
        }
        tokio::time::timeout(scaled(Duration::from_secs(60)), cmd.output())
            .await
            .with_context(|| format!("pgbaton {args:?} did not finish"))?
            .with_context(|| format!("run pgbaton {args:?}"))
    }

    /// `pgbaton -c <from's config> switchover --leader from --candidate to [--scheduled at]
    /// --force`: its stdout and stderr together, or an error carrying them when it fails.
    pub async fn cli_switchover(
        &self,
        from: &str,
        to: &str,
        scheduled: Option<&str>,
    ) -> anyhow::Result<String> {
        let config = self.node(from).config_path.to_string_lossy().into_owned();
        let mut args = vec![
            "-c",
            &config,
            "switchover",
            "--leader",
            from,
            "--candidate",
            to,
        ];
        if let Some(at) = scheduled {
            args.extend(["--scheduled", at]);
        }
        args.push("--force");
        let out = self.pgbaton_cli(&args).await?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        anyhow::ensure!(
            out.status.success(),
            "switchover {from} -> {to} failed: {text}"
        );
        Ok(text)
    }

    /// `pgbaton -c <node's config> list --format json`, decoded.
    pub async fn list_json(&self, via: &str) -> anyhow::Result<Vec<Value>> {
        let config = self.node(via).config_path.to_string_lossy().into_owned();
        let out = self
            .pgbaton_cli(&["-c", &config, "list", "--format", "json"])
            .await?;
        if !out.status.success() {
            bail!(
                "pgbaton list failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "pgbaton list --format json printed non-JSON: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// A sampler of every node (SQL role, `/primary`) and of the leader key.
    pub fn sampler(&self) -> PrimarySampler {
        let targets = self
            .nodes
            .iter()
            .map(|n| SampleTarget {
                name: n.name.clone(),
                pg: n.pg(),
                rest_base: n.rest_base(),
            })
            .collect();
        PrimarySampler::start(targets, Some((self.etcd.client(), self.key("leader"))))
    }

    // ----- waiting for states -----

    /// Fail if an agent that the harness started has exited on its own.
    pub fn check_agents_alive(&self) -> anyhow::Result<()> {
        for n in &self.nodes {
            if n.agent_exited_on_its_own() {
                bail!(
                    "agent {} exited on its own; log tail:\n{}",
                    n.name,
                    crate::tail_file(&n.log_path, 30)
                );
            }
        }
        Ok(())
    }

    /// One member of [`Cluster::probe_healthy`]: `/patroni` says primary (`leader`) or a
    /// streaming replica, running; `GET /primary` answers 200 on the leader only; PostgreSQL
    /// agrees. `Ok(timeline)` (the leader's, from `/patroni`) or `Err(why not yet)`.
    async fn probe_member(&self, name: &str, leader: &str) -> Result<Option<i64>, String> {
        let node = self.node(name);
        let status = node.patroni().await.map_err(|e| format!("{name}: {e:#}"))?;
        let role = status.get("role").and_then(Value::as_str).unwrap_or("?");
        let state = status.get("state").and_then(Value::as_str).unwrap_or("?");
        let want_role = if name == leader { "primary" } else { "replica" };
        if role != want_role || state != "running" {
            return Err(format!(
                "{name}: /patroni role {role:?} state {state:?}, want {want_role:?} running"
            ));
        }
        if name != leader
            && let Some(rs) = status.get("replication_state").and_then(Value::as_str)
            && rs != "streaming"
        {
            return Err(format!("{name}: replication_state {rs:?}"));
        }
        let timeline = if name == leader {
            status.get("timeline").and_then(Value::as_i64)
        } else {
            None
        };
        let primary_code = node
            .http_status("/primary")
            .await
            .map_err(|e| format!("{name}: {e:#}"))?;
        if (primary_code == 200) != (name == leader) {
            return Err(format!("{name}: GET /primary answered {primary_code}"));
        }
        match node.pg().in_recovery().await {
            Ok(in_recovery) if in_recovery == (name == leader) => {
                Err(format!("{name}: pg_is_in_recovery() = {in_recovery}"))
            }
            Ok(_) => Ok(timeline),
            Err(e) => Err(format!("{name}: {e:#}")),
        }
    }

    /// One look at the cluster: `Ok(Done)` when `members` (all nodes if empty) form a healthy
    /// cluster: etcd's leader key names one of them, whose PostgreSQL is a primary (SQL and
    /// `/patroni`) answering 200 on `/primary`; every other is a running replica (`/patroni`)
    /// streaming from it (`pg_stat_replication` on the leader, by `application_name`), not
    /// answering 200 on `/primary`; and HAProxy (if started) routes its primary port to the
    /// leader only.
    pub async fn probe_healthy(&self, members: &[String]) -> anyhow::Result<Check<Healthy>> {
        let members: Vec<String> = if members.is_empty() {
            self.names()
        } else {
            members.to_vec()
        };
        let leader = match self.leader().await {
            Ok(Some(l)) => l,
            Ok(None) => return Ok(Check::not_yet("no leader key")),
            Err(e) => return Ok(Check::not_yet(format!("etcd: {e:#}"))),
        };
        if !members.contains(&leader) {
            return Ok(Check::not_yet(format!(
                "leader key names {leader:?}, not one of {members:?}"
            )));
        }
        // Every member, the leader's replication and HAProxy are asked at once (each question
        // is a snapshot either way; asked one after the other they took a second per poll
        // under load); the first member in order that is not there yet is the reason.
        let replicas: Vec<String> = members.iter().filter(|n| **n != leader).cloned().collect();
        let (probes, streaming, haproxy) = tokio::join!(
            futures::future::join_all(members.iter().map(|name| self.probe_member(name, &leader))),
            self.sql(
                &leader,
                "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'",
            ),
            async {
                match &self.haproxy {
                    Some(h) => Some(h.up_servers("primary").await),
                    None => None,
                }
            }
        );
        let mut timeline = None;
        for (name, probe) in members.iter().zip(probes) {
            match probe {
                Err(why) => return Ok(Check::NotYet(why)),
                Ok(tl) if *name == leader => timeline = tl,
                Ok(_) => {}
            }
        }
        let streaming = match streaming {
            Ok(rows) => rows
                .into_iter()
                .filter_map(|r| r.into_iter().next().flatten())
                .collect::<Vec<_>>(),
            Err(e) => return Ok(Check::not_yet(format!("{leader}: {e:#}"))),
        };
        if let Some(missing) = replicas.iter().find(|r| !streaming.contains(r)) {
            return Ok(Check::not_yet(format!(
                "{missing} is not streaming from {leader} (pg_stat_replication: {streaming:?})"
            )));
        }
        match haproxy {
            None => {}
            Some(Ok(up)) if up == [leader.clone()] => {}
            Some(Ok(up)) => {
                return Ok(Check::not_yet(format!(
                    "HAProxy primary servers UP: {up:?}"
                )));
            }
            Some(Err(e)) => return Ok(Check::not_yet(format!("HAProxy stats: {e:#}"))),
        }
        Ok(Check::Done(Healthy {
            leader,
            replicas,
            timeline,
        }))
    }

    /// Wait until every node is part of a healthy cluster (see [`Cluster::probe_healthy`]).
    /// Fails at once if an agent exits on its own.
    pub async fn wait_healthy(&self, timeout: Duration) -> anyhow::Result<Healthy> {
        self.wait_healthy_members(&[], timeout).await
    }

    /// [`Cluster::wait_healthy`] for a subset of the nodes (e.g. the survivors of a failure).
    pub async fn wait_healthy_members(
        &self,
        members: &[String],
        timeout: Duration,
    ) -> anyhow::Result<Healthy> {
        let what = if members.is_empty() {
            format!("a healthy cluster of {:?}", self.names())
        } else {
            format!("a healthy cluster of {members:?}")
        };
        wait_for(&what, timeout, || async {
            self.check_agents_alive()?;
            self.probe_healthy(members).await
        })
        .await
    }

    /// Wait until a leader other than `not` holds the leader key, runs PostgreSQL as a primary
    /// and answers 200 on `/primary`. Returns its name.
    pub async fn wait_new_leader(&self, not: &str, timeout: Duration) -> anyhow::Result<String> {
        wait_for(&format!("a new leader (not {not})"), timeout, || async {
            self.check_agents_alive()?;
            let leader = match self.leader().await {
                Ok(Some(l)) if l != not => l,
                Ok(other) => return Ok(Check::not_yet(format!("leader key = {other:?}"))),
                Err(e) => return Ok(Check::not_yet(format!("etcd: {e:#}"))),
            };
            let node = self
                .nodes
                .iter()
                .find(|n| n.name == leader)
                .with_context(|| format!("leader key names unknown member {leader:?}"))?;
            match node.pg().in_recovery().await {
                Ok(false) => {}
                Ok(true) => {
                    return Ok(Check::not_yet(format!(
                        "{leader} holds the key, still in recovery"
                    )));
                }
                Err(e) => return Ok(Check::not_yet(format!("{leader}: {e:#}"))),
            }
            match node.http_status("/primary").await {
                Ok(200) => Ok(Check::Done(leader)),
                Ok(code) => Ok(Check::not_yet(format!(
                    "{leader}: /primary answered {code}"
                ))),
                Err(e) => Ok(Check::not_yet(format!("{leader}: {e:#}"))),
            }
        })
        .await
    }

    // ----- teardown -----

    /// The tail of every log, for failure reports.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        let mut add = |title: &str, path: &Path, n: usize| {
            let tail = crate::tail_file(path, n);
            out.push_str(&format!("----- {title} ({}) -----\n", path.display()));
            out.push_str(if tail.is_empty() { "(empty)" } else { &tail });
            out.push('\n');
        };
        for n in &self.nodes {
            add(&format!("agent {}", n.name), &n.log_path, lines);
            add(&format!("postgres {}", n.name), &n.pg_log_path(), lines / 2);
        }
        for (name, path) in self.etcd.logs() {
            add(&name, &path, lines / 4);
        }
        if let Some(h) = &self.haproxy {
            add("haproxy", &h.log_path, lines / 4);
        }
        out
    }

    /// Mark the test as passed and tear down (no log dump).
    pub fn finish(mut self) {
        self.finished = true;
    }

    fn teardown(&mut self) {
        if let Some(h) = &mut self.haproxy {
            h.kill();
        }
        for n in &mut self.nodes {
            n.kill_host();
        }
        self.etcd.kill_all();
        let leaked = kill_processes_under(self.dir.path());
        if !leaked.is_empty() {
            eprintln!(
                "harness: killed leftover processes {leaked:?} under {}",
                self.dir.path().display()
            );
        }
        // Last: a namespace lives on while a process runs in it.
        self.net = None;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.teardown();
        if !self.finished || std::thread::panicking() {
            eprintln!(
                "\n===== harness: test failed; log tails (all files in {}{}) =====\n{}",
                self.dir.path().display(),
                if keep_dirs() {
                    ", kept"
                } else {
                    ", removed now; set PGBATON_KEEP_TEST_DIRS=1 to keep it"
                },
                self.log_tails(60)
            );
        } else if keep_dirs() {
            eprintln!("harness: kept {}", self.dir.path().display());
        }
    }
}

/// `PGBATON_KEEP_TEST_DIRS=1`.
fn keep_dirs() -> bool {
    std::env::var("PGBATON_KEEP_TEST_DIRS").as_deref() == Ok("1")
}
