//! Child processes and killing whole process trees.
//!
//! Processes are started in their own process group with stdout and stderr appended to a log
//! file. Killing is thorough, because a "dead host" must leave nothing behind: the tree under
//! a process is frozen with SIGSTOP (so it cannot fork any more), collected from `/proc`, and
//! SIGKILLed as a whole. PostgreSQL needs this: `pg_ctl` detaches the postmaster with
//! `setsid`, and each backend makes itself a process-group leader, so neither the agent's
//! process group nor the postmaster's contains them all.
//!
//! Zombies matter too: PostgreSQL refuses to start while the pid in `postmaster.pid` exists,
//! and a killed postmaster stays a zombie until its parent reaps it. Orphans are normally
//! reaped by init, but in containers PID 1 may reap late. So the test process makes itself a
//! child subreaper (orphans of the trees it started become its children) and a reaper thread
//! reaps them at once. It never reaps the children it owns through a [`Proc`] or through
//! `Command::output()` (those stay in this process's process group), so their exit statuses
//! are not stolen.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

/// Pids of live [`Proc`] children (reaped by their owner, never by the reaper thread). The
/// reaper holds this lock while it scans and reaps, and `Proc::spawn` while it spawns and
/// registers, so a child that exits at once cannot be reaped before it is registered.
static OWNED: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());
static REAPER: Once = Once::new();
/// How often the reaper scans `/proc` (every process on the host: at 20 ms, with the fault
/// suite's four clusters, the scan was the harness's busiest thread). A zombie postmaster
/// waits at most this long, far below any agent's retry of a start.
const REAP_INTERVAL: Duration = Duration::from_millis(100);

/// Make this process a child subreaper and start the orphan-reaping thread (once).
pub fn start_reaper() {
    REAPER.call_once(|| {
        if nix::sys::prctl::set_child_subreaper(true).is_err() {
            return; // orphans go to init, as usual
        }
        std::thread::Builder::new()
            .name("pgbaton-it-reaper".to_owned())
            .spawn(|| {
                loop {
                    reap_orphans();
                    std::thread::sleep(REAP_INTERVAL);
                }
            })
            .expect("spawn the reaper thread");
    });
}

/// Reap every zombie child that is an adopted orphan: not a [`Proc`], and not in this
/// process's own process group (where `Command::output()` children live).
fn reap_orphans() {
    let me = std::process::id() as i32;
    let my_pgid = nix::unistd::getpgrp().as_raw();
    let owned = OWNED.lock().unwrap_or_else(|e| e.into_inner());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((state, ppid, pgid)) = stat_fields3(&stat) else {
            continue;
        };
        if state == 'Z' && ppid == me && pgid != my_pgid && !owned.contains(&pid) {
            let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
        }
    }
}

/// A process started by the harness, in its own process group, killed (with its whole tree) on drop.
#[derive(Debug)]
pub struct Proc {
    what: String,
    child: Child,
    log: PathBuf,
    exited: Option<ExitStatus>,
    /// Set when the harness stops or kills it, so an exit is expected.
    stopped_by_harness: bool,
}

impl Proc {
    /// Start `cmd` in a new process group, stdin from /dev/null, stdout and stderr appended to `log`.
    pub fn spawn(what: &str, mut cmd: Command, log: &Path) -> anyhow::Result<Proc> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("open log {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        start_reaper();
        let child = {
            let mut owned = OWNED.lock().unwrap_or_else(|e| e.into_inner());
            let child = cmd
                .spawn()
                .with_context(|| format!("start {what}: {:?}", cmd))?;
            owned.insert(child.id() as i32);
            child
        };
        Ok(Proc {
            what: what.to_owned(),
            child,
            log: log.to_owned(),
            exited: None,
            stopped_by_harness: false,
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The exit status once the process has exited (reaps it), `None` while it runs.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
            if self.exited.is_some() {
                self.forget();
            }
        }
        self.exited
    }

    /// Reaped: the pid may be reused, so it is no longer ours.
    fn forget(&self) {
        OWNED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.pid());
    }

    pub fn is_running(&mut self) -> bool {
        self.exit_status().is_none()
    }

    /// The process is gone although the harness did not stop it (a crash or an early exit).
    /// Needs no `&mut`: a child that has exited but is not reaped yet is a zombie.
    pub fn exited_on_its_own(&self) -> bool {
        !self.stopped_by_harness && (self.exited.is_some() || !pid_alive(self.pid()))
    }

    /// Send `sig` to the whole process group (e.g. SIGSTOP/SIGCONT to pause a process).
    pub fn signal_group(&self, sig: Signal) -> anyhow::Result<()> {
        killpg(Pid::from_raw(self.pid()), sig)
            .with_context(|| format!("send {sig} to {} (pgid {})", self.what, self.pid()))
    }

    /// SIGTERM the process group and wait up to `timeout` for the process to exit; SIGKILL
    /// the whole tree after that. Returns the exit status.
    pub async fn stop(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.stopped_by_harness = true;
        if self.is_running() {
            let _ = killpg(Pid::from_raw(self.pid()), Signal::SIGTERM);
            let deadline = Instant::now() + timeout;
            while self.is_running() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        self.kill();
        self.exited
    }

    /// SIGKILL the process group only (descendants in groups of their own survive), and
    /// reap the process.
    pub fn kill_group(&mut self) {
        self.stopped_by_harness = true;
        let _ = killpg(Pid::from_raw(self.pid()), Signal::SIGKILL);
        if self.exited.is_none() {
            self.exited = self.child.wait().ok();
            self.forget();
        }
    }

    /// SIGKILL the process, its process group and every descendant, and reap it.
    pub fn kill(&mut self) {
        self.stopped_by_harness = true;
        if self.exited.is_none() {
            kill_tree(&[self.pid()]);
            let _ = killpg(Pid::from_raw(self.pid()), Signal::SIGKILL);
            self.exited = self.child.wait().ok();
            self.forget();
        } else {
            // The leader has exited, but members of its group may survive it.
            let _ = killpg(Pid::from_raw(self.pid()), Signal::SIGKILL);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether `pid` exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => match stat_fields(&stat) {
            Some((state, _)) => state != 'Z' && state != 'X',
            None => false,
        },
        Err(_) => false,
    }
}

/// `(state, ppid)` from the text of `/proc/<pid>/stat`.
fn stat_fields(stat: &str) -> Option<(char, i32)> {
    stat_fields3(stat).map(|(state, ppid, _)| (state, ppid))
}

/// `(state, ppid, pgid)` from the text of `/proc/<pid>/stat` (the command name, in
/// parentheses, may contain spaces).
fn stat_fields3(stat: &str) -> Option<(char, i32, i32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgid = fields.next()?.parse().ok()?;
    Some((state, ppid, pgid))
}

/// Every live process: pid → ppid.
fn process_table() -> BTreeMap<i32, i32> {
    let mut table = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return table;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            && let Some((state, ppid)) = stat_fields(&stat)
            && state != 'Z'
            && state != 'X'
        {
            table.insert(pid, ppid);
        }
    }
    table
}

/// `roots` (those alive) and all their live descendants.
fn tree_of(roots: &[i32]) -> BTreeSet<i32> {
    let table = process_table();
    let mut children: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
    for (&pid, &ppid) in &table {
        children.entry(ppid).or_default().push(pid);
    }
    let mut out = BTreeSet::new();
    let mut todo: Vec<i32> = roots
        .iter()
        .copied()
        .filter(|p| table.contains_key(p))
        .collect();
    while let Some(pid) = todo.pop() {
        if out.insert(pid)
            && let Some(kids) = children.get(&pid)
        {
            todo.extend(kids);
        }
    }
    out
}

/// SIGKILL `roots` and all their descendants, freezing the tree first so that nothing forks
/// in between, and wait (up to 10 s) until they are gone. Never signals this process or pid 1.
/// Returns the pids killed.
pub fn kill_tree(roots: &[i32]) -> Vec<i32> {
    let me = std::process::id() as i32;
    let roots: Vec<i32> = roots
        .iter()
        .copied()
        .filter(|&p| p > 1 && p != me)
        .collect();
    let mut frozen = BTreeSet::new();
    loop {
        let new: Vec<i32> = tree_of(&roots)
            .into_iter()
            .filter(|p| *p > 1 && *p != me && !frozen.contains(p))
            .collect();
        if new.is_empty() {
            break;
        }
        for pid in new {
            let _ = kill(Pid::from_raw(pid), Signal::SIGSTOP);
            frozen.insert(pid);
        }
    }
    for &pid in &frozen {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    // Dead, and reaped if it is an orphan we adopted (so its pid cannot fool PostgreSQL's
    // `postmaster.pid` check). Zombies owned by someone else only need to be dead.
    let gone = |pid: i32| match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => match stat_fields3(&stat) {
            Some((state, ppid, _)) => {
                (state == 'Z' || state == 'X')
                    && (ppid != me
                        || OWNED
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .contains(&pid))
            }
            None => true,
        },
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        reap_orphans();
        if frozen.iter().all(|&p| gone(p)) || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    frozen.into_iter().collect()
}

/// The postmaster of `data_dir` per its `postmaster.pid`, if that process is alive and really
/// is that postmaster: a `postgres` process that started when the pid file says (so a reused
/// pid is not mistaken for it).
///
/// (Not by `/proc/<pid>/cwd`: reading another user's `cwd` needs `CAP_SYS_PTRACE`, which root
/// lacks in a default Docker container.)
pub fn postmaster_pid(data_dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let mut lines = text.lines();
    let pid: i32 = lines.next()?.trim().parse().ok()?;
    let _data_dir = lines.next();
    let started: Option<i64> = lines.next().and_then(|l| l.trim().parse().ok());
    if !pid_alive(pid) {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let comm = &stat[stat.find('(')? + 1..stat.rfind(')')?];
    if comm != "postgres" && comm != "postmaster" {
        return None;
    }
    match (started, process_start_epoch(pid)) {
        (Some(file), Some(proc)) if (file - proc).abs() > 5 => None,
        _ => Some(pid),
    }
}

/// When process `pid` started, in seconds since the epoch (from `/proc`).
fn process_start_epoch(pid: i32) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    // Field 22 (starttime, in clock ticks since boot); `rest` starts at field 3.
    let ticks: i64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    let btime: i64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    // USER_HZ, the unit of /proc's clock ticks, is 100 on Linux.
    Some(btime + ticks / 100)
}

/// SIGKILL the postmaster of `data_dir` and every PostgreSQL process under it. Returns the
/// postmaster's pid if one was running.
pub fn kill_postmaster(data_dir: &Path) -> Option<i32> {
    let pid = postmaster_pid(data_dir)?;
    kill_tree(&[pid]);
    Some(pid)
}

/// SIGKILL every process whose working directory is `dir` or below it, or whose command line
/// names a path inside `dir`, with all their descendants. The final sweep of a teardown:
/// agents, PostgreSQL, etcd and HAProxy all run inside the test directory and get their
/// files there on the command line (when `cwd` is unreadable, e.g. another user's process in a
/// container without `CAP_SYS_PTRACE`, the command line still tells; PostgreSQL's backends
/// rewrite theirs, but they are the postmaster's descendants).
pub fn kill_processes_under(dir: &Path) -> Vec<i32> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let needle = format!("{}/", dir.display());
    let roots: Vec<i32> = process_table()
        .into_keys()
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(&dir))
                || std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    String::from_utf8_lossy(&c)
                        .split('\0')
                        .any(|arg| arg.contains(&needle))
                })
        })
        .collect();
    if roots.is_empty() {
        return roots;
    }
    kill_tree(&roots)
}
