//! The ports of pgbaton: the traits its adapters implement and the agent and the simulator
//! use, with their errors and plain data types.
//!
//! - [`Dcs`] (cluster store: `EtcdDcs` in `baton-dcs`, `MemDcs` in `baton-dcs-mem`),
//!   [`DcsError`], [`Holder`], [`LeaderWrite`], [`DcsScope`];
//! - [`Postgres`] (the local server: `LocalPostgres` in `baton-pg`, the simulator's model),
//!   [`PgError`], [`Reconfigured`], [`PendingSetting`], [`RaisedSetting`];
//! - [`Vip`] (the floating IP: `NetlinkVip` in `baton-vip`), [`VipError`], [`VipAddress`] and
//!   [`NoVip`].
//!
//! No IO happens here and no adapter type appears: an adapter's own error travels as the
//! [`BoxError`] source of ours. Every error's `Display` is complete on its own (the agent logs
//! it with `{}`); `std::error::Error::source` gives the underlying error, when there is one, to
//! callers that inspect it (an `io::Error`'s kind, a PostgreSQL SQLSTATE, a gRPC status).

mod dcs;
mod pg;
mod vip;

pub use dcs::{Dcs, DcsError, DcsScope, Holder, LeaderWrite};
pub use pg::{PendingSetting, PgError, Postgres, RaisedSetting, Reconfigured};
pub use vip::{NoVip, Vip, VipAddress, VipError};

/// An adapter's underlying error, kept as the `source` of a port error without naming its type.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[cfg(test)]
mod tests {
    use std::error::Error as _;
    use std::io;

    use super::*;

    fn refused() -> BoxError {
        io::Error::new(io::ErrorKind::ConnectionRefused, "connection refused").into()
    }

    fn kind_of_source(e: &dyn std::error::Error) -> Option<io::ErrorKind> {
        e.source()?.downcast_ref::<io::Error>().map(io::Error::kind)
    }

    #[test]
    fn errors_keep_the_adapter_error_as_source() {
        let dcs = DcsError::Unavailable {
            message: "etcd read cluster: connection refused".into(),
            source: Some(refused()),
        };
        assert_eq!(
            dcs.to_string(),
            "DCS unavailable: etcd read cluster: connection refused"
        );
        assert_eq!(kind_of_source(&dcs), Some(io::ErrorKind::ConnectionRefused));
        assert!(DcsError::unavailable("no answer").source().is_none());
        assert!(DcsError::other("bad endpoint").source().is_none());

        let pg = PgError::Sql {
            message: "observe: connection refused".into(),
            source: Some(refused()),
        };
        assert_eq!(pg.to_string(), "sql: observe: connection refused");
        assert_eq!(kind_of_source(&pg), Some(io::ErrorKind::ConnectionRefused));
        assert!(PgError::sql("no row").source().is_none());

        let vip = VipError::failed("add 10.0.0.9/24 on eth0", refused());
        assert_eq!(
            vip.to_string(),
            "add 10.0.0.9/24 on eth0: connection refused"
        );
        assert_eq!(kind_of_source(&vip), Some(io::ErrorKind::ConnectionRefused));
    }
}
