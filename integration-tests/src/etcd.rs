//! etcd: one or more members on loopback, each with its own data directory and free ports.
//!
//! The harness reads and writes keys through etcd's v3 JSON gateway (`/v3/kv/range`,
//! `/v3/kv/put`, `/v3/kv/deleterange`), which every etcd ≥ 3.4 serves on the client port,
//! so it depends neither on `etcdctl` nor on the DCS code under test. Reads are linearizable.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use crate::ports::free_port;
use crate::process::Proc;
use crate::wait::{Check, wait_for};

/// One etcd member: its ports, directory and (while running) its process.
#[derive(Debug)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    dir: PathBuf,
    proc: Option<Proc>,
}

/// An etcd cluster of one or more members. Members are killed on drop.
#[derive(Debug)]
pub struct Etcd {
    binary: PathBuf,
    token: String,
    members: Vec<Member>,
    client: EtcdClient,
}

/// A cheap, cloneable client for the JSON gateway of an etcd cluster; tries each endpoint in
/// turn. Usable from spawned tasks (e.g. a sampler recording the leader key).
#[derive(Clone, Debug)]
pub struct EtcdClient {
    endpoints: Vec<String>,
    http: reqwest::Client,
}

/// A key-value pair read from etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdKv {
    pub key: String,
    pub value: String,
    pub create_revision: i64,
    pub mod_revision: i64,
    /// The lease the key is attached to (0 = none).
    pub lease: i64,
}

impl Etcd {
    /// Allocate ports and directories for `members` members under `dir` without starting them
    /// (a test may want the agents up before etcd). `start_all` starts them.
    pub fn prepare(binary: &Path, dir: &Path, members: usize) -> anyhow::Result<Etcd> {
        assert!(members >= 1, "etcd needs at least one member");
        let ports = (0..members)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Etcd::prepare_on(binary, dir, &ports)
    }

    /// [`Etcd::prepare`] with given `(client, peer)` ports, one pair a member (the demo's
    /// fixed ports).
    pub fn prepare_on(binary: &Path, dir: &Path, ports: &[(u16, u16)]) -> anyhow::Result<Etcd> {
        assert!(!ports.is_empty(), "etcd needs at least one member");
        let mut out = Vec::with_capacity(ports.len());
        for (i, &(client_port, peer_port)) in (1..).zip(ports) {
            let mdir = dir.join(format!("etcd{i}"));
            std::fs::create_dir_all(&mdir).with_context(|| format!("create {}", mdir.display()))?;
            out.push(Member {
                name: format!("etcd{i}"),
                client_port,
                peer_port,
                dir: mdir,
                proc: None,
            });
        }
        let client = EtcdClient {
            endpoints: out
                .iter()
                .map(|m| format!("http://127.0.0.1:{}", m.client_port))
                .collect(),
            http: crate::node::http_client(),
        };
        Ok(Etcd {
            binary: binary.to_owned(),
            token: format!("pgbaton-it-{}-{}", std::process::id(), out[0].client_port),
            members: out,
            client,
        })
    }

    /// Start a single-member etcd and wait until it answers.
    pub async fn start(binary: &Path, dir: &Path) -> anyhow::Result<Etcd> {
        let mut etcd = Etcd::prepare(binary, dir, 1)?;
        etcd.start_all().await?;
        Ok(etcd)
    }

    /// Start every member that is not running and wait until the cluster answers a
    /// linearizable read (so it has a leader).
    pub async fn start_all(&mut self) -> anyhow::Result<()> {
        for i in 0..self.members.len() {
            self.spawn_member(i)?;
        }
        self.wait_ready(crate::tools::scaled(Duration::from_secs(30)))
            .await
    }

    /// Start member `i` (0-based) if it is not running; does not wait.
    pub fn spawn_member(&mut self, i: usize) -> anyhow::Result<()> {
        if self.members[i].proc.as_mut().is_some_and(Proc::is_running) {
            return Ok(());
        }
        let (cmd, log) = self.member_command(i);
        let proc = Proc::spawn(&format!("etcd member {}", self.members[i].name), cmd, &log)?;
        self.members[i].proc = Some(proc);
        Ok(())
    }

    /// The command line of member `i` (0-based), and its log file.
    pub fn member_command(&self, i: usize) -> (Command, PathBuf) {
        let initial_cluster = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let m = &self.members[i];
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let mut cmd = Command::new(&self.binary);
        cmd.current_dir(&m.dir)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(m.dir.join("data"))
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(&initial_cluster)
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg(&self.token)
            .arg("--logger")
            .arg("zap")
            .arg("--log-outputs")
            .arg("stderr");
        (cmd, m.dir.join("etcd.log"))
    }

    /// SIGKILL member `i` (0-based).
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut p) = self.members[i].proc.take() {
            p.kill();
        }
    }

    /// SIGKILL every member.
    pub fn kill_all(&mut self) {
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
    }

    /// Pause (SIGSTOP) or resume (SIGCONT) member `i`: connections hang, as in Patroni's
    /// "DCS is down" steps.
    pub fn pause_member(&self, i: usize, paused: bool) -> anyhow::Result<()> {
        let sig = if paused {
            nix::sys::signal::Signal::SIGSTOP
        } else {
            nix::sys::signal::Signal::SIGCONT
        };
        match &self.members[i].proc {
            Some(p) => p.signal_group(sig),
            None => bail!("etcd member {i} is not running"),
        }
    }

    /// Wait until a linearizable read succeeds on some member.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        wait_for("etcd to answer a linearizable read", timeout, || async {
            for m in &self.members {
                if m.proc.as_ref().is_some_and(Proc::exited_on_its_own) {
                    bail!(
                        "etcd member {} exited; log tail:\n{}",
                        m.name,
                        crate::tail_file(&m.dir.join("etcd.log"), 20)
                    );
                }
            }
            Ok(match self.get("/pgbaton-it-probe").await {
                Ok(_) => Check::Done(()),
                Err(e) => Check::not_yet(format!("{e:#}")),
            })
        })
        .await
    }

    /// `host:port` of every member's client URL (Patroni's `etcd3.hosts` form).
    pub fn hosts(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// `http://host:port` of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.hosts()
            .into_iter()
            .map(|h| format!("http://{h}"))
            .collect()
    }

    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// Log files, for failure reports.
    pub fn logs(&self) -> Vec<(String, PathBuf)> {
        self.members
            .iter()
            .map(|m| (m.name.clone(), m.dir.join("etcd.log")))
            .collect()
    }

    /// A cloneable gateway client for this cluster.
    pub fn client(&self) -> EtcdClient {
        self.client.clone()
    }

    /// Linearizable read of one key.
    pub async fn get(&self, key: &str) -> anyhow::Result<Option<EtcdKv>> {
        self.client.get(key).await
    }

    /// Linearizable read of every key under `prefix`, sorted by key.
    pub async fn get_prefix(&self, prefix: &str) -> anyhow::Result<Vec<EtcdKv>> {
        self.client.get_prefix(prefix).await
    }

    /// Write `key` = `value` (no lease). For bad-input tests (garbage in a DCS key).
    pub async fn put(&self, key: &str, value: &str) -> anyhow::Result<()> {
        self.client.put(key, value).await
    }

    /// Delete every key under `prefix`.
    pub async fn delete_prefix(&self, prefix: &str) -> anyhow::Result<()> {
        self.client.delete_prefix(prefix).await
    }
}

impl EtcdClient {
    /// POST a gateway request to the first member that answers.
    async fn call(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let mut last = None;
        for endpoint in &self.endpoints {
            let url = format!("{endpoint}{path}");
            match self.http.post(&url).json(&body).send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let text = resp.text().await.unwrap_or_default();
                    if status.is_success() {
                        return serde_json::from_str(&text)
                            .with_context(|| format!("decode etcd reply from {url}: {text}"));
                    }
                    last = Some(anyhow::anyhow!("{url}: HTTP {status}: {text}"));
                }
                Err(e) => last = Some(anyhow::anyhow!("{url}: {e}")),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no etcd endpoint")))
    }

    /// Linearizable read of one key.
    pub async fn get(&self, key: &str) -> anyhow::Result<Option<EtcdKv>> {
        let reply = self
            .call("/v3/kv/range", json!({ "key": B64.encode(key) }))
            .await?;
        Ok(decode_kvs(&reply)?.into_iter().next())
    }

    /// Linearizable read of every key under `prefix`, sorted by key.
    pub async fn get_prefix(&self, prefix: &str) -> anyhow::Result<Vec<EtcdKv>> {
        let reply = self
            .call(
                "/v3/kv/range",
                json!({ "key": B64.encode(prefix), "range_end": B64.encode(prefix_end(prefix)) }),
            )
            .await?;
        decode_kvs(&reply)
    }

    /// Write `key` = `value` (no lease).
    pub async fn put(&self, key: &str, value: &str) -> anyhow::Result<()> {
        self.call(
            "/v3/kv/put",
            json!({ "key": B64.encode(key), "value": B64.encode(value) }),
        )
        .await?;
        Ok(())
    }

    /// `/v3/lease/timetolive` of lease `id`: `(ttl, granted_ttl)` in whole seconds as etcd
    /// reports them (`ttl` is -1 once the lease has expired).
    pub async fn lease_ttl(&self, id: i64) -> anyhow::Result<(i64, i64)> {
        let reply = self
            .call("/v3/lease/timetolive", json!({ "ID": id.to_string() }))
            .await?;
        let int = |field: &str| -> i64 {
            match reply.get(field) {
                Some(Value::String(s)) => s.parse().unwrap_or(0),
                Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
                _ => 0,
            }
        };
        Ok((int("TTL"), int("grantedTTL")))
    }

    /// The endpoints (`http://host:port`) this client tries, in order.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Delete every key under `prefix`.
    pub async fn delete_prefix(&self, prefix: &str) -> anyhow::Result<()> {
        self.call(
            "/v3/kv/deleterange",
            json!({ "key": B64.encode(prefix), "range_end": B64.encode(prefix_end(prefix)) }),
        )
        .await?;
        Ok(())
    }
}

/// The smallest key greater than every key starting with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn decode_kvs(reply: &Value) -> anyhow::Result<Vec<EtcdKv>> {
    let Some(kvs) = reply.get("kvs").and_then(Value::as_array) else {
        return Ok(Vec::new());
    };
    let text = |kv: &Value, field: &str| -> anyhow::Result<String> {
        match kv.get(field).and_then(Value::as_str) {
            Some(s) => Ok(String::from_utf8_lossy(&B64.decode(s)?).into_owned()),
            None => Ok(String::new()),
        }
    };
    // int64 fields arrive as JSON strings and are omitted when zero.
    let int = |kv: &Value, field: &str| -> i64 {
        match kv.get(field) {
            Some(Value::String(s)) => s.parse().unwrap_or(0),
            Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
            _ => 0,
        }
    };
    kvs.iter()
        .map(|kv| {
            Ok(EtcdKv {
                key: text(kv, "key")?,
                value: text(kv, "value")?,
                create_revision: int(kv, "create_revision"),
                mod_revision: int(kv, "mod_revision"),
                lease: int(kv, "lease"),
            })
        })
        .collect()
}
