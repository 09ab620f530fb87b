//! The local PostgreSQL's port: [`Postgres`] and what its methods return.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use baton_core::{
    CustomBootstrap, HistoryLine, PgSql, PgState, ReplicaMethod, StartRole, StopMode, Upstream,
};

use crate::BoxError;

/// What can go wrong with the local PostgreSQL. The message is complete on its own; `source`
/// keeps the underlying error (the SQL client's, the operating system's) where there is one.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// A binary exited non-zero; carries the command line and the tail of its output.
    #[error("{command} failed: {detail}")]
    Command { command: String, detail: String },
    #[error("{what} timed out after {after:?}")]
    Timeout { what: String, after: Duration },
    /// A long-running binary (pg_basebackup, pg_rewind) read and wrote nothing for `after`:
    /// it was killed with its process group.
    #[error("{what} made no progress (read or wrote nothing) for {after:?}: killed")]
    Stalled { what: String, after: Duration },
    /// A query failed: `message` is what was asked and the server's answer (severity, message,
    /// SQLSTATE); `source` is the SQL client's error.
    #[error("sql: {message}")]
    Sql {
        message: String,
        #[source]
        source: Option<BoxError>,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A file pgbaton writes could not be rendered (a parameter name or value it refuses):
    /// the renderer's error, as it is.
    #[error(transparent)]
    Render(BoxError),
    #[error("{0}")]
    Other(String),
}

impl PgError {
    /// [`PgError::Sql`] without an underlying error (a query answered, but not as expected).
    pub fn sql(message: impl Into<String>) -> PgError {
        PgError::Sql {
            message: message.into(),
            source: None,
        }
    }
}

/// A setting whose configured value takes effect only when PostgreSQL restarts (`pending_restart`
/// in `pg_settings`): Patroni's `pending_restart_reason` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingSetting {
    pub name: String,
    /// The running value, as `SHOW` prints it.
    pub old_value: String,
    /// The value in the configuration files.
    pub new_value: String,
}

/// A setting written higher than configured on a standby: recovery needs at least the value
/// the primary runs with (as `pg_controldata` records it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaisedSetting {
    pub name: String,
    pub configured: String,
    pub written: u64,
}

/// What [`Postgres::reconfigure`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reconfigured {
    /// `postgresql.conf` or `pg_hba.conf` was rewritten.
    pub rewritten: bool,
    /// The running server re-read its configuration files.
    pub reloaded: bool,
    /// Why the files were not written now (they are when PostgreSQL next starts or follows
    /// its upstream).
    pub deferred: Option<&'static str>,
    /// Settings that wait for a restart (PostgreSQL is never restarted for them).
    pub pending_restart: Vec<PendingSetting>,
    /// Entries of our `postgresql.conf` the server did not apply for another reason: (name,
    /// PostgreSQL's error).
    pub rejected: Vec<(String, String)>,
    /// Parameters kept at the value the agent started with, since the agent's own connections
    /// depend on them (`unix_socket_directories`).
    pub kept: Vec<String>,
    /// Standby settings raised to the primary's values.
    pub raised: Vec<RaisedSetting>,
}

/// The local PostgreSQL instance.
///
/// Every method is bounded in time and never panics on bad state; errors carry the command
/// and the tail of its output.
pub trait Postgres: Send + Sync + 'static {
    /// Data directory, process and (if running) SQL state. Never fails: what could not be
    /// read is absent in the result.
    fn observe(&self) -> impl Future<Output = PgState> + Send;

    /// PostgreSQL's SQL state (positions, timeline) queried now, for a racing peer's
    /// `GET /patroni` (the REST API calls it beside the loop, under a short timeout). `None`
    /// when PostgreSQL does not run or answer. The default asks `observe`; implementations
    /// override it with the SQL round alone.
    fn live_sql(&self) -> impl Future<Output = Option<PgSql>> + Send {
        let state = self.observe();
        async move { state.await.sql }
    }

    /// Cheap check that a postmaster is alive (for noticing a crash within a second, polled
    /// several times per second). The default asks `observe`; implementations override it
    /// with a `postmaster.pid` + signal-0 probe.
    fn is_alive(&self) -> impl Future<Output = bool> + Send {
        let state = self.observe();
        async move { state.await.is_running() }
    }

    /// Wait until the running postmaster exits, where the implementation can wait on it
    /// (`LocalPostgres`: a pidfd, woken by the kernel at the exit): `true` once the postmaster
    /// that ran when this was called is gone (or none ran). `false` at once when it cannot
    /// wait; the caller then polls [`Postgres::is_alive`]. The default cannot wait.
    fn postmaster_exit(&self) -> impl Future<Output = bool> + Send {
        std::future::ready(false)
    }

    /// `initdb` with the configured options; writes `postgresql.conf` / `pg_hba.conf`.
    fn initdb(&self) -> impl Future<Output = Result<(), PgError>> + Send;

    /// A custom bootstrap instead of `initdb` + start: run `method`'s command into the empty
    /// data directory, start the server with the method's recovery settings, wait (no
    /// deadline: a restore takes what it takes; killed when it stalls or stops) until it
    /// runs as a primary, create the roles, then remove the recovery settings. Returns with
    /// the server running as a primary. The default refuses: an implementation without
    /// commands cannot run one.
    fn custom_bootstrap(
        &self,
        method: &CustomBootstrap,
    ) -> impl Future<Output = Result<(), PgError>> + Send {
        let name = method.name.clone();
        async move {
            Err(PgError::Other(format!(
                "custom bootstrap {name:?} is not supported here"
            )))
        }
    }

    /// Adopt new `postgresql.recovery_conf` settings for the files written from now on (a
    /// standby's recovery section); the next [`Postgres::reconfigure`] writes them into a
    /// running server and reloads it. Values that cannot be written are an error and change
    /// nothing. The default accepts none.
    fn set_recovery_conf(&self, settings: &[(String, String)]) -> Result<(), PgError> {
        if settings.is_empty() {
            Ok(())
        } else {
            Err(PgError::Other(
                "recovery settings (postgresql.recovery_conf) are not supported here".into(),
            ))
        }
    }

    /// Write the configuration files for `role` (a primary; or a standby with `standby.signal`,
    /// streaming from its upstream when it has one) and start the server, waiting until it
    /// accepts connections (bounded by `pg_ctl_timeout`).
    fn start(&self, role: &StartRole) -> impl Future<Output = Result<(), PgError>> + Send;

    /// Stop the server. `Immediate` escalates to SIGKILL of the postmaster's whole process
    /// group when `pg_ctl` does not finish in time; returns only once no postmaster is left.
    fn stop(&self, mode: StopMode) -> impl Future<Output = Result<(), PgError>> + Send;

    /// `pg_ctl promote -w`; returns once `pg_is_in_recovery()` is false.
    fn promote(&self) -> impl Future<Output = Result<(), PgError>> + Send;

    /// Rewrite recovery settings to stream from `upstream` and reload. `Ok(false)` when they
    /// were already right (no reload).
    fn follow(&self, upstream: &Upstream) -> impl Future<Output = Result<bool, PgError>> + Send;

    /// Empty the data directory and `pg_basebackup` from `upstream` (as the replication user).
    fn clone_replica(
        &self,
        upstream: &Upstream,
    ) -> impl Future<Output = Result<(), PgError>> + Send;

    /// Create the data directory from `source` (none: no member to copy from) by `methods`
    /// in order, falling back to the next on failure (`baton_core::methods_to_try`): the one
    /// entry point for any caller with its own source and methods (a standby cluster's
    /// leader copying from the remote primary, say). The default, for implementations
    /// without custom methods, runs `basebackup` only, as [`Postgres::clone_replica`].
    fn create_replica(
        &self,
        source: Option<&Upstream>,
        methods: &[ReplicaMethod],
    ) -> impl Future<Output = Result<(), PgError>> + Send {
        let basebackup = baton_core::methods_to_try(methods, source.is_some())
            .into_iter()
            .any(|m| *m == ReplicaMethod::Basebackup);
        let source = source.cloned();
        async move {
            match source {
                Some(source) if basebackup => self.clone_replica(&source).await,
                _ => Err(PgError::Other(
                    "no replica creation method this implementation can run".into(),
                )),
            }
        }
    }

    /// Create the data directory with no member to copy from, by the configured replica
    /// methods that work without one (`no_leader`: a restore from a backup). The default
    /// refuses: an implementation without replica methods has none.
    fn clone_without_leader(&self) -> impl Future<Output = Result<(), PgError>> + Send {
        async {
            Err(PgError::Other(
                "no replica creation method works without a leader here".into(),
            ))
        }
    }

    /// Crash recovery in single-user mode if the last shutdown was unclean, then
    /// `pg_rewind --source-server` against `upstream` (rewind user).
    fn rewind(&self, upstream: &Upstream) -> impl Future<Output = Result<(), PgError>> + Send;

    /// Set `synchronous_standby_names` (`None`: back to the configured value), persistently
    /// in the configuration we own, and reload a running server.
    fn set_synchronous_standby_names(
        &self,
        value: Option<&str>,
    ) -> impl Future<Output = Result<(), PgError>> + Send {
        let _ = value;
        async {
            Err(PgError::Other(
                "synchronous replication is not supported here".into(),
            ))
        }
    }

    /// Adopt new `parameters` and `pg_hba` (merged as `baton_pg::PgSettings::parameters` and
    /// `pg_hba` are): every configuration file written from now on has them. A
    /// running server gets them at once: `postgresql.conf` and `pg_hba.conf` are rewritten and,
    /// when they changed, reloaded; settings that need a restart are reported, never acted on.
    /// Values that cannot be written are an error naming them, and change nothing.
    fn reconfigure(
        &self,
        parameters: &BTreeMap<String, String>,
        pg_hba: &[String],
    ) -> impl Future<Output = Result<Reconfigured, PgError>> + Send;

    /// Remove the data directory's contents.
    fn wipe_data_dir(&self) -> impl Future<Output = Result<(), PgError>> + Send;

    /// After initdb + start: create or alter the superuser, replication and rewind roles with
    /// their passwords (rewind gets EXECUTE on pg_ls_dir, pg_stat_file, pg_read_binary_file,
    /// pg_read_binary_file(text,bigint,bigint,boolean)), then CHECKPOINT.
    fn create_roles(&self) -> impl Future<Output = Result<(), PgError>> + Send;

    /// Create the physical replication slots `slots` (member slots) that are missing, and drop
    /// the inactive ones pgbaton manages that are no longer wanted. A slot pgbaton did not
    /// create or adopt as a member's slot (Barman's, pg_receivewal's, ...) is never dropped.
    fn ensure_slots(&self, slots: &[String]) -> impl Future<Output = Result<(), PgError>> + Send;

    /// As [`Postgres::ensure_slots`], but the slots in `keep` (slots pgbaton manages that match
    /// `ignore_slots`) are neither dropped nor created. An implementation without
    /// `ignore_slots` refuses a non-empty `keep` (it would drop them).
    fn ensure_slots_keeping(
        &self,
        slots: &[String],
        keep: &[String],
    ) -> impl Future<Output = Result<(), PgError>> + Send {
        let refused = (!keep.is_empty()).then(|| {
            PgError::Other(format!(
                "cannot keep the ignored replication slots [{}]: ignore_slots is not supported here",
                keep.join(", ")
            ))
        });
        let ensure = self.ensure_slots(slots);
        async move {
            match refused {
                Some(e) => Err(e),
                None => ensure.await,
            }
        }
    }

    /// On the leader `upstream`: the `catalog_xmin` of the physical slot `physical` and of the
    /// logical slots `logical` (`baton_core::slot_readiness`), as the rewind user (or the
    /// superuser). An implementation without permanent slots refuses.
    fn primary_slots(
        &self,
        upstream: &baton_core::Upstream,
        physical: &str,
        logical: &[String],
    ) -> impl Future<Output = Result<baton_core::slot_readiness::PrimarySlots, PgError>> + Send
    {
        let what = format!(
            "check the slots {physical}, [{}] on {upstream}",
            logical.join(", ")
        );
        async move {
            Err(PgError::Other(format!(
                "cannot {what}: permanent replication slots are not supported here"
            )))
        }
    }

    /// Permanent slot upkeep (`baton_core::slots::SlotWork`): create or adopt the declared
    /// logical slots, advance slots with `pg_replication_slot_advance`, drop the logical
    /// slots pgbaton made that are no longer declared. An implementation without permanent
    /// slots refuses.
    fn sync_slots(
        &self,
        work: &baton_core::slots::SlotWork,
    ) -> impl Future<Output = Result<(), PgError>> + Send {
        let what = work.to_string();
        async move {
            Err(PgError::Other(format!(
                "cannot {what}: permanent replication slots are not supported here"
            )))
        }
    }

    /// Replica: copy the logical slots `slots` from `upstream` (the leader): read their state
    /// files there, stop PostgreSQL (fast), write them into `pg_replslot`. PostgreSQL stays
    /// stopped; the next cycle starts it, and it loads the copies. An implementation without
    /// permanent slots refuses.
    fn copy_logical_slots(
        &self,
        upstream: &Upstream,
        slots: &[String],
    ) -> impl Future<Output = Result<(), PgError>> + Send {
        let what = format!("copy logical slots [{}] from {upstream}", slots.join(", "));
        async move {
            Err(PgError::Other(format!(
                "cannot {what}: permanent replication slots are not supported here"
            )))
        }
    }

    /// Parse `pg_wal/<TL>.history` of the current timeline into history lines (without
    /// timestamps/new-leader names; the caller adds those for the last line).
    fn timeline_history(&self) -> impl Future<Output = Result<Vec<HistoryLine>, PgError>> + Send;
}
