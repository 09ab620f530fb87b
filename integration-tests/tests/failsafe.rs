//! DCS failsafe mode (issue 12.2) on real etcd, PostgreSQL and agents: with
//! `failsafe_mode: true` the primary keeps accepting writes while etcd is down for 3 × ttl and
//! every member answers `POST /failsafe`, no replica becomes a primary, nothing is lost; with
//! one member's agent also gone the primary stops accepting writes.
//!
//! Skips (printing a `SKIP` line) when a program it needs is missing, unless
//! `PGBATON_REQUIRE_INTEGRATION=1`. See docs/testing.md.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use baton_integration_tests::tools_or_skip;
use baton_integration_tests::{Check, Cluster, ClusterSpec, Tools, scaled, wait_for};
use serde_json::{Value, json};

const TTL: u64 = 10;

async fn start(test: &str, tools: &Tools) -> anyhow::Result<(Cluster, String, Vec<String>)> {
    let _ = test;
    let mut spec = ClusterSpec::new(3);
    spec.haproxy = None;
    spec.extra_config = json!({ "bootstrap": { "dcs": { "failsafe_mode": true } } });
    let cluster = Cluster::start(tools, spec).await?;
    let healthy = cluster
        .wait_healthy(scaled(Duration::from_secs(180)))
        .await?;
    // The leader publishes the topology; every member's REST API shows it.
    wait_for(
        "/failsafe to list every member",
        scaled(Duration::from_secs(60)),
        || async {
            let Some(kv) = cluster.etcd().get(&cluster.key("failsafe")).await? else {
                return Ok(Check::not_yet("no /failsafe key".to_owned()));
            };
            let v: Value = serde_json::from_str(&kv.value)?;
            let n = v.as_object().map_or(0, |m| m.len());
            Ok(if n == 3 {
                Check::Done(())
            } else {
                Check::not_yet(format!("/failsafe is {}", kv.value))
            })
        },
    )
    .await?;
    Ok((cluster, healthy.leader, healthy.replicas))
}

async fn in_recovery(cluster: &Cluster, name: &str) -> Option<bool> {
    let rows = cluster
        .sql(name, "SELECT pg_is_in_recovery()::text")
        .await
        .ok()?;
    rows.first()?.first()?.as_deref().map(|v| v == "true")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failsafe_keeps_the_primary_while_etcd_is_down_and_every_member_answers()
-> anyhow::Result<()> {
    let test = "failsafe_keeps_the_primary_while_etcd_is_down_and_every_member_answers";
    let tools = tools_or_skip!(test);
    let (mut cluster, leader, replicas) = start(test, &tools).await?;
    let url = format!("{}/failsafe", cluster.node(&replicas[0]).rest_base());
    let body = reqwest::get(&url).await.with_context(|| url.clone())?;
    ensure!(body.status() == 200, "GET {url}: {}", body.status());
    cluster
        .sql(&leader, "CREATE TABLE fs_probe (n int primary key)")
        .await?;

    cluster.etcd_mut().kill_all();
    // Sample for 3 × ttl: every write on the leader succeeds, no replica is a primary.
    let outage = Instant::now();
    let mut written = 0u32;
    while outage.elapsed() < Duration::from_secs(3 * TTL) {
        cluster
            .sql(
                &leader,
                &format!("INSERT INTO fs_probe VALUES ({})", written + 1),
            )
            .await
            .with_context(|| {
                format!(
                    "write {} after {:?} of etcd outage",
                    written + 1,
                    outage.elapsed()
                )
            })?;
        written += 1;
        for r in &replicas {
            ensure!(
                in_recovery(&cluster, r).await != Some(false),
                "{r} runs as a primary during the outage"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    cluster.etcd_mut().start_all().await?;
    wait_for(
        "the same leader to hold the key again",
        scaled(Duration::from_secs(60)),
        || async {
            let have = cluster.leader().await?;
            Ok(if have.as_deref() == Some(leader.as_str()) {
                Check::Done(())
            } else {
                Check::not_yet(format!("leader key: {have:?}"))
            })
        },
    )
    .await?;
    let rows = cluster
        .sql(&leader, "SELECT count(*)::text FROM fs_probe")
        .await?;
    let count = rows
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .unwrap_or_default();
    ensure!(
        count == written.to_string(),
        "{count} rows after {written} acknowledged writes"
    );
    cluster.finish();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failsafe_demotes_the_primary_when_a_member_does_not_answer() -> anyhow::Result<()> {
    let test = "failsafe_demotes_the_primary_when_a_member_does_not_answer";
    let tools = tools_or_skip!(test);
    let (mut cluster, leader, replicas) = start(test, &tools).await?;
    // etcd first: an agent stopped while etcd runs removes its member key, and the leader
    // rewrites `/failsafe` without it (a member that left is no longer asked).
    cluster.etcd_mut().kill_all();
    cluster.stop_agent(&replicas[0]).await;
    wait_for(
        "the leader to stop accepting writes",
        scaled(Duration::from_secs(3 * TTL)),
        || async {
            Ok(if in_recovery(&cluster, &leader).await == Some(false) {
                Check::not_yet("the leader is still a primary".to_owned())
            } else {
                Check::Done(())
            })
        },
    )
    .await?;
    ensure!(
        in_recovery(&cluster, &replicas[1]).await != Some(false),
        "{} became a primary without etcd",
        replicas[1]
    );
    cluster.finish();
    Ok(())
}
