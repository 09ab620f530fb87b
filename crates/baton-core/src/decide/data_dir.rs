//! Rule 3: the data directory. An empty one is bootstrapped (the first member to win the
//! `initialize` key) or cloned from the leader (without one, by a `no_leader` replica
//! method when one is configured); an unusable one is left alone (and the key
//! released); one of another cluster (system identifier) is never used. The later rules may
//! assume initialized data of this cluster.

use crate::decision::{Action, ActionKind, Memory, Reason, StartRole, StopMode};
use crate::pg::{ControlData, DataDir};
use crate::view::ClusterView;

use super::{Ctx, may_be_primary, upstream_of};

impl<'a> Ctx<'a> {
    /// The control data of an initialized data directory of this cluster, or the decision
    /// for one that is empty, unusable or another cluster's.
    pub(super) fn data_dir(
        &self,
        next: &mut Memory,
        view: &ClusterView,
    ) -> Result<&'a ControlData, (Vec<Action>, Reason)> {
        let pg = &self.obs.pg;
        let cd = match &pg.data_dir {
            DataDir::Unusable(error) => {
                let mut actions = vec![];
                if self.holds_key() || self.holds_stale_key() {
                    actions.push(Action::ReleaseLeader { last_lsn: None });
                }
                return Err((
                    actions,
                    Reason::DataDirUnusable {
                        error: error.clone(),
                    },
                ));
            }
            DataDir::Empty => return Err(self.empty_data_dir(next, view)),
            DataDir::Initialized(cd) => cd,
        };
        if let Some(cluster) = view.system_id()
            && cluster != cd.system_id
        {
            let mut actions = vec![];
            if may_be_primary(pg) {
                actions.push(Action::StopPostgres {
                    mode: StopMode::Immediate,
                });
            }
            return Err((
                actions,
                Reason::SystemIdMismatch {
                    ours: cd.system_id.clone(),
                    cluster: cluster.to_owned(),
                },
            ));
        }
        Ok(cd)
    }

    fn empty_data_dir(&self, next: &mut Memory, view: &ClusterView) -> (Vec<Action>, Reason) {
        next.following = None;
        if self.holds_key() || self.holds_stale_key() {
            return (
                vec![Action::ReleaseLeader { last_lsn: None }],
                Reason::ReleasingLockPgDown,
            );
        }
        if let Some(leader) = view.leader_name() {
            // A running `clonefrom` replica close enough to the leader, or the leader; after a
            // clone that failed, the leader (a `clonefrom` member that cannot serve a base
            // backup must not keep this member empty).
            let clone_failed = crate::last_failure(&self.obs.outcomes)
                .is_some_and(|f| f.action == ActionKind::Clone);
            let source =
                crate::topology::clone_source(view, self.me(), self.cfg.maximum_lag_on_failover)
                    .filter(|_| !clone_failed)
                    .and_then(|name| upstream_of(view, name))
                    .or_else(|| upstream_of(view, leader));
            return match source {
                Some(source) => {
                    let leader_up = upstream_of(view, leader).unwrap_or_else(|| source.clone());
                    (
                        vec![
                            Action::Clone {
                                upstream: source.clone(),
                            },
                            self.standby_start(view, &leader_up, true),
                        ],
                        Reason::Cloning {
                            leader: source.name,
                        },
                    )
                }
                None => (
                    vec![],
                    Reason::WaitingForLeaderMember {
                        leader: leader.clone(),
                    },
                ),
            };
        }
        if let Some(l) = &view.leader {
            // A leader key that does not say who holds it: nothing to clone from, no bootstrap.
            return (vec![], Reason::LeaderKeyUnreadable { lease: l.lease });
        }
        // A standby cluster is bootstrapped from the remote primary (Patroni's
        // `bootstrap_standby_leader`), never with initdb.
        if view.initialize.is_none()
            && self.cfg.can_bootstrap
            && self.lease_ok()
            && let Some(upstream) = self.remote()
        {
            return (
                vec![
                    Action::RaceInitialize,
                    Action::BootstrapStandbyCluster { upstream },
                ],
                Reason::BootstrappingStandbyLeader,
            );
        }
        // A failed bootstrap is not retried at once: its script may be costly (a restore).
        if let Some((at, error)) = &next.bootstrap_failed {
            if view.initialize.is_none() && self.now < *at + self.cfg.ttl {
                return (
                    vec![],
                    Reason::BootstrapFailed {
                        error: error.clone(),
                    },
                );
            }
            next.bootstrap_failed = None;
        }
        match view.initialize.as_deref() {
            None if !self.cfg.can_bootstrap => (vec![], Reason::NotAllowedToBootstrap),
            None if !self.lease_ok() => (vec![], Reason::WaitingForLease),
            None => (
                vec![Action::RaceInitialize, Action::BootstrapCluster],
                Reason::RacingForInitialize,
            ),
            Some("") => (vec![], Reason::WaitingForLeaderToBootstrap),
            Some(_) if self.cfg.clone_without_leader => (
                vec![
                    Action::CloneWithoutLeader,
                    Action::StartPostgres {
                        role: StartRole::Standby { upstream: None },
                    },
                ],
                Reason::CloningWithoutLeader,
            ),
            Some(_) => (vec![], Reason::NoLeaderWaiting),
        }
    }
}
