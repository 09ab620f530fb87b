//! What the executor reports back, and the rules that read it.
//!
//! The agent executes a decision's actions and reports what they did as [`ActionOutcome`]s.
//! It never edits decide's [`Memory`]: the outcomes ride in the next [`Observation`]
//! (`outcomes`), where [`decide`](crate::decide) applies them ([`Memory::after`]), and until
//! then the agent reads the same rules here — whether it holds the leader key
//! ([`holds_leader_key`]) and what the fencer must guard ([`fence_signal`]).
//!
//! [`Observation`]: crate::Observation

use crate::decide::may_be_primary;
use crate::decision::{ActionFailure, Memory};
use crate::pg::PgState;
use crate::types::MemberName;
use crate::view::ClusterView;

/// What an executed action did that the cycle's DCS view (read before it ran) cannot show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ActionOutcome {
    /// A leadership action (`AcquireLeader`, `ReattachLeader`, `RepairLeader`) won: the
    /// leader key holds our name on this lease.
    TookKey { lease: i64 },
    /// A leadership action lost its race or failed: we did not get the key.
    MissedKey,
    /// We gave the leader key up (`ReleaseLeader`, `HandOver`).
    ReleasedKey,
    /// An action failed; the next decision reacts to it (give up the key, wipe and re-clone).
    Failed(ActionFailure),
    /// `CheckLogicalSlots` read the leader's slots (`crate::slot_readiness`).
    PrimarySlots(crate::slot_readiness::PrimarySlots),
}

impl Memory {
    /// The memory as the executed actions left it: a leadership action that missed the key,
    /// or a released key, means we no longer lead.
    pub fn after(&self, outcomes: &[ActionOutcome]) -> Memory {
        let mut next = self.clone();
        if outcomes
            .iter()
            .any(|o| matches!(o, ActionOutcome::MissedKey | ActionOutcome::ReleasedKey))
        {
            next.was_leader = false;
        }
        for outcome in outcomes {
            if let ActionOutcome::PrimarySlots(found) = outcome {
                next.logical_readiness.apply(found);
            }
        }
        next
    }
}

/// The last failure among `outcomes`.
pub fn last_failure(outcomes: &[ActionOutcome]) -> Option<&ActionFailure> {
    outcomes.iter().rev().find_map(|o| match o {
        ActionOutcome::Failed(f) => Some(f),
        _ => None,
    })
}

/// Whether the leader key holds our name on our current `lease`: what this cycle's actions
/// did with the key (`outcomes`) wins over the DCS view read before they ran.
pub fn holds_leader_key(
    view: Option<&ClusterView>,
    me: &MemberName,
    lease: Option<i64>,
    outcomes: &[ActionOutcome],
) -> bool {
    for outcome in outcomes.iter().rev() {
        match outcome {
            ActionOutcome::ReleasedKey => return false,
            ActionOutcome::TookKey { lease: took } if lease == Some(*took) => return true,
            _ => {}
        }
    }
    view.and_then(|v| v.leader.as_ref())
        .is_some_and(|l| l.name.as_ref() == Some(me) && Some(l.lease) == lease)
}

/// What the HA loop tells the fencer (and the watchdog) after every cycle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FenceSignal {
    /// PostgreSQL runs (or may run) as the leader: guard it with the lease's deadline.
    pub leading: bool,
    /// A cycle with a DCS view found the leader key on our current lease, or PostgreSQL not
    /// running as a primary. From then on a primary that predates this process is ours under
    /// our own lease (or gone), and the recorded deadline no longer applies.
    pub confirmed: bool,
    /// Failsafe mode: the deadline a complete `POST /failsafe` round proved
    /// (`Action::ExtendFencing`). The primary stays until the later of it and the lease's.
    pub failsafe_until: Option<crate::types::Mono>,
}

/// The fencing rule: the fencer guards any PostgreSQL that may accept writes, not only while
/// the DCS confirms our key — it is needed most when the DCS does not answer. `confirmed` is
/// sticky: once the DCS shows the key on our lease (or no primary runs), a primary that
/// predates this process is ours to guard with our own lease.
pub fn fence_signal(
    previous: FenceSignal,
    view_seen: bool,
    holds_key: bool,
    was_leader: bool,
    pg: &PgState,
) -> FenceSignal {
    let primary = may_be_primary(pg);
    FenceSignal {
        leading: holds_key || was_leader || primary,
        confirmed: previous.confirmed || (view_seen && (holds_key || !primary)),
        failsafe_until: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::ActionKind;
    use crate::pg::{PgProcess, PgSql};
    use crate::types::Mono;
    use crate::view::LeaderKey;

    fn name(s: &str) -> MemberName {
        MemberName::new(s).expect("name")
    }

    fn view_with_leader(holder: &str, lease: i64) -> ClusterView {
        ClusterView {
            leader: Some(LeaderKey {
                name: Some(name(holder)),
                lease,
                create_revision: 1,
                mod_revision: 1,
            }),
            ..ClusterView::default()
        }
    }

    #[test]
    fn a_missed_or_released_key_ends_leadership_in_the_memory() {
        let leader = Memory {
            was_leader: true,
            ..Memory::default()
        };
        assert!(leader.after(&[]).was_leader);
        assert!(
            leader
                .after(&[ActionOutcome::TookKey { lease: 7 }])
                .was_leader
        );
        assert!(!leader.after(&[ActionOutcome::MissedKey]).was_leader);
        assert!(!leader.after(&[ActionOutcome::ReleasedKey]).was_leader);
        let failure = ActionFailure {
            action: ActionKind::Rewind,
            at: Mono::from_millis(5),
            error: "exit 1".into(),
        };
        let outcomes = [ActionOutcome::Failed(failure.clone())];
        assert!(leader.after(&outcomes).was_leader);
        assert_eq!(last_failure(&outcomes), Some(&failure));
        assert_eq!(last_failure(&[ActionOutcome::MissedKey]), None);
    }

    #[test]
    fn this_cycles_outcomes_win_over_the_view_read_before_them() {
        let me = name("n1");
        let ours = view_with_leader("n1", 7);
        let theirs = view_with_leader("n2", 9);
        assert!(holds_leader_key(Some(&ours), &me, Some(7), &[]));
        // Our name on an older lease is not ours any more.
        assert!(!holds_leader_key(Some(&ours), &me, Some(8), &[]));
        assert!(!holds_leader_key(Some(&theirs), &me, Some(7), &[]));
        assert!(!holds_leader_key(None, &me, Some(7), &[]));
        let took = [ActionOutcome::TookKey { lease: 7 }];
        assert!(holds_leader_key(Some(&theirs), &me, Some(7), &took));
        // Taken with a lease that has since been replaced: the view decides.
        assert!(!holds_leader_key(Some(&theirs), &me, Some(8), &took));
        let released = [
            ActionOutcome::TookKey { lease: 7 },
            ActionOutcome::ReleasedKey,
        ];
        assert!(!holds_leader_key(Some(&ours), &me, Some(7), &released));
        // A missed race says nothing the view does not.
        assert!(holds_leader_key(
            Some(&ours),
            &me,
            Some(7),
            &[ActionOutcome::MissedKey]
        ));
    }

    #[test]
    fn the_fencer_guards_whatever_may_accept_writes() {
        let stopped = PgState::default();
        let primary = PgState {
            process: PgProcess::Running { pid: 42 },
            sql: Some(PgSql::default()),
            ..PgState::default()
        };
        let none = FenceSignal::default();
        // A running primary is guarded even without the key, and is not confirmed ours
        // until the DCS shows the key on our lease.
        assert_eq!(
            fence_signal(none, true, false, false, &primary),
            FenceSignal {
                leading: true,
                confirmed: false,
                ..FenceSignal::default()
            }
        );
        assert_eq!(
            fence_signal(none, true, true, false, &primary),
            FenceSignal {
                leading: true,
                confirmed: true,
                ..FenceSignal::default()
            }
        );
        // A leader without a DCS view stays guarded; nothing is confirmed without a view.
        assert_eq!(
            fence_signal(none, false, false, true, &stopped),
            FenceSignal {
                leading: true,
                confirmed: false,
                ..FenceSignal::default()
            }
        );
        // Confirmation is sticky.
        let confirmed = FenceSignal {
            leading: false,
            confirmed: true,
            ..FenceSignal::default()
        };
        assert_eq!(
            fence_signal(confirmed, false, false, false, &stopped),
            confirmed
        );
        // No primary running, seen with a view: nothing to guard, and confirmed.
        assert_eq!(fence_signal(none, true, false, false, &stopped), confirmed);
    }
}
