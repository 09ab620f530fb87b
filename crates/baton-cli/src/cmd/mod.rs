//! The control commands: read the cluster from etcd, call the agents' REST API.

mod actions;
mod config;
mod drill;
mod http;
mod members;
mod query;
mod restart;

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use baton_cli::cli::{Command, Role};
use baton_core::{ClusterView, Member};
use baton_dcs::{Dcs, DcsScope, EtcdDcs};

/// What every command has: the configuration and the cluster it works on.
pub(crate) struct Ctx {
    pub(crate) config: baton_config::Config,
    /// The cluster name: the command's CLUSTER argument, else the configuration's `scope`.
    pub(crate) cluster: String,
    pub(crate) dcs: EtcdDcs,
}

impl Ctx {
    pub(crate) async fn read(&self) -> anyhow::Result<ClusterView> {
        let view = self
            .dcs
            .read_cluster()
            .await
            .context("read the cluster from etcd")?;
        for w in &view.warnings {
            eprintln!("warning: {w}");
        }
        Ok(view)
    }
}

/// A cluster name given on the command line: it becomes a DCS key segment, so an empty name
/// or one with `/` (which would reach other clusters' keys) is refused.
pub(crate) fn check_cluster_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty() || name.contains('/') || name.chars().any(char::is_control) {
        anyhow::bail!("invalid cluster name {name:?}: it must be non-empty, without \"/\"");
    }
    Ok(())
}

async fn connect(config: &baton_config::Config, cluster: &str) -> anyhow::Result<Ctx> {
    check_cluster_name(cluster)?;
    let mut settings = baton_cli::http::etcd_settings(config, Duration::from_secs(5))?;
    settings.scope = DcsScope {
        namespace: config.namespace.clone(),
        scope: cluster.to_owned(),
    };
    let dcs = EtcdDcs::connect(settings)
        .await
        .with_context(|| format!("connect to etcd at {}", config.etcd.hosts.join(",")))?;
    Ok(Ctx {
        config: config.clone(),
        cluster: cluster.to_owned(),
        dcs,
    })
}

pub(crate) async fn control(path: &Path, command: Command) -> anyhow::Result<()> {
    let config = crate::load(path)?.config;
    let one = |name: &Option<String>| name.clone().unwrap_or_else(|| config.scope.clone());
    let many = |names: &[String]| {
        if names.is_empty() {
            vec![config.scope.clone()]
        } else {
            names.to_vec()
        }
    };
    match command {
        Command::List {
            cluster_names,
            extended,
            timestamp,
            format,
            watch,
        } => {
            for name in many(&cluster_names) {
                let ctx = connect(&config, &name).await?;
                let options = baton_cli::table::ListOptions {
                    extended,
                    topology: false,
                };
                members::list(&ctx, options, timestamp, format, watch).await?;
            }
        }
        Command::Topology {
            cluster_names,
            watch,
        } => {
            for name in many(&cluster_names) {
                let ctx = connect(&config, &name).await?;
                let options = baton_cli::table::ListOptions {
                    extended: false,
                    topology: true,
                };
                members::list(&ctx, options, false, baton_cli::cli::Format::Pretty, watch).await?;
            }
        }
        Command::ShowConfig { cluster_name } => {
            config::show(&connect(&config, &one(&cluster_name)).await?).await?;
        }
        Command::EditConfig {
            cluster_name,
            quiet,
            set,
            pg,
            apply,
            replace,
            force,
        } => {
            let ctx = connect(&config, &one(&cluster_name)).await?;
            let edit = config::Edit {
                quiet,
                set,
                pg,
                apply,
                replace,
                force,
            };
            config::edit(&ctx, edit).await?;
        }
        Command::History {
            cluster_name,
            format,
        } => {
            let ctx = connect(&config, &one(&cluster_name)).await?;
            let view = ctx.read().await?;
            print!(
                "{}",
                baton_cli::table::render(&baton_cli::table::history_table(&view), format, "\t")
            );
        }
        Command::Dsn {
            cluster_name,
            role,
            member,
        } => {
            let ctx = connect(&config, &one(&cluster_name)).await?;
            let view = ctx.read().await?;
            let m = pick_member(&view, role, member.as_deref())
                .context("Can not find a suitable member")?;
            let (host, port) = m
                .pg_host_port()
                .with_context(|| format!("member {} has no conn_url", m.name))?;
            println!("host={host} port={port}");
        }
        Command::Query {
            cluster_name,
            format,
            file,
            password,
            username,
            watch,
            role,
            member,
            delimiter,
            command,
            dbname,
        } => {
            let ctx = connect(&config, &one(&cluster_name)).await?;
            let sql = match (command, file) {
                (Some(c), _) => c,
                (None, Some(f)) => {
                    std::fs::read_to_string(&f).with_context(|| format!("read {}", f.display()))?
                }
                (None, None) => anyhow::bail!("You need to specify either --command or --file"),
            };
            let q = query::Query {
                sql,
                format,
                delimiter,
                role,
                member,
                username,
                dbname,
                ask_password: password,
                watch: watch.period(),
            };
            query::run(&ctx, q).await?;
        }
        Command::Remove {
            cluster_name,
            format,
            force,
            leader,
        } => {
            let ctx = connect(&config, &cluster_name).await?;
            members::remove(&ctx, format, force, leader.as_deref()).await?;
        }
        Command::Flush {
            cluster_name,
            rest,
            role,
            force,
        } => {
            let (names, target) =
                baton_cli::cli::flush_args(&rest).map_err(|e| anyhow::anyhow!(e))?;
            let ctx = connect(&config, &cluster_name).await?;
            members::flush(&ctx, &names, target, role, force).await?;
        }
        Command::Restart {
            cluster_name,
            members,
            role,
            any: _,
            scheduled,
            pg_version,
            pending,
            timeout,
            force,
        } => {
            let ctx = connect(&config, &cluster_name).await?;
            let args = restart::RestartArgs {
                scheduled,
                pg_version,
                pending,
                timeout,
                force,
            };
            restart::restart(&ctx, &members, role, args).await?;
        }
        Command::Reload {
            cluster_name,
            members,
            role,
            force,
        } => {
            let ctx = connect(&config, &cluster_name).await?;
            restart::reload(&ctx, &members, role, force).await?;
        }
        Command::Drill {
            cluster_name,
            kill,
            candidate,
            dsn,
            keep,
            force,
            timeout,
            history,
            format,
        } => {
            let ctx = connect(&config, &one(&cluster_name)).await?;
            if history {
                drill::history(&ctx, format).await?;
            } else {
                let d = drill::Drill {
                    kill,
                    candidate,
                    dsn,
                    keep,
                    force,
                    timeout: Duration::from_secs_f64(timeout),
                    format,
                };
                drill::run(&ctx, d).await?;
            }
        }
        Command::DemoteCluster {
            cluster_name,
            host,
            port,
            restore_command,
            primary_slot_name,
            force,
        } => {
            // Checked before connecting: bad input changes nothing.
            let standby = actions::standby_config(host, port, restore_command, primary_slot_name)?;
            let ctx = connect(&config, &one(&cluster_name)).await?;
            actions::change_cluster_role(&ctx, Some(standby), force).await?;
        }
        Command::RegionSwitchover {
            standby_config,
            force,
        } => {
            let other = crate::load(&standby_config)?.config;
            let a = connect(&config, &config.scope).await?;
            let b = connect(&other, &other.scope).await?;
            actions::region_switchover(&a, &b, force).await?;
        }
        Command::PromoteCluster {
            cluster_name,
            force,
        } => {
            let ctx = connect(&config, &one(&cluster_name)).await?;
            actions::change_cluster_role(&ctx, None, force).await?;
        }
        other => {
            let ctx = connect(&config, &config.scope).await?;
            actions::run(&ctx, other).await?;
        }
    }
    Ok(())
}

/// Ask on the terminal unless `force`; without a terminal, refuse.
pub(crate) fn confirm(force: bool, question: &str) -> anyhow::Result<()> {
    if force {
        return Ok(());
    }
    let answer = prompt(&format!("{question} [y/N]"), "use --force")?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        anyhow::bail!("aborted (use --force to skip the question)")
    }
}

/// One answer typed on the terminal. Without a terminal on standard input this refuses, saying
/// how to go without the question (`instead`).
pub(crate) fn prompt(question: &str, instead: &str) -> anyhow::Result<String> {
    if !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "refusing to ask \"{question}\": standard input is not a terminal ({instead})"
        );
    }
    eprint!("{question}: ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .context("read the answer")?;
    Ok(answer.trim_end_matches(['\n', '\r']).to_owned())
}

/// The members a `-r/--role` means (patronictl's `get_all_members`).
pub(crate) fn members_with_role(view: &ClusterView, role: Role) -> Vec<&Member> {
    let leader = view.leader_name();
    match role {
        Role::Leader => view.leader_member().into_iter().collect(),
        // patronictl tells the two leaders apart by the role the leader's member key
        // publishes: `-r primary` skips a standby leader, `-r standby-leader` a primary.
        Role::Primary => view
            .leader_member()
            .filter(|m| m.role != "standby_leader")
            .into_iter()
            .collect(),
        Role::StandbyLeader => view
            .leader_member()
            .filter(|m| m.role != "primary" && m.role != "master")
            .into_iter()
            .collect(),
        Role::Replica => view
            .members
            .iter()
            .filter(|m| Some(&m.name) != leader)
            .collect(),
        Role::Any => view.members.iter().collect(),
    }
}

/// `-m MEMBER`, else the first member with `-r ROLE` (default: the leader).
pub(crate) fn pick_member<'v>(
    view: &'v ClusterView,
    role: Option<Role>,
    member: Option<&str>,
) -> Option<&'v Member> {
    match member {
        Some(name) => view.members.iter().find(|m| m.name.as_str() == name),
        None => members_with_role(view, role.unwrap_or(Role::Leader))
            .into_iter()
            .next(),
    }
}

/// `http://host:port` of a member's REST API (its `api_url` without `/patroni`); the leader's
/// when `name` is `None`.
pub(crate) fn api_base(view: &ClusterView, name: Option<&str>) -> anyhow::Result<String> {
    let member = match name {
        Some(n) => view.members.iter().find(|m| m.name.as_str() == n),
        None => view.leader_member(),
    }
    .with_context(|| format!("member {} not found in the DCS", name.unwrap_or("(leader)")))?;
    member_api(member)
}

pub(crate) fn member_api(member: &Member) -> anyhow::Result<String> {
    let url = member
        .api_url
        .as_deref()
        .with_context(|| format!("member {} has no api_url", member.name))?;
    Ok(url
        .trim_end_matches('/')
        .trim_end_matches("/patroni")
        .to_owned())
}

/// Members with a REST API, the leader first (patronictl's `get_all_members_leader_first`).
pub(crate) fn leader_first(view: &ClusterView) -> Vec<&Member> {
    let leader = view.leader_member().filter(|m| m.api_url.is_some());
    leader
        .into_iter()
        .chain(
            view.members
                .iter()
                .filter(|m| m.api_url.is_some() && Some(&m.name) != view.leader_name()),
        )
        .collect()
}

/// `YYYY-MM-DD HH:MM:SS` (UTC), patronictl's `timestamp(0)`.
pub(crate) fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let iso = baton_core::format_iso8601_utc(secs);
    iso.get(..19).unwrap_or(&iso).replace('T', " ")
}

#[cfg(test)]
mod tests {
    use baton_core::{LeaderKey, MemberName};

    use super::*;

    fn member(name: &str, role: &str) -> Member {
        Member {
            name: MemberName::new(name).expect("non-empty"),
            role: role.to_owned(),
            state: "running".to_owned(),
            ..Member::default()
        }
    }

    fn cluster(leader_role: &str) -> ClusterView {
        ClusterView {
            leader: Some(LeaderKey {
                name: MemberName::new("n1"),
                lease: 7,
                create_revision: 1,
                mod_revision: 1,
            }),
            members: vec![member("n1", leader_role), member("n2", "replica")],
            ..ClusterView::default()
        }
    }

    fn names(view: &ClusterView, role: Role) -> Vec<&str> {
        members_with_role(view, role)
            .into_iter()
            .map(|m| m.name.as_str())
            .collect()
    }

    #[test]
    fn role_filters_tell_a_standby_leader_from_a_primary() {
        let regular = cluster("primary");
        assert_eq!(names(&regular, Role::Leader), ["n1"]);
        assert_eq!(names(&regular, Role::Primary), ["n1"]);
        assert!(names(&regular, Role::StandbyLeader).is_empty());
        assert_eq!(names(&regular, Role::Replica), ["n2"]);

        let standby = cluster("standby_leader");
        assert_eq!(names(&standby, Role::Leader), ["n1"]);
        assert!(names(&standby, Role::Primary).is_empty());
        assert_eq!(names(&standby, Role::StandbyLeader), ["n1"]);
        assert_eq!(names(&standby, Role::Replica), ["n2"]);
        assert_eq!(names(&standby, Role::Any), ["n1", "n2"]);
    }
}
