//! The PostgreSQL model and a `Postgres` port over it.
//!
//! - [`model`]: every node's data directory (WAL records with their timelines), its postmaster,
//!   and the rules PostgreSQL applies to streaming, promotion, `pg_rewind` and `pg_basebackup`.
//!   Synchronous and free of IO; the simulator (`baton-sim`) drives it in virtual time.
//! - [`SimulatedPostgres`]: one member's PostgreSQL as that model, for `pgbaton agent` with
//!   `PGBATON_SIMULATED_POSTGRES=1` (test-only: scale benchmarks and tests run many members on
//!   one machine against a real etcd). Standbys stream from their upstream's simulated server
//!   over a small TCP protocol on the member's PostgreSQL port ([`wire`]).

pub mod model;
mod simulated;
pub mod wire;

pub use simulated::{SimulatedPostgres, SimulatedSettings};
