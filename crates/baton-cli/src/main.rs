//! `pgbaton`: `agent CONFIG.yml` runs the daemon; the other subcommands control a cluster the
//! way `patronictl` does (reading the DCS directly, or calling an agent's REST API).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use baton_cli::table;
use baton_dcs::{Dcs, DcsScope, EtcdDcs, EtcdSettings};
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
    match baton_config::load_file(path, &env) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("warning: {w}");
            }
            println!("{}: configuration is valid", path.display());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{}: configuration is invalid:\n{errors}", path.display());
            ExitCode::FAILURE
        }
    }
}

fn run_agent(path: &Path) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PGBATON_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
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
    match rt.block_on(baton_agent::run(loaded.config, shutdown)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn control(path: &Path, command: Command) -> anyhow::Result<()> {
    let config = load(path)?.config;
    let dcs = EtcdDcs::connect(EtcdSettings {
        endpoints: config.etcd.hosts.clone(),
        scope: DcsScope {
            namespace: config.namespace.clone(),
            scope: config.scope.clone(),
        },
        request_timeout: Duration::from_secs(5),
        username: config.etcd.username.clone(),
        password: config.etcd.password.clone(),
    })
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
        Command::Agent { .. } | Command::ValidateConfig { .. } | Command::Version => {
            unreachable!("handled in main")
        }
    }
    Ok(())
}
