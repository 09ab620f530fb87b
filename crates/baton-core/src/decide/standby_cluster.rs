//! A standby cluster (dynamic `standby_cluster`, Patroni's `is_standby_cluster`): the holder
//! of the leader key — the *standby leader* — runs PostgreSQL as a standby of the remote
//! primary named there and never promotes; the other members follow the standby leader
//! exactly as they follow a primary (cascading replication), and the race for a free key is
//! the same race, except that the winner stays a standby. Synchronous replication has no
//! meaning here (the standby leader acknowledges no commit): `decide` runs with
//! `synchronous_mode` off while `standby_cluster` is set, as Patroni's
//! `is_synchronous_mode` does.
//!
//! Removing `standby_cluster` (`promote-cluster`) lets the holder's ordinary rule promote it;
//! setting it on a running primary (`demote-cluster`) stops the primary cleanly, keeping the
//! key, and starts it again as the standby leader.

use crate::decision::{Action, Memory, Reason, StandbyCluster, StartRole, StopMode, Upstream};
use crate::pg::PgSql;
use crate::view::ClusterView;

use super::Ctx;

impl Ctx<'_> {
    /// The standby cluster's remote primary, as an upstream for us.
    pub(super) fn remote(&self) -> Option<Upstream> {
        let source = self.cfg.standby_cluster.as_ref()?;
        Some(Upstream::remote(self.me(), source))
    }

    /// The standby leader's start: a standby of the remote primary.
    pub(super) fn start_standby_leader(
        &self,
        next: &mut Memory,
        remote: Upstream,
    ) -> (Vec<Action>, Reason) {
        next.following = None;
        (
            vec![Action::StartPostgres {
                role: StartRole::Standby {
                    upstream: Some(remote),
                },
            }],
            Reason::StartingAsStandbyLeader,
        )
    }

    /// Rule 5 for the standby leader (we hold the key, PostgreSQL runs): a primary is stopped
    /// cleanly to come back as the standby leader (the key stays ours); a standby is pointed
    /// at the remote primary whenever `standby_cluster` names another one than it follows.
    pub(super) fn standby_leader_running(
        &self,
        next: &mut Memory,
        view: &ClusterView,
        sql: &PgSql,
        source: &StandbyCluster,
    ) -> (Vec<Action>, Reason) {
        next.following = None;
        next.rewind_failed_against = None;
        next.not_streaming_since = None;
        if !sql.in_recovery {
            // `demote-cluster`: a fast shutdown writes the shutdown checkpoint and sends it to
            // the streaming standbys (the other cluster's members among them) before exiting.
            next.following_remote = None;
            return (
                vec![Action::StopPostgres {
                    mode: StopMode::Fast,
                }],
                Reason::DemotingToStandbyLeader,
            );
        }
        if let Some(decision) = self.switchover_from_leader(view) {
            return decision;
        }
        let mut actions = vec![];
        if next.following_remote.as_ref() != Some(source) {
            next.following_remote = Some(source.clone());
            actions.push(Action::Follow {
                upstream: Upstream::remote(self.me(), source),
            });
        }
        if view.config.is_none() {
            actions.push(Action::WriteConfig);
        }
        if let Some(slots) = self.ensure_slots(next, view, sql) {
            actions.push(slots);
        }
        (actions, Reason::StandbyLeaderWithLock)
    }

    /// What the winner of the race does after taking the key: promote, or — in a standby
    /// cluster — nothing (the next cycle points it at the remote primary).
    pub(super) fn after_taking_key(&self, view: &ClusterView) -> Vec<Action> {
        if self.cfg.standby_cluster.is_some() {
            return vec![];
        }
        let mut actions = self.before_promote(view);
        actions.push(Action::Promote);
        actions
    }
}

/// A standby cluster never promotes and never starts a primary: the last line of defence
/// behind the rules above (a rule that forgot the standby cluster would promote a second
/// writable primary next to the other cluster's).
pub(super) fn never_primary(actions: &mut Vec<Action>) {
    actions.retain(|a| {
        !matches!(
            a,
            Action::Promote
                | Action::BootstrapCluster
                | Action::StartPostgres {
                    role: StartRole::Primary
                }
                | Action::RestartPostgres {
                    role: StartRole::Primary
                }
        )
    });
}
