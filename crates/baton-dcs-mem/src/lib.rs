//! The cluster store without a network: [`MemDcs`], an in-memory [`Dcs`](baton_ports::Dcs) with
//! etcd's semantics (revisions, leases, compare-and-swap) for unit tests and the simulator, and
//! [`record`], Patroni's key layout under the cluster prefix and the JSON of every record.
//!
//! `record` is shared with `EtcdDcs` (`baton-dcs`, which re-exports this crate's items as
//! `baton_dcs::{MemDcs, record}`): both stores write and read the same bytes, and one contract
//! suite (`baton-dcs/tests/contract.rs`) runs against both. Only these two crates know the
//! layout.

mod mem;
pub mod record;

/// Properties checked by the fuzz targets and the proptest smoke tests (feature `fuzzing`).
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;

pub use mem::MemDcs;
