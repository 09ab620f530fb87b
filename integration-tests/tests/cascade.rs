//! Tags and topology on a real cluster (issue 10.4): `clonefrom` and `replicatefrom`
//! (cascading replication), as Patroni's `features/cascading_replication.feature`.
//!
//! node1 leads; node2 (`clonefrom: true`) clones from it and streams from it; node3
//! (`replicatefrom: node2`) is cloned from node2 and streams from node2, which keeps a
//! replication slot for it; `pgbaton topology` shows node3 under node2. With node2's agent
//! and PostgreSQL stopped, node3 streams from the leader and keeps receiving rows; when node2
//! comes back, node3 returns to it; after a switchover to node2, node3 streams from node2 as
//! the leader.
//!
//! Skips (printing a `SKIP` line) when a program it needs is missing, unless
//! `PGBATON_REQUIRE_INTEGRATION=1`. See docs/testing.md.

use std::time::Duration;

use anyhow::{Context, ensure};
use baton_integration_tests::tools_or_skip;
use baton_integration_tests::{Check, Cluster, ClusterSpec, scaled, wait_for};
use serde_json::json;

/// The port node `name`'s WAL receiver streams from and its status, when it runs one.
async fn wal_receiver(cluster: &Cluster, name: &str) -> anyhow::Result<Option<(u16, String)>> {
    let rows = cluster
        .sql(
            name,
            "SELECT sender_port::text, status FROM pg_catalog.pg_stat_wal_receiver",
        )
        .await?;
    Ok(rows.into_iter().next().and_then(|r| {
        let port = r.first()?.as_deref()?.parse().ok()?;
        Some((port, r.get(1)?.clone()?))
    }))
}

/// The `application_name`s streaming from node `name` (`pg_stat_replication`).
async fn streaming_from(cluster: &Cluster, name: &str) -> anyhow::Result<Vec<String>> {
    let rows = cluster
        .sql(
            name,
            "SELECT application_name FROM pg_catalog.pg_stat_replication \
             WHERE state = 'streaming' ORDER BY 1",
        )
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect())
}

/// Physical, non-temporary replication slots on node `name`, sorted.
async fn slots(cluster: &Cluster, name: &str) -> anyhow::Result<Vec<String>> {
    let rows = cluster
        .sql(
            name,
            "SELECT slot_name::text FROM pg_catalog.pg_replication_slots \
             WHERE slot_type = 'physical' AND NOT temporary ORDER BY 1",
        )
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect())
}

/// Wait until node `replica` streams from node `upstream` (its WAL receiver's sender port is
/// `upstream`'s and streaming, and `upstream`'s `pg_stat_replication` lists it).
async fn wait_streams_from(
    cluster: &Cluster,
    replica: &str,
    upstream: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let port = cluster.node(upstream).config.pg_port;
    wait_for(
        &format!("{replica} streaming from {upstream}"),
        timeout,
        || async {
            cluster.check_agents_alive()?;
            match wal_receiver(cluster, replica).await {
                Ok(Some((p, status))) if p == port && status == "streaming" => {}
                Ok(other) => {
                    return Ok(Check::not_yet(format!(
                        "{replica}: pg_stat_wal_receiver (sender_port, status) = {other:?}, \
                         want ({port}, streaming)"
                    )));
                }
                Err(e) => return Ok(Check::not_yet(format!("{replica}: {e:#}"))),
            }
            Ok(match streaming_from(cluster, upstream).await {
                Ok(names) if names.iter().any(|n| n == replica) => Check::Done(()),
                Ok(names) => Check::not_yet(format!(
                    "{upstream}: pg_stat_replication streaming {names:?}"
                )),
                Err(e) => Check::not_yet(format!("{upstream}: {e:#}")),
            })
        },
    )
    .await
}

/// Write row `id` on the leader and wait until node `replica` has it.
async fn row_arrives(
    cluster: &Cluster,
    leader: &str,
    replica: &str,
    id: i32,
) -> anyhow::Result<()> {
    cluster
        .sql(leader, &format!("INSERT INTO cascade_rows VALUES ({id})"))
        .await
        .with_context(|| format!("insert row {id} on {leader}"))?;
    wait_for(
        &format!("row {id} on {replica}"),
        scaled(Duration::from_secs(60)),
        || async {
            cluster.check_agents_alive()?;
            Ok(
                match cluster
                    .sql(
                        replica,
                        &format!("SELECT count(*)::text FROM cascade_rows WHERE id = {id}"),
                    )
                    .await
                {
                    Ok(rows)
                        if rows.first().and_then(|r| r.first()).cloned().flatten()
                            == Some("1".to_owned()) =>
                    {
                        Check::Done(())
                    }
                    Ok(rows) => Check::not_yet(format!("{rows:?}")),
                    Err(e) => Check::not_yet(format!("{e:#}")),
                },
            )
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cascade_clones_from_and_streams_from_its_tagged_members_and_follows_the_leader_without_them()
-> anyhow::Result<()> {
    let tools = tools_or_skip!(
        "cascade_clones_from_and_streams_from_its_tagged_members_and_follows_the_leader_without_them"
    );
    let mut spec = ClusterSpec::new(3);
    spec.haproxy = None;
    spec.start_agents = false;
    let mut cluster = Cluster::start(&tools, spec).await?;
    cluster.update_config("node2", &json!({"tags": {"clonefrom": true}}))?;
    cluster.update_config("node3", &json!({"tags": {"replicatefrom": "node2"}}))?;
    let (leader, upstream, cascade) = ("node1", "node2", "node3");

    // node1 bootstraps alone, then node2 clones from it.
    cluster.start_agent(leader)?;
    cluster
        .wait_healthy_members(&[leader.to_owned()], scaled(Duration::from_secs(120)))
        .await
        .context("node1 bootstraps")?;
    cluster.start_agent(upstream)?;
    cluster
        .wait_healthy_members(
            &[leader.to_owned(), upstream.to_owned()],
            scaled(Duration::from_secs(120)),
        )
        .await
        .context("node2 joins")?;
    cluster
        .sql(leader, "CREATE TABLE cascade_rows (id int PRIMARY KEY)")
        .await?;

    // node3 clones from node2 (clonefrom) and streams from it (replicatefrom).
    cluster.start_agent(cascade)?;
    wait_streams_from(
        &cluster,
        cascade,
        upstream,
        scaled(Duration::from_secs(120)),
    )
    .await?;
    let log = std::fs::read_to_string(&cluster.node(cascade).log_path)?;
    ensure!(
        log.contains("cloning from node2 ("),
        "node3's agent log does not say it cloned from node2:\n{}",
        log.lines()
            .filter(|l| l.contains("cloning") || l.contains("creating replica"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let direct = streaming_from(&cluster, leader).await?;
    ensure!(
        !direct.iter().any(|n| n == cascade),
        "node3 streams from the leader too: {direct:?}"
    );
    row_arrives(&cluster, leader, cascade, 1).await?;

    // node2 keeps a slot for node3, the leader keeps only node2's.
    wait_for(
        "node3's slot on node2 and none on node1",
        scaled(Duration::from_secs(60)),
        || async {
            cluster.check_agents_alive()?;
            let (on_up, on_leader) = (
                slots(&cluster, upstream).await?,
                slots(&cluster, leader).await?,
            );
            Ok(
                if on_up == [cascade.to_owned()] && on_leader == [upstream.to_owned()] {
                    Check::Done(())
                } else {
                    Check::not_yet(format!("node2 slots {on_up:?}, node1 slots {on_leader:?}"))
                },
            )
        },
    )
    .await?;

    // node2's `/patroni` lists node3 among the members streaming from it, as Patroni's does.
    let status = cluster.node(upstream).patroni().await?;
    let listed = status["replication"]
        .as_array()
        .is_some_and(|rows| rows.iter().any(|r| r["application_name"] == cascade));
    ensure!(listed, "node2's /patroni does not list node3: {status}");

    // `pgbaton topology`: node3 under node2 under node1.
    let config = cluster
        .node(leader)
        .config_path
        .to_string_lossy()
        .into_owned();
    let out = cluster.pgbaton_cli(&["-c", &config, "topology"]).await?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let rows: Vec<&str> = stdout.lines().filter(|l| l.starts_with("| ")).collect();
    ensure!(
        out.status.success()
            && rows.len() == 4
            && rows[1].starts_with("| node1 ")
            && rows[2].starts_with("| + node2 ")
            && rows[3].starts_with("|   + node3 "),
        "pgbaton topology:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // node2's agent and PostgreSQL stop: node3 streams from the leader.
    cluster.stop_agent(upstream).await;
    if cluster.node(upstream).postmaster_pid().is_some() {
        cluster.kill_postgres(upstream)?;
    }
    let ttl = cluster.spec().timing.ttl();
    wait_streams_from(
        &cluster,
        cascade,
        leader,
        scaled(ttl + Duration::from_secs(90)),
    )
    .await?;
    row_arrives(&cluster, leader, cascade, 2).await?;

    // node2 comes back: node3 returns to it.
    cluster.start_agent(upstream)?;
    wait_streams_from(
        &cluster,
        cascade,
        upstream,
        scaled(Duration::from_secs(120)),
    )
    .await?;
    row_arrives(&cluster, leader, cascade, 3).await?;

    // node2 takes over by switchover: node3 keeps streaming from it, now the leader, and the
    // former leader follows it too.
    let text = cluster.cli_switchover(leader, upstream, None).await?;
    ensure!(
        text.contains("Successfully switched over to \"node2\""),
        "{text}"
    );
    cluster
        .wait_healthy_members(
            &[leader.to_owned(), upstream.to_owned(), cascade.to_owned()],
            scaled(Duration::from_secs(120)),
        )
        .await
        .context("after the switchover to node2")?;
    wait_streams_from(&cluster, cascade, upstream, scaled(Duration::from_secs(60))).await?;
    row_arrives(&cluster, upstream, cascade, 4).await?;

    cluster.finish();
    Ok(())
}
