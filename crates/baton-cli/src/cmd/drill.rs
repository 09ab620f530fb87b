//! `drill`: a switchover (through the leader's REST API, as `switchover` does it) or, with
//! `--kill`, a real failover (SIGKILL of the local leader's agent and postmaster), while a
//! built-in writer commits one numbered row at a time into `pgbaton_drill`; then RTO, RPO and
//! who took over, printed and appended to the DCS key `drills`; the table is dropped on the
//! leader afterwards (unless `--keep`), and a drill that cannot drop it fails saying so.
//! `drill --history` lists that key.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use baton_cli::cli::Format;
use baton_cli::drill::{self, Attempt, TABLE};
use baton_cli::table::render;
use baton_core::ClusterView;
use baton_dcs::record::{self, DrillRecord};
use baton_dcs::{Dcs, EtcdDcs};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio_postgres::NoTls;

use super::{Ctx, api_base, http};

/// `drill`'s options.
pub(crate) struct Drill {
    pub(crate) kill: bool,
    pub(crate) candidate: Option<String>,
    pub(crate) dsn: Option<String>,
    pub(crate) keep: bool,
    pub(crate) force: bool,
    pub(crate) timeout: Duration,
    pub(crate) format: Format,
}

/// Acknowledged writes the writer needs before the drill starts, and after the new leader
/// took over before it stops.
const STEADY_WRITES: usize = 5;
/// Bound on one commit (a commit in synchronous mode may wait for a standby that is gone).
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between two writes of the writer (one row per commit).
const WRITE_PACE: Duration = Duration::from_millis(10);
/// How often the DCS is read while waiting for the new leader.
const POLL: Duration = Duration::from_millis(100);

fn drills_key(ctx: &Ctx) -> String {
    format!("{}{}/{}", ctx.config.namespace, ctx.cluster, record::DRILLS)
}

/// `drill --history`.
pub(crate) async fn history(ctx: &Ctx, format: Format) -> anyhow::Result<()> {
    let key = drills_key(ctx);
    let records = match ctx
        .dcs
        .read_drills()
        .await
        .with_context(|| format!("read {key}"))?
    {
        None => Vec::new(),
        Some((value, _)) => {
            record::decode_drills(&value).map_err(|e| anyhow::anyhow!("{key}: {e}"))?
        }
    };
    match format {
        Format::Json => println!(
            "{}",
            serde_json::Value::Array(records.iter().map(DrillRecord::to_json).collect())
        ),
        Format::Yaml => print!(
            "{}",
            serde_yaml::to_string(&records.iter().map(DrillRecord::to_json).collect::<Vec<_>>())
                .unwrap_or_default()
        ),
        _ => print!(
            "{}",
            render(&drill::history_table(&ctx.cluster, &records), format, "\t")
        ),
    }
    Ok(())
}

/// The local leader's processes `--kill` ends.
struct Victims {
    agent: i32,
    postmaster: i32,
}

/// The leader's agent and postmaster on this host: the leader must be this configuration's
/// member; the postmaster is `data_dir/postmaster.pid`'s, the agent the one the fence guard
/// watches (`--agent-pid` of the guard named beside the data directory).
fn local_victims(ctx: &Ctx, leader: &str) -> anyhow::Result<Victims> {
    if ctx.config.name != leader {
        bail!(
            "refusing --kill: the leader is {leader}, and this configuration is member {}'s; run the \
             drill on {leader}'s host with its configuration, or drill a switchover (without \
             --kill). pgbaton has no REST endpoint that stops an agent without releasing the \
             leader key. Nothing was changed",
            ctx.config.name
        );
    }
    let data_dir = &ctx.config.postgresql.data_dir;
    let pid_file = data_dir.join("postmaster.pid");
    let postmaster = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
        .filter(|pid| *pid > 0 && alive(*pid))
        .with_context(|| {
            format!(
                "refusing --kill: no running PostgreSQL found through {} (postgresql.data_dir); \
                 nothing was changed",
                pid_file.display()
            )
        })?;
    let guard_file = baton_agent::guard::guard_pid_file(data_dir);
    let agent = std::fs::read_to_string(&guard_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .and_then(cmdline)
        .and_then(|args| {
            let i = args.iter().position(|a| a == "--agent-pid")?;
            args.get(i + 1)?.parse::<i32>().ok()
        })
        .filter(|pid| *pid > 0 && cmdline(*pid).is_some_and(|a| a.iter().any(|x| x == "agent")))
        .with_context(|| {
            format!(
                "refusing --kill: cannot find the agent of {leader} (its fence guard is recorded in \
                 {}); nothing was changed",
                guard_file.display()
            )
        })?;
    Ok(Victims { agent, postmaster })
}

fn alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
}

fn cmdline(pid: i32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// The direct children of `pid` (the postmaster's backends and auxiliary processes).
fn children(pid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat")).is_ok_and(|stat| {
                // `pid (comm) state ppid ...`; comm may contain spaces and parentheses.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok())
                    == Some(pid)
            })
        })
        .collect()
}

/// SIGKILL the agent first (so it cannot restart PostgreSQL), then the postmaster and its
/// children: the leader's processes crash; its leader key expires with its lease.
fn kill_leader(v: &Victims) -> anyhow::Result<()> {
    kill(Pid::from_raw(v.agent), Signal::SIGKILL)
        .with_context(|| format!("SIGKILL the agent (pid {})", v.agent))?;
    let backends = children(v.postmaster);
    kill(Pid::from_raw(v.postmaster), Signal::SIGKILL)
        .with_context(|| format!("SIGKILL the postmaster (pid {})", v.postmaster))?;
    for pid in backends {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    Ok(())
}

/// Who the writer connects as, and where when `--dsn` is given.
#[derive(Clone)]
struct Endpoint {
    /// `--dsn`; `None`: the current leader's `conn_url`, looked up at every (re)connection.
    fixed: Option<tokio_postgres::Config>,
    user: String,
    password: Option<Vec<u8>>,
    dbname: String,
}

impl Endpoint {
    fn new(config: &baton_config::Config, dsn: Option<&str>) -> anyhow::Result<Endpoint> {
        let superuser = &config.postgresql.superuser;
        let fixed = dsn
            .map(|d| {
                d.parse::<tokio_postgres::Config>()
                    .with_context(|| format!("--dsn {d:?} is not a libpq connection string"))
            })
            .transpose()?;
        let user = fixed
            .as_ref()
            .and_then(|c| c.get_user())
            .unwrap_or(&superuser.username)
            .to_owned();
        let password = fixed
            .as_ref()
            .and_then(|c| c.get_password())
            .map(<[u8]>::to_vec)
            .or_else(|| {
                (user == superuser.username)
                    .then(|| superuser.password.clone().map(String::into_bytes))
                    .flatten()
            });
        let dbname = fixed
            .as_ref()
            .and_then(|c| c.get_dbname())
            .unwrap_or("postgres")
            .to_owned();
        Ok(Endpoint {
            fixed,
            user,
            password,
            dbname,
        })
    }

    /// A connection configuration to `host:port` with the endpoint's credentials.
    fn to(&self, host: &str, port: u16) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(host).port(port);
        self.complete(c)
    }

    fn complete(&self, mut c: tokio_postgres::Config) -> tokio_postgres::Config {
        c.user(&self.user)
            .dbname(&self.dbname)
            .application_name("pgbaton drill")
            .connect_timeout(CONNECT_TIMEOUT);
        if let Some(p) = &self.password {
            c.password(p);
        }
        c
    }

    /// Where the writer connects now: `--dsn`, else the leader's address from the DCS.
    async fn current(&self, dcs: &EtcdDcs) -> anyhow::Result<tokio_postgres::Config> {
        if let Some(fixed) = &self.fixed {
            return Ok(self.complete(fixed.clone()));
        }
        let view = dcs.read_cluster().await.context("read the cluster")?;
        leader_config(self, &view)
    }
}

/// The leader's `conn_url` with the endpoint's credentials.
fn leader_config(e: &Endpoint, view: &ClusterView) -> anyhow::Result<tokio_postgres::Config> {
    let leader = view.leader_member().context("the cluster has no leader")?;
    let (host, port) = leader
        .pg_host_port()
        .with_context(|| format!("member {} has no conn_url", leader.name))?;
    Ok(e.to(&host, port))
}

fn describe(c: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = c
        .get_hosts()
        .iter()
        .zip(c.get_ports().iter().chain(std::iter::repeat(&5432)))
        .map(|(h, p)| match h {
            tokio_postgres::config::Host::Tcp(h) => format!("{h}:{p}"),
            tokio_postgres::config::Host::Unix(path) => format!("{}:{p}", path.display()),
        })
        .collect();
    hosts.join(",")
}

async fn pg_connect(c: &tokio_postgres::Config) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT * 2, c.connect(NoTls))
        .await
        .with_context(|| format!("connect to {}: timed out", describe(c)))?
        .with_context(|| format!("connect to {}", describe(c)))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

fn since(t0: Instant) -> u64 {
    u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The built-in writer: one row per commit, numbered; a failed or timed-out commit drops the
/// connection (the next one goes to wherever the endpoint points then).
async fn write_loop(
    dcs: EtcdDcs,
    endpoint: Endpoint,
    drill_id: String,
    t0: Instant,
    attempts: Arc<Mutex<Vec<Attempt>>>,
    stop: Arc<AtomicBool>,
) {
    let insert = format!("INSERT INTO {TABLE} (drill, seq) VALUES ($1, $2)");
    let mut client: Option<tokio_postgres::Client> = None;
    let mut seq: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let Some(c) = &client else {
            if let Ok(config) = endpoint.current(&dcs).await {
                client = pg_connect(&config).await.ok();
            }
            if client.is_none() {
                tokio::time::sleep(WRITE_PACE * 5).await;
            }
            continue;
        };
        seq += 1;
        let sent_ms = since(t0);
        let n = i64::try_from(seq).unwrap_or(i64::MAX);
        let result =
            tokio::time::timeout(WRITE_TIMEOUT, c.execute(&insert, &[&drill_id, &n])).await;
        let acked = matches!(result, Ok(Ok(1)));
        let attempt = Attempt {
            seq,
            sent_ms,
            done_ms: since(t0),
            acked,
        };
        attempts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(attempt);
        if !acked {
            client = None;
        }
        tokio::time::sleep(WRITE_PACE).await;
    }
}

fn acks_since(attempts: &Mutex<Vec<Attempt>>, from_ms: u64) -> usize {
    attempts
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|a| a.acked && a.sent_ms >= from_ms)
        .count()
}

/// Waits until `done` holds, reading the DCS every [`POLL`]; `None` after `timeout`.
async fn wait_view<T>(
    ctx: &Ctx,
    timeout: Duration,
    mut done: impl FnMut(&ClusterView) -> Option<T>,
) -> Option<T> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Ok(view) = ctx.dcs.read_cluster().await
            && let Some(t) = done(&view)
        {
            return Some(t);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

pub(crate) async fn run(ctx: &Ctx, d: Drill) -> anyhow::Result<()> {
    let view = ctx.read().await?;
    let Some(old_leader) = view.leader_name().map(ToString::to_string) else {
        bail!(
            "refusing to drill: cluster {} has no leader; nothing was changed",
            ctx.cluster
        );
    };
    if let Some(c) = &d.candidate {
        if !view.members.iter().any(|m| m.name.as_str() == c) {
            bail!("{c} is not a member of cluster {}", ctx.cluster);
        }
        if *c == old_leader {
            bail!("{c} is already the leader of cluster {}", ctx.cluster);
        }
    }
    let problems = drill::health_problems(&view);
    if !problems.is_empty() {
        if !d.force {
            bail!(
                "refusing to drill: cluster {} is not healthy: {}; nothing was changed (use --force \
                 to drill anyway)",
                ctx.cluster,
                problems.join("; ")
            );
        }
        eprintln!(
            "warning: drilling although cluster {} is not healthy: {}",
            ctx.cluster,
            problems.join("; ")
        );
    }
    let victims = if d.kill {
        Some(local_victims(ctx, &old_leader)?)
    } else {
        None
    };
    let endpoint = Endpoint::new(&ctx.config, d.dsn.as_deref())?;
    let started_at = baton_core::format_iso8601_utc(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |t| t.as_secs()),
    );
    let drill_id = format!("{started_at} {}", std::process::id());
    let first = endpoint.current(&ctx.dcs).await?;
    let setup = pg_connect(&first)
        .await
        .context("connect the writer (--dsn, else the leader's conn_url)")?;
    setup
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {TABLE} (drill text NOT NULL, seq bigint NOT NULL, \
             committed_at timestamptz NOT NULL DEFAULT clock_timestamp(), PRIMARY KEY (drill, seq))"
        ))
        .await
        .with_context(|| format!("create table {TABLE} on {}", describe(&first)))?;
    drop(setup);

    let timeline_before = view
        .leader_member()
        .and_then(|m| m.timeline)
        .map(|t| t.0)
        .or_else(|| view.timeline().map(|t| t.0));
    let mut rec = DrillRecord {
        started_at,
        kind: if d.kill { "failover" } else { "switchover" }.to_owned(),
        old_leader: old_leader.clone(),
        timeline_before,
        ..DrillRecord::default()
    };
    let exercised = exercise(ctx, &d, victims.as_ref(), &endpoint, &drill_id, &mut rec).await;
    // The table is dropped whatever happened, and a table left behind fails the drill loudly.
    let cleanup = drop_table(ctx, &endpoint, d.keep).await;
    match exercised {
        Ok(()) => {}
        Err(Stage::Before(e)) => {
            if let Err(c) = &cleanup {
                eprintln!("error: {}", left_behind(c));
            }
            return Err(e);
        }
        Err(Stage::After(e)) => rec.outcome = format!("{e:#}"),
    }
    append_history(ctx, rec.clone()).await?;
    match d.format {
        Format::Json => println!("{}", rec.to_json()),
        Format::Yaml => print!(
            "{}",
            serde_yaml::to_string(&rec.to_json()).unwrap_or_default()
        ),
        _ => print!(
            "{}",
            render(&drill::result_table(&ctx.cluster, &rec), d.format, "\t")
        ),
    }
    if d.kill {
        eprintln!(
            "note: the agent and PostgreSQL of {old_leader} were killed; start its agent again to \
             have it rejoin as a replica"
        );
    }
    match (rec.outcome == "ok", cleanup) {
        (true, Ok(())) => Ok(()),
        (false, Ok(())) => bail!("the drill failed: {}", rec.outcome),
        (true, Err(c)) => bail!("{}", left_behind(&c)),
        (false, Err(c)) => bail!("the drill failed: {}; and {}", rec.outcome, left_behind(&c)),
    }
}

/// Where the drill failed: before the switchover or kill (nothing happened to the cluster), or
/// after it (the result is recorded).
enum Stage {
    Before(anyhow::Error),
    After(anyhow::Error),
}

async fn exercise(
    ctx: &Ctx,
    d: &Drill,
    victims: Option<&Victims>,
    endpoint: &Endpoint,
    drill_id: &str,
    rec: &mut DrillRecord,
) -> Result<(), Stage> {
    let t0 = Instant::now();
    let attempts = Arc::new(Mutex::new(Vec::<Attempt>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_loop(
        ctx.dcs.clone(),
        endpoint.clone(),
        drill_id.to_owned(),
        t0,
        attempts.clone(),
        stop.clone(),
    ));
    let finish = |writer: tokio::task::JoinHandle<()>| {
        let stop = stop.clone();
        async move {
            stop.store(true, Ordering::Relaxed);
            let _ = writer.await;
        }
    };

    // Steady state first.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while acks_since(&attempts, 0) < STEADY_WRITES {
        if tokio::time::Instant::now() > deadline {
            finish(writer).await;
            return Err(Stage::Before(anyhow::anyhow!(
                "the writer got fewer than {STEADY_WRITES} commits acknowledged within 30 s; \
                 nothing was changed"
            )));
        }
        tokio::time::sleep(POLL).await;
    }
    let old = rec.old_leader.clone();
    let trigger_ms = since(t0);
    let triggered = match victims {
        Some(v) => kill_leader(v),
        None => switchover(ctx, &old, d.candidate.as_deref()).await,
    };
    if let Err(e) = triggered {
        finish(writer).await;
        return Err(Stage::Before(e));
    }

    // The new leader: another member holds the key and runs as a primary. Its promotion
    // reason shows in its member key for one HA cycle only: keep the first one seen.
    let mut seen: Option<(String, String)> = None;
    let new_leader = wait_view(ctx, d.timeout, |view| {
        if seen.is_none() {
            seen = drill::promotion_reason(view, &old)
                .map(|(name, reason)| (name.to_owned(), reason.to_owned()));
        }
        view.leader_member()
            .filter(|m| m.name.as_str() != old && m.runs_as_primary())
            .map(|m| m.name.to_string())
    })
    .await;
    let Some(new_leader) = new_leader else {
        finish(writer).await;
        return Err(Stage::After(anyhow::anyhow!(
            "no new leader within {} s",
            d.timeout.as_secs()
        )));
    };
    rec.new_leader = Some(new_leader.clone());
    let seen_ms = since(t0);
    let deadline = tokio::time::Instant::now() + d.timeout;
    while acks_since(&attempts, seen_ms) < STEADY_WRITES {
        if tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    finish(writer).await;
    let attempts: Vec<Attempt> = attempts.lock().unwrap_or_else(|p| p.into_inner()).clone();
    rec.writes_acknowledged = attempts.iter().filter(|a| a.acked).count() as u64;
    rec.writes_failed = attempts.len() as u64 - rec.writes_acknowledged;
    if acks_since(&Mutex::new(attempts.clone()), seen_ms) < STEADY_WRITES {
        return Err(Stage::After(anyhow::anyhow!(
            "{new_leader} took over, but the writer got no commit through within {} s",
            d.timeout.as_secs()
        )));
    }
    rec.rto_ms = drill::rto(&attempts, trigger_ms).map(|r| r.ms);

    // RPO: every acknowledged row, looked up on the new primary itself.
    let view = ctx
        .dcs
        .read_cluster()
        .await
        .map_err(|e| Stage::After(anyhow::anyhow!("read the cluster: {e}")))?;
    let missing = rpo_check(endpoint, &view, &new_leader, drill_id, &attempts)
        .await
        .map_err(Stage::After)?;
    rec.rpo_rows = Some(missing.len() as u64);
    rec.timeline_after = view
        .member(&baton_core::MemberName::new(new_leader.clone()).unwrap_or_default())
        .and_then(|m| m.timeline)
        .map(|t| t.0);
    let seen = seen
        .filter(|(name, _)| *name == new_leader)
        .map(|(_, reason)| reason);
    rec.reason = drill::takeover_reason(&view, &new_leader, rec.timeline_before, seen.as_deref());
    rec.outcome = if missing.is_empty() {
        "ok".to_owned()
    } else {
        let shown: Vec<String> = missing.iter().take(20).map(u64::to_string).collect();
        format!(
            "{} acknowledged rows missing on {new_leader} (seq {}{})",
            missing.len(),
            shown.join(", "),
            if missing.len() > 20 { ", ..." } else { "" }
        )
    };
    Ok(())
}

/// `POST /switchover` on the leader, as `pgbaton switchover --force` sends it.
async fn switchover(ctx: &Ctx, leader: &str, candidate: Option<&str>) -> anyhow::Result<()> {
    let view = ctx.read().await?;
    let target = api_base(&view, Some(leader))?;
    let mut body = serde_json::json!({ "leader": leader });
    if let Some(c) = candidate {
        body["candidate"] = c.into();
    }
    let url = format!("{target}/switchover");
    let reply = http::request(&ctx.config, reqwest::Method::POST, &url, Some(&body), &[]).await?;
    if !reply.ok() {
        bail!(
            "POST {url}: {}: {}; nothing was changed",
            reply.status,
            reply.body
        );
    }
    Ok(())
}

/// The acknowledged rows the new leader does not have.
async fn rpo_check(
    endpoint: &Endpoint,
    view: &ClusterView,
    new_leader: &str,
    drill_id: &str,
    attempts: &[Attempt],
) -> anyhow::Result<Vec<u64>> {
    let member = view
        .members
        .iter()
        .find(|m| m.name.as_str() == new_leader)
        .with_context(|| format!("check the rows: member {new_leader} has no member key"))?;
    let (host, port) = member
        .pg_host_port()
        .with_context(|| format!("check the rows: member {new_leader} has no conn_url"))?;
    let config = endpoint.to(&host, port);
    let client = pg_connect(&config)
        .await
        .with_context(|| format!("check the rows on {new_leader}"))?;
    let recovery: bool = client
        .query_one("SELECT pg_catalog.pg_is_in_recovery()", &[])
        .await
        .with_context(|| format!("check the rows on {new_leader}"))?
        .get(0);
    if recovery {
        bail!("check the rows: {new_leader} is not a primary (any more)");
    }
    let rows = client
        .query(
            &format!("SELECT seq FROM {TABLE} WHERE drill = $1"),
            &[&drill_id],
        )
        .await
        .with_context(|| format!("read {TABLE} on {new_leader}"))?;
    let found: Vec<u64> = rows
        .iter()
        .filter_map(|r| u64::try_from(r.get::<_, i64>(0)).ok())
        .collect();
    Ok(drill::missing_rows(attempts, &found))
}

/// How long the clean-up keeps trying to drop the table on the leader (right after a drill the
/// leader may still be changing, or its PostgreSQL starting).
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on one `DROP TABLE` (in synchronous mode its commit waits for a standby).
const DROP_TIMEOUT: Duration = Duration::from_secs(10);

/// `DROP TABLE pgbaton_drill` on the leader itself, unless `--keep`: at its `conn_url` from the
/// DCS with the drill's credentials, as the RPO check connects, never through `--dsn`. A proxy
/// can still lead to the demoted primary for a few health checks after a switchover; the drop
/// failed there (a read-only transaction), and the table stayed on the new leader (issue 13.3).
/// Checked: the server is not in recovery, the table is gone from it, and the DCS names the
/// same leader afterwards. Tried again until [`CLEANUP_TIMEOUT`]; the error says why the table
/// is left behind.
async fn drop_table(ctx: &Ctx, endpoint: &Endpoint, keep: bool) -> anyhow::Result<()> {
    if keep {
        return Ok(());
    }
    let give_up = tokio::time::Instant::now() + CLEANUP_TIMEOUT;
    loop {
        match drop_on_leader(ctx, endpoint).await {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() < give_up => {
                tracing::debug!("drop {TABLE}: {e:#}; trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// One attempt of [`drop_table`].
async fn drop_on_leader(ctx: &Ctx, endpoint: &Endpoint) -> anyhow::Result<()> {
    let view = ctx.dcs.read_cluster().await.context("read the cluster")?;
    let leader = view
        .leader_name()
        .map(ToString::to_string)
        .context("the cluster has no leader")?;
    let config = leader_config(endpoint, &view)?;
    let at = format!("leader {leader} ({})", describe(&config));
    let client = pg_connect(&config)
        .await
        .with_context(|| format!("connect to {at}"))?;
    let work = async {
        let recovery: bool = client
            .query_one("SELECT pg_catalog.pg_is_in_recovery()", &[])
            .await?
            .get(0);
        if recovery {
            bail!("{at} is in recovery, not a primary (yet)");
        }
        client
            .batch_execute(&format!("DROP TABLE IF EXISTS {TABLE}"))
            .await
            .with_context(|| format!("DROP TABLE {TABLE} on {at}"))?;
        let left: bool = client
            .query_one(&format!("SELECT to_regclass('{TABLE}') IS NOT NULL"), &[])
            .await?
            .get(0);
        if left {
            bail!("{TABLE} is still on {at} after DROP TABLE");
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(DROP_TIMEOUT, work)
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "DROP TABLE {TABLE} on {at} did not finish within {} s (a synchronous commit \
                 waiting for a standby?)",
                DROP_TIMEOUT.as_secs()
            )
        })??;
    // Dropped on the leader that was read before: it must still be the leader, or the drop
    // may have gone to a primary on its way out.
    let after = ctx.dcs.read_cluster().await.context("read the cluster")?;
    if after.leader_name().map(ToString::to_string).as_deref() != Some(leader.as_str()) {
        bail!("the leader changed from {leader} while {TABLE} was dropped there");
    }
    Ok(())
}

/// The error of a drill that could not drop its table: what to do about it.
fn left_behind(e: &anyhow::Error) -> String {
    format!(
        "the drill's table {TABLE} is left behind: {e:#}; drop it by hand on the leader \
         (DROP TABLE {TABLE};)"
    )
}

/// Appends `rec` to `drills` with compare-and-swap on its revision (a few tries when another
/// drill wrote meanwhile).
async fn append_history(ctx: &Ctx, rec: DrillRecord) -> anyhow::Result<()> {
    let key = drills_key(ctx);
    for _ in 0..5 {
        let current = ctx
            .dcs
            .read_drills()
            .await
            .with_context(|| format!("read {key}"))?;
        let version = current.as_ref().map_or(0, |(_, v)| *v);
        let value = record::append_drill(current.as_ref().map(|(v, _)| v.as_str()), rec.clone())
            .map_err(|e| anyhow::anyhow!("{key}: {e}; the drill's result is not recorded"))?;
        if ctx
            .dcs
            .write_drills(&value, version)
            .await
            .with_context(|| format!("write {key}"))?
        {
            return Ok(());
        }
    }
    bail!("{key} kept changing meanwhile: the drill's result is not recorded")
}
