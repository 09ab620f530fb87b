//! A custom bootstrap (`bootstrap.method: <name>`, Patroni's `_custom_bootstrap` and the
//! "waiting for end of recovery after bootstrap" that follows it): the operator's command
//! creates the data directory (restores a backup, say), PostgreSQL starts with the method's
//! recovery settings and recovers, and once it runs as a primary the roles get their
//! passwords and the recovery settings go. Any failure is returned; the caller cancels the
//! initialization, stops the server and empties the data directory.

use std::ffi::OsString;
use std::fs;
use std::time::Duration;

use baton_core::{CustomBootstrap, StartRole, custom_bootstrap_args};
use tokio::time::{Instant, sleep, timeout};
use tracing::info;

use super::{
    BootstrapFiles, LocalPostgres, RunOpts, STALL_TIMEOUT, data_dir_is_empty, read_end, sql_error,
    tail,
};
use crate::{PgError, Postgres, procs};

/// How often the recovery is looked at.
const RECOVERY_POLL: Duration = Duration::from_millis(500);

/// What one look at a recovering server found.
struct RecoveryState {
    in_recovery: bool,
    paused: bool,
    replayed: String,
}

impl LocalPostgres {
    pub(super) async fn run_custom_bootstrap(&self, m: &CustomBootstrap) -> Result<(), PgError> {
        let dir = self.data_dir();
        if !data_dir_is_empty(dir).unwrap_or(false) {
            return Err(PgError::Other(format!(
                "cannot bootstrap: {} is not empty",
                dir.display()
            )));
        }
        self.ensure_data_dir()?;
        // A new cluster has no slots: a record left from an earlier one names nothing of ours.
        self.remove_file(&self.slot_record_path())?;
        self.remove_file(&self.logical_record_path())?;
        self.write_pgpass()?;
        let data_dir = dir.to_string_lossy().into_owned();
        let args = custom_bootstrap_args(m, &self.settings.scope, &data_dir);
        let name = format!("bootstrap.{}", m.name);
        info!(
            "running custom bootstrap script: {}",
            m.argv
                .iter()
                .chain(&args)
                .cloned()
                .collect::<Vec<_>>()
                .join(" ")
        );
        self.run_operator_command(&name, &m.argv, &args).await?;
        if !self.data_file("PG_VERSION").exists() {
            return Err(PgError::Other(format!(
                "{name}: the command exited 0 but {} holds no PostgreSQL data directory \
                 (no PG_VERSION)",
                dir.display()
            )));
        }
        // Restored from elsewhere: that server's log and a promote trigger are not ours.
        self.after_replica_created()?;
        self.set_bootstrap(Some(BootstrapFiles {
            recovery: m.recovery_conf.clone(),
            keep_existing: m.keep_existing_recovery_conf && m.recovery_conf.is_none(),
        }));
        let recovered = self.recover_to_primary(&name).await;
        let roles = match recovered {
            Ok(()) => self.create_roles().await,
            Err(e) => Err(e),
        };
        // Whatever happened, the files written from now on are a primary's.
        self.set_bootstrap(None);
        roles?;
        // Without the recovery settings and the passwordless access.
        self.write_config(&StartRole::Primary)?;
        self.pg_ctl(&["reload"], self.pg_ctl_bound()).await?;
        info!("{name}: the new cluster runs as a primary; its recovery settings are removed");
        Ok(())
    }

    fn set_bootstrap(&self, files: Option<BootstrapFiles>) {
        self.managed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .bootstrap = files;
    }

    /// Start the restored server and wait until it runs as a primary. No deadline: recovery
    /// takes what the archive needs; it fails when the server stops (a recovery target not
    /// reached, a broken restore_command), when it pauses (`recovery_target_action: pause`
    /// or PostgreSQL's default for a target) or when neither its log nor its replay position
    /// moves for the stall timeout.
    async fn recover_to_primary(&self, name: &str) -> Result<(), PgError> {
        self.kill_leftovers().await?;
        self.write_config(&StartRole::Primary)?;
        self.managed.lock().unwrap_or_else(|p| p.into_inner()).role = Some(StartRole::Primary);
        let log = self.startup_log();
        let log_arg = format!("--log={}", log.display());
        info!("{name}: starting PostgreSQL to recover the restored data directory");
        self.run(
            "pg_ctl",
            vec![
                "start".into(),
                "-W".into(),
                OsString::from(log_arg),
                self.data_dir_arg(),
            ],
            RunOpts {
                c_locale: true,
                timeout: Some(self.pg_ctl_bound()),
                ..RunOpts::default()
            },
        )
        .await?;
        let started = Instant::now();
        let mut seen_running = false;
        let mut marker = None;
        let mut progress_at = Instant::now();
        let mut said_waiting = false;
        loop {
            sleep(RECOVERY_POLL).await;
            if procs::postmaster(self.data_dir()).is_none() {
                if seen_running || started.elapsed() > self.pg_ctl_bound() {
                    let log_tail = read_end(&log, 16 * 1024)
                        .map(|t| tail(&t))
                        .unwrap_or_default();
                    return Err(PgError::Other(format!(
                        "{name}: PostgreSQL stopped during the recovery of the restored data \
                         directory; {}:\n{log_tail}",
                        log.display()
                    )));
                }
                continue;
            }
            seen_running = true;
            let mut replayed = String::new();
            match self.recovery_state().await {
                Ok(state) if !state.in_recovery => {
                    info!("{name}: recovery finished, PostgreSQL runs as a primary");
                    return Ok(());
                }
                Ok(state) if state.paused => {
                    return Err(PgError::Other(format!(
                        "{name}: the recovery paused at {} instead of ending (a recovery \
                         target with recovery_target_action pause, PostgreSQL's default): set \
                         recovery_target_action: promote",
                        state.replayed
                    )));
                }
                Ok(state) => replayed = state.replayed,
                // Not accepting connections before it is consistent.
                Err(_) => {}
            }
            if !said_waiting {
                info!("{name}: waiting for end of recovery after bootstrap");
                said_waiting = true;
            }
            let log_len = fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
            let now = Some((log_len, replayed));
            if now != marker {
                marker = now;
                progress_at = Instant::now();
            } else if progress_at.elapsed() >= STALL_TIMEOUT {
                return Err(PgError::Stalled {
                    what: format!("{name}: the recovery of the restored data directory"),
                    after: STALL_TIMEOUT,
                });
            }
        }
    }

    async fn recovery_state(&self) -> Result<RecoveryState, PgError> {
        let conn = self.admin("check the bootstrap's recovery").await?;
        let limit = self.settings.sql_timeout.max(Duration::from_secs(1));
        let sql = "SELECT pg_catalog.pg_is_in_recovery(), \
                   CASE WHEN pg_catalog.pg_is_in_recovery() \
                   THEN pg_catalog.pg_is_wal_replay_paused() ELSE false END, \
                   COALESCE(pg_catalog.pg_last_wal_replay_lsn()::text, '')";
        let row = timeout(limit, conn.client.query_one(sql, &[]))
            .await
            .map_err(|_| PgError::Timeout {
                what: "check the bootstrap's recovery".into(),
                after: limit,
            })?
            .map_err(|e| sql_error("check the bootstrap's recovery", e))?;
        let get_err = |e| sql_error("check the bootstrap's recovery", e);
        Ok(RecoveryState {
            in_recovery: row.try_get(0).map_err(get_err)?,
            paused: row.try_get(1).map_err(get_err)?,
            replayed: row.try_get(2).map_err(get_err)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn restored(dir: &std::path::Path) -> LocalPostgres {
        let pg = LocalPostgres::new(super::super::tests::settings(dir));
        let data = dir.join("data");
        fs::create_dir_all(&data).expect("data dir");
        fs::write(data.join("PG_VERSION"), "15\n").expect("PG_VERSION");
        // What a backup tool leaves: its signal file and recovery settings.
        fs::write(data.join("standby.signal"), "").expect("signal");
        fs::write(
            data.join("postgresql.auto.conf"),
            "restore_command = 'tool get %f %p'\nrecovery_target_time = '2026-12-01 10:00'\n",
        )
        .expect("auto.conf");
        pg
    }

    fn files(pg: &LocalPostgres) -> (bool, bool, String, String) {
        let data = pg.data_dir();
        (
            data.join("standby.signal").exists(),
            data.join("recovery.signal").exists(),
            fs::read_to_string(data.join("postgresql.auto.conf")).unwrap_or_default(),
            fs::read_to_string(data.join("pg_hba.conf")).unwrap_or_default(),
        )
    }

    /// `keep_existing_recovery_conf`: the command's signal file and recovery settings stay for
    /// the first start; without it they go. Either way the superuser gets in without a
    /// password until the bootstrap ends, and the files of a plain primary follow it.
    #[test]
    fn the_commands_recovery_setup_is_kept_only_when_asked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pg = restored(dir.path());
        pg.set_bootstrap(Some(BootstrapFiles {
            recovery: None,
            keep_existing: true,
        }));
        pg.write_config(&StartRole::Primary).expect("written");
        let (standby, recovery, auto, hba) = files(&pg);
        assert!(standby && !recovery, "the command's standby.signal is kept");
        assert!(auto.contains("recovery_target_time"), "{auto}");
        assert!(hba.contains("local all postgres trust"), "{hba}");

        let dir = tempfile::tempdir().expect("tempdir");
        let pg = restored(dir.path());
        pg.set_bootstrap(Some(BootstrapFiles {
            recovery: Some(vec![("restore_command".into(), "cp /a/%f %p".into())]),
            keep_existing: false,
        }));
        pg.write_config(&StartRole::Primary).expect("written");
        let (standby, recovery, auto, _) = files(&pg);
        assert!(
            !standby && recovery,
            "recovery_conf recovers with recovery.signal"
        );
        assert!(!auto.contains("recovery_target_time"), "{auto}");
        let conf = fs::read_to_string(pg.data_file("postgresql.conf")).expect("conf");
        assert!(
            conf.contains("\nrestore_command = 'cp /a/%f %p'\n"),
            "{conf}"
        );

        // The bootstrap ended: a plain primary's files.
        pg.set_bootstrap(None);
        pg.write_config(&StartRole::Primary).expect("written");
        let (standby, recovery, _, hba) = files(&pg);
        assert!(!standby && !recovery);
        assert!(!hba.contains("trust"), "{hba}");
        let conf = fs::read_to_string(pg.data_file("postgresql.conf")).expect("conf");
        assert!(!conf.contains("restore_command"), "{conf}");

        let dir = tempfile::tempdir().expect("tempdir");
        let pg = restored(dir.path());
        pg.set_bootstrap(Some(BootstrapFiles {
            recovery: None,
            keep_existing: false,
        }));
        pg.write_config(&StartRole::Primary).expect("written");
        let (standby, recovery, auto, _) = files(&pg);
        assert!(
            !standby && !recovery,
            "without keep_existing the signal files go"
        );
        assert!(!auto.contains("recovery_target_time"), "{auto}");
    }
}
