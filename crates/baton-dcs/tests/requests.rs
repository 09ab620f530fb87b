//! What the etcd adapter sends at idle, counted by the adapter itself
//! (`EtcdDcs::request_counts`) against a real etcd: identical member writes are skipped, the
//! keepalive stream is opened once, and with the watch cache on a read is sent only after a
//! write of this client (another client's change comes with the watch). Without `/usr/bin/etcd` the tests
//! print `SKIP` and pass, unless `PGBATON_REQUIRE_ETCD=1`.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use baton_core::{Member, MemberName};
use baton_dcs::{Dcs, DcsScope, EtcdDcs, EtcdSettings};

const ETCD_BIN: &str = "/usr/bin/etcd";
/// Generous bound for conditions that depend on the server (watch delivery).
const DEADLINE: Duration = Duration::from_secs(30);
const TTL: Duration = Duration::from_secs(30);

/// A private single-member etcd, killed on drop.
struct Etcd {
    child: Child,
    endpoint: String,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `None` (after a SKIP line) when etcd is not installed and not required.
fn etcd(test: &str) -> Option<Etcd> {
    if !Path::new(ETCD_BIN).exists() {
        let required = std::env::var("PGBATON_REQUIRE_ETCD").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "{test}: {ETCD_BIN} not found and PGBATON_REQUIRE_ETCD=1"
        );
        eprintln!("SKIP {test}: {ETCD_BIN} not found");
        return None;
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let (client, peer) = (free_port(), free_port());
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let log = std::fs::File::create(dir.path().join("etcd.log")).expect("etcd log");
    let child = Command::new(ETCD_BIN)
        .arg("--name=default")
        .arg(format!("--data-dir={}", dir.path().join("data").display()))
        .arg(format!("--listen-client-urls={client_url}"))
        .arg(format!("--advertise-client-urls={client_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=default={peer_url}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("etcd log"))
        .stderr(log)
        .spawn()
        .expect("spawn etcd");
    Some(Etcd {
        child,
        endpoint: format!("127.0.0.1:{client}"),
        _dir: dir,
    })
}

/// Connects, retrying until etcd answers (it was just started).
async fn client(etcd: &Etcd) -> EtcdDcs {
    let settings = EtcdSettings {
        endpoints: vec![etcd.endpoint.clone()],
        scope: DcsScope {
            namespace: "/service".into(),
            scope: "requests".into(),
        },
        request_timeout: Duration::from_secs(5),
        username: None,
        password: None,
        tls: None,
    };
    let deadline = Instant::now() + DEADLINE;
    loop {
        match EtcdDcs::connect(settings.clone()).await {
            Ok(dcs) => return dcs,
            Err(e) if Instant::now() > deadline => panic!("etcd never answered: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn name(n: &str) -> MemberName {
    MemberName::new(n).expect("member name")
}

fn member(name: &str, xlog: u64) -> Member {
    Member {
        name: MemberName::new(name).expect("member name"),
        api_url: Some(format!("http://127.0.0.1:8008/{name}")),
        state: "running".into(),
        role: "replica".into(),
        xlog_location: Some(baton_core::Lsn(xlog)),
        ..Member::default()
    }
}

/// Reads until one is answered from the watch cache (the watch stream is established
/// asynchronously after connecting, and a read overlapping an event is not reused).
async fn read_until_cached(dcs: &EtcdDcs) {
    let deadline = Instant::now() + DEADLINE;
    let before = dcs.request_counts().cached_reads;
    while dcs.request_counts().cached_reads == before {
        assert!(
            Instant::now() < deadline,
            "no read came from the watch cache: {:?}",
            dcs.request_counts()
        );
        dcs.read_cluster().await.expect("read_cluster");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_unchanged_member_key_is_written_once() {
    let Some(etcd) = etcd("an_unchanged_member_key_is_written_once") else {
        return;
    };
    let a = client(&etcd).await;
    let lease = a.grant_lease(TTL).await.unwrap();
    let start = a.request_counts();
    a.touch_member(&member("n1", 100), lease).await.unwrap();
    a.touch_member(&member("n1", 100), lease).await.unwrap();
    a.touch_member(&member("n1", 100), lease).await.unwrap();
    let c = a.request_counts();
    assert_eq!(
        (c.put - start.put, c.skipped_writes - start.skipped_writes),
        (1, 2)
    );
    // A new value, or the same value on a new lease, is written.
    a.touch_member(&member("n1", 200), lease).await.unwrap();
    let lease2 = a.grant_lease(TTL).await.unwrap();
    a.touch_member(&member("n1", 200), lease2).await.unwrap();
    assert_eq!(a.request_counts().put - start.put, 3);
    let view = a.read_cluster().await.unwrap();
    assert_eq!(view.members.len(), 1);
    assert_eq!(view.members[0].lease, lease2);
}

#[tokio::test]
async fn the_keepalive_stream_is_opened_once() {
    let Some(etcd) = etcd("the_keepalive_stream_is_opened_once") else {
        return;
    };
    let a = client(&etcd).await;
    let lease = a.grant_lease(TTL).await.unwrap();
    for _ in 0..5 {
        a.keepalive(lease).await.unwrap();
    }
    let c = a.request_counts();
    assert_eq!(c.keepalive_streams, 1);
    // One message opening the stream, then one per round.
    assert_eq!(c.keepalive, 6);
    assert_eq!(c.lease_grant, 1);
}

#[tokio::test]
async fn without_the_watch_cache_every_read_is_sent() {
    let Some(etcd) = etcd("without_the_watch_cache_every_read_is_sent") else {
        return;
    };
    let a = client(&etcd).await;
    let lease = a.grant_lease(TTL).await.unwrap();
    a.keepalive(lease).await.unwrap();
    let start = a.request_counts();
    for _ in 0..5 {
        a.read_cluster().await.unwrap();
    }
    let c = a.request_counts();
    assert_eq!((c.range - start.range, c.cached_reads), (5, 0));
}

#[tokio::test]
async fn with_the_watch_cache_a_read_is_sent_only_after_a_change() {
    let Some(etcd) = etcd("with_the_watch_cache_a_read_is_sent_only_after_a_change") else {
        return;
    };
    let a = client(&etcd).await;
    let b = client(&etcd).await;
    a.serve_reads_from_watch(true);
    let la = a.grant_lease(TTL).await.unwrap();
    let lb = b.grant_lease(TTL).await.unwrap();
    // Only a view with a leader is reused: b leads.
    assert!(b.acquire_leader(&name("n2"), lb).await.unwrap());
    a.keepalive(la).await.unwrap();
    read_until_cached(&a).await;

    // Idle: nothing is sent.
    let idle = a.request_counts();
    for _ in 0..5 {
        a.read_cluster().await.unwrap();
    }
    let c = a.request_counts();
    assert_eq!(
        (c.range, c.cached_reads - idle.cached_reads),
        (idle.range, 5)
    );

    // Another client's write: once the watch delivers it, the next read sees it, and is
    // answered from the cache the event was applied to (no read sent).
    let mut changes = a.changes();
    changes.borrow_and_update();
    b.touch_member(&member("n2", 1), lb).await.unwrap();
    tokio::time::timeout(DEADLINE, changes.changed())
        .await
        .expect("the watch delivers b's write")
        .unwrap();
    let before = a.request_counts();
    let view = a.read_cluster().await.unwrap();
    let c = a.request_counts();
    assert_eq!(
        (c.range, c.cached_reads - before.cached_reads),
        (before.range, 1)
    );
    assert!(view.member(&MemberName::new("n2").unwrap()).is_some());
    // And a change of it, too.
    changes.borrow_and_update();
    b.touch_member(&member("n2", 2), lb).await.unwrap();
    tokio::time::timeout(DEADLINE, changes.changed())
        .await
        .expect("the watch delivers b's second write")
        .unwrap();
    let view = a.read_cluster().await.unwrap();
    assert_eq!(a.request_counts().range, before.range);
    assert_eq!(
        view.member(&MemberName::new("n2").unwrap())
            .and_then(|m| m.xlog_location),
        Some(baton_core::Lsn(2))
    );

    // Our own write: every read sees it at once — sent, until the watch delivered the write,
    // then from the cache again.
    read_until_cached(&a).await;
    a.touch_member(&member("n1", 1), la).await.unwrap();
    let view = a.read_cluster().await.unwrap();
    assert!(view.member(&MemberName::new("n1").unwrap()).is_some());
    read_until_cached(&a).await;
    let before = a.request_counts().range;
    let view = a.read_cluster().await.unwrap();
    assert_eq!(a.request_counts().range, before);
    assert!(view.member(&MemberName::new("n1").unwrap()).is_some());
    a.touch_member(&member("n1", 2), la).await.unwrap();
    let view = a.read_cluster().await.unwrap();
    assert_eq!(
        view.member(&MemberName::new("n1").unwrap())
            .and_then(|m| m.xlog_location),
        Some(baton_core::Lsn(2)),
        "a read right after our write sees it"
    );

    // Lease expiry of another client (here: its revoke) is an event like any other.
    read_until_cached(&a).await;
    let mut changes = a.changes();
    changes.borrow_and_update();
    b.revoke_lease(lb).await.unwrap();
    tokio::time::timeout(DEADLINE, changes.changed())
        .await
        .expect("the watch delivers the revoke")
        .unwrap();
    let view = a.read_cluster().await.unwrap();
    assert!(view.member(&MemberName::new("n2").unwrap()).is_none());
    assert!(view.leader.is_none(), "the leader key went with b's lease");

    // Turned off: every read is sent again.
    a.serve_reads_from_watch(false);
    let before = a.request_counts();
    a.read_cluster().await.unwrap();
    a.read_cluster().await.unwrap();
    let c = a.request_counts();
    assert_eq!(
        (c.range - before.range, c.cached_reads - before.cached_reads),
        (2, 0)
    );
}

/// Design §4 rule 3: while nobody leads, members race for the key, and every read is
/// linearizable even with the watch cache on; once a leader appears reads may be reused, and
/// when it goes they are fresh again.
#[tokio::test]
async fn a_leaderless_cluster_is_read_fresh_every_time() {
    let Some(etcd) = etcd("a_leaderless_cluster_is_read_fresh_every_time") else {
        return;
    };
    let a = client(&etcd).await;
    let b = client(&etcd).await;
    a.serve_reads_from_watch(true);
    let la = a.grant_lease(TTL).await.unwrap();
    let lb = b.grant_lease(TTL).await.unwrap();
    a.keepalive(la).await.unwrap();
    a.touch_member(&member("n1", 1), la).await.unwrap();

    // No leader: every read is sent, however long the watch stays quiet. The watch is
    // established (or not) asynchronously; either way nothing may come from the cache.
    let start = a.request_counts();
    for _ in 0..20 {
        let view = a.read_cluster().await.unwrap();
        assert!(view.leader.is_none());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let c = a.request_counts();
    assert_eq!(
        (c.range - start.range, c.cached_reads - start.cached_reads),
        (20, 0)
    );

    // A leader appears: reads are reused again (the cache works at all) ...
    assert!(b.acquire_leader(&name("n2"), lb).await.unwrap());
    read_until_cached(&a).await;

    // ... until it releases the key: once the watch delivers that, every read is sent again.
    let mut changes = a.changes();
    changes.borrow_and_update();
    b.release_leader(&name("n2")).await.unwrap();
    tokio::time::timeout(DEADLINE, changes.changed())
        .await
        .expect("the watch delivers the release")
        .unwrap();
    let start = a.request_counts();
    for _ in 0..10 {
        let view = a.read_cluster().await.unwrap();
        assert!(view.leader.is_none());
    }
    let c = a.request_counts();
    assert_eq!(
        (c.range - start.range, c.cached_reads - start.cached_reads),
        (10, 0)
    );
}
