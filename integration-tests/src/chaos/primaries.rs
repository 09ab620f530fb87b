//! C5, the two-primaries checker (issue 19), pure: role samples and fence records in, windows,
//! their causes and the fence margin out. No clock, no I/O.
//!
//! The samples come from [`super::roles::RoleSampler`]: from the client namespace, over TCP, as
//! an operator's monitoring sees the cluster, every node is asked `pg_is_in_recovery()` (and
//! its timeline) once per tick of a shared 100 ms schedule. A node *answered as a primary* in a
//! tick when `pg_is_in_recovery()` returned `false` on a connection; a refused connection, a
//! timeout, an error or a tick it could not be asked in (the previous question still pending)
//! is "not a primary". A **window** is a maximal run of consecutive ticks in each of which two
//! or more nodes answered as primaries; its length is its number of ticks times the period.
//!
//! Sampling is not a proof (two primaries between ticks go unseen, and two answers of one tick
//! are a few milliseconds apart), but on a 100 ms schedule every window the issue reported
//! (1.6 s in 16 samples) is seen, and any window fails the run while fencing is on.
//!
//! The fence margin (issue 19, item 4) needs the lease expiry as the old holder measures it.
//! The agent records the deadline protecting its primary beside the data directory (the fence
//! record: send time of the last acknowledged keepalive + ttl·0.99 − margin, on
//! `CLOCK_BOOTTIME`), rewritten at every renewal; the harness polls it ([`FenceObs`]). The
//! expiry is that deadline plus the fencing margin (`ttl/5` clamped to 1–5 s), i.e. send time
//! + ttl·0.99: the earliest instant, on the holder's clock, at which etcd may let the lease go.

use std::collections::{BTreeMap, BTreeSet};

/// What one node answered in one tick.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// `pg_is_in_recovery() = false`, with the timeline of the current WAL insert position.
    Primary { timeline: i64 },
    /// `pg_is_in_recovery() = true`, with the timeline received (0 when unknown).
    Standby { timeline: i64 },
    /// No answer: refused, timed out, an error (the text says which).
    Down { why: String },
}

impl Role {
    pub fn is_primary(&self) -> bool {
        matches!(self, Role::Primary { .. })
    }
}

/// One question to one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleSample {
    pub node: String,
    /// The tick of the shared schedule it was sent in.
    pub tick: u64,
    /// When it was sent and when its answer (or the timeout) came, ns on the run clock.
    pub invoke: u64,
    pub complete: u64,
    pub role: Role,
}

/// A change of a node's fence record, seen by the harness at `at` (ns on the run clock).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FenceObs {
    pub node: String,
    pub at: u64,
    /// The recorded deadline on the run clock (`None`: nothing protected).
    pub deadline: Option<u64>,
}

/// Ticks in which more than one node answered as a primary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    pub first_tick: u64,
    pub last_tick: u64,
    /// The first question of the first tick was sent at `start`; the last answer of the last
    /// tick came at `end` (ns on the run clock).
    pub start: u64,
    pub end: u64,
    /// Every `(node, timeline)` that answered as a primary in the window.
    pub primaries: BTreeSet<(String, i64)>,
}

impl Window {
    pub fn ticks(&self) -> u64 {
        self.last_tick - self.first_tick + 1
    }

    /// Ticks × period (ns).
    pub fn length(&self, period: u64) -> u64 {
        self.ticks() * period
    }

    /// The nodes in the window, oldest primary first: lowest timeline, then name.
    pub fn nodes(&self) -> Vec<&str> {
        let mut by_tl: Vec<(i64, &str)> = self
            .primaries
            .iter()
            .map(|(n, tl)| (*tl, n.as_str()))
            .collect();
        by_tl.sort();
        let mut out: Vec<&str> = Vec::new();
        for (_, n) in by_tl {
            if !out.contains(&n) {
                out.push(n);
            }
        }
        out
    }
}

/// Every window in `samples` (any order).
pub fn windows(samples: &[RoleSample]) -> Vec<Window> {
    let mut ticks: BTreeMap<u64, Vec<&RoleSample>> = BTreeMap::new();
    for s in samples {
        ticks.entry(s.tick).or_default().push(s);
    }
    let mut out: Vec<Window> = Vec::new();
    for (&tick, of_tick) in &ticks {
        let primaries: Vec<&&RoleSample> = of_tick.iter().filter(|s| s.role.is_primary()).collect();
        let nodes: BTreeSet<&str> = primaries.iter().map(|s| s.node.as_str()).collect();
        if nodes.len() < 2 {
            continue;
        }
        let start = of_tick.iter().map(|s| s.invoke).min().unwrap_or(0);
        let end = of_tick.iter().map(|s| s.complete).max().unwrap_or(start);
        let seen = primaries.iter().filter_map(|s| match s.role {
            Role::Primary { timeline } => Some((s.node.clone(), timeline)),
            _ => None,
        });
        match out.last_mut() {
            Some(w) if w.last_tick + 1 == tick => {
                w.last_tick = tick;
                w.end = w.end.max(end);
                w.primaries.extend(seen);
            }
            _ => out.push(Window {
                first_tick: tick,
                last_tick: tick,
                start,
                end,
                primaries: seen.collect(),
            }),
        }
    }
    out
}

/// Why a window happened, from the samples and the fence records (issue 19, item 2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cause {
    /// `node` had stopped answering as a primary after the fault and came back as one (on
    /// `timeline`): a restart as a primary (crash recovery, a restart in place) while another
    /// node already was the primary.
    CameBack { node: String, timeline: i64 },
    /// `node` still answered as a primary `late_by` ns after its recorded fence deadline: the
    /// fencer or the fence guard acted late.
    FencedLate { node: String, late_by: u64 },
    /// `new` answered as a primary `early_by` ns before `old`'s lease expiry as `old` measures
    /// it (recorded deadline + fencing margin): promoted too early, or `old`'s deadline was
    /// computed from a keepalive etcd did not count.
    EarlyPromotion {
        new: String,
        old: String,
        early_by: u64,
    },
    /// None of the above explains it (see the logs).
    Unexplained,
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |ns: u64| ns as f64 / 1e6;
        match self {
            Cause::CameBack { node, timeline } => write!(
                f,
                "{node} came back as a primary on timeline {timeline} after it had stopped"
            ),
            Cause::FencedLate { node, late_by } => write!(
                f,
                "{node} still primary {:.0} ms after its fence deadline",
                ms(*late_by)
            ),
            Cause::EarlyPromotion { new, old, early_by } => write!(
                f,
                "{new} primary {:.0} ms before {old}'s lease expiry as {old} measures it",
                ms(*early_by)
            ),
            Cause::Unexplained => write!(f, "unexplained (see the logs)"),
        }
    }
}

/// How many consecutive non-primary answers count as "stopped" (one timed-out question under
/// load is no stop).
pub const STOPPED_AFTER: usize = 3;

/// The samples of `node` sent at or after `from`, in tick order.
fn of_node<'a>(samples: &'a [RoleSample], node: &str, from: u64) -> Vec<&'a RoleSample> {
    let mut v: Vec<&RoleSample> = samples
        .iter()
        .filter(|s| s.node == node && s.invoke >= from)
        .collect();
    v.sort_by_key(|s| s.tick);
    v
}

/// When `node` stopped answering as a primary after `from`: the answer time of the first of
/// [`STOPPED_AFTER`] consecutive non-primary answers sent at or after `from` (the node stopped
/// before it: late, so a margin computed from it is on the safe side), if it answered as a
/// primary in the last question before `from` or in one after it, before that run.
pub fn stopped_at(samples: &[RoleSample], node: &str, from: u64) -> Option<u64> {
    let mine = of_node(samples, node, from);
    let mut was_primary = samples
        .iter()
        .filter(|s| s.node == node && s.invoke < from)
        .max_by_key(|s| s.tick)
        .is_some_and(|s| s.role.is_primary());
    let mut run: Vec<&RoleSample> = Vec::new();
    for s in mine {
        if s.role.is_primary() {
            was_primary = true;
            run.clear();
        } else if was_primary {
            run.push(s);
            if run.len() >= STOPPED_AFTER {
                return Some(run[0].complete);
            }
        }
    }
    None
}

/// The latest deadline `node`'s fence record named as seen by the harness at or before `at`.
pub fn deadline_before(fences: &[FenceObs], node: &str, at: u64) -> Option<u64> {
    fences
        .iter()
        .filter(|f| f.node == node && f.at <= at)
        .filter_map(|f| f.deadline)
        .max()
}

/// The causes of `w`, oldest primary first. `from` is the fault's start; `lease_margin` the
/// fencing margin in ns (deadline + margin = the holder's lease expiry).
pub fn causes(
    w: &Window,
    samples: &[RoleSample],
    fences: &[FenceObs],
    from: u64,
    lease_margin: u64,
) -> Vec<Cause> {
    let nodes = w.nodes();
    let mut out = Vec::new();
    for node in &nodes {
        // Stopped after the fault, then primary again in this window.
        if let Some(stop) = stopped_at(samples, node, from)
            && stop < w.start
        {
            let timeline = w
                .primaries
                .iter()
                .find(|(n, _)| n == node)
                .map_or(0, |(_, tl)| *tl);
            out.push(Cause::CameBack {
                node: (*node).to_owned(),
                timeline,
            });
        }
    }
    let (Some(old), Some(new)) = (nodes.first(), nodes.get(1)) else {
        return vec![Cause::Unexplained];
    };
    if let Some(deadline) = deadline_before(fences, old, w.start)
        && w.start > deadline
        && !out
            .iter()
            .any(|c| matches!(c, Cause::CameBack { node, .. } if node == old))
    {
        out.push(Cause::FencedLate {
            node: (*old).to_owned(),
            late_by: w.start - deadline,
        });
    }
    let first_new = of_node(samples, new, from)
        .into_iter()
        .find(|s| s.role.is_primary());
    if let (Some(first), Some(deadline)) = (first_new, deadline_before(fences, old, w.end)) {
        let expiry = deadline + lease_margin;
        if first.invoke < expiry {
            out.push(Cause::EarlyPromotion {
                new: (*new).to_owned(),
                old: (*old).to_owned(),
                early_by: expiry - first.invoke,
            });
        }
    }
    if out.is_empty() {
        out.push(Cause::Unexplained);
    }
    out
}

/// Issue 19, item 4: how long before its lease expiry (as it measures it) the old primary
/// stopped answering as a primary, and when a new one first did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FenceMargin {
    pub node: String,
    /// Recorded deadline + fencing margin (ns on the run clock).
    pub expiry: u64,
    /// [`stopped_at`].
    pub stopped: u64,
    /// The first question another node answered as a primary (sent at), if any.
    pub new_primary: Option<(String, u64)>,
}

impl FenceMargin {
    /// `expiry − stopped` (ns; must be positive).
    pub fn margin(&self) -> i64 {
        self.expiry as i64 - self.stopped as i64
    }

    /// `first new primary − expiry` (ns; nobody may promote before the expiry).
    pub fn promoted_after_expiry(&self) -> Option<i64> {
        self.new_primary
            .as_ref()
            .map(|(_, at)| *at as i64 - self.expiry as i64)
    }
}

/// The fence margin of `old`, which was the primary when the fault started at `from`: `None`
/// when it never stopped answering as a primary or never had a fence record.
pub fn fence_margin(
    samples: &[RoleSample],
    fences: &[FenceObs],
    old: &str,
    from: u64,
    lease_margin: u64,
) -> Option<FenceMargin> {
    let stopped = stopped_at(samples, old, from)?;
    let deadline = deadline_before(fences, old, stopped)?;
    let new_primary = samples
        .iter()
        .filter(|s| s.node != old && s.invoke >= from && s.role.is_primary())
        .min_by_key(|s| s.invoke)
        .map(|s| (s.node.clone(), s.invoke));
    Some(FenceMargin {
        node: old.to_owned(),
        expiry: deadline + lease_margin,
        stopped,
        new_primary,
    })
}

/// The fencing margin the agent keeps before its lease can expire: ttl/5 clamped to 1–5 s
/// (design.md §4 rule 1; restated here because the harness does not link the agent).
pub fn lease_margin(ttl: std::time::Duration) -> std::time::Duration {
    (ttl / 5).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(5),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const PERIOD: u64 = 100 * MS;

    fn sample(node: &str, tick: u64, role: Role) -> RoleSample {
        RoleSample {
            node: node.to_owned(),
            tick,
            invoke: tick * PERIOD,
            complete: tick * PERIOD + 2 * MS,
            role,
        }
    }

    fn p(tl: i64) -> Role {
        Role::Primary { timeline: tl }
    }

    fn s(tl: i64) -> Role {
        Role::Standby { timeline: tl }
    }

    fn down() -> Role {
        Role::Down {
            why: "refused".to_owned(),
        }
    }

    /// n1 primary on tl 1 until tick `n1_until` (exclusive), n2 primary on tl 2 from tick
    /// `n2_from`, n3 a standby throughout; ticks 0..30.
    fn failover(n1_until: u64, n2_from: u64) -> Vec<RoleSample> {
        let mut v = Vec::new();
        for t in 0..30 {
            v.push(sample("n1", t, if t < n1_until { p(1) } else { down() }));
            v.push(sample("n2", t, if t >= n2_from { p(2) } else { s(1) }));
            v.push(sample("n3", t, s(1)));
        }
        v
    }

    #[test]
    fn a_clean_failover_has_no_window() {
        assert!(windows(&failover(10, 12)).is_empty());
        // Handed over within one tick: still none.
        assert!(windows(&failover(10, 10)).is_empty());
    }

    #[test]
    fn two_nodes_answering_as_primaries_in_the_same_ticks_are_one_window() {
        let w = windows(&failover(16, 12));
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!((w[0].first_tick, w[0].last_tick), (12, 15));
        assert_eq!(w[0].ticks(), 4);
        assert_eq!(w[0].length(PERIOD), 400 * MS);
        assert_eq!(w[0].start, 1200 * MS);
        assert_eq!(w[0].nodes(), vec!["n1", "n2"], "oldest timeline first");
    }

    #[test]
    fn a_gap_splits_windows_and_a_missing_or_failed_answer_is_not_a_primary() {
        let mut v = failover(20, 12);
        // Tick 14: n1 timed out; tick 15: n1 not asked at all (previous question pending).
        for x in v.iter_mut().filter(|x| x.node == "n1") {
            if x.tick == 14 {
                x.role = Role::Down {
                    why: "timeout".to_owned(),
                };
            }
        }
        v.retain(|x| !(x.node == "n1" && x.tick == 15));
        let w = windows(&v);
        let spans: Vec<(u64, u64)> = w.iter().map(|w| (w.first_tick, w.last_tick)).collect();
        assert_eq!(spans, vec![(12, 13), (16, 19)]);
    }

    fn fences(node: &str, deadline_ms: u64) -> Vec<FenceObs> {
        vec![
            FenceObs {
                node: node.to_owned(),
                at: 0,
                deadline: Some((deadline_ms - 500) * MS),
            },
            FenceObs {
                node: node.to_owned(),
                at: 100 * MS,
                deadline: Some(deadline_ms * MS),
            },
        ]
    }

    #[test]
    fn the_margin_is_measured_from_the_stop_to_the_holders_expiry() {
        // n1 stops at tick 10 (answer at 1002 ms); deadline 1500 ms, margin 500 ms -> expiry
        // 2000 ms; n2 primary from tick 25 (2500 ms).
        let m = fence_margin(&failover(10, 25), &fences("n1", 1500), "n1", 0, 500 * MS)
            .expect("n1 stopped");
        assert_eq!(m.stopped, 1002 * MS);
        assert_eq!(m.expiry, 2000 * MS);
        assert_eq!(m.margin(), 998 * MS as i64);
        assert_eq!(m.new_primary, Some(("n2".to_owned(), 2500 * MS)));
        assert_eq!(m.promoted_after_expiry(), Some(500 * MS as i64));
        // A stop after the expiry gives a negative margin.
        let late = fence_margin(&failover(22, 25), &fences("n1", 1500), "n1", 0, 500 * MS)
            .expect("n1 stopped");
        assert!(late.margin() < 0, "{late:?}");
        // One failed answer is no stop.
        let mut blip = failover(22, 25);
        for x in blip.iter_mut().filter(|x| x.node == "n1" && x.tick == 5) {
            x.role = down();
        }
        assert_eq!(stopped_at(&blip, "n1", 0), Some(2202 * MS));
        // Gone from the first question after the fault (killed, isolated): stopped there, as
        // it was a primary in the last question before the fault.
        assert_eq!(
            stopped_at(&failover(10, 25), "n1", 995 * MS),
            Some(1002 * MS)
        );
        // A node that was no primary before the fault never "stops".
        assert_eq!(stopped_at(&failover(10, 25), "n3", 995 * MS), None);
    }

    #[test]
    fn causes_name_a_late_fence_an_early_promotion_and_a_comeback() {
        // n1 primary until tick 16 although its deadline was 1000 ms; n2 promoted at tick 12,
        // after n1's expiry (1000 + 500 ms = 1500 ms)? No: 1200 < 1500, so also early.
        let v = failover(16, 12);
        let w = &windows(&v)[0];
        let c = causes(w, &v, &fences("n1", 1000), 0, 500 * MS);
        assert_eq!(
            c,
            vec![
                Cause::FencedLate {
                    node: "n1".to_owned(),
                    late_by: 200 * MS
                },
                Cause::EarlyPromotion {
                    new: "n2".to_owned(),
                    old: "n1".to_owned(),
                    early_by: 300 * MS
                },
            ]
        );
        // n1 stopped at tick 8 and came back at ticks 20..23 on its old timeline.
        let mut back = failover(8, 12);
        for x in back.iter_mut().filter(|x| x.node == "n1") {
            if (20..23).contains(&x.tick) {
                x.role = p(1);
            }
        }
        let w = windows(&back);
        assert_eq!(w.len(), 1);
        let c = causes(&w[0], &back, &fences("n1", 1000), 0, 100 * MS);
        assert_eq!(
            c,
            vec![Cause::CameBack {
                node: "n1".to_owned(),
                timeline: 1
            }]
        );
        assert!(c[0].to_string().contains("came back"), "{}", c[0]);
        // Without fence records and a stop, nothing explains it.
        let v = failover(16, 12);
        assert_eq!(
            causes(&windows(&v)[0], &v, &[], 0, 0),
            vec![Cause::Unexplained]
        );
    }

    #[test]
    fn the_lease_margin_is_the_agents() {
        use std::time::Duration;
        assert_eq!(
            lease_margin(Duration::from_secs(10)),
            Duration::from_secs(2)
        );
        assert_eq!(lease_margin(Duration::from_secs(3)), Duration::from_secs(1));
        assert_eq!(
            lease_margin(Duration::from_secs(60)),
            Duration::from_secs(5)
        );
    }
}
