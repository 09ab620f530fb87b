//! The `Dcs` contract, one suite for both implementations: every property is a generic async
//! function run against `MemDcs` (`<property>::mem`) and against a real etcd started by the test
//! (`<property>::etcd`).
//!
//! etcd: `/usr/bin/etcd` is started once and shared by the tests that run concurrently (each uses
//! its own scope); it is killed when the last of them drops its handle, even on panic, and—through
//! a pipe on its wrapper's stdin—when the test process dies. Without `/usr/bin/etcd` the etcd
//! variants print `SKIP` and pass, unless `PGBATON_REQUIRE_ETCD=1`, which makes them fail.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use baton_core::{
    Clock, ClusterView, FailoverRequest, FailsafeTopology, HistoryLine, LeaderKey, Lsn, Member,
    MemberName, Mono, SyncKey, SyncState, Tags, Timeline,
};
use baton_dcs::{Dcs, DcsError, DcsScope, EtcdDcs, EtcdSettings, Holder, LeaderWrite, MemDcs};

/// Generous bound for conditions that depend on a real server (watch delivery, lease expiry).
const DEADLINE: Duration = Duration::from_secs(30);
const ETCD_BIN: &str = "/usr/bin/etcd";

// ---------------------------------------------------------------------------------------------
// Environments
// ---------------------------------------------------------------------------------------------

/// One store and scope, with the raw access tests need to check bytes and inject garbage.
trait Env {
    type D: Dcs;
    /// A new, independent client of the same store and scope.
    async fn client(&self) -> Self::D;
    /// Value and mod_revision of `key` (relative to the prefix).
    async fn raw_get(&self, key: &str) -> Option<(String, i64)>;
    async fn raw_put(&self, key: &str, value: &str);
    /// Writes `key` = `value` attached to `lease` (as a writer that keeps the holder's lease
    /// would, e.g. `etcdctl put --ignore-lease`).
    async fn raw_put_with_lease(&self, key: &str, value: &str, lease: i64);
    async fn raw_delete(&self, key: &str);
    /// Makes `lease` (granted with `ttl` by `client`) end: the mem store lets its clock run past
    /// the TTL; etcd revokes it (a real TTL expiry has its own etcd test).
    async fn end_lease(&self, client: &Self::D, lease: i64, ttl: Duration);
}

struct ManualClock(AtomicU64);

impl Clock for ManualClock {
    fn now(&self) -> Mono {
        Mono::from_millis(self.0.load(Ordering::SeqCst))
    }

    /// 2026-11-22T05:00:00Z plus the test's monotonic time.
    fn unix_ms(&self) -> i64 {
        1_795_323_600_000 + self.now().as_millis() as i64
    }
}

struct MemEnv {
    dcs: MemDcs,
    clock: Arc<ManualClock>,
}

impl MemEnv {
    fn new(test: &str) -> MemEnv {
        let clock = Arc::new(ManualClock(AtomicU64::new(5_000)));
        let scope = DcsScope {
            namespace: "/service".into(),
            scope: test.into(),
        };
        MemEnv {
            dcs: MemDcs::new(scope, clock.clone()),
            clock,
        }
    }
}

impl Env for MemEnv {
    type D = MemDcs;

    async fn client(&self) -> MemDcs {
        self.dcs.new_client()
    }

    async fn raw_get(&self, key: &str) -> Option<(String, i64)> {
        self.dcs.get_raw_with_revision(key)
    }

    async fn raw_put(&self, key: &str, value: &str) {
        self.dcs.put_raw(key, value);
    }

    async fn raw_put_with_lease(&self, key: &str, value: &str, lease: i64) {
        self.dcs.put_raw_with_lease(key, value, lease);
    }

    async fn raw_delete(&self, key: &str) {
        self.dcs.delete_raw(key);
    }

    async fn end_lease(&self, _client: &MemDcs, _lease: i64, ttl: Duration) {
        let ms = u64::try_from(ttl.as_millis()).unwrap();
        self.clock.0.fetch_add(ms, Ordering::SeqCst);
        self.dcs.expire_due_leases();
    }
}

/// A running single-member etcd in a temporary directory, killed when dropped.
struct EtcdServer {
    endpoint: String,
    client_port: u16,
    peer_port: u16,
    /// The wrapper shell; closing its stdin makes it kill etcd.
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    dir: tempfile::TempDir,
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    let port = l.local_addr().unwrap().port();
    (l, port)
}

fn etcd_healthy(endpoint: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(endpoint) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET /health HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}

enum LaunchError {
    /// etcd exited during startup (most likely a port taken since it was probed); its log.
    Exited(String),
}

impl EtcdServer {
    fn start() -> EtcdServer {
        let mut last_log = String::new();
        for _attempt in 0..3 {
            let dir = tempfile::tempdir().expect("tempdir for etcd");
            let (l1, client_port) = free_port();
            let (l2, peer_port) = free_port();
            drop((l1, l2));
            let endpoint = format!("127.0.0.1:{client_port}");
            let mut server = EtcdServer {
                endpoint,
                client_port,
                peer_port,
                child: None,
                stdin: None,
                dir,
            };
            match server.launch() {
                Ok(()) => return server,
                Err(LaunchError::Exited(log)) => last_log = log,
            }
        }
        panic!("etcd exited at startup three times; last log:\n{last_log}");
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// Starts etcd (again, on the same ports and data) and waits until it answers.
    fn launch(&mut self) -> Result<(), LaunchError> {
        let client_url = format!("http://127.0.0.1:{}", self.client_port);
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("etcd log file");
        // The wrapper runs etcd in the background and SIGKILLs it when its stdin reaches EOF
        // (our handle dropped, or this process gone); it exits when etcd exits.
        let script = r#"exec 3<&0; "$0" "$@" </dev/null & pid=$!; { read _ <&3; kill -9 $pid; } & wait $pid"#;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(ETCD_BIN)
            .arg("--name=default")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=default={peer_url}"))
            .stdin(Stdio::piped())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.stdin = child.stdin.take();
        self.child = Some(child);
        let deadline = Instant::now() + DEADLINE;
        while Instant::now() < deadline {
            if etcd_healthy(&self.endpoint) {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited {
                self.stop();
                return Err(LaunchError::Exited(
                    std::fs::read_to_string(self.log_path()).unwrap_or_default(),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        self.stop();
        panic!("etcd did not become healthy within {DEADLINE:?}; log:\n{log}");
    }

    /// Kills etcd and waits until it is gone.
    fn stop(&mut self) {
        drop(self.stdin.take()); // EOF: the wrapper SIGKILLs etcd and exits when it is gone
        let Some(mut child) = self.child.take() else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

static SHARED_ETCD: Mutex<Weak<EtcdServer>> = Mutex::new(Weak::new());

/// The etcd shared by the tests running now, started if needed. `None` (after a SKIP line)
/// when etcd is not installed and not required.
fn shared_etcd(test: &str) -> Option<Arc<EtcdServer>> {
    if !Path::new(ETCD_BIN).exists() {
        let required = std::env::var("PGBATON_REQUIRE_ETCD").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "{test}: {ETCD_BIN} not found and PGBATON_REQUIRE_ETCD=1"
        );
        eprintln!(
            "SKIP {test}: {ETCD_BIN} not found (install etcd-server; PGBATON_REQUIRE_ETCD=1 turns this into a failure)"
        );
        return None;
    }
    let mut shared = SHARED_ETCD.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(server) = shared.upgrade() {
        return Some(server);
    }
    let server = Arc::new(EtcdServer::start());
    *shared = Arc::downgrade(&server);
    Some(server)
}

fn etcd_settings(endpoint: &str, scope: &DcsScope) -> EtcdSettings {
    EtcdSettings {
        endpoints: vec![endpoint.to_owned()],
        scope: scope.clone(),
        request_timeout: Duration::from_secs(5),
        username: None,
        password: None,
        tls: None,
    }
}

struct EtcdEnv {
    server: Arc<EtcdServer>,
    scope: DcsScope,
    raw: etcd_client::Client,
}

impl EtcdEnv {
    async fn start(test: &str) -> Option<EtcdEnv> {
        let server = shared_etcd(test)?;
        let raw = etcd_client::Client::connect([server.endpoint.as_str()], None)
            .await
            .expect("raw etcd client");
        let scope = DcsScope {
            namespace: "/service".into(),
            scope: format!("{test}-{}", std::process::id()),
        };
        Some(EtcdEnv { server, scope, raw })
    }

    fn key(&self, relative: &str) -> String {
        format!("{}{relative}", self.scope.prefix())
    }
}

impl Env for EtcdEnv {
    type D = EtcdDcs;

    async fn client(&self) -> EtcdDcs {
        EtcdDcs::connect(etcd_settings(&self.server.endpoint, &self.scope))
            .await
            .expect("connect to the test etcd")
    }

    async fn raw_get(&self, key: &str) -> Option<(String, i64)> {
        let resp = self
            .raw
            .clone()
            .get(self.key(key), None)
            .await
            .expect("raw get");
        resp.kvs()
            .first()
            .map(|kv| (kv.value_str().unwrap().to_owned(), kv.mod_revision()))
    }

    async fn raw_put(&self, key: &str, value: &str) {
        self.raw
            .clone()
            .put(self.key(key), value, None)
            .await
            .expect("raw put");
    }

    async fn raw_put_with_lease(&self, key: &str, value: &str, lease: i64) {
        let options = etcd_client::PutOptions::new().with_lease(lease);
        self.raw
            .clone()
            .put(self.key(key), value, Some(options))
            .await
            .expect("raw put with lease");
    }

    async fn raw_delete(&self, key: &str) {
        self.raw
            .clone()
            .delete(self.key(key), None)
            .await
            .expect("raw delete");
    }

    async fn end_lease(&self, client: &EtcdDcs, lease: i64, _ttl: Duration) {
        client.revoke_lease(lease).await.expect("revoke lease");
    }
}

macro_rules! contract_tests {
    ($($property:ident),* $(,)?) => {$(
        mod $property {
            #[tokio::test]
            async fn mem() {
                super::$property(super::MemEnv::new(stringify!($property))).await;
            }

            #[tokio::test]
            async fn etcd() {
                if let Some(env) = super::EtcdEnv::start(stringify!($property)).await {
                    super::$property(env).await;
                }
            }
        }
    )*};
}

contract_tests!(
    acquire_leader_only_when_absent,
    release_leader_only_by_holder,
    reattach_leader_keeps_the_key_on_a_new_lease,
    lease_end_removes_leader_and_member,
    keepalive_after_revoke_is_lease_not_found,
    race_initialize_once,
    write_config_compare_and_swap,
    garbage_is_reported_and_valid_records_decode,
    changes_tick_after_another_clients_write,
    touch_member_round_trip_in_patroni_format,
    status_and_history_in_patroni_format,
    failsafe_topology_in_patroni_format_by_the_leader_only,
    failover_and_sync_compare_and_swap,
    leader_only_writes_of_a_deposed_leader_are_refused,
    undecodable_leader_key_belongs_to_its_lease_and_epoch,
    deleted_and_unreadable_sync_are_not_the_same,
    read_cluster_past_the_grpc_message_limit,
);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn name(s: &str) -> MemberName {
    MemberName::new(s).unwrap()
}

fn member(n: &str) -> Member {
    Member {
        name: name(n),
        conn_url: Some(format!("postgres://{n}.example:5432/postgres")),
        api_url: Some(format!("http://{n}.example:8008/patroni")),
        state: "running".into(),
        role: "replica".into(),
        version: Some("4.1.0".into()),
        ..Member::default()
    }
}

async fn read<D: Dcs>(d: &D) -> ClusterView {
    d.read_cluster().await.expect("read_cluster")
}

/// Polls `read_cluster` until `cond` holds; panics with the last view after [`DEADLINE`].
async fn eventually<D: Dcs>(d: &D, what: &str, cond: impl Fn(&ClusterView) -> bool) -> ClusterView {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let view = read(d).await;
        if cond(&view) {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reached within {DEADLINE:?}; last view: {view:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_changed(rx: &mut tokio::sync::watch::Receiver<u64>, what: &str) {
    tokio::time::timeout(DEADLINE, rx.changed())
        .await
        .unwrap_or_else(|_| panic!("{what}: changes() did not tick within {DEADLINE:?}"))
        .expect("changes() sender alive");
}

fn lease_not_found<T: std::fmt::Debug>(r: Result<T, DcsError>, lease: i64, what: &str) {
    match r {
        Err(DcsError::LeaseNotFound(l)) => assert_eq!(l, lease, "{what}"),
        other => panic!("{what}: expected LeaseNotFound({lease}), got {other:?}"),
    }
}

const TTL: Duration = Duration::from_secs(10);

/// `name` takes the leader key on a new lease of `d`; the holder for leader-only writes.
async fn lead<D: Dcs>(d: &D, n: &str) -> Holder {
    let lease = d.grant_lease(TTL).await.unwrap();
    assert!(
        d.acquire_leader(&name(n), lease).await.unwrap(),
        "{n} leads"
    );
    Holder {
        name: name(n),
        lease,
    }
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

async fn acquire_leader_only_when_absent<E: Env>(env: E) {
    let a = env.client().await;
    let b = env.client().await;
    let la = a.grant_lease(TTL).await.unwrap();
    let lb = b.grant_lease(TTL).await.unwrap();
    assert!(
        a.acquire_leader(&name("n1"), la).await.unwrap(),
        "first acquire wins"
    );
    assert!(
        !b.acquire_leader(&name("n2"), lb).await.unwrap(),
        "second acquire loses"
    );
    assert!(
        !a.acquire_leader(&name("n1"), la).await.unwrap(),
        "the key exists even for its holder"
    );
    let leader = read(&b).await.leader.expect("leader key");
    assert_eq!((leader.name, leader.lease), (Some(name("n1")), la));
    assert!(leader.create_revision > 0 && leader.mod_revision >= leader.create_revision);
    // The value is the plain member name, as Patroni (and vip-manager) expect.
    assert_eq!(
        env.raw_get("leader").await.map(|(v, _)| v).as_deref(),
        Some("n1")
    );
}

async fn release_leader_only_by_holder<E: Env>(env: E) {
    let a = env.client().await;
    let b = env.client().await;
    let la = a.grant_lease(TTL).await.unwrap();
    let lb = b.grant_lease(TTL).await.unwrap();
    assert!(
        !a.release_leader(&name("n1")).await.unwrap(),
        "nothing to release"
    );
    assert!(a.acquire_leader(&name("n1"), la).await.unwrap());
    let first_epoch = read(&a).await.leader.unwrap().create_revision;
    assert!(
        !b.release_leader(&name("n2")).await.unwrap(),
        "n2 does not hold the key"
    );
    assert_eq!(read(&b).await.leader_name(), Some(&name("n1")));
    assert!(a.release_leader(&name("n1")).await.unwrap());
    assert_eq!(read(&b).await.leader, None);
    assert!(
        !a.release_leader(&name("n1")).await.unwrap(),
        "already released"
    );
    assert!(b.acquire_leader(&name("n2"), lb).await.unwrap());
    let leader = read(&a).await.leader.unwrap();
    assert_eq!(leader.name, Some(name("n2")));
    assert!(
        leader.create_revision > first_epoch,
        "the epoch grows with every acquisition"
    );
    assert!(
        !a.release_leader(&name("n1")).await.unwrap(),
        "an old holder cannot release the new key"
    );
    assert_eq!(read(&a).await.leader_name(), Some(&name("n2")));
}

async fn reattach_leader_keeps_the_key_on_a_new_lease<E: Env>(env: E) {
    let a = env.client().await;
    let b = env.client().await;
    let l1 = a.grant_lease(TTL).await.unwrap();
    let l2 = a.grant_lease(TTL).await.unwrap();
    let lb = b.grant_lease(TTL).await.unwrap();
    assert!(
        !a.reattach_leader(&name("n1"), l2).await.unwrap(),
        "no key to reattach"
    );
    assert_eq!(
        read(&a).await.leader,
        None,
        "reattach never creates the key"
    );
    assert!(a.acquire_leader(&name("n1"), l1).await.unwrap());
    let before = read(&a).await.leader.unwrap();
    assert!(
        !b.reattach_leader(&name("n2"), lb).await.unwrap(),
        "someone else's key"
    );
    assert!(a.reattach_leader(&name("n1"), l2).await.unwrap());
    let after = read(&b).await.leader.unwrap();
    assert_eq!((after.name.clone(), after.lease), (Some(name("n1")), l2));
    assert_eq!(
        after.create_revision, before.create_revision,
        "same key, same epoch"
    );
    a.revoke_lease(l1).await.unwrap();
    assert_eq!(
        read(&b).await.leader.map(|l| l.lease),
        Some(l2),
        "the old lease no longer holds it"
    );
}

async fn lease_end_removes_leader_and_member<E: Env>(env: E) {
    let a = env.client().await;
    let b = env.client().await;
    let short = Duration::from_secs(5);
    let la = a.grant_lease(short).await.unwrap();
    let lb = b.grant_lease(Duration::from_secs(60)).await.unwrap();
    a.touch_member(&member("n1"), la).await.unwrap();
    assert!(a.acquire_leader(&name("n1"), la).await.unwrap());
    b.touch_member(&member("n2"), lb).await.unwrap();
    let view = read(&b).await;
    assert_eq!(
        view.member(&name("n1")).map(|m| m.lease),
        Some(la),
        "member key carries the lease"
    );
    assert_eq!(view.leader.as_ref().map(|l| l.lease), Some(la));
    let mut rx = b.changes();
    rx.borrow_and_update();

    env.end_lease(&a, la, short).await;

    let view = eventually(&b, "leader and member keys gone with their lease", |v| {
        v.leader.is_none() && v.member(&name("n1")).is_none()
    })
    .await;
    assert!(
        view.member(&name("n2")).is_some(),
        "other leases are untouched"
    );
    wait_changed(&mut rx, "lease end").await;
    lease_not_found(a.keepalive(la).await, la, "keepalive of the ended lease");
}

async fn keepalive_after_revoke_is_lease_not_found<E: Env>(env: E) {
    let a = env.client().await;
    let lease = a.grant_lease(TTL).await.unwrap();
    let ttl = a.keepalive(lease).await.unwrap();
    assert!(ttl > Duration::ZERO && ttl <= TTL, "remaining ttl {ttl:?}");
    // A second refresh goes through the same path an agent uses every cycle.
    assert!(a.keepalive(lease).await.unwrap() > Duration::ZERO);
    a.revoke_lease(lease).await.unwrap();
    lease_not_found(a.keepalive(lease).await, lease, "keepalive after revoke");
    lease_not_found(
        a.keepalive(lease).await,
        lease,
        "keepalive after revoke, again",
    );
    lease_not_found(a.revoke_lease(lease).await, lease, "second revoke");
    lease_not_found(
        a.touch_member(&member("n1"), lease).await,
        lease,
        "touch with a revoked lease",
    );
    lease_not_found(
        a.acquire_leader(&name("n1"), lease).await,
        lease,
        "acquire with a revoked lease",
    );
    assert_eq!(read(&a).await.leader, None);
    let unknown = i64::MAX - 7;
    lease_not_found(
        a.keepalive(unknown).await,
        unknown,
        "keepalive of a lease never granted",
    );
}

async fn race_initialize_once<E: Env>(env: E) {
    let a = env.client().await;
    let b = env.client().await;
    assert_eq!(read(&a).await.initialize, None);
    assert!(a.race_initialize().await.unwrap(), "first racer wins");
    assert!(!b.race_initialize().await.unwrap(), "second racer loses");
    assert_eq!(read(&b).await.initialize.as_deref(), Some(""));
    a.set_initialize("7001234567890123456").await.unwrap();
    let view = read(&b).await;
    assert_eq!(view.system_id(), Some("7001234567890123456"));
    assert!(!b.race_initialize().await.unwrap(), "still initialised");
    assert_eq!(
        read(&b).await.system_id(),
        Some("7001234567890123456"),
        "a lost race writes nothing"
    );
    a.cancel_initialize().await.unwrap();
    assert_eq!(read(&b).await.initialize, None);
    assert!(
        b.race_initialize().await.unwrap(),
        "a cancelled bootstrap can be raced again"
    );
}

async fn failover_and_sync_compare_and_swap<E: Env>(env: E) {
    let a = env.client().await;
    let leader = lead(&a, "n1").await;
    let request = FailoverRequest {
        leader: Some(name("n1")),
        candidate: Some(name("n2")),
        scheduled_at: None,
    };
    assert!(
        a.write_failover(Some(&request), Some(0)).await.unwrap(),
        "create"
    );
    assert_eq!(
        env.raw_get("failover").await.unwrap().0,
        r#"{"leader":"n1","member":"n2"}"#,
        "Patroni's encoding"
    );
    let view = read(&a).await;
    let version = view.failover.as_ref().unwrap().mod_revision;
    assert_eq!(view.failover.unwrap().value, request);
    assert!(
        !a.write_failover(None, Some(version + 100)).await.unwrap(),
        "stale version loses"
    );
    assert!(
        read(&a).await.failover.is_some(),
        "a lost CAS changes nothing"
    );
    assert!(
        a.write_failover(None, Some(version)).await.unwrap(),
        "clear"
    );
    assert_eq!(
        env.raw_get("failover").await.unwrap().0,
        "{}",
        "cleared as Patroni does"
    );
    assert!(read(&a).await.failover.is_none());

    // The leader clears a request it handled, by compare-and-swap.
    assert!(a.write_failover(Some(&request), None).await.unwrap());
    let version = read(&a).await.failover.unwrap().mod_revision;
    assert_eq!(
        a.clear_failover(&leader, version - 1).await.unwrap(),
        LeaderWrite::Conflict
    );
    assert!(
        read(&a).await.failover.is_some(),
        "a lost CAS clears nothing"
    );
    assert_eq!(
        a.clear_failover(&leader, version).await.unwrap(),
        LeaderWrite::Written
    );
    assert_eq!(env.raw_get("failover").await.unwrap().0, "{}");

    let state = SyncState {
        leader: Some(name("n1")),
        sync_standby: vec![name("n2"), name("n3")],
        quorum: 0,
    };
    assert_eq!(
        a.write_sync(&leader, Some(&state), 0).await.unwrap(),
        LeaderWrite::Written
    );
    assert_eq!(
        a.write_sync(&leader, Some(&state), 0).await.unwrap(),
        LeaderWrite::Conflict,
        "create-only when the version is 0"
    );
    assert_eq!(
        env.raw_get("sync").await.unwrap().0,
        r#"{"leader":"n1","quorum":0,"sync_standby":"n2,n3"}"#
    );
    let version = read(&a).await.sync.version();
    assert_eq!(
        a.write_sync(&leader, None, version - 1).await.unwrap(),
        LeaderWrite::Conflict
    );
    assert_eq!(
        a.write_sync(&leader, None, version).await.unwrap(),
        LeaderWrite::Written,
        "delete with CAS"
    );
    assert!(env.raw_get("sync").await.is_none());
    assert_eq!(read(&a).await.sync, SyncKey::Absent);
}

/// Design §3.8: every leader-only write compares the leader key's value and lease in the same
/// transaction, so a leader that lost the key (its lease ended, someone else took it) cannot
/// overwrite what the new leader publishes.
async fn leader_only_writes_of_a_deposed_leader_are_refused<E: Env>(env: E) {
    let a = env.client().await;
    let b = env.client().await;
    let old = lead(&a, "n1").await;
    let history = |leader: &str| {
        vec![HistoryLine {
            timeline: Timeline(1),
            lsn: Lsn(25_165_984),
            reason: "no recovery target specified".into(),
            timestamp: None,
            new_leader: Some(leader.into()),
        }]
    };
    let sync = |leader: &str| SyncState {
        leader: Some(name(leader)),
        ..SyncState::default()
    };
    assert_eq!(
        a.write_status(&old, Lsn(1), &[], &[]).await.unwrap(),
        LeaderWrite::Written
    );
    assert_eq!(
        a.write_history(&old, &history("n1")).await.unwrap(),
        LeaderWrite::Written
    );
    assert_eq!(
        a.write_sync(&old, Some(&sync("n1")), 0).await.unwrap(),
        LeaderWrite::Written
    );
    assert!(
        a.write_failover(Some(&FailoverRequest::default()), None)
            .await
            .unwrap()
    );

    // The old leader's lease ends; n2 takes the key and publishes.
    env.end_lease(&a, old.lease, TTL).await;
    eventually(&b, "leader key gone with its lease", |v| v.leader.is_none()).await;
    let new = lead(&b, "n2").await;
    assert_eq!(
        b.write_status(&new, Lsn(2), &[], &[]).await.unwrap(),
        LeaderWrite::Written
    );
    let before: Vec<_> = {
        let mut v = vec![];
        for key in ["status", "history", "sync", "failover"] {
            v.push(env.raw_get(key).await);
        }
        v
    };
    let view = read(&a).await;
    let sync_version = view.sync.version();
    let failover_version = env.raw_get("failover").await.map_or(0, |(_, rev)| rev);

    // Every write of the deposed leader is refused as such, even with the current versions.
    assert_eq!(
        a.write_status(&old, Lsn(3), &[], &[]).await.unwrap(),
        LeaderWrite::NotLeader
    );
    assert_eq!(
        a.write_history(&old, &history("n1")).await.unwrap(),
        LeaderWrite::NotLeader
    );
    assert_eq!(
        a.write_sync(&old, Some(&sync("n1")), sync_version)
            .await
            .unwrap(),
        LeaderWrite::NotLeader
    );
    assert_eq!(
        a.write_sync(&old, None, sync_version).await.unwrap(),
        LeaderWrite::NotLeader
    );
    assert_eq!(
        a.clear_failover(&old, failover_version).await.unwrap(),
        LeaderWrite::NotLeader
    );
    // The same name on another lease is not the holder either (an agent restarted with a new
    // lease while its predecessor still runs), nor another name on the holder's lease.
    for impostor in [
        Holder {
            name: name("n2"),
            lease: old.lease,
        },
        Holder {
            name: name("n1"),
            lease: new.lease,
        },
    ] {
        assert_eq!(
            a.write_status(&impostor, Lsn(4), &[], &[]).await.unwrap(),
            LeaderWrite::NotLeader,
            "{impostor:?}"
        );
    }
    let mut after = vec![];
    for key in ["status", "history", "sync", "failover"] {
        after.push(env.raw_get(key).await);
    }
    assert_eq!(after, before, "a refused write changes nothing");

    // The new leader's writes go through; with no leader key nobody's do.
    assert_eq!(
        b.write_history(&new, &history("n2")).await.unwrap(),
        LeaderWrite::Written
    );
    assert!(b.release_leader(&name("n2")).await.unwrap());
    assert_eq!(
        b.write_status(&new, Lsn(5), &[], &[]).await.unwrap(),
        LeaderWrite::NotLeader
    );
    assert_eq!(read(&b).await.optime(), Some(Lsn(2)));
}

/// An undecodable value in the leader key is still a leader key on its lease: nobody else can
/// take it, it goes with its lease, and its holder can put its name back by compare-and-swap
/// on the key's revision (also when the value was written without a lease: the key keeps its
/// `create_revision`, the holder's epoch).
async fn undecodable_leader_key_belongs_to_its_lease_and_epoch<E: Env>(env: E) {
    let a = env.client().await;
    let b = env.client().await;
    let holder = lead(&a, "n1").await;
    let epoch = read(&a).await.leader.unwrap().create_revision;

    env.raw_put_with_lease("leader", "", holder.lease).await;
    let view = read(&b).await;
    let key = view.leader.clone().expect("the key still counts");
    assert_eq!(
        (key.name.clone(), key.lease, key.create_revision),
        (None, holder.lease, epoch)
    );
    assert_eq!(view.leader_name(), None);
    assert!(
        view.warnings.iter().any(|w| w.starts_with("leader: ")),
        "{:#?}",
        view.warnings
    );
    // Outlives the end of the holder's lease below.
    let lb = b.grant_lease(TTL * 6).await.unwrap();
    assert!(
        !b.acquire_leader(&name("n2"), lb).await.unwrap(),
        "nobody takes a key that exists"
    );
    assert!(
        !a.repair_leader(&name("n1"), holder.lease, key.mod_revision - 1)
            .await
            .unwrap(),
        "only at the revision read"
    );
    assert_eq!(
        a.write_status(&holder, Lsn(1), &[], &[]).await.unwrap(),
        LeaderWrite::NotLeader,
        "the garbage value does not name the holder"
    );
    assert!(
        a.repair_leader(&name("n1"), holder.lease, key.mod_revision)
            .await
            .unwrap()
    );
    let repaired = read(&b).await.leader.unwrap();
    assert_eq!(
        (repaired.name, repaired.lease, repaired.create_revision),
        (Some(name("n1")), holder.lease, epoch),
        "same key, same epoch"
    );
    assert_eq!(
        a.write_status(&holder, Lsn(1), &[], &[]).await.unwrap(),
        LeaderWrite::Written
    );

    // Written without a lease (a plain `etcdctl put`): detached, but the same key.
    env.raw_put("leader", "").await;
    let key = read(&a).await.leader.unwrap();
    assert_eq!(
        (key.name.clone(), key.lease, key.create_revision),
        (None, 0, epoch)
    );
    assert!(
        a.repair_leader(&name("n1"), holder.lease, key.mod_revision)
            .await
            .unwrap()
    );
    assert_eq!(read(&b).await.leader.map(|l| l.lease), Some(holder.lease));

    // Garbage on the holder's lease goes with the lease.
    env.raw_put_with_lease("leader", "", holder.lease).await;
    env.end_lease(&a, holder.lease, TTL).await;
    eventually(&b, "garbage leader key gone with its lease", |v| {
        v.leader.is_none()
    })
    .await;
    assert!(b.acquire_leader(&name("n2"), lb).await.unwrap());
    let taken = read(&b).await.leader.unwrap();
    assert!(taken.create_revision > epoch, "a new key, a new epoch");
    assert!(
        !a.repair_leader(&name("n1"), holder.lease, key.mod_revision)
            .await
            .unwrap_or(false),
        "a stale revision repairs nothing"
    );
    assert_eq!(
        read(&b).await.leader,
        Some(LeaderKey {
            name: Some(name("n2")),
            ..taken
        })
    );
}

/// Item: a deleted `/sync` reads as absent, garbage as unreadable (with its revision), never
/// as an empty state; the leader overwrites garbage by compare-and-swap on that revision.
async fn deleted_and_unreadable_sync_are_not_the_same<E: Env>(env: E) {
    let a = env.client().await;
    let leader = lead(&a, "n1").await;
    let state = SyncState {
        leader: Some(name("n1")),
        sync_standby: vec![name("n2")],
        quorum: 0,
    };
    assert_eq!(
        a.write_sync(&leader, Some(&state), 0).await.unwrap(),
        LeaderWrite::Written
    );
    assert_eq!(
        read(&a).await.sync.present().map(|s| s.value.clone()),
        Some(state.clone())
    );
    env.raw_put("sync", "{garbage").await;
    let (_, garbage_rev) = env.raw_get("sync").await.unwrap();
    let view = read(&a).await;
    match &view.sync {
        SyncKey::Unreadable { why, mod_revision } => {
            assert_eq!(*mod_revision, garbage_rev);
            assert!(why.contains("invalid JSON"), "{why}");
        }
        other => panic!("garbage /sync read as {other:?}"),
    }
    assert_eq!(
        a.write_sync(&leader, Some(&state), garbage_rev)
            .await
            .unwrap(),
        LeaderWrite::Written,
        "the leader overwrites garbage at its revision"
    );
    assert!(read(&a).await.sync.present().is_some());
    env.raw_delete("sync").await;
    assert_eq!(read(&a).await.sync, SyncKey::Absent);
}

/// A prefix far larger than gRPC's default 4 MiB message limit (many members, each well
/// below etcd's 1.5 MiB request limit) is still read, in one consistent view.
async fn read_cluster_past_the_grpc_message_limit<E: Env>(env: E) {
    let a = env.client().await;
    let b = env.client().await;
    let lease = a.grant_lease(TTL).await.unwrap();
    const MEMBERS: usize = 64;
    let filler = "x".repeat(100 * 1024);
    for i in 0..MEMBERS {
        let mut m = member(&format!("bulk{i:03}"));
        m.tags.custom.insert("filler".into(), format!("{filler:?}"));
        a.touch_member(&m, lease).await.unwrap();
    }
    assert!(a.acquire_leader(&name("bulk000"), lease).await.unwrap());
    let view = read(&b).await;
    assert_eq!(view.members.len(), MEMBERS, "{:#?}", view.warnings);
    assert!(view.warnings.is_empty(), "{:#?}", view.warnings);
    assert_eq!(view.leader_name(), Some(&name("bulk000")));
    let bytes: usize = view
        .members
        .iter()
        .map(|m| m.tags.custom.get("filler").map_or(0, String::len))
        .sum();
    assert!(bytes > 6 * 1024 * 1024, "{bytes} bytes");
}

async fn write_config_compare_and_swap<E: Env>(env: E) {
    let a = env.client().await;
    let b = env.client().await;
    assert!(
        !a.write_config(r#"{"ttl":30}"#, Some(5)).await.unwrap(),
        "absent key has version 0"
    );
    assert!(a.write_config(r#"{"ttl":30}"#, None).await.unwrap());
    let v1 = read(&a).await.config.unwrap().mod_revision;
    assert!(
        b.write_config(r#"{"ttl":20}"#, Some(v1)).await.unwrap(),
        "current version wins"
    );
    let (value, v2) = env.raw_get("config").await.unwrap();
    assert_eq!(value, r#"{"ttl":20}"#);
    assert!(v2 > v1);
    assert!(
        !a.write_config(r#"{"ttl":10}"#, Some(v1)).await.unwrap(),
        "stale version loses"
    );
    assert!(
        !a.write_config(r#"{"ttl":10}"#, Some(0)).await.unwrap(),
        "create-only loses"
    );
    assert_eq!(
        env.raw_get("config").await,
        Some((r#"{"ttl":20}"#.to_owned(), v2)),
        "a lost CAS changes nothing"
    );
    let config = read(&a).await.config.unwrap();
    assert_eq!(
        (config.value.as_str(), config.mod_revision),
        (r#"{"ttl":20}"#, v2)
    );
}

async fn garbage_is_reported_and_valid_records_decode<E: Env>(env: E) {
    let a = env.client().await;
    let b = env.client().await;
    let la = a.grant_lease(TTL).await.unwrap();
    a.touch_member(&member("n1"), la).await.unwrap();
    assert!(a.acquire_leader(&name("n1"), la).await.unwrap());
    a.write_config(r#"{"ttl":30}"#, None).await.unwrap();
    let garbage = [
        ("members/n3", "{not json"),
        ("members/n4", r#"{"state":5,"role":"replica"}"#),
        ("members/n5", "[1,2,3]"),
        ("failover", r#"{"leader":"#),
        ("sync", "[garbage"),
        ("status", r#"{"optime":"soon"}"#),
        ("history", "{}"),
    ];
    for (key, value) in garbage {
        env.raw_put(key, value).await;
    }
    let view = read(&b).await;
    assert_eq!(view.leader_name(), Some(&name("n1")));
    assert_eq!(
        view.members
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>(),
        ["n1"]
    );
    assert_eq!(
        view.member(&name("n1")).unwrap().conn_url,
        member("n1").conn_url
    );
    assert_eq!(
        view.config.as_ref().map(|c| c.value.as_str()),
        Some(r#"{"ttl":30}"#)
    );
    assert_eq!(view.failover, None);
    assert!(
        matches!(view.sync, SyncKey::Unreadable { .. }),
        "garbage sync is unreadable, not empty: {:?}",
        view.sync
    );
    assert_eq!(view.status, None);
    assert!(view.history.is_empty());
    for (key, _) in garbage {
        let prefix = format!("{key}: ");
        assert!(
            view.warnings.iter().any(|w| w.starts_with(&prefix)),
            "no warning for {key}: {:#?}",
            view.warnings
        );
    }
    assert_eq!(view.warnings.len(), garbage.len(), "{:#?}", view.warnings);
    assert!(
        view.warnings
            .iter()
            .any(|w| w.starts_with("members/n3: invalid JSON")),
        "{:#?}",
        view.warnings
    );

    // Garbage in the leader key: a leader key without a name, a warning, and nobody can take
    // the key without deleting it first.
    assert!(a.release_leader(&name("n1")).await.unwrap());
    env.raw_put("leader", "").await;
    let view = read(&b).await;
    assert_eq!(
        view.leader.as_ref().map(|l| (l.name.clone(), l.lease)),
        Some((None, 0))
    );
    assert!(
        view.warnings.iter().any(|w| w.starts_with("leader: ")),
        "{:#?}",
        view.warnings
    );
    let lb = b.grant_lease(TTL).await.unwrap();
    assert!(
        !b.acquire_leader(&name("n2"), lb).await.unwrap(),
        "the garbage key still exists"
    );
    env.raw_delete("leader").await;
    assert!(b.acquire_leader(&name("n2"), lb).await.unwrap());
}

async fn changes_tick_after_another_clients_write<E: Env>(env: E) {
    let a = env.client().await;
    let b = env.client().await;
    let mut rx = b.changes();
    rx.borrow_and_update();
    assert!(a.write_config(r#"{"ttl":30}"#, None).await.unwrap());
    wait_changed(&mut rx, "config written by another client").await;
    let la = a.grant_lease(TTL).await.unwrap();
    rx.borrow_and_update();
    assert!(a.acquire_leader(&name("n1"), la).await.unwrap());
    wait_changed(&mut rx, "leader acquired by another client").await;
    rx.borrow_and_update();
    assert!(a.release_leader(&name("n1")).await.unwrap());
    wait_changed(&mut rx, "leader released by another client").await;
}

async fn touch_member_round_trip_in_patroni_format<E: Env>(env: E) {
    let a = env.client().await;
    let b = env.client().await;
    let lease = a.grant_lease(TTL).await.unwrap();
    let mut m = Member {
        name: name("node2"),
        conn_url: Some("postgres://10.0.0.2:5432/postgres".into()),
        api_url: Some("http://10.0.0.2:8008/patroni".into()),
        state: "running".into(),
        role: "replica".into(),
        version: Some("4.1.0".into()),
        tags: Tags {
            clonefrom: true,
            nofailover: Some(false),
            failover_priority: Some(2),
            custom: [("zone".to_owned(), "\"eu-1\"".to_owned())]
                .into_iter()
                .collect(),
            ..Tags::default()
        },
        xlog_location: Some(Lsn(50_331_800)),
        receive_lsn: Some(Lsn(50_331_800)),
        replay_lsn: Some(Lsn(50_331_648)),
        replication_state: Some("streaming".into()),
        timeline: Some(Timeline(2)),
        pending_restart: true,
        scheduled_restart: Some("2030-01-01T00:00:00+00:00".into()),
        pause: false,
        reason: Some("following leader node1".into()),
        lease: 0,
    };
    a.touch_member(&m, lease).await.unwrap();
    let (raw, rev1) = env
        .raw_get("members/node2")
        .await
        .expect("member key written");
    assert_eq!(
        raw,
        r#"{"conn_url":"postgres://10.0.0.2:5432/postgres","api_url":"http://10.0.0.2:8008/patroni","state":"running","role":"replica","version":"4.1.0","tags":{"clonefrom":true,"failover_priority":2,"nofailover":false,"zone":"eu-1"},"pending_restart":true,"scheduled_restart":{"schedule":"2030-01-01T00:00:00+00:00"},"xlog_location":50331800,"replay_lsn":50331648,"receive_lsn":50331800,"replication_state":"streaming","timeline":2,"pgbaton_reason":"following leader node1"}"#
    );
    let decoded = read(&b)
        .await
        .member(&name("node2"))
        .cloned()
        .expect("member decoded");
    assert_eq!(decoded, Member { lease, ..m.clone() }, "round trip");

    a.touch_member(&m, lease).await.unwrap();
    assert_eq!(
        env.raw_get("members/node2").await.unwrap().1,
        rev1,
        "unchanged member: no write"
    );

    m.xlog_location = Some(Lsn(50_331_900));
    a.touch_member(&m, lease).await.unwrap();
    let (_, rev2) = env.raw_get("members/node2").await.unwrap();
    assert!(rev2 > rev1, "changed member is rewritten");

    let lease2 = a.grant_lease(TTL).await.unwrap();
    a.touch_member(&m, lease2).await.unwrap();
    assert_eq!(
        read(&b).await.member(&name("node2")).map(|m| m.lease),
        Some(lease2),
        "new lease"
    );

    // Deleted behind our back (e.g. `patronictl remove`): after a read, the next touch rewrites.
    env.raw_delete("members/node2").await;
    assert!(read(&a).await.member(&name("node2")).is_none());
    a.touch_member(&m, lease2).await.unwrap();
    assert!(
        read(&b).await.member(&name("node2")).is_some(),
        "rewritten after it vanished"
    );
}

async fn status_and_history_in_patroni_format<E: Env>(env: E) {
    let a = env.client().await;
    let b = env.client().await;
    let leader = lead(&a, "n1").await;
    let slots = vec![
        ("node2".to_owned(), Lsn(67_108_000)),
        ("perm".to_owned(), Lsn(67_000_000)),
    ];
    a.write_status(&leader, Lsn(67_108_960), &slots, &[])
        .await
        .unwrap();
    let (raw, rev1) = env.raw_get("status").await.expect("status written");
    assert_eq!(
        raw,
        r#"{"optime":67108960,"slots":{"node2":67108000,"perm":67000000}}"#
    );
    let status = read(&b).await.status.expect("status decoded");
    assert_eq!(status.optime, Lsn(67_108_960));
    assert_eq!(status.slots.get("perm"), Some(&Lsn(67_000_000)));

    a.write_status(&leader, Lsn(67_108_960), &slots, &[])
        .await
        .unwrap();
    assert_eq!(
        env.raw_get("status").await.unwrap().1,
        rev1,
        "unchanged status: no write"
    );
    a.write_status(&leader, Lsn(67_109_000), &[], &[])
        .await
        .unwrap();
    assert_eq!(
        env.raw_get("status").await.unwrap().0,
        r#"{"optime":67109000}"#
    );

    // Overwritten by someone else: once read, the same value is written again.
    env.raw_put("status", r#"{"optime":1}"#).await;
    assert_eq!(read(&a).await.optime(), Some(Lsn(1)));
    a.write_status(&leader, Lsn(67_109_000), &[], &[])
        .await
        .unwrap();
    assert_eq!(
        env.raw_get("status").await.unwrap().0,
        r#"{"optime":67109000}"#
    );

    let history = vec![
        HistoryLine {
            timeline: Timeline(1),
            lsn: Lsn(25_165_984),
            reason: "no recovery target specified".into(),
            timestamp: Some("2024-05-06T07:08:09.123456+00:00".into()),
            new_leader: Some("node1".into()),
        },
        HistoryLine {
            timeline: Timeline(2),
            lsn: Lsn(33_554_592),
            reason: "no recovery target specified".into(),
            timestamp: Some("2024-05-07T07:08:09.123456+00:00".into()),
            new_leader: Some("node2".into()),
        },
    ];
    a.write_history(&leader, &history).await.unwrap();
    assert_eq!(
        env.raw_get("history").await.unwrap().0,
        r#"[[1,25165984,"no recovery target specified","2024-05-06T07:08:09.123456+00:00","node1"],[2,33554592,"no recovery target specified","2024-05-07T07:08:09.123456+00:00","node2"]]"#
    );
    assert_eq!(read(&b).await.history, history);
}

/// `/failsafe` (failsafe mode): Patroni's `{"name": "api_url", ...}`, written only by the
/// holder of the leader key; a deposed leader's write changes nothing.
async fn failsafe_topology_in_patroni_format_by_the_leader_only<E: Env>(env: E) {
    let a = env.client().await;
    let b = env.client().await;
    let old = lead(&a, "n1").await;
    let topology: FailsafeTopology = [
        (name("n1"), "http://10.0.0.1:8008/patroni".to_owned()),
        (name("n2"), "http://10.0.0.2:8008/patroni".to_owned()),
    ]
    .into_iter()
    .collect();
    assert_eq!(
        a.write_failsafe(&old, &topology).await.unwrap(),
        LeaderWrite::Written
    );
    assert_eq!(
        env.raw_get("failsafe").await.expect("written").0,
        r#"{"n1":"http://10.0.0.1:8008/patroni","n2":"http://10.0.0.2:8008/patroni"}"#
    );
    assert_eq!(read(&b).await.failsafe, Some(topology.clone()));

    // Patroni's own value (another member order) reads the same.
    env.raw_put(
        "failsafe",
        r#"{"n2":"http://10.0.0.2:8008/patroni","n1":"http://10.0.0.1:8008/patroni"}"#,
    )
    .await;
    assert_eq!(read(&b).await.failsafe, Some(topology.clone()));

    env.end_lease(&a, old.lease, TTL).await;
    eventually(&b, "leader key gone with its lease", |v| v.leader.is_none()).await;
    let new = lead(&b, "n2").await;
    let before = env.raw_get("failsafe").await;
    let mut shrunk = topology.clone();
    shrunk.remove(&name("n2"));
    assert_eq!(
        a.write_failsafe(&old, &shrunk).await.unwrap(),
        LeaderWrite::NotLeader
    );
    assert_eq!(
        env.raw_get("failsafe").await,
        before,
        "a refused write changes nothing"
    );
    assert_eq!(
        b.write_failsafe(&new, &shrunk).await.unwrap(),
        LeaderWrite::Written
    );
    assert_eq!(read(&a).await.failsafe, Some(shrunk));
}

// ---------------------------------------------------------------------------------------------
// etcd only
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn etcd_lease_expires_by_its_ttl() {
    let Some(env) = EtcdEnv::start("etcd_lease_expires_by_its_ttl").await else {
        return;
    };
    let a = env.client().await;
    let b = env.client().await;
    let lease = a.grant_lease(Duration::from_secs(1)).await.unwrap();
    a.touch_member(&member("n1"), lease).await.unwrap();
    assert!(a.acquire_leader(&name("n1"), lease).await.unwrap());
    let mut rx = b.changes();
    rx.borrow_and_update();
    assert_eq!(read(&b).await.leader_name(), Some(&name("n1")));
    // No keepalive: etcd expires the lease (1 s, or its minimum TTL) by itself.
    eventually(&b, "keys of an expired lease are gone", |v| {
        v.leader.is_none() && v.member(&name("n1")).is_none()
    })
    .await;
    wait_changed(&mut rx, "lease expiry").await;
    lease_not_found(
        a.keepalive(lease).await,
        lease,
        "keepalive of the expired lease",
    );
}

#[tokio::test]
async fn etcd_unreachable_is_unavailable_within_the_timeout() {
    let (listener, port) = free_port();
    drop(listener); // nothing listens there any more
    let timeout = Duration::from_secs(1);
    let settings = EtcdSettings {
        endpoints: vec![format!("127.0.0.1:{port}")],
        scope: DcsScope {
            namespace: "/service".into(),
            scope: "unreachable".into(),
        },
        request_timeout: timeout,
        username: None,
        password: None,
        tls: None,
    };
    let started = Instant::now();
    let result = EtcdDcs::connect(settings).await;
    let elapsed = started.elapsed();
    match result {
        Err(DcsError::Unavailable { message, .. }) => {
            assert!(
                message.contains(&port.to_string()),
                "names the endpoint: {message}"
            )
        }
        Err(e) => panic!("expected Unavailable, got {e:?}"),
        Ok(_) => panic!("expected Unavailable, connected to a closed port"),
    }
    // Connecting is one timeout-bounded step and one timeout-bounded probe.
    assert!(elapsed < timeout * 3, "took {elapsed:?}");
}

#[tokio::test]
async fn etcd_requests_fail_as_unavailable_when_etcd_is_gone() {
    // A private etcd, since this test kills it.
    if !Path::new(ETCD_BIN).exists() {
        let _ = shared_etcd("etcd_requests_fail_as_unavailable_when_etcd_is_gone"); // SKIP line or failure
        return;
    }
    let server = EtcdServer::start();
    let scope = DcsScope {
        namespace: "/service".into(),
        scope: "gone".into(),
    };
    let mut settings = etcd_settings(&server.endpoint, &scope);
    settings.request_timeout = Duration::from_secs(1);
    let a = EtcdDcs::connect(settings).await.unwrap();
    let lease = a.grant_lease(TTL).await.unwrap();
    drop(server);
    let started = Instant::now();
    match a.read_cluster().await {
        Err(DcsError::Unavailable { message, .. }) => {
            assert!(
                message.contains("/service/gone/"),
                "names the prefix: {message}"
            )
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(matches!(
        a.keepalive(lease).await,
        Err(DcsError::Unavailable { .. })
    ));
    assert!(matches!(
        a.acquire_leader(&name("n1"), lease).await,
        Err(DcsError::Unavailable { .. })
    ));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "each call bounded by the timeout"
    );
}

#[tokio::test]
async fn etcd_watch_reconnects_after_an_etcd_restart() {
    // A private etcd, since this test restarts it.
    if !Path::new(ETCD_BIN).exists() {
        let _ = shared_etcd("etcd_watch_reconnects_after_an_etcd_restart"); // SKIP line or failure
        return;
    }
    let mut server = EtcdServer::start();
    let scope = DcsScope {
        namespace: "/service".into(),
        scope: "restart".into(),
    };
    let settings = etcd_settings(&server.endpoint, &scope);
    let watcher = EtcdDcs::connect(settings.clone()).await.unwrap();
    let mut rx = watcher.changes();
    rx.borrow_and_update();

    server.stop();
    assert!(matches!(
        watcher.read_cluster().await,
        Err(DcsError::Unavailable { .. })
    ));
    assert!(!rx.has_changed().unwrap(), "nothing was written");
    server
        .launch()
        .unwrap_or_else(|LaunchError::Exited(log)| panic!("etcd restart failed:\n{log}"));

    // Events may have been missed while the stream was down: one tick after reconnecting.
    wait_changed(&mut rx, "watch re-established after the restart").await;
    rx.borrow_and_update();
    let writer = EtcdDcs::connect(settings).await.unwrap();
    let lease = writer.grant_lease(TTL).await.unwrap();
    writer.keepalive(lease).await.unwrap();
    assert!(writer.write_config(r#"{"ttl":30}"#, None).await.unwrap());
    wait_changed(&mut rx, "write after the restart").await;
    assert!(read(&watcher).await.config.is_some());

    // Restored from nothing (empty data directory): the store revision goes back to 1. The watch
    // must start over from the new store's revision rather than wait for its old one.
    for i in 0..5 {
        assert!(
            writer
                .write_config(&format!(r#"{{"ttl":{i}}}"#), None)
                .await
                .unwrap()
        );
    }
    server.stop();
    std::fs::remove_dir_all(server.dir.path().join("data")).unwrap();
    server
        .launch()
        .unwrap_or_else(|LaunchError::Exited(log)| panic!("etcd restart failed:\n{log}"));
    wait_changed(&mut rx, "watch re-established on the new store").await;
    rx.borrow_and_update();
    // The writer's connection died with the old process: its next read must still succeed
    // (one in-deadline retry of idempotent requests), and its lease is gone with the old data.
    assert_eq!(read(&writer).await.config, None, "new, empty store");
    lease_not_found(
        writer.keepalive(lease).await,
        lease,
        "lease of the wiped store",
    );
    assert!(writer.write_config(r#"{"ttl":30}"#, None).await.unwrap());
    wait_changed(&mut rx, "first write to the new store").await;
}

#[tokio::test]
async fn etcd_with_authentication() {
    // A private etcd, since this test turns authentication on.
    if !Path::new(ETCD_BIN).exists() {
        let _ = shared_etcd("etcd_with_authentication"); // SKIP line or failure
        return;
    }
    let server = EtcdServer::start();
    let mut admin = etcd_client::Client::connect([server.endpoint.as_str()], None)
        .await
        .unwrap();
    admin.user_add("root", "rootpw", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.auth_enable().await.unwrap();

    let scope = DcsScope {
        namespace: "/service".into(),
        scope: "auth".into(),
    };
    let mut settings = etcd_settings(&server.endpoint, &scope);
    settings.username = Some("root".into());
    settings.password = Some("rootpw".into());
    assert!(
        !format!("{settings:?}").contains("rootpw"),
        "Debug must not print the password"
    );
    let a = EtcdDcs::connect(settings.clone())
        .await
        .expect("connect with credentials");
    let lease = a.grant_lease(TTL).await.unwrap();
    assert!(a.acquire_leader(&name("n1"), lease).await.unwrap());
    assert_eq!(read(&a).await.leader_name(), Some(&name("n1")));

    settings.password = Some("wrong".into());
    match EtcdDcs::connect(settings.clone()).await {
        Err(DcsError::Other { message, source }) => {
            assert!(message.contains("authentication failed"), "{message}");
            // etcd-client's own error is kept as the source, not only its text.
            let source = source.expect("the client's error is the source");
            assert!(
                matches!(
                    source.downcast_ref::<etcd_client::Error>(),
                    Some(etcd_client::Error::GRpcStatus(status)) if status.message().contains("authentication failed")
                ),
                "{source:?}"
            );
        }
        Err(e) => panic!("bad credentials are not an outage: {e:?}"),
        Ok(_) => panic!("connected with a wrong password"),
    }
    settings.password = None;
    assert!(
        matches!(
            EtcdDcs::connect(settings).await,
            Err(DcsError::Other { .. })
        ),
        "user without password"
    );
}
