//! The role sampler behind C5 ([`super::primaries`]): what an operator's monitoring sees.
//!
//! - From the client namespace, over TCP, every node is asked
//!   `SELECT pg_is_in_recovery(), <timeline>` once per tick of a schedule shared by all nodes
//!   ([`PERIOD`], 100 ms), each node on a connection of its own (reopened when it breaks), each
//!   question bounded by [`ANSWER_TIMEOUT`]. A node still busy with an earlier question skips
//!   the tick (no sample: not a primary).
//! - In the same namespace, on the same schedule, every node's agent is asked `GET /primary`
//!   (what HAProxy asks): a 200 is recorded as "primary" (timeline 0: the REST answer does not
//!   say), anything else as not. Two 200s in one tick mean a load balancer could send writes to
//!   two nodes.
//! - Beside it, on the harness's runtime, every node's fence record
//!   (`<data_dir>.pgbaton-fence`: boot id and deadline in ms of `CLOCK_BOOTTIME`) is read
//!   every [`PERIOD`]; changes are kept, with the deadline converted to the run clock.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio_postgres::{Client, SimpleQueryMessage};

use super::Clock;
use super::primaries::{FenceObs, Role, RoleSample};
use super::workload::spawn_workers;
use crate::pg::PgTarget;

/// The sampling period.
pub const PERIOD: Duration = Duration::from_millis(100);
/// A question (connect included) not answered within this is "not a primary".
pub const ANSWER_TIMEOUT: Duration = Duration::from_millis(1000);

/// The role and the timeline: the current WAL insert timeline on a primary (from the WAL file
/// name: `pg_control_checkpoint()` lags behind a promotion), the received one on a standby.
pub const ROLE_SQL: &str = "SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() \
     THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver), 0) \
     ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END";

/// One node to watch.
#[derive(Clone, Debug)]
pub struct RoleTarget {
    pub name: String,
    /// Over TCP, as the client namespace reaches it.
    pub pg: PgTarget,
    /// The agent's REST API (`http://host:port`), as the client namespace reaches it.
    pub rest: String,
    pub data_dir: PathBuf,
}

/// Shared, append-only records.
#[derive(Clone, Debug, Default)]
pub struct RoleHistory {
    samples: Arc<Mutex<Vec<RoleSample>>>,
    /// The `GET /primary` answers.
    health: Arc<Mutex<Vec<RoleSample>>>,
    fences: Arc<Mutex<Vec<FenceObs>>>,
}

impl RoleHistory {
    pub fn health(&self) -> Vec<RoleSample> {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn samples(&self) -> Vec<RoleSample> {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn fences(&self) -> Vec<FenceObs> {
        self.fences
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The running sampler: a thread in the client namespace and a fence-record task.
pub struct RoleSampler {
    history: RoleHistory,
    stop: Arc<AtomicBool>,
    /// `spawn_in`'s result (entering the namespace) around the runtime's own.
    thread: Option<std::thread::JoinHandle<anyhow::Result<anyhow::Result<()>>>>,
    fence_task: Option<tokio::task::JoinHandle<()>>,
}

impl RoleSampler {
    /// Start sampling `targets` from network namespace `netns` on the run clock.
    pub fn start(netns: &str, targets: Vec<RoleTarget>, clock: Clock) -> RoleSampler {
        let history = RoleHistory::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s, t) = (history.clone(), stop.clone(), targets.clone());
        let nodes = targets.len();
        // Tasks 0..n ask PostgreSQL, n..2n the agents' `/primary`.
        let thread = spawn_workers(netns, "role sampler", 2 * nodes, move |i| {
            let (h, s) = (h.clone(), s.clone());
            let target = t[i % nodes].clone();
            async move {
                if i < nodes {
                    ask_node(target, clock, h, s).await;
                } else {
                    ask_agent(target, clock, h, s).await;
                }
            }
        });
        let (h, s) = (history.clone(), stop.clone());
        let fence_task = tokio::spawn(watch_fence_records(targets, clock, h, s));
        RoleSampler {
            history,
            stop,
            thread: Some(thread),
            fence_task: Some(fence_task),
        }
    }

    pub fn history(&self) -> &RoleHistory {
        &self.history
    }

    /// Stop sampling; returns the whole history.
    pub async fn stop(mut self) -> RoleHistory {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.fence_task.take() {
            let _ = t.await;
        }
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        self.history.clone()
    }
}

impl Drop for RoleSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.fence_task.take() {
            t.abort();
        }
    }
}

/// The tick of the shared schedule at or after `ns` on the run clock.
fn tick_at_or_after(ns: u64) -> u64 {
    let period = PERIOD.as_nanos() as u64;
    ns.div_ceil(period)
}

/// Ask one node once per tick until stopped.
async fn ask_node(target: RoleTarget, clock: Clock, history: RoleHistory, stop: Arc<AtomicBool>) {
    let mut conn: Option<Client> = None;
    let questions = async || ask(&target.pg, &mut conn).await;
    on_schedule(&target.name, clock, &history.samples, &stop, questions).await;
}

/// Ask one agent `GET /primary` once per tick until stopped.
async fn ask_agent(target: RoleTarget, clock: Clock, history: RoleHistory, stop: Arc<AtomicBool>) {
    let url = format!("{}/primary", target.rest);
    let http = reqwest::Client::builder()
        .timeout(ANSWER_TIMEOUT)
        .build()
        .unwrap_or_default();
    let questions = async || match http.get(&url).send().await {
        Ok(r) if r.status() == reqwest::StatusCode::OK => Role::Primary { timeline: 0 },
        Ok(r) => Role::Standby {
            timeline: i64::from(r.status().as_u16()),
        },
        Err(e) => Role::Down {
            why: format!("{e}"),
        },
    };
    on_schedule(&target.name, clock, &history.health, &stop, questions).await;
}

/// One `question` per tick of the shared schedule until `stop`, each answer recorded into
/// `samples` as `node`'s; ticks that passed while a question was pending are skipped.
async fn on_schedule(
    node: &str,
    clock: Clock,
    samples: &Mutex<Vec<RoleSample>>,
    stop: &AtomicBool,
    mut question: impl AsyncFnMut() -> Role,
) {
    let period = PERIOD.as_nanos() as u64;
    let mut tick = tick_at_or_after(clock.now());
    while !stop.load(Ordering::SeqCst) {
        tokio::time::sleep_until(clock.instant_at(tick * period).into()).await;
        let invoke = clock.now();
        let role = question().await;
        let complete = clock.now();
        samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(RoleSample {
                node: node.to_owned(),
                tick,
                invoke,
                complete,
                role,
            });
        tick = (tick + 1).max(tick_at_or_after(clock.now()));
    }
}

/// One question; a broken connection is dropped (reopened by the next question).
async fn ask(pg: &PgTarget, conn: &mut Option<Client>) -> Role {
    let answer = tokio::time::timeout(ANSWER_TIMEOUT, async {
        if conn.as_ref().is_none_or(Client::is_closed) {
            *conn = Some(pg.connect_with_timeout(ANSWER_TIMEOUT).await?);
        }
        let c = conn.as_ref().context("connected above")?;
        let messages = c.simple_query(ROLE_SQL).await.context("query")?;
        parse_role(&messages)
    })
    .await;
    match answer {
        Ok(Ok(role)) => role,
        Ok(Err(e)) => {
            *conn = None;
            Role::Down {
                why: format!("{e:#}"),
            }
        }
        Err(_) => {
            *conn = None;
            Role::Down {
                why: "timeout".to_owned(),
            }
        }
    }
}

fn parse_role(messages: &[SimpleQueryMessage]) -> anyhow::Result<Role> {
    let row = messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .context("no row")?;
    let timeline: i64 = row.get(1).unwrap_or("0").parse().context("timeline")?;
    match row.get(0) {
        Some("f") => Ok(Role::Primary { timeline }),
        Some("t") => Ok(Role::Standby { timeline }),
        other => anyhow::bail!("pg_is_in_recovery() = {other:?}"),
    }
}

/// Poll every node's fence record; keep the changes.
async fn watch_fence_records(
    targets: Vec<RoleTarget>,
    clock: Clock,
    history: RoleHistory,
    stop: Arc<AtomicBool>,
) {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let paths: Vec<PathBuf> = targets
        .iter()
        .map(|t| fence_record_path(&t.data_dir))
        .collect();
    let mut last: Vec<Option<Option<u64>>> = vec![None; targets.len()];
    while !stop.load(Ordering::SeqCst) {
        for (i, t) in targets.iter().enumerate() {
            let text = std::fs::read_to_string(&paths[i]).unwrap_or_default();
            let deadline = parse_record(&text, &boot_id).and_then(|ms| clock.from_boottime_ms(ms));
            if last[i] != Some(deadline) {
                last[i] = Some(deadline);
                history
                    .fences
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(FenceObs {
                        node: t.name.clone(),
                        at: clock.now(),
                        deadline,
                    });
            }
        }
        tokio::time::sleep(PERIOD).await;
    }
}

/// `<data_dir>.pgbaton-fence` (the agent's fence record, beside the data directory).
pub fn fence_record_path(data_dir: &std::path::Path) -> PathBuf {
    let mut name = data_dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".pgbaton-fence");
    data_dir.with_file_name(name)
}

/// `<boot id> <ms | ->` written on boot `boot_id` → the deadline in ms of `CLOCK_BOOTTIME`.
pub fn parse_record(text: &str, boot_id: &str) -> Option<u64> {
    let mut words = text.split_whitespace();
    let (boot, deadline) = (words.next()?, words.next()?);
    if boot_id.is_empty() || boot != boot_id {
        return None;
    }
    deadline.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fence_records_parse_like_the_agent_writes_them() {
        assert_eq!(parse_record("b1 12345\n", "b1"), Some(12345));
        assert_eq!(parse_record("b1 -\n", "b1"), None, "nothing protected");
        assert_eq!(parse_record("b0 12345\n", "b1"), None, "another boot");
        assert_eq!(parse_record("", "b1"), None);
        assert_eq!(
            fence_record_path(std::path::Path::new("/t/node1/data")),
            PathBuf::from("/t/node1/data.pgbaton-fence")
        );
    }

    #[test]
    fn ticks_are_shared_by_all_nodes() {
        let p = PERIOD.as_nanos() as u64;
        assert_eq!(tick_at_or_after(0), 0);
        assert_eq!(tick_at_or_after(1), 1);
        assert_eq!(tick_at_or_after(p), 1);
        assert_eq!(tick_at_or_after(p + 1), 2);
    }
}
