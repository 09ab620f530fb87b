//! `list`, `topology`, `remove`, `flush`.

use std::io::Write;

use baton_cli::cli::{FlushTarget, Format, Role, Watch};
use baton_cli::table::{self, ListOptions};
use baton_dcs::Dcs;

use super::{Ctx, confirm, http, leader_first, member_api, members_with_role, prompt, timestamp};

/// `list` / `topology`, once or every `-w` seconds (clearing the screen, as patronictl does).
pub(crate) async fn list(
    ctx: &Ctx,
    options: ListOptions,
    with_timestamp: bool,
    format: Format,
    watch: Watch,
) -> anyhow::Result<()> {
    let period = watch.period();
    loop {
        let view = ctx.read().await?;
        let mut out = String::new();
        if period.is_some() {
            out.push_str("\x1b[H\x1b[2J");
        }
        if with_timestamp {
            out.push_str(&timestamp());
            out.push('\n');
        }
        out.push_str(&table::render_members(&ctx.cluster, &view, options, format));
        print!("{out}");
        let _ = std::io::stdout().flush();
        match period {
            Some(p) => tokio::time::sleep(p).await,
            None => return Ok(()),
        }
    }
}

/// `remove CLUSTER`: patronictl's three questions (cluster name, "Yes I am aware", the leader's
/// name while there is one), or `--force` with `--leader NAME`; then every key under
/// `/<namespace>/<cluster>/` and nothing else is deleted.
pub(crate) async fn remove(
    ctx: &Ctx,
    format: Format,
    force: bool,
    leader: Option<&str>,
) -> anyhow::Result<()> {
    let view = ctx.read().await?;
    print!(
        "{}",
        table::render_members(&ctx.cluster, &view, ListOptions::default(), format)
    );
    let current = view.leader_name().map(ToString::to_string);
    let how = "to remove without questions, use --force, with --leader NAME while the cluster \
               has a leader";
    if force {
        if let Some(current) = &current
            && leader != Some(current.as_str())
        {
            anyhow::bail!(
                "This cluster currently is healthy (its leader is {current}): give the leader's \
                 name with --leader to remove it"
            );
        }
    } else {
        let name = prompt("Please confirm the cluster name to remove", how)?;
        if name != ctx.cluster {
            anyhow::bail!("Cluster names specified do not match");
        }
        let aware = "Yes I am aware";
        let typed = prompt(
            &format!(
                "You are about to remove all information in DCS for {}, please type: \"{aware}\"",
                ctx.cluster
            ),
            how,
        )?;
        if typed != aware {
            anyhow::bail!("You did not exactly type \"{aware}\"");
        }
        if let Some(current) = &current {
            let typed = prompt(
                "This cluster currently is healthy. Please specify the leader name to continue",
                how,
            )?;
            if &typed != current {
                anyhow::bail!("You did not specify the current leader of the cluster");
            }
        }
    }
    ctx.dcs
        .delete_cluster()
        .await
        .map_err(|e| anyhow::anyhow!("remove the keys of cluster {}: {e}", ctx.cluster))?;
    Ok(())
}

/// `flush CLUSTER [MEMBER...] restart|switchover`.
pub(crate) async fn flush(
    ctx: &Ctx,
    names: &[String],
    target: FlushTarget,
    role: Option<Role>,
    force: bool,
) -> anyhow::Result<()> {
    let view = ctx.read().await?;
    match target {
        FlushTarget::Restart => {
            // patronictl's get_members: show the table, filter by role, ask which and confirm.
            if !force || role.is_some() {
                if names.is_empty() && view.members.is_empty() {
                    anyhow::bail!("{} cluster doesn't have any members", ctx.cluster);
                }
                print!("{}", table::render_list(&ctx.cluster, &view));
            }
            let mut names: Vec<String> = names.to_vec();
            if let Some(role) = role {
                let with_role: Vec<String> = members_with_role(&view, role)
                    .iter()
                    .map(|m| m.name.to_string())
                    .collect();
                if names.is_empty() {
                    names = with_role;
                } else {
                    names.retain(|n| with_role.contains(n));
                    if names.is_empty() {
                        anyhow::bail!("No {role:?} among provided members");
                    }
                }
            }
            if names.is_empty() && !force {
                let all: Vec<String> = view.members.iter().map(|m| m.name.to_string()).collect();
                names = vec![prompt(
                    &format!("Which member do you want to flush [{}]?", all.join(", ")),
                    "name the members on the command line",
                )?];
            }
            let mut chosen = Vec::new();
            for n in &names {
                match view.members.iter().find(|m| m.name.as_str() == n) {
                    Some(m) => chosen.push(m),
                    None => anyhow::bail!("{n} is not a member of cluster"),
                }
            }
            confirm(
                force,
                &format!(
                    "Are you sure you want to flush members {}?",
                    names.join(", ")
                ),
            )?;
            super::restart::flush(ctx, &chosen).await?;
        }
        FlushTarget::Switchover => {
            let Some(failover) = view
                .failover
                .as_ref()
                .filter(|f| f.value.scheduled_at.is_some())
            else {
                println!("No pending scheduled switchover");
                return Ok(());
            };
            for member in leader_first(&view) {
                let url = format!("{}/switchover", member_api(member)?);
                match http::request(&ctx.config, reqwest::Method::DELETE, &url, None, &[]).await {
                    Ok(reply) if reply.status == 200 => {
                        println!("Success: {}", reply.body);
                        return Ok(());
                    }
                    Ok(reply) if reply.status == 404 => {
                        println!("Failed: {}", reply.body);
                        return Ok(());
                    }
                    Ok(reply) => println!(
                        "Failed: member={}, status_code={}, ({})",
                        member.name, reply.status, reply.body
                    ),
                    Err(e) => eprintln!("warning: member {} is not accessible: {e:#}", member.name),
                }
            }
            println!(
                "{} Could not find any accessible member of cluster {}",
                timestamp(),
                ctx.cluster
            );
            // patronictl's fallback: clear the key in the DCS, only if nobody changed it since.
            let cleared = ctx
                .dcs
                .write_failover(None, Some(failover.mod_revision))
                .await
                .map_err(|e| anyhow::anyhow!("clear the failover key: {e}"))?;
            if !cleared {
                anyhow::bail!("the failover key changed meanwhile: nothing cleared");
            }
        }
    }
    Ok(())
}
