//! Day-to-day operations on real etcd, PostgreSQL and agents: what `pause` allows and
//! refuses (Patroni's docs/pause.rst), synchronous settings changed through `PATCH /config`
//! taking effect without a restart, and an agent refusing to start under a name in use.
//!
//! Every test skips (printing a `SKIP` line) when a program it needs is missing, unless
//! `PGBATON_REQUIRE_INTEGRATION=1`. See docs/testing.md.

use std::time::Duration;

use anyhow::{Context, ensure};
use baton_integration_tests::tools_or_skip;
use baton_integration_tests::{Check, Cluster, ClusterSpec, scaled, simple_query, wait_for};
use serde_json::{Value, json};

/// `pgbaton <args>`: (success, stdout + stderr).
async fn cli(cluster: &Cluster, via: &str, args: &[&str]) -> anyhow::Result<(bool, String)> {
    let config = cluster.node(via).config_path.to_string_lossy().into_owned();
    let mut all = vec!["-c", config.as_str()];
    all.extend_from_slice(args);
    let out = cluster.pgbaton_cli(&all).await?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

/// `PATCH /config` on `via`'s REST API; the answer's status and body.
async fn patch_config(cluster: &Cluster, via: &str, body: &Value) -> anyhow::Result<(u16, String)> {
    let url = format!("{}/config", cluster.node(via).rest_base());
    let resp = reqwest::Client::new()
        .patch(&url)
        .json(body)
        .timeout(scaled(Duration::from_secs(10)))
        .send()
        .await
        .with_context(|| format!("PATCH {url}"))?;
    Ok((
        resp.status().as_u16(),
        resp.text().await.unwrap_or_default(),
    ))
}

/// The standbys `/sync` lists (empty when the key is missing or lists none).
async fn sync_standbys(cluster: &Cluster) -> anyhow::Result<Vec<String>> {
    let Some(kv) = cluster.etcd().get(&cluster.key("sync")).await? else {
        return Ok(vec![]);
    };
    let v: Value = serde_json::from_str(&kv.value)?;
    let mut names: Vec<String> = v
        .get("sync_standby")
        .and_then(Value::as_str)
        .map(|s| {
            s.split(',')
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    Ok(names)
}

/// Wait until `/sync` lists exactly `want` (sorted).
async fn wait_sync_is(cluster: &Cluster, what: &str, want: &[String]) -> anyhow::Result<()> {
    wait_for(what, scaled(Duration::from_secs(60)), || async {
        let have = sync_standbys(cluster).await?;
        Ok(if have == want {
            Check::Done(())
        } else {
            Check::not_yet(format!("/sync lists {have:?}"))
        })
    })
    .await
}

/// The agent's `reason` in `/patroni`.
async fn reason_of(cluster: &Cluster, name: &str) -> anyhow::Result<String> {
    let status = cluster.node(name).patroni().await?;
    Ok(status
        .get("reason")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned())
}

/// Patroni's maintenance mode: a scheduled switchover and one without a candidate are
/// refused while paused; a crashed PostgreSQL is left down (the agent says what it would
/// have done); a switchover to a named, healthy candidate is carried out and the former
/// primary rejoins as a standby while still paused; on `resume` the crashed PostgreSQL is
/// started again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_refuses_scheduling_and_leaves_a_crashed_postgres_down() -> anyhow::Result<()> {
    let tools = tools_or_skip!("pause_refuses_scheduling_and_leaves_a_crashed_postgres_down");
    let mut spec = ClusterSpec::new(3);
    spec.haproxy = None;
    let cluster = Cluster::start(&tools, spec).await?;
    let healthy = cluster
        .wait_healthy(scaled(Duration::from_secs(180)))
        .await?;
    let leader = healthy.leader.clone();
    let (candidate, crashed) = (healthy.replicas[0].clone(), healthy.replicas[1].clone());

    let (ok, text) = cli(&cluster, &leader, &["pause", "--wait"]).await?;
    ensure!(ok, "pause failed: {text}");

    // Refused requests write nothing.
    let future = "2099-01-01T00:00:00+00:00";
    for (args, refusal) in [
        (
            vec![
                "switchover",
                "--force",
                "--candidate",
                &candidate,
                "--scheduled",
                future,
            ],
            "Can't schedule switchover in the paused state",
        ),
        (
            vec!["switchover", "--force"],
            "Switchover is possible only to a specific candidate in a paused state",
        ),
    ] {
        let (ok, text) = cli(&cluster, &leader, &args).await?;
        ensure!(!ok, "accepted {args:?} while paused: {text}");
        ensure!(
            text.contains(refusal),
            "{args:?}: expected {refusal:?}, got {text}"
        );
        let failover = cluster.etcd().get(&cluster.key("failover")).await?;
        ensure!(
            failover.is_none(),
            "a refused request wrote the failover key: {failover:?}"
        );
    }

    // A crashed PostgreSQL stays down: the agent reports that it does not act.
    cluster.kill_postgres(&crashed)?;
    wait_for(
        "the paused agent to notice the crash and not restart PostgreSQL",
        scaled(Duration::from_secs(60)),
        || async {
            let reason = reason_of(&cluster, &crashed).await?;
            let running = cluster.node(&crashed).postmaster_pid().is_some();
            Ok(
                if reason.starts_with("PAUSE: not acting while paused") && !running {
                    Check::Done(())
                } else {
                    Check::not_yet(format!("running={running}, reason {reason:?}"))
                },
            )
        },
    )
    .await?;
    // Several more cycles (loop_wait 1 s) later it is still down.
    let before = reason_of(&cluster, &crashed).await?;
    wait_for(
        "three more cycles of the paused agent",
        scaled(Duration::from_secs(30)),
        || async {
            let status = cluster.node(&crashed).patroni().await?;
            ensure!(
                cluster.node(&crashed).postmaster_pid().is_none(),
                "the paused agent restarted PostgreSQL: {status}"
            );
            let state = status.get("state").and_then(Value::as_str).unwrap_or("");
            Ok(if state == "stopped" {
                Check::Done(())
            } else {
                Check::not_yet(format!("state {state}"))
            })
        },
    )
    .await?;
    ensure!(
        cluster.node(&crashed).postmaster_pid().is_none(),
        "the paused agent restarted PostgreSQL (reason was {before:?})"
    );

    // A switchover to a named, healthy candidate is allowed while paused.
    let (ok, text) = cli(
        &cluster,
        &leader,
        &[
            "switchover",
            "--force",
            "--leader",
            &leader,
            "--candidate",
            &candidate,
        ],
    )
    .await?;
    ensure!(ok, "switchover to {candidate} refused while paused: {text}");
    let new = cluster
        .wait_new_leader(&leader, scaled(Duration::from_secs(60)))
        .await?;
    ensure!(new == candidate, "{new} took over, expected {candidate}");
    // The former primary comes back as a streaming standby while still paused (Patroni's
    // demotion restarts it as a replica); the crashed one stays down.
    cluster
        .wait_healthy_members(
            &[candidate.clone(), leader.clone()],
            scaled(Duration::from_secs(90)),
        )
        .await
        .context("the former primary rejoining while paused")?;
    ensure!(
        cluster.node(&crashed).postmaster_pid().is_none(),
        "the paused agent restarted the crashed PostgreSQL"
    );
    let (ok, text) = cli(&cluster, &candidate, &["resume", "--wait"]).await?;
    ensure!(ok, "resume failed: {text}");
    let healthy = cluster
        .wait_healthy(scaled(Duration::from_secs(120)))
        .await
        .context("after resume, the crashed PostgreSQL and the old primary rejoin")?;
    ensure!(
        healthy.leader == candidate,
        "leader moved to {}",
        healthy.leader
    );
    cluster.finish();
    Ok(())
}

/// Synchronous settings changed at run time (Patroni applies them within a loop):
/// `synchronous_node_count: 2` puts two standbys into `/sync`; with `synchronous_commit:
/// remote_apply` and `maximum_lag_on_syncnode`, a synchronous standby whose replay is paused
/// is replaced by a healthy one (lag measured on replay, the position commits wait for) and a
/// commit that waited for it goes through — also while the cluster is paused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_sync_settings_take_effect_at_run_time() -> anyhow::Result<()> {
    let tools = tools_or_skip!("dynamic_sync_settings_take_effect_at_run_time");
    let mut spec = ClusterSpec::new(3);
    spec.haproxy = None;
    spec.extra_config = json!({
        "bootstrap": { "dcs": {
            "synchronous_mode": true,
            "maximum_lag_on_syncnode": 1_048_576,
            "postgresql": { "parameters": { "synchronous_commit": "remote_apply" } },
        } }
    });
    let cluster = Cluster::start(&tools, spec).await?;
    let healthy = cluster
        .wait_healthy(scaled(Duration::from_secs(180)))
        .await?;
    let leader = healthy.leader.clone();
    let mut both = healthy.replicas.clone();
    both.sort();

    wait_for(
        "one synchronous standby",
        scaled(Duration::from_secs(60)),
        || async {
            let have = sync_standbys(&cluster).await?;
            Ok(if have.len() == 1 {
                Check::Done(())
            } else {
                Check::not_yet(format!("/sync lists {have:?}"))
            })
        },
    )
    .await?;
    let (status, body) =
        patch_config(&cluster, &leader, &json!({ "synchronous_node_count": 2 })).await?;
    ensure!(status == 200, "PATCH /config answered {status}: {body}");
    wait_sync_is(&cluster, "/sync to list both standbys", &both).await?;
    let ssn = cluster
        .sql(&leader, "SHOW synchronous_standby_names")
        .await?;
    let ssn = ssn
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .unwrap_or_default();
    ensure!(
        ssn.starts_with("2 ("),
        "synchronous_standby_names is {ssn:?}"
    );

    let (status, body) =
        patch_config(&cluster, &leader, &json!({ "synchronous_node_count": 1 })).await?;
    ensure!(status == 200, "PATCH /config answered {status}: {body}");
    wait_for(
        "one synchronous standby again",
        scaled(Duration::from_secs(60)),
        || async {
            let have = sync_standbys(&cluster).await?;
            Ok(if have.len() == 1 {
                Check::Done(())
            } else {
                Check::not_yet(format!("/sync lists {have:?}"))
            })
        },
    )
    .await?;

    let primary = cluster.node(&leader).pg();
    simple_query(&primary.connect().await?, "CREATE TABLE filler (pad text)").await?;
    for paused_cluster in [false, true] {
        if paused_cluster {
            let (ok, text) = cli(&cluster, &leader, &["pause", "--wait"]).await?;
            ensure!(ok, "pause failed: {text}");
        }
        let stuck = sync_standbys(&cluster).await?;
        ensure!(stuck.len() == 1, "/sync lists {stuck:?}");
        let stuck = stuck[0].clone();
        let healthy_one = both
            .iter()
            .find(|n| **n != stuck)
            .cloned()
            .unwrap_or_default();
        cluster.sql(&stuck, "SELECT pg_wal_replay_pause()").await?;
        // WAL the paused standby receives and flushes but does not replay (these commits do
        // not wait), then a commit that waits for replay on the synchronous standby.
        let filler = primary.connect().await?;
        simple_query(
            &filler,
            "SET synchronous_commit = local; \
             INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 8000)",
        )
        .await?;
        let waiter = primary.connect().await?;
        // No per-statement timeout here: this commit waits until the standby is replaced
        // (bounded by the deadline below).
        let commit = tokio::spawn(async move {
            waiter
                .simple_query("INSERT INTO filler VALUES ('waits for replay')")
                .await
                .map(|_| ())
        });
        wait_sync_is(
            &cluster,
            &format!("{healthy_one} to replace {stuck} (paused cluster: {paused_cluster})"),
            std::slice::from_ref(&healthy_one),
        )
        .await?;
        tokio::time::timeout(scaled(Duration::from_secs(60)), commit)
            .await
            .context("the commit waiting for the paused standby did not complete")???;
        cluster.sql(&stuck, "SELECT pg_wal_replay_resume()").await?;
    }
    cluster.finish();
    Ok(())
}

/// A second agent started with a name that a running member already uses refuses to start
/// (Patroni: "Can't start; there is already a node named ... running") and changes nothing:
/// the running member keeps its key and its leadership.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_with_a_name_in_use_refuses_to_start() -> anyhow::Result<()> {
    let tools = tools_or_skip!("a_second_agent_with_a_name_in_use_refuses_to_start");
    let mut spec = ClusterSpec::new(2);
    spec.haproxy = None;
    spec.start_agents = false;
    let mut cluster = Cluster::start(&tools, spec).await?;
    cluster.start_agent("node1")?;
    cluster
        .wait_healthy_members(&["node1".to_owned()], scaled(Duration::from_secs(120)))
        .await?;
    let member_key = cluster.key("members/node1");
    let before = cluster
        .etcd()
        .get(&member_key)
        .await?
        .context("node1's member key")?;

    // node2's host, ports and data directory, but node1's name.
    cluster.update_config("node2", &json!({ "name": "node1" }))?;
    cluster.start_agent("node2")?;
    wait_for(
        "the impostor agent to exit",
        scaled(Duration::from_secs(60)),
        || async {
            let log = std::fs::read_to_string(&cluster.node("node2").log_path).unwrap_or_default();
            Ok(
                if log.contains("Can't start; there is already a node named 'node1' running") {
                    Check::Done(())
                } else {
                    Check::not_yet("no refusal in its log yet")
                },
            )
        },
    )
    .await?;
    wait_for(
        "the impostor's process to end",
        scaled(Duration::from_secs(30)),
        || async {
            Ok(if cluster.node("node2").agent_exited_on_its_own() {
                Check::Done(())
            } else {
                Check::not_yet("still running")
            })
        },
    )
    .await?;
    ensure!(
        !cluster
            .node("node2")
            .config
            .data_dir
            .join("PG_VERSION")
            .exists(),
        "the impostor touched its data directory"
    );
    let after = cluster
        .etcd()
        .get(&member_key)
        .await?
        .context("node1's member key")?;
    let api = |kv: &baton_integration_tests::EtcdKv| -> anyhow::Result<Value> {
        let v: Value = serde_json::from_str(&kv.value)?;
        Ok(v.get("api_url").cloned().unwrap_or(Value::Null))
    };
    ensure!(
        api(&after)? == api(&before)?,
        "node1's member key changed: {}",
        after.value
    );
    ensure!(
        cluster.leader().await?.as_deref() == Some("node1"),
        "the leader moved"
    );
    cluster.finish();
    Ok(())
}
