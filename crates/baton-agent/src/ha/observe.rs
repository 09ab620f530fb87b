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
        // Failsafe mode: a leader whose lease renewals fail sends its `POST /failsafe` round
        // beside the DCS read (`crate::failsafe`).
        let now = self.clock.now();
        let was_leader = self.was_leader();
        let early = self.failsafe.due_early(
            self.ha.failsafe_mode,
            was_leader,
            *self.lease.borrow(),
            now,
            self.ha.ttl,
        );
        let me = crate::failsafe::Me {
            name: &self.name,
            api_url: &self.api_url,
            conn_url: &self.conn_url,
        };
        let ttl = self.ha.ttl;
        let (failsafe, peers_io, clock) = (&mut self.failsafe, &self.peers, self.clock.clone());
        // A complete early round ends the wait for the DCS read: the decision that extends
        // the fencing deadline must not wait `retry_timeout` for a read that hangs (the lease
        // deadline may come first).
        let round_done = tokio::sync::Notify::new();
        let retry_timeout = self.ha.retry_timeout;
        let dcs = &self.dcs;
        let (dcs_res, pg_state, early_round) = tokio::join!(
            async {
                tokio::select! {
                    read = tokio::time::timeout(retry_timeout, dcs.read_cluster()) => match read {
                        Ok(Ok(view)) => Ok(view),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err(format!("no answer within retry_timeout ({retry_timeout:?})")),
                    },
                    () = round_done.notified() => {
                        Err("no answer yet; every member accepted POST /failsafe meanwhile".to_owned())
                    }
                }
            },
            self.pg.observe(),
            async {
                if !early {
                    return None;
                }
                let round = failsafe.round(peers_io, clock.as_ref(), &me, ttl).await;
                if round.as_ref().is_some_and(|r| {
                    r.topology
                        .iter()
                        .all(|m| m == me.name || r.accepted.contains(m))
                }) {
                    round_done.notify_one();
                }
                round
            }
        );
        let view = match dcs_res {
            Ok(view) => {
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
            Err(e) => {
                self.dcs_failed(e);
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
        let lease_now = *self.lease.borrow();
        let failsafe = self
            .failsafe
            .observe(
                &self.peers,
                self.clock.as_ref(),
                crate::failsafe::Me {
                    name: &self.name,
                    api_url: &self.api_url,
                    conn_url: &self.conn_url,
                },
                crate::failsafe::Seen {
                    failsafe_mode: self.ha.failsafe_mode,
                    was_leader,
                    view: view.as_ref(),
                    lease: lease_now,
                    pg: &pg_state,
                    ttl: self.ha.ttl,
                },
                early_round,
            )
            .await;
        Observation {
            failsafe,
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
                for w in baton_config::standby_commands(&self.config, &dynamic).1 {
                    warn!("config: {w}");
                }
                // The lease was granted with the old ttl; keep deciding with it.
                dynamic.ttl = self.dynamic.ttl;
                self.dynamic = dynamic;
                self.refresh_ha();
            }
            Err(e) => warn!("ignoring invalid dynamic configuration in DCS key config: {e}"),
        }
    }
}
