//! A background sampler for the "at most one primary" diagnostic (chaos plan §7.5 C5).
//!
//! Every 100 ms it asks every node, concurrently, `SELECT pg_is_in_recovery()` and
//! `GET /primary`, and reads the leader key. A round in which two nodes answer SQL as a
//! primary, or two agents answer 200 on `/primary`, is a violation. Sampling is not a proof
//! (two primaries between samples go unseen), but any sample it flags is a real defect.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_postgres::Client;

use crate::etcd::EtcdClient;
use crate::pg::{PgTarget, simple_query};

/// What the sampler watches on one node.
#[derive(Clone, Debug)]
pub struct SampleTarget {
    pub name: String,
    pub pg: PgTarget,
    pub rest_base: String,
}

/// One round with more than one primary.
#[derive(Clone, Debug)]
pub struct Violation {
    /// Since the sampler started.
    pub at: Duration,
    /// Nodes that answered `pg_is_in_recovery() = false`.
    pub sql_primaries: Vec<String>,
    /// Agents that answered 200 on `/primary`.
    pub rest_primaries: Vec<String>,
}

/// What the sampler saw.
#[derive(Clone, Debug, Default)]
pub struct SampleReport {
    pub rounds: u64,
    pub violations: Vec<Violation>,
    /// Leader-key values in the order seen (consecutive duplicates removed), with the time
    /// since the sampler started. `None` = no leader key.
    pub leader_history: Vec<(Duration, Option<String>)>,
    /// Nodes seen answering SQL as primaries, in order of first sighting.
    pub primaries_seen: Vec<String>,
}

impl SampleReport {
    /// Distinct leader-key holders, in order of appearance.
    pub fn leaders(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (_, l) in &self.leader_history {
            if let Some(l) = l
                && !out.contains(l)
            {
                out.push(l.clone());
            }
        }
        out
    }
}

/// A running sampler; [`PrimarySampler::stop`] ends it and returns the report.
#[derive(Debug)]
pub struct PrimarySampler {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
    seen: Arc<Mutex<Vec<String>>>,
    handle: JoinHandle<SampleReport>,
}

const ROUND: Duration = Duration::from_millis(100);
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

impl PrimarySampler {
    /// Start sampling `targets`; with `leader_key`, also record the leader key's history.
    pub fn start(targets: Vec<SampleTarget>, leader_key: Option<(EtcdClient, String)>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let shared = Shared {
            stop: stop.clone(),
            rounds: rounds.clone(),
            seen: seen.clone(),
        };
        let handle = tokio::spawn(async move { run(targets, leader_key, shared).await });
        PrimarySampler {
            stop,
            rounds,
            seen,
            handle,
        }
    }

    /// Wait until the sampler has seen `name` answer SQL as a primary (so the state before
    /// a fault is on record before the fault is injected).
    pub async fn wait_seen_primary(&self, name: &str, timeout: Duration) -> anyhow::Result<()> {
        crate::wait::wait_until(
            &format!("the sampler to see {name} as a primary"),
            timeout,
            || async {
                Ok(self
                    .seen
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .any(|s| s == name))
            },
        )
        .await
    }

    /// Rounds completed so far.
    pub fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::SeqCst)
    }

    /// Wait until `n` rounds are complete (e.g. one, so that the state before a fault is on
    /// record before the fault is injected).
    pub async fn wait_rounds(&self, n: u64, timeout: Duration) -> anyhow::Result<()> {
        crate::wait::wait_until(&format!("{n} sampler rounds"), timeout, || async {
            Ok(self.rounds() >= n)
        })
        .await
    }

    /// Stop and return what was seen.
    pub async fn stop(self) -> SampleReport {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.await.unwrap_or_default()
    }
}

/// State shared between the sampler task and its handle.
struct Shared {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
    seen: Arc<Mutex<Vec<String>>>,
}

async fn run(
    targets: Vec<SampleTarget>,
    leader_key: Option<(EtcdClient, String)>,
    shared: Shared,
) -> SampleReport {
    let start = Instant::now();
    let http = crate::node::http_client();
    let mut clients: Vec<Option<Client>> = targets.iter().map(|_| None).collect();
    let mut report = SampleReport::default();
    let mut tick = tokio::time::interval(ROUND);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !shared.stop.load(Ordering::SeqCst) {
        tick.tick().await;
        let at = start.elapsed();
        let sql = futures::future::join_all(
            targets
                .iter()
                .zip(clients.iter_mut())
                .map(|(t, c)| is_sql_primary(t, c)),
        );
        let rest = futures::future::join_all(targets.iter().map(|t| {
            let http = http.clone();
            async move {
                let url = format!("{}/primary", t.rest_base);
                matches!(
                    tokio::time::timeout(PROBE_TIMEOUT, http.get(&url).send()).await,
                    Ok(Ok(r)) if r.status().as_u16() == 200
                )
            }
        }));
        let leader = async {
            match &leader_key {
                Some((etcd, key)) => {
                    match tokio::time::timeout(PROBE_TIMEOUT, etcd.get(key)).await {
                        Ok(Ok(kv)) => Some(kv.map(|kv| kv.value)),
                        _ => None, // unknown this round
                    }
                }
                None => None,
            }
        };
        let (sql, rest, leader) = tokio::join!(sql, rest, leader);
        report.rounds += 1;
        let names = |flags: &[bool]| -> Vec<String> {
            targets
                .iter()
                .zip(flags)
                .filter(|(_, f)| **f)
                .map(|(t, _)| t.name.clone())
                .collect()
        };
        let (sql_primaries, rest_primaries) = (names(&sql), names(&rest));
        for p in &sql_primaries {
            if !report.primaries_seen.contains(p) {
                report.primaries_seen.push(p.clone());
                shared
                    .seen
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(p.clone());
            }
        }
        if sql_primaries.len() > 1 || rest_primaries.len() > 1 {
            report.violations.push(Violation {
                at,
                sql_primaries,
                rest_primaries,
            });
        }
        if let Some(leader) = leader
            && report.leader_history.last().map(|(_, l)| l) != Some(&leader)
        {
            report.leader_history.push((at, leader));
        }
        shared.rounds.fetch_add(1, Ordering::SeqCst);
    }
    report
}

/// `true` if the node answers `pg_is_in_recovery() = false`; any failure counts as "not a
/// primary" (a dead node cannot accept writes). The connection is kept between rounds.
async fn is_sql_primary(target: &SampleTarget, client: &mut Option<Client>) -> bool {
    if client.as_ref().is_none_or(Client::is_closed) {
        *client = target.pg.connect_with_timeout(PROBE_TIMEOUT).await.ok();
    }
    let Some(c) = client.as_ref() else {
        return false;
    };
    match tokio::time::timeout(PROBE_TIMEOUT, simple_query(c, "SELECT pg_is_in_recovery()")).await {
        Ok(Ok(rows)) => rows.first().and_then(|r| r.first()) == Some(&Some("f".to_owned())),
        _ => {
            *client = None;
            false
        }
    }
}
