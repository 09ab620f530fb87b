//! `LocalPostgres`: the PostgreSQL instance on this host, driven through its binaries and SQL.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use baton_core::{
    DataDir, HistoryLine, Lsn, PgProcess, PgSql, PgState, ReplicationRow, StartRole, StopMode,
    Timeline, TimelineStart, Upstream,
};
use tokio::time::{Instant, sleep, timeout};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls, Row, Statement};
use tracing::{debug, info, warn};

mod bootstrap;
mod control_cache;
mod replica;

use crate::{
    PendingSetting, PgError, PgSettings, Postgres, RaisedSetting, Reconfigured, controldata,
    history, procs, render,
};

/// Environment variables that would change what the PostgreSQL tools connect to or how; the
/// children get exactly what we pass (and never a password).
const PG_ENV: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGDATA",
    "PGTARGETSESSIONATTRS",
    "PGCONNECT_TIMEOUT",
];

/// Prefixes of the agent's own configuration variables (`PATRONI_SUPERUSER_PASSWORD`,
/// `PGBATON_RESTAPI_PASSWORD`, ...): they can carry secrets and are no business of the
/// PostgreSQL processes, so no child gets them.
const AGENT_ENV_PREFIXES: &[&str] = &["PATRONI_", "PGBATON_"];

/// Suffix of the file beside the data directory listing the replication slots pgbaton manages.
const SLOT_RECORD_SUFFIX: &str = ".pgbaton-slots";

/// `connect_timeout` for pg_basebackup and pg_rewind connections.
const CONNECT_TIMEOUT_SECS: u32 = 10;
/// pg_basebackup and pg_rewind have no time bound (their duration depends on the data size),
/// but one that reads and writes nothing for this long (a source that froze, a connection
/// that hangs without an error) is killed and the action fails, to be retried.
pub(crate) const STALL_TIMEOUT: Duration = Duration::from_secs(600);
/// How long `pg_ctl stop -m immediate` may take before the processes are SIGKILLed.
const IMMEDIATE_STOP_SECS: u64 = 1;
/// How long SIGKILLed processes may take to disappear.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// Interval of the polls that wait for PostgreSQL to reach a state.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Lines of a command's output kept in errors.
const TAIL_LINES: usize = 20;

/// The local PostgreSQL instance described by [`PgSettings`].
pub struct LocalPostgres {
    settings: PgSettings,
    /// `synchronous_standby_names` as the HA loop manages it (overrides the configured value),
    /// and the role the configuration was last written for (to rewrite it in place).
    managed: std::sync::Mutex<Managed>,
    /// The cached connection of `observe` (reconnected when broken or after a timeout).
    observer: tokio::sync::Mutex<Option<ObserveConn>>,
    /// The last `pg_controldata` reading of a running postmaster, reused while it runs and
    /// answers SQL (`control_cache`).
    control: std::sync::Mutex<control_cache::ControlCache>,
}

/// A connection whose driver task is aborted when the connection is dropped, so a hung server
/// never keeps a task alive.
struct Conn {
    client: Client,
    task: tokio::task::JoinHandle<()>,
}

/// Where and how one of pgbaton's own connections goes: tokio-postgres's settings and, over
/// TCP, the role's TLS (libpq's `sslmode` and friends; see [`crate::tls`]).
struct ConnTarget {
    config: tokio_postgres::Config,
    tls: Option<crate::tls::RustlsConnect>,
}

impl ConnTarget {
    fn new(
        mut config: tokio_postgres::Config,
        creds: &crate::Credentials,
        role: &str,
        tcp: bool,
    ) -> Result<ConnTarget, PgError> {
        let t = crate::tls::conn_tls(creds, role).map_err(|e| PgError::Other(e.to_string()))?;
        config.channel_binding(t.channel_binding);
        if !tcp {
            // PostgreSQL offers no TLS on a Unix socket; libpq ignores sslmode there.
            config.ssl_mode(tokio_postgres::config::SslMode::Disable);
            return Ok(ConnTarget { config, tls: None });
        }
        config.ssl_mode(t.ssl_mode);
        Ok(ConnTarget {
            config,
            tls: t.connector,
        })
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct ObserveConn {
    conn: Conn,
    status: Statement,
    replication: Statement,
    slots: Statement,
}

/// How to run one PostgreSQL binary.
#[derive(Default)]
struct RunOpts {
    env: Vec<(&'static str, OsString)>,
    /// `LC_ALL=C` / `LANG=C`, for output we parse or quote.
    c_locale: bool,
    /// Killed (with its process group) after this long; `None` for pg_basebackup / pg_rewind,
    /// whose duration depends on the data size (they are still killed when the future is dropped).
    timeout: Option<Duration>,
    /// Killed (with its process group) when the group's processes have read and written
    /// nothing for this long (see [`stalled`]).
    stall: Option<Duration>,
}

/// Kills a child's process group when dropped armed (timeout, cancelled future).
struct GroupGuard(Option<u32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0.and_then(|pid| i32::try_from(pid).ok()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

struct Managed {
    synchronous_standby_names: Option<String>,
    role: Option<StartRole>,
    /// The parameters and `pg_hba` lines to write: the settings' until `reconfigure`.
    parameters: BTreeMap<String, String>,
    pg_hba: Vec<String>,
    /// Standby minimums from `pg_controldata` (the primary's values of the settings recovery
    /// needs at least as high), by parameter name.
    floor: BTreeMap<&'static str, u64>,
    /// The settings last written raised to `floor` (logged when this changes).
    raised: Vec<RaisedSetting>,
    /// `postgresql.recovery_conf`: the settings' until `set_recovery_conf`.
    recovery_conf: Vec<(String, String)>,
    /// A custom bootstrap's first start is under way (`local/bootstrap.rs`).
    bootstrap: Option<BootstrapFiles>,
}

/// How a primary's files are written during a custom bootstrap's first recovery.
#[derive(Clone, Debug)]
struct BootstrapFiles {
    /// `recovery_conf`: written as the recovery section of `postgresql.conf`, with
    /// `recovery.signal` (any `standby.signal` removed).
    recovery: Option<Vec<(String, String)>>,
    /// `keep_existing_recovery_conf` without `recovery_conf`: the signal files and the
    /// recovery settings in `postgresql.auto.conf` the command left are not touched.
    keep_existing: bool,
}

/// Which files one write of the configuration changed.
#[derive(Clone, Copy, Default)]
struct Written {
    conf: bool,
    hba: bool,
    signal: bool,
}

/// Settings a standby must run with at least the primary's values, with their labels in
/// `pg_controldata` output (PostgreSQL refuses hot standby, or pauses recovery, below them).
const STANDBY_MINIMUMS: &[(&str, &str)] = &[
    ("max_connections", "max_connections setting"),
    ("max_worker_processes", "max_worker_processes setting"),
    ("max_wal_senders", "max_wal_senders setting"),
    ("max_prepared_transactions", "max_prepared_xacts setting"),
    ("max_locks_per_transaction", "max_locks_per_xact setting"),
];

/// Parameters kept at the agent's starting value by `reconfigure`: the agent connects
/// through the socket directory it started with.
const KEPT_PARAMETERS: &[&str] = &["unix_socket_directories"];

/// Settings waiting for a restart: running value and the value the files now have (the last
/// entry for the name; the built-in default when no file sets it any more).
const PENDING_RESTART_SQL: &str = "\
SELECT s.name, pg_catalog.current_setting(s.name),
       COALESCE((SELECT f.setting FROM pg_catalog.pg_file_settings f
                  WHERE f.name = s.name ORDER BY f.seqno DESC LIMIT 1), s.boot_val, '')
  FROM pg_catalog.pg_settings s
 WHERE s.pending_restart
 ORDER BY 1";

/// Entries of a configuration file the server could not apply, with its reason.
const FILE_ERRORS_SQL: &str = "\
SELECT COALESCE(name, ''), error FROM pg_catalog.pg_file_settings
 WHERE sourcefile = $1 AND error IS NOT NULL
 ORDER BY seqno";

/// Removes a file when dropped (the initdb password file).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

const STATUS_SQL: &str = "\
SELECT current_setting('server_version_num')::int4,
       pg_catalog.pg_postmaster_start_time()::text,
       r.rec,
       CASE WHEN r.rec THEN NULL ELSE pg_catalog.pg_current_wal_flush_lsn()::text END,
       CASE WHEN r.rec THEN pg_catalog.pg_last_wal_receive_lsn()::text END,
       CASE WHEN r.rec THEN pg_catalog.pg_last_wal_replay_lsn()::text END,
       CASE WHEN r.rec THEN pg_catalog.pg_last_xact_replay_timestamp()::text END,
       CASE WHEN r.rec THEN pg_catalog.pg_is_wal_replay_paused() ELSE false END,
       CASE WHEN r.rec THEN NULL ELSE pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()) END,
       (SELECT timeline_id FROM pg_catalog.pg_control_checkpoint())::int8,
       w.status,
       w.received_tli::int8,
       w.latest_end_lsn::text,
       EXISTS (SELECT 1 FROM pg_catalog.pg_settings WHERE pending_restart),
       current_setting('synchronous_standby_names'),
       current_setting('synchronous_commit')
  FROM (SELECT pg_catalog.pg_is_in_recovery() AS rec) r
  LEFT JOIN pg_catalog.pg_stat_wal_receiver w ON true";

const REPLICATION_SQL: &str = "\
SELECT pid, usename::text, application_name, client_addr::text, state, sync_state, sync_priority,
       write_lsn::text, flush_lsn::text, replay_lsn::text
  FROM pg_catalog.pg_stat_replication
 ORDER BY application_name, pid";

mod slots;

const SLOTS_SQL: &str = slots::ALL_SLOTS_SQL;

impl LocalPostgres {
    /// Relative `data_dir` / `pgpass` paths are made absolute against the current directory,
    /// since the binaries run with `/` as their working directory.
    pub fn new(mut settings: PgSettings) -> LocalPostgres {
        for path in [&mut settings.data_dir, &mut settings.pgpass] {
            if let Ok(absolute) = std::path::absolute(&*path) {
                *path = absolute;
            }
        }
        let managed = Managed {
            synchronous_standby_names: None,
            role: None,
            parameters: settings.parameters.clone(),
            pg_hba: settings.pg_hba.clone(),
            floor: BTreeMap::new(),
            raised: Vec::new(),
            recovery_conf: settings.recovery_conf.clone(),
            bootstrap: None,
        };
        LocalPostgres {
            settings,
            observer: tokio::sync::Mutex::new(None),
            control: Default::default(),
            managed: std::sync::Mutex::new(managed),
        }
    }

    pub fn settings(&self) -> &PgSettings {
        &self.settings
    }

    fn data_dir(&self) -> &Path {
        &self.settings.data_dir
    }

    fn data_file(&self, name: &str) -> PathBuf {
        self.settings.data_dir.join(name)
    }

    fn data_dir_arg(&self) -> OsString {
        let mut arg = OsString::from("--pgdata=");
        arg.push(self.data_dir());
        arg
    }

    fn pg_ctl_secs(&self) -> String {
        self.settings.pg_ctl_timeout.as_secs().max(1).to_string()
    }

    /// Bound for a pg_ctl call that is itself told to wait `pg_ctl_timeout`.
    fn pg_ctl_bound(&self) -> Duration {
        self.settings.pg_ctl_timeout + Duration::from_secs(5)
    }

    // ---- running binaries -------------------------------------------------------------------

    async fn run(
        &self,
        program: &str,
        args: Vec<OsString>,
        opts: RunOpts,
    ) -> Result<String, PgError> {
        let path = self.settings.bin_dir.join(program);
        let command = std::iter::once(program.to_owned())
            .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
            .collect::<Vec<_>>()
            .join(" ");
        let mut cmd = clean_command(&path, self.settings.run_as);
        cmd.args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if opts.c_locale {
            cmd.env("LC_ALL", "C").env("LANG", "C");
        }
        for (name, value) in &opts.env {
            cmd.env(name, value);
        }
        debug!(%command, "running");
        let child = cmd.spawn().map_err(|source| PgError::Io {
            context: format!("spawn {}", path.display()),
            source,
        })?;
        let mut guard = GroupGuard(child.id());
        let pgid = child.id().and_then(|pid| i32::try_from(pid).ok());
        let bounded = async {
            match opts.timeout {
                Some(limit) => timeout(limit, child.wait_with_output())
                    .await
                    .map_err(|_| limit),
                None => Ok(child.wait_with_output().await),
            }
        };
        let waited = match (opts.stall, pgid) {
            (Some(stall), Some(pgid)) => tokio::select! {
                waited = bounded => waited,
                () = stalled(pgid, stall) => {
                    return Err(PgError::Stalled {
                        what: command,
                        after: stall,
                    });
                }
            },
            _ => bounded.await,
        };
        let output = match waited {
            Ok(output) => output,
            Err(limit) => {
                return Err(PgError::Timeout {
                    what: command,
                    after: limit,
                });
            }
        };
        guard.0 = None;
        let output = output.map_err(|source| PgError::Io {
            context: format!("wait for {command}"),
            source,
        })?;
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        if output.status.success() {
            Ok(text)
        } else {
            Err(PgError::Command {
                command,
                detail: format!("{}: {}", output.status, tail(&text)),
            })
        }
    }

    async fn pg_ctl(&self, args: &[&str], bound: Duration) -> Result<String, PgError> {
        let mut all: Vec<OsString> = args.iter().map(OsString::from).collect();
        all.push(self.data_dir_arg());
        self.run(
            "pg_ctl",
            all,
            RunOpts {
                c_locale: true,
                timeout: Some(bound),
                ..RunOpts::default()
            },
        )
        .await
    }

    fn pgpass_env(&self) -> (&'static str, OsString) {
        ("PGPASSFILE", self.settings.pgpass.clone().into_os_string())
    }

    async fn controldata(&self) -> Result<baton_core::ControlData, PgError> {
        let timeout = self.settings.sql_timeout;
        let output = self
            .run(
                "pg_controldata",
                vec![self.data_dir().into()],
                RunOpts {
                    c_locale: true,
                    timeout: Some(timeout),
                    ..RunOpts::default()
                },
            )
            .await?;
        controldata::parse(&output).map_err(|e| PgError::Other(format!("pg_controldata: {e}")))
    }

    // ---- files ------------------------------------------------------------------------------

    fn chown(&self, path: &Path) -> Result<(), PgError> {
        if let Some((uid, gid)) = self.settings.run_as {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|source| PgError::Io {
                context: format!("chown {}", path.display()),
                source,
            })?;
        }
        Ok(())
    }

    /// Write `contents` to `path` atomically with `mode`, owned by the `run_as` user: a new
    /// temporary file beside it (unpredictable name, `O_CREAT|O_EXCL|O_NOFOLLOW`, so nothing
    /// planted there is followed or reused), mode and owner set on the open file, synced, then
    /// renamed over `path` (a symlink planted at `path` is replaced, never written through).
    /// `Ok(false)` when `path` already is a regular file with exactly these contents and mode.
    fn write_file(&self, path: &Path, contents: &str, mode: u32) -> Result<bool, PgError> {
        if self.is_written(path, contents, mode) {
            return Ok(false);
        }
        let io = |context: String| move |source| PgError::Io { context, source };
        let (tmp, mut file) = create_temp_beside(path, mode)?;
        let written = (|| {
            file.set_permissions(fs::Permissions::from_mode(mode))
                .map_err(io(format!("chmod {}", tmp.display())))?;
            if let Some((uid, gid)) = self.settings.run_as {
                std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                    .map_err(io(format!("chown {}", tmp.display())))?;
            }
            file.write_all(contents.as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(io(format!("write {}", tmp.display())))?;
            fs::rename(&tmp, path).map_err(io(format!(
                "rename {} to {}",
                tmp.display(),
                path.display()
            )))
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written.map(|()| true)
    }

    /// `path` is a regular file (not a symlink) with exactly `contents` and `mode`, owned by
    /// the `run_as` user when there is one.
    fn is_written(&self, path: &Path, contents: &str, mode: u32) -> bool {
        let Ok(mut file) = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
        else {
            return false;
        };
        let Ok(meta) = file.metadata() else {
            return false;
        };
        let owner_ok = self
            .settings
            .run_as
            .is_none_or(|(uid, _)| meta.uid() == uid);
        if !meta.is_file() || meta.mode() & 0o7777 != mode || !owner_ok {
            return false;
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).is_ok() && bytes == contents.as_bytes()
    }

    fn remove_file(&self, path: &Path) -> Result<(), PgError> {
        match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(PgError::Io {
                context: format!("remove {}", path.display()),
                source,
            }),
        }
    }

    fn write_pgpass(&self) -> Result<(), PgError> {
        self.write_file(
            &self.settings.pgpass,
            &render::pgpass(&self.settings)?,
            0o600,
        )
        .map(drop)
    }

    /// `<data_dir>.pgbaton-slots`: the replication slots pgbaton created, or adopted as a
    /// member's slot, on this data directory. Beside the data directory, so pg_basebackup and
    /// pg_rewind never copy one member's record to another.
    fn slot_record_path(&self) -> PathBuf {
        let mut path = self.data_dir().as_os_str().to_owned();
        path.push(SLOT_RECORD_SUFFIX);
        PathBuf::from(path)
    }

    /// The slot names in the record; none when there is no record. Lines that are not slot
    /// names (the comment) are skipped. A symlink there is an error, never followed.
    fn read_slot_record(&self) -> Result<BTreeSet<String>, PgError> {
        self.read_record_at(&self.slot_record_path())
    }

    /// The slot names in the record at `path` (see [`Self::read_slot_record`]).
    fn read_record_at(&self, path: &Path) -> Result<BTreeSet<String>, PgError> {
        let read = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .and_then(|mut file| {
                let mut text = String::new();
                file.read_to_string(&mut text).map(|_| text)
            });
        match read {
            Ok(text) => Ok(text
                .lines()
                .map(str::trim)
                .filter(|l| is_valid_slot_name(l))
                .map(str::to_owned)
                .collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeSet::new()),
            Err(source) => Err(PgError::Io {
                context: format!("read {}", path.display()),
                source,
            }),
        }
    }

    fn write_slot_record(&self, names: &BTreeSet<String>) -> Result<(), PgError> {
        let mut text = format!(
            "# Physical replication slots pgbaton manages in {}, one a line.\n\
             # Written by pgbaton: a slot not listed here is never dropped by it.\n",
            self.data_dir().display()
        );
        for name in names {
            text.push_str(name);
            text.push('\n');
        }
        self.write_file(&self.slot_record_path(), &text, 0o600)
            .map(drop)
    }

    /// Create the data directory if missing; give it to the `run_as` user with mode 0700.
    fn ensure_data_dir(&self) -> Result<(), PgError> {
        let dir = self.data_dir();
        fs::create_dir_all(dir).map_err(|source| PgError::Io {
            context: format!("create {}", dir.display()),
            source,
        })?;
        self.chown(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|source| PgError::Io {
            context: format!("chmod {}", dir.display()),
            source,
        })
    }

    /// Move initdb's (or a copied) original `postgresql.conf` aside to `postgresql.base.conf`,
    /// which ours includes; an empty base file when there is none.
    fn ensure_base_conf(&self) -> Result<(), PgError> {
        let base = self.data_file(render::BASE_CONF);
        if base.exists() {
            return Ok(());
        }
        let conf = self.data_file("postgresql.conf");
        match fs::read_to_string(&conf) {
            Ok(text) if !render::is_managed_conf(&text) => {
                fs::rename(&conf, &base).map_err(|source| PgError::Io {
                    context: format!("rename {} to {}", conf.display(), base.display()),
                    source,
                })
            }
            Ok(_) => self.write_file(&base, "", 0o600).map(drop),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.write_file(&base, "", 0o600).map(drop)
            }
            Err(source) => Err(PgError::Io {
                context: format!("read {}", conf.display()),
                source,
            }),
        }
    }

    /// Write everything the server reads at start: postgresql.conf (for `role`), pg_hba.conf,
    /// the pgpass file and the recovery signal files. Returns whether postgresql.conf or
    /// standby.signal changed.
    fn write_config(&self, role: &StartRole) -> Result<bool, PgError> {
        self.write_config_files(role).map(|w| w.conf || w.signal)
    }

    /// [`Self::write_config`], saying which files changed. Both configuration files are
    /// rendered before anything is written.
    fn write_config_files(&self, role: &StartRole) -> Result<Written, PgError> {
        self.ensure_base_conf()?;
        let bootstrap = match role {
            StartRole::Primary => self
                .managed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .bootstrap
                .clone(),
            StartRole::Standby { .. } => None,
        };
        let keep_existing = bootstrap.as_ref().is_some_and(|b| b.keep_existing);
        // ALTER SYSTEM settings would override our recovery settings.
        let auto_conf = self.data_file("postgresql.auto.conf");
        if !keep_existing
            && let Ok(text) = fs::read_to_string(&auto_conf)
            && let Some(clean) = render::sanitize_auto_conf(&text)
        {
            warn!("removing recovery settings from {}", auto_conf.display());
            self.write_file(&auto_conf, &clean, 0o600)?;
        }
        let (conf, hba) = {
            let mut managed = self.managed.lock().unwrap_or_else(|p| p.into_inner());
            let (mut settings, raised) = self.settings_to_write(&managed, role);
            settings.bootstrap_recovery = bootstrap.as_ref().and_then(|b| b.recovery.clone());
            let files = (
                render::postgresql_conf(&settings, role)?,
                match bootstrap {
                    // The restored cluster's roles may not have our passwords yet (they are
                    // set before this ends), as in Patroni.
                    Some(_) => render::bootstrap_pg_hba_conf(&settings)?,
                    None => render::pg_hba_conf(&settings)?,
                },
            );
            managed.role = Some(role.clone());
            if managed.raised != raised {
                for r in &raised {
                    info!(
                        "{} = {} on this standby (configured {}): the primary runs with it \
                         (pg_controldata)",
                        r.name, r.written, r.configured
                    );
                }
                managed.raised = raised;
            }
            files
        };
        let mut written = Written {
            conf: self.write_file(&self.data_file("postgresql.conf"), &conf, 0o600)?,
            hba: self.write_file(&self.data_file("pg_hba.conf"), &hba, 0o600)?,
            signal: false,
        };
        self.write_pgpass()?;
        let standby_signal = self.data_file("standby.signal");
        let recovery_signal = self.data_file("recovery.signal");
        if keep_existing {
            return Ok(written);
        }
        if bootstrap.as_ref().is_some_and(|b| b.recovery.is_some()) {
            self.remove_file(&standby_signal)?;
            written.signal = self.write_file(&recovery_signal, "", 0o600)?;
            return Ok(written);
        }
        self.remove_file(&recovery_signal)?;
        if matches!(role, StartRole::Standby { .. }) {
            written.signal = self.write_file(&standby_signal, "", 0o600)?;
        } else if standby_signal.exists() {
            self.remove_file(&standby_signal)?;
            written.signal = true;
        }
        Ok(written)
    }

    /// The settings the configuration files are rendered from for `role`: the managed
    /// parameters and `pg_hba` lines, `synchronous_standby_names` as the HA loop set it, and
    /// on a standby the primary's minimums; plus the settings raised to those minimums.
    fn settings_to_write(
        &self,
        managed: &Managed,
        role: &StartRole,
    ) -> (PgSettings, Vec<RaisedSetting>) {
        let mut settings = self.settings.clone();
        settings.parameters = managed.parameters.clone();
        settings.pg_hba = managed.pg_hba.clone();
        settings.recovery_conf = managed.recovery_conf.clone();
        if let Some(value) = &managed.synchronous_standby_names {
            settings
                .parameters
                .insert("synchronous_standby_names".into(), value.clone());
        }
        let raised = if matches!(role, StartRole::Standby { .. }) {
            raise_to_floor(&mut settings.parameters, &managed.floor)
        } else {
            Vec::new()
        };
        (settings, raised)
    }

    /// Read the primary's minimums for a standby from `pg_controldata`; on failure the last
    /// ones are kept (and the failure logged).
    async fn refresh_floor(&self) {
        let timeout = self.settings.sql_timeout;
        let output = self
            .run(
                "pg_controldata",
                vec![self.data_dir().into()],
                RunOpts {
                    c_locale: true,
                    timeout: Some(timeout),
                    ..RunOpts::default()
                },
            )
            .await;
        match output {
            Ok(text) => {
                let floor = standby_minimums(&text);
                self.managed.lock().unwrap_or_else(|p| p.into_inner()).floor = floor;
            }
            Err(e) => warn!("failed to read the standby minimums from pg_controldata: {e}"),
        }
    }

    /// Where `pg_ctl start -l` writes the postmaster's output: `<data_dir>.log` next to the data
    /// directory when it can be created there, else `postmaster.log` inside it.
    fn startup_log(&self) -> PathBuf {
        let mut beside = self.data_dir().as_os_str().to_owned();
        beside.push(".log");
        let beside = PathBuf::from(beside);
        let created = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&beside)
            .is_ok();
        if created && self.chown(&beside).is_ok() {
            beside
        } else {
            self.data_file("postmaster.log")
        }
    }

    fn refuse_if_running(&self, what: &str) -> Result<(), PgError> {
        match procs::postmaster(self.data_dir()) {
            Some(pid) => Err(PgError::Other(format!(
                "cannot {what}: PostgreSQL is running (postmaster {pid})"
            ))),
            None => Ok(()),
        }
    }

    /// Kill leftovers of a postmaster that died (orphaned backends still attached to the shared
    /// memory make the next start fail) and remove a stale `postmaster.pid`.
    async fn kill_leftovers(&self) -> Result<(), PgError> {
        let dir = self.data_dir().to_owned();
        let killed =
            tokio::task::spawn_blocking(move || procs::kill_data_dir_processes(&dir, KILL_WAIT))
                .await
                .map_err(|e| PgError::Other(format!("kill PostgreSQL processes: {e}")))??;
        if killed > 0 {
            warn!(
                killed,
                "killed PostgreSQL processes left over in {}",
                self.data_dir().display()
            );
        }
        // A killed postmaster stays a zombie until its parent reaps it, and PostgreSQL takes a
        // zombie's PID in the socket lock file for a live postmaster.
        let lock = render::socket_dir(&self.settings)
            .join(format!(".s.PGSQL.{}.lock", self.settings.port));
        procs::remove_stale_lock_file(&lock)
    }

    // ---- SQL --------------------------------------------------------------------------------

    fn local_config(&self, statement_timeout: Option<Duration>) -> Result<ConnTarget, PgError> {
        let s = &self.settings;
        let mut config = tokio_postgres::Config::new();
        config
            .user(&s.superuser.username)
            .dbname("postgres")
            .application_name("pgbaton")
            .port(s.port)
            .connect_timeout(s.sql_timeout);
        if let Some(password) = &s.superuser.password {
            config.password(password);
        }
        let tcp = if s.local_host.is_empty() {
            config.host_path(render::socket_dir(s));
            false
        } else if s.local_host.starts_with('/') {
            config.host_path(&s.local_host);
            false
        } else {
            config.host(&s.local_host);
            true
        };
        if let Some(limit) = statement_timeout {
            config.options(format!("-c statement_timeout={}", limit.as_millis()));
        }
        ConnTarget::new(config, &s.superuser, "superuser", tcp)
    }

    async fn connect(target: &ConnTarget, what: &str) -> Result<Conn, PgError> {
        match target.tls.clone() {
            Some(tls) => Self::connect_with(&target.config, tls, what).await,
            None => Self::connect_with(&target.config, NoTls, what).await,
        }
    }

    /// Connect with `tls` (rustls or none) and drive the connection in a task of its own.
    async fn connect_with<T>(
        config: &tokio_postgres::Config,
        tls: T,
        what: &str,
    ) -> Result<Conn, PgError>
    where
        T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
        T::Stream: Send + 'static,
    {
        let (client, connection) = config.connect(tls).await.map_err(|e| sql_error(what, e))?;
        let task = tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!("connection closed: {e}");
            }
        });
        Ok(Conn { client, task })
    }

    /// A fresh superuser connection for one operation (statement timeout off).
    async fn admin(&self, what: &str) -> Result<Conn, PgError> {
        let config = self.local_config(None)?;
        let limit = self.settings.sql_timeout.max(Duration::from_secs(1));
        match timeout(limit, Self::connect(&config, what)).await {
            Ok(result) => result,
            Err(_) => Err(PgError::Timeout {
                what: format!("{what}: connect"),
                after: limit,
            }),
        }
    }

    async fn observe_sql(&self) -> Option<PgSql> {
        let round = async {
            let mut guard = self.observer.lock().await;
            if guard.as_ref().is_some_and(|c| c.conn.client.is_closed()) {
                *guard = None;
            }
            if guard.is_none() {
                match self.connect_observer().await {
                    Ok(conn) => *guard = Some(conn),
                    Err(e) => {
                        debug!("observe: {e}");
                        return None;
                    }
                }
            }
            let conn = guard.as_ref()?;
            match query_state(conn).await {
                Ok(mut sql) => {
                    sql.newest_history = newest_history_file(&self.settings.data_dir);
                    if sql.in_recovery && !sql.streaming {
                        sql.timeline_start = sql
                            .newest_history
                            .and_then(|tl| timeline_start(&self.settings.data_dir, tl));
                    }
                    // Only the slots we manage: another tool's slot is none of our business
                    // (an unreadable record lists none; ensure_slots reports why).
                    let ours = self.read_slot_record().unwrap_or_else(|e| {
                        debug!("observe: {e}");
                        BTreeSet::new()
                    });
                    sql.slots.retain(|name| ours.contains(name));
                    self.mark_own_slots(&mut sql, &ours);
                    Some(sql)
                }
                Err(e) => {
                    debug!("observe: {e}");
                    *guard = None;
                    None
                }
            }
        };
        match timeout(self.settings.sql_timeout, round).await {
            Ok(sql) => sql,
            Err(_) => {
                debug!(
                    "observe: no SQL answer within {:?}",
                    self.settings.sql_timeout
                );
                // The round was dropped mid-query: do not reuse a connection that may be stuck.
                if let Ok(mut guard) = self.observer.try_lock() {
                    *guard = None;
                }
                None
            }
        }
    }

    async fn connect_observer(&self) -> Result<ObserveConn, PgError> {
        let conn = Self::connect(
            &self.local_config(Some(self.settings.sql_timeout))?,
            "observe",
        )
        .await?;
        let prepare = |sql| conn.client.prepare(sql);
        let (status, replication, slots) = tokio::try_join!(
            prepare(STATUS_SQL),
            prepare(REPLICATION_SQL),
            prepare(SLOTS_SQL)
        )
        .map_err(|e| sql_error("prepare observation queries", e))?;
        Ok(ObserveConn {
            conn,
            status,
            replication,
            slots,
        })
    }

    async fn drop_observer(&self) {
        if let Ok(mut guard) = self.observer.try_lock() {
            *guard = None;
        }
    }

    /// `pg_is_in_recovery()` over a fresh connection.
    async fn in_recovery(&self) -> Result<bool, PgError> {
        let conn = self.admin("check recovery").await?;
        let limit = self.settings.sql_timeout.max(Duration::from_secs(1));
        let row = timeout(
            limit,
            conn.client
                .query_one("SELECT pg_catalog.pg_is_in_recovery()", &[]),
        )
        .await
        .map_err(|_| PgError::Timeout {
            what: "pg_is_in_recovery()".into(),
            after: limit,
        })?
        .map_err(|e| sql_error("pg_is_in_recovery()", e))?;
        row.try_get(0)
            .map_err(|e| sql_error("pg_is_in_recovery()", e))
    }

    /// Poll `check` until it returns `Ok(true)` or `deadline` passes (then the last error).
    async fn wait_for<F, Fut>(
        &self,
        what: &str,
        deadline: Instant,
        mut check: F,
    ) -> Result<(), PgError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<bool, PgError>>,
    {
        let started = Instant::now();
        let mut last = None;
        loop {
            match check().await {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => last = Some(e),
            }
            if Instant::now() >= deadline {
                let after = deadline.saturating_duration_since(started);
                return Err(match last {
                    Some(e) => PgError::Other(format!(
                        "{what}: not reached within {after:?}; last error: {e}"
                    )),
                    None => PgError::Timeout {
                        what: what.to_owned(),
                        after,
                    },
                });
            }
            sleep(POLL_INTERVAL).await;
        }
    }

    /// Before pg_rewind: the source must have checkpointed on its new timeline, otherwise its
    /// pg_control still shows the old one and pg_rewind concludes nothing needs doing.
    async fn ensure_upstream_checkpoint(&self, upstream: &Upstream) -> Result<(), PgError> {
        let target = self.upstream_target(upstream)?;
        let work = async {
            let conn = Self::connect(&target, &format!("connect to {upstream}")).await?;
            let what = format!("check the checkpoint timeline of {upstream}");
            let row = conn
                .client
                .query_one(
                    "SELECT pg_catalog.pg_is_in_recovery(),
                            (SELECT timeline_id FROM pg_catalog.pg_control_checkpoint())::int8,
                            CASE WHEN pg_catalog.pg_is_in_recovery() THEN NULL
                                 ELSE pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()) END",
                    &[],
                )
                .await
                .map_err(|e| sql_error(&what, e))?;
            let in_recovery: bool = row.try_get(0).map_err(|e| sql_error(&what, e))?;
            if in_recovery {
                return Err(PgError::Other(format!(
                    "cannot rewind from {upstream}: it is in recovery"
                )));
            }
            let checkpoint_tli: Option<i64> = row.try_get(1).map_err(|e| sql_error(&what, e))?;
            let walfile: Option<String> = row.try_get(2).map_err(|e| sql_error(&what, e))?;
            let current = walfile.as_deref().and_then(walfile_timeline);
            if current.is_some() && current.map(|t| i64::from(t.0)) != checkpoint_tli {
                info!(
                    "running CHECKPOINT on {upstream} (its last checkpoint predates its promotion)"
                );
                conn.client
                    .batch_execute("CHECKPOINT")
                    .await
                    .map_err(|e| sql_error(&format!("CHECKPOINT on {upstream}"), e))?;
            }
            Ok(())
        };
        let limit = self.settings.pg_ctl_timeout;
        timeout(limit, work).await.unwrap_or_else(|_| {
            Err(PgError::Timeout {
                what: format!("checkpoint check on {upstream}"),
                after: limit,
            })
        })
    }

    /// Crash recovery of an uncleanly stopped data directory in single-user mode (pg_rewind
    /// refuses such a target). Archiving is switched on with a failing command so WAL that still
    /// has to be archived is kept.
    async fn single_user_recovery(&self) -> Result<(), PgError> {
        // As a primary: standby mode is not supported in single-user mode.
        self.write_config(&StartRole::Primary)?;
        let args: Vec<OsString> = vec![
            "--single".into(),
            "-D".into(),
            self.data_dir().into(),
            "-c".into(),
            "archive_mode=on".into(),
            "-c".into(),
            "archive_command=false".into(),
            "postgres".into(),
        ];
        info!(
            "running crash recovery in single-user mode on {}",
            self.data_dir().display()
        );
        self.run(
            "postgres",
            args,
            RunOpts {
                c_locale: true,
                timeout: Some(self.settings.pg_ctl_timeout),
                ..RunOpts::default()
            },
        )
        .await?;
        Ok(())
    }

    /// Remove everything in the data directory (also the contents of a symlinked `pg_wal` and of
    /// tablespace directories), keeping the directory itself.
    fn wipe(&self) -> Result<(), PgError> {
        let dir = self.data_dir();
        let io = |context: String| move |source| PgError::Io { context, source };
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(PgError::Io {
                    context: format!("read {}", dir.display()),
                    source,
                });
            }
        };
        let mut linked: Vec<PathBuf> = Vec::new();
        if let Ok(target) = fs::read_link(dir.join("pg_wal")) {
            linked.push(dir.join(target));
        }
        if let Ok(spaces) = fs::read_dir(dir.join("pg_tblspc")) {
            for space in spaces.flatten() {
                if let Ok(target) = fs::read_link(space.path()) {
                    linked.push(target);
                }
            }
        }
        for target in linked {
            clear_dir(&target).map_err(io(format!("empty {}", target.display())))?;
        }
        for entry in entries {
            let entry = entry.map_err(io(format!("read {}", dir.display())))?;
            if entry.file_name() == "lost+found" {
                continue;
            }
            let path = entry.path();
            let kind = entry
                .file_type()
                .map_err(io(format!("stat {}", path.display())))?;
            if kind.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            }
            .map_err(io(format!("remove {}", path.display())))?;
        }
        // The slots went with the data: nothing in the directory is ours any more.
        self.remove_file(&self.slot_record_path())?;
        self.remove_file(&self.logical_record_path())
    }

    fn control_cache(&self) -> std::sync::MutexGuard<'_, control_cache::ControlCache> {
        self.control.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The data directory as `pg_controldata` reads it now; the reading is kept for
    /// `running`, the postmaster found before it was taken (`control_cache`).
    async fn read_data_dir(&self, running: Option<control_cache::Incarnation>) -> DataDir {
        match data_dir_is_empty(self.data_dir()) {
            Ok(true) => {
                self.control_cache().clear();
                return DataDir::Empty;
            }
            Ok(false) => {}
            Err(e) => {
                self.control_cache().clear();
                return DataDir::Unusable(format!("read {}: {e}", self.data_dir().display()));
            }
        }
        match self.controldata().await {
            Ok(control) => {
                self.control_cache().store(running, &control);
                DataDir::Initialized(control)
            }
            Err(e) => {
                self.control_cache().clear();
                DataDir::Unusable(e.to_string())
            }
        }
    }

    /// How many observations reused a `pg_controldata` reading (tests).
    #[doc(hidden)]
    pub fn controldata_reused(&self) -> u64 {
        self.control_cache().reused
    }

    async fn current_timeline(&self) -> Result<Timeline, PgError> {
        if procs::postmaster(self.data_dir()).is_some()
            && let Some(sql) = self.observe_sql().await
        {
            return Ok(sql.timeline);
        }
        Ok(self.controldata().await?.timeline)
    }
}

impl Postgres for LocalPostgres {
    async fn is_alive(&self) -> bool {
        procs::postmaster(self.data_dir()).is_some()
    }

    async fn postmaster_exit(&self) -> bool {
        let Some(pid) = procs::postmaster(self.data_dir()) else {
            return true;
        };
        let Some(exit) = procs::PostmasterExit::open(pid) else {
            return false;
        };
        // The PID may have ended and been reused between reading `postmaster.pid` and opening
        // the pidfd: only a pidfd of the postmaster still found there is waited on.
        if procs::postmaster(self.data_dir()) != Some(pid) {
            return true;
        }
        exit.wait().await
    }

    async fn live_sql(&self) -> Option<PgSql> {
        procs::postmaster(self.data_dir())?;
        self.observe_sql().await
    }

    async fn observe(&self) -> PgState {
        let pid = procs::postmaster(self.data_dir());
        let running = pid.and_then(control_cache::Incarnation::of);
        let same_postmaster = self.control_cache().reusable(running, true).is_some();
        let (data_dir, sql) = match same_postmaster {
            // The same postmaster as at the last reading: SQL first; the control file is read
            // again only if SQL does not answer.
            true => {
                let sql = self.observe_sql().await;
                // The directory itself is still looked at (a cheap listing, no process): a
                // data directory emptied under a running postmaster is reported as before.
                let listed = matches!(data_dir_is_empty(self.data_dir()), Ok(false));
                let reused = self
                    .control_cache()
                    .reusable(running, sql.is_some() && listed)
                    .cloned();
                let data_dir = match reused {
                    Some(control) => {
                        self.control_cache().reused += 1;
                        DataDir::Initialized(control)
                    }
                    None => self.read_data_dir(running).await,
                };
                (data_dir, sql)
            }
            false => {
                let sql = async {
                    if pid.is_some() {
                        self.observe_sql().await
                    } else {
                        self.drop_observer().await;
                        None
                    }
                };
                tokio::join!(self.read_data_dir(running), sql)
            }
        };
        let process = match pid {
            Some(pid) => PgProcess::Running { pid },
            None => PgProcess::Stopped,
        };
        PgState {
            data_dir,
            process,
            sql,
        }
    }

    async fn initdb(&self) -> Result<(), PgError> {
        let dir = self.data_dir();
        if !data_dir_is_empty(dir).unwrap_or(false) {
            return Err(PgError::Other(format!(
                "cannot initdb: {} is not empty",
                dir.display()
            )));
        }
        self.ensure_data_dir()?;
        // A new cluster has no slots: a record left from an earlier one names nothing of ours.
        self.remove_file(&self.slot_record_path())?;
        self.remove_file(&self.logical_record_path())?;
        let s = &self.settings;
        let mut args: Vec<OsString> = vec![self.data_dir_arg()];
        args.extend(s.initdb_options.iter().map(OsString::from));
        args.push(format!("--username={}", s.superuser.username).into());
        let mut _pwfile = None;
        if let Some(password) = &s.superuser.password {
            let path = std::env::temp_dir().join(format!(
                "pgbaton-pwfile-{}-{}",
                std::process::id(),
                s.port
            ));
            let _ = fs::remove_file(&path);
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|source| PgError::Io {
                    context: format!("create {}", path.display()),
                    source,
                })?;
            _pwfile = Some(RemoveOnDrop(path.clone()));
            writeln!(file, "{password}").map_err(|source| PgError::Io {
                context: format!("write {}", path.display()),
                source,
            })?;
            self.chown(&path)?;
            let mut arg = OsString::from("--pwfile=");
            arg.push(&path);
            args.push(arg);
        }
        info!("initdb {}", dir.display());
        self.run(
            "initdb",
            args,
            RunOpts {
                timeout: Some(self.pg_ctl_bound()),
                ..RunOpts::default()
            },
        )
        .await?;
        drop(_pwfile);
        self.write_config(&StartRole::Primary).map(drop)
    }

    async fn custom_bootstrap(&self, method: &baton_core::CustomBootstrap) -> Result<(), PgError> {
        self.run_custom_bootstrap(method).await
    }

    fn set_recovery_conf(&self, settings: &[(String, String)]) -> Result<(), PgError> {
        for (name, value) in settings {
            render::conf_line(name, value)?;
        }
        self.managed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .recovery_conf = settings.to_vec();
        Ok(())
    }

    async fn start(&self, role: &StartRole) -> Result<(), PgError> {
        StopGate::of(self.data_dir()).wait_idle().await;
        self.refuse_if_running("start")?;
        if !self.data_file("PG_VERSION").exists() {
            return Err(PgError::Other(format!(
                "cannot start: {} is not a data directory",
                self.data_dir().display()
            )));
        }
        self.kill_leftovers().await?;
        if matches!(role, StartRole::Standby { .. }) {
            self.refresh_floor().await;
        }
        self.write_config(role)?;
        let log = self.startup_log();
        let deadline = Instant::now() + self.pg_ctl_bound();
        match role {
            StartRole::Primary => info!("starting PostgreSQL as a primary"),
            StartRole::Standby {
                upstream: Some(upstream),
            } => {
                info!("starting PostgreSQL as a standby of {upstream}")
            }
            StartRole::Standby { upstream: None } => {
                info!("starting PostgreSQL as a standby without upstream")
            }
        }
        let log_arg = format!("--log={}", log.display());
        let started = self
            .pg_ctl(
                &["start", "-w", "-t", &self.pg_ctl_secs(), &log_arg],
                self.pg_ctl_bound(),
            )
            .await;
        if let Err(e) = started {
            let log_tail = read_end(&log, 16 * 1024)
                .map(|t| tail(&t))
                .unwrap_or_default();
            return Err(match e {
                PgError::Command { command, detail } => PgError::Command {
                    command,
                    detail: format!("{detail}\n{}:\n{log_tail}", log.display()),
                },
                other => other,
            });
        }
        let this = self;
        self.wait_for(
            "PostgreSQL accepting SQL after start",
            deadline,
            move || async move {
                let conn = this.admin("connect after start").await?;
                conn.client
                    .simple_query("SELECT 1")
                    .await
                    .map_err(|e| sql_error("SELECT 1", e))?;
                Ok(true)
            },
        )
        .await
    }

    async fn stop(&self, mode: StopMode) -> Result<(), PgError> {
        let _stopping = StopGate::of(self.data_dir()).enter();
        self.drop_observer().await;
        if procs::postmaster(self.data_dir()).is_none() {
            if mode == StopMode::Immediate {
                self.kill_leftovers().await?;
            } else {
                procs::remove_stale_pid_file(self.data_dir())?;
            }
            return Ok(());
        }
        match mode {
            StopMode::Fast => {
                info!("stopping PostgreSQL (fast)");
                let result = self
                    .pg_ctl(
                        &["stop", "-m", "fast", "-w", "-t", &self.pg_ctl_secs()],
                        self.pg_ctl_bound(),
                    )
                    .await;
                match result {
                    Ok(_) => Ok(()),
                    Err(_) if procs::postmaster(self.data_dir()).is_none() => Ok(()),
                    Err(e) => Err(e),
                }
            }
            StopMode::Immediate => {
                info!("stopping PostgreSQL (immediate)");
                let secs = IMMEDIATE_STOP_SECS.to_string();
                let bound = Duration::from_secs(IMMEDIATE_STOP_SECS + 1);
                if let Err(e) = self
                    .pg_ctl(&["stop", "-m", "immediate", "-w", "-t", &secs], bound)
                    .await
                {
                    warn!("pg_ctl stop -m immediate: {e}; killing the PostgreSQL processes");
                }
                self.kill_leftovers().await
            }
        }
    }

    async fn promote(&self) -> Result<(), PgError> {
        self.refuse_unless_running("promote")?;
        let deadline = Instant::now() + self.pg_ctl_bound();
        info!("promoting PostgreSQL");
        if let Err(e) = self
            .pg_ctl(
                &["promote", "-w", "-t", &self.pg_ctl_secs()],
                self.pg_ctl_bound(),
            )
            .await
        {
            // Already a primary is fine; anything else is the error.
            if !matches!(self.in_recovery().await, Ok(false)) {
                return Err(e);
            }
        }
        let this = self;
        self.wait_for(
            "pg_is_in_recovery() false after promote",
            deadline,
            move || async move { Ok(!this.in_recovery().await?) },
        )
        .await?;
        // It runs as a primary now (PostgreSQL removed standby.signal): a later rewrite of the
        // configuration (synchronous_standby_names) must not put the file back, or the fence
        // guard takes this primary for a standby and never fences it (issue 19).
        self.managed.lock().unwrap_or_else(|p| p.into_inner()).role = Some(StartRole::Primary);
        Ok(())
    }

    async fn set_synchronous_standby_names(&self, value: Option<&str>) -> Result<(), PgError> {
        let role = {
            let mut managed = self.managed.lock().unwrap_or_else(|p| p.into_inner());
            managed.synchronous_standby_names = value.map(str::to_owned);
            managed.role.clone()
        };
        let role = role.unwrap_or(if self.data_file("standby.signal").exists() {
            StartRole::Standby { upstream: None }
        } else {
            StartRole::Primary
        });
        if self.write_config(&role)? && procs::postmaster(self.data_dir()).is_some() {
            info!(
                "synchronous_standby_names = {:?}: reloading PostgreSQL",
                value.unwrap_or("(configured)")
            );
            self.pg_ctl(&["reload"], self.pg_ctl_bound()).await?;
        }
        Ok(())
    }

    async fn follow(&self, upstream: &Upstream) -> Result<bool, PgError> {
        self.refresh_floor().await;
        if !self.write_config(&StartRole::Standby {
            upstream: Some(upstream.clone()),
        })? {
            return Ok(false);
        }
        if procs::postmaster(self.data_dir()).is_some() {
            info!("following {upstream}: reloading PostgreSQL");
            self.pg_ctl(&["reload"], self.pg_ctl_bound()).await?;
        }
        Ok(true)
    }

    async fn clone_replica(&self, upstream: &Upstream) -> Result<(), PgError> {
        self.create_replica(Some(upstream), &self.settings.replica_methods)
            .await
    }

    async fn create_replica(
        &self,
        source: Option<&Upstream>,
        methods: &[baton_core::ReplicaMethod],
    ) -> Result<(), PgError> {
        LocalPostgres::create_replica(self, source, methods).await
    }

    async fn clone_without_leader(&self) -> Result<(), PgError> {
        self.create_replica(None, &self.settings.replica_methods)
            .await
    }

    async fn rewind(&self, upstream: &Upstream) -> Result<(), PgError> {
        StopGate::of(self.data_dir()).wait_idle().await;
        self.refuse_if_running("rewind")?;
        let mut control = self.controldata().await?;
        if !control.rewindable {
            return Err(PgError::Other(
                "cannot rewind: neither wal_log_hints nor data checksums are enabled".to_owned(),
            ));
        }
        if control.state.is_unclean() {
            self.single_user_recovery().await?;
            control = self.controldata().await?;
            if control.state.is_unclean() {
                return Err(PgError::Other(format!(
                    "data directory still not shut down cleanly after single-user recovery: {:?}",
                    control.state
                )));
            }
        }
        self.ensure_upstream_checkpoint(upstream).await?;
        self.write_pgpass()?;
        let s = &self.settings;
        let creds = s.rewind.as_ref().unwrap_or(&s.superuser);
        let port = upstream.port.to_string();
        let connect_timeout = CONNECT_TIMEOUT_SECS.to_string();
        let mut pairs = vec![
            ("host", upstream.host.as_str()),
            ("port", &port),
            ("user", &creds.username),
            ("dbname", "postgres"),
            ("target_session_attrs", "read-write"),
            ("connect_timeout", &connect_timeout),
        ];
        pairs.extend(render::role_options(creds));
        let dsn = render::conninfo(&pairs);
        let mut target = OsString::from("--target-pgdata=");
        target.push(self.data_dir());
        let args: Vec<OsString> = vec![target, format!("--source-server={dsn}").into()];
        let env = vec![
            self.pgpass_env(),
            ("PGOPTIONS", "-c statement_timeout=0".into()),
        ];
        info!("rewinding from {upstream}");
        self.run(
            "pg_rewind",
            args,
            RunOpts {
                env,
                c_locale: true,
                timeout: None,
                stall: Some(STALL_TIMEOUT),
            },
        )
        .await?;
        Ok(())
    }

    async fn reconfigure(
        &self,
        parameters: &BTreeMap<String, String>,
        pg_hba: &[String],
    ) -> Result<Reconfigured, PgError> {
        let mut parameters = parameters.clone();
        let mut outcome = Reconfigured::default();
        for name in KEPT_PARAMETERS {
            let running = find_parameter(&self.settings.parameters, name).map(str::to_owned);
            if find_parameter(&parameters, name) != running.as_deref() {
                parameters.retain(|k, _| !k.trim().eq_ignore_ascii_case(name));
                if let Some(value) = running {
                    parameters.insert((*name).to_owned(), value);
                }
                outcome.kept.push((*name).to_owned());
            }
        }
        // Refuse what cannot be written before adopting anything.
        let mut candidate = self.settings.clone();
        candidate.parameters = parameters.clone();
        candidate.pg_hba = pg_hba.to_vec();
        render::postgresql_conf(&candidate, &StartRole::Primary)?;
        render::pg_hba_conf(&candidate)?;
        let role = {
            let mut managed = self.managed.lock().unwrap_or_else(|p| p.into_inner());
            managed.parameters = parameters;
            managed.pg_hba = pg_hba.to_vec();
            managed.role.clone()
        };

        if procs::postmaster(self.data_dir()).is_none() {
            outcome.deferred = Some("PostgreSQL is not running; it starts with them");
            return Ok(outcome);
        }
        if self
            .managed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .bootstrap
            .is_some()
        {
            // Its recovery settings must stay until it ends; it writes the files then.
            outcome.deferred = Some("a custom bootstrap is under way; it ends with them");
            return Ok(outcome);
        }
        let conn = self.admin("reconfigure").await?;
        let limit = self.settings.sql_timeout.max(Duration::from_secs(1));
        let query = |sql: &'static str, params: Vec<String>| {
            let client = &conn.client;
            async move {
                let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                    .iter()
                    .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
                    .collect();
                match timeout(limit, client.query(sql, &refs)).await {
                    Ok(rows) => rows.map_err(|e| sql_error("reconfigure", e)),
                    Err(_) => Err(PgError::Timeout {
                        what: format!("reconfigure: {}", sql.lines().next().unwrap_or(sql)),
                        after: limit,
                    }),
                }
            }
        };
        let text = |rows: &[Row], column: usize| -> Result<String, PgError> {
            rows.first()
                .ok_or_else(|| PgError::sql("reconfigure: no row"))?
                .try_get::<_, String>(column)
                .map_err(|e| sql_error("reconfigure", e))
        };
        let in_recovery = query("SELECT pg_catalog.pg_is_in_recovery()::text", vec![]).await?;
        let role = if text(&in_recovery, 0)? == "false" {
            StartRole::Primary
        } else {
            match role {
                Some(role @ StartRole::Standby { .. }) => {
                    self.refresh_floor().await;
                    role
                }
                _ => {
                    outcome.deferred = Some(
                        "PostgreSQL runs as a standby whose upstream is not known yet; \
                         following the leader writes them",
                    );
                    return Ok(outcome);
                }
            }
        };
        let written = self.write_config_files(&role)?;
        outcome.rewritten = written.conf || written.hba;
        outcome.raised = self
            .managed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .raised
            .clone();
        if outcome.rewritten || written.signal {
            info!(
                postgresql_conf = written.conf,
                pg_hba_conf = written.hba,
                "configuration changed: reloading PostgreSQL"
            );
            let load_time = "SELECT pg_catalog.pg_conf_load_time()::text";
            let before = text(&query(load_time, vec![]).await?, 0)?;
            query("SELECT pg_catalog.pg_reload_conf()::text", vec![]).await?;
            // This session re-reads the files after the postmaster did: wait for it, so what
            // is reported below is the reloaded state.
            let deadline = Instant::now() + limit;
            loop {
                if text(&query(load_time, vec![]).await?, 0)? != before {
                    outcome.reloaded = true;
                    break;
                }
                if Instant::now() >= deadline {
                    warn!("PostgreSQL did not re-read its configuration within {limit:?}");
                    break;
                }
                sleep(POLL_INTERVAL).await;
            }
        }
        for row in query(PENDING_RESTART_SQL, vec![]).await? {
            let get = |i| {
                row.try_get::<_, String>(i)
                    .map_err(|e| sql_error("pending restart", e))
            };
            outcome.pending_restart.push(PendingSetting {
                name: get(0)?,
                old_value: get(1)?,
                new_value: get(2)?,
            });
        }
        let conf = self.data_file("postgresql.conf").display().to_string();
        for row in query(FILE_ERRORS_SQL, vec![conf]).await? {
            let get = |i| {
                row.try_get::<_, String>(i)
                    .map_err(|e| sql_error("configuration file errors", e))
            };
            let name = get(0)?;
            if !outcome.pending_restart.iter().any(|p| p.name == name) {
                outcome.rejected.push((name, get(1)?));
            }
        }
        Ok(outcome)
    }

    async fn wipe_data_dir(&self) -> Result<(), PgError> {
        self.refuse_if_running("wipe the data directory")?;
        info!("wiping {}", self.data_dir().display());
        self.wipe()
    }

    async fn create_roles(&self) -> Result<(), PgError> {
        let s = &self.settings;
        let work = async {
            let conn = self.admin("create roles").await?;
            let client = &conn.client;
            let exec = |sql: String, what: &'static str| async move {
                client
                    .batch_execute(&sql)
                    .await
                    .map_err(|e| sql_error(what, e))
            };
            exec(
                "SET log_statement TO 'none'; SET log_min_duration_statement TO -1; \
                 SET log_min_error_statement TO 'log'"
                    .to_owned(),
                "silence statement logging",
            )
            .await?;
            let version: i32 = client
                .query_one("SELECT current_setting('server_version_num')::int4", &[])
                .await
                .and_then(|row| row.try_get(0))
                .map_err(|e| sql_error("server_version_num", e))?;
            if let Some(password) = &s.superuser.password {
                let sql = format!(
                    "ALTER ROLE {} WITH SUPERUSER LOGIN PASSWORD {}",
                    render::quote_ident(&s.superuser.username),
                    password_literal(password)
                );
                exec(sql, "set the superuser password").await?;
            }
            if s.replication.username != s.superuser.username {
                upsert_role(
                    client,
                    &s.replication.username,
                    "REPLICATION LOGIN",
                    s.replication.password.as_deref(),
                )
                .await?;
            }
            if let Some(rewind) = s
                .rewind
                .as_ref()
                .filter(|r| r.username != s.superuser.username)
            {
                let attributes = if rewind.username == s.replication.username {
                    "REPLICATION LOGIN"
                } else {
                    "LOGIN"
                };
                upsert_role(
                    client,
                    &rewind.username,
                    attributes,
                    rewind.password.as_deref(),
                )
                .await?;
                let user = render::quote_ident(&rewind.username);
                let mut grants: Vec<String> = [
                    "pg_catalog.pg_ls_dir(text, boolean, boolean)",
                    "pg_catalog.pg_stat_file(text, boolean)",
                    "pg_catalog.pg_read_binary_file(text)",
                    "pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean)",
                ]
                .iter()
                .map(|f| format!("GRANT EXECUTE ON FUNCTION {f} TO {user}"))
                .collect();
                if version >= 150000 {
                    // Lets pg_rewind's caller checkpoint a freshly promoted source.
                    grants.push(format!("GRANT pg_checkpoint TO {user}"));
                }
                exec(grants.join("; "), "grant the rewind user's functions").await?;
            }
            exec("CHECKPOINT".to_owned(), "CHECKPOINT").await
        };
        let limit = s.pg_ctl_timeout;
        timeout(limit, work).await.unwrap_or_else(|_| {
            Err(PgError::Timeout {
                what: "create roles".into(),
                after: limit,
            })
        })
    }

    async fn ensure_slots(&self, slots: &[String]) -> Result<(), PgError> {
        self.ensure_slots_keeping(slots, &[]).await
    }

    async fn ensure_slots_keeping(&self, slots: &[String], keep: &[String]) -> Result<(), PgError> {
        if let Some(bad) = slots.iter().find(|s| !is_valid_slot_name(s)) {
            return Err(PgError::Other(format!(
                "invalid replication slot name {bad:?}"
            )));
        }
        let wanted: BTreeSet<&str> = slots.iter().map(String::as_str).collect();
        let work = async {
            let mut record = self.read_slot_record()?;
            let conn = self.admin("ensure slots").await?;
            let client = &conn.client;
            let rows = client
                .query(
                    "SELECT slot_name::text, active FROM pg_catalog.pg_replication_slots WHERE slot_type = 'physical' AND NOT temporary",
                    &[],
                )
                .await
                .map_err(|e| sql_error("list replication slots", e))?;
            let mut existing = BTreeMap::new();
            for row in &rows {
                let name: String = row
                    .try_get(0)
                    .map_err(|e| sql_error("list replication slots", e))?;
                let active: bool = row
                    .try_get(1)
                    .map_err(|e| sql_error("list replication slots", e))?;
                existing.insert(name, active);
            }
            // Ours: what the record lists and still exists, and every wanted (member) slot,
            // created below or adopted. Recorded before any slot is created, so a crash in
            // between never leaves a slot we made unrecorded.
            let recorded = record.clone();
            record.retain(|name| existing.contains_key(name));
            record.extend(slots.iter().cloned());
            if record != recorded {
                self.write_slot_record(&record)?;
            }
            let written = record.clone();
            for (name, active) in &existing {
                if wanted.contains(name.as_str()) || !record.contains(name) {
                    // Wanted, or not ours (Barman's, pg_receivewal's, ...): left alone.
                    continue;
                }
                if keep.contains(name) {
                    // Ours, but it matches `ignore_slots`: never dropped.
                    continue;
                }
                if *active {
                    debug!("replication slot {name} is no longer wanted but still active");
                    continue;
                }
                info!("dropping replication slot {name}");
                let result = client
                    .execute("SELECT pg_catalog.pg_drop_replication_slot($1)", &[name])
                    .await;
                let dropped = match result {
                    Ok(_) => true,
                    Err(e) if e.code() == Some(&SqlState::UNDEFINED_OBJECT) => true,
                    Err(e) if e.code() == Some(&SqlState::OBJECT_IN_USE) => {
                        debug!("replication slot {name} became active; dropping it later");
                        false
                    }
                    Err(e) => {
                        return Err(sql_error(&format!("drop replication slot {name}"), e));
                    }
                };
                if dropped {
                    record.remove(name);
                }
            }
            for name in slots.iter().filter(|s| !existing.contains_key(*s)) {
                info!("creating replication slot {name}");
                let result = client
                    .execute(
                        "SELECT pg_catalog.pg_create_physical_replication_slot($1, true)",
                        &[name],
                    )
                    .await;
                ignore_states(result, &[SqlState::DUPLICATE_OBJECT])
                    .map_err(|e| sql_error(&format!("create replication slot {name}"), e))?;
            }
            if record != written {
                self.write_slot_record(&record)?;
            }
            Ok(())
        };
        let limit = self.settings.pg_ctl_timeout;
        timeout(limit, work).await.unwrap_or_else(|_| {
            Err(PgError::Timeout {
                what: "ensure replication slots".into(),
                after: limit,
            })
        })
    }

    async fn sync_slots(&self, work: &baton_core::slots::SlotWork) -> Result<(), PgError> {
        self.sync_permanent_slots(work).await
    }

    async fn primary_slots(
        &self,
        upstream: &Upstream,
        physical: &str,
        logical: &[String],
    ) -> Result<baton_core::slot_readiness::PrimarySlots, PgError> {
        self.primary_slots_of(upstream, physical, logical).await
    }

    async fn copy_logical_slots(
        &self,
        upstream: &Upstream,
        slots: &[String],
    ) -> Result<(), PgError> {
        self.copy_logical_slots_from(upstream, slots).await
    }

    async fn timeline_history(&self) -> Result<Vec<HistoryLine>, PgError> {
        let timeline = self.current_timeline().await?;
        if timeline.0 <= 1 {
            return Ok(Vec::new());
        }
        let path = self
            .data_dir()
            .join("pg_wal")
            .join(history::file_name(timeline));
        let text = fs::read_to_string(&path).map_err(|source| PgError::Io {
            context: format!("read {}", path.display()),
            source,
        })?;
        history::parse(&text).map_err(|e| PgError::Other(format!("{}: {e}", path.display())))
    }
}

impl LocalPostgres {
    fn refuse_unless_running(&self, what: &str) -> Result<(), PgError> {
        match procs::postmaster(self.data_dir()) {
            Some(_) => Ok(()),
            None => Err(PgError::Other(format!(
                "cannot {what}: PostgreSQL is not running"
            ))),
        }
    }
}

/// One observation round over the cached connection: the three queries pipelined.
async fn query_state(conn: &ObserveConn) -> Result<PgSql, PgError> {
    let client = &conn.conn.client;
    let (status, replication, slots) = tokio::try_join!(
        client.query_one(&conn.status, &[]),
        client.query(&conn.replication, &[]),
        client.query(&conn.slots, &[]),
    )
    .map_err(|e| sql_error("observe", e))?;
    let mut sql = parse_status(&status)?;
    sql.replication = replication
        .iter()
        .map(parse_replication_row)
        .collect::<Result<_, _>>()?;
    sql.replication_slots = slots::parse_slot_rows(&slots)?;
    sql.slots = sql
        .replication_slots
        .iter()
        .filter(|s| s.kind == baton_core::slots::SlotKind::Physical)
        .map(|s| s.name.clone())
        .collect();
    Ok(sql)
}

fn parse_status(row: &Row) -> Result<PgSql, PgError> {
    let get_err = |e: tokio_postgres::Error| sql_error("status row", e);
    let version: i32 = row.try_get(0).map_err(get_err)?;
    let start_time: Option<String> = row.try_get(1).map_err(get_err)?;
    let in_recovery: bool = row.try_get(2).map_err(get_err)?;
    let lsn = |i: usize| -> Result<Option<Lsn>, PgError> {
        let text: Option<String> = row.try_get(i).map_err(get_err)?;
        text.map(|t| {
            t.parse::<Lsn>().map_err(|e| PgError::Sql {
                message: format!("status row: {e}"),
                source: Some(e.into()),
            })
        })
        .transpose()
    };
    let flush_lsn = lsn(3)?;
    let received_lsn = lsn(4)?;
    let replayed_lsn = lsn(5)?;
    let replayed_timestamp: Option<String> = row.try_get(6).map_err(get_err)?;
    let replay_paused: bool = row.try_get(7).map_err(get_err)?;
    let walfile: Option<String> = row.try_get(8).map_err(get_err)?;
    let checkpoint_tli: Option<i64> = row.try_get(9).map_err(get_err)?;
    let receiver_status: Option<String> = row.try_get(10).map_err(get_err)?;
    let received_tli: Option<i64> = row.try_get(11).map_err(get_err)?;
    let receiver_latest_end_lsn = lsn(12)?;
    let pending_restart: bool = row.try_get(13).map_err(get_err)?;
    let synchronous_standby_names: String = row.try_get(14).map_err(get_err)?;
    let synchronous_commit: String = row.try_get(15).map_err(get_err)?;

    let to_timeline = |t: i64| u32::try_from(t).ok().filter(|t| *t > 0).map(Timeline);
    let timeline = if in_recovery {
        received_tli.and_then(to_timeline)
    } else {
        walfile.as_deref().and_then(walfile_timeline)
    }
    .or_else(|| checkpoint_tli.and_then(to_timeline))
    .ok_or_else(|| PgError::sql("status row: no timeline"))?;

    Ok(PgSql {
        server_version: u32::try_from(version).unwrap_or_default(),
        postmaster_start_time: start_time.unwrap_or_default(),
        in_recovery,
        timeline,
        flush_lsn,
        received_lsn,
        replayed_lsn,
        replayed_timestamp,
        replay_paused,
        streaming: receiver_status.as_deref() == Some("streaming"),
        receiver_latest_end_lsn,
        replication: Vec::new(),
        slots: Vec::new(),
        replication_slots: Vec::new(),
        pending_restart,
        synchronous_standby_names,
        synchronous_commit,
        newest_history: None,
        timeline_start: None,
    })
}

fn parse_replication_row(row: &Row) -> Result<ReplicationRow, PgError> {
    let get_err = |e: tokio_postgres::Error| sql_error("pg_stat_replication row", e);
    let text = |i: usize| -> Result<Option<String>, PgError> { row.try_get(i).map_err(get_err) };
    let lsn = |i: usize| -> Result<Option<Lsn>, PgError> {
        text(i)?
            .map(|t| {
                t.parse::<Lsn>().map_err(|e| PgError::Sql {
                    message: format!("pg_stat_replication: {e}"),
                    source: Some(e.into()),
                })
            })
            .transpose()
    };
    Ok(ReplicationRow {
        pid: row
            .try_get::<_, Option<i32>>(0)
            .map_err(get_err)?
            .unwrap_or_default(),
        usename: text(1)?.unwrap_or_default(),
        application_name: text(2)?.unwrap_or_default(),
        client_addr: text(3)?,
        state: text(4)?.unwrap_or_default(),
        sync_state: text(5)?.unwrap_or_default(),
        sync_priority: row
            .try_get::<_, Option<i32>>(6)
            .map_err(get_err)?
            .unwrap_or_default(),
        write_lsn: lsn(7)?,
        flush_lsn: lsn(8)?,
        replay_lsn: lsn(9)?,
    })
}

/// Stops in progress on one data directory, shared by every `LocalPostgres` of the process
/// (the fencer has its own). A stop ends by killing every process of the directory, so
/// starting PostgreSQL, or single-user recovery for a rewind, waits until no stop is under
/// way; a stop itself never waits (fencing must not).
struct StopGate {
    stopping: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

/// Decrements the gate's count when a stop ends, however it ends.
struct Stopping(std::sync::Arc<StopGate>);

impl Drop for Stopping {
    fn drop(&mut self) {
        if self
            .0
            .stopping
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
            == 1
        {
            self.0.idle.notify_waiters();
        }
    }
}

impl StopGate {
    fn of(dir: &Path) -> std::sync::Arc<StopGate> {
        static GATES: std::sync::OnceLock<
            std::sync::Mutex<std::collections::HashMap<PathBuf, std::sync::Arc<StopGate>>>,
        > = std::sync::OnceLock::new();
        let mut gates = GATES
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        gates
            .entry(dir.to_owned())
            .or_insert_with(|| {
                std::sync::Arc::new(StopGate {
                    stopping: std::sync::atomic::AtomicUsize::new(0),
                    idle: tokio::sync::Notify::new(),
                })
            })
            .clone()
    }

    fn enter(self: std::sync::Arc<StopGate>) -> Stopping {
        self.stopping
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Stopping(self)
    }

    async fn wait_idle(&self) {
        loop {
            let idle = self.idle.notified();
            if self.stopping.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// The highest timeline with a history file (`0000000N.history`) in `<data_dir>/pg_wal`.
/// The value of parameter `name` (case-insensitive) in `parameters`.
fn find_parameter<'a>(parameters: &'a BTreeMap<String, String>, name: &str) -> Option<&'a str> {
    parameters
        .iter()
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The standby minimums in `pg_controldata` output (the labels of [`STANDBY_MINIMUMS`]);
/// a missing or malformed line gives no minimum for that setting.
fn standby_minimums(controldata: &str) -> BTreeMap<&'static str, u64> {
    let mut out = BTreeMap::new();
    for line in controldata.lines() {
        let Some((label, value)) = line.split_once(':') else {
            continue;
        };
        if let Some((name, _)) = STANDBY_MINIMUMS.iter().find(|(_, l)| *l == label.trim())
            && let Ok(value) = value.trim().parse::<u64>()
        {
            out.insert(*name, value);
        }
    }
    out
}

/// Raise the settings in `parameters` that are below `floor` (or missing) to it; returns
/// what was raised. A value that is not a plain integer is raised too (PostgreSQL would
/// refuse it).
fn raise_to_floor(
    parameters: &mut BTreeMap<String, String>,
    floor: &BTreeMap<&'static str, u64>,
) -> Vec<RaisedSetting> {
    let mut raised = Vec::new();
    for (name, minimum) in floor {
        let configured = find_parameter(parameters, name).map(str::to_owned);
        let ok = configured
            .as_deref()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|v| v >= *minimum);
        if ok {
            continue;
        }
        parameters.retain(|k, _| !k.trim().eq_ignore_ascii_case(name));
        parameters.insert((*name).to_owned(), minimum.to_string());
        if let Some(configured) = configured {
            raised.push(RaisedSetting {
                name: (*name).to_owned(),
                configured,
                written: *minimum,
            });
        }
    }
    raised
}

fn newest_history_file(data_dir: &Path) -> Option<Timeline> {
    std::fs::read_dir(data_dir.join("pg_wal"))
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| history_file_timeline(&e.file_name().to_string_lossy()))
        .max()
}

/// The last line of `pg_wal/<timeline>.history`: where `timeline` began (`None` when the file
/// is unreadable or has no line; `decide` then draws no conclusion from it).
fn timeline_start(data_dir: &Path, timeline: Timeline) -> Option<TimelineStart> {
    let path = data_dir.join("pg_wal").join(history::file_name(timeline));
    let text = std::fs::read_to_string(&path)
        .map_err(|e| debug!("observe: read {}: {e}", path.display()))
        .ok()?;
    let lines = history::parse(&text)
        .map_err(|e| debug!("observe: {}: {e}", path.display()))
        .ok()?;
    let last = lines.last()?;
    Some(TimelineStart {
        timeline,
        parent: last.timeline,
        at: last.lsn,
    })
}

/// `00000002.history` → timeline 2.
fn history_file_timeline(name: &str) -> Option<Timeline> {
    let hex = name.strip_suffix(".history")?;
    if hex.len() != 8 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(hex, 16)
        .ok()
        .filter(|t| *t > 0)
        .map(Timeline)
}

/// The timeline of a WAL file name (`000000020000000000000005` → 2).
fn walfile_timeline(name: &str) -> Option<Timeline> {
    let tli = u32::from_str_radix(name.get(..8)?, 16).ok()?;
    (tli > 0).then_some(Timeline(tli))
}

/// A command for `program` as every child pgbaton starts gets it: working directory `/`,
/// standard input from `/dev/null`, a process group of its own (so the whole group can be
/// killed), killed when its handle is dropped, no libpq variables (`PGHOST`, `PGPASSWORD`,
/// ...) and none of the agent's own (`PATRONI_*`, `PGBATON_*`: they hold its secrets), no
/// ambient capabilities, and the `run_as` (uid, gid) when given. PostgreSQL's binaries run
/// through it, and so do the agent's callback scripts.
/// Resolves once the processes of group `pgid` have read and written nothing (their
/// `/proc/<pid>/io` counters, files, pipes and sockets alike) for `limit`; pending forever
/// while they progress, or while their counters cannot be read (nobody can tell then).
async fn stalled(pgid: i32, limit: Duration) {
    let poll = (limit / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
    let mut last = None;
    let mut since = tokio::time::Instant::now();
    loop {
        sleep(poll).await;
        let now = tokio::task::spawn_blocking(move || procs::group_io(pgid))
            .await
            .ok()
            .flatten();
        if now.is_none() || now != last {
            last = now;
            since = tokio::time::Instant::now();
        } else if since.elapsed() >= limit {
            return;
        }
    }
}

pub fn clean_command(
    program: impl AsRef<OsStr>,
    run_as: Option<(u32, u32)>,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    cmd.current_dir("/")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .process_group(0);
    for var in PG_ENV {
        cmd.env_remove(var);
    }
    for (name, _) in std::env::vars_os() {
        if is_agent_var(&name) {
            cmd.env_remove(name);
        }
    }
    clear_ambient_capabilities(&mut cmd);
    if let Some((uid, gid)) = run_as {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// `PATRONI_*` / `PGBATON_*` (any case): a variable of the agent's own configuration.
fn is_agent_var(name: &OsStr) -> bool {
    let name = name.as_bytes();
    AGENT_ENV_PREFIXES.iter().any(|prefix| {
        name.get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
    })
}

/// Empty the child's ambient capability set before it execs. An agent started with ambient
/// `CAP_NET_ADMIN`/`CAP_NET_RAW` (for the floating IP) would otherwise hand them to
/// PostgreSQL, which, running without file capabilities, keeps exactly its ambient set.
/// The spawn fails rather than run a child with capabilities it could not drop.
#[allow(unsafe_code)]
fn clear_ambient_capabilities(cmd: &mut tokio::process::Command) {
    let clear = || {
        // SAFETY: prctl(2) is a plain system call: no allocation, no lock, nothing but
        // integer arguments (passed as `unsigned long`, as the kernel reads them), so it is
        // safe between fork and exec. `last_os_error` only reads errno.
        let rc = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: the hook runs in the forked child before exec and does only the
    // async-signal-safe system call above; it touches no state of the parent.
    unsafe {
        cmd.pre_exec(clear);
    }
}

/// A new file beside `path` (a hidden, unpredictable name in the same directory, so the
/// rename over `path` is atomic), opened with `O_CREAT|O_EXCL|O_NOFOLLOW`: a file or symlink
/// already at that name is never followed nor reused.
fn create_temp_beside(path: &Path, mode: u32) -> Result<(PathBuf, fs::File), PgError> {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut tries = 0;
    loop {
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let tmp = path.with_file_name(format!(
            ".{name}.{}-{n}-{nanos:08x}.pgbaton-tmp",
            std::process::id()
        ));
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
        {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < 16 => tries += 1,
            Err(source) => {
                return Err(PgError::Io {
                    context: format!("create {}", tmp.display()),
                    source,
                });
            }
        }
    }
}

fn is_valid_slot_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

async fn upsert_role(
    client: &Client,
    name: &str,
    attributes: &str,
    password: Option<&str>,
) -> Result<(), PgError> {
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1",
            &[&name],
        )
        .await
        .map_err(|e| sql_error(&format!("look up role {name}"), e))?
        .is_some();
    let verb = if exists { "ALTER" } else { "CREATE" };
    let mut sql = format!(
        "{verb} ROLE {} WITH {attributes}",
        render::quote_ident(name)
    );
    if let Some(password) = password {
        sql.push_str(&format!(" PASSWORD {}", password_literal(password)));
    }
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| sql_error(&format!("{} role {name}", verb.to_lowercase()), e))
}

/// The `PASSWORD` literal for a role: a SCRAM-SHA-256 verifier with a fresh random salt, so
/// the statement (logged by tokio-postgres at debug level, and by the server when it logs
/// statements) never holds the password, whatever its characters (see
/// [`render::scram_verifier`]); `''` for an empty password (PostgreSQL: no password), and the
/// password itself only if the system's random source fails.
fn password_literal(password: &str) -> String {
    use ring::rand::SecureRandom;
    let mut salt = [0u8; 16];
    let verifier = ring::rand::SystemRandom::new()
        .fill(&mut salt)
        .ok()
        .and_then(|()| render::scram_verifier(password, &salt));
    render::quote_literal(verifier.as_deref().unwrap_or(password))
}

fn ignore_states(
    result: Result<u64, tokio_postgres::Error>,
    states: &[SqlState],
) -> Result<(), tokio_postgres::Error> {
    match result {
        Ok(_) => Ok(()),
        Err(e) if e.code().is_some_and(|code| states.contains(code)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// A SQL error with its context and the server's message (tokio-postgres' own `Display` says
/// only "db error"), keeping the client's error as the source.
fn sql_error(context: &str, e: tokio_postgres::Error) -> PgError {
    let detail = match e.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        }
    };
    PgError::Sql {
        message: format!("{context}: {detail}"),
        source: Some(e.into()),
    }
}

/// The last lines of a command's output, for error messages.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(TAIL_LINES);
    let joined = lines[start..].join("\n");
    if joined.len() > 4000 {
        let cut = joined.len() - 4000;
        let cut = (cut..joined.len())
            .find(|i| joined.is_char_boundary(*i))
            .unwrap_or(joined.len());
        joined[cut..].to_owned()
    } else {
        joined
    }
}

/// Patroni's `data_directory_is_empty`: missing, or only hidden entries and `lost+found`.
fn data_dir_is_empty(dir: &Path) -> std::io::Result<bool> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with('.') && name != "lost+found" {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The last `max` bytes of a file, from the first full line.
fn read_end(path: &Path, max: u64) -> std::io::Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = fs::File::open(path)?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(max)))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    Ok(if len > max {
        text.split_once('\n')
            .map(|(_, rest)| rest.to_owned())
            .unwrap_or(text)
    } else {
        text
    })
}

/// Remove a directory's contents, keeping it.
fn clear_dir(dir: &Path) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            fs::remove_dir_all(entry.path())?;
        } else {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sql_errors_keep_the_client_error_as_source() {
        // Nothing listens on port 1: tokio-postgres fails with an io error inside.
        let e = tokio_postgres::connect(
            "host=127.0.0.1 port=1 user=nobody connect_timeout=10",
            tokio_postgres::NoTls,
        )
        .await
        .err()
        .expect("no server on port 1");
        let err = sql_error("connect", e);
        assert!(
            err.to_string()
                .starts_with("sql: connect: error connecting to server: "),
            "{err}"
        );
        let client = std::error::Error::source(&err)
            .and_then(|s| s.downcast_ref::<tokio_postgres::Error>())
            .expect("the client's error is the source");
        let io = std::error::Error::source(client)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .expect("and its io error below it");
        assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
    }

    #[test]
    fn walfile_names_give_timelines() {
        assert_eq!(
            walfile_timeline("000000020000000000000005"),
            Some(Timeline(2))
        );
        assert_eq!(
            walfile_timeline("0000000A0000000100000005"),
            Some(Timeline(10))
        );
        assert_eq!(walfile_timeline("zz"), None);
        assert_eq!(walfile_timeline("000000000000000000000005"), None);
    }

    #[tokio::test]
    async fn starts_wait_for_stops_of_the_same_data_directory_only() {
        let dir = Path::new("/nonexistent/stop-gate-test");
        let stopping = StopGate::of(dir).enter();
        assert!(
            tokio::time::timeout(Duration::from_millis(100), StopGate::of(dir).wait_idle())
                .await
                .is_err(),
            "a start went ahead during a stop"
        );
        let waiter = tokio::spawn(async move { StopGate::of(dir).wait_idle().await });
        StopGate::of(Path::new("/nonexistent/other"))
            .wait_idle()
            .await;
        drop(stopping);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the start goes ahead once the stop ended")
            .expect("task");
    }

    #[test]
    fn history_files_give_the_newest_timeline() {
        assert_eq!(history_file_timeline("00000002.history"), Some(Timeline(2)));
        assert_eq!(
            history_file_timeline("0000000A.history"),
            Some(Timeline(10))
        );
        for name in [
            "00000000.history",
            "0002.history",
            "000000020000000000000005",
            "x.history",
        ] {
            assert_eq!(history_file_timeline(name), None, "{name}");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(newest_history_file(dir.path()), None, "no pg_wal");
        let wal = dir.path().join("pg_wal");
        std::fs::create_dir(&wal).expect("pg_wal");
        for f in [
            "00000002.history",
            "00000003.history",
            "000000030000000000000004",
        ] {
            std::fs::write(wal.join(f), "").expect("file");
        }
        assert_eq!(newest_history_file(dir.path()), Some(Timeline(3)));
        assert_eq!(timeline_start(dir.path(), Timeline(3)), None, "empty file");
        std::fs::write(
            wal.join("00000003.history"),
            "1\t0/3000060\tno recovery target specified\n\n2\t0/5000028\tno recovery target specified\n",
        )
        .expect("history");
        assert_eq!(
            timeline_start(dir.path(), Timeline(3)),
            Some(TimelineStart {
                timeline: Timeline(3),
                parent: Timeline(2),
                at: Lsn(0x5000028)
            }),
            "the last line: where timeline 3 began"
        );
        assert_eq!(timeline_start(dir.path(), Timeline(4)), None, "no file");
    }

    pub(super) fn settings(dir: &Path) -> PgSettings {
        PgSettings {
            name: "n1".into(),
            scope: "test".into(),
            data_dir: dir.join("data"),
            bin_dir: PathBuf::from("/usr/bin"),
            listen_addresses: "127.0.0.1".into(),
            port: 5432,
            local_host: String::new(),
            socket_dir: Some(dir.to_owned()),
            superuser: crate::Credentials {
                username: "postgres".into(),
                password: Some("su secret".into()),
                options: Vec::new(),
            },
            replication: crate::Credentials::default(),
            rewind: None,
            pgpass: dir.join("pgpass"),
            parameters: Default::default(),
            pg_hba: Vec::new(),
            use_slots: true,
            initdb_options: Vec::new(),
            replica_methods: Vec::new(),
            basebackup_options: Vec::new(),
            recovery_conf: Vec::new(),
            bootstrap_recovery: None,
            pg_ctl_timeout: Duration::from_secs(10),
            sql_timeout: Duration::from_secs(5),
            run_as: None,
        }
    }

    #[tokio::test]
    async fn a_command_that_reads_and_writes_nothing_is_killed_as_stalled() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pg = LocalPostgres::new(settings(dir.path()));
        let marker = dir.path().join("child-pid");
        // The shell and its background child are both in the command's process group, and
        // neither reads or writes anything after the pid is written.
        let script = format!("sleep 600 & echo $! > {}; wait", marker.display());
        let opts = RunOpts {
            stall: Some(Duration::from_millis(500)),
            ..RunOpts::default()
        };
        let err = pg
            .run("sh", vec!["-c".into(), script.into()], opts)
            .await
            .expect_err("a silent command is stalled");
        assert!(matches!(err, PgError::Stalled { .. }), "{err}");
        assert!(err.to_string().contains("made no progress"), "{err}");
        // The whole group is killed, the background child too.
        let pid: i32 = std::fs::read_to_string(&marker)
            .expect("the child's pid")
            .trim()
            .parse()
            .expect("a pid");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while procs::stat(pid).is_some_and(|p| !p.is_zombie()) {
            assert!(
                std::time::Instant::now() < deadline,
                "the stalled command's child {pid} still runs"
            );
            sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_command_that_keeps_writing_is_not_stalled() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pg = LocalPostgres::new(settings(dir.path()));
        // A line every 20 ms for longer than the stall limit.
        let script = "i=0; while [ $i -lt 150 ]; do echo $i; i=$((i+1)); sleep 0.02; done";
        let opts = RunOpts {
            stall: Some(Duration::from_secs(2)),
            ..RunOpts::default()
        };
        let out = pg
            .run("sh", vec!["-c".into(), script.into()], opts)
            .await
            .expect("a command that writes is not stalled");
        assert!(out.lines().any(|l| l == "149"), "{out}");
    }

    #[test]
    fn agent_variables_are_recognised() {
        for name in [
            "PATRONI_SUPERUSER_PASSWORD",
            "PGBATON_RESTAPI_PASSWORD",
            "pgbaton_x",
        ] {
            assert!(is_agent_var(OsStr::new(name)), "{name}");
        }
        for name in ["PATH", "PGDATA", "PATRONI", "LANG", "MY_PGBATON_X", ""] {
            assert!(!is_agent_var(OsStr::new(name)), "{name}");
        }
    }

    /// Set in the re-executed copy of the test below: `env` (secrets in the environment) or
    /// `caps` (also an ambient capability, raised by setpriv).
    const REEXEC: &str = "PGBATON_TEST_REEXEC";
    const SECRET: &str = "PGBATON_TEST_SECRET";

    /// Every binary `LocalPostgres` runs goes through `run`: here `cat` reads its own
    /// `/proc/self/environ` and `status`. The test re-runs itself in a child process whose
    /// environment carries agent secrets and — as root, through `setpriv` — an ambient
    /// capability, since a test cannot safely change its own environment or capabilities.
    #[tokio::test]
    async fn children_get_no_agent_variables_nor_ambient_capabilities() {
        const NAME: &str = "local::tests::children_get_no_agent_variables_nor_ambient_capabilities";
        let Some(mode) = std::env::var_os(REEXEC) else {
            let exe = std::env::current_exe().expect("test binary");
            let setpriv = Path::new("/usr/bin/setpriv");
            let caps = nix::unistd::geteuid().is_root() && setpriv.exists();
            let mut cmd = if caps {
                let mut cmd = std::process::Command::new(setpriv);
                cmd.args(["--inh-caps=+net_raw", "--ambient-caps=+net_raw"])
                    .arg(exe);
                cmd
            } else {
                println!("not root or no setpriv: checking the environment only");
                std::process::Command::new(exe)
            };
            let out = cmd
                .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
                .env(REEXEC, if caps { "caps" } else { "env" })
                .env(SECRET, "hunter2")
                .env("PATRONI_SUPERUSER_PASSWORD", "hunter2")
                .output()
                .expect("re-run the test");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "{text}");
            assert!(text.contains("1 passed"), "the re-run ran no test: {text}");
            return;
        };
        // The re-run: its own environment and capabilities are what an agent's would be.
        let own_status = fs::read_to_string("/proc/self/status").expect("own status");
        if mode == "caps" {
            assert_ne!(
                cap_amb(&own_status),
                Some(0),
                "setpriv raised no ambient capability: {own_status}"
            );
        }
        assert_eq!(std::env::var(SECRET).as_deref(), Ok("hunter2"));

        let dir = tempfile::tempdir().expect("tempdir");
        let pg = LocalPostgres::new(settings(dir.path()));
        let status = pg
            .run("cat", vec!["/proc/self/status".into()], RunOpts::default())
            .await
            .expect("cat status");
        assert_eq!(cap_amb(&status), Some(0), "{status}");
        let environ = pg
            .run("cat", vec!["/proc/self/environ".into()], RunOpts::default())
            .await
            .expect("cat environ");
        let vars: Vec<&str> = environ.split('\0').filter(|v| !v.is_empty()).collect();
        assert!(
            vars.iter()
                .all(|v| !v.starts_with("PGBATON_") && !v.starts_with("PATRONI_")),
            "{vars:?}"
        );
        assert!(!environ.contains("hunter2"), "{vars:?}");
        assert!(vars.iter().any(|v| v.starts_with("PATH=")), "{vars:?}");
    }

    fn cap_amb(status: &str) -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix("CapAmb:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
    }

    #[test]
    fn files_are_written_through_a_new_file_never_through_a_planted_symlink() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pg = LocalPostgres::new(settings(dir.path()));
        let pgpass = dir.path().join("pgpass");
        let victim = dir.path().join("victim");
        fs::write(&victim, "precious\n").expect("victim");
        std::os::unix::fs::symlink(&victim, &pgpass).expect("plant symlink");
        // Where a predictable temporary file would go.
        std::os::unix::fs::symlink(&victim, dir.path().join(".pgpass.pgbaton-tmp"))
            .expect("plant symlink");

        pg.write_pgpass().expect("write pgpass");
        let meta = fs::symlink_metadata(&pgpass).expect("pgpass");
        assert!(meta.file_type().is_file(), "the symlink was replaced");
        assert_eq!(meta.mode() & 0o7777, 0o600);
        assert_eq!(
            fs::read_to_string(&pgpass).expect("read"),
            "*:*:*:postgres:su secret\n"
        );
        assert_eq!(fs::read_to_string(&victim).expect("victim"), "precious\n");

        // A symlink with the very contents is still replaced (it could change later).
        fs::remove_file(&pgpass).expect("remove");
        fs::write(&victim, "*:*:*:postgres:su secret\n").expect("victim");
        std::os::unix::fs::symlink(&victim, &pgpass).expect("plant symlink");
        assert!(
            pg.write_file(&pgpass, "*:*:*:postgres:su secret\n", 0o600)
                .expect("write")
        );
        assert!(fs::symlink_metadata(&pgpass).expect("pgpass").is_file());
        // Same contents but a looser mode: rewritten; then left alone.
        fs::set_permissions(&pgpass, fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(
            pg.write_file(&pgpass, "*:*:*:postgres:su secret\n", 0o600)
                .expect("write")
        );
        assert!(
            !pg.write_file(&pgpass, "*:*:*:postgres:su secret\n", 0o600)
                .expect("write")
        );
        let left: Vec<_> = fs::read_dir(dir.path())
            .expect("read dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".pgbaton-tmp") && n != ".pgpass.pgbaton-tmp")
            .collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
    }

    #[test]
    fn temporary_files_never_reuse_what_is_at_their_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("f");
        let (a, _fa) = create_temp_beside(&target, 0o600).expect("first");
        let (b, _fb) = create_temp_beside(&target, 0o600).expect("second");
        assert_ne!(a, b);
        assert_eq!(a.parent(), Some(dir.path()));
        assert!(
            a.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".f."))
        );
    }

    #[test]
    fn slot_record_lives_beside_the_data_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pg = LocalPostgres::new(settings(dir.path()));
        assert_eq!(pg.slot_record_path(), dir.path().join("data.pgbaton-slots"));
        assert_eq!(pg.read_slot_record().expect("no record"), BTreeSet::new());
        let names: BTreeSet<String> = ["n2".to_owned(), "n3".to_owned()].into();
        pg.write_slot_record(&names).expect("write");
        assert_eq!(pg.read_slot_record().expect("read"), names);
        let text = fs::read_to_string(pg.slot_record_path()).expect("text");
        assert!(text.starts_with("# "), "{text}");
        fs::write(pg.slot_record_path(), "n2\nNot A Slot\n\n  n4  \n").expect("edit");
        assert_eq!(
            pg.read_slot_record().expect("read"),
            ["n2".to_owned(), "n4".to_owned()].into()
        );
        // A planted symlink cannot make another tool's slots ours.
        let planted = dir.path().join("planted");
        fs::write(&planted, "barman\n").expect("planted");
        fs::remove_file(pg.slot_record_path()).expect("remove");
        std::os::unix::fs::symlink(&planted, pg.slot_record_path()).expect("symlink");
        assert!(pg.read_slot_record().is_err());
    }

    #[test]
    fn standby_minimums_come_from_pg_controldata() {
        let output = "pg_control version number:            1300\n\
                      max_connections setting:              200\n\
                      max_worker_processes setting:         8\n\
                      max_wal_senders setting:              garbage\n\
                      max_prepared_xacts setting:           0\n\
                      max_locks_per_xact setting:           64\n";
        let floor = super::standby_minimums(output);
        assert_eq!(
            floor.into_iter().collect::<Vec<_>>(),
            [
                ("max_connections", 200),
                ("max_locks_per_transaction", 64),
                ("max_prepared_transactions", 0),
                ("max_worker_processes", 8),
            ]
        );
    }

    #[test]
    fn standby_settings_are_raised_to_the_minimums_only() {
        let mut parameters: BTreeMap<String, String> = [
            ("Max_Connections", "100"),
            ("max_worker_processes", "16"),
            ("max_locks_per_transaction", "many"),
            ("work_mem", "4MB"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let floor = BTreeMap::from([
            ("max_connections", 200),
            ("max_worker_processes", 8),
            ("max_locks_per_transaction", 64),
            ("max_prepared_transactions", 5),
        ]);
        let raised = super::raise_to_floor(&mut parameters, &floor);
        let shown: Vec<_> = raised
            .iter()
            .map(|r| (r.name.as_str(), r.configured.as_str(), r.written))
            .collect();
        assert_eq!(
            shown,
            [
                ("max_connections", "100", 200),
                ("max_locks_per_transaction", "many", 64)
            ]
        );
        let after: Vec<_> = parameters
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            after,
            [
                ("max_connections", "200"),
                ("max_locks_per_transaction", "64"),
                ("max_prepared_transactions", "5"),
                ("max_worker_processes", "16"),
                ("work_mem", "4MB"),
            ]
        );
    }

    #[test]
    fn slot_names() {
        assert!(is_valid_slot_name("pg_2_dc1"));
        assert!(!is_valid_slot_name("pg-2"));
        assert!(!is_valid_slot_name(""));
        assert!(!is_valid_slot_name(&"a".repeat(64)));
    }

    #[test]
    fn tails_keep_the_last_lines() {
        let text: String = (1..=30).map(|i| format!("line {i}\n\n")).collect();
        let t = tail(&text);
        assert!(t.starts_with("line 11\n"), "{t}");
        assert!(t.ends_with("line 30"), "{t}");
    }
}
