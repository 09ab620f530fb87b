//! Rule 5 for a replica that follows the leader: the slots of members cascading from it
//! (`crate::topology`), and the permanent slots it keeps so that a failover keeps them
//! (`crate::slots`): permanent physical slots created here and advanced
//! to the leader's published positions, permanent logical slots copied from the leader once
//! (PostgreSQL 15 cannot create them on a standby) and advanced from then on.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::decision::{Action, Memory, Upstream};
use crate::pg::PgSql;
use crate::view::ClusterView;

use super::Ctx;

/// The least time between two copies of logical slots (each one restarts PostgreSQL).
const MIN_COPY_INTERVAL: Duration = Duration::from_secs(60);

impl Ctx<'_> {
    pub(super) fn replica_slots(
        &self,
        next: &mut Memory,
        view: &ClusterView,
        sql: &PgSql,
        upstream: &Upstream,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        // The leader's record of departed members, mirrored (the members seen now and what the
        // leader retains): a replica that takes over publishes it at once and keeps a slot
        // for the former leader, which was a member when last seen.
        next.slots_seen = crate::slots::retained(self.cfg, view, &BTreeMap::new(), self.now);
        if !self.cfg.use_slots {
            return actions;
        }
        // The permanent physical slots, and one for each member whose `replicatefrom` names us
        // and that streams from us (`topology::slots_kept_by`). Inactive slots pgbaton manages
        // and no longer wants (a former primary's member slots among them) are dropped, unless they
        // match `ignore_slots`.
        let mut physical = crate::slots::replica_physical(self.cfg, view);
        physical.extend(crate::topology::slots_kept_by(view, self.me()));
        physical.sort();
        physical.dedup();
        // Those that match `ignore_slots` are kept.
        actions.extend(crate::slots::ensure_physical(self.cfg, sql, physical));
        let (work, copy) = crate::slots::replica_work(self.cfg, view, sql);
        if !work.is_empty() {
            actions.push(Action::SyncSlots { work });
        }
        // Copy only from a leader we stream from (its slot for us holds the catalog rows the
        // copied slots need, with hot_standby_feedback), at most once a minute: each copy
        // restarts PostgreSQL.
        let recent = next
            .slots_copied_at
            .is_some_and(|at| self.now.saturating_since(at) < MIN_COPY_INTERVAL);
        if !copy.is_empty() && sql.streaming && !recent {
            next.slots_copied_at = Some(self.now);
            actions.push(Action::CopyLogicalSlots {
                upstream: upstream.clone(),
                slots: copy,
            });
        }
        actions
    }
}
