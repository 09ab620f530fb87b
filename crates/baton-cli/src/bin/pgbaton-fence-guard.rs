//! `pgbaton-fence-guard`: the fence guard the agent starts beside itself (`baton_guard`;
//! ARCHITECTURE.md, "Fencing"), as a binary of its own: only the guard's loop is reachable
//! from here (no clap, no DCS client, no REST API, no TLS), so the guard process maps a
//! fraction of `pgbaton`'s text and costs a fraction of its resident memory. Installed beside
//! `pgbaton`; when it is missing the agent runs `pgbaton fence-guard` instead (the same loop).
//!
//! Arguments: `fence-guard --data-dir D --agent-pid P [--vip A/L --vip-interface I]`.
//! `PGBATON_LOG` sets the level (`error`, `warn`, `info`, `debug`, `trace`, `off`; default
//! `info`; a per-module filter, which `pgbaton fence-guard` takes, is read as `info` here).

use std::process::ExitCode;

use tracing::level_filters::LevelFilter;

fn main() -> ExitCode {
    let level = std::env::var("PGBATON_LOG")
        .ok()
        .and_then(|v| v.trim().parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::INFO);
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match baton_guard::args::parse(std::env::args_os().skip(1)) {
        Ok(args) => {
            baton_guard::run_guard(&args.data_dir, args.agent_pid, args.vip);
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("fence guard: {e}");
            ExitCode::from(2)
        }
    }
}
