//! The checkers of the fault suite (safety-and-testing.md §7.5), pure: a recorded history and
//! the final table in, a verdict out. No clock, no I/O, so they are unit-tested with
//! hand-built histories, including ones that must be reported as broken.
//!
//! Times are nanoseconds on the run's one monotonic clock ([`super::Clock`]); every namespace
//! shares `CLOCK_MONOTONIC`, which is what makes the overlap check sound.

use std::collections::{BTreeMap, BTreeSet};

/// How a write ended, as the client saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// COMMIT returned without a "canceling wait for synchronous replication" warning: the
    /// write is acknowledged and must survive.
    Ok,
    /// Indeterminate: a timeout, a connection lost after the statement was sent, a FATAL
    /// error, or a commit that came back with the sync-replication cancel warning.
    Info,
    /// Definitely not committed: an ERROR (the transaction rolled back) or no connection.
    Fail,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Info => "info",
            Outcome::Fail => "fail",
        }
    }
}

/// Which server wrote a row, read inside the write's own transaction: the timeline (the epoch:
/// every promotion starts a new one) and the node name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch {
    pub timeline: i32,
    pub node: String,
}

impl std::fmt::Display for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@tl{}", self.node, self.timeline)
    }
}

/// One write attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    pub id: i64,
    /// The worker (W1) or node index (W2) that issued it.
    pub worker: usize,
    /// When the statement was sent and when its answer (or the timeout) came, in ns.
    pub invoke: u64,
    pub complete: u64,
    pub outcome: Outcome,
    /// The writer, when the statement returned its row.
    pub epoch: Option<Epoch>,
    /// The error or warning text, for the report.
    pub note: String,
}

/// C1: no lost acknowledged write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetCheck {
    pub ok: usize,
    pub info: usize,
    pub fail: usize,
    /// Acknowledged ids missing from the final table.
    pub lost: Vec<i64>,
    /// Ids in the final table that no client ever attempted.
    pub unexpected: Vec<i64>,
    /// Ids classified as definitely failed that are in the final table anyway (a
    /// classification error: the checker's own assumption broke).
    pub failed_but_present: Vec<i64>,
    /// Indeterminate ids that did commit.
    pub recovered: usize,
}

/// C1 over `ops` (every op completed before the final table was read) against `final_ids`;
/// `attempted_below` is one past the largest id handed out before the read ended (ids are
/// handed out in increasing order, so anything at or above it was never attempted).
pub fn check_set(ops: &[Op], final_ids: &BTreeSet<i64>, attempted_below: i64) -> SetCheck {
    let mut out = SetCheck::default();
    for op in ops {
        let present = final_ids.contains(&op.id);
        match op.outcome {
            Outcome::Ok => {
                out.ok += 1;
                if !present {
                    out.lost.push(op.id);
                }
            }
            Outcome::Info => {
                out.info += 1;
                if present {
                    out.recovered += 1;
                }
            }
            Outcome::Fail => {
                out.fail += 1;
                if present {
                    out.failed_but_present.push(op.id);
                }
            }
        }
    }
    out.unexpected = final_ids
        .iter()
        .copied()
        .filter(|&id| id <= 0 || id >= attempted_below)
        .collect();
    out.lost.sort_unstable();
    out.failed_but_present.sort_unstable();
    out
}

/// A proven overlap: `old` (older epoch) was invoked after `new` (newer epoch) was
/// acknowledged, so both servers accepted writes at different instants after the newer one
/// existed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overlap {
    pub old: Op,
    pub new: Op,
}

impl Overlap {
    /// How long after the newer write's ack the older server still acknowledged (ns).
    pub fn window(&self) -> u64 {
        self.old.complete.saturating_sub(self.new.complete)
    }
}

/// C3: at most one writable primary, and epochs per node never go back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OverlapCheck {
    /// One entry per older-epoch write proven to overlap (paired with the earliest-acked
    /// newer-epoch write).
    pub violations: Vec<Overlap>,
    /// Older-epoch writes whose interval overlaps a newer-epoch write's: possible, unproven.
    /// `(the older write, width in ns of the overlap with the earliest newer invocation)`.
    pub possible: Vec<(Op, u64)>,
    /// Per node, a write on a lower timeline invoked after a write on a higher timeline of
    /// the same node was acknowledged: `(earlier-acked higher, later lower)`.
    pub regressions: Vec<(Op, Op)>,
    /// Timelines written by more than one node: `(timeline, nodes)`.
    pub shared_timelines: Vec<(i32, Vec<String>)>,
}

impl OverlapCheck {
    /// Any finding that breaks "at most one writable primary".
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
            && self.regressions.is_empty()
            && self.shared_timelines.is_empty()
    }

    /// The zombie window: the largest `ack(old) - ack(new)` over the proven overlaps (ns).
    pub fn zombie_window(&self) -> u64 {
        self.violations
            .iter()
            .map(Overlap::window)
            .max()
            .unwrap_or(0)
    }
}

/// C3 over the acknowledged writes of `ops` that name their writer (other ops are ignored:
/// only an acknowledged write proves its server was writable inside its interval).
pub fn check_overlap(ops: &[Op]) -> OverlapCheck {
    let writes: Vec<&Op> = ops
        .iter()
        .filter(|o| o.outcome == Outcome::Ok && o.epoch.is_some())
        .collect();
    let mut out = OverlapCheck {
        shared_timelines: shared_timelines(&writes),
        ..OverlapCheck::default()
    };
    let newer = NewerIndex::build(&writes);
    for w in &writes {
        let tl = epoch(w).timeline;
        let Some((first_ack, first_inv)) = newer.after(tl) else {
            continue;
        };
        if w.invoke > first_ack.complete {
            out.violations.push(Overlap {
                old: (*w).clone(),
                new: first_ack.clone(),
            });
        } else if w.complete >= first_inv.invoke {
            out.possible
                .push(((*w).clone(), w.complete - first_inv.invoke));
        }
    }
    let nodes: BTreeSet<&str> = writes.iter().map(|w| epoch(w).node.as_str()).collect();
    for node in nodes {
        let of_node = |o: &&Op| epoch(o).node == node;
        let mine: Vec<&Op> = writes.iter().copied().filter(of_node).collect();
        let higher = NewerIndex::build(&mine);
        for w in &mine {
            if let Some((first_ack, _)) = higher.after(epoch(w).timeline)
                && w.invoke > first_ack.complete
            {
                out.regressions.push((first_ack.clone(), (*w).clone()));
            }
        }
    }
    out
}

fn epoch(op: &Op) -> &Epoch {
    op.epoch.as_ref().expect("filtered to ops with an epoch")
}

fn shared_timelines(writes: &[&Op]) -> Vec<(i32, Vec<String>)> {
    let mut by_tl: BTreeMap<i32, BTreeSet<String>> = BTreeMap::new();
    for w in writes {
        let e = epoch(w);
        by_tl.entry(e.timeline).or_default().insert(e.node.clone());
    }
    by_tl
        .into_iter()
        .filter(|(_, nodes)| nodes.len() > 1)
        .map(|(tl, nodes)| (tl, nodes.into_iter().collect()))
        .collect()
}

/// For each timeline, the earliest-acknowledged and the earliest-invoked write on any higher
/// timeline (suffix minima over the sorted timelines).
struct NewerIndex<'a> {
    /// Ascending timelines with the minima over all strictly higher ones.
    levels: Vec<(i32, Option<(&'a Op, &'a Op)>)>,
}

impl<'a> NewerIndex<'a> {
    fn build(writes: &[&'a Op]) -> NewerIndex<'a> {
        let mut per_tl: BTreeMap<i32, (&'a Op, &'a Op)> = BTreeMap::new();
        for &w in writes {
            let slot = per_tl.entry(epoch(w).timeline).or_insert((w, w));
            if w.complete < slot.0.complete {
                slot.0 = w;
            }
            if w.invoke < slot.1.invoke {
                slot.1 = w;
            }
        }
        let mut levels = Vec::with_capacity(per_tl.len());
        let mut best: Option<(&'a Op, &'a Op)> = None;
        for (&tl, &(ack, inv)) in per_tl.iter().rev() {
            levels.push((tl, best));
            best = Some(match best {
                None => (ack, inv),
                Some((a, i)) => (
                    if ack.complete < a.complete { ack } else { a },
                    if inv.invoke < i.invoke { inv } else { i },
                ),
            });
        }
        levels.reverse();
        NewerIndex { levels }
    }

    /// The minima over timelines strictly above `tl` (`tl` is one of the built timelines).
    fn after(&self, tl: i32) -> Option<(&'a Op, &'a Op)> {
        let i = self.levels.binary_search_by_key(&tl, |(t, _)| *t).ok()?;
        self.levels[i].1
    }
}

/// One read of a W3 reader (safety-and-testing.md §7.4): the ids of `set` it returned, and
/// the server that answered, read in the same transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read {
    /// The reader that issued it.
    pub worker: usize,
    /// When the query was sent and when its rows came, in ns.
    pub invoke: u64,
    pub complete: u64,
    /// The ids the read returned: each was committed and visible to a client.
    pub ids: Vec<i64>,
    /// The server that answered, when the read returned it.
    pub epoch: Option<Epoch>,
}

/// An id a client read that the final table no longer has, with the first read that saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedLoss {
    pub id: i64,
    /// The reader, when its read came back (ns) and the server that answered.
    pub worker: usize,
    pub seen_at: u64,
    pub seen_on: Option<Epoch>,
    /// How the write of that id ended for its writer (`None`: no writer attempted it).
    pub write: Option<Outcome>,
}

/// C4: no read observed and later lost.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObservedCheck {
    pub reads: usize,
    /// Distinct ids the reads returned.
    pub observed: usize,
    /// Ids a read returned that are missing from the final table (a client saw a commit the
    /// cluster then forgot: a read from a primary that was later rewound away, or a restart
    /// that made unreplicated commits visible), in id order.
    pub lost: Vec<ObservedLoss>,
    /// Ids a read returned that no client ever attempted.
    pub unexpected: Vec<i64>,
    /// Ids a read returned although their write was classified as definitely failed (the
    /// writer's classification broke, as `SetCheck::failed_but_present`).
    pub failed_but_observed: Vec<i64>,
}

impl ObservedCheck {
    pub fn is_clean(&self) -> bool {
        self.lost.is_empty() && self.unexpected.is_empty() && self.failed_but_observed.is_empty()
    }
}

/// C4 over `reads` (every read completed before the final table was read) against
/// `final_ids`, with the writers' `ops` for the outcome of each observed id; `attempted_below`
/// as for [`check_set`].
pub fn check_observed(
    reads: &[Read],
    ops: &[Op],
    final_ids: &BTreeSet<i64>,
    attempted_below: i64,
) -> ObservedCheck {
    let outcome: BTreeMap<i64, Outcome> = ops.iter().map(|o| (o.id, o.outcome)).collect();
    // The first observation of every id (reads in completion order).
    let mut first: BTreeMap<i64, &Read> = BTreeMap::new();
    let mut ordered: Vec<&Read> = reads.iter().collect();
    ordered.sort_by_key(|r| r.complete);
    for r in ordered {
        for &id in &r.ids {
            first.entry(id).or_insert(r);
        }
    }
    let mut out = ObservedCheck {
        reads: reads.len(),
        observed: first.len(),
        ..ObservedCheck::default()
    };
    for (&id, r) in &first {
        let write = outcome.get(&id).copied();
        if id <= 0 || id >= attempted_below {
            out.unexpected.push(id);
        }
        if write == Some(Outcome::Fail) {
            out.failed_but_observed.push(id);
        }
        if !final_ids.contains(&id) {
            out.lost.push(ObservedLoss {
                id,
                worker: r.worker,
                seen_at: r.complete,
                seen_on: r.epoch.clone(),
                write,
            });
        }
    }
    out
}

/// The longest a cluster may take, from a fault's heal, until it has one leader and every
/// member (the rejoined one included) streaming from it; slower fails the run.
pub const RECOVERY_LIMIT_S: f64 = 60.0;

/// The failure line for a heal-to-streaming time (`None`: the cluster never got there, which
/// the iteration's error already reports), or nothing within [`RECOVERY_LIMIT_S`].
pub fn recovery_problem(heal_to_streaming_s: Option<f64>) -> Option<String> {
    let s = heal_to_streaming_s?;
    (s > RECOVERY_LIMIT_S).then(|| {
        format!(
            "recovery took {s:.1} s from the heal to every member streaming (limit {RECOVERY_LIMIT_S:.0} s)"
        )
    })
}

/// C6/M1 for one fault: when W1 got its first acknowledgement from a new writer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovery {
    /// The writer of the last acknowledgement before the fault.
    pub old: Option<Epoch>,
    /// The first writer acknowledged after the fault that differs from `old`.
    pub new: Option<Epoch>,
    /// Fault start to that acknowledgement (failover), or to the first acknowledgement after
    /// the write gap the fault caused (same writer, e.g. restarted in place); `Some(0)` when
    /// writes never stopped.
    pub rto: Option<u64>,
    /// Whether the writer changed.
    pub failover: bool,
}

/// [`Recovery`] for a fault that started at `fault_start`, looking at ops up to `until`.
pub fn recovery(ops: &[Op], fault_start: u64, until: u64) -> Recovery {
    let acked = |o: &&Op| o.outcome == Outcome::Ok && o.epoch.is_some();
    let old = ops
        .iter()
        .filter(acked)
        .filter(|o| o.complete < fault_start)
        .max_by_key(|o| o.complete)
        .and_then(|o| o.epoch.clone());
    let after: Vec<&Op> = ops
        .iter()
        .filter(|o| o.complete >= fault_start && o.complete <= until)
        .collect();
    if let Some(first_new) = after
        .iter()
        .copied()
        .filter(acked)
        .filter(|o| o.epoch != old)
        .min_by_key(|o| o.complete)
    {
        return Recovery {
            old,
            new: first_new.epoch.clone(),
            rto: Some(first_new.complete - fault_start),
            failover: true,
        };
    }
    let gap_start = after
        .iter()
        .filter(|o| o.outcome != Outcome::Ok && o.invoke >= fault_start)
        .map(|o| o.complete)
        .min();
    let rto = match gap_start {
        None => Some(0),
        Some(g) => after
            .iter()
            .copied()
            .filter(acked)
            .filter(|o| o.invoke >= g)
            .map(|o| o.complete - fault_start)
            .min(),
    };
    Recovery {
        old,
        new: None,
        rto,
        failover: false,
    }
}

/// The value at quantile `q` (0..=1, nearest rank) of `values`.
pub fn quantile(values: &[u64], q: f64) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn op(id: i64, inv_ms: u64, ack_ms: u64, outcome: Outcome, writer: Option<(&str, i32)>) -> Op {
        Op {
            id,
            worker: 0,
            invoke: inv_ms * MS,
            complete: ack_ms * MS,
            outcome,
            epoch: writer.map(|(node, timeline)| Epoch {
                timeline,
                node: node.to_owned(),
            }),
            note: String::new(),
        }
    }

    fn ok(id: i64, inv: u64, ack: u64, node: &str, tl: i32) -> Op {
        op(id, inv, ack, Outcome::Ok, Some((node, tl)))
    }

    #[test]
    fn a_lost_acknowledged_write_is_reported() {
        let ops = vec![
            ok(1, 0, 5, "n1", 1),
            ok(2, 10, 15, "n1", 1),
            op(3, 20, 5020, Outcome::Info, None),
            op(4, 30, 31, Outcome::Fail, None),
            ok(5, 40, 45, "n2", 2),
        ];
        let final_ids: BTreeSet<i64> = [1, 3, 5].into_iter().collect();
        let c = check_set(&ops, &final_ids, 6);
        assert_eq!(c.lost, vec![2], "the acknowledged id 2 is missing");
        assert_eq!((c.ok, c.info, c.fail, c.recovered), (3, 1, 1, 1));
        assert!(c.unexpected.is_empty() && c.failed_but_present.is_empty());
    }

    #[test]
    fn indeterminate_writes_may_be_missing_but_unexpected_and_failed_ids_are_reported() {
        let ops = vec![
            ok(1, 0, 5, "n1", 1),
            op(2, 10, 15, Outcome::Info, Some(("n1", 1))),
            op(3, 20, 25, Outcome::Fail, None),
        ];
        // 2 (info) missing is fine; 3 (fail) present and 9 (never attempted) are not.
        let final_ids: BTreeSet<i64> = [1, 3, 9].into_iter().collect();
        let c = check_set(&ops, &final_ids, 4);
        assert!(c.lost.is_empty());
        assert_eq!(c.failed_but_present, vec![3]);
        assert_eq!(c.unexpected, vec![9]);
    }

    #[test]
    fn a_write_of_the_old_primary_begun_after_the_new_one_acked_is_a_violation() {
        let ops = vec![
            ok(1, 0, 5, "n1", 1),
            ok(2, 100, 110, "n2", 2),
            // n1 (older timeline) starts a write at 120 > 110 and it is acknowledged.
            ok(3, 120, 130, "n1", 1),
        ];
        let c = check_overlap(&ops);
        assert_eq!(c.violations.len(), 1);
        assert_eq!(c.violations[0].old.id, 3);
        assert_eq!(c.violations[0].new.id, 2);
        assert_eq!(c.zombie_window(), 20 * MS);
        assert!(!c.is_clean());
    }

    #[test]
    fn overlapping_intervals_are_only_possible_overlaps() {
        let ops = vec![
            ok(1, 0, 5, "n1", 1),
            ok(2, 100, 110, "n2", 2),
            // Invoked before n2's ack, acknowledged after n2's invocation: unproven.
            ok(3, 105, 115, "n1", 1),
        ];
        let c = check_overlap(&ops);
        assert!(c.violations.is_empty());
        assert_eq!(c.possible.len(), 1);
        assert_eq!(c.possible[0].1, 15 * MS);
        assert!(c.is_clean());
    }

    #[test]
    fn a_clean_handover_has_no_finding() {
        let ops = vec![
            ok(1, 0, 5, "n1", 1),
            ok(2, 10, 15, "n1", 1),
            op(3, 20, 25, Outcome::Fail, None),
            ok(4, 30, 35, "n2", 2),
            ok(5, 40, 45, "n3", 3),
            // Indeterminate writes of the old primary do not count as proof.
            op(6, 50, 55, Outcome::Info, Some(("n1", 1))),
        ];
        let c = check_overlap(&ops);
        assert_eq!(c, OverlapCheck::default());
    }

    #[test]
    fn a_node_going_back_to_an_older_timeline_and_a_shared_timeline_are_reported() {
        let ops = vec![
            ok(1, 0, 5, "n1", 2),
            ok(2, 10, 15, "n1", 1),
            ok(3, 20, 25, "n2", 3),
            ok(4, 30, 35, "n3", 3),
        ];
        let c = check_overlap(&ops);
        assert_eq!(c.regressions.len(), 1);
        assert_eq!((c.regressions[0].0.id, c.regressions[0].1.id), (1, 2));
        assert_eq!(
            c.shared_timelines,
            vec![(3, vec!["n2".to_owned(), "n3".to_owned()])]
        );
        // n1@tl1 began after n1@tl2 was acknowledged: also a proven overlap across epochs.
        assert!(c.violations.iter().any(|v| v.old.id == 2));
        assert!(!c.is_clean());
    }

    fn read(worker: usize, at_ms: u64, ids: &[i64], writer: (&str, i32)) -> Read {
        Read {
            worker,
            invoke: at_ms * MS,
            complete: (at_ms + 1) * MS,
            ids: ids.to_vec(),
            epoch: Some(Epoch {
                timeline: writer.1,
                node: writer.0.to_owned(),
            }),
        }
    }

    /// The negative control: the old primary served a read of a commit that was never
    /// replicated (its writer saw a timeout: indeterminate, so C1 allows its loss); after the
    /// failover the id is gone. C4 must report it, with the read and the server that served it.
    #[test]
    fn a_read_of_a_commit_the_failover_lost_is_reported() {
        let ops = vec![
            ok(1, 0, 5, "n1", 1),
            op(2, 10, 2010, Outcome::Info, None),
            ok(3, 3000, 3005, "n2", 2),
        ];
        let reads = vec![
            read(0, 6, &[1], ("n1", 1)),
            // n1 committed 2 locally and answered a reader before it was fenced.
            read(1, 20, &[1, 2], ("n1", 1)),
            read(0, 30, &[1, 2], ("n1", 1)),
            read(0, 3010, &[1, 3], ("n2", 2)),
        ];
        let final_ids: BTreeSet<i64> = [1, 3].into_iter().collect();
        assert!(
            check_set(&ops, &final_ids, 4).lost.is_empty(),
            "C1 is clean"
        );
        let c = check_observed(&reads, &ops, &final_ids, 4);
        assert!(!c.is_clean());
        assert_eq!(
            c.lost,
            vec![ObservedLoss {
                id: 2,
                worker: 1,
                seen_at: 21 * MS,
                seen_on: Some(Epoch {
                    timeline: 1,
                    node: "n1".to_owned()
                }),
                write: Some(Outcome::Info),
            }],
            "the first read that saw it"
        );
        assert_eq!((c.reads, c.observed), (4, 3));
    }

    #[test]
    fn reads_of_surviving_ids_are_clean_and_impossible_reads_are_reported() {
        let ops = vec![
            ok(1, 0, 5, "n1", 1),
            op(2, 10, 2010, Outcome::Info, None),
            op(3, 20, 25, Outcome::Fail, None),
        ];
        // 2 was indeterminate and survived: observing it is fine.
        let clean = check_observed(
            &[read(0, 2020, &[1, 2], ("n2", 2))],
            &ops,
            &[1, 2].into_iter().collect(),
            4,
        );
        assert!(clean.is_clean(), "{clean:?}");
        assert_eq!(clean.observed, 2);
        // A read returning a definitely failed id and one never attempted.
        let broken = check_observed(
            &[read(0, 30, &[1, 3, 9], ("n1", 1))],
            &ops,
            &[1, 3, 9].into_iter().collect(),
            4,
        );
        assert_eq!(broken.failed_but_observed, vec![3]);
        assert_eq!(broken.unexpected, vec![9]);
        assert!(broken.lost.is_empty());
        assert!(!broken.is_clean());
    }

    #[test]
    fn recovery_above_the_limit_is_a_problem() {
        assert_eq!(recovery_problem(None), None, "the error says it");
        assert_eq!(recovery_problem(Some(0.0)), None);
        assert_eq!(
            recovery_problem(Some(RECOVERY_LIMIT_S)),
            None,
            "at the limit"
        );
        let slow = recovery_problem(Some(61.25)).expect("above the limit");
        assert_eq!(
            slow,
            "recovery took 61.2 s from the heal to every member streaming (limit 60 s)"
        );
    }

    #[test]
    fn recovery_time_is_measured_to_the_first_ack_of_a_new_writer() {
        let ops = vec![
            ok(1, 0, 5, "n1", 1),
            op(2, 1000, 6000, Outcome::Info, None),
            op(3, 1500, 1600, Outcome::Fail, None),
            ok(4, 9000, 9010, "n2", 2),
            ok(5, 9005, 9020, "n2", 2),
        ];
        let r = recovery(&ops, 1000 * MS, 20_000 * MS);
        assert!(r.failover);
        assert_eq!(r.rto, Some(8010 * MS));
        assert_eq!(r.new.map(|e| e.node), Some("n2".to_owned()));
    }

    #[test]
    fn recovery_in_place_is_measured_to_the_end_of_the_write_gap() {
        let ops = vec![
            ok(1, 0, 5, "n1", 1),
            op(2, 1000, 1100, Outcome::Info, None),
            ok(3, 3000, 3010, "n1", 1),
        ];
        let r = recovery(&ops, 900 * MS, 20_000 * MS);
        assert!(!r.failover);
        assert_eq!(r.rto, Some(2110 * MS));
        let undisturbed = recovery(
            &[ok(1, 0, 5, "n1", 1), ok(2, 10, 15, "n1", 1)],
            8 * MS,
            20 * MS,
        );
        assert_eq!(undisturbed.rto, Some(0));
    }

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let v = [5, 1, 4, 2, 3];
        assert_eq!(quantile(&v, 0.5), Some(3));
        assert_eq!(quantile(&v, 0.95), Some(5));
        assert_eq!(quantile(&v, 1.0), Some(5));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
