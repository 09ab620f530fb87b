//! The `pgbaton` command line: the agent and the patronictl-shaped control commands.

pub mod http;
pub mod table;
pub mod validate;
