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
//! or `PGBATON_CHAOS_ITERATIONS=N` runs more. The report goes to `target/chaos/report-<unix>.md`
//! and `.json` and to stderr.
//!
//! Skips (printing a `SKIP` line) when not root or when a program is missing, unless
//! `PGBATON_REQUIRE_INTEGRATION=1`.

use std::time::Instant;

use baton_integration_tests::chaos::faults::Fault;
use baton_integration_tests::chaos::report::{LossRule, Report, report_dir};
use baton_integration_tests::chaos::runner::{ProfileRun, Replication, run_profile};
use baton_integration_tests::chaos::{Clock, Profile, Rng};
use baton_integration_tests::{Timing, Tools};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_fault_suite() -> anyhow::Result<()> {
    let Some(tools) = Tools::for_netns_test("chaos_fault_suite")? else {
        return Ok(());
    };
    let profile = Profile::from_env(Timing::fast().ttl())?;
    eprintln!(
        "chaos: profile {} ({} iteration(s) per fault, hold {:?}), seed {}",
        profile.name, profile.iterations, profile.hold, profile.seed
    );
    let started = Instant::now();
    let clock = Clock::new();
    let mut rng = Rng::new(profile.seed);
    let mut report = Report {
        profile: profile.name.clone(),
        seed: profile.seed,
        started_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs(),
        ..Report::default()
    };
    for (replication, faults) in runs(&profile) {
        if faults.is_empty() {
            continue;
        }
        let run = run_profile(&tools, &profile, replication, &faults, clock, &mut rng).await;
        absorb(&mut report, replication, run);
    }
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

/// The configurations and their faults, with how lost writes count. The negative controls
/// first: if a checker cannot see what it checks, nothing else counts.
fn runs(profile: &Profile) -> Vec<(Replication, Vec<(Fault, LossRule)>)> {
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

/// Fold one configuration's outcome into the report (a cluster that never came up is a
/// problem of the run, not a panic, so the other configuration still runs and reports).
fn absorb(report: &mut Report, replication: Replication, run: anyhow::Result<ProfileRun>) {
    match run {
        Ok(run) => {
            report.faults.extend(run.faults);
            report.finals.extend(run.finals);
            report.other_problems.extend(run.problems);
        }
        Err(e) => report.other_problems.push(format!(
            "{}: the cluster did not start: {e:#}",
            replication.name()
        )),
    }
}
