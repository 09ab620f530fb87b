//! The watchdog state machine over a fake device, and [`run_watchdog`] in paused tokio time.

use std::sync::Arc;
use std::time::Duration;

use baton_core::{Clock, LeaseState, Mono, PgState, WatchdogMode, WatchdogState};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Device, EventFile, FakeDevice, LinuxDevice, Watchdog, device_timeout, run_watchdog};
use crate::fence::FenceSignal;
use crate::lease::keepalive_interval;
use crate::tests::{FakePg, TokioClock};

const TTL: Duration = Duration::from_secs(30);

fn watchdog(mode: WatchdogMode, dev: &FakeDevice) -> Watchdog {
    Watchdog::new(mode, 5, Box::new(dev.clone()))
}

#[test]
fn arming_opens_sets_and_verifies_the_timeout_once() {
    let dev = FakeDevice::default();
    let wd = watchdog(WatchdogMode::Required, &dev);
    assert_eq!(
        wd.state(),
        WatchdogState {
            armed: false,
            failed: false
        }
    );
    wd.arm_for_leading(TTL).expect("armed");
    assert_eq!(
        dev.events(),
        "open\nset_timeout 25\n",
        "ttl 30 - safety_margin 5"
    );
    assert!(wd.state().armed);
    wd.arm_for_leading(TTL).expect("still armed");
    assert_eq!(dev.events(), "open\nset_timeout 25\n", "armed once");
    assert!(!wd.watchdog_failed());
}

#[test]
fn safety_margin_minus_one_is_half_the_ttl() {
    let dev = FakeDevice::default();
    let wd = Watchdog::new(WatchdogMode::Automatic, -1, Box::new(dev.clone()));
    wd.arm(Duration::from_secs(31)).expect("armed");
    assert_eq!(dev.events(), "open\nset_timeout 15\n");
}

#[test]
fn required_mode_refuses_to_lead_without_a_device() {
    let dev = FakeDevice {
        missing: true,
        ..FakeDevice::default()
    };
    let wd = watchdog(WatchdogMode::Required, &dev);
    // Before any attempt: the device is not there (Patroni's is_healthy).
    assert!(wd.state().failed);
    assert!(wd.watchdog_failed(), "/patroni shows watchdog_failed");
    let err = wd
        .arm_for_leading(TTL)
        .expect_err("no leader role without it");
    assert!(
        format!("{err:#}").contains("watchdog.mode is required"),
        "{err:#}"
    );
    assert_eq!(dev.events(), "", "nothing was opened");
}

#[test]
fn automatic_mode_leads_without_a_device_and_does_not_retry() {
    let dev = FakeDevice {
        fail_open: true,
        ..FakeDevice::default()
    };
    let wd = watchdog(WatchdogMode::Automatic, &dev);
    assert!(!wd.state().failed, "the device looks usable");
    wd.arm_for_leading(TTL)
        .expect("automatic: leads without it");
    assert_eq!(
        wd.state(),
        WatchdogState {
            armed: false,
            failed: true
        },
        "the failure is remembered, so decide does not ask again"
    );
    assert!(!wd.watchdog_failed(), "only required mode reports it");
}

#[test]
fn a_device_that_keeps_a_longer_timeout_is_closed_and_refused() {
    let dev = FakeDevice {
        reports: Some(60),
        ..FakeDevice::default()
    };
    let wd = watchdog(WatchdogMode::Required, &dev);
    let err = wd
        .arm(TTL)
        .expect_err("60 s would fire after the lease expired");
    assert!(err.contains("safe watchdog timeout 25"), "{err}");
    assert_eq!(dev.events(), "open\nset_timeout 25\nmagic_close\n");
    assert!(wd.state().failed && !wd.state().armed);
}

#[test]
fn a_timeout_not_longer_than_the_renewal_interval_is_refused() {
    // ttl 10, margin 8: 2 s, and renewals (which kick) come every 2.5 s.
    let dev = FakeDevice::default();
    let wd = Watchdog::new(WatchdogMode::Required, 8, Box::new(dev.clone()));
    let err = wd.arm(Duration::from_secs(10)).expect_err("unsafe timing");
    assert!(err.contains("between lease renewals"), "{err}");
    assert_eq!(dev.events(), "", "refused before opening");
    // A margin as long as the ttl leaves no timeout at all.
    assert_eq!(device_timeout(Duration::from_secs(10), 10), None);
}

#[test]
fn kick_and_disarm_only_while_armed() {
    let dev = FakeDevice::default();
    let wd = watchdog(WatchdogMode::Automatic, &dev);
    assert!(!wd.kick(), "nothing to kick before arming");
    assert!(!wd.disarm("test"), "nothing to disarm");
    wd.arm(TTL).expect("armed");
    assert!(wd.kick());
    assert!(wd.disarm("demoted"));
    assert!(!wd.kick(), "no kick after the magic close");
    assert_eq!(
        dev.events(),
        "open\nset_timeout 25\nkeepalive\nmagic_close\n"
    );
    // Armed again for the next leadership term.
    wd.arm(TTL).expect("armed again");
    assert!(wd.state().armed);
}

/// The timing argument: the device is kicked right after etcd acknowledged a renewal sent at
/// `sent`, so when renewals stop it fires at `kick + timeout`. etcd counts the lease from when
/// it received the renewal (not before `sent`), so the lease expires no earlier than
/// `sent + ttl`: the host resets first whenever the kick follows the renewal by less than the
/// safety margin.
#[test]
fn without_kicks_the_device_fires_before_the_lease_can_expire() {
    for ttl_s in [5u64, 10, 20, 30, 60] {
        let ttl = Duration::from_secs(ttl_s);
        for margin in [-1i64, 1, 2, 3, 5] {
            let Some(timeout) = device_timeout(ttl, margin) else {
                continue;
            };
            let timeout = Duration::from_secs(u64::from(timeout));
            if timeout <= keepalive_interval(ttl) {
                continue; // refused at arming
            }
            let sent = Mono::from_millis(1_000_000);
            // A renewal answered within 200 ms, the kick right after it.
            let kick = sent + Duration::from_millis(200);
            let fires = kick + timeout;
            let lease_expires = sent + ttl;
            assert!(
                fires < lease_expires,
                "ttl {ttl_s} margin {margin}: fires at {fires:?}, lease expires at {lease_expires:?}"
            );
        }
    }
}

#[test]
fn the_test_driver_writes_events_and_never_touches_a_character_device() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("watchdog.events");
    let mut missing = EventFile::new(path.clone());
    assert!(!missing.usable());
    assert!(missing.open().is_err(), "the file must exist");
    std::fs::write(&path, "").expect("create");
    let mut dev = EventFile::new(path.clone());
    dev.open().expect("open");
    dev.set_timeout(25).expect("set");
    assert_eq!(dev.timeout().expect("get"), 25);
    dev.keepalive().expect("kick");
    dev.magic_close().expect("close");
    let text = std::fs::read_to_string(&path).expect("read");
    let events: Vec<&str> = text
        .lines()
        .map(|l| l.split_once(' ').expect("<ms> <event>").1)
        .collect();
    assert_eq!(
        events,
        ["open", "set_timeout 25", "keepalive", "magic_close"]
    );
    let mut null = EventFile::new("/dev/null".into());
    assert!(!null.usable());
    assert!(null.open().is_err(), "a character device is refused");
}

#[test]
fn the_linux_device_refuses_what_is_not_a_watchdog() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("watchdog");
    let mut dev = LinuxDevice::new(missing);
    assert!(!dev.usable());
    assert_eq!(
        dev.open().expect_err("missing").kind(),
        std::io::ErrorKind::NotFound
    );
    let file = dir.path().join("file");
    std::fs::write(&file, "").expect("create");
    let mut dev = LinuxDevice::new(file.clone());
    let err = dev.open().expect_err("a regular file is no device");
    assert!(err.to_string().contains("not a character device"), "{err}");
    assert_eq!(std::fs::read(&file).expect("read"), b"", "nothing written");
    // /dev/null is a character device without the watchdog ioctls: the real
    // WDIOC_SETTIMEOUT call fails (ENOTTY) and arming closes it again.
    let wd = Watchdog::new(
        WatchdogMode::Required,
        5,
        Box::new(LinuxDevice::new("/dev/null".into())),
    );
    let err = wd.arm(TTL).expect_err("not a watchdog");
    assert!(err.contains("can't set the timeout"), "{err}");
    assert!(wd.state().failed);
}

/// The task's inputs, and the senders a test drives them with.
struct Harness {
    lease: watch::Sender<LeaseState>,
    signal: Option<watch::Sender<FenceSignal>>,
    pg: Arc<FakePg>,
    task: tokio::task::JoinHandle<()>,
}

fn leading(leading: bool) -> FenceSignal {
    FenceSignal {
        failsafe_until: None,
        leading,
        confirmed: true,
    }
}

fn lease_until(ms: u64) -> LeaseState {
    LeaseState {
        id: Some(1),
        fence_deadline: Some(Mono::from_millis(ms)),
    }
}

fn start(wd: &Arc<Watchdog>, lease: LeaseState) -> Harness {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock(Instant::now()));
    let (lease_tx, lease_rx) = watch::channel(lease);
    let (signal_tx, signal_rx) = watch::channel(leading(true));
    let pg = Arc::new(FakePg::primary());
    let task = tokio::spawn(run_watchdog(
        wd.clone(),
        clock,
        lease_rx,
        signal_rx,
        pg.clone(),
    ));
    Harness {
        lease: lease_tx,
        signal: Some(signal_tx),
        pg,
        task,
    }
}

fn kicks(dev: &FakeDevice) -> usize {
    dev.events().lines().filter(|l| *l == "keepalive").count()
}

/// Let the task run (paused time: advances only while every task waits).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test(start_paused = true)]
async fn every_renewal_kicks_and_missing_renewals_let_it_fire() {
    let dev = FakeDevice::default();
    let wd = Arc::new(watchdog(WatchdogMode::Required, &dev));
    wd.arm_for_leading(TTL).expect("armed");
    let h = start(&wd, lease_until(24_000));
    settle().await;
    assert_eq!(kicks(&dev), 0, "no renewal yet");
    for i in 1..=4u64 {
        h.lease.send_replace(lease_until(24_000 + i * 7_500));
        settle().await;
        assert_eq!(kicks(&dev), i as usize, "one kick per renewal");
    }
    // The renewals stop: no kick, and PostgreSQL still runs, so it stays armed until the
    // device fires (25 s after the last kick, before the lease expires at ~30 s).
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(kicks(&dev), 4, "nothing kicks without a renewal");
    assert!(
        wd.state().armed,
        "armed while PostgreSQL may still be writable"
    );
    // A lost lease is no renewal either.
    h.lease.send_replace(LeaseState::default());
    settle().await;
    assert_eq!(kicks(&dev), 4);
    h.task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_clean_demotion_disarms_with_the_magic_close() {
    let dev = FakeDevice::default();
    let wd = Arc::new(watchdog(WatchdogMode::Required, &dev));
    wd.arm_for_leading(TTL).expect("armed");
    let h = start(&wd, lease_until(24_000));
    h.lease.send_replace(lease_until(31_500));
    settle().await;
    h.signal
        .as_ref()
        .expect("signal")
        .send_replace(leading(false));
    settle().await;
    assert!(!wd.state().armed);
    assert_eq!(
        dev.events(),
        "open\nset_timeout 25\nkeepalive\nmagic_close\n"
    );
    // Renewals after the demotion kick nothing.
    h.lease.send_replace(lease_until(39_000));
    settle().await;
    assert_eq!(kicks(&dev), 1);
    h.task.abort();
}

#[tokio::test(start_paused = true)]
async fn the_agent_exiting_disarms_and_ends_the_task() {
    let dev = FakeDevice::default();
    let wd = Arc::new(watchdog(WatchdogMode::Automatic, &dev));
    wd.arm_for_leading(TTL).expect("armed");
    let mut h = start(&wd, lease_until(24_000));
    settle().await;
    drop(h.signal.take());
    tokio::time::timeout(Duration::from_secs(5), h.task)
        .await
        .expect("the task ends")
        .expect("no panic");
    assert!(dev.events().ends_with("magic_close\n"), "{}", dev.events());
    drop(h.lease);
}

#[tokio::test(start_paused = true)]
async fn after_the_fencing_deadline_it_is_disarmed_once_postgres_is_gone() {
    let dev = FakeDevice::default();
    let wd = Arc::new(watchdog(WatchdogMode::Required, &dev));
    wd.arm_for_leading(TTL).expect("armed");
    let h = start(&wd, lease_until(5_000));
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(wd.state().armed, "PostgreSQL still runs past the deadline");
    // The fencer stops PostgreSQL: the watchdog has nothing left to protect.
    *h.pg.state.lock().expect("lock") = PgState::default();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!wd.state().armed);
    assert!(dev.events().ends_with("magic_close\n"), "{}", dev.events());
    h.task.abort();
}
