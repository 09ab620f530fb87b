//! The fencer: a task of its own that stops PostgreSQL immediately once the fencing deadline
//! passes while we act as the leader, whatever the HA loop is doing (a long basebackup, a hung
//! DCS call). `/primary` needs no help: the REST API compares the same deadline with the clock
//! on every request, so it turns 503 at the deadline even before PostgreSQL is stopped.

use std::sync::Arc;

use baton_core::{Clock, LeaseState, StopMode};
use baton_pg::Postgres;
use tokio::sync::watch;
use tracing::{error, info};

use crate::clock::until;

/// Watches `lease` and `leading` (true while the HA loop runs PostgreSQL as the leader) and
/// fences when the deadline passes. Returns when `shutdown` flips to true.
pub async fn run_fencer<P: Postgres>(
    pg: Arc<P>,
    clock: Arc<dyn Clock>,
    mut lease: watch::Receiver<LeaseState>,
    mut leading: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let is_leading = *leading.borrow_and_update();
        let state = *lease.borrow_and_update();
        let expired = !state.valid_at(clock.now());
        if is_leading && expired {
            error!(
                deadline = ?state.fence_deadline,
                "fencing: the lease could not be renewed before its deadline; stopping PostgreSQL immediately"
            );
            match pg.stop(StopMode::Immediate).await {
                Ok(()) => info!("fencing: PostgreSQL stopped"),
                Err(e) => error!("fencing: failed to stop PostgreSQL: {e:#}"),
            }
            // Wait for the HA loop to acknowledge (leading=false) or for a renewed lease.
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|s| *s) => return,
                _ = leading.changed() => {}
                _ = lease.changed() => {}
            }
            continue;
        }
        let sleep = match (is_leading, state.fence_deadline) {
            (true, Some(deadline)) => until(clock.as_ref(), deadline),
            _ => std::time::Duration::from_secs(3600),
        };
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => return,
            _ = leading.changed() => {}
            _ = lease.changed() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}
