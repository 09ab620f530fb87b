//! `restart` and `reload` (patronictl's verbs of the same names), and `flush ... restart`:
//! requests to each chosen member's REST API, with patronictl's questions and output.

use baton_cli::cli::Role;
use baton_core::{ClusterView, Member};

use super::{Ctx, confirm, http, member_api, members_with_role, prompt};
use baton_cli::table;

/// The members named (or, without names, those with `role`; asked for when there are none
/// and no `--force`), as patronictl's `get_members` chooses them.
pub(crate) fn choose<'v>(
    ctx: &Ctx,
    view: &'v ClusterView,
    names: &[String],
    role: Option<Role>,
    force: bool,
    verb: &str,
) -> anyhow::Result<Vec<&'v Member>> {
    if view.members.is_empty() {
        anyhow::bail!("{} cluster doesn't have any members", ctx.cluster);
    }
    if !force || role.is_some() {
        print!("{}", table::render_list(&ctx.cluster, view));
    }
    let with_role: Vec<&Member> = members_with_role(view, role.unwrap_or(Role::Any));
    let mut names: Vec<String> = names.to_vec();
    if names.is_empty() {
        if role.is_some() || force {
            names = with_role.iter().map(|m| m.name.to_string()).collect();
        } else {
            let all: Vec<String> = view.members.iter().map(|m| m.name.to_string()).collect();
            names = vec![prompt(
                &format!("Which member do you want to {verb} [{}]?", all.join(", ")),
                "name the members on the command line or use --force",
            )?];
        }
    }
    let mut chosen = Vec::new();
    for n in &names {
        match with_role.iter().find(|m| m.name.as_str() == n) {
            Some(m) => chosen.push(*m),
            None if view.members.iter().any(|m| m.name.as_str() == n) => {}
            None => anyhow::bail!("{n} is not a member of cluster"),
        }
    }
    if chosen.is_empty() {
        let role = format!("{:?}", role.unwrap_or(Role::Any)).to_lowercase();
        anyhow::bail!("No {role} among provided members");
    }
    Ok(chosen)
}

/// What `restart` was asked for.
pub(crate) struct RestartArgs {
    pub(crate) scheduled: Option<String>,
    pub(crate) pg_version: Option<String>,
    pub(crate) pending: bool,
    pub(crate) timeout: Option<String>,
    pub(crate) force: bool,
}

/// `restart CLUSTER [MEMBER...]`: `POST /restart` on each member.
pub(crate) async fn restart(
    ctx: &Ctx,
    names: &[String],
    role: Option<Role>,
    args: RestartArgs,
) -> anyhow::Result<()> {
    let view = ctx.read().await?;
    let members = choose(ctx, &view, names, role, args.force, "restart")?;
    let mut scheduled = args.scheduled.clone();
    if scheduled.is_none() && !args.force {
        let answer = prompt(
            "When should the restart take place (e.g. 2015-10-01T14:30+00:00)  [now]",
            "use --scheduled or --force",
        )?;
        scheduled = Some(answer);
    }
    let scheduled = scheduled.filter(|s| !s.trim().is_empty() && s.trim() != "now");
    let mut pg_version = args.pg_version.clone();
    if pg_version.is_none() && !args.force {
        let answer = prompt(
            "Restart if the PostgreSQL version is less than provided (e.g. 9.5.2)  []",
            "use --pg-version or --force",
        )?;
        pg_version = Some(answer).filter(|v| !v.trim().is_empty());
    }
    let mut body = serde_json::Map::new();
    if args.pending {
        body.insert("restart_pending".into(), true.into());
    }
    if let Some(v) = pg_version {
        body.insert("postgres_version".into(), v.into());
    }
    if let Some(at) = &scheduled {
        let paused = view
            .config
            .as_ref()
            .and_then(|c| serde_json::from_str::<serde_json::Value>(&c.value).ok())
            .and_then(|c| c.get("pause").and_then(serde_json::Value::as_bool))
            .unwrap_or(false);
        if paused {
            anyhow::bail!("Can't schedule restart in the paused state");
        }
        body.insert("schedule".into(), at.clone().into());
    }
    if let Some(t) = &args.timeout {
        body.insert("timeout".into(), t.clone().into());
    }
    let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    confirm(
        args.force,
        &format!(
            "Are you sure you want to restart members {}?",
            names.join(", ")
        ),
    )?;
    let body = serde_json::Value::Object(body);
    for member in members {
        let base = member_api(member)?;
        if scheduled.is_some() && args.force && member.scheduled_restart.is_some() {
            let reply = http::request(
                &ctx.config,
                reqwest::Method::DELETE,
                &format!("{base}/restart"),
                None,
                &[],
            )
            .await?;
            report(&reply, &member.name.to_string(), "flush scheduled restart");
        }
        let reply = http::request(
            &ctx.config,
            reqwest::Method::POST,
            &format!("{base}/restart"),
            Some(&body),
            &[],
        )
        .await?;
        match reply.status {
            200 => println!("Success: restart on member {}", member.name),
            202 => println!("Success: restart scheduled on member {}", member.name),
            409 => println!(
                "Failed: another restart is already scheduled on member {}",
                member.name
            ),
            code => println!(
                "Failed: restart for member {}, status code={code}, ({})",
                member.name, reply.body
            ),
        }
    }
    Ok(())
}

/// `reload CLUSTER [MEMBER...]`: `POST /reload` on each member.
pub(crate) async fn reload(
    ctx: &Ctx,
    names: &[String],
    role: Option<Role>,
    force: bool,
) -> anyhow::Result<()> {
    let view = ctx.read().await?;
    let members = choose(ctx, &view, names, role, force, "reload")?;
    let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    confirm(
        force,
        &format!(
            "Are you sure you want to reload members {}?",
            names.join(", ")
        ),
    )?;
    let loop_wait = view
        .config
        .as_ref()
        .and_then(|c| serde_json::from_str::<serde_json::Value>(&c.value).ok())
        .and_then(|c| c.get("loop_wait").and_then(serde_json::Value::as_u64))
        .unwrap_or(10);
    for member in members {
        let base = member_api(member)?;
        let reply = http::request(
            &ctx.config,
            reqwest::Method::POST,
            &format!("{base}/reload"),
            None,
            &[],
        )
        .await?;
        if reply.status == 200 {
            println!("No changes to apply on member {}", member.name);
        } else if reply.status == 202 {
            println!(
                "Reload request received for member {} and will be processed within {loop_wait} seconds",
                member.name
            );
        } else {
            report(&reply, &member.name.to_string(), "reload");
        }
    }
    Ok(())
}

/// `flush ... restart`: `DELETE /restart` on each chosen member that has one scheduled.
pub(crate) async fn flush(ctx: &Ctx, members: &[&Member]) -> anyhow::Result<()> {
    for member in members {
        if member.scheduled_restart.is_none() {
            println!("No scheduled restart for member {}", member.name);
            continue;
        }
        let url = format!("{}/restart", member_api(member)?);
        let reply = http::request(&ctx.config, reqwest::Method::DELETE, &url, None, &[]).await?;
        report(&reply, &member.name.to_string(), "flush scheduled restart");
    }
    Ok(())
}

/// patronictl's `check_response`.
fn report(reply: &http::Reply, member: &str, action: &str) {
    if reply.ok() {
        println!("Success: {action} for member {member}");
    } else {
        println!(
            "Failed: {action} for member {member}, status code={}, ({})",
            reply.status, reply.body
        );
    }
}
