//! The watchdog on real etcd, PostgreSQL and agents (issue 12 item 1), through pgbaton's test
//! driver (`watchdog.driver: testing`): each agent appends `<unix ms> <event>` lines (`open`,
//! `set_timeout N`, `keepalive`, `magic_close`) to its own event file instead of driving a
//! device, so the arming order, the kicks and the magic close are checked here without a
//! real watchdog (none is ever opened on the test host).
//!
//! What this does not test: the `WDIOC_*` ioctls against a real watchdog device and an actual
//! reset (unit tests run them only against `/dev/null`, where they fail).
//!
//! Every test skips (printing a `SKIP` line) when a program it needs is missing, unless
//! `PGBATON_REQUIRE_INTEGRATION=1`. See docs/testing.md.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, ensure};
use baton_integration_tests::tools_or_skip;
use baton_integration_tests::{Check, Cluster, ClusterSpec, scaled, wait_for};
use serde_json::{Value, json};

fn soon() -> Duration {
    scaled(Duration::from_secs(90))
}

/// An empty event file in node `name`'s directory that the agent (maybe another OS user)
/// can append to.
fn event_file(cluster: &Cluster, name: &str) -> anyhow::Result<PathBuf> {
    let path = cluster.node(name).config.dir.join("watchdog.events");
    std::fs::write(&path, "").with_context(|| format!("create {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
    Ok(path)
}

/// The events of a file: (unix ms, event).
fn events(path: &Path) -> Vec<(u64, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (ms, what) = l.split_once(' ')?;
            Some((ms.parse().ok()?, what.to_owned()))
        })
        .collect()
}

fn names(events: &[(u64, String)]) -> Vec<&str> {
    events.iter().map(|(_, e)| e.as_str()).collect()
}

/// `GET /patroni` of node `name`.
async fn patroni(cluster: &Cluster, name: &str) -> anyhow::Result<Value> {
    let url = format!("{}/patroni", cluster.node(name).rest_base());
    let resp = reqwest::Client::new()
        .get(&url)
        .timeout(scaled(Duration::from_secs(5)))
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    Ok(resp.json().await?)
}

async fn metrics(cluster: &Cluster, name: &str) -> anyhow::Result<String> {
    let url = format!("{}/metrics", cluster.node(name).rest_base());
    Ok(reqwest::Client::new()
        .get(&url)
        .timeout(scaled(Duration::from_secs(5)))
        .send()
        .await
        .with_context(|| format!("GET {url}"))?
        .text()
        .await?)
}

/// The value of metric `metric` in a `/metrics` text.
fn metric(text: &str, metric: &str) -> Option<String> {
    text.lines()
        .find(|l| l.starts_with(&format!("{metric}{{")))
        .and_then(|l| l.rsplit(' ').next())
        .map(str::to_owned)
}

/// Wait until the events of `path` satisfy `done`.
async fn wait_events(
    what: &str,
    cluster: &Cluster,
    path: &Path,
    done: impl Fn(&[(u64, String)]) -> bool,
) -> anyhow::Result<Vec<(u64, String)>> {
    wait_for(what, soon(), || async {
        cluster.check_agents_alive()?;
        let ev = events(path);
        Ok(if done(&ev) {
            Check::Done(ev)
        } else {
            Check::not_yet(format!("events: {:?}", names(&ev)))
        })
    })
    .await
}

/// ttl 10 (the harness's fast timing), safety_margin 1: a 9 s device timeout.
const TIMEOUT_S: u64 = 9;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_arms_before_promoting_is_kicked_by_renewals_and_magic_closes_on_demotion()
-> anyhow::Result<()> {
    let tools = tools_or_skip!("watchdog_lifecycle");
    let mut spec = ClusterSpec::new(2);
    spec.start_agents = false;
    spec.haproxy = None;
    let mut cluster = Cluster::create(&tools, spec)?;
    cluster.start_etcd().await?;
    let mut files = Vec::new();
    for name in cluster.names() {
        let path = event_file(&cluster, &name)?;
        cluster.update_config(
            &name,
            &json!({"watchdog": {
                "mode": "required",
                "driver": "testing",
                "device": path.to_string_lossy(),
                "safety_margin": 1,
            }}),
        )?;
        files.push((name, path));
    }
    // node1 first, so that it bootstraps and leads.
    cluster.start_agent("node1")?;
    cluster
        .wait_healthy_members(&["node1".to_owned()], soon())
        .await?;
    cluster.start_agent("node2")?;
    let healthy = cluster.wait_healthy(soon()).await?;
    ensure!(healthy.leader == "node1", "{healthy:?}");
    let (f1, f2) = (files[0].1.clone(), files[1].1.clone());

    // The leader armed (before it bootstrapped and took the key) and is kicked at renewals.
    let ev = wait_events("node1 kicked three times", &cluster, &f1, |ev| {
        names(ev).iter().filter(|e| **e == "keepalive").count() >= 3
    })
    .await?;
    let n = names(&ev);
    ensure!(
        n[..2] == ["open", &format!("set_timeout {TIMEOUT_S}")],
        "node1 armed first: {n:?}"
    );
    ensure!(!n.contains(&"magic_close"), "{n:?}");
    ensure!(
        events(&f2).is_empty(),
        "a replica arms nothing: {:?}",
        events(&f2)
    );
    let m = metrics(&cluster, "node1").await?;
    ensure!(
        metric(&m, "pgbaton_watchdog_armed").as_deref() == Some("1"),
        "{m}"
    );
    ensure!(
        patroni(&cluster, "node1")
            .await?
            .get("watchdog_failed")
            .is_none(),
        "a working watchdog is not reported as failed"
    );

    // Switchover: node1 disarms with the magic close; node2 arms before it promotes.
    cluster.cli_switchover("node1", "node2", None).await?;
    let ev1 = wait_events("node1 magic close", &cluster, &f1, |ev| {
        names(ev).last() == Some(&"magic_close")
    })
    .await?;
    let ev2 = wait_events("node2 armed and kicked", &cluster, &f2, |ev| {
        names(ev).contains(&"keepalive")
    })
    .await?;
    let n2 = names(&ev2);
    ensure!(
        n2[..2] == ["open", &format!("set_timeout {TIMEOUT_S}")],
        "node2 armed first: {n2:?}"
    );
    let healthy = cluster.wait_healthy(soon()).await?;
    ensure!(healthy.leader == "node2", "{healthy:?}");
    // Armed before the promotion: PostgreSQL writes the new timeline's history file at the
    // end of the promotion (its time has whole seconds, hence the margin of one).
    let promoted = cluster
        .sql(
            "node2",
            "SELECT extract(epoch FROM (pg_stat_file('pg_wal/' || \
             lpad(to_hex((SELECT timeline_id FROM pg_control_checkpoint())), 8, '0') || \
             '.history')).modification)::bigint",
        )
        .await?
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().next().flatten())
        .context("history file time")?;
    let promoted_ms: u64 = promoted.parse::<u64>()? * 1000;
    ensure!(
        ev2[0].0 <= promoted_ms + 1000,
        "node2 opened the watchdog at {} ms, after its promotion at {promoted_ms} ms",
        ev2[0].0
    );
    // While node2 leads, the gaps between kicks stay below the device timeout (otherwise a
    // real device would have reset the host).
    let ev2 = wait_events("node2 kicked five times", &cluster, &f2, |ev| {
        names(ev).iter().filter(|e| **e == "keepalive").count() >= 5
    })
    .await?;
    let kicks: Vec<u64> = ev2
        .iter()
        .filter(|(_, e)| e == "keepalive")
        .map(|(ms, _)| *ms)
        .collect();
    let mut last = ev2[1].0;
    for k in &kicks {
        ensure!(
            k - last < TIMEOUT_S * 1000,
            "a {} ms gap between kicks: the device would have fired ({kicks:?})",
            k - last
        );
        last = *k;
    }
    ensure!(
        names(&ev1).iter().filter(|e| **e == "open").count() == 1,
        "node1 did not arm again as a replica: {:?}",
        names(&ev1)
    );

    // A clean shutdown of the leader disarms too.
    cluster.stop_agent("node2").await;
    let n2 = names(&events(&f2)).join(",");
    ensure!(n2.ends_with("magic_close"), "{n2}");
    cluster.finish();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_mode_without_a_device_never_takes_the_leader_key() -> anyhow::Result<()> {
    let tools = tools_or_skip!("watchdog_required_without_device");
    let mut spec = ClusterSpec::new(2);
    spec.start_agents = false;
    spec.haproxy = None;
    let mut cluster = Cluster::create(&tools, spec)?;
    cluster.start_etcd().await?;
    cluster.update_config("node1", &json!({"watchdog": {"mode": "off"}}))?;
    let missing = cluster.node("node2").config.dir.join("no-such-watchdog");
    cluster.update_config(
        "node2",
        &json!({"watchdog": {"mode": "required", "device": missing.to_string_lossy()}}),
    )?;
    cluster.start_agent("node1")?;
    cluster
        .wait_healthy_members(&["node1".to_owned()], soon())
        .await?;
    cluster.start_agent("node2")?;
    let healthy = cluster.wait_healthy(soon()).await?;
    ensure!(healthy.leader == "node1", "{healthy:?}");
    let status = patroni(&cluster, "node2").await?;
    ensure!(status["watchdog_failed"] == json!(true), "{status}");
    let m = metrics(&cluster, "node2").await?;
    ensure!(
        metric(&m, "pgbaton_watchdog_failed").as_deref() == Some("1"),
        "{m}"
    );

    // The leader goes away (clean shutdown: key released, PostgreSQL stopped). node2 may not
    // take over without a watchdog, and says why.
    cluster.stop_agent("node1").await;
    let reason = wait_for("node2 refuses to race", soon(), || async {
        let status = patroni(&cluster, "node2").await?;
        let reason = status["pgbaton_reason"]
            .as_str()
            .or_else(|| status["reason"].as_str())
            .unwrap_or_default()
            .to_owned();
        Ok(
            if reason.contains("watchdog.mode is required and the watchdog device is not usable") {
                Check::Done(reason)
            } else {
                Check::not_yet(format!("reason: {reason:?}"))
            },
        )
    })
    .await?;
    ensure!(
        cluster.leader().await?.is_none(),
        "someone took the key: {reason}"
    );
    let status = patroni(&cluster, "node2").await?;
    ensure!(status["role"] != json!("primary"), "{status}");
    cluster.finish();
    Ok(())
}
