//! The real-process test harness for pgbaton.
//!
//! One library serves every test that runs real processes: the integration tests in
//! `tests/`, the fault suite and the benchmark. It starts etcd, PostgreSQL (through the
//! `pgbaton` agents it starts) and HAProxy on loopback, gives the test handles to poke
//! them, and tears everything down when the [`Cluster`] is dropped, even when the test panics.
//! With [`ClusterSpec::netns`] each node is instead a host in its own network namespace on a
//! bridge, with a client namespace beside them ([`Network`]): for the floating IP and for
//! partitions of single hosts. [`Patronictl`] runs Patroni's own `patronictl` (from a
//! virtualenv the harness makes once, see [`patronictl_venv`]) against a cluster.
//!
//! Rules the harness follows (and tests built on it should too):
//! - nothing is mocked: real etcd, real PostgreSQL 15, real `pgbaton agent`, real HAProxy;
//! - no sleeps as synchronisation: [`wait_for`] polls a condition with a deadline;
//! - it is an independent oracle: it reads etcd through its JSON gateway, PostgreSQL through
//!   SQL and the agents through their REST API, never through the crates under test;
//! - every process it starts is killed on drop (agents, every PostgreSQL process of each data
//!   directory, etcd, HAProxy), and the temporary directory is removed unless
//!   `PGBATON_KEEP_TEST_DIRS=1`; when a test fails, the tail of each log is printed.
//!
//! Typical use:
//! ```ignore
//! let Some(tools) = Tools::for_test("failover")? else { return Ok(()) };
//! let mut cluster = Cluster::start(&tools, ClusterSpec::new(3)).await?;
//! let healthy = cluster.wait_healthy(scaled(Duration::from_secs(120))).await?;
//! cluster.kill_host(&healthy.leader)?;
//! ...
//! cluster.finish();
//! ```

pub mod chaos;
mod cluster;
pub mod demo;
mod etcd;
mod haproxy;
mod netns;
mod node;
mod patronictl;
mod pg;
mod ports;
mod process;
pub mod render;
mod sampler;
pub mod scale;
pub mod tls;
mod tools;
mod wait;

pub use cluster::{Cluster, ClusterSpec, Healthy, Timing};
pub use etcd::{Etcd, EtcdClient, EtcdKv};
pub use haproxy::{Backend, Haproxy, HaproxyConfig, HaproxyPlace, HaproxyPorts, HaproxyTiming};
pub use netns::{
    HOST_INTERFACE, Host, NAME_PREFIX as NETNS_NAME_PREFIX, NetTools, Network, NodeNet,
    PREFIX_LEN as NETNS_PREFIX_LEN, format_mac, netns_path,
    remove_leftovers as remove_netns_leftovers, run_in, spawn_in,
};
pub use node::{Node, NodeConfig, PgAuth, deep_merge};
pub use patronictl::{
    CtlOutput, PATRONI_REQUIREMENT, Patronictl, ctl_config, default_venv_dir, ensure_venv,
    patronictl_venv,
};
pub use pg::{PgTarget, lsn_reached, query_rows, simple_query};
pub use ports::free_port;
pub use process::{
    Proc, kill_postmaster, kill_processes_under, kill_tree, pid_alive, postmaster_pid, start_reaper,
};
pub use sampler::{PrimarySampler, SampleReport, SampleTarget, Violation};
pub use tools::{RunAs, Tools, scaled};
pub use wait::{Check, wait_for, wait_until};

/// In a test returning `anyhow::Result<()>`: the tools it needs ([`Tools::for_test`]), or
/// `return Ok(())` when they are missing and the test may be skipped (it printed why).
#[macro_export]
macro_rules! tools_or_skip {
    ($test:expr) => {
        match $crate::Tools::for_test($test)? {
            Some(tools) => tools,
            None => return Ok(()),
        }
    };
}

/// Read the last `lines` lines of a (log) file; empty when the file is missing.
pub fn tail_file(path: &std::path::Path, lines: usize) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    all[start..].join("\n")
}

#[cfg(test)]
mod tests;
