//! Rule 5 without a leader key: race for it. A pending switchover or manual failover names
//! who may take it; otherwise only the healthiest eligible member does (Patroni's
//! `_is_healthiest_node`, with the `/sync` gate and, in quorum mode, the votes of the
//! voters). Reached only with a running standby on this cluster's data (rules 1-4, and a
//! primary nobody elected was demoted first).

use crate::decision::{Action, Memory, NotHealthiest, Reason, SyncMode};
use crate::diverge::leader_timeline;
use crate::pg::PgSql;
use crate::types::Lsn;
use crate::view::{ClusterView, SyncState};

use super::{Ctx, scheduled_wait_ms};

impl Ctx<'_> {
    /// No leader key: take it if we are the healthiest eligible member.
    pub(super) fn race(
        &self,
        next: &mut Memory,
        view: &ClusterView,
        sql: &PgSql,
    ) -> (Vec<Action>, Reason) {
        if self.cfg.tags.is_nofailover() {
            return (vec![], Reason::NotAllowedToPromote);
        }
        if let Some(reason) = self.failsafe_blocks_race(view) {
            return (vec![], reason);
        }
        if !self.lease_ok() {
            return (vec![], Reason::WaitingForLease);
        }
        // Patroni's backoff: no race for `ttl` after our pre_promote script failed.
        if let Some((at, error)) = &next.pre_promote_failed {
            if self.now < *at + self.cfg.ttl {
                return (
                    vec![],
                    Reason::PromotionCancelled {
                        error: error.clone(),
                    },
                );
            }
            next.pre_promote_failed = None;
        }
        if let Some(req) = view.failover.as_ref().map(|f| &f.value)
            && scheduled_wait_ms(view, self.obs.unix_ms).is_none_or(|w| w <= 0)
        {
            match &req.candidate {
                // The named candidate takes over without comparing itself to the others
                // (Patroni's manual failover); the old leader shut down cleanly after its
                // standbys had received everything.
                Some(c) if c == self.me() => {
                    if self.watchdog_blocks() {
                        return (
                            vec![],
                            Reason::NotHealthiest(NotHealthiest::WatchdogUnusable),
                        );
                    }
                    next.following = None;
                    let mut actions = vec![Action::AcquireLeader];
                    actions.extend(self.after_taking_key(view));
                    return (actions, Reason::ManualCandidate);
                }
                // Everyone else leaves the key to a healthy candidate; an unhealthy one is
                // treated as no candidate.
                Some(c) if self.peer_can_take_over(c) => {
                    return (
                        vec![],
                        Reason::WaitingForCandidate {
                            candidate: c.clone(),
                        },
                    );
                }
                _ => {}
            }
            if req.leader.as_ref() == Some(self.me())
                && self
                    .obs
                    .peers
                    .iter()
                    .any(|p| self.peer_can_take_over(&p.name))
            {
                return (vec![], Reason::WaitingForOthersAfterHandOver);
            }
        }
        if self.watchdog_blocks() {
            return (
                vec![],
                Reason::NotHealthiest(NotHealthiest::WatchdogUnusable),
            );
        }
        if let Err(why) = self.healthiest(view, sql) {
            return (vec![], Reason::NotHealthiest(why));
        }
        next.following = None;
        let mut actions = vec![Action::AcquireLeader];
        actions.extend(self.after_taking_key(view));
        let reason = if self.cfg.standby_cluster.is_some() {
            Reason::AcquiredStandbyLeader
        } else {
            Reason::AcquiringLock
        };
        (actions, reason)
    }

    /// Patroni's `_is_healthiest_node`: within `maximum_lag_on_failover` of the last known
    /// leader position, no live primary among the peers, nobody with more WAL, nobody with
    /// the same WAL and a higher `failover_priority`. Peers that did not answer, and peers
    /// that may not be promoted, are not compared.
    fn healthiest(&self, view: &ClusterView, sql: &PgSql) -> Result<(), NotHealthiest> {
        let mine = sql.wal_position();
        if mine.0 == 0 {
            return Err(NotHealthiest::OwnPositionUnknown);
        }
        // A member still on a timeline the cluster has left would promote into a timeline
        // number that already exists (its WAL is not what the cluster's history says).
        // The cluster's timeline: what the history records, or what a member reports (a
        // promotion whose history line was never written, its leader cut off at once).
        let reported = self
            .obs
            .peers
            .iter()
            .filter(|p| p.reachable)
            .filter_map(|p| p.timeline)
            .max();
        let cluster_tl = leader_timeline(None, &view.history).max(reported);
        let mine_tl = sql.effective_timeline();
        if let Some(cluster) = cluster_tl
            && mine_tl < cluster
        {
            return Err(NotHealthiest::TimelineBehind {
                mine: mine_tl,
                cluster,
            });
        }
        if let Some(optime) = view.optime() {
            let behind = optime.saturating_sub(mine);
            if behind > self.cfg.maximum_lag_on_failover {
                return Err(NotHealthiest::Lagging {
                    behind,
                    limit: self.cfg.maximum_lag_on_failover,
                });
            }
        }
        let active_sync = self.active_sync(view)?;
        let quorum = self.cfg.sync.mode == SyncMode::Quorum;
        if let Some(sync) = active_sync
            && !quorum
            && sync.leader.as_ref() != Some(self.me())
            && !sync.lists(self.me())
        {
            return Err(NotHealthiest::NotSynchronous);
        }
        let my_priority = self.cfg.tags.effective_failover_priority();
        for peer in &self.obs.peers {
            if !peer.reachable || &peer.name == self.me() {
                continue;
            }
            // Priority mode: only `/sync` members could take over, so only they compete.
            // Quorum mode: anyone may race, but needs the voters' support (below).
            if let Some(sync) = active_sync
                && !quorum
                && !peer.is_primary
                && !sync.lists(&peer.name)
            {
                continue;
            }
            // A voter ahead of us holds commits we lack, even if it may not be promoted.
            let voter_ahead = quorum
                && active_sync.is_some_and(|s| s.lists(&peer.name))
                && peer.wal_position.unwrap_or_default() > mine;
            if peer.is_primary {
                return Err(NotHealthiest::PrimaryStillAlive {
                    member: peer.name.clone(),
                });
            }
            if (peer.tags.is_nofailover() || peer.watchdog_failed) && !voter_ahead {
                continue;
            }
            // A peer on a timeline the cluster has left cannot take over, and its position on
            // that timeline is no measure of ours: it does not compete.
            if let (Some(cluster), Some(theirs)) = (cluster_tl, peer.timeline)
                && theirs < cluster
            {
                continue;
            }
            let theirs = peer.wal_position.unwrap_or_default();
            if theirs > mine {
                return Err(NotHealthiest::PeerAhead {
                    member: peer.name.clone(),
                    theirs,
                    mine,
                });
            }
            let their_priority = peer.tags.effective_failover_priority();
            if theirs == mine && their_priority > my_priority {
                return Err(NotHealthiest::PeerPreferred {
                    member: peer.name.clone(),
                    theirs: their_priority,
                    mine: my_priority,
                });
            }
        }
        if let Some(sync) = active_sync
            && quorum
        {
            return self.quorum_votes(sync, mine);
        }
        Ok(())
    }

    /// Quorum mode (Patroni's vote count): a commit was acknowledged by `numsync` members of
    /// `synchronous_standby_names`, and the leader keeps `quorum + numsync ≥ |voters ∪ ssn|`,
    /// so any `quorum + 1` voters include one that holds it. We need that many voters (us
    /// included) that reported a position not ahead of ours; the former `/sync` leader needs
    /// none.
    fn quorum_votes(&self, sync: &SyncState, mine: Lsn) -> Result<(), NotHealthiest> {
        if sync.leader.as_ref() == Some(self.me()) {
            return Ok(());
        }
        let others = self
            .obs
            .peers
            .iter()
            .filter(|p| {
                p.reachable
                    && &p.name != self.me()
                    && sync.lists(&p.name)
                    && p.wal_position.is_some_and(|w| w.0 > 0 && w <= mine)
            })
            .count();
        let votes = others + usize::from(sync.lists(self.me()));
        let needed = sync.quorum as usize + 1;
        if votes < needed {
            return Err(NotHealthiest::NotEnoughVotes { votes, needed });
        }
        Ok(())
    }
}
