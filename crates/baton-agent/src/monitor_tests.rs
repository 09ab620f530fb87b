//! The PostgreSQL liveness monitor (`pg_monitor`) in paused tokio time: it waits on the
//! postmaster where the port can (no polling while it runs) and polls where it cannot.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use baton_core::{HistoryLine, PgState, StartRole, StopMode, Upstream};
use baton_pg::{PgError, Postgres};
use tokio::sync::{Notify, watch};

use crate::pg_monitor;

/// A postmaster whose liveness the test sets; `exit` ends a `postmaster_exit` wait (when
/// `waitable`).
#[derive(Default)]
struct MonitoredPg {
    alive: AtomicBool,
    waitable: bool,
    exit: Notify,
    /// `is_alive` calls: the monitor's polls.
    polls: AtomicUsize,
}

impl MonitoredPg {
    fn running(waitable: bool) -> MonitoredPg {
        MonitoredPg {
            alive: AtomicBool::new(true),
            waitable,
            ..MonitoredPg::default()
        }
    }

    /// The postmaster dies (and, with `replaced`, another one already runs in its place).
    fn crash(&self, replaced: bool) {
        self.alive.store(replaced, Ordering::SeqCst);
        self.exit.notify_waiters();
    }
}

impl Postgres for MonitoredPg {
    async fn is_alive(&self) -> bool {
        self.polls.fetch_add(1, Ordering::SeqCst);
        self.alive.load(Ordering::SeqCst)
    }
    async fn postmaster_exit(&self) -> bool {
        if !self.waitable {
            return false;
        }
        if !self.alive.load(Ordering::SeqCst) {
            return true;
        }
        self.exit.notified().await;
        true
    }
    async fn observe(&self) -> PgState {
        PgState::default()
    }
    async fn initdb(&self) -> Result<(), PgError> {
        Ok(())
    }
    async fn start(&self, _role: &StartRole) -> Result<(), PgError> {
        Ok(())
    }
    async fn stop(&self, _mode: StopMode) -> Result<(), PgError> {
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

struct Running {
    pg: Arc<MonitoredPg>,
    changed: Arc<Notify>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

async fn monitor(pg: MonitoredPg) -> Running {
    let pg = Arc::new(pg);
    let changed = Arc::new(Notify::new());
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(pg_monitor(pg.clone(), changed.clone(), stop_rx));
    // Let it take its first look.
    tokio::task::yield_now().await;
    Running {
        pg,
        changed,
        stop,
        task,
    }
}

impl Running {
    async fn end(self) {
        self.stop.send_replace(true);
        self.task.await.expect("monitor task");
    }
}

#[tokio::test(start_paused = true)]
async fn a_waitable_postmaster_is_not_polled_while_it_runs_and_its_death_wakes_the_loop() {
    let m = monitor(MonitoredPg::running(true)).await;
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(
        m.pg.polls.load(Ordering::SeqCst),
        1,
        "only the first look in ten minutes of a running postmaster"
    );
    let woken = m.changed.notified();
    m.pg.crash(false);
    woken.await;
    assert_eq!(
        m.pg.polls.load(Ordering::SeqCst),
        2,
        "one look after the exit"
    );
    m.end().await;
}

#[tokio::test(start_paused = true)]
async fn a_postmaster_replaced_by_another_still_wakes_the_loop() {
    let m = monitor(MonitoredPg::running(true)).await;
    let woken = m.changed.notified();
    m.pg.crash(true);
    woken.await;
    m.end().await;
}

#[tokio::test(start_paused = true)]
async fn without_a_wait_the_monitor_polls_and_notices_the_death() {
    let m = monitor(MonitoredPg::running(false)).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        m.pg.polls.load(Ordering::SeqCst) >= 10,
        "polled every {:?}",
        crate::PG_MONITOR_INTERVAL
    );
    let woken = m.changed.notified();
    m.pg.crash(false);
    woken.await;
    m.end().await;
}

#[tokio::test(start_paused = true)]
async fn a_stopped_postmaster_is_polled_until_it_appears() {
    let pg = MonitoredPg {
        waitable: true,
        ..MonitoredPg::default()
    };
    let m = monitor(pg).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(m.pg.polls.load(Ordering::SeqCst) >= 10);
    let woken = m.changed.notified();
    m.pg.alive.store(true, Ordering::SeqCst);
    woken.await;
    m.end().await;
}
