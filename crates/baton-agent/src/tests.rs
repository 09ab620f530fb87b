//! The agent's safety tasks over the in-memory DCS and a fake PostgreSQL, in paused tokio time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_core::{
    Clock, HistoryLine, LeaseState, Mono, PgProcess, PgSql, PgState, StartRole, StopMode, Upstream,
};
use baton_dcs::{Dcs, DcsScope, MemDcs};
use baton_pg::{PgError, Postgres};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::fence::{FenceRecord, FenceSignal, FencerInputs, MemRecord, run_fencer};
use crate::lease::{LeaseKeeper, fence_deadline};

/// Milliseconds of tokio's (paused, auto-advancing) clock.
pub(crate) struct TokioClock(pub(crate) Instant);

impl Clock for TokioClock {
    fn now(&self) -> Mono {
        Mono::from_millis(self.0.elapsed().as_millis() as u64)
    }

    /// 2026-11-22T05:00:00Z plus the test's monotonic time.
    fn unix_ms(&self) -> i64 {
        1_795_323_600_000 + self.now().as_millis() as i64
    }
}

/// A PostgreSQL that runs as a primary until stopped, counting immediate stops.
#[derive(Default)]
pub(crate) struct FakePg {
    pub(crate) state: Mutex<PgState>,
    pub(crate) immediate_stops: AtomicUsize,
}

impl FakePg {
    pub(crate) fn primary() -> FakePg {
        let pg = FakePg::default();
        *pg.state.lock().expect("lock") = PgState {
            process: PgProcess::Running { pid: 1 },
            sql: Some(PgSql {
                in_recovery: false,
                ..PgSql::default()
            }),
            ..PgState::default()
        };
        pg
    }
}

impl Postgres for FakePg {
    async fn observe(&self) -> PgState {
        self.state.lock().expect("lock").clone()
    }
    async fn initdb(&self) -> Result<(), PgError> {
        Ok(())
    }
    async fn start(&self, _role: &StartRole) -> Result<(), PgError> {
        Ok(())
    }
    async fn stop(&self, mode: StopMode) -> Result<(), PgError> {
        if mode == StopMode::Immediate {
            self.immediate_stops.fetch_add(1, Ordering::SeqCst);
        }
        *self.state.lock().expect("lock") = PgState::default();
        Ok(())
    }
    async fn promote(&self) -> Result<(), PgError> {
        Ok(())
    }
    async fn follow(&self, _upstream: &Upstream) -> Result<bool, PgError> {
        Ok(false)
    }
    async fn clone_replica(&self, _upstream: &Upstream) -> Result<(), PgError> {
        Ok(())
    }
    async fn rewind(&self, _upstream: &Upstream) -> Result<(), PgError> {
        Ok(())
    }
    async fn reconfigure(
        &self,
        _parameters: &std::collections::BTreeMap<String, String>,
        _pg_hba: &[String],
    ) -> Result<baton_pg::Reconfigured, PgError> {
        Ok(baton_pg::Reconfigured::default())
    }
    async fn wipe_data_dir(&self) -> Result<(), PgError> {
        Ok(())
    }
    async fn create_roles(&self) -> Result<(), PgError> {
        Ok(())
    }
    async fn ensure_slots(&self, _slots: &[String]) -> Result<(), PgError> {
        Ok(())
    }
    async fn timeline_history(&self) -> Result<Vec<HistoryLine>, PgError> {
        Ok(vec![])
    }
}

fn scope() -> DcsScope {
    DcsScope {
        namespace: "/service".into(),
        scope: "test".into(),
    }
}

#[tokio::test(start_paused = true)]
async fn lease_keeper_renews_and_starts_over_when_the_lease_is_lost() {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock(Instant::now()));
    let dcs = Arc::new(MemDcs::new(scope(), clock.clone()));
    let ttl = Duration::from_secs(10);
    let (mut keeper, rx) = LeaseKeeper::new(dcs.clone(), clock.clone(), ttl);

    keeper.step().await;
    let first = *rx.borrow();
    let id = first.id.expect("a lease was granted");
    assert_eq!(
        first.fence_deadline,
        Some(fence_deadline(Mono::from_millis(0), ttl))
    );

    tokio::time::advance(Duration::from_secs(3)).await;
    keeper.step().await;
    let renewed = *rx.borrow();
    assert_eq!(renewed.id, Some(id));
    assert_eq!(
        renewed.fence_deadline,
        Some(fence_deadline(Mono::from_millis(3_000), ttl))
    );

    // The lease disappears in the store (expired during a pause, revoked by an operator).
    dcs.revoke_lease(id).await.expect("revoke");
    keeper.step().await;
    assert_eq!(
        *rx.borrow(),
        LeaseState::default(),
        "a lost lease is published at once"
    );
    keeper.step().await;
    let regranted = rx.borrow().id.expect("a new lease");
    assert_ne!(regranted, id);
}

#[tokio::test(start_paused = true)]
async fn lease_keeper_keeps_the_old_deadline_while_the_dcs_is_down() {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock(Instant::now()));
    let dcs = Arc::new(MemDcs::new(scope(), clock.clone()));
    let ttl = Duration::from_secs(10);
    let (mut keeper, rx) = LeaseKeeper::new(dcs.clone(), clock.clone(), ttl);
    keeper.step().await;
    let granted = *rx.borrow();

    dcs.set_unavailable(true);
    tokio::time::advance(Duration::from_secs(3)).await;
    keeper.step().await;
    assert_eq!(
        *rx.borrow(),
        granted,
        "a failed renewal never extends the deadline"
    );
    assert!(
        !rx.borrow()
            .valid_at(granted.fence_deadline.expect("deadline"))
    );
}

/// The fencer's channels, and the senders a test drives them with.
struct FencerHarness {
    lease: watch::Sender<LeaseState>,
    signal: watch::Sender<FenceSignal>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl FencerHarness {
    fn start(
        pg: Arc<FakePg>,
        clock: Arc<dyn Clock>,
        record: Arc<dyn FenceRecord>,
        lease: LeaseState,
        signal: FenceSignal,
    ) -> FencerHarness {
        let (lease_tx, lease_rx) = watch::channel(lease);
        let (signal_tx, signal_rx) = watch::channel(signal);
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run_fencer(
            pg,
            clock,
            record,
            FencerInputs {
                lease: lease_rx,
                signal: signal_rx,
                shutdown: stop_rx,
            },
        ));
        FencerHarness {
            lease: lease_tx,
            signal: signal_tx,
            stop: stop_tx,
            task,
        }
    }

    async fn stop(self) {
        self.stop.send_replace(true);
        self.task.await.expect("fencer ends on shutdown");
    }
}

fn leading() -> FenceSignal {
    FenceSignal {
        failsafe_until: None,
        leading: true,
        confirmed: true,
    }
}

#[tokio::test(start_paused = true)]
async fn fencer_stops_a_leading_postgres_at_the_deadline_and_not_before() {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock(Instant::now()));
    let pg = Arc::new(FakePg::default());
    let record = Arc::new(MemRecord::default());
    let lease = LeaseState {
        id: Some(1),
        fence_deadline: Some(Mono::from_millis(5_000)),
    };
    let h = FencerHarness::start(pg.clone(), clock, record.clone(), lease, leading());
    // The HA loop promotes after the fencer started.
    *pg.state.lock().expect("lock") = FakePg::primary().observe().await;
    h.signal.send_replace(leading());

    tokio::time::sleep(Duration::from_millis(4_900)).await;
    assert_eq!(
        pg.immediate_stops.load(Ordering::SeqCst),
        0,
        "fenced before the deadline"
    );
    assert_eq!(
        record.load(),
        Some(Mono::from_millis(5_000)),
        "the deadline is recorded for a successor"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        pg.immediate_stops.load(Ordering::SeqCst),
        1,
        "not fenced at the deadline"
    );
    assert!(!pg.observe().await.is_running());
    assert_eq!(record.load(), None, "nothing left to protect");

    // A renewed lease and a new leadership term: no fencing until the new deadline.
    *pg.state.lock().expect("lock") = FakePg::primary().observe().await;
    h.lease.send_replace(LeaseState {
        id: Some(1),
        fence_deadline: Some(Mono::from_millis(20_000)),
    });
    h.signal.send_replace(leading());
    tokio::time::sleep(Duration::from_millis(10_000)).await;
    assert_eq!(pg.immediate_stops.load(Ordering::SeqCst), 1);
    assert_eq!(record.load(), Some(Mono::from_millis(20_000)));
    h.stop().await;
}

/// Failsafe mode: a deadline proved by a complete `POST /failsafe` round keeps the primary
/// past the lease's (and is what the fence guard's record says), until it passes too; the
/// lease ID gone (etcd answered "lease not found") changes nothing about that.
#[tokio::test(start_paused = true)]
async fn fencer_keeps_a_primary_until_the_failsafe_deadline_then_fences() {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock(Instant::now()));
    let pg = Arc::new(FakePg::primary());
    let record = Arc::new(MemRecord::default());
    let lease = LeaseState {
        id: Some(1),
        fence_deadline: Some(Mono::from_millis(5_000)),
    };
    let h = FencerHarness::start(pg.clone(), clock, record.clone(), lease, leading());
    h.signal.send_replace(FenceSignal {
        failsafe_until: Some(Mono::from_millis(12_000)),
        ..leading()
    });
    tokio::time::sleep(Duration::from_millis(6_000)).await;
    assert_eq!(
        pg.immediate_stops.load(Ordering::SeqCst),
        0,
        "fenced at the lease deadline despite the failsafe deadline"
    );
    assert_eq!(record.load(), Some(Mono::from_millis(12_000)));
    h.lease.send_replace(LeaseState::default());
    tokio::time::sleep(Duration::from_millis(5_900)).await;
    assert_eq!(pg.immediate_stops.load(Ordering::SeqCst), 0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        pg.immediate_stops.load(Ordering::SeqCst),
        1,
        "not fenced at the failsafe deadline"
    );
    assert_eq!(record.load(), None);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn fencer_leaves_a_member_that_does_not_lead_alone() {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock(Instant::now()));
    // A standby: running, in recovery.
    let pg = Arc::new(FakePg::primary());
    if let Some(sql) = pg.state.lock().expect("lock").sql.as_mut() {
        sql.in_recovery = true;
    }
    let record = Arc::new(MemRecord::default());
    // Even a record left by an earlier incarnation does not matter to a standby.
    record.store(Some(Mono::from_millis(1_000)));
    let h = FencerHarness::start(
        pg.clone(),
        clock,
        record.clone(),
        LeaseState::default(),
        FenceSignal::default(),
    );
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(pg.immediate_stops.load(Ordering::SeqCst), 0);
    assert_eq!(record.load(), None);
    h.stop().await;
}

/// Simulator finding F2: an agent restarted while its PostgreSQL runs as a primary (and etcd is
/// out of reach) fences that primary by the deadline its predecessor recorded, although its
/// own new lease would allow more.
#[tokio::test(start_paused = true)]
async fn a_restarted_agent_fences_an_inherited_primary_by_the_recorded_deadline() {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock(Instant::now()));
    let pg = Arc::new(FakePg::primary());
    let record = Arc::new(MemRecord::default());
    record.store(Some(Mono::from_millis(3_000)));
    let h = FencerHarness::start(
        pg.clone(),
        clock,
        record.clone(),
        LeaseState {
            id: Some(7),
            fence_deadline: Some(Mono::from_millis(30_000)),
        },
        FenceSignal::default(),
    );
    // The HA loop sees the primary but cannot confirm the key (no DCS view).
    h.signal.send_replace(FenceSignal {
        failsafe_until: None,
        leading: true,
        confirmed: false,
    });
    tokio::time::sleep(Duration::from_millis(2_900)).await;
    assert_eq!(pg.immediate_stops.load(Ordering::SeqCst), 0);
    assert_eq!(
        record.load(),
        Some(Mono::from_millis(3_000)),
        "the inherited deadline is kept, not replaced by the new lease's"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(pg.immediate_stops.load(Ordering::SeqCst), 1);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_inherited_primary_without_a_recorded_deadline_is_fenced_at_once() {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock(Instant::now()));
    let pg = Arc::new(FakePg::primary());
    let h = FencerHarness::start(
        pg.clone(),
        clock,
        Arc::new(MemRecord::default()),
        LeaseState::default(),
        FenceSignal::default(),
    );
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(pg.immediate_stops.load(Ordering::SeqCst), 1);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_confirmed_key_lifts_the_inherited_deadline() {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock(Instant::now()));
    let pg = Arc::new(FakePg::primary());
    let record = Arc::new(MemRecord::default());
    record.store(Some(Mono::from_millis(3_000)));
    let h = FencerHarness::start(
        pg.clone(),
        clock,
        record.clone(),
        LeaseState {
            id: Some(7),
            fence_deadline: Some(Mono::from_millis(30_000)),
        },
        FenceSignal::default(),
    );
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    // The HA loop re-attached the leader key to lease 7.
    h.signal.send_replace(leading());
    tokio::time::sleep(Duration::from_millis(10_000)).await;
    assert_eq!(pg.immediate_stops.load(Ordering::SeqCst), 0);
    assert_eq!(record.load(), Some(Mono::from_millis(30_000)));
    tokio::time::sleep(Duration::from_millis(20_000)).await;
    assert_eq!(
        pg.immediate_stops.load(Ordering::SeqCst),
        1,
        "our own lease's deadline still holds"
    );
    h.stop().await;
}

#[test]
fn the_unique_name_check_asks_the_members_liveness_endpoint() {
    assert_eq!(
        crate::liveness_url("http://10.0.0.1:8008/patroni"),
        "http://10.0.0.1:8008/liveness"
    );
    assert_eq!(
        crate::liveness_url("https://h:8008/"),
        "https://h:8008/liveness"
    );
}

/// The keeper's pace: a follower renews three times per ttl, a leader four times, and a turn
/// to leading renews at once (the new leader's fencing deadline counts from then, not from
/// the last follower renewal).
#[tokio::test(start_paused = true)]
async fn lease_keeper_renews_at_the_leaders_pace_only_while_leading() {
    use crate::lease::{follower_keepalive_interval, keepalive_interval};
    let start = Instant::now();
    let clock: Arc<dyn Clock> = Arc::new(TokioClock(start));
    let dcs = Arc::new(MemDcs::new(scope(), clock.clone()));
    let ttl = Duration::from_secs(12);
    assert_eq!(follower_keepalive_interval(ttl), Duration::from_secs(4));
    assert_eq!(keepalive_interval(ttl), Duration::from_secs(3));
    let (leading_tx, leading_rx) = watch::channel(FenceSignal::default());
    let (keeper, rx) = LeaseKeeper::new(dcs.clone(), clock.clone(), ttl);
    let keeper = keeper.pace_by(leading_rx);
    let (_stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(keeper.run(stop_rx));
    let at = |ms: u64| async move {
        tokio::time::sleep_until(start + Duration::from_millis(ms)).await;
    };
    let deadline_after = |ms: u64| Some(fence_deadline(Mono::from_millis(ms), ttl));

    // Following: renewals at 0, 4 and 8 s.
    at(3_900).await;
    assert_eq!(rx.borrow().fence_deadline, deadline_after(0));
    at(4_100).await;
    assert_eq!(rx.borrow().fence_deadline, deadline_after(4_000));
    at(9_000).await;
    assert_eq!(rx.borrow().fence_deadline, deadline_after(8_000));

    // Leading from 9 s: renewed at once, then every 3 s.
    leading_tx.send_replace(FenceSignal {
        leading: true,
        ..FenceSignal::default()
    });
    at(9_100).await;
    assert_eq!(rx.borrow().fence_deadline, deadline_after(9_000));
    at(11_900).await;
    assert_eq!(rx.borrow().fence_deadline, deadline_after(9_000));
    at(12_100).await;
    assert_eq!(rx.borrow().fence_deadline, deadline_after(12_000));

    // Following again: the next renewal after the leader's interval, then the follower's.
    leading_tx.send_replace(FenceSignal::default());
    at(15_100).await;
    assert_eq!(rx.borrow().fence_deadline, deadline_after(15_000));
    at(18_900).await;
    assert_eq!(rx.borrow().fence_deadline, deadline_after(15_000));
    at(19_100).await;
    assert_eq!(rx.borrow().fence_deadline, deadline_after(19_000));
}
