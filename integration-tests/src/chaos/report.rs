//! The suite's report (safety-and-testing.md §7.8): per fault, iterations, time to a writable
//! new primary (p50/p90/max), acknowledged / lost / indeterminate / failed counts, violations,
//! recovery (p50/p90/max), where an iteration's time went, and the log tails of failing
//! iterations; as Markdown and JSON. With parallel clusters ([`merge`]) every worker's
//! iterations of a fault are folded into one [`FaultReport`], each iteration naming its worker
//! and that worker's seed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::{Value, json};

use super::checker::quantile;

/// One fault instance.
#[derive(Clone, Debug, Default)]
pub struct IterationReport {
    /// 1-based, over all workers.
    pub index: usize,
    /// The worker (cluster) that ran it, and that worker's seed.
    pub worker: usize,
    pub worker_seed: u64,
    /// Where the iteration's time went.
    pub phases: Phases,
    pub primary: String,
    /// Random delay before the fault (its phase relative to the lease renewals), ms.
    pub offset_ms: u64,
    /// Fault start on the run clock, s.
    pub fault_start_s: f64,
    /// Fault start to the first W1 acknowledgement from a new writer (or to the end of the
    /// write gap when the writer stayed the same), s.
    pub rto_s: Option<f64>,
    pub failover: bool,
    /// `old -> new` writer.
    pub writers: String,
    /// Heal to a healthy cluster again (every member streaming, W1 acknowledged), s.
    pub heal_to_healthy_s: Option<f64>,
    /// Heal to one leader and every member, the rejoined one included, streaming from it, s:
    /// the recovery time, which fails the run above `checker::RECOVERY_LIMIT_S`.
    pub heal_to_streaming_s: Option<f64>,
    pub ok: usize,
    pub info: usize,
    /// Indeterminate because the commit came back with the sync-replication cancel warning.
    pub warning_commits: usize,
    pub fail: usize,
    pub lost: Vec<i64>,
    pub unexpected: Vec<i64>,
    pub failed_but_present: Vec<i64>,
    /// W1 findings against "at most one writable primary" (proven overlaps, timeline
    /// regressions, shared timelines).
    pub w1_violations: Vec<String>,
    /// W1 overlaps that are possible but unproven (intervals overlap): count, widest (ms).
    pub w1_possible: usize,
    pub w1_possible_max_ms: f64,
    /// W2 (local commits) findings and the widest zombie window (ms).
    pub w2_violations: Vec<String>,
    pub w2_zombie_ms: f64,
    /// C5: windows in which two nodes answered as primaries (as the client namespace saw it).
    pub windows: Vec<WindowReport>,
    /// C5 as HAProxy sees it: windows in which two agents answered `GET /primary` with 200.
    pub rest_windows: Vec<WindowReport>,
    /// Issue 19, item 4: when the old primary stopped answering as one, against its lease.
    pub margin: Option<MarginReport>,
    /// W3 reads in the iteration.
    pub reads: usize,
    /// C4: ids a W3 read returned that the table no longer has (first attributed here).
    pub observed_lost: Vec<ObservedLossReport>,
    pub error: Option<String>,
    /// Log tails, for iterations with problems.
    pub logs: Option<String>,
}

/// Where one iteration's time went, s.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Phases {
    /// Waiting for the steady state before the fault (healthy, `/sync`, W1 acknowledging).
    pub steady_s: f64,
    /// The random phase offset before the fault.
    pub offset_s: f64,
    /// Inject, hold and heal (the fault's own definition).
    pub fault_s: f64,
    /// Heal to healthy again (every member streaming, `/sync`, W1 acknowledging).
    pub recovery_s: f64,
    /// C1/C3/C4 (replay wait, final-table read, history checks) and C5.
    pub check_s: f64,
    /// The whole iteration.
    pub total_s: f64,
}

impl Phases {
    fn to_json(self) -> Value {
        json!({
            "steady_s": self.steady_s,
            "offset_s": self.offset_s,
            "fault_s": self.fault_s,
            "recovery_s": self.recovery_s,
            "check_s": self.check_s,
            "total_s": self.total_s,
        })
    }
}

/// One C5 window.
#[derive(Clone, Debug, Default)]
pub struct WindowReport {
    /// Start on the run clock, s.
    pub start_s: f64,
    pub ticks: u64,
    /// Ticks × the sampling period, ms.
    pub length_ms: f64,
    /// `node@tl...`, oldest primary first.
    pub primaries: String,
    pub causes: Vec<String>,
    /// The involved agents' log lines around the window.
    pub logs: String,
}

/// The fence margin of one iteration (see `primaries::FenceMargin`).
#[derive(Clone, Debug, Default)]
pub struct MarginReport {
    pub node: String,
    /// Lease expiry as the old holder measures it minus the time it stopped answering as a
    /// primary, ms (must be positive).
    pub margin_ms: f64,
    /// The first new primary's first answer minus that expiry, ms.
    pub promoted_after_expiry_ms: Option<f64>,
    pub new_primary: Option<String>,
}

/// One C4 finding: an id a client read, then gone from the table.
#[derive(Clone, Debug, Default)]
pub struct ObservedLossReport {
    pub id: i64,
    /// The read that first returned it: reader, when (run clock, s), served by `node@tl`.
    pub reader: usize,
    pub seen_at_s: f64,
    pub seen_on: String,
    /// How its write ended for the writer (`ok`, `info: <note>`, `fail: <note>`, `none`).
    pub write: String,
    /// Its commit came back with "canceling wait for synchronous replication": PostgreSQL
    /// made it visible on that primary before any standby had it, which no HA agent can
    /// prevent; measured, not a failure (any other observed loss is).
    pub cancelled_sync_wait: bool,
}

impl ObservedLossReport {
    fn text(&self) -> String {
        format!(
            "id {} seen by reader {} at {:.1} s on {}, then lost (write: {})",
            self.id, self.reader, self.seen_at_s, self.seen_on, self.write
        )
    }
}

/// How lost acknowledged writes count for a fault.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LossRule {
    /// RPO=0: any loss fails the run.
    #[default]
    Forbidden,
    /// The negative control of C1: losses must be reported.
    Expected,
    /// Asynchronous replication: losses are measured, not failures.
    Measured,
}

/// How two-primary windows (C5) count for a fault.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Expect {
    pub loss: LossRule,
    /// The agent can fence: W2 overlaps fail the run.
    pub w2_must: bool,
    /// The negative control of C5 (fencing off): windows must be seen.
    pub windows: bool,
}

impl IterationReport {
    /// What makes this iteration fail the run under `expect`.
    pub fn problems(&self, expect: Expect) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(e) = &self.error {
            out.push(format!("error: {e}"));
        }
        if expect.loss == LossRule::Forbidden && !self.lost.is_empty() {
            out.push(format!(
                "{} acknowledged writes lost: {}",
                self.lost.len(),
                ids(&self.lost)
            ));
        }
        // Not for the fencing-off control: two primaries were the point there, and the one
        // that lost has to be rewound after its restarted agent fenced it.
        if !expect.windows {
            out.extend(super::checker::recovery_problem(self.heal_to_streaming_s));
        }
        if expect.loss == LossRule::Forbidden {
            for l in self.observed_lost.iter().filter(|l| !l.cancelled_sync_wait) {
                out.push(format!("C4: {}", l.text()));
            }
        }
        if !self.unexpected.is_empty() {
            out.push(format!("unexpected ids: {}", ids(&self.unexpected)));
        }
        if !self.failed_but_present.is_empty() {
            out.push(format!(
                "ids classified as failed are present: {}",
                ids(&self.failed_but_present)
            ));
        }
        out.extend(self.w1_violations.iter().map(|v| format!("W1: {v}")));
        if expect.w2_must {
            out.extend(self.w2_violations.iter().map(|v| format!("W2: {v}")));
        }
        if !expect.windows {
            for w in &self.windows {
                out.push(format!(
                    "C5: two primaries ({}) for {:.0} ms from {:.1} s: {}",
                    w.primaries,
                    w.length_ms,
                    w.start_s,
                    w.causes.join("; ")
                ));
            }
            for w in &self.rest_windows {
                out.push(format!(
                    "C5: two agents ({}) answered GET /primary with 200 for {:.0} ms from {:.1} s",
                    w.primaries, w.length_ms, w.start_s
                ));
            }
            if let Some(m) = self.margin.as_ref().filter(|m| m.margin_ms <= 0.0) {
                out.push(format!(
                    "fence margin {:.0} ms: {} answered as a primary until after its lease could expire",
                    m.margin_ms, m.node
                ));
            }
        }
        out
    }

    pub fn windows_ms(&self) -> f64 {
        self.windows
            .iter()
            .map(|w| w.length_ms)
            .fold(0.0, |a, b| a + b)
    }
}

fn ids(v: &[i64]) -> String {
    let shown: Vec<String> = v.iter().take(20).map(i64::to_string).collect();
    if v.len() > 20 {
        format!("{} ... ({} in all)", shown.join(","), v.len())
    } else {
        shown.join(",")
    }
}

/// Every iteration of one fault in one configuration.
#[derive(Clone, Debug, Default)]
pub struct FaultReport {
    pub fault: String,
    pub description: String,
    /// `quorum` (RPO=0) or `async` (negative control).
    pub replication: String,
    pub expect: Expect,
    pub iterations: Vec<IterationReport>,
}

impl FaultReport {
    fn rtos_ms(&self) -> Vec<u64> {
        self.iterations
            .iter()
            .filter_map(|i| i.rto_s)
            .map(|s| (s * 1000.0).round() as u64)
            .collect()
    }

    /// Recovery (heal to every member streaming) of every iteration that got there, ms.
    fn recoveries_ms(&self) -> Vec<u64> {
        self.iterations
            .iter()
            .filter_map(|i| i.heal_to_streaming_s)
            .map(|s| (s * 1000.0).round() as u64)
            .collect()
    }

    fn sum(&self, f: impl Fn(&IterationReport) -> usize) -> usize {
        self.iterations.iter().map(f).sum()
    }

    pub fn lost(&self) -> usize {
        self.sum(|i| i.lost.len())
    }

    pub fn windows(&self) -> usize {
        self.sum(|i| i.windows.len())
    }

    /// The windows' total length, ms (0, not -0, without any).
    pub fn windows_ms(&self) -> f64 {
        self.iterations
            .iter()
            .map(IterationReport::windows_ms)
            .fold(0.0, |a, b| a + b)
    }

    /// Fence margins of the iterations that have one, ms.
    pub fn margins_ms(&self) -> Vec<f64> {
        self.iterations
            .iter()
            .filter_map(|i| i.margin.as_ref().map(|m| m.margin_ms))
            .collect()
    }

    /// What makes this fault fail the run.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for it in &self.iterations {
            for p in it.problems(self.expect) {
                out.push(format!("{}: {p}", self.iteration_name(it)));
            }
        }
        if self.expect.loss == LossRule::Expected && self.lost() == 0 && !self.iterations.is_empty()
        {
            out.push(format!(
                "{} ({}): the negative control reported no lost write: the checker is broken",
                self.fault, self.replication
            ));
        }
        if self.expect.loss == LossRule::Expected
            && self.sum(|i| i.observed_lost.len()) == 0
            && !self.iterations.is_empty()
        {
            out.push(format!(
                "{} ({}): the negative control's readers saw no id that was then lost: W3 or C4 is broken",
                self.fault, self.replication
            ));
        }
        if self.expect.windows && self.windows() == 0 && !self.iterations.is_empty() {
            out.push(format!(
                "{} ({}): the negative control (fencing off) showed no two-primary window: the sampler is blind",
                self.fault, self.replication
            ));
        }
        out
    }

    /// `fault #index (replication, worker w, seed s)`: enough to find the iteration's logs
    /// and to replay its worker's schedule.
    pub fn iteration_name(&self, it: &IterationReport) -> String {
        format!(
            "{} #{} ({}, worker {}, seed {})",
            self.fault, it.index, self.replication, it.worker, it.worker_seed
        )
    }

    /// The mean of each phase over the iterations (zeros without any).
    pub fn mean_phases(&self) -> Phases {
        let n = self.iterations.len().max(1) as f64;
        let sum =
            |f: fn(&Phases) -> f64| self.iterations.iter().map(|i| f(&i.phases)).sum::<f64>() / n;
        Phases {
            steady_s: sum(|p| p.steady_s),
            offset_s: sum(|p| p.offset_s),
            fault_s: sum(|p| p.fault_s),
            recovery_s: sum(|p| p.recovery_s),
            check_s: sum(|p| p.check_s),
            total_s: sum(|p| p.total_s),
        }
    }

    fn to_json(&self) -> Value {
        let rto = self.rtos_ms();
        let recovery = self.recoveries_ms();
        json!({
            "fault": self.fault,
            "description": self.description,
            "replication": self.replication,
            "negative_control": self.expect.loss == LossRule::Expected || self.expect.windows,
            "loss_rule": format!("{:?}", self.expect.loss),
            "fencing_off": self.expect.windows,
            "w2_must_hold": self.expect.w2_must,
            "two_primary_windows": self.windows(),
            "two_primary_ms": self.windows_ms(),
            "two_primary_rest_windows": self.sum(|i| i.rest_windows.len()),
            "fence_margin_ms": { "min": min_f(&self.margins_ms()), "median": median_f(&self.margins_ms()) },
            "iterations": self.iterations.len(),
            "workers": self.iterations.iter().map(|i| i.worker).collect::<std::collections::BTreeSet<_>>().len(),
            "rto_ms": { "p50": quantile(&rto, 0.5), "p90": quantile(&rto, 0.9), "p95": quantile(&rto, 0.95), "max": rto.iter().max() },
            "recovery_ms": { "p50": quantile(&recovery, 0.5), "p90": quantile(&recovery, 0.9), "p95": quantile(&recovery, 0.95), "max": recovery.iter().max(), "limit": super::checker::RECOVERY_LIMIT_S * 1000.0 },
            "mean_phases_s": self.mean_phases().to_json(),
            "ok": self.sum(|i| i.ok),
            "lost": self.lost(),
            "reads": self.sum(|i| i.reads),
            "observed_lost": self.sum(|i| i.observed_lost.len()),
            "info": self.sum(|i| i.info),
            "warning_commits": self.sum(|i| i.warning_commits),
            "fail": self.sum(|i| i.fail),
            "problems": self.problems(),
            "runs": self.iterations.iter().map(iteration_json).collect::<Vec<_>>(),
        })
    }
}

fn iteration_json(i: &IterationReport) -> Value {
    json!({
        "index": i.index,
        "worker": i.worker,
        "worker_seed": i.worker_seed,
        "phases_s": i.phases.to_json(),
        "primary": i.primary,
        "offset_ms": i.offset_ms,
        "fault_start_s": i.fault_start_s,
        "rto_s": i.rto_s,
        "failover": i.failover,
        "writers": i.writers,
        "heal_to_healthy_s": i.heal_to_healthy_s,
        "heal_to_streaming_s": i.heal_to_streaming_s,
        "ok": i.ok,
        "info": i.info,
        "warning_commits": i.warning_commits,
        "fail": i.fail,
        "lost": i.lost,
        "unexpected": i.unexpected,
        "failed_but_present": i.failed_but_present,
        "w1_violations": i.w1_violations,
        "w1_possible_overlaps": i.w1_possible,
        "w1_possible_max_ms": i.w1_possible_max_ms,
        "w2_violations": i.w2_violations,
        "w2_zombie_window_ms": i.w2_zombie_ms,
        "windows": i.windows.iter().map(|w| json!({
            "start_s": w.start_s,
            "ticks": w.ticks,
            "length_ms": w.length_ms,
            "primaries": w.primaries,
            "causes": w.causes,
            "logs": w.logs,
        })).collect::<Vec<_>>(),
        "reads": i.reads,
        "observed_lost": i.observed_lost.iter().map(|l| json!({
            "id": l.id,
            "reader": l.reader,
            "seen_at_s": l.seen_at_s,
            "seen_on": l.seen_on,
            "write": l.write,
            "cancelled_sync_wait": l.cancelled_sync_wait,
        })).collect::<Vec<_>>(),
        "rest_windows": i.rest_windows.iter().map(|w| json!({
            "start_s": w.start_s,
            "ticks": w.ticks,
            "length_ms": w.length_ms,
            "agents": w.primaries,
            "logs": w.logs,
        })).collect::<Vec<_>>(),
        "fence_margin": i.margin.as_ref().map(|m| json!({
            "node": m.node,
            "margin_ms": m.margin_ms,
            "promoted_after_expiry_ms": m.promoted_after_expiry_ms,
            "new_primary": m.new_primary,
        })),
        "error": i.error,
        "logs": i.logs,
    })
}

/// The whole run.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub profile: String,
    pub seed: u64,
    pub started_unix: u64,
    pub duration_s: f64,
    pub faults: Vec<FaultReport>,
    /// End-of-run checks per configuration (final read, convergence), as lines.
    pub finals: Vec<String>,
    /// Problems found outside any iteration (final checks, a cluster that never started).
    pub other_problems: Vec<String>,
    /// The clusters that ran the iterations.
    pub workers: Vec<WorkerReport>,
}

/// One worker: a cluster per configuration, run one after the other, on its share of the
/// iterations.
#[derive(Clone, Debug, Default)]
pub struct WorkerReport {
    pub index: usize,
    pub seed: u64,
    /// Iterations it ran (all faults, both configurations).
    pub iterations: usize,
    /// Starting its clusters (network, etcd, bootstrap, workloads) until the first fault.
    pub setup_s: f64,
    /// Its final checks (workloads stopped, final read, C2) and teardown.
    pub finish_s: f64,
    /// From its start to its end.
    pub duration_s: f64,
}

impl WorkerReport {
    /// Seconds per iteration, setup and final checks included (what the run's length scales
    /// with).
    pub fn seconds_per_iteration(&self) -> Option<f64> {
        (self.iterations > 0).then(|| self.duration_s / self.iterations as f64)
    }
}

/// Fold the fault reports of every worker into one per (configuration, fault): iterations in
/// index order, faults in the order of `order` (`(replication, fault)` names; any others
/// after them, in the order first seen).
pub fn merge(order: &[(String, String)], parts: Vec<FaultReport>) -> Vec<FaultReport> {
    let mut merged: Vec<FaultReport> = Vec::new();
    for part in parts {
        match merged
            .iter_mut()
            .find(|f| f.fault == part.fault && f.replication == part.replication)
        {
            Some(f) => f.iterations.extend(part.iterations),
            None => merged.push(part),
        }
    }
    for f in &mut merged {
        f.iterations.sort_by_key(|i| i.index);
    }
    let rank = |f: &FaultReport| {
        order
            .iter()
            .position(|(r, n)| *r == f.replication && *n == f.fault)
            .unwrap_or(order.len())
    };
    // A stable sort keeps the first-seen order among the unlisted.
    merged.sort_by_key(rank);
    merged
}

impl Report {
    /// Everything that fails the run.
    pub fn problems(&self) -> Vec<String> {
        let mut out: Vec<String> = self.faults.iter().flat_map(FaultReport::problems).collect();
        out.extend(self.other_problems.iter().cloned());
        out
    }

    pub fn to_json(&self) -> Value {
        json!({
            "profile": self.profile,
            "seed": self.seed,
            "started_unix": self.started_unix,
            "duration_s": self.duration_s,
            "passed": self.problems().is_empty(),
            "problems": self.problems(),
            "finals": self.finals,
            "faults": self.faults.iter().map(FaultReport::to_json).collect::<Vec<_>>(),
            "workers": self.workers.iter().map(|w| json!({
                "worker": w.index,
                "seed": w.seed,
                "iterations": w.iterations,
                "setup_s": w.setup_s,
                "finish_s": w.finish_s,
                "duration_s": w.duration_s,
                "seconds_per_iteration": w.seconds_per_iteration(),
            })).collect::<Vec<_>>(),
        })
    }

    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        let problems = self.problems();
        let _ = writeln!(md, "# pgbaton fault suite report\n");
        let _ = writeln!(
            md,
            "profile `{}`, seed `{}`, {} worker(s), started {} (unix), {:.0} s, verdict **{}**\n",
            self.profile,
            self.seed,
            self.workers.len().max(1),
            self.started_unix,
            self.duration_s,
            if problems.is_empty() { "PASS" } else { "FAIL" }
        );
        md.push_str(
            "| fault | repl | iter | RTO p50 | p90 | max | failovers | ok | lost | info (warn) | fail | W1 viol | W1 possible | W2 overlaps | C5 windows (ms) / `/primary` 200s | fence margin min / median | C4 reads / seen→lost | recovery p50 / p90 / max |\n\
             |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for f in &self.faults {
            md.push_str(&summary_row(f));
        }
        md.push_str("\nRTO: fault start to the first write acknowledged through HAProxy by a new writer (or, without failover, to the end of the write gap). ");
        md.push_str("W2 overlaps are local commits (probe writers) of an older primary begun after a newer one acknowledged; they fail the run only where the agent is alive to fence. ");
        md.push_str("C5 windows: runs of 100 ms ticks in which two nodes answered `pg_is_in_recovery() = false` to the client namespace (count and total length); any fails the run unless fencing is off (the negative control, which must show some). ");
        md.push_str("`/primary` 200s: windows of ticks in which two agents answered HAProxy's health check `GET /primary` with 200; any fails the run unless fencing is off. ");
        md.push_str("Fence margin: the old primary's lease expiry as it measures it (fence record + margin) minus the time it stopped answering as a primary; must be positive. ");
        md.push_str("C4: W3 reads through HAProxy, and ids a read returned that the final table lacks; in RPO=0 any fails the run except a commit whose synchronous wait the client cancelled (PostgreSQL shows it before a standby has it: counted in brackets). ");
        md.push_str("Recovery: the fault's heal to one leader with every member, the rejoined one included, streaming from it; above 60 s fails the run (not in the fencing-off control).\n");
        md.push_str("\n## Time\n\n");
        md.push_str(&self.time_markdown());
        md.push_str("\n## Iterations\n\n");
        for f in &self.faults {
            for i in &f.iterations {
                md.push_str(&iteration_line(f, i));
            }
        }
        if !self.finals.is_empty() {
            md.push_str("\n## Final checks\n\n");
            for l in &self.finals {
                let _ = writeln!(md, "- {l}");
            }
        }
        md.push_str("\n## Problems\n\n");
        if problems.is_empty() {
            md.push_str("none\n");
        }
        for p in &problems {
            let _ = writeln!(md, "- {p}");
        }
        for f in &self.faults {
            for i in f.iterations.iter().filter(|i| i.logs.is_some()) {
                let _ = writeln!(
                    md,
                    "\n## Logs: {}\n\n```text\n{}\n```",
                    f.iteration_name(i),
                    i.logs.as_deref().unwrap_or_default()
                );
            }
        }
        md
    }

    /// Per worker its seconds per iteration; per fault the mean of each phase.
    fn time_markdown(&self) -> String {
        let mut md = String::new();
        if !self.workers.is_empty() {
            md.push_str("| worker | seed | iterations | setup | final checks | total | s / iteration |\n|---|---|---|---|---|---|---|\n");
            for w in &self.workers {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {:.0} s | {:.0} s | {:.0} s | {} |",
                    w.index,
                    w.seed,
                    w.iterations,
                    w.setup_s,
                    w.finish_s,
                    w.duration_s,
                    w.seconds_per_iteration()
                        .map_or("-".to_owned(), |s| format!("{s:.1}")),
                );
            }
            md.push('\n');
        }
        md.push_str("Mean per iteration, s: steady state before the fault, phase offset, the fault (inject, hold, heal), heal to healthy, checks.\n\n| fault | repl | steady | offset | fault | recovery | checks | total |\n|---|---|---|---|---|---|---|---|\n");
        for f in &self.faults {
            let p = f.mean_phases();
            let _ = writeln!(
                md,
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
                f.fault,
                f.replication,
                p.steady_s,
                p.offset_s,
                p.fault_s,
                p.recovery_s,
                p.check_s,
                p.total_s
            );
        }
        md
    }

    /// Write `report-<unix>.md` and `.json` into `dir`; returns both paths.
    pub fn write(&self, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let md = dir.join(format!("report-{}.md", self.started_unix));
        let js = dir.join(format!("report-{}.json", self.started_unix));
        std::fs::write(&md, self.to_markdown())
            .with_context(|| format!("write {}", md.display()))?;
        std::fs::write(&js, serde_json::to_string_pretty(&self.to_json())?)
            .with_context(|| format!("write {}", js.display()))?;
        Ok((md, js))
    }
}

fn summary_row(f: &FaultReport) -> String {
    let rto = f.rtos_ms();
    let recovery = f.recoveries_ms();
    let ms = |v: Option<u64>| v.map_or("-".to_owned(), |v| format!("{:.1} s", v as f64 / 1000.0));
    let w2: usize = f.iterations.iter().map(|i| i.w2_violations.len()).sum();
    format!(
        "| {}{} | {} | {} | {} | {} | {} | {} | {} | {} | {} ({}) | {} | {} | {} | {}{} | {} ({:.0}) / {} | {} | {} / {} ({}) | {} / {} / {} |\n",
        f.fault,
        if f.expect.loss == LossRule::Expected || f.expect.windows {
            " (negative control)"
        } else {
            ""
        },
        f.replication,
        f.iterations.len(),
        ms(quantile(&rto, 0.5)),
        ms(quantile(&rto, 0.9)),
        ms(rto.iter().max().copied()),
        f.iterations.iter().filter(|i| i.failover).count(),
        f.sum(|i| i.ok),
        f.lost(),
        f.sum(|i| i.info),
        f.sum(|i| i.warning_commits),
        f.sum(|i| i.fail),
        f.sum(|i| i.w1_violations.len()),
        f.sum(|i| i.w1_possible),
        w2,
        if f.expect.w2_must || w2 == 0 {
            ""
        } else {
            " (measured)"
        },
        f.windows(),
        f.windows_ms(),
        f.sum(|i| i.rest_windows.len()),
        match (min_f(&f.margins_ms()), median_f(&f.margins_ms())) {
            (Some(min), Some(med)) => format!("{min:.0} / {med:.0} ms"),
            _ => "-".to_owned(),
        },
        f.sum(|i| i.reads),
        f.sum(|i| i.observed_lost.len()),
        f.sum(|i| i
            .observed_lost
            .iter()
            .filter(|l| l.cancelled_sync_wait)
            .count()),
        ms(quantile(&recovery, 0.5)),
        ms(quantile(&recovery, 0.9)),
        ms(recovery.iter().max().copied()),
    )
}

/// The smallest of `v`.
pub fn min_f(v: &[f64]) -> Option<f64> {
    v.iter().copied().reduce(f64::min)
}

/// The median of `v` (the lower middle value).
pub fn median_f(v: &[f64]) -> Option<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len().saturating_sub(1) / 2).copied()
}

fn iteration_line(f: &FaultReport, i: &IterationReport) -> String {
    let mut line = format!(
        "- {}: primary {}, offset {} ms, fault at {:.1} s; RTO {}; {}writers {}; streaming {} and healthy {} after heal; ok {} info {} (warning commits {}) fail {} lost {}",
        f.iteration_name(i),
        i.primary,
        i.offset_ms,
        i.fault_start_s,
        i.rto_s.map_or("-".to_owned(), |s| format!("{s:.2} s")),
        if i.failover { "failover, " } else { "" },
        i.writers,
        i.heal_to_streaming_s
            .map_or("never".to_owned(), |s| format!("{s:.1} s")),
        i.heal_to_healthy_s
            .map_or("never".to_owned(), |s| format!("{s:.1} s")),
        i.ok,
        i.info,
        i.warning_commits,
        i.fail,
        i.lost.len(),
    );
    if i.w1_possible > 0 {
        let _ = write!(
            line,
            "; W1 possible overlaps {} (widest {:.1} ms)",
            i.w1_possible, i.w1_possible_max_ms
        );
    }
    if !i.w2_violations.is_empty() {
        let _ = write!(
            line,
            "; W2 overlaps {} (zombie window {:.0} ms)",
            i.w2_violations.len(),
            i.w2_zombie_ms
        );
    }
    if let Some(m) = &i.margin {
        let _ = write!(
            line,
            "; fence margin {:.0} ms ({}), new primary {} {}",
            m.margin_ms,
            m.node,
            m.new_primary.as_deref().unwrap_or("-"),
            m.promoted_after_expiry_ms
                .map_or(String::new(), |ms| format!("{ms:.0} ms after that expiry")),
        );
    }
    for w in &i.windows {
        let _ = write!(
            line,
            "\n  - two primaries {} at {:.1} s for {} ticks ({:.0} ms): {}",
            w.primaries,
            w.start_s,
            w.ticks,
            w.length_ms,
            w.causes.join("; ")
        );
    }
    for w in &i.rest_windows {
        let _ = write!(
            line,
            "\n  - two agents answered GET /primary with 200 ({}) at {:.1} s for {} ticks ({:.0} ms)",
            w.primaries, w.start_s, w.ticks, w.length_ms
        );
    }
    let _ = write!(line, "; {} reads", i.reads);
    let t = &i.phases;
    let _ = write!(
        line,
        "; time {:.1} s (steady {:.1}, offset {:.1}, fault {:.1}, recovery {:.1}, checks {:.1})",
        t.total_s, t.steady_s, t.offset_s, t.fault_s, t.recovery_s, t.check_s
    );
    for l in &i.observed_lost {
        let _ = write!(
            line,
            "\n  - C4 {}{}",
            l.text(),
            if l.cancelled_sync_wait {
                " (a cancelled synchronous wait: measured)"
            } else {
                ""
            }
        );
    }
    for p in i.problems(f.expect) {
        let _ = write!(line, "\n  - PROBLEM: {p}");
    }
    line.push('\n');
    line
}

/// `$CARGO_TARGET_DIR/chaos`, or the workspace's `target/chaos`.
pub fn report_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
        });
    target.join("chaos")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(loss: LossRule, lost: Vec<i64>) -> FaultReport {
        FaultReport {
            fault: "isolate".to_owned(),
            replication: "quorum".to_owned(),
            expect: Expect {
                loss,
                w2_must: true,
                windows: false,
            },
            iterations: vec![IterationReport {
                lost,
                rto_s: Some(12.5),
                ..IterationReport::default()
            }],
            ..FaultReport::default()
        }
    }

    #[test]
    fn losses_fail_the_rpo0_profile_and_their_absence_fails_the_negative_control() {
        assert!(fault(LossRule::Forbidden, vec![]).problems().is_empty());
        assert_eq!(fault(LossRule::Forbidden, vec![7]).problems().len(), 1);
        let mut control = fault(LossRule::Expected, vec![7]);
        control.iterations[0].observed_lost = vec![ObservedLossReport {
            id: 7,
            ..ObservedLossReport::default()
        }];
        assert!(control.problems().is_empty(), "{:?}", control.problems());
        assert!(fault(LossRule::Measured, vec![7]).problems().is_empty());
        assert!(fault(LossRule::Measured, vec![]).problems().is_empty());
        let broken = fault(LossRule::Expected, vec![]).problems();
        assert!(broken[0].contains("checker is broken"), "{broken:?}");
        // The control's lost writes were read before they were lost: C4 must say so too.
        let blind = fault(LossRule::Expected, vec![7]).problems();
        assert!(blind[0].contains("W3 or C4 is broken"), "{blind:?}");
    }

    #[test]
    fn a_recovery_slower_than_the_limit_fails_the_run_and_the_slowest_is_reported() {
        let mut f = fault(LossRule::Forbidden, vec![]);
        f.iterations[0].heal_to_streaming_s = Some(8.5);
        let mut slow = f.iterations[0].clone();
        slow.index = 1;
        slow.heal_to_streaming_s = Some(75.0);
        assert!(f.problems().is_empty());
        assert_eq!(f.recoveries_ms(), [8500]);
        f.iterations.push(slow);
        assert_eq!(f.recoveries_ms(), [8500, 75000]);
        let problems = f.problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("#1") && problems[0].contains("recovery took 75.0 s"));
        assert!(
            summary_row(&f).contains("/ 75.0 s |"),
            "{}",
            summary_row(&f)
        );
    }

    #[test]
    fn w2_overlaps_fail_only_where_the_agent_can_fence() {
        let mut f = fault(LossRule::Forbidden, vec![]);
        f.iterations[0].w2_violations = vec!["overlap".to_owned()];
        assert_eq!(f.problems().len(), 1);
        f.expect.w2_must = false;
        assert!(f.problems().is_empty());
    }

    #[test]
    fn a_read_then_lost_fails_rpo0_unless_its_synchronous_wait_was_cancelled() {
        let seen = |id: i64, cancelled: bool| ObservedLossReport {
            id,
            reader: 1,
            seen_at_s: 30.5,
            seen_on: "node1@tl2".to_owned(),
            write: "info: client timeout".to_owned(),
            cancelled_sync_wait: cancelled,
        };
        let mut f = fault(LossRule::Forbidden, vec![]);
        f.iterations[0].observed_lost = vec![seen(41, true)];
        assert!(f.problems().is_empty(), "{:?}", f.problems());
        assert!(
            f.to_json()["runs"][0]["observed_lost"][0]["cancelled_sync_wait"]
                .as_bool()
                .unwrap_or(false)
        );
        f.iterations[0].observed_lost.push(seen(42, false));
        let p = f.problems();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains("C4: id 42 seen by reader 1 at 30.5 s on node1@tl2"),
            "{p:?}"
        );
        // Asynchronous replication: measured.
        f.expect.loss = LossRule::Measured;
        assert!(f.problems().is_empty());
    }

    #[test]
    fn a_recovery_over_a_minute_fails_the_run() {
        let mut f = fault(LossRule::Forbidden, vec![]);
        f.iterations[0].heal_to_streaming_s = Some(59.0);
        assert!(f.problems().is_empty());
        assert_eq!(f.to_json()["recovery_ms"]["max"], 59_000);
        f.iterations[0].heal_to_streaming_s = Some(63.5);
        let p = f.problems();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("recovery took 63.5 s"), "{p:?}");
        // The fencing-off control is exempt: its old primary is fenced only by its restart.
        f.expect.windows = true;
        f.expect.w2_must = false;
        f.iterations[0].windows = vec![window()];
        assert!(f.problems().is_empty(), "{:?}", f.problems());
    }

    fn window() -> WindowReport {
        WindowReport {
            start_s: 12.0,
            ticks: 3,
            length_ms: 300.0,
            primaries: "node1@tl1, node2@tl2".to_owned(),
            causes: vec!["node1 still primary 200 ms after its fence deadline".to_owned()],
            logs: String::new(),
        }
    }

    #[test]
    fn a_window_fails_the_run_while_fencing_is_on_and_its_absence_fails_the_control() {
        let mut f = fault(LossRule::Forbidden, vec![]);
        f.iterations[0].windows = vec![window()];
        let p = f.problems();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains("two primaries") && p[0].contains("fence deadline"),
            "{p:?}"
        );
        // Two agents answering /primary with 200 fail the run as well.
        f.iterations[0].rest_windows = vec![window()];
        assert_eq!(f.problems().len(), 2, "{:?}", f.problems());
        assert!(
            f.problems()[1].contains("GET /primary"),
            "{:?}",
            f.problems()
        );
        f.iterations[0].rest_windows.clear();
        // Fencing off (the negative control): windows are the point ...
        f.expect.windows = true;
        f.expect.w2_must = false;
        assert!(f.problems().is_empty());
        // ... and none means the sampler is blind.
        f.iterations[0].windows.clear();
        let blind = f.problems();
        assert!(blind[0].contains("sampler is blind"), "{blind:?}");
    }

    #[test]
    fn a_margin_that_is_not_positive_fails_the_run() {
        let mut f = fault(LossRule::Forbidden, vec![]);
        let margin = |ms: f64| MarginReport {
            node: "node1".to_owned(),
            margin_ms: ms,
            ..MarginReport::default()
        };
        f.iterations[0].margin = Some(margin(1800.0));
        assert!(f.problems().is_empty());
        f.iterations[0].margin = Some(margin(-50.0));
        assert_eq!(f.problems().len(), 1);
        assert_eq!(median_f(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(min_f(&[3.0, 1.0, 2.0]), Some(1.0));
        assert_eq!(median_f(&[]), None);
    }

    fn iteration(index: usize, worker: usize, rto_s: f64, recovery_s: f64) -> IterationReport {
        IterationReport {
            index,
            worker,
            worker_seed: 100 + worker as u64,
            rto_s: Some(rto_s),
            heal_to_streaming_s: Some(recovery_s),
            ok: 10,
            ..IterationReport::default()
        }
    }

    fn part(fault: &str, replication: &str, iterations: Vec<IterationReport>) -> FaultReport {
        FaultReport {
            fault: fault.to_owned(),
            replication: replication.to_owned(),
            expect: Expect {
                loss: LossRule::Forbidden,
                w2_must: true,
                windows: false,
            },
            iterations,
            ..FaultReport::default()
        }
    }

    #[test]
    fn workers_reports_merge_into_one_per_fault_in_plan_order() {
        let order = vec![
            ("async".to_owned(), "kill-agent".to_owned()),
            ("quorum".to_owned(), "kill-agent".to_owned()),
            ("quorum".to_owned(), "isolate".to_owned()),
        ];
        // Worker 1 reports first and has a fault worker 0 never reached.
        let parts = vec![
            part("isolate", "quorum", vec![iteration(2, 1, 2.0, 5.0)]),
            part("kill-agent", "quorum", vec![iteration(2, 1, 3.0, 6.0)]),
            part("kill-agent", "async", vec![iteration(2, 1, 4.0, 7.0)]),
            part(
                "kill-agent",
                "async",
                vec![iteration(1, 0, 1.0, 4.0), iteration(3, 0, 9.0, 8.0)],
            ),
            part("kill-agent", "quorum", vec![iteration(1, 0, 5.0, 9.0)]),
            part("switchover", "quorum", vec![iteration(1, 0, 1.0, 1.0)]),
        ];
        let merged = merge(&order, parts);
        let names: Vec<(&str, &str)> = merged
            .iter()
            .map(|f| (f.replication.as_str(), f.fault.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("async", "kill-agent"),
                ("quorum", "kill-agent"),
                ("quorum", "isolate"),
                ("quorum", "switchover"),
            ]
        );
        let a = &merged[0];
        assert_eq!(
            a.iterations.iter().map(|i| i.index).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(
            a.iterations.iter().map(|i| i.worker).collect::<Vec<_>>(),
            [0, 1, 0]
        );
        assert_eq!(a.sum(|i| i.ok), 30);
        assert_eq!(a.rtos_ms(), [1000, 4000, 9000]);
        let json = a.to_json();
        assert_eq!(json["iterations"], 3);
        assert_eq!(json["workers"], 2);
        assert_eq!(json["rto_ms"]["p50"], 4000);
        assert_eq!(json["rto_ms"]["p90"], 9000);
        assert_eq!(json["recovery_ms"]["max"], 8000);
        assert_eq!(merged[1].iterations.len(), 2);
    }

    #[test]
    fn percentiles_are_nearest_rank_over_every_workers_iterations() {
        // 30 iterations over 4 workers, recoveries 1..=30 s dealt round robin.
        let parts: Vec<FaultReport> = (0..4)
            .map(|w| {
                let its = crate::chaos::worker_iterations(30, 4, w)
                    .into_iter()
                    .map(|i| iteration(i, w, i as f64 / 10.0, i as f64))
                    .collect();
                part("isolate", "quorum", its)
            })
            .collect();
        let merged = merge(&[], parts);
        assert_eq!(merged.len(), 1);
        let f = &merged[0];
        assert_eq!(f.iterations.len(), 30);
        let json = f.to_json();
        assert_eq!(json["recovery_ms"]["p50"], 15_000);
        assert_eq!(json["recovery_ms"]["p90"], 27_000);
        assert_eq!(json["recovery_ms"]["max"], 30_000);
        assert_eq!(json["rto_ms"]["p50"], 1500);
        assert_eq!(json["rto_ms"]["p90"], 2700);
        let row = summary_row(f);
        assert!(row.contains("| 15.0 s / 27.0 s / 30.0 s |"), "{row}");
        assert!(
            row.starts_with("| isolate | quorum | 30 | 1.5 s | 2.7 s | 3.0 s |"),
            "{row}"
        );
    }

    #[test]
    fn a_failing_iteration_names_its_worker_and_seed_and_the_margins_merge() {
        let mut bad = iteration(4, 3, 1.0, 2.0);
        bad.lost = vec![17];
        bad.margin = Some(MarginReport {
            node: "node2".to_owned(),
            margin_ms: 900.0,
            ..MarginReport::default()
        });
        let mut good = iteration(1, 0, 1.0, 2.0);
        good.margin = Some(MarginReport {
            node: "node1".to_owned(),
            margin_ms: 1500.0,
            ..MarginReport::default()
        });
        let mut third = iteration(2, 1, 1.0, 2.0);
        third.margin = Some(MarginReport {
            margin_ms: 1200.0,
            ..MarginReport::default()
        });
        let merged = merge(
            &[],
            vec![
                part("isolate", "quorum", vec![bad]),
                part("isolate", "quorum", vec![good, third]),
            ],
        );
        let p = merged[0].problems();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with(
                "isolate #4 (quorum, worker 3, seed 103): 1 acknowledged writes lost: 17"
            ),
            "{p:?}"
        );
        let json = merged[0].to_json();
        assert_eq!(json["fence_margin_ms"]["min"], 900.0);
        assert_eq!(json["fence_margin_ms"]["median"], 1200.0);
        assert_eq!(json["lost"], 1);
        let report = Report {
            faults: merged,
            workers: vec![
                WorkerReport {
                    index: 0,
                    seed: 100,
                    iterations: 2,
                    duration_s: 70.0,
                    ..WorkerReport::default()
                },
                WorkerReport {
                    index: 1,
                    seed: 101,
                    ..WorkerReport::default()
                },
            ],
            ..Report::default()
        };
        let md = report.to_markdown();
        assert!(
            md.contains("| 0 | 100 | 2 | 0 s | 0 s | 70 s | 35.0 |"),
            "{md}"
        );
        assert!(md.contains("| 1 | 101 | 0 | 0 s | 0 s | 0 s | - |"), "{md}");
        assert!(md.contains("2 worker(s)"), "{md}");
        assert!(
            md.contains("- isolate #4 (quorum, worker 3, seed 103): primary"),
            "{md}"
        );
        assert_eq!(
            report.to_json()["workers"][0]["seconds_per_iteration"],
            35.0
        );
    }

    #[test]
    fn mean_phases_average_over_the_iterations() {
        let mut f = part(
            "isolate",
            "quorum",
            vec![iteration(1, 0, 1.0, 1.0), iteration(2, 0, 1.0, 1.0)],
        );
        f.iterations[0].phases = Phases {
            steady_s: 1.0,
            offset_s: 2.0,
            fault_s: 14.0,
            recovery_s: 6.0,
            check_s: 1.0,
            total_s: 24.0,
        };
        f.iterations[1].phases = Phases {
            steady_s: 3.0,
            offset_s: 0.0,
            fault_s: 14.0,
            recovery_s: 10.0,
            check_s: 3.0,
            total_s: 30.0,
        };
        let m = f.mean_phases();
        assert_eq!(
            (m.steady_s, m.fault_s, m.recovery_s, m.total_s),
            (2.0, 14.0, 8.0, 27.0)
        );
        assert_eq!(part("x", "quorum", vec![]).mean_phases(), Phases::default());
    }

    #[test]
    fn the_markdown_has_a_row_per_fault_and_the_verdict() {
        let mut f = fault(LossRule::Forbidden, vec![3]);
        f.iterations[0].windows = vec![window()];
        let report = Report {
            profile: "short".to_owned(),
            faults: vec![f, fault(LossRule::Forbidden, vec![])],
            ..Report::default()
        };
        let md = report.to_markdown();
        assert!(md.contains("| isolate | quorum | 1 | 12.5 s |"), "{md}");
        assert!(md.contains("| 1 (300) / 0 | - |"), "{md}");
        assert!(md.contains("| 0 (0) / 0 | - |"), "no windows, no -0: {md}");
        assert!(md.contains("verdict **FAIL**"));
        assert_eq!(report.to_json()["faults"][0]["lost"], 1);
        assert_eq!(report.to_json()["faults"][0]["two_primary_windows"], 1);
    }
}
