//! The fence guard: a small process of its own (`pgbaton-fence-guard`, started by the agent;
//! `pgbaton fence-guard` when that binary is missing) that enforces the fencing record when the
//! agent cannot. This crate holds everything the guard process runs (the rule, the loop, the
//! fencing record, the clock) and nothing else, so that the binary of its own
//! (`crates/baton-cli/src/bin/pgbaton-fence-guard.rs`) links none of the agent's DCS, HTTP or
//! TLS code: the agent (`baton_agent::guard`, `baton_agent::fence`) re-exports it and runs the
//! very same loop when it falls back to re-executing itself.
//!
//! The fencer task lives inside the agent: an agent that is frozen (SIGSTOP, a hung runtime,
//! swapped out) or killed cannot stop its primary at the deadline, while its lease runs out
//! and another member is promoted (simulator finding "no watchdog"). The guard reads the same
//! record the fencer keeps beside the data directory ([`FenceFile`]: the deadline until which
//! the lease protects a running primary, on `CLOCK_BOOTTIME`) whenever it changes and at that
//! deadline ([`wake`]; every [`GUARD_INTERVAL`] where no event can tell), and once that
//! deadline has passed with a postmaster still running it
//! kills every process of the data directory (postmaster frozen first, then SIGKILL, as
//! `stop(Immediate)` does when `pg_ctl` fails). A live agent rewrites the record at every
//! renewal and clears it when it stops leading or fences itself, so the guard only acts on a
//! deadline the agent could not act on.
//!
//! It runs in its own process group (a signal to the agent's group does not reach it) and
//! outlives an agent that dies abnormally; an agent that exits normally stops it, and a new
//! agent replaces a previous agent's guard (found through `<data_dir>.pgbaton-guard`). Without
//! an agent it exits as soon as nothing is left to guard. Like Patroni's watchdog it does not
//! cover a freeze of the whole host (a hardware watchdog does); unlike it, it needs no
//! `/dev/watchdog`.
//!
//! With a floating IP (`vip:`, passed as `--vip ADDRESS/LEN --vip-interface NAME`), the guard
//! also takes that one address off the interface (netlink, as the agent's VIP task does) when
//! it fences, on every later check while the recorded deadline stays passed (the agent is
//! still frozen or dead: a live agent clears or renews the record), and when it exits because
//! the agent is gone: a killed or frozen agent cannot drop it, and the host would otherwise
//! keep answering ARP for it after the failover. It removes the address only when it is on
//! the interface, never adds it, and touches no other address; only this needs
//! `CAP_NET_ADMIN`, inherited from the agent.

pub mod args;
pub mod clock;
pub mod guard;
pub mod record;
pub mod wake;

pub use clock::SystemClock;
pub use guard::{
    GUARD_ARG, GUARD_INTERVAL, GuardStep, GuardView, GuardVip, clear_address, guard_clears_address,
    guard_pid_file, guard_step, run_guard,
};
pub use record::{FenceFile, FenceRecord, beside_data_dir};
