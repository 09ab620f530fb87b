//! Rule 1 (and the demotions of rule 5): no PostgreSQL that may accept writes unless we hold
//! the leader key on a provably alive lease, and none at all while the dynamic configuration
//! asks for something pgbaton does not support. These run before any other rule can keep,
//! start or promote a primary, which is why `choose` asks them first.

use crate::decision::{Action, Memory, Reason, StartRole, StopMode};
use crate::pg::DataDir;
use crate::types::MemberName;

use super::{Ctx, may_be_primary};

impl Ctx<'_> {
    /// Rule 1: a PostgreSQL that may accept writes while our lease is not provably alive is
    /// stopped immediately (not while paused: maintenance mode leaves PostgreSQL alone).
    pub(super) fn fence(&self, next: &mut Memory) -> Option<(Vec<Action>, Reason)> {
        let pg = &self.obs.pg;
        if may_be_primary(pg) && !self.lease_ok() && !self.cfg.pause {
            if let Some(kept) = self.failsafe_primary(next) {
                return Some(kept);
            }
            next.following = None;
            let reason = if self.obs.dcs.is_none() {
                Reason::DcsUnreachableFencing
            } else {
                Reason::LeaseExpiredFencing
            };
            return Some((
                vec![Action::StopPostgres {
                    mode: StopMode::Immediate,
                }],
                reason,
            ));
        }
        None
    }

    /// A running primary while `leader` (or nobody) holds the key: stop it at once. It comes
    /// back as a standby of the leader, or races as one.
    pub(super) fn demote(
        &self,
        next: &mut Memory,
        leader: Option<MemberName>,
    ) -> (Vec<Action>, Reason) {
        next.following = None;
        (
            vec![Action::StopPostgres {
                mode: StopMode::Immediate,
            }],
            Reason::DemotingNotLeader { leader },
        )
    }

    /// The dynamic configuration asks for something that must not be ignored (a standby
    /// cluster): no writable primary, no leader key, no bootstrap or promotion; a primary is
    /// stopped cleanly and comes back read-only, as a standby without an upstream.
    pub(super) fn blocked(&self, next: &mut Memory, key: &str) -> (Vec<Action>, Reason) {
        let pg = &self.obs.pg;
        let reason = Reason::UnsupportedConfig {
            key: key.to_owned(),
        };
        next.following = None;
        let holds = self.holds_key() || self.holds_stale_key();
        let mut actions = vec![];
        if may_be_primary(pg) {
            actions.push(Action::StopPostgres {
                mode: StopMode::Fast,
            });
        }
        if holds {
            actions.push(Action::ReleaseLeader { last_lsn: None });
        }
        if actions.is_empty() && !pg.is_running() && matches!(pg.data_dir, DataDir::Initialized(_))
        {
            actions.push(Action::StartPostgres {
                role: StartRole::Standby { upstream: None },
            });
        }
        (actions, reason)
    }
}
