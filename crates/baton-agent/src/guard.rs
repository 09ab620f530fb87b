//! Starting and stopping the fence guard, a small process of its own that enforces the fencing
//! record when the agent cannot (frozen or killed): what it does, and its rule and loop, are in
//! `baton_guard` (re-exported here).
//!
//! The guard runs as `pgbaton-fence-guard`, a binary of its own installed beside `pgbaton`
//! (looked up next to the running executable): it maps a fraction of the agent's text, so it
//! costs a fraction of the resident memory. When that binary is missing or cannot be started,
//! the agent falls back to re-executing itself as `pgbaton fence-guard` (the same loop, the
//! same arguments) with a warning: an agent never runs without a guard because of a packaging
//! mistake. Either way the guard's command line is `<program> fence-guard --data-dir D
//! --agent-pid P [--vip A/L --vip-interface I]`, which is what a new agent checks before it
//! stops a previous agent's guard.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tracing::{info, warn};

pub use baton_guard::guard::{
    GUARD_ARG, GUARD_INTERVAL, GuardStep, GuardView, GuardVip, clear_address, guard_clears_address,
    guard_pid_file, guard_step, run_guard,
};

/// The file name of the separate guard binary, looked up in the directory of `pgbaton`.
pub const GUARD_BINARY: &str = "pgbaton-fence-guard";

/// The floating IP of the agent's `vip` section, as the guard takes it.
pub fn guard_vip(vip: &baton_config::Vip) -> Result<GuardVip, String> {
    let address = baton_vip::VipAddress::new(std::net::IpAddr::V4(vip.address), vip.prefix_len)
        .map_err(|e| format!("vip.address: {e}"))?;
    Ok(GuardVip {
        address,
        interface: vip.interface.clone(),
    })
}

/// Start the guard for `data_dir` (replacing a previous agent's) as a process of its own
/// group, given the floating IP when `vip` is configured; it reports to our stderr. `None`
/// (with a warning) when it cannot be started: the agent still runs, with its in-process
/// fencer only.
pub fn spawn_guard(data_dir: &Path, vip: Option<&baton_config::Vip>) -> Option<Child> {
    stop_previous_guard(data_dir);
    let vip = vip.and_then(|v| {
        guard_vip(v)
            .inspect_err(|e| {
                warn!("{e}; the fence guard will not remove the floating IP of a frozen agent")
            })
            .ok()
    });
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            warn!(
                "cannot start the fence guard (current executable: {e}); a frozen agent will not be fenced"
            );
            return None;
        }
    };
    let (child, _) = spawn_guard_beside(&exe, data_dir, vip.as_ref())?;
    let file = guard_pid_file(data_dir);
    if let Err(e) = std::fs::write(&file, format!("{}\n", child.id())) {
        warn!(
            path = %file.display(),
            "cannot record the fence guard's PID: {e}; the next agent will not replace this guard"
        );
    }
    Some(child)
}

/// Start the guard: `pgbaton-fence-guard` beside `exe` (the running `pgbaton`), else `exe`
/// itself (`pgbaton fence-guard`). Returns the child and the program that runs.
pub(crate) fn spawn_guard_beside(
    exe: &Path,
    data_dir: &Path,
    vip: Option<&GuardVip>,
) -> Option<(Child, PathBuf)> {
    let separate = exe.with_file_name(GUARD_BINARY);
    match start(&separate, data_dir, vip) {
        Ok(child) => return Some((child, separate)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => warn!(
            path = %separate.display(),
            "the fence guard binary is not installed beside pgbaton; running the built-in guard \
             (`pgbaton fence-guard`, the same loop in a larger process)"
        ),
        Err(e) => warn!(
            path = %separate.display(),
            "cannot start the fence guard binary: {e}; running the built-in guard \
             (`pgbaton fence-guard`, the same loop in a larger process)"
        ),
    }
    match start(exe, data_dir, vip) {
        Ok(child) => Some((child, exe.to_owned())),
        Err(e) => {
            warn!(
                exe = %exe.display(),
                "cannot start the fence guard: {e}; a frozen agent will not be fenced"
            );
            None
        }
    }
}

fn start(program: &Path, data_dir: &Path, vip: Option<&GuardVip>) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    Command::new(program)
        .arg(GUARD_ARG)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--agent-pid")
        .arg(std::process::id().to_string())
        .args(vip.into_iter().flat_map(GuardVip::args))
        // The liveness pipe (`baton_guard::wake`): we keep the other end (in the `Child`) until
        // we stop the guard; the kernel closes it when this process dies.
        .stdin(Stdio::piped())
        .process_group(0)
        .spawn()
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
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_guard_gets_the_configured_address_on_its_command_line() {
        let config = baton_config::Vip {
            address: std::net::Ipv4Addr::new(10, 0, 0, 100),
            prefix_len: 24,
            interface: "eth0".to_owned(),
            arp_count: 3,
            arp_interval: Duration::from_secs(1),
            reconcile_interval: Duration::from_secs(5),
        };
        let vip = guard_vip(&config).expect("valid");
        let args = vip.args();
        assert_eq!(args, ["--vip", "10.0.0.100/24", "--vip-interface", "eth0"]);
        assert_eq!(GuardVip::parse(&args[1], &args[3]), Ok(vip));
    }

    /// A stand-in program that writes its name and arguments to `ran` beside itself.
    fn script(dir: &Path, name: &str, mode: u32) {
        let path = dir.join(name);
        std::fs::write(
            &path,
            format!("#!/bin/sh\necho {name} \"$@\" > \"$(dirname \"$0\")/ran\"\n"),
        )
        .expect("write script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    /// Start the guard as the agent whose executable is `dir/pgbaton` does; what ran.
    fn run_guard_beside(dir: &Path) -> (PathBuf, String) {
        let vip = GuardVip::parse("10.0.0.100/24", "eth0").expect("valid");
        let (mut child, program) =
            spawn_guard_beside(&dir.join("pgbaton"), Path::new("/pg/data"), Some(&vip))
                .expect("a guard starts");
        assert!(child.wait().expect("wait").success());
        let ran = std::fs::read_to_string(dir.join("ran")).expect("the guard ran");
        std::fs::remove_file(dir.join("ran")).expect("remove");
        (program, ran)
    }

    #[test]
    fn the_agent_runs_the_guard_binary_beside_it_and_falls_back_to_itself() {
        let dir = tempfile::tempdir().expect("tempdir");
        script(dir.path(), "pgbaton", 0o755);
        let args = format!(
            "fence-guard --data-dir /pg/data --agent-pid {} --vip 10.0.0.100/24 --vip-interface eth0\n",
            std::process::id()
        );

        let (program, ran) = run_guard_beside(dir.path());
        assert_eq!(
            program,
            dir.path().join("pgbaton"),
            "no guard binary: fallback"
        );
        assert_eq!(ran, format!("pgbaton {args}"));

        script(dir.path(), GUARD_BINARY, 0o644);
        let (program, ran) = run_guard_beside(dir.path());
        assert_eq!(
            program,
            dir.path().join("pgbaton"),
            "a guard binary that cannot be executed: fallback"
        );
        assert_eq!(ran, format!("pgbaton {args}"));

        script(dir.path(), GUARD_BINARY, 0o755);
        let (program, ran) = run_guard_beside(dir.path());
        assert_eq!(
            program,
            dir.path().join(GUARD_BINARY),
            "the separate binary"
        );
        assert_eq!(
            ran,
            format!("{GUARD_BINARY} {args}"),
            "with the same arguments"
        );
    }
}
