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
