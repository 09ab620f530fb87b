//! The distributed configuration store: `EtcdDcs`, the [`Dcs`] over etcd v3 (native gRPC,
//! Patroni's key layout and JSON). The trait and its types live in `baton-ports`, the
//! in-memory implementation (`MemDcs`, which passes the same contract tests) and the record
//! encodings both use in `baton-dcs-mem`; all are re-exported here.
//!
//! Only this crate and `baton-dcs-mem` know the key layout (`/<namespace>/<scope>/{initialize,
//! config,leader,members/<name>,failover,sync,history,status,failsafe,drills}`) and the record
//! encodings.

pub use baton_dcs_mem::{MemDcs, record};
pub use baton_ports::{Dcs, DcsError, DcsScope, Holder, LeaderWrite};

mod etcd;

pub use etcd::{EtcdDcs, EtcdSettings, EtcdTls};
