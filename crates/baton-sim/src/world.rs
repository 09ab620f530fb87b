//! Shared state of one simulated run: the virtual clock, the network (who can reach the DCS
//! and whom), the PostgreSQL model, the agent processes, the seeded delay source and the trace.
//!
//! Everything runs on one current-thread tokio runtime with paused time, so the locks here are
//! never contended; they exist because the adapter traits want `Send + Sync` values. No lock is
//! held across an `.await`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

use baton_api::Snapshot;
use baton_core::{Clock, Mono};
use baton_dcs_mem::MemDcs;
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::model::{Finding, Model, Stream, Violation, ViolationKind};
use crate::pause::Gate;
use crate::rng::Rng;
use crate::{Broken, Fixes, Params};

/// Milliseconds of tokio's paused clock since the start of the run.
pub(crate) struct SimClock {
    origin: Instant,
}

impl SimClock {
    pub(crate) fn new() -> SimClock {
        SimClock {
            origin: Instant::now(),
        }
    }
}

impl Clock for SimClock {
    fn now(&self) -> Mono {
        Mono::from_millis(u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    /// Virtual wall time: a fixed epoch plus the virtual time elapsed, so that a scheduled
    /// switchover fires at the same virtual moment in every run of a seed.
    fn unix_ms(&self) -> i64 {
        SIM_EPOCH_MS + i64::try_from(self.origin.elapsed().as_millis()).unwrap_or(i64::MAX / 2)
    }
}

/// The simulator's wall clock at virtual time zero: 2026-11-22T05:00:00Z.
pub(crate) const SIM_EPOCH_MS: i64 = 1_795_323_600_000;

/// How one member reaches the DCS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DcsLink {
    Up,
    /// Connection refused: calls fail fast.
    Refused,
    /// Packets dropped: calls hang until the client's request timeout.
    Blackhole,
}

pub(crate) struct Net {
    pub(crate) dcs: Vec<DcsLink>,
    /// Extra one-way latency range (ms) for a member's DCS calls.
    pub(crate) dcs_slow: Vec<Option<(u64, u64)>>,
    /// Unordered member pairs that cannot reach each other.
    pub(crate) cuts: BTreeSet<(usize, usize)>,
    /// An etcd leader election is in progress: requests wait, leases do not expire.
    pub(crate) election: bool,
    /// Highest lease ID granted so far (leases are numbered from 1).
    pub(crate) max_lease: i64,
    /// PostgreSQL operations of a member take much longer.
    pub(crate) pg_slow: Vec<bool>,
}

impl Net {
    pub(crate) fn reachable(&self, a: usize, b: usize) -> bool {
        a == b || !self.cuts.contains(&(a.min(b), a.max(b)))
    }
}

/// One member's agent process.
pub(crate) struct AgentSlot {
    /// The process runs (was started and not crashed).
    pub(crate) running: bool,
    pub(crate) gate: Arc<Gate>,
    pub(crate) tasks: Vec<AbortHandle>,
    /// What its REST API would answer from.
    pub(crate) snapshot: Option<watch::Receiver<Arc<Snapshot>>>,
    /// Incremented on every start.
    pub(crate) incarnation: u64,
    /// When the current process started.
    pub(crate) started_at: Mono,
    /// The fencer is armed (`leading` as the fencer sees it).
    pub(crate) armed: bool,
    /// The fencer was last disarmed on a cycle that could not read the DCS (finding F1).
    pub(crate) disarmed_without_dcs: bool,
    /// This process has put the leader key on its own lease (acquired or re-attached it).
    pub(crate) owns_key: bool,
    /// The fencing record beside the data directory: it survives the agent process.
    pub(crate) fence_record: Arc<baton_agent::fence::MemRecord>,
    /// The fence guard process the agent started (it survives the agent; ends on its own
    /// once nothing is left to guard).
    pub(crate) guard: Option<tokio::task::JoinHandle<()>>,
    /// The `POST /failsafe` requests its REST API accepted (failsafe mode).
    pub(crate) failsafe_inbox: baton_api::FailsafeInbox,
}

impl AgentSlot {
    pub(crate) fn paused(&self) -> bool {
        self.gate.is_paused()
    }
}

/// The trace: every line is `time who text`. Kept whole (a run is minutes of virtual time).
#[derive(Default)]
pub(crate) struct Trace {
    pub(crate) lines: Vec<String>,
    /// Echo lines to stderr as they come (`--verbose`).
    pub(crate) echo: bool,
}

impl Trace {
    pub(crate) fn push(&mut self, at: Mono, who: &str, text: &str) {
        let mut line = String::with_capacity(text.len() + 24);
        let _ = write!(line, "{:>10} {:<5} {text}", at.to_string(), who);
        if self.echo {
            eprintln!("{line}");
        }
        self.lines.push(line);
    }

    pub(crate) fn hash(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.lines.hash(&mut h);
        h.finish()
    }
}

pub(crate) struct World {
    pub(crate) params: Params,
    pub(crate) broken: Option<Broken>,
    pub(crate) fixes: Fixes,
    pub(crate) clock: Arc<SimClock>,
    /// The store itself (server side; never cut off).
    pub(crate) store: MemDcs,
    pub(crate) model: Mutex<Model>,
    pub(crate) net: Mutex<Net>,
    pub(crate) agents: Mutex<Vec<AgentSlot>>,
    pub(crate) trace: Arc<Mutex<Trace>>,
    /// Log every delay draw with its call site (`BATON_SIM_DEBUG_RNG=1`), to find where two
    /// runs of one seed part ways.
    pub(crate) debug_rng: bool,
    /// Interleaving: operation delays and latencies.
    pub(crate) delays: Mutex<Rng>,
    /// Notified on every PostgreSQL state change, for callers waiting on one. (`Notify`, not
    /// `watch`: a `watch` with several waiters wakes them in a random order.)
    pub(crate) pg_changed: Notify,
    /// Bumped when an invariant breaks, so the driver can stop early.
    pub(crate) violated: watch::Sender<usize>,
    /// Notified when an etcd election ends (requests held during it go on).
    pub(crate) election_over: Notify,
    /// Per member: ticks after the store changed. Each has one waiter (that member's HA
    /// loop); [`World::forward_store_changes`] feeds them in member order.
    pub(crate) dcs_changes: Vec<watch::Sender<u64>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl World {
    pub(crate) fn now(&self) -> Mono {
        self.clock.now()
    }

    pub(crate) fn model(&self) -> MutexGuard<'_, Model> {
        lock(&self.model)
    }

    pub(crate) fn net(&self) -> MutexGuard<'_, Net> {
        lock(&self.net)
    }

    pub(crate) fn agents(&self) -> MutexGuard<'_, Vec<AgentSlot>> {
        lock(&self.agents)
    }

    #[track_caller]
    pub(crate) fn rng(&self) -> MutexGuard<'_, Rng> {
        if self.debug_rng {
            let loc = std::panic::Location::caller();
            self.log("RNG", &format!("{}:{}", loc.file(), loc.line()));
        }
        lock(&self.delays)
    }

    pub(crate) fn log(&self, who: &str, text: &str) {
        let now = self.now();
        lock(&self.trace).push(now, who, text);
    }

    /// Run `f` on the model, then move its events into the trace, diagnose new violations
    /// and wake waiters.
    pub(crate) fn with_model<T>(&self, f: impl FnOnce(&mut Model) -> T) -> T {
        let now = self.now();
        let (out, events, violations) = {
            let mut m = self.model();
            let before = m.violations.len();
            let out = f(&mut m);
            for k in before..m.violations.len() {
                let finding = self.diagnose(&m, &m.violations[k]);
                if let Some(f) = finding {
                    m.events
                        .push(("CHECK".to_owned(), format!("diagnosis: {f}")));
                }
                m.violations[k].finding = finding;
            }
            let events = std::mem::take(&mut m.events);
            (out, events, m.violations.len() - before)
        };
        if !events.is_empty() {
            let mut t = lock(&self.trace);
            for (who, text) in &events {
                t.push(now, who, text);
            }
            drop(t);
            self.pg_changed.notify_waiters();
        }
        if violations > 0 {
            self.violated.send_modify(|n| *n += violations);
        }
        out
    }

    /// Record a violation found outside the model (convergence, final state).
    pub(crate) fn violation(&self, kind: ViolationKind, detail: String) {
        let now = self.now();
        self.with_model(|m| m.violation(now, kind, detail, vec![]));
    }

    /// Which known finding, if any, explains `v`, judged from the state of the world at the
    /// moment it happened. Each test is specific to its bug: a violation that none matches
    /// is a new problem.
    fn diagnose(&self, m: &Model, v: &Violation) -> Option<Finding> {
        let agents = self.agents();
        match v.kind {
            ViolationKind::TwoWritablePrimaries => {
                let (new, old) = (*v.nodes.first()?, *v.nodes.get(1)?);
                let old_agent = &agents[old];
                let new_proc = m.nodes[new].proc.as_ref()?;
                if new_proc.promote_by != 0 && new_proc.promote_by < agents[new].incarnation {
                    return Some(Finding::OrphanedPromotion);
                }
                if !old_agent.running || old_agent.paused() {
                    return Some(Finding::NoWatchdog);
                }
                if old_agent.disarmed_without_dcs && !old_agent.armed {
                    return Some(Finding::FencerDisarmedWithoutDcs);
                }
                let since = m.nodes[old].writable_since?;
                if old_agent.started_at > since && !old_agent.owns_key {
                    return Some(Finding::RestartedAgentDoesNotFence);
                }
                None
            }
            ViolationKind::NoConvergence => {
                let diverged = |n: &&crate::model::Node| {
                    n.proc
                        .as_ref()
                        .is_some_and(|p| matches!(p.stream, Stream::Diverged(_)))
                };
                let behind_same_tl = m.nodes.iter().filter(diverged).any(|n| {
                    n.proc
                        .as_ref()
                        .and_then(|p| p.upstream)
                        .is_some_and(|u| m.nodes[u].primary_without_switch)
                });
                if behind_same_tl {
                    return Some(Finding::PrimaryWithoutTimelineSwitch);
                }
                // Before F5: a former primary that was rewound and then followed a leader onto
                // a timeline number another member reused is F7, not F5 (that one differs in
                // timeline from its upstream).
                let colliding = m.nodes.iter().filter(diverged).any(|n| {
                    let upstream = n.proc.as_ref().and_then(|p| p.upstream);
                    let tl = |node: &crate::model::Node| node.data.as_ref().map(|d| d.timeline());
                    upstream.is_some_and(|u| tl(n).is_some() && tl(n) == tl(&m.nodes[u]))
                });
                if colliding {
                    return Some(Finding::StandbyOnCollidingTimeline);
                }
                if m.nodes
                    .iter()
                    .filter(diverged)
                    .any(|n| n.standby_on_primary_dir)
                {
                    return Some(Finding::FormerPrimaryFollowsWithoutRewind);
                }
                let ahead_of_fork = m.nodes.iter().filter(diverged).any(|n| {
                    n.proc.as_ref().is_some_and(|p| {
                        matches!(&p.stream, Stream::Diverged(why) if why.starts_with("new timeline forked off"))
                    })
                });
                ahead_of_fork.then_some(Finding::StandbyAheadOfNewTimeline)
            }
            ViolationKind::AckedWriteLost => {
                // F3: the promotion completing now was requested by a dead agent, before
                // another member was promoted and acknowledged writes this node never got.
                let new = *v.nodes.first()?;
                let p = m.nodes[new].proc.as_ref()?;
                (p.promote_by != 0 && p.promote_by < agents[new].incarnation)
                    .then_some(Finding::OrphanedPromotion)
            }
            _ => None,
        }
    }

    /// The store's change signal, fanned out to one channel per member in a fixed order.
    pub(crate) async fn forward_store_changes(self: Arc<Self>) {
        let mut changes = baton_ports::Dcs::changes(&self.store);
        while changes.changed().await.is_ok() {
            changes.borrow_and_update();
            for tx in &self.dcs_changes {
                tx.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }

    /// Wait until `done` holds, re-checking after every PostgreSQL state change.
    pub(crate) async fn until_pg(&self, mut done: impl FnMut(&World) -> bool) {
        loop {
            let changed = self.pg_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if done(self) {
                return;
            }
            changed.await;
        }
    }

    pub(crate) fn name(&self, i: usize) -> &str {
        &self.params.names[i]
    }

    pub(crate) fn index_of(&self, name: &str) -> Option<usize> {
        self.params.names.iter().position(|n| n == name)
    }

    /// The member whose name is in the leader key (read on the server side, which also
    /// expires due leases as etcd's lessor would).
    pub(crate) fn leader(&self) -> Option<usize> {
        if self.net().election {
            return None;
        }
        let name = self.store.get_raw(baton_dcs_mem::record::LEADER)?;
        self.index_of(&name)
    }

    /// The member network: can `a` reach `b` (their agents' REST APIs and PostgreSQL)?
    pub(crate) fn reachable(&self, a: usize, b: usize) -> bool {
        self.net().reachable(a, b)
    }

    pub(crate) fn agent_answers(&self, i: usize) -> Answer {
        let agents = self.agents();
        let slot = &agents[i];
        if !slot.running {
            Answer::Refused
        } else if slot.paused() {
            Answer::Hangs
        } else {
            Answer::Up
        }
    }

    /// A multi-line picture of the cluster for failure reports.
    pub(crate) fn summary(&self) -> String {
        let mut out = self.model().summary();
        let leader = self.leader().map(|i| self.name(i).to_owned());
        let _ = writeln!(out, "leader key: {}", leader.as_deref().unwrap_or("-"));
        let agents = self.agents();
        for (i, slot) in agents.iter().enumerate() {
            let state = match (slot.running, slot.paused()) {
                (false, _) => "down",
                (true, true) => "paused",
                (true, false) => "up",
            };
            let reason = slot
                .snapshot
                .as_ref()
                .map(|s| s.borrow().last_reason.clone())
                .unwrap_or_default();
            let _ = writeln!(out, "agent {}: {state}: {reason}", self.name(i));
        }
        out
    }
}

/// How another member's REST API answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    Up,
    Refused,
    Hangs,
}
