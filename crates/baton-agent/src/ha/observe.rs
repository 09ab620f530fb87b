//! Observe: the cluster as the DCS shows it (and the dynamic configuration it carries),
//! PostgreSQL, and the peers when their status decides something.

use std::time::Duration;

use baton_config::DynamicConfig;
use baton_core::{ClusterView, Observation};
use baton_dcs::Dcs;
use baton_pg::Postgres;
use tracing::{info, warn};

use super::Agent;
use crate::peers::Peers;

impl<D: Dcs, P: Postgres, R: Peers> Agent<D, P, R> {
    /// One observation: the cluster prefix (one linearizable read, bounded by
    /// `retry_timeout`) and PostgreSQL at once; the other members over their REST API when
    /// the cluster has no leader or a switchover is pending; the lease, the watchdog, the
    /// previous cycle's failure and the wall clock.
    pub(super) async fn observe(&mut self) -> Observation {
        let (dcs_res, pg_state) = tokio::join!(
            tokio::time::timeout(self.ha.retry_timeout, self.dcs.read_cluster()),
            self.pg.observe()
        );
        let view = match dcs_res {
            Ok(Ok(view)) => {
                if self.dcs_error.take().is_some() {
                    info!("DCS is reachable again");
                }
                self.dcs_last_seen = Some(u64::try_from(self.clock.unix_ms() / 1000).unwrap_or(0));
                self.refresh_dynamic(&view);
                for w in &view.warnings {
                    if self.seen_warnings.insert(w.clone()) {
                        warn!("ignoring invalid DCS data: {w}");
                    }
                }
                Some(view)
            }
            Ok(Err(e)) => {
                self.dcs_failed(e.to_string());
                None
            }
            Err(_) => {
                self.dcs_failed(format!(
                    "no answer within retry_timeout ({:?})",
                    self.ha.retry_timeout
                ));
                None
            }
        };

        let peers = match &view {
            // Leaderless: the race compares positions. A pending switchover: the leader checks
            // its candidate, the others check whether the candidate can take over.
            Some(v) if (v.leader.is_none() && pg_state.is_running()) || v.failover.is_some() => {
                let timeout =
                    (self.ha.ttl / 4).clamp(Duration::from_millis(500), Duration::from_secs(2));
                self.peers.probe(v, &self.name, timeout).await
            }
            _ => vec![],
        };
        Observation {
            dcs: view,
            lease: *self.lease.borrow(),
            pg: pg_state,
            peers,
            // What the DCS says from now on is the truth again.
            outcomes: std::mem::take(&mut self.outcomes),
            running: self.running.as_ref().map(|r| r.kind),
            scheduled_restart: self.scheduled_restart.clone(),
            unix_ms: self.clock.unix_ms(),
            watchdog: crate::watchdog::state_of(self.watchdog.as_deref()),
        }
    }

    pub(super) fn dcs_failed(&mut self, error: String) {
        if self.dcs_error.as_deref() != Some(error.as_str()) {
            warn!("failed to read the cluster from the DCS: {error}");
            self.dcs_error = Some(error);
        }
    }

    /// Adopt the dynamic configuration from the `config` key when it changed.
    pub(super) fn refresh_dynamic(&mut self, view: &ClusterView) {
        let Some(config) = &view.config else { return };
        if config.mod_revision == self.dynamic_revision {
            return;
        }
        self.dynamic_revision = config.mod_revision;
        match DynamicConfig::from_json(&config.value) {
            Ok((dynamic, warnings)) => {
                for w in warnings {
                    warn!("config: {w}");
                }
                if dynamic.ttl != self.dynamic.ttl {
                    warn!(
                        old = self.dynamic.ttl,
                        new = dynamic.ttl,
                        "ttl changed in the DCS; the lease keeps its TTL until the agent restarts"
                    );
                }
                let mut dynamic = dynamic;
                // The lease was granted with the old ttl; keep deciding with it.
                dynamic.ttl = self.dynamic.ttl;
                self.dynamic = dynamic;
                self.refresh_ha();
            }
            Err(e) => warn!("ignoring invalid dynamic configuration in DCS key config: {e}"),
        }
    }
}
