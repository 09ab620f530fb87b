//! The guard's rule ([`guard_step`]) and loop ([`run_guard`]); the module docs of the crate
//! say what it guards and why.

use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_core::{Clock, Mono};
use baton_vip::{NetlinkVip, Vip, VipAddress, VipError};
use nix::sys::signal::kill;
use nix::unistd::Pid;
use tracing::{error, info, warn};

use crate::clock::SystemClock;
use crate::record::{FenceFile, FenceRecord, beside_data_dir};
use crate::wake::{Waiter, agent_pipe_from_stdin, next_look};

/// How often the guard reads the record where no event tells it that something changed
/// (`crate::wake`: once the deadline has passed, or without inotify or the agent's pipe).
pub const GUARD_INTERVAL: Duration = Duration::from_millis(100);

/// How long the guard waits for the killed processes to be gone.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one look at (or removal of) the floating IP may take, so that a hung netlink
/// socket never holds up the next check of PostgreSQL.
const NETLINK_TIMEOUT: Duration = Duration::from_secs(1);

/// The marker the guard's command line carries, so a PID from the guard file is only
/// signalled when it still is a guard (PIDs are reused).
pub const GUARD_ARG: &str = "fence-guard";

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

/// Whether the floating IP must be off this host: the recorded deadline has passed (the
/// guard fences now, or did: the agent has neither renewed nor cleared the record since, so it
/// is still frozen or dead, and its own VIP task, which drops the address at that same
/// deadline, cannot), or the agent is gone (no live agent holds the address; the next one
/// removes a leftover at start too).
pub fn guard_clears_address(v: GuardView) -> bool {
    v.deadline.is_some_and(|d| v.now >= d) || guard_step(v) == GuardStep::Exit
}

/// The floating IP the guard keeps off the host for an agent that cannot: the agent's `vip`
/// section, passed on the guard's command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuardVip {
    pub address: VipAddress,
    pub interface: String,
}

impl GuardVip {
    /// From the guard's `--vip` and `--vip-interface` arguments; the error names the argument.
    pub fn parse(address: &str, interface: &str) -> Result<GuardVip, String> {
        let address = address
            .parse::<VipAddress>()
            .map_err(|e| format!("--vip: {e}"))?;
        if interface.is_empty() {
            return Err("--vip-interface: empty interface name".to_owned());
        }
        Ok(GuardVip {
            address,
            interface: interface.to_owned(),
        })
    }

    /// The arguments that give it to the guard process.
    pub fn args(&self) -> [String; 4] {
        [
            "--vip".to_owned(),
            self.address.to_string(),
            "--vip-interface".to_owned(),
            self.interface.clone(),
        ]
    }
}

/// Takes the address off the interface if it is there: `Ok(true)` when it was removed,
/// `Ok(false)` when it was not there. Never adds anything.
pub async fn clear_address(vip: &impl Vip) -> Result<bool, VipError> {
    if !vip.is_present().await? {
        return Ok(false);
    }
    vip.remove().await?;
    Ok(true)
}

/// The guard's hold on the floating IP: a small runtime for netlink and the socket, both
/// made on first use (a guard that never fences never opens one).
struct AddressGuard {
    vip: GuardVip,
    rt: Option<tokio::runtime::Runtime>,
    netlink: Option<NetlinkVip>,
    /// The last failure, so a persisting one is logged once.
    last_error: Option<String>,
}

impl AddressGuard {
    fn new(vip: GuardVip) -> AddressGuard {
        AddressGuard {
            vip,
            rt: None,
            netlink: None,
            last_error: None,
        }
    }

    /// Make sure the address is not on the interface; failures are logged (once per
    /// distinct message) and tried again at the next check.
    fn clear(&mut self, why: &str) {
        match self.try_clear() {
            Ok(removed) => {
                if removed {
                    warn!(
                        address = %self.vip.address,
                        interface = self.vip.interface,
                        "fence guard: removed the floating IP from this host: {why}"
                    );
                } else if self.last_error.is_some() {
                    info!(
                        address = %self.vip.address,
                        interface = self.vip.interface,
                        "fence guard: the floating IP is off this host"
                    );
                }
                self.last_error = None;
            }
            Err(e) => {
                let line = format!(
                    "fence guard: failed to remove the floating IP {} from {}: {e}",
                    self.vip.address, self.vip.interface
                );
                if self.last_error.as_deref() != Some(line.as_str()) {
                    error!("{line}");
                    self.last_error = Some(line);
                }
            }
        }
    }

    fn try_clear(&mut self) -> Result<bool, String> {
        if self.rt.is_none() {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("start a runtime for netlink: {e}"))?;
            self.rt = Some(rt);
        }
        let Some(rt) = self.rt.as_ref() else {
            return Err("no runtime for netlink".to_owned());
        };
        let vip = &self.vip;
        if self.netlink.is_none() {
            // Removing needs CAP_NET_ADMIN only (no announcements: `false`).
            let opened = rt.block_on(async {
                tokio::time::timeout(
                    NETLINK_TIMEOUT,
                    NetlinkVip::new(vip.address, &vip.interface, false),
                )
                .await
            });
            match opened {
                Ok(Ok(netlink)) => self.netlink = Some(netlink),
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err(format!("no netlink answer within {NETLINK_TIMEOUT:?}")),
            }
        }
        let Some(netlink) = self.netlink.as_ref() else {
            return Err("no netlink socket".to_owned());
        };
        match rt
            .block_on(async { tokio::time::timeout(NETLINK_TIMEOUT, clear_address(netlink)).await })
        {
            Ok(Ok(removed)) => Ok(removed),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => {
                // A fresh socket next time.
                self.netlink = None;
                Err(format!("no netlink answer within {NETLINK_TIMEOUT:?}"))
            }
        }
    }
}

/// The file naming the guard process of the member whose data directory is `data_dir`.
pub fn guard_pid_file(data_dir: &Path) -> PathBuf {
    beside_data_dir(data_dir, ".pgbaton-guard")
}

/// The guard process (`pgbaton-fence-guard fence-guard --data-dir D --agent-pid P [--vip A/L
/// --vip-interface I]`, or the same arguments to `pgbaton`): runs until [`GuardStep::Exit`].
pub fn run_guard(data_dir: &Path, agent_pid: i32, vip: Option<GuardVip>) {
    let record = FenceFile::beside(data_dir);
    let clock = SystemClock;
    info!(
        data_dir = %data_dir.display(),
        agent_pid,
        vip = vip.as_ref().map(|v| format!("{} on {}", v.address, v.interface)),
        "fence guard started"
    );
    let mut address = vip.map(AddressGuard::new);
    let mut fenced_for = None;
    let mut waiter = Waiter::new(record.path(), agent_pipe_from_stdin());
    loop {
        let view = GuardView::look(
            record.load(),
            clock.now(),
            kill(Pid::from_raw(agent_pid), None).is_ok(),
            || runs_as_primary(data_dir),
        );
        let step = guard_step(view);
        match step {
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
            GuardStep::Wait | GuardStep::Exit => {}
        }
        if let Some(address) = address.as_mut()
            && guard_clears_address(view)
        {
            address.clear(if step == GuardStep::Exit {
                "the agent is gone"
            } else {
                "the fencing deadline passed and the agent is frozen or dead"
            });
        }
        if step == GuardStep::Exit {
            info!("fence guard: the agent is gone and no primary is left to guard; exiting");
            return;
        }
        waiter.wait(next_look(view, waiter.watching_agent()));
    }
}

/// Some process of `data_dir` runs, and not as a standby (PostgreSQL 12+ runs as a standby
/// exactly while `standby.signal` exists; promotion removes it).
fn runs_as_primary(data_dir: &Path) -> bool {
    !data_dir.join("standby.signal").exists() && !baton_pg::data_dir_pids(data_dir).is_empty()
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
    fn the_floating_ip_goes_with_the_fence_and_stays_off_while_the_agent_is_frozen_or_dead() {
        for agent_alive in [true, false] {
            let fence = view(Some(1000), 1000, true, agent_alive);
            assert_eq!(guard_step(fence), GuardStep::Fence);
            assert!(
                guard_clears_address(fence),
                "removed when PostgreSQL is killed (agent alive: {agent_alive})"
            );
            assert!(
                guard_clears_address(view(Some(1000), 1100, false, agent_alive)),
                "and at every later check while the record is not renewed (agent alive: \
                 {agent_alive})"
            );
        }
        assert!(
            guard_clears_address(view(None, 5000, false, false)),
            "the agent is gone: nothing on this host holds the address"
        );
    }

    #[test]
    fn the_floating_ip_stays_while_the_record_protects_the_primary() {
        for agent_alive in [true, false] {
            assert!(
                !guard_clears_address(view(Some(1000), 999, true, agent_alive)),
                "before the deadline the lease still protects the primary and its address"
            );
        }
        assert!(
            !guard_clears_address(view(None, 5000, false, true)),
            "a live agent without a record (a replica, or it cleared the record) decides"
        );
    }

    /// The interface, for [`clear_address`].
    #[derive(Default)]
    struct FakeVip {
        present: std::sync::atomic::AtomicBool,
        calls: std::sync::Mutex<Vec<&'static str>>,
    }

    impl FakeVip {
        fn call(&self, what: &'static str) {
            self.calls.lock().expect("lock").push(what);
        }
    }

    impl Vip for FakeVip {
        async fn is_present(&self) -> Result<bool, VipError> {
            self.call("is_present");
            Ok(self.present.load(std::sync::atomic::Ordering::SeqCst))
        }
        async fn add(&self) -> Result<(), VipError> {
            self.call("add");
            self.present
                .store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
        async fn remove(&self) -> Result<(), VipError> {
            self.call("remove");
            self.present
                .store(false, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
        async fn announce(&self) -> Result<(), VipError> {
            self.call("announce");
            Ok(())
        }
    }

    #[tokio::test]
    async fn the_guard_removes_the_address_only_when_it_is_there_and_never_adds_it() {
        let vip = FakeVip::default();
        assert!(!clear_address(&vip).await.expect("clear"), "not there");
        assert_eq!(*vip.calls.lock().expect("lock"), ["is_present"]);
        vip.present.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(clear_address(&vip).await.expect("clear"), "removed");
        assert!(!vip.present.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(
            *vip.calls.lock().expect("lock"),
            ["is_present", "is_present", "remove"]
        );
    }

    #[test]
    fn the_guard_gets_the_address_from_its_command_line() {
        let vip = GuardVip {
            address: "10.0.0.100/24".parse().expect("valid"),
            interface: "eth0".to_owned(),
        };
        let args = vip.args();
        assert_eq!(args, ["--vip", "10.0.0.100/24", "--vip-interface", "eth0"]);
        assert_eq!(GuardVip::parse(&args[1], &args[3]), Ok(vip));
        assert_eq!(
            GuardVip::parse("10.0.0.300/24", "eth0"),
            Err("--vip: \"10.0.0.300\" is not an IP address".to_owned())
        );
        assert_eq!(
            GuardVip::parse("10.0.0.100/24", ""),
            Err("--vip-interface: empty interface name".to_owned())
        );
    }

    #[test]
    fn the_guard_file_sits_beside_the_data_directory() {
        assert_eq!(
            guard_pid_file(Path::new("/var/lib/pg/15/main")),
            PathBuf::from("/var/lib/pg/15/main.pgbaton-guard")
        );
    }
}
