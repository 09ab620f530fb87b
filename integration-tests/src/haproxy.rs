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
    /// The node's address (`127.0.0.1` on loopback, its own address in a network namespace).
    pub host: String,
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

/// Where HAProxy runs: the address it binds every port to, and the network namespace it runs
/// in (`None`: the harness's own). In a namespace it reaches the nodes over the bridge, as a
/// real client host would.
#[derive(Clone, Debug)]
pub struct HaproxyPlace {
    pub address: String,
    /// `(nsenter, namespace name)`.
    pub netns: Option<(PathBuf, String)>,
}

impl HaproxyPlace {
    /// On loopback in the harness's namespace.
    pub fn loopback() -> HaproxyPlace {
        HaproxyPlace {
            address: "127.0.0.1".to_owned(),
            netns: None,
        }
    }
}

/// A running HAProxy (killed on drop).
#[derive(Debug)]
pub struct Haproxy {
    /// The address every port is bound to (reachable from the harness).
    pub address: String,
    pub primary_port: u16,
    pub replica_port: u16,
    pub stats_port: u16,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    proc: Option<Proc>,
    http: reqwest::Client,
}

impl Haproxy {
    /// Write the configuration into `dir`, check it (`haproxy -c`) and start HAProxy on
    /// loopback in the foreground (`-db`), then wait until its stats page answers.
    pub async fn start(
        binary: &Path,
        dir: &Path,
        backends: &[Backend],
        timing: HaproxyTiming,
    ) -> anyhow::Result<Haproxy> {
        Haproxy::start_at(binary, dir, backends, timing, &HaproxyPlace::loopback()).await
    }

    /// [`Haproxy::start`] bound to `place.address`, inside `place.netns` if given.
    pub async fn start_at(
        binary: &Path,
        dir: &Path,
        backends: &[Backend],
        timing: HaproxyTiming,
        place: &HaproxyPlace,
    ) -> anyhow::Result<Haproxy> {
        std::fs::create_dir_all(dir)?;
        // Ports are free in a fresh namespace too; in the harness's they must be checked.
        let (primary_port, replica_port, stats_port) = (free_port()?, free_port()?, free_port()?);
        let config = render_config(
            &place.address,
            primary_port,
            replica_port,
            stats_port,
            backends,
            timing,
        );
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
        let mut cmd = match &place.netns {
            Some((nsenter, netns)) => {
                let mut c = Command::new(nsenter);
                c.arg(format!(
                    "--net={}",
                    crate::netns::netns_path(netns).display()
                ))
                .arg("--")
                .arg(binary);
                c
            }
            None => Command::new(binary),
        };
        cmd.current_dir(dir).arg("-db").arg("-f").arg(&config_path);
        let proc = Proc::spawn("haproxy", cmd, &log_path)?;
        let haproxy = Haproxy {
            address: place.address.clone(),
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
        let url = format!("http://{}:{}/;csv", self.address, self.stats_port);
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

/// The HAProxy configuration: `primary` → `/primary`, `replicas` → `/replica`, plus stats,
/// every port bound to `bind` (an IPv4 address).
pub fn render_config(
    bind: &str,
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
                "    server {} {}:{} maxconn 100 check port {}\n",
                b.name, b.host, b.pg_port, b.rest_port
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
    bind {bind}:{stats_port}
    stats enable
    stats uri /

listen primary
    bind {bind}:{primary_port}
    option httpchk OPTIONS /primary
    http-check expect status 200
{default_server}{servers}
listen replicas
    bind {bind}:{replica_port}
    balance roundrobin
    option httpchk OPTIONS /replica
    http-check expect status 200
{default_server}{servers}"
    )
}
