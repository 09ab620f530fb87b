//! `tags.nostream` on a real cluster (issue 10.4), as Patroni's
//! `features/nostream_node.feature`: an archive-only replica replays WAL from the archive
//! (`restore_command`), streams from nobody, and the leader keeps no slot for it.
//!
//! Skips (printing a `SKIP` line) when a program it needs is missing, unless
//! `PGBATON_REQUIRE_INTEGRATION=1`. See docs/testing.md.

use std::time::Duration;

use anyhow::{Context, ensure};
use baton_integration_tests::tools_or_skip;
use baton_integration_tests::{Check, Cluster, ClusterSpec, scaled, wait_for};
use serde_json::{Value, json};

/// The first column of every row of `query` on node `name`.
async fn column(cluster: &Cluster, name: &str, query: &str) -> anyhow::Result<Vec<String>> {
    Ok(cluster
        .sql(name, query)
        .await?
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nostream_replica_replays_the_archive_and_streams_from_nobody() -> anyhow::Result<()> {
    let tools = tools_or_skip!("nostream_replica_replays_the_archive_and_streams_from_nobody");
    let mut spec = ClusterSpec::new(2);
    spec.haproxy = None;
    spec.start_agents = false;
    let mut cluster = Cluster::start(&tools, spec).await?;
    let archive = cluster.dir().join("archive");
    std::fs::create_dir_all(&archive)?;
    tools.chown_to_agent_user(&archive)?;
    let archive = archive.display().to_string();
    let archiving = json!({"postgresql": {"parameters": {
        "archive_mode": "on",
        "archive_command": format!("test ! -f {archive}/%f && cp %p {archive}/%f"),
    }}});
    let (leader, archived) = ("node1", "node2");
    cluster.update_config(leader, &archiving)?;
    cluster.update_config(archived, &archiving)?;
    cluster.update_config(
        archived,
        &json!({
            "tags": {"nostream": true},
            "postgresql": {"parameters": {"restore_command": format!("cp {archive}/%f %p")}},
        }),
    )?;

    cluster.start_agent(leader)?;
    cluster
        .wait_healthy_members(&[leader.to_owned()], scaled(Duration::from_secs(120)))
        .await
        .context("node1 bootstraps")?;
    cluster
        .sql(leader, "CREATE TABLE archived_rows (id int PRIMARY KEY)")
        .await?;
    cluster.start_agent(archived)?;

    // node2 runs as a replica in archive recovery: its member key and /patroni say so.
    let member_key = cluster.key(&format!("members/{archived}"));
    wait_for(
        "node2 in archive recovery",
        scaled(Duration::from_secs(120)),
        || async {
            cluster.check_agents_alive()?;
            let key = match cluster.etcd().get(&member_key).await {
                Ok(Some(kv)) => kv.value,
                Ok(None) => return Ok(Check::not_yet("no member key")),
                Err(e) => return Ok(Check::not_yet(format!("etcd: {e:#}"))),
            };
            let member: Value = serde_json::from_str(&key)?;
            if member["replication_state"] != "in archive recovery" || member["state"] != "running"
            {
                return Ok(Check::not_yet(format!("member key {key}")));
            }
            Ok(match cluster.node(archived).patroni().await {
                Ok(s) if s["replication_state"] == "in archive recovery" => Check::Done(()),
                Ok(s) => Check::not_yet(format!("/patroni {s}")),
                Err(e) => Check::not_yet(format!("{e:#}")),
            })
        },
    )
    .await?;

    // Rows arrive through the archive: a WAL switch on the leader archives the segment.
    for id in 1..=2 {
        cluster
            .sql(leader, &format!("INSERT INTO archived_rows VALUES ({id})"))
            .await?;
        cluster
            .sql(leader, "SELECT pg_catalog.pg_switch_wal()")
            .await?;
        wait_for(
            &format!("row {id} on node2"),
            scaled(Duration::from_secs(90)),
            || async {
                cluster.check_agents_alive()?;
                let query = format!("SELECT count(*)::text FROM archived_rows WHERE id = {id}");
                Ok(match column(&cluster, archived, &query).await {
                    Ok(rows) if rows == ["1"] => Check::Done(()),
                    Ok(rows) => Check::not_yet(format!("{rows:?}")),
                    Err(e) => Check::not_yet(format!("{e:#}")),
                })
            },
        )
        .await?;
    }

    // No streaming, no slot: node2 has no WAL receiver and no primary_conninfo, the leader
    // neither streams to it nor keeps a slot for it.
    let receiver = column(
        &cluster,
        archived,
        "SELECT status FROM pg_catalog.pg_stat_wal_receiver",
    )
    .await?;
    ensure!(
        receiver.is_empty(),
        "node2 runs a WAL receiver: {receiver:?}"
    );
    let conninfo = column(&cluster, archived, "SHOW primary_conninfo").await?;
    ensure!(
        conninfo.iter().all(|c| c.is_empty()),
        "node2 has primary_conninfo {conninfo:?}"
    );
    let walsenders = column(
        &cluster,
        leader,
        "SELECT application_name FROM pg_catalog.pg_stat_replication",
    )
    .await?;
    ensure!(
        !walsenders.iter().any(|n| n == archived),
        "node1 streams to node2: {walsenders:?}"
    );
    let slots = column(
        &cluster,
        leader,
        "SELECT slot_name::text FROM pg_catalog.pg_replication_slots",
    )
    .await?;
    ensure!(
        !slots.iter().any(|s| s == archived),
        "node1 keeps a slot for node2: {slots:?}"
    );

    cluster.finish();
    Ok(())
}
