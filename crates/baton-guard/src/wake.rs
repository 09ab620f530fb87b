//! When the guard looks again: at the recorded deadline, when the record changes, or when the
//! agent exits; every [`GUARD_INTERVAL`] only where events cannot tell.
//!
//! The guard used to read the record ten times a second whatever it said. What it decides
//! ([`crate::guard_step`]) only changes when the record changes, when the clock reaches the
//! recorded deadline, or when the agent exits, so it waits for exactly those:
//!
//! - the record is written by rename into the data directory's parent: an inotify watch on that
//!   directory wakes the guard on every change of the record (a renewed, cleared or earlier
//!   deadline is seen at once, not up to 100 ms later);
//! - the deadline: a `timerfd` on `CLOCK_BOOTTIME` (the record's clock) armed at the deadline
//!   itself, absolute, so the guard fences at the deadline instead of up to 100 ms after it, and
//!   a suspend in between does not make it late (a relative sleep would not count the suspend);
//! - the agent's exit: the agent starts the guard with a pipe as its standard input and keeps
//!   the other end; the kernel closes it when the agent dies, however it dies (a frozen agent
//!   keeps it open: alive, as `kill(pid, 0)` says). Without a deadline the guard still looks
//!   once a second ([`CHANGE_BACKSTOP_MS`]), in case that end outlived the agent.
//!
//! Once the deadline has passed (the guard fences, or keeps the floating IP off while the
//! agent stays frozen), after the agent's end of the pipe closed while `kill(pid, 0)` still
//! finds it (a zombie), and whenever inotify, the timer or the pipe is not available (no
//! inotify instance left for the user, an older agent that gave no pipe, the watched directory
//! removed), the guard looks every [`GUARD_INTERVAL`] as before. A leader's guard at idle
//! wakes at each lease renewal (the agent rewrites the record: every ttl/4), a replica's once
//! a second.

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use baton_core::Mono;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::stat::{SFlag, fstat};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tracing::{info, warn};

use crate::guard::{GUARD_INTERVAL, GuardView};

/// The longest the guard waits for a change while no deadline is recorded (`NextLook::Change`):
/// nothing is due then, and the agent's exit normally wakes it at once through the pipe.
pub const CHANGE_BACKSTOP_MS: u16 = 1000;

/// What the guard waits for before its next look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextLook {
    /// The recorded deadline (or a change of the record before it).
    Deadline(Mono),
    /// A change of the record, or the agent's exit.
    Change,
    /// [`GUARD_INTERVAL`] (the deadline has passed, or events cannot tell).
    Interval,
}

/// The rule: `watching_agent` is whether the agent's exit would wake the guard.
pub fn next_look(v: GuardView, watching_agent: bool) -> NextLook {
    match v.deadline {
        // Before the deadline nothing the agent does or fails to do changes the step
        // (`Wait`), except a new record.
        Some(deadline) if v.now < deadline => NextLook::Deadline(deadline),
        // Passed: fence (again), keep the floating IP off, or notice the exit.
        Some(_) => NextLook::Interval,
        None if v.agent_alive && watching_agent => NextLook::Change,
        None => NextLook::Interval,
    }
}

/// The events the guard waits on; each one missing makes it fall back to the interval.
pub struct Waiter {
    /// The record's file name in the watched directory.
    record_name: Option<OsString>,
    inotify: Option<Inotify>,
    timer: Option<TimerFd>,
    /// Our end of the pipe whose other end the agent holds.
    agent: Option<OwnedFd>,
}

impl Waiter {
    /// Watch the directory of `record` (the fencing record's path) and `agent` (the read end of
    /// the agent's pipe, if it gave one). What cannot be set up is logged, and the guard looks
    /// every [`GUARD_INTERVAL`] where it would have needed it.
    pub fn new(record: &Path, agent: Option<OwnedFd>) -> Waiter {
        let record_name = record.file_name().map(|n| n.to_os_string());
        let dir = record
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
            .and_then(|i| {
                i.add_watch(
                    dir,
                    AddWatchFlags::IN_MOVED_TO
                        | AddWatchFlags::IN_CLOSE_WRITE
                        | AddWatchFlags::IN_CREATE
                        | AddWatchFlags::IN_DELETE
                        | AddWatchFlags::IN_MOVED_FROM
                        | AddWatchFlags::IN_DELETE_SELF
                        | AddWatchFlags::IN_MOVE_SELF,
                )
                .map(|_| i)
            })
            .inspect_err(|e| {
                warn!(
                    dir = %dir.display(),
                    "fence guard: cannot watch the fencing record ({e}); reading it every {GUARD_INTERVAL:?}"
                )
            })
            .ok();
        let timer = TimerFd::new(
            ClockId::CLOCK_BOOTTIME,
            TimerFlags::TFD_CLOEXEC | TimerFlags::TFD_NONBLOCK,
        )
        .inspect_err(|e| {
            warn!("fence guard: no CLOCK_BOOTTIME timer ({e}); reading the record every {GUARD_INTERVAL:?}")
        })
        .ok();
        Waiter {
            record_name,
            inotify,
            timer,
            agent,
        }
    }

    /// Whether the agent's exit wakes us (and a record change does).
    pub fn watching_agent(&self) -> bool {
        self.agent.is_some() && self.inotify.is_some()
    }

    /// Wait for `next` (returns early on any change of the record; spurious returns are
    /// harmless: the guard just looks again).
    pub fn wait(&mut self, next: NextLook) {
        let waited = match next {
            NextLook::Deadline(deadline) => self.wait_deadline(deadline),
            NextLook::Change => self.wait_change(),
            NextLook::Interval => false,
        };
        if !waited {
            std::thread::sleep(GUARD_INTERVAL);
        }
        self.drain();
    }

    /// Poll the watch and the timer armed at `deadline`; `false` when that cannot be done.
    fn wait_deadline(&mut self, deadline: Mono) -> bool {
        let (Some(inotify), Some(timer)) = (&self.inotify, &self.timer) else {
            return false;
        };
        let ms = deadline.as_millis();
        // A zero expiration would disarm the timer: such a deadline is long past anyway.
        if ms == 0 {
            return false;
        }
        let at = TimeSpec::new(
            i64::try_from(ms / 1000).unwrap_or(i64::MAX),
            i64::try_from((ms % 1000) * 1_000_000).unwrap_or(0),
        );
        if let Err(e) = timer.set(
            Expiration::OneShot(at),
            TimerSetTimeFlags::TFD_TIMER_ABSTIME,
        ) {
            warn!(
                "fence guard: cannot arm the deadline timer ({e}); reading the record every {GUARD_INTERVAL:?}"
            );
            self.timer = None;
            return false;
        }
        let mut fds = [
            PollFd::new(inotify.as_fd(), PollFlags::POLLIN),
            PollFd::new(timer.as_fd(), PollFlags::POLLIN),
        ];
        let polled = poll(&mut fds, PollTimeout::NONE).is_ok();
        // A fired one-shot timer stays readable until read or re-armed.
        let _ = timer.unset();
        polled
    }

    /// Poll the watch and the agent's pipe; `false` when that cannot be done.
    fn wait_change(&mut self) -> bool {
        let (Some(inotify), Some(agent)) = (&self.inotify, &self.agent) else {
            return false;
        };
        let mut fds = [
            PollFd::new(inotify.as_fd(), PollFlags::POLLIN),
            PollFd::new(agent.as_fd(), PollFlags::POLLIN),
        ];
        // A backstop for a pipe end that outlived the agent (it would have to leak into a
        // process of its own: the agent's end is close-on-exec): look at least every
        // [`CHANGE_BACKSTOP_MS`] anyway.
        if poll(&mut fds, CHANGE_BACKSTOP_MS).is_err() {
            return false;
        }
        let agent_event = fds[1].revents().is_some_and(|r| !r.is_empty());
        if agent_event {
            // Nothing is ever written: readable means the agent's end closed (or someone
            // wrote, which we read and ignore).
            let mut buf = [0u8; 64];
            match nix::unistd::read(agent.as_fd(), &mut buf) {
                Ok(n) if n > 0 => {}
                _ => {
                    info!("fence guard: the agent's end of the pipe closed");
                    self.agent = None;
                }
            }
        }
        true
    }

    /// Read the queued events; stop watching when the directory itself went away.
    fn drain(&mut self) {
        let Some(inotify) = &self.inotify else {
            return;
        };
        let mut lost = false;
        while let Ok(events) = inotify.read_events() {
            if events.is_empty() {
                break;
            }
            lost |= events.iter().any(|e| {
                e.mask.intersects(
                    AddWatchFlags::IN_DELETE_SELF
                        | AddWatchFlags::IN_MOVE_SELF
                        | AddWatchFlags::IN_IGNORED,
                )
            });
        }
        if lost {
            warn!(
                record = ?self.record_name,
                "fence guard: the fencing record's directory was removed or moved; reading the record every {GUARD_INTERVAL:?}"
            );
            self.inotify = None;
        }
    }
}

/// Our standard input when it is a pipe: the agent's liveness pipe (an agent that gave none
/// left it at `/dev/null`, which never tells anything).
pub fn agent_pipe_from_stdin() -> Option<OwnedFd> {
    let stdin = std::io::stdin();
    let fd = stdin.as_fd();
    let stat = fstat(fd).ok()?;
    let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
    if kind != SFlag::S_IFIFO {
        return None;
    }
    fd.try_clone_to_owned().ok()
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use baton_core::Clock;

    use super::*;
    use crate::SystemClock;

    fn view(deadline: Option<u64>, now: u64, agent_alive: bool) -> GuardView {
        GuardView {
            deadline: deadline.map(Mono::from_millis),
            now: Mono::from_millis(now),
            postmaster: false,
            agent_alive,
        }
    }

    #[test]
    fn the_guard_waits_for_the_deadline_a_change_or_the_interval() {
        for (alive, watching) in [(true, true), (true, false), (false, true), (false, false)] {
            assert_eq!(
                next_look(view(Some(1000), 999, alive), watching),
                NextLook::Deadline(Mono::from_millis(1000)),
                "before the deadline: until it (alive {alive}, watching {watching})"
            );
            assert_eq!(
                next_look(view(Some(1000), 1000, alive), watching),
                NextLook::Interval,
                "at or after it: every interval, as before (alive {alive}, watching {watching})"
            );
        }
        assert_eq!(next_look(view(None, 5, true), true), NextLook::Change);
        assert_eq!(
            next_look(view(None, 5, true), false),
            NextLook::Interval,
            "no pipe from the agent: its exit is only seen by looking"
        );
        assert_eq!(
            next_look(view(None, 5, false), true),
            NextLook::Interval,
            "the pipe closed but the agent is still there (a zombie): look until it is gone"
        );
    }

    fn pipe() -> (OwnedFd, std::io::PipeWriter) {
        let (reader, writer) = std::io::pipe().expect("pipe");
        (OwnedFd::from(reader), writer)
    }

    #[test]
    fn a_change_of_the_record_wakes_the_guard() {
        let dir = tempfile::tempdir().expect("tempdir");
        let record = dir.path().join("data.pgbaton-fence");
        let (reader, _writer) = pipe();
        let mut waiter = Waiter::new(&record, Some(reader));
        assert!(waiter.watching_agent());
        // Written as the fencer writes it (a temporary file renamed over the record) before
        // the wait begins: the queued event ends the wait at once.
        std::fs::write(dir.path().join("data.pgbaton-fence.tmp"), "b 1\n").expect("write");
        std::fs::rename(dir.path().join("data.pgbaton-fence.tmp"), &record).expect("rename");
        waiter.wait(NextLook::Change);
        assert!(waiter.watching_agent(), "the agent is still there");
    }

    #[test]
    fn the_agents_exit_wakes_the_guard() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (reader, mut writer) = pipe();
        let mut waiter = Waiter::new(&dir.path().join("data.pgbaton-fence"), Some(reader));
        writer.write_all(b"x").expect("write");
        waiter.wait(NextLook::Change);
        assert!(waiter.watching_agent(), "a byte written is not an exit");
        drop(writer);
        waiter.wait(NextLook::Change);
        assert!(!waiter.watching_agent(), "the agent's end closed");
    }

    #[test]
    fn the_guard_wakes_at_the_deadline_on_the_records_clock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut waiter = Waiter::new(&dir.path().join("data.pgbaton-fence"), None);
        let deadline = Mono::from_millis(SystemClock.now().as_millis() + 30);
        waiter.wait(NextLook::Deadline(deadline));
        assert!(
            SystemClock.now() >= deadline,
            "woke at {:?}, before the deadline {deadline:?}",
            SystemClock.now()
        );
    }

    #[test]
    fn without_a_watched_directory_the_guard_falls_back_to_the_interval() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sub = dir.path().join("gone");
        std::fs::create_dir(&sub).expect("mkdir");
        let (reader, _writer) = pipe();
        let mut waiter = Waiter::new(&sub.join("data.pgbaton-fence"), Some(reader));
        assert!(waiter.watching_agent());
        std::fs::remove_dir(&sub).expect("rmdir");
        waiter.wait(NextLook::Change);
        assert!(
            !waiter.watching_agent(),
            "the watch is gone: record changes are only seen by looking"
        );
        let missing = Waiter::new(&dir.path().join("nowhere").join("data.pgbaton-fence"), None);
        assert!(!missing.watching_agent());
    }
}
