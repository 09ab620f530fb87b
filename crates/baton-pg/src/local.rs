//! `LocalPostgres`: the PostgreSQL instance on this host, driven through its binaries and SQL.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use baton_core::{
    DataDir, HistoryLine, Lsn, PgProcess, PgSql, PgState, ReplicationRow, StartRole, StopMode,
    Timeline, Upstream,
};
use tokio::time::{Instant, sleep, timeout};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls, Row, Statement};
use tracing::{debug, info, warn};

use crate::{PgError, PgSettings, Postgres, controldata, history, procs, render};

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

/// `connect_timeout` for pg_basebackup and pg_rewind connections.
const CONNECT_TIMEOUT_SECS: u32 = 10;
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
}

/// A connection whose driver task is aborted when the connection is dropped, so a hung server
/// never keeps a task alive.
struct Conn {
    client: Client,
    task: tokio::task::JoinHandle<()>,
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

#[derive(Default)]
struct Managed {
    synchronous_standby_names: Option<String>,
    role: Option<StartRole>,
}

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
       current_setting('synchronous_standby_names')
  FROM (SELECT pg_catalog.pg_is_in_recovery() AS rec) r
  LEFT JOIN pg_catalog.pg_stat_wal_receiver w ON true";

const REPLICATION_SQL: &str = "\
SELECT pid, usename::text, application_name, client_addr::text, state, sync_state, sync_priority,
       write_lsn::text, flush_lsn::text, replay_lsn::text
  FROM pg_catalog.pg_stat_replication
 ORDER BY application_name, pid";

const SLOTS_SQL: &str = "\
SELECT slot_name::text FROM pg_catalog.pg_replication_slots WHERE slot_type = 'physical' AND NOT temporary ORDER BY 1";

impl LocalPostgres {
    /// Relative `data_dir` / `pgpass` paths are made absolute against the current directory,
    /// since the binaries run with `/` as their working directory.
    pub fn new(mut settings: PgSettings) -> LocalPostgres {
        for path in [&mut settings.data_dir, &mut settings.pgpass] {
            if let Ok(absolute) = std::path::absolute(&*path) {
                *path = absolute;
            }
        }
        LocalPostgres {
            settings,
            observer: tokio::sync::Mutex::new(None),
            managed: std::sync::Mutex::new(Managed::default()),
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
        let mut cmd = tokio::process::Command::new(&path);
        cmd.args(&args)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        for var in PG_ENV {
            cmd.env_remove(var);
        }
        if opts.c_locale {
            cmd.env("LC_ALL", "C").env("LANG", "C");
        }
        for (name, value) in &opts.env {
            cmd.env(name, value);
        }
        if let Some((uid, gid)) = self.settings.run_as {
            cmd.uid(uid).gid(gid);
        }
        debug!(%command, "running");
        let child = cmd.spawn().map_err(|source| PgError::Io {
            context: format!("spawn {}", path.display()),
            source,
        })?;
        let mut guard = GroupGuard(child.id());
        let output = match opts.timeout {
            Some(limit) => match timeout(limit, child.wait_with_output()).await {
                Ok(result) => result,
                Err(_) => {
                    return Err(PgError::Timeout {
                        what: command,
                        after: limit,
                    });
                }
            },
            None => child.wait_with_output().await,
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

    /// Write `contents` to `path` atomically (temporary file + rename) with `mode`, owned by the
    /// `run_as` user. `Ok(false)` when the file already had exactly these contents.
    fn write_file(&self, path: &Path, contents: &str, mode: u32) -> Result<bool, PgError> {
        if fs::read(path).ok().as_deref() == Some(contents.as_bytes()) {
            return Ok(false);
        }
        let io = |context: String| move |source| PgError::Io { context, source };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.pgbaton-tmp"));
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io(format!("create {}", tmp.display())))?;
        file.write_all(contents.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io(format!("write {}", tmp.display())))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
            .map_err(io(format!("chmod {}", tmp.display())))?;
        self.chown(&tmp)?;
        fs::rename(&tmp, path).map_err(io(format!(
            "rename {} to {}",
            tmp.display(),
            path.display()
        )))?;
        Ok(true)
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
            &render::pgpass(&self.settings),
            0o600,
        )
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
        self.ensure_base_conf()?;
        // ALTER SYSTEM settings would override our recovery settings.
        let auto_conf = self.data_file("postgresql.auto.conf");
        if let Ok(text) = fs::read_to_string(&auto_conf)
            && let Some(clean) = render::sanitize_auto_conf(&text)
        {
            warn!("removing recovery settings from {}", auto_conf.display());
            self.write_file(&auto_conf, &clean, 0o600)?;
        }
        let conf = {
            let mut managed = self.managed.lock().unwrap_or_else(|p| p.into_inner());
            managed.role = Some(role.clone());
            match &managed.synchronous_standby_names {
                Some(value) => {
                    let mut settings = self.settings.clone();
                    settings
                        .parameters
                        .insert("synchronous_standby_names".into(), value.clone());
                    render::postgresql_conf(&settings, role)
                }
                None => render::postgresql_conf(&self.settings, role),
            }
        };
        let mut changed = self.write_file(&self.data_file("postgresql.conf"), &conf, 0o600)?;
        self.write_file(
            &self.data_file("pg_hba.conf"),
            &render::pg_hba_conf(&self.settings),
            0o600,
        )?;
        self.write_pgpass()?;
        let standby_signal = self.data_file("standby.signal");
        self.remove_file(&self.data_file("recovery.signal"))?;
        if matches!(role, StartRole::Standby { .. }) {
            changed |= self.write_file(&standby_signal, "", 0o600)?;
        } else if standby_signal.exists() {
            self.remove_file(&standby_signal)?;
            changed = true;
        }
        Ok(changed)
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

    fn local_config(&self, statement_timeout: Option<Duration>) -> tokio_postgres::Config {
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
        if s.local_host.is_empty() {
            config.host_path(render::socket_dir(s));
        } else if s.local_host.starts_with('/') {
            config.host_path(&s.local_host);
        } else {
            config.host(&s.local_host);
        }
        if let Some(limit) = statement_timeout {
            config.options(format!("-c statement_timeout={}", limit.as_millis()));
        }
        config
    }

    async fn connect(config: &tokio_postgres::Config, what: &str) -> Result<Conn, PgError> {
        let (client, connection) = config
            .connect(NoTls)
            .await
            .map_err(|e| sql_error(what, &e))?;
        let task = tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!("connection closed: {e}");
            }
        });
        Ok(Conn { client, task })
    }

    /// A fresh superuser connection for one operation (statement timeout off).
    async fn admin(&self, what: &str) -> Result<Conn, PgError> {
        let config = self.local_config(None);
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
            &self.local_config(Some(self.settings.sql_timeout)),
            "observe",
        )
        .await?;
        let prepare = |sql| conn.client.prepare(sql);
        let (status, replication, slots) = tokio::try_join!(
            prepare(STATUS_SQL),
            prepare(REPLICATION_SQL),
            prepare(SLOTS_SQL)
        )
        .map_err(|e| sql_error("prepare observation queries", &e))?;
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
        .map_err(|e| sql_error("pg_is_in_recovery()", &e))?;
        row.try_get(0)
            .map_err(|e| sql_error("pg_is_in_recovery()", &e))
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
        let s = &self.settings;
        let creds = s.rewind.as_ref().unwrap_or(&s.superuser);
        let mut config = tokio_postgres::Config::new();
        config
            .user(&creds.username)
            .dbname("postgres")
            .application_name(&s.name)
            .host(&upstream.host)
            .port(upstream.port)
            .connect_timeout(Duration::from_secs(CONNECT_TIMEOUT_SECS.into()));
        if let Some(password) = &creds.password {
            config.password(password);
        }
        let work = async {
            let conn = Self::connect(&config, &format!("connect to {upstream}")).await?;
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
                .map_err(|e| sql_error(&what, &e))?;
            let in_recovery: bool = row.try_get(0).map_err(|e| sql_error(&what, &e))?;
            if in_recovery {
                return Err(PgError::Other(format!(
                    "cannot rewind from {upstream}: it is in recovery"
                )));
            }
            let checkpoint_tli: Option<i64> = row.try_get(1).map_err(|e| sql_error(&what, &e))?;
            let walfile: Option<String> = row.try_get(2).map_err(|e| sql_error(&what, &e))?;
            let current = walfile.as_deref().and_then(walfile_timeline);
            if current.is_some() && current.map(|t| i64::from(t.0)) != checkpoint_tli {
                info!(
                    "running CHECKPOINT on {upstream} (its last checkpoint predates its promotion)"
                );
                conn.client
                    .batch_execute("CHECKPOINT")
                    .await
                    .map_err(|e| sql_error(&format!("CHECKPOINT on {upstream}"), &e))?;
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
        Ok(())
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

    async fn observe(&self) -> PgState {
        let pid = procs::postmaster(self.data_dir());
        let data_dir = async {
            match data_dir_is_empty(self.data_dir()) {
                Ok(true) => return DataDir::Empty,
                Ok(false) => {}
                Err(e) => {
                    return DataDir::Unusable(format!("read {}: {e}", self.data_dir().display()));
                }
            }
            match self.controldata().await {
                Ok(control) => DataDir::Initialized(control),
                Err(e) => DataDir::Unusable(e.to_string()),
            }
        };
        let sql = async {
            if pid.is_some() {
                self.observe_sql().await
            } else {
                self.drop_observer().await;
                None
            }
        };
        let (data_dir, sql) = tokio::join!(data_dir, sql);
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
                    .map_err(|e| sql_error("SELECT 1", &e))?;
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
        self.refuse_if_running("clone")?;
        let s = &self.settings;
        let port = upstream.port.to_string();
        let connect_timeout = CONNECT_TIMEOUT_SECS.to_string();
        let dsn = render::conninfo(&[
            ("host", &upstream.host),
            ("port", &port),
            ("user", &s.replication.username),
            // Not the member's name: the clone's WAL stream must not be taken for the member's
            // walreceiver (the leader would pick it as a synchronous standby mid-clone).
            ("application_name", "pgbaton_basebackup"),
            ("connect_timeout", &connect_timeout),
        ]);
        let mut last_error = None;
        for attempt in 1..=2 {
            if attempt > 1 {
                sleep(Duration::from_secs(2)).await;
            }
            self.wipe()?;
            self.ensure_data_dir()?;
            self.write_pgpass()?;
            info!("cloning from {upstream} (attempt {attempt})");
            let args: Vec<OsString> = vec![
                self.data_dir_arg(),
                "--wal-method=stream".into(),
                "--checkpoint=fast".into(),
                format!("--dbname={dsn}").into(),
            ];
            let opts = RunOpts {
                env: vec![self.pgpass_env()],
                c_locale: true,
                timeout: None,
            };
            match self.run("pg_basebackup", args, opts).await {
                Ok(_) => {
                    last_error = None;
                    break;
                }
                Err(e) => {
                    warn!("pg_basebackup from {upstream} failed: {e}");
                    last_error = Some(e);
                }
            }
        }
        if let Some(e) = last_error {
            return Err(e);
        }
        self.ensure_data_dir()?;
        // Copied from the source: its startup log and its own postmaster state are not ours.
        self.remove_file(&self.data_file("postmaster.log"))?;
        Ok(())
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
        let dsn = render::conninfo(&[
            ("host", &upstream.host),
            ("port", &port),
            ("user", &creds.username),
            ("dbname", "postgres"),
            ("target_session_attrs", "read-write"),
            ("connect_timeout", &connect_timeout),
        ]);
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
            },
        )
        .await?;
        Ok(())
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
                    .map_err(|e| sql_error(what, &e))
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
                .map_err(|e| sql_error("server_version_num", &e))?;
            if let Some(password) = &s.superuser.password {
                let sql = format!(
                    "ALTER ROLE {} WITH SUPERUSER LOGIN PASSWORD {}",
                    render::quote_ident(&s.superuser.username),
                    render::quote_literal(password)
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
        if let Some(bad) = slots.iter().find(|s| !is_valid_slot_name(s)) {
            return Err(PgError::Other(format!(
                "invalid replication slot name {bad:?}"
            )));
        }
        let work = async {
            let conn = self.admin("ensure slots").await?;
            let client = &conn.client;
            let rows = client
                .query(
                    "SELECT slot_name::text, active FROM pg_catalog.pg_replication_slots WHERE slot_type = 'physical' AND NOT temporary",
                    &[],
                )
                .await
                .map_err(|e| sql_error("list replication slots", &e))?;
            let mut existing = BTreeSet::new();
            for row in &rows {
                let name: String = row
                    .try_get(0)
                    .map_err(|e| sql_error("list replication slots", &e))?;
                let active: bool = row
                    .try_get(1)
                    .map_err(|e| sql_error("list replication slots", &e))?;
                existing.insert(name.clone());
                if !active && !slots.contains(&name) {
                    info!("dropping replication slot {name}");
                    let result = client
                        .execute("SELECT pg_catalog.pg_drop_replication_slot($1)", &[&name])
                        .await;
                    ignore_states(
                        result,
                        &[SqlState::OBJECT_IN_USE, SqlState::UNDEFINED_OBJECT],
                    )
                    .map_err(|e| sql_error(&format!("drop replication slot {name}"), &e))?;
                }
            }
            for name in slots.iter().filter(|s| !existing.contains(*s)) {
                info!("creating replication slot {name}");
                let result = client
                    .execute(
                        "SELECT pg_catalog.pg_create_physical_replication_slot($1, true)",
                        &[name],
                    )
                    .await;
                ignore_states(result, &[SqlState::DUPLICATE_OBJECT])
                    .map_err(|e| sql_error(&format!("create replication slot {name}"), &e))?;
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
    .map_err(|e| sql_error("observe", &e))?;
    let mut sql = parse_status(&status)?;
    sql.replication = replication
        .iter()
        .map(parse_replication_row)
        .collect::<Result<_, _>>()?;
    sql.slots = slots
        .iter()
        .map(|row| {
            row.try_get::<_, String>(0)
                .map_err(|e| sql_error("slot row", &e))
        })
        .collect::<Result<_, _>>()?;
    Ok(sql)
}

fn parse_status(row: &Row) -> Result<PgSql, PgError> {
    let get_err = |e: tokio_postgres::Error| sql_error("status row", &e);
    let version: i32 = row.try_get(0).map_err(get_err)?;
    let start_time: Option<String> = row.try_get(1).map_err(get_err)?;
    let in_recovery: bool = row.try_get(2).map_err(get_err)?;
    let lsn = |i: usize| -> Result<Option<Lsn>, PgError> {
        let text: Option<String> = row.try_get(i).map_err(get_err)?;
        text.map(|t| {
            t.parse::<Lsn>()
                .map_err(|e| PgError::Sql(format!("status row: {e}")))
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

    let to_timeline = |t: i64| u32::try_from(t).ok().filter(|t| *t > 0).map(Timeline);
    let timeline = if in_recovery {
        received_tli.and_then(to_timeline)
    } else {
        walfile.as_deref().and_then(walfile_timeline)
    }
    .or_else(|| checkpoint_tli.and_then(to_timeline))
    .ok_or_else(|| PgError::Sql("status row: no timeline".to_owned()))?;

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
        pending_restart,
        synchronous_standby_names,
        newest_history: None,
    })
}

fn parse_replication_row(row: &Row) -> Result<ReplicationRow, PgError> {
    let get_err = |e: tokio_postgres::Error| sql_error("pg_stat_replication row", &e);
    let text = |i: usize| -> Result<Option<String>, PgError> { row.try_get(i).map_err(get_err) };
    let lsn = |i: usize| -> Result<Option<Lsn>, PgError> {
        text(i)?
            .map(|t| {
                t.parse::<Lsn>()
                    .map_err(|e| PgError::Sql(format!("pg_stat_replication: {e}")))
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
fn newest_history_file(data_dir: &Path) -> Option<Timeline> {
    std::fs::read_dir(data_dir.join("pg_wal"))
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| history_file_timeline(&e.file_name().to_string_lossy()))
        .max()
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
        .map_err(|e| sql_error(&format!("look up role {name}"), &e))?
        .is_some();
    let verb = if exists { "ALTER" } else { "CREATE" };
    let mut sql = format!(
        "{verb} ROLE {} WITH {attributes}",
        render::quote_ident(name)
    );
    if let Some(password) = password {
        sql.push_str(&format!(" PASSWORD {}", render::quote_literal(password)));
    }
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| sql_error(&format!("{} role {name}", verb.to_lowercase()), &e))
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
/// only "db error").
fn sql_error(context: &str, e: &tokio_postgres::Error) -> PgError {
    let detail = match e.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        }
    };
    PgError::Sql(format!("{context}: {detail}"))
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
