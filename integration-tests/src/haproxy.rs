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
        // Ports are free in a fresh namespace too; in the harness's they must be checked.
        let ports = HaproxyPorts {
            primary: free_port()?,
            replica: free_port()?,
            stats: free_port()?,
        };
        let config = HaproxyConfig::harness(&place.address, ports, backends, timing).render();
        let config_path = write_checked_config(binary, dir, &config)?;
        let log_path = dir.join("haproxy.log");
        let cmd = command(binary, &config_path, place.netns.as_ref());
        let proc = Proc::spawn("haproxy", cmd, &log_path)?;
        let haproxy = Haproxy {
            address: place.address.clone(),
            primary_port: ports.primary,
            replica_port: ports.replica,
            stats_port: ports.stats,
            config_path,
            log_path,
            proc: Some(proc),
            http: crate::node::http_client(),
        };
        haproxy.wait_ready().await?;
        Ok(haproxy)
    }

    /// A handle on an HAProxy this process did not start (the demo's, started detached by an
    /// earlier run): its ports and stats page; nothing to kill.
    pub fn attach(
        address: &str,
        ports: HaproxyPorts,
        config_path: PathBuf,
        log_path: PathBuf,
    ) -> Haproxy {
        Haproxy {
            address: address.to_owned(),
            primary_port: ports.primary,
            replica_port: ports.replica,
            stats_port: ports.stats,
            config_path,
            log_path,
            proc: None,
            http: crate::node::http_client(),
        }
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

/// The three ports of an HAProxy in front of the nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HaproxyPorts {
    /// Read-write: the node whose agent answers 200 on `/primary`.
    pub primary: u16,
    /// Read-only: the nodes whose agents answer 200 on `/replica`.
    pub replica: u16,
    /// The statistics page (its CSV tells which servers are UP).
    pub stats: u16,
}

impl HaproxyPorts {
    /// 5000, 5001, 7000: what the examples, the demos and Patroni's documentation use.
    pub fn standard() -> HaproxyPorts {
        HaproxyPorts {
            primary: 5000,
            replica: 5001,
            stats: 7000,
        }
    }
}

/// An HAProxy configuration the way Patroni users write it: the `primary` section routes to
/// the server whose agent answers 200 on `OPTIONS /primary`, `replicas` balances over those
/// answering 200 on `/replica`, plus a stats page. Every HAProxy configuration of the project
/// comes from [`HaproxyConfig::render`]: the harness's ([`HaproxyConfig::harness`]), the
/// demo's, and the checked-in copies in `deploy/` and `docker/` (see [`crate::render`]).
#[derive(Clone, Debug)]
pub struct HaproxyConfig {
    /// Comment at the top of the file (see [`crate::render::comment_lines`]).
    pub comment: String,
    /// `global maxconn`.
    pub maxconn: u32,
    /// Run as a system service: log to syslog (`log /dev/log local0`, `option tcplog`), drop
    /// to user and group `haproxy`, daemonize, and open an admin socket in `/run/haproxy`.
    pub system_service: bool,
    /// Resolve the servers' host names at run time with Docker's DNS (`resolvers docker`), so
    /// HAProxy starts before the nodes and follows a node recreated with a new address.
    pub docker_dns: bool,
    /// The address every port is bound to (`*`: all).
    pub bind: String,
    pub ports: HaproxyPorts,
    pub timeout_connect: Duration,
    pub timeout_check: Duration,
    /// `stats refresh` (the page reloads itself).
    pub stats_refresh: Option<Duration>,
    pub timing: HaproxyTiming,
    /// `maxconn` of each server.
    pub server_maxconn: u32,
    pub backends: Vec<Backend>,
}

impl HaproxyConfig {
    /// The harness's (and the demo's) HAProxy: in the foreground, no logging but stderr,
    /// short timeouts, every port bound to `bind` (an IPv4 address).
    pub fn harness(
        bind: &str,
        ports: HaproxyPorts,
        backends: &[Backend],
        timing: HaproxyTiming,
    ) -> HaproxyConfig {
        HaproxyConfig {
            comment: "Generated by the pgbaton test harness (integration-tests/src/haproxy.rs)."
                .to_owned(),
            maxconn: 200,
            system_service: false,
            docker_dns: false,
            bind: bind.to_owned(),
            ports,
            timeout_connect: Duration::from_secs(2),
            timeout_check: Duration::from_secs(2),
            stats_refresh: None,
            timing,
            server_maxconn: 100,
            backends: backends.to_vec(),
        }
    }

    /// The configuration file's text.
    pub fn render(&self) -> String {
        let mut out = crate::render::comment_lines(&self.comment);
        if !self.comment.is_empty() {
            out.push('\n');
        }
        out.push_str(&format!("global\n    maxconn {}\n", self.maxconn));
        if self.system_service {
            out.push_str(
                "    log /dev/log local0
    user haproxy
    group haproxy
    daemon
    stats socket /run/haproxy/admin.sock mode 660 level admin
",
            );
        }
        out.push_str("\ndefaults\n    mode tcp\n");
        if self.system_service {
            out.push_str("    log global\n    option tcplog\n");
        }
        out.push_str(&format!(
            "    retries 2
    timeout queue 5s
    timeout connect {}
    timeout client 30m
    timeout server 30m
    timeout check {}
",
            haproxy_time(self.timeout_connect),
            haproxy_time(self.timeout_check)
        ));
        if self.docker_dns {
            out.push_str(
                "    default-server init-addr last,libc,none resolvers docker resolve-prefer ipv4

resolvers docker
    parse-resolv-conf
    resolve_retries 3
    timeout resolve 1s
    timeout retry 1s
    hold valid 5s
    hold nx 5s
    hold obsolete 5s
",
            );
        }
        out.push_str(&format!(
            "\nlisten stats\n    mode http\n    bind {}:{}\n    stats enable\n    stats uri /\n",
            self.bind, self.ports.stats
        ));
        if let Some(refresh) = self.stats_refresh {
            out.push_str(&format!("    stats refresh {}\n", haproxy_time(refresh)));
        }
        let default_server = format!(
            "    default-server inter {} fall {} rise {} on-marked-down shutdown-sessions\n",
            haproxy_time(self.timing.inter),
            self.timing.fall,
            self.timing.rise
        );
        let servers: String = self
            .backends
            .iter()
            .map(|b| {
                format!(
                    "    server {} {}:{} maxconn {} check port {}\n",
                    b.name, b.host, b.pg_port, self.server_maxconn, b.rest_port
                )
            })
            .collect();
        for (section, port, balance, path) in [
            ("primary", self.ports.primary, "", "/primary"),
            (
                "replicas",
                self.ports.replica,
                "    balance roundrobin\n",
                "/replica",
            ),
        ] {
            out.push_str(&format!(
                "\nlisten {section}\n    bind {}:{port}\n{balance}    option httpchk OPTIONS {path}\n    http-check expect status 200\n{default_server}{servers}",
                self.bind
            ));
        }
        out
    }
}

/// A duration the way HAProxy's configuration writes it: `30m`, `2s`, `500ms`.
fn haproxy_time(d: Duration) -> String {
    let ms = d.as_millis();
    if ms > 0 && ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms > 0 && ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Write `config` to `<dir>/haproxy.cfg` and check it with `haproxy -c`; returns the path.
pub(crate) fn write_checked_config(
    binary: &Path,
    dir: &Path,
    config: &str,
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
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
    Ok(config_path)
}

/// `haproxy -db -f <config_path>` (in the foreground, run from the configuration's
/// directory), inside the network namespace `netns` (`(nsenter, name)`) if given.
pub(crate) fn command(
    binary: &Path,
    config_path: &Path,
    netns: Option<&(PathBuf, String)>,
) -> Command {
    let mut cmd = match netns {
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
    if let Some(dir) = config_path.parent() {
        cmd.current_dir(dir);
    }
    cmd.arg("-db").arg("-f").arg(config_path);
    cmd
}
