//! The HA decision: one pure function per cycle.
//!
//! Order of the checks matters and follows the safety rules (design.md §4):
//! 1. fence first: PostgreSQL that may accept writes while our lease is not provably alive is
//!    stopped immediately, whatever else is going on;
//! 2. with no DCS view nothing else is decided (replicas keep streaming, a leader keeps running
//!    until its fencing deadline, which step 1 enforces);
//! 3. the data directory: empty → bootstrap or clone; unusable → leave it alone;
//! 4. PostgreSQL down → restart as primary while we hold the key (bounded by
//!    `primary_start_timeout`), otherwise rewind if it was a primary and start as a standby;
//! 5. PostgreSQL up → keep / promote as the leader, demote when someone else leads or nobody
//!    does (a primary never runs without the key), follow the leader, or race for the key when
//!    it is free and we are the healthiest eligible member.

use std::time::Duration;

use crate::decision::{
    Action, ActionKind, Decision, DivergedRemedy, HaConfig, Memory, NotHealthiest, Observation,
    Reason, StartRole, StopMode, SyncMode, Upstream,
};
use crate::diverge::{Divergence, divergence, leader_timeline};
use crate::pg::{ClusterState, ControlData, DataDir, PgSql, PgState};
use crate::sync::{parse_ssn, render_ssn, render_ssn_quorum};
use crate::types::{Lsn, MemberName, Mono, Timeline};
use crate::view::{ClusterView, LeaderKey, Member, SyncKey, SyncState};

/// How soon a leaderless member looks again (the DCS watch usually wakes it earlier).
const LEADERLESS_RECHECK: Duration = Duration::from_secs(1);

/// How soon a leader in synchronous mode looks at its standbys again.
const SYNC_RECHECK: Duration = Duration::from_secs(1);

/// Decide what to do in this cycle. Pure and total.
pub fn decide(memory: &Memory, obs: &Observation, config: &HaConfig, now: Mono) -> Decision {
    let mut next = memory.clone();
    if let (Some(failure), Some(leader)) = (
        &obs.last_failure,
        obs.dcs.as_ref().and_then(|v| v.leader_name()),
    ) && failure.action == ActionKind::Rewind
    {
        next.rewind_failed_against = Some(leader.clone());
    }

    let ctx = Ctx {
        obs,
        cfg: config,
        now,
        epoch: memory.leader_epoch,
    };
    let (mut actions, mut reason) = ctx.choose(&mut next);
    // The memory below is derived from the actions that will really run.
    if config.pause {
        // Maintenance mode: PostgreSQL and the leader key are left as they are; only
        // bookkeeping that changes no role still happens, and a manual switchover to a named
        // candidate (Patroni allows exactly that while paused). The leader keeps managing
        // `/sync` and `synchronous_standby_names` (Patroni does too): a synchronous standby
        // that stops replaying would otherwise hold every commit for the whole maintenance.
        let manual = matches!(
            reason,
            Reason::SwitchoverDemoting { candidate: Some(_) } | Reason::ManualCandidate
        ) || (matches!(reason, Reason::SyncUpdate { .. }) && ctx.holds_key())
            // The former primary of a switchover rejoins as a standby (rewound if needed).
            || (memory.handed_over
                && actions.iter().all(|a| {
                    matches!(
                        a,
                        Action::StartPostgres {
                            role: StartRole::Standby { .. }
                        } | Action::Rewind { .. }
                    )
                }));
        let before = actions.len();
        actions.retain(|a| {
            manual
                || matches!(
                    a,
                    Action::Follow { .. }
                        | Action::EnsureSlots { .. }
                        | Action::WriteConfig
                        | Action::UpdateHistory
                        | Action::ReattachLeader
                        | Action::RepairLeader { .. }
                        | Action::ClearFailover { .. }
                )
        });
        let detail = if actions.len() < before {
            format!("not acting while paused, would have: {reason}")
        } else {
            reason.to_string()
        };
        reason = Reason::Paused { detail };
    }

    // PostgreSQL started as a standby of this leader needs no re-pointing afterwards.
    if let Some(up) = actions.iter().find_map(|a| match a {
        Action::StartPostgres {
            role: StartRole::Standby { upstream: Some(up) },
        } => Some(up),
        _ => None,
    }) {
        next.following = Some(up.name.clone());
    }
    // "Not streaming since" counts for one running postmaster: a stop or a (re)start begins
    // a new one, which must get its 2 * ttl before it is judged diverged.
    if !obs.pg.is_running()
        || actions.iter().any(|a| {
            matches!(
                a,
                Action::StartPostgres { .. } | Action::StopPostgres { .. }
            )
        })
    {
        next.not_streaming_since = None;
    }

    if actions.contains(&Action::HandOver) {
        next.handed_over = true;
    } else if obs.pg.is_running() || ctx.holds_key() {
        next.handed_over = false;
    }

    // A leader that cannot read the DCS is still a leader until it fences: forgetting it would
    // disarm the fencer exactly when it is needed (simulator finding F1).
    next.was_leader = !actions.contains(&Action::HandOver)
        && (ctx.holds_key() || (obs.dcs.is_none() && memory.was_leader))
        || actions.iter().any(|a| {
            matches!(
                a,
                Action::AcquireLeader | Action::ReattachLeader | Action::RepairLeader { .. }
            )
        });
    // The key we hold keeps its epoch (create_revision) until it is deleted.
    if let Some(view) = &obs.dcs {
        next.leader_epoch = view.leader.as_ref().and_then(|l| {
            let ours = l.name.as_ref() == Some(&config.me) && Some(l.lease) == obs.lease.id;
            (ours || Some(l.create_revision) == memory.leader_epoch).then_some(l.create_revision)
        });
    }

    let mut wake_at = now + config.loop_wait;
    if !actions.is_empty() {
        // Observe the effect right away.
        wake_at = now;
    }
    if obs.dcs.as_ref().is_some_and(|v| v.leader.is_none()) {
        wake_at = wake_at.min(now + LEADERLESS_RECHECK);
    }
    if config.sync.enabled() && ctx.holds_key() {
        // A synchronous standby that died holds every commit until the set is changed.
        wake_at = wake_at.min(now + SYNC_RECHECK);
    }
    if let Some(wait) = obs
        .dcs
        .as_ref()
        .and_then(|v| scheduled_wait_ms(v, obs.unix_ms))
        && wait > 0
    {
        wake_at = wake_at.min(now + Duration::from_millis(wait.unsigned_abs()));
    }
    // Look again at the fencing deadline while it lies ahead. Once it has passed, this
    // decision already fenced (step 1), and waking at once would only spin.
    if (next.was_leader || may_be_primary(&obs.pg))
        && let Some(deadline) = obs.lease.fence_deadline.filter(|d| *d > now)
    {
        wake_at = wake_at.min(deadline);
    }

    Decision {
        actions,
        reason,
        next_memory: next,
        wake_at,
    }
}

/// PostgreSQL may accept writes: it answers as a primary, or it runs and its control file says
/// it is in production (not answering SQL is no proof of being read-only).
pub fn may_be_primary(pg: &PgState) -> bool {
    if !pg.is_running() {
        return false;
    }
    match (&pg.sql, &pg.data_dir) {
        (Some(sql), _) => !sql.in_recovery,
        (None, DataDir::Initialized(cd)) => cd.state != ClusterState::InArchiveRecovery,
        (None, _) => true,
    }
}

struct Ctx<'a> {
    obs: &'a Observation,
    cfg: &'a HaConfig,
    now: Mono,
    /// `Memory::leader_epoch` from the previous cycle.
    epoch: Option<i64>,
}

impl Ctx<'_> {
    fn lease_ok(&self) -> bool {
        self.obs.lease.valid_at(self.now)
    }

    fn me(&self) -> &MemberName {
        &self.cfg.me
    }

    /// The leader key holds our name and our current, valid lease.
    fn holds_key(&self) -> bool {
        self.lease_ok()
            && self
                .obs
                .dcs
                .as_ref()
                .and_then(|v| v.leader.as_ref())
                .is_some_and(|l| {
                    l.name.as_ref() == Some(self.me()) && Some(l.lease) == self.obs.lease.id
                })
    }

    /// The leader key is ours but its value does not decode: it is attached to our lease, or
    /// it is still the key we acquired (its `create_revision` is our epoch: nobody else can
    /// have acquired it since, whoever wrote the value). Only with a valid lease.
    fn holds_unreadable_key(&self) -> Option<&LeaderKey> {
        self.obs
            .dcs
            .as_ref()
            .and_then(|v| v.leader.as_ref())
            .filter(|l| {
                self.lease_ok()
                    && l.name.is_none()
                    && (Some(l.lease) == self.obs.lease.id || Some(l.create_revision) == self.epoch)
            })
    }

    /// The leader key holds our name but another lease (from before an agent restart).
    fn holds_stale_key(&self) -> bool {
        self.obs
            .dcs
            .as_ref()
            .and_then(|v| v.leader.as_ref())
            .is_some_and(|l| {
                l.name.as_ref() == Some(self.me()) && Some(l.lease) != self.obs.lease.id
            })
    }

    fn choose(&self, next: &mut Memory) -> (Vec<Action>, Reason) {
        let pg = &self.obs.pg;

        // 1. Fence: no writable PostgreSQL without a provably alive lease.
        if may_be_primary(pg) && !self.lease_ok() && !self.cfg.pause {
            next.following = None;
            let reason = if self.obs.dcs.is_none() {
                Reason::DcsUnreachableFencing
            } else {
                Reason::LeaseExpiredFencing
            };
            return (
                vec![Action::StopPostgres {
                    mode: StopMode::Immediate,
                }],
                reason,
            );
        }

        // 2. Without a DCS view, change nothing.
        let Some(view) = self.obs.dcs.as_ref() else {
            return (vec![], Reason::DcsUnreachable);
        };
        // Our leader key with a value someone overwrote: put our name back first.
        if let Some(key) = self.holds_unreadable_key() {
            return (
                vec![Action::RepairLeader {
                    version: key.mod_revision,
                }],
                Reason::RepairingLeaderKey,
            );
        }
        if let Some(key) = &self.cfg.unsupported_blocker {
            return self.blocked(next, key);
        }

        // 3. The data directory.
        let cd = match &pg.data_dir {
            DataDir::Unusable(error) => {
                let mut actions = vec![];
                if self.holds_key() || self.holds_stale_key() {
                    actions.push(Action::ReleaseLeader { last_lsn: None });
                }
                return (
                    actions,
                    Reason::DataDirUnusable {
                        error: error.clone(),
                    },
                );
            }
            DataDir::Empty => return self.empty_data_dir(next, view),
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
            return (
                actions,
                Reason::SystemIdMismatch {
                    ours: cd.system_id.clone(),
                    cluster: cluster.to_owned(),
                },
            );
        }

        // 4. PostgreSQL down.
        if !pg.is_running() {
            return self.postgres_down(next, view, cd);
        }
        if self.holds_key() {
            next.primary_down_since = None;
        }

        // 5. PostgreSQL up.
        let leader = view
            .leader
            .as_ref()
            .filter(|l| l.name.as_ref() != Some(self.me()));
        if let Some(l) = leader
            && may_be_primary(pg)
        {
            next.following = None;
            return (
                vec![Action::StopPostgres {
                    mode: StopMode::Immediate,
                }],
                Reason::DemotingNotLeader {
                    leader: l.name.clone(),
                },
            );
        }
        let Some(sql) = &pg.sql else {
            return (vec![], Reason::WaitingForPostgres);
        };

        if self.holds_key() {
            return self.leader_running(next, view, sql);
        }
        if self.holds_stale_key() {
            if !sql.in_recovery && self.lease_ok() {
                return (vec![Action::ReattachLeader], Reason::ReattachingLeader);
            }
            // A standby under our old key may be in the middle of a promotion the previous
            // agent process started: stop it before giving the key away, or the promotion
            // completes next to the new leader's (simulator finding F3).
            return (
                vec![
                    Action::StopPostgres {
                        mode: StopMode::Immediate,
                    },
                    Action::ReleaseLeader { last_lsn: None },
                ],
                Reason::ReleasingLockPgDown,
            );
        }
        match leader {
            // Someone leads, the key does not say who: no race, nothing to follow.
            Some(LeaderKey {
                name: None, lease, ..
            }) => (vec![], Reason::LeaderKeyUnreadable { lease: *lease }),
            Some(LeaderKey {
                name: Some(leader), ..
            }) => {
                let Some(upstream) = upstream_of(view, leader) else {
                    return (
                        vec![],
                        Reason::WaitingForLeaderMember {
                            leader: leader.clone(),
                        },
                    );
                };
                if let Some(diverged) = self.diverged_standby(next, view, leader, sql, &upstream) {
                    return diverged;
                }
                next.rewind_failed_against = None;
                let reason = Reason::Following {
                    leader: leader.clone(),
                };
                if next.following.as_ref() == Some(leader) {
                    return (vec![], reason);
                }
                next.following = Some(leader.clone());
                (vec![Action::Follow { upstream }], reason)
            }
            None if !sql.in_recovery => {
                // A primary nobody elected (rule 5): fence first; it may race as a standby.
                next.following = None;
                (
                    vec![Action::StopPostgres {
                        mode: StopMode::Immediate,
                    }],
                    Reason::DemotingNotLeader { leader: None },
                )
            }
            None => self.race(next, view, sql),
        }
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
            return match upstream_of(view, leader) {
                Some(upstream) => (
                    vec![
                        Action::Clone {
                            upstream: upstream.clone(),
                        },
                        Action::StartPostgres {
                            role: StartRole::Standby {
                                upstream: Some(upstream),
                            },
                        },
                    ],
                    Reason::Cloning {
                        leader: leader.clone(),
                    },
                ),
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
        match view.initialize.as_deref() {
            None if !self.cfg.can_bootstrap => (vec![], Reason::NotAllowedToBootstrap),
            None if !self.lease_ok() => (vec![], Reason::WaitingForLease),
            None => (
                vec![Action::RaceInitialize, Action::BootstrapCluster],
                Reason::RacingForInitialize,
            ),
            Some("") => (vec![], Reason::WaitingForLeaderToBootstrap),
            Some(_) => (vec![], Reason::NoLeaderWaiting),
        }
    }

    /// The dynamic configuration asks for something that must not be ignored (a standby
    /// cluster): no writable primary, no leader key, no bootstrap or promotion; a primary is
    /// stopped cleanly and comes back read-only, as a standby without an upstream.
    fn blocked(&self, next: &mut Memory, key: &str) -> (Vec<Action>, Reason) {
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

    fn postgres_down(
        &self,
        next: &mut Memory,
        view: &ClusterView,
        cd: &ControlData,
    ) -> (Vec<Action>, Reason) {
        next.following = None;
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
        let start = Action::StartPostgres {
            role: StartRole::Standby {
                upstream: Some(upstream.clone()),
            },
        };
        if !cd.state.was_primary() && next.rewind_failed_against.as_ref() != Some(leader) {
            return (
                vec![start],
                Reason::StartingAsSecondary {
                    leader: Some(leader.clone()),
                },
            );
        }
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

    fn leader_running(
        &self,
        next: &mut Memory,
        view: &ClusterView,
        sql: &PgSql,
    ) -> (Vec<Action>, Reason) {
        next.following = None;
        // A rewind that failed against some leader says nothing once we lead.
        next.rewind_failed_against = None;
        next.not_streaming_since = None;
        if sql.in_recovery {
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
        if self.cfg.use_slots {
            let mut slots: Vec<String> = view
                .members
                .iter()
                .filter(|m| &m.name != self.me() && !m.tags.nostream)
                .map(|m| m.name.slot_name())
                .collect();
            slots.sort();
            // `sql.slots` lists only the slots pgbaton manages: another tool's slot is no
            // reason to act.
            let mut have = sql.slots.clone();
            have.sort();
            if slots != have {
                actions.push(Action::EnsureSlots { slots });
            }
        }
        (actions, Reason::LeaderWithLock)
    }

    /// No leader key: take it if we are the healthiest eligible member.
    fn race(&self, next: &mut Memory, view: &ClusterView, sql: &PgSql) -> (Vec<Action>, Reason) {
        if self.cfg.tags.is_nofailover() {
            return (vec![], Reason::NotAllowedToPromote);
        }
        if !self.lease_ok() {
            return (vec![], Reason::WaitingForLease);
        }
        if let Some(req) = view.failover.as_ref().map(|f| &f.value)
            && scheduled_wait_ms(view, self.obs.unix_ms).is_none_or(|w| w <= 0)
        {
            match &req.candidate {
                // The named candidate takes over without comparing itself to the others
                // (Patroni's manual failover); the old leader shut down cleanly after its
                // standbys had received everything.
                Some(c) if c == self.me() => {
                    next.following = None;
                    let mut actions = vec![Action::AcquireLeader];
                    actions.extend(self.before_promote(view));
                    actions.push(Action::Promote);
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
        if let Err(why) = self.healthiest(view, sql) {
            return (vec![], Reason::NotHealthiest(why));
        }
        next.following = None;
        let mut actions = vec![Action::AcquireLeader];
        actions.extend(self.before_promote(view));
        actions.push(Action::Promote);
        (actions, Reason::AcquiringLock)
    }

    /// The `/sync` state a promotion must respect: `None` when synchronous mode is off. In
    /// synchronous mode a `/sync` that is missing, names no leader or does not decode says
    /// nothing about who holds every acknowledged commit, so it blocks the race exactly as a
    /// `/sync` naming someone else does (a deleted key must not switch the gate off).
    fn active_sync<'v>(
        &self,
        view: &'v ClusterView,
    ) -> Result<Option<&'v SyncState>, NotHealthiest> {
        if !self.cfg.sync.enabled() {
            return Ok(None);
        }
        match &view.sync {
            SyncKey::Present(s) if s.value.leader.is_some() => Ok(Some(&s.value)),
            SyncKey::Present(_) | SyncKey::Absent => Err(NotHealthiest::SyncKeyMissing),
            SyncKey::Unreadable { why, .. } => {
                Err(NotHealthiest::SyncKeyUnreadable { why: why.clone() })
            }
        }
    }

    /// Before `pg_ctl promote` in synchronous mode (Patroni's
    /// `process_sync_replication_prepromote`): claim `/sync` for ourselves — with the old
    /// synchronous set minus us in strict mode, empty otherwise — by compare-and-swap (if that
    /// fails the promotion waits), and make `synchronous_standby_names` match, so the new
    /// primary never acknowledges a commit strict mode would have held.
    fn before_promote(&self, view: &ClusterView) -> Vec<Action> {
        if !self.cfg.sync.enabled() {
            return vec![];
        }
        let old = view.sync.present();
        let mut standbys: Vec<MemberName> = vec![];
        if self.cfg.sync.strict
            && let Some(old) = old
        {
            standbys = old
                .value
                .sync_standby
                .iter()
                .chain(old.value.leader.iter())
                .filter(|n| *n != self.me())
                .cloned()
                .collect();
            standbys.sort();
            standbys.dedup();
        }
        // Quorum mode: the same set as `ANY numsync (...)`, with the quorum that keeps
        // `quorum + numsync ≥ |voters|`.
        let (quorum, guc) = if self.cfg.sync.mode == SyncMode::Quorum {
            let numsync = (self.cfg.sync.node_count.max(1) as usize).min(standbys.len());
            (
                standbys.len().saturating_sub(numsync),
                render_ssn_quorum(&standbys, numsync, self.cfg.sync.strict),
            )
        } else {
            (0, render_ssn(&standbys, self.cfg.sync.strict))
        };
        vec![
            Action::WriteSync {
                state: Some(SyncState {
                    leader: Some(self.me().clone()),
                    sync_standby: standbys.clone(),
                    quorum: u32::try_from(quorum).unwrap_or(u32::MAX),
                }),
                version: view.sync.version(),
            },
            Action::SetSyncStandbys { value: Some(guc) },
        ]
    }

    /// The standbys we would make synchronous: members streaming from us, not `nosync`,
    /// ordered as Patroni orders them — `sync_priority`, then `sync_state` (the current
    /// synchronous standbys first, so an asynchronous standby that momentarily flushed further
    /// does not take their place), then flushed position; `nofailover` members last —
    /// `synchronous_node_count` of them.
    fn sync_candidates(&self, view: &ClusterView, sql: &PgSql) -> Vec<MemberName> {
        let mut rows: Vec<SyncCandidate<'_>> = view
            .members
            .iter()
            .filter(|m| &m.name != self.me() && !m.tags.is_nosync())
            .filter_map(|m| {
                let row = sql.replication.iter().find(|r| {
                    r.application_name.eq_ignore_ascii_case(m.name.as_str())
                        && r.state == "streaming"
                })?;
                Some(SyncCandidate {
                    name: &m.name,
                    nofailover: m.tags.is_nofailover(),
                    priority: m.tags.sync_priority.unwrap_or(1),
                    state: sync_state_rank(&row.sync_state),
                    position: sql.commit_waits_for(row).unwrap_or_default(),
                })
            })
            .collect();
        if let Some(limit) = self.cfg.sync.max_lag_on_syncnode {
            // Patroni: behind the most advanced standby, or the primary when only one streams,
            // measured on the position commits wait for (a standby whose replay is paused lags
            // under `remote_apply` even while it keeps flushing).
            let reference = if rows.len() > 1 {
                rows.iter().map(|r| r.position).max().unwrap_or_default()
            } else {
                sql.wal_position()
            };
            rows.retain(|r| reference.saturating_sub(r.position) <= limit);
        }
        rows.sort_by(|a, b| {
            a.nofailover
                .cmp(&b.nofailover)
                .then(b.priority.cmp(&a.priority))
                .then(b.state.cmp(&a.state))
                .then(b.position.cmp(&a.position))
                .then(a.name.cmp(b.name))
        });
        let take = if self.cfg.sync.mode == SyncMode::Quorum {
            usize::MAX
        } else {
            self.cfg.sync.node_count.max(1) as usize
        };
        rows.into_iter()
            .take(take)
            .map(|r| r.name.clone())
            .collect()
    }

    /// One step of Patroni's priority-mode protocol per cycle (the next cycle runs at once):
    /// `/sync` names us; unpublish before removing from `synchronous_standby_names`; add to
    /// `synchronous_standby_names`; publish only standbys PostgreSQL reports `sync` and that
    /// have flushed past our position at the change. Any member in `/sync` therefore holds
    /// every acknowledged commit.
    fn sync_steps(
        &self,
        next: &mut Memory,
        view: &ClusterView,
        sql: &PgSql,
    ) -> Option<(Vec<Action>, Reason)> {
        let stored = view.sync.present();
        let version = view.sync.version();
        let ours = stored.is_some_and(|s| s.value.leader.as_ref() == Some(self.me()));
        let step =
            |actions: Vec<Action>, detail: String| Some((actions, Reason::SyncUpdate { detail }));
        if !self.cfg.sync.enabled() {
            // Switched off: unpublish first, then release the waiting commits.
            if ours {
                return step(
                    vec![
                        Action::WriteSync {
                            state: None,
                            version,
                        },
                        Action::SetSyncStandbys { value: None },
                    ],
                    "Disabled synchronous replication".into(),
                );
            }
            return None;
        }
        let me = Some(self.me().clone());
        if !ours {
            return step(
                vec![Action::WriteSync {
                    state: Some(SyncState {
                        leader: me,
                        sync_standby: vec![],
                        quorum: 0,
                    }),
                    version,
                }],
                "Enabled synchronous replication".into(),
            );
        }
        // Our flush position once a change of `synchronous_standby_names` is in effect (pinned
        // on the first cycle that observes it, i.e. after the reload): a standby that flushed
        // this far holds every commit acknowledged under the previous setting.
        let changed_at = *next.sync_changed_at.get_or_insert(sql.wal_position());
        if self.cfg.sync.mode == SyncMode::Quorum {
            return self.quorum_steps(next, view, sql, changed_at);
        }
        let published = stored
            .map(|s| s.value.sync_standby.clone())
            .unwrap_or_default();
        let picked = self.sync_candidates(view, sql);
        let in_guc = parse_ssn(&sql.synchronous_standby_names);
        let confirmed = |n: &MemberName| {
            in_guc.iter().any(|g| g.eq_ignore_ascii_case(n.as_str()))
                && sql.replication.iter().any(|r| {
                    r.application_name.eq_ignore_ascii_case(n.as_str())
                        && r.sync_state == "sync"
                        && (published.contains(n) || r.flush_lsn.is_some_and(|l| l >= changed_at))
                })
        };
        let keep: Vec<MemberName> = published
            .iter()
            .filter(|n| picked.contains(n) && confirmed(n))
            .cloned()
            .collect();
        if keep != published {
            return step(
                vec![Action::WriteSync {
                    state: Some(SyncState {
                        leader: me,
                        sync_standby: keep,
                        quorum: 0,
                    }),
                    version,
                }],
                "Removing standbys from /sync before changing synchronous_standby_names".into(),
            );
        }
        // Strict mode never empties the set: with nobody to pick, the published set (or the
        // placeholder) stays, so commits keep waiting rather than going through unprotected.
        let target = if picked.is_empty() && self.cfg.sync.strict {
            published.clone()
        } else {
            picked.clone()
        };
        let wanted = render_ssn(&target, self.cfg.sync.strict);
        if wanted != sql.synchronous_standby_names {
            next.sync_changed_at = None;
            return step(
                vec![Action::SetSyncStandbys {
                    value: Some(wanted.clone()),
                }],
                format!("Assigning synchronous_standby_names = '{wanted}'"),
            );
        }
        let mut now_sync: Vec<MemberName> =
            picked.iter().filter(|n| confirmed(n)).cloned().collect();
        now_sync.sort();
        if now_sync != published {
            let names: Vec<&str> = now_sync.iter().map(MemberName::as_str).collect();
            let detail = format!(
                "Synchronous standby status assigned to [{}]",
                names.join(", ")
            );
            return step(
                vec![Action::WriteSync {
                    state: Some(SyncState {
                        leader: me,
                        sync_standby: now_sync,
                        quorum: 0,
                    }),
                    version,
                }],
                detail,
            );
        }
        None
    }

    /// One step of the quorum-mode protocol per cycle. `/sync` holds the voters and `quorum`,
    /// the GUC `ANY numsync (standbys)`; every step keeps `quorum + numsync ≥ |voters ∪ GUC
    /// names|` for the setting in force, and voters are only standbys that flushed past our
    /// position at the last GUC change (so they hold every commit acknowledged under an
    /// earlier setting): drop voters that left or are unconfirmed (quorum unchanged); raise
    /// `quorum` before a GUC change needs it; change the GUC; publish the confirmed standbys
    /// with the smallest `quorum` that keeps the invariant.
    fn quorum_steps(
        &self,
        next: &mut Memory,
        view: &ClusterView,
        sql: &PgSql,
        changed_at: Lsn,
    ) -> Option<(Vec<Action>, Reason)> {
        let stored = view.sync.present()?;
        let version = stored.mod_revision;
        let voters = stored.value.sync_standby.clone();
        let quorum = stored.value.quorum as usize;
        let me = Some(self.me().clone());
        let write = |sync_standby: Vec<MemberName>, quorum: usize, detail: String| {
            Some((
                vec![Action::WriteSync {
                    state: Some(SyncState {
                        leader: me.clone(),
                        sync_standby,
                        quorum: u32::try_from(quorum).unwrap_or(u32::MAX),
                    }),
                    version,
                }],
                Reason::SyncUpdate { detail },
            ))
        };
        let in_guc = parse_ssn(&sql.synchronous_standby_names);
        let listed = |n: &MemberName| in_guc.iter().any(|g| g.eq_ignore_ascii_case(n.as_str()));
        let confirmed = |n: &MemberName| {
            listed(n)
                && sql.replication.iter().any(|r| {
                    r.application_name.eq_ignore_ascii_case(n.as_str())
                        && (r.sync_state == "quorum" || r.sync_state == "sync")
                        && r.flush_lsn.is_some_and(|l| l >= changed_at)
                })
        };
        let mut active = self.sync_candidates(view, sql);
        active.sort();

        // 1. Voters that left, lag too far, or are not confirmed: unpublish first.
        let keep: Vec<MemberName> = voters
            .iter()
            .filter(|n| active.contains(n) && confirmed(n))
            .cloned()
            .collect();
        if keep != voters {
            return write(
                keep,
                quorum,
                "Removing standbys from /sync before changing synchronous_standby_names".into(),
            );
        }

        // 2. The GUC: every eligible standby, ANY min(synchronous_node_count, n). Strict mode
        //    with nobody eligible keeps the voters (or the placeholder) so commits wait.
        let target = if active.is_empty() && self.cfg.sync.strict {
            voters.clone()
        } else {
            active
        };
        let numsync = (self.cfg.sync.node_count.max(1) as usize).min(target.len());
        let wanted = render_ssn_quorum(&target, numsync, self.cfg.sync.strict);
        let union = |a: &[MemberName], b: &[MemberName]| {
            let mut all: Vec<&MemberName> = a.iter().chain(b).collect();
            all.sort();
            all.dedup();
            all.len()
        };
        if wanted != sql.synchronous_standby_names {
            let needed = union(&voters, &target).saturating_sub(numsync);
            if quorum < needed {
                return write(
                    voters,
                    needed,
                    format!(
                        "Increasing quorum to {needed} before changing synchronous_standby_names"
                    ),
                );
            }
            next.sync_changed_at = None;
            return Some((
                vec![Action::SetSyncStandbys {
                    value: Some(wanted.clone()),
                }],
                Reason::SyncUpdate {
                    detail: format!("Assigning synchronous_standby_names = '{wanted}'"),
                },
            ));
        }

        // 3. Publish the confirmed standbys with the smallest safe quorum.
        let now_voters: Vec<MemberName> = target.iter().filter(|n| confirmed(n)).cloned().collect();
        let now_quorum = union(&now_voters, &target).saturating_sub(numsync);
        if now_voters != voters || now_quorum != quorum {
            let names: Vec<&str> = now_voters.iter().map(MemberName::as_str).collect();
            return write(
                now_voters.clone(),
                now_quorum,
                format!(
                    "Quorum standbys [{}], quorum {now_quorum}",
                    names.join(", ")
                ),
            );
        }
        None
    }

    /// A peer that answered, runs as a standby and may be promoted.
    fn peer_can_take_over(&self, name: &MemberName) -> bool {
        self.obs.peers.iter().any(|p| {
            &p.name == name
                && p.reachable
                && !p.is_primary
                && !p.tags.is_nofailover()
                && !p.watchdog_failed
        })
    }

    /// The leader's side of a switchover request (Patroni's
    /// `process_manual_failover_from_leader`): wait for a scheduled time, hand over to a
    /// healthy candidate, or clean up a request that cannot be carried out.
    fn switchover_from_leader(&self, view: &ClusterView) -> Option<(Vec<Action>, Reason)> {
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

/// Milliseconds until the scheduled time of a pending switchover (negative when it has
/// passed); `None` without a schedule or when `scheduled_at` does not parse.
fn scheduled_wait_ms(view: &ClusterView, unix_ms: i64) -> Option<i64> {
    let at = view.failover.as_ref()?.value.scheduled_at.as_deref()?;
    Some(crate::time::parse_iso8601(at)? - unix_ms)
}

impl Ctx<'_> {
    /// A running standby that cannot stream and holds WAL past the point where the leader's
    /// timeline history left its timeline (a former primary started without a leader, or a
    /// standby that was ahead of the member that won the race: simulator findings F5, F6) is
    /// stopped and rewound, or re-cloned; PostgreSQL alone would retry streaming forever.
    fn diverged_standby(
        &self,
        next: &mut Memory,
        view: &ClusterView,
        leader: &MemberName,
        sql: &PgSql,
        upstream: &Upstream,
    ) -> Option<(Vec<Action>, Reason)> {
        if !sql.in_recovery || sql.streaming {
            next.not_streaming_since = None;
            return None;
        }
        // Only a standby that has not streamed for a while: right after a switchover, a
        // failover or a rewind, PostgreSQL reports the last checkpoint's timeline until its WAL
        // receiver runs again, which looks like divergence and is not.
        // The clock starts when we point at this leader (a new leader, a re-pointed standby).
        if next.following.as_ref() != Some(leader) {
            next.not_streaming_since = Some(self.now);
            return None;
        }
        let since = *next.not_streaming_since.get_or_insert(self.now);
        if self.now.saturating_since(since) < self.cfg.ttl * 2 {
            return None;
        }
        let leader_tl = leader_timeline(view.member(leader)?.timeline, &view.history)?;
        let end = sql.wal_position();
        let Divergence::Diverged { timeline, switch } =
            divergence(sql.timeline, end, leader_tl, &view.history)
        else {
            return None;
        };
        let (actions, remedy) = if self.cfg.use_pg_rewind {
            let stop = Action::StopPostgres {
                mode: StopMode::Fast,
            };
            let start = Action::StartPostgres {
                role: StartRole::Standby {
                    upstream: Some(upstream.clone()),
                },
            };
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

/// Where to stream / clone / rewind from: the member's `conn_url`.
fn upstream_of(view: &ClusterView, name: &MemberName) -> Option<Upstream> {
    let member = view.member(name)?;
    let (host, port) = member.pg_host_port()?;
    Some(Upstream {
        name: name.clone(),
        host,
        port,
    })
}

/// One streaming standby as `sync_candidates` ranks it.
struct SyncCandidate<'a> {
    name: &'a MemberName,
    nofailover: bool,
    priority: i64,
    state: u8,
    /// The position a commit waits for (`synchronous_commit`): flush, write or replay.
    position: Lsn,
}

/// `pg_stat_replication.sync_state` in Patroni's (descending string) order: `sync`, `quorum`,
/// `potential`, `async`.
fn sync_state_rank(state: &str) -> u8 {
    match state {
        "sync" => 3,
        "quorum" => 2,
        "potential" => 1,
        _ => 0,
    }
}

#[cfg(test)]
mod tests;
