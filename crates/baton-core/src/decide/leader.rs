//! Rule 5 for the holder of the leader key with PostgreSQL running: promote it if it is still
//! a standby, carry out a switchover request, run the synchronous-replication steps, then the
//! leader's bookkeeping (dynamic config, timeline history, replication slots). Also the
//! holder of a stale key (our name, an old lease) after an agent restart. Only reached once
//! rules 1-4 passed: our lease is alive and PostgreSQL runs on this cluster's data.

use crate::decision::{Action, Memory, Reason, StopMode};
use crate::pg::PgSql;
use crate::view::ClusterView;

use super::{Ctx, scheduled_wait_ms};

impl Ctx<'_> {
    pub(super) fn leader_running(
        &self,
        next: &mut Memory,
        view: &ClusterView,
        sql: &PgSql,
    ) -> (Vec<Action>, Reason) {
        next.following = None;
        // A rewind that failed against some leader says nothing once we lead.
        next.rewind_failed_against = None;
        next.not_streaming_since = None;
        if !sql.in_recovery {
            next.pre_promote_failed = None;
        }
        if sql.in_recovery {
            // The pre_promote script refused the promotion we were making: give the key up
            // (Patroni releases it), staying a standby.
            if let Some(failure) = crate::last_failure(&self.obs.outcomes)
                && failure.action == crate::decision::ActionKind::PrePromote
            {
                return (
                    vec![Action::ReleaseLeader { last_lsn: None }],
                    Reason::PromotionCancelled {
                        error: failure.error.clone(),
                    },
                );
            }
            let mut actions = self.before_promote(view);
            actions.push(Action::Promote);
            return (actions, Reason::PromotingWithLock);
        }
        if let Some(decision) = self.switchover_from_leader(view) {
            return decision;
        }
        if let Some(decision) = self.sync_steps(next, view, sql) {
            return decision;
        }
        let mut actions = vec![];
        if view.config.is_none() {
            actions.push(Action::WriteConfig);
        }
        if view.timeline().is_some_and(|tl| sql.timeline > tl) {
            actions.push(Action::UpdateHistory);
        }
        if let Some(slots) = self.ensure_slots(next, view, sql) {
            actions.push(slots);
        }
        let (work, _conflicts) = crate::slots::leader_work(self.cfg, view, sql);
        if !work.is_empty() {
            actions.push(Action::SyncSlots { work });
        }
        (actions, Reason::LeaderWithLock)
    }

    /// The physical replication slots the members need (`use_slots`; `crate::slots`: member
    /// slots of the members that stream from us, those of members gone for less than `member_slots_ttl`, permanent physical
    /// slots), when they differ from the ones we have.
    pub(super) fn ensure_slots(
        &self,
        next: &mut Memory,
        view: &ClusterView,
        sql: &PgSql,
    ) -> Option<Action> {
        next.slots_seen = crate::slots::retained(self.cfg, view, &next.slots_seen, self.now);
        // A primary's slots are its own: nothing copied to wait for (Patroni clears its queue).
        next.logical_readiness = crate::slot_readiness::Readiness::default();
        if !self.cfg.use_slots {
            return None;
        }
        let slots = crate::slots::leader_physical(self.cfg, view, &next.slots_seen);
        // `sql.slots` lists only the slots pgbaton manages: another tool's slot is no
        // reason to act, nor is one of ours that `ignore_slots` keeps.
        crate::slots::ensure_physical(self.cfg, sql, slots)
    }

    /// The key holds our name on another lease (from before an agent restart): a primary
    /// re-attaches it to our lease, anything else gives it away.
    pub(super) fn stale_key(&self, sql: &PgSql) -> (Vec<Action>, Reason) {
        if !sql.in_recovery && self.lease_ok() {
            return (vec![Action::ReattachLeader], Reason::ReattachingLeader);
        }
        // A standby under our old key may be in the middle of a promotion the previous
        // agent process started: stop it before giving the key away, or the promotion
        // completes next to the new leader's (simulator finding F3).
        (
            vec![
                Action::StopPostgres {
                    mode: StopMode::Immediate,
                },
                Action::ReleaseLeader { last_lsn: None },
            ],
            Reason::ReleasingLockPgDown,
        )
    }

    /// The leader's side of a switchover request (Patroni's
    /// `process_manual_failover_from_leader`): wait for a scheduled time, hand over to a
    /// healthy candidate, or clean up a request that cannot be carried out.
    pub(super) fn switchover_from_leader(
        &self,
        view: &ClusterView,
    ) -> Option<(Vec<Action>, Reason)> {
        let request = view.failover.as_ref()?;
        let clear = |why: String| {
            Some((
                vec![Action::ClearFailover {
                    version: request.mod_revision,
                }],
                Reason::CleaningUpFailover { why },
            ))
        };
        let req = &request.value;
        if req.candidate.as_ref() == Some(self.me()) {
            return clear("I am the candidate and hold the leader key".to_owned());
        }
        if let Some(leader) = &req.leader
            && leader != self.me()
        {
            return clear(format!("leader name does not match ({leader})"));
        }
        if let Some(at) = &req.scheduled_at {
            let Some(wait) = scheduled_wait_ms(view, self.obs.unix_ms) else {
                return clear(format!("cannot parse scheduled_at {at:?}"));
            };
            if wait > 0 {
                return Some((
                    vec![],
                    Reason::AwaitingScheduledSwitchover {
                        at: at.clone(),
                        in_secs: (wait + 999) / 1000,
                    },
                ));
            }
            let stale = self.cfg.loop_wait.mul_f64(1.5).as_millis() as i64;
            if -wait > stale.max(1_000) {
                return clear(format!("the switchover scheduled at {at} is stale"));
            }
        }
        match &req.candidate {
            Some(c) if view.member(c).is_none() => {
                return clear(format!("candidate {c} does not exist"));
            }
            Some(c) if !self.peer_can_take_over(c) => {
                return clear(format!("candidate {c} is not healthy enough to take over"));
            }
            None if !self
                .obs
                .peers
                .iter()
                .any(|p| self.peer_can_take_over(&p.name)) =>
            {
                return clear("no healthy member can take over".to_owned());
            }
            _ => {}
        }
        Some((
            vec![Action::HandOver],
            Reason::SwitchoverDemoting {
                candidate: req.candidate.clone(),
            },
        ))
    }
}
