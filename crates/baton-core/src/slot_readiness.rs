//! Whether the logical slots copied to a replica are safe to use after a failover (Patroni's
//! `check_logical_slots_readiness`).
//!
//! A copied logical slot needs the catalog rows from its `catalog_xmin` on. The replica keeps
//! them only while its physical slot on the primary holds a `catalog_xmin` (the feedback of
//! `hot_standby_feedback`) that is not newer than the slot's: before that, VACUUM on the
//! primary may have removed rows the copy needs, and decoding from it after a promotion could
//! fail or be wrong. So a slot is pending from its copy (and, after the agent starts, every
//! permanent logical slot present) until a check of the primary finds our physical slot with a
//! `catalog_xmin`; the `catalog_xmin` the primary's own logical slot had then is remembered,
//! and the copy is safe once the physical slot's `catalog_xmin` is at or past it and not past
//! the copy's own `catalog_xmin`.
//!
//! As in Patroni this is reported, nothing more: the log says when a slot became safe, why a
//! check could not tell, and, at a promotion, which slots might be unsafe. A member with
//! pending slots still takes part in failover (Patroni's `/patroni` and the failover
//! candidates do not look at it either).
//!
//! Pure: the check itself is `Action::CheckLogicalSlots`, its result
//! [`PrimarySlots`] comes back as an `ActionOutcome`.

use std::collections::BTreeMap;

use crate::pg::PgSql;
use crate::slots::SlotKind;
use crate::types::MemberName;
use crate::view::{ClusterView, Tags};

/// A transaction id as `pg_replication_slots` shows it (`xid`, 32 bits; compared as
/// PostgreSQL 11+ slots are within one epoch of each other, as Patroni compares them).
pub type Xid = u64;

/// What a check of the primary found (`Action::CheckLogicalSlots`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrimarySlots {
    /// Our physical slot on the primary.
    pub physical: String,
    /// `None`: the primary has no such slot; `Some(None)`: it has no `catalog_xmin` (no
    /// feedback from us: `hot_standby_feedback` off, or not streaming through it).
    pub physical_xmin: Option<Option<Xid>>,
    /// The `catalog_xmin` of the logical slots asked about that the primary has.
    pub logical: BTreeMap<String, Option<Xid>>,
}

/// The replica's record of copied logical slots not yet known safe (in `Memory`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Readiness {
    /// The permanent logical slots present when the agent started have been queued (Patroni
    /// checks every logical slot once after a start).
    pub primed: bool,
    /// Pending slots: name → the `catalog_xmin` of the primary's slot, remembered when our
    /// physical slot there first held one (`None` until then).
    pub pending: BTreeMap<String, Option<Xid>>,
    /// Our physical slot's `catalog_xmin` on the primary at the last check (`None`: no check
    /// since, or it had none).
    pub physical_xmin: Option<Xid>,
    /// Why the last check could not tell (`None` when it could).
    pub problem: Option<String>,
    /// The slots that became safe in the last cycle (for the log).
    pub ready: Vec<String>,
}

impl Readiness {
    /// Slots just copied (or found after a start): pending until checked.
    pub fn queue<'a>(&mut self, names: impl IntoIterator<Item = &'a String>) {
        for name in names {
            self.pending.insert(name.clone(), None);
        }
    }

    /// The pending slots whose `catalog_xmin` on the primary is still to be read.
    pub fn to_read(&self) -> Vec<String> {
        self.pending
            .iter()
            .filter(|(_, x)| x.is_none())
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Takes in a check of the primary: with our physical slot holding a `catalog_xmin`, the
    /// primary's logical `catalog_xmin` of each slot not yet read is remembered.
    pub fn apply(&mut self, found: &PrimarySlots) {
        self.physical_xmin = None;
        match found.physical_xmin {
            None => {
                self.problem = Some(format!(
                    "physical slot {} does not exist on the primary",
                    found.physical
                ));
            }
            Some(None) => {
                self.problem = Some(format!(
                    "physical slot {} on the primary has no catalog_xmin: the replica's \
                     hot_standby_feedback does not reach it (logical slot failover needs it)",
                    found.physical
                ));
            }
            Some(Some(physical)) => {
                self.problem = None;
                self.physical_xmin = Some(physical);
                for (name, xmin) in &mut self.pending {
                    if xmin.is_none()
                        && let Some(Some(primary)) = found.logical.get(name)
                    {
                        *xmin = Some(*primary);
                    }
                }
            }
        }
    }

    /// One cycle on a running replica: a pending slot that is no longer here is forgotten; one
    /// whose remembered `catalog_xmin` the physical slot's has reached, without passing the
    /// copy's own, is safe ([`Readiness::ready`] lists it for this cycle).
    pub fn settle(&mut self, sql: &PgSql) {
        self.ready.clear();
        let physical = self.physical_xmin;
        let mut ready = Vec::new();
        self.pending.retain(|name, primary| {
            let Some(here) = sql
                .replication_slots
                .iter()
                .find(|s| &s.name == name && matches!(s.kind, SlotKind::Logical { .. }))
            else {
                return false;
            };
            let safe = match (*primary, physical, here.catalog_xmin) {
                (Some(primary), Some(physical), Some(copy)) => {
                    primary <= physical && physical <= copy
                }
                _ => false,
            };
            if safe {
                ready.push(name.clone());
            }
            !safe
        });
        self.ready = ready;
        if self.pending.is_empty() {
            // Nothing to wait for: a later copy starts afresh (its problem is logged again).
            self.problem = None;
            self.physical_xmin = None;
        }
    }
}

/// Our physical slot on the leader (Patroni's `get_slot_name_on_primary`): ours when we
/// stream from the leader, else that of the member of our `replicatefrom` chain that does.
/// `None` for a `nostream` member or without a leader.
pub fn slot_on_leader(view: &ClusterView, me: &MemberName, tags: &Tags) -> Option<String> {
    let leader = view.leader_name()?;
    let mut member = me.clone();
    let mut member_tags = tags.clone();
    for _ in 0..=view.members.len() {
        let source = crate::topology::stream_source(view, &member, &member_tags)?;
        if source == leader {
            return Some(member.slot_name());
        }
        let up = view.members.iter().find(|m| &m.name == source)?;
        member = up.name.clone();
        member_tags = up.tags.clone();
    }
    None
}

/// The log lines one cycle's readiness change calls for: `(warning, text)`. Only on change:
/// a slot that became safe, a new or changed problem, and at a promotion (`promoting`) the
/// slots still pending.
pub fn log_lines(before: &Readiness, after: &Readiness, promoting: bool) -> Vec<(bool, String)> {
    let mut lines = Vec::new();
    // `ready` stays as it is in a cycle that did not settle: not logged twice.
    for name in after.ready.iter().filter(|n| !before.ready.contains(n)) {
        lines.push((
            false,
            format!("logical replication slot {name} is safe to be used after a failover"),
        ));
    }
    if after.problem != before.problem
        && let Some(problem) = &after.problem
    {
        lines.push((
            true,
            format!("cannot tell whether the copied logical slots are safe yet: {problem}"),
        ));
    }
    if promoting && !after.pending.is_empty() {
        let names: Vec<&str> = after.pending.keys().map(String::as_str).collect();
        lines.push((
            true,
            format!(
                "logical replication slots that might be unsafe to use after promote: [{}]",
                names.join(", ")
            ),
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slots::SlotInfo;

    fn copy(name: &str, catalog_xmin: Option<Xid>) -> SlotInfo {
        SlotInfo {
            name: name.to_owned(),
            kind: SlotKind::Logical {
                database: "postgres".into(),
                plugin: "test_decoding".into(),
            },
            position: None,
            ours: true,
            catalog_xmin,
        }
    }

    fn sql(slots: Vec<SlotInfo>) -> PgSql {
        PgSql {
            replication_slots: slots,
            ..PgSql::default()
        }
    }

    fn found(physical: Option<Option<Xid>>, logical: &[(&str, Xid)]) -> PrimarySlots {
        PrimarySlots {
            physical: "n2".into(),
            physical_xmin: physical,
            logical: logical
                .iter()
                .map(|(n, x)| ((*n).to_owned(), Some(*x)))
                .collect(),
        }
    }

    #[test]
    fn a_copy_is_safe_once_the_physical_slot_holds_the_primarys_catalog_xmin() {
        let mut r = Readiness::default();
        r.queue(&["cdc".to_owned()]);
        assert_eq!(r.to_read(), vec!["cdc".to_owned()]);
        // No feedback yet: nothing remembered, still pending, the reason reported once.
        r.apply(&found(Some(None), &[("cdc", 700)]));
        r.settle(&sql(vec![copy("cdc", Some(700))]));
        assert!(r.ready.is_empty() && r.pending.contains_key("cdc"));
        let lines = log_lines(&Readiness::default(), &r, false);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].0 && lines[0].1.contains("hot_standby_feedback"),
            "{lines:?}"
        );
        assert!(log_lines(&r.clone(), &r, false).is_empty(), "logged again");
        // Feedback arrives, older than the primary's logical catalog_xmin: remembered 700,
        // but the physical slot (650) is not there yet.
        r.apply(&found(Some(Some(650)), &[("cdc", 700)]));
        assert_eq!(r.pending.get("cdc"), Some(&Some(700)));
        assert!(r.to_read().is_empty());
        r.settle(&sql(vec![copy("cdc", Some(700))]));
        assert!(r.ready.is_empty());
        // The primary's logical slot moved on (800): the remembered value stays 700. The
        // physical slot reached 720 while the copy (advanced) has 750: safe.
        r.apply(&found(Some(Some(720)), &[("cdc", 800)]));
        assert_eq!(r.pending.get("cdc"), Some(&Some(700)));
        r.settle(&sql(vec![copy("cdc", Some(750))]));
        assert_eq!(r.ready, vec!["cdc".to_owned()]);
        assert!(r.pending.is_empty());
        let lines = log_lines(&Readiness::default(), &r, false);
        assert_eq!(
            lines,
            vec![(
                false,
                "logical replication slot cdc is safe to be used after a failover".to_owned()
            )]
        );
    }

    #[test]
    fn a_physical_slot_past_the_copys_catalog_xmin_is_not_enough() {
        // The copy's catalog_xmin (600) is older than what the primary keeps for us (720):
        // rows it needs may be gone. Pending until the copy moves past 720.
        let mut r = Readiness::default();
        r.queue(&["cdc".to_owned()]);
        r.apply(&found(Some(Some(720)), &[("cdc", 700)]));
        r.settle(&sql(vec![copy("cdc", Some(600))]));
        assert!(r.ready.is_empty() && r.pending.contains_key("cdc"));
        r.settle(&sql(vec![copy("cdc", None)]));
        assert!(
            r.pending.contains_key("cdc"),
            "no catalog_xmin here: not safe"
        );
    }

    #[test]
    fn a_missing_physical_slot_is_reported_and_a_gone_copy_forgotten() {
        let mut r = Readiness::default();
        r.queue(&["cdc".to_owned(), "gone".to_owned()]);
        r.apply(&found(None, &[]));
        assert!(
            r.problem
                .as_deref()
                .is_some_and(|p| p.contains("does not exist"))
        );
        r.settle(&sql(vec![copy("cdc", Some(1))]));
        assert_eq!(r.pending.keys().collect::<Vec<_>>(), vec!["cdc"]);
        assert!(r.ready.is_empty(), "a forgotten slot is not reported safe");
        let lines = log_lines(&Readiness::default(), &r, true);
        assert!(
            lines
                .iter()
                .any(|(w, l)| *w && l.contains("might be unsafe to use after promote: [cdc]")),
            "{lines:?}"
        );
    }
}
