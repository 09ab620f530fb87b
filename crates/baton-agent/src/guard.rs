//! The fence guard: a small process of its own (`pgbaton fence-guard`, started by the agent)
//! that enforces the fencing record when the agent cannot.
//!
//! The fencer task lives inside the agent: an agent that is frozen (SIGSTOP, a hung runtime,
//! swapped out) or killed cannot stop its primary at the deadline, while its lease runs out
//! and another member is promoted (simulator finding "no watchdog"). The guard reads the same
//! record the fencer keeps beside the data directory ([`FenceFile`]: the deadline until which
//! the lease protects a running primary, on `CLOCK_BOOTTIME`) every
//! [`GUARD_INTERVAL`], and once that deadline has passed with a postmaster still running it
//! kills every process of the data directory (postmaster frozen first, then SIGKILL, as
//! `stop(Immediate)` does when `pg_ctl` fails). A live agent rewrites the record at every
//! renewal and clears it when it stops leading or fences itself, so the guard only acts on a
//! deadline the agent could not act on.
//!
//! It runs in its own process group (a signal to the agent's group does not reach it) and
//! outlives an agent that dies abnormally; an agent that exits normally stops it, and a new
//! agent replaces a previous agent's guard (found through `<data_dir>.pgbaton-guard`). Without
//! an agent it exits as soon as nothing is left to guard. Like Patroni's watchdog it does not
//! cover a freeze of the whole host (a hardware watchdog does); unlike it, it needs no
//! `/dev/watchdog`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use baton_core::{Clock, Mono};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tracing::{error, info, warn};

use crate::clock::SystemClock;
use crate::fence::{FenceFile, FenceRecord, beside_data_dir};

/// How often the guard reads the record.
pub const GUARD_INTERVAL: Duration = Duration::from_millis(100);

/// How long the guard waits for the killed processes to be gone.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// The marker the guard's command line carries, so a PID from the guard file is only
/// signalled when it still is a guard (PIDs are reused).
const GUARD_ARG: &str = "fence-guard";

/// What the guard sees in one look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuardView {
    /// The recorded deadline (this boot's record; `None`: no primary to protect).
    pub deadline: Option<Mono>,
    pub now: Mono,
    /// A postmaster runs in the data directory as a primary (no `standby.signal`: a standby
    /// accepts no writes, and is never killed, even on a stale record). Only looked up once
    /// the deadline has passed (scanning `/proc` ten times a second would cost CPU for
    /// nothing).
    pub postmaster: bool,
    /// The agent that started us is alive (possibly frozen).
    pub agent_alive: bool,
}

impl GuardView {
    /// One look: `runs_as_primary` is only asked once the deadline has passed (the real check
    /// scans `/proc`).
    pub fn look(
        deadline: Option<Mono>,
        now: Mono,
        agent_alive: bool,
        runs_as_primary: impl FnOnce() -> bool,
    ) -> GuardView {
        let due = deadline.is_some_and(|d| now >= d);
        GuardView {
            deadline,
            now,
            postmaster: due && runs_as_primary(),
            agent_alive,
        }
    }
}

/// What the guard does about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuardStep {
    /// Kill PostgreSQL: the deadline has passed and nobody stopped it.
    Fence,
    /// Look again in [`GUARD_INTERVAL`].
    Wait,
    /// The agent is gone and nothing is left to guard.
    Exit,
}

/// The guard's rule, as a pure function.
pub fn guard_step(v: GuardView) -> GuardStep {
    match v.deadline {
        Some(deadline) if v.now >= deadline && v.postmaster => GuardStep::Fence,
        // A deadline ahead: the primary is protected until then, agent or not.
        Some(deadline) if v.now < deadline => GuardStep::Wait,
        _ if v.agent_alive => GuardStep::Wait,
        _ => GuardStep::Exit,
    }
}

/// The file naming the guard process of the member whose data directory is `data_dir`.
pub fn guard_pid_file(data_dir: &Path) -> PathBuf {
    beside_data_dir(data_dir, ".pgbaton-guard")
}

/// The guard process (`pgbaton fence-guard --data-dir D --agent-pid P`): runs until
/// [`GuardStep::Exit`].
pub fn run_guard(data_dir: &Path, agent_pid: i32) {
    let record = FenceFile::beside(data_dir);
    let clock = SystemClock;
    info!(
        data_dir = %data_dir.display(),
        agent_pid,
        "fence guard started"
    );
    let mut fenced_for = None;
    loop {
        let view = GuardView::look(
            record.load(),
            clock.now(),
            kill(Pid::from_raw(agent_pid), None).is_ok(),
            || runs_as_primary(data_dir),
        );
        match guard_step(view) {
            GuardStep::Fence => {
                // Logged once per deadline: a postmaster that survives the kill is retried
                // every interval without repeating the message.
                if fenced_for != view.deadline {
                    error!(
                        deadline = ?view.deadline,
                        agent_alive = view.agent_alive,
                        "fence guard: the fencing deadline passed and the agent did not stop PostgreSQL (frozen or dead); killing PostgreSQL"
                    );
                    fenced_for = view.deadline;
                }
                match baton_pg::kill_data_dir_processes(data_dir, KILL_TIMEOUT) {
                    Ok(n) => info!("fence guard: killed {n} PostgreSQL processes"),
                    Err(e) => error!("fence guard: {e}"),
                }
            }
            GuardStep::Wait => {}
            GuardStep::Exit => {
                info!("fence guard: the agent is gone and no primary is left to guard; exiting");
                return;
            }
        }
        std::thread::sleep(GUARD_INTERVAL);
    }
}

/// Some process of `data_dir` runs, and not as a standby (PostgreSQL 12+ runs as a standby
/// exactly while `standby.signal` exists; promotion removes it).
fn runs_as_primary(data_dir: &Path) -> bool {
    !data_dir.join("standby.signal").exists() && !baton_pg::data_dir_pids(data_dir).is_empty()
}

/// Start the guard for `data_dir` (replacing a previous agent's) as a process of its own
/// group; it reports to our stderr. `None` (with a warning) when it cannot be started: the
/// agent still runs, with its in-process fencer only.
pub fn spawn_guard(data_dir: &Path) -> Option<Child> {
    stop_previous_guard(data_dir);
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            warn!(
                "cannot start the fence guard (current executable: {e}); a frozen agent will not be fenced"
            );
            return None;
        }
    };
    let spawned = {
        use std::os::unix::process::CommandExt;
        Command::new(&exe)
            .arg(GUARD_ARG)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--agent-pid")
            .arg(std::process::id().to_string())
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
    };
    match spawned {
        Ok(child) => {
            let file = guard_pid_file(data_dir);
            if let Err(e) = std::fs::write(&file, format!("{}\n", child.id())) {
                warn!(
                    path = %file.display(),
                    "cannot record the fence guard's PID: {e}; the next agent will not replace this guard"
                );
            }
            Some(child)
        }
        Err(e) => {
            warn!(
                exe = %exe.display(),
                "cannot start the fence guard: {e}; a frozen agent will not be fenced"
            );
            None
        }
    }
}

/// Stop our guard on a normal exit (the agent has stopped PostgreSQL, or leaves it running
/// on purpose in maintenance mode).
pub fn stop_guard(mut child: Child, data_dir: &Path) {
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let _ = child.wait();
    let file = guard_pid_file(data_dir);
    if std::fs::read_to_string(&file).is_ok_and(|s| s.trim() == child.id().to_string()) {
        let _ = std::fs::remove_file(file);
    }
}

/// A guard left by an earlier agent (killed, crashed) enforces that agent's record; ours
/// takes over the same record, so the old one is stopped.
fn stop_previous_guard(data_dir: &Path) {
    let file = guard_pid_file(data_dir);
    let Some(pid) = std::fs::read_to_string(&file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .filter(|pid| *pid > 0)
    else {
        return;
    };
    let is_guard = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        args.contains(&GUARD_ARG.as_bytes())
            && args.contains(&data_dir.as_os_str().as_encoded_bytes())
    });
    if is_guard {
        info!(pid, "stopping the previous agent's fence guard");
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(deadline: Option<u64>, now: u64, postmaster: bool, agent_alive: bool) -> GuardView {
        GuardView {
            deadline: deadline.map(Mono::from_millis),
            now: Mono::from_millis(now),
            postmaster,
            agent_alive,
        }
    }

    #[test]
    fn the_guard_fences_a_running_postmaster_once_the_recorded_deadline_passes() {
        // Frozen agent (alive) or dead agent: the same.
        for agent_alive in [true, false] {
            assert_eq!(
                guard_step(view(Some(1000), 999, true, agent_alive)),
                GuardStep::Wait,
                "before the deadline"
            );
            assert_eq!(
                guard_step(view(Some(1000), 1000, true, agent_alive)),
                GuardStep::Fence,
                "at the deadline"
            );
        }
    }

    #[test]
    fn the_guard_leaves_alone_what_the_record_does_not_protect() {
        assert_eq!(
            guard_step(view(None, 5000, true, true)),
            GuardStep::Wait,
            "no deadline recorded (a standby, or the agent cleared it): nothing to do"
        );
        assert_eq!(
            guard_step(view(Some(1000), 5000, false, true)),
            GuardStep::Wait,
            "already stopped"
        );
    }

    #[test]
    fn without_an_agent_the_guard_exits_once_nothing_is_left_to_guard() {
        assert_eq!(
            guard_step(view(Some(9000), 5000, true, false)),
            GuardStep::Wait,
            "a dead agent's primary is guarded until its deadline"
        );
        assert_eq!(
            guard_step(view(Some(1000), 5000, false, false)),
            GuardStep::Exit
        );
        assert_eq!(guard_step(view(None, 5000, true, false)), GuardStep::Exit);
    }

    #[test]
    fn the_guard_file_sits_beside_the_data_directory() {
        assert_eq!(
            guard_pid_file(Path::new("/var/lib/pg/15/main")),
            PathBuf::from("/var/lib/pg/15/main.pgbaton-guard")
        );
    }
}
