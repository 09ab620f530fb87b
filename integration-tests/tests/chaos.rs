//! The real-process fault suite (issue 5; safety-and-testing.md §7): three etcd members, three
//! PostgreSQL nodes with their agents and a client namespace with HAProxy and the workload,
//! each host in its own network namespace on a bridge.
//!
//! Two configurations, one cluster each:
//! - RPO=0 (`synchronous_mode: quorum`): every fault of `Fault::RPO0`; no acknowledged write
//!   may be lost, no two primaries may be writable at once (W1 and W2: a killed or frozen
//!   agent is fenced by its fence guard),
//!   and the cluster must heal by itself after each fault (the last fault, the control's
//!   partition, produces warning-commits that must be counted indeterminate, not acknowledged);
//! - the negative control (`synchronous_mode: false`): the primary is cut from etcd and its
//!   peers while the clients still reach it; its acknowledgements are lost when a replica
//!   takes over, and the checker must say so, or the checker is broken and the run fails.
//!
//! `PGBATON_CHAOS=short` (default) runs each fault once; `PGBATON_CHAOS=long` (`make chaos`)
//! or `PGBATON_CHAOS_ITERATIONS=N` runs more. The report goes to `target/chaos/report-<unix>.md`
//! and `.json` and to stderr.
//!
//! Skips (printing a `SKIP` line) when not root or when a program is missing, unless
//! `PGBATON_REQUIRE_INTEGRATION=1`.

use std::time::Instant;

use baton_integration_tests::chaos::faults::Fault;
use baton_integration_tests::chaos::report::{Report, report_dir};
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
    // The negative control first: if the checker cannot see a loss, nothing else counts.
    let runs = [
        (Replication::Async, vec![Fault::PartitionFromCluster], true),
        (Replication::Quorum, Fault::RPO0.to_vec(), false),
    ];
    for (replication, faults, expect_loss) in runs {
        let run = run_profile(
            &tools,
            &profile,
            replication,
            &faults,
            expect_loss,
            clock,
            &mut rng,
        )
        .await;
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
