//! Replication slots beyond the member slots: permanent physical and logical slots (the
//! dynamic `slots` section), the slots of members that are briefly gone (`member_slots_ttl`,
//! published as `retain_slots` in `/status`), and their upkeep on replicas so that a
//! failover keeps them (Patroni's `SlotsHandler`, `Cluster.get_replication_slots`).
//!
//! Pure: the set of slots a member should have and the work that gets it there, as data
//! ([`SlotWork`], executed by `Postgres::sync_slots` / `copy_logical_slots`). The rule that
//! pgbaton never touches a slot it did not create stays: a slot declared in `slots` is
//! pgbaton's to create, keep, advance and (once it is no longer declared) drop; any other slot
//! it did not create is left alone — Patroni drops unknown slots, pgbaton does not.
//!
//! `ignore_slots` ([`SlotMatcher`]) narrows that further, as in Patroni: a slot that matches
//! an entry is never dropped, even one pgbaton made (a member slot past `member_slots_ttl`, a
//! permanent slot no longer declared, a slot whose type, database or plugin no longer is the
//! declared one). A declared permanent slot or a member slot is still created and advanced
//! when it matches (Patroni manages every slot it wants; the list only spares the others).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use crate::decision::HaConfig;
use crate::pg::PgSql;
use crate::types::{Lsn, Mono};
use crate::view::ClusterView;

/// What a permanent slot is (from the dynamic `slots` section).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SlotKind {
    Physical,
    /// A logical slot in `database` with the output plugin `plugin`.
    Logical {
        database: String,
        plugin: String,
    },
}

impl fmt::Display for SlotKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SlotKind::Physical => f.write_str("physical"),
            SlotKind::Logical { database, plugin } => {
                write!(f, "logical (database {database}, plugin {plugin})")
            }
        }
    }
}

/// A slot's type, as an `ignore_slots` entry names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SlotType {
    Physical,
    Logical,
}

/// One entry of the dynamic `ignore_slots` list: every field given must match (Patroni's
/// `ignore_replication_slot`); an entry with none matches every slot. A physical slot has no
/// database and no plugin, so an entry naming one never matches it.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct SlotMatcher {
    pub name: Option<String>,
    pub slot_type: Option<SlotType>,
    pub database: Option<String>,
    pub plugin: Option<String>,
}

impl SlotMatcher {
    /// Whether `slot` (as it is on this instance) matches this entry.
    pub fn matches(&self, slot: &SlotInfo) -> bool {
        let (slot_type, database, plugin) = match &slot.kind {
            SlotKind::Physical => (SlotType::Physical, None, None),
            SlotKind::Logical { database, plugin } => (
                SlotType::Logical,
                Some(database.as_str()),
                Some(plugin.as_str()),
            ),
        };
        self.name.as_ref().is_none_or(|n| *n == slot.name)
            && self.slot_type.is_none_or(|t| t == slot_type)
            && self.database.as_deref().is_none_or(|d| Some(d) == database)
            && self.plugin.as_deref().is_none_or(|p| Some(p) == plugin)
    }
}

/// The slots present on this instance that match `ignore_slots`: pgbaton never drops them.
pub fn ignored<'a>(cfg: &HaConfig, sql: &'a PgSql) -> Vec<&'a SlotInfo> {
    sql.replication_slots
        .iter()
        .filter(|s| cfg.ignore_slots.iter().any(|m| m.matches(s)))
        .collect()
}

fn is_ignored(cfg: &HaConfig, sql: &PgSql, name: &str) -> bool {
    ignored(cfg, sql).iter().any(|s| s.name == name)
}

/// The physical slots pgbaton manages (`sql.slots`) that match `ignore_slots` and are not in
/// `wanted`: `Action::EnsureSlots` keeps them instead of dropping them.
pub fn physical_kept(cfg: &HaConfig, sql: &PgSql, wanted: &[String]) -> Vec<String> {
    let mut keep: Vec<String> = ignored(cfg, sql)
        .into_iter()
        .filter(|s| s.kind == SlotKind::Physical)
        .map(|s| s.name.clone())
        .filter(|n| sql.slots.contains(n) && !wanted.contains(n))
        .collect();
    keep.sort();
    keep.dedup();
    keep
}

/// `Action::EnsureSlots` when the physical slots pgbaton manages (less the ones `ignore_slots`
/// keeps) differ from `wanted`.
pub fn ensure_physical(cfg: &HaConfig, sql: &PgSql, wanted: Vec<String>) -> Option<crate::Action> {
    let keep = physical_kept(cfg, sql, &wanted);
    let mut have: Vec<String> = sql
        .slots
        .iter()
        .filter(|s| !keep.contains(s))
        .cloned()
        .collect();
    have.sort();
    (wanted != have).then_some(crate::Action::EnsureSlots {
        slots: wanted,
        keep,
    })
}

/// One entry of the dynamic `slots` section.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PermanentSlot {
    pub name: String,
    pub kind: SlotKind,
    /// `cluster_type` of a physical slot: kept only in that kind of cluster; `None` (the
    /// default): in both. A logical slot has none (it is never kept in a standby cluster).
    pub cluster_type: Option<ClusterType>,
}

/// The kind of cluster a permanent physical slot is kept in (`slots.<name>.cluster_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ClusterType {
    /// A regular cluster, whose leader is a primary.
    Primary,
    /// A standby cluster (dynamic `standby_cluster`), whose leader is a standby leader.
    Standby,
}

/// A (non-temporary) replication slot present on this instance, whoever made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotInfo {
    pub name: String,
    /// Physical, or logical with its database name and plugin.
    pub kind: SlotKind,
    /// Physical: `restart_lsn`; logical: `confirmed_flush_lsn`. `None` when unset.
    pub position: Option<Lsn>,
    /// pgbaton created (or copied, or adopted as a member's or a permanent slot) this slot:
    /// it is listed in the record beside the data directory.
    pub ours: bool,
    /// A logical slot's `catalog_xmin` (`crate::slot_readiness`); `None` for a physical one.
    pub catalog_xmin: Option<u64>,
}

/// Slot work other than the physical set `Action::EnsureSlots` keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotWork {
    /// Permanent logical slots to create (on the primary).
    pub create_logical: Vec<PermanentSlot>,
    /// Slots to move forward with `pg_replication_slot_advance` (a replica's permanent slots,
    /// to the leader's published position, never past our replay position).
    pub advance: Vec<(String, Lsn)>,
    /// Logical slots pgbaton made that are no longer declared.
    pub drop_logical: Vec<String>,
    /// Declared logical slots someone else created with the declared database and plugin:
    /// recorded as ours from now on (Patroni manages them too).
    pub adopt_logical: Vec<String>,
    /// Slots matching `ignore_slots`: never dropped by this work, not even a copy whose
    /// advance failed (which is otherwise dropped to be copied again). Not work by itself.
    pub keep: Vec<String>,
}

impl SlotWork {
    pub fn is_empty(&self) -> bool {
        self.create_logical.is_empty()
            && self.advance.is_empty()
            && self.drop_logical.is_empty()
            && self.adopt_logical.is_empty()
    }
}

impl fmt::Display for SlotWork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.create_logical.is_empty() {
            let names: Vec<_> = self
                .create_logical
                .iter()
                .map(|s| s.name.as_str())
                .collect();
            parts.push(format!("create logical [{}]", names.join(", ")));
        }
        if !self.advance.is_empty() {
            let items: Vec<_> = self
                .advance
                .iter()
                .map(|(n, l)| format!("{n} to {l}"))
                .collect();
            parts.push(format!("advance [{}]", items.join(", ")));
        }
        if !self.drop_logical.is_empty() {
            parts.push(format!("drop logical [{}]", self.drop_logical.join(", ")));
        }
        if !self.adopt_logical.is_empty() {
            parts.push(format!("adopt logical [{}]", self.adopt_logical.join(", ")));
        }
        if !self.keep.is_empty() {
            parts.push(format!("keep ignored [{}]", self.keep.join(", ")));
        }
        f.write_str(&parts.join("; "))
    }
}

/// Patroni's default `member_slots_ttl`.
pub const DEFAULT_MEMBER_SLOTS_TTL: Duration = Duration::from_secs(1800);

/// The permanent slots this member keeps: none without `use_slots` or with `nofailover` (as
/// in Patroni); no logical slots on a `nostream` member (nothing tells the primary how far
/// it has read, so its copy would be unsafe). A permanent slot named like a member's slot, or
/// like our own, is not kept as a permanent slot. As in Patroni, a standby cluster keeps
/// only physical slots, and a physical slot with a `cluster_type` only in that kind of
/// cluster.
fn permanent<'c>(cfg: &'c HaConfig, view: &ClusterView) -> impl Iterator<Item = &'c PermanentSlot> {
    let own = cfg.me.slot_name();
    let members: BTreeSet<String> = view.members.iter().map(|m| m.name.slot_name()).collect();
    let keep = cfg.use_slots && cfg.tags.nofailover != Some(true);
    let nostream = cfg.tags.nostream;
    let here = if cfg.standby_cluster.is_some() {
        ClusterType::Standby
    } else {
        ClusterType::Primary
    };
    cfg.permanent_slots.iter().filter(move |s| {
        keep && s.name != own
            && match s.kind {
                SlotKind::Physical => s.cluster_type.is_none_or(|t| t == here),
                SlotKind::Logical { .. } => {
                    here == ClusterType::Primary && !nostream && !members.contains(&s.name)
                }
            }
    })
}

/// The names of the permanent logical slots this member keeps.
pub(crate) fn kept_logical(cfg: &HaConfig, view: &ClusterView) -> Vec<String> {
    permanent(cfg, view)
        .filter(|s| matches!(s.kind, SlotKind::Logical { .. }))
        .map(|s| s.name.clone())
        .collect()
}

/// The member slots the leader keeps: one per other member that streams from it (not
/// `nostream`, not cascading: `topology::slots_kept_by`), and one per name in `retained` that
/// is not a member now (members gone for less than `member_slots_ttl`).
pub fn member_slots(
    cfg: &HaConfig,
    view: &ClusterView,
    retained: &BTreeMap<String, Mono>,
) -> Vec<String> {
    if !cfg.use_slots {
        return Vec::new();
    }
    let own = cfg.me.slot_name();
    // The members that stream from us (not `nostream`, not cascading from another member),
    // and those gone for less than `member_slots_ttl` (a member still here that streams
    // from someone else needs no slot of ours).
    let mut slots: BTreeSet<String> = crate::topology::slots_kept_by(view, &cfg.me)
        .into_iter()
        .collect();
    let present: BTreeSet<String> = view.members.iter().map(|m| m.name.slot_name()).collect();
    slots.extend(
        retained
            .keys()
            .filter(|n| **n != own && !present.contains(*n))
            .cloned(),
    );
    slots.into_iter().collect()
}

/// The physical slots the leader keeps: the member slots, the retained ones and the permanent
/// physical slots, sorted.
pub fn leader_physical(
    cfg: &HaConfig,
    view: &ClusterView,
    retained: &BTreeMap<String, Mono>,
) -> Vec<String> {
    let mut all: BTreeSet<String> = member_slots(cfg, view, retained).into_iter().collect();
    all.extend(
        permanent(cfg, view)
            .filter(|s| s.kind == SlotKind::Physical)
            .map(|s| s.name.clone()),
    );
    all.into_iter().collect()
}

/// The physical slots a replica keeps: the permanent physical slots, sorted.
pub fn replica_physical(cfg: &HaConfig, view: &ClusterView) -> Vec<String> {
    let mut all: Vec<String> = permanent(cfg, view)
        .filter(|s| s.kind == SlotKind::Physical)
        .map(|s| s.name.clone())
        .collect();
    all.sort();
    all.dedup();
    all
}

/// The leader's record of member slots to keep after their member key is gone
/// (`retain_slots`): every member seen now is stamped `now`; a name seen before (or found in
/// the `/status` we inherit from the previous leader) is kept until `member_slots_ttl` after
/// it was last seen. `member_slots_ttl` 0 (or no `use_slots`): nothing is retained.
pub fn retained(
    cfg: &HaConfig,
    view: &ClusterView,
    seen: &BTreeMap<String, Mono>,
    now: Mono,
) -> BTreeMap<String, Mono> {
    if !cfg.use_slots || cfg.member_slots_ttl.is_zero() {
        return BTreeMap::new();
    }
    let mut next = seen.clone();
    if let Some(status) = &view.status {
        for name in &status.retain_slots {
            next.entry(name.clone()).or_insert(now);
        }
    }
    for m in &view.members {
        // A member that does not stream needs no slot, now or when it comes back.
        if m.tags.nostream {
            next.remove(&m.name.slot_name());
        } else {
            next.insert(m.name.slot_name(), now);
        }
    }
    next.retain(|_, at| now.saturating_since(*at) < cfg.member_slots_ttl);
    next
}

/// A slot whose name we want is there with another kind (another tool's, or a permanent slot
/// whose type, database or plugin changed): it is left alone and reported.
fn mismatched<'a>(want: &PermanentSlot, sql: &'a PgSql) -> Option<&'a SlotInfo> {
    sql.replication_slots
        .iter()
        .find(|s| s.name == want.name && s.kind != want.kind)
}

/// The leader's permanent logical slots: create the missing ones, drop the ones pgbaton made
/// that are no longer declared. A slot of the same name but another kind is never dropped.
pub fn leader_work(cfg: &HaConfig, view: &ClusterView, sql: &PgSql) -> (SlotWork, Vec<String>) {
    let mut work = SlotWork::default();
    let mut conflicts = Vec::new();
    let wanted: Vec<&PermanentSlot> = permanent(cfg, view)
        .filter(|s| matches!(s.kind, SlotKind::Logical { .. }))
        .collect();
    for want in &wanted {
        if let Some(other) = mismatched(want, sql) {
            conflicts.push(format!(
                "{} is {} but is declared {}",
                want.name, other.kind, want.kind
            ));
            continue;
        }
        match sql.replication_slots.iter().find(|s| s.name == want.name) {
            None => work.create_logical.push((*want).clone()),
            Some(have) if !have.ours => work.adopt_logical.push(want.name.clone()),
            Some(_) => {}
        }
    }
    work.drop_logical = own_logical_not_wanted(cfg, sql, &wanted);
    (work, conflicts)
}

/// The logical slots pgbaton made that are no longer declared as they are (removed from
/// `slots`, or declared with another database or plugin), unless they match `ignore_slots`.
fn own_logical_not_wanted(cfg: &HaConfig, sql: &PgSql, wanted: &[&PermanentSlot]) -> Vec<String> {
    sql.replication_slots
        .iter()
        .filter(|s| s.ours && matches!(s.kind, SlotKind::Logical { .. }))
        .filter(|s| !wanted.iter().any(|w| w.name == s.name && w.kind == s.kind))
        .filter(|s| !is_ignored(cfg, sql, &s.name))
        .map(|s| s.name.clone())
        .collect()
}

/// A replica's permanent slots: advance the ones present to the leader's published position
/// (`/status` `slots`, never past our replay position), list the logical ones to copy from
/// the leader (declared, published by the leader, absent here), drop the logical ones we made
/// that are no longer declared.
pub fn replica_work(cfg: &HaConfig, view: &ClusterView, sql: &PgSql) -> (SlotWork, Vec<String>) {
    let mut work = SlotWork::default();
    let mut copy = Vec::new();
    let published = view.status.as_ref().map(|s| &s.slots);
    let replay = sql.replayed_lsn;
    let wanted: Vec<&PermanentSlot> = permanent(cfg, view).collect();
    for want in &wanted {
        let Some(target) = published.and_then(|p| p.get(&want.name)).copied() else {
            continue;
        };
        let target = replay.map_or(target, |r| target.min(r));
        match sql.replication_slots.iter().find(|s| s.name == want.name) {
            Some(have) if have.kind == want.kind => {
                if !have.ours && have.kind != SlotKind::Physical {
                    work.adopt_logical.push(want.name.clone());
                }
                if have.position.is_some_and(|p| p < target) {
                    work.advance.push((want.name.clone(), target));
                }
            }
            Some(_) => {}
            None => {
                if matches!(want.kind, SlotKind::Logical { .. }) {
                    copy.push(want.name.clone());
                }
            }
        }
    }
    let logical: Vec<&PermanentSlot> = wanted
        .iter()
        .copied()
        .filter(|s| matches!(s.kind, SlotKind::Logical { .. }))
        .collect();
    work.drop_logical = own_logical_not_wanted(cfg, sql, &logical);
    if !work.advance.is_empty() {
        work.keep = ignored(cfg, sql)
            .into_iter()
            .map(|s| s.name.clone())
            .collect();
    }
    (work, copy)
}

/// What the leader publishes in `/status` `slots`: the position of every slot pgbaton keeps
/// (member slots: `restart_lsn`; permanent logical slots: `confirmed_flush_lsn`), as Patroni
/// does on PostgreSQL 11 and later.
pub fn published_positions(sql: &PgSql) -> Vec<(String, Lsn)> {
    sql.replication_slots
        .iter()
        .filter(|s| s.ours)
        .filter_map(|s| s.position.map(|p| (s.name.clone(), p)))
        .collect()
}
