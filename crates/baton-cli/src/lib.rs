//! The `pgbaton` command line: the agent and the patronictl-shaped control commands.

pub mod cli;
pub mod drill;
pub mod editconfig;
pub mod http;
pub mod logging;
pub mod table;
pub mod validate;
