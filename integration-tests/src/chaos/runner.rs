//! One configuration profile of the suite on one worker: start a cluster (3 etcd members, 3
//! nodes, HAProxy in the client namespace, all in network namespaces of the worker's own, on a
//! subnet and ports of its own), run the workloads, inject every fault of the list once per
//! iteration the worker was dealt, check after each, and finish with the final read.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::checker::{self, Op, Outcome, OverlapCheck};
use super::faults::{Fault, Target};
use super::primaries;
use super::readers::Readers;
use super::report::{
    Expect, FaultReport, IterationReport, LossRule, MarginReport, ObservedLossReport, WindowReport,
};
use super::roles::{PERIOD, RoleSampler, RoleTarget};
use super::workload::{ProbeWriters, SCHEMA_SQL, SetWorkload, SetWorkloadConfig};
use super::{Clock, Profile, Rng, secs};
use crate::cluster::{Cluster, ClusterSpec, Healthy};
use crate::pg::{PgTarget, lsn_reached};
use crate::tools::{Tools, scaled};
use crate::wait::{Check, wait_for, wait_until};

/// The replication configuration under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replication {
    /// `synchronous_mode: quorum` (the RPO=0 profile).
    Quorum,
    /// `synchronous_mode: false` (the negative control).
    Async,
}

impl Replication {
    pub fn name(self) -> &'static str {
        match self {
            Replication::Quorum => "quorum",
            Replication::Async => "async",
        }
    }

    fn dcs(self) -> Value {
        match self {
            Replication::Quorum => json!({"synchronous_mode": "quorum"}),
            Replication::Async => json!({"synchronous_mode": false}),
        }
    }
}

/// What one profile produced.
#[derive(Debug, Default)]
pub struct ProfileRun {
    pub faults: Vec<FaultReport>,
    /// Final-read lines for the report.
    pub finals: Vec<String>,
    pub problems: Vec<String>,
    /// Cluster start to the first fault, s.
    pub setup_s: f64,
    /// The final checks and the teardown, s.
    pub finish_s: f64,
}

/// Which worker runs a profile: its number, its seed (in every problem it reports, so that a
/// failure can be replayed) and the iterations (1-based, of every fault) it was dealt.
#[derive(Clone, Debug)]
pub struct Worker {
    pub index: usize,
    pub seed: u64,
    pub iterations: Vec<usize>,
}

impl Worker {
    /// `replication, worker w, seed s`, for problems outside an iteration.
    fn name(&self, replication: Replication) -> String {
        format!(
            "{}, worker {}, seed {}",
            replication.name(),
            self.index,
            self.seed
        )
    }
}

/// How long the cluster may take to become healthy again after a fault is healed.
const RECOVERY: Duration = Duration::from_secs(180);
/// The window within the lease renewal period in which the fault starts (keepalive ttl/3).
const PHASE: Duration = Duration::from_millis(3300);
/// Lines of each log kept for a failing iteration.
const LOG_LINES: usize = 80;

/// Run `faults` (each once per iteration of `worker`, with how its lost writes count) on a
/// fresh cluster configured for `replication`. Errors only when the cluster cannot be set up;
/// failures during the faults are in the returned reports.
pub async fn run_profile(
    tools: &Tools,
    profile: &Profile,
    replication: Replication,
    faults: &[(Fault, LossRule)],
    clock: Clock,
    worker: &Worker,
    rng: &mut Rng,
) -> anyhow::Result<ProfileRun> {
    let started = std::time::Instant::now();
    let mut spec = ClusterSpec::new(3);
    spec.netns = true;
    spec.etcd_members = 3;
    spec.extra_config = json!({"bootstrap": {"dcs": replication.dcs()}});
    let cluster = Cluster::start(tools, spec).await?;
    let mut suite = Suite::new(cluster, replication, clock).await?;
    let mut run = ProfileRun {
        setup_s: started.elapsed().as_secs_f64(),
        ..ProfileRun::default()
    };
    'faults: for &(fault, loss) in faults {
        let mut report = FaultReport {
            fault: fault.name().to_owned(),
            description: fault.description().to_owned(),
            replication: replication.name().to_owned(),
            expect: Expect {
                loss,
                w2_must: fault.agent_can_fence(),
                windows: fault.fencing_disabled(),
            },
            iterations: Vec::new(),
        };
        for &index in &worker.iterations {
            eprintln!(
                "chaos: {} #{index} ({})",
                fault.name(),
                worker.name(replication)
            );
            let mut it = suite.iteration(fault, index, profile, rng, &report).await;
            it.worker = worker.index;
            it.worker_seed = worker.seed;
            let fatal = it.error.is_some();
            let name = report.iteration_name(&it);
            report.iterations.push(it);
            if fatal {
                run.faults.push(report);
                run.problems.push(format!(
                    "worker {} stopped after {name}, which did not recover",
                    worker.index
                ));
                break 'faults;
            }
        }
        run.faults.push(report);
    }
    let finishing = std::time::Instant::now();
    match suite.finish().await {
        Ok(lines) => run.finals.extend(
            lines
                .into_iter()
                .map(|l| format!("worker {}: {l}", worker.index)),
        ),
        Err(e) => run
            .problems
            .push(format!("final check ({}): {e:#}", worker.name(replication))),
    }
    run.finish_s = finishing.elapsed().as_secs_f64();
    Ok(run)
}

/// A running cluster with its workloads and what has been reported so far.
struct Suite {
    cluster: Cluster,
    replication: Replication,
    clock: Clock,
    w1: SetWorkload,
    w2: ProbeWriters,
    /// W3, for C4.
    w3: Readers,
    /// C5: every node's role as the client namespace sees it, and the fence records.
    roles: RoleSampler,
    /// The fencing margin the agents keep (ns): their lease expiry is deadline + this.
    lease_margin: u64,
    /// Findings already attributed to an earlier iteration (lost ids, violation keys).
    seen_lost: BTreeSet<i64>,
    /// Ids C4 already attributed to an earlier iteration (observed, then gone).
    seen_observed_lost: BTreeSet<i64>,
    seen_findings: BTreeSet<String>,
    /// Some iteration had a problem: keep the logs (the cluster is not `finish`ed).
    failed: bool,
    /// C5 has looked at the samples up to here (the end of the last iteration).
    checked_until: u64,
}

impl Suite {
    /// Wait for the cluster, create the tables, start W1 (inside the client namespace,
    /// through HAProxy) and W2 (every node's Unix socket).
    async fn new(
        cluster: Cluster,
        replication: Replication,
        clock: Clock,
    ) -> anyhow::Result<Suite> {
        let healthy = cluster
            .wait_healthy(scaled(RECOVERY))
            .await
            .context("initial bootstrap")?;
        if replication == Replication::Quorum {
            wait_sync(&cluster, &healthy).await?;
        }
        cluster
            .node(&healthy.leader)
            .pg()
            .execute(SCHEMA_SQL)
            .await
            .context("create the workload tables")?;
        let via = cluster.via_haproxy_primary();
        let client_ns = cluster.network().client().netns.clone();
        let w1 = SetWorkload::start(&client_ns, via.clone(), SetWorkloadConfig::default(), clock);
        let w3 = Readers::start(&client_ns, via, clock);
        let w2 = ProbeWriters::start(
            cluster
                .nodes()
                .iter()
                .map(|n| unix_socket_target(&n.pg(), &n.config.dir))
                .collect(),
            clock,
        );
        let roles = RoleSampler::start(
            &client_ns,
            cluster
                .nodes()
                .iter()
                .map(|n| RoleTarget {
                    name: n.name.clone(),
                    pg: n.pg(),
                    rest: n.rest_base(),
                    data_dir: n.config.data_dir.clone(),
                })
                .collect(),
            clock,
        );
        let ttl = cluster.spec().timing.ttl();
        let suite = Suite {
            cluster,
            replication,
            clock,
            w1,
            w2,
            w3,
            roles,
            lease_margin: primaries::lease_margin(ttl).as_nanos() as u64,
            seen_lost: BTreeSet::new(),
            seen_observed_lost: BTreeSet::new(),
            seen_findings: BTreeSet::new(),
            failed: false,
            checked_until: 0,
        };
        suite.wait_acked_since(clock.now()).await?;
        Ok(suite)
    }

    /// One fault instance: steady state, random phase, inject/hold/heal, recovery, checks.
    async fn iteration(
        &mut self,
        fault: Fault,
        index: usize,
        profile: &Profile,
        rng: &mut Rng,
        report: &FaultReport,
    ) -> IterationReport {
        let start = self.clock.now();
        let mut it = IterationReport {
            index,
            ..IterationReport::default()
        };
        let mut fault_at = start;
        let result = self
            .inject_and_recover(fault, profile, rng, &mut it, &mut fault_at)
            .await;
        let end = self.clock.now();
        if let Err(e) = result {
            it.error = Some(format!("{e:#}"));
        }
        if let Err(e) = self.check(start, end, &mut it).await {
            it.error.get_or_insert_with(|| format!("check: {e:#}"));
        }
        self.check_primaries(start, fault_at, end, &mut it);
        self.checked_until = end;
        it.phases.check_s = secs(self.clock.now() - end);
        it.phases.total_s = secs(self.clock.now() - start);
        if !it.problems(report.expect).is_empty() {
            self.failed = true;
            it.logs = Some(self.cluster.log_tails(LOG_LINES));
        }
        it
    }

    async fn inject_and_recover(
        &mut self,
        fault: Fault,
        profile: &Profile,
        rng: &mut Rng,
        it: &mut IterationReport,
        fault_at: &mut u64,
    ) -> anyhow::Result<()> {
        let steady_from = self.clock.now();
        let healthy = self
            .wait_ready()
            .await
            .context("steady state before the fault")?;
        it.phases.steady_s = secs(self.clock.now() - steady_from);
        let target = Target {
            primary: healthy.leader.clone(),
            replicas: healthy.replicas.clone(),
        };
        it.primary = target.primary.clone();
        let offset = rng.duration(Duration::ZERO, PHASE);
        it.offset_ms = offset.as_millis() as u64;
        // The fault's phase relative to the last lease renewal.
        tokio::time::sleep(offset).await;
        it.phases.offset_s = offset.as_secs_f64();
        let t_f = self.clock.now();
        *fault_at = t_f;
        it.fault_start_s = secs(t_f);
        fault
            .inject(&mut self.cluster, &target, profile, rng)
            .await
            .with_context(|| format!("inject {}", fault.name()))?;
        let healed = self.clock.now();
        it.phases.fault_s = secs(healed - t_f);
        let streaming = self
            .cluster
            .wait_healthy(scaled(RECOVERY))
            .await
            .context("recovery after the heal")?;
        it.heal_to_streaming_s = Some(secs(self.clock.now() - healed));
        self.ready_from(streaming)
            .await
            .context("recovery after the heal")?;
        it.heal_to_healthy_s = Some(secs(self.clock.now() - healed));
        it.phases.recovery_s = secs(self.clock.now() - healed);
        let recovery = checker::recovery(&self.w1.history().snapshot(), t_f, self.clock.now());
        it.rto_s = recovery.rto.map(secs);
        it.failover = recovery.failover;
        let name =
            |e: &Option<checker::Epoch>| e.as_ref().map_or("?".to_owned(), |e| e.to_string());
        it.writers = format!("{} -> {}", name(&recovery.old), name(&recovery.new));
        Ok(())
    }

    /// A healthy cluster (one leader, both replicas streaming, HAProxy on the leader; in
    /// quorum mode both replicas in `/sync`), and W1 acknowledging writes again.
    async fn wait_ready(&self) -> anyhow::Result<Healthy> {
        let healthy = self.cluster.wait_healthy(scaled(RECOVERY)).await?;
        self.ready_from(healthy).await
    }

    /// [`Self::wait_ready`] from a cluster already seen healthy.
    async fn ready_from(&self, healthy: Healthy) -> anyhow::Result<Healthy> {
        if self.replication == Replication::Quorum {
            wait_sync(&self.cluster, &healthy).await?;
        }
        self.wait_acked_since(self.clock.now()).await?;
        Ok(healthy)
    }

    /// Wait until W1 has an acknowledged write invoked at or after `since`.
    async fn wait_acked_since(&self, since: u64) -> anyhow::Result<()> {
        let history = self.w1.history();
        wait_until(
            "W1 to get a write acknowledged through HAProxy",
            scaled(Duration::from_secs(60)),
            || async { Ok(history.acked_since(since)) },
        )
        .await
    }

    /// C1 against the table as it is now, C3 over both histories; findings not reported
    /// before are attributed to this iteration (`[start, end)`).
    async fn check(
        &mut self,
        start: u64,
        end: u64,
        it: &mut IterationReport,
    ) -> anyhow::Result<()> {
        let in_window = |o: &&Op| o.invoke >= start && o.invoke < end;
        let w1_ops = self.w1.history().snapshot();
        for o in w1_ops.iter().filter(in_window) {
            match o.outcome {
                Outcome::Ok => it.ok += 1,
                Outcome::Info => {
                    it.info += 1;
                    if o.note.starts_with("warning:") {
                        it.warning_commits += 1;
                    }
                }
                Outcome::Fail => it.fail += 1,
            }
        }
        let overlap = checker::check_overlap(&w1_ops);
        it.w1_violations = self.new_findings("w1", &overlap);
        let possible: Vec<u64> = overlap
            .possible
            .iter()
            .filter(|(o, _)| in_window(&o))
            .map(|(_, w)| *w)
            .collect();
        it.w1_possible = possible.len();
        it.w1_possible_max_ms = possible.iter().max().map_or(0.0, |w| *w as f64 / 1e6);
        let w2_overlap = checker::check_overlap(&self.w2.history().snapshot());
        it.w2_violations = self.new_findings("w2", &w2_overlap);
        it.w2_zombie_ms = w2_overlap
            .violations
            .iter()
            .filter(|v| in_window(&&v.old))
            .map(|v| v.window())
            .max()
            .map_or(0.0, |w| w as f64 / 1e6);
        // Reads taken before the table: each completed before the final read.
        let reads = self.w3.snapshot();
        let final_ids = read_set(&self.cluster).await?;
        // Read after the table: every id in it was handed out before.
        let bound = self.w1.history().attempted_below();
        let set = checker::check_set(&w1_ops, &final_ids, bound);
        it.reads = reads
            .iter()
            .filter(|r| r.invoke >= start && r.invoke < end)
            .count();
        let observed = checker::check_observed(&reads, &w1_ops, &final_ids, bound);
        for loss in observed.lost {
            if self.seen_observed_lost.insert(loss.id) {
                it.observed_lost.push(observed_loss(&loss, &w1_ops));
            }
        }
        it.lost = set
            .lost
            .iter()
            .copied()
            .filter(|id| self.seen_lost.insert(*id))
            .collect();
        it.unexpected = set.unexpected;
        it.failed_but_present = set.failed_but_present;
        Ok(())
    }

    /// C5 over the iteration `[start, end)` whose fault started at `fault_at`: the windows
    /// with two primaries, their causes, the involved agents' log lines, and the fence margin
    /// of the primary the fault hit.
    fn check_primaries(&self, start: u64, fault_at: u64, end: u64, it: &mut IterationReport) {
        let history = self.roles.history();
        let samples: Vec<_> = history
            .samples()
            .into_iter()
            .filter(|s| s.invoke >= start && s.invoke < end)
            .collect();
        let fences = history.fences();
        let period = PERIOD.as_nanos() as u64;
        for w in primaries::windows(&samples) {
            let causes = primaries::causes(&w, &samples, &fences, fault_at, self.lease_margin);
            let primaries = w
                .primaries
                .iter()
                .map(|(n, tl)| format!("{n}@tl{tl}"))
                .collect::<Vec<_>>()
                .join(", ");
            let nodes: Vec<String> = w.nodes().into_iter().map(str::to_owned).collect();
            it.windows.push(WindowReport {
                start_s: secs(w.start),
                ticks: w.ticks(),
                length_ms: w.length(period) as f64 / 1e6,
                primaries,
                causes: causes.iter().map(ToString::to_string).collect(),
                logs: self.log_excerpt(
                    &nodes,
                    w.start.saturating_sub(4_000_000_000),
                    w.end + 1_000_000_000,
                ),
            });
        }
        // What HAProxy sees: ticks in which two agents answered `/primary` with 200.
        let health: Vec<_> = history
            .health()
            .into_iter()
            .filter(|s| s.invoke >= start && s.invoke < end)
            .collect();
        for w in primaries::windows(&health) {
            it.rest_windows.push(WindowReport {
                start_s: secs(w.start),
                ticks: w.ticks(),
                length_ms: w.length(period) as f64 / 1e6,
                primaries: w.nodes().join(", "),
                causes: vec!["two agents answered GET /primary with 200".to_owned()],
                logs: self.log_excerpt(
                    &w.nodes().into_iter().map(str::to_owned).collect::<Vec<_>>(),
                    w.start.saturating_sub(4_000_000_000),
                    w.end + 1_000_000_000,
                ),
            });
        }
        if let Some(m) =
            primaries::fence_margin(&samples, &fences, &it.primary, fault_at, self.lease_margin)
        {
            it.margin = Some(MarginReport {
                node: m.node.clone(),
                margin_ms: m.margin() as f64 / 1e6,
                promoted_after_expiry_ms: m.promoted_after_expiry().map(|ns| ns as f64 / 1e6),
                new_primary: m.new_primary.as_ref().map(|(n, _)| n.clone()),
            });
        }
    }

    /// The agent log lines of `nodes` stamped within `[from, to]` (run clock).
    fn log_excerpt(&self, nodes: &[String], from: u64, to: u64) -> String {
        let (lo, hi) = (self.clock.log_stamp(from), self.clock.log_stamp(to));
        let mut out = String::new();
        for name in nodes {
            let node = self.cluster.node(name);
            let text = std::fs::read_to_string(&node.log_path).unwrap_or_default();
            out.push_str(&format!("----- agent {name} {lo} .. {hi} -----\n"));
            for line in text
                .lines()
                .filter(|l| stamped_within(l, &lo, &hi))
                .take(200)
            {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// C3 findings as stable texts, only those not reported by an earlier iteration.
    fn new_findings(&mut self, workload: &str, c: &OverlapCheck) -> Vec<String> {
        let mut texts = Vec::new();
        for v in &c.violations {
            texts.push(format!(
                "{workload}: {} write {} invoked at {:.3}s after {} write {} was acknowledged at {:.3}s (zombie window {:.0} ms)",
                v.old.epoch.as_ref().map(ToString::to_string).unwrap_or_default(),
                v.old.id,
                secs(v.old.invoke),
                v.new.epoch.as_ref().map(ToString::to_string).unwrap_or_default(),
                v.new.id,
                secs(v.new.complete),
                v.window() as f64 / 1e6,
            ));
        }
        for (hi, lo) in &c.regressions {
            texts.push(format!(
                "{workload}: timeline went back on {}: write {} (tl {}) after write {} (tl {})",
                lo.epoch.as_ref().map(|e| e.node.as_str()).unwrap_or("?"),
                lo.id,
                lo.epoch.as_ref().map_or(0, |e| e.timeline),
                hi.id,
                hi.epoch.as_ref().map_or(0, |e| e.timeline),
            ));
        }
        for (tl, nodes) in &c.shared_timelines {
            texts.push(format!("{workload}: timeline {tl} written by {nodes:?}"));
        }
        texts
            .into_iter()
            .filter(|t| self.seen_findings.insert(t.clone()))
            .collect()
    }

    /// Stop the workloads, read the final table after every standby replayed the primary's
    /// WAL, and compare all three nodes (C2). Returns report lines; errors on a problem.
    async fn finish(self) -> anyhow::Result<Vec<String>> {
        let Suite {
            cluster,
            replication,
            w1,
            w2,
            w3,
            roles,
            failed,
            seen_lost,
            seen_observed_lost,
            checked_until,
            ..
        } = self;
        let history = w1.history().clone();
        let w1_ops = w1.stop()?;
        let w2_ops = w2.stop().await;
        let reads = w3.stop()?;
        let healthy = cluster.wait_healthy(scaled(RECOVERY)).await?;
        let final_ids = read_set(&cluster).await?;
        let bound = history.attempted_below();
        let set = checker::check_set(&w1_ops, &final_ids, bound);
        let mut lines = vec![format!(
            "{}: final read from {} ({} rows): {} ok, {} info ({} of them committed), {} fail, {} lost, {} unexpected; W2 {} probe writes",
            replication.name(),
            healthy.leader,
            final_ids.len(),
            set.ok,
            set.info,
            set.recovered,
            set.fail,
            set.lost.len(),
            set.unexpected.len(),
            w2_ops.len(),
        )];
        lines.push(format!(
            "{}: W3 {} reads, {} distinct ids seen, {} of them missing from the final table",
            replication.name(),
            reads.len(),
            reads
                .iter()
                .flat_map(|r| r.ids.iter())
                .collect::<BTreeSet<_>>()
                .len(),
            checker::check_observed(&reads, &w1_ops, &final_ids, bound)
                .lost
                .len(),
        ));
        let converged = convergence(&cluster, &healthy).await?;
        lines.push(format!("{}: {converged}", replication.name()));
        // C5 over the final phase too.
        let samples: Vec<_> = roles
            .stop()
            .await
            .samples()
            .into_iter()
            .filter(|s| s.invoke >= checked_until)
            .collect();
        let after = primaries::windows(&samples);
        lines.push(format!(
            "{}: after the last iteration {} role samples, {} two-primary windows",
            replication.name(),
            samples.len(),
            after.len()
        ));
        let late: Vec<i64> = set
            .lost
            .iter()
            .copied()
            .filter(|id| !seen_lost.contains(id))
            .collect();
        if failed {
            // Dropping without `finish` prints every log tail.
            drop(cluster);
        } else {
            cluster.finish();
        }
        if replication == Replication::Quorum && !late.is_empty() {
            bail!("acknowledged writes lost after the last iteration: {late:?}");
        }
        let late_seen: Vec<String> = checker::check_observed(&reads, &w1_ops, &final_ids, bound)
            .lost
            .iter()
            .filter(|l| !seen_observed_lost.contains(&l.id))
            .map(|l| observed_loss(l, &w1_ops))
            .filter(|l| !l.cancelled_sync_wait)
            .map(|l| format!("id {} (write: {})", l.id, l.write))
            .collect();
        if replication == Replication::Quorum && !late_seen.is_empty() {
            bail!("C4: ids seen by a reader and lost after the last iteration: {late_seen:?}");
        }
        if let Some(w) = after.first() {
            bail!(
                "two primaries after the last iteration: {:?} from {:.1} s for {} ticks",
                w.primaries,
                secs(w.start),
                w.ticks()
            );
        }
        Ok(lines)
    }
}

/// The leader's `/sync` key lists every replica (quorum mode): without it, a fault right
/// away could find no member allowed to promote.
async fn wait_sync(cluster: &Cluster, healthy: &Healthy) -> anyhow::Result<()> {
    let key = cluster.key("sync");
    wait_for(
        &format!(
            "/sync to name {} and {:?}",
            healthy.leader, healthy.replicas
        ),
        scaled(Duration::from_secs(60)),
        || async {
            let kv = match cluster.etcd().get(&key).await {
                Ok(Some(kv)) => kv,
                Ok(None) => return Ok(Check::not_yet("no /sync key")),
                Err(e) => return Ok(Check::not_yet(format!("etcd: {e:#}"))),
            };
            let v: Value = serde_json::from_str(&kv.value).unwrap_or(Value::Null);
            let listed: Vec<&str> = v
                .get("sync_standby")
                .and_then(Value::as_str)
                .unwrap_or("")
                .split(',')
                .map(str::trim)
                .collect();
            let leader_ok = v.get("leader").and_then(Value::as_str) == Some(&healthy.leader);
            Ok(
                if leader_ok
                    && healthy
                        .replicas
                        .iter()
                        .all(|r| listed.contains(&r.as_str()))
                {
                    Check::Done(())
                } else {
                    Check::not_yet(format!("/sync is {}", kv.value))
                },
            )
        },
    )
    .await
}

/// The ids in `chaos_set` on the leader once every replica replayed its WAL.
async fn read_set(cluster: &Cluster) -> anyhow::Result<BTreeSet<i64>> {
    let healthy = cluster.wait_healthy(scaled(RECOVERY)).await?;
    wait_replayed(cluster, &healthy).await?;
    let rows = cluster
        .sql(&healthy.leader, "SELECT id FROM chaos_set")
        .await
        .context("read chaos_set")?;
    let ids = rows
        .into_iter()
        .map(|r| {
            r.into_iter()
                .next()
                .flatten()
                .context("NULL id")?
                .parse::<i64>()
                .context("id")
        })
        .collect::<anyhow::Result<BTreeSet<i64>>>()?;
    Ok(ids)
}

/// Every replica has replayed the leader's current WAL position (the replicas are waited for
/// at once: the wait is the slowest one's, not their sum).
async fn wait_replayed(cluster: &Cluster, healthy: &Healthy) -> anyhow::Result<()> {
    let lsn = cluster
        .node(&healthy.leader)
        .pg()
        .query_one("SELECT pg_current_wal_lsn()::text")
        .await?;
    let waits = healthy.replicas.iter().map(|r| {
        let pg = cluster.node(r).pg();
        let lsn = lsn.clone();
        async move {
            wait_until(
                &format!("{r} to replay {lsn}"),
                scaled(Duration::from_secs(60)),
                || lsn_reached(&pg, &lsn),
            )
            .await
        }
    });
    futures::future::try_join_all(waits).await?;
    Ok(())
}

/// C2: after replay, every node has the same `chaos_set` (count and sum of ids) on the same
/// timeline. Errors on a mismatch.
async fn convergence(cluster: &Cluster, healthy: &Healthy) -> anyhow::Result<String> {
    wait_replayed(cluster, healthy).await?;
    let mut seen = Vec::new();
    for n in cluster.names() {
        let pg = cluster.node(&n).pg();
        let v = pg
            .query_one(
                "SELECT count(*) || ' rows, sum ' || coalesce(sum(id), 0) || ', timeline ' || \
                 (SELECT timeline_id FROM pg_control_checkpoint()) FROM chaos_set",
            )
            .await?;
        seen.push((n, v));
    }
    let first = &seen[0].1;
    let text = seen
        .iter()
        .map(|(n, v)| format!("{n}: {v}"))
        .collect::<Vec<_>>()
        .join("; ");
    let same_rows = |v: &str| v.split(", timeline").next() == first.split(", timeline").next();
    if !seen.iter().all(|(_, v)| same_rows(v)) {
        bail!("the nodes differ after replay: {text}");
    }
    Ok(format!("converged: {text}"))
}

/// Whether log line `line` starts with a timestamp (`2026-01-02T03:04:05.678901Z`) within
/// `[lo, hi]` (both to the millisecond, as [`Clock::log_stamp`] writes them).
fn stamped_within(line: &str, lo: &str, hi: &str) -> bool {
    let Some(stamp) = line.get(..23) else {
        return false;
    };
    stamp.as_bytes().first().is_some_and(u8::is_ascii_digit)
        && stamp >= &lo[..23.min(lo.len())]
        && stamp <= &hi[..23.min(hi.len())]
}

/// `pg` reached through the node's Unix socket in `dir` instead of TCP.
fn unix_socket_target(pg: &PgTarget, dir: &std::path::Path) -> PgTarget {
    PgTarget {
        host: dir.to_string_lossy().into_owned(),
        ..pg.clone()
    }
}

/// The report line of one C4 finding, with how its write ended (from `ops`).
fn observed_loss(loss: &checker::ObservedLoss, ops: &[Op]) -> ObservedLossReport {
    let op = ops.iter().find(|o| o.id == loss.id);
    let write = match op {
        None => "none".to_owned(),
        Some(o) if o.outcome == Outcome::Ok => "ok".to_owned(),
        Some(o) => format!("{:?}: {}", o.outcome, o.note).to_lowercase(),
    };
    ObservedLossReport {
        id: loss.id,
        reader: loss.worker,
        seen_at_s: secs(loss.seen_at),
        seen_on: loss
            .seen_on
            .as_ref()
            .map_or("?".to_owned(), ToString::to_string),
        write,
        cancelled_sync_wait: op.is_some_and(|o| {
            o.outcome == Outcome::Info
                && o.note
                    .contains("canceling wait for synchronous replication")
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::stamped_within;

    #[test]
    fn log_lines_are_picked_by_their_timestamp() {
        let (lo, hi) = ("2026-12-02T13:52:51.784Z", "2026-12-02T13:53:01.803Z");
        let line = |stamp: &str| format!("{stamp}  INFO baton_agent::ha: no action");
        assert!(stamped_within(&line("2026-12-02T13:52:51.784312Z"), lo, hi));
        assert!(stamped_within(&line("2026-12-02T13:53:01.803999Z"), lo, hi));
        assert!(!stamped_within(
            &line("2026-12-02T13:52:51.783999Z"),
            lo,
            hi
        ));
        assert!(!stamped_within(
            &line("2026-12-02T13:53:01.804000Z"),
            lo,
            hi
        ));
        assert!(!stamped_within(
            "===== harness: starting agent node3 =====",
            lo,
            hi
        ));
        assert!(!stamped_within("", lo, hi));
    }
}
