//! The fencing record: the deadline until which the lease protects a running primary, in a
//! small file beside the data directory. The agent's fencer writes it (and a new agent reads
//! a dead one's); the fence guard reads it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use baton_core::Mono;
use tracing::{info, warn};

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

#[cfg(test)]
mod tests {
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
