//! The HA decision: one pure function per cycle.
//!
//! [`decide`] runs `Ctx::choose`, which applies the rules below in this order; the first
//! that has something to say decides the cycle. The order is the safety argument
//! (design.md §4), so a rule may rely on every rule before it having passed:
//! 1. `fence`: PostgreSQL that may accept writes while our lease is not provably alive is
//!    stopped immediately, whatever else is going on. It runs before anything reads the DCS
//!    view, so that no other rule can keep a primary running without a lease. The one
//!    exception is `failsafe` (failsafe mode: every member of `/failsafe` accepted our
//!    `POST /failsafe`, which proves a deadline as a keepalive does), decided here too.
//! 2. With no DCS view nothing else is decided (replicas keep streaming, a leader keeps
//!    running until its fencing deadline, which rule 1 enforces). Our own leader key with an
//!    unreadable value is repaired, and a dynamic configuration pgbaton must not ignore
//!    (`fence::blocked`) stops a primary before any rule could start or promote one.
//! 3. `data_dir`: empty → bootstrap or clone; unusable → leave it alone; another cluster's →
//!    never used. Every later rule may assume initialized data of this cluster.
//!    With `watchdog.mode: required` and no armable watchdog, the holder of the key gives it
//!    up here (`watchdog`), before rules 4 and 5 could start or promote a primary under it.
//! 4. `pg_down`: PostgreSQL down → restart as primary while we hold the key (bounded by
//!    `primary_start_timeout`), otherwise start as a standby; a former primary rejoins
//!    through `standby::rejoin` (rewind, or wait, or re-clone). Later rules may assume a
//!    running postmaster.
//! 5. PostgreSQL up: a primary while someone else (or nobody) leads is demoted
//!    (`fence::demote`: a primary never runs without the key) before anything else looks at
//!    it; then `leader` keeps / promotes the holder of the key (switchover, `sync` steps,
//!    slots), `standby` follows the leader (and stops a diverged standby for a rewind), and
//!    `race` takes a free key when we are the healthiest eligible member (not while a
//!    primary's `POST /failsafe` is younger than ttl, nor from outside `/failsafe`).
//!    In a standby cluster (`standby_cluster`) the holder of the key is the standby leader:
//!    rules 3-5 bootstrap, start and keep it as a standby of the remote primary
//!    (`standby_cluster`), the race winner stays a standby, and nothing is promoted.
//!
//! [`decide`] then puts `ArmWatchdog` ahead of actions that take the leader role
//! (`watchdog`), derives the memory for the next cycle from the actions that will really run
//! (and filters them in maintenance mode), and picks the next wake-up.
//!
//! Each rule is an `impl Ctx<'_>` block in its own module; a method returns the decision of
//! the cycle, or `None` / `Ok(..)` when its rule lets the next one speak. The decision tests
//! are data: `crates/baton-core/testdata/decide/*.txt`, run by `tests.rs`.

use std::time::Duration;

use crate::decision::{
    Action, ActionKind, Decision, HaConfig, Memory, Observation, Reason, StartRole, Upstream,
};
use crate::pg::{ClusterState, DataDir, PgState};
use crate::types::{MemberName, Mono};
use crate::view::{ClusterView, LeaderKey};

mod data_dir;
mod failsafe;
mod fence;
mod leader;
mod pg_down;
mod race;
mod replica_slots;
mod standby;
mod standby_cluster;
mod sync;
mod watchdog;

/// How soon a leaderless member looks again (the DCS watch usually wakes it earlier).
const LEADERLESS_RECHECK: Duration = Duration::from_secs(1);

/// How soon a leader in synchronous mode looks at its standbys again.
const SYNC_RECHECK: Duration = Duration::from_secs(1);

/// Decide what to do in this cycle. Pure and total.
pub fn decide(memory: &Memory, obs: &Observation, config: &HaConfig, now: Mono) -> Decision {
    // A standby cluster has no synchronous replication (Patroni's `is_synchronous_mode` is
    // false there): its leader acknowledges no commit, so neither `/sync` nor the gate on
    // promotion applies.
    let standby_config;
    let config = if config.standby_cluster.is_some() && config.sync.enabled() {
        standby_config = HaConfig {
            sync: crate::decision::SyncConfig::default(),
            ..config.clone()
        };
        &standby_config
    } else {
        config
    };
    // What the executor reported since the last cycle comes first.
    let memory = &memory.after(&obs.outcomes);
    let mut next = memory.clone();
    if let (Some(failure), Some(leader)) = (
        crate::last_failure(&obs.outcomes),
        obs.dcs.as_ref().and_then(|v| v.leader_name()),
    ) && failure.action == ActionKind::Rewind
    {
        next.rewind_failed_against = Some(leader.clone());
    }
    if let Some(failure) = crate::last_failure(&obs.outcomes)
        && failure.action == ActionKind::PrePromote
    {
        next.pre_promote_failed = Some((failure.at, failure.error.clone()));
    }
    if let Some(failure) = crate::last_failure(&obs.outcomes)
        && failure.action == ActionKind::BootstrapCluster
    {
        next.bootstrap_failed = Some((failure.at, failure.error.clone()));
    }

    let ctx = Ctx {
        obs,
        cfg: config,
        now,
        epoch: memory.leader_epoch,
        was_leader: memory.was_leader,
    };
    let (mut actions, mut reason) = ctx.choose(&mut next);
    // A scheduled restart runs in a cycle that has nothing else to do.
    if actions.is_empty()
        && let Some(restart) = ctx.due_restart()
    {
        actions = vec![restart];
        reason = Reason::ScheduledRestart;
    }
    if config.standby_cluster.is_some() {
        standby_cluster::never_primary(&mut actions);
    }
    ctx.arm_watchdog_first(&mut actions);
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
                        | Action::SyncSlots { .. }
                        | Action::CheckLogicalSlots { .. }
                        | Action::WriteConfig
                        | Action::UpdateHistory
                        | Action::ReattachLeader
                        | Action::RepairLeader { .. }
                        | Action::ClearFailover { .. }
                        | Action::WriteFailsafe { .. }
                )
        });
        let detail = if actions.len() < before {
            format!("not acting while paused, would have: {reason}")
        } else {
            reason.to_string()
        };
        reason = Reason::Paused { detail };
    }

    // PostgreSQL started as a standby of this leader (or of the remote primary) needs no
    // re-pointing afterwards.
    if !ctx.holds_key() {
        next.following_remote = None;
    }
    if let Some(up) = actions.iter().find_map(|a| match a {
        Action::StartPostgres {
            role: StartRole::Standby { upstream: Some(up) },
        }
        | Action::BootstrapStandbyCluster { upstream: up } => Some(up),
        _ => None,
    }) {
        match &up.remote {
            Some(source) => {
                next.following = None;
                next.following_remote = Some(source.clone());
            }
            None => next.following = Some(up.name.clone()),
        }
    }
    // "Not streaming since" counts for one running postmaster: a stop or a (re)start begins
    // a new one, which must get its 2 * ttl before it is judged diverged.
    if !obs.pg.is_running()
        || actions.iter().any(|a| {
            matches!(
                a,
                Action::StartPostgres { .. }
                    | Action::StopPostgres { .. }
                    | Action::RestartPostgres { .. }
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
    // Failsafe mode keeping our primary (the DCS down or back with our key gone) keeps us
    // the leader too: the next round needs it, and so does the fencer.
    let failsafe_kept = matches!(
        reason,
        Reason::FailsafeActive { .. } | Reason::FailsafeReacquiring
    );
    next.was_leader = !actions.contains(&Action::HandOver)
        && (ctx.holds_key() || (obs.dcs.is_none() && memory.was_leader) || failsafe_kept)
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
    if actions.iter().any(|a| {
        !matches!(
            a,
            Action::ExtendFencing { .. } | Action::CheckLogicalSlots { .. }
        )
    }) {
        // Observe the effect right away (an extended fencing deadline has none to observe:
        // the next `POST /failsafe` round is due after `loop_wait`, as in Patroni; a check of
        // the leader's slots is read-only and repeats every `loop_wait` while slots wait).
        wake_at = now;
    }
    if let Some(until) = actions.iter().find_map(|a| match a {
        Action::ExtendFencing { until } => Some(*until),
        _ => None,
    }) {
        wake_at = wake_at.min(until);
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
    if let Some(crate::ScheduleState::Wait(ms)) = obs
        .scheduled_restart
        .as_ref()
        .map(|r| crate::schedule_state(r, obs.unix_ms, config.loop_wait, &obs.pg))
    {
        wake_at = wake_at.min(now + Duration::from_millis(ms));
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

impl Ctx<'_> {
    /// The restart of a schedule whose time has come, when its conditions match (the agent
    /// drops the schedule once it is due, stale or moot).
    fn due_restart(&self) -> Option<Action> {
        let obs = self.obs;
        let restart = obs.scheduled_restart.as_ref()?;
        let view = obs.dcs.as_ref()?;
        if obs.running.is_some()
            || crate::schedule_state(restart, obs.unix_ms, self.cfg.loop_wait, &obs.pg)
                != crate::ScheduleState::Due
        {
            return None;
        }
        let holds = self.holds_key();
        crate::restart_matches(&restart.filters, &obs.pg, holds).ok()?;
        Some(crate::restart_action(view, &obs.pg, holds, self.remote()))
    }
}

struct Ctx<'a> {
    obs: &'a Observation,
    cfg: &'a HaConfig,
    now: Mono,
    /// `Memory::leader_epoch` from the previous cycle.
    epoch: Option<i64>,
    /// `Memory::was_leader` from the previous cycle.
    was_leader: bool,
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
        if let Some(fenced) = self.fence(next) {
            return fenced;
        }

        // A long action runs beside the loop: nothing else until it ends (fencing above goes on).
        if let Some(action) = self.obs.running {
            return (vec![], Reason::InProgress { action });
        }

        // 2. Without a DCS view, change nothing.
        let Some(view) = self.obs.dcs.as_ref() else {
            // Failsafe mode: a complete `POST /failsafe` round extends the fencing deadline
            // already while the lease is still valid, so that the fencer never stops the
            // primary at the lease deadline between two rounds.
            if may_be_primary(pg)
                && !self.cfg.pause
                && let Ok(until) = self.failsafe_until()
            {
                return (
                    vec![Action::ExtendFencing { until }],
                    Reason::FailsafeActive { until },
                );
            }
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
        let cd = match self.data_dir(next, view) {
            Ok(cd) => cd,
            Err(decided) => return decided,
        };

        // The required watchdog cannot be armed: give the key up before rules 4 and 5 could
        // start, promote or keep a primary under it.
        if let Some(decided) = self.watchdog_unavailable(next) {
            return decided;
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
            return self.demote(next, l.name.clone());
        }
        let Some(sql) = &pg.sql else {
            return (vec![], Reason::WaitingForPostgres);
        };

        if self.holds_key()
            && let Some(source) = &self.cfg.standby_cluster
        {
            return self.standby_leader_running(next, view, sql, source);
        }
        if self.holds_key() {
            let (mut actions, reason) = self.leader_running(next, view, sql);
            let leaving = actions.iter().any(|a| {
                matches!(
                    a,
                    Action::HandOver | Action::ReleaseLeader { .. } | Action::StopPostgres { .. }
                )
            });
            if !leaving && let Some(write) = self.failsafe_topology_write(view) {
                actions.push(write);
            }
            return (actions, reason);
        }
        if self.holds_stale_key() {
            return self.stale_key(sql);
        }
        match leader {
            // Someone leads, the key does not say who: no race, nothing to follow.
            Some(LeaderKey {
                name: None, lease, ..
            }) => (vec![], Reason::LeaderKeyUnreadable { lease: *lease }),
            Some(LeaderKey {
                name: Some(leader), ..
            }) => self.follow(next, view, leader, sql),
            // A primary nobody elected (rule 5): fence first; it may race as a standby. Unless
            // failsafe mode kept it through an outage: it takes its key back.
            None if !sql.in_recovery => self
                .failsafe_reacquire()
                .unwrap_or_else(|| self.demote(next, None)),
            None => self.race(next, view, sql),
        }
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
}

/// Milliseconds until the scheduled time of a pending switchover (negative when it has
/// passed); `None` without a schedule or when `scheduled_at` does not parse.
fn scheduled_wait_ms(view: &ClusterView, unix_ms: i64) -> Option<i64> {
    let at = view.failover.as_ref()?.value.scheduled_at.as_deref()?;
    Some(crate::time::parse_iso8601(at)? - unix_ms)
}

/// Where to stream / clone / rewind from: the member's `conn_url`.
fn upstream_of(view: &ClusterView, name: &MemberName) -> Option<Upstream> {
    let member = view.member(name)?;
    let (host, port) = member.pg_host_port()?;
    Some(Upstream {
        name: name.clone(),
        host,
        port,
        remote: None,
    })
}

#[cfg(test)]
mod tests;
