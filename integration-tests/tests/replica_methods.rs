//! Issue 10.6 on real etcd, PostgreSQL and agents: `postgresql.create_replica_methods`.
//! A replica whose first method fails and whose second is a custom script (which records its
//! arguments and runs pg_basebackup itself from `--connstring`) is created by the script,
//! streams, and the script got Patroni's arguments; a replica created by the built-in
//! `basebackup` method gets `postgresql.basebackup`'s options (its `label` is in the copy's
//! `backup_label`).
//!
//! Every test skips (printing a `SKIP` line) when a program it needs is missing, unless
//! `PGBATON_REQUIRE_INTEGRATION=1`. See docs/testing.md.

use std::path::Path;
use std::time::Duration;

use anyhow::ensure;
use baton_integration_tests::tools_or_skip;
use baton_integration_tests::{Check, Cluster, ClusterSpec, scaled, wait_for};
use serde_json::json;

fn soon() -> Duration {
    scaled(Duration::from_secs(90))
}

/// The label of the backup a data directory was copied from (`backup_label`, renamed to
/// `backup_label.old` once recovery read it).
fn backup_label(data_dir: &Path) -> Option<String> {
    ["backup_label.old", "backup_label"].iter().find_map(|f| {
        std::fs::read_to_string(data_dir.join(f))
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("LABEL: ").map(str::to_owned))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_are_created_by_the_configured_methods() -> anyhow::Result<()> {
    let tools = tools_or_skip!("replicas_are_created_by_the_configured_methods");
    let mut spec = ClusterSpec::new(3);
    spec.haproxy = None;
    spec.start_agents = false;
    let mut cluster = Cluster::start(&tools, spec).await?;
    let pg_basebackup = tools.pg_bin_dir.join("pg_basebackup");

    // node2: a method that fails, then a script that copies with pg_basebackup from
    // --connstring (the replication user's password comes from PGPASSFILE), then basebackup.
    let failed = cluster.node("node2").config.dir.join("failing.ran");
    let failing = cluster.script(
        "failing.sh",
        &format!(
            "touch {}\necho 'no backup in the bucket' >&2\nexit 3",
            failed.display()
        ),
    )?;
    let args_file = cluster.node("node2").config.dir.join("copy.args");
    let copy = cluster.script(
        "copy.sh",
        &format!(
            "printf '%s\\n' \"$@\" > {args}\necho \"PGPASSFILE=$PGPASSFILE\" >> {args}\n\
             for a in \"$@\"; do\n  case $a in\n    --datadir=*) datadir=${{a#--datadir=}} ;;\n    \
             --connstring=*) connstring=${{a#--connstring=}} ;;\n  esac\ndone\n\
             exec {bb} --pgdata=\"$datadir\" --wal-method=stream --checkpoint=fast \
             --label=from-the-copy-method --dbname=\"$connstring\"",
            args = args_file.display(),
            bb = pg_basebackup.display()
        ),
    )?;
    cluster.update_config(
        "node2",
        &json!({ "postgresql": {
            "create_replica_methods": ["failing", "copy", "basebackup"],
            "failing": { "command": failing.display().to_string() },
            "copy": { "command": copy.display().to_string(), "stanza": "main" },
        }}),
    )?;
    // node3: the built-in method with options in both list forms.
    cluster.update_config(
        "node3",
        &json!({ "postgresql": {
            "create_replica_methods": ["basebackup"],
            "basebackup": [{ "max-rate": "100M" }, { "checkpoint": "fast" },
                           { "label": "pgbaton-basebackup-options" }, "verbose"],
        }}),
    )?;

    cluster.start_agent("node1")?;
    wait_for("node1 leads", soon(), || async {
        Ok(match cluster.leader().await? {
            Some(l) if l == "node1" => Check::Done(()),
            other => Check::not_yet(format!("leader: {other:?}")),
        })
    })
    .await?;
    cluster.start_agent("node2")?;
    cluster.start_agent("node3")?;
    let healthy = cluster
        .wait_healthy(scaled(Duration::from_secs(240)))
        .await?;
    ensure!(healthy.leader == "node1", "{healthy:?}");

    // node2: the failing method ran first, then the script made the replica.
    ensure!(failed.exists(), "the first method did not run");
    let node2 = &cluster.node("node2").config;
    let recorded = std::fs::read_to_string(&args_file)?;
    let lines: Vec<&str> = recorded.lines().collect();
    let node1 = &cluster.node("node1").config;
    ensure!(lines.len() == 6, "recorded arguments: {lines:?}");
    ensure!(lines[0] == "--stanza=main", "{lines:?}");
    ensure!(lines[1] == format!("--scope={}", node2.scope), "{lines:?}");
    ensure!(lines[2] == "--role=replica", "{lines:?}");
    ensure!(
        lines[3] == format!("--datadir={}", node2.data_dir.display()),
        "{lines:?}"
    );
    let connstring = lines[4].strip_prefix("--connstring=").unwrap_or_default();
    for part in [
        "host=127.0.0.1".to_owned(),
        format!("port={}", node1.pg_port),
        format!("user={}", node2.auth.replication.0),
        "dbname=postgres".to_owned(),
    ] {
        ensure!(
            connstring.split(' ').any(|p| p == part),
            "{part} not in {connstring:?}"
        );
    }
    ensure!(
        !connstring.contains("password"),
        "the password is in the pgpass file, not the connection string: {connstring:?}"
    );
    ensure!(lines[5].starts_with("PGPASSFILE=/"), "{lines:?}");
    let label = backup_label(&node2.data_dir);
    ensure!(
        label.as_deref() == Some("from-the-copy-method"),
        "node2's data directory is not the script's copy (label {label:?})"
    );

    // node3: pg_basebackup got postgresql.basebackup's options.
    let label = backup_label(&cluster.node("node3").config.data_dir);
    ensure!(
        label.as_deref() == Some("pgbaton-basebackup-options"),
        "node3's copy was made without the configured options (label {label:?})"
    );
    cluster.check_agents_alive()?;
    cluster.finish();
    Ok(())
}

/// Patroni's "bootstrap (without leader)": the cluster is initialized but has no leader (its
/// only member stopped); a new member with an empty data directory and a `no_leader` method
/// restores a backup by the script (which gets an empty `--connstring`), starts on it and,
/// nobody else being there, takes the lead with the backup's data.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_no_leader_method_restores_a_member_while_there_is_no_leader() -> anyhow::Result<()> {
    let tools = tools_or_skip!("a_no_leader_method_restores_a_member_while_there_is_no_leader");
    let mut spec = ClusterSpec::new(2);
    spec.haproxy = None;
    spec.start_agents = false;
    let mut cluster = Cluster::start(&tools, spec).await?;
    cluster.start_agent("node1")?;
    wait_for("node1 leads", soon(), || async {
        Ok(match cluster.leader().await? {
            Some(l) if l == "node1" => Check::Done(()),
            other => Check::not_yet(format!("leader: {other:?}")),
        })
    })
    .await?;
    wait_for("node1 accepts writes", soon(), || async {
        Ok(
            match cluster
                .sql(
                    "node1",
                    "create table if not exists restored (v text); \
                     insert into restored values ('before the backup')",
                )
                .await
            {
                Ok(_) => Check::Done(()),
                Err(e) => Check::not_yet(format!("{e:#}")),
            },
        )
    })
    .await?;
    // A base backup of node1, made by the agents' user (in a directory it owns): what the
    // restore script copies.
    let backup = cluster.node("node2").config.dir.join("backup");
    let node1 = cluster.node("node1").config.clone();
    let status = tools
        .command_as_agent_user(&tools.pg_bin_dir.join("pg_basebackup"))
        .arg(format!("--pgdata={}", backup.display()))
        .args([
            "--wal-method=stream",
            "--checkpoint=fast",
            "--label=pgbaton-restore",
        ])
        .arg(format!(
            "--dbname=host=127.0.0.1 port={} user={} password={}",
            node1.pg_port, node1.auth.replication.0, node1.auth.replication.1
        ))
        .status()?;
    ensure!(status.success(), "pg_basebackup of node1: {status}");
    cluster.stop_agent("node1").await;
    wait_for("no leader", soon(), || async {
        Ok(match cluster.leader().await? {
            None => Check::Done(()),
            Some(l) => Check::not_yet(format!("leader: {l}")),
        })
    })
    .await?;

    let args_file = cluster.node("node2").config.dir.join("restore.args");
    let restore = cluster.script(
        "restore.sh",
        &format!(
            "printf '%s\\n' \"$@\" > {args}\n\
             for a in \"$@\"; do case $a in --datadir=*) datadir=${{a#--datadir=}} ;; esac; done\n\
             cp -a {backup}/. \"$datadir\"/",
            args = args_file.display(),
            backup = backup.display()
        ),
    )?;
    cluster.update_config(
        "node2",
        &json!({ "postgresql": {
            "create_replica_methods": ["restore", "basebackup"],
            "restore": { "command": restore.display().to_string(), "no_leader": true },
        }}),
    )?;
    cluster.start_agent("node2")?;
    wait_for("node2 leads", scaled(Duration::from_secs(180)), || async {
        cluster.check_agents_alive()?;
        Ok(match cluster.leader().await? {
            Some(l) if l == "node2" => Check::Done(()),
            other => Check::not_yet(format!("leader: {other:?}")),
        })
    })
    .await?;
    let recorded = std::fs::read_to_string(&args_file)?;
    let node2 = &cluster.node("node2").config;
    ensure!(
        recorded.lines().collect::<Vec<_>>()
            == [
                "--no_leader=True".to_owned(),
                format!("--scope={}", node2.scope),
                "--role=replica".to_owned(),
                format!("--datadir={}", node2.data_dir.display()),
                "--connstring=".to_owned(),
            ],
        "recorded arguments: {recorded:?}"
    );
    ensure!(
        backup_label(&node2.data_dir).as_deref() == Some("pgbaton-restore"),
        "node2 does not run on the restored backup"
    );
    let rows = wait_for("node2 answers", soon(), || async {
        Ok(match cluster.sql("node2", "select v from restored").await {
            Ok(rows) => Check::Done(rows),
            Err(e) => Check::not_yet(format!("{e:#}")),
        })
    })
    .await?;
    ensure!(
        rows == vec![vec![Some("before the backup".to_owned())]],
        "{rows:?}"
    );
    cluster.check_agents_alive()?;
    cluster.finish();
    Ok(())
}
