//! DCS failsafe mode (`failsafe_mode: true`, Patroni's `docs/dcs_failsafe_mode.rst`): the one
//! sanctioned exception to "no writable primary without a provably alive lease" (rule 1).
//!
//! A leader whose lease cannot be renewed (etcd down, without quorum, or answering errors)
//! asks every other member of the `/failsafe` topology over `POST /failsafe` whether it may go
//! on. A member that accepts refuses to take the leader key for ttl after it received the
//! request (`race` asks [`Ctx::failsafe_blocks_race`] first), and a member missing from
//! `/failsafe` never takes it. So while every member of the topology accepted a round sent at
//! `t`, no other member can become the leader before `t + ttl`; the round proves the deadline
//! `t + ttl·(1−ρ) − margin` exactly as an acknowledged keepalive does (`FailsafeRound::until`),
//! and the fencer and the fence guard accept that deadline only through
//! `Action::ExtendFencing`, which only this rule emits, only on a complete round. One member
//! that did not answer, or answered anything but `Accepted`, and there is no extension: the
//! primary fences at its lease deadline as without failsafe mode. ALL, not a quorum: the
//! members' majority and etcd's can sit on different sides of a partition.
//!
//! Two Patroni bugs this avoids by construction:
//! - patroni#3403 (and zalando/postgres-operator#3055): with every member accepting, the
//!   leader still demoted about ttl after its last successful leader-key update — the
//!   failsafe check did not extend the leader's own validity. Here the extension *is* the
//!   deadline the fencer enforces, renewed by every complete round.
//! - patroni#3572: an error *answer* from etcd ("etcdserver: no leader" while it has no
//!   quorum) was taken as a definitive "lock lost" and demoted without consulting the members.
//!   Here no error of the lease keeper or of a read counts as evidence: only a DCS view that
//!   shows another leader ends failsafe early; everything else is "not renewable" and goes to
//!   the members.

use crate::decision::{Action, Memory, Reason, StopMode};
use crate::types::{MemberName, Mono};
use crate::view::{ClusterView, FailsafeTopology};

use super::Ctx;

impl Ctx<'_> {
    /// The deadline the last `POST /failsafe` round proves, when failsafe mode is on, we
    /// were the leader, our name is in the round's topology and every other member of it
    /// accepted. `Err` names the members that did not accept (empty: no round at all).
    pub(super) fn failsafe_until(&self) -> Result<Mono, Vec<MemberName>> {
        let Some(round) = self.obs.failsafe.round.as_ref() else {
            return Err(vec![]);
        };
        if !self.cfg.failsafe_mode || !self.was_leader || !round.topology.contains(self.me()) {
            return Err(vec![]);
        }
        let missing: Vec<MemberName> = round
            .topology
            .iter()
            .filter(|m| *m != self.me() && !round.accepted.contains(m))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(missing);
        }
        if round.until <= self.now {
            return Err(vec![]);
        }
        Ok(round.until)
    }

    /// Rule 1 with failsafe mode on: our primary's lease is not provably alive. Keep it
    /// while a complete round proves a deadline ahead, unless the DCS view shows that
    /// someone else leads; otherwise `None` (fence as without failsafe mode).
    pub(super) fn failsafe_primary(&self, next: &mut Memory) -> Option<(Vec<Action>, Reason)> {
        if !self.cfg.failsafe_mode {
            return None;
        }
        let until = match self.failsafe_until() {
            Ok(until) => until,
            Err(missing) if !missing.is_empty() && self.was_leader => {
                next.following = None;
                return Some((
                    vec![Action::StopPostgres {
                        mode: StopMode::Immediate,
                    }],
                    Reason::FailsafeNotConfirmed { missing },
                ));
            }
            Err(_) => return None,
        };
        let someone_else = self
            .obs
            .dcs
            .as_ref()
            .and_then(|v| v.leader.as_ref())
            .is_some_and(|l| l.name.as_ref() != Some(self.me()));
        if someone_else {
            // Positive evidence of another leader: failsafe proves nothing any more.
            return None;
        }
        Some((
            vec![Action::ExtendFencing { until }],
            Reason::FailsafeActive { until },
        ))
    }

    /// A running primary with a valid (new) lease finds the leader key free after failsafe
    /// mode kept it through an outage: take the key back instead of demoting.
    pub(super) fn failsafe_reacquire(&self) -> Option<(Vec<Action>, Reason)> {
        (self.cfg.failsafe_mode && self.lease_ok() && self.failsafe_until().is_ok())
            .then(|| (vec![Action::AcquireLeader], Reason::FailsafeReacquiring))
    }

    /// The race is closed to us in failsafe mode: a primary's `POST /failsafe` we accepted
    /// is younger than ttl, or the `/failsafe` topology does not name us.
    pub(super) fn failsafe_blocks_race(&self, view: &ClusterView) -> Option<Reason> {
        if !self.cfg.failsafe_mode {
            return None;
        }
        if let Some(ping) = &self.obs.failsafe.accepted
            && ping.until > self.now
            && &ping.leader != self.me()
        {
            return Some(Reason::FailsafeLeaderAlive {
                leader: ping.leader.clone(),
            });
        }
        if let Some(topology) = &view.failsafe
            && !topology.contains_key(self.me())
        {
            return Some(Reason::NotInFailsafeTopology);
        }
        None
    }

    /// The leader keeps `/failsafe` equal to the members it sees (each with its REST API URL,
    /// ourselves included). `None` while that is already so, or our own member key (which
    /// carries our URL) is not published yet.
    pub(super) fn failsafe_topology_write(&self, view: &ClusterView) -> Option<Action> {
        if !self.cfg.failsafe_mode {
            return None;
        }
        let topology: FailsafeTopology = view
            .members
            .iter()
            .filter_map(|m| Some((m.name.clone(), m.api_url.clone()?)))
            .collect();
        if !topology.contains_key(self.me()) || view.failsafe.as_ref() == Some(&topology) {
            return None;
        }
        Some(Action::WriteFailsafe { topology })
    }
}
