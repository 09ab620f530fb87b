//! Restarting PostgreSQL on request (issue 10 item 2) on real etcd, PostgreSQL and agents:
//! `POST /restart` restarts the leader in place (it keeps the leader key: no failover, no new
//! timeline), a filter that does not match changes nothing, a scheduled restart fires on time
//! and is shown in `/patroni` and the member key until then, `DELETE /restart` drops one, bad
//! requests get Patroni's codes; `pgbaton restart`, `pgbaton reload` and Patroni's own
//! `patronictl restart` drive it.
//!
//! Every test skips (printing a `SKIP` line) when a program it needs is missing, unless
//! `PGBATON_REQUIRE_INTEGRATION=1`. See docs/testing.md.

use std::time::Duration;

use anyhow::{Context, ensure};
use baton_integration_tests::chaos::iso8601_utc;
use baton_integration_tests::{
    Check, Cluster, ClusterSpec, Patronictl, Tools, patronictl_venv, scaled, wait_for,
};
use serde_json::{Value, json};

const REST_USER: &str = "restart-admin";
const REST_PASSWORD: &str = "restart-secret";

/// `method <path>` on `via`'s REST API (with the cluster's credentials); status and body.
async fn send(
    cluster: &Cluster,
    via: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<(u16, String)> {
    let url = format!("{}{path}", cluster.node(via).rest_base());
    let mut request = reqwest::Client::new()
        .request(method.clone(), &url)
        .basic_auth(REST_USER, Some(REST_PASSWORD))
        .timeout(scaled(Duration::from_secs(120)));
    if let Some(body) = body {
        request = request.json(body);
    }
    let resp = request
        .send()
        .await
        .with_context(|| format!("{method} {url}"))?;
    Ok((
        resp.status().as_u16(),
        resp.text().await.unwrap_or_default(),
    ))
}

/// `postmaster_start_time` of node `name`, from `/patroni`, once it answers as running.
async fn started_at(cluster: &Cluster, name: &str) -> anyhow::Result<String> {
    running_since(cluster, name, None).await
}

/// Wait until node `name` runs a postmaster started after `before`.
async fn wait_restarted(cluster: &Cluster, name: &str, before: &str) -> anyhow::Result<String> {
    running_since(cluster, name, Some(before)).await
}

/// Node `name`'s `postmaster_start_time` once it answers as running, with a start time other
/// than `not` when one is given.
async fn running_since(cluster: &Cluster, name: &str, not: Option<&str>) -> anyhow::Result<String> {
    wait_for(
        &format!("{name} running (not started at {not:?})"),
        scaled(Duration::from_secs(90)),
        || async {
            cluster.check_agents_alive()?;
            // The agent may answer slowly while PostgreSQL restarts on a loaded host.
            let status = match cluster.node(name).patroni().await {
                Ok(s) => s,
                Err(e) => return Ok(Check::not_yet(format!("{e:#}"))),
            };
            Ok(
                match (
                    status.get("state").and_then(Value::as_str),
                    status.get("postmaster_start_time").and_then(Value::as_str),
                ) {
                    (Some("running"), Some(t)) if Some(t) != not => Check::Done(t.to_owned()),
                    other => Check::not_yet(format!("{other:?}")),
                },
            )
        },
    )
    .await
}

/// `pgbaton -c CFG ARGS...`.
async fn cli(cluster: &Cluster, cfg: &str, args: &[&str]) -> anyhow::Result<std::process::Output> {
    let mut all = vec!["-c", cfg];
    all.extend_from_slice(args);
    cluster.pgbaton_cli(&all).await
}

fn iso_in(seconds: u64) -> anyhow::Result<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("clock before 1970")?
        .as_secs();
    Ok(iso8601_utc(now + seconds))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_keep_the_leader_and_scheduled_ones_fire_on_time() -> anyhow::Result<()> {
    let test = "restarts_keep_the_leader_and_scheduled_ones_fire_on_time";
    let Some(tools) = Tools::for_test(test)? else {
        return Ok(());
    };
    let mut spec = ClusterSpec::new(2);
    spec.extra_config = json!({
        "restapi": {"authentication": {"username": REST_USER, "password": REST_PASSWORD}},
    });
    let mut cluster = Cluster::start(&tools, spec).await?;
    let healthy = cluster
        .wait_healthy(scaled(Duration::from_secs(180)))
        .await?;
    let leader = healthy.leader.clone();
    let replica = healthy.replicas[0].clone();
    let timeline = |status: &Value| status.get("timeline").and_then(Value::as_u64);
    let tl_before = timeline(&cluster.node(&leader).patroni().await?);

    // Bad requests: Patroni's codes and messages, nothing scheduled.
    let bad = [
        (
            json!({"role": "leader"}),
            400,
            "PostgreSQL role should be either primary",
        ),
        (
            json!({"timeout": 0}),
            400,
            "Timeout should be a positive number",
        ),
        (
            json!({"color": "red"}),
            400,
            "Unknown filter for the scheduled restart: color",
        ),
        (
            json!({"postgres_version": "fifteen"}),
            400,
            "Invalid PostgreSQL version",
        ),
        (
            json!({"schedule": "2020-01-01T00:00:00+00:00"}),
            422,
            "Cannot schedule restart in the past",
        ),
        (
            json!({"schedule": "2099-01-01T00:00:00"}),
            400,
            "Timezone information is mandatory",
        ),
    ];
    for (body, code, text) in bad {
        let (got, answer) = send(
            &cluster,
            &leader,
            reqwest::Method::POST,
            "/restart",
            Some(&body),
        )
        .await?;
        ensure!(
            got == code && answer.contains(text),
            "{body}: {got} {answer:?}, expected {code} {text:?}"
        );
    }
    let (code, answer) = send(&cluster, &leader, reqwest::Method::DELETE, "/restart", None).await?;
    ensure!(
        code == 404 && answer == "no restarts are scheduled",
        "DELETE /restart: {code} {answer}"
    );

    // A filter that does not match: nothing happens.
    let before = started_at(&cluster, &leader).await?;
    let (code, answer) = send(
        &cluster,
        &leader,
        reqwest::Method::POST,
        "/restart",
        Some(&json!({"role": "replica"})),
    )
    .await?;
    ensure!(
        code == 503 && answer == "restart conditions are not satisfied",
        "role filter: {code} {answer}"
    );
    let (code, answer) = send(
        &cluster,
        &leader,
        reqwest::Method::POST,
        "/restart",
        Some(&json!({"restart_pending": true})),
    )
    .await?;
    ensure!(
        code == 503,
        "restart_pending without a pending restart: {code} {answer}"
    );
    ensure!(
        started_at(&cluster, &leader).await? == before,
        "a refused restart restarted"
    );

    // The leader restarts in place: answered when done, same leader, same timeline.
    let (code, answer) = send(
        &cluster,
        &leader,
        reqwest::Method::POST,
        "/restart",
        Some(&json!({})),
    )
    .await?;
    ensure!(
        code == 200 && answer == "restarted successfully",
        "restart: {code} {answer}"
    );
    let after = wait_restarted(&cluster, &leader, &before).await?;
    ensure!(
        cluster.leader().await?.as_deref() == Some(leader.as_str()),
        "the leader changed over a restart"
    );
    let status = cluster.node(&leader).patroni().await?;
    ensure!(
        status.get("role").and_then(Value::as_str) == Some("primary")
            && timeline(&status) == tl_before,
        "after the restart: {status}"
    );
    ensure!(after != before, "postmaster start time unchanged");

    // A scheduled restart of the replica: shown until it fires, then gone.
    let replica_before = started_at(&cluster, &replica).await?;
    let at = iso_in(12)?;
    let (code, answer) = send(
        &cluster,
        &replica,
        reqwest::Method::POST,
        "/restart",
        Some(&json!({"schedule": at})),
    )
    .await?;
    ensure!(
        code == 202 && answer == "Restart scheduled",
        "schedule: {code} {answer}"
    );
    let (code, answer) = send(
        &cluster,
        &replica,
        reqwest::Method::POST,
        "/restart",
        Some(&json!({"schedule": iso_in(60)?})),
    )
    .await?;
    ensure!(
        code == 409 && answer == "Another restart is already scheduled",
        "second schedule: {code} {answer}"
    );
    let shown = cluster.node(&replica).patroni().await?;
    ensure!(
        shown
            .pointer("/scheduled_restart/schedule")
            .and_then(Value::as_str)
            == Some(at.as_str()),
        "/patroni while scheduled: {shown}"
    );
    let key = cluster
        .etcd()
        .client()
        .get(&cluster.key(&format!("members/{replica}")))
        .await?
        .context("the replica's member key")?;
    ensure!(
        key.value.contains("\"scheduled_restart\""),
        "member key while scheduled: {}",
        key.value
    );
    wait_restarted(&cluster, &replica, &replica_before).await?;
    wait_for("schedule gone", scaled(Duration::from_secs(30)), || async {
        let status = cluster.node(&replica).patroni().await?;
        Ok(match status.get("scheduled_restart") {
            None => Check::Done(()),
            Some(s) => Check::not_yet(format!("still {s}")),
        })
    })
    .await?;

    // DELETE /restart drops a schedule before it fires.
    let (code, _) = send(
        &cluster,
        &replica,
        reqwest::Method::POST,
        "/restart",
        Some(&json!({"schedule": iso_in(3600)?})),
    )
    .await?;
    ensure!(code == 202, "schedule for an hour later: {code}");
    let (code, answer) = send(
        &cluster,
        &replica,
        reqwest::Method::DELETE,
        "/restart",
        None,
    )
    .await?;
    ensure!(
        code == 200 && answer == "scheduled restart deleted",
        "DELETE /restart: {code} {answer}"
    );

    // A schedule survives an agent restart.
    let later = iso_in(7200)?;
    let (code, _) = send(
        &cluster,
        &replica,
        reqwest::Method::POST,
        "/restart",
        Some(&json!({"schedule": later, "role": "replica"})),
    )
    .await?;
    ensure!(code == 202, "schedule for two hours later: {code}");
    cluster.restart_agent(&replica).await?;
    wait_for(
        "the schedule after an agent restart",
        scaled(Duration::from_secs(60)),
        || async {
            let status = match cluster.node(&replica).patroni().await {
                Ok(s) => s,
                Err(e) => return Ok(Check::not_yet(format!("{e:#}"))),
            };
            Ok(
                match status
                    .pointer("/scheduled_restart/schedule")
                    .and_then(Value::as_str)
                {
                    Some(s) if s == later => Check::Done(()),
                    other => Check::not_yet(format!("{other:?}")),
                },
            )
        },
    )
    .await?;
    let (code, answer) = send(
        &cluster,
        &replica,
        reqwest::Method::DELETE,
        "/restart",
        None,
    )
    .await?;
    ensure!(
        code == 200,
        "DELETE /restart after the agent restart: {code} {answer}"
    );
    ensure!(
        cluster
            .node(&replica)
            .patroni()
            .await?
            .get("scheduled_restart")
            .is_none(),
        "schedule still shown"
    );
    cluster.finish();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbaton_and_patronictl_restart_and_reload_members() -> anyhow::Result<()> {
    let test = "pgbaton_and_patronictl_restart_and_reload_members";
    let Some(tools) = Tools::for_test(test)? else {
        return Ok(());
    };
    let Some(bin) = patronictl_venv(test).await? else {
        return Ok(());
    };
    let mut spec = ClusterSpec::new(2);
    spec.extra_config = json!({
        "restapi": {"authentication": {"username": REST_USER, "password": REST_PASSWORD}},
        "ctl": {"authentication": {"username": REST_USER, "password": REST_PASSWORD}},
    });
    let cluster = Cluster::start(&tools, spec).await?;
    let healthy = cluster
        .wait_healthy(scaled(Duration::from_secs(180)))
        .await?;
    let leader = healthy.leader.clone();
    let replica = healthy.replicas[0].clone();
    let ctl = Patronictl::for_cluster(bin, &cluster, Some((REST_USER, REST_PASSWORD)))?;
    let scope = ctl.scope.clone();
    let cfg = cluster
        .node(&leader)
        .config_path
        .to_string_lossy()
        .into_owned();

    // patronictl restart of the replica, answered by pgbaton.
    let before = started_at(&cluster, &replica).await?;
    let out = ctl.run(&["restart", &scope, &replica, "--force"]).await?;
    ensure!(
        out.success
            && out
                .stdout
                .contains(&format!("Success: restart on member {replica}")),
        "patronictl restart: {out:?}"
    );
    wait_restarted(&cluster, &replica, &before).await?;

    // pgbaton restart of the leader: in place.
    let before = started_at(&cluster, &leader).await?;
    let out = cli(&cluster, &cfg, &["restart", &scope, &leader, "--force"]).await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && stdout.contains(&format!("Success: restart on member {leader}")),
        "pgbaton restart: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_restarted(&cluster, &leader, &before).await?;
    ensure!(
        cluster.leader().await?.as_deref() == Some(leader.as_str()),
        "the leader changed over a restart"
    );

    // --pending without a pending restart: refused by the member, nothing restarts.
    let before = started_at(&cluster, &replica).await?;
    let out = cli(
        &cluster,
        &cfg,
        &["restart", &scope, &replica, "--pending", "--force"],
    )
    .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        stdout.contains(&format!(
            "Failed: restart for member {replica}, status code=503"
        )),
        "pgbaton restart --pending: {stdout}"
    );
    ensure!(
        started_at(&cluster, &replica).await? == before,
        "--pending restarted anyway"
    );

    // Reload through both tools.
    let out = cli(&cluster, &cfg, &["reload", &scope, "--force"]).await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success()
            && stdout.contains(&format!("Reload request received for member {leader}")),
        "pgbaton reload: {stdout}"
    );
    let out = ctl.run(&["reload", &scope, &replica, "--force"]).await?;
    ensure!(
        out.success
            && out
                .stdout
                .contains(&format!("Reload request received for member {replica}")),
        "patronictl reload: {out:?}"
    );

    // A scheduled restart is listed by patronictl and flushed by pgbaton.
    let at = iso_in(3600)?;
    let out = cli(
        &cluster,
        &cfg,
        &["restart", &scope, &replica, "--scheduled", &at, "--force"],
    )
    .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        stdout.contains(&format!("Success: restart scheduled on member {replica}")),
        "scheduled: {stdout}"
    );
    wait_for(
        "patronictl list shows the schedule",
        scaled(Duration::from_secs(30)),
        || async {
            let out = ctl.run(&["list", &scope, "-e", "-f", "json"]).await?;
            Ok(
                if out.stdout.contains("Scheduled restart") && out.stdout.contains(&at[..16]) {
                    Check::Done(())
                } else {
                    Check::not_yet(out.stdout.clone())
                },
            )
        },
    )
    .await?;
    let out = cli(
        &cluster,
        &cfg,
        &["flush", &scope, &replica, "restart", "--force"],
    )
    .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        stdout.contains(&format!(
            "Success: flush scheduled restart for member {replica}"
        )),
        "flush: {stdout}"
    );
    cluster.finish();
    Ok(())
}
