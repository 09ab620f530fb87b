//! Issue 10.6 on real etcd, PostgreSQL and agents: a custom bootstrap (`bootstrap.method`
//! with its section) and `postgresql.recovery_conf`.
//!
//! A throwaway PostgreSQL (not a member) archives its WAL to a directory; a base backup of
//! it is restored by the bootstrap script of a new cluster, which recovers through the
//! archive to a restore point (`recovery_conf` with `recovery_target_action: promote`): the
//! new primary has the rows written before the restore point (one after the base backup,
//! read from the archive) and not the one after it; a replica clones from it, streams, and
//! runs with its own `postgresql.recovery_conf`, changed at run time by a reload. A script
//! that exits 1 leaves no leader, no `initialize` key and an empty data directory, and is
//! retried.
//!
//! Every test skips (printing a `SKIP` line) when a program it needs is missing, unless
//! `PGBATON_REQUIRE_INTEGRATION=1`. See docs/testing.md.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, ensure};
use baton_integration_tests::tools_or_skip;
use baton_integration_tests::{
    Check, Cluster, ClusterSpec, PgTarget, Tools, free_port, scaled, wait_for,
};
use serde_json::json;

fn soon() -> Duration {
    scaled(Duration::from_secs(90))
}

/// A PostgreSQL outside the cluster, archiving its WAL: the origin of the backup. Stopped
/// (immediately) when dropped.
struct Source {
    data: PathBuf,
    pg_ctl: PathBuf,
    target: PgTarget,
    runner: Tools,
}

impl Source {
    fn start(
        tools: &Tools,
        dir: &Path,
        archive: &Path,
        superuser: &(String, String),
    ) -> anyhow::Result<Source> {
        let data = dir.join("source");
        let pwfile = dir.join("source.pw");
        std::fs::write(&pwfile, format!("{}\n", superuser.1))?;
        let run = |cmd: &mut Command, what: &str| -> anyhow::Result<()> {
            let out = cmd.output().with_context(|| what.to_owned())?;
            ensure!(
                out.status.success(),
                "{what}: {}\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(())
        };
        run(
            tools
                .command_as_agent_user(&tools.pg_bin_dir.join("initdb"))
                .arg(format!("--pgdata={}", data.display()))
                .arg(format!("--username={}", superuser.0))
                .arg(format!("--pwfile={}", pwfile.display()))
                .args(["--auth=trust", "--encoding=UTF8"]),
            "initdb of the source",
        )?;
        let port = free_port()?;
        // On the command line, not in its postgresql.conf: the backup (and so the new
        // cluster) does not inherit them.
        let options = format!(
            "-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={dir} \
             -c archive_mode=on -c archive_command='cp %p {archive}/%f' -c max_connections=50 \
             -c shared_buffers=32MB",
            dir = dir.display(),
            archive = archive.display()
        );
        let pg_ctl = tools.pg_bin_dir.join("pg_ctl");
        run(
            tools
                .command_as_agent_user(&pg_ctl)
                .args(["start", "-w", "-t", "60", "-o", &options])
                .arg(format!("--pgdata={}", data.display()))
                .arg(format!("--log={}", dir.join("source.log").display())),
            "start the source",
        )?;
        Ok(Source {
            data,
            pg_ctl,
            target: PgTarget {
                host: "127.0.0.1".into(),
                port,
                user: superuser.0.clone(),
                password: superuser.1.clone(),
                dbname: "postgres".into(),
            },
            runner: tools.clone(),
        })
    }

    async fn sql(&self, query: &str) -> anyhow::Result<Vec<Vec<Option<String>>>> {
        self.target.query(query).await
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        let _ = self
            .runner
            .command_as_agent_user(&self.pg_ctl)
            .args(["stop", "-m", "immediate"])
            .arg(format!("--pgdata={}", self.data.display()))
            .output();
    }
}

/// `SHOW setting` on node2.
async fn show(cluster: &Cluster, setting: &str) -> anyhow::Result<Option<String>> {
    let rows = cluster.sql("node2", &format!("show {setting}")).await?;
    Ok(rows.first().and_then(|r| r.first().cloned().flatten()))
}

/// The custom bootstrap restores a base backup and recovers through the WAL archive to a
/// restore point; a replica clones from the new primary and streams with its own recovery
/// settings, which a reload changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restored_backup_becomes_the_new_clusters_primary() -> anyhow::Result<()> {
    let tools = tools_or_skip!("a_restored_backup_becomes_the_new_clusters_primary");
    let mut spec = ClusterSpec::new(2);
    spec.haproxy = None;
    spec.start_agents = false;
    let mut cluster = Cluster::start(&tools, spec).await?;
    // The agents' user owns the node directories: the source, its archive and the backup
    // live in node1's.
    let work = cluster.node("node1").config.dir.clone();
    let archive = work.join("archive");
    let status = tools
        .command_as_agent_user(Path::new("/bin/mkdir"))
        .arg(&archive)
        .status()?;
    ensure!(status.success(), "mkdir {}: {status}", archive.display());
    let superuser = cluster.node("node1").config.auth.superuser.clone();
    let source = Source::start(&tools, &work, &archive, &superuser)?;
    source
        .sql("create table history (v text); insert into history values ('before the backup')")
        .await?;
    let backup = work.join("backup");
    let status = tools
        .command_as_agent_user(&tools.pg_bin_dir.join("pg_basebackup"))
        .arg(format!("--pgdata={}", backup.display()))
        // No WAL in the copy: recovery must read it from the archive.
        .args(["--wal-method=none", "--checkpoint=fast"])
        .arg(format!(
            "--dbname=host=127.0.0.1 port={} user={}",
            source.target.port, superuser.0
        ))
        .status()?;
    ensure!(status.success(), "pg_basebackup of the source: {status}");
    // Three transactions (one simple query of several statements would be one).
    for statement in [
        "insert into history values ('after the backup')",
        "select pg_create_restore_point('pgbaton_target')",
        "insert into history values ('after the target')",
    ] {
        source.sql(statement).await?;
    }
    let rows = source
        .sql("select pg_walfile_name(pg_switch_wal())")
        .await?;
    let last = rows
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .context("no WAL file name")?;
    wait_for("the source archived its WAL", soon(), || async {
        Ok(match archive.join(&last).exists() {
            true => Check::Done(()),
            false => Check::not_yet(format!("{last} not in {}", archive.display())),
        })
    })
    .await?;
    drop(source);

    let args_file = work.join("restore.args");
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
    let restore_command = format!("cp {}/%f %p", archive.display());
    cluster.update_config(
        "node1",
        &json!({ "bootstrap": {
            "method": "restore",
            "restore": {
                "command": restore.display().to_string(),
                "stanza": "main",
                "recovery_conf": {
                    "restore_command": restore_command,
                    "recovery_target_name": "pgbaton_target",
                    "recovery_target_action": "promote",
                },
            },
        }}),
    )?;
    cluster.update_config(
        "node2",
        &json!({ "postgresql": { "recovery_conf": {
            "restore_command": restore_command,
            "recovery_min_apply_delay": "10ms",
        }}}),
    )?;
    cluster.start_agent("node1")?;
    wait_for("node1 leads", scaled(Duration::from_secs(180)), || async {
        cluster.check_agents_alive()?;
        Ok(match cluster.leader().await? {
            Some(l) if l == "node1" => Check::Done(()),
            other => Check::not_yet(format!("leader: {other:?}")),
        })
    })
    .await?;
    let node1 = cluster.node("node1").config.clone();
    let recorded = std::fs::read_to_string(&args_file)?;
    ensure!(
        recorded.lines().collect::<Vec<_>>()
            == [
                format!("--scope={}", node1.scope),
                format!("--datadir={}", node1.data_dir.display()),
                "--stanza=main".to_owned(),
            ],
        "recorded arguments: {recorded:?}"
    );
    let rows = wait_for("node1 answers", soon(), || async {
        Ok(
            match cluster
                .sql("node1", "select v from history order by v")
                .await
            {
                Ok(rows) => Check::Done(rows),
                Err(e) => Check::not_yet(format!("{e:#}")),
            },
        )
    })
    .await?;
    ensure!(
        rows == vec![
            vec![Some("after the backup".to_owned())],
            vec![Some("before the backup".to_owned())],
        ],
        "the new primary has {rows:?}: not the source's rows up to the restore point"
    );
    // A primary, writable, its recovery settings gone.
    cluster
        .sql("node1", "insert into history values ('on the new cluster')")
        .await?;
    let shown = cluster.sql("node1", "show restore_command; ").await?;
    ensure!(
        shown == vec![vec![Some(String::new())]],
        "node1 still runs with the bootstrap's restore_command: {shown:?}"
    );

    // A replica of the restored cluster streams, with its own recovery settings.
    cluster.start_agent("node2")?;
    let healthy = cluster
        .wait_healthy(scaled(Duration::from_secs(240)))
        .await?;
    ensure!(healthy.leader == "node1", "{healthy:?}");
    ensure!(
        show(&cluster, "restore_command").await?.as_deref() == Some(restore_command.as_str()),
        "node2's restore_command: {:?}",
        show(&cluster, "restore_command").await?
    );
    ensure!(
        show(&cluster, "recovery_min_apply_delay").await?.as_deref() == Some("10ms"),
        "node2's recovery_min_apply_delay: {:?}",
        show(&cluster, "recovery_min_apply_delay").await?
    );
    wait_for("node2 has the new cluster's row", soon(), || async {
        Ok(
            match cluster
                .sql(
                    "node2",
                    "select count(*) from history where v = 'on the new cluster'",
                )
                .await
            {
                Ok(rows) if rows == vec![vec![Some("1".to_owned())]] => Check::Done(()),
                Ok(rows) => Check::not_yet(format!("{rows:?}")),
                Err(e) => Check::not_yet(format!("{e:#}")),
            },
        )
    })
    .await?;

    // A change of postgresql.recovery_conf reaches the running replica on a reload.
    cluster.update_config(
        "node2",
        &json!({ "postgresql": { "recovery_conf": { "recovery_min_apply_delay": "20ms" }}}),
    )?;
    let url = format!(
        "http://127.0.0.1:{}/reload",
        cluster.node("node2").config.rest_port
    );
    let resp = reqwest::Client::new()
        .post(&url)
        .timeout(soon())
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    ensure!(resp.status().is_success(), "POST {url}: {}", resp.status());
    wait_for("node2 runs with the new delay", soon(), || async {
        Ok(match show(&cluster, "recovery_min_apply_delay").await {
            Ok(Some(v)) if v == "20ms" => Check::Done(()),
            other => Check::not_yet(format!("{other:?}")),
        })
    })
    .await?;
    cluster.check_agents_alive()?;
    cluster.finish();
    Ok(())
}

/// A bootstrap script that fails: the initialization is cancelled (no `initialize` key, no
/// leader), the data directory is emptied, the member says why, and the script is retried
/// after `ttl`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_bootstrap_script_leaves_no_cluster_and_is_retried() -> anyhow::Result<()> {
    let tools = tools_or_skip!("a_failed_bootstrap_script_leaves_no_cluster_and_is_retried");
    let mut spec = ClusterSpec::new(1);
    spec.haproxy = None;
    spec.start_agents = false;
    let mut cluster = Cluster::start(&tools, spec).await?;
    let node1 = cluster.node("node1").config.clone();
    let runs = node1.dir.join("restore.runs");
    let failing = cluster.script(
        "failing_restore.sh",
        &format!(
            "echo run >> {runs}\n\
             for a in \"$@\"; do case $a in --datadir=*) datadir=${{a#--datadir=}} ;; esac; done\n\
             mkdir -p \"$datadir\" && echo 'half a backup' > \"$datadir\"/PG_VERSION\n\
             echo 'the backup bucket is empty' >&2\nexit 1",
            runs = runs.display()
        ),
    )?;
    cluster.update_config(
        "node1",
        &json!({ "bootstrap": {
            "method": "restore",
            "restore": { "command": failing.display().to_string() },
        }}),
    )?;
    cluster.start_agent("node1")?;
    let member_key = cluster.key("members/node1");
    let reason = wait_for("node1 reports the failed bootstrap", soon(), || async {
        cluster.check_agents_alive()?;
        let member = cluster.etcd().get(&member_key).await?;
        let value: serde_json::Value = match &member {
            Some(kv) => serde_json::from_str(&kv.value)?,
            None => return Ok(Check::not_yet("no member key")),
        };
        let reason = value["pgbaton_reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        Ok(if reason.starts_with("bootstrap failed") {
            Check::Done(reason)
        } else {
            Check::not_yet(format!("member: {value}"))
        })
    })
    .await?;
    ensure!(
        reason.contains("exit status: 1") && reason.contains(&failing.display().to_string()),
        "the reason names neither the command nor its exit status: {reason}"
    );
    ensure!(
        reason.contains("the backup bucket is empty"),
        "the reason lacks the script's output: {reason}"
    );
    ensure!(
        cluster.leader().await?.is_none(),
        "a leader after a failed bootstrap"
    );
    ensure!(
        cluster
            .etcd()
            .get(&cluster.key("initialize"))
            .await?
            .is_none(),
        "the initialize key was not released"
    );
    let left: Vec<_> = std::fs::read_dir(&node1.data_dir)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    ensure!(
        left.is_empty(),
        "the failed bootstrap left {left:?} in the data directory"
    );
    wait_for(
        "the script is run again",
        scaled(Duration::from_secs(120)),
        || async {
            cluster.check_agents_alive()?;
            let count = std::fs::read_to_string(&runs)
                .unwrap_or_default()
                .lines()
                .count();
            Ok(if count >= 2 {
                Check::Done(())
            } else {
                Check::not_yet(format!("{count} runs"))
            })
        },
    )
    .await?;
    ensure!(
        cluster.leader().await?.is_none(),
        "a leader after failed bootstraps"
    );
    cluster.check_agents_alive()?;
    cluster.finish();
    Ok(())
}
