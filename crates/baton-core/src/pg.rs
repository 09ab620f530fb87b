//! What the local PostgreSQL looks like: the data directory (from `pg_controldata`), the
//! postmaster process, and — when it answers — the SQL-level state.

use crate::types::{Lsn, Timeline};

/// One observation of the local PostgreSQL instance.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PgState {
    pub data_dir: DataDir,
    pub process: PgProcess,
    /// `None` when PostgreSQL is not running or did not answer in time.
    pub sql: Option<PgSql>,
}

impl PgState {
    pub fn is_running(&self) -> bool {
        matches!(self.process, PgProcess::Running { .. })
    }

    /// Running and answering SQL as a primary (not in recovery).
    pub fn is_primary(&self) -> bool {
        self.sql.as_ref().is_some_and(|s| !s.in_recovery)
    }

    /// Running and answering SQL as a standby.
    pub fn is_replica(&self) -> bool {
        self.sql.as_ref().is_some_and(|s| s.in_recovery)
    }

    /// The timeline the instance is on: SQL when running, else `pg_controldata`.
    pub fn timeline(&self) -> Option<Timeline> {
        match (&self.sql, &self.data_dir) {
            (Some(sql), _) => Some(sql.timeline),
            (None, DataDir::Initialized(c)) => Some(c.timeline),
            _ => None,
        }
    }

    /// Patroni's `last_operation()`: primary → flush LSN; replica → max(received, replayed);
    /// stopped → the checkpoint location from `pg_controldata`.
    pub fn wal_position(&self) -> Option<Lsn> {
        match (&self.sql, &self.data_dir) {
            (Some(sql), _) => Some(sql.wal_position()),
            (None, DataDir::Initialized(c)) => Some(c.checkpoint_lsn),
            _ => None,
        }
    }

    pub fn system_id(&self) -> Option<&str> {
        match &self.data_dir {
            DataDir::Initialized(c) => Some(&c.system_id),
            _ => None,
        }
    }
}

/// The data directory as `pg_controldata` sees it.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum DataDir {
    /// Missing or empty: a bootstrap or a clone is needed.
    #[default]
    Empty,
    Initialized(ControlData),
    /// Present but unreadable (permissions, corrupt `global/pg_control`, ...). Never treated as
    /// empty: it is not wiped automatically.
    Unusable(String),
}

/// Fields of `pg_controldata` output that matter to the HA logic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlData {
    /// "Database system identifier".
    pub system_id: String,
    /// "Database cluster state".
    pub state: ClusterState,
    /// "Latest checkpoint's TimeLineID".
    pub timeline: Timeline,
    /// "Latest checkpoint location".
    pub checkpoint_lsn: Lsn,
    /// "Latest checkpoint's REDO location".
    pub redo_lsn: Lsn,
    /// "Minimum recovery ending location".
    pub min_recovery_end_lsn: Lsn,
    /// "Minimum recovery ending loc's timeline".
    pub min_recovery_end_timeline: Timeline,
    /// "wal_log_hints setting: on" or "Data page checksum version" > 0: pg_rewind can work.
    pub rewindable: bool,
}

impl Default for ControlData {
    fn default() -> ControlData {
        ControlData {
            system_id: String::new(),
            state: ClusterState::ShutDown,
            timeline: Timeline(1),
            checkpoint_lsn: Lsn(0),
            redo_lsn: Lsn(0),
            min_recovery_end_lsn: Lsn(0),
            min_recovery_end_timeline: Timeline(0),
            rewindable: false,
        }
    }
}

/// "Database cluster state" from `pg_controldata`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterState {
    Starting,
    ShutDown,
    ShutDownInRecovery,
    ShuttingDown,
    InCrashRecovery,
    InArchiveRecovery,
    InProduction,
}

impl ClusterState {
    pub fn parse(s: &str) -> Option<ClusterState> {
        Some(match s.trim() {
            "starting up" => ClusterState::Starting,
            "shut down" => ClusterState::ShutDown,
            "shut down in recovery" => ClusterState::ShutDownInRecovery,
            "shutting down" => ClusterState::ShuttingDown,
            "in crash recovery" => ClusterState::InCrashRecovery,
            "in archive recovery" => ClusterState::InArchiveRecovery,
            "in production" => ClusterState::InProduction,
            _ => return None,
        })
    }

    /// The data directory last ran as a primary (Patroni `_is_primary_from_controldata`… and the
    /// trigger for a rewind check when it comes back under another leader).
    pub fn was_primary(self) -> bool {
        matches!(
            self,
            ClusterState::InProduction
                | ClusterState::ShutDown
                | ClusterState::ShuttingDown
                | ClusterState::InCrashRecovery
        )
    }

    /// Not shut down cleanly: pg_rewind refuses such a target until crash recovery has run.
    pub fn is_unclean(self) -> bool {
        matches!(
            self,
            ClusterState::InProduction | ClusterState::ShuttingDown | ClusterState::InCrashRecovery
        )
    }
}

/// The postmaster process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PgProcess {
    #[default]
    Stopped,
    /// A postmaster is alive (from `postmaster.pid` and a signal-0 probe).
    Running { pid: i32 },
}

/// SQL-level state, from one round of queries with a timeout.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PgSql {
    /// `server_version_num`, e.g. 150008.
    pub server_version: u32,
    /// `pg_postmaster_start_time()` as PostgreSQL prints it (`2024-08-28 19:39:26.352526+00:00`).
    pub postmaster_start_time: String,
    pub in_recovery: bool,
    pub timeline: Timeline,
    /// Primary: `pg_current_wal_flush_lsn()`.
    pub flush_lsn: Option<Lsn>,
    /// Replica: `pg_last_wal_receive_lsn()` (or the WAL receiver's written position).
    pub received_lsn: Option<Lsn>,
    /// Replica: `pg_last_wal_replay_lsn()`.
    pub replayed_lsn: Option<Lsn>,
    /// Replica: `pg_last_xact_replay_timestamp()` as text.
    pub replayed_timestamp: Option<String>,
    pub replay_paused: bool,
    /// Replica: the WAL receiver is streaming (`pg_stat_wal_receiver.status = 'streaming'`).
    pub streaming: bool,
    /// Replica: `pg_stat_wal_receiver.latest_end_lsn`.
    pub receiver_latest_end_lsn: Option<Lsn>,
    /// Primary: one row per WAL sender (`pg_stat_replication`).
    pub replication: Vec<ReplicationRow>,
    /// Physical replication slots present on this instance that pgbaton manages (it created
    /// them, or adopted them as a member's slot); slots other tools made are not listed.
    pub slots: Vec<String>,
    /// Every non-temporary replication slot on this instance (whoever made it), with its
    /// kind, position and whether pgbaton owns it (`crate::slots`).
    pub replication_slots: Vec<crate::slots::SlotInfo>,
    /// `pending_restart` is true for some setting in `pg_settings`.
    pub pending_restart: bool,
    /// The current value of `synchronous_standby_names`.
    pub synchronous_standby_names: String,
    /// The current value of `synchronous_commit`: which standby position a commit waits for
    /// (`remote_apply`: replay, `remote_write`: write, otherwise flush).
    pub synchronous_commit: String,
    /// The newest timeline history file in `pg_wal`. A standby whose WAL receiver is down
    /// reports the last checkpoint's timeline, which lags a timeline switch it has already
    /// followed; the history file does not (and a promotion picks a timeline above it).
    pub newest_history: Option<Timeline>,
    /// Where this member's newest timeline began, by its own newest history file in
    /// `pg_wal`. Read only for a standby that is not streaming (the one case `decide` needs
    /// it: a timeline number whose switch point the cluster's history gives differently is
    /// not the cluster's timeline of that number).
    pub timeline_start: Option<TimelineStart>,
}

/// The last line of a member's own timeline history file `<timeline>.history`: `timeline`
/// began where `parent` ended, at `at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimelineStart {
    pub timeline: Timeline,
    pub parent: Timeline,
    pub at: Lsn,
}

impl PgSql {
    /// The position of a standby that a commit on this primary waits for, as
    /// `synchronous_commit` says (Patroni measures `maximum_lag_on_syncnode` on it).
    pub fn commit_waits_for(&self, row: &ReplicationRow) -> Option<Lsn> {
        match self.synchronous_commit.as_str() {
            "remote_apply" => row.replay_lsn,
            "remote_write" => row.write_lsn,
            _ => row.flush_lsn,
        }
    }

    /// The timeline to publish and to compare with the cluster's: the reported one, or the
    /// newest history file's when that is later (a standby without a WAL receiver).
    pub fn effective_timeline(&self) -> Timeline {
        self.newest_history
            .map_or(self.timeline, |h| h.max(self.timeline))
    }

    pub fn wal_position(&self) -> Lsn {
        if self.in_recovery {
            self.received_lsn.max(self.replayed_lsn).unwrap_or_default()
        } else {
            self.flush_lsn.unwrap_or_default()
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicationRow {
    pub pid: i32,
    pub usename: String,
    pub application_name: String,
    pub client_addr: Option<String>,
    pub state: String,
    pub sync_state: String,
    pub sync_priority: i32,
    pub write_lsn: Option<Lsn>,
    pub flush_lsn: Option<Lsn>,
    pub replay_lsn: Option<Lsn>,
}
