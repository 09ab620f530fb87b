//! `pgbaton-dev`: the developer's command for the cluster files and the demo, on the test
//! harness's library (so the harness, `make demo`, `docker/` and `deploy/` share one renderer).
//!
//! ```text
//! pgbaton-dev render haproxy [--profile demo|docker|deploy] [--node NAME=HOST:PG_PORT:REST_PORT]...
//!                            [--bind ADDR] [--primary-port N] [--replica-port N] [--stats-port N]
//! pgbaton-dev render node [--profile demo|docker] [--name NAME]
//! pgbaton-dev render checked-in [--write]
//! pgbaton-dev demo up|down|status [--dir DIR] [--timeout SECS]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use baton_integration_tests::demo::{self, DEFAULT_PG_BIN_DIR, Layout};
use baton_integration_tests::render::{
    self, HaproxyProfile, NodeProfile, REGENERATE, haproxy_config, node_config, node_file,
    parse_backend,
};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "pgbaton-dev",
    about = "Render pgbaton's cluster files; run the local demo"
)]
struct Cli {
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand)]
enum Top {
    /// Print a rendered file on stdout, or check / rewrite the copies under deploy/ and docker/.
    #[command(subcommand)]
    Render(Render),
    /// The local 3-node demo cluster (`make demo`, `make demo-down`).
    Demo {
        #[command(subcommand)]
        action: DemoAction,
        #[command(flatten)]
        place: DemoDir,
        /// Seconds `up` waits for a healthy cluster.
        #[arg(long, env = "PGBATON_DEMO_TIMEOUT", default_value_t = 180)]
        timeout: u64,
    },
}

#[derive(Args)]
struct DemoDir {
    /// The demo's directory.
    #[arg(long, env = "PGBATON_DEMO_DIR")]
    dir: Option<PathBuf>,
}

impl DemoDir {
    fn layout(&self) -> anyhow::Result<Layout> {
        Ok(match &self.dir {
            // Absolute: the processes' command lines name it (see `demo down`).
            Some(dir) => Layout::new(std::path::absolute(dir).context("the demo directory")?),
            None => Layout::default(),
        })
    }
}

#[derive(Subcommand)]
enum DemoAction {
    /// Start etcd, three agents and HAProxy (detached) and wait until the cluster is healthy.
    Up,
    /// Stop everything `up` started and remove the directory.
    Down,
    /// Which processes run, and the cluster table.
    Status,
}

#[derive(Subcommand)]
enum Render {
    /// An HAProxy configuration.
    Haproxy {
        #[arg(long, default_value = "demo")]
        profile: HaproxyProfile,
        /// A server, instead of the profile's: NAME=HOST:PG_PORT:REST_PORT (repeat per node).
        #[arg(long = "node", value_parser = parse_backend)]
        nodes: Vec<baton_integration_tests::Backend>,
        /// The address every port is bound to (`*`: all).
        #[arg(long)]
        bind: Option<String>,
        #[arg(long)]
        primary_port: Option<u16>,
        #[arg(long)]
        replica_port: Option<u16>,
        #[arg(long)]
        stats_port: Option<u16>,
        #[command(flatten)]
        place: DemoDir,
    },
    /// A node's Patroni-format configuration.
    Node {
        #[arg(long, default_value = "demo")]
        profile: NodeProfile,
        /// The node (demo profile).
        #[arg(long, default_value = "node1")]
        name: String,
        /// PostgreSQL's binaries (demo profile).
        #[arg(long, env = "PGBATON_PG_BIN_DIR", default_value = DEFAULT_PG_BIN_DIR)]
        pg_bin_dir: PathBuf,
        #[command(flatten)]
        place: DemoDir,
    },
    /// Compare the rendered files checked in under deploy/ and docker/ with the renderer's
    /// output (exit status 1 and a diff when one differs), or rewrite them.
    CheckedIn {
        #[arg(long)]
        write: bool,
    },
}

fn render(cmd: Render) -> anyhow::Result<ExitCode> {
    match cmd {
        Render::Haproxy {
            profile,
            nodes,
            bind,
            primary_port,
            replica_port,
            stats_port,
            place,
        } => {
            let mut cfg = haproxy_config(profile, &place.layout()?);
            if !nodes.is_empty() {
                cfg.backends = nodes;
            }
            if let Some(bind) = bind {
                cfg.bind = bind;
            }
            cfg.ports.primary = primary_port.unwrap_or(cfg.ports.primary);
            cfg.ports.replica = replica_port.unwrap_or(cfg.ports.replica);
            cfg.ports.stats = stats_port.unwrap_or(cfg.ports.stats);
            print!("{}", cfg.render());
        }
        Render::Node {
            profile,
            name,
            pg_bin_dir,
            place,
        } => {
            let (comment, cfg) = node_config(profile, &name, &place.layout()?, &pg_bin_dir)?;
            print!("{}", node_file(&comment, &cfg)?);
        }
        Render::CheckedIn { write: true } => {
            let changed = render::write_checked_in(&render::repo_root())?;
            if changed.is_empty() {
                println!("every checked-in copy is up to date");
            }
            for path in changed {
                println!("rewrote {path}");
            }
        }
        Render::CheckedIn { write: false } => {
            let drifted = render::drift(&render::repo_root())?;
            if drifted.is_empty() {
                println!("every checked-in copy matches the renderer");
                return Ok(ExitCode::SUCCESS);
            }
            for (path, diff) in &drifted {
                println!("{path} differs (- the file, + the renderer):\n{diff}");
            }
            println!("regenerate: {REGENERATE}");
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Top::Render(cmd) => render(cmd),
        Top::Demo {
            action,
            place,
            timeout,
        } => run_demo(action, &place, Duration::from_secs(timeout)).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pgbaton-dev: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_demo(action: DemoAction, place: &DemoDir, timeout: Duration) -> anyhow::Result<()> {
    let layout = place.layout()?;
    match action {
        DemoAction::Up => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("start the async runtime")?
            .block_on(demo::up(&layout, timeout)),
        DemoAction::Down => demo::down(&layout),
        DemoAction::Status => demo::status(&layout),
    }
}
