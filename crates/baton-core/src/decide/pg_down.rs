//! Rule 4: PostgreSQL is down. The holder of the key restarts it as a primary, for at most
//! `primary_start_timeout`, then releases the key; anyone else starts it as a standby of the
//! leader (or without an upstream while nobody leads). A former primary, or a standby whose
//! rewind failed, rejoins through `standby::rejoin`. The later rules may assume a running
//! postmaster.

use crate::decision::{Action, Memory, Reason, StartRole};
use crate::pg::ControlData;
use crate::view::ClusterView;

use super::{Ctx, upstream_of};

impl Ctx<'_> {
    pub(super) fn postgres_down(
        &self,
        next: &mut Memory,
        view: &ClusterView,
        cd: &ControlData,
    ) -> (Vec<Action>, Reason) {
        next.following = None;
        next.following_remote = None;
        if self.holds_key()
            && let Some(remote) = self.remote()
        {
            return self.start_standby_leader(next, remote);
        }
        if self.holds_key() {
            let since = *next.primary_down_since.get_or_insert(self.now);
            if self.now.saturating_since(since) < self.cfg.primary_start_timeout {
                // A data directory that was still a standby (crashed mid-promotion) starts as
                // a standby and is promoted by the next cycle: that switches the timeline,
                // which a plain start as primary would not (simulator finding F4).
                let role = if cd.state.was_primary() {
                    StartRole::Primary
                } else {
                    StartRole::Standby { upstream: None }
                };
                return (
                    vec![Action::StartPostgres { role }],
                    Reason::StartingPrimaryAfterCrash,
                );
            }
            next.primary_down_since = None;
            return (
                vec![Action::ReleaseLeader {
                    last_lsn: Some(cd.checkpoint_lsn),
                }],
                Reason::PrimaryStartTimedOut,
            );
        }
        next.primary_down_since = None;
        if self.holds_stale_key() {
            return (
                vec![Action::ReleaseLeader { last_lsn: None }],
                Reason::ReleasingLockPgDown,
            );
        }
        let Some(leader) = view.leader_name() else {
            return (
                vec![Action::StartPostgres {
                    role: StartRole::Standby { upstream: None },
                }],
                Reason::StartingAsSecondary { leader: None },
            );
        };
        let Some(upstream) = upstream_of(view, leader) else {
            return (
                vec![],
                Reason::WaitingForLeaderMember {
                    leader: leader.clone(),
                },
            );
        };
        // A rejoining former primary is rewound from the leader and starts under it (or
        // without an upstream, `nostream`); a standby starts streaming from its
        // `replicatefrom` member when it can.
        let start = self.standby_start(view, &upstream, false);
        if !cd.state.was_primary() && next.rewind_failed_against.as_ref() != Some(leader) {
            let start = self.standby_start(view, &upstream, true);
            return (
                vec![start],
                Reason::StartingAsSecondary {
                    leader: Some(leader.clone()),
                },
            );
        }
        self.rejoin(next, view, cd, leader, upstream, start)
    }
}
