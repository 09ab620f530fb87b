//! A scheduled restart survives an agent restart: it is kept in `<data_dir>.pgbaton-restart`
//! (JSON, written to a temporary file and renamed into place) while it waits.

use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_core::{RestartFilters, RestartRole, ScheduledRestart};
use serde_json::{Value, json};
use tracing::warn;

/// Where a scheduled restart waits on disk.
#[derive(Clone, Debug)]
pub struct RestartFile {
    path: PathBuf,
}

impl RestartFile {
    pub fn beside(data_dir: &Path) -> RestartFile {
        RestartFile {
            path: crate::fence::beside_data_dir(data_dir, ".pgbaton-restart"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schedule kept by an earlier run; an unreadable file is reported and ignored.
    pub fn load(&self) -> Option<ScheduledRestart> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        let restart = decode(&text);
        if restart.is_none() {
            warn!(
                "{}: not a scheduled restart pgbaton wrote; ignoring it",
                self.path.display()
            );
        }
        restart
    }

    /// Keep `restart` (or remove the file for `None`).
    pub fn save(&self, restart: Option<&ScheduledRestart>) {
        let result = match restart {
            None => match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other,
            },
            Some(r) => {
                let tmp = self.path.with_extension("tmp");
                std::fs::write(&tmp, encode(r)).and_then(|()| std::fs::rename(&tmp, &self.path))
            }
        };
        if let Err(e) = result {
            warn!(
                "{}: failed to keep the scheduled restart: {e}",
                self.path.display()
            );
        }
    }
}

fn encode(r: &ScheduledRestart) -> String {
    json!({
        "schedule": r.schedule,
        "at_unix_ms": r.at_unix_ms,
        "role": r.filters.role.map(RestartRole::as_str),
        "postgres_version": r.filters.postgres_version,
        "restart_pending": r.filters.restart_pending,
        "timeout": r.filters.timeout.map(|t| t.as_secs()),
        "postmaster_start_time": r.postmaster_start_time,
    })
    .to_string()
}

fn decode(text: &str) -> Option<ScheduledRestart> {
    let v: Value = serde_json::from_str(text).ok()?;
    let role = match v.get("role") {
        None | Some(Value::Null) => None,
        Some(r) => Some(RestartRole::parse(r.as_str()?)?),
    };
    Some(ScheduledRestart {
        schedule: v.get("schedule")?.as_str()?.to_owned(),
        at_unix_ms: v.get("at_unix_ms")?.as_i64()?,
        filters: RestartFilters {
            role,
            postgres_version: v
                .get("postgres_version")
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok()),
            restart_pending: v
                .get("restart_pending")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            timeout: v
                .get("timeout")
                .and_then(Value::as_u64)
                .map(Duration::from_secs),
        },
        postmaster_start_time: v
            .get("postmaster_start_time")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_is_kept_and_read_back_and_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = RestartFile::beside(&dir.path().join("data"));
        assert_eq!(file.load(), None);
        let restart = ScheduledRestart {
            schedule: "2030-01-01T00:00:00+00:00".into(),
            at_unix_ms: 1_893_456_000_000,
            filters: RestartFilters {
                role: Some(RestartRole::Replica),
                postgres_version: Some(150_009),
                restart_pending: true,
                timeout: Some(Duration::from_secs(90)),
            },
            postmaster_start_time: Some("2026-12-01 10:00:00.000 UTC".into()),
        };
        file.save(Some(&restart));
        assert_eq!(file.load(), Some(restart));
        file.save(None);
        assert_eq!(file.load(), None);
        assert!(!file.path().exists());
        std::fs::write(file.path(), "not json").expect("write");
        assert_eq!(file.load(), None);
    }
}
