//! The REST API: Patroni-compatible paths, status codes and JSON, served by axum.
//!
//! Handlers never touch etcd or PostgreSQL. They answer from the [`Snapshot`] the agent
//! publishes after every cycle (a `watch` channel) and from the clock: `/primary` answers 200
//! only while the snapshot says we hold the leader key *and* the fencing deadline has not
//! passed, so a frozen agent stops attracting writes even before anything else happens.

use std::sync::Arc;
use std::time::Duration;

use baton_core::{Clock, ClusterView, MemberName, Mono, PgSql, Tags};
use tokio::sync::watch;

mod actions;
mod audit;
mod auth;
mod failsafe;
/// Properties checked by the fuzz targets and the proptest smoke tests (feature `fuzzing`).
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod handlers;
mod metrics;
mod query;
mod server;
mod status;
#[cfg(test)]
mod tests;
pub mod tls;

pub use actions::{Command, CommandReply, RestartRequest, SwitchoverRequest, merge_patch};
pub use audit::AuditLog;
pub use failsafe::{FailsafeInbox, answer_post as answer_failsafe_post};
pub use handlers::{router, serve};
pub use server::{Access, Limits, ServeOptions, resolve_allowlist, serve_with};
pub use status::{live_snapshot, peer_status_from_json, status_json};
pub use tls::{ClientAuth, ClientTlsSettings, ServerTls, ServerTlsSettings, TlsError};

/// pgbaton's version, reported where Patroni reports its own (`patroni.version`, `/metrics`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// PostgreSQL's state as Patroni's `PostgresqlState` names it (the states pgbaton reports).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PgRunState {
    Running,
    Starting,
    Stopped,
    Stopping,
    Restarting,
    CreatingReplica,
    InitializingNewCluster,
    /// A custom bootstrap (`bootstrap.method`): its command, then the recovery after it.
    RunningCustomBootstrap,
    /// pgbaton's: `pg_rewind` runs (Patroni shows the state it had before).
    RunningPgRewind,
}

impl PgRunState {
    /// Patroni's text (`/patroni`'s `state`, the member key, `list`).
    pub fn as_str(self) -> &'static str {
        match self {
            PgRunState::Running => "running",
            PgRunState::Starting => "starting",
            PgRunState::Stopped => "stopped",
            PgRunState::Stopping => "stopping",
            PgRunState::Restarting => "restarting",
            PgRunState::CreatingReplica => "creating replica",
            PgRunState::InitializingNewCluster => "initializing new cluster",
            PgRunState::RunningCustomBootstrap => "running custom bootstrap script",
            PgRunState::RunningPgRewind => "running pg_rewind",
        }
    }
}

/// The member's role as Patroni prints it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberRole {
    Primary,
    Replica,
    /// The leader of a standby cluster: it holds the key and replicates from the remote
    /// primary.
    StandbyLeader,
    Uninitialized,
}

impl MemberRole {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberRole::Primary => "primary",
            MemberRole::Replica => "replica",
            MemberRole::StandbyLeader => "standby_leader",
            MemberRole::Uninitialized => "uninitialized",
        }
    }
}

/// What the agent publishes after each cycle. Cheap to clone behind an `Arc`.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub scope: String,
    pub name: MemberName,
    /// PostgreSQL's state (Patroni's `PostgresqlState`).
    pub state: PgRunState,
    pub role: MemberRole,
    /// SQL-level state when PostgreSQL answered in the last cycle.
    pub pg: Option<PgSql>,
    /// The settings waiting for a PostgreSQL restart, as the last configuration change
    /// reported them; shown while `pg` says a restart is pending.
    pub pending_restart_reason: Vec<PendingRestart>,
    /// A restart scheduled on this member (`POST /restart` with `schedule`): the schedule.
    pub scheduled_restart: Option<String>,
    /// Database system identifier, from `pg_controldata`.
    pub system_id: Option<String>,
    /// We hold the leader key (as of the last cycle).
    pub holds_leader_key: bool,
    /// The fencing deadline of our lease; `/primary` and `/leader` answer 200 only before it.
    pub fence_deadline: Option<Mono>,
    /// The last DCS view; `None` when the DCS was not readable in the last cycle.
    pub cluster: Option<ClusterView>,
    /// Unix time (seconds) of the last successful DCS read.
    pub dcs_last_seen: Option<u64>,
    pub tags: Tags,
    pub pause: bool,
    /// PostgreSQL has a `restore_command` (GUC on 12+, or `postgresql.recovery_conf`): a replica
    /// that is not streaming then reports `replication_state: "in archive recovery"`.
    pub restore_command: bool,
    /// The watchdog is required by the configuration but not available or failed; reported as
    /// `watchdog_failed: true`, which keeps this node out of the leader race on the others.
    pub watchdog_failed: bool,
    /// The watchdog device is armed (pgbaton's `pgbaton_watchdog_armed` metric).
    pub watchdog_armed: bool,
    /// The `Display` of the last decision's reason.
    pub last_reason: String,
    /// When the last HA cycle finished (for `/liveness`).
    pub last_cycle: Mono,
    pub ttl: Duration,
    pub loop_wait: Duration,
    pub maximum_lag_on_failover: u64,
    /// `http://<restapi.connect_address>/patroni`
    pub api_url: String,
    /// Dynamic `failsafe_mode` as the agent runs with it.
    pub failsafe_mode: bool,
    /// Failsafe mode is active: our primary runs on a `POST /failsafe` round (leader), or a
    /// leader's `POST /failsafe` we accepted is younger than ttl (replica).
    pub failsafe_active: bool,
    /// `postgres://<postgresql.connect_address>/postgres`
    pub conn_url: String,
}

impl Snapshot {
    /// A snapshot for an agent that has not finished its first cycle.
    pub fn initial(scope: &str, name: MemberName, api_url: String, conn_url: String) -> Snapshot {
        Snapshot {
            scope: scope.to_owned(),
            name,
            state: PgRunState::Stopped,
            role: MemberRole::Uninitialized,
            pg: None,
            pending_restart_reason: Vec::new(),
            scheduled_restart: None,
            system_id: None,
            holds_leader_key: false,
            fence_deadline: None,
            cluster: None,
            dcs_last_seen: None,
            tags: Tags::default(),
            pause: false,
            restore_command: false,
            watchdog_failed: false,
            watchdog_armed: false,
            last_reason: "starting".to_owned(),
            last_cycle: Mono(0),
            ttl: Duration::from_secs(30),
            loop_wait: Duration::from_secs(10),
            maximum_lag_on_failover: 1_048_576,
            api_url,
            conn_url,
            failsafe_mode: false,
            failsafe_active: false,
        }
    }

    /// Leader for health purposes: holds the key and the fencing deadline is in the future.
    pub fn is_leader_at(&self, now: Mono) -> bool {
        self.holds_leader_key && self.fence_deadline.is_some_and(|d| now < d)
    }
}

/// One setting waiting for a PostgreSQL restart: `pending_restart_reason` in `GET /patroni`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingRestart {
    pub name: String,
    /// The running value.
    pub old_value: String,
    /// The configured value.
    pub new_value: String,
}

/// Shared state of the handlers: read-only views plus the clock.
#[derive(Clone)]
pub struct ApiState {
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    pub clock: Arc<dyn Clock>,
    /// `restapi.authentication` (user, password) for unsafe endpoints.
    pub auth: Option<(String, String)>,
    /// Where unsafe endpoints send their requests; `None`: they answer 503.
    pub commands: Option<tokio::sync::mpsc::Sender<Command>>,
    /// The floating IP task's state; `None` when no `vip` section is configured.
    pub vip: Option<watch::Receiver<VipStatus>>,
    /// Refused logins (rate-limited) and accepted unsafe requests, with who asked.
    pub audit: AuditLog,
    /// `POST /failsafe` requests accepted, for the agent's observation.
    pub failsafe: FailsafeInbox,
    /// PostgreSQL's SQL state queried now, for a peer's `GET /patroni` during the leader race
    /// ([`LIVE_HEADER`]); `None`: answered from the snapshot. The agent supplies it; the API
    /// never talks to PostgreSQL itself.
    pub live_sql: Option<LiveSql>,
}

/// Queries PostgreSQL's positions and timeline now (the agent's `Postgres::live_sql`).
pub type LiveSql = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<PgSql>> + Send>>
        + Send
        + Sync,
>;

/// The request header with which a racing peer asks `GET /patroni` for positions read from
/// PostgreSQL at that moment (Patroni queries PostgreSQL on every `/patroni`; pgbaton answers
/// from the last cycle's snapshot otherwise, which can be a loop old).
pub const LIVE_HEADER: &str = "x-pgbaton-live";

/// How long a live query may take before `GET /patroni` falls back to the snapshot (the
/// racing peer's probe waits at least 500 ms).
pub const LIVE_TIMEOUT: Duration = Duration::from_millis(250);

/// The floating IP as the agent's VIP task last left it: `vip` in `GET /patroni` (a pgbaton
/// extension; Patroni's tools ignore it) and `pgbaton_vip_*` in `GET /metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct VipStatus {
    /// `10.0.0.100/24`
    pub address: String,
    pub interface: String,
    /// The address is on this host's interface (as last added, removed or observed).
    pub present: bool,
    /// This node should hold it: leader key held, lease valid, PostgreSQL a primary.
    pub desired: bool,
    /// The last failed operation, until one succeeds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
