//! `switchover`, `failover`, `reinit`, `pause`, `resume`: requests to an agent's REST API.

use std::time::Duration;

use anyhow::Context;

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

/// `demote-cluster`'s `standby_cluster` section, as patronictl's `demote_cluster` builds it:
/// the options given (a `--restore-command` marks the archive; each member runs its local
/// `restore_command`, never this text).
pub(crate) fn standby_config(
    host: Option<String>,
    port: Option<u16>,
    restore_command: Option<String>,
    primary_slot_name: Option<String>,
) -> anyhow::Result<serde_json::Value> {
    let restore_command = restore_command.filter(|c| !c.is_empty());
    let host = host.filter(|h| !h.is_empty());
    let port = port.filter(|p| *p != 0);
    if host.is_none() && port.is_none() && restore_command.is_none() {
        anyhow::bail!("At least --host, --port or --restore-command should be specified");
    }
    let mut config = serde_json::json!({});
    if let Some(host) = host {
        config["host"] = host.into();
    }
    if let Some(port) = port {
        config["port"] = port.into();
    }
    if let Some(slot) = primary_slot_name.filter(|s| !s.is_empty()) {
        config["primary_slot_name"] = slot.into();
    }
    if let Some(command) = restore_command {
        config["restore_command"] = command.into();
    }
    Ok(config)
}

/// `demote-cluster` (`standby`: the `standby_cluster` section) and `promote-cluster`
/// (`None`), as patronictl's `change_cluster_role`, with its messages: refused without a
/// leader or when the leader already has the wanted role; otherwise `PATCH /config` on the
/// leader, then a progress line a second until the cluster has a leader in the new role,
/// running (after a demotion, the old leader running too), and the topology.
pub(crate) async fn change_cluster_role(
    ctx: &Ctx,
    standby: Option<serde_json::Value>,
    force: bool,
) -> anyhow::Result<()> {
    let demote = standby.is_some();
    let (action, target_role) = if demote {
        ("demot", "standby_leader")
    } else {
        ("promot", "primary")
    };
    let view = ctx.read().await?;
    let Some(leader) = view.leader_member() else {
        anyhow::bail!("Cluster has no leader, {action}ion is not possible");
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
    if !force {
        let answer = super::prompt(
            &format!(
                "Are you sure you want to {action}e {} cluster? [y/N]",
                ctx.cluster
            ),
            "use --force",
        )?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            anyhow::bail!("Aborted cluster {action}ion");
        }
    }
    patch_standby_cluster(ctx, &view, &leader_name, standby, &format!("{action}e")).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let view = ctx.read().await?;
        let leader = view.leader_member();
        let old_state = view
            .members
            .iter()
            .find(|m| m.name.as_str() == leader_name)
            .map(|m| m.state.clone());
        let (role, state) = (
            leader.map(|l| l.role.as_str()),
            leader.map(|l| l.state.as_str()),
        );
        if role == Some(target_role)
            && state == Some("running")
            && (!demote || old_state.as_deref() == Some("running"))
        {
            println!("{} cluster is successfully {action}ed", super::timestamp());
            println!(
                "{}",
                baton_cli::table::render_list(&ctx.cluster, &view).trim_end()
            );
            return Ok(());
        }
        let none = || "None".to_owned();
        let mut line = format!(
            "{} cluster is unlocked: {}, leader role: {}, leader state: {}",
            super::timestamp(),
            if leader.is_none() { "True" } else { "False" },
            role.map_or_else(none, str::to_owned),
            state.map_or_else(none, str::to_owned),
        );
        if demote
            && let (Some(leader), Some(old)) = (leader, &old_state)
            && leader.name.as_str() != leader_name
        {
            line.push_str(&format!(", previous leader state: '{old}'"));
        }
        println!("{line}");
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!(
                "the /config change of cluster {} was stored, but its leader did not report the \
                 role {target_role} within 300 s",
                ctx.cluster
            );
        }
    }
}

/// `PATCH /config {"standby_cluster": ...}` through `leader`.
async fn patch_standby_cluster(
    ctx: &Ctx,
    view: &baton_core::ClusterView,
    leader: &str,
    standby: Option<serde_json::Value>,
    verb: &str,
) -> anyhow::Result<()> {
    let target = api_base(view, Some(leader))?;
    let body = serde_json::json!({ "standby_cluster": standby });
    let reply = http::request(
        &ctx.config,
        reqwest::Method::PATCH,
        &format!("{target}/config"),
        Some(&body),
        &[],
    )
    .await
    .map_err(|e| anyhow::anyhow!("Failed to {verb} {} cluster: {e:#}", ctx.cluster))?;
    if !reply.ok() {
        anyhow::bail!(
            "Failed to {verb} {} cluster: /config PATCH status code={}, ({})",
            ctx.cluster,
            reply.status,
            reply.body
        );
    }
    Ok(())
}

/// Wait until the leader's member key shows `role`; returns the leader's member record.
async fn wait_leader_role(
    ctx: &Ctx,
    role: &str,
    timeout: Duration,
) -> anyhow::Result<baton_core::Member> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let view = ctx.read().await?;
        if let Some(leader) = view.leader_member().filter(|l| l.role == role) {
            return Ok(leader.clone());
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!(
                "the /config change of cluster {} was stored, but its leader did not report the \
                 role {role} within {} s",
                ctx.cluster,
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `region-switchover`: a planned switch of the primary role from the primary cluster `a`
/// to its standby cluster `b`, losing no acknowledged commit. Demote `a` to a standby
/// cluster of `b`'s standby leader (its primary stops cleanly: the shutdown checkpoint reaches
/// the streaming standbys before it exits), wait until `b`'s standby leader has replayed
/// everything `a`'s leader has (its end of WAL after the restart as a standby), then promote
/// `b`. If `b` does not catch up, nothing is promoted and both clusters stay read-only.
pub(crate) async fn region_switchover(a: &Ctx, b: &Ctx, force: bool) -> anyhow::Result<()> {
    let view_a = a.read().await?;
    let view_b = b.read().await?;
    let Some(leader_a) = view_a.leader_member() else {
        anyhow::bail!(
            "Cluster {} has no leader, demotion is not possible",
            a.cluster
        );
    };
    let Some(leader_b) = view_b.leader_member() else {
        anyhow::bail!(
            "Cluster {} has no leader, promotion is not possible",
            b.cluster
        );
    };
    if leader_a.role != "primary" {
        anyhow::bail!(
            "Cluster {} is not a primary cluster (its leader {} is {})",
            a.cluster,
            leader_a.name,
            leader_a.role
        );
    }
    if leader_b.role != "standby_leader" {
        anyhow::bail!(
            "Cluster {} is not a standby cluster (its leader {} is {})",
            b.cluster,
            leader_b.name,
            leader_b.role
        );
    }
    let Some((host, port)) = leader_b.pg_host_port() else {
        anyhow::bail!("the standby leader {} publishes no conn_url", leader_b.name);
    };
    let (name_a, name_b) = (leader_a.name.to_string(), leader_b.name.to_string());
    confirm(
        force,
        &format!(
            "Are you sure you want to demote cluster {} and promote cluster {} (standby leader \
             {name_b})?",
            a.cluster, b.cluster
        ),
    )?;
    let standby = serde_json::json!({ "host": host, "port": port });
    patch_standby_cluster(a, &view_a, &name_a, Some(standby), "demote").await?;
    let demoted = wait_leader_role(a, "standby_leader", Duration::from_secs(120)).await?;
    println!(
        "{} - Cluster {} successfully demoted",
        super::timestamp(),
        a.cluster
    );
    // The demoted leader's end of WAL (its shutdown checkpoint): every acknowledged commit
    // lies before it.
    let last = demoted
        .replay_lsn
        .or(demoted.xlog_location)
        .context("the demoted leader publishes no WAL position")?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let view = b.read().await?;
        let replayed = view
            .leader_member()
            .filter(|l| l.name.as_str() == name_b)
            .and_then(|l| l.replay_lsn);
        if replayed.is_some_and(|r| r >= last) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!(
                "the standby leader {name_b} of cluster {} did not replay up to {last} (the last \
                 WAL of cluster {}) within 120 s (it is at {}): nothing was promoted, both \
                 clusters are standby clusters now; promote one with promote-cluster",
                b.cluster,
                a.cluster,
                replayed.map_or_else(|| "an unknown position".to_owned(), |r| r.to_string())
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "{} - Standby leader {name_b} of cluster {} replayed the last WAL of cluster {} ({last})",
        super::timestamp(),
        b.cluster,
        a.cluster
    );
    patch_standby_cluster(b, &view_b, &name_b, None, "promote").await?;
    wait_leader_role(b, "primary", Duration::from_secs(120)).await?;
    println!(
        "{} - Cluster {} successfully promoted",
        super::timestamp(),
        b.cluster
    );
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

#[cfg(test)]
mod tests {
    use super::standby_config;

    #[test]
    fn demote_cluster_builds_patronictls_standby_cluster_section() {
        let none = standby_config(None, None, None, Some("slot".into())).expect_err("nothing");
        assert_eq!(
            none.to_string(),
            "At least --host, --port or --restore-command should be specified"
        );
        let archive = standby_config(None, None, Some("cp /a/%f %p".into()), None).expect("ok");
        assert_eq!(
            archive,
            serde_json::json!({ "restore_command": "cp /a/%f %p" })
        );
        let stream = standby_config(
            Some("db.a".into()),
            Some(5433),
            None,
            Some("region_b".into()),
        )
        .expect("ok");
        assert_eq!(
            stream,
            serde_json::json!({ "host": "db.a", "port": 5433, "primary_slot_name": "region_b" })
        );
    }
}
