//! `MemDcs`: an in-memory store with etcd's semantics (a global revision, per-key create/mod
//! revisions, leases whose expiry deletes the attached keys in one revision, compare-and-swap),
//! for unit tests and the deterministic simulator.
//!
//! Deterministic by construction: time comes from the injected [`Clock`], leases expire lazily at
//! the start of every operation (or when [`MemDcs::expire_due_leases`] is called), nothing is
//! spawned, and `changes()` is bumped synchronously by the operation that modified the store.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use baton_core::{
    Clock, ClusterView, FailoverRequest, FailsafeTopology, HistoryLine, Lsn, Member, MemberName,
    Mono, SyncState,
};
use baton_ports::{Dcs, DcsError, DcsScope, Holder, LeaderWrite};
use tokio::sync::watch;

use crate::record::{self, RawKv};

/// An in-memory cluster store for one scope. Clones share the store and the availability flag;
/// [`MemDcs::new_client`] gives another client of the same store with its own flag.
#[derive(Clone)]
pub struct MemDcs {
    shared: Arc<Shared>,
    unavailable: Arc<AtomicBool>,
}

struct Shared {
    prefix: String,
    clock: Arc<dyn Clock>,
    store: Mutex<Store>,
    changes: watch::Sender<u64>,
}

struct Entry {
    value: String,
    lease: i64,
    create_revision: i64,
    mod_revision: i64,
}

struct Lease {
    ttl_secs: u64,
    deadline: Mono,
}

struct Store {
    /// etcd's store revision: 1 for an empty store, +1 per modifying operation.
    revision: i64,
    /// Keys relative to the prefix.
    kvs: BTreeMap<String, Entry>,
    leases: BTreeMap<i64, Lease>,
    last_lease_id: i64,
}

impl Store {
    /// Drops every lease whose deadline has passed, deleting its keys (one revision per lease
    /// that had keys, as etcd's lease revocation does).
    fn expire(&mut self, now: Mono) {
        let mut due: Vec<(Mono, i64)> = self
            .leases
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, l)| (l.deadline, *id))
            .collect();
        due.sort();
        for (_, id) in due {
            self.revoke(id);
        }
    }

    /// Removes a lease and its keys. `false` when the lease does not exist.
    fn revoke(&mut self, id: i64) -> bool {
        if self.leases.remove(&id).is_none() {
            return false;
        }
        let before = self.kvs.len();
        self.kvs.retain(|_, e| e.lease != id);
        if self.kvs.len() != before {
            self.revision += 1;
        }
        true
    }

    fn check_lease(&self, lease: i64) -> Result<(), DcsError> {
        if lease == 0 || self.leases.contains_key(&lease) {
            Ok(())
        } else {
            Err(DcsError::LeaseNotFound(lease))
        }
    }

    fn put(&mut self, key: &str, value: &str, lease: i64) -> Result<(), DcsError> {
        self.check_lease(lease)?;
        self.revision += 1;
        let revision = self.revision;
        let create_revision = self.kvs.get(key).map_or(revision, |e| e.create_revision);
        self.kvs.insert(
            key.to_owned(),
            Entry {
                value: value.to_owned(),
                lease,
                create_revision,
                mod_revision: revision,
            },
        );
        Ok(())
    }

    fn delete(&mut self, key: &str) -> bool {
        let deleted = self.kvs.remove(key).is_some();
        if deleted {
            self.revision += 1;
        }
        deleted
    }

    fn value(&self, key: &str) -> Option<&str> {
        self.kvs.get(key).map(|e| e.value.as_str())
    }

    /// The leader key holds `leader`'s name on its lease.
    fn holds(&self, leader: &Holder) -> bool {
        self.kvs
            .get(record::LEADER)
            .is_some_and(|e| e.value == leader.name.as_str() && e.lease == leader.lease)
    }
}

impl MemDcs {
    /// Put (or, with `None`, delete) a key without a lease; with `version`, only if its
    /// mod_revision still matches (0: absent). `false` on a conflict.
    fn put_versioned(
        &self,
        what: &str,
        key: &str,
        value: Option<&str>,
        version: Option<i64>,
    ) -> Result<bool, DcsError> {
        self.op(what, |store, _| {
            if let Some(expected) = version {
                let current = store.kvs.get(key).map_or(0, |e| e.mod_revision);
                if current != expected {
                    return Ok(false);
                }
            }
            match value {
                Some(value) => store.put(key, value, 0)?,
                None => {
                    store.delete(key);
                }
            }
            Ok(true)
        })
    }

    /// A leader-only write (or, with `None`, delete) of a key without a lease: only while the
    /// leader key holds `leader`, and with `version` only if the key's mod_revision matches.
    /// `unchanged_ok`: an identical stored value counts as written without a new revision.
    fn leader_write(
        &self,
        what: &str,
        leader: &Holder,
        key: &str,
        value: Option<&str>,
        version: Option<i64>,
        unchanged_ok: bool,
    ) -> Result<LeaderWrite, DcsError> {
        self.op(what, |store, _| {
            if !store.holds(leader) {
                return Ok(LeaderWrite::NotLeader);
            }
            if let Some(expected) = version
                && store.kvs.get(key).map_or(0, |e| e.mod_revision) != expected
            {
                return Ok(LeaderWrite::Conflict);
            }
            match value {
                Some(value) if unchanged_ok && store.value(key) == Some(value) => {}
                Some(value) => store.put(key, value, 0)?,
                None => {
                    store.delete(key);
                }
            }
            Ok(LeaderWrite::Written)
        })
    }

    /// An empty store for `scope`, its leases timed by `clock`.
    pub fn new(scope: DcsScope, clock: Arc<dyn Clock>) -> MemDcs {
        let (changes, _) = watch::channel(0);
        let store = Store {
            revision: 1,
            kvs: BTreeMap::new(),
            leases: BTreeMap::new(),
            last_lease_id: 0,
        };
        MemDcs {
            shared: Arc::new(Shared {
                prefix: scope.prefix(),
                clock,
                store: Mutex::new(store),
                changes,
            }),
            unavailable: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Another client of the same store, with its own availability flag (to cut one agent off
    /// the store in a simulation).
    pub fn new_client(&self) -> MemDcs {
        MemDcs {
            shared: Arc::clone(&self.shared),
            unavailable: Arc::new(AtomicBool::new(false)),
        }
    }

    /// While `true`, every call of this client returns [`DcsError::Unavailable`] (the store
    /// itself keeps running: leases still expire).
    pub fn set_unavailable(&self, unavailable: bool) {
        self.unavailable.store(unavailable, Ordering::SeqCst);
    }

    /// Writes `value` at `key` (relative to the prefix) without a lease, e.g. to inject garbage.
    pub fn put_raw(&self, key: &str, value: &str) {
        self.server_op(|store| {
            // Lease 0 always exists.
            let _ = store.put(key, value, 0);
        });
    }

    /// Writes `value` at `key` (relative to the prefix) attached to `lease`, e.g. garbage that
    /// keeps the holder's lease. Does nothing when the lease does not exist.
    pub fn put_raw_with_lease(&self, key: &str, value: &str, lease: i64) {
        self.server_op(|store| {
            let _ = store.put(key, value, lease);
        });
    }

    /// Deletes `key` (relative to the prefix); `true` when it existed.
    pub fn delete_raw(&self, key: &str) -> bool {
        self.server_op(|store| store.delete(key))
    }

    /// The value at `key` (relative to the prefix).
    pub fn get_raw(&self, key: &str) -> Option<String> {
        self.get_raw_with_revision(key).map(|(value, _)| value)
    }

    /// The value at `key` (relative to the prefix) and its `mod_revision`.
    pub fn get_raw_with_revision(&self, key: &str) -> Option<(String, i64)> {
        self.server_op(|store| {
            store
                .kvs
                .get(key)
                .map(|e| (e.value.clone(), e.mod_revision))
        })
    }

    /// The store revision.
    pub fn revision(&self) -> i64 {
        self.server_op(|store| store.revision)
    }

    /// Expires every lease whose TTL has run out on the clock, deleting its keys.
    pub fn expire_due_leases(&self) {
        self.server_op(|_| ());
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock cannot leave the store half-modified in a way that
        // matters to tests; keep going rather than poisoning every later call.
        self.shared
            .store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on the store after expiring due leases; ticks `changes` when the revision moved.
    fn server_op<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let now = self.shared.clock.now();
        let mut store = self.lock();
        let before = store.revision;
        store.expire(now);
        let out = f(&mut store);
        let changed = store.revision != before;
        drop(store);
        if changed {
            self.shared.changes.send_modify(|n| *n = n.wrapping_add(1));
        }
        out
    }

    /// A client call: fails while this client is unavailable (after the store has expired its
    /// due leases, which happens whether or not this client can reach it).
    fn op<T>(
        &self,
        what: &str,
        f: impl FnOnce(&mut Store, Mono) -> Result<T, DcsError>,
    ) -> Result<T, DcsError> {
        let now = self.shared.clock.now();
        let unavailable = self.unavailable.load(Ordering::SeqCst);
        self.server_op(|store| {
            if unavailable {
                return Err(DcsError::unavailable(format!(
                    "in-memory DCS {}: {what}: client cut off",
                    self.shared.prefix
                )));
            }
            f(store, now)
        })
    }
}

fn ttl_secs(ttl: Duration) -> u64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    secs.max(1)
}

impl Dcs for MemDcs {
    async fn read_cluster(&self) -> Result<ClusterView, DcsError> {
        self.op("read cluster", |store, _| {
            let kvs = store.kvs.iter().map(|(k, e)| RawKv {
                key: k.as_bytes(),
                value: e.value.as_bytes(),
                lease: e.lease,
                create_revision: e.create_revision,
                mod_revision: e.mod_revision,
            });
            Ok(record::decode_cluster(store.revision, kvs))
        })
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<i64, DcsError> {
        self.op("grant lease", |store, now| {
            let ttl_secs = ttl_secs(ttl);
            store.last_lease_id += 1;
            let id = store.last_lease_id;
            let deadline = now + Duration::from_secs(ttl_secs);
            store.leases.insert(id, Lease { ttl_secs, deadline });
            Ok(id)
        })
    }

    async fn keepalive(&self, lease: i64) -> Result<Duration, DcsError> {
        self.op("keepalive", |store, now| {
            let l = store
                .leases
                .get_mut(&lease)
                .ok_or(DcsError::LeaseNotFound(lease))?;
            l.deadline = now + Duration::from_secs(l.ttl_secs);
            Ok(Duration::from_secs(l.ttl_secs))
        })
    }

    async fn revoke_lease(&self, lease: i64) -> Result<(), DcsError> {
        self.op("revoke lease", |store, _| {
            if store.revoke(lease) {
                Ok(())
            } else {
                Err(DcsError::LeaseNotFound(lease))
            }
        })
    }

    async fn race_initialize(&self) -> Result<bool, DcsError> {
        self.op("race for initialize", |store, _| {
            if store.kvs.contains_key(record::INITIALIZE) {
                return Ok(false);
            }
            store.put(record::INITIALIZE, "", 0)?;
            Ok(true)
        })
    }

    async fn set_initialize(&self, sysid: &str) -> Result<(), DcsError> {
        self.op("set initialize", |store, _| {
            store.put(record::INITIALIZE, sysid, 0)
        })
    }

    async fn cancel_initialize(&self) -> Result<(), DcsError> {
        self.op("cancel initialize", |store, _| {
            store.delete(record::INITIALIZE);
            Ok(())
        })
    }

    async fn acquire_leader(&self, name: &MemberName, lease: i64) -> Result<bool, DcsError> {
        self.op("acquire leader", |store, _| {
            if store.kvs.contains_key(record::LEADER) {
                return Ok(false);
            }
            store.put(record::LEADER, name.as_str(), lease)?;
            Ok(true)
        })
    }

    async fn reattach_leader(&self, name: &MemberName, lease: i64) -> Result<bool, DcsError> {
        self.op("reattach leader", |store, _| {
            if store.value(record::LEADER) != Some(name.as_str()) {
                return Ok(false);
            }
            store.put(record::LEADER, name.as_str(), lease)?;
            Ok(true)
        })
    }

    async fn repair_leader(
        &self,
        name: &MemberName,
        lease: i64,
        version: i64,
    ) -> Result<bool, DcsError> {
        self.op("repair leader", |store, _| {
            if store.kvs.get(record::LEADER).map(|e| e.mod_revision) != Some(version) {
                return Ok(false);
            }
            store.put(record::LEADER, name.as_str(), lease)?;
            Ok(true)
        })
    }

    async fn release_leader(&self, name: &MemberName) -> Result<bool, DcsError> {
        self.op("release leader", |store, _| {
            if store.value(record::LEADER) != Some(name.as_str()) {
                return Ok(false);
            }
            Ok(store.delete(record::LEADER))
        })
    }

    async fn touch_member(&self, member: &Member, lease: i64) -> Result<(), DcsError> {
        let key = record::member_key(&member.name);
        let value = record::encode_member(member);
        self.op("touch member", |store, _| {
            let unchanged = store
                .kvs
                .get(&key)
                .is_some_and(|e| e.value == value && e.lease == lease);
            if unchanged {
                // Still validate the lease, as the etcd implementation's next write would.
                return store.check_lease(lease);
            }
            store.put(&key, &value, lease)
        })
    }

    async fn write_config(&self, json: &str, version: Option<i64>) -> Result<bool, DcsError> {
        self.put_versioned("write config", record::CONFIG, Some(json), version)
    }

    async fn write_failover(
        &self,
        request: Option<&FailoverRequest>,
        version: Option<i64>,
    ) -> Result<bool, DcsError> {
        let value = record::encode_failover(request.unwrap_or(&FailoverRequest::default()));
        self.put_versioned("write failover", record::FAILOVER, Some(&value), version)
    }

    async fn clear_failover(&self, leader: &Holder, version: i64) -> Result<LeaderWrite, DcsError> {
        let value = record::encode_failover(&FailoverRequest::default());
        self.leader_write(
            "clear failover",
            leader,
            record::FAILOVER,
            Some(&value),
            Some(version),
            false,
        )
    }

    async fn write_sync(
        &self,
        leader: &Holder,
        state: Option<&SyncState>,
        version: i64,
    ) -> Result<LeaderWrite, DcsError> {
        let value = state.map(record::encode_sync);
        self.leader_write(
            "write sync",
            leader,
            record::SYNC,
            value.as_deref(),
            Some(version),
            false,
        )
    }

    async fn write_status(
        &self,
        leader: &Holder,
        optime: Lsn,
        slots: &[(String, Lsn)],
        retain_slots: &[String],
    ) -> Result<LeaderWrite, DcsError> {
        let value = record::encode_status(optime, slots, retain_slots);
        self.leader_write(
            "write status",
            leader,
            record::STATUS,
            Some(&value),
            None,
            true,
        )
    }

    async fn write_history(
        &self,
        leader: &Holder,
        history: &[HistoryLine],
    ) -> Result<LeaderWrite, DcsError> {
        let value = record::encode_history(history);
        self.leader_write(
            "write history",
            leader,
            record::HISTORY,
            Some(&value),
            None,
            false,
        )
    }

    async fn write_failsafe(
        &self,
        leader: &Holder,
        topology: &FailsafeTopology,
    ) -> Result<LeaderWrite, DcsError> {
        let value = record::encode_failsafe(topology);
        self.leader_write(
            "write failsafe",
            leader,
            record::FAILSAFE,
            Some(&value),
            None,
            false,
        )
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.shared.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use super::*;

    struct TestClock(AtomicU64);

    impl Clock for TestClock {
        fn now(&self) -> Mono {
            Mono::from_millis(self.0.load(Ordering::SeqCst))
        }

        /// 2026-11-22T05:00:00Z plus the test's monotonic time.
        fn unix_ms(&self) -> i64 {
            1_795_323_600_000 + self.now().as_millis() as i64
        }
    }

    fn setup() -> (MemDcs, Arc<TestClock>) {
        let clock = Arc::new(TestClock(AtomicU64::new(1_000)));
        let scope = DcsScope {
            namespace: "/service".into(),
            scope: "mem".into(),
        };
        (MemDcs::new(scope, clock.clone()), clock)
    }

    fn name(s: &str) -> MemberName {
        MemberName::new(s).unwrap()
    }

    #[tokio::test]
    async fn revisions_follow_etcd() {
        let (dcs, _) = setup();
        assert_eq!(dcs.revision(), 1);
        assert!(dcs.race_initialize().await.unwrap());
        assert_eq!(dcs.revision(), 2);
        assert!(!dcs.race_initialize().await.unwrap());
        assert_eq!(
            dcs.revision(),
            2,
            "a failed compare-and-swap writes nothing"
        );
        let lease = dcs.grant_lease(Duration::from_secs(10)).await.unwrap();
        assert_eq!(
            dcs.revision(),
            2,
            "granting a lease is not a key-value revision"
        );
        assert!(dcs.acquire_leader(&name("a"), lease).await.unwrap());
        let leader = dcs.read_cluster().await.unwrap().leader.unwrap();
        assert_eq!(
            (leader.create_revision, leader.mod_revision, leader.lease),
            (3, 3, lease)
        );
        let lease2 = dcs.grant_lease(Duration::from_secs(10)).await.unwrap();
        assert!(dcs.reattach_leader(&name("a"), lease2).await.unwrap());
        let leader = dcs.read_cluster().await.unwrap().leader.unwrap();
        assert_eq!(
            (leader.create_revision, leader.mod_revision, leader.lease),
            (3, 4, lease2)
        );
    }

    #[tokio::test]
    async fn ttl_is_measured_on_the_injected_clock() {
        let (dcs, clock) = setup();
        let mut changes = dcs.changes();
        let lease = dcs.grant_lease(Duration::from_millis(1_500)).await.unwrap();
        assert_eq!(
            dcs.keepalive(lease).await.unwrap(),
            Duration::from_secs(2),
            "rounded up"
        );
        assert!(dcs.acquire_leader(&name("a"), lease).await.unwrap());
        changes.borrow_and_update();
        clock.0.fetch_add(1_999, Ordering::SeqCst);
        dcs.expire_due_leases();
        assert!(dcs.get_raw("leader").is_some(), "1.999 s of a 2 s lease");
        assert!(!changes.has_changed().unwrap());
        dcs.keepalive(lease).await.unwrap();
        clock.0.fetch_add(1_999, Ordering::SeqCst);
        dcs.expire_due_leases();
        assert!(
            dcs.get_raw("leader").is_some(),
            "the keepalive restarted the TTL"
        );
        clock.0.fetch_add(1, Ordering::SeqCst);
        dcs.expire_due_leases();
        assert_eq!(dcs.get_raw("leader"), None);
        assert!(changes.has_changed().unwrap(), "expiry ticks changes()");
        assert!(
            matches!(dcs.keepalive(lease).await, Err(DcsError::LeaseNotFound(l)) if l == lease)
        );
    }

    #[tokio::test]
    async fn expiry_is_lazy_on_every_operation() {
        let (dcs, clock) = setup();
        let lease = dcs.grant_lease(Duration::from_secs(1)).await.unwrap();
        assert!(dcs.acquire_leader(&name("a"), lease).await.unwrap());
        clock.0.fetch_add(1_000, Ordering::SeqCst);
        // No explicit expiry: the read itself sees the key gone.
        assert_eq!(dcs.read_cluster().await.unwrap().leader, None);
    }

    #[tokio::test]
    async fn unavailable_client_fails_every_call_but_others_do_not() {
        let (dcs, _) = setup();
        let other = dcs.new_client();
        let lease = dcs.grant_lease(Duration::from_secs(5)).await.unwrap();
        dcs.set_unavailable(true);
        let m = Member {
            name: name("a"),
            ..Member::default()
        };
        let holder = Holder {
            name: name("a"),
            lease,
        };
        let results = [
            dcs.read_cluster().await.err(),
            dcs.grant_lease(Duration::from_secs(1)).await.err(),
            dcs.keepalive(lease).await.err(),
            dcs.revoke_lease(lease).await.err(),
            dcs.race_initialize().await.err(),
            dcs.set_initialize("1").await.err(),
            dcs.cancel_initialize().await.err(),
            dcs.acquire_leader(&name("a"), lease).await.err(),
            dcs.reattach_leader(&name("a"), lease).await.err(),
            dcs.release_leader(&name("a")).await.err(),
            dcs.touch_member(&m, lease).await.err(),
            dcs.write_config("{}", None).await.err(),
            dcs.write_status(&holder, Lsn(1), &[], &[]).await.err(),
            dcs.write_history(&holder, &[]).await.err(),
            dcs.write_sync(&holder, None, 0).await.err(),
            dcs.clear_failover(&holder, 0).await.err(),
            dcs.repair_leader(&name("a"), lease, 1).await.err(),
        ];
        for (i, r) in results.into_iter().enumerate() {
            assert!(
                matches!(r, Some(DcsError::Unavailable { .. })),
                "call {i}: {r:?}"
            );
        }
        assert!(other.acquire_leader(&name("b"), lease).await.unwrap());
        dcs.set_unavailable(false);
        assert_eq!(
            dcs.read_cluster().await.unwrap().leader_name(),
            Some(&name("b"))
        );
    }

    #[tokio::test]
    async fn put_with_unknown_lease_is_lease_not_found() {
        let (dcs, _) = setup();
        let m = Member {
            name: name("a"),
            ..Member::default()
        };
        assert!(matches!(
            dcs.touch_member(&m, 77).await,
            Err(DcsError::LeaseNotFound(77))
        ));
        assert!(matches!(
            dcs.acquire_leader(&name("a"), 77).await,
            Err(DcsError::LeaseNotFound(77))
        ));
        assert_eq!(dcs.get_raw("leader"), None);
        assert!(matches!(
            dcs.revoke_lease(77).await,
            Err(DcsError::LeaseNotFound(77))
        ));
    }
}
