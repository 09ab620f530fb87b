//! Standby clusters (issue 13.1) on real etcd, PostgreSQL and agents: two clusters, each with
//! its own etcd. The standby cluster is bootstrapped from the primary cluster's leader; its
//! leader key holder runs as `standby_leader` (`/standby-leader` 200, `/primary` 503), its
//! replicas cascade from it, rows written on the primary cluster arrive on every member; the
//! standby leader's host is killed, another member becomes the standby leader, and a new row
//! still arrives. `promote-cluster` on the primary cluster and `demote-cluster` without a host
//! are refused with patronictl's messages and change nothing; `promote-cluster` on the
//! standby cluster makes it writable. Patroni's `patronictl list` shows the standby leader as
//! "Standby Leader".
//!
//! Skips (printing a `SKIP` line) when a program it needs is missing, unless
//! `PGBATON_REQUIRE_INTEGRATION=1`. See docs/testing.md.

use std::time::Duration;

use anyhow::Context;
use baton_integration_tests::tools_or_skip;
use baton_integration_tests::{
    Check, Cluster, ClusterSpec, Healthy, Patronictl, Tools, patronictl_venv, scaled, wait_for,
};
use serde_json::{Value, json};

/// The standby cluster's view: its leader is a standby leader, streaming, and the others
/// stream from it.
async fn standby_cluster_healthy(
    standby: &Cluster,
    members: &[String],
) -> anyhow::Result<Check<String>> {
    standby.check_agents_alive()?;
    let leader = match standby.leader().await {
        Ok(Some(l)) if members.contains(&l) => l,
        Ok(other) => return Ok(Check::not_yet(format!("leader key = {other:?}"))),
        Err(e) => return Ok(Check::not_yet(format!("etcd: {e:#}"))),
    };
    for name in members {
        let status = match standby.node(name).patroni().await {
            Ok(s) => s,
            Err(e) => return Ok(Check::not_yet(format!("{name}: {e:#}"))),
        };
        let role = status.get("role").and_then(Value::as_str).unwrap_or("?");
        let state = status.get("state").and_then(Value::as_str).unwrap_or("?");
        let want = if *name == leader {
            "standby_leader"
        } else {
            "replica"
        };
        if role != want || state != "running" {
            return Ok(Check::not_yet(format!(
                "{name}: /patroni role {role:?} state {state:?}, want {want:?} running"
            )));
        }
        match standby.node(name).pg().in_recovery().await {
            Ok(true) => {}
            Ok(false) => anyhow::bail!("{name} of the standby cluster runs as a primary"),
            Err(e) => return Ok(Check::not_yet(format!("{name}: {e:#}"))),
        }
    }
    let streaming: Vec<String> = match standby
        .sql(
            &leader,
            "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'",
        )
        .await
    {
        Ok(rows) => rows
            .into_iter()
            .filter_map(|r| r.into_iter().next().flatten())
            .collect(),
        Err(e) => return Ok(Check::not_yet(format!("{leader}: {e:#}"))),
    };
    if let Some(missing) = members
        .iter()
        .find(|m| **m != leader && !streaming.contains(m))
    {
        return Ok(Check::not_yet(format!(
            "{missing} does not stream from the standby leader {leader} ({streaming:?})"
        )));
    }
    Ok(Check::Done(leader))
}

/// Wait until row `n` of `probe` is on every member in `members`.
async fn wait_row(standby: &Cluster, members: &[String], n: i32) -> anyhow::Result<()> {
    wait_for(
        &format!("row {n} on {members:?}"),
        scaled(Duration::from_secs(60)),
        || async {
            for name in members {
                let rows = match standby
                    .sql(
                        name,
                        &format!("SELECT count(*)::text FROM probe WHERE n = {n}"),
                    )
                    .await
                {
                    Ok(rows) => rows,
                    Err(e) => return Ok(Check::not_yet(format!("{name}: {e:#}"))),
                };
                if rows.first().and_then(|r| r.first()).cloned().flatten() != Some("1".into()) {
                    return Ok(Check::not_yet(format!("{name}: row {n} not replayed yet")));
                }
            }
            Ok(Check::Done(()))
        },
    )
    .await
}

/// A primary cluster of two (row 1 in `probe`) and a standby cluster of three replicating
/// from its leader, each with its own etcd; healthy, row 1 everywhere. Returns the primary
/// cluster, its healthy topology, the standby cluster and its standby leader.
async fn start_pair(tools: &Tools) -> anyhow::Result<(Cluster, Healthy, Cluster, String)> {
    // The primary cluster: two members, its own etcd.
    let mut spec = ClusterSpec::new(2);
    spec.haproxy = None;
    let primary = Cluster::start(tools, spec).await?;
    let healthy = primary
        .wait_healthy(scaled(Duration::from_secs(180)))
        .await?;
    let source = primary.node(&healthy.leader);
    let (host, port) = (source.address(), source.config.pg_port);
    primary
        .sql(
            &healthy.leader,
            "CREATE TABLE probe (n int primary key); INSERT INTO probe VALUES (1)",
        )
        .await?;

    // The standby cluster: three members, another etcd, bootstrapped from the leader above.
    let mut spec = ClusterSpec::new(3);
    spec.scope = "robin".to_owned();
    spec.haproxy = None;
    spec.extra_config = json!({
        "bootstrap": { "dcs": { "standby_cluster": { "host": host, "port": port } } }
    });
    let standby = Cluster::start(tools, spec).await?;
    let all = standby.names();
    let leader = wait_for(
        "a healthy standby cluster",
        scaled(Duration::from_secs(240)),
        || standby_cluster_healthy(&standby, &all),
    )
    .await?;
    wait_row(&standby, &all, 1).await?;

    Ok((primary, healthy, standby, leader))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_cluster_streams_from_the_primary_cluster_and_survives_its_leaders_death()
-> anyhow::Result<()> {
    let test = "a_standby_cluster_streams_from_the_primary_cluster_and_survives_its_leaders_death";
    let tools = tools_or_skip!(test);

    let (primary, healthy, mut standby, leader) = start_pair(&tools).await?;
    let all = standby.names();
    // The standby leader's health endpoints; `list` names it.
    let node = standby.node(&leader);
    for (path, want) in [
        ("/standby-leader", 200),
        ("/standby_leader", 200),
        ("/leader", 200),
        ("/primary", 503),
        ("/replica", 503),
        ("/read-only", 200),
    ] {
        let code = node.http_status(path).await?;
        anyhow::ensure!(
            code == want,
            "{leader}: GET {path} answered {code}, want {want}"
        );
    }
    let list = standby.list_json(&leader).await?;
    let role = list
        .iter()
        .find(|m| m.get("Member").and_then(Value::as_str) == Some(leader.as_str()))
        .and_then(|m| m.get("Role"))
        .cloned();
    anyhow::ensure!(
        role == Some(json!("Standby Leader")),
        "pgbaton list: {list:?}"
    );

    // Patroni's own patronictl says the same.
    if let Some(bin) = patronictl_venv(test).await? {
        let ctl = Patronictl::for_cluster(bin, &standby, None)?;
        let members = ctl.list().await?;
        let role = members
            .iter()
            .find(|m| m.get("Member").and_then(Value::as_str) == Some(leader.as_str()))
            .and_then(|m| m.get("Role"))
            .cloned();
        anyhow::ensure!(
            role == Some(json!("Standby Leader")),
            "patronictl list: {members:?}"
        );
    }

    // Rows written on the primary cluster arrive on every member of the standby cluster.
    primary
        .sql(&healthy.leader, "INSERT INTO probe VALUES (2)")
        .await?;
    wait_row(&standby, &all, 2).await?;

    // The standby leader publishes its position in /status, as Patroni's does.
    let status = standby.etcd().get(&standby.key("status")).await?;
    anyhow::ensure!(
        status
            .as_ref()
            .is_some_and(|kv| kv.value.contains("optime")),
        "standby cluster /status: {status:?}"
    );

    // Changing standby_cluster in /config retargets the standby leader: now it streams from
    // the primary cluster's replica (cascading across the clusters).
    let replica_a = primary.node(&healthy.replicas[0]);
    let (replica_host, replica_port) = (replica_a.address(), replica_a.config.pg_port);
    let patch = reqwest::Client::new()
        .patch(format!("{}/config", standby.node(&leader).rest_base()))
        .json(&json!({ "standby_cluster": { "host": replica_host, "port": replica_port } }))
        .send()
        .await
        .context("PATCH /config")?;
    anyhow::ensure!(patch.status() == 200, "PATCH /config: {}", patch.status());
    wait_for(
        "the standby leader to stream from the primary cluster's replica",
        scaled(Duration::from_secs(60)),
        || async {
            let rows = standby
                .sql(
                    &leader,
                    "SELECT sender_port::text FROM pg_stat_wal_receiver WHERE status = 'streaming'",
                )
                .await?;
            let port = rows.first().and_then(|r| r.first()).cloned().flatten();
            Ok(if port == Some(replica_port.to_string()) {
                Check::Done(())
            } else {
                Check::not_yet(format!("sender_port {port:?}, want {replica_port}"))
            })
        },
    )
    .await?;

    // The standby leader's host dies: another member takes the key, stays a standby, and
    // keeps replicating from the primary cluster.
    standby.kill_host(&leader)?;
    let survivors: Vec<String> = all.iter().filter(|n| **n != leader).cloned().collect();
    let new_leader = wait_for(
        "a new standby leader",
        scaled(Duration::from_secs(120)),
        || standby_cluster_healthy(&standby, &survivors),
    )
    .await
    .context("after the standby leader's host was killed")?;
    anyhow::ensure!(new_leader != leader, "the dead member still leads");
    primary
        .sql(&healthy.leader, "INSERT INTO probe VALUES (3)")
        .await?;
    wait_row(&standby, &survivors, 3).await?;
    // Nobody in the primary cluster changed role.
    anyhow::ensure!(
        primary.leader().await? == Some(healthy.leader.clone()),
        "the primary cluster's leader changed"
    );

    // Bad input is refused with patronictl's messages and changes nothing: promote-cluster
    // on a primary cluster, demote-cluster without a remote host.
    let config_a = primary
        .node(&healthy.leader)
        .config_path
        .to_string_lossy()
        .into_owned();
    for (args, message) in [
        (
            vec!["promote-cluster", "--force"],
            "Cluster is already in the required state",
        ),
        (
            vec!["demote-cluster", "--force"],
            "At least --host, --port or --restore-command should be specified",
        ),
    ] {
        let mut cli = vec!["-c", config_a.as_str()];
        cli.extend(&args);
        let out = primary.pgbaton_cli(&cli).await?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        anyhow::ensure!(
            !out.status.success() && stderr.contains(message),
            "pgbaton {args:?}: {} {stderr}",
            out.status
        );
    }
    let stored = primary.etcd().get(&primary.key("config")).await?;
    anyhow::ensure!(
        stored
            .as_ref()
            .is_some_and(|kv| !kv.value.contains("standby_cluster")),
        "/config changed: {stored:?}"
    );
    anyhow::ensure!(
        !primary.node(&healthy.leader).pg().in_recovery().await?,
        "the primary cluster's leader is no longer a primary"
    );

    // promote-cluster on the standby cluster: its standby leader promotes and takes writes.
    let config_b = standby
        .node(&new_leader)
        .config_path
        .to_string_lossy()
        .into_owned();
    let out = standby
        .pgbaton_cli(&["-c", &config_b, "promote-cluster", "--force"])
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success() && stdout.contains("cluster is successfully promoted"),
        "promote-cluster: {} {stdout} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        "the promoted standby cluster to take writes",
        scaled(Duration::from_secs(60)),
        || async {
            Ok(
                match standby
                    .sql(&new_leader, "INSERT INTO probe VALUES (4)")
                    .await
                {
                    Ok(_) => Check::Done(()),
                    Err(e) => Check::not_yet(format!("{new_leader}: {e:#}")),
                },
            )
        },
    )
    .await?;
    wait_row(&standby, &survivors, 4).await?;

    standby.finish();
    primary.finish();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn region_switchover_moves_the_primary_to_the_standby_cluster_without_losing_a_commit()
-> anyhow::Result<()> {
    let test = "region_switchover_moves_the_primary_to_the_standby_cluster_without_losing_a_commit";
    let tools = tools_or_skip!(test);
    let (primary, healthy, standby, standby_leader) = start_pair(&tools).await?;
    let all_b = standby.names();
    // Commits acknowledged on the primary cluster right before the switch.
    for n in 2..=50 {
        primary
            .sql(&healthy.leader, &format!("INSERT INTO probe VALUES ({n})"))
            .await?;
    }
    let config_a = primary
        .node(&healthy.leader)
        .config_path
        .to_string_lossy()
        .into_owned();
    let config_b = standby
        .node(&standby_leader)
        .config_path
        .to_string_lossy()
        .into_owned();
    let out = primary
        .pgbaton_cli(&[
            "-c",
            &config_a,
            "region-switchover",
            "--standby-config",
            &config_b,
            "--force",
        ])
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success() && stdout.contains("Cluster robin successfully promoted"),
        "region-switchover: {} {stdout} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // The former standby leader is now a writable primary with every acknowledged commit.
    anyhow::ensure!(
        !standby.node(&standby_leader).pg().in_recovery().await?,
        "{standby_leader} is still in recovery"
    );
    let rows = standby
        .sql(&standby_leader, "SELECT count(*)::text FROM probe")
        .await?;
    anyhow::ensure!(
        rows.first().and_then(|r| r.first()).cloned().flatten() == Some("50".into()),
        "rows on the new primary: {rows:?}"
    );
    standby
        .sql(&standby_leader, "INSERT INTO probe VALUES (51)")
        .await?;
    wait_row(&standby, &all_b, 51).await?;
    // The old primary cluster is a standby cluster of the new one and replicates from it.
    let all_a = primary.names();
    wait_for(
        "the old primary cluster to stream as a standby cluster",
        scaled(Duration::from_secs(120)),
        || standby_cluster_healthy(&primary, &all_a),
    )
    .await?;
    wait_row(&primary, &all_a, 51).await?;

    standby.finish();
    primary.finish();
    Ok(())
}
