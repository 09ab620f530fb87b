//! The PostgreSQL cluster model: every node's data directory (WAL as a list of records, each
//! with the timeline it was written on), its postmaster (stopped / starting / ready /
//! stopping, primary or standby, what it streams from), and the rules PostgreSQL applies to
//! streaming, promotion, `pg_rewind` and `pg_basebackup`.
//!
//! Synchronous and free of IO: the simulator's `SimPostgres` (and the agent's simulated mode,
//! [`crate::SimulatedPostgres`]) call into it under a lock and run the timed parts (a
//! postmaster getting ready, a promotion finishing) as tasks of their own.
//!
//! The model also keeps the books the invariants need: which nodes accept writes since when
//! (at most one at any instant), the acknowledged writes, the *durable prefix* — the WAL
//! that was at some instant on every member at once, which async replication promises never to
//! lose — and, in synchronous mode, a mirror of the DCS `/sync` key (kept by the simulated
//! DCS client on every successful write of it) to tell which acknowledged writes synchronous
//! replication promises to keep, and whether a member taking the leader key may.
//!
//! Records are only ever created by appending at the end of one node's WAL (with a fresh id)
//! and copied as prefixes (streaming, rewind, clone). So two nodes holding the same record id
//! at the same index hold identical WAL up to there; comparing one record decides whether one
//! WAL is a prefix of another.

use std::fmt::Write as _;

use baton_core::{
    ClusterState, ControlData, DataDir, HistoryLine, Lsn, Mono, PgProcess, PgSql, PgState,
    ReplicationRow, SyncMode, SyncState, Timeline, TimelineStart,
};

/// LSN of the first record.
pub const WAL_BASE: u64 = 0x0300_0000;
/// Bytes of WAL per record (one client write is one record), so `maximum_lag_on_failover`
/// (1 MiB by default) is 64 records.
pub const REC_BYTES: u64 = 0x4000;

/// The end LSN of a WAL with `len` records.
pub fn lsn_of(len: usize) -> Lsn {
    Lsn(WAL_BASE + len as u64 * REC_BYTES)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rec {
    /// Unique over the whole run.
    pub id: u64,
    pub tl: u32,
    /// The client write this record carries.
    pub write: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct Data {
    pub sysid: String,
    pub wal: Vec<Rec>,
    /// `pg_controldata` "Database cluster state".
    pub state: ClusterState,
    /// Records covered by the last checkpoint (its LSN is `lsn_of(checkpoint)`).
    pub checkpoint: usize,
    pub last_checkpoint_at: Mono,
}

impl Data {
    pub fn timeline(&self) -> u32 {
        self.wal.last().map_or(1, |r| r.tl)
    }

    pub fn flush(&self) -> Lsn {
        lsn_of(self.wal.len())
    }

    /// Timelines in order with the number of records each one ends at (the last one ends at
    /// the end of the WAL): what the timeline history file of the current timeline says.
    pub fn chain(&self) -> Vec<(u32, usize)> {
        let mut out: Vec<(u32, usize)> = Vec::new();
        for (i, r) in self.wal.iter().enumerate() {
            match out.last_mut() {
                Some((tl, end)) if *tl == r.tl => *end = i + 1,
                _ => out.push((r.tl, i + 1)),
            }
        }
        out
    }

    fn control(&self) -> ControlData {
        let ckpt_tl = self
            .wal
            .get(self.checkpoint.saturating_sub(1))
            .map_or(1, |r| r.tl);
        ControlData {
            system_id: self.sysid.clone(),
            state: self.state,
            timeline: Timeline(ckpt_tl),
            checkpoint_lsn: lsn_of(self.checkpoint),
            redo_lsn: lsn_of(self.checkpoint),
            min_recovery_end_lsn: Lsn(0),
            min_recovery_end_timeline: Timeline(0),
            rewindable: true,
        }
    }

    /// `other` holds our whole WAL as its prefix.
    fn is_prefix_of(&self, other: &Data) -> bool {
        match self.wal.len() {
            0 => true,
            n => other
                .wal
                .get(n - 1)
                .is_some_and(|r| r.id == self.wal[n - 1].id),
        }
    }

    fn checkpoint_now(&mut self, now: Mono) {
        self.checkpoint = self.wal.len();
        self.last_checkpoint_at = now;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Primary,
    Standby,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The postmaster runs but does not accept connections yet.
    Starting,
    Ready,
    /// Shutdown requested: sessions are gone, the postmaster has not exited yet.
    Stopping,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Not a standby, or a standby without upstream.
    Idle,
    /// Trying to connect (upstream down, unreachable, or behind us on our timeline).
    Waiting(String),
    Streaming,
    /// The upstream refuses our position or its WAL does not continue ours: this standby will
    /// never stream from it without a rewind or a re-clone.
    Diverged(String),
}

#[derive(Clone, Debug)]
pub struct Proc {
    pub pid: i32,
    pub generation: u64,
    pub role: Role,
    pub phase: Phase,
    pub promoting: bool,
    pub upstream: Option<usize>,
    pub stream: Stream,
    pub started: Mono,
    /// Started as a primary from a data directory that was a standby's: it comes up without a
    /// timeline switch.
    pub from_standby_dir: bool,
    /// The agent incarnation that asked for the (last) promotion.
    pub promote_by: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopKind {
    Fast,
    Immediate,
    /// The postmaster died (fault): like immediate, but nobody asked.
    Crash,
}

#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    /// Host part of `postgresql.connect_address`, how upstreams are named.
    pub host: String,
    pub data: Option<Data>,
    pub proc: Option<Proc>,
    /// What `standby.signal` / `primary_conninfo` on disk say (written by start and follow).
    pub conf_upstream: Option<usize>,
    pub slots: Vec<String>,
    /// Since when this node accepts writes.
    pub writable_since: Option<Mono>,
    /// `synchronous_standby_names` as configured (kept across restarts, like the
    /// configuration file it lives in). Empty: asynchronous replication.
    pub ssn: String,
    /// Runs as a standby on a data directory that was last a primary's, not rewound or
    /// re-cloned since.
    pub standby_on_primary_dir: bool,
    /// It became a primary by restarting a standby's data directory (no timeline switch),
    /// and has not been rewound, re-cloned or promoted since.
    pub primary_without_switch: bool,
}

impl Node {
    pub fn accepts_writes(&self) -> bool {
        self.proc
            .as_ref()
            .is_some_and(|p| p.role == Role::Primary && p.phase == Phase::Ready)
    }

    fn ready(&self) -> Option<&Proc> {
        self.proc.as_ref().filter(|p| p.phase == Phase::Ready)
    }

    /// One-word state for traces: `primary`, `standby`, `starting`, `stopping`, `stopped`, `empty`.
    pub fn label(&self) -> String {
        match (&self.proc, &self.data) {
            (_, None) => "empty".to_owned(),
            (None, Some(_)) => "stopped".to_owned(),
            (Some(p), _) => match (p.phase, p.role) {
                (Phase::Starting, _) => "starting".to_owned(),
                (Phase::Stopping, _) => "stopping".to_owned(),
                (Phase::Ready, Role::Primary) => "primary".to_owned(),
                (Phase::Ready, Role::Standby) if p.promoting => "promoting".to_owned(),
                (Phase::Ready, Role::Standby) => "standby".to_owned(),
            },
        }
    }
}

/// An acknowledged client write: where it landed.
#[derive(Clone, Copy, Debug)]
pub struct Write {
    pub id: u64,
    pub node: usize,
    pub index: usize,
    pub rec: u64,
    pub at: Mono,
    /// Acknowledged under the synchronous-replication guarantee: synchronous mode is on and
    /// `/sync` named the acknowledging node as its `leader` at that instant (see
    /// [`Model::acknowledge`]). Such a write must never be lost.
    pub protected: bool,
}

/// A broken invariant, with when and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub at: Mono,
    pub kind: ViolationKind,
    pub detail: String,
    /// Members involved: for two writable primaries, the one that just became writable first.
    pub nodes: Vec<usize>,
    /// The known pgbaton bug or gap this matches, when the checker recognises one.
    pub finding: Option<Finding>,
}

/// Known bugs and gaps in pgbaton that the simulator found, each recognised from the state
/// of the world when a violation happens (see `World::diagnose`), so a run that hits one is
/// told apart from a new problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Finding {
    /// F1: the old primary's agent disarmed its fencer on a cycle that could not read the DCS
    /// (`decide` clears `was_leader` when `obs.dcs` is `None`), and its loop was held up by DCS
    /// timeouts past the fencing deadline.
    FencerDisarmedWithoutDcs,
    /// F2: the old primary's agent was restarted while its PostgreSQL ran as primary, and had
    /// not put the leader key on its own lease when the old lease — whose deadline the new
    /// process does not know — expired: its fencer was not armed, or armed on the wrong lease.
    RestartedAgentDoesNotFence,
    /// F3: the new primary's promotion had been requested by an earlier incarnation of its
    /// agent (which died during `pg_ctl promote`); the restarted agent released the key and
    /// someone else was promoted before the orphaned promotion completed.
    OrphanedPromotion,
    /// F4: the leader restarted a standby data directory as a primary (its postmaster died
    /// during the promotion): no timeline switch, so the old primary's extra WAL on the same
    /// timeline is not rewound and it can never stream again.
    PrimaryWithoutTimelineSwitch,
    /// F5: a fenced former primary that found no leader was started as a standby without
    /// upstream (no rewind); when a leader appeared it was only re-pointed at it (`Follow`),
    /// never rewound, and can never stream from it.
    FormerPrimaryFollowsWithoutRewind,
    /// F6: a standby holds WAL past the point where the leader's timeline forked off its own
    /// (the leader race promoted a member with less WAL: peers' positions come from their
    /// last published snapshot, which can be seconds old) and pgbaton never rewinds a running
    /// standby, so it can never stream from the new leader.
    StandbyAheadOfNewTimeline,
    /// F7: a standby followed a leader onto timeline N; that leader died and another member
    /// (which had not seen N: stale peer positions) promoted into the same number N. The
    /// standby's WAL on N is not the new leader's N, it cannot stream, and pgbaton judged a
    /// running standby's divergence by timeline numbers only (pg_rewind could not fix it
    /// either: a re-clone is needed). Seeds 201590993582595 and 94581139171588 with
    /// `--unsafe-faults`. Fixed: a standby that does not stream compares where its own history
    /// has its timeline begin with the cluster's history (`baton_core::foreign_timeline`) and
    /// is re-cloned (`Reason::ForeignTimeline`).
    StandbyOnCollidingTimeline,
    /// The old primary's agent was frozen or not running while its PostgreSQL went on
    /// accepting writes past the lease: the fence guard should have stopped it (was the known
    /// no-watchdog gap before the guard).
    NoWatchdog,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Finding::FencerDisarmedWithoutDcs => {
                "F1: fencer disarmed on a cycle without a DCS view; the deadline passed while the loop waited on DCS timeouts"
            }
            Finding::RestartedAgentDoesNotFence => {
                "F2: restarted agent had not fenced its primary nor moved the key to its own lease when the old lease expired"
            }
            Finding::OrphanedPromotion => {
                "F3: a promotion requested by a dead agent completed after another member was promoted"
            }
            Finding::PrimaryWithoutTimelineSwitch => {
                "F4: standby data directory restarted as primary without a timeline switch; the old primary diverged on the same timeline"
            }
            Finding::FormerPrimaryFollowsWithoutRewind => {
                "F5: former primary started as a standby without upstream, later re-pointed at the new leader without pg_rewind; diverged"
            }
            Finding::StandbyAheadOfNewTimeline => {
                "F6: a member with less WAL won the race (stale peer positions); the standby ahead of the fork point is never rewound and diverged"
            }
            Finding::StandbyOnCollidingTimeline => {
                "F7: a standby's timeline number was reused by another member's promotion; running standbys are judged by timeline numbers only"
            }
            Finding::NoWatchdog => {
                "frozen or dead agent's primary writable past the lease: the fence guard did not stop it"
            }
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViolationKind {
    /// Two nodes accepted writes at the same instant.
    TwoWritablePrimaries,
    /// A node became writable without WAL that had been on every member.
    DurableWriteLost,
    /// The cluster did not reach a healthy shape within the bound after the faults stopped.
    NoConvergence,
    /// After convergence and drain the nodes do not hold the same WAL.
    FinalStateMismatch,
    /// Priority synchronous mode: a member took the leader key while `/sync` named a leader
    /// and listed neither it as `leader` nor in `sync_standby`.
    LeaderOutsideSync,
    /// Synchronous mode: a node became writable without, or the final primary lacks, a
    /// write acknowledged under the synchronous guarantee.
    AckedWriteLost,
}

/// Everything that happened which the trace should show, drained by the caller.
pub type Events = Vec<(String, String)>;

pub struct Model {
    pub nodes: Vec<Node>,
    next_rec: u64,
    next_write: u64,
    next_pid: i32,
    next_generation: u64,
    pub writes: Vec<Write>,
    /// Length and last record id of the durable prefix (on every member at one instant).
    pub durable: (usize, u64),
    pub violations: Vec<Violation>,
    /// Promotions completed (failovers and the bootstrap are not counted apart).
    pub promotions: u64,
    pub events: Events,
    /// Client attempts that found no writable node.
    pub unavailable_writes: usize,
    /// Commits whose outcome the client did not learn.
    pub indeterminate_writes: usize,
    /// Promotions while another running member had more WAL than the promoted one.
    pub promoted_behind: u64,
    /// Acknowledged writes missing from the final primary (set by the final check).
    pub final_lost: usize,
    /// The members' `synchronous_mode`.
    pub sync_mode: SyncMode,
    /// The DCS `/sync` key as last written (`None`: absent). Mirrored by the simulated DCS
    /// client at the store, in the same step as the write; nothing else writes `/sync`.
    pub sync_key: Option<SyncState>,
}

impl Model {
    pub fn new(nodes: Vec<(String, String)>) -> Model {
        Model {
            nodes: nodes
                .into_iter()
                .map(|(name, host)| Node {
                    name,
                    host,
                    data: None,
                    proc: None,
                    conf_upstream: None,
                    slots: Vec::new(),
                    writable_since: None,
                    ssn: String::new(),
                    standby_on_primary_dir: false,
                    primary_without_switch: false,
                })
                .collect(),
            next_rec: 1,
            next_write: 1,
            next_pid: 100,
            next_generation: 1,
            writes: Vec::new(),
            durable: (0, 0),
            violations: Vec::new(),
            promotions: 0,
            events: Vec::new(),
            unavailable_writes: 0,
            indeterminate_writes: 0,
            promoted_behind: 0,
            final_lost: 0,
            sync_mode: SyncMode::Off,
            sync_key: None,
        }
    }

    /// Numbers new WAL records, writes and postmaster pids from `base` on: models in
    /// different processes (the agent's simulated mode) must never create the same record id.
    pub fn number_from(&mut self, base: u64) {
        self.next_rec = base;
        self.next_write = base;
    }

    fn event(&mut self, i: usize, text: String) {
        let who = self.nodes[i].name.clone();
        self.events.push((who, text));
    }

    pub fn violation(&mut self, now: Mono, kind: ViolationKind, detail: String, nodes: Vec<usize>) {
        self.events
            .push(("CHECK".to_owned(), format!("VIOLATION {kind:?}: {detail}")));
        self.violations.push(Violation {
            at: now,
            kind,
            detail,
            nodes,
            finding: None,
        });
    }

    pub fn node_by_host(&self, host: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.host == host)
    }

    fn rec(&mut self, tl: u32, write: Option<u64>) -> Rec {
        let id = self.next_rec;
        self.next_rec += 1;
        Rec { id, tl, write }
    }

    // ---- observation -------------------------------------------------------------------

    pub fn observe(&self, i: usize) -> PgState {
        let node = &self.nodes[i];
        let data_dir = match &node.data {
            None => DataDir::Empty,
            Some(d) => DataDir::Initialized(d.control()),
        };
        let Some(p) = &node.proc else {
            return PgState {
                data_dir,
                process: PgProcess::Stopped,
                sql: None,
            };
        };
        let sql = match (p.phase, &node.data) {
            (Phase::Ready, Some(d)) => Some(self.sql(i, p, d)),
            _ => None,
        };
        PgState {
            data_dir,
            process: PgProcess::Running { pid: p.pid },
            sql,
        }
    }

    fn sql(&self, i: usize, p: &Proc, d: &Data) -> PgSql {
        let flush = d.flush();
        let standby = p.role == Role::Standby;
        let replication = if standby {
            vec![]
        } else {
            let streaming: Vec<&Node> = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(j, n)| {
                    *j != i
                        && n.proc
                            .as_ref()
                            .is_some_and(|q| q.upstream == Some(i) && q.stream == Stream::Streaming)
                })
                .map(|(_, n)| n)
                .collect();
            let names: Vec<&str> = streaming.iter().map(|n| n.name.as_str()).collect();
            streaming
                .iter()
                .map(|n| {
                    let (state, priority) = sync_state(&self.nodes[i].ssn, &n.name, &names);
                    let pos = n.data.as_ref().map(Data::flush);
                    ReplicationRow {
                        pid: n.proc.as_ref().map_or(0, |q| q.pid + 10_000),
                        usename: "replicator".to_owned(),
                        application_name: n.name.clone(),
                        client_addr: Some(n.host.clone()),
                        state: "streaming".to_owned(),
                        sync_state: state.to_owned(),
                        sync_priority: priority,
                        write_lsn: pos,
                        flush_lsn: pos,
                        replay_lsn: pos,
                    }
                })
                .collect()
        };
        let streaming = p.stream == Stream::Streaming;
        PgSql {
            server_version: 150_008,
            postmaster_start_time: format!("sim+{}", p.started),
            in_recovery: standby,
            timeline: Timeline(d.timeline()),
            flush_lsn: (!standby).then_some(flush),
            received_lsn: standby.then_some(flush),
            replayed_lsn: standby.then_some(flush),
            replayed_timestamp: None,
            replay_paused: false,
            streaming,
            receiver_latest_end_lsn: (standby && streaming).then_some(flush),
            replication,
            slots: node_slots(&self.nodes[i]),
            // The model has member slots only (no positions, no permanent slots).
            replication_slots: Vec::new(),
            pending_restart: false,
            synchronous_standby_names: self.nodes[i].ssn.clone(),
            synchronous_commit: "on".to_owned(),
            // The model reports the timeline a standby replays, never a stale one.
            newest_history: None,
            // Like the adapter: read for a standby that is not streaming.
            timeline_start: (standby && !streaming)
                .then(|| {
                    let chain = d.chain();
                    let [.., (parent, end), (tl, _)] = chain.as_slice() else {
                        return None;
                    };
                    Some(TimelineStart {
                        timeline: Timeline(*tl),
                        parent: Timeline(*parent),
                        at: lsn_of(*end),
                    })
                })
                .flatten(),
        }
    }

    pub fn is_alive(&self, i: usize) -> bool {
        self.nodes[i].proc.is_some()
    }

    pub fn timeline_history(&self, i: usize) -> Result<Vec<HistoryLine>, String> {
        let d = self.nodes[i]
            .data
            .as_ref()
            .ok_or("no data directory".to_owned())?;
        let chain = d.chain();
        Ok(chain
            .iter()
            .take(chain.len().saturating_sub(1))
            .map(|&(tl, end)| HistoryLine {
                timeline: Timeline(tl),
                lsn: lsn_of(end),
                reason: "no recovery target specified".to_owned(),
                timestamp: None,
                new_leader: None,
            })
            .collect())
    }

    // ---- data directory ----------------------------------------------------------------

    fn refuse_if_running(&self, i: usize, what: &str) -> Result<(), String> {
        if self.nodes[i].proc.is_some() {
            return Err(format!("cannot {what}: PostgreSQL is running"));
        }
        Ok(())
    }

    pub fn initdb(&mut self, i: usize, sysid: String, now: Mono) -> Result<(), String> {
        if self.nodes[i].data.is_some() {
            return Err("cannot initdb: data directory is not empty".to_owned());
        }
        let first = self.rec(1, None);
        self.nodes[i].data = Some(Data {
            sysid: sysid.clone(),
            wal: vec![first],
            state: ClusterState::ShutDown,
            checkpoint: 1,
            last_checkpoint_at: now,
        });
        self.event(i, format!("initdb (system id {sysid})"));
        Ok(())
    }

    pub fn wipe(&mut self, i: usize) -> Result<(), String> {
        self.refuse_if_running(i, "wipe the data directory")?;
        self.update_durable();
        self.nodes[i].data = None;
        self.nodes[i].slots.clear();
        self.nodes[i].primary_without_switch = false;
        self.nodes[i].standby_on_primary_dir = false;
        self.event(i, "data directory wiped".to_owned());
        Ok(())
    }

    /// Can `i` reach `u` as a replication/rewind/clone source right now?
    fn source(&self, i: usize, u: usize, reachable: bool) -> Result<&Data, String> {
        let src = &self.nodes[u];
        if !reachable {
            return Err(format!(
                "could not connect to {}: timeout expired",
                src.name
            ));
        }
        if src.ready().is_none() {
            return Err(format!(
                "could not connect to {}: connection refused",
                src.name
            ));
        }
        if i == u {
            return Err("cannot use myself as a source".to_owned());
        }
        src.data
            .as_ref()
            .ok_or_else(|| format!("{} has no data directory", src.name))
    }

    /// `pg_basebackup` from `u` (the end of it: the copy is taken when it finishes).
    pub fn clone_from(&mut self, i: usize, u: usize, reachable: bool) -> Result<(), String> {
        self.refuse_if_running(i, "clone")?;
        let mut copy = self.source(i, u, reachable)?.clone();
        copy.state = ClusterState::InArchiveRecovery;
        self.update_durable();
        self.nodes[i].data = Some(copy);
        self.nodes[i].primary_without_switch = false;
        self.nodes[i].standby_on_primary_dir = false;
        let from = self.nodes[u].name.clone();
        self.event(i, format!("cloned from {from}"));
        Ok(())
    }

    /// `pg_rewind --source-server` against `u`, as PostgreSQL 15 decides it: nothing to do
    /// when both are on the same timeline (that is the point of the agent's checkpoint on the
    /// source) or when our timeline is an ancestor of the source's and we did not write past
    /// its switch point; otherwise the data directory becomes the source's. A source whose
    /// history does not contain our timeline is an error.
    pub fn rewind(&mut self, i: usize, u: usize, reachable: bool) -> Result<(), String> {
        self.refuse_if_running(i, "rewind")?;
        let target = self.nodes[i]
            .data
            .as_ref()
            .ok_or("cannot rewind: no data directory")?;
        let source = self.source(i, u, reachable)?;
        if self.nodes[u].proc.as_ref().map(|p| p.role) != Some(Role::Primary) {
            return Err(format!(
                "cannot rewind from {}: it is in recovery",
                self.nodes[u].name
            ));
        }
        if source.sysid != target.sysid {
            return Err("source and target clusters are from different systems".to_owned());
        }
        let (t_tl, s_tl) = (target.timeline(), source.timeline());
        let from = self.nodes[u].name.clone();
        let outcome = if t_tl == s_tl {
            format!(
                "pg_rewind from {from}: source and target cluster are on the same timeline; no rewind required"
            )
        } else {
            match source.chain().iter().find(|(tl, _)| *tl == t_tl) {
                Some(&(_, end)) if target.wal.len() <= end => {
                    format!(
                        "pg_rewind from {from}: no rewind required (timeline {t_tl} is an ancestor)"
                    )
                }
                Some(_) => {
                    let mut copy = source.clone();
                    copy.state = ClusterState::InArchiveRecovery;
                    let dropped = target.wal.len();
                    self.update_durable();
                    self.nodes[i].data = Some(copy);
                    self.nodes[i].primary_without_switch = false;
                    self.nodes[i].standby_on_primary_dir = false;
                    format!(
                        "pg_rewind from {from}: rewound (had {dropped} records on timeline {t_tl})"
                    )
                }
                None => {
                    return Err(format!(
                        "could not find common ancestor of the source and target cluster's timelines ({t_tl} vs {s_tl})"
                    ));
                }
            }
        };
        if let Some(d) = &mut self.nodes[i].data
            && d.state.is_unclean()
        {
            // The agent's single-user crash recovery before pg_rewind.
            d.state = ClusterState::ShutDown;
        }
        self.event(i, outcome);
        Ok(())
    }

    pub fn set_slots(&mut self, i: usize, slots: &[String]) -> Result<(), String> {
        if self.nodes[i].ready().is_none() {
            return Err("cannot ensure slots: PostgreSQL is not running".to_owned());
        }
        self.nodes[i].slots = slots.to_vec();
        Ok(())
    }

    pub fn require_stopped(&self, i: usize, what: &str) -> Result<(), String> {
        self.refuse_if_running(i, what)
    }

    pub fn require_ready(&self, i: usize, what: &str) -> Result<(), String> {
        match self.nodes[i].ready() {
            Some(_) => Ok(()),
            None => Err(format!("cannot {what}: PostgreSQL is not running")),
        }
    }

    // ---- the postmaster ----------------------------------------------------------------

    /// `pg_ctl start`: the process exists at once, accepts connections at [`Self::start_ready`].
    pub fn start(
        &mut self,
        i: usize,
        role: Role,
        upstream: Option<usize>,
        now: Mono,
    ) -> Result<u64, String> {
        self.refuse_if_running(i, "start")?;
        if self.nodes[i].data.is_none() {
            return Err("cannot start: not a data directory".to_owned());
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        let pid = self.next_pid;
        self.next_pid += 1;
        let node = &mut self.nodes[i];
        let from_standby_dir =
            role == Role::Primary && node.data.as_ref().is_some_and(|d| !d.state.was_primary());
        node.conf_upstream = upstream;
        node.standby_on_primary_dir = role == Role::Standby
            && (node.standby_on_primary_dir
                || node.data.as_ref().is_some_and(|d| d.state.was_primary()));
        node.proc = Some(Proc {
            pid,
            generation,
            role,
            phase: Phase::Starting,
            promoting: false,
            upstream: if role == Role::Standby {
                upstream
            } else {
                None
            },
            stream: Stream::Idle,
            started: now,
            from_standby_dir,
            promote_by: 0,
        });
        let what = match (role, upstream) {
            (Role::Primary, _) => "as primary".to_owned(),
            (Role::Standby, Some(u)) => format!("as standby of {}", self.nodes[u].name),
            (Role::Standby, None) => "as standby without upstream".to_owned(),
        };
        self.event(i, format!("postgres starting {what} (pid {pid})"));
        Ok(generation)
    }

    /// The postmaster of `generation` finished crash/archive recovery and accepts connections.
    pub fn start_ready(&mut self, i: usize, generation: u64, now: Mono) {
        let Some(p) = &mut self.nodes[i].proc else {
            return;
        };
        if p.generation != generation || p.phase != Phase::Starting {
            return;
        }
        p.phase = Phase::Ready;
        let role = p.role;
        if p.from_standby_dir {
            self.nodes[i].primary_without_switch = true;
            self.event(
                i,
                "primary on a standby's data directory: crash recovery only, no timeline switch"
                    .to_owned(),
            );
        }
        if let Some(d) = &mut self.nodes[i].data {
            d.state = match role {
                Role::Primary => ClusterState::InProduction,
                Role::Standby => ClusterState::InArchiveRecovery,
            };
            d.checkpoint_now(now);
        }
        let tl = self.nodes[i].data.as_ref().map_or(0, Data::timeline);
        self.event(
            i,
            format!(
                "postgres ready as {} on timeline {tl}",
                if role == Role::Primary {
                    "primary"
                } else {
                    "standby"
                }
            ),
        );
        if role == Role::Primary {
            self.became_writable(i, now);
        }
    }

    /// Where a start or promotion of `generation` stands: `None` while in progress.
    pub fn settled(
        &self,
        i: usize,
        generation: u64,
        want_primary: bool,
    ) -> Option<Result<(), String>> {
        match &self.nodes[i].proc {
            Some(p) if p.generation == generation => match p.phase {
                Phase::Starting => None,
                Phase::Stopping => Some(Err("PostgreSQL is shutting down".to_owned())),
                Phase::Ready if want_primary && p.role != Role::Primary => None,
                Phase::Ready => Some(Ok(())),
            },
            _ => Some(Err("the postmaster exited".to_owned())),
        }
    }

    /// Ask the postmaster to stop: sessions end now, the process exits at [`Self::stop_done`].
    /// Returns the generation to wait for, `None` when nothing runs.
    pub fn stop(&mut self, i: usize, kind: StopKind, now: Mono) -> Option<u64> {
        let p = self.nodes[i].proc.as_mut()?;
        if kind == StopKind::Crash {
            let pid = p.pid;
            self.nodes[i].proc = None;
            self.became_unwritable(i);
            self.event(i, format!("postmaster (pid {pid}) crashed"));
            return None;
        }
        let generation = p.generation;
        if p.phase != Phase::Stopping {
            p.phase = Phase::Stopping;
            let pid = p.pid;
            let _ = now;
            self.became_unwritable(i);
            self.event(i, format!("postgres stopping ({kind:?}, pid {pid})"));
        }
        Some(generation)
    }

    pub fn stop_done(&mut self, i: usize, generation: u64, kind: StopKind, now: Mono) {
        let Some(p) = &self.nodes[i].proc else { return };
        if p.generation != generation {
            return;
        }
        let role = p.role;
        self.nodes[i].proc = None;
        self.became_unwritable(i);
        if kind == StopKind::Fast
            && let Some(d) = &mut self.nodes[i].data
        {
            d.state = match role {
                Role::Primary => ClusterState::ShutDown,
                Role::Standby => ClusterState::ShutDownInRecovery,
            };
            d.checkpoint_now(now);
        }
        self.event(i, "postgres stopped".to_owned());
    }

    /// `pg_ctl promote`: returns the generation to wait for; a primary is already promoted.
    pub fn promote(&mut self, i: usize, by: u64) -> Result<u64, String> {
        let Some(p) = self.nodes[i]
            .proc
            .as_mut()
            .filter(|p| p.phase == Phase::Ready)
        else {
            return Err("cannot promote: PostgreSQL is not running".to_owned());
        };
        if p.role == Role::Standby && !p.promoting {
            p.promoting = true;
            p.promote_by = by;
            let g = p.generation;
            self.event(i, "promotion requested".to_owned());
            return Ok(g);
        }
        Ok(p.generation)
    }

    /// Recovery ends: a new timeline, one record on it, and the node accepts writes.
    pub fn promote_done(&mut self, i: usize, generation: u64, now: Mono) {
        let ok = self.nodes[i].proc.as_ref().is_some_and(|p| {
            p.generation == generation
                && p.phase == Phase::Ready
                && p.role == Role::Standby
                && p.promoting
        });
        if !ok {
            return;
        }
        let tl = self.nodes[i].data.as_ref().map_or(1, Data::timeline) + 1;
        let rec = self.rec(tl, None);
        let switch = self.nodes[i].data.as_ref().map_or(0, |d| d.wal.len());
        let node = &mut self.nodes[i];
        if let Some(p) = &mut node.proc {
            p.role = Role::Primary;
            p.promoting = false;
            p.upstream = None;
            p.stream = Stream::Idle;
        }
        node.conf_upstream = None;
        node.primary_without_switch = false;
        node.standby_on_primary_dir = false;
        let ahead: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, n)| {
                *j != i && n.proc.is_some() && n.data.as_ref().is_some_and(|d| d.wal.len() > switch)
            })
            .map(|(_, n)| {
                format!(
                    "{} ({})",
                    n.name,
                    n.data.as_ref().map_or(Lsn(0), Data::flush)
                )
            })
            .collect();
        if !ahead.is_empty() {
            self.promoted_behind += 1;
            let line = format!(
                "NOTE: promoted at {} while running members had more WAL: {}",
                lsn_of(switch),
                ahead.join(", ")
            );
            self.event(i, line);
        }
        let node = &mut self.nodes[i];
        if let Some(d) = &mut node.data {
            let at = d.flush();
            d.wal.push(rec);
            d.state = ClusterState::InProduction;
            d.checkpoint_now(now);
            self.promotions += 1;
            self.event(i, format!("promoted: timeline {tl} starts at {at}"));
        }
        self.became_writable(i, now);
    }

    /// `primary_conninfo` rewritten and reloaded. `Ok(false)` when it already said so.
    pub fn follow(&mut self, i: usize, upstream: usize) -> bool {
        let node = &mut self.nodes[i];
        let changed = node.conf_upstream != Some(upstream);
        node.conf_upstream = Some(upstream);
        if let Some(p) = &mut node.proc
            && p.role == Role::Standby
            && p.upstream != Some(upstream)
        {
            p.upstream = Some(upstream);
            p.stream = Stream::Waiting("reconnecting".to_owned());
            let to = self.nodes[upstream].name.clone();
            self.event(i, format!("standby now follows {to}"));
        }
        changed
    }

    // ---- writes and replication -------------------------------------------------------

    pub fn writable_nodes(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].accepts_writes())
            .collect()
    }

    /// One client write on node `i` (which accepts writes): the commit record goes into its
    /// WAL now; whether and when the client hears "committed" is [`Self::commit_state`].
    pub fn begin_write(&mut self, i: usize) -> Pending {
        let id = self.next_write;
        self.next_write += 1;
        let tl = self.nodes[i].data.as_ref().map_or(1, Data::timeline);
        let rec = self.rec(tl, Some(id));
        let d = self.nodes[i]
            .data
            .as_mut()
            .expect("a writable node has data");
        d.wal.push(rec);
        Pending {
            id,
            node: i,
            index: d.wal.len() - 1,
            rec: rec.id,
        }
    }

    /// `Some(true)`: the commit is acknowledged (asynchronous replication: at once; with
    /// `synchronous_standby_names`: once the synchronous standbys PostgreSQL would wait for
    /// have flushed it). `Some(false)`: the session is gone (the server stopped or crashed),
    /// the outcome is unknown to the client. `None`: still waiting.
    pub fn commit_state(&self, p: &Pending) -> Option<bool> {
        let node = &self.nodes[p.node];
        let alive = node
            .proc
            .as_ref()
            .is_some_and(|q| q.phase == Phase::Ready && q.role == Role::Primary);
        if !alive {
            return Some(false);
        }
        let Some(rule) = SyncRule::parse(&node.ssn) else {
            return Some(true);
        };
        let flushed = |j: usize| {
            self.nodes[j]
                .data
                .as_ref()
                .is_some_and(|d| d.wal.get(p.index).is_some_and(|r| r.id == p.rec))
        };
        // Standbys streaming from this primary, in `synchronous_standby_names` order.
        let mut listed: Vec<(usize, usize)> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, n)| {
                *j != p.node
                    && n.proc.as_ref().is_some_and(|q| {
                        q.upstream == Some(p.node) && q.stream == Stream::Streaming
                    })
            })
            .filter_map(|(j, n)| rule.priority(&n.name).map(|prio| (prio, j)))
            .collect();
        listed.sort();
        let done = match rule.method {
            SyncMethod::First => {
                listed.len() >= rule.count
                    && listed.iter().take(rule.count).all(|&(_, j)| flushed(j))
            }
            SyncMethod::Any => listed.iter().filter(|&&(_, j)| flushed(j)).count() >= rule.count,
        };
        done.then_some(true)
    }

    /// The client heard "committed". The write is *protected* — synchronous replication
    /// promises to keep it — when synchronous mode is on and `/sync` names the acknowledging
    /// node as its `leader` right now. Whatever `sync_standby` says: with members listed, each
    /// of them holds every commit the leader acknowledged (they are published only once
    /// `synchronous_standby_names` waits for them and they flushed past the leader's position
    /// at that change, and unpublished before it stops waiting for them); with none listed
    /// (non-strict mode acknowledging asynchronously) only the leader itself may be promoted.
    /// Not protected: writes acknowledged before the leader first published `/sync` (after
    /// the bootstrap), and with synchronous mode off.
    pub fn acknowledge(&mut self, p: &Pending, now: Mono) {
        let protected = self.sync_mode != SyncMode::Off
            && self
                .sync_key
                .as_ref()
                .and_then(|s| s.leader.as_ref())
                .is_some_and(|l| l.as_str().eq_ignore_ascii_case(&self.nodes[p.node].name));
        self.writes.push(Write {
            id: p.id,
            node: p.node,
            index: p.index,
            rec: p.rec,
            at: now,
            protected,
        });
    }

    /// One write acknowledged at once (the node must accept writes and replicate
    /// asynchronously).
    pub fn write(&mut self, i: usize, now: Mono) -> u64 {
        let p = self.begin_write(i);
        self.acknowledge(&p, now);
        p.id
    }

    /// `synchronous_standby_names` (`None`: the configured value, empty here). A reload:
    /// PostgreSQL releases every waiting commit when it becomes empty.
    pub fn set_ssn(&mut self, i: usize, value: Option<&str>) {
        let value = value.unwrap_or("").to_owned();
        if self.nodes[i].ssn != value {
            self.event(i, format!("synchronous_standby_names = '{value}'"));
            self.nodes[i].ssn = value;
        }
    }

    /// One replication round: every ready standby with an upstream copies up to `batch`
    /// records if PostgreSQL would let it. `reachable(a, b)` is the member network.
    pub fn replicate(&mut self, batch: usize, reachable: &dyn Fn(usize, usize) -> bool, now: Mono) {
        for i in 0..self.nodes.len() {
            let upstream = match self.nodes[i].ready() {
                Some(p) if p.role == Role::Standby => p.upstream,
                _ => continue,
            };
            let next = match upstream {
                None => Stream::Idle,
                Some(u) => self.stream_state(i, u, reachable(i, u)),
            };
            if next == Stream::Streaming
                && let Some(u) = upstream
            {
                let have = self.nodes[i].data.as_ref().map_or(0, |d| d.wal.len());
                let src = &self.nodes[u].data.as_ref().expect("checked").wal;
                let end = src.len().min(have + batch);
                let more = src[have..end].to_vec();
                if let Some(d) = &mut self.nodes[i].data {
                    d.wal.extend(more);
                }
            }
            let p = self.nodes[i].proc.as_mut().expect("ready");
            if p.stream != next {
                let old = std::mem::replace(&mut p.stream, next.clone());
                let to = p
                    .upstream
                    .map(|u| self.nodes[u].name.clone())
                    .unwrap_or_default();
                let line = match (&old, &next) {
                    (_, Stream::Streaming) => Some(format!("streaming from {to}")),
                    (_, Stream::Diverged(why)) => Some(format!("DIVERGED from {to}: {why}")),
                    (Stream::Streaming, Stream::Waiting(why)) => {
                        Some(format!("stopped streaming from {to}: {why}"))
                    }
                    _ => None,
                };
                if let Some(line) = line {
                    self.event(i, line);
                }
            }
        }
        for i in 0..self.nodes.len() {
            let running = self.nodes[i].ready().is_some();
            if let Some(d) = &mut self.nodes[i].data
                && running
                && now.saturating_since(d.last_checkpoint_at).as_secs() >= 30
            {
                d.checkpoint_now(now);
            }
        }
        self.update_durable();
    }

    /// What PostgreSQL's walreceiver/walsender pair makes of standby `i` and upstream `u`.
    fn stream_state(&self, i: usize, u: usize, reachable: bool) -> Stream {
        let src = match self.source(i, u, reachable) {
            Ok(d) => d,
            Err(e) => return Stream::Waiting(e),
        };
        if self.nodes[u].proc.as_ref().is_some_and(|p| p.promoting) {
            return Stream::Waiting("upstream is promoting".to_owned());
        }
        let me = self.nodes[i].data.as_ref().expect("a ready node has data");
        if me.sysid != src.sysid {
            return Stream::Diverged("database system identifier differs".to_owned());
        }
        let (tl, len) = (me.timeline(), me.wal.len());
        // Where our timeline ends in the upstream's history (the common case, both on the
        // same timeline, needs no history).
        let (end, current) = if src.timeline() == tl {
            (src.wal.len(), true)
        } else {
            let chain = src.chain();
            let Some(&(_, end)) = chain.iter().find(|(t, _)| *t == tl) else {
                return Stream::Diverged(format!(
                    "requested timeline {tl} is not in this server's history"
                ));
            };
            (end, false)
        };
        if len > end {
            return if current {
                Stream::Waiting(format!(
                    "requested starting point {} is ahead of the WAL flush position of this server {}",
                    lsn_of(len),
                    lsn_of(end)
                ))
            } else {
                Stream::Diverged(format!(
                    "new timeline forked off current database system timeline {tl} before current recovery point {}",
                    lsn_of(len)
                ))
            };
        }
        if !me.is_prefix_of(src) {
            return Stream::Diverged(format!(
                "record at {} does not match upstream (incorrect prev-link)",
                lsn_of(len.saturating_sub(1))
            ));
        }
        Stream::Streaming
    }

    // ---- invariants --------------------------------------------------------------------

    fn became_writable(&mut self, i: usize, now: Mono) {
        self.nodes[i].writable_since = Some(now);
        let others: Vec<usize> = self
            .writable_nodes()
            .into_iter()
            .filter(|&j| j != i)
            .collect();
        for j in others {
            let since = self.nodes[j].writable_since.unwrap_or(now);
            let detail = format!(
                "{} became writable while {} has been writable since {since}",
                self.nodes[i].name, self.nodes[j].name
            );
            self.violation(now, ViolationKind::TwoWritablePrimaries, detail, vec![i, j]);
        }
        self.update_durable();
        let (len, last) = self.durable;
        if len > 0 {
            let d = self.nodes[i].data.as_ref().expect("writable has data");
            if d.wal.get(len - 1).map(|r| r.id) != Some(last) {
                let detail = format!(
                    "{} became writable without the durable prefix up to {} (its WAL ends at {})",
                    self.nodes[i].name,
                    lsn_of(len),
                    d.flush()
                );
                self.violation(now, ViolationKind::DurableWriteLost, detail, vec![i]);
            }
        }
        self.check_protected(i, now, "became writable");
    }

    /// Member `i` took the leader key; `before` is `/sync` as the store held it just before.
    /// Priority mode (Patroni's rule, `healthiest`'s `NotSynchronous`): when `/sync` names a
    /// leader, only that leader or a member listed in `sync_standby` may take the key. Quorum
    /// mode has no such rule (any member with enough voters' support may race); there the
    /// acknowledged-writes check is the rule.
    pub fn leader_acquired(&mut self, i: usize, before: Option<&SyncState>, now: Mono) {
        if self.sync_mode != SyncMode::Priority {
            return;
        }
        let Some(sync) = before else { return };
        let Some(leader) = &sync.leader else { return };
        let name = &self.nodes[i].name;
        let listed = sync
            .sync_standby
            .iter()
            .any(|s| s.as_str().eq_ignore_ascii_case(name));
        if leader.as_str().eq_ignore_ascii_case(name) || listed {
            return;
        }
        let standbys: Vec<&str> = sync.sync_standby.iter().map(|s| s.as_str()).collect();
        let detail = format!(
            "{name} took the leader key while /sync said leader {leader}, sync_standby [{}]",
            standbys.join(", ")
        );
        self.violation(now, ViolationKind::LeaderOutsideSync, detail, vec![i]);
    }

    /// The protected acknowledged writes (see [`Self::acknowledge`]) absent from `i`'s WAL.
    pub fn lost_protected(&self, i: usize) -> Vec<Write> {
        self.lost_writes(i)
            .into_iter()
            .filter(|w| w.protected)
            .collect()
    }

    /// Acknowledged writes under the synchronous guarantee.
    pub fn protected_writes(&self) -> usize {
        self.writes.iter().filter(|w| w.protected).count()
    }

    fn check_protected(&mut self, i: usize, now: Mono, when: &str) {
        let lost = self.lost_protected(i);
        if let Some(first) = lost.first() {
            let detail = format!(
                "{} {when} without {} write(s) acknowledged under synchronous replication (the first: write {} acknowledged by {} at {}, at {})",
                self.nodes[i].name,
                lost.len(),
                first.id,
                self.nodes[first.node].name,
                first.at,
                lsn_of(first.index + 1),
            );
            self.violation(now, ViolationKind::AckedWriteLost, detail, vec![i]);
        }
    }

    /// The final check: the final primary `l` holds every protected write.
    pub fn check_protected_final(&mut self, l: usize, now: Mono) {
        self.check_protected(l, now, "is the final primary");
    }

    fn became_unwritable(&mut self, i: usize) {
        self.nodes[i].writable_since = None;
    }

    /// Grow the durable prefix: the longest WAL prefix every member holds right now (only
    /// while every member has a data directory). It never shrinks.
    pub fn update_durable(&mut self) {
        let mut datas = self.nodes.iter().map(|n| n.data.as_ref());
        let Some(Some(first)) = datas.next() else {
            return;
        };
        let mut common = first.wal.len();
        for d in datas {
            let Some(d) = d else { return };
            common = common.min(common_prefix(&first.wal, &d.wal));
        }
        if common > self.durable.0 {
            self.durable = (common, first.wal[common - 1].id);
        }
    }

    /// The writes acknowledged but absent from `i`'s WAL.
    pub fn lost_writes(&self, i: usize) -> Vec<Write> {
        let wal = self.nodes[i].data.as_ref().map_or(&[][..], |d| &d.wal[..]);
        self.writes
            .iter()
            .filter(|w| wal.get(w.index).map(|r| r.id) != Some(w.rec))
            .copied()
            .collect()
    }

    /// Acknowledged writes inside the durable prefix.
    pub fn durable_writes(&self) -> usize {
        let (len, last) = self.durable;
        let Some(d) = self
            .nodes
            .iter()
            .filter_map(|n| n.data.as_ref())
            .find(|d| d.wal.get(len.wrapping_sub(1)).map(|r| r.id) == Some(last))
        else {
            return 0;
        };
        self.writes
            .iter()
            .filter(|w| w.index < len && d.wal[w.index].id == w.rec)
            .count()
    }

    /// One line per node for traces and failure reports.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let _ = write!(out, "{}: {}", n.name, n.label());
            if let Some(d) = &n.data {
                let _ = write!(out, " tl{} {} ({:?})", d.timeline(), d.flush(), d.state);
            }
            if let Some(p) = &n.proc
                && p.role == Role::Standby
            {
                match p.upstream {
                    Some(u) => {
                        let _ = write!(out, " <- {} [{:?}]", self.nodes[u].name, p.stream);
                    }
                    None => out.push_str(" <- nobody"),
                }
            }
            out.push('\n');
        }
        out
    }

    pub fn writes_total(&self) -> usize {
        self.writes.len()
    }
}

/// A client write whose commit record is in the primary's WAL.
#[derive(Clone, Copy, Debug)]
pub struct Pending {
    pub id: u64,
    pub node: usize,
    pub index: usize,
    pub rec: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SyncMethod {
    First,
    Any,
}

/// `synchronous_standby_names` parsed as PostgreSQL does: `FIRST k (a, b)`, `ANY k (a, b)`,
/// `k (a, b)` (FIRST), or a plain list (FIRST 1); `*` matches every standby.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SyncRule {
    method: SyncMethod,
    count: usize,
    names: Vec<String>,
}

impl SyncRule {
    fn parse(ssn: &str) -> Option<SyncRule> {
        let s = ssn.trim();
        if s.is_empty() {
            return None;
        }
        let (method, rest) = match s.split_once(char::is_whitespace) {
            Some((w, rest)) if w.eq_ignore_ascii_case("first") => (SyncMethod::First, rest),
            Some((w, rest)) if w.eq_ignore_ascii_case("any") => (SyncMethod::Any, rest),
            _ => (SyncMethod::First, s),
        };
        let rest = rest.trim();
        let (count, list) = match rest.split_once('(') {
            Some((k, list)) => (
                k.trim().parse().unwrap_or(1),
                list.trim_end().trim_end_matches(')'),
            ),
            None => (1, rest),
        };
        let names = list
            .split(',')
            .map(|n| n.trim().trim_matches('"').to_owned())
            .filter(|n| !n.is_empty())
            .collect();
        Some(SyncRule {
            method,
            count,
            names,
        })
    }

    /// Position of `name` in the list (0 first), `None` when it is not listed.
    fn priority(&self, name: &str) -> Option<usize> {
        self.names
            .iter()
            .position(|n| n == "*" || n.eq_ignore_ascii_case(name))
    }
}

/// `pg_stat_replication.sync_state` and `sync_priority` of standby `name` under `ssn`, with
/// `streaming` the standbys streaming from this primary, as PostgreSQL reports them: `ANY`,
/// every listed standby is `quorum` (priority 1); `FIRST k`, the `k` listed streaming standbys
/// with the best list positions are `sync`, the other listed ones `potential` (priority: the
/// list position, from 1) — the same standbys [`Model::commit_state`] waits for. Whether they
/// are caught up does not matter, as in PostgreSQL.
fn sync_state(ssn: &str, name: &str, streaming: &[&str]) -> (&'static str, i32) {
    let Some(rule) = SyncRule::parse(ssn) else {
        return ("async", 0);
    };
    let Some(p) = rule.priority(name) else {
        return ("async", 0);
    };
    if rule.method == SyncMethod::Any {
        return ("quorum", 1);
    }
    let better = streaming
        .iter()
        .filter_map(|n| rule.priority(n))
        .filter(|&q| q < p)
        .count();
    if better < rule.count {
        ("sync", p as i32 + 1)
    } else {
        ("potential", p as i32 + 1)
    }
}

fn node_slots(n: &Node) -> Vec<String> {
    n.slots.clone()
}

/// Length of the common prefix of two WALs (binary search, by the prefix-copy property).
fn common_prefix(a: &[Rec], b: &[Rec]) -> usize {
    let (mut lo, mut hi) = (0, a.len().min(b.len()));
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if a[mid - 1].id == b[mid - 1].id {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
}

#[cfg(test)]
mod tests;
