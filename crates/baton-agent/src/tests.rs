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

use crate::fence::run_fencer;
use crate::lease::{LeaseKeeper, fence_deadline};

/// Milliseconds of tokio's (paused, auto-advancing) clock.
struct TokioClock(Instant);

impl Clock for TokioClock {
    fn now(&self) -> Mono {
        Mono::from_millis(self.0.elapsed().as_millis() as u64)
    }
}

/// A PostgreSQL that runs as a primary until stopped, counting immediate stops.
#[derive(Default)]
struct FakePg {
    state: Mutex<PgState>,
    immediate_stops: AtomicUsize,
}

impl FakePg {
    fn primary() -> FakePg {
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

#[tokio::test(start_paused = true)]
async fn fencer_stops_a_leading_postgres_at_the_deadline_and_not_before() {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock(Instant::now()));
    let pg = Arc::new(FakePg::primary());
    let (lease_tx, lease_rx) = watch::channel(LeaseState {
        id: Some(1),
        fence_deadline: Some(Mono::from_millis(5_000)),
    });
    let (leading_tx, leading_rx) = watch::channel(true);
    let (stop_tx, stop_rx) = watch::channel(false);
    let fencer = tokio::spawn(run_fencer(
        pg.clone(),
        clock.clone(),
        lease_rx,
        leading_rx,
        stop_rx,
    ));

    tokio::time::sleep(Duration::from_millis(4_900)).await;
    assert_eq!(
        pg.immediate_stops.load(Ordering::SeqCst),
        0,
        "fenced before the deadline"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        pg.immediate_stops.load(Ordering::SeqCst),
        1,
        "not fenced at the deadline"
    );
    assert!(!pg.observe().await.is_running());

    // A renewed lease and a new leadership term: no fencing until the new deadline.
    *pg.state.lock().expect("lock") = FakePg::primary().observe().await;
    lease_tx.send_replace(LeaseState {
        id: Some(1),
        fence_deadline: Some(Mono::from_millis(20_000)),
    });
    leading_tx.send_replace(true);
    tokio::time::sleep(Duration::from_millis(10_000)).await;
    assert_eq!(pg.immediate_stops.load(Ordering::SeqCst), 1);

    stop_tx.send_replace(true);
    fencer.await.expect("fencer ends on shutdown");
}

#[tokio::test(start_paused = true)]
async fn fencer_leaves_a_member_that_does_not_lead_alone() {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock(Instant::now()));
    let pg = Arc::new(FakePg::primary());
    let (_lease_tx, lease_rx) = watch::channel(LeaseState::default());
    let (_leading_tx, leading_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let fencer = tokio::spawn(run_fencer(pg.clone(), clock, lease_rx, leading_rx, stop_rx));
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(pg.immediate_stops.load(Ordering::SeqCst), 0);
    stop_tx.send_replace(true);
    fencer.await.expect("fencer ends on shutdown");
}
