//! `pgbaton`: `agent CONFIG.yml` runs the daemon; the other subcommands control a cluster the
//! way `patronictl` does (reading the DCS directly, or calling an agent's REST API).

mod cmd;

use std::path::Path;
use std::process::ExitCode;

use baton_cli::cli::{Cli, Command};
use clap::Parser;

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

fn load(path: &Path) -> anyhow::Result<baton_config::Loaded> {
    baton_config::load_file(path, &env)
        .map_err(|e| anyhow::anyhow!("invalid configuration {}:\n{e}", path.display()))
}

/// glibc's malloc gives each thread that allocates an arena of its own (up to eight per
/// core), each holding freed memory of its own. The agent runs a handful of threads (two
/// runtime workers, a few blocking ones) that allocate little: two arenas keep its (and the
/// fence guard's) resident memory down without making the REST workers queue for one lock.
fn limit_malloc_arenas() {
    // SAFETY: `mallopt` only sets a malloc tunable; called first thing in `main`, before any
    // other thread exists. A failure (returns 0) leaves glibc's default.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    match cli.command {
        Command::Agent {
            config,
            simulated_postgres,
        } => run_agent(&config, simulated_postgres),
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
            match rt.block_on(cmd::control(&config, command)) {
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

fn run_agent(path: &Path, simulated_postgres: bool) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            init_logging();
            tracing::error!("start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // SIGHUP re-reads the configuration file and never ends the agent. The handler is in
    // place before anything else, so an early SIGHUP (systemd's ExecReload) is not fatal.
    let hangups = {
        let _runtime = rt.enter();
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                init_logging();
                tracing::error!("install SIGHUP handler: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    let loaded = match load(path) {
        Ok(l) => l,
        Err(e) => {
            init_logging();
            tracing::error!("{e:#}");
            return ExitCode::from(2);
        }
    };
    // The `log` section: format, level, and where the lines go.
    if let Err(e) = baton_cli::logging::init(&loaded.config.log) {
        init_logging();
        tracing::error!("{e:#}");
        return ExitCode::from(2);
    }
    for w in &loaded.warnings {
        tracing::warn!("config: {w}");
    }
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
    let (requests_tx, requests) = tokio::sync::mpsc::channel(1);
    rt.spawn(forward_hangups(hangups, requests_tx));
    let file = path.to_owned();
    let reloads = baton_agent::Reloads {
        source: std::sync::Arc::new(move || baton_config::load_file(&file, &env)),
        requests,
    };
    // The fence guard enforces the fencing deadline when this process cannot (frozen or
    // killed), and takes the floating IP (if any) off this host with it; it outlives an
    // abnormal exit only.
    let data_dir = loaded.config.postgresql.data_dir.clone();
    if simulated_postgres {
        // No PostgreSQL processes, so no fence guard: the simulated server lives and dies
        // with this process.
        tracing::warn!("TEST-ONLY MODE: simulated PostgreSQL (--simulated-postgres)");
        return match rt.block_on(run_simulated(loaded.config, reloads, shutdown)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let guard = baton_agent::guard::spawn_guard(&data_dir, loaded.config.vip.as_ref());
    // The agent runs as a task on the runtime's workers, beside the IO it waits for, not on
    // this thread: every wake-up of a future polled by `block_on` is one more hand-off
    // between threads (idle cost). A panic of the agent is re-raised here as it would have
    // been from `block_on`: the fence guard outlives it.
    let result = rt.block_on(async {
        match tokio::spawn(baton_agent::run(loaded.config, Some(reloads), shutdown)).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(anyhow::anyhow!("agent task: {e}")),
        }
    });
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

/// One reload request per SIGHUP; SIGHUPs arriving while one is queued are merged into it.
async fn forward_hangups(
    mut hangups: tokio::signal::unix::Signal,
    requests: tokio::sync::mpsc::Sender<()>,
) {
    while hangups.recv().await.is_some() {
        if let Err(tokio::sync::mpsc::error::TrySendError::Closed(())) = requests.try_send(()) {
            return;
        }
    }
}

/// `agent --simulated-postgres`: the agent over `baton_pg_model::SimulatedPostgres`, listening
/// on `postgresql.connect_address`.
async fn run_simulated(
    config: baton_config::Config,
    reloads: baton_agent::Reloads,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let address = &config.postgresql.connect_address;
    let listen = tokio::net::lookup_host(address.as_str())
        .await
        .ok()
        .and_then(|mut a| a.next())
        .with_context(|| format!("postgresql.connect_address: cannot resolve {address:?}"))?;
    let pg = baton_pg_model::SimulatedPostgres::start(baton_pg_model::SimulatedSettings {
        name: config.name.clone(),
        listen,
        pg_ctl_timeout: config.postgresql.pg_ctl_timeout,
    })
    .await
    .with_context(|| format!("simulated PostgreSQL: listen on {listen}"))?;
    baton_agent::run_with(config, Some(reloads), shutdown, move |_| pg.clone()).await
}
