//! The cluster store's port: [`Dcs`] and what its methods take and return.

use std::future::Future;
use std::time::Duration;

use baton_core::{
    ClusterView, FailoverRequest, FailsafeTopology, HistoryLine, Lsn, Member, MemberName, SyncState,
};

use crate::BoxError;

/// Errors callers branch on.
#[derive(Debug, thiserror::Error)]
pub enum DcsError {
    /// No answer within the deadline, connection refused, no quorum: the DCS state is unknown.
    /// `message` says what was asked and what the store's client reported; `source` is that
    /// client's error, when there is one.
    #[error("DCS unavailable: {message}")]
    Unavailable {
        message: String,
        #[source]
        source: Option<BoxError>,
    },
    /// The lease does not exist any more (expired or revoked).
    #[error("lease {0} not found")]
    LeaseNotFound(i64),
    /// Any other error reported by the store (refused request, bad credentials, bad endpoint).
    #[error("DCS error: {message}")]
    Other {
        message: String,
        #[source]
        source: Option<BoxError>,
    },
}

impl DcsError {
    /// [`DcsError::Unavailable`] without an underlying error (a deadline passed).
    pub fn unavailable(message: impl Into<String>) -> DcsError {
        DcsError::Unavailable {
            message: message.into(),
            source: None,
        }
    }

    /// [`DcsError::Other`] without an underlying error.
    pub fn other(message: impl Into<String>) -> DcsError {
        DcsError::Other {
            message: message.into(),
            source: None,
        }
    }
}

/// Who makes a leader-only write (`status`, `history`, `sync`, clearing `failover`): it
/// happens only while the leader key holds `name` on `lease`, in the same transaction, so a
/// deposed leader cannot overwrite what its successor publishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub name: MemberName,
    pub lease: i64,
}

/// How a leader-only write ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaderWrite {
    /// Written (for `status`: or the same value was already written by this client).
    Written,
    /// The key was not at the expected revision: nothing written.
    Conflict,
    /// The leader key does not hold the writer's name on the writer's lease: nothing written.
    NotLeader,
}

/// Where the cluster lives in the store.
#[derive(Clone, Debug)]
pub struct DcsScope {
    /// Patroni `namespace` (default `/service`).
    pub namespace: String,
    /// Patroni `scope` (the cluster name).
    pub scope: String,
}

impl DcsScope {
    /// `re.sub('/+','/', '/'.join(['', namespace, scope]))` + `/`, e.g. `/service/batman/`.
    pub fn prefix(&self) -> String {
        let joined = format!("/{}/{}/", self.namespace, self.scope);
        let mut out = String::with_capacity(joined.len());
        for c in joined.chars() {
            if !(c == '/' && out.ends_with('/')) {
                out.push(c);
            }
        }
        out
    }
}

/// The cluster store. All methods are bounded by the implementation's request timeout and
/// return [`DcsError::Unavailable`] when it passes.
///
/// Contract (checked by `baton-dcs/tests/contract.rs` against both implementations):
/// - `read_cluster` returns one consistent snapshot of the prefix, however large; values that
///   do not decode are named in `ClusterView::warnings` and skipped, except `leader` (a
///   `LeaderKey` without a name) and `sync` (`SyncKey::Unreadable`). It is linearizable, with
///   one exception an implementation may opt into (`EtcdDcs::serve_reads_from_watch`, which
///   the agent turns on): it may return the last linearizable snapshot again when that
///   snapshot had a leader key, this client has written nothing since, the store's watch has
///   been up since before that read and delivered no event since, the store's quorum answered
///   within ttl/2, and the snapshot is younger than two ttls. Such an answer is stale by at
///   most the watch's delivery delay. A snapshot without a leader key is never reused: while
///   nobody leads (the race, design §4 rule 3) every read is linearizable. Decisions that
///   change roles never rely on it either way: acquiring the leader key is compare-and-swap,
///   leader-only writes compare the key, and the executor re-checks the lease right before
///   `AcquireLeader`, `Promote` and starting as a primary.
/// - the leader key and this member's key are attached to the caller's lease; when the lease
///   expires or is revoked both disappear.
/// - `acquire_leader` succeeds only when the leader key does not exist (create-revision 0).
/// - `release_leader` deletes the key only while it still holds the caller's name.
/// - leader-only writes (`write_status`, `write_history`, `write_sync`, `clear_failover`) are
///   applied only while the leader key holds the [`Holder`]'s name on its lease, and answer
///   [`LeaderWrite::NotLeader`] otherwise.
/// - `changes()` ticks (at least once) after any modification under the prefix, including
///   lease expiry; it is a wake-up signal, not a data source.
pub trait Dcs: Send + Sync + 'static {
    fn read_cluster(&self) -> impl Future<Output = Result<ClusterView, DcsError>> + Send;

    /// Grant a lease with this TTL (whole seconds, rounded up).
    fn grant_lease(&self, ttl: Duration) -> impl Future<Output = Result<i64, DcsError>> + Send;

    /// Refresh a lease; returns the remaining TTL reported by the store.
    /// `Err(LeaseNotFound)` when it has expired.
    fn keepalive(&self, lease: i64) -> impl Future<Output = Result<Duration, DcsError>> + Send;

    fn revoke_lease(&self, lease: i64) -> impl Future<Output = Result<(), DcsError>> + Send;

    /// Create `initialize` = "" if absent. `true` when we created it (won the bootstrap race).
    fn race_initialize(&self) -> impl Future<Output = Result<bool, DcsError>> + Send;

    /// Overwrite `initialize` with the system identifier.
    fn set_initialize(&self, sysid: &str) -> impl Future<Output = Result<(), DcsError>> + Send;

    /// Delete `initialize` (a failed bootstrap).
    fn cancel_initialize(&self) -> impl Future<Output = Result<(), DcsError>> + Send;

    /// Create the leader key = `name` with `lease`, only if it does not exist.
    fn acquire_leader(
        &self,
        name: &MemberName,
        lease: i64,
    ) -> impl Future<Output = Result<bool, DcsError>> + Send;

    /// Re-attach the leader key to a new lease: only if its value is still `name` (Patroni's
    /// `_update_leader` after a lease was re-granted, e.g. an agent restart on a running
    /// primary). `true` when the key now carries `lease`.
    fn reattach_leader(
        &self,
        name: &MemberName,
        lease: i64,
    ) -> impl Future<Output = Result<bool, DcsError>> + Send;

    /// Rewrite the leader key with `name` on `lease`, only if its mod_revision is still
    /// `version`: its holder replacing a value that does not decode. `true` when written.
    fn repair_leader(
        &self,
        name: &MemberName,
        lease: i64,
        version: i64,
    ) -> impl Future<Output = Result<bool, DcsError>> + Send;

    /// Delete the leader key if its value is `name`. `true` when deleted.
    fn release_leader(
        &self,
        name: &MemberName,
    ) -> impl Future<Output = Result<bool, DcsError>> + Send;

    /// Write `members/<name>` with `lease` (Patroni's member JSON). Skips the write when the
    /// stored value and lease are unchanged.
    fn touch_member(
        &self,
        member: &Member,
        lease: i64,
    ) -> impl Future<Output = Result<(), DcsError>> + Send;

    /// Write `config` (compact JSON). With `version`, only if its mod_revision still matches;
    /// returns `false` on a CAS conflict.
    fn write_config(
        &self,
        json: &str,
        version: Option<i64>,
    ) -> impl Future<Output = Result<bool, DcsError>> + Send;

    /// Leader only: write `status` = `{"optime": .., "slots": {..}, "retain_slots": [..]}`
    /// when it changed (`retain_slots`: the member slots kept for `member_slots_ttl`).
    fn write_status(
        &self,
        leader: &Holder,
        optime: Lsn,
        slots: &[(String, Lsn)],
        retain_slots: &[String],
    ) -> impl Future<Output = Result<LeaderWrite, DcsError>> + Send;

    /// Leader only: write `history`.
    fn write_history(
        &self,
        leader: &Holder,
        history: &[HistoryLine],
    ) -> impl Future<Output = Result<LeaderWrite, DcsError>> + Send;

    /// Leader only: write `failsafe` (Patroni's `{"name": "api_url", ...}`), the members a
    /// leader must reach in failsafe mode and the only members that may take the key then.
    fn write_failsafe(
        &self,
        leader: &Holder,
        topology: &FailsafeTopology,
    ) -> impl Future<Output = Result<LeaderWrite, DcsError>> + Send;

    /// Write `failover` (Patroni's `{"leader":..,"member":..,"scheduled_at":..}`): a request any
    /// member may make; `None` clears it by writing `{}`, as Patroni does. With `version`, only
    /// if the key's mod_revision still matches (0: the key must not exist); `false` on a
    /// conflict. The leader clears a request it handled with [`Dcs::clear_failover`].
    fn write_failover(
        &self,
        request: Option<&FailoverRequest>,
        version: Option<i64>,
    ) -> impl Future<Output = Result<bool, DcsError>> + Send;

    /// Leader only: clear `failover` (write `{}`) if its mod_revision is still `version`.
    fn clear_failover(
        &self,
        leader: &Holder,
        version: i64,
    ) -> impl Future<Output = Result<LeaderWrite, DcsError>> + Send;

    /// Leader only: write `sync` (`{"leader":..,"quorum":..,"sync_standby":..}`), `None`
    /// deleting it, if its mod_revision is still `version` (0: absent).
    fn write_sync(
        &self,
        leader: &Holder,
        state: Option<&SyncState>,
        version: i64,
    ) -> impl Future<Output = Result<LeaderWrite, DcsError>> + Send;

    /// A wake-up signal that changes after modifications under the prefix.
    fn changes(&self) -> tokio::sync::watch::Receiver<u64>;
}
