//! `pgbaton`: `agent CONFIG.yml` runs the daemon; the other subcommands control a cluster the
//! way `patronictl` does (reading the DCS directly, or calling an agent's REST API).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use baton_cli::table;
use baton_dcs::{Dcs, EtcdDcs};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "pgbaton",
    version,
    about = "PostgreSQL high-availability agent, a drop-in replacement for Patroni"
)]
struct Cli {
    /// Configuration file (the agent's YAML).
    #[arg(
        short = 'c',
        long = "config-file",
        global = true,
        env = "PGBATON_CONFIG_FILE"
    )]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Pretty,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent with this configuration file.
    Agent { config: PathBuf },
    /// Check a configuration file; print every error with its key path.
    ValidateConfig { config: PathBuf },
    /// Internal: the fence guard the agent starts beside itself (see ARCHITECTURE.md).
    #[command(hide = true)]
    FenceGuard {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        agent_pid: i32,
        /// The floating IP (`vip.address`) to take off the host when the agent cannot.
        #[arg(long, requires = "vip_interface")]
        vip: Option<String>,
        /// Its interface (`vip.interface`).
        #[arg(long, requires = "vip")]
        vip_interface: Option<String>,
    },
    /// Show the cluster members (patronictl list).
    List {
        #[arg(short = 'f', long, value_enum, default_value = "pretty")]
        format: Format,
    },
    /// Show the dynamic configuration stored in the DCS.
    ShowConfig,
    /// Show the timeline history (patronictl history).
    History {
        #[arg(short = 'f', long, value_enum, default_value = "pretty")]
        format: Format,
    },
    /// Planned switchover: the leader hands over to a standby (patronictl switchover).
    Switchover {
        /// The current leader (default: the one in the DCS).
        #[arg(long, alias = "primary")]
        leader: Option<String>,
        /// The member to take over (default: the healthiest).
        #[arg(long)]
        candidate: Option<String>,
        /// When: an ISO 8601 time with a timezone, or "now".
        #[arg(long)]
        scheduled: Option<String>,
        /// Do not ask for confirmation.
        #[arg(long)]
        force: bool,
    },
    /// Manual failover to a named member, also when the cluster has no leader.
    Failover {
        #[arg(long)]
        candidate: String,
        #[arg(long)]
        force: bool,
    },
    /// Re-clone a replica from the leader (POST /reinitialize on that member).
    Reinit {
        member: String,
        #[arg(long)]
        force: bool,
        /// Wait until the member runs again.
        #[arg(long)]
        wait: bool,
    },
    /// Maintenance mode: no automatic failover (PATCH /config {"pause": true}).
    Pause {
        /// Wait until every member reports it.
        #[arg(long)]
        wait: bool,
    },
    /// Leave maintenance mode.
    Resume {
        #[arg(long)]
        wait: bool,
    },
    /// Print the version.
    Version,
}

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

fn load(path: &Path) -> anyhow::Result<baton_config::Loaded> {
    baton_config::load_file(path, &env)
        .map_err(|e| anyhow::anyhow!("invalid configuration {}:\n{e}", path.display()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Agent { config } => run_agent(&config),
        Command::ValidateConfig { config } => validate(&config),
        Command::FenceGuard {
            data_dir,
            agent_pid,
            vip,
            vip_interface,
        } => {
            init_logging();
            let vip = match (vip, vip_interface) {
                (Some(address), Some(interface)) => {
                    match baton_agent::guard::GuardVip::parse(&address, &interface) {
                        Ok(vip) => Some(vip),
                        Err(e) => {
                            tracing::error!("fence guard: {e}");
                            return ExitCode::from(2);
                        }
                    }
                }
                _ => None,
            };
            baton_agent::guard::run_guard(&data_dir, agent_pid, vip);
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("pgbaton version {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        command => {
            let Some(config) = cli.config.clone() else {
                eprintln!(
                    "error: this command needs -c CONFIG.yml (or PGBATON_CONFIG_FILE) to find the DCS"
                );
                return ExitCode::from(2);
            };
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: start runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(control(&config, command)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn validate(path: &Path) -> ExitCode {
    let result = baton_config::load_file(path, &env);
    let report = baton_cli::validate::report(&path.display().to_string(), &result);
    for line in &report.diagnostics {
        eprintln!("{line}");
    }
    println!("{}", report.verdict);
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PGBATON_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn run_agent(path: &Path) -> ExitCode {
    init_logging();
    let loaded = match load(path) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("{e:#}");
            return ExitCode::from(2);
        }
    };
    for w in &loaded.warnings {
        tracing::warn!("config: {w}");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("install SIGTERM handler: {e}");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => tracing::info!("received SIGTERM"),
            _ = tokio::signal::ctrl_c() => tracing::info!("received SIGINT"),
        }
    };
    // The fence guard enforces the fencing deadline when this process cannot (frozen or
    // killed), and takes the floating IP (if any) off this host with it; it outlives an
    // abnormal exit only.
    let data_dir = loaded.config.postgresql.data_dir.clone();
    let guard = baton_agent::guard::spawn_guard(&data_dir, loaded.config.vip.as_ref());
    let result = rt.block_on(baton_agent::run(loaded.config, shutdown));
    if let Some(guard) = guard {
        baton_agent::guard::stop_guard(guard, &data_dir);
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn control(path: &Path, command: Command) -> anyhow::Result<()> {
    let config = load(path)?.config;
    let dcs = EtcdDcs::connect(baton_cli::http::etcd_settings(
        &config,
        Duration::from_secs(5),
    )?)
    .await
    .with_context(|| format!("connect to etcd at {}", config.etcd.hosts.join(",")))?;
    let view = dcs
        .read_cluster()
        .await
        .context("read the cluster from etcd")?;
    for w in &view.warnings {
        eprintln!("warning: {w}");
    }
    match command {
        Command::List {
            format: Format::Pretty,
        } => print!("{}", table::render_list(&config.scope, &view)),
        Command::List {
            format: Format::Json,
        } => println!("{}", table::list_json(&config.scope, &view)),
        Command::History {
            format: Format::Pretty,
        } => print!("{}", table::render_history(&view)),
        Command::History {
            format: Format::Json,
        } => {
            let lines: Vec<serde_json::Value> = view
                .history
                .iter()
                .map(|h| {
                    serde_json::json!([h.timeline.0, h.lsn.0, h.reason, h.timestamp, h.new_leader])
                })
                .collect();
            println!("{}", serde_json::Value::Array(lines));
        }
        Command::ShowConfig => match &view.config {
            Some(c) => {
                let value: serde_json::Value =
                    serde_json::from_str(&c.value).context("the config key does not hold JSON")?;
                println!(
                    "{}",
                    serde_yaml::to_string(&value).context("render config as YAML")?
                );
            }
            None => anyhow::bail!("the cluster has no dynamic configuration (config key missing)"),
        },
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
                    config.scope
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
            call(
                &config,
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
                    config.scope
                ),
            )?;
            // Through the leader when there is one, else through the candidate itself.
            let via = view
                .leader_name()
                .map(ToString::to_string)
                .unwrap_or_else(|| candidate.clone());
            let target = api_base(&view, Some(&via))?;
            let body = serde_json::json!({ "candidate": candidate });
            call(
                &config,
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
            let http = baton_cli::http::client(&config, Duration::from_secs(10))?;
            let status = |target: String| {
                let http = http.clone();
                async move {
                    http.get(format!("{target}/patroni"))
                        .send()
                        .await
                        .ok()?
                        .json::<serde_json::Value>()
                        .await
                        .ok()
                }
            };
            let before = status(target.clone()).await.as_ref().and_then(started);
            let body = serde_json::json!({ "force": force });
            call(
                &config,
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
        Command::Pause { wait } => set_pause(&config, &dcs, &view, true, wait).await?,
        Command::Resume { wait } => set_pause(&config, &dcs, &view, false, wait).await?,
        Command::Agent { .. }
        | Command::ValidateConfig { .. }
        | Command::FenceGuard { .. }
        | Command::Version => {
            unreachable!("handled in main")
        }
    }
    Ok(())
}

/// Ask on the terminal unless `--force`.
fn confirm(force: bool, question: &str) -> anyhow::Result<()> {
    if force {
        return Ok(());
    }
    eprint!("{question} [y/N]: ");
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .context("read the confirmation")?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        anyhow::bail!("aborted (use --force to skip the question)")
    }
}

/// `http://host:port` of a member's REST API (its `api_url` without `/patroni`); the leader's
/// when `name` is `None`.
fn api_base(view: &baton_core::ClusterView, name: Option<&str>) -> anyhow::Result<String> {
    let member = match name {
        Some(n) => view.members.iter().find(|m| m.name.as_str() == n),
        None => view.leader_member(),
    }
    .with_context(|| format!("member {} not found in the DCS", name.unwrap_or("(leader)")))?;
    let url = member
        .api_url
        .as_deref()
        .with_context(|| format!("member {} has no api_url", member.name))?;
    Ok(url
        .trim_end_matches('/')
        .trim_end_matches("/patroni")
        .to_owned())
}

/// One REST call with the configured credentials; prints the answer, fails on non-2xx.
async fn call(
    config: &baton_config::Config,
    method: reqwest::Method,
    url: &str,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<String> {
    let client = baton_cli::http::client(config, Duration::from_secs(60))?;
    let mut request = baton_cli::http::request(config, &client, method.clone(), url);
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("{method} {url}"))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if !status.is_success() {
        anyhow::bail!("{method} {url}: {status}: {text}");
    }
    if !text.is_empty() {
        println!("{text}");
    }
    Ok(text)
}

/// `PATCH /config {"pause": true|null}` on the leader (or any member with an API).
async fn set_pause(
    config: &baton_config::Config,
    dcs: &EtcdDcs,
    view: &baton_core::ClusterView,
    pause: bool,
    wait: bool,
) -> anyhow::Result<()> {
    let target = api_base(view, None).or_else(|_| {
        let first = view.members.first().map(|m| m.name.to_string());
        api_base(view, first.as_deref())
    })?;
    let body = serde_json::json!({ "pause": if pause { serde_json::Value::Bool(true) } else { serde_json::Value::Null } });
    call(
        config,
        reqwest::Method::PATCH,
        &format!("{target}/config"),
        Some(&body),
    )
    .await?;
    if wait {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let view = dcs
                .read_cluster()
                .await
                .context("read the cluster from etcd")?;
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
