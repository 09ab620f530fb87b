//! Rule 5 (and the end of rule 4) for a member that does not lead: follow the leader, stop a
//! running standby that diverged from the leader's timeline for a rewind or a re-clone, and
//! bring a stopped former primary back as a standby (pg_rewind, waiting for a usable rewind
//! source, or re-clone). Reached only when someone else holds a readable leader key.

use crate::decision::{Action, DivergedRemedy, Memory, Reason, StartRole, StopMode, Upstream};
use crate::diverge::{Divergence, divergence, foreign_timeline, leader_timeline};
use crate::pg::{ControlData, PgSql};
use crate::types::{MemberName, Timeline};
use crate::view::{ClusterView, Member};

use super::{Ctx, upstream_of};

impl Ctx<'_> {
    /// Rule 5 under another member's key: point PostgreSQL at the leader once, unless it
    /// diverged from the leader's timeline.
    pub(super) fn follow(
        &self,
        next: &mut Memory,
        view: &ClusterView,
        leader: &MemberName,
        sql: &PgSql,
    ) -> (Vec<Action>, Reason) {
        let Some(leader_up) = upstream_of(view, leader) else {
            return (
                vec![],
                Reason::WaitingForLeaderMember {
                    leader: leader.clone(),
                },
            );
        };
        if self.cfg.tags.nostream {
            return self.follow_archive(next, view, leader, sql, &leader_up);
        }
        // The member we stream from: our `replicatefrom` member while it can serve us,
        // otherwise the leader (`topology::stream_source`).
        let upstream = self
            .stream_upstream(view)
            .unwrap_or_else(|| leader_up.clone());
        if let Some(diverged) =
            self.diverged_standby(next, view, leader, &upstream.name, sql, &leader_up)
        {
            return diverged;
        }
        next.rewind_failed_against = None;
        let reason = if &upstream.name == leader {
            Reason::Following {
                leader: leader.clone(),
            }
        } else {
            Reason::FollowingCascade {
                leader: leader.clone(),
                upstream: upstream.name.clone(),
            }
        };
        // Permanent slots, and the slots of members cascading from us (`crate::slots`).
        let slots = self.replica_slots(next, view, sql, &leader_up);
        let mut actions = vec![];
        if next.following.as_ref() != Some(&upstream.name) {
            next.following = Some(upstream.name.clone());
            actions.push(Action::Follow { upstream });
        }
        actions.extend(slots);
        (actions, reason)
    }

    /// A `nostream` member replays WAL from the archive only (`restore_command`): no
    /// `primary_conninfo`. One that streams anyway (the tag was just set) is restarted
    /// without it.
    fn follow_archive(
        &self,
        next: &mut Memory,
        view: &ClusterView,
        leader: &MemberName,
        sql: &PgSql,
        leader_up: &Upstream,
    ) -> (Vec<Action>, Reason) {
        next.following = None;
        if let Some(diverged) = self.diverged_standby(next, view, leader, leader, sql, leader_up) {
            return diverged;
        }
        next.rewind_failed_against = None;
        let mut actions = vec![];
        if sql.streaming {
            actions.push(Action::RestartPostgres {
                role: StartRole::Standby { upstream: None },
            });
        } else {
            actions.extend(self.replica_slots(next, view, sql, leader_up));
        }
        (
            actions,
            Reason::ArchiveRecovery {
                leader: leader.clone(),
            },
        )
    }

    /// The start of PostgreSQL as a standby: without an upstream for a `nostream` member
    /// (archive recovery only); otherwise streaming from [`Self::stream_upstream`] when
    /// `cascade`, else from the leader (`leader_up`).
    pub(super) fn standby_start(
        &self,
        view: &ClusterView,
        leader_up: &Upstream,
        cascade: bool,
    ) -> Action {
        let upstream = if self.cfg.tags.nostream {
            None
        } else if cascade {
            Some(
                self.stream_upstream(view)
                    .unwrap_or_else(|| leader_up.clone()),
            )
        } else {
            Some(leader_up.clone())
        };
        Action::StartPostgres {
            role: StartRole::Standby { upstream },
        }
    }

    /// Where this member streams from (`topology::stream_source`), when that member's key has
    /// a `conn_url`; `None` without a leader to follow.
    pub(super) fn stream_upstream(&self, view: &ClusterView) -> Option<Upstream> {
        let leader = view.leader_name()?;
        crate::topology::stream_source(view, self.me(), &self.cfg.tags)
            .and_then(|name| upstream_of(view, name))
            .or_else(|| upstream_of(view, leader))
    }

    /// A stopped former primary (or a standby whose rewind against this leader failed)
    /// rejoins under `leader`: it may hold WAL the leader never saw, so it waits for a usable
    /// rewind source, is rewound (or re-cloned), or stays stopped; `start` is its start as a
    /// standby of `upstream`.
    pub(super) fn rejoin(
        &self,
        next: &Memory,
        view: &ClusterView,
        cd: &ControlData,
        leader: &MemberName,
        upstream: Upstream,
        start: Action,
    ) -> (Vec<Action>, Reason) {
        // A former primary coming back under another leader: it may hold WAL the new leader
        // never saw, so it is rewound (or re-cloned) before it streams. A standby stopped to
        // be rewound (it diverged) whose rewind failed is handled the same way.
        if cd.state.was_primary() {
            if !view.member(leader).is_some_and(Member::runs_as_primary) {
                // Patroni's `check_leader_is_not_in_recovery`: a leader still promoting is no
                // rewind source — it may yet land on our timeline number, and pg_rewind would
                // then see "same timeline" and leave our diverged WAL in place.
                return (
                    vec![],
                    Reason::LeaderInRecovery {
                        leader: leader.clone(),
                    },
                );
            }
            match shared_timeline(view, leader, cd.timeline) {
                // The leader is on the timeline we were primary on, and the history does not
                // yet say who created it: either it followed us there (then rewind), or it
                // promoted into the same number while we were cut off (then pg_rewind would
                // find nothing to do and leave our diverged WAL in place). The leader writes
                // the line right after its promotion; wait for it.
                SharedTimeline::Unrecorded => {
                    return (
                        vec![],
                        Reason::AwaitingTimelineHistory {
                            leader: leader.clone(),
                            timeline: cd.timeline,
                        },
                    );
                }
                // Both promoted into the same timeline number (ours was never published: we
                // were cut off). pg_rewind compares timeline numbers and would find nothing
                // to do.
                SharedTimeline::Recorded(Some(creator)) if creator != self.me().as_str() => {
                    let wipe = self.cfg.remove_data_directory_on_rewind_failure;
                    return (
                        if wipe {
                            vec![Action::WipeDataDir]
                        } else {
                            vec![]
                        },
                        Reason::TimelineCollision {
                            leader: leader.clone(),
                            timeline: cd.timeline,
                            reinitializing: wipe,
                        },
                    );
                }
                _ => {}
            }
        }
        if next.rewind_failed_against.as_ref() == Some(leader) {
            if self.cfg.remove_data_directory_on_rewind_failure {
                return (
                    vec![Action::WipeDataDir],
                    Reason::RewindFailedReinitializing {
                        leader: leader.clone(),
                    },
                );
            }
            return (
                vec![],
                Reason::RewindFailedStaying {
                    leader: leader.clone(),
                },
            );
        }
        if self.cfg.use_pg_rewind {
            return (
                vec![Action::Rewind { upstream }, start],
                Reason::Rewinding {
                    leader: leader.clone(),
                },
            );
        }
        if self.cfg.remove_data_directory_on_rewind_failure {
            return (
                vec![Action::WipeDataDir],
                Reason::RewindFailedReinitializing {
                    leader: leader.clone(),
                },
            );
        }
        (
            vec![start],
            Reason::StartingAsSecondary {
                leader: Some(leader.clone()),
            },
        )
    }

    /// A running standby that cannot stream and holds WAL past the point where the leader's
    /// timeline history left its timeline (a former primary started without a leader, or a
    /// standby that was ahead of the member that won the race: simulator findings F5, F6) is
    /// stopped and rewound, or re-cloned; PostgreSQL alone would retry streaming forever.
    pub(super) fn diverged_standby(
        &self,
        next: &mut Memory,
        view: &ClusterView,
        leader: &MemberName,
        streams_from: &MemberName,
        sql: &PgSql,
        upstream: &Upstream,
    ) -> Option<(Vec<Action>, Reason)> {
        let leader_tl = view
            .member(leader)
            .and_then(|m| leader_timeline(m.timeline, &view.history));
        // Streaming counts only on the leader's timeline (a standby's `timeline` is its WAL
        // receiver's). A standby past the point where the leader's timeline forked off its
        // own streams its old timeline again and again, for a moment each time, up to the
        // fork point and no further: each time PostgreSQL refuses the leader's timeline
        // (it forked off before the standby's position) and retries a few seconds later.
        // Counting those moments as streaming restarted the clock below, so such a standby
        // waited minutes for a rewind (the fault suite's kill-agent-unguarded, async).
        let on_leaders_timeline = leader_tl.is_none_or(|tl| sql.timeline == tl);
        if !sql.in_recovery || (sql.streaming && on_leaders_timeline) {
            next.not_streaming_since = None;
            return None;
        }
        // Only a standby that has not streamed the leader's timeline for a while: right after
        // a switchover, a failover or a rewind, PostgreSQL reports the last checkpoint's
        // timeline until its WAL receiver runs again, and a receiver reaches the leader's
        // timeline only at the end of the old one, which looks like divergence and is not.
        // The clock starts when we point at this upstream (a new leader, a re-pointed
        // standby, a cascade moved to or from its `replicatefrom` member).
        if next.following.as_ref() != Some(streams_from) {
            next.not_streaming_since = Some(self.now);
            return None;
        }
        let since = *next.not_streaming_since.get_or_insert(self.now);
        if self.now.saturating_since(since) < self.cfg.ttl * 2 {
            return None;
        }
        let leader_tl = leader_tl?;
        let end = sql.wal_position();
        // Our own history against the cluster's: a timeline number two promotions made (F7).
        let foreign = sql
            .timeline_start
            .and_then(|start| Some((start, foreign_timeline(start, leader_tl, &view.history)?)));
        let (timeline, switch) = match foreign {
            // The leader's number: pg_rewind would find nothing to do.
            Some((start, theirs)) if start.timeline == leader_tl => {
                let wipe = self.cfg.remove_data_directory_on_rewind_failure;
                let actions = if wipe {
                    next.following = None;
                    vec![
                        Action::StopPostgres {
                            mode: StopMode::Fast,
                        },
                        Action::WipeDataDir,
                    ]
                } else {
                    vec![]
                };
                return Some((
                    actions,
                    Reason::ForeignTimeline {
                        leader: leader.clone(),
                        timeline: start.timeline,
                        ours: start.at,
                        theirs,
                        reinitializing: wipe,
                    },
                ));
            }
            // An older number the leader's history gives another origin: a timeline the
            // leader never had; pg_rewind compares the two histories.
            Some((start, _)) => (start.timeline, None),
            None => match divergence(sql.timeline, end, leader_tl, &view.history) {
                Divergence::Diverged { timeline, switch } => (timeline, switch),
                _ => return None,
            },
        };
        let (actions, remedy) = if self.cfg.use_pg_rewind {
            let stop = Action::StopPostgres {
                mode: StopMode::Fast,
            };
            let start = self.standby_start(view, upstream, false);
            (
                vec![
                    stop,
                    Action::Rewind {
                        upstream: upstream.clone(),
                    },
                    start,
                ],
                DivergedRemedy::Rewind,
            )
        } else if self.cfg.remove_data_directory_on_rewind_failure {
            (
                vec![
                    Action::StopPostgres {
                        mode: StopMode::Fast,
                    },
                    Action::WipeDataDir,
                ],
                DivergedRemedy::Reinitialize,
            )
        } else {
            (vec![], DivergedRemedy::Nothing)
        };
        if !actions.is_empty() {
            next.following = None;
        }
        Some((
            actions,
            Reason::Diverged {
                leader: leader.clone(),
                timeline,
                end,
                switch,
                remedy,
            },
        ))
    }
}

/// Whether the leader is on the timeline we were a primary on, and who created it per the
/// history.
enum SharedTimeline<'v> {
    /// The leader is on another timeline (or timeline 1, or unknown).
    No,
    /// It is on ours, and the history has no line yet for the timeline before it.
    Unrecorded,
    /// It is on ours, and the history line names this creator (if it names one).
    Recorded(Option<&'v str>),
}

fn shared_timeline<'v>(
    view: &'v ClusterView,
    leader: &MemberName,
    timeline: Timeline,
) -> SharedTimeline<'v> {
    let Some(member) = view.member(leader) else {
        return SharedTimeline::No;
    };
    if timeline.0 < 2 || leader_timeline(member.timeline, &view.history) != Some(timeline) {
        return SharedTimeline::No;
    }
    match view.history.iter().find(|h| h.timeline.0 == timeline.0 - 1) {
        None => SharedTimeline::Unrecorded,
        Some(h) => SharedTimeline::Recorded(h.new_leader.as_deref()),
    }
}
