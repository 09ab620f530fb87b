//! Synchronous replication (`synchronous_mode`), on both sides of a promotion: the leader's
//! one-step-per-cycle protocol that keeps `/sync` and `synchronous_standby_names` such that
//! every member `/sync` names holds every acknowledged commit (priority and quorum mode), the
//! `/sync` gate a race must pass (`active_sync`), and the claim of `/sync` right before
//! `pg_ctl promote` (`before_promote`).

use crate::decision::{Action, Memory, NotHealthiest, Reason, SyncMode};
use crate::pg::PgSql;
use crate::sync::{parse_ssn, render_ssn, render_ssn_quorum};
use crate::types::{Lsn, MemberName};
use crate::view::{ClusterView, SyncKey, SyncState};

use super::Ctx;

impl Ctx<'_> {
    /// The `/sync` state a promotion must respect: `None` when synchronous mode is off. In
    /// synchronous mode a `/sync` that is missing, names no leader or does not decode says
    /// nothing about who holds every acknowledged commit, so it blocks the race exactly as a
    /// `/sync` naming someone else does (a deleted key must not switch the gate off).
    pub(super) fn active_sync<'v>(
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
    pub(super) fn before_promote(&self, view: &ClusterView) -> Vec<Action> {
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
    pub(super) fn sync_steps(
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
