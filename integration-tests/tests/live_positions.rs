//! Issue 12.4: a racing peer's `GET /patroni` (header `x-pgbaton-live`, as the leader race's
//! probe sends it) is answered with the WAL position and timeline PostgreSQL has at that
//! moment, not the agent's last cycle's; other requests answer from the snapshot.
//!
//! Skips (printing a `SKIP` line) when a program it needs is missing, unless
//! `PGBATON_REQUIRE_INTEGRATION=1`. See docs/testing.md.

use std::time::Duration;

use anyhow::{Context, ensure};
use baton_integration_tests::{Cluster, ClusterSpec, Tools, scaled};
use serde_json::Value;

/// `x-pgbaton-live` (baton-api's `LIVE_HEADER`; the harness names no product crate).
const LIVE_HEADER: &str = "x-pgbaton-live";

async fn patroni(base: &str, live: bool) -> anyhow::Result<Value> {
    let mut request = reqwest::Client::new().get(format!("{base}/patroni"));
    if live {
        request = request.header(LIVE_HEADER, "1");
    }
    let body = request
        .timeout(Duration::from_secs(10))
        .send()
        .await?
        .text()
        .await?;
    serde_json::from_str(&body).with_context(|| format!("GET {base}/patroni: {body}"))
}

fn lsn(text: &str) -> anyhow::Result<u64> {
    let (hi, lo) = text.split_once('/').context("an LSN")?;
    Ok((u64::from_str_radix(hi, 16)? << 32) | u64::from_str_radix(lo, 16)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_racing_peer_gets_the_position_postgresql_has_now() -> anyhow::Result<()> {
    let Some(tools) = Tools::for_test("a_racing_peer_gets_the_position_postgresql_has_now")? else {
        return Ok(());
    };
    let mut spec = ClusterSpec::new(2);
    spec.haproxy = None;
    let cluster = Cluster::start(&tools, spec).await?;
    let healthy = cluster
        .wait_healthy(scaled(Duration::from_secs(180)))
        .await
        .context("initial bootstrap")?;
    let leader = cluster.node(&healthy.leader);
    // WAL written after the agent's last cycle, then the position read from PostgreSQL: the
    // live answer, read later, is at least there (a snapshot may be older).
    cluster
        .sql(
            &healthy.leader,
            "CREATE TABLE IF NOT EXISTS live_positions (x int); \
             INSERT INTO live_positions SELECT generate_series(1, 1000)",
        )
        .await?;
    let rows = cluster
        .sql(
            &healthy.leader,
            "SELECT pg_catalog.pg_current_wal_flush_lsn()::text",
        )
        .await?;
    let written = lsn(rows[0][0].as_deref().context("an LSN row")?)?;
    let live = patroni(&leader.rest_base(), true).await?;
    ensure!(live["live_positions"] == Value::Bool(true), "{live}");
    let location = live["xlog"]["location"].as_u64().context("xlog.location")?;
    ensure!(
        location >= written,
        "live location {location:#x} is behind {written:#x} read before it: {live}"
    );
    ensure!(live["timeline"].as_u64().is_some(), "{live}");

    // A replica answers live too; a plain GET /patroni says nothing about it.
    let replica = cluster.node(&healthy.replicas[0]);
    let live = patroni(&replica.rest_base(), true).await?;
    ensure!(live["live_positions"] == Value::Bool(true), "{live}");
    ensure!(live["role"] == "replica", "{live}");
    let plain = patroni(&replica.rest_base(), false).await?;
    ensure!(plain.get("live_positions").is_none(), "{plain}");
    Ok(())
}
