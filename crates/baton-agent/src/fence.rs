//! The fencer: a task of its own that stops PostgreSQL immediately once the fencing deadline
//! passes while we act as the leader, whatever the HA loop is doing (a long basebackup, a hung
//! DCS call). `/primary` needs no help: the REST API compares the same deadline with the clock
//! on every request, so it turns 503 at the deadline even before PostgreSQL is stopped.
//!
//! The fencer also outlives the agent process in one way: it records the deadline that
//! protects a running primary (a [`FenceRecord`], a small file beside the data directory).
//! An agent that starts and finds PostgreSQL already running as a primary (the previous agent
//! was killed or crashed) does not know when the lease holding the leader key expires — that
//! lease was renewed by the dead process, and the new process cannot even reach etcd when it
//! is partitioned. It keeps that primary only until the recorded deadline (at once, when there
//! is none), unless the HA loop confirms first that the leader key is on the new lease or
//! that PostgreSQL is no longer a primary (simulator finding F2).

use std::sync::{Arc, Mutex};

use baton_core::{Clock, LeaseState, Mono, StopMode, may_be_primary};
use baton_pg::Postgres;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::clock::until;

/// What the HA loop tells the fencer after every cycle (the rule: `baton_core::fence_signal`).
pub use baton_core::FenceSignal;

pub use baton_guard::record::{FenceFile, FenceRecord, beside_data_dir};

/// The channels the fencer watches.
pub struct FencerInputs {
    pub lease: watch::Receiver<LeaseState>,
    pub signal: watch::Receiver<FenceSignal>,
    pub shutdown: watch::Receiver<bool>,
}

/// Watches the lease and the HA loop's [`FenceSignal`] and fences when the deadline passes
/// while we lead; guards a primary that predates this process by the recorded deadline.
/// Returns when `shutdown` flips to true.
pub async fn run_fencer<P: Postgres>(
    pg: Arc<P>,
    clock: Arc<dyn Clock>,
    record: Arc<dyn FenceRecord>,
    inputs: FencerInputs,
) {
    let FencerInputs {
        mut lease,
        mut signal,
        mut shutdown,
    } = inputs;
    // A primary that runs before our first cycle was started by an earlier incarnation: it may
    // stay writable until that incarnation's deadline, not ours.
    let mut inherited = None;
    if may_be_primary(&pg.observe().await) {
        let deadline = record.load().unwrap_or_else(|| clock.now());
        if deadline > clock.now() {
            warn!(
                left = ?until(clock.as_ref(), deadline),
                "PostgreSQL already runs as a primary: keeping it only until the previous agent's fencing deadline, unless the leader key moves to our lease first"
            );
        } else {
            warn!(
                "PostgreSQL already runs as a primary and no earlier agent left a fencing deadline that lies ahead"
            );
        }
        inherited = Some(deadline);
    }
    let mut recorded = None;
    loop {
        let now_signal = *signal.borrow_and_update();
        if inherited.is_some() && now_signal.confirmed {
            info!(
                "the leader key is on our lease (or PostgreSQL is no primary): the previous agent's deadline no longer applies"
            );
            inherited = None;
        }
        let is_leading = now_signal.leading || inherited.is_some();
        let state = *lease.borrow_and_update();
        let now = clock.now();
        let (deadline, expired) = match inherited {
            Some(d) => (Some(d), now >= d),
            None => {
                // The lease's deadline (while it has an ID), or the one a failsafe round
                // proved, whichever is later.
                let lease_deadline = state.fence_deadline.filter(|_| state.id.is_some());
                let d = lease_deadline.max(now_signal.failsafe_until);
                (d, d.is_none_or(|d| now >= d))
            }
        };
        let keep = if is_leading && !expired {
            deadline
        } else {
            None
        };
        if recorded != Some(keep) {
            record.store(keep);
            recorded = Some(keep);
        }
        if is_leading && expired {
            error!(
                deadline = ?deadline,
                "fencing: the lease could not be renewed before its deadline; stopping PostgreSQL immediately"
            );
            match pg.stop(StopMode::Immediate).await {
                Ok(()) => info!("fencing: PostgreSQL stopped"),
                Err(e) => error!("fencing: failed to stop PostgreSQL: {e:#}"),
            }
            if inherited.take().is_some() {
                // The inherited primary is gone; what runs from now on is the HA loop's.
                continue;
            }
            // Wait for the HA loop to acknowledge (leading=false) or for a renewed lease.
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|s| *s) => return,
                _ = signal.changed() => {}
                _ = lease.changed() => {}
            }
            continue;
        }
        let sleep = match (is_leading, deadline) {
            (true, Some(deadline)) => until(clock.as_ref(), deadline),
            _ => std::time::Duration::from_secs(3600),
        };
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => return,
            _ = signal.changed() => {}
            _ = lease.changed() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

/// A record in memory (tests, the simulator: it survives the agent's tasks, like a file).
#[derive(Default)]
pub struct MemRecord(Mutex<Option<Mono>>);

impl FenceRecord for MemRecord {
    fn load(&self) -> Option<Mono> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn store(&self, deadline: Option<Mono>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = deadline;
    }
}
