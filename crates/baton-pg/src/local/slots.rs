//! Permanent replication slots on this instance (`baton_core::slots`): the observation of
//! every slot, the record of the logical slots pgbaton made (`<data_dir>.pgbaton-logical-slots`,
//! beside the physical record), their creation, advance and drop, and the copy of logical
//! slots from the leader onto a replica (PostgreSQL 15 cannot create them on a standby:
//! Patroni's method, the slot's state file read on the leader with `pg_read_binary_file`
//! and written into `pg_replslot` while PostgreSQL is stopped).

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_core::slot_readiness::PrimarySlots;
use baton_core::slots::{SlotInfo, SlotKind, SlotWork};
use baton_core::{Lsn, PgSql, StopMode, Upstream};
use tokio::time::timeout;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tracing::{info, warn};

use super::{CONNECT_TIMEOUT_SECS, ConnTarget, LocalPostgres, sql_error};
use crate::{PgError, Postgres};

/// Suffix of the record of the logical slots pgbaton made or copied.
const LOGICAL_RECORD_SUFFIX: &str = ".pgbaton-logical-slots";

/// Every non-temporary slot: name, type, database, plugin, position (logical:
/// `confirmed_flush_lsn`, physical: `restart_lsn`), `catalog_xmin`.
pub(super) const ALL_SLOTS_SQL: &str = "\
SELECT slot_name::text, slot_type::text, database::text, plugin::text,
       (CASE WHEN slot_type = 'logical' THEN confirmed_flush_lsn ELSE restart_lsn END)::text,
       catalog_xmin::text
  FROM pg_catalog.pg_replication_slots WHERE NOT temporary ORDER BY 1";

pub(super) fn parse_slot_rows(rows: &[Row]) -> Result<Vec<SlotInfo>, PgError> {
    let get = |e| sql_error("slot row", e);
    rows.iter()
        .map(|row| {
            let name: String = row.try_get(0).map_err(get)?;
            let kind: String = row.try_get(1).map_err(get)?;
            let database: Option<String> = row.try_get(2).map_err(get)?;
            let plugin: Option<String> = row.try_get(3).map_err(get)?;
            let position: Option<String> = row.try_get(4).map_err(get)?;
            let catalog_xmin: Option<String> = row.try_get(5).map_err(get)?;
            let kind = if kind == "logical" {
                SlotKind::Logical {
                    database: database.unwrap_or_default(),
                    plugin: plugin.unwrap_or_default(),
                }
            } else {
                SlotKind::Physical
            };
            Ok(SlotInfo {
                name,
                kind,
                position: position.and_then(|p| p.parse::<Lsn>().ok()),
                ours: false,
                catalog_xmin: catalog_xmin.and_then(|x| x.parse().ok()),
            })
        })
        .collect()
}

impl LocalPostgres {
    pub(super) fn logical_record_path(&self) -> PathBuf {
        let mut path = self.data_dir().as_os_str().to_owned();
        path.push(LOGICAL_RECORD_SUFFIX);
        PathBuf::from(path)
    }

    fn read_logical_record(&self) -> Result<BTreeSet<String>, PgError> {
        self.read_record_at(&self.logical_record_path())
    }

    fn write_logical_record(&self, names: &BTreeSet<String>) -> Result<(), PgError> {
        let mut text = format!(
            "# Logical replication slots pgbaton manages in {} (the `slots` section), one a line.\n\
             # Written by pgbaton: a slot not listed here is never dropped by it.\n",
            self.data_dir().display()
        );
        for name in names {
            text.push_str(name);
            text.push('\n');
        }
        self.write_file(&self.logical_record_path(), &text, 0o600)
            .map(drop)
    }

    /// Marks the slots in `sql.replication_slots` pgbaton owns: the physical ones in
    /// `physical` (its record), the logical ones in the logical record.
    pub(super) fn mark_own_slots(&self, sql: &mut PgSql, physical: &BTreeSet<String>) {
        let logical = self.read_logical_record().unwrap_or_else(|e| {
            tracing::debug!("observe: {e}");
            BTreeSet::new()
        });
        for slot in &mut sql.replication_slots {
            slot.ours = match slot.kind {
                SlotKind::Physical => physical.contains(&slot.name),
                SlotKind::Logical { .. } => logical.contains(&slot.name),
            };
        }
    }

    /// A superuser connection to database `db` on this instance.
    async fn admin_in(&self, db: &str, what: &str) -> Result<super::Conn, PgError> {
        let mut target = self.local_config(None)?;
        target.config.dbname(db);
        let limit = self.settings.sql_timeout.max(Duration::from_secs(1));
        match timeout(limit, Self::connect(&target, what)).await {
            Ok(result) => result,
            Err(_) => Err(PgError::Timeout {
                what: format!("{what}: connect"),
                after: limit,
            }),
        }
    }

    pub(super) async fn sync_permanent_slots(&self, work: &SlotWork) -> Result<(), PgError> {
        let work_fut = async {
            let mut record = self.read_logical_record()?;
            // Recorded before anything is created: a crash in between never leaves a slot we
            // made unrecorded.
            let before = record.clone();
            record.extend(work.create_logical.iter().map(|s| s.name.clone()));
            record.extend(work.adopt_logical.iter().cloned());
            if record != before {
                self.write_logical_record(&record)?;
            }
            for slot in &work.create_logical {
                let SlotKind::Logical { database, plugin } = &slot.kind else {
                    continue;
                };
                info!(
                    "creating logical replication slot {} (database {database}, plugin {plugin})",
                    slot.name
                );
                let what = format!("create logical replication slot {}", slot.name);
                let conn = self.admin_in(database, &what).await?;
                conn.client
                    .execute(
                        "SELECT pg_catalog.pg_create_logical_replication_slot($1, $2)
                          WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots
                                             WHERE slot_name = $1)",
                        &[&slot.name, plugin],
                    )
                    .await
                    .map_err(|e| sql_error(&what, e))?;
            }
            for (name, lsn) in &work.advance {
                let may_drop = record.contains(name) && !work.keep.contains(name);
                self.advance_slot(name, *lsn, may_drop).await?;
            }
            for name in &work.drop_logical {
                if !record.contains(name) || work.keep.contains(name) {
                    continue;
                }
                let conn = self.admin("drop logical slot").await?;
                let what = format!("drop logical replication slot {name}");
                let result = conn
                    .client
                    .execute(
                        "SELECT pg_catalog.pg_drop_replication_slot(slot_name)
                           FROM pg_catalog.pg_replication_slots
                          WHERE slot_name = $1 AND slot_type = 'logical' AND NOT active",
                        &[name],
                    )
                    .await;
                match result {
                    Ok(0) => warn!("logical replication slot {name} is in use: dropping it later"),
                    Ok(_) => {
                        info!("dropped logical replication slot {name}");
                        record.remove(name);
                    }
                    Err(e) if e.code() == Some(&SqlState::UNDEFINED_OBJECT) => {
                        record.remove(name);
                    }
                    Err(e) => return Err(sql_error(&what, e)),
                }
            }
            // Forget the logical slots that are gone.
            let conn = self.admin("list logical slots").await?;
            let rows = conn
                .client
                .query(
                    "SELECT slot_name::text FROM pg_catalog.pg_replication_slots
                      WHERE slot_type = 'logical' AND NOT temporary",
                    &[],
                )
                .await
                .map_err(|e| sql_error("list logical slots", e))?;
            let existing: BTreeSet<String> =
                rows.iter().filter_map(|r| r.try_get(0).ok()).collect();
            let kept: BTreeSet<String> = record
                .iter()
                .filter(|n| {
                    existing.contains(*n) || work.create_logical.iter().any(|s| &s.name == *n)
                })
                .cloned()
                .collect();
            if kept != before {
                self.write_logical_record(&kept)?;
            }
            Ok(())
        };
        let limit = self.settings.pg_ctl_timeout;
        timeout(limit, work_fut).await.unwrap_or_else(|_| {
            Err(PgError::Timeout {
                what: format!("sync replication slots ({work})"),
                after: limit,
            })
        })
    }

    /// `pg_replication_slot_advance` in the slot's database. A logical copy whose WAL is gone
    /// or that PostgreSQL invalidated (SQLSTATE 58P01, 55000) is dropped when `may_drop` (ours,
    /// and not matching `ignore_slots`), so that the next cycle copies it again from the
    /// leader (Patroni does the same).
    async fn advance_slot(&self, name: &str, lsn: Lsn, may_drop: bool) -> Result<(), PgError> {
        let conn = self.admin("advance slot").await?;
        let row = conn
            .client
            .query_opt(
                "SELECT database::text, slot_type::text FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
                &[&name],
            )
            .await
            .map_err(|e| sql_error("look up slot", e))?;
        let Some(row) = row else {
            return Ok(());
        };
        let database: Option<String> = row.try_get(0).map_err(|e| sql_error("slot row", e))?;
        let logical = row
            .try_get::<_, String>(1)
            .map_err(|e| sql_error("slot row", e))?
            == "logical";
        let conn = match &database {
            Some(db) if logical => self.admin_in(db, "advance slot").await?,
            _ => conn,
        };
        let result = conn
            .client
            .execute(
                "SELECT pg_catalog.pg_replication_slot_advance($1, $2::text::pg_lsn)",
                &[&name, &lsn.to_string()],
            )
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e)
                if logical
                    && may_drop
                    && e.code().is_some_and(|c| {
                        c == &SqlState::UNDEFINED_FILE
                            || c == &SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE
                    }) =>
            {
                warn!(
                    "{}; dropping the copy of logical slot {name} to copy it again",
                    sql_error(&format!("advance replication slot {name}"), e)
                );
                let _ = conn
                    .client
                    .execute(
                        "SELECT pg_catalog.pg_drop_replication_slot(slot_name)
                           FROM pg_catalog.pg_replication_slots WHERE slot_name = $1 AND NOT active",
                        &[&name],
                    )
                    .await;
                Ok(())
            }
            Err(e) => Err(sql_error(
                &format!("advance replication slot {name} to {lsn}"),
                e,
            )),
        }
    }

    /// A connection to `upstream` as the rewind user (it may run `pg_read_binary_file`), or
    /// the superuser.
    pub(super) fn upstream_target(&self, upstream: &Upstream) -> Result<ConnTarget, PgError> {
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
        let role = if s.rewind.is_some() {
            "rewind"
        } else {
            "superuser"
        };
        ConnTarget::new(config, creds, role, true)
    }

    /// The `catalog_xmin` of slot `physical` and of the logical slots `logical` on the leader
    /// (Patroni's readiness query: nothing while it is in recovery).
    pub(super) async fn primary_slots_of(
        &self,
        upstream: &Upstream,
        physical: &str,
        logical: &[String],
    ) -> Result<PrimarySlots, PgError> {
        let target = self.upstream_target(upstream)?;
        let what = format!("check replication slots on {upstream}");
        let mut names: Vec<String> = logical.to_vec();
        names.push(physical.to_owned());
        let read = async {
            let conn = Self::connect(&target, &format!("connect to {upstream}")).await?;
            conn.client
                .query(
                    "SELECT slot_name::text, catalog_xmin::text
                       FROM pg_catalog.pg_get_replication_slots()
                      WHERE NOT pg_catalog.pg_is_in_recovery()
                        AND slot_name::text = ANY($1::text[])",
                    &[&names],
                )
                .await
                .map_err(|e| sql_error(&what, e))
        };
        let limit = Duration::from_secs(CONNECT_TIMEOUT_SECS.into()) + self.settings.sql_timeout;
        let rows = timeout(limit, read).await.unwrap_or_else(|_| {
            Err(PgError::Timeout {
                what: what.clone(),
                after: limit,
            })
        })?;
        let mut found = PrimarySlots {
            physical: physical.to_owned(),
            ..PrimarySlots::default()
        };
        for row in &rows {
            let name: String = row.try_get(0).map_err(|e| sql_error(&what, e))?;
            let xmin: Option<String> = row.try_get(1).map_err(|e| sql_error(&what, e))?;
            let xmin = xmin.and_then(|x| x.parse().ok());
            if name == physical {
                found.physical_xmin = Some(xmin);
            } else {
                found.logical.insert(name, xmin);
            }
        }
        Ok(found)
    }

    pub(super) async fn copy_logical_slots_from(
        &self,
        upstream: &Upstream,
        names: &[String],
    ) -> Result<(), PgError> {
        if let Some(bad) = names.iter().find(|n| !super::is_valid_slot_name(n)) {
            return Err(PgError::Other(format!(
                "invalid replication slot name {bad:?}"
            )));
        }
        // A logical slot on a server without wal_level logical stops it from starting.
        let local = self.admin("check wal_level").await?;
        let wal_level: String = local
            .client
            .query_one("SELECT pg_catalog.current_setting('wal_level')", &[])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|e| sql_error("check wal_level", e))?;
        if wal_level != "logical" {
            return Err(PgError::Other(format!(
                "cannot copy logical slots: wal_level is {wal_level} here, not logical"
            )));
        }
        drop(local);
        let target = self.upstream_target(upstream)?;
        let what = format!("read logical slots from {upstream}");
        let read = async {
            let conn = Self::connect(&target, &format!("connect to {upstream}")).await?;
            conn.client
                .query(
                    "SELECT slot_name::text,
                            pg_catalog.pg_read_binary_file('pg_replslot/' || slot_name || '/state')
                       FROM pg_catalog.pg_get_replication_slots()
                      WHERE NOT pg_catalog.pg_is_in_recovery() AND slot_type = 'logical'
                        AND NOT temporary AND slot_name::text = ANY($1::text[])",
                    &[&names],
                )
                .await
                .map_err(|e| sql_error(&what, e))
        };
        let limit = Duration::from_secs(CONNECT_TIMEOUT_SECS.into()) + self.settings.sql_timeout;
        let rows = timeout(limit, read).await.unwrap_or_else(|_| {
            Err(PgError::Timeout {
                what: what.clone(),
                after: limit,
            })
        })?;
        let mut copies = Vec::new();
        for row in &rows {
            let name: String = row.try_get(0).map_err(|e| sql_error(&what, e))?;
            let state: Vec<u8> = row.try_get(1).map_err(|e| sql_error(&what, e))?;
            if super::is_valid_slot_name(&name) && names.contains(&name) {
                copies.push((name, state));
            }
        }
        if copies.is_empty() {
            return Err(PgError::Other(format!(
                "{upstream} has none of the logical slots [{}]",
                names.join(", ")
            )));
        }
        let mut record = self.read_logical_record()?;
        let before = record.clone();
        record.extend(copies.iter().map(|(n, _)| n.clone()));
        if record != before {
            self.write_logical_record(&record)?;
        }
        self.stop(StopMode::Fast).await?;
        let replslot = self.data_dir().join("pg_replslot");
        for (name, state) in &copies {
            self.write_slot_state(&replslot, name, state)?;
            info!("copied logical replication slot {name} from {upstream}");
        }
        fsync_dir(&replslot)?;
        Ok(())
    }

    /// `pg_replslot/<name>/state`, written in `<name>.tmp` and renamed, fsynced, owned by the
    /// `run_as` user (PostgreSQL's own modes: 0700 directory, 0600 file).
    fn write_slot_state(&self, replslot: &Path, name: &str, state: &[u8]) -> Result<(), PgError> {
        let io = |context: String| move |source| PgError::Io { context, source };
        let dir = replslot.join(name);
        let tmp = replslot.join(format!("{name}.tmp"));
        if fs::symlink_metadata(&tmp).is_ok() {
            fs::remove_dir_all(&tmp).map_err(io(format!("remove {}", tmp.display())))?;
        }
        fs::create_dir(&tmp).map_err(io(format!("create {}", tmp.display())))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o700))
            .map_err(io(format!("chmod {}", tmp.display())))?;
        let file_path = tmp.join("state");
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&file_path)
            .map_err(io(format!("create {}", file_path.display())))?;
        if let Some((uid, gid)) = self.settings.run_as {
            std::os::unix::fs::chown(&tmp, Some(uid), Some(gid))
                .map_err(io(format!("chown {}", tmp.display())))?;
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                .map_err(io(format!("chown {}", file_path.display())))?;
        }
        file.write_all(state)
            .and_then(|()| file.sync_all())
            .map_err(io(format!("write {}", file_path.display())))?;
        fsync_dir(&tmp)?;
        if fs::symlink_metadata(&dir).is_ok() {
            fs::remove_dir_all(&dir).map_err(io(format!("remove {}", dir.display())))?;
        }
        fs::rename(&tmp, &dir).map_err(io(format!(
            "rename {} to {}",
            tmp.display(),
            dir.display()
        )))?;
        fsync_dir(&dir)
    }
}

fn fsync_dir(dir: &Path) -> Result<(), PgError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| PgError::Io {
            context: format!("fsync {}", dir.display()),
            source,
        })
}
