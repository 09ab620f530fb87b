//! pgbaton's domain vocabulary and its decision core.
//!
//! Pure: no IO, no clock, no randomness, no async runtime. [`decide`] is a total function from
//! (memory, observation, config, now) to a [`Decision`]: typed actions in order, a typed
//! [`Reason`] whose `Display` is the line operators see, the memory for the next cycle and the
//! time of the next wake-up.

mod bootstrap;
mod commands;
mod decide;
mod decision;
mod diverge;
/// Properties checked by the fuzz targets and the proptest smoke tests (feature `fuzzing`).
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod outcome;
mod pg;
mod replica;
mod restart;
pub mod slot_readiness;
pub mod slots;
mod sync;
mod time;
mod topology;
mod types;
mod view;

pub use bootstrap::{CustomBootstrap, custom_bootstrap_args};
pub use commands::{
    Refusal, ShutdownPlan, SwitchoverAsk, SwitchoverNext, check_candidates, check_reinitialize,
    check_switchover, shutdown_plan, switchover_action,
};
pub use decide::{decide, may_be_primary};
pub use decision::{
    Action, ActionFailure, ActionKind, Decision, DivergedRemedy, FailsafeObservation, FailsafePing,
    FailsafeRound, HaConfig, LeaseState, Memory, NotHealthiest, Observation, PeerStatus, Reason,
    StandbyCluster, StartRole, StopMode, SyncConfig, SyncMode, Upstream, WatchdogMode,
    WatchdogState,
};
pub use diverge::{Divergence, divergence, foreign_timeline, leader_timeline};
pub use outcome::{ActionOutcome, FenceSignal, fence_signal, holds_leader_key, last_failure};
pub use pg::{
    ClusterState, ControlData, DataDir, PgProcess, PgSql, PgState, ReplicationRow, TimelineStart,
};
pub use replica::{
    CustomMethod, ReplicaMethod, custom_method_args, methods_to_try, standby_leader_methods,
};
pub use restart::{
    RestartFilters, RestartMismatch, RestartRole, ScheduleState, ScheduledRestart,
    parse_postgres_version, restart_action, restart_matches, schedule_state,
};
pub use sync::{
    STRICT_PLACEHOLDER, parse_ssn, quote_ident, render_ssn, render_ssn_quorum, ssn_num,
};
pub use time::{civil_from_days, days_from_civil, format_iso8601_utc, parse_iso8601};
pub use topology::{clone_source, slots_kept_by, stream_source, usable_upstream};
pub use types::{Clock, Lsn, MemberName, Mono, ParseLsnError, Timeline};
pub use view::{
    ClusterView, FailoverRequest, FailsafeTopology, HistoryLine, LeaderKey, LeaderStatus, Member,
    SyncKey, SyncState, Tags, Versioned,
};
