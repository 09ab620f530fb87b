//! The local PostgreSQL: `LocalPostgres`, the [`Postgres`] implementation (the trait, its error
//! and result types live in `baton-ports` and are re-exported here), which runs the PostgreSQL
//! binaries (initdb, pg_ctl, pg_basebackup, pg_rewind, pg_controldata, postgres --single) and
//! SQL (tokio-postgres, every query under a timeout). Pure renderers and parsers for the files
//! it owns (`postgresql.conf`, `pg_hba.conf`, `standby.signal`, `primary_conninfo`, pgpass) and
//! for `pg_controldata` output live in [`render`] and [`controldata`].
//!
//! Only this crate runs PostgreSQL binaries or SQL.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub mod controldata;
/// Properties checked by the fuzz targets and the proptest smoke tests (feature `fuzzing`).
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod history;
mod local;
mod procs;
pub mod render;
mod tls;

pub use baton_ports::{PendingSetting, PgError, Postgres, RaisedSetting, Reconfigured};
pub use local::{LocalPostgres, clean_command};
pub use procs::{data_dir_pids, kill_data_dir_processes};
pub use tls::TlsSetupError;

/// A renderer's refusal travels as [`PgError::Render`].
impl From<render::RenderError> for PgError {
    fn from(e: render::RenderError) -> PgError {
        PgError::Render(Box::new(e))
    }
}

/// User name, password and libpq connection settings for one of the three roles. `Debug`
/// hides the password.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: Option<String>,
    /// libpq keyword/value pairs (`sslmode`, `sslcert`, `sslkey`, `sslrootcert`, `sslcrl`,
    /// `gssencmode`, `channel_binding`), validated by the configuration; file names, no secret.
    pub options: Vec<(String, String)>,
}

impl Credentials {
    /// The value of a connection setting, if given.
    pub fn option(&self, key: &str) -> Option<&str> {
        self.options
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("options", &self.options)
            .finish()
    }
}

/// Everything `LocalPostgres` needs to know, mapped by the agent from the validated config.
#[derive(Clone, Debug)]
pub struct PgSettings {
    /// Member name: `application_name` on replication connections, slot name source.
    pub name: String,
    /// Cluster name (`cluster_name` GUC).
    pub scope: String,
    pub data_dir: PathBuf,
    /// Directory with initdb, pg_ctl, postgres, ... (`postgresql.bin_dir`).
    pub bin_dir: PathBuf,
    /// `listen_addresses` (from `postgresql.listen`, host part; may be a comma list).
    pub listen_addresses: String,
    /// `port` (from `postgresql.listen`).
    pub port: u16,
    /// Host to connect to for local SQL (a listen address, or the socket directory).
    pub local_host: String,
    /// Directory for the Unix socket (`unix_socket_directories`). When `None` the parameter is
    /// left to `parameters` or PostgreSQL's default (`/var/run/postgresql` on Debian). Never
    /// the data directory: pg_rewind fails on a socket file in the source's data directory.
    pub socket_dir: Option<PathBuf>,
    pub superuser: Credentials,
    pub replication: Credentials,
    /// pg_rewind's user (Patroni `authentication.rewind`); the superuser when `None`.
    pub rewind: Option<Credentials>,
    /// The pgpass file the agent writes and points `PGPASSFILE` at.
    pub pgpass: PathBuf,
    /// `postgresql.parameters` merged with dynamic-config parameters (agent does the merge).
    pub parameters: BTreeMap<String, String>,
    /// `postgresql.pg_hba` lines; when empty, a default admitting only the roles named here
    /// (superuser, replication, rewind) with `scram-sha-256` is written (see
    /// [`render::pg_hba_conf`]).
    pub pg_hba: Vec<String>,
    /// Dynamic `postgresql.use_slots`: standbys stream through their replication slot
    /// (`primary_slot_name`). When false no `primary_slot_name` is written.
    pub use_slots: bool,
    /// initdb options (`bootstrap.initdb` in list form: `--encoding=UTF8`, `--data-checksums`).
    pub initdb_options: Vec<String>,
    /// `postgresql.create_replica_methods` with their sections, in order; empty:
    /// `pg_basebackup` only.
    pub replica_methods: Vec<baton_core::ReplicaMethod>,
    /// `postgresql.basebackup`, rendered (`--max-rate=100M`), after pgbaton's own options.
    pub basebackup_options: Vec<String>,
    /// `postgresql.recovery_conf`: recovery parameters written on a standby after pgbaton's
    /// own (which win), until [`Postgres::set_recovery_conf`] changes them.
    pub recovery_conf: Vec<(String, String)>,
    /// During a custom bootstrap's first recovery only (`bootstrap.<method>.recovery_conf`):
    /// written into a primary's `postgresql.conf` as its recovery section. Set by
    /// `LocalPostgres` itself; `None` from the agent.
    pub bootstrap_recovery: Option<Vec<(String, String)>>,
    /// `pg_ctl` timeout for start/stop/promote (Patroni `pg_ctl_timeout`, default 60 s).
    pub pg_ctl_timeout: Duration,
    /// Timeout of each SQL observation round.
    pub sql_timeout: Duration,
    /// Spawn PostgreSQL binaries with this (uid, gid) and hand the files the agent writes to
    /// it. For an agent (or a test) running as root; `None` runs them as the agent's own user.
    pub run_as: Option<(u32, u32)>,
}
