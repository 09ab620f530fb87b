//! Decisions on requests from outside the HA loop: switchover and failover requests,
//! reinitialize, and the shutdown on SIGTERM. Pure, like [`decide`](crate::decide): the agent
//! reads the DCS (and asks the peers) and executes what these functions allow.

use std::fmt;

use crate::decision::{Action, PeerStatus, StopMode, SyncConfig, SyncMode};
use crate::pg::PgState;
use crate::types::MemberName;
use crate::view::{ClusterView, FailoverRequest};

/// A switchover or failover request whose shape the REST API has checked already.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SwitchoverAsk {
    /// The leader the request names (`leader`), if any.
    pub leader: Option<String>,
    /// The candidate it names (`candidate` / `member`), if any.
    pub candidate: Option<MemberName>,
    /// `scheduled_at`, as sent.
    pub scheduled_at: Option<String>,
    /// Came in as `POST /failover`.
    pub failover: bool,
}

/// "failover" or "switchover", as Patroni words its messages: a `POST /failover` that names
/// a leader is a switchover.
pub fn switchover_action(failover: bool, names_leader: bool) -> &'static str {
    if failover && !names_leader {
        "failover"
    } else {
        "switchover"
    }
}

impl SwitchoverAsk {
    /// "failover" or "switchover", as Patroni words its messages.
    pub fn action(&self) -> &'static str {
        switchover_action(self.failover, self.leader.is_some())
    }

    /// The `failover` key to write once every check passed.
    pub fn to_request(&self) -> FailoverRequest {
        FailoverRequest {
            leader: self.leader.as_deref().and_then(MemberName::new),
            candidate: self.candidate.clone(),
            scheduled_at: self.scheduled_at.clone(),
        }
    }
}

/// Why a request is refused. `Display` is Patroni's message, [`Refusal::status`] its code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    LeaderMismatch,
    CandidateMissing,
    CandidateNotSync,
    OnlyLeader { action: &'static str },
    NoGoodCandidates { action: &'static str },
    NoLeaderToReinitialize,
    LeaderCannotReinitialize,
    PrimaryCannotReinitialize,
}

impl Refusal {
    /// The HTTP status Patroni answers with.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::LeaderMismatch
            | Refusal::CandidateMissing
            | Refusal::CandidateNotSync
            | Refusal::OnlyLeader { .. }
            | Refusal::NoGoodCandidates { .. } => 412,
            Refusal::NoLeaderToReinitialize
            | Refusal::LeaderCannotReinitialize
            | Refusal::PrimaryCannotReinitialize => 503,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::LeaderMismatch => write!(f, "leader name does not match"),
            // Patroni's spelling.
            Refusal::CandidateMissing => write!(f, "candidate does not exists"),
            Refusal::CandidateNotSync => {
                write!(f, "candidate name does not match with sync_standby")
            }
            Refusal::OnlyLeader { action } => write!(
                f,
                "{action} is not possible: cluster does not have members except leader"
            ),
            Refusal::NoGoodCandidates { action } => write!(
                f,
                "{action} is not possible: no good candidates have been found"
            ),
            Refusal::NoLeaderToReinitialize => {
                write!(f, "Cluster has no leader, can not reinitialize")
            }
            Refusal::LeaderCannotReinitialize => write!(f, "I am the leader, can not reinitialize"),
            Refusal::PrimaryCannotReinitialize => {
                write!(f, "I am running as a primary, can not reinitialize")
            }
        }
    }
}

/// What a switchover request needs after the checks on the DCS view passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SwitchoverNext {
    /// Scheduled: write the `failover` key now; the candidates are checked when it fires.
    Write,
    /// Immediate: ask the members except `exclude` (the leader, or us when there is none)
    /// whether they can take over, then [`check_candidates`]. With `include_me`, this
    /// member is a candidate too (no leader: a failover may pick us).
    ProbeCandidates {
        exclude: MemberName,
        include_me: bool,
    },
}

/// Patroni's `is_failover_possible` checks on the cluster as the DCS shows it (read afresh).
pub fn check_switchover(
    view: &ClusterView,
    ask: &SwitchoverAsk,
    sync: &SyncConfig,
    me: &MemberName,
) -> Result<SwitchoverNext, Refusal> {
    let leader = view.leader_name();
    if let Some(l) = &ask.leader
        && leader.map(MemberName::as_str) != Some(l.as_str())
    {
        return Err(Refusal::LeaderMismatch);
    }
    if let Some(c) = &ask.candidate
        && view.member(c).is_none()
    {
        return Err(Refusal::CandidateMissing);
    }
    // Priority synchronous mode: a switchover (not a failover) goes to a synchronous standby
    // only. (Quorum mode has no such rule in Patroni: the old primary's clean shutdown leaves
    // the candidate with every commit.)
    if sync.enabled()
        && sync.mode != SyncMode::Quorum
        && !ask.failover
        && let (Some(c), Some(state)) = (&ask.candidate, view.sync.present())
        && !state.value.lists(c)
    {
        return Err(Refusal::CandidateNotSync);
    }
    if !view.members.iter().any(|m| Some(&m.name) != leader) {
        return Err(Refusal::OnlyLeader {
            action: ask.action(),
        });
    }
    if ask.scheduled_at.is_some() {
        return Ok(SwitchoverNext::Write);
    }
    Ok(SwitchoverNext::ProbeCandidates {
        exclude: leader.cloned().unwrap_or_else(|| me.clone()),
        include_me: leader.is_none(),
    })
}

/// An immediate switchover needs a member that answers, runs as a standby, may fail over and
/// is the named candidate when there is one.
pub fn check_candidates(peers: &[PeerStatus], ask: &SwitchoverAsk) -> Result<(), Refusal> {
    let good = peers.iter().any(|p| {
        p.reachable
            && !p.is_primary
            && !p.tags.is_nofailover()
            && ask.candidate.as_ref().is_none_or(|c| &p.name == c)
    });
    if good {
        Ok(())
    } else {
        Err(Refusal::NoGoodCandidates {
            action: ask.action(),
        })
    }
}

/// `POST /reinitialize` (Patroni's reinit): allowed on a standby of a cluster with a leader.
/// The actions stop PostgreSQL and empty the data directory; the next cycle clones from the
/// leader.
pub fn check_reinitialize(
    view: &ClusterView,
    me: &MemberName,
    pg: &PgState,
) -> Result<Vec<Action>, Refusal> {
    match view.leader_name() {
        None => return Err(Refusal::NoLeaderToReinitialize),
        Some(l) if l == me => return Err(Refusal::LeaderCannotReinitialize),
        Some(_) => {}
    }
    if pg.is_primary() {
        return Err(Refusal::PrimaryCannotReinitialize);
    }
    Ok(vec![
        Action::StopPostgres {
            mode: StopMode::Immediate,
        },
        Action::WipeDataDir,
    ])
}

/// What the agent does with PostgreSQL and the leader key when it is told to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownPlan {
    /// Maintenance mode: PostgreSQL and the leader key are left as they are.
    LeaveRunning,
    /// Stop PostgreSQL (fast, immediate if that fails); we do not lead.
    Stop,
    /// Stop PostgreSQL, then publish its last position and give the leader key up (as
    /// Patroni does); if it cannot be stopped, keep the key.
    StopAndRelease,
}

/// The shutdown on SIGTERM. `leading`: we hold the key, or still count as its holder.
pub fn shutdown_plan(paused: bool, leading: bool) -> ShutdownPlan {
    match (paused, leading) {
        (true, _) => ShutdownPlan::LeaveRunning,
        (false, false) => ShutdownPlan::Stop,
        (false, true) => ShutdownPlan::StopAndRelease,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::{PgProcess, PgSql};
    use crate::types::Lsn;
    use crate::view::{LeaderKey, Member, SyncKey, SyncState, Tags, Versioned};

    fn name(s: &str) -> MemberName {
        MemberName::new(s).expect("name")
    }

    /// n1 leads, n2 and n3 are members; `/sync` names n2.
    fn cluster(leader: Option<&str>) -> ClusterView {
        ClusterView {
            leader: leader.map(|l| LeaderKey {
                name: Some(name(l)),
                lease: 5,
                create_revision: 1,
                mod_revision: 1,
            }),
            members: ["n1", "n2", "n3"]
                .iter()
                .map(|n| Member {
                    name: name(n),
                    ..Member::default()
                })
                .collect(),
            sync: SyncKey::Present(Versioned {
                value: SyncState {
                    leader: Some(name("n1")),
                    sync_standby: vec![name("n2")],
                    quorum: 0,
                },
                mod_revision: 3,
            }),
            ..ClusterView::default()
        }
    }

    fn ask(leader: Option<&str>, candidate: Option<&str>) -> SwitchoverAsk {
        SwitchoverAsk {
            leader: leader.map(str::to_owned),
            candidate: candidate.map(name),
            ..SwitchoverAsk::default()
        }
    }

    fn peer(n: &str, reachable: bool, primary: bool, tags: Tags) -> PeerStatus {
        PeerStatus {
            name: name(n),
            reachable,
            is_primary: primary,
            wal_position: Some(Lsn(0x300_0000)),
            timeline: None,
            tags,
            watchdog_failed: false,
        }
    }

    #[test]
    fn switchover_checks_follow_patroni_in_order() {
        let me = name("n2");
        let off = SyncConfig::default();
        let view = cluster(Some("n1"));
        let check = |a: &SwitchoverAsk, s: &SyncConfig| check_switchover(&view, a, s, &me);
        assert_eq!(
            check(&ask(Some("n9"), Some("n2")), &off),
            Err(Refusal::LeaderMismatch)
        );
        assert_eq!(
            check(&ask(Some("n1"), Some("n7")), &off),
            Err(Refusal::CandidateMissing)
        );
        let sync = SyncConfig {
            mode: SyncMode::Priority,
            ..SyncConfig::default()
        };
        assert_eq!(
            check(&ask(Some("n1"), Some("n3")), &sync),
            Err(Refusal::CandidateNotSync)
        );
        // A failover may go to an asynchronous standby; so may anything in quorum mode.
        let mut failover = ask(Some("n1"), Some("n3"));
        failover.failover = true;
        assert!(check(&failover, &sync).is_ok());
        let quorum = SyncConfig {
            mode: SyncMode::Quorum,
            ..SyncConfig::default()
        };
        assert!(check(&ask(Some("n1"), Some("n3")), &quorum).is_ok());
        assert_eq!(
            check(&ask(Some("n1"), Some("n2")), &sync),
            Ok(SwitchoverNext::ProbeCandidates {
                exclude: name("n1"),
                include_me: false
            })
        );
        let mut scheduled = ask(Some("n1"), Some("n2"));
        scheduled.scheduled_at = Some("2030-01-01T00:00:00+00:00".into());
        assert_eq!(check(&scheduled, &off), Ok(SwitchoverNext::Write));
        assert_eq!(
            scheduled.to_request(),
            FailoverRequest {
                leader: Some(name("n1")),
                candidate: Some(name("n2")),
                scheduled_at: Some("2030-01-01T00:00:00+00:00".into()),
            }
        );
    }

    #[test]
    fn a_leader_alone_or_no_leader_changes_what_is_asked() {
        let me = name("n2");
        let off = SyncConfig::default();
        let mut alone = cluster(Some("n1"));
        alone.members.retain(|m| m.name.as_str() == "n1");
        let mut failover = ask(None, None);
        failover.failover = true;
        assert_eq!(
            check_switchover(&alone, &ask(Some("n1"), None), &off, &me),
            Err(Refusal::OnlyLeader {
                action: "switchover"
            })
        );
        assert_eq!(
            check_switchover(&alone, &failover, &off, &me)
                .unwrap_err()
                .to_string(),
            "failover is not possible: cluster does not have members except leader"
        );
        // No leader: a failover probes everyone else, and we are a candidate too.
        assert_eq!(
            check_switchover(&cluster(None), &failover, &off, &me),
            Ok(SwitchoverNext::ProbeCandidates {
                exclude: name("n2"),
                include_me: true
            })
        );
    }

    #[test]
    fn only_a_reachable_standby_that_may_fail_over_is_a_good_candidate() {
        let any = ask(Some("n1"), None);
        let nofailover = Tags {
            nofailover: Some(true),
            ..Tags::default()
        };
        let none = Err(Refusal::NoGoodCandidates {
            action: "switchover",
        });
        assert_eq!(check_candidates(&[], &any), none);
        assert_eq!(
            check_candidates(&[peer("n2", false, false, Tags::default())], &any),
            none
        );
        assert_eq!(
            check_candidates(&[peer("n2", true, true, Tags::default())], &any),
            none
        );
        assert_eq!(
            check_candidates(&[peer("n2", true, false, nofailover)], &any),
            none
        );
        let n2 = peer("n2", true, false, Tags::default());
        assert_eq!(check_candidates(std::slice::from_ref(&n2), &any), Ok(()));
        assert_eq!(
            check_candidates(std::slice::from_ref(&n2), &ask(Some("n1"), Some("n3"))),
            none
        );
        assert_eq!(
            Refusal::NoGoodCandidates {
                action: "switchover"
            }
            .status(),
            412
        );
    }

    #[test]
    fn reinitialize_is_for_a_standby_of_a_cluster_with_a_leader() {
        let me = name("n2");
        let standby = PgState {
            process: PgProcess::Running { pid: 7 },
            sql: Some(PgSql {
                in_recovery: true,
                ..PgSql::default()
            }),
            ..PgState::default()
        };
        let primary = PgState {
            sql: Some(PgSql::default()),
            ..standby.clone()
        };
        assert_eq!(
            check_reinitialize(&cluster(None), &me, &standby),
            Err(Refusal::NoLeaderToReinitialize)
        );
        assert_eq!(
            check_reinitialize(&cluster(Some("n2")), &me, &standby),
            Err(Refusal::LeaderCannotReinitialize)
        );
        let refused = check_reinitialize(&cluster(Some("n1")), &me, &primary).unwrap_err();
        assert_eq!(
            (refused.status(), refused.to_string().as_str()),
            (503, "I am running as a primary, can not reinitialize")
        );
        assert_eq!(
            check_reinitialize(&cluster(Some("n1")), &me, &standby),
            Ok(vec![
                Action::StopPostgres {
                    mode: StopMode::Immediate
                },
                Action::WipeDataDir
            ])
        );
    }

    #[test]
    fn shutdown_leaves_a_paused_cluster_alone_and_releases_only_what_we_lead() {
        assert_eq!(shutdown_plan(true, true), ShutdownPlan::LeaveRunning);
        assert_eq!(shutdown_plan(true, false), ShutdownPlan::LeaveRunning);
        assert_eq!(shutdown_plan(false, false), ShutdownPlan::Stop);
        assert_eq!(shutdown_plan(false, true), ShutdownPlan::StopAndRelease);
    }
}
