//! The watchdog (Patroni's `watchdog` section): a device that resets the host unless it is
//! kicked in time, so that a leader whose agent cannot run any more (a frozen host, a hung
//! process) is gone before its lease can expire in etcd and another member promotes.
//!
//! - **Armed** before this member takes the leader role: `decide` puts `ArmWatchdog` ahead of
//!   the actions that take the key, promote, or start a primary; the HA loop performs it with
//!   [`Watchdog::arm_for_leading`] (open, `WDIOC_SETTIMEOUT`, verified with
//!   `WDIOC_GETTIMEOUT`). The timeout is Patroni's: `ttl - safety_margin` (`safety_margin:
//!   -1`: `ttl / 2`). With `watchdog.mode: required` a device that cannot be armed stops the
//!   action list (no leader role); with `automatic` it is logged and the member leads without
//!   one. A failure is remembered until the agent restarts (Patroni: until the configuration
//!   changes), and with `required` reported as `watchdog_failed` in `/patroni`, so that the
//!   other members take over.
//! - **Kicked** at every acknowledged lease renewal, by [`run_watchdog`] following the lease
//!   keeper's [`LeaseState`] (not the HA loop): the kick comes right after etcd confirmed the
//!   lease, so the device fires `timeout` after the last confirmation, `safety_margin` before
//!   the lease can expire, when the renewals stop.
//! - **Disarmed** with the magic close (`V`, then close) when the HA loop no longer leads (a
//!   clean demotion, a hand-over, a lost race, a failed bootstrap: the [`FenceSignal`] turns
//!   `leading: false` at the end of the action list; a progress publish inside an action, such
//!   as a bootstrap's "initializing new cluster", keeps the `leading: true` that
//!   `ArmWatchdog` raised, so a bootstrap is armed once, as Patroni arms once before it takes
//!   the leader key),
//!   when PostgreSQL is gone after the fencing deadline passed (the fencer stopped it), and
//!   when the agent exits.
//!
//! The device is behind [`Device`]: [`LinuxDevice`] (the `WDIOC_*` ioctls through nix) and
//! [`EventFile`] (`watchdog.driver: testing`: every operation written as a line to a regular
//! file, for test harnesses; it never resets anything), so the state machine is tested with a
//! fake device.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baton_config::WatchdogDriver;
use baton_core::{Clock, LeaseState, Mono, WatchdogMode, WatchdogState};
use baton_pg::Postgres;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::fence::FenceSignal;
use crate::lease::{fence_deadline, keepalive_interval};

/// The operations of a Linux watchdog device.
pub trait Device: Send {
    /// Open the device. From now on it resets the host unless kicked or magic-closed.
    fn open(&mut self) -> io::Result<()>;
    /// `WDIOC_SETTIMEOUT`.
    fn set_timeout(&mut self, secs: u32) -> io::Result<()>;
    /// `WDIOC_GETTIMEOUT`: the timeout in effect.
    fn timeout(&mut self) -> io::Result<u32>;
    /// `WDIOC_KEEPALIVE`: restart the timer.
    fn keepalive(&mut self) -> io::Result<()>;
    /// Write the magic character `V`, then close: a driver with magic close stops its timer.
    fn magic_close(&mut self) -> io::Result<()>;
    /// Whether opening can be expected to work (Patroni's `is_healthy`: the device exists and
    /// is writable), without opening it.
    fn usable(&self) -> bool;
    fn describe(&self) -> String;
}

// linux/watchdog.h
const WATCHDOG_IOCTL_BASE: u8 = b'W';
nix::ioctl_read!(wdioc_keepalive, WATCHDOG_IOCTL_BASE, 5, nix::libc::c_int);
nix::ioctl_readwrite!(wdioc_settimeout, WATCHDOG_IOCTL_BASE, 6, nix::libc::c_int);
nix::ioctl_read!(wdioc_gettimeout, WATCHDOG_IOCTL_BASE, 7, nix::libc::c_int);

/// A Linux watchdog device (`/dev/watchdog`, softdog or hardware).
pub struct LinuxDevice {
    path: PathBuf,
    file: Option<File>,
}

impl LinuxDevice {
    pub fn new(path: PathBuf) -> LinuxDevice {
        LinuxDevice { path, file: None }
    }

    fn fd(&self) -> io::Result<std::os::fd::RawFd> {
        self.file
            .as_ref()
            .map(AsRawFd::as_raw_fd)
            .ok_or_else(|| io::Error::other("the watchdog device is not open"))
    }
}

impl Device for LinuxDevice {
    fn open(&mut self) -> io::Result<()> {
        let file = std::fs::OpenOptions::new().write(true).open(&self.path)?;
        if !file.metadata()?.file_type().is_char_device() {
            return Err(io::Error::other(
                "not a character device (watchdog.driver: testing is for test files)",
            ));
        }
        self.file = Some(file);
        Ok(())
    }

    #[allow(unsafe_code)]
    fn set_timeout(&mut self, secs: u32) -> io::Result<()> {
        let mut value = nix::libc::c_int::try_from(secs).map_err(io::Error::other)?;
        // SAFETY: the fd is open; the ioctl reads and writes one c_int we own.
        unsafe { wdioc_settimeout(self.fd()?, &mut value) }.map_err(io::Error::from)?;
        Ok(())
    }

    #[allow(unsafe_code)]
    fn timeout(&mut self) -> io::Result<u32> {
        let mut value: nix::libc::c_int = 0;
        // SAFETY: the fd is open; the ioctl writes one c_int we own.
        unsafe { wdioc_gettimeout(self.fd()?, &mut value) }.map_err(io::Error::from)?;
        u32::try_from(value).map_err(io::Error::other)
    }

    #[allow(unsafe_code)]
    fn keepalive(&mut self) -> io::Result<()> {
        let mut dummy: nix::libc::c_int = 0;
        // SAFETY: the fd is open; the ioctl ignores its argument (one c_int we own).
        unsafe { wdioc_keepalive(self.fd()?, &mut dummy) }.map_err(io::Error::from)?;
        Ok(())
    }

    fn magic_close(&mut self) -> io::Result<()> {
        if let Some(mut file) = self.file.take() {
            file.write_all(b"V")?;
            drop(file);
        }
        Ok(())
    }

    fn usable(&self) -> bool {
        nix::unistd::access(&self.path, nix::unistd::AccessFlags::W_OK).is_ok()
    }

    fn describe(&self) -> String {
        format!("Linux watchdog device {}", self.path.display())
    }
}

/// `watchdog.driver: testing`: a test double that writes each operation as a line
/// `<unix ms> <event>` to a regular file (`open`, `set_timeout N`, `keepalive`,
/// `magic_close`). It refuses a character device, so a real watchdog is never written to
/// by it. Nothing resets the host: for test harnesses only.
pub struct EventFile {
    path: PathBuf,
    open: bool,
    timeout: u32,
}

impl EventFile {
    pub fn new(path: PathBuf) -> EventFile {
        EventFile {
            path,
            open: false,
            timeout: 0,
        }
    }

    fn event(&self, what: &str) -> io::Result<()> {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let mut f = std::fs::OpenOptions::new().append(true).open(&self.path)?;
        writeln!(f, "{ms} {what}")
    }

    fn is_regular(path: &Path) -> bool {
        std::fs::metadata(path).is_ok_and(|m| m.file_type().is_file())
    }
}

impl Device for EventFile {
    fn open(&mut self) -> io::Result<()> {
        if !EventFile::is_regular(&self.path) {
            return Err(io::Error::other(
                "watchdog.driver testing needs an existing regular file as watchdog.device",
            ));
        }
        self.event("open")?;
        self.open = true;
        Ok(())
    }

    fn set_timeout(&mut self, secs: u32) -> io::Result<()> {
        self.event(&format!("set_timeout {secs}"))?;
        self.timeout = secs;
        Ok(())
    }

    fn timeout(&mut self) -> io::Result<u32> {
        Ok(self.timeout)
    }

    fn keepalive(&mut self) -> io::Result<()> {
        self.event("keepalive")
    }

    fn magic_close(&mut self) -> io::Result<()> {
        if std::mem::take(&mut self.open) {
            self.event("magic_close")?;
        }
        Ok(())
    }

    fn usable(&self) -> bool {
        EventFile::is_regular(&self.path)
    }

    fn describe(&self) -> String {
        format!(
            "test watchdog (watchdog.driver: testing) writing to {}; it never resets this host",
            self.path.display()
        )
    }
}

/// The device timeout for a lease of `ttl`: Patroni's `ttl - safety_margin`, `ttl / 2` for a
/// margin of `-1`; `None` when that is not a usable number of seconds (1 to 65535).
pub fn device_timeout(ttl: Duration, safety_margin: i64) -> Option<u32> {
    let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
    let t = if safety_margin == -1 {
        ttl / 2
    } else {
        ttl.saturating_sub(safety_margin)
    };
    u32::try_from(t).ok().filter(|t| (1..0xFFFF).contains(t))
}

struct Inner {
    device: Box<dyn Device>,
    /// The timeout in effect while armed.
    armed: Option<u32>,
    /// Why arming failed; sticky until the agent restarts.
    failed: Option<String>,
    /// The last kick error, logged once.
    kick_error: Option<String>,
}

/// The watchdog state machine (arm, kick, disarm), shared by the HA loop and [`run_watchdog`].
pub struct Watchdog {
    mode: WatchdogMode,
    safety_margin: i64,
    inner: Mutex<Inner>,
}

impl Watchdog {
    pub fn new(mode: WatchdogMode, safety_margin: i64, device: Box<dyn Device>) -> Watchdog {
        Watchdog {
            mode,
            safety_margin,
            inner: Mutex::new(Inner {
                device,
                armed: None,
                failed: None,
                kick_error: None,
            }),
        }
    }

    /// From the `watchdog` section. Opens nothing.
    pub fn from_config(config: &baton_config::Watchdog) -> Watchdog {
        let device: Box<dyn Device> = match config.driver {
            WatchdogDriver::Default => Box::new(LinuxDevice::new(config.device.clone())),
            WatchdogDriver::Testing => Box::new(EventFile::new(config.device.clone())),
        };
        Watchdog::new(config.mode, config.safety_margin, device)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn mode(&self) -> WatchdogMode {
        self.mode
    }

    /// What `decide` sees.
    pub fn state(&self) -> WatchdogState {
        let inner = self.lock();
        let armed = inner.armed.is_some();
        WatchdogState {
            armed,
            failed: inner.failed.is_some()
                || (!armed && self.mode != WatchdogMode::Off && !inner.device.usable()),
        }
    }

    /// `/patroni`'s `watchdog_failed` (Patroni: `not watchdog.is_healthy`, which only
    /// `required` mode can make false).
    pub fn watchdog_failed(&self) -> bool {
        let s = self.state();
        self.mode == WatchdogMode::Required && s.failed && !s.armed
    }

    /// Open the device, set its timeout for `ttl` and check it. Already armed: nothing to do.
    pub fn arm(&self, ttl: Duration) -> Result<u32, String> {
        let mut inner = self.lock();
        if let Some(t) = inner.armed {
            return Ok(t);
        }
        if let Some(why) = &inner.failed {
            return Err(why.clone());
        }
        let result = arm_device(inner.device.as_mut(), ttl, self.safety_margin);
        match &result {
            Ok(t) => {
                inner.armed = Some(*t);
                inner.kick_error = None;
                info!(
                    timeout = t,
                    "{} activated with {t} second timeout",
                    inner.device.describe()
                );
                let fence_after = Duration::from_millis(fence_deadline(Mono(0), ttl).as_millis());
                if Duration::from_secs(u64::from(*t)) < fence_after + Duration::from_secs(1) {
                    warn!(
                        "the watchdog's {t} s timeout ends less than 1 s after the fencing \
                         deadline ({fence_after:?} after a renewal): if this agent cannot renew \
                         its lease (an etcd outage), the host may reset before the fencer has \
                         stopped PostgreSQL; a smaller watchdog.safety_margin leaves the fencer \
                         more time"
                    );
                }
            }
            Err(why) => {
                inner.failed = Some(why.clone());
            }
        }
        result
    }

    /// `ArmWatchdog`: with `required` a failure is an error (the action list stops: no leader
    /// role); with `automatic` it is logged and the member goes on without a watchdog.
    pub fn arm_for_leading(&self, ttl: Duration) -> anyhow::Result<()> {
        if self.mode == WatchdogMode::Off {
            return Ok(());
        }
        let was_failed = self.lock().failed.is_some();
        match self.arm(ttl) {
            Ok(_) => Ok(()),
            Err(why) if self.mode == WatchdogMode::Required => {
                anyhow::bail!(
                    "watchdog.mode is required and the watchdog could not be armed: {why}"
                )
            }
            Err(why) => {
                if !was_failed {
                    warn!(
                        "could not activate the watchdog: {why}; leading without one (watchdog.mode: automatic)"
                    );
                }
                Ok(())
            }
        }
    }

    /// Restart the device's timer (at a confirmed lease renewal). Returns whether it was kicked.
    pub fn kick(&self) -> bool {
        let mut inner = self.lock();
        if inner.armed.is_none() {
            return false;
        }
        match inner.device.keepalive() {
            Ok(()) => {
                if inner.kick_error.take().is_some() {
                    info!("watchdog keepalive works again");
                }
                true
            }
            Err(e) => {
                let line = e.to_string();
                if inner.kick_error.as_deref() != Some(line.as_str()) {
                    error!("could not send the watchdog keepalive: {line}");
                    inner.kick_error = Some(line);
                }
                false
            }
        }
    }

    /// Magic close, when armed. Returns whether it was armed.
    pub fn disarm(&self, why: &str) -> bool {
        let mut inner = self.lock();
        if inner.armed.take().is_none() {
            return false;
        }
        match inner.device.magic_close() {
            Ok(()) => info!("watchdog disarmed: {why}"),
            Err(e) => error!("error while disarming the watchdog ({why}): {e}"),
        }
        true
    }
}

/// What `decide` sees for an agent with `watchdog` (none: the simulator, or an agent built
/// without one: nothing can be armed).
pub fn state_of(watchdog: Option<&Watchdog>) -> WatchdogState {
    watchdog.map_or(
        WatchdogState {
            armed: false,
            failed: true,
        },
        Watchdog::state,
    )
}

/// `/patroni`'s `watchdog_failed` for an agent with `watchdog` in `mode`.
pub fn watchdog_failed(watchdog: Option<&Watchdog>, mode: WatchdogMode) -> bool {
    match watchdog {
        Some(wd) => wd.watchdog_failed(),
        None => mode == WatchdogMode::Required,
    }
}

/// The `ArmWatchdog` action for an agent with `watchdog` in `mode` ([`Watchdog::arm_for_leading`]).
pub fn arm(watchdog: Option<&Watchdog>, mode: WatchdogMode, ttl: Duration) -> anyhow::Result<()> {
    match watchdog {
        Some(wd) => wd.arm_for_leading(ttl),
        None if mode == WatchdogMode::Required => {
            anyhow::bail!("watchdog.mode is required and this agent has no watchdog device")
        }
        None => Ok(()),
    }
}

fn arm_device(device: &mut dyn Device, ttl: Duration, safety_margin: i64) -> Result<u32, String> {
    let Some(timeout) = device_timeout(ttl, safety_margin) else {
        return Err(format!(
            "no usable timeout: ttl {}s minus watchdog.safety_margin {safety_margin}",
            ttl.as_secs()
        ));
    };
    // The device is kicked at every lease renewal: a timeout shorter than the time between
    // two renewals would reset a healthy leader.
    let interval = keepalive_interval(ttl);
    if Duration::from_secs(u64::from(timeout)) <= interval {
        return Err(format!(
            "a {timeout} s timeout is not longer than the {interval:?} between lease renewals, \
             which kick it"
        ));
    }
    let describe = device.describe();
    device
        .open()
        .map_err(|e| format!("can't open {describe}: {e}"))?;
    let checked = device
        .set_timeout(timeout)
        .and_then(|()| device.timeout())
        .map_err(|e| format!("can't set the timeout of {describe}: {e}"))
        .and_then(|actual| {
            if actual > timeout {
                Err(format!(
                    "a safe watchdog timeout {timeout} could not be configured; the device's timeout is {actual}"
                ))
            } else if Duration::from_secs(u64::from(actual)) <= interval {
                Err(format!(
                    "the device's timeout {actual} s is not longer than the {interval:?} between lease renewals"
                ))
            } else {
                Ok(actual)
            }
        });
    if checked.is_err()
        && let Err(e) = device.magic_close()
    {
        error!("error while closing {describe}: {e}");
    }
    checked
}

/// Kicks the watchdog at every confirmed lease renewal and disarms it when the agent stops
/// leading, when PostgreSQL is gone after the fencing deadline passed, and when the agent
/// exits (the [`FenceSignal`] sender is dropped). Kept out of the HA loop: a loop busy with a
/// long action still kicks, and a process that cannot run does not.
pub async fn run_watchdog<P: Postgres>(
    watchdog: Arc<Watchdog>,
    clock: Arc<dyn Clock>,
    mut lease: watch::Receiver<LeaseState>,
    mut signal: watch::Receiver<FenceSignal>,
    pg: Arc<P>,
) {
    /// How often the postmaster is looked at between the fencing deadline and its end.
    const FENCED_POLL: Duration = Duration::from_millis(50);
    let mut lease_open = true;
    loop {
        let state = *lease.borrow();
        let now = clock.now();
        let past_deadline = watchdog.state().armed && !state.valid_at(now);
        let wait = match state.fence_deadline {
            _ if past_deadline => FENCED_POLL,
            Some(d) if d > now => crate::clock::until(clock.as_ref(), d),
            _ => Duration::from_secs(3600),
        };
        tokio::select! {
            biased;
            changed = signal.changed() => {
                if changed.is_err() {
                    watchdog.disarm("the agent stopped");
                    return;
                }
                if !signal.borrow_and_update().leading {
                    watchdog.disarm("no longer leading");
                }
            }
            changed = lease.changed(), if lease_open => {
                if changed.is_err() {
                    lease_open = false;
                    continue;
                }
                let state = *lease.borrow_and_update();
                if state.valid_at(clock.now()) {
                    watchdog.kick();
                }
            }
            _ = tokio::time::sleep(wait) => {
                if past_deadline && !pg.is_alive().await {
                    watchdog.disarm("PostgreSQL is stopped after the fencing deadline passed");
                }
            }
        }
    }
}

/// A fake [`Device`] for tests: records every call, fails what it is told to.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct FakeDevice {
    pub(crate) log: Arc<Mutex<String>>,
    pub(crate) missing: bool,
    pub(crate) fail_open: bool,
    /// `WDIOC_GETTIMEOUT` answers this instead of the timeout set.
    pub(crate) reports: Option<u32>,
    timeout: Arc<Mutex<u32>>,
}

#[cfg(test)]
impl FakeDevice {
    pub(crate) fn events(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn record(&self, what: &str) {
        use std::fmt::Write as _;
        let _ = writeln!(self.log.lock().unwrap(), "{what}");
    }
}

#[cfg(test)]
impl Device for FakeDevice {
    fn open(&mut self) -> io::Result<()> {
        if self.missing || self.fail_open {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        self.record("open");
        Ok(())
    }
    fn set_timeout(&mut self, secs: u32) -> io::Result<()> {
        self.record(&format!("set_timeout {secs}"));
        *self.timeout.lock().unwrap() = secs;
        Ok(())
    }
    fn timeout(&mut self) -> io::Result<u32> {
        Ok(self.reports.unwrap_or(*self.timeout.lock().unwrap()))
    }
    fn keepalive(&mut self) -> io::Result<()> {
        self.record("keepalive");
        Ok(())
    }
    fn magic_close(&mut self) -> io::Result<()> {
        self.record("magic_close");
        Ok(())
    }
    fn usable(&self) -> bool {
        !self.missing
    }
    fn describe(&self) -> String {
        "fake watchdog".into()
    }
}

#[cfg(test)]
mod tests;
