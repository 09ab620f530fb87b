//! DCS failsafe mode in the agent (`decide::failsafe` has the rules and the safety argument):
//! the leader's `POST /failsafe` round, the topology it uses, and the fencing deadline a
//! complete round extends.
//!
//! The round runs when failsafe mode is on, we were the leader, PostgreSQL may accept writes
//! and the DCS did not answer (or our lease is not valid): every other member of the last
//! `/failsafe` topology we read *or wrote* gets `POST /failsafe`. `decide` turns a complete
//! round into `ExtendFencing`; only then does [`FailsafeState::extend`] move the deadline
//! the fencer, the fence guard's record and `/primary` go by.

use std::time::Duration;

use baton_api::FailsafeInbox;
use baton_core::{
    ClusterView, FailsafeObservation, FailsafeRound, FailsafeTopology, LeaseState, MemberName,
    Mono, PgState, may_be_primary,
};
use tracing::{info, warn};

use crate::peers::Peers;

/// The agent's failsafe state. Inert while failsafe mode is off.
#[derive(Debug, Default)]
pub struct FailsafeState {
    /// `POST /failsafe` requests our REST API accepted (shared with `ApiState::failsafe`).
    inbox: FailsafeInbox,
    /// The last `/failsafe` topology read from the DCS or written by us.
    topology: Option<FailsafeTopology>,
    /// The fencing deadline the last complete round proved (`Action::ExtendFencing`).
    until: Option<Mono>,
    /// The members that did not accept the last round (logged on change).
    last_missing: Option<Vec<MemberName>>,
}

/// Who we are, for the request body (Patroni's `name`, `conn_url`, `api_url`).
pub struct Me<'a> {
    pub name: &'a MemberName,
    pub api_url: &'a str,
    pub conn_url: &'a str,
}

/// What one cycle saw, for the round.
pub struct Seen<'a> {
    pub failsafe_mode: bool,
    pub was_leader: bool,
    pub view: Option<&'a ClusterView>,
    pub lease: LeaseState,
    pub pg: &'a PgState,
    pub ttl: Duration,
}

impl FailsafeState {
    pub fn with_inbox(inbox: FailsafeInbox) -> FailsafeState {
        FailsafeState {
            inbox,
            ..FailsafeState::default()
        }
    }

    /// The observation of this cycle; runs the leader's round when it is due.
    pub async fn observe<R: Peers>(
        &mut self,
        peers: &R,
        clock: &dyn baton_core::Clock,
        me: Me<'_>,
        seen: Seen<'_>,
    ) -> FailsafeObservation {
        if !seen.failsafe_mode {
            self.topology = None;
            self.until = None;
            return FailsafeObservation::default();
        }
        if let Some(t) = seen.view.and_then(|v| v.failsafe.as_ref()) {
            self.topology = Some(t.clone());
        }
        let now = clock.now();
        let mut obs = FailsafeObservation {
            round: None,
            accepted: self.inbox.latest(),
        };
        let due = seen.was_leader
            && may_be_primary(seen.pg)
            && (seen.view.is_none() || !seen.lease.valid_at(now));
        let Some(topology) = self.topology.clone().filter(|_| due) else {
            return obs;
        };
        let targets: Vec<(MemberName, String)> = topology
            .iter()
            .filter(|(name, _)| *name != me.name)
            .map(|(n, u)| (n.clone(), u.clone()))
            .collect();
        let body = serde_json::json!({
            "name": me.name.as_str(),
            "conn_url": me.conn_url,
            "api_url": me.api_url,
        })
        .to_string();
        let timeout = (seen.ttl / 4).clamp(Duration::from_millis(500), Duration::from_secs(2));
        // The deadline counts from before the first request left, as a keepalive's does.
        let sent = clock.now();
        let accepted = peers.post_failsafe(&targets, &body, timeout).await;
        let missing: Vec<MemberName> = targets
            .iter()
            .map(|(n, _)| n.clone())
            .filter(|n| !accepted.contains(n))
            .collect();
        if self.last_missing.as_ref() != Some(&missing) {
            if missing.is_empty() {
                info!(
                    members = targets.len(),
                    "failsafe: every member accepted POST /failsafe"
                );
            } else {
                warn!(
                    ?missing,
                    "failsafe: not every member accepted POST /failsafe"
                );
            }
            self.last_missing = Some(missing);
        }
        obs.round = Some(FailsafeRound {
            until: crate::lease::fence_deadline(sent, seen.ttl),
            topology: topology.keys().cloned().collect(),
            accepted,
        });
        obs
    }

    /// `WriteFailsafe` succeeded: rounds use the topology now in the DCS.
    pub fn written(&mut self, topology: &FailsafeTopology) {
        self.topology = Some(topology.clone());
    }

    /// `ExtendFencing`: never shortens.
    pub fn extend(&mut self, until: Mono) {
        if self.until.is_none_or(|u| u < until) {
            self.until = Some(until);
        }
    }

    /// The extended fencing deadline while it lies ahead.
    pub fn fence_until(&self, now: Mono) -> Option<Mono> {
        self.until.filter(|u| *u > now)
    }

    /// Failsafe mode is active here: our primary runs on a round, or we accepted a leader's
    /// request within ttl (`patroni_failsafe_mode_is_active`).
    pub fn active(&self, now: Mono) -> bool {
        self.fence_until(now).is_some() || self.inbox.latest().is_some_and(|p| p.until > now)
    }
}
