//! Rule 5 for a replica that follows the leader: the slots of members cascading from it
//! (`crate::topology`), and the permanent slots it keeps so that a failover keeps them
//! (`crate::slots`): permanent physical slots created here and advanced
//! to the leader's published positions, permanent logical slots copied from the leader once
//! (PostgreSQL 15 cannot create them on a standby) and advanced from then on.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::decision::{Action, Memory, Upstream};
use crate::pg::PgSql;
use crate::slots::SlotKind;
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
        let copying = !copy.is_empty() && sql.streaming && !recent;
        if copying {
            next.slots_copied_at = Some(self.now);
            next.logical_readiness.queue(&copy);
            actions.push(Action::CopyLogicalSlots {
                upstream: upstream.clone(),
                slots: copy,
            });
        }
        actions.extend(self.check_logical_readiness(next, view, sql, upstream, copying));
        actions
    }

    /// Patroni's `check_logical_slots_readiness`: a copied logical slot is pending until our
    /// physical slot on the leader holds a `catalog_xmin` that reached the leader's slot's
    /// (`crate::slot_readiness`). After a start every permanent logical slot present is
    /// checked once. The check goes to the leader (`upstream` is the leader's address; a
    /// cascade asks about the slot the leader keeps for its chain) while we stream, not while
    /// a copy restarts PostgreSQL.
    fn check_logical_readiness(
        &self,
        next: &mut Memory,
        view: &ClusterView,
        sql: &PgSql,
        upstream: &Upstream,
        copying: bool,
    ) -> Option<Action> {
        let readiness = &mut next.logical_readiness;
        if !readiness.primed {
            readiness.primed = true;
            let kept = crate::slots::kept_logical(self.cfg, view);
            let present: Vec<String> = sql
                .replication_slots
                .iter()
                .filter(|s| s.ours && matches!(s.kind, SlotKind::Logical { .. }))
                .filter(|s| kept.contains(&s.name))
                .map(|s| s.name.clone())
                .collect();
            readiness.queue(&present);
        }
        if !copying {
            readiness.settle(sql);
        }
        let leader = view.leader_name()?;
        if readiness.pending.is_empty()
            || copying
            || !sql.streaming
            || upstream.remote.is_some()
            || &upstream.name != leader
        {
            return None;
        }
        let physical_slot = crate::slot_readiness::slot_on_leader(view, self.me(), &self.cfg.tags)?;
        Some(Action::CheckLogicalSlots {
            upstream: upstream.clone(),
            physical_slot,
            slots: readiness.to_read(),
        })
    }
}
