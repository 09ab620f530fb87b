//! Issue 10 item 3 on real etcd, PostgreSQL and agents: `postgresql.callbacks` scripts get
//! `action role scope` at bootstrap, a switchover and a reload, with Patroni's role names; a
//! `postgresql.pre_promote` script that exits 1 keeps the only candidate from promoting (its
//! member key says why), and once it exits 0 the member promotes.
//!
//! Every test skips (printing a `SKIP` line) when a program it needs is missing, unless
//! `PGBATON_REQUIRE_INTEGRATION=1`. See docs/testing.md.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, ensure};
use baton_integration_tests::tools_or_skip;
use baton_integration_tests::{Check, Cluster, ClusterSpec, scaled, wait_for};
use serde_json::{Value, json};

fn soon() -> Duration {
    scaled(Duration::from_secs(90))
}

/// The lines a node's callback log holds.
fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Wait until the callback log at `path` holds exactly `want`.
async fn wait_calls(
    cluster: &Cluster,
    name: &str,
    path: &Path,
    want: &[&str],
) -> anyhow::Result<()> {
    wait_for(&format!("{name}: callbacks {want:?}"), soon(), || async {
        cluster.check_agents_alive()?;
        let got = lines(path);
        Ok(if got == want {
            Check::Done(())
        } else {
            Check::not_yet(format!("callbacks so far: {got:?}"))
        })
    })
    .await
}

/// `method url` with a JSON body; an error unless it answers 2xx.
async fn send(
    method: reqwest::Method,
    url: &str,
    body: &Value,
    timeout: Duration,
) -> anyhow::Result<()> {
    let resp = reqwest::Client::new()
        .request(method.clone(), url)
        .json(body)
        .timeout(scaled(timeout))
        .send()
        .await
        .with_context(|| format!("{method} {url}"))?;
    ensure!(
        resp.status().is_success(),
        "{method} {url}: {}",
        resp.status()
    );
    Ok(())
}

/// Node `name`'s member key, decoded (`null` when absent).
async fn member(cluster: &Cluster, name: &str) -> anyhow::Result<Value> {
    let key = cluster.key(&format!("members/{name}"));
    Ok(match cluster.etcd().get(&key).await? {
        Some(kv) => serde_json::from_str(&kv.value)?,
        None => Value::Null,
    })
}

/// Issue 10.3: the callback sequence on each node across bootstrap, a switchover and a reload:
/// the leader starts as `primary`, the replica as `replica`; on the switchover the old
/// primary reports `on_stop demoted` then `on_role_change replica` (Patroni's demotion), the
/// candidate `on_role_change primary`; a reload of PostgreSQL's files `on_reload` on both; a
/// restart of the leader one `on_restart`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callbacks_see_bootstrap_switchover_and_reload() -> anyhow::Result<()> {
    let tools = tools_or_skip!("callbacks_see_bootstrap_switchover_and_reload");
    let mut spec = ClusterSpec::new(2);
    spec.haproxy = None;
    spec.start_agents = false;
    let mut cluster = Cluster::start(&tools, spec).await?;
    // The script's first argument is the file it appends the callback's arguments to.
    let record = cluster.script("record.sh", "log=$1\nshift\necho \"$*\" >> \"$log\"")?;
    let mut logs = Vec::new();
    for n in cluster.names() {
        let log = cluster.node(&n).config.dir.join("callbacks.log");
        let cmd = format!("{} {}", record.display(), log.display());
        let callbacks: serde_json::Map<String, Value> = [
            "on_start",
            "on_stop",
            "on_restart",
            "on_reload",
            "on_role_change",
        ]
        .iter()
        .map(|k| ((*k).to_owned(), json!(cmd)))
        .collect();
        cluster.update_config(&n, &json!({ "postgresql": { "callbacks": callbacks } }))?;
        logs.push((n, log));
    }
    // node1 first, so that it is the one that creates the cluster.
    cluster.start_agent("node1")?;
    wait_for("node1 leads", soon(), || async {
        Ok(match cluster.leader().await? {
            Some(l) if l == "node1" => Check::Done(()),
            other => Check::not_yet(format!("leader: {other:?}")),
        })
    })
    .await?;
    cluster.start_agent("node2")?;
    cluster
        .wait_healthy(scaled(Duration::from_secs(180)))
        .await?;
    let (n1, log1) = (&logs[0].0, &logs[0].1);
    let (n2, log2) = (&logs[1].0, &logs[1].1);
    wait_calls(&cluster, n1, log1, &["on_start primary batman"]).await?;
    wait_calls(&cluster, n2, log2, &["on_start replica batman"]).await?;

    cluster.cli_switchover(n1, n2, None).await?;
    cluster
        .wait_new_leader(n1, scaled(Duration::from_secs(120)))
        .await?;
    wait_calls(
        &cluster,
        n1,
        log1,
        &[
            "on_start primary batman",
            "on_stop demoted batman",
            "on_role_change replica batman",
        ],
    )
    .await?;
    wait_calls(
        &cluster,
        n2,
        log2,
        &["on_start replica batman", "on_role_change primary batman"],
    )
    .await?;

    // A reloadable parameter through PATCH /config: both reload PostgreSQL's files.
    let patch = json!({ "postgresql": { "parameters": { "work_mem": "9MB" } } });
    let url = format!("{}/config", cluster.node(n2).rest_base());
    send(
        reqwest::Method::PATCH,
        &url,
        &patch,
        Duration::from_secs(10),
    )
    .await?;
    wait_calls(
        &cluster,
        n1,
        log1,
        &[
            "on_start primary batman",
            "on_stop demoted batman",
            "on_role_change replica batman",
            "on_reload replica batman",
        ],
    )
    .await?;
    wait_calls(
        &cluster,
        n2,
        log2,
        &[
            "on_start replica batman",
            "on_role_change primary batman",
            "on_reload primary batman",
        ],
    )
    .await?;

    // A restart through the REST API (the leader keeps its key): one on_restart, as Patroni
    // calls it, not on_stop + on_start.
    let url = format!("{}/restart", cluster.node(n2).rest_base());
    send(
        reqwest::Method::POST,
        &url,
        &json!({}),
        Duration::from_secs(120),
    )
    .await?;
    wait_calls(
        &cluster,
        n2,
        log2,
        &[
            "on_start replica batman",
            "on_role_change primary batman",
            "on_reload primary batman",
            "on_restart primary batman",
        ],
    )
    .await?;
    ensure!(
        cluster.leader().await?.as_deref() == Some(n2.as_str()),
        "the leader's restart kept its key"
    );
    cluster.check_agents_alive()?;
    cluster.finish();
    Ok(())
}

/// Issue 10.3: the only candidate's `pre_promote` exits 1: it does not promote, gives the
/// leader key up and its member key's reason says why; once the script exits 0 it promotes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_pre_promote_blocks_the_promotion() -> anyhow::Result<()> {
    let tools = tools_or_skip!("a_failing_pre_promote_blocks_the_promotion");
    let mut spec = ClusterSpec::new(2);
    spec.haproxy = None;
    spec.start_agents = false;
    let mut cluster = Cluster::start(&tools, spec).await?;
    // Exits with the number in the file given as its first argument; counts its calls.
    let dir = cluster.node("node2").config.dir.clone();
    let rc = dir.join("pre_promote.rc");
    let calls = dir.join("pre_promote.calls");
    std::fs::write(&rc, "1\n")?;
    std::fs::set_permissions(&rc, std::fs::Permissions::from_mode(0o666))?;
    let pre = cluster.script("pre_promote.sh",
        "echo called >> \"$2\"\necho \"fencing refused (rc $(cat \"$1\"))\" >&2\nexit $(cat \"$1\")",
    )?;
    cluster.update_config(
        "node2",
        &json!({ "postgresql": {
            "pre_promote": format!("{} {} {}", pre.display(), rc.display(), calls.display())
        } }),
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
    cluster
        .wait_healthy(scaled(Duration::from_secs(180)))
        .await?;
    ensure!(
        lines(&calls).is_empty(),
        "pre_promote ran without a promotion"
    );

    // node1 goes away cleanly (its key released): node2 is the only candidate.
    cluster.stop_agent("node1").await;
    let reason = wait_for("node2 says why it did not promote", soon(), || async {
        let m = member(&cluster, "node2").await?;
        let reason = m["pgbaton_reason"].as_str().unwrap_or_default().to_owned();
        Ok(
            if reason.contains("Promotion cancelled because the pre-promote script failed")
                && !lines(&calls).is_empty()
            {
                Check::Done(reason)
            } else {
                Check::not_yet(format!("node2's member key: {m}"))
            },
        )
    })
    .await?;
    ensure!(
        reason.contains("exit status 1: fencing refused (rc 1)"),
        "the reason does not carry the script's status and output: {reason}"
    );
    let in_recovery = cluster
        .sql("node2", "SELECT pg_catalog.pg_is_in_recovery()::text")
        .await?;
    ensure!(
        in_recovery == vec![vec![Some("true".to_owned())]],
        "node2 was promoted although pre_promote failed: {in_recovery:?}"
    );
    ensure!(
        cluster.leader().await? != Some("node2".to_owned())
            || member(&cluster, "node2").await?["role"] != json!("primary"),
        "node2 leads as a primary although pre_promote failed"
    );

    std::fs::write(&rc, "0\n")?;
    wait_for(
        "node2 promotes once pre_promote succeeds",
        soon(),
        || async {
            cluster.check_agents_alive()?;
            let leader = cluster.leader().await?;
            let rows = cluster
                .sql("node2", "SELECT pg_catalog.pg_is_in_recovery()::text")
                .await
                .unwrap_or_default();
            Ok(
                if leader.as_deref() == Some("node2")
                    && rows == vec![vec![Some("false".to_owned())]]
                {
                    Check::Done(())
                } else {
                    Check::not_yet(format!("leader {leader:?}, in recovery {rows:?}"))
                },
            )
        },
    )
    .await?;
    cluster.finish();
    Ok(())
}
