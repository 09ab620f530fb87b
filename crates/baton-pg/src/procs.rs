//! The processes of a data directory, from `postmaster.pid` and `/proc`.
//!
//! A postmaster is ours when the PID in `postmaster.pid` is alive (not a zombie), runs the
//! `postgres` executable and has the data directory as its working directory (the postmaster
//! and every backend `chdir` there). That last check protects against a stale `postmaster.pid`
//! whose PID was reused, possibly by a backend of another cluster on the same host.
//!
//! Every postmaster child calls `setsid()`, so killing the postmaster's process group does not
//! reach the backends; and once the postmaster is gone its children are re-parented. So the
//! processes to kill are found twice over: the postmaster's descendants (while it is frozen
//! with SIGSTOP so it cannot fork) and every `postgres` process whose working directory is the
//! data directory (which also finds orphans of a postmaster that died earlier).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::PgError;

/// The fields of `/proc/<pid>/stat` we use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProcStat {
    pub(crate) pid: i32,
    pub(crate) comm: String,
    pub(crate) state: char,
    pub(crate) ppid: i32,
    /// Process group.
    pub(crate) pgrp: i32,
    /// Start time in clock ticks since boot: with the PID, identifies a process.
    pub(crate) starttime: u64,
}

impl ProcStat {
    pub(crate) fn is_zombie(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }

    fn is_postgres(&self) -> bool {
        self.comm == "postgres" || self.comm == "postmaster"
    }
}

/// Parse one `/proc/<pid>/stat` line. The command name is in parentheses and may itself contain
/// spaces and parentheses, so the fields are counted from the last `)`.
pub(crate) fn parse_stat(text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text.get(..open)?.trim().parse().ok()?;
    let comm = text.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let ppid = fields.get(1)?.parse().ok()?;
    let pgrp = fields.get(2)?.parse().ok()?;
    let starttime = fields.get(19)?.parse().ok()?;
    Some(ProcStat {
        pid,
        comm,
        state,
        ppid,
        pgrp,
        starttime,
    })
}

fn proc_available() -> bool {
    Path::new("/proc/self/stat").exists()
}

pub(crate) fn stat(pid: i32) -> Option<ProcStat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn all_processes() -> Vec<ProcStat> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(stat)
        .collect()
}

/// Bytes read plus bytes written so far (`rchar` + `wchar` of `/proc/<pid>/io`: files, pipes
/// and sockets alike) by the live processes of process group `pgid`, or `None` when none of
/// them can be read (no `/proc`, or not permitted): then nobody can tell whether they progress.
pub(crate) fn group_io(pgid: i32) -> Option<u64> {
    let mut total = None;
    for p in all_processes() {
        if p.pgrp != pgid || p.is_zombie() {
            continue;
        }
        if let Some(bytes) = fs::read_to_string(format!("/proc/{}/io", p.pid))
            .ok()
            .and_then(|text| parse_io(&text))
        {
            total = Some(total.unwrap_or(0u64).saturating_add(bytes));
        }
    }
    total
}

/// `rchar` + `wchar` of a `/proc/<pid>/io` text.
pub(crate) fn parse_io(text: &str) -> Option<u64> {
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?
            .trim()
            .parse()
            .ok()
    };
    Some(field("rchar")?.saturating_add(field("wchar")?))
}

fn cwd(pid: i32) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/cwd")).ok()
}

/// The PID on the first line of `postmaster.pid`, if the file exists and parses.
pub(crate) fn pid_file_pid(data_dir: &Path) -> Option<i32> {
    let text = fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    text.lines()
        .next()?
        .trim()
        .parse()
        .ok()
        .filter(|pid| *pid > 0)
}

/// The PID of the live postmaster of `data_dir`, verified as described in the module docs.
pub(crate) fn postmaster(data_dir: &Path) -> Option<i32> {
    let pid = pid_file_pid(data_dir)?;
    if !proc_available() {
        return kill(Pid::from_raw(pid), None).is_ok().then_some(pid);
    }
    let stat = stat(pid)?;
    let dir = fs::canonicalize(data_dir).ok()?;
    (!stat.is_zombie() && stat.is_postgres() && cwd(pid).as_deref() == Some(dir.as_path()))
        .then_some(pid)
}

/// A pidfd of a postmaster (Linux ≥ 5.3, `pidfd_open(2)`): it becomes readable when the
/// process exits, so its end is noticed at once without polling. It works for any process the
/// caller can see, not only children (the postmaster is pg_ctl's, re-parented).
pub(crate) struct PostmasterExit(tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>);

impl PostmasterExit {
    /// `None` when the kernel has no pidfds (or forbids them) or `pid` is already gone.
    #[allow(unsafe_code)]
    pub(crate) fn open(pid: i32) -> Option<PostmasterExit> {
        use std::os::fd::FromRawFd;
        // SAFETY: pidfd_open takes a PID and flags and returns a new descriptor or -1; no
        // memory is passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, libc::PIDFD_NONBLOCK) };
        let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
        // SAFETY: `fd` was just returned to us by the kernel and is owned by nobody else.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        // SAFETY: the `OwnedFd` is moved into the `AsyncFd`, which owns it (and closes it)
        // until it is dropped: the descriptor stays open and the same for its whole life.
        unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
        }
        .ok()
        .map(PostmasterExit)
    }

    /// Resolves `true` when the process has exited; `false` if the descriptor cannot be
    /// waited on after all (the caller polls instead).
    pub(crate) async fn wait(&self) -> bool {
        self.0.readable().await.is_ok()
    }
}

/// Live processes belonging to `data_dir`: the postmaster `pm` and its descendants, and every
/// `postgres` process working in the data directory.
fn data_dir_processes(data_dir: &Path, pm: Option<i32>) -> Vec<ProcStat> {
    let all = all_processes();
    let dir = fs::canonicalize(data_dir).ok();
    let mut children: BTreeMap<i32, Vec<&ProcStat>> = BTreeMap::new();
    for p in &all {
        children.entry(p.ppid).or_default().push(p);
    }
    let mut wanted: BTreeSet<i32> = BTreeSet::new();
    let mut queue: Vec<i32> = pm.into_iter().collect();
    while let Some(pid) = queue.pop() {
        if wanted.insert(pid) {
            queue.extend(children.get(&pid).into_iter().flatten().map(|c| c.pid));
        }
    }
    all.iter()
        .filter(|p| !p.is_zombie())
        .filter(|p| {
            wanted.contains(&p.pid)
                || (p.is_postgres() && dir.is_some() && cwd(p.pid).as_deref() == dir.as_deref())
        })
        .cloned()
        .collect()
}

/// PIDs of the live processes of `data_dir` (postmaster, backends, orphans).
pub fn data_dir_pids(data_dir: &Path) -> Vec<i32> {
    data_dir_processes(data_dir, postmaster(data_dir))
        .iter()
        .map(|p| p.pid)
        .collect()
}

/// SIGKILL every process of `data_dir` (see the module docs) and wait until none is left, at
/// most `timeout`; then remove the stale `postmaster.pid`. Blocking. Returns how many processes
/// were killed. Used by `stop(Immediate)`, and by test harnesses to clean up after themselves.
pub fn kill_data_dir_processes(data_dir: &Path, timeout: Duration) -> Result<usize, PgError> {
    let deadline = Instant::now() + timeout;
    let mut killed: BTreeSet<(i32, u64)> = BTreeSet::new();
    if proc_available() {
        loop {
            let pm = postmaster(data_dir);
            if let Some(pm) = pm {
                // Frozen, the postmaster cannot fork new children while we collect them.
                let _ = kill(Pid::from_raw(pm), Signal::SIGSTOP);
            }
            let procs = data_dir_processes(data_dir, pm);
            // A dying process may already have lost its working directory: wait for every
            // process we signalled to be gone (or a zombie) too.
            let dying = killed.iter().any(|(pid, start)| {
                stat(*pid).is_some_and(|s| s.starttime == *start && !s.is_zombie())
            });
            if procs.is_empty() && !dying {
                break;
            }
            for p in &procs {
                // Re-check the identity right before the signal: the PID may have been reused.
                if stat(p.pid).is_some_and(|now| now.starttime == p.starttime) {
                    let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
                    killed.insert((p.pid, p.starttime));
                }
            }
            if Instant::now() >= deadline {
                let pids: Vec<i32> = killed.iter().map(|(pid, _)| *pid).collect();
                return Err(PgError::Other(format!(
                    "processes of {} still alive after SIGKILL and {timeout:?}: {pids:?}",
                    data_dir.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    } else if let Some(pid) = pid_file_pid(data_dir) {
        // No /proc: only the postmaster is known.
        let _ = nix::sys::signal::killpg(Pid::from_raw(pid), Signal::SIGKILL);
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        while kill(Pid::from_raw(pid), None).is_ok() {
            if Instant::now() >= deadline {
                return Err(PgError::Other(format!(
                    "postmaster {pid} still alive after SIGKILL"
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        killed.insert((pid, 0));
    }
    remove_stale_pid_file(data_dir)?;
    Ok(killed.len())
}

/// Remove a socket lock file (`.s.PGSQL.<port>.lock`) whose PID is not a live process (gone or
/// a zombie).
pub(crate) fn remove_stale_lock_file(path: &Path) -> Result<(), PgError> {
    let Ok(text) = fs::read_to_string(path) else {
        return Ok(());
    };
    let Some(pid) = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<i32>().ok())
        .filter(|p| *p > 0)
    else {
        return Ok(());
    };
    let alive = if proc_available() {
        stat(pid).is_some_and(|s| !s.is_zombie())
    } else {
        kill(Pid::from_raw(pid), None).is_ok()
    };
    if alive {
        return Ok(());
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(PgError::Io {
            context: format!("remove stale {}", path.display()),
            source,
        }),
    }
}

/// Remove `postmaster.pid` when no live postmaster owns it (a zombie or reused PID would
/// otherwise make the next start refuse with "lock file already exists").
pub(crate) fn remove_stale_pid_file(data_dir: &Path) -> Result<(), PgError> {
    let path = data_dir.join("postmaster.pid");
    if !path.exists() || postmaster(data_dir).is_some() {
        return Ok(());
    }
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(PgError::Io {
            context: format!("remove stale {}", path.display()),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use expect_test::expect;

    use super::*;

    #[test]
    fn parses_proc_stat() {
        let line = "4242 (postgres: pg1: (walsender)) S 4200 4242 4242 0 -1 4194624 2053 0 0 0 1 2 0 0 20 0 1 0 987654 225673216 3584 18446744073709551615";
        expect![[r#"
            Some(
                ProcStat {
                    pid: 4242,
                    comm: "postgres: pg1: (walsender)",
                    state: 'S',
                    ppid: 4200,
                    pgrp: 4242,
                    starttime: 987654,
                },
            )
        "#]]
        .assert_debug_eq(&parse_stat(line));
        assert_eq!(parse_stat("12 (x) Z 1"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn parses_proc_io() {
        let text = "rchar: 1200\nwchar: 34\nsyscr: 5\nsyscw: 2\nread_bytes: 0\nwrite_bytes: 4096\n";
        assert_eq!(parse_io(text), Some(1234));
        assert_eq!(parse_io("rchar: 1\n"), None);
        assert_eq!(parse_io("garbage"), None);
    }

    #[test]
    fn own_process_group_has_io_counters() {
        if !proc_available() {
            return;
        }
        let me = stat(std::process::id() as i32).expect("own /proc entry");
        assert!(
            group_io(me.pgrp).is_some(),
            "our own group's /proc/<pid>/io is readable"
        );
        assert_eq!(group_io(i32::MAX), None, "no such process group");
    }

    #[test]
    fn own_process_is_visible() {
        if !proc_available() {
            return;
        }
        let me = stat(std::process::id() as i32).expect("own /proc entry");
        assert_eq!(me.pid, std::process::id() as i32);
        assert!(!me.is_zombie());
    }

    #[test]
    fn no_processes_for_a_missing_dir() {
        let dir = Path::new("/nonexistent/pgbaton/data");
        assert_eq!(postmaster(dir), None);
        assert!(data_dir_pids(dir).is_empty());
        assert_eq!(
            kill_data_dir_processes(dir, Duration::from_secs(1)).ok(),
            Some(0)
        );
    }
}
