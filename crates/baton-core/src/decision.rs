//! Inputs and outputs of [`crate::decide`]: the observation of one cycle, the memory carried
//! between cycles, the effective HA settings, and the decision (typed actions + typed reason).

use std::fmt;
use std::time::Duration;

use crate::pg::PgState;
use crate::types::{Lsn, MemberName, Mono, Timeline};
use crate::view::{ClusterView, Tags};

/// Patroni's `synchronous_mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncMode {
    #[default]
    Off,
    /// `synchronous_mode: on`: `synchronous_standby_names = N (a,b)`.
    Priority,
    /// `synchronous_mode: quorum`. pgbaton manages it like priority mode for now (every
    /// member in `/sync` is synchronous, so the promotion rule stays sound); the `ANY k (...)`
    /// form is not emitted yet.
    Quorum,
}

/// Synchronous replication settings (dynamic configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncConfig {
    pub mode: SyncMode,
    /// `synchronous_mode_strict`: never let commits through without a synchronous standby.
    pub strict: bool,
    /// `synchronous_node_count` (at least 1).
    pub node_count: u32,
    /// `maximum_lag_on_syncnode` in bytes: a standby further behind the most advanced one (the
    /// primary, when only one streams) is not made synchronous. `None`: no limit (`-1`).
    pub max_lag_on_syncnode: Option<u64>,
}

impl Default for SyncConfig {
    fn default() -> SyncConfig {
        SyncConfig {
            mode: SyncMode::Off,
            strict: false,
            node_count: 1,
            max_lag_on_syncnode: None,
        }
    }
}

impl SyncConfig {
    pub fn enabled(&self) -> bool {
        self.mode != SyncMode::Off
    }
}

/// Patroni's `watchdog.mode`: whether this member arms a watchdog device before it leads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WatchdogMode {
    /// No watchdog is used.
    #[default]
    Off,
    /// The watchdog is armed before this member takes the leader role when it can be; a member
    /// whose device cannot be armed leads without one.
    Automatic,
    /// No leader role without an armed watchdog: a member whose device cannot be armed does
    /// not race, does not promote, and gives the leader key up.
    Required,
}

/// The watchdog as the agent reports it for one cycle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchdogState {
    /// The device is open with its timeout set and verified: it resets the host unless it is
    /// kicked (at every lease renewal) or disarmed.
    pub armed: bool,
    /// The device cannot be armed safely: it is missing or not writable, or an attempt to arm
    /// it failed (until the agent restarts, as in Patroni).
    pub failed: bool,
}

/// Effective HA settings for one cycle: local configuration merged with the dynamic
/// configuration from the DCS (the merge is done by the caller; `decide` only reads this).
#[derive(Clone, Debug, PartialEq)]
pub struct HaConfig {
    pub me: MemberName,
    pub ttl: Duration,
    pub loop_wait: Duration,
    pub retry_timeout: Duration,
    /// Bytes a replica may lag behind the leader's last published position and still race.
    pub maximum_lag_on_failover: u64,
    /// How long a crashed primary is restarted in place while we hold the lease before the
    /// leader key is handed over.
    pub primary_start_timeout: Duration,
    pub use_pg_rewind: bool,
    /// Dynamic `postgresql.use_slots`: the leader keeps a replication slot per member. When
    /// false it creates and drops none.
    pub use_slots: bool,
    pub remove_data_directory_on_rewind_failure: bool,
    /// Dynamic `pause`: no automatic failover, PostgreSQL is left as it is.
    pub pause: bool,
    /// The dynamic configuration (as another tool wrote it into the DCS) asks for something
    /// pgbaton does not support and cannot safely run without, e.g. `standby_cluster`: this
    /// cluster must not have a writable primary. Holds the key path.
    pub unsupported_blocker: Option<String>,
    /// This node's tags.
    pub tags: Tags,
    /// This node may bootstrap a new cluster (it has a `bootstrap` section and is not nofailover).
    pub can_bootstrap: bool,
    /// A configured replica method works without a leader (`no_leader`): an empty data
    /// directory in an initialized cluster with no leader is created by it.
    pub clone_without_leader: bool,
    pub sync: SyncConfig,
    /// `watchdog.mode` (local configuration).
    pub watchdog: WatchdogMode,
    /// Dynamic `failsafe_mode`: a leader that cannot renew its lease keeps its primary while
    /// every member of the `/failsafe` topology accepts its `POST /failsafe`
    /// (`decide::failsafe`).
    pub failsafe_mode: bool,
    /// Dynamic `standby_cluster`: this cluster replicates from another cluster's primary. Its
    /// leader (the standby leader) runs PostgreSQL as a standby of that remote host and never
    /// promotes; the other members follow the standby leader (`decide::standby_cluster`).
    pub standby_cluster: Option<StandbyCluster>,
    /// Dynamic `slots`: permanent replication slots (`crate::slots`).
    pub permanent_slots: Vec<crate::slots::PermanentSlot>,
    /// Dynamic `member_slots_ttl`: how long the leader keeps the slot of a member whose key
    /// is gone (0: not at all).
    pub member_slots_ttl: Duration,
    /// Dynamic `ignore_slots`: slots matching an entry are never dropped (`crate::slots`).
    pub ignore_slots: Vec<crate::slots::SlotMatcher>,
}

/// Patroni's `standby_cluster` section: where the standby leader replicates from, and the
/// recovery settings written for it alone (its replicas stream from it as in any cluster).
/// `restore_command` and `archive_cleanup_command` run commands, so pgbaton never takes
/// their text from the dynamic configuration: PostgreSQL runs each member's local ones
/// (`postgresql.parameters`); the section only says that WAL also comes from the archive
/// ([`StandbyCluster::archive`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StandbyCluster {
    /// The remote primary (or a member of the other cluster, or a proxy in front of it).
    /// `None`: an archive-only standby cluster: the standby leader replays WAL from the
    /// archive alone (`restore_command`), with no `primary_conninfo`.
    pub host: Option<String>,
    pub port: u16,
    /// The physical slot to use on the remote host; without it, no slot is used.
    pub primary_slot_name: Option<String>,
    /// The section names a `restore_command`: WAL comes from the archive (alone without
    /// `host`, as a fallback of streaming with it).
    pub archive: bool,
    /// `create_replica_methods`: the names of the local replica methods
    /// (`postgresql.create_replica_methods`) that create the standby leader, in order; empty:
    /// `basebackup` from `host` (without a host: the local methods that need no source).
    pub create_replica_methods: Vec<String>,
    /// `recovery_min_apply_delay` of the standby leader (a PostgreSQL duration, e.g. `5min`).
    pub recovery_min_apply_delay: Option<String>,
}

/// What the agent observed in one cycle.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observation {
    /// One consistent (linearizable) read of the cluster prefix, or `None` when the DCS did not
    /// answer within `retry_timeout`.
    pub dcs: Option<ClusterView>,
    /// The agent's lease as kept by the independent keeper task.
    pub lease: LeaseState,
    pub pg: PgState,
    /// Status of the other members, fetched over their REST API (`GET /patroni`) when the cluster
    /// has no leader. Members that did not answer are present with `reachable: false`.
    pub peers: Vec<PeerStatus>,
    /// What the actions executed since the previous observation did (the key taken, missed
    /// or released, a failure): `decide` applies them to its memory ([`Memory::after`]).
    pub outcomes: Vec<crate::ActionOutcome>,
    /// A long action the agent runs beside the loop (clone, rewind, bootstrap, a standby's
    /// start) and has not finished: nothing else is decided until it ends (but fencing).
    pub running: Option<ActionKind>,
    /// A restart scheduled on this member (`POST /restart` with `schedule`).
    pub scheduled_restart: Option<crate::ScheduledRestart>,
    /// Wall-clock time in milliseconds since the Unix epoch. Used only to compare with a
    /// switchover's `scheduled_at`; every deadline that matters for safety uses `now`.
    pub unix_ms: i64,
    /// The watchdog device's state.
    pub watchdog: WatchdogState,
    /// DCS failsafe mode: the leader's last `POST /failsafe` round, a replica's last accepted
    /// request.
    pub failsafe: FailsafeObservation,
}

/// What the agent knows about DCS failsafe mode (only filled in with `failsafe_mode` on).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FailsafeObservation {
    /// The leader's last complete round of `POST /failsafe` to the members of the `/failsafe`
    /// topology (sent while it could not renew its lease).
    pub round: Option<FailsafeRound>,
    /// A leader's `POST /failsafe` this member accepted: that primary is alive and no other
    /// member may take the leader key before `until`.
    pub accepted: Option<FailsafePing>,
}

/// One round of `POST /failsafe` from the leader to every other member of its topology.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailsafeRound {
    /// The deadline the round proves if every member accepted: send time of its requests +
    /// ttl·(1−ρ) − margin, the lease's formula (`lease::fence_deadline`), on our monotonic
    /// clock. A member that accepted refuses to take the key for ttl after it received the
    /// request, which is after we sent it.
    pub until: Mono,
    /// The topology the round used: the `/failsafe` key as last read or written by us.
    pub topology: Vec<MemberName>,
    /// The members that answered `200 Accepted`.
    pub accepted: Vec<MemberName>,
}

/// A `POST /failsafe` this member accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailsafePing {
    /// The primary that sent it.
    pub leader: MemberName,
    /// Receive time + ttl, on our monotonic clock.
    pub until: Mono,
}

/// The agent's own lease, as the keeper task reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeaseState {
    /// etcd lease ID, when one is granted and believed alive.
    pub id: Option<i64>,
    /// The fencing deadline: send time of the last acknowledged keepalive + ttl·(1−ρ) − margin,
    /// on the agent's monotonic clock. Past it, a leader must stop being writable.
    pub fence_deadline: Option<Mono>,
}

impl LeaseState {
    /// True while the lease is known to be alive for at least the fencing margin.
    pub fn valid_at(&self, now: Mono) -> bool {
        self.id.is_some() && self.fence_deadline.is_some_and(|d| now < d)
    }
}

/// Another member's status as its REST API reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    pub name: MemberName,
    pub reachable: bool,
    /// PostgreSQL runs as a primary there.
    pub is_primary: bool,
    pub wal_position: Option<Lsn>,
    pub timeline: Option<Timeline>,
    pub tags: Tags,
    pub watchdog_failed: bool,
}

impl PeerStatus {
    /// A member that did not answer (or answered something that is not a status).
    pub fn unreachable(name: MemberName, tags: Tags) -> PeerStatus {
        PeerStatus {
            name,
            reachable: false,
            is_primary: false,
            wal_position: None,
            timeline: None,
            tags,
            watchdog_failed: false,
        }
    }
}

/// An action that failed in an earlier cycle, so the next decision can react (give up the
/// lock, wipe and re-clone, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionFailure {
    pub action: ActionKind,
    pub at: Mono,
    pub error: String,
}

/// Facts carried from one cycle to the next. Starts as [`Memory::default`] on every agent start:
/// startup is not special.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    /// When we first saw our PostgreSQL down while we held the leader key (primary crash).
    pub primary_down_since: Option<Mono>,
    /// We were the leader (held the key with a valid lease) at the end of the last cycle.
    pub was_leader: bool,
    /// A rewind against the current leader failed; holds the leader's name.
    pub rewind_failed_against: Option<MemberName>,
    /// The member we last configured PostgreSQL to stream from (the leader, or our
    /// `replicatefrom` member).
    pub following: Option<MemberName>,
    /// As the standby leader of a standby cluster: the remote primary we last configured
    /// PostgreSQL to stream from (a `standby_cluster` change re-points it).
    pub following_remote: Option<StandbyCluster>,
    /// Our flush position when we last changed `synchronous_standby_names`: a standby counts
    /// as synchronous only once it has flushed this far (it then holds every commit that was
    /// acknowledged before it became synchronous).
    pub sync_changed_at: Option<Lsn>,
    /// Since when our standby has not been streaming from the leader (running, in recovery).
    pub not_streaming_since: Option<Mono>,
    /// We stopped our primary to hand leadership over (switchover) and have not started
    /// PostgreSQL since: it comes back as a standby even in maintenance mode, as Patroni's
    /// demotion does.
    pub handed_over: bool,
    /// The `create_revision` of the leader key while we held it. A key keeps its
    /// `create_revision` until it is deleted, so a leader key someone overwrote with an
    /// undecodable value (and no lease) is still the one we acquired while it has this one.
    pub leader_epoch: Option<i64>,
    /// The `pre_promote` script failed (when, and why): the promotion was cancelled, and we do
    /// not race for the leader key for `ttl` after it (Patroni's backoff).
    pub pre_promote_failed: Option<(Mono, String)>,
    /// Our bootstrap of a new cluster failed (when, and why): the initialization was
    /// cancelled and the data directory emptied; we do not race for the `initialize` key
    /// again for `ttl` (Patroni stops its agent instead).
    pub bootstrap_failed: Option<(Mono, String)>,
    /// Leader: the slot names of members, by when we last saw their member key (or inherited
    /// them from `/status` `retain_slots`), kept for `member_slots_ttl` (`crate::slots::retained`);
    /// published as `retain_slots`.
    pub slots_seen: std::collections::BTreeMap<String, Mono>,
    /// Replica: when we last copied logical slots from the leader (each copy restarts
    /// PostgreSQL, so copies are spaced out).
    pub slots_copied_at: Option<Mono>,
    /// Replica: the copied logical slots not yet known safe after a failover
    /// (`crate::slot_readiness`).
    pub logical_readiness: crate::slot_readiness::Readiness,
}

/// Where a replica streams from / clones from / rewinds from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    pub name: MemberName,
    pub host: String,
    pub port: u16,
    /// The remote primary of a standby cluster (`name` is then our own name): the recovery
    /// settings come from `standby_cluster` (its slot, `restore_command`, ...).
    pub remote: Option<StandbyCluster>,
}

impl Upstream {
    /// A member of this cluster, at `host:port`.
    pub fn member(name: MemberName, host: String, port: u16) -> Upstream {
        Upstream {
            name,
            host,
            port,
            remote: None,
        }
    }

    /// The remote primary a standby leader (`me`) replicates from.
    pub fn remote(me: &MemberName, source: &StandbyCluster) -> Upstream {
        Upstream {
            name: me.clone(),
            host: source.host.clone().unwrap_or_default(),
            port: source.port,
            remote: Some(source.clone()),
        }
    }

    /// There is a server to stream and copy from: not so for the WAL archive of an
    /// archive-only standby cluster (`standby_cluster` without `host`).
    pub fn has_server(&self) -> bool {
        self.remote.as_ref().is_none_or(|r| r.host.is_some())
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.remote {
            Some(remote) if remote.host.is_none() => write!(f, "the WAL archive"),
            Some(_) => write!(f, "the remote primary ({}:{})", self.host, self.port),
            None => write!(f, "{} ({}:{})", self.name, self.host, self.port),
        }
    }
}

/// The role PostgreSQL starts in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartRole {
    /// No `standby.signal`: a primary (after crash recovery if needed).
    Primary,
    /// With `standby.signal`, streaming from `upstream` when one is known; with `None` it
    /// stays read-only in recovery until a leader appears.
    Standby { upstream: Option<Upstream> },
}

/// How to stop PostgreSQL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// `pg_ctl stop -m fast`: clean shutdown with a checkpoint.
    Fast,
    /// `pg_ctl stop -m immediate`, escalating to SIGKILL of the whole process group: used when
    /// fencing, where no session may commit any more.
    Immediate,
}

/// One effect for the agent to perform. The executor performs actions in order and stops at
/// the first one that fails (or, for the race actions, loses).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Open the watchdog device, set its timeout (ttl − `safety_margin`) and verify it, before
    /// an action that makes this member the leader. With `watchdog.mode: required` a failure
    /// stops the list (no leader role without it); with `automatic` it is logged.
    ArmWatchdog,
    /// Create `initialize` = "" if absent (the bootstrap race). Losing stops the list.
    RaceInitialize,
    /// initdb, configure, start, create roles, checkpoint, write `initialize`=sysid, write
    /// `config`, take the leader key. On failure: cancel the initialisation.
    BootstrapCluster,
    /// Compare-and-swap create of the leader key with our lease. Losing stops the list.
    AcquireLeader,
    /// Move the leader key, which still holds our name, onto our current lease (agent restarted
    /// while its PostgreSQL kept running as primary). Losing stops the list.
    ReattachLeader,
    /// Rewrite the leader key, which is ours (on our lease, or still the key we acquired) but
    /// holds an undecodable value, with our name on our lease, if it is still at this
    /// revision. Losing stops the list.
    RepairLeader {
        version: i64,
    },
    /// Delete the leader key if it still holds our name; `last_lsn` goes to `status` first.
    ReleaseLeader {
        last_lsn: Option<Lsn>,
    },
    /// Write our dynamic configuration into `config` (it was missing).
    WriteConfig,
    /// Append the new timeline to the `history` key from the timeline history file.
    UpdateHistory,
    /// Physical replication slots for these members (and drop the inactive slots pgbaton
    /// manages that are not among them; other tools' slots are left alone). `keep`: slots
    /// pgbaton manages that match `ignore_slots`, neither dropped nor created.
    EnsureSlots {
        slots: Vec<String>,
        keep: Vec<String>,
    },
    /// Permanent slot upkeep besides the physical set (`crate::slots`): create or adopt
    /// logical slots, advance slots, drop logical slots pgbaton made that are not declared.
    SyncSlots {
        work: crate::slots::SlotWork,
    },
    /// Replica: copy these permanent logical slots from the leader (their state files, read
    /// with `pg_read_binary_file`), which needs PostgreSQL stopped: the executor stops it
    /// (fast) after reading, writes the files, and the next cycle starts it again.
    CopyLogicalSlots {
        upstream: Upstream,
        slots: Vec<String>,
    },
    /// Replica: read the `catalog_xmin` of our physical slot (`physical_slot`) and of the
    /// logical slots `slots` on the leader (`crate::slot_readiness`); the executor reports
    /// what it found (`ActionOutcome::PrimarySlots`).
    CheckLogicalSlots {
        upstream: Upstream,
        physical_slot: String,
        slots: Vec<String>,
    },
    /// Start PostgreSQL in the given role.
    StartPostgres {
        role: StartRole,
    },
    StopPostgres {
        mode: StopMode,
    },
    /// Restart PostgreSQL in its role (`POST /restart`, a scheduled restart): stop (fast),
    /// then start as `role`. The leader keeps its key meanwhile.
    RestartPostgres {
        role: StartRole,
    },
    /// `pg_ctl promote`, waiting until the server accepts writes.
    Promote,
    /// A standby cluster's bootstrap (Patroni's `bootstrap_standby_leader`): `pg_basebackup`
    /// from the remote primary, start as its standby, write `initialize` = sysid and
    /// `config`, take the leader key. On failure: cancel the initialisation.
    BootstrapStandbyCluster {
        upstream: Upstream,
    },
    /// Point a running standby at `upstream` (rewrite recovery settings, reload).
    Follow {
        upstream: Upstream,
    },
    /// Wipe the data directory and `pg_basebackup` from `upstream`.
    Clone {
        upstream: Upstream,
    },
    /// Create the data directory with no member to copy from: the configured replica methods
    /// that work without one (`no_leader`, a restore from a backup). Long, like a clone.
    CloneWithoutLeader,
    /// Crash recovery if unclean, then `pg_rewind` from `upstream`.
    Rewind {
        upstream: Upstream,
    },
    /// Remove the data directory (after a failed rewind, when configured to).
    WipeDataDir,
    /// Planned hand-over (switchover): stop PostgreSQL fast (its shutdown checkpoint reaches
    /// the standbys before it exits), publish the checkpoint position in `status`, release
    /// the leader key.
    HandOver,
    /// Clear the `failover` key (write `{}`), if it is still at this revision.
    ClearFailover {
        version: i64,
    },
    /// Set `synchronous_standby_names` (`None`: back to the configured value) and reload.
    SetSyncStandbys {
        value: Option<String>,
    },
    /// Write (`None`: delete) the `sync` key if it is still at this revision (0: absent).
    /// Losing the compare-and-swap stops the list.
    WriteSync {
        state: Option<crate::view::SyncState>,
        version: i64,
    },
    /// Write the `/failsafe` topology (a leader-only write).
    WriteFailsafe {
        topology: crate::view::FailsafeTopology,
    },
    /// Failsafe mode: every member of the topology accepted our `POST /failsafe`, so the
    /// fencer (and the fence guard's record) may keep the primary until `until` although
    /// the lease could not be renewed. Never shortens a deadline.
    ExtendFencing {
        until: Mono,
    },
}

/// The kind of an action, without its arguments (for failure reports).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActionKind {
    ArmWatchdog,
    RaceInitialize,
    BootstrapCluster,
    AcquireLeader,
    ReattachLeader,
    RepairLeader,
    ReleaseLeader,
    WriteConfig,
    UpdateHistory,
    EnsureSlots,
    SyncSlots,
    CopyLogicalSlots,
    CheckLogicalSlots,
    StartPostgres,
    StopPostgres,
    RestartPostgres,
    Promote,
    Follow,
    Clone,
    Rewind,
    WipeDataDir,
    HandOver,
    ClearFailover,
    SetSyncStandbys,
    WriteSync,
    /// Not an action of its own: the `pre_promote` script the executor runs as the first step
    /// of [`Action::Promote`] failed, so the promotion was cancelled.
    PrePromote,
    WriteFailsafe,
    ExtendFencing,
}

impl ActionKind {
    /// Runs beside the HA loop rather than in it: it can take minutes (a clone, a rewind,
    /// initdb, a standby replaying WAL until it is consistent), and the loop keeps
    /// publishing and deciding meanwhile. (A primary's start stays in the loop: it is bounded
    /// by `primary_start_timeout` rules that need every cycle.)
    pub fn long_label(self) -> &'static str {
        match self {
            ActionKind::BootstrapCluster => "bootstrap",
            ActionKind::Clone => "replica creation",
            ActionKind::Rewind => "pg_rewind",
            ActionKind::StartPostgres => "start",
            ActionKind::RestartPostgres => "restart",
            _ => "action",
        }
    }
}

impl Action {
    /// Runs beside the HA loop (see [`ActionKind::long_label`]).
    pub fn is_long(&self) -> bool {
        matches!(
            self,
            Action::BootstrapCluster
                | Action::BootstrapStandbyCluster { .. }
                | Action::RestartPostgres { .. }
                | Action::Clone { .. }
                | Action::CloneWithoutLeader
                | Action::Rewind { .. }
                | Action::StartPostgres {
                    role: StartRole::Standby { .. }
                }
        )
    }

    pub fn kind(&self) -> ActionKind {
        match self {
            Action::ArmWatchdog => ActionKind::ArmWatchdog,
            Action::RaceInitialize => ActionKind::RaceInitialize,
            Action::BootstrapCluster | Action::BootstrapStandbyCluster { .. } => {
                ActionKind::BootstrapCluster
            }
            Action::AcquireLeader => ActionKind::AcquireLeader,
            Action::ReattachLeader => ActionKind::ReattachLeader,
            Action::RepairLeader { .. } => ActionKind::RepairLeader,
            Action::ReleaseLeader { .. } => ActionKind::ReleaseLeader,
            Action::WriteConfig => ActionKind::WriteConfig,
            Action::UpdateHistory => ActionKind::UpdateHistory,
            Action::EnsureSlots { .. } => ActionKind::EnsureSlots,
            Action::SyncSlots { .. } => ActionKind::SyncSlots,
            Action::CopyLogicalSlots { .. } => ActionKind::CopyLogicalSlots,
            Action::CheckLogicalSlots { .. } => ActionKind::CheckLogicalSlots,
            Action::RestartPostgres { .. } => ActionKind::RestartPostgres,
            Action::StartPostgres { .. } => ActionKind::StartPostgres,
            Action::StopPostgres { .. } => ActionKind::StopPostgres,
            Action::Promote => ActionKind::Promote,
            Action::Follow { .. } => ActionKind::Follow,
            Action::Clone { .. } | Action::CloneWithoutLeader => ActionKind::Clone,
            Action::Rewind { .. } => ActionKind::Rewind,
            Action::WipeDataDir => ActionKind::WipeDataDir,
            Action::HandOver => ActionKind::HandOver,
            Action::ClearFailover { .. } => ActionKind::ClearFailover,
            Action::SetSyncStandbys { .. } => ActionKind::SetSyncStandbys,
            Action::WriteSync { .. } => ActionKind::WriteSync,
            Action::WriteFailsafe { .. } => ActionKind::WriteFailsafe,
            Action::ExtendFencing { .. } => ActionKind::ExtendFencing,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::ArmWatchdog => write!(f, "arm the watchdog"),
            Action::RaceInitialize => write!(f, "race for initialize key"),
            Action::BootstrapCluster => write!(f, "bootstrap new cluster"),
            Action::BootstrapStandbyCluster { upstream } => {
                write!(f, "bootstrap standby cluster from {upstream}")
            }
            Action::AcquireLeader => write!(f, "acquire leader key"),
            Action::ReattachLeader => write!(f, "re-attach leader key to our lease"),
            Action::RepairLeader { .. } => {
                write!(f, "rewrite the unreadable leader key with our name")
            }
            Action::ReleaseLeader {
                last_lsn: Some(lsn),
            } => {
                write!(f, "release leader key (last lsn {lsn})")
            }
            Action::ReleaseLeader { last_lsn: None } => write!(f, "release leader key"),
            Action::WriteConfig => write!(f, "write dynamic config"),
            Action::UpdateHistory => write!(f, "update timeline history"),
            Action::EnsureSlots { slots, keep } => {
                write!(f, "ensure slots [{}]", slots.join(", "))?;
                if !keep.is_empty() {
                    write!(f, ", keep ignored [{}]", keep.join(", "))?;
                }
                Ok(())
            }
            Action::SyncSlots { work } => write!(f, "sync slots: {work}"),
            Action::CopyLogicalSlots { upstream, slots } => {
                write!(
                    f,
                    "copy logical slots [{}] from {upstream}",
                    slots.join(", ")
                )
            }
            Action::CheckLogicalSlots {
                upstream,
                physical_slot,
                slots,
            } => {
                write!(
                    f,
                    "check catalog_xmin on {upstream}: physical slot {physical_slot}, logical [{}]",
                    slots.join(", ")
                )
            }
            Action::StartPostgres {
                role: StartRole::Primary,
            } => {
                write!(f, "start postgres as primary")
            }
            Action::StartPostgres {
                role: StartRole::Standby { upstream: Some(u) },
            } => {
                write!(f, "start postgres as replica of {u}")
            }
            Action::StartPostgres {
                role: StartRole::Standby { upstream: None },
            } => {
                write!(f, "start postgres as replica without upstream")
            }
            Action::StopPostgres {
                mode: StopMode::Fast,
            } => write!(f, "stop postgres (fast)"),
            Action::StopPostgres {
                mode: StopMode::Immediate,
            } => {
                write!(f, "stop postgres (immediate)")
            }
            Action::RestartPostgres {
                role: StartRole::Primary,
            } => write!(f, "restart postgres as primary"),
            Action::RestartPostgres {
                role: StartRole::Standby { upstream: Some(u) },
            } => write!(f, "restart postgres as replica of {u}"),
            Action::RestartPostgres {
                role: StartRole::Standby { upstream: None },
            } => write!(f, "restart postgres as replica without upstream"),
            Action::Promote => write!(f, "promote postgres"),
            Action::Follow { upstream } => write!(f, "follow {upstream}"),
            Action::Clone { upstream } => write!(f, "clone from {upstream}"),
            Action::CloneWithoutLeader => {
                write!(f, "create a replica without a leader (no_leader methods)")
            }
            Action::Rewind { upstream } => write!(f, "rewind from {upstream}"),
            Action::WipeDataDir => write!(f, "wipe data directory"),
            Action::HandOver => {
                write!(f, "hand over: stop postgres (fast) and release leader key")
            }
            Action::ClearFailover { .. } => write!(f, "clear failover key"),
            Action::SetSyncStandbys { value: Some(v) } => {
                write!(f, "set synchronous_standby_names to '{v}'")
            }
            Action::SetSyncStandbys { value: None } => {
                write!(f, "reset synchronous_standby_names to the configured value")
            }
            Action::WriteFailsafe { topology } => {
                let names: Vec<&str> = topology.keys().map(MemberName::as_str).collect();
                write!(f, "write /failsafe [{}]", names.join(", "))
            }
            Action::ExtendFencing { until } => {
                write!(f, "extend the fencing deadline to {}ms", until.as_millis())
            }
            Action::WriteSync { state: None, .. } => write!(f, "delete /sync"),
            Action::WriteSync {
                state: Some(st), ..
            } => {
                let names: Vec<&str> = st.sync_standby.iter().map(MemberName::as_str).collect();
                write!(
                    f,
                    "write /sync: leader {}, sync_standby [{}]",
                    st.leader.as_ref().map_or("-", |l| l.as_str()),
                    names.join(", ")
                )?;
                if st.quorum > 0 {
                    write!(f, ", quorum {}", st.quorum)?;
                }
                Ok(())
            }
        }
    }
}

/// Why a member is not the healthiest candidate in a leader race.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotHealthiest {
    /// Our WAL position is more than `maximum_lag_on_failover` behind the last known optime.
    Lagging { behind: u64, limit: u64 },
    /// Our timeline is behind the cluster's.
    TimelineBehind { mine: Timeline, cluster: Timeline },
    /// Another member still runs PostgreSQL as a primary.
    PrimaryStillAlive { member: MemberName },
    /// Another member has received more WAL.
    PeerAhead {
        member: MemberName,
        theirs: Lsn,
        mine: Lsn,
    },
    /// Another member has the same WAL position and a higher `failover_priority`.
    PeerPreferred {
        member: MemberName,
        theirs: i64,
        mine: i64,
    },
    /// We do not know our own WAL position.
    OwnPositionUnknown,
    /// Synchronous mode: we are not in `/sync`, so we may miss acknowledged commits.
    NotSynchronous,
    /// Quorum mode: too few `/sync` voters vouch that we hold every acknowledged commit.
    NotEnoughVotes { votes: usize, needed: usize },
    /// Synchronous mode: `/sync` is missing (deleted, or never written) or names no leader,
    /// so nothing says who holds every acknowledged commit.
    SyncKeyMissing,
    /// Synchronous mode: `/sync` exists but does not decode.
    SyncKeyUnreadable { why: String },
    /// `watchdog.mode: required` and the watchdog cannot be armed.
    WatchdogUnusable,
}

/// Why a decision refuses to run a writable primary because of the dynamic configuration.
fn unsupported_blocker_text(key: &str) -> String {
    format!(
        "the dynamic configuration sets {key}, which pgbaton does not support yet: no writable \
         primary runs in this cluster until it is removed (edit-config)"
    )
}

impl fmt::Display for NotHealthiest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotHealthiest::Lagging { behind, limit } => {
                write!(
                    f,
                    "my wal position is {behind} bytes behind, more than maximum_lag_on_failover ({limit})"
                )
            }
            NotHealthiest::NotEnoughVotes { votes, needed } => write!(
                f,
                "only {votes} of the {needed} quorum votes needed to prove this node holds every acknowledged commit"
            ),
            NotHealthiest::TimelineBehind { mine, cluster } => {
                write!(
                    f,
                    "my timeline {mine} is behind the cluster timeline {cluster}"
                )
            }
            NotHealthiest::PrimaryStillAlive { member } => {
                write!(f, "Primary ({member}) is still alive")
            }
            NotHealthiest::PeerAhead {
                member,
                theirs,
                mine,
            } => {
                write!(
                    f,
                    "Wal position of {member} ({theirs}) is ahead of my wal position ({mine})"
                )
            }
            NotHealthiest::PeerPreferred {
                member,
                theirs,
                mine,
            } => write!(
                f,
                "{member} has equally tolerable WAL position and priority {theirs}, while this node has priority {mine}"
            ),
            NotHealthiest::OwnPositionUnknown => write!(f, "my wal position is unknown"),
            NotHealthiest::NotSynchronous => write!(
                f,
                "synchronous mode is on and I am not a synchronous standby (not in /sync)"
            ),
            NotHealthiest::SyncKeyMissing => write!(
                f,
                "synchronous mode is on and /sync is missing or names no leader, so nothing says which member holds every acknowledged commit; {SYNC_REMEDY}"
            ),
            NotHealthiest::WatchdogUnusable => write!(
                f,
                "watchdog.mode is required and the watchdog device is not usable"
            ),
            NotHealthiest::SyncKeyUnreadable { why } => write!(
                f,
                "synchronous mode is on and /sync cannot be read ({why}), so nothing says which member holds every acknowledged commit; {SYNC_REMEDY}"
            ),
        }
    }
}

/// What an operator can do when `/sync` cannot say who may be promoted.
const SYNC_REMEDY: &str =
    "to promote anyway, turn synchronous_mode off or run a manual failover to a named candidate";

/// What a diverged standby does about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DivergedRemedy {
    Rewind,
    Reinitialize,
    Nothing,
}

/// Why the decision is what it is. `Display` is the line the log, `/patroni` and `list` show;
/// where Patroni has a message for the same situation, the text is Patroni's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    DcsUnreachable,
    /// Failsafe mode: the lease could not be renewed, every member of the `/failsafe`
    /// topology accepted our `POST /failsafe`; the primary keeps running until `until`.
    FailsafeActive {
        until: Mono,
    },
    /// Failsafe mode kept the primary through a DCS outage and the leader key is free again:
    /// take it back (the members that accepted our requests do not race for it).
    FailsafeReacquiring,
    /// Failsafe mode, lease not renewable, and not every member accepted: fence.
    FailsafeNotConfirmed {
        missing: Vec<MemberName>,
    },
    /// A replica: the primary `leader` sent us `POST /failsafe` within ttl; it is alive, we
    /// do not race for the key.
    FailsafeLeaderAlive {
        leader: MemberName,
    },
    /// Failsafe mode: a member missing from the `/failsafe` key may not become the leader.
    NotInFailsafeTopology,
    /// Standby cluster: we hold the key and replicate from the remote primary.
    StandbyLeaderWithLock,
    /// Standby cluster: we won the race and stay a standby, now of the remote primary.
    AcquiredStandbyLeader,
    /// Standby cluster: PostgreSQL was down while we hold the key; it starts as a standby of
    /// the remote primary.
    StartingAsStandbyLeader,
    /// Standby cluster: no `initialize` key yet; we clone the remote primary.
    BootstrappingStandbyLeader,
    /// Standby cluster (`demote-cluster`): our primary is stopped to come back as the
    /// standby leader, keeping the key.
    DemotingToStandbyLeader,
    DcsUnreachableFencing,
    LeaseExpiredFencing,
    WaitingForLease,
    RacingForInitialize,
    BootstrapInProgress,
    /// A scheduled restart is due and its conditions match.
    ScheduledRestart,
    /// A long action runs beside the loop ([`Observation::running`]).
    InProgress {
        action: ActionKind,
    },
    WaitingForLeaderToBootstrap,
    NotAllowedToBootstrap,
    /// Our bootstrap failed (the initialization was cancelled, the data directory emptied):
    /// no new attempt for `ttl`.
    BootstrapFailed {
        error: String,
    },
    DataDirUnusable {
        error: String,
    },
    SystemIdMismatch {
        ours: String,
        cluster: String,
    },
    LeaderWithLock,
    PromotingWithLock,
    AcquiringLock,
    /// The `pre_promote` script failed: the leader key is released (or not raced for) and
    /// PostgreSQL stays a standby.
    PromotionCancelled {
        error: String,
    },
    StartingPrimaryAfterCrash,
    PrimaryStartTimedOut,
    ReleasingLockPgDown,
    DemotingNotLeader {
        leader: Option<MemberName>,
    },
    Following {
        leader: MemberName,
    },
    /// A `nostream` replica: WAL comes from the archive (`restore_command`) only.
    ArchiveRecovery {
        leader: MemberName,
    },
    /// A replica streaming from its `replicatefrom` member (cascading replication).
    FollowingCascade {
        leader: MemberName,
        upstream: MemberName,
    },
    StartingAsSecondary {
        leader: Option<MemberName>,
    },
    ReattachingLeader,
    /// The leader key is ours but its value does not decode: rewriting it.
    RepairingLeaderKey,
    /// The leader key exists but its value does not decode, and it is not ours: someone
    /// leads, it is not known who. `lease` is the key's lease (0: none, it never expires).
    LeaderKeyUnreadable {
        lease: i64,
    },
    WaitingForPostgres,
    /// Creating a replica: `leader` is the member cloned from (the leader, or a
    /// `clonefrom` replica).
    Cloning {
        leader: MemberName,
    },
    Rewinding {
        leader: MemberName,
    },
    /// A running standby holds WAL the leader's timeline history does not contain.
    Diverged {
        leader: MemberName,
        timeline: Timeline,
        end: Lsn,
        switch: Option<Lsn>,
        /// What is done about it: rewind, re-clone, or nothing (neither is allowed).
        remedy: DivergedRemedy,
    },
    RewindFailedStaying {
        leader: MemberName,
    },
    /// A running standby on the leader's timeline number whose own history has it begin
    /// elsewhere than the cluster's history says (another promotion made the same number:
    /// simulator finding F7). pg_rewind sees one timeline on both sides and would do
    /// nothing: it is re-cloned when allowed.
    ForeignTimeline {
        leader: MemberName,
        timeline: Timeline,
        /// Where our history has `timeline` begin.
        ours: Lsn,
        /// Where the cluster's history has the timeline before it end.
        theirs: Lsn,
        reinitializing: bool,
    },
    /// We were a primary on the timeline the leader created by its own promotion.
    TimelineCollision {
        leader: MemberName,
        timeline: Timeline,
        reinitializing: bool,
    },
    RewindFailedReinitializing {
        leader: MemberName,
    },
    /// We were a primary and the leader's member key does not show it running as a primary
    /// yet: it is no rewind source.
    LeaderInRecovery {
        leader: MemberName,
    },
    /// We were a primary on the leader's timeline and the history does not yet record who
    /// created it: rewinding now could be a no-op on diverged WAL.
    AwaitingTimelineHistory {
        leader: MemberName,
        timeline: Timeline,
    },
    NotHealthiest(NotHealthiest),
    NotAllowedToPromote,
    NoLeaderWaiting,
    /// No leader, an initialized cluster, an empty data directory and a replica method that
    /// works without a leader (Patroni's "bootstrap (without leader)").
    CloningWithoutLeader,
    WaitingForLeaderMember {
        leader: MemberName,
    },
    Paused {
        detail: String,
    },
    SwitchoverDemoting {
        candidate: Option<MemberName>,
    },
    CleaningUpFailover {
        why: String,
    },
    AwaitingScheduledSwitchover {
        at: String,
        in_secs: i64,
    },
    WaitingForCandidate {
        candidate: MemberName,
    },
    WaitingForOthersAfterHandOver,
    ManualCandidate,
    SyncUpdate {
        detail: String,
    },
    /// See [`HaConfig::unsupported_blocker`].
    UnsupportedConfig {
        key: String,
    },
    /// `watchdog.mode: required`, we hold the leader key and the watchdog cannot be armed:
    /// the key is given up (a running primary is stopped first).
    WatchdogUnavailable {
        demoting: bool,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::DcsUnreachable => write!(f, "DCS is not accessible"),
            Reason::FailsafeActive { until } => write!(
                f,
                "continue to run as a leader because failsafe mode is enabled and all members \
                 are accessible (until {}ms)",
                until.as_millis()
            ),
            Reason::FailsafeReacquiring => write!(
                f,
                "taking the leader key back after failsafe mode kept the primary running"
            ),
            Reason::FailsafeNotConfirmed { missing } => {
                let names: Vec<&str> = missing.iter().map(MemberName::as_str).collect();
                write!(
                    f,
                    "demoting self because DCS is not accessible and failsafe mode could not \
                     reach [{}]",
                    names.join(", ")
                )
            }
            Reason::FailsafeLeaderAlive { leader } => write!(
                f,
                "not racing: the primary {leader} is alive (failsafe mode, POST /failsafe within ttl)"
            ),
            Reason::NotInFailsafeTopology => write!(
                f,
                "not racing: this member is not in the /failsafe topology"
            ),
            Reason::DcsUnreachableFencing => {
                write!(
                    f,
                    "demoted self because DCS is not accessible and I was a leader"
                )
            }
            Reason::LeaseExpiredFencing => {
                write!(
                    f,
                    "demoted self because the leader lease could not be renewed before its fencing deadline"
                )
            }
            Reason::WaitingForLease => write!(f, "waiting for a lease from the DCS"),
            Reason::RacingForInitialize => write!(f, "trying to bootstrap a new cluster"),
            Reason::BootstrapInProgress => write!(f, "bootstrap in progress"),
            Reason::ScheduledRestart => write!(f, "restart initiated (scheduled)"),
            Reason::InProgress { action } => write!(f, "{} in progress", action.long_label()),
            Reason::WaitingForLeaderToBootstrap => write!(f, "waiting for leader to bootstrap"),
            Reason::BootstrapFailed { error } => write!(
                f,
                "bootstrap failed (initialization cancelled, data directory removed), \
                 retrying after ttl: {error}"
            ),
            Reason::NotAllowedToBootstrap => {
                write!(
                    f,
                    "not allowed to bootstrap a new cluster (nofailover or no bootstrap section); waiting for a leader"
                )
            }
            Reason::DataDirUnusable { error } => {
                write!(f, "data directory is not usable, leaving it alone: {error}")
            }
            Reason::SystemIdMismatch { ours, cluster } => write!(
                f,
                "system ID mismatch, node belongs to a different cluster: {ours} != {cluster}"
            ),
            Reason::LeaderWithLock => write!(f, "no action. I am the leader with the lock"),
            Reason::PromotingWithLock => {
                write!(f, "promoted self to leader because I had the session lock")
            }
            Reason::AcquiringLock => {
                write!(f, "promoted self to leader by acquiring session lock")
            }
            Reason::StandbyLeaderWithLock => {
                write!(f, "no action. I am the standby leader with the lock")
            }
            Reason::AcquiredStandbyLeader => {
                write!(
                    f,
                    "promoted self to a standby leader by acquiring session lock"
                )
            }
            Reason::StartingAsStandbyLeader => {
                write!(
                    f,
                    "starting as a standby leader because i had the session lock"
                )
            }
            Reason::BootstrappingStandbyLeader => {
                write!(f, "trying to bootstrap a new standby leader")
            }
            Reason::DemotingToStandbyLeader => write!(
                f,
                "demoting self to a standby leader: the dynamic configuration sets standby_cluster"
            ),
            Reason::PromotionCancelled { error } => write!(
                f,
                "Promotion cancelled because the pre-promote script failed: {error}"
            ),
            Reason::StartingPrimaryAfterCrash => write!(f, "starting primary after failure"),
            Reason::PrimaryStartTimedOut => write!(
                f,
                "removed leader key after trying and failing to start postgres within primary_start_timeout"
            ),
            Reason::ReleasingLockPgDown => {
                write!(
                    f,
                    "removed leader key because postgres is not running as primary"
                )
            }
            Reason::DemotingNotLeader { .. } => {
                write!(
                    f,
                    "demoting self because I do not have the lock and I was a leader"
                )
            }
            Reason::Following { leader } => {
                write!(
                    f,
                    "no action. I am a secondary, and following a leader ({leader})"
                )
            }
            Reason::ArchiveRecovery { leader } => {
                write!(
                    f,
                    "no action. I am a secondary, and following a leader ({leader}) from the WAL \
                     archive (nostream)"
                )
            }
            Reason::FollowingCascade { leader, upstream } => {
                write!(
                    f,
                    "no action. I am a secondary, and following a leader ({leader}) through \
                     {upstream} (replicatefrom)"
                )
            }
            Reason::StartingAsSecondary {
                leader: Some(leader),
            } => {
                write!(f, "starting as a secondary following {leader}")
            }
            Reason::StartingAsSecondary { leader: None } => {
                write!(f, "starting as a secondary; no leader to follow yet")
            }
            Reason::ReattachingLeader => write!(
                f,
                "postgres is running as primary and the leader key still holds my name: re-attaching it to my lease"
            ),
            Reason::RepairingLeaderKey => write!(
                f,
                "the leader key is mine but its value is unreadable: rewriting it with my name"
            ),
            Reason::LeaderKeyUnreadable { lease: 0 } => write!(
                f,
                "the leader key exists but its value is unreadable and it is attached to no lease, so it never expires: waiting for its holder to rewrite it (delete the key if its holder is gone)"
            ),
            Reason::LeaderKeyUnreadable { .. } => write!(
                f,
                "the leader key exists but its value is unreadable: someone leads, not known who; waiting for its holder to rewrite it or for its lease to expire"
            ),
            Reason::WaitingForPostgres => {
                write!(f, "postgres is running but does not answer yet; waiting")
            }
            Reason::Cloning { leader } => write!(f, "creating replica from {leader}"),
            Reason::Rewinding { leader } => {
                write!(f, "running pg_rewind from {leader} before following it")
            }
            Reason::Diverged {
                leader,
                timeline,
                end,
                switch,
                remedy,
            } => {
                let at = match switch {
                    Some(lsn) => format!("past {lsn}, where {leader}'s history left that timeline"),
                    None => format!("a timeline {leader} never had"),
                };
                write!(
                    f,
                    "diverged from {leader}: WAL up to {end} on timeline {} ({at}); {}",
                    timeline.0,
                    match remedy {
                        DivergedRemedy::Rewind => "stopping for pg_rewind",
                        DivergedRemedy::Reinitialize =>
                            "use_pg_rewind is off; re-creating the replica",
                        DivergedRemedy::Nothing =>
                            "use_pg_rewind and remove_data_directory_on_rewind_failure are off; it cannot stream",
                    }
                )
            }
            Reason::ForeignTimeline {
                leader,
                timeline,
                ours,
                theirs,
                reinitializing,
            } => write!(
                f,
                "our timeline {} began at {ours}, {leader}'s at {theirs}: another promotion made the same timeline number, pg_rewind cannot tell them apart; {}",
                timeline.0,
                if *reinitializing {
                    "re-creating the replica"
                } else {
                    "remove_data_directory_on_rewind_failure is off; it cannot stream"
                }
            ),
            Reason::TimelineCollision {
                leader,
                timeline,
                reinitializing,
            } => write!(
                f,
                "this member and {leader} were both promoted to timeline {}: pg_rewind cannot tell them apart; {}",
                timeline.0,
                if *reinitializing {
                    "re-creating the replica"
                } else {
                    "remove_data_directory_on_rewind_failure is off; staying stopped (reinitialize it)"
                }
            ),
            Reason::LeaderInRecovery { leader } => write!(
                f,
                "leader {leader} is still in recovery and therefore can't be used for rewind; waiting"
            ),
            Reason::AwaitingTimelineHistory { leader, timeline } => write!(
                f,
                "this member was a primary on timeline {} and {leader} is on it too; waiting for the history to record who created it before rejoining",
                timeline.0
            ),
            Reason::RewindFailedStaying { leader } => write!(
                f,
                "pg_rewind from {leader} failed and remove_data_directory_on_rewind_failure is off; staying stopped"
            ),
            Reason::RewindFailedReinitializing { leader } => write!(
                f,
                "pg_rewind from {leader} failed; removing data directory to re-clone"
            ),
            Reason::NotHealthiest(why) => write!(
                f,
                "following a different leader because i am not the healthiest node: {why}"
            ),
            Reason::NotAllowedToPromote => write!(
                f,
                "following a different leader because I am not allowed to promote"
            ),
            Reason::NoLeaderWaiting => write!(f, "no leader; waiting for one to appear"),
            Reason::CloningWithoutLeader => {
                write!(
                    f,
                    "bootstrap (without leader): creating replica by no_leader methods"
                )
            }
            Reason::WaitingForLeaderMember { leader } => {
                write!(
                    f,
                    "waiting for the leader ({leader}) to publish its member key"
                )
            }
            Reason::Paused { detail } => write!(f, "PAUSE: {detail}"),
            Reason::SwitchoverDemoting { candidate: Some(c) } => {
                write!(f, "switchover: demoting myself in favour of {c}")
            }
            Reason::SwitchoverDemoting { candidate: None } => {
                write!(f, "switchover: demoting myself")
            }
            Reason::CleaningUpFailover { why } => write!(f, "Cleaning up failover key: {why}"),
            // No countdown in the text: the reason is logged when it changes, not every second.
            Reason::AwaitingScheduledSwitchover { at, .. } => {
                write!(f, "Awaiting switchover at {at}")
            }
            Reason::WaitingForCandidate { candidate } => write!(
                f,
                "following a different leader because {candidate} is the manual failover candidate"
            ),
            Reason::SyncUpdate { detail } => write!(f, "{detail}"),
            Reason::UnsupportedConfig { key } => write!(f, "{}", unsupported_blocker_text(key)),
            Reason::WatchdogUnavailable { demoting: true } => {
                write!(f, "Demoting self because watchdog could not be activated")
            }
            Reason::WatchdogUnavailable { demoting: false } => {
                write!(
                    f,
                    "Not promoting self because watchdog could not be activated"
                )
            }
            Reason::ManualCandidate => write!(
                f,
                "promoted self to leader by acquiring session lock as the manual failover candidate"
            ),
            Reason::WaitingForOthersAfterHandOver => write!(
                f,
                "I handed leadership over in a switchover: waiting for another member to take it"
            ),
        }
    }
}

/// The output of [`crate::decide`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub actions: Vec<Action>,
    pub reason: Reason,
    pub next_memory: Memory,
    /// When to run the next cycle at the latest (earlier on a DCS or PostgreSQL event).
    pub wake_at: Mono,
}
