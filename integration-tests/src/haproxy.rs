//! HAProxy in front of the nodes, configured the way Patroni users configure it: the primary
//! port routes to the node whose agent answers 200 on `/primary`, the replica port to nodes
//! answering 200 on `/replica`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::ports::free_port;
use crate::process::Proc;
use crate::wait::{Check, wait_for};

/// One server line: a node's PostgreSQL port, health-checked on its agent's REST port.
#[derive(Clone, Debug)]
pub struct Backend {
    pub name: String,
    pub pg_port: u16,
    pub rest_port: u16,
}

/// Health-check timing (`default-server inter <inter> fall <fall> rise <rise>`).
#[derive(Clone, Copy, Debug)]
pub struct HaproxyTiming {
    pub inter: Duration,
    pub fall: u32,
    pub rise: u32,
}

impl HaproxyTiming {
    /// The test setting: `inter 1s fall 2 rise 1`.
    pub fn fast() -> HaproxyTiming {
        HaproxyTiming {
            inter: Duration::from_secs(1),
            fall: 2,
            rise: 1,
        }
    }
}

/// A running HAProxy (killed on drop).
#[derive(Debug)]
pub struct Haproxy {
    pub primary_port: u16,
    pub replica_port: u16,
    pub stats_port: u16,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    proc: Option<Proc>,
    http: reqwest::Client,
}

impl Haproxy {
    /// Write the configuration into `dir`, check it (`haproxy -c`) and start HAProxy in the
    /// foreground (`-db`), then wait until its stats page answers.
    pub async fn start(
        binary: &Path,
        dir: &Path,
        backends: &[Backend],
        timing: HaproxyTiming,
    ) -> anyhow::Result<Haproxy> {
        std::fs::create_dir_all(dir)?;
        let (primary_port, replica_port, stats_port) = (free_port()?, free_port()?, free_port()?);
        let config = render_config(primary_port, replica_port, stats_port, backends, timing);
        let config_path = dir.join("haproxy.cfg");
        std::fs::write(&config_path, config)
            .with_context(|| format!("write {}", config_path.display()))?;
        let check = Command::new(binary)
            .arg("-c")
            .arg("-f")
            .arg(&config_path)
            .output()
            .context("run haproxy -c")?;
        if !check.status.success() {
            bail!(
                "haproxy -c rejected {}: {}{}",
                config_path.display(),
                String::from_utf8_lossy(&check.stdout),
                String::from_utf8_lossy(&check.stderr)
            );
        }
        let log_path = dir.join("haproxy.log");
        let mut cmd = Command::new(binary);
        cmd.current_dir(dir).arg("-db").arg("-f").arg(&config_path);
        let proc = Proc::spawn("haproxy", cmd, &log_path)?;
        let haproxy = Haproxy {
            primary_port,
            replica_port,
            stats_port,
            config_path,
            log_path,
            proc: Some(proc),
            http: crate::node::http_client(),
        };
        haproxy.wait_ready().await?;
        Ok(haproxy)
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let timeout = crate::tools::scaled(Duration::from_secs(20));
        wait_for("HAProxy stats page to answer", timeout, || async {
            if self.proc.as_ref().is_some_and(Proc::exited_on_its_own) {
                bail!("haproxy exited: {}", crate::tail_file(&self.log_path, 20));
            }
            Ok(match self.server_states().await {
                Ok(_) => Check::Done(()),
                Err(e) => Check::not_yet(format!("{e:#}")),
            })
        })
        .await
    }

    /// `(proxy, server, status)` for every server, from the stats page's CSV
    /// (status is e.g. `UP`, `DOWN`, `UP 1/2`, `no check`).
    pub async fn server_states(&self) -> anyhow::Result<Vec<(String, String, String)>> {
        let url = format!("http://127.0.0.1:{}/;csv", self.stats_port);
        let text = self.http.get(&url).send().await?.text().await?;
        let mut lines = text.lines();
        let header = lines.next().context("empty stats CSV")?;
        let cols: Vec<&str> = header.trim_start_matches("# ").split(',').collect();
        let idx = |name: &str| cols.iter().position(|c| *c == name);
        let (p, s, st) = (
            idx("pxname").context("no pxname")?,
            idx("svname").context("no svname")?,
            idx("status").context("no status")?,
        );
        Ok(lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > st && f[s] != "FRONTEND" && f[s] != "BACKEND")
            .map(|f| (f[p].to_owned(), f[s].to_owned(), f[st].to_owned()))
            .collect())
    }

    /// Names of the servers HAProxy considers UP in the `primary` (or `replicas`) section.
    pub async fn up_servers(&self, section: &str) -> anyhow::Result<Vec<String>> {
        Ok(self
            .server_states()
            .await?
            .into_iter()
            .filter(|(px, _, status)| px == section && status.starts_with("UP"))
            .map(|(_, sv, _)| sv)
            .collect())
    }

    /// SIGKILL HAProxy.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }
}

/// The HAProxy configuration: `primary` → `/primary`, `replicas` → `/replica`, plus stats.
pub fn render_config(
    primary_port: u16,
    replica_port: u16,
    stats_port: u16,
    backends: &[Backend],
    timing: HaproxyTiming,
) -> String {
    let default_server = format!(
        "    default-server inter {}ms fall {} rise {} on-marked-down shutdown-sessions\n",
        timing.inter.as_millis(),
        timing.fall,
        timing.rise
    );
    let servers: String = backends
        .iter()
        .map(|b| {
            format!(
                "    server {} 127.0.0.1:{} maxconn 100 check port {}\n",
                b.name, b.pg_port, b.rest_port
            )
        })
        .collect();
    format!(
        "# Generated by the pgbaton test harness.
global
    maxconn 200

defaults
    mode tcp
    retries 2
    timeout queue 5s
    timeout connect 2s
    timeout client 30m
    timeout server 30m
    timeout check 2s

listen stats
    mode http
    bind 127.0.0.1:{stats_port}
    stats enable
    stats uri /

listen primary
    bind 127.0.0.1:{primary_port}
    option httpchk OPTIONS /primary
    http-check expect status 200
{default_server}{servers}
listen replicas
    bind 127.0.0.1:{replica_port}
    balance roundrobin
    option httpchk OPTIONS /replica
    http-check expect status 200
{default_server}{servers}"
    )
}
