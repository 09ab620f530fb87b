//! `EtcdDcs`: the [`Dcs`] over etcd v3 (native gRPC through `etcd-client`), with Patroni's key
//! layout, values and compare-and-swap rules (`patroni/dcs/etcd3.py`).
//!
//! Every request is bounded by `request_timeout`; a request that gets no answer in time, or
//! fails at the transport level, is [`DcsError::Unavailable`] (its outcome is unknown). A
//! background task watches the prefix and bumps the `changes()` counter on every event; after
//! an error it reconnects with backoff and bumps once more, since events may have been missed.
//! With the watch cache on, the same task applies each event to the last read (as Patroni's
//! etcd3 `KVCache` does), so a change of another member costs no read.
//!
//! The prefix is read in pages pinned to the first page's revision (one consistent snapshot of
//! any size), with a client message limit far above gRPC's default 4 MiB. Leader-only writes are
//! transactions that also compare the leader key's value and lease (design §3.8; Patroni's
//! etcd3 writes `status`, `history` and `sync` with plain puts).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use baton_core::{
    ClusterView, FailoverRequest, FailsafeTopology, HistoryLine, Lsn, Member, MemberName, SyncState,
};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KeyValue, KvClient,
    LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::Code;

use crate::record::{self, RawKv};
use crate::{Dcs, DcsError, DcsScope, Holder, LeaderWrite};

/// How to reach etcd.
#[derive(Clone)]
pub struct EtcdSettings {
    /// `host:port` (or a full `http://host:port` URL) of each etcd member.
    pub endpoints: Vec<String>,
    pub scope: DcsScope,
    /// Bound on every single request (and on connecting).
    pub request_timeout: Duration,
    pub username: Option<String>,
    pub password: Option<String>,
    /// TLS (`etcd3.protocol: https`); `None`: plain HTTP/2.
    pub tls: Option<EtcdTls>,
}

/// TLS to etcd, with the files already read (the key decrypted), as PEM.
#[derive(Clone, Default)]
pub struct EtcdTls {
    /// CA certificates the servers are checked against; the system's roots when `None`.
    pub ca_pem: Option<String>,
    /// Client certificate (chain) and key, for `--client-cert-auth`.
    pub identity: Option<(String, String)>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls")
            .field("ca", &self.ca_pem.is_some())
            .field("identity", &self.identity.is_some())
            .finish()
    }
}

impl std::fmt::Debug for EtcdSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdSettings")
            .field("endpoints", &self.endpoints)
            .field("scope", &self.scope)
            .field("request_timeout", &self.request_timeout)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .finish()
    }
}

/// The etcd v3 cluster store. Cheap to clone; clones share the connection, the write caches and
/// the watch task, which stops when the last clone is dropped.
#[derive(Clone)]
pub struct EtcdDcs {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    /// The KV client, with the raised message limit.
    kv: KvClient,
    prefix: String,
    timeout: Duration,
    changes: watch::Receiver<u64>,
    written: Mutex<Written>,
    /// The open keepalive stream of the last lease refreshed (one lease per agent).
    keeper: tokio::sync::Mutex<Option<Keeper>>,
    watch_task: tokio::task::AbortHandle,
    /// True while the watch stream on the prefix is established (set by the watch task).
    watching: Arc<AtomicBool>,
    /// Writes of this client whose outcome is unknown (failed, timed out, abandoned; see
    /// [`WriteMark`]).
    writes: AtomicU64,
    /// Writes of this client on their way.
    writes_in_flight: AtomicU64,
    /// The watch cache: `read_cluster` answers from the last read, kept current by the watch
    /// task, while that is provably what etcd holds (opt-in, [`EtcdDcs::serve_reads_from_watch`]).
    cache: Arc<Mutex<ReadCache>>,
    counts: Counters,
}

/// Requests this client sent to etcd, by kind, and the ones it did not need to send.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestCounts {
    pub range: u64,
    pub txn: u64,
    pub put: u64,
    pub delete: u64,
    pub lease_grant: u64,
    /// Keepalive messages (on the long-lived stream; opening one sends one more).
    pub keepalive: u64,
    /// Keepalive streams opened.
    pub keepalive_streams: u64,
    pub lease_revoke: u64,
    /// Watch streams created (the first, and one per reconnection).
    pub watch: u64,
    /// `read_cluster` calls answered from the watch cache (no request).
    pub cached_reads: u64,
    /// Member key and `status` writes skipped because etcd already holds that value on that
    /// lease.
    pub skipped_writes: u64,
}

#[derive(Default)]
struct Counters {
    range: AtomicU64,
    txn: AtomicU64,
    put: AtomicU64,
    delete: AtomicU64,
    lease_grant: AtomicU64,
    keepalive: AtomicU64,
    keepalive_streams: AtomicU64,
    lease_revoke: AtomicU64,
    watch: Arc<AtomicU64>,
    cached_reads: AtomicU64,
    skipped_writes: AtomicU64,
}

fn count(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> RequestCounts {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RequestCounts {
            range: g(&self.range),
            txn: g(&self.txn),
            put: g(&self.put),
            delete: g(&self.delete),
            lease_grant: g(&self.lease_grant),
            keepalive: g(&self.keepalive),
            keepalive_streams: g(&self.keepalive_streams),
            lease_revoke: g(&self.lease_revoke),
            watch: g(&self.watch),
            cached_reads: g(&self.cached_reads),
            skipped_writes: g(&self.skipped_writes),
        }
    }
}

/// One write of this client on its way: counted in flight until dropped. Answered
/// ([`WriteMark::answered`]), its revision is one the watch cache must have reached before it
/// is reused (read-your-writes); dropped unanswered (failed, timed out, abandoned: its outcome
/// is unknown) it bumps [`Inner::writes`], so no read sent before is reused.
struct WriteMark<'a> {
    inner: &'a Inner,
    answered: bool,
}

impl<'a> WriteMark<'a> {
    fn new(inner: &'a Inner) -> WriteMark<'a> {
        inner.writes_in_flight.fetch_add(1, Ordering::SeqCst);
        WriteMark {
            inner,
            answered: false,
        }
    }

    /// etcd answered, at `header`'s revision (the store's revision after the write, or at a
    /// transaction's comparison when it did not apply).
    fn answered(mut self, header: Option<&etcd_client::ResponseHeader>) {
        if let Some(revision) = header.map(|h| h.revision()) {
            let mut cache = lock_cache(&self.inner.cache);
            cache.written = cache.written.max(revision);
            self.answered = true;
        }
    }
}

impl Drop for WriteMark<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.inner.writes.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.writes_in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How many lease ttls a cached read may be reused at most (a real read at least that often,
/// whatever the watch says).
const CACHE_MAX_AGE_TTLS: u32 = 2;

/// The watch cache's state (Patroni's etcd3 `KVCache` serves every HA-loop read from a watch
/// the same way). A read is answered from `last` only while [`cache_usable`] holds.
#[derive(Default)]
struct ReadCache {
    enabled: bool,
    /// The ttl of the last lease granted: it bounds the cache's age; no cache before one.
    ttl: Option<Duration>,
    /// Send time of the last request etcd's raft leader answered (a keepalive or a
    /// linearizable read; a member cut off from its cluster answers neither).
    quorum_seen: Option<Instant>,
    /// The highest revision of an event the watch delivered (applied to `last` or not): a
    /// read at a lower revision misses it and is not kept.
    watched: i64,
    /// The highest revision etcd answered a write of this client at: `last` is reused only
    /// once it reflects that revision (our own writes are read back).
    written: i64,
    last: Option<CachedRead>,
}

/// A linearizable read, with every event the watch delivered since applied to it.
struct CachedRead {
    /// The prefix's keys (full keys) as of `revision`.
    kvs: BTreeMap<Vec<u8>, StoredKv>,
    /// `kvs` decoded.
    view: ClusterView,
    /// The store revision `kvs` reflects: the read's, then the last applied event's.
    revision: i64,
    /// [`Inner::writes`] before the read was sent.
    writes: u64,
    sent: Instant,
}

/// One key's value and metadata, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
struct StoredKv {
    value: Vec<u8>,
    lease: i64,
    create_revision: i64,
    mod_revision: i64,
}

impl StoredKv {
    fn of(kv: &KeyValue) -> StoredKv {
        StoredKv {
            value: kv.value().to_vec(),
            lease: kv.lease(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
        }
    }
}

/// The cluster view of `kvs` (full keys under `prefix`) at `revision`.
fn decode_stored(prefix: &str, revision: i64, kvs: &BTreeMap<Vec<u8>, StoredKv>) -> ClusterView {
    let raw = kvs.iter().filter_map(|(key, kv)| {
        Some(RawKv {
            key: key.strip_prefix(prefix.as_bytes())?,
            value: &kv.value,
            lease: kv.lease,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
        })
    });
    record::decode_cluster(revision, raw)
}

/// What one watch event does to a key.
#[derive(Clone, Debug, PartialEq, Eq)]
enum KeyEvent {
    Put(Vec<u8>, StoredKv),
    Delete(Vec<u8>, i64),
}

impl KeyEvent {
    fn revision(&self) -> i64 {
        match self {
            KeyEvent::Put(_, kv) => kv.mod_revision,
            KeyEvent::Delete(_, revision) => *revision,
        }
    }
}

impl ReadCache {
    /// Applies a batch of watch events (in revision order, as etcd sends them). Events at or
    /// below the cached revision are in the read already. Returns whether `last` changed.
    fn apply(&mut self, prefix: &str, events: &[KeyEvent]) -> bool {
        for e in events {
            self.watched = self.watched.max(e.revision());
        }
        let Some(last) = self.last.as_mut() else {
            return false;
        };
        let mut changed = false;
        for e in events {
            if e.revision() <= last.revision {
                continue;
            }
            match e {
                KeyEvent::Put(key, kv) => {
                    last.kvs.insert(key.clone(), kv.clone());
                }
                KeyEvent::Delete(key, _) => {
                    last.kvs.remove(key);
                }
            }
            last.revision = e.revision();
            changed = true;
        }
        if changed {
            last.view = decode_stored(prefix, last.revision, &last.kvs);
        }
        changed
    }

    /// Keeps a read at `read.revision` only if the watch delivered nothing past it (an event
    /// delivered during the read was applied to the previous cache, not to this one).
    fn install(&mut self, read: CachedRead) {
        self.last = (self.watched <= read.revision).then_some(read);
    }
}

/// What holds when `read_cluster` is called.
#[derive(Clone, Copy, Debug)]
struct ReadCheck {
    now: Instant,
    writes: u64,
    writes_in_flight: u64,
    watching: bool,
}

/// Whether `cache.last` is what a linearizable read would return now, up to the watch's
/// delivery delay: the view (the read with every event the watch delivered since applied)
/// has a leader key (a leaderless cluster — where members race for the key, design §4 rule
/// 3 — is always read fresh), the watch is established (a reconnection drops the cache: events
/// may have been missed), no write of this client is on its way or ended without an answer
/// since the read, every answered one is in the view (the watch delivered it), the etcd cluster
/// answered a request sent within the last ttl/2 (so the watch is not served by a member cut
/// off from its leader), and the read is younger than [`CACHE_MAX_AGE_TTLS`] ttls.
fn cache_usable(cache: &ReadCache, check: &ReadCheck) -> bool {
    let (true, Some(ttl), Some(last), Some(quorum)) =
        (cache.enabled, cache.ttl, &cache.last, cache.quorum_seen)
    else {
        return false;
    };
    last.view.leader.is_some()
        && check.watching
        && check.writes_in_flight == 0
        && last.writes == check.writes
        && last.revision >= cache.written
        && check.now.saturating_duration_since(last.sent) < ttl * CACHE_MAX_AGE_TTLS
        && check.now.saturating_duration_since(quorum) < ttl / 2
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.watch_task.abort();
    }
}

struct Keeper {
    lease: i64,
    keeper: LeaseKeeper,
    stream: LeaseKeepAliveStream,
}

/// What this client last wrote successfully, to skip identical writes as Patroni does. An entry
/// is dropped as soon as a read shows the store holding something else.
#[derive(Default)]
struct Written {
    /// Full member key → (value, lease).
    members: HashMap<String, (String, i64)>,
    /// `status` value and the lease of the leader that wrote it.
    status: Option<(String, i64)>,
}

impl Written {
    fn forget_lease(&mut self, lease: i64) {
        self.members.retain(|_, (_, l)| *l != lease);
        self.status.take_if(|(_, l)| *l == lease);
    }
}

impl EtcdDcs {
    /// Lets `read_cluster` answer from the last linearizable read while the watch proves
    /// nothing changed and that read saw a leader key (see [`cache_usable`]); Patroni's etcd3
    /// serves every HA-loop read from its watch. Off by default: then every `read_cluster` is
    /// a linearizable read. A leaderless view is never reused: the race and everything decided
    /// while nobody leads read fresh. Leadership stays compare-and-swap either way.
    pub fn serve_reads_from_watch(&self, enabled: bool) {
        // (The watch applies events to the kept read whether or not this is on; off, no read
        // is kept.)
        let mut cache = self.cache();
        cache.enabled = enabled;
        cache.last = None;
    }

    /// The requests sent so far, by kind, and the reads and writes that needed none.
    pub fn request_counts(&self) -> RequestCounts {
        self.inner.counts.snapshot()
    }

    fn cache(&self) -> MutexGuard<'_, ReadCache> {
        lock_cache(&self.inner.cache)
    }

    fn read_check(&self) -> ReadCheck {
        // Counters first, time last: anything that happens after them invalidates the read.
        let writes = self.inner.writes.load(Ordering::SeqCst);
        let writes_in_flight = self.inner.writes_in_flight.load(Ordering::SeqCst);
        let watching = self.inner.watching.load(Ordering::SeqCst);
        ReadCheck {
            now: Instant::now(),
            writes,
            writes_in_flight,
            watching,
        }
    }

    /// Drops what this client remembers writing where `kvs` shows the store holding
    /// something else (so the next identical write is sent).
    fn forget_overwritten(&self, kvs: &BTreeMap<Vec<u8>, StoredKv>) {
        let mut written = self.written();
        written.members.retain(|key, (value, lease)| {
            kvs.get(key.as_bytes())
                .is_some_and(|kv| kv.value == value.as_bytes() && kv.lease == *lease)
        });
        let status_key = self.key(record::STATUS);
        if let Some((status, _)) = &written.status {
            let same = kvs
                .get(status_key.as_bytes())
                .is_some_and(|kv| kv.value == status.as_bytes());
            if !same {
                written.status = None;
            }
        }
    }

    /// The etcd leader answered a request sent at `sent`.
    fn quorum_answered(&self, sent: Instant) {
        let mut cache = self.cache();
        if cache.quorum_seen.is_none_or(|q| q < sent) {
            cache.quorum_seen = Some(sent);
        }
    }

    fn write_mark(&self) -> WriteMark<'_> {
        WriteMark::new(&self.inner)
    }
}

/// HTTP/2 pings on the connection (they detect a dead watch stream). etcd refuses clients that
/// ping more often than `--grpc-keepalive-min-time` (5 s by default) with `too_many_pings`.
const HTTP2_PING_INTERVAL: Duration = Duration::from_secs(10);
const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(100);
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Keys per page when reading the prefix. With etcd's default value limit
/// (`--max-request-bytes`, 1.5 MiB) a page stays below 100 MiB.
const READ_PAGE_KEYS: i64 = 64;
/// The largest message the client decodes (gRPC's default is 4 MiB, too small for a cluster
/// with a long history or many members in one response).
const MAX_MESSAGE_BYTES: usize = 1 << 30;

/// The first key after every key that starts with `prefix` (etcd's range end for a prefix).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // every key: etcd's "\0" range end
}

/// Every key under `prefix` in pages of [`READ_PAGE_KEYS`]: the first page is a linearizable
/// read, the next ones read at its revision, so together they are one consistent snapshot.
/// Returns the revision and the key-values in key order.
async fn read_prefix(
    kv: &KvClient,
    prefix: &str,
    ranges: &AtomicU64,
) -> Result<(i64, Vec<KeyValue>), etcd_client::Error> {
    let end = prefix_end(prefix.as_bytes());
    let mut kv = kv.clone();
    let options = || {
        GetOptions::new()
            .with_range(end.clone())
            .with_limit(READ_PAGE_KEYS)
    };
    count(ranges, 1);
    let mut resp = kv.get(prefix, Some(options())).await?;
    let revision = resp.header().map_or(0, |h| h.revision());
    let mut more = resp.more();
    let mut kvs = resp.take_kvs();
    while more {
        let Some(last) = kvs.last() else { break };
        let mut from = last.key().to_vec();
        from.push(0);
        count(ranges, 1);
        let mut resp = kv
            .get(from, Some(options().with_revision(revision)))
            .await?;
        more = resp.more();
        let next = resp.take_kvs();
        if next.is_empty() {
            break;
        }
        kvs.extend(next);
    }
    Ok((revision, kvs))
}

fn endpoint_url(endpoint: &str, tls: bool) -> String {
    if endpoint.contains("://") {
        endpoint.to_owned()
    } else if tls {
        format!("https://{endpoint}")
    } else {
        format!("http://{endpoint}")
    }
}

/// Maps an `etcd-client` error to what callers branch on, keeping it as the source. `lease` is
/// the lease the request used, if any, so that "lease not found" names it.
fn map_err(what: &str, lease: Option<i64>, e: etcd_client::Error) -> DcsError {
    use etcd_client::Error as E;
    let (unavailable, message) = match &e {
        E::GRpcStatus(status) => {
            let code = status.code();
            if code == Code::NotFound
                && status.message().contains("lease not found")
                && let Some(lease) = lease
            {
                return DcsError::LeaseNotFound(lease);
            }
            let msg = format!("etcd {what}: {} ({code:?})", status.message());
            let unavailable = match code {
                // The outcome is unknown or the cluster cannot answer now (no leader, timeout,
                // leader changed, connection broken).
                Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::Unknown
                | Code::Aborted
                | Code::ResourceExhausted
                | Code::Internal
                | Code::FailedPrecondition => true,
                _ => false,
            };
            (unavailable, msg)
        }
        E::LeaseKeepAliveError(m) if m.contains("lease not found") && lease.is_some() => {
            return DcsError::LeaseNotFound(lease.unwrap_or_default());
        }
        E::TransportError(_) | E::IoError(_) | E::WatchError(_) | E::LeaseKeepAliveError(_) => {
            (true, format!("etcd {what}: {e}"))
        }
        other => (false, format!("etcd {what}: {other}")),
    };
    let source = Some(e.into());
    if unavailable {
        DcsError::Unavailable { message, source }
    } else {
        DcsError::Other { message, source }
    }
}

/// Runs one etcd request under the deadline.
async fn bounded<T>(
    timeout: Duration,
    what: &str,
    lease: Option<i64>,
    fut: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, DcsError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(map_err(what, lease, e)),
        Err(_) => Err(DcsError::unavailable(format!(
            "etcd {what}: no answer within {timeout:?}"
        ))),
    }
}

/// Like [`bounded`], for idempotent requests only: when the first attempt fails with
/// [`DcsError::Unavailable`] before the deadline (typically the first request on a connection the
/// server closed, which the channel reports to that caller before reconnecting), tries once more
/// within the same deadline.
async fn bounded_idempotent<T, Fut>(
    timeout: Duration,
    what: &str,
    mut attempt: impl FnMut() -> Fut,
) -> Result<T, DcsError>
where
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let no_answer = || DcsError::unavailable(format!("etcd {what}: no answer within {timeout:?}"));
    match tokio::time::timeout_at(deadline, attempt()).await {
        Ok(Ok(v)) => Ok(v),
        Err(_) => Err(no_answer()),
        Ok(Err(e)) => match map_err(what, None, e) {
            first @ DcsError::Unavailable { .. } => {
                tracing::debug!(error = %first, "retrying an idempotent etcd request once");
                match tokio::time::timeout_at(deadline, attempt()).await {
                    Ok(Ok(v)) => Ok(v),
                    Ok(Err(e)) => Err(map_err(what, None, e)),
                    Err(_) => Err(no_answer()),
                }
            }
            other => Err(other),
        },
    }
}

fn ttl_secs(ttl: Duration) -> i64 {
    let secs = ttl
        .as_secs()
        .saturating_add(u64::from(ttl.subsec_nanos() > 0))
        .max(1);
    i64::try_from(secs).unwrap_or(i64::MAX)
}

impl EtcdDcs {
    /// Deletes every key of this cluster (`/<namespace>/<scope>/`, the trailing `/` included,
    /// so `/service/batman2/` is not touched by removing `batman`); patronictl remove's
    /// `delete_cluster`. Returns the number of keys deleted.
    pub async fn delete_cluster(&self) -> Result<i64, DcsError> {
        let prefix = self.inner.prefix.clone();
        let mut kv = self.inner.kv.clone();
        let mark = self.write_mark();
        count(&self.inner.counts.delete, 1);
        let resp = bounded(
            self.inner.timeout,
            &format!("delete the keys under {prefix}"),
            None,
            kv.delete(
                prefix.as_str(),
                Some(etcd_client::DeleteOptions::new().with_prefix()),
            ),
        )
        .await?;
        mark.answered(resp.header());
        Ok(resp.deleted())
    }

    /// Connects, checks that etcd answers (a read of the prefix) and starts the watch task.
    /// [`DcsError::Unavailable`] when etcd does not answer within `request_timeout`.
    pub async fn connect(settings: EtcdSettings) -> Result<EtcdDcs, DcsError> {
        let EtcdSettings {
            endpoints,
            scope,
            request_timeout: timeout,
            username,
            password,
            tls,
        } = settings;
        if endpoints.is_empty() {
            return Err(DcsError::other("no etcd endpoints configured"));
        }
        let urls: Vec<String> = endpoints
            .iter()
            .map(|e| endpoint_url(e, tls.is_some()))
            .collect();
        // `hasleader` on every request: a member cut off from its leader refuses requests and
        // ends its watch streams instead of serving a frozen view (the watch cache relies on it).
        let mut options = ConnectOptions::new()
            .with_require_leader(true)
            .with_connect_timeout(timeout)
            .with_keep_alive(HTTP2_PING_INTERVAL, timeout.max(Duration::from_secs(1)));
        if let Some(tls) = tls {
            let mut config = etcd_client::TlsOptions::new();
            config = match tls.ca_pem {
                Some(ca) => config.ca_certificate(etcd_client::Certificate::from_pem(ca)),
                None => config.with_native_roots(),
            };
            if let Some((cert, key)) = tls.identity {
                config = config.identity(etcd_client::Identity::from_pem(cert, key));
            }
            options = options.with_tls(config);
        }
        match (username, password) {
            (Some(user), Some(password)) => {
                options = options
                    .with_user(user, password)
                    .with_auto_token_refresh(true);
            }
            (None, None) => {}
            _ => {
                return Err(DcsError::other(
                    "etcd username and password must be set together",
                ));
            }
        }
        let what = format!("connect to {}", urls.join(","));
        let client = bounded(
            timeout,
            &what,
            None,
            Client::connect(urls.clone(), Some(options)),
        )
        .await?;

        let prefix = scope.prefix();
        let kv = client
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let probe = GetOptions::new().with_prefix().with_count_only();
        let what = format!("read {prefix} (connection check) at {}", urls.join(","));
        let resp = bounded_idempotent(timeout, &what, || {
            let (mut kv, key, probe) = (kv.clone(), prefix.clone(), probe.clone());
            async move { kv.get(key, Some(probe)).await }
        })
        .await?;
        let revision = resp.header().map_or(0, |h| h.revision());

        let (tx, changes) = watch::channel(0u64);
        let watching = Arc::new(AtomicBool::new(false));
        let counts = Counters::default();
        let cache = Arc::new(Mutex::new(ReadCache::default()));
        let task = tokio::spawn(watch_loop(
            client.clone(),
            prefix.clone(),
            revision + 1,
            timeout,
            WatchOut {
                tx,
                watching: watching.clone(),
                created: counts.watch.clone(),
                cache: cache.clone(),
            },
        ));
        tracing::debug!(prefix, revision, "connected to etcd");
        Ok(EtcdDcs {
            inner: Arc::new(Inner {
                client,
                kv,
                prefix,
                timeout,
                changes,
                written: Mutex::new(Written::default()),
                keeper: tokio::sync::Mutex::new(None),
                watch_task: task.abort_handle(),
                watching,
                writes: AtomicU64::new(0),
                writes_in_flight: AtomicU64::new(0),
                cache,
                counts,
            }),
        })
    }

    fn key(&self, relative: &str) -> String {
        format!("{}{relative}", self.inner.prefix)
    }

    fn written(&self) -> MutexGuard<'_, Written> {
        self.inner
            .written
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn put(&self, key: String, value: String, lease: i64) -> Result<(), DcsError> {
        let what = format!("put {key}");
        let options = (lease != 0).then(|| PutOptions::new().with_lease(lease));
        let mut kv = self.inner.kv.clone();
        let mark = self.write_mark();
        count(&self.inner.counts.put, 1);
        let resp = bounded(
            self.inner.timeout,
            &what,
            Some(lease),
            kv.put(key, value, options),
        )
        .await?;
        mark.answered(resp.header());
        Ok(())
    }

    /// A transaction with one comparison and one operation on success; `true` when it applied.
    /// Put (or, with `None`, delete) a key without a lease; with `version`, only if its
    /// mod_revision still matches. `false` on a conflict.
    async fn put_versioned(
        &self,
        relative: &str,
        value: Option<&str>,
        version: Option<i64>,
    ) -> Result<bool, DcsError> {
        let key = self.key(relative);
        let op = match value {
            Some(value) => TxnOp::put(key.as_str(), value, None),
            None => TxnOp::delete(key.as_str(), None),
        };
        let Some(version) = version else {
            match value {
                Some(value) => self.put(key, value.to_owned(), 0).await?,
                None => {
                    let mut kv = self.inner.kv.clone();
                    let what = format!("delete {key}");
                    let mark = self.write_mark();
                    count(&self.inner.counts.delete, 1);
                    let resp = bounded(
                        self.inner.timeout,
                        &what,
                        None,
                        kv.delete(key.as_str(), None),
                    )
                    .await?;
                    mark.answered(resp.header());
                }
            }
            return Ok(true);
        };
        let compare = Compare::mod_revision(key.as_str(), CompareOp::Equal, version);
        self.txn(
            format!("write {key} at version {version}"),
            None,
            compare,
            op,
        )
        .await
    }

    async fn txn(
        &self,
        what: String,
        lease: Option<i64>,
        compare: Compare,
        op: TxnOp,
    ) -> Result<bool, DcsError> {
        let txn = Txn::new().when([compare]).and_then([op]);
        let mut kv = self.inner.kv.clone();
        let mark = self.write_mark();
        count(&self.inner.counts.txn, 1);
        let resp = bounded(self.inner.timeout, &what, lease, kv.txn(txn)).await?;
        mark.answered(resp.header());
        Ok(resp.succeeded())
    }

    /// A leader-only write: `op` applies only while the leader key holds `leader`'s name on its
    /// lease and, with `version`, `relative` is at that mod_revision (0: absent). The else
    /// branch reads the leader key at the same revision, which tells a lost compare-and-swap
    /// from a lost leadership.
    async fn leader_txn(
        &self,
        leader: &Holder,
        relative: &str,
        value: Option<&str>,
        version: Option<i64>,
    ) -> Result<LeaderWrite, DcsError> {
        let key = self.key(relative);
        let leader_key = self.key(record::LEADER);
        let what = format!(
            "write {key} as leader {} (lease {})",
            leader.name, leader.lease
        );
        let mut when = vec![
            Compare::value(leader_key.as_str(), CompareOp::Equal, leader.name.as_str()),
            Compare::lease(leader_key.as_str(), CompareOp::Equal, leader.lease),
        ];
        if let Some(version) = version {
            when.push(Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                version,
            ));
        }
        let op = match value {
            Some(value) => TxnOp::put(key.as_str(), value, None),
            None => TxnOp::delete(key.as_str(), None),
        };
        let txn = Txn::new()
            .when(when)
            .and_then([op])
            .or_else([TxnOp::get(leader_key.as_str(), None)]);
        let mut kv = self.inner.kv.clone();
        let mark = self.write_mark();
        count(&self.inner.counts.txn, 1);
        let resp = bounded(self.inner.timeout, &what, None, kv.txn(txn)).await?;
        mark.answered(resp.header());
        if resp.succeeded() {
            return Ok(LeaderWrite::Written);
        }
        let holds = resp.op_responses().iter().any(|r| match r {
            TxnOpResponse::Get(get) => get.kvs().iter().any(|kv| {
                kv.value() == leader.name.as_str().as_bytes() && kv.lease() == leader.lease
            }),
            _ => false,
        });
        Ok(if holds {
            LeaderWrite::Conflict
        } else {
            LeaderWrite::NotLeader
        })
    }

    async fn keepalive_round(
        &self,
        slot: &mut Option<Keeper>,
        lease: i64,
    ) -> Result<Duration, DcsError> {
        let what = format!("keepalive lease {lease}");
        let not_found = || DcsError::LeaseNotFound(lease);
        // Take the stream out: it goes back only after a complete round, so a round abandoned
        // half-way (timeout) can never hand its late answer to the next call.
        let mut k = match slot.take().filter(|k| k.lease == lease) {
            Some(k) => k,
            None => {
                let mut lc = self.inner.client.lease_client();
                // Opening the stream performs one keepalive (and fails when the lease is gone).
                count(&self.inner.counts.keepalive_streams, 1);
                count(&self.inner.counts.keepalive, 1);
                let (keeper, stream) = lc
                    .keep_alive(lease)
                    .await
                    .map_err(|e| map_err(&what, Some(lease), e))?;
                Keeper {
                    lease,
                    keeper,
                    stream,
                }
            }
        };
        count(&self.inner.counts.keepalive, 1);
        k.keeper
            .keep_alive()
            .await
            .map_err(|e| map_err(&what, Some(lease), e))?;
        let resp = k
            .stream
            .message()
            .await
            .map_err(|e| map_err(&what, Some(lease), e))?
            .ok_or_else(|| {
                DcsError::unavailable(format!("etcd {what}: stream closed by the server"))
            })?;
        if resp.ttl() <= 0 {
            return Err(not_found());
        }
        let ttl = Duration::from_secs(u64::try_from(resp.ttl()).unwrap_or(0));
        *slot = Some(k);
        Ok(ttl)
    }

    /// `drills` (the history of `pgbaton drill`): its value and `mod_revision`, `None` when
    /// the key does not exist.
    pub async fn read_drills(&self) -> Result<Option<(String, i64)>, DcsError> {
        let key = self.key(record::DRILLS);
        let what = format!("read {key}");
        let resp = bounded_idempotent(self.inner.timeout, &what, || {
            let (mut kv, key) = (self.inner.kv.clone(), key.clone());
            async move { kv.get(key, None).await }
        })
        .await?;
        let Some(kv) = resp.kvs().first() else {
            return Ok(None);
        };
        let value = String::from_utf8(kv.value().to_vec())
            .map_err(|_| DcsError::other(format!("{key}: value is not valid UTF-8")))?;
        Ok(Some((value, kv.mod_revision())))
    }

    /// Writes `drills` only if it is still at `version` (its `mod_revision`; 0: only if it
    /// does not exist yet). `false` when someone wrote it meanwhile.
    pub async fn write_drills(&self, value: &str, version: i64) -> Result<bool, DcsError> {
        self.put_versioned(record::DRILLS, Some(value), Some(version))
            .await
    }
}

impl Dcs for EtcdDcs {
    async fn read_cluster(&self) -> Result<ClusterView, DcsError> {
        let check = self.read_check();
        {
            let cache = self.cache();
            if cache_usable(&cache, &check)
                && let Some(last) = &cache.last
            {
                count(&self.inner.counts.cached_reads, 1);
                let view = last.view.clone();
                // Events applied since the read may show our keys overwritten or gone.
                self.forget_overwritten(&last.kvs);
                return Ok(view);
            }
        }
        let prefix = &self.inner.prefix;
        let kv = &self.inner.kv;
        let ranges = &self.inner.counts.range;
        let what = format!("read {prefix}");
        // Linearizable (not serializable): decisions must see the latest committed state.
        let (revision, kvs) = bounded_idempotent(self.inner.timeout, &what, || {
            read_prefix(kv, prefix, ranges)
        })
        .await?;
        self.quorum_answered(check.now);
        let kvs: BTreeMap<Vec<u8>, StoredKv> = kvs
            .iter()
            .map(|kv| (kv.key().to_vec(), StoredKv::of(kv)))
            .collect();
        self.forget_overwritten(&kvs);
        let view = decode_stored(prefix, revision, &kvs);
        let mut cache = self.cache();
        if cache.enabled {
            cache.install(CachedRead {
                kvs,
                view: view.clone(),
                revision,
                writes: check.writes,
                sent: check.now,
            });
        }
        Ok(view)
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<i64, DcsError> {
        let secs = ttl_secs(ttl);
        let mut lc = self.inner.client.lease_client();
        let what = format!("grant lease (ttl {secs} s)");
        count(&self.inner.counts.lease_grant, 1);
        let resp = bounded(self.inner.timeout, &what, None, lc.grant(secs, None)).await?;
        if !resp.error().is_empty() {
            return Err(DcsError::other(format!("etcd {what}: {}", resp.error())));
        }
        self.cache().ttl = Some(Duration::from_secs(u64::try_from(secs).unwrap_or(u64::MAX)));
        Ok(resp.id())
    }

    async fn keepalive(&self, lease: i64) -> Result<Duration, DcsError> {
        let what = format!("keepalive lease {lease}");
        let sent = Instant::now();
        let round = async {
            let mut slot = self.inner.keeper.lock().await;
            match self.keepalive_round(&mut slot, lease).await {
                // A refresh is idempotent: once more on a fresh stream (see `bounded_idempotent`).
                Err(first @ DcsError::Unavailable { .. }) => {
                    tracing::debug!(error = %first, "retrying a lease keepalive once");
                    self.keepalive_round(&mut slot, lease).await
                }
                other => other,
            }
        };
        let result = match tokio::time::timeout(self.inner.timeout, round).await {
            Ok(r) => r,
            Err(_) => Err(DcsError::unavailable(format!(
                "etcd {what}: no answer within {:?}",
                self.inner.timeout
            ))),
        };
        match &result {
            Ok(_) => self.quorum_answered(sent),
            Err(DcsError::LeaseNotFound(_)) => self.written().forget_lease(lease),
            Err(_) => {}
        }
        result
    }

    async fn revoke_lease(&self, lease: i64) -> Result<(), DcsError> {
        let mut lc = self.inner.client.lease_client();
        let what = format!("revoke lease {lease}");
        let mark = self.write_mark();
        count(&self.inner.counts.lease_revoke, 1);
        let result = bounded(self.inner.timeout, &what, Some(lease), lc.revoke(lease)).await;
        if let Ok(resp) = &result {
            mark.answered(resp.header());
        }
        if matches!(result, Ok(_) | Err(DcsError::LeaseNotFound(_))) {
            self.written().forget_lease(lease);
            if let Ok(mut slot) = self.inner.keeper.try_lock()
                && slot.as_ref().is_some_and(|k| k.lease == lease)
            {
                *slot = None;
            }
        }
        result.map(|_| ())
    }

    async fn race_initialize(&self) -> Result<bool, DcsError> {
        let key = self.key(record::INITIALIZE);
        let compare = Compare::create_revision(key.as_str(), CompareOp::Equal, 0);
        let op = TxnOp::put(key.as_str(), "", None);
        self.txn(format!("create {key}"), None, compare, op).await
    }

    async fn set_initialize(&self, sysid: &str) -> Result<(), DcsError> {
        self.put(self.key(record::INITIALIZE), sysid.to_owned(), 0)
            .await
    }

    async fn cancel_initialize(&self) -> Result<(), DcsError> {
        let key = self.key(record::INITIALIZE);
        let mut kv = self.inner.kv.clone();
        let mark = self.write_mark();
        count(&self.inner.counts.delete, 1);
        let resp = bounded(
            self.inner.timeout,
            &format!("delete {key}"),
            None,
            kv.delete(key.as_str(), None),
        )
        .await?;
        mark.answered(resp.header());
        Ok(())
    }

    async fn acquire_leader(&self, name: &MemberName, lease: i64) -> Result<bool, DcsError> {
        let key = self.key(record::LEADER);
        let compare = Compare::create_revision(key.as_str(), CompareOp::Equal, 0);
        let op = TxnOp::put(
            key.as_str(),
            name.as_str(),
            Some(PutOptions::new().with_lease(lease)),
        );
        self.txn(format!("acquire {key} as {name}"), Some(lease), compare, op)
            .await
    }

    async fn reattach_leader(&self, name: &MemberName, lease: i64) -> Result<bool, DcsError> {
        let key = self.key(record::LEADER);
        let compare = Compare::value(key.as_str(), CompareOp::Equal, name.as_str());
        let op = TxnOp::put(
            key.as_str(),
            name.as_str(),
            Some(PutOptions::new().with_lease(lease)),
        );
        self.txn(
            format!("reattach {key} of {name} to lease {lease}"),
            Some(lease),
            compare,
            op,
        )
        .await
    }

    async fn repair_leader(
        &self,
        name: &MemberName,
        lease: i64,
        version: i64,
    ) -> Result<bool, DcsError> {
        let key = self.key(record::LEADER);
        let compare = Compare::mod_revision(key.as_str(), CompareOp::Equal, version);
        let op = TxnOp::put(
            key.as_str(),
            name.as_str(),
            Some(PutOptions::new().with_lease(lease)),
        );
        self.txn(
            format!("rewrite {key} at version {version} as {name}"),
            Some(lease),
            compare,
            op,
        )
        .await
    }

    async fn release_leader(&self, name: &MemberName) -> Result<bool, DcsError> {
        let key = self.key(record::LEADER);
        let compare = Compare::value(key.as_str(), CompareOp::Equal, name.as_str());
        let op = TxnOp::delete(key.as_str(), None);
        self.txn(format!("release {key} held by {name}"), None, compare, op)
            .await
    }

    async fn touch_member(&self, member: &Member, lease: i64) -> Result<(), DcsError> {
        let key = self.key(&record::member_key(&member.name));
        let value = record::encode_member(member);
        let unchanged = self
            .written()
            .members
            .get(&key)
            .is_some_and(|(v, l)| *v == value && *l == lease);
        if unchanged {
            count(&self.inner.counts.skipped_writes, 1);
            return Ok(());
        }
        self.written().members.remove(&key);
        self.put(key.clone(), value.clone(), lease).await?;
        self.written().members.insert(key, (value, lease));
        Ok(())
    }

    async fn write_config(&self, json: &str, version: Option<i64>) -> Result<bool, DcsError> {
        self.put_versioned(record::CONFIG, Some(json), version)
            .await
    }

    async fn write_failover(
        &self,
        request: Option<&FailoverRequest>,
        version: Option<i64>,
    ) -> Result<bool, DcsError> {
        let value = record::encode_failover(request.unwrap_or(&FailoverRequest::default()));
        self.put_versioned(record::FAILOVER, Some(&value), version)
            .await
    }

    async fn clear_failover(&self, leader: &Holder, version: i64) -> Result<LeaderWrite, DcsError> {
        let value = record::encode_failover(&FailoverRequest::default());
        self.leader_txn(leader, record::FAILOVER, Some(&value), Some(version))
            .await
    }

    async fn write_sync(
        &self,
        leader: &Holder,
        state: Option<&SyncState>,
        version: i64,
    ) -> Result<LeaderWrite, DcsError> {
        let value = state.map(record::encode_sync);
        self.leader_txn(leader, record::SYNC, value.as_deref(), Some(version))
            .await
    }

    async fn write_status(
        &self,
        leader: &Holder,
        optime: Lsn,
        slots: &[(String, Lsn)],
        retain_slots: &[String],
    ) -> Result<LeaderWrite, DcsError> {
        let value = record::encode_status(optime, slots, retain_slots);
        let cached = self.written().status.clone();
        if cached == Some((value.clone(), leader.lease)) {
            count(&self.inner.counts.skipped_writes, 1);
            return Ok(LeaderWrite::Written);
        }
        self.written().status = None;
        let written = self
            .leader_txn(leader, record::STATUS, Some(&value), None)
            .await?;
        if written == LeaderWrite::Written {
            self.written().status = Some((value, leader.lease));
        }
        Ok(written)
    }

    async fn write_history(
        &self,
        leader: &Holder,
        history: &[HistoryLine],
    ) -> Result<LeaderWrite, DcsError> {
        let value = record::encode_history(history);
        self.leader_txn(leader, record::HISTORY, Some(&value), None)
            .await
    }

    async fn write_failsafe(
        &self,
        leader: &Holder,
        topology: &FailsafeTopology,
    ) -> Result<LeaderWrite, DcsError> {
        let value = record::encode_failsafe(topology);
        self.leader_txn(leader, record::FAILSAFE, Some(&value), None)
            .await
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.clone()
    }
}

/// What the watch task reports.
struct WatchOut {
    /// The `changes()` counter.
    tx: watch::Sender<u64>,
    /// True while a watch stream is established.
    watching: Arc<AtomicBool>,
    /// Watch streams created.
    created: Arc<AtomicU64>,
    /// The watch cache the events are applied to.
    cache: Arc<Mutex<ReadCache>>,
}

fn lock_cache(cache: &Mutex<ReadCache>) -> MutexGuard<'_, ReadCache> {
    cache
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn bump(tx: &watch::Sender<u64>) {
    tx.send_modify(|n| *n = n.wrapping_add(1));
}

/// Watches the prefix from `next_revision` until nobody listens any more, reconnecting with
/// backoff.
async fn watch_loop(
    client: Client,
    prefix: String,
    mut next_revision: i64,
    timeout: Duration,
    out: WatchOut,
) {
    let mut backoff = WATCH_BACKOFF_MIN;
    let mut reconnecting = false;
    loop {
        let ended = tokio::select! {
            () = out.tx.closed() => return,
            ended = watch_once(&client, &prefix, &mut next_revision, timeout, &out, reconnecting, &mut backoff) => ended,
        };
        out.watching.store(false, Ordering::SeqCst);
        tracing::warn!(prefix, error = %ended, retry_in = ?backoff, "etcd watch interrupted");
        reconnecting = true;
        tokio::select! {
            () = out.tx.closed() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(WATCH_BACKOFF_MAX);
    }
}

/// One watch stream; returns why it ended.
async fn watch_once(
    client: &Client,
    prefix: &str,
    next_revision: &mut i64,
    timeout: Duration,
    out: &WatchOut,
    reconnecting: bool,
    backoff: &mut Duration,
) -> String {
    let mut wc = client
        .watch_client()
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(*next_revision);
    count(&out.created, 1);
    let mut stream = match tokio::time::timeout(timeout, wc.watch(prefix, Some(options))).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return format!("watch {prefix}: {e}"),
        Err(_) => return format!("watch {prefix}: no answer within {timeout:?}"),
    };
    loop {
        let resp = match stream.message().await {
            Ok(Some(resp)) => resp,
            Ok(None) => return format!("watch {prefix}: stream closed by the server"),
            Err(e) => return format!("watch {prefix}: {e}"),
        };
        if resp.created() {
            *backoff = WATCH_BACKOFF_MIN;
            let store_revision = resp.header().map_or(0, |h| h.revision());
            if store_revision > 0 && store_revision + 1 < *next_revision {
                // The store went back in time (restored or recreated etcd): a watch from our
                // revision would stay silent until the store catches up. Start over from now.
                *next_revision = store_revision + 1;
                return format!(
                    "watch {prefix}: store revision {store_revision} is behind the last one seen"
                );
            }
            if reconnecting {
                tracing::info!(
                    prefix,
                    from_revision = *next_revision,
                    "etcd watch re-established"
                );
                // Events may have been missed while the stream was down: read afresh.
                lock_cache(&out.cache).last = None;
                bump(&out.tx);
            }
            // After the bump: a read that saw the counter before it cannot be reused.
            out.watching.store(true, Ordering::SeqCst);
        }
        if resp.canceled() {
            if resp.compact_revision() > *next_revision {
                // Our start revision was compacted away: resume from the oldest one kept (the
                // bump after reconnecting covers what was missed).
                *next_revision = resp.compact_revision();
            }
            return format!(
                "watch {prefix} canceled by the server: {}",
                resp.cancel_reason()
            );
        }
        if !resp.events().is_empty() {
            let mut events = Vec::with_capacity(resp.events().len());
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                *next_revision = (*next_revision).max(kv.mod_revision() + 1);
                events.push(match event.event_type() {
                    EventType::Put => KeyEvent::Put(kv.key().to_vec(), StoredKv::of(kv)),
                    EventType::Delete => KeyEvent::Delete(kv.key().to_vec(), kv.mod_revision()),
                });
            }
            // Applied before the bump: whoever the bump wakes reads the new state.
            lock_cache(&out.cache).apply(prefix, &events);
            bump(&out.tx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{
        CachedRead, KeyEvent, ReadCache, ReadCheck, StoredKv, cache_usable, decode_stored,
        prefix_end,
    };
    use baton_core::{ClusterView, LeaderKey, MemberName};
    use std::time::Duration;
    use tokio::time::Instant;

    const TTL: Duration = Duration::from_secs(20);

    /// A cache holding a read sent at `t0` after 4 writes of this client, the etcd leader last
    /// heard from at `t0`, and a check at `t0 + after` with the same count.
    fn fixture(after: Duration) -> (ReadCache, ReadCheck) {
        let t0 = Instant::now();
        let cache = ReadCache {
            enabled: true,
            ttl: Some(TTL),
            quorum_seen: Some(t0),
            watched: 0,
            written: 2,
            last: Some(CachedRead {
                kvs: Default::default(),
                revision: 2,
                view: ClusterView {
                    leader: Some(LeaderKey {
                        name: Some(MemberName::new("n1").expect("member name")),
                        lease: 1,
                        create_revision: 2,
                        mod_revision: 2,
                    }),
                    ..ClusterView::default()
                },
                writes: 4,
                sent: t0,
            }),
        };
        let check = ReadCheck {
            now: t0 + after,
            writes: 4,
            writes_in_flight: 0,
            watching: true,
        };
        (cache, check)
    }

    #[test]
    fn a_read_is_reused_only_while_nothing_can_have_changed() {
        let second = Duration::from_secs(1);
        let (cache, check) = fixture(second);
        assert!(cache_usable(&cache, &check), "nothing changed");

        let (mut c, k) = fixture(second);
        c.enabled = false;
        assert!(!cache_usable(&c, &k), "off unless enabled");
        let (mut c, k) = fixture(second);
        c.ttl = None;
        assert!(!cache_usable(&c, &k), "no lease granted yet");
        let (mut c, k) = fixture(second);
        c.last = None;
        assert!(!cache_usable(&c, &k), "nothing read yet");
        let (c, mut k) = fixture(second);
        k.watching = false;
        assert!(!cache_usable(&c, &k), "watch not established");
        let (c, mut k) = fixture(second);
        k.writes += 1;
        assert!(
            !cache_usable(&c, &k),
            "a write of this client ended without an answer"
        );
        let (c, mut k) = fixture(second);
        k.writes_in_flight = 1;
        assert!(
            !cache_usable(&c, &k),
            "a write of this client is on its way"
        );
        let (mut c, k) = fixture(second);
        c.written = 3;
        assert!(
            !cache_usable(&c, &k),
            "an answered write of this client is not in the view yet"
        );
        let (mut c, k) = fixture(second);
        if let Some(last) = &mut c.last {
            last.view.leader = None;
        }
        assert!(!cache_usable(&c, &k), "a leaderless view is read fresh");
    }

    #[test]
    fn a_read_is_reused_for_a_bounded_time() {
        // The etcd leader must have answered within ttl/2.
        let (c, k) = fixture(TTL / 2 - Duration::from_millis(1));
        assert!(cache_usable(&c, &k));
        let (c, k) = fixture(TTL / 2);
        assert!(
            !cache_usable(&c, &k),
            "no recent answer from the etcd leader"
        );
        // With fresh keepalives, the read itself may be reused for up to two ttls.
        let (mut c, k) = fixture(TTL * 2 - Duration::from_millis(1));
        c.quorum_seen = Some(k.now);
        assert!(cache_usable(&c, &k));
        let (mut c, k) = fixture(TTL * 2);
        c.quorum_seen = Some(k.now);
        assert!(!cache_usable(&c, &k), "too old whatever the watch says");
    }

    const PREFIX: &str = "/service/batman/";

    fn key(relative: &str) -> Vec<u8> {
        format!("{PREFIX}{relative}").into_bytes()
    }

    fn put(relative: &str, value: &str, lease: i64, revision: i64) -> KeyEvent {
        KeyEvent::Put(
            key(relative),
            StoredKv {
                value: value.as_bytes().to_vec(),
                lease,
                create_revision: revision,
                mod_revision: revision,
            },
        )
    }

    /// A kept read at revision 10: n1 leads, member n1.
    fn read_at_10() -> CachedRead {
        let kvs = [
            put("leader", "n1", 7, 5),
            put(
                "members/n1",
                r#"{"role":"primary","state":"running"}"#,
                7,
                9,
            ),
        ]
        .into_iter()
        .map(|e| match e {
            KeyEvent::Put(k, kv) => (k, kv),
            KeyEvent::Delete(..) => unreachable!(),
        })
        .collect();
        let view = decode_stored(PREFIX, 10, &kvs);
        CachedRead {
            kvs,
            view,
            revision: 10,
            writes: 0,
            sent: Instant::now(),
        }
    }

    fn n(name: &str) -> MemberName {
        MemberName::new(name).expect("member name")
    }

    #[test]
    fn watch_events_after_the_read_are_applied_to_it() {
        let mut cache = ReadCache::default();
        cache.install(read_at_10());
        assert!(cache.last.is_some());
        // An event the read already holds (delivered late) changes nothing.
        let late = put("members/n9", "{}", 8, 10);
        assert!(!cache.apply(PREFIX, &[late]));
        // Another member's key: applied, no read needed.
        let n2 = put(
            "members/n2",
            r#"{"role":"replica","state":"running"}"#,
            8,
            11,
        );
        assert!(cache.apply(PREFIX, &[n2]));
        let last = cache.last.as_ref().expect("kept");
        assert_eq!(last.revision, 11);
        assert!(last.view.member(&n("n2")).is_some());
        assert!(last.view.member(&n("n9")).is_none());
        assert_eq!(
            last.view.leader.as_ref().and_then(|l| l.name.clone()),
            Some(n("n1"))
        );
        // The leader key deleted (expired, released): the view turns leaderless, so it is
        // not reused any more (a leaderless cluster is read fresh).
        assert!(cache.apply(PREFIX, &[KeyEvent::Delete(key("leader"), 12)]));
        let last = cache.last.as_ref().expect("kept");
        assert!(last.view.leader.is_none());
        assert!(last.view.member(&n("n2")).is_some());
    }

    /// Read-your-writes: after etcd answered our write at revision 11, the kept read (at 10) is
    /// reused only once the watch delivered revision 11.
    #[test]
    fn our_own_write_is_read_back_from_the_watch() {
        let t0 = Instant::now();
        let mut cache = ReadCache {
            enabled: true,
            ttl: Some(TTL),
            quorum_seen: Some(t0),
            ..ReadCache::default()
        };
        cache.install(read_at_10());
        let check = ReadCheck {
            now: t0,
            writes: 0,
            writes_in_flight: 0,
            watching: true,
        };
        assert!(cache_usable(&cache, &check));
        cache.written = 11;
        assert!(!cache_usable(&cache, &check));
        let ours = put(
            "members/n1",
            r#"{"role":"primary","state":"stopping"}"#,
            7,
            11,
        );
        cache.apply(PREFIX, &[ours]);
        assert!(cache_usable(&cache, &check));
    }

    #[test]
    fn a_read_that_misses_a_delivered_event_is_not_kept() {
        let mut cache = ReadCache::default();
        // The watch delivered revision 11 while the read (at 10) was on its way: that event
        // went to the previous cache, so this read would miss it for good.
        cache.apply(PREFIX, &[put("members/n2", "{}", 8, 11)]);
        cache.install(read_at_10());
        assert!(cache.last.is_none());
        // A read at or past every delivered event is kept.
        let mut read = read_at_10();
        read.revision = 11;
        cache.install(read);
        assert!(cache.last.is_some());
    }

    #[test]
    fn prefix_end_is_the_first_key_past_the_prefix() {
        assert_eq!(prefix_end(b"/service/batman/"), b"/service/batman0");
        assert_eq!(prefix_end(b"a\xff\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
    }
}
