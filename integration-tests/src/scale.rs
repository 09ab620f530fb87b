//! Many members with a simulated PostgreSQL (`pgbaton agent --simulated-postgres`) against one
//! real etcd cluster: for `tests/simulated_pg.rs` and `make bench-scale`.
//!
//! Each member is a real `pgbaton agent` process (run as the current user: it starts no
//! PostgreSQL) with its own configuration file, REST port and simulated-PostgreSQL port; the
//! clusters share one etcd. Like the rest of the harness it looks only from outside: etcd's
//! JSON gateway, the agents' REST API and `/proc`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use crate::etcd::Etcd;
use crate::ports::free_port;
use crate::process::Proc;
use crate::tools::Tools;
use crate::wait::{Check, wait_for};

/// `ttl`, `loop_wait`, `retry_timeout` of every simulated cluster.
#[derive(Clone, Copy, Debug)]
pub struct SimTiming {
    pub ttl: u32,
    pub loop_wait: u32,
    pub retry_timeout: u32,
}

impl Default for SimTiming {
    fn default() -> SimTiming {
        SimTiming {
            ttl: 20,
            loop_wait: 5,
            retry_timeout: 7,
        }
    }
}

/// One simulated member.
#[derive(Debug)]
pub struct SimMember {
    pub scope: String,
    pub name: String,
    pub rest_port: u16,
    pub pg_port: u16,
    pub dir: PathBuf,
    proc: Option<Proc>,
}

impl SimMember {
    pub fn rest_base(&self) -> String {
        format!("http://127.0.0.1:{}", self.rest_port)
    }

    pub fn pid(&self) -> Option<i32> {
        self.proc.as_ref().map(Proc::pid)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("agent.log")
    }
}

/// Clusters of simulated members sharing one etcd; everything is killed on drop and the
/// directory removed (kept with `PGBATON_KEEP_TEST_DIRS=1`).
pub struct SimFleet {
    pub etcd: Etcd,
    pub members: Vec<SimMember>,
    pgbaton: PathBuf,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Drop for SimFleet {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut p) = m.proc.take() {
                p.kill();
            }
        }
        self.etcd.kill_all();
        if std::env::var("PGBATON_KEEP_TEST_DIRS").is_ok_and(|v| v == "1") {
            let kept = std::mem::replace(
                &mut self.dir,
                tempfile::tempdir().expect("a temporary directory"),
            );
            eprintln!("harness: kept {}", kept.keep().display());
        }
    }
}

impl SimFleet {
    /// Starts an etcd of `etcd_members` members, then `clusters` (scope, member count): every
    /// member's agent at once.
    pub async fn start(
        tools: &Tools,
        etcd_members: usize,
        clusters: &[(String, usize)],
        timing: SimTiming,
    ) -> anyhow::Result<SimFleet> {
        let dir = tempfile::Builder::new()
            .prefix("pgbaton-scale-")
            .tempdir_in(&tools.tmp_root)
            .context("create the fleet directory")?;
        let mut etcd = Etcd::prepare(&tools.etcd, dir.path(), etcd_members)?;
        etcd.start_all().await?;
        let pgbaton = dir.path().join("pgbaton");
        std::fs::copy(&tools.pgbaton, &pgbaton)
            .with_context(|| format!("copy {}", tools.pgbaton.display()))?;
        let mut fleet = SimFleet {
            etcd,
            members: Vec::new(),
            pgbaton,
            dir,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()?,
        };
        for (scope, size) in clusters {
            for i in 1..=*size {
                let name = format!("{scope}-m{i}");
                let member = fleet.create_member(scope, &name, timing)?;
                fleet.members.push(member);
            }
        }
        for i in 0..fleet.members.len() {
            fleet.start_member(i)?;
        }
        Ok(fleet)
    }

    fn create_member(
        &self,
        scope: &str,
        name: &str,
        timing: SimTiming,
    ) -> anyhow::Result<SimMember> {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir)?;
        let (rest_port, pg_port) = (free_port()?, free_port()?);
        let rest = format!("127.0.0.1:{rest_port}");
        let pg = format!("127.0.0.1:{pg_port}");
        // YAML is a superset of JSON.
        let config = json!({
            "scope": scope,
            "name": name,
            "restapi": { "listen": rest, "connect_address": rest },
            "etcd3": { "hosts": self.etcd.hosts() },
            "bootstrap": { "dcs": {
                "ttl": timing.ttl,
                "loop_wait": timing.loop_wait,
                "retry_timeout": timing.retry_timeout,
            } },
            "postgresql": {
                "listen": pg,
                "connect_address": pg,
                "data_dir": dir.join("data"),
                "authentication": {
                    "superuser": { "username": "postgres", "password": "unused" },
                    "replication": { "username": "replicator", "password": "unused" },
                },
            },
        });
        std::fs::write(
            dir.join("config.yml"),
            serde_json::to_string_pretty(&config)?,
        )?;
        Ok(SimMember {
            scope: scope.to_owned(),
            name: name.to_owned(),
            rest_port,
            pg_port,
            dir,
            proc: None,
        })
    }

    /// Starts member `i`'s agent (again).
    pub fn start_member(&mut self, i: usize) -> anyhow::Result<()> {
        let m = &mut self.members[i];
        let mut cmd = Command::new(&self.pgbaton);
        cmd.arg("agent")
            .arg("--simulated-postgres")
            .arg(m.dir.join("config.yml"))
            .current_dir(&m.dir);
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("PATRONI") || k.starts_with("PGBATON") || k.starts_with("PG") {
                cmd.env_remove(&key);
            }
        }
        let log = m.log_path();
        m.proc = Some(Proc::spawn(&format!("agent {}", m.name), cmd, &log)?);
        Ok(())
    }

    /// SIGKILL member `i`'s agent (its simulated PostgreSQL dies with it: a host failure).
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut p) = self.members[i].proc.take() {
            p.kill();
        }
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.members.iter().position(|m| m.name == name)
    }

    /// The scopes, in order.
    pub fn scopes(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for m in &self.members {
            if out.last() != Some(&m.scope) {
                out.push(m.scope.clone());
            }
        }
        out
    }

    /// The leader key's holder of `scope` (etcd, linearizable), `None` without one.
    pub async fn leader(&self, scope: &str) -> anyhow::Result<Option<String>> {
        Ok(self
            .etcd
            .get(&format!("/service/{scope}/leader"))
            .await?
            .map(|kv| kv.value))
    }

    /// Whether member `i`'s `/primary` (leader) or `/replica` (anyone else) answers 200.
    pub async fn member_healthy(&self, i: usize, leader: bool) -> bool {
        let path = if leader { "/primary" } else { "/replica" };
        let url = format!("{}{path}", self.members[i].rest_base());
        matches!(self.http.get(&url).send().await, Ok(r) if r.status().as_u16() == 200)
    }

    /// Waits until every cluster has a leader whose `/primary` answers 200 and every other
    /// running member's `/replica` answers 200 (it streams). Returns the leaders by scope.
    pub async fn wait_healthy(&self, timeout: Duration) -> anyhow::Result<Vec<(String, String)>> {
        wait_for("every simulated cluster healthy", timeout, || async {
            let mut leaders = Vec::new();
            let mut unhealthy = Vec::new();
            for scope in self.scopes() {
                let Some(leader) = self.leader(&scope).await? else {
                    unhealthy.push(format!("{scope}: no leader"));
                    continue;
                };
                for (i, m) in self.members.iter().enumerate() {
                    if m.scope != scope || m.proc.is_none() {
                        continue;
                    }
                    if !self.member_healthy(i, m.name == leader).await {
                        unhealthy.push(m.name.clone());
                    }
                }
                leaders.push((scope, leader));
            }
            Ok(if unhealthy.is_empty() {
                Check::Done(leaders)
            } else {
                let n = unhealthy.len();
                unhealthy.truncate(5);
                Check::not_yet(format!("{n} not healthy, e.g. {}", unhealthy.join(", ")))
            })
        })
        .await
    }

    /// Kills `scope`'s leader and measures: time from the kill until its leader key is gone
    /// (the lease expired) and until another member's `/primary` answers 200. Polls every
    /// 20 ms.
    pub async fn kill_leader(
        &mut self,
        scope: &str,
        timeout: Duration,
    ) -> anyhow::Result<Failover> {
        let old = self
            .leader(scope)
            .await?
            .with_context(|| format!("{scope} has no leader"))?;
        let i = self.index_of(&old).context("the leader is not a member")?;
        let killed = Instant::now();
        self.kill_member(i);
        let deadline = killed + timeout;
        let mut key_gone = None;
        loop {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{scope}: no new primary within {timeout:?} of killing {old}"
            );
            let leader = self.leader(scope).await?;
            if key_gone.is_none() && leader.as_deref() != Some(old.as_str()) {
                key_gone = Some(Instant::now());
            }
            if let Some(new) = leader.filter(|l| *l != old)
                && let Some(j) = self.index_of(&new)
                && self.member_healthy(j, true).await
            {
                let now = Instant::now();
                return Ok(Failover {
                    old,
                    new,
                    lease_left: key_gone.unwrap_or(now) - killed,
                    primary_after_kill: now - killed,
                    primary_after_expiry: now - key_gone.unwrap_or(now),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Log tails of the members named, for failure reports.
    pub fn log_tails(&self, names: &[&str], lines: usize) -> String {
        let mut out = String::new();
        for m in self
            .members
            .iter()
            .filter(|m| names.contains(&m.name.as_str()))
        {
            out.push_str(&format!(
                "----- {} ({}) -----\n{}\n",
                m.name,
                m.log_path().display(),
                crate::tail_file(&m.log_path(), lines)
            ));
        }
        out
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// One killed leader's figures.
#[derive(Clone, Debug)]
pub struct Failover {
    pub old: String,
    pub new: String,
    /// From the kill until the old leader key was gone (its lease expired).
    pub lease_left: Duration,
    pub primary_after_kill: Duration,
    /// From the leader key's disappearance until the new leader's `/primary` answered 200.
    pub primary_after_expiry: Duration,
}
