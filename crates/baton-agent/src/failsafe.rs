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
    /// The last round: its proof holds until its deadline, also in the cycles that send none
    /// (the DCS is back and the leader takes its key back under it).
    last_round: Option<FailsafeRound>,
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

    /// The round is due already before the DCS read returns: failsafe mode is on, we were
    /// the leader and the lease keeper missed a renewal (its last acknowledged keepalive is
    /// more than 1.5 renewal intervals old). The HA loop then sends the round beside the DCS
    /// read, so that a DCS read that hangs for `retry_timeout` cannot delay the round past
    /// the lease's fencing deadline.
    pub fn due_early(
        &self,
        failsafe_mode: bool,
        was_leader: bool,
        lease: LeaseState,
        now: Mono,
        ttl: Duration,
    ) -> bool {
        if !failsafe_mode || !was_leader || self.topology.is_none() {
            return false;
        }
        let fresh = crate::lease::fence_deadline(now, ttl)
            .saturating_sub(crate::lease::keepalive_interval(ttl).mul_f64(1.5));
        lease.fence_deadline.is_none_or(|d| d < fresh)
    }

    /// One `POST /failsafe` round to every other member of the last topology we know.
    pub async fn round<R: Peers>(
        &mut self,
        peers: &R,
        clock: &dyn baton_core::Clock,
        me: &Me<'_>,
        ttl: Duration,
    ) -> Option<FailsafeRound> {
        let topology = self.topology.clone()?;
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
        let timeout = (ttl / 4).clamp(Duration::from_millis(500), Duration::from_secs(2));
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
        Some(FailsafeRound {
            until: crate::lease::fence_deadline(sent, ttl),
            topology: topology.keys().cloned().collect(),
            accepted,
        })
    }

    /// The observation of this cycle: the round sent beside the DCS read (`early`), or one
    /// sent now when it turned out to be due (no DCS view, or no valid lease).
    pub async fn observe<R: Peers>(
        &mut self,
        peers: &R,
        clock: &dyn baton_core::Clock,
        me: Me<'_>,
        seen: Seen<'_>,
        early: Option<FailsafeRound>,
    ) -> FailsafeObservation {
        if !seen.failsafe_mode {
            self.topology = None;
            self.until = None;
            self.last_round = None;
            return FailsafeObservation::default();
        }
        if let Some(t) = seen.view.and_then(|v| v.failsafe.as_ref()) {
            self.topology = Some(t.clone());
        }
        let now = clock.now();
        let due = seen.was_leader
            && may_be_primary(seen.pg)
            && (seen.view.is_none() || !seen.lease.valid_at(now));
        let round = match early {
            Some(round) => Some(round),
            None if due => self.round(peers, clock, &me, seen.ttl).await,
            None => None,
        };
        if round.is_some() {
            self.last_round = round;
        }
        if !seen.was_leader {
            self.last_round = None;
        }
        FailsafeObservation {
            round: self.last_round.clone().filter(|r| r.until > now),
            accepted: self.inbox.latest(),
        }
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
