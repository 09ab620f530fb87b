//! The patronictl-shaped commands of the `pgbaton` binary against real etcd, PostgreSQL and
//! agents: edit-config (--set, --pg, --apply, --replace; a bad value refused with its key path
//! and nothing written), show-config, list -e, history --format json, dsn, query, topology,
//! flush switchover, remove (refused without confirmation; then exactly the cluster's keys
//! go), and agents logging JSON lines with `log: {type: json}`.
//!
//! Skips (printing a `SKIP` line) when a program it needs is missing, unless
//! `PGBATON_REQUIRE_INTEGRATION=1`. See docs/testing.md.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, ensure};
use baton_integration_tests::tools_or_skip;
use baton_integration_tests::{Check, Cluster, ClusterSpec, scaled, wait_for};
use serde_json::{Value, json};

/// What one CLI run gave.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ok={} stdout:\n{}\nstderr:\n{}",
            self.ok, self.stdout, self.stderr
        )
    }
}

/// `pgbaton -c <via's config> <args>` with standard input not a terminal (closed) and only
/// the environment variables in `env` of the PG*/PATRONI*/PGBATON* kind.
async fn cli_env(
    cluster: &Cluster,
    via: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<Run> {
    let config = cluster.node(via).config_path.to_string_lossy().into_owned();
    let mut cmd = tokio::process::Command::new(cluster.pgbaton());
    cmd.arg("-c")
        .arg(&config)
        .args(args)
        .current_dir(cluster.dir())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("PATRONI") || k.starts_with("PGBATON") || k.starts_with("PG") {
            cmd.env_remove(&key);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(scaled(Duration::from_secs(60)), cmd.output())
        .await
        .with_context(|| format!("pgbaton {args:?} did not finish"))?
        .with_context(|| format!("run pgbaton {args:?}"))?;
    Ok(Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

async fn cli(cluster: &Cluster, via: &str, args: &[&str]) -> anyhow::Result<Run> {
    cli_env(cluster, via, args, &[]).await
}

/// The `config` key: its JSON and modification revision.
async fn dcs_config(cluster: &Cluster) -> anyhow::Result<(Value, i64)> {
    let kv = cluster
        .etcd()
        .get(&cluster.key("config"))
        .await?
        .context("no config key")?;
    let v = serde_json::from_str(&kv.value).with_context(|| format!("config {:?}", kv.value))?;
    Ok((v, kv.mod_revision))
}

fn iso8601_utc(unix: u64) -> anyhow::Result<String> {
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{unix}"), "+%Y-%m-%dT%H:%M:%S+00:00"])
        .output()
        .context("run date")?;
    ensure!(out.status.success(), "date failed");
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

async fn edit_config(cluster: &Cluster, leader: &str) -> anyhow::Result<()> {
    // --set and --pg, with the diff shown.
    let run = cli(
        cluster,
        leader,
        &[
            "edit-config",
            "--set",
            "maximum_lag_on_failover=2097152",
            "--pg",
            "work_mem=8MB",
            "--force",
        ],
    )
    .await?;
    ensure!(run.ok, "{run}");
    ensure!(
        run.stdout.contains("+maximum_lag_on_failover: 2097152")
            && run.stdout.contains("+    work_mem: 8MB")
            && run.stdout.ends_with("Configuration changed\n"),
        "{run}"
    );
    let (config, _) = dcs_config(cluster).await?;
    ensure!(
        config["maximum_lag_on_failover"] == json!(2097152)
            && config["postgresql"]["parameters"]["work_mem"] == json!("8MB"),
        "{config}"
    );
    let show = cli(cluster, leader, &["show-config"]).await?;
    ensure!(
        show.ok && show.stdout.contains("maximum_lag_on_failover: 2097152\n"),
        "{show}"
    );

    // --apply: merged, null removes.
    let file = cluster.dir().join("apply.yml");
    std::fs::write(
        &file,
        "postgresql:\n  parameters:\n    work_mem: null\n    maintenance_work_mem: 128MB\n",
    )?;
    let run = cli(
        cluster,
        leader,
        &["edit-config", "--apply", &file.to_string_lossy(), "--force"],
    )
    .await?;
    ensure!(run.ok, "{run}");
    let (config, _) = dcs_config(cluster).await?;
    let params = &config["postgresql"]["parameters"];
    ensure!(
        params.get("work_mem").is_none() && params["maintenance_work_mem"] == json!("128MB"),
        "{config}"
    );

    // --replace: the file is the whole configuration.
    let mut replaced = config.clone();
    replaced
        .as_object_mut()
        .context("config is an object")?
        .remove("maximum_lag_on_failover");
    let file = cluster.dir().join("replace.yml");
    std::fs::write(&file, serde_yaml::to_string(&replaced)?)?;
    let run = cli(
        cluster,
        leader,
        &[
            "edit-config",
            "--replace",
            &file.to_string_lossy(),
            "--force",
        ],
    )
    .await?;
    ensure!(run.ok, "{run}");
    let (config, revision) = dcs_config(cluster).await?;
    ensure!(config == replaced, "{config} != {replaced}");

    // A bad value is refused with its key path; nothing is written.
    let run = cli(
        cluster,
        leader,
        &["edit-config", "--set", "loop_wait=soon", "--force"],
    )
    .await?;
    ensure!(
        !run.ok && run.stderr.contains("loop_wait") && run.stderr.contains("nothing changed"),
        "{run}"
    );
    // Without --force and without a terminal: refused, nothing written.
    let run = cli(
        cluster,
        leader,
        &["edit-config", "--set", "maximum_lag_on_failover=1"],
    )
    .await?;
    ensure!(
        !run.ok && run.stderr.contains("standard input is not a terminal"),
        "{run}"
    );
    let (after, after_revision) = dcs_config(cluster).await?;
    ensure!(
        after == config && after_revision == revision,
        "the config key changed: {after}"
    );
    // Nothing to change.
    let run = cli(
        cluster,
        leader,
        &[
            "edit-config",
            "--replace",
            &file.to_string_lossy(),
            "--force",
        ],
    )
    .await?;
    ensure!(run.ok && run.stdout.contains("Not changed"), "{run}");
    Ok(())
}

async fn reads(cluster: &Cluster, leader: &str, replica: &str) -> anyhow::Result<()> {
    // list -e: the optional columns, in pretty and tsv.
    let run = cli(cluster, leader, &["list", "-e"]).await?;
    ensure!(
        run.ok
            && run.stdout.contains(
                "| Pending restart | Pending restart reason | Scheduled restart | Tags |"
            ),
        "{run}"
    );
    let run = cli(cluster, leader, &["list", "-e", "-f", "tsv"]).await?;
    let header = run.stdout.lines().next().unwrap_or_default().to_owned();
    ensure!(
        header
            == "Cluster\tMember\tHost\tRole\tState\tTL\tReceive LSN\tReceive Lag\tReplay LSN\t\
                Replay Lag\tPending restart\tPending restart reason\tScheduled restart\tTags",
        "{run}"
    );

    // history --format json: patronictl's dicts; one line per switchover.
    let run = cli(cluster, leader, &["history", "--format", "json"]).await?;
    ensure!(run.ok, "{run}");
    let lines: Value = serde_json::from_str(&run.stdout).with_context(|| format!("{run}"))?;
    let first = lines.get(0).with_context(|| format!("no history: {run}"))?;
    ensure!(
        first["TL"] == json!(1)
            && first["LSN"].is_u64()
            && first["New Leader"] == json!(leader)
            && first.get("Reason").is_some()
            && first.get("Timestamp").is_some(),
        "{run}"
    );

    // dsn: the leader's by default, a named member's with -m.
    let run = cli(cluster, leader, &["dsn"]).await?;
    let leader_port = cluster.node(leader).config.pg_port;
    ensure!(
        run.ok
            && run
                .stdout
                .trim_end()
                .ends_with(&format!("port={leader_port}")),
        "{run}"
    );
    ensure!(run.stdout.starts_with("host="), "{run}");
    let run = cli(cluster, leader, &["dsn", "-m", replica]).await?;
    let replica_port = cluster.node(replica).config.pg_port;
    ensure!(
        run.ok
            && run
                .stdout
                .trim_end()
                .ends_with(&format!("port={replica_port}")),
        "{run}"
    );

    // query: the leader by default, a replica with -r replica.
    let (user, password) = cluster.node(leader).config.auth.superuser.clone();
    let env = [("PGPASSWORD", password.as_str())];
    let sql = "SELECT pg_is_in_recovery() AS recovery, inet_server_port() AS port";
    for (role, recovery, port) in [("leader", "f", leader_port), ("replica", "t", replica_port)] {
        let args = [
            "query", "-U", &user, "-d", "postgres", "--format", "json", "-r", role, "-c", sql,
        ];
        let run = cli_env(cluster, leader, &args, &env).await?;
        ensure!(run.ok, "{run}");
        let rows: Value = serde_json::from_str(&run.stdout).with_context(|| format!("{run}"))?;
        ensure!(
            rows == json!([{"recovery": recovery, "port": port.to_string()}]),
            "{role}: {run}"
        );
    }
    let run = cli_env(
        cluster,
        leader,
        &["query", "-U", &user, "-d", "postgres", "-c", "SELECT 1/0"],
        &env,
    )
    .await?;
    ensure!(
        !run.ok && run.stdout.contains("ERROR, SQLSTATE: 22012"),
        "{run}"
    );

    // topology: the leader, then the replica under it.
    let run = cli(cluster, leader, &["topology"]).await?;
    let rows: Vec<&str> = run.stdout.lines().filter(|l| l.starts_with("| ")).collect();
    ensure!(
        run.ok
            && rows.len() == 3
            && rows[1].starts_with(&format!("| {leader} "))
            && rows[2].starts_with(&format!("| + {replica} ")),
        "{run}"
    );
    Ok(())
}

async fn flush_switchover(cluster: &Cluster, leader: &str, replica: &str) -> anyhow::Result<()> {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 3600;
    let at = iso8601_utc(unix)?;
    cluster.cli_switchover(leader, replica, Some(&at)).await?;
    let kv = cluster
        .etcd()
        .get(&cluster.key("failover"))
        .await?
        .context("no failover key")?;
    ensure!(kv.value.contains("scheduled_at"), "{kv:?}");
    let run = cli(cluster, leader, &["list"]).await?;
    ensure!(run.stdout.contains(" Switchover scheduled at: "), "{run}");
    let run = cli(cluster, leader, &["flush", "batman", "switchover"]).await?;
    ensure!(run.ok && run.stdout.starts_with("Success: "), "{run}");
    let kv = cluster.etcd().get(&cluster.key("failover")).await?;
    ensure!(
        kv.as_ref()
            .is_none_or(|kv| !kv.value.contains("scheduled_at")),
        "the scheduled switchover is still there: {kv:?}"
    );
    let run = cli(cluster, leader, &["flush", "batman", "switchover"]).await?;
    ensure!(
        run.ok && run.stdout.contains("No pending scheduled switchover"),
        "{run}"
    );
    Ok(())
}

/// The agents were started with `log: {type: json}`: their lines are JSON objects with
/// Patroni's default format fields.
fn json_log_lines(cluster: &Cluster, name: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&cluster.node(name).log_path)?;
    let parsed: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.is_object())
        .collect();
    ensure!(parsed.len() >= 3, "few JSON lines in {name}'s log:\n{text}");
    for v in &parsed {
        let keys: Vec<&String> = v
            .as_object()
            .map(|o| o.keys().collect())
            .unwrap_or_default();
        ensure!(
            keys == ["asctime", "levelname", "message"],
            "unexpected keys in {v}"
        );
    }
    ensure!(
        parsed.iter().any(|v| v["levelname"] == json!("INFO")),
        "no INFO line: {text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patronictl_verbs_against_a_real_cluster() -> anyhow::Result<()> {
    let tools = tools_or_skip!("patronictl_verbs_against_a_real_cluster");
    let mut spec = ClusterSpec::new(2);
    spec.haproxy = None;
    spec.extra_config = json!({"log": {"type": "json"}});
    let mut cluster = Cluster::start(&tools, spec).await?;
    let healthy = cluster
        .wait_healthy(scaled(Duration::from_secs(120)))
        .await?;
    let (first, second) = (healthy.leader.clone(), healthy.replicas[0].clone());
    json_log_lines(&cluster, &first)?;

    edit_config(&cluster, &first).await?;

    // A switchover gives the history a line; then the new leader is `second`.
    cluster.cli_switchover(&first, &second, None).await?;
    let healthy = cluster
        .wait_healthy(scaled(Duration::from_secs(120)))
        .await?;
    ensure!(healthy.leader == second, "{healthy:?}");
    wait_for(
        "the history key",
        scaled(Duration::from_secs(60)),
        || async {
            Ok(match cluster.etcd().get(&cluster.key("history")).await? {
                Some(kv) if kv.value.len() > 2 => Check::Done(()),
                other => Check::not_yet(format!("history {other:?}")),
            })
        },
    )
    .await?;
    // history names the member promoted: `second`.
    reads(&cluster, &second, &first).await?;

    flush_switchover(&cluster, &second, &first).await?;

    remove(&mut cluster, &second).await?;
    cluster.finish();
    Ok(())
}

async fn remove(cluster: &mut Cluster, leader: &str) -> anyhow::Result<()> {
    // Keys a prefix match without the trailing `/` would also take.
    let outside = [
        "/service/batman2/config".to_owned(),
        "/service/batman-keep".to_owned(),
        "/service/other/leader".to_owned(),
    ];
    for k in &outside {
        cluster.etcd().put(k, "{}").await?;
    }
    let prefix = cluster.key_prefix();
    let count = |cluster: &Cluster| {
        let prefix = prefix.clone();
        let etcd = cluster.etcd().client();
        async move { Ok::<usize, anyhow::Error>(etcd.get_prefix(&prefix).await?.len()) }
    };
    let before = count(cluster).await?;
    ensure!(before > 0, "no keys under {prefix}");

    // No terminal, no --force: refused.
    let run = cli(cluster, leader, &["remove", "batman"]).await?;
    ensure!(
        !run.ok && run.stderr.contains("standard input is not a terminal"),
        "{run}"
    );
    // --force while the cluster has a leader: only with the leader's name.
    let run = cli(cluster, leader, &["remove", "batman", "--force"]).await?;
    ensure!(!run.ok && run.stderr.contains("--leader"), "{run}");
    let run = cli(
        cluster,
        leader,
        &["remove", "batman", "--force", "--leader", "nobody"],
    )
    .await?;
    ensure!(
        !run.ok && run.stderr.contains("currently is healthy"),
        "{run}"
    );
    ensure!(
        count(cluster).await? > 0 && cluster.etcd().get(&cluster.key("config")).await?.is_some(),
        "keys went without confirmation"
    );

    // Agents stopped (so none writes its keys back), then removed.
    for name in cluster.names() {
        cluster.stop_agent(&name).await;
    }
    let run = cli(cluster, leader, &["remove", "batman", "--force"]).await?;
    ensure!(run.ok, "{run}");
    ensure!(
        count(cluster).await? == 0,
        "keys left under {prefix}: {:?}",
        cluster.etcd().get_prefix(&prefix).await?
    );
    for k in &outside {
        ensure!(
            cluster.etcd().get(k).await?.is_some(),
            "{k} outside the cluster's prefix was removed"
        );
    }
    Ok(())
}
