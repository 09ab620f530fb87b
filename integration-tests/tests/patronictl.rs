//! Patroni's own `patronictl` (PyPI `patroni` 4.1, in a virtualenv the harness makes) against a
//! pgbaton cluster: real etcd, PostgreSQL 15, `pgbaton agent`s and HAProxy.
//!
//! One cluster serves every step, in order; each step checks what `patronictl` printed *and*
//! its effect on the cluster (etcd keys, `/patroni`, SQL). The test skips (printing `SKIP`)
//! when a program or the virtualenv is missing, unless `PGBATON_REQUIRE_INTEGRATION=1`, which
//! makes that a failure.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use baton_integration_tests::{
    Check, Cluster, ClusterSpec, CtlOutput, Patronictl, PgTarget, Tools, ctl_config,
    patronictl_venv, scaled, simple_query, wait_for, wait_until,
};
use serde_json::{Value, json};

/// `restapi.authentication` of the agents, and `ctl.authentication` of patronictl.
const REST_USER: &str = "ctl-admin";
const REST_PASSWORD: &str = "ctl-secret";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patronictl_drives_a_pgbaton_cluster() -> anyhow::Result<()> {
    let test = "patronictl_drives_a_pgbaton_cluster";
    let Some(tools) = Tools::for_test(test)? else {
        return Ok(());
    };
    let Some(bin) = patronictl_venv(test).await? else {
        return Ok(());
    };
    let mut spec = ClusterSpec::new(3);
    spec.extra_config = json!({
        "restapi": {"authentication": {"username": REST_USER, "password": REST_PASSWORD}},
        "tags": {"zone": "it"},
    });
    let mut cluster = Cluster::start(&tools, spec).await?;
    let ctl = Patronictl::for_cluster(bin.clone(), &cluster, Some((REST_USER, REST_PASSWORD)))?;
    let healthy = cluster
        .wait_healthy(scaled(Duration::from_secs(180)))
        .await?;
    let first = healthy.leader.clone();
    let (r1, r2) = (healthy.replicas[0].clone(), healthy.replicas[1].clone());
    let scope = ctl.scope.clone();

    version(&ctl, &cluster).await.context("version")?;
    list_until(&ctl, &cluster, &first, &[&r1, &r2])
        .await
        .context("list")?;
    list_pretty(&ctl, &cluster).await.context("list (pretty)")?;
    topology(&ctl, &first, &[&r1, &r2])
        .await
        .context("topology")?;
    dsn(&ctl, &cluster, &first, &r1).await.context("dsn")?;
    query(&ctl, &cluster, &r1).await.context("query")?;
    show_config(&ctl, &cluster).await.context("show-config")?;
    edit_config(&ctl, &cluster).await.context("edit-config")?;
    pause_resume(&ctl, &cluster, &bin)
        .await
        .context("pause/resume")?;

    // Switchover then failover while a client writes through HAProxy: no acknowledged commit
    // may be lost.
    let via = cluster.via_haproxy_primary();
    simple_query(
        &via.connect().await?,
        "CREATE TABLE acked (id int PRIMARY KEY)",
    )
    .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_until(via.clone(), stop.clone()));
    let tl_before = timeline(&cluster, &first).await?;
    switchover(&ctl, &cluster, &first, &r1)
        .await
        .context("switchover")?;
    failover(&ctl, &cluster, &r1, &r2)
        .await
        .context("failover")?;
    stop.store(true, Ordering::SeqCst);
    let acked = writer.await?;
    ensure!(
        acked.len() > 10,
        "the writer got only {} commits acknowledged",
        acked.len()
    );
    let lost = lost_commits(&cluster.node(&r2).pg(), &acked).await?;
    eprintln!(
        "{} commits acknowledged during switchover and failover, {} lost",
        acked.len(),
        lost.len()
    );
    ensure!(lost.is_empty(), "acknowledged commits lost: {lost:?}");

    history(&ctl, &cluster, tl_before, &r1, &r2)
        .await
        .context("history")?;
    scheduled_switchover_and_flush(&ctl, &cluster, &r2, &first)
        .await
        .context("switchover --scheduled, flush")?;
    reinit(&ctl, &cluster, &scope, &r2, &first)
        .await
        .context("reinit")?;
    restart_and_reload(&ctl, &cluster, &scope, &first)
        .await
        .context("restart/reload")?;
    failover_of_a_dead_leader_while_paused(&ctl, &mut cluster, &r2, &first)
        .await
        .context("failover while paused")?;
    list_until(&ctl, &cluster, &first, &[&r1, &r2])
        .await
        .context("final list")?;
    cluster.finish();
    Ok(())
}

/// `version <cluster>`: patronictl's own version, then one line per member with the versions
/// its `/patroni` reports.
async fn version(ctl: &Patronictl, cluster: &Cluster) -> anyhow::Result<()> {
    let out = ctl.ok(&["version", &ctl.scope]).await?;
    ensure!(out.stdout.contains("patronictl version 4.1."), "{out}");
    for node in cluster.nodes() {
        let status = node.patroni().await?;
        let agent_version = status["patroni"]["version"]
            .as_str()
            .with_context(|| format!("{}: /patroni {status}", node.name))?;
        let line = out
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("{}: ", node.name)))
            .with_context(|| format!("no line for {}: {out}", node.name))?;
        ensure!(
            line.starts_with(&format!(
                "{}: Patroni {agent_version} PostgreSQL 15.",
                node.name
            )),
            "{line:?}"
        );
    }
    Ok(())
}

/// `list -f json` until it shows `leader` as a running Leader and each of `replicas` as a
/// streaming Replica on the leader's timeline, with `host:port` from the members' `conn_url`.
async fn list_until(
    ctl: &Patronictl,
    cluster: &Cluster,
    leader: &str,
    replicas: &[&str],
) -> anyhow::Result<()> {
    wait_for(
        &format!("patronictl list: {leader} leads {replicas:?}"),
        scaled(Duration::from_secs(60)),
        || async {
            let rows = ctl.list().await?;
            Ok(check_list(cluster, &rows, leader, replicas))
        },
    )
    .await
}

fn check_list(cluster: &Cluster, rows: &[Value], leader: &str, replicas: &[&str]) -> Check<()> {
    let s = |m: &Value, k: &str| m.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    if rows.len() != replicas.len() + 1 {
        return Check::not_yet(format!("{} rows: {rows:?}", rows.len()));
    }
    let leader_tl = rows
        .iter()
        .find(|m| s(m, "Member") == leader)
        .and_then(|m| m.get("TL").and_then(Value::as_i64));
    for m in rows {
        let name = s(m, "Member");
        let Some(node) = cluster.nodes().iter().find(|n| n.name == name) else {
            return Check::not_yet(format!("unknown member in {m}"));
        };
        let host = format!("127.0.0.1:{}", node.config.pg_port);
        let (role, state) = (s(m, "Role"), s(m, "State"));
        let ok = s(m, "Cluster") == cluster.spec().scope
            && s(m, "Host") == host
            && m.get("Tags") == Some(&json!({"zone": "it"}))
            && leader_tl.is_some()
            && m.get("TL").and_then(Value::as_i64) == leader_tl
            && if name == leader {
                role == "Leader" && state == "running"
            } else {
                replicas.contains(&name.as_str())
                    && role == "Replica"
                    && state == "streaming"
                    && m.get("Receive LSN").and_then(Value::as_str).is_some()
                    && m.get("Replay LSN").and_then(Value::as_str).is_some()
            };
        if !ok {
            return Check::not_yet(format!("row {m}"));
        }
    }
    Check::Done(())
}

/// `list` (pretty): the title carries the cluster name and the system identifier from the
/// `initialize` key.
async fn list_pretty(ctl: &Patronictl, cluster: &Cluster) -> anyhow::Result<()> {
    let sysid = cluster
        .etcd()
        .get(&cluster.key("initialize"))
        .await?
        .context("no initialize key")?
        .value;
    let out = ctl.ok(&["list"]).await?;
    let title = format!("Cluster: {} ({sysid})", ctl.scope);
    ensure!(out.stdout.contains(&title), "no {title:?} in {out}");
    ensure!(!out.stdout.contains("Maintenance mode"), "{out}");
    Ok(())
}

/// `topology`: the leader first, its replicas below it, indented with `+ `.
async fn topology(ctl: &Patronictl, leader: &str, replicas: &[&str]) -> anyhow::Result<()> {
    let out = ctl.ok(&["topology"]).await?;
    let members: Vec<String> = out
        .stdout
        .lines()
        .filter_map(|l| Some(l.strip_prefix("| ")?.split(" |").next()?.trim().to_owned()))
        .filter(|m| !m.is_empty() && m != "Member")
        .collect();
    ensure!(
        members.len() == 1 + replicas.len(),
        "members {members:?}: {out}"
    );
    ensure!(members[0] == leader, "first row {members:?}: {out}");
    for r in replicas {
        ensure!(
            members.contains(&format!("+ {r}")),
            "{r} not under the leader: {out}"
        );
    }
    Ok(())
}

/// `dsn`: the leader's address by default, a named member's with `-m`, a replica's with
/// `-r replica`, all from the members' `conn_url`.
async fn dsn(
    ctl: &Patronictl,
    cluster: &Cluster,
    leader: &str,
    replica: &str,
) -> anyhow::Result<()> {
    let port = |n: &str| cluster.node(n).config.pg_port;
    let out = ctl.ok(&["dsn"]).await?;
    ensure!(
        out.stdout.trim() == format!("host=127.0.0.1 port={}", port(leader)),
        "{out}"
    );
    let out = ctl.ok(&["dsn", "-m", replica]).await?;
    ensure!(
        out.stdout.trim() == format!("host=127.0.0.1 port={}", port(replica)),
        "{out}"
    );
    let out = ctl.ok(&["dsn", "-r", "replica"]).await?;
    let replica_dsns: Vec<String> = cluster
        .names()
        .iter()
        .filter(|n| *n != leader)
        .map(|n| format!("host=127.0.0.1 port={}", port(n)))
        .collect();
    ensure!(
        replica_dsns.contains(&out.stdout.trim().to_owned()),
        "{out}"
    );
    Ok(())
}

/// `query`: SQL on the leader (the default) and on a named replica, connecting where the
/// members' `conn_url` says.
async fn query(ctl: &Patronictl, cluster: &Cluster, replica: &str) -> anyhow::Result<()> {
    let sql = "SELECT pg_is_in_recovery() AS recovery, inet_server_port() AS port";
    let env = [(
        "PGPASSWORD",
        cluster.node(replica).config.auth.superuser.1.as_str(),
    )];
    let user = cluster.node(replica).config.auth.superuser.0.clone();
    for (member, recovery, port) in [
        (None, false, leader_port(cluster).await?),
        (Some(replica), true, cluster.node(replica).config.pg_port),
    ] {
        let mut args = vec!["query", "-U", &user, "--format", "json", "-c", sql];
        if let Some(m) = member {
            args.extend(["-m", m]);
        }
        let out = ctl.run_env(&args, &env).await?;
        ensure!(out.success, "{out}");
        let rows: Value = serde_json::from_str(&out.stdout).with_context(|| format!("{out}"))?;
        ensure!(
            rows == json!([{"recovery": recovery, "port": port}]),
            "{member:?}: {out}"
        );
    }
    Ok(())
}

async fn leader_port(cluster: &Cluster) -> anyhow::Result<u16> {
    let leader = cluster.leader().await?.context("no leader")?;
    Ok(cluster.node(&leader).config.pg_port)
}

/// The `config` key, decoded.
async fn dcs_config(cluster: &Cluster) -> anyhow::Result<Value> {
    let kv = cluster
        .etcd()
        .get(&cluster.key("config"))
        .await?
        .context("no config key")?;
    serde_json::from_str(&kv.value).with_context(|| format!("config key {:?}", kv.value))
}

/// `show-config`: the dynamic configuration in the `config` key, as YAML.
async fn show_config(ctl: &Patronictl, cluster: &Cluster) -> anyhow::Result<()> {
    let shown = ctl.show_config().await?;
    let stored = dcs_config(cluster).await?;
    ensure!(
        shown == stored,
        "show-config {shown} != config key {stored}"
    );
    let timing = cluster.spec().timing;
    ensure!(
        shown["ttl"] == timing.ttl
            && shown["loop_wait"] == timing.loop_wait
            && shown["retry_timeout"] == timing.retry_timeout
            && shown["postgresql"]["use_pg_rewind"] == true,
        "{shown}"
    );
    Ok(())
}

/// `edit-config -s ... -p ... --force`: patronictl writes the `config` key itself (with a
/// compare-and-swap on its revision); every agent serves the new configuration on `/config`.
async fn edit_config(ctl: &Patronictl, cluster: &Cluster) -> anyhow::Result<()> {
    let out = ctl
        .ok(&[
            "edit-config",
            "--force",
            "--quiet",
            "-s",
            "maximum_lag_on_failover=2097152",
            "-p",
            "work_mem=7MB",
        ])
        .await?;
    ensure!(out.stdout.contains("Configuration changed"), "{out}");
    let stored = dcs_config(cluster).await?;
    ensure!(
        stored["maximum_lag_on_failover"] == 2097152
            && stored["postgresql"]["parameters"]["work_mem"] == "7MB"
            && stored["ttl"] == cluster.spec().timing.ttl,
        "config key after edit-config: {stored}"
    );
    for node in cluster.nodes() {
        wait_until(
            &format!("{} serves the edited /config", node.name),
            scaled(Duration::from_secs(30)),
            || async {
                let (code, body) = node.http_get("/config").await?;
                let v: Value = serde_json::from_str(&body)?;
                Ok(code == 200 && v == stored)
            },
        )
        .await?;
    }
    let shown = ctl.show_config().await?;
    ensure!(shown == stored, "show-config {shown} != {stored}");
    // The same edit again changes nothing.
    let out = ctl
        .ok(&[
            "edit-config",
            "--force",
            "-s",
            "maximum_lag_on_failover=2097152",
        ])
        .await?;
    ensure!(out.stdout.contains("Not changed"), "{out}");
    Ok(())
}

/// `pause --wait` / `resume --wait` (`PATCH /config` on the leader): the `config` key and
/// every member key carry `pause`, `/patroni` reports it, `list` prints "Maintenance mode:
/// on". Without the REST credentials `pause` gets a 401 and changes nothing.
async fn pause_resume(
    ctl: &Patronictl,
    cluster: &Cluster,
    bin: &std::path::Path,
) -> anyhow::Result<()> {
    let config_path = cluster.dir().join("patronictl-noauth.yml");
    let noauth = ctl_config(
        &cluster.spec().scope,
        &cluster.spec().namespace,
        &cluster.etcd().hosts(),
        None,
    );
    std::fs::write(&config_path, serde_yaml::to_string(&noauth)?)?;
    let anonymous = Patronictl {
        bin: bin.to_owned(),
        config_path,
        scope: ctl.scope.clone(),
    };
    let out = anonymous.run(&["pause"]).await?;
    ensure!(
        out.stdout
            .contains("Failed: pause cluster management status code=401"),
        "{out}"
    );
    ensure!(
        dcs_config(cluster).await?.get("pause").is_none(),
        "pause without credentials"
    );
    // The refusal is logged with the client's address; the accepted request with its user.
    let logged = |needle: String| {
        cluster
            .nodes()
            .iter()
            .any(|n| std::fs::read_to_string(&n.log_path).is_ok_and(|log| log.contains(&needle)))
    };
    ensure!(
        logged("REST API: refused PATCH /config from 127.0.0.1: no auth header received".into()),
        "no log line for the refused login"
    );

    let out = ctl.ok(&["pause", "--wait"]).await?;
    ensure!(
        out.stdout.contains("Success: cluster management is paused"),
        "{out}"
    );
    ensure!(
        logged(format!(
            "REST API: accepted PATCH /config (\"pause\") from user {REST_USER} at 127.0.0.1"
        )),
        "no log line for the accepted PATCH /config"
    );
    ensure!(
        dcs_config(cluster).await?["pause"] == true,
        "config key lacks pause"
    );
    for node in cluster.nodes() {
        let kv = cluster
            .etcd()
            .get(&cluster.key(&format!("members/{}", node.name)))
            .await?
            .context("member key")?;
        let member: Value = serde_json::from_str(&kv.value)?;
        ensure!(
            member["pause"] == true,
            "{}: member key {member}",
            node.name
        );
        ensure!(
            node.patroni().await?["pause"] == true,
            "{}: /patroni",
            node.name
        );
    }
    let out = ctl.ok(&["list"]).await?;
    ensure!(out.stdout.contains("Maintenance mode: on"), "{out}");
    let out = ctl.run(&["pause"]).await?;
    ensure!(
        !out.success && out.text().contains("Cluster is already paused"),
        "{out}"
    );

    let out = ctl.ok(&["resume", "--wait"]).await?;
    ensure!(
        out.stdout
            .contains("Success: cluster management is resumed"),
        "{out}"
    );
    ensure!(
        dcs_config(cluster).await?.get("pause").is_none(),
        "config key keeps pause"
    );
    for node in cluster.nodes() {
        ensure!(
            node.patroni().await?.get("pause").is_none(),
            "{}: /patroni",
            node.name
        );
    }
    let out = ctl.ok(&["list"]).await?;
    ensure!(!out.stdout.contains("Maintenance mode"), "{out}");
    Ok(())
}

/// The manual failover of Patroni's maintenance mode: the cluster is paused, the leader's host
/// dies, its leader key expires and nobody takes over; `failover --candidate C --force` (sent
/// to `C`, as there is no leader) promotes `C`; after `resume` the old leader's host boots
/// and rejoins as a replica of `C`.
async fn failover_of_a_dead_leader_while_paused(
    ctl: &Patronictl,
    cluster: &mut Cluster,
    leader: &str,
    candidate: &str,
) -> anyhow::Result<()> {
    let out = ctl.ok(&["pause", "--wait"]).await?;
    ensure!(
        out.stdout.contains("Success: cluster management is paused"),
        "{out}"
    );
    cluster.kill_host(leader)?;
    let ttl = cluster.spec().timing.ttl();
    wait_for(
        "the dead leader's key to expire",
        scaled(ttl * 2 + Duration::from_secs(10)),
        || async {
            Ok(match cluster.leader().await? {
                None => Check::Done(()),
                Some(l) if l == leader => Check::not_yet("the key is still there"),
                Some(l) => bail!("{l} took the leader key while the cluster was paused"),
            })
        },
    )
    .await?;
    let out = ctl
        .ok(&["failover", "--candidate", candidate, "--force"])
        .await?;
    through_the_api(
        &out,
        &format!("Successfully failed over to \"{candidate}\""),
    )?;
    let new = cluster
        .wait_new_leader(leader, scaled(Duration::from_secs(60)))
        .await?;
    ensure!(new == candidate, "{new} leads, not {candidate}");
    let out = ctl.ok(&["resume", "--wait"]).await?;
    ensure!(
        out.stdout
            .contains("Success: cluster management is resumed"),
        "{out}"
    );
    cluster.start_agent(leader)?;
    let now = cluster
        .wait_healthy(scaled(Duration::from_secs(180)))
        .await
        .context("the old leader rejoins")?;
    ensure!(now.leader == candidate, "{now:?}");
    Ok(())
}

/// patronictl asked the REST API and it succeeded: no fallback to writing the DCS directly.
fn through_the_api(out: &CtlOutput, success: &str) -> anyhow::Result<()> {
    ensure!(out.stdout.contains(success), "no {success:?} in {out}");
    ensure!(!out.text().contains("falling back to DCS"), "{out}");
    Ok(())
}

/// `switchover --leader A --candidate B --force` (`POST /switchover` on the leader).
async fn switchover(
    ctl: &Patronictl,
    cluster: &Cluster,
    from: &str,
    to: &str,
) -> anyhow::Result<()> {
    let out = ctl
        .ok(&["switchover", "--leader", from, "--candidate", to, "--force"])
        .await?;
    through_the_api(&out, &format!("Successfully switched over to \"{to}\""))?;
    let now = cluster
        .wait_healthy(scaled(Duration::from_secs(120)))
        .await?;
    ensure!(
        now.leader == to,
        "leader is {} after the switchover",
        now.leader
    );
    Ok(())
}

/// `failover --candidate C --force` (`POST /failover` on the leader, without `leader`).
async fn failover(ctl: &Patronictl, cluster: &Cluster, from: &str, to: &str) -> anyhow::Result<()> {
    let out = ctl.ok(&["failover", "--candidate", to, "--force"]).await?;
    through_the_api(&out, &format!("Successfully failed over to \"{to}\""))?;
    let now = cluster
        .wait_healthy(scaled(Duration::from_secs(120)))
        .await?;
    ensure!(
        now.leader == to && now.replicas.contains(&from.to_owned()),
        "after the failover: {now:?}"
    );
    Ok(())
}

/// `history -f json`: one line per promotion, from the `history` key, the last two naming
/// the switchover's and the failover's new leaders.
async fn history(
    ctl: &Patronictl,
    cluster: &Cluster,
    tl_before: i64,
    switched_to: &str,
    failed_to: &str,
) -> anyhow::Result<()> {
    let tl_now = timeline(cluster, failed_to).await?;
    ensure!(tl_now == tl_before + 2, "timeline {tl_before} -> {tl_now}");
    // The new leader writes the line for its own promotion in a later cycle.
    let lines = wait_for(
        "history with both promotions",
        scaled(Duration::from_secs(30)),
        || async {
            let lines = ctl.history().await?;
            Ok(match lines.last().and_then(|l| l["TL"].as_i64()) {
                Some(tl) if tl == tl_now - 1 => Check::Done(lines),
                _ => Check::not_yet(format!("{lines:?}")),
            })
        },
    )
    .await?;
    let tls: Vec<i64> = lines.iter().filter_map(|l| l["TL"].as_i64()).collect();
    ensure!(
        tls.len() == lines.len() && tls.windows(2).all(|w| w[0] < w[1]),
        "{lines:?}"
    );
    let stored: Value = serde_json::from_str(
        &cluster
            .etcd()
            .get(&cluster.key("history"))
            .await?
            .context("no history key")?
            .value,
    )?;
    ensure!(
        stored.as_array().map(Vec::len) == Some(lines.len()),
        "history {lines:?} vs key {stored}"
    );
    let n = lines.len();
    ensure!(n >= 2, "{lines:?}");
    for (line, tl, leader) in [
        (&lines[n - 2], tl_now - 2, switched_to),
        (&lines[n - 1], tl_now - 1, failed_to),
    ] {
        ensure!(
            line["TL"] == tl
                && line["LSN"].as_i64().is_some_and(|lsn| lsn > 0)
                && line["New Leader"] == leader
                && line["Timestamp"].as_str().is_some_and(|t| !t.is_empty()),
            "history line {line}"
        );
    }
    Ok(())
}

/// `switchover --scheduled <in an hour>` writes the `failover` key with `scheduled_at`, `list`
/// announces it, `flush <cluster> switchover` (`DELETE /switchover`) removes it.
async fn scheduled_switchover_and_flush(
    ctl: &Patronictl,
    cluster: &Cluster,
    leader: &str,
    candidate: &str,
) -> anyhow::Result<()> {
    let at = iso8601_in_an_hour()?;
    let out = ctl
        .ok(&[
            "switchover",
            "--leader",
            leader,
            "--candidate",
            candidate,
            "--scheduled",
            &at,
            "--force",
        ])
        .await?;
    through_the_api(&out, "Switchover scheduled")?;
    let key = cluster
        .etcd()
        .get(&cluster.key("failover"))
        .await?
        .context("no failover key")?;
    let failover: Value = serde_json::from_str(&key.value)?;
    ensure!(
        failover["leader"] == leader
            && failover["member"] == candidate
            && failover["scheduled_at"].is_string(),
        "failover key {failover}"
    );
    let out = ctl.ok(&["list"]).await?;
    ensure!(out.stdout.contains("Switchover scheduled at:"), "{out}");
    let out = ctl
        .ok(&["flush", &ctl.scope, "switchover", "--force"])
        .await?;
    ensure!(out.stdout.contains("Success: "), "{out}");
    ensure!(!out.text().contains("Failing over to DCS"), "{out}");
    let key = cluster.etcd().get(&cluster.key("failover")).await?;
    ensure!(
        key.as_ref()
            .is_none_or(|kv| kv.value.is_empty() || kv.value == "{}"),
        "failover key after flush: {key:?}"
    );
    let out = ctl.ok(&["list"]).await?;
    ensure!(!out.stdout.contains("Switchover scheduled"), "{out}");
    ensure!(
        cluster.leader().await?.as_deref() == Some(leader),
        "the leader moved"
    );
    Ok(())
}

/// `reinit <cluster> <replica> --force --wait` (`POST /reinitialize`): patronictl waits until
/// the member is no longer "creating replica"; by then its data directory has been made
/// anew (a file left in it is gone) and it streams again. The leader is refused.
async fn reinit(
    ctl: &Patronictl,
    cluster: &Cluster,
    scope: &str,
    leader: &str,
    replica: &str,
) -> anyhow::Result<()> {
    let out = ctl.run(&["reinit", scope, leader, "--force"]).await?;
    ensure!(
        !out.success && out.text().contains("No replica among provided members"),
        "{out}"
    );
    let marker = cluster.node(replica).config.data_dir.join("reinit-marker");
    std::fs::write(&marker, "left by the test")?;
    let out = ctl
        .ok(&["reinit", scope, replica, "--force", "--wait"])
        .await?;
    ensure!(
        out.stdout
            .contains(&format!("Success: reinitialize for member {replica}"))
            && out
                .stdout
                .contains(&format!("Reinitialize is completed on: {replica}")),
        "{out}"
    );
    ensure!(!marker.exists(), "the data directory was not made anew");
    cluster
        .wait_healthy(scaled(Duration::from_secs(120)))
        .await
        .context("after reinit")?;
    Ok(())
}

/// `patronictl restart` restarts the member's PostgreSQL (answered when it is back: a new
/// postmaster); `POST /reload` is answered as Patroni answers it (202): the agent re-reads
/// its file and PostgreSQL is not restarted.
async fn restart_and_reload(
    ctl: &Patronictl,
    cluster: &Cluster,
    scope: &str,
    member: &str,
) -> anyhow::Result<()> {
    let before = cluster.node(member).postmaster_pid();
    let out = ctl.ok(&["restart", scope, member, "--force"]).await?;
    ensure!(
        out.stdout
            .contains(&format!("Success: restart on member {member}")),
        "{out}"
    );
    let pid = wait_for(
        &format!("{member} restarted"),
        scaled(Duration::from_secs(60)),
        || async {
            let pid = cluster.node(member).postmaster_pid();
            let running = cluster
                .node(member)
                .patroni()
                .await
                .ok()
                .is_some_and(|s| s["state"] == "running");
            Ok(if running && pid.is_some() && pid != before {
                Check::Done(pid)
            } else {
                Check::not_yet(format!(
                    "pid {pid:?} (before {before:?}), running {running}"
                ))
            })
        },
    )
    .await?;
    let out = ctl.ok(&["reload", scope, member, "--force"]).await?;
    ensure!(
        out.stdout
            .contains(&format!("Reload request received for member {member}")),
        "{out}"
    );
    ensure!(
        cluster.node(member).postmaster_pid() == pid,
        "PostgreSQL of {member} was restarted by a reload"
    );
    Ok(())
}

/// The timeline `/patroni` reports for a member.
async fn timeline(cluster: &Cluster, name: &str) -> anyhow::Result<i64> {
    cluster.node(name).patroni().await?["timeline"]
        .as_i64()
        .with_context(|| format!("{name}: no timeline in /patroni"))
}

/// One insert per transaction through `via` until `stop`; the ids whose commit was
/// acknowledged.
async fn write_until(via: PgTarget, stop: Arc<AtomicBool>) -> Vec<i32> {
    let (mut acked, mut id) = (Vec::new(), 0);
    let mut client = None;
    while !stop.load(Ordering::SeqCst) {
        id += 1;
        if client.is_none() {
            client = via.connect_with_timeout(Duration::from_secs(1)).await.ok();
        }
        let Some(c) = &client else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        match tokio::time::timeout(
            Duration::from_secs(2),
            c.execute("INSERT INTO acked VALUES ($1)", &[&id]),
        )
        .await
        {
            Ok(Ok(_)) => acked.push(id),
            // Failed or unknown outcome: reconnect; the id is never reused.
            _ => client = None,
        }
    }
    acked
}

/// The acknowledged ids missing from table `acked` on `target`.
async fn lost_commits(target: &PgTarget, acked: &[i32]) -> anyhow::Result<Vec<i32>> {
    let present: BTreeSet<i32> = target
        .query("SELECT id::text FROM acked")
        .await?
        .into_iter()
        .filter_map(|r| r.first().cloned().flatten()?.parse().ok())
        .collect();
    Ok(acked
        .iter()
        .copied()
        .filter(|id| !present.contains(id))
        .collect())
}

/// An hour from now, as `YYYY-MM-DDTHH:MM:SS+00:00` (by `date`).
fn iso8601_in_an_hour() -> anyhow::Result<String> {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 3600;
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{unix}"), "+%Y-%m-%dT%H:%M:%S+00:00"])
        .output()
        .context("run date")?;
    ensure!(out.status.success(), "date failed");
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}
