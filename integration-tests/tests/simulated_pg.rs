//! `pgbaton agent --simulated-postgres`: real agent processes and a real etcd, PostgreSQL
//! replaced by the simulator's model (`baton-pg-model`). A 5-member cluster bootstraps, every
//! standby streams, and a killed leader is replaced by one of the others, which the old
//! leader rejoins as a standby when it comes back.
//!
//! Skips (printing a `SKIP` line) when etcd or the pgbaton binary is missing, unless
//! `PGBATON_REQUIRE_INTEGRATION=1`. See docs/testing.md.

use std::time::Duration;

use anyhow::{Context, ensure};
use baton_integration_tests::scale::{SimFleet, SimTiming};
use baton_integration_tests::{Tools, scaled};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_five_member_simulated_cluster_fails_over() -> anyhow::Result<()> {
    let Some(tools) = Tools::for_test("a_five_member_simulated_cluster_fails_over")? else {
        return Ok(());
    };
    let timing = SimTiming {
        ttl: 10,
        loop_wait: 2,
        retry_timeout: 4,
    };
    let mut fleet = SimFleet::start(&tools, 1, &[("sim".to_owned(), 5)], timing).await?;
    let names: Vec<String> = fleet.members.iter().map(|m| m.name.clone()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let leaders = fleet
        .wait_healthy(scaled(Duration::from_secs(120)))
        .await
        .with_context(|| fleet.log_tails(&names, 30))?;
    let first = leaders[0].1.clone();

    let failover = fleet
        .kill_leader("sim", scaled(Duration::from_secs(120)))
        .await
        .with_context(|| fleet.log_tails(&names, 30))?;
    eprintln!("simulated failover: {failover:?}");
    ensure!(failover.old == first && failover.new != first);

    // The old leader comes back with an empty (simulated) data directory: it re-clones and
    // streams from the new leader; the cluster is healthy with the new leader in place.
    let old = fleet.index_of(&first).context("old leader")?;
    fleet.start_member(old)?;
    let leaders = fleet
        .wait_healthy(scaled(Duration::from_secs(120)))
        .await
        .with_context(|| fleet.log_tails(&names, 30))?;
    ensure!(
        leaders[0].1 == failover.new,
        "the leader changed again: {leaders:?}"
    );
    Ok(())
}
