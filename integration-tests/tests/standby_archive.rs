//! Archive-only standby clusters (issue 13) on real etcd, PostgreSQL and agents: a primary
//! cluster archives its WAL into a directory (`archive_command`); a standby cluster with
//! `standby_cluster: {restore_command, create_replica_methods}` and no `host` (Patroni's YAML:
//! the command in the file's `bootstrap.dcs`) creates its standby leader from a base backup
//! by a `no_leader` replica method and replays the archive: rows written on the primary after
//! the standby was created arrive on the standby leader and on the replica, which streams
//! from it; the standby leader's host dies, the replica takes over and keeps replaying. The
//! `history` key is left alone while the cluster is a standby (Patroni's standby leader never
//! writes it); after `promote-cluster` it has the new timeline's line naming the promoted
//! member, in `pgbaton history` and Patroni's `patronictl history`. `demote-cluster` and
//! `promote-cluster` refusals and success print patronictl's texts, and Patroni's own
//! `patronictl demote-cluster` / `promote-cluster` work against the pgbaton cluster.
//!
//! Skips (printing a `SKIP` line) when a program it needs is missing, unless
//! `PGBATON_REQUIRE_INTEGRATION=1`. See docs/testing.md.

use std::time::Duration;

use anyhow::{Context, ensure};
use baton_integration_tests::tools_or_skip;
use baton_integration_tests::{
    Check, Cluster, ClusterSpec, Patronictl, patronictl_venv, scaled, wait_for,
};
use serde_json::{Value, json};

/// The standby cluster's leader (a `standby_leader`, running), its other members replicas
/// streaming from it.
async fn standby_healthy(standby: &Cluster, members: &[String]) -> anyhow::Result<Check<String>> {
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
        let want = if *name == leader {
            "standby_leader"
        } else {
            "replica"
        };
        if status["role"] != want || status["state"] != "running" {
            return Ok(Check::not_yet(format!(
                "{name}: /patroni role {} state {}, want {want} running",
                status["role"], status["state"]
            )));
        }
        if !standby.node(name).pg().in_recovery().await.unwrap_or(true) {
            anyhow::bail!("{name} of the standby cluster runs as a primary");
        }
    }
    let streaming = match standby
        .sql(
            &leader,
            "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'",
        )
        .await
    {
        Ok(rows) => rows
            .into_iter()
            .filter_map(|r| r.into_iter().next().flatten())
            .collect::<Vec<_>>(),
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

/// Write row `n` on the primary cluster's leader and switch WAL (the segment is archived),
/// then wait until every member in `members` of `standby` has replayed it.
async fn archived_row(
    primary: &Cluster,
    leader: &str,
    standby: &Cluster,
    members: &[String],
    n: i32,
) -> anyhow::Result<()> {
    primary
        .sql(leader, &format!("INSERT INTO probe VALUES ({n})"))
        .await?;
    primary
        .sql(leader, "SELECT pg_catalog.pg_switch_wal()")
        .await?;
    wait_for(
        &format!("row {n} on {members:?}"),
        scaled(Duration::from_secs(120)),
        || async {
            standby.check_agents_alive()?;
            for name in members {
                let query = format!("SELECT count(*)::text FROM probe WHERE n = {n}");
                match standby.sql(name, &query).await {
                    Ok(rows)
                        if rows.first().and_then(|r| r.first()).cloned().flatten()
                            == Some("1".into()) => {}
                    Ok(_) => return Ok(Check::not_yet(format!("{name}: row {n} not replayed"))),
                    Err(e) => return Ok(Check::not_yet(format!("{name}: {e:#}"))),
                }
            }
            Ok(Check::Done(()))
        },
    )
    .await
}

/// `pgbaton -c <config> args...`: (success, stdout, stderr).
async fn cli(
    cluster: &Cluster,
    member: &str,
    args: &[&str],
) -> anyhow::Result<(bool, String, String)> {
    let config = cluster
        .node(member)
        .config_path
        .to_string_lossy()
        .into_owned();
    let mut all = vec!["-c", config.as_str()];
    all.extend(args);
    let out = cluster.pgbaton_cli(&all).await?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_only_standby_cluster_replays_the_archive_fails_over_and_is_promoted()
-> anyhow::Result<()> {
    let test = "an_archive_only_standby_cluster_replays_the_archive_fails_over_and_is_promoted";
    let tools = tools_or_skip!(test);

    // The primary cluster: two members archiving into one directory.
    let mut spec = ClusterSpec::new(2);
    spec.haproxy = None;
    spec.start_agents = false;
    let mut primary = Cluster::start(&tools, spec).await?;
    let archive = primary.dir().join("archive");
    std::fs::create_dir_all(&archive)?;
    tools.chown_to_agent_user(&archive)?;
    let archive = archive.display().to_string();
    let archiving = json!({"postgresql": {"parameters": {
        "archive_mode": "on",
        "archive_command": format!("test ! -f {archive}/%f && cp %p {archive}/%f"),
    }}});
    for name in primary.names() {
        primary.update_config(&name, &archiving)?;
        primary.start_agent(&name)?;
    }
    let healthy = primary
        .wait_healthy(scaled(Duration::from_secs(180)))
        .await?;
    let leader_a = healthy.leader.clone();
    primary
        .sql(
            &leader_a,
            "CREATE TABLE probe (n int primary key); INSERT INTO probe VALUES (1)",
        )
        .await?;

    // A base backup of the primary cluster's leader: what the standby leader is created from.
    let backup = primary.node(&leader_a).config.dir.join("base");
    let node_a = primary.node(&leader_a).config.clone();
    let status = tools
        .command_as_agent_user(&tools.pg_bin_dir.join("pg_basebackup"))
        .arg(format!("--pgdata={}", backup.display()))
        .args(["--wal-method=stream", "--checkpoint=fast"])
        .arg(format!(
            "--dbname=host=127.0.0.1 port={} user={} password={}",
            node_a.pg_port, node_a.auth.replication.0, node_a.auth.replication.1
        ))
        .status()?;
    ensure!(status.success(), "pg_basebackup of {leader_a}: {status}");

    // The standby cluster: no host, Patroni's standby_cluster with restore_command and the
    // replica method that restores the backup (no_leader: it needs no server). Its replicas
    // clone from the standby leader (basebackup first).
    let mut spec = ClusterSpec::new(2);
    spec.scope = "robin".to_owned();
    spec.haproxy = None;
    spec.start_agents = false;
    let mut standby = Cluster::start(&tools, spec).await?;
    let restore = standby.script(
        "from_backup.sh",
        &format!(
            "for a in \"$@\"; do case $a in --datadir=*) datadir=${{a#--datadir=}} ;; esac; done\n\
             cp -a {backup}/. \"$datadir\"/",
            backup = backup.display()
        ),
    )?;
    let restore_command = format!("cp {archive}/%f %p");
    let overlay = json!({
        "bootstrap": {"dcs": {"standby_cluster": {
            "restore_command": restore_command,
            "create_replica_methods": ["from_backup"],
        }}},
        "postgresql": {
            "create_replica_methods": ["basebackup", "from_backup"],
            "from_backup": {"command": restore.display().to_string(), "no_leader": true},
        },
    });
    let all = standby.names();
    for name in &all {
        standby.update_config(name, &overlay)?;
        standby.start_agent(name)?;
    }
    let leader_b = wait_for(
        "a healthy archive-only standby cluster",
        scaled(Duration::from_secs(240)),
        || standby_healthy(&standby, &all),
    )
    .await?;
    // The standby leader has no primary_conninfo: it replays the archive.
    let conninfo = standby.sql(&leader_b, "SHOW primary_conninfo").await?;
    ensure!(
        conninfo.first().and_then(|r| r.first()).cloned().flatten() == Some(String::new()),
        "{leader_b}: primary_conninfo {conninfo:?}"
    );
    let stored = standby.etcd().get(&standby.key("config")).await?;
    ensure!(
        stored
            .as_ref()
            .is_some_and(|kv| kv.value.contains("restore_command")),
        "standby cluster /config: {stored:?}"
    );

    // Rows written after the standby cluster was created arrive through the archive.
    archived_row(&primary, &leader_a, &standby, &all, 2).await?;

    // The history key is left alone while the cluster is a standby.
    let history_before = standby.etcd().get(&standby.key("history")).await?;
    ensure!(
        history_before.is_none(),
        "a standby cluster's history key was written: {history_before:?}"
    );

    // Refusals with patronictl's texts: promote-cluster on the primary cluster,
    // demote-cluster without anything, demote-cluster on the standby cluster.
    for (cluster, member, args, message) in [
        (
            &primary,
            leader_a.as_str(),
            vec!["promote-cluster", "--force"],
            "Cluster is already in the required state",
        ),
        (
            &primary,
            leader_a.as_str(),
            vec!["demote-cluster", "--force"],
            "At least --host, --port or --restore-command should be specified",
        ),
        (
            &standby,
            leader_b.as_str(),
            vec![
                "demote-cluster",
                "--restore-command",
                "cp /x/%f %p",
                "--force",
            ],
            "Cluster is already in the required state",
        ),
    ] {
        let (ok, _, stderr) = cli(cluster, member, &args).await?;
        ensure!(
            !ok && stderr.trim_end().ends_with(message),
            "pgbaton {args:?}: {ok} {stderr}"
        );
    }

    // The standby leader's host dies: the replica takes the key, stays a standby and keeps
    // replaying the archive.
    standby.kill_host(&leader_b)?;
    let survivors: Vec<String> = all.iter().filter(|n| **n != leader_b).cloned().collect();
    let new_leader = wait_for(
        "a new standby leader",
        scaled(Duration::from_secs(120)),
        || standby_healthy(&standby, &survivors),
    )
    .await
    .context("after the standby leader's host was killed")?;
    ensure!(new_leader != leader_b, "the dead member still leads");
    archived_row(&primary, &leader_a, &standby, &survivors, 3).await?;

    // promote-cluster: patronictl's output, a writable primary, and the history key has the
    // line for the timeline it left, naming it.
    let (ok, stdout, stderr) = cli(&standby, &new_leader, &["promote-cluster", "--force"]).await?;
    ensure!(
        ok && stdout.starts_with("Current cluster topology\n")
            && stdout.contains(" cluster is successfully promoted\n"),
        "promote-cluster: {ok} {stdout} {stderr}"
    );
    standby
        .sql(&new_leader, "INSERT INTO probe VALUES (100)")
        .await?;
    let history = wait_for(
        "the promoted cluster's history",
        scaled(Duration::from_secs(60)),
        || async {
            Ok(match standby.etcd().get(&standby.key("history")).await? {
                Some(kv) => {
                    let lines: Value = serde_json::from_str(&kv.value)?;
                    let last = lines.as_array().and_then(|l| l.last()).cloned();
                    match last {
                        Some(line) if line.get(4) == Some(&json!(new_leader)) => Check::Done(lines),
                        _ => Check::not_yet(format!("history {}", kv.value)),
                    }
                }
                None => Check::not_yet("no history key"),
            })
        },
    )
    .await?;
    let promoted_from = history
        .as_array()
        .and_then(|l| l.last())
        .and_then(|l| l.get(0))
        .and_then(Value::as_u64)
        .context("history line")?;
    let (ok, stdout, stderr) = cli(&standby, &new_leader, &["history", "--format", "json"]).await?;
    let lines: Value = serde_json::from_str(&stdout).with_context(|| stderr.clone())?;
    ensure!(
        ok && lines
            .as_array()
            .and_then(|l| l.last())
            .is_some_and(
                |l| l["TL"] == json!(promoted_from) && l["New Leader"] == json!(new_leader)
            ),
        "pgbaton history: {stdout}"
    );

    if let Some(bin) = patronictl_venv(test).await? {
        let ctl = Patronictl::for_cluster(bin, &standby, None)?;
        let lines = ctl.history().await?;
        ensure!(
            lines.last().is_some_and(
                |l| l["TL"] == json!(promoted_from) && l["New Leader"] == json!(new_leader)
            ),
            "patronictl history: {lines:?}"
        );
        // Patroni's own demote-cluster / promote-cluster against the pgbaton cluster: the
        // promoted cluster becomes an archive standby again (its leader restarts as the
        // standby leader), then runs standalone again.
        let out = ctl
            .ok(&[
                "demote-cluster",
                "robin",
                "--restore-command",
                &restore_command,
                "--force",
            ])
            .await?;
        ensure!(
            out.stdout.contains(" cluster is successfully demoted"),
            "{out}"
        );
        let out = ctl.ok(&["promote-cluster", "robin", "--force"]).await?;
        ensure!(
            out.stdout.contains(" cluster is successfully promoted"),
            "{out}"
        );
        standby
            .sql(&new_leader, "INSERT INTO probe VALUES (101)")
            .await?;
    }

    standby.finish();
    primary.finish();
    Ok(())
}
