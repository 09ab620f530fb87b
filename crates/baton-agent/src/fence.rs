//! The fencer: a task of its own that stops PostgreSQL immediately once the fencing deadline
//! passes while we act as the leader, whatever the HA loop is doing (a long basebackup, a hung
//! DCS call). `/primary` needs no help: the REST API compares the same deadline with the clock
//! on every request, so it turns 503 at the deadline even before PostgreSQL is stopped.
//!
//! The fencer also outlives the agent process in one way: it records the deadline that
//! protects a running primary (a [`FenceRecord`], a small file beside the data directory).
//! An agent that starts and finds PostgreSQL already running as a primary (the previous agent
//! was killed or crashed) does not know when the lease holding the leader key expires — that
//! lease was renewed by the dead process, and the new process cannot even reach etcd when it
//! is partitioned. It keeps that primary only until the recorded deadline (at once, when there
//! is none), unless the HA loop confirms first that the leader key is on the new lease or
//! that PostgreSQL is no longer a primary (simulator finding F2).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use baton_core::{Clock, LeaseState, Mono, StopMode, may_be_primary};
use baton_pg::Postgres;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::clock::until;

/// What the HA loop tells the fencer after every cycle (the rule: `baton_core::fence_signal`).
pub use baton_core::FenceSignal;

/// Where the fencer keeps the deadline until which a primary it guards may stay writable, so
/// that the next incarnation of the agent fences by it.
pub trait FenceRecord: Send + Sync + 'static {
    /// The deadline an earlier incarnation recorded during this boot, if any.
    fn load(&self) -> Option<Mono>;
    /// Record `deadline` (`None`: no primary to protect).
    fn store(&self, deadline: Option<Mono>);
}

/// A [`FenceRecord`] in a file: `<boot id> <deadline in ms of CLOCK_BOOTTIME | ->`. The boot id
/// makes a record from before a reboot worthless (`CLOCK_BOOTTIME` starts over).
pub struct FenceFile {
    path: PathBuf,
    boot_id: String,
    /// The last write error, so a persisting one is logged once.
    last_error: Mutex<Option<String>>,
}

/// The kernel's identifier of the current boot.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

impl FenceFile {
    /// The record of the member whose data directory is `data_dir`: a file beside it (not in
    /// it, so `pg_basebackup` and `pg_rewind` never copy it to another member).
    pub fn beside(data_dir: &Path) -> FenceFile {
        let path = beside_data_dir(data_dir, ".pgbaton-fence");
        let boot_id = std::fs::read_to_string(BOOT_ID)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        FenceFile::new(path, boot_id)
    }

    pub fn new(path: PathBuf, boot_id: String) -> FenceFile {
        FenceFile {
            path,
            boot_id,
            last_error: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&self, deadline: Option<Mono>) -> std::io::Result<()> {
        let value = deadline.map_or_else(|| "-".to_owned(), |d| d.as_millis().to_string());
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{} {value}", self.boot_id)?;
        drop(f);
        // A rename is atomic: a crash leaves the old record or the new one, never half of one.
        std::fs::rename(&tmp, &self.path)
    }
}

/// `<data_dir><suffix>`: a file of ours beside the data directory (not in it, so
/// `pg_basebackup` and `pg_rewind` never copy it to another member).
pub fn beside_data_dir(data_dir: &Path, suffix: &str) -> PathBuf {
    let mut name = data_dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "pgdata".into());
    name.push(suffix);
    data_dir.with_file_name(name)
}

/// Parse a record written on the boot `boot_id`.
fn parse_record(text: &str, boot_id: &str) -> Option<Mono> {
    let mut words = text.split_whitespace();
    let (boot, deadline) = (words.next()?, words.next()?);
    if boot.is_empty() || boot != boot_id || words.next().is_some() {
        return None;
    }
    deadline.parse().ok().map(Mono::from_millis)
}

impl FenceRecord for FenceFile {
    fn load(&self) -> Option<Mono> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        parse_record(&text, &self.boot_id)
    }

    fn store(&self, deadline: Option<Mono>) {
        let result = self.write(deadline);
        let mut last = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(()) => {
                if last.take().is_some() {
                    info!(path = %self.path.display(), "fencing record written again");
                }
            }
            Err(e) => {
                let line = e.to_string();
                if last.as_deref() != Some(line.as_str()) {
                    warn!(
                        path = %self.path.display(),
                        "failed to write the fencing record: {line}; if this agent dies, the next one stops a running primary at once"
                    );
                    *last = Some(line);
                }
            }
        }
    }
}

/// The channels the fencer watches.
pub struct FencerInputs {
    pub lease: watch::Receiver<LeaseState>,
    pub signal: watch::Receiver<FenceSignal>,
    pub shutdown: watch::Receiver<bool>,
}

/// Watches the lease and the HA loop's [`FenceSignal`] and fences when the deadline passes
/// while we lead; guards a primary that predates this process by the recorded deadline.
/// Returns when `shutdown` flips to true.
pub async fn run_fencer<P: Postgres>(
    pg: Arc<P>,
    clock: Arc<dyn Clock>,
    record: Arc<dyn FenceRecord>,
    inputs: FencerInputs,
) {
    let FencerInputs {
        mut lease,
        mut signal,
        mut shutdown,
    } = inputs;
    // A primary that runs before our first cycle was started by an earlier incarnation: it may
    // stay writable until that incarnation's deadline, not ours.
    let mut inherited = None;
    if may_be_primary(&pg.observe().await) {
        let deadline = record.load().unwrap_or_else(|| clock.now());
        if deadline > clock.now() {
            warn!(
                left = ?until(clock.as_ref(), deadline),
                "PostgreSQL already runs as a primary: keeping it only until the previous agent's fencing deadline, unless the leader key moves to our lease first"
            );
        } else {
            warn!(
                "PostgreSQL already runs as a primary and no earlier agent left a fencing deadline that lies ahead"
            );
        }
        inherited = Some(deadline);
    }
    let mut recorded = None;
    loop {
        let now_signal = *signal.borrow_and_update();
        if inherited.is_some() && now_signal.confirmed {
            info!(
                "the leader key is on our lease (or PostgreSQL is no primary): the previous agent's deadline no longer applies"
            );
            inherited = None;
        }
        let is_leading = now_signal.leading || inherited.is_some();
        let state = *lease.borrow_and_update();
        let now = clock.now();
        let (deadline, expired) = match inherited {
            Some(d) => (Some(d), now >= d),
            None => {
                // The lease's deadline (while it has an ID), or the one a failsafe round
                // proved, whichever is later.
                let lease_deadline = state.fence_deadline.filter(|_| state.id.is_some());
                let d = lease_deadline.max(now_signal.failsafe_until);
                (d, d.is_none_or(|d| now >= d))
            }
        };
        let keep = if is_leading && !expired {
            deadline
        } else {
            None
        };
        if recorded != Some(keep) {
            record.store(keep);
            recorded = Some(keep);
        }
        if is_leading && expired {
            error!(
                deadline = ?deadline,
                "fencing: the lease could not be renewed before its deadline; stopping PostgreSQL immediately"
            );
            match pg.stop(StopMode::Immediate).await {
                Ok(()) => info!("fencing: PostgreSQL stopped"),
                Err(e) => error!("fencing: failed to stop PostgreSQL: {e:#}"),
            }
            if inherited.take().is_some() {
                // The inherited primary is gone; what runs from now on is the HA loop's.
                continue;
            }
            // Wait for the HA loop to acknowledge (leading=false) or for a renewed lease.
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|s| *s) => return,
                _ = signal.changed() => {}
                _ = lease.changed() => {}
            }
            continue;
        }
        let sleep = match (is_leading, deadline) {
            (true, Some(deadline)) => until(clock.as_ref(), deadline),
            _ => std::time::Duration::from_secs(3600),
        };
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => return,
            _ = signal.changed() => {}
            _ = lease.changed() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

/// A record in memory (tests, the simulator: it survives the agent's tasks, like a file).
#[derive(Default)]
pub struct MemRecord(Mutex<Option<Mono>>);

impl FenceRecord for MemRecord {
    fn load(&self) -> Option<Mono> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn store(&self, deadline: Option<Mono>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = deadline;
    }
}

#[cfg(test)]
mod record_tests {
    use super::*;

    #[test]
    fn a_record_is_read_back_on_the_same_boot_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let file = FenceFile::new(
            FenceFile::beside(&data).path().to_owned(),
            "boot-a".to_owned(),
        );
        assert_eq!(file.path(), dir.path().join("data.pgbaton-fence"));
        assert_eq!(file.load(), None, "no file yet");
        file.store(Some(Mono::from_millis(12_345)));
        assert_eq!(file.load(), Some(Mono::from_millis(12_345)));
        let other_boot = FenceFile::new(file.path().to_owned(), "boot-b".to_owned());
        assert_eq!(other_boot.load(), None, "a record from another boot");
        file.store(None);
        assert_eq!(file.load(), None, "not leading");
    }

    #[test]
    fn damaged_records_are_ignored() {
        for text in ["", "boot-a", "boot-a x", "boot-a 1 2", " 5", "boot-b 5"] {
            assert_eq!(parse_record(text, "boot-a"), None, "{text:?}");
        }
        assert_eq!(parse_record("boot-a 5\n", "boot-a"), Some(Mono(5)));
        assert_eq!(parse_record("x 5", ""), None, "unknown boot id");
    }

    #[test]
    fn an_unwritable_record_is_reported_not_fatal() {
        let file = FenceFile::new(
            PathBuf::from("/nonexistent-dir/data.pgbaton-fence"),
            "b".into(),
        );
        file.store(Some(Mono(1)));
        assert_eq!(file.load(), None);
    }
}
