//! The lease keeper: grants the agent's lease and keeps it alive on its own task, independent
//! of the HA loop (safety rule 2), and publishes the fencing deadline (safety rule 1):
//! send time of the last acknowledged keepalive + ttl·(1 − ρ) − margin.
//!
//! The pace follows what the lease protects. While we lead (or PostgreSQL may accept writes:
//! the fencer's [`FenceSignal`]) it carries the leader key and the fencing deadline: four
//! renewals per ttl. Otherwise it only carries our member key, and the deadline matters only
//! at the moment we race for the key (`require_lease`: the deadline must lie ahead): three
//! renewals per ttl leave it at least ttl·(2/3 − ρ) − margin ahead, and the keeper renews at
//! once when the signal turns to leading, so a new leader's deadline is fresh from its first
//! cycle.

use std::sync::Arc;
use std::time::Duration;

use baton_core::{Clock, FenceSignal, LeaseState, Mono};
use baton_dcs::{Dcs, DcsError};
use tokio::sync::watch;
use tracing::{info, warn};

/// Bound on the rate error between our clock and the etcd leader's (1 %).
const RHO: f64 = 0.01;

/// Time reserved to make PostgreSQL non-writable before the lease can expire in etcd.
pub fn fence_margin(ttl: Duration) -> Duration {
    (ttl / 5).clamp(Duration::from_secs(1), Duration::from_secs(5))
}

/// The fencing deadline for a keepalive sent at `sent` that etcd acknowledged.
pub fn fence_deadline(sent: Mono, ttl: Duration) -> Mono {
    (sent + ttl.mul_f64(1.0 - RHO)).saturating_sub(fence_margin(ttl))
}

/// How often the lease is refreshed while we lead: four chances per ttl. Also the bound on how
/// long one request may take.
pub fn keepalive_interval(ttl: Duration) -> Duration {
    (ttl / 4).max(Duration::from_millis(500))
}

/// How often the lease is refreshed while we do not lead: three chances per ttl. Less than
/// half a ttl, so that a renewal's answer is also the etcd quorum proof the watch cache needs
/// every ttl/2 (`baton-dcs` `cache_usable`) with time to spare.
pub fn follower_keepalive_interval(ttl: Duration) -> Duration {
    (ttl / 3).max(Duration::from_millis(500))
}

pub struct LeaseKeeper<D: Dcs> {
    dcs: Arc<D>,
    clock: Arc<dyn Clock>,
    ttl: Duration,
    tx: watch::Sender<LeaseState>,
    /// The HA loop's fencing signal: renewals at the leader's pace while it says `leading`.
    /// Without one (`None`), always at the leader's pace.
    leading: Option<watch::Receiver<FenceSignal>>,
    /// The last error logged, so a persisting failure is logged once.
    last_error: Option<String>,
}

impl<D: Dcs> LeaseKeeper<D> {
    pub fn new(
        dcs: Arc<D>,
        clock: Arc<dyn Clock>,
        ttl: Duration,
    ) -> (LeaseKeeper<D>, watch::Receiver<LeaseState>) {
        let (tx, rx) = watch::channel(LeaseState::default());
        (LeaseKeeper::publishing_to(dcs, clock, ttl, tx), rx)
    }

    /// A keeper that publishes on an existing channel (one made before the DCS was reachable,
    /// so the fencer could watch it from the start).
    pub fn publishing_to(
        dcs: Arc<D>,
        clock: Arc<dyn Clock>,
        ttl: Duration,
        tx: watch::Sender<LeaseState>,
    ) -> LeaseKeeper<D> {
        LeaseKeeper {
            dcs,
            clock,
            ttl,
            tx,
            leading: None,
            last_error: None,
        }
    }

    /// Renew at the follower's pace ([`follower_keepalive_interval`]) while `leading` says we
    /// do not lead, at the leader's as soon as it does.
    pub fn pace_by(mut self, leading: watch::Receiver<FenceSignal>) -> LeaseKeeper<D> {
        self.leading = Some(leading);
        self
    }

    /// Whether the lease protects a leader now (the leader's pace).
    fn leads(&self) -> bool {
        self.leading.as_ref().is_none_or(|l| l.borrow().leading)
    }

    /// The wait after a successful round.
    pub fn renewal_interval(&self) -> Duration {
        if self.leads() {
            keepalive_interval(self.ttl)
        } else {
            follower_keepalive_interval(self.ttl)
        }
    }

    /// One grant or keepalive round. Returns how long to wait before the next one.
    pub async fn step(&mut self) -> Duration {
        // The bound on one request: the leader's interval, whatever the pace.
        let interval = keepalive_interval(self.ttl);
        let state = *self.tx.borrow();
        let sent = self.clock.now();
        match state.id {
            None => match tokio::time::timeout(interval, self.dcs.grant_lease(self.ttl)).await {
                Ok(Ok(id)) => {
                    info!(lease = id, ttl = ?self.ttl, "granted lease");
                    self.last_error = None;
                    self.tx.send_replace(LeaseState {
                        id: Some(id),
                        fence_deadline: Some(fence_deadline(sent, self.ttl)),
                    });
                    self.renewal_interval()
                }
                Ok(Err(error)) => self.failed("grant lease", &error.to_string()),
                Err(_) => self.failed("grant lease", &format!("no answer within {interval:?}")),
            },
            Some(id) => match tokio::time::timeout(interval, self.dcs.keepalive(id)).await {
                Ok(Ok(remaining)) => {
                    if self.last_error.take().is_some() {
                        info!(lease = id, "lease keepalive succeeded again");
                    }
                    let ttl = remaining.min(self.ttl);
                    let deadline = fence_deadline(sent, ttl);
                    self.tx.send_if_modified(|s| {
                        // Only ever extend: a late answer to an older request proves less.
                        if s.id == Some(id) && s.fence_deadline < Some(deadline) {
                            s.fence_deadline = Some(deadline);
                            true
                        } else {
                            false
                        }
                    });
                    self.renewal_interval()
                }
                Ok(Err(DcsError::LeaseNotFound(_))) => {
                    warn!(
                        lease = id,
                        "lease expired in the DCS; fencing and requesting a new one"
                    );
                    self.tx.send_replace(LeaseState::default());
                    Duration::ZERO
                }
                Ok(Err(error)) => self.failed("renew lease", &error.to_string()),
                Err(_) => self.failed("renew lease", &format!("no answer within {interval:?}")),
            },
        }
    }

    fn failed(&mut self, what: &str, error: &str) -> Duration {
        let line = format!("failed to {what}: {error}");
        if self.last_error.as_deref() != Some(line.as_str()) {
            warn!("{line}; retrying");
            self.last_error = Some(line);
        }
        Duration::from_millis(500)
    }

    /// Keep the lease until `shutdown` flips to true. Returns the lease ID held at the end.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Option<i64> {
        loop {
            let wait = self.step().await;
            // At the follower's pace, a turn to leading renews at once (a new leader's
            // deadline then counts from its first cycle, not from the last follower renewal).
            let mut leading = self.leading.clone().filter(|_| !self.leads());
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|s| *s) => break,
                Some(_) = started_leading(leading.as_mut()) => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        self.tx.borrow().id
    }
}

/// Resolves once `leading` says we lead (never without a receiver, nor when its sender is
/// gone).
async fn started_leading(leading: Option<&mut watch::Receiver<FenceSignal>>) -> Option<()> {
    let leading = leading?;
    let led = leading.wait_for(|s| s.leading).await.is_ok();
    if !led {
        std::future::pending::<()>().await;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_leaves_the_margin_before_expiry() {
        let ttl = Duration::from_secs(10);
        // 10 s * 0.99 = 9.9 s, minus a 2 s margin.
        assert_eq!(
            fence_deadline(Mono::from_millis(1_000), ttl),
            Mono::from_millis(8_900)
        );
        // ttl 5: margin is clamped to 1 s; 4.95 - 1 = 3.95 s.
        assert_eq!(
            fence_deadline(Mono::from_millis(0), Duration::from_secs(5)),
            Mono::from_millis(3_950)
        );
        // ttl 30: margin capped at 5 s.
        assert_eq!(
            fence_margin(Duration::from_secs(30)),
            Duration::from_secs(5)
        );
        // The keepalive interval gives several renewals before the deadline.
        assert!(keepalive_interval(Duration::from_secs(5)) * 3 < Duration::from_millis(3_950));
    }
}
