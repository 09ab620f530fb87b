//! Deterministic simulation of a pgbaton cluster (design.md §6, tier 2).
//!
//! 3–5 members, each running the real agent code — `ha::Agent::cycle` (and through it
//! `baton_core::decide`), `lease::LeaseKeeper`, `fence::run_fencer` — over the in-memory DCS
//! (`baton_dcs_mem::MemDcs`, behind a simulated network, `SimDcs`) and a model of PostgreSQL
//! ([`model`]: WAL, timelines, streaming, promote, pg_rewind, pg_basebackup, crashes,
//! `synchronous_standby_names`). Everything runs on one current-thread tokio runtime with
//! paused time: virtual seconds cost microseconds, and a seed replays the same run (checked
//! by running a seed twice and comparing the traces).
//!
//! A run: all members start with empty data directories and bootstrap; then rounds of seeded
//! faults ([`faults`]) each followed by a heal and a convergence check; then writes stop, the
//! standbys drain, and the final state is checked. A client writes to whichever node accepts
//! writes throughout (directly, not through HAProxy: the harshest client).
//!
//! The seed also picks the replication mode ([`SyncSetting`], from an RNG stream of its own, so
//! the rest of a seed's run does not depend on it): `synchronous_mode` off (4 in 10: exactly
//! the runs from before the simulator knew synchronous mode), on (priority, 3 in 10) or
//! quorum (3 in 10), `synchronous_mode_strict` on or off, and with 4 or more members
//! `synchronous_node_count` 1 or 2.
//!
//! # Invariants, exactly as checked
//!
//! 1. **At most one writable primary** — checked at every instant a node starts accepting
//!    writes (a start as primary or a promotion completes), against every other node accepting
//!    writes at that instant. A node accepts writes from the moment its postmaster is ready
//!    as a primary until a stop is requested (sessions end then) or it crashes.
//! 2. **Durable writes are never lost** (what asynchronous replication promises) — the durable
//!    prefix is the longest WAL prefix that was, at one instant, on every member at once (all
//!    members having a data directory). Every node that becomes writable must hold it
//!    (`DurableWriteLost`), and at the end every member must. Acknowledged writes outside it
//!    may be lost by a failover (unless synchronous replication protects them, 6); they are
//!    counted (`Stats::lost`), not failed.
//! 3. **Convergence within a bound** — after each heal, within
//!    [`Params::convergence_bound`] (2·ttl + 4·loop_wait + 2·retry_timeout + 30 s): no etcd
//!    election running, the leader key names L, L accepts writes, nobody else does, and every
//!    other member runs PostgreSQL as a standby streaming from L (`NoConvergence`).
//! 4. **Final state** — after the last heal writes stop; within 20 s every member holds
//!    exactly the leader's WAL, which contains the durable prefix (`FinalStateMismatch`).
//! 5. **No leader outside `/sync`** (priority mode, `synchronous_mode: on`) — checked at the
//!    instant a member acquires the leader key, in the store, against `/sync` as the store held
//!    it just before (`LeaderOutsideSync`): when `/sync` names a `leader`, the acquirer must be
//!    that leader or listed in `sync_standby`. That instant, not the promotion, because the
//!    acquisition is the decision to become primary, taken on the `/sync` the racer read
//!    (only a key holder writes `/sync`, and a racer only after it won the key), whereas by the
//!    time the promotion completes the new leader has rewritten `/sync` to name itself
//!    (`before_promote`), which would make the check vacuous. No rule without `/sync` (before
//!    the first leader published it) or when it names no leader. Quorum mode lets any member
//!    with enough voters' support race, so it has no such rule: invariant 6 is its rule.
//! 6. **No acknowledged write lost in synchronous mode** (`synchronous_mode` on or quorum) — a
//!    write is *protected* when, at the instant the client heard "committed", `/sync` named
//!    the acknowledging node as its `leader` ([`model::Model::acknowledge`]). That covers
//!    strict and non-strict mode alike: a member listed in `/sync` holds every commit the
//!    leader acknowledged (it is published only once `synchronous_standby_names` waits for it
//!    and it flushed past the leader's position at that change, and unpublished before the
//!    leader stops waiting for it); with `sync_standby` empty (non-strict
//!    mode, acknowledging asynchronously, or `synchronous_standby_names` just emptied, which
//!    releases the waiting commits) only that leader itself may be promoted (`healthiest`:
//!    `NotSynchronous` in priority mode, no votes in quorum mode). Not protected: writes
//!    acknowledged before the leader first published `/sync` after the bootstrap. Every node
//!    that becomes writable (promotion or start as primary) must hold every protected write,
//!    and so must the final primary (`AckedWriteLost`). Commits whose outcome the client never
//!    learned (the server went away while they waited) are not acknowledged writes.
//!
//! The checker keeps its own copy of `/sync`, updated by the simulated DCS client at the store
//! in the same step as each successful write (nothing else writes it), so reading it does not
//! disturb the store (reads there expire leases).
//!
//! Each violation is diagnosed against the known pgbaton findings ([`Finding`]), so a run that
//! hits a known bug is told apart from a new one ([`OPEN_FINDINGS`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_config::Config;
use baton_core::{Mono, SyncMode};
use baton_dcs_mem::MemDcs;
use baton_ports::DcsScope;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

mod agent;
mod dcs;
pub mod faults;
mod log;
pub use baton_pg_model::model;
mod pause;
mod peers;
mod pg;
pub mod rng;
mod world;

pub use faults::{Fault, FaultKind, Round, Schedule, Target};
pub use model::{Finding, Violation, ViolationKind};

use crate::faults::Faults;
use crate::model::{Model, Phase, Role, Stream};
use crate::pause::Gate;
use crate::rng::Rng;
use crate::world::{AgentSlot, DcsLink, Net, SimClock, Trace, World};

/// pgbaton bugs and gaps the simulator found that are not fixed yet: a violation diagnosed as
/// one of these is "known" (`baton-sim --allow-known`, and the seed sweep in the tests). Drop
/// a finding from this list when its fix lands, so that its return is caught.
pub const OPEN_FINDINGS: &[Finding] = &[];

/// A deliberately broken cluster, for checking that the checker catches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broken {
    /// A member that cannot reach the leader over the member network treats the leader key
    /// as absent and takes it without compare-and-swap: it promotes without waiting for the
    /// old leader's lease to expire.
    Steal,
    /// In synchronous mode, a member racing for the leader key skips the `/sync` check: in
    /// priority mode it may be promoted without being listed in `/sync`, in quorum mode without
    /// the voters' support. (Emulated in the simulated DCS client: during a race the agent
    /// reads a `/sync` that lists it, with quorum 0. `healthiest` then neither returns
    /// `NotSynchronous` nor lacks votes; everything else it reads of `/sync` — the other
    /// members listed, the revision its compare-and-swap uses — is as stored.)
    SkipSyncCheck,
}

/// Synchronous replication as the members are configured (`bootstrap.dcs`, hence the
/// dynamic configuration every agent reads).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncSetting {
    /// `synchronous_mode`: off, on (priority) or quorum.
    pub mode: SyncMode,
    /// `synchronous_mode_strict`.
    pub strict: bool,
    /// `synchronous_node_count`.
    pub node_count: u32,
}

impl SyncSetting {
    pub const OFF: SyncSetting = SyncSetting {
        mode: SyncMode::Off,
        strict: false,
        node_count: 1,
    };

    pub fn describe(&self) -> String {
        match self.mode {
            SyncMode::Off => "synchronous_mode off".to_owned(),
            mode => format!(
                "synchronous_mode {}{}, synchronous_node_count {}",
                if mode == SyncMode::Quorum {
                    "quorum"
                } else {
                    "on (priority)"
                },
                if self.strict { ", strict" } else { "" },
                self.node_count
            ),
        }
    }
}

/// Fixes proposed for bugs the simulator found, emulated in the simulator's wiring so the
/// search can go on past them. Off by default: by default the simulator runs pgbaton as it is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fixes {
    /// Keep the fencer armed while the DCS cannot be read (`decide` keeps `was_leader` when
    /// `obs.dcs` is `None`), instead of disarming it on the first cycle that cannot read it.
    pub keep_fencer_armed_without_dcs: bool,
}

/// HA timing (the dynamic configuration): `ttl`, `loop_wait`, `retry_timeout` in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub ttl: u32,
    pub loop_wait: u32,
    pub retry_timeout: u32,
}

/// What to simulate. The seed decides everything not fixed here.
#[derive(Clone, Debug)]
pub struct Options {
    /// Members (3–5).
    pub nodes: usize,
    /// Fault rounds after the bootstrap.
    pub rounds: usize,
    /// Also inject the faults only the fence guard survives (agent paused for longer than the
    /// ttl, or down past its lease, while PostgreSQL runs on).
    pub unsafe_faults: bool,
    pub broken: Option<Broken>,
    pub fixes: Fixes,
    /// A fixed schedule instead of a generated one.
    pub schedule: Option<Schedule>,
    /// Fixed timing instead of one chosen by the seed.
    pub timing: Option<Timing>,
    /// Fixed synchronous replication settings instead of ones chosen by the seed.
    pub sync: Option<SyncSetting>,
    /// Echo the trace to stderr as it is written.
    pub echo: bool,
    /// `failsafe_mode: true` in the dynamic configuration.
    pub failsafe: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            nodes: 3,
            rounds: 3,
            unsafe_faults: false,
            broken: None,
            fixes: Fixes::default(),
            schedule: None,
            timing: None,
            sync: None,
            echo: false,
            failsafe: false,
        }
    }
}

/// Everything derived from the seed and the options before the run starts.
#[derive(Clone, Debug)]
pub struct Params {
    pub names: Vec<String>,
    pub configs: Vec<Config>,
    pub ttl: u32,
    pub loop_wait: u32,
    pub retry_timeout: u32,
    /// Client writes come every `lo..=hi` ms.
    pub write_every: (u64, u64),
    /// Records a standby copies per replication tick (50 ms).
    pub repl_batch: usize,
    pub sync: SyncSetting,
}

impl Params {
    pub fn describe(&self) -> String {
        format!(
            "{} members, ttl {} loop_wait {} retry_timeout {}, {}, a write every {}..{} ms, replication {} records/50 ms",
            self.names.len(),
            self.ttl,
            self.loop_wait,
            self.retry_timeout,
            self.sync.describe(),
            self.write_every.0,
            self.write_every.1,
            self.repl_batch
        )
    }

    /// How long after the faults stop the cluster may take to be healthy again: a dead
    /// leader's lease runs out (ttl), the survivors notice, probe each other and race (a
    /// couple of loops and DCS timeouts), the winner promotes, the others rewind or re-clone
    /// and follow; plus room for failed attempts and their back-off.
    pub fn convergence_bound(&self) -> Duration {
        Duration::from_secs(u64::from(
            2 * self.ttl + 4 * self.loop_wait + 2 * self.retry_timeout + 30,
        ))
    }
}

/// Counts for one run.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub virtual_time: Duration,
    /// Writes acknowledged to the client.
    pub acked: usize,
    /// Attempts while no node accepted writes.
    pub unavailable: usize,
    /// Commits whose outcome the client never learned (the server went away while a
    /// synchronous commit waited).
    pub indeterminate: usize,
    /// Acknowledged writes missing from the final primary (async replication: expected when
    /// a failover happens while standbys lag).
    pub lost: usize,
    /// Acknowledged writes that were on every member at some instant.
    pub durable: usize,
    /// Acknowledged writes under the synchronous-replication guarantee (never to be lost).
    pub protected: usize,
    pub promotions: u64,
    /// Time from each heal to convergence.
    pub convergence: Vec<Duration>,
}

pub struct Outcome {
    pub seed: u64,
    pub params: Params,
    pub schedule: Schedule,
    pub violations: Vec<Violation>,
    pub stats: Stats,
    pub trace: Vec<String>,
    pub trace_hash: u64,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// Every violation is one of [`OPEN_FINDINGS`].
    pub fn only_known(&self) -> bool {
        self.violations
            .iter()
            .all(|v| v.finding.is_some_and(|f| OPEN_FINDINGS.contains(&f)))
    }

    /// Seed, parameters, schedule, violations and the last `tail` trace lines (all with 0).
    pub fn report(&self, tail: usize) -> String {
        let mut out = format!(
            "seed {}: {}\n{}\nschedule:\n{}",
            self.seed,
            if self.ok() { "ok" } else { "FAILED" },
            self.params.describe(),
            self.schedule
        );
        for v in &self.violations {
            out.push_str(&format!(
                "violation at {}: {:?}: {}\n",
                v.at, v.kind, v.detail
            ));
            match v.finding {
                Some(f) => out.push_str(&format!("  diagnosis: {f}\n")),
                None => out.push_str("  diagnosis: none (not a known finding)\n"),
            }
        }
        out.push_str(&format!("stats: {:?}\n", self.stats));
        let skip = if tail == 0 {
            0
        } else {
            self.trace.len().saturating_sub(tail)
        };
        out.push_str(&format!(
            "trace ({} lines{}):\n",
            self.trace.len(),
            if skip > 0 {
                format!(", last {tail}")
            } else {
                String::new()
            }
        ));
        for line in &self.trace[skip..] {
            out.push_str(line);
            out.push('\n');
        }
        out
    }
}

fn node_yaml(i: usize, t: Timing, sync: SyncSetting, failsafe: bool) -> String {
    let n = i + 1;
    // Nothing when off: the configuration (and so the run) is what it was before the
    // simulator knew synchronous mode.
    let sync = match sync.mode {
        SyncMode::Off => String::new(),
        mode => format!(
            "    synchronous_mode: {}\n    synchronous_mode_strict: {}\n    synchronous_node_count: {}\n",
            if mode == SyncMode::Quorum {
                "quorum"
            } else {
                "true"
            },
            sync.strict,
            sync.node_count
        ),
    };
    let sync = if failsafe {
        format!("{sync}    failsafe_mode: true\n")
    } else {
        sync
    };
    format!(
        "\
scope: sim
namespace: /service
name: n{n}
restapi:
  listen: 127.0.0.1:{api}
  connect_address: 10.0.0.{n}:8008
etcd3:
  host: 127.0.0.1:2379
bootstrap:
  dcs:
    ttl: {ttl}
    loop_wait: {lw}
    retry_timeout: {rt}
    maximum_lag_on_failover: 1048576
{sync}    postgresql:
      use_pg_rewind: true
      use_slots: true
postgresql:
  listen: 10.0.0.{n}:5432
  connect_address: 10.0.0.{n}:5432
  data_dir: /sim/n{n}
  remove_data_directory_on_rewind_failure: true
  authentication:
    superuser:
      username: postgres
      password: sim
    replication:
      username: replicator
      password: sim
",
        api = 8008 + n,
        ttl = t.ttl,
        lw = t.loop_wait,
        rt = t.retry_timeout,
    )
}

/// The parameters and schedule of `seed` under `opts`.
pub fn plan(seed: u64, opts: &Options) -> (Params, Schedule) {
    let mut rng = Rng::stream(seed, 1);
    let timing = opts.timing.unwrap_or_else(|| match rng.below(10) {
        0..=4 => Timing {
            ttl: 10,
            loop_wait: 2,
            retry_timeout: 4,
        },
        5..=7 => Timing {
            ttl: 5,
            loop_wait: 1,
            retry_timeout: 2,
        },
        _ => Timing {
            ttl: 30,
            loop_wait: 10,
            retry_timeout: 10,
        },
    });
    let nodes = opts.nodes.clamp(2, 9);
    // From a stream of its own, so that the timing, workload and schedule of a seed are what
    // they were before synchronous mode was drawn (a seed drawing `off` replays as before).
    let sync = opts.sync.unwrap_or_else(|| {
        let mut r = Rng::stream(seed, 5);
        let mode = match r.below(10) {
            0..=3 => SyncMode::Off,
            4..=6 => SyncMode::Priority,
            _ => SyncMode::Quorum,
        };
        let strict = r.chance(50);
        let two = r.chance(50);
        match mode {
            SyncMode::Off => SyncSetting::OFF,
            mode => SyncSetting {
                mode,
                strict,
                node_count: if nodes >= 4 && two { 2 } else { 1 },
            },
        }
    });
    let configs: Vec<Config> = (0..nodes)
        .map(|i| {
            baton_config::load_str(&node_yaml(i, timing, sync, opts.failsafe), &|_| None)
                .expect("the simulator's configuration is valid")
                .config
        })
        .collect();
    let write_lo = rng.range(20, 80);
    let params = Params {
        names: configs.iter().map(|c| c.name.clone()).collect(),
        configs,
        ttl: timing.ttl,
        loop_wait: timing.loop_wait,
        retry_timeout: timing.retry_timeout,
        write_every: (write_lo, write_lo + rng.range(0, 120)),
        repl_batch: rng.range(4, 20) as usize,
        sync,
    };
    let schedule = match &opts.schedule {
        Some(s) => s.clone(),
        None => faults::generate(&mut rng, &params, opts.rounds, opts.unsafe_faults),
    };
    (params, schedule)
}

/// Run one seed to the end (or shortly after the first violation).
pub fn run(seed: u64, opts: &Options) -> Outcome {
    let (params, schedule) = plan(seed, opts);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    let trace = Arc::new(Mutex::new(Trace {
        lines: Vec::new(),
        echo: opts.echo,
    }));
    let (violations, stats) = rt.block_on(async {
        let clock = Arc::new(SimClock::new());
        let _log = tracing::subscriber::set_default(log::subscriber(
            trace.clone(),
            clock.clone(),
            params.names.clone(),
        ));
        let n = params.names.len();
        let scope = DcsScope {
            namespace: "/service".into(),
            scope: "sim".into(),
        };
        let mut model = Model::new(
            (0..n)
                .map(|i| (params.names[i].clone(), format!("10.0.0.{}", i + 1)))
                .collect(),
        );
        model.sync_mode = params.sync.mode;
        let w = Arc::new(World {
            params: params.clone(),
            broken: opts.broken,
            fixes: opts.fixes,
            store: MemDcs::new(scope, clock.clone()),
            clock,
            model: Mutex::new(model),
            net: Mutex::new(Net {
                dcs: vec![DcsLink::Up; n],
                dcs_slow: vec![None; n],
                cuts: Default::default(),
                election: false,
                max_lease: 0,
                pg_slow: vec![false; n],
            }),
            agents: Mutex::new(
                (0..n)
                    .map(|_| AgentSlot {
                        running: false,
                        gate: Arc::new(Gate::default()),
                        tasks: Vec::new(),
                        snapshot: None,
                        incarnation: 0,
                        started_at: Mono::default(),
                        armed: false,
                        disarmed_without_dcs: false,
                        owns_key: false,
                        fence_record: Arc::default(),
                        guard: None,
                        failsafe_inbox: Default::default(),
                    })
                    .collect(),
            ),
            trace: trace.clone(),
            delays: Mutex::new(Rng::stream(seed, 2)),
            debug_rng: std::env::var_os("BATON_SIM_DEBUG_RNG").is_some(),
            pg_changed: Notify::new(),
            violated: watch::channel(0).0,
            election_over: Notify::new(),
            dcs_changes: (0..n).map(|_| watch::channel(0).0).collect(),
        });
        tokio::spawn(w.clone().forward_store_changes());
        let stats = drive(&w, seed, &schedule).await;
        let violations = w.model().violations.clone();
        (violations, stats)
    });
    drop(rt);
    let trace = std::mem::take(&mut *trace.lock().unwrap_or_else(|p| p.into_inner()));
    Outcome {
        seed,
        params,
        schedule,
        violations,
        stats,
        trace_hash: trace.hash(),
        trace: trace.lines,
    }
}

/// Sleep until `at`; `false` when an invariant broke meanwhile.
async fn sleep_until(w: &World, at: Instant) -> bool {
    let mut violated = w.violated.subscribe();
    if *violated.borrow_and_update() > 0 {
        return false;
    }
    tokio::select! {
        biased;
        _ = violated.changed() => false,
        _ = tokio::time::sleep_until(at) => true,
    }
}

/// The shape the cluster must reach after faults stop: no fault machinery in force, every
/// agent up; the leader key names L; L accepts writes and nobody else does; every other
/// member runs PostgreSQL as a standby streaming from L.
fn converged(w: &World) -> Result<usize, String> {
    if w.net().election {
        return Err("etcd election in progress".to_owned());
    }
    let Some(l) = w.leader() else {
        return Err("no leader key".to_owned());
    };
    let m = w.model();
    if !m.nodes[l].accepts_writes() {
        return Err(format!("leader {} does not accept writes", m.nodes[l].name));
    }
    for (j, node) in m.nodes.iter().enumerate() {
        if j == l {
            continue;
        }
        let ok = node.proc.as_ref().is_some_and(|p| {
            p.phase == Phase::Ready
                && p.role == Role::Standby
                && p.upstream == Some(l)
                && p.stream == Stream::Streaming
        });
        if !ok {
            return Err(format!(
                "{} is {} and not streaming from the leader",
                node.name,
                node.label()
            ));
        }
    }
    Ok(l)
}

/// Wait for [`converged`] within `bound`; a violation when it does not come.
async fn converge(w: &World, what: &str, bound: Duration, stats: &mut Stats) -> Option<usize> {
    let start = Instant::now();
    loop {
        let last = match converged(w) {
            Ok(l) => {
                let took = start.elapsed();
                stats.convergence.push(took);
                w.log(
                    "CHECK",
                    &format!(
                        "{what}: converged after {:.1}s, leader {}",
                        took.as_secs_f64(),
                        w.name(l)
                    ),
                );
                return Some(l);
            }
            Err(why) => why,
        };
        if start.elapsed() >= bound {
            let detail = format!(
                "{what}: not converged {}s after the faults stopped ({last})\n{}",
                bound.as_secs(),
                w.summary()
            );
            w.violation(ViolationKind::NoConvergence, detail);
            return None;
        }
        if !sleep_until(w, Instant::now() + Duration::from_millis(250)).await {
            return None;
        }
    }
}

fn spawn_background(w: &Arc<World>, seed: u64, writing: watch::Receiver<bool>) {
    // etcd's lessor: expire due leases (and tell the watchers) twice a second.
    let lw = w.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if !lw.net().election {
                lw.store.expire_due_leases();
            }
        }
    });
    // Replication: every 50 ms each streaming standby copies up to `repl_batch` records.
    let rw = w.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let cuts = rw.net().cuts.clone();
            let reachable = |a: usize, b: usize| !cuts.contains(&(a.min(b), a.max(b)));
            let now = rw.now();
            let batch = rw.params.repl_batch;
            rw.with_model(|m| m.replicate(batch, &reachable, now));
        }
    });
    // The client: one write at a time to whichever node accepts writes.
    let cw = w.clone();
    tokio::spawn(async move {
        let mut rng = Rng::stream(seed, 3);
        let mut unavailable = 0usize;
        let mut target: Option<usize> = None;
        let (lo, hi) = cw.params.write_every;
        loop {
            tokio::time::sleep(rng.ms(lo, hi)).await;
            if !*writing.borrow() {
                continue;
            }
            let now = cw.now();
            let pick = rng.next_u64();
            let pending = cw.with_model(|m| {
                let nodes = m.writable_nodes();
                if nodes.is_empty() {
                    return None;
                }
                let i = nodes[(pick % nodes.len() as u64) as usize];
                Some(m.begin_write(i))
            });
            let wrote = match pending {
                Some(p) => {
                    // Asynchronous replication answers at once; a synchronous commit waits
                    // for its standbys (the client gives up after 30 s: unknown outcome).
                    let give_up = Instant::now() + Duration::from_secs(30);
                    loop {
                        let state = cw.model().commit_state(&p);
                        match state {
                            Some(true) => {
                                let now = cw.now();
                                cw.model().acknowledge(&p, now);
                                break Some(p.node);
                            }
                            Some(false) => {
                                cw.model().indeterminate_writes += 1;
                                break Some(p.node);
                            }
                            None if Instant::now() >= give_up => {
                                cw.model().indeterminate_writes += 1;
                                break Some(p.node);
                            }
                            None => tokio::time::sleep(Duration::from_millis(10)).await,
                        }
                    }
                }
                None => None,
            };
            let _ = now;
            match wrote {
                None => unavailable += 1,
                Some(i) if target != Some(i) => {
                    cw.log(
                        "CLIENT",
                        &format!(
                            "writes now acknowledged by {} ({unavailable} attempts found no writable node before)",
                            cw.name(i)
                        ),
                    );
                    unavailable = 0;
                    target = Some(i);
                }
                Some(_) => {}
            }
            if wrote.is_none() && target.is_some() {
                cw.log("CLIENT", "no node accepts writes");
                target = None;
            }
            cw.model().unavailable_writes += usize::from(wrote.is_none());
        }
    });
}

async fn drive(w: &Arc<World>, seed: u64, schedule: &Schedule) -> Stats {
    let mut stats = Stats::default();
    let started = Instant::now();
    let (writing_tx, writing_rx) = watch::channel(true);
    spawn_background(w, seed, writing_rx);
    w.log("SIM", &format!("seed {seed}: {}", w.params.describe()));

    // Bootstrap: every member starts with an empty data directory, a little apart.
    let mut rng = Rng::stream(seed, 4);
    for i in 0..w.params.names.len() {
        tokio::time::sleep(rng.ms(0, 1_500)).await;
        agent::start(w, i);
    }
    let bound = w.params.convergence_bound() + Duration::from_secs(30);
    let mut ok = converge(w, "bootstrap", bound, &mut stats).await.is_some();

    let mut faults = Faults::default();
    for (k, round) in schedule.rounds.iter().enumerate() {
        if !ok {
            break;
        }
        w.log(
            "SIM",
            &format!(
                "round {k}: {}s of chaos, {} faults",
                round.chaos.as_secs(),
                round.faults.len()
            ),
        );
        let start = Instant::now();
        // (time, is_end, fault index): ends before starts at the same instant.
        let mut events: Vec<(Duration, bool, usize)> = Vec::new();
        for (f, fault) in round.faults.iter().enumerate() {
            events.push((fault.at, false, f));
            events.push((fault.at + fault.dur, true, f));
        }
        events.sort_by_key(|&(t, end, f)| (t, !end, f));
        let mut handles = vec![None; round.faults.len()];
        for (t, end, f) in events {
            if !sleep_until(w, start + t).await {
                ok = false;
                break;
            }
            if end {
                if let Some(h) = handles[f].take() {
                    faults.end(w, h);
                }
            } else {
                let fault = &round.faults[f];
                handles[f] = faults.start(w, &fault.kind, fault.dur);
            }
        }
        if !ok || !sleep_until(w, start + round.chaos).await {
            ok = false;
            break;
        }
        faults.heal_all(w);
        let bound = w.params.convergence_bound();
        ok = converge(w, &format!("round {k}"), bound, &mut stats)
            .await
            .is_some()
            && sleep_until(w, Instant::now() + Duration::from_secs(5)).await;
    }

    if ok {
        faults.heal_all(w);
        final_check(w, &writing_tx).await;
    } else {
        // Let the aftermath of a violation show in the trace, then stop.
        faults.heal_all(w);
        tokio::time::sleep(Duration::from_secs(3)).await;
        w.log(
            "SIM",
            &format!("stopped after a violation\n{}", w.summary()),
        );
    }

    let m = w.model();
    stats.virtual_time = started.elapsed();
    stats.acked = m.writes_total();
    stats.unavailable = m.unavailable_writes;
    stats.indeterminate = m.indeterminate_writes;
    stats.durable = m.durable_writes();
    stats.protected = m.protected_writes();
    stats.promotions = m.promotions;
    stats.lost = m.final_lost;
    stats
}

/// Writes stop, the standbys catch up, and then: every member holds exactly the primary's
/// WAL; the durable prefix is in it (the model checks that on every promotion too); the
/// writes missing from it are counted as async losses.
async fn final_check(w: &Arc<World>, writing: &watch::Sender<bool>) {
    writing.send_replace(false);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut stats = Stats::default();
    loop {
        let Some(l) = converge(w, "final", Duration::from_secs(60), &mut stats).await else {
            return;
        };
        let caught_up = {
            let m = w.model();
            let lead = m.nodes[l].data.as_ref().map(|d| d.wal.len());
            m.nodes
                .iter()
                .all(|n| n.data.as_ref().map(|d| d.wal.len()) == lead)
        };
        if caught_up {
            let m = w.model();
            let lead = m.nodes[l].data.as_ref().expect("the leader has data");
            let mut problems = Vec::new();
            for n in &m.nodes {
                let d = n.data.as_ref().expect("caught up");
                if d.wal.last().map(|r| r.id) != lead.wal.last().map(|r| r.id) {
                    problems.push(format!("{} holds different WAL than the leader", n.name));
                }
            }
            let (len, last) = m.durable;
            if len > 0 && lead.wal.get(len - 1).map(|r| r.id) != Some(last) {
                problems.push(format!(
                    "the leader lacks the durable prefix up to {}",
                    model::lsn_of(len)
                ));
            }
            let lost = m.lost_writes(l).len();
            let (acked, durable) = (m.writes_total(), m.durable_writes());
            let protected = m.protected_writes();
            drop(m);
            let now = w.now();
            w.with_model(|m| {
                m.final_lost = lost;
                m.check_protected_final(l, now);
            });
            let sync = if w.params.sync.mode == SyncMode::Off {
                String::new()
            } else {
                format!(" {protected} under synchronous replication,")
            };
            w.log(
                "CHECK",
                &format!(
                    "final: {acked} writes acknowledged, {durable} of them durable,{sync} {lost} lost to async failovers"
                ),
            );
            if !problems.is_empty() {
                w.violation(ViolationKind::FinalStateMismatch, problems.join("; "));
            }
            return;
        }
        if Instant::now() >= deadline {
            w.violation(
                ViolationKind::FinalStateMismatch,
                format!(
                    "standbys did not catch up within 20s of the last write\n{}",
                    w.summary()
                ),
            );
            return;
        }
        if !sleep_until(w, Instant::now() + Duration::from_millis(200)).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
