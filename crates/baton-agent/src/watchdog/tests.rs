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

/// A PostgreSQL with an empty data directory whose `initdb` takes a while (in paused time) and
/// whose `start` makes it a running primary of a new cluster.
struct BootstrappingPg {
    state: std::sync::Mutex<PgState>,
    /// `initdb` fails (after its time).
    fail_initdb: bool,
}

impl baton_pg::Postgres for BootstrappingPg {
    async fn observe(&self) -> PgState {
        self.state.lock().expect("lock").clone()
    }
    async fn initdb(&self) -> Result<(), baton_pg::PgError> {
        // initdb takes seconds on a real host; the other tasks run meanwhile.
        tokio::time::sleep(Duration::from_secs(2)).await;
        if self.fail_initdb {
            return Err(baton_pg::PgError::Other("initdb failed (test)".into()));
        }
        self.state.lock().expect("lock").data_dir =
            baton_core::DataDir::Initialized(baton_core::ControlData {
                system_id: "7000000000000000001".into(),
                ..baton_core::ControlData::default()
            });
        Ok(())
    }
    async fn start(&self, _role: &baton_core::StartRole) -> Result<(), baton_pg::PgError> {
        let mut state = self.state.lock().expect("lock");
        state.process = baton_core::PgProcess::Running { pid: 1 };
        state.sql = Some(baton_core::PgSql {
            in_recovery: false,
            ..baton_core::PgSql::default()
        });
        Ok(())
    }
    async fn stop(&self, _mode: baton_core::StopMode) -> Result<(), baton_pg::PgError> {
        let mut state = self.state.lock().expect("lock");
        state.process = baton_core::PgProcess::default();
        state.sql = None;
        Ok(())
    }
    async fn promote(&self) -> Result<(), baton_pg::PgError> {
        Ok(())
    }
    async fn follow(&self, _upstream: &baton_core::Upstream) -> Result<bool, baton_pg::PgError> {
        Ok(false)
    }
    async fn clone_replica(
        &self,
        _upstream: &baton_core::Upstream,
    ) -> Result<(), baton_pg::PgError> {
        Ok(())
    }
    async fn rewind(&self, _upstream: &baton_core::Upstream) -> Result<(), baton_pg::PgError> {
        Ok(())
    }
    async fn reconfigure(
        &self,
        _parameters: &std::collections::BTreeMap<String, String>,
        _pg_hba: &[String],
    ) -> Result<baton_pg::Reconfigured, baton_pg::PgError> {
        Ok(baton_pg::Reconfigured::default())
    }
    async fn wipe_data_dir(&self) -> Result<(), baton_pg::PgError> {
        Ok(())
    }
    async fn create_roles(&self) -> Result<(), baton_pg::PgError> {
        Ok(())
    }
    async fn ensure_slots(&self, _slots: &[String]) -> Result<(), baton_pg::PgError> {
        Ok(())
    }
    async fn timeline_history(&self) -> Result<Vec<baton_core::HistoryLine>, baton_pg::PgError> {
        Ok(vec![])
    }
}

struct NoPeers;

impl crate::peers::Peers for NoPeers {
    async fn probe(
        &self,
        _view: &baton_core::ClusterView,
        _me: &baton_core::MemberName,
        _timeout: Duration,
    ) -> Vec<baton_core::PeerStatus> {
        Vec::new()
    }
}

const BOOTSTRAP_CONFIG: &str = "\
scope: batman
name: node1
restapi:
  listen: 127.0.0.1:8008
  connect_address: 127.0.0.1:8008
etcd3:
  host: 127.0.0.1:2379
bootstrap:
  dcs:
    ttl: 30
postgresql:
  listen: 127.0.0.1:5432
  connect_address: 127.0.0.1:5432
  data_dir: data/node1
  authentication:
    superuser:
      username: postgres
      password: patroni
    replication:
      username: replicator
      password: rep-pass
watchdog:
  mode: required
";

/// The real HA loop (`Agent`) of `node1` over an empty `MemDcs` and `pg`, with a required
/// watchdog on `dev` and its task following the agent's leading signal.
struct Bootstrap {
    agent: crate::ha::Agent<baton_dcs::MemDcs, BootstrappingPg, NoPeers>,
    dcs: Arc<baton_dcs::MemDcs>,
    keeper: crate::lease::LeaseKeeper<baton_dcs::MemDcs>,
    wd: Arc<Watchdog>,
    task: tokio::task::JoinHandle<()>,
}

async fn bootstrap(dev: &FakeDevice, fail_initdb: bool) -> Bootstrap {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock(Instant::now()));
    let scope = baton_dcs::DcsScope {
        namespace: "/service".into(),
        scope: "batman".into(),
    };
    let dcs = Arc::new(baton_dcs::MemDcs::new(scope, clock.clone()));
    let (mut keeper, mut lease_rx) =
        crate::lease::LeaseKeeper::new(dcs.clone(), clock.clone(), TTL);
    keeper.step().await;
    assert!(
        lease_rx.borrow_and_update().id.is_some(),
        "a lease was granted"
    );
    let config = baton_config::load_str(BOOTSTRAP_CONFIG, &|_| None)
        .expect("valid configuration")
        .config;
    let dynamic = config
        .bootstrap
        .as_ref()
        .expect("bootstrap section")
        .dcs
        .clone();
    let (leading_tx, _) = watch::channel(FenceSignal::default());
    let watchdog_signal = leading_tx.subscribe();
    let (snap_tx, _snap_rx) = watch::channel(Arc::new(baton_api::Snapshot::initial(
        "batman",
        baton_core::MemberName::new("node1".to_owned()).expect("name"),
        String::new(),
        String::new(),
    )));
    let pg = Arc::new(BootstrappingPg {
        state: std::sync::Mutex::new(PgState::default()),
        fail_initdb,
    });
    let io = crate::ha::AgentIo {
        dcs: dcs.clone(),
        pg: pg.clone(),
        peers: NoPeers,
        clock: clock.clone(),
    };
    let mut agent =
        crate::ha::Agent::new(io, config, dynamic, lease_rx.clone(), leading_tx, snap_tx)
            .expect("agent");
    let wd = Arc::new(watchdog(WatchdogMode::Required, dev));
    agent.set_watchdog(wd.clone());
    let task = tokio::spawn(run_watchdog(
        wd.clone(),
        clock,
        lease_rx,
        watchdog_signal,
        pg,
    ));
    Bootstrap {
        agent,
        dcs,
        keeper,
        wd,
        task,
    }
}

/// Issue 12.1: the real HA loop bootstraps a new cluster with `watchdog.mode: required`. The
/// device is armed once, before the race for the initialize key, and stays armed through the
/// bootstrap (initdb, start, the leader key) and the cycles after it; the clean shutdown
/// closes it. Before the fix, the bootstrap's "initializing new cluster" publish lowered the
/// leading signal and the watchdog task magic-closed the device in the middle of the
/// bootstrap (`open, set_timeout, magic_close`), to be armed again a cycle later.
#[tokio::test(start_paused = true)]
async fn a_bootstrap_arms_once_and_stays_armed_until_the_shutdown() {
    let dev = FakeDevice::default();
    let Bootstrap {
        mut agent,
        dcs,
        mut keeper,
        wd,
        task,
    } = bootstrap(&dev, false).await;

    // The bootstrap cycle: arm, race for initialize, then initdb, start and the leader key
    // beside the loop (a long action), and the cycle after it.
    agent.cycle().await;
    settle().await;
    while agent.long_action_running() {
        agent.long_action_done().await;
        agent.cycle().await;
        settle().await;
    }
    let view = baton_dcs::Dcs::read_cluster(dcs.as_ref())
        .await
        .expect("read");
    assert_eq!(
        view.leader_name().map(ToString::to_string).as_deref(),
        Some("node1"),
        "the bootstrap took the leader key"
    );
    assert_eq!(
        dev.events(),
        "open\nset_timeout 25\n",
        "armed before the bootstrap and not closed during it"
    );
    // A renewal kicks it; the next cycles lead with it armed and do not arm it again.
    tokio::time::advance(Duration::from_secs(5)).await;
    keeper.step().await;
    settle().await;
    for _ in 0..3 {
        agent.cycle().await;
        settle().await;
    }
    assert_eq!(dev.events(), "open\nset_timeout 25\nkeepalive\n");
    assert!(wd.state().armed);

    // A clean shutdown stops PostgreSQL, releases the key and closes the device.
    agent.shutdown().await;
    settle().await;
    assert!(!wd.state().armed);
    assert_eq!(
        dev.events(),
        "open\nset_timeout 25\nkeepalive\nmagic_close\n"
    );
    task.abort();
}

/// The other side of the same rule: a bootstrap that fails takes no leader role, so the
/// watchdog armed for it is closed by the next cycle.
#[tokio::test(start_paused = true)]
async fn a_failed_bootstrap_closes_the_watchdog_it_armed() {
    let dev = FakeDevice::default();
    let mut b = bootstrap(&dev, true).await;
    b.agent.cycle().await;
    settle().await;
    assert!(
        b.agent.long_action_running(),
        "the bootstrap runs beside the loop"
    );
    b.agent.long_action_done().await;
    settle().await;
    let view = baton_dcs::Dcs::read_cluster(b.dcs.as_ref())
        .await
        .expect("read");
    assert!(
        view.leader.is_none(),
        "no leader key after a failed bootstrap"
    );
    // The next cycle publishes that nothing leads before it tries again: the device is closed
    // (and armed anew for the new attempt).
    b.agent.cycle().await;
    settle().await;
    assert!(
        dev.events()
            .starts_with("open\nset_timeout 25\nmagic_close\n"),
        "{}",
        dev.events()
    );
    b.task.abort();
}
