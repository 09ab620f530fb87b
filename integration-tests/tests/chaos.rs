//! The real-process fault suite (issue 5; safety-and-testing.md §7): three etcd members, three
//! PostgreSQL nodes with their agents and a client namespace with HAProxy and the workload,
//! each host in its own network namespace on a bridge.
//!
//! Two configurations, one cluster each:
//! - asynchronous (`synchronous_mode: false`), first, with the two negative controls: the
//!   primary is cut from etcd and its peers while the clients still reach it (its
//!   acknowledgements are lost when a replica takes over, and C1 must say so), and the
//!   primary's fence guard is killed before its agent is (nothing fences it, and C5 must see
//!   two primaries); if a control passes, its checker is broken and the run fails. Then the
//!   faults of issue 19 (all faults in the long profile): lost writes are measured, two
//!   primaries fail the run;
//! - RPO=0 (`synchronous_mode: quorum`): every fault of `Fault::RPO0`; no acknowledged write
//!   may be lost, no two primaries may be writable at once (W1 and W2: a killed or frozen
//!   agent is fenced by its fence guard) nor answer as primaries to the client namespace (C5),
//!   and the cluster must heal by itself after each fault (the last fault, the control's
//!   partition, produces warning-commits that must be counted indeterminate, not acknowledged).
//!
//! `PGBATON_CHAOS=short` (default) runs each fault once; `PGBATON_CHAOS=long` (`make chaos`)
//! or `PGBATON_CHAOS_ITERATIONS=N` runs more. `PGBATON_CHAOS_PARALLEL=N` (default 1 in the
//! short profile, two per core up to 4 in the long one) runs N workers at once, each with its
//! own pair of clusters (own namespaces, subnet, etcd, ports, data directories) on its own
//! thread and runtime; iteration `i` of every fault runs on worker `(i - 1) % N`, and the
//! workers' reports are merged into one. The report goes to `target/chaos/report-<unix>.md`
//! and `.json` and to stderr.
//!
//! Skips (printing a `SKIP` line) when not root or when a program is missing, unless
//! `PGBATON_REQUIRE_INTEGRATION=1`.

use std::time::Instant;

use baton_integration_tests::Timing;
use baton_integration_tests::Tools;
use baton_integration_tests::chaos::faults::Fault;
use baton_integration_tests::chaos::report::{LossRule, Report, WorkerReport, merge, report_dir};
use baton_integration_tests::chaos::runner::{ProfileRun, Replication, Worker, run_profile};
use baton_integration_tests::chaos::{Clock, Profile, Rng, worker_iterations, worker_seed};

/// The configurations and their faults, with how lost writes count.
type Plan = Vec<(Replication, Vec<(Fault, LossRule)>)>;

#[test]
fn chaos_fault_suite() -> anyhow::Result<()> {
    let Some(tools) = Tools::for_netns_test("chaos_fault_suite")? else {
        return Ok(());
    };
    let profile = Profile::from_env(Timing::fast().ttl())?;
    let workers = profile.parallel.min(profile.iterations).max(1);
    eprintln!(
        "chaos: profile {} ({} iteration(s) per fault, hold {:?}), seed {}, {workers} worker(s)",
        profile.name, profile.iterations, profile.hold, profile.seed
    );
    let started = Instant::now();
    let clock = Clock::new();
    let plan = runs(&profile);
    let mut report = Report {
        profile: profile.name.clone(),
        seed: profile.seed,
        started_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs(),
        ..Report::default()
    };
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            let worker = Worker {
                index: w,
                seed: worker_seed(profile.seed, w),
                iterations: worker_iterations(profile.iterations, workers, w),
            };
            let (tools, profile, plan) = (tools.clone(), profile.clone(), plan.clone());
            let thread = std::thread::Builder::new()
                .name(format!("chaos worker {w}"))
                .spawn({
                    let worker = worker.clone();
                    move || run_worker(&tools, &profile, &plan, clock, &worker)
                });
            (worker, thread)
        })
        .collect();
    let mut parts = Vec::new();
    for (worker, thread) in handles {
        let outcome = thread
            .map_err(anyhow::Error::from)
            .and_then(|t| {
                t.join().map_err(|p| {
                    anyhow::anyhow!(
                        "panicked: {}",
                        p.downcast_ref::<String>()
                            .map(String::as_str)
                            .or_else(|| p.downcast_ref::<&str>().copied())
                            .unwrap_or("?")
                    )
                })
            })
            .and_then(|r| r);
        match outcome {
            Ok((runs, summary)) => {
                for (replication, run) in runs {
                    absorb(&mut report, &mut parts, replication, &worker, run);
                }
                report.workers.push(summary);
            }
            Err(e) => {
                report.other_problems.push(format!(
                    "worker {} (seed {}, iterations {:?}): {e:#}",
                    worker.index, worker.seed, worker.iterations
                ));
                report.workers.push(WorkerReport {
                    index: worker.index,
                    seed: worker.seed,
                    ..WorkerReport::default()
                });
            }
        }
    }
    let order: Vec<(String, String)> = plan
        .iter()
        .flat_map(|(r, faults)| {
            faults
                .iter()
                .map(|(f, _)| (r.name().to_owned(), f.name().to_owned()))
        })
        .collect();
    report.faults = merge(&order, parts);
    report.duration_s = started.elapsed().as_secs_f64();
    let (md, json) = report.write(&report_dir())?;
    eprintln!("{}", report.to_markdown());
    eprintln!("chaos: report in {} and {}", md.display(), json.display());
    let problems = report.problems();
    anyhow::ensure!(
        problems.is_empty(),
        "the fault suite found {} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
    eprintln!("chaos: passed in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// One worker on its own thread and runtime: both configurations, one after the other, on
/// its share of the iterations.
#[allow(clippy::type_complexity)]
fn run_worker(
    tools: &Tools,
    profile: &Profile,
    plan: &Plan,
    clock: Clock,
    worker: &Worker,
) -> anyhow::Result<(Vec<(Replication, anyhow::Result<ProfileRun>)>, WorkerReport)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name(format!("chaos-w{}", worker.index))
        .build()?;
    let started = Instant::now();
    let mut rng = Rng::new(worker.seed);
    let mut runs = Vec::new();
    let mut summary = WorkerReport {
        index: worker.index,
        seed: worker.seed,
        ..WorkerReport::default()
    };
    for (replication, faults) in plan {
        if faults.is_empty() || worker.iterations.is_empty() {
            continue;
        }
        let run = rt.block_on(run_profile(
            tools,
            profile,
            *replication,
            faults,
            clock,
            worker,
            &mut rng,
        ));
        if let Ok(r) = &run {
            summary.iterations += r.faults.iter().map(|f| f.iterations.len()).sum::<usize>();
            summary.setup_s += r.setup_s;
            summary.finish_s += r.finish_s;
        }
        runs.push((*replication, run));
    }
    summary.duration_s = started.elapsed().as_secs_f64();
    Ok((runs, summary))
}

/// The configurations and their faults, with how lost writes count. The negative controls
/// first: if a checker cannot see what it checks, nothing else counts.
fn runs(profile: &Profile) -> Plan {
    let mut asynchronous = vec![
        (Fault::PartitionFromCluster, LossRule::Expected),
        (Fault::KillAgentUnguarded, LossRule::Measured),
    ];
    let issue19 = [Fault::KillAgent, Fault::PauseAgent, Fault::CutFromEtcd];
    let rest: Vec<Fault> = if profile.async_all_faults {
        Fault::RPO0
            .into_iter()
            .filter(|f| *f != Fault::PartitionFromCluster)
            .collect()
    } else {
        issue19.to_vec()
    };
    asynchronous.extend(rest.into_iter().map(|f| (f, LossRule::Measured)));
    let quorum = Fault::RPO0.map(|f| (f, LossRule::Forbidden)).to_vec();
    let keep = |faults: Vec<(Fault, LossRule)>| -> Vec<(Fault, LossRule)> {
        match &profile.only_faults {
            Some(only) => faults
                .into_iter()
                .filter(|(f, _)| only.contains(f))
                .collect(),
            None => faults,
        }
    };
    [
        (Replication::Async, asynchronous),
        (Replication::Quorum, quorum),
    ]
    .into_iter()
    .filter(|(r, _)| {
        profile
            .only_replication
            .as_deref()
            .is_none_or(|o| o == r.name())
    })
    .map(|(r, f)| (r, keep(f)))
    .collect()
}

/// Fold one configuration's outcome on one worker into the report (a cluster that never came
/// up is a problem of the run, not a panic, so the other configuration and the other workers
/// still run and report); its fault reports go to `parts`, merged once every worker is done.
fn absorb(
    report: &mut Report,
    parts: &mut Vec<baton_integration_tests::chaos::report::FaultReport>,
    replication: Replication,
    worker: &Worker,
    run: anyhow::Result<ProfileRun>,
) {
    match run {
        Ok(run) => {
            parts.extend(run.faults);
            report.finals.extend(run.finals);
            report.other_problems.extend(run.problems);
        }
        Err(e) => report.other_problems.push(format!(
            "{} (worker {}, seed {}): the cluster did not start: {e:#}",
            replication.name(),
            worker.index,
            worker.seed
        )),
    }
}
