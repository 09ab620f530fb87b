//! `switchover`, `failover`, `reinit`, `pause`, `resume`: requests to an agent's REST API.

use std::time::Duration;

use baton_cli::cli::Command;

use super::{Ctx, api_base, confirm, http};

pub(crate) async fn run(ctx: &Ctx, command: Command) -> anyhow::Result<()> {
    let view = ctx.read().await?;
    match command {
        Command::Switchover {
            leader,
            candidate,
            scheduled,
            force,
        } => {
            let leader = match leader.or_else(|| view.leader_name().map(ToString::to_string)) {
                Some(l) => l,
                None => anyhow::bail!("this cluster has no leader: use failover --candidate"),
            };
            let scheduled = scheduled.filter(|s| s != "now");
            confirm(
                force,
                &format!(
                    "Are you sure you want to switchover cluster {}, demoting current leader {leader}?",
                    ctx.cluster
                ),
            )?;
            let mut body = serde_json::json!({ "leader": leader });
            if let Some(c) = candidate {
                body["candidate"] = c.into();
            }
            if let Some(at) = scheduled {
                body["scheduled_at"] = at.into();
            }
            let target = api_base(&view, Some(&leader))?;
            http::call(
                &ctx.config,
                reqwest::Method::POST,
                &format!("{target}/switchover"),
                Some(&body),
            )
            .await?;
        }
        Command::Failover { candidate, force } => {
            confirm(
                force,
                &format!(
                    "Are you sure you want to failover cluster {}, promoting {candidate}?",
                    ctx.cluster
                ),
            )?;
            // Through the leader when there is one, else through the candidate itself.
            let via = view
                .leader_name()
                .map(ToString::to_string)
                .unwrap_or_else(|| candidate.clone());
            let target = api_base(&view, Some(&via))?;
            let body = serde_json::json!({ "candidate": candidate });
            http::call(
                &ctx.config,
                reqwest::Method::POST,
                &format!("{target}/failover"),
                Some(&body),
            )
            .await?;
        }
        Command::Reinit {
            member,
            force,
            wait,
        } => {
            confirm(
                force,
                &format!("Are you sure you want to reinitialize member {member}?"),
            )?;
            let target = api_base(&view, Some(&member))?;
            // A new postmaster start time tells the re-cloned server from the old one.
            let started = |status: &serde_json::Value| {
                status
                    .get("postmaster_start_time")
                    .and_then(|s| s.as_str())
                    .map(str::to_owned)
            };
            let status = |target: String| async move {
                let url = format!("{target}/patroni");
                let reply = http::request(&ctx.config, reqwest::Method::GET, &url, None, &[])
                    .await
                    .ok()?;
                serde_json::from_str::<serde_json::Value>(&reply.body).ok()
            };
            let before = status(target.clone()).await.as_ref().and_then(started);
            let body = serde_json::json!({ "force": force });
            http::call(
                &ctx.config,
                reqwest::Method::POST,
                &format!("{target}/reinitialize"),
                Some(&body),
            )
            .await?;
            if wait {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
                loop {
                    if let Some(now) = status(target.clone()).await
                        && now.get("state").and_then(|s| s.as_str()) == Some("running")
                        && started(&now).is_some()
                        && started(&now) != before
                    {
                        println!("{member} is running again");
                        break;
                    }
                    if tokio::time::Instant::now() > deadline {
                        anyhow::bail!("{member} did not come back within 10 minutes");
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        Command::Pause { wait } => set_pause(ctx, &view, true, wait).await?,
        Command::Resume { wait } => set_pause(ctx, &view, false, wait).await?,
        other => anyhow::bail!("internal error: {other:?} is not a control command"),
    }
    Ok(())
}

/// `demote-cluster`'s `standby_cluster` section (patronictl's checks and message; pgbaton
/// also needs the host, and takes `restore_command` only from the local files).
pub(crate) fn standby_config(
    host: Option<String>,
    port: Option<u16>,
    restore_command: Option<String>,
    primary_slot_name: Option<String>,
) -> anyhow::Result<serde_json::Value> {
    if host.is_none() && port.is_none() && restore_command.is_none() {
        anyhow::bail!("At least --host, --port or --restore-command should be specified");
    }
    if restore_command.is_some() {
        anyhow::bail!(
            "--restore-command: pgbaton takes restore_command only from each member's local \
             postgresql.parameters (it runs a command as the postgres OS user), never from the \
             dynamic configuration"
        );
    }
    let Some(host) = host else {
        anyhow::bail!(
            "--host is required: pgbaton streams the standby leader from the remote host \
             (archive-only standby clusters are not supported)"
        );
    };
    let mut config = serde_json::json!({ "host": host });
    if let Some(port) = port {
        config["port"] = port.into();
    }
    if let Some(slot) = primary_slot_name {
        config["primary_slot_name"] = slot.into();
    }
    Ok(config)
}

/// `demote-cluster` (`standby`: the `standby_cluster` section) and `promote-cluster`
/// (`None`), as patronictl's `change_cluster_role`: refused without a leader or when the
/// leader already has the wanted role; otherwise `PATCH /config` on the leader, then wait
/// until the leader's member key shows the new role.
pub(crate) async fn change_cluster_role(
    ctx: &Ctx,
    standby: Option<serde_json::Value>,
    force: bool,
) -> anyhow::Result<()> {
    let demote = standby.is_some();
    let (noun, verb, done, target_role) = if demote {
        ("demotion", "demote", "demoted", "standby_leader")
    } else {
        ("promotion", "promote", "promoted", "primary")
    };
    let view = ctx.read().await?;
    let Some(leader) = view.leader_member() else {
        anyhow::bail!("Cluster has no leader, {noun} is not possible");
    };
    if leader.role == target_role {
        anyhow::bail!("Cluster is already in the required state");
    }
    let leader_name = leader.name.to_string();
    println!("Current cluster topology");
    println!(
        "{}",
        baton_cli::table::render_list(&ctx.cluster, &view).trim_end()
    );
    confirm(
        force,
        &format!("Are you sure you want to {verb} {} cluster?", ctx.cluster),
    )?;
    let target = api_base(&view, Some(&leader_name))?;
    let body = serde_json::json!({ "standby_cluster": standby });
    let reply = http::request(
        &ctx.config,
        reqwest::Method::PATCH,
        &format!("{target}/config"),
        Some(&body),
        &[],
    )
    .await
    .map_err(|e| anyhow::anyhow!("Failed to {verb} cluster: {e:#}"))?;
    if !reply.ok() {
        anyhow::bail!(
            "Failed to {verb} {} cluster: /config PATCH status code={}, ({})",
            ctx.cluster,
            reply.status,
            reply.body
        );
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let view = ctx.read().await?;
        if view.leader_member().is_some_and(|l| l.role == target_role) {
            println!(
                "{} - Cluster {} successfully {done}",
                super::timestamp(),
                ctx.cluster
            );
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!(
                "the /config change was stored, but the leader did not report the role \
                 {target_role} within 120 s"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `PATCH /config {"pause": true|null}` on the leader (or any member with an API).
async fn set_pause(
    ctx: &Ctx,
    view: &baton_core::ClusterView,
    pause: bool,
    wait: bool,
) -> anyhow::Result<()> {
    let target = api_base(view, None).or_else(|_| {
        let first = view.members.first().map(|m| m.name.to_string());
        api_base(view, first.as_deref())
    })?;
    let body = serde_json::json!({ "pause": if pause { serde_json::Value::Bool(true) } else { serde_json::Value::Null } });
    http::call(
        &ctx.config,
        reqwest::Method::PATCH,
        &format!("{target}/config"),
        Some(&body),
    )
    .await?;
    if wait {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let view = ctx.read().await?;
            if view.members.iter().all(|m| m.pause == pause) {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("not every member reported pause={pause} within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    println!(
        "Success: cluster management is {}",
        if pause { "paused" } else { "resumed" }
    );
    Ok(())
}
