//! Handler tests: requests through the router (`tower::ServiceExt::oneshot`), snapshots of the
//! JSON and metrics bodies, a fake clock.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use baton_core::{
    Clock, ClusterView, HistoryLine, LeaderKey, LeaderStatus, Lsn, Member, MemberName, Mono,
    PeerStatus, PgSql, ReplicationRow, SyncKey, SyncState, Tags, Timeline, Versioned,
};
use expect_test::{Expect, expect};
use http_body_util::BodyExt;
use tokio::sync::watch;
use tower::ServiceExt;

use crate::{ApiState, Snapshot, peer_status_from_json, router, serve, status_json};

// ---------------------------------------------------------------------------------------------
// Fixtures.

struct FakeClock(AtomicU64);

impl FakeClock {
    fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Mono {
        Mono(self.0.load(Ordering::SeqCst))
    }

    /// 2026-11-22T05:00:00Z plus the test's monotonic time.
    fn unix_ms(&self) -> i64 {
        1_795_323_600_000 + self.now().as_millis() as i64
    }
}

/// The clock of most tests: 10 s after the origin.
const NOW: u64 = 10_000;
/// The leader's fencing deadline in the fixtures.
const FENCE: u64 = 20_000;
/// The leader's published optime (`/status`): 80 MiB.
const OPTIME: u64 = 0x500_0000;

fn name(s: &str) -> MemberName {
    MemberName::new(s).unwrap()
}

fn custom_tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A 3-member view: node1 leads, node2 streams, node3 restores from the archive far behind.
fn view() -> ClusterView {
    ClusterView {
        revision: 42,
        initialize: Some("7268616322854375442".to_owned()),
        config: Some(Versioned {
            value: r#"{"ttl":30,"loop_wait":10,"postgresql":{"use_pg_rewind":true},"maximum_lag_on_failover":1048576}"#.to_owned(),
            mod_revision: 3,
        }),
        leader: Some(LeaderKey { name: Some(name("node1")), lease: 7, create_revision: 30, mod_revision: 41 }),
        members: vec![
            Member {
                name: name("node1"),
                conn_url: Some("postgres://10.0.0.1:5432/postgres".to_owned()),
                api_url: Some("http://10.0.0.1:8008/patroni".to_owned()),
                state: "running".to_owned(),
                role: "primary".to_owned(),
                version: Some("0.1.0".to_owned()),
                tags: Tags { clonefrom: true, ..Tags::default() },
                xlog_location: Some(Lsn(OPTIME)),
                timeline: Some(Timeline(2)),
                lease: 7,
                ..Member::default()
            },
            Member {
                name: name("node3"),
                conn_url: Some("postgres://10.0.0.3:5433/postgres".to_owned()),
                api_url: Some("http://10.0.0.3:8008/patroni".to_owned()),
                state: "running".to_owned(),
                role: "replica".to_owned(),
                tags: Tags {
                    nofailover: Some(true),
                    custom: custom_tags(&[("zone", "\"eu-2\"")]),
                    ..Tags::default()
                },
                replay_lsn: Some(Lsn(0x300_0000)),
                xlog_location: Some(Lsn(0x300_0000)),
                replication_state: Some("in archive recovery".to_owned()),
                timeline: Some(Timeline(2)),
                pending_restart: true,
                lease: 9,
                ..Member::default()
            },
            Member {
                name: name("node2"),
                conn_url: Some("postgres://10.0.0.2:5432/postgres".to_owned()),
                api_url: Some("http://10.0.0.2:8008/patroni".to_owned()),
                state: "running".to_owned(),
                role: "replica".to_owned(),
                receive_lsn: Some(Lsn(OPTIME + 0x100)),
                replay_lsn: Some(Lsn(OPTIME - 0x100)),
                xlog_location: Some(Lsn(OPTIME + 0x100)),
                replication_state: Some("streaming".to_owned()),
                timeline: Some(Timeline(2)),
                lease: 8,
                ..Member::default()
            },
        ],
        failover: None,
        sync: SyncKey::Absent,
        history: vec![
            HistoryLine {
                timeline: Timeline(1),
                lsn: Lsn(0x300_0060),
                reason: "no recovery target specified".to_owned(),
                timestamp: Some("2024-08-28T19:40:00.123456+00:00".to_owned()),
                new_leader: Some("node1".to_owned()),
            },
        ],
        status: Some(LeaderStatus { optime: Lsn(OPTIME), ..LeaderStatus::default() }),
        warnings: Vec::new(),
        failsafe: None,
    }
}

fn base(node: &str) -> Snapshot {
    let mut s = Snapshot::initial(
        "demo",
        name(node),
        format!("http://10.0.0.{}:8008/patroni", &node[4..]),
        format!("postgres://10.0.0.{}:5432/postgres", &node[4..]),
    );
    s.system_id = Some("7268616322854375442".to_owned());
    s.cluster = Some(view());
    s.dcs_last_seen = Some(1_724_873_990);
    s.last_cycle = Mono(9_000);
    s.last_reason = "no action: I am the leader with the lock".to_owned();
    s
}

fn primary() -> Snapshot {
    let mut s = base("node1");
    s.state = crate::PgRunState::Running;
    s.role = crate::MemberRole::Primary;
    s.pg = Some(PgSql {
        server_version: 150_008,
        postmaster_start_time: "2024-08-28 19:39:26.352526+00:00".to_owned(),
        in_recovery: false,
        timeline: Timeline(2),
        flush_lsn: Some(Lsn(OPTIME)),
        replication: vec![
            ReplicationRow {
                pid: 101,
                usename: "replicator".to_owned(),
                application_name: "node2".to_owned(),
                client_addr: Some("10.0.0.2".to_owned()),
                state: "streaming".to_owned(),
                sync_state: "async".to_owned(),
                sync_priority: 0,
                ..ReplicationRow::default()
            },
            ReplicationRow {
                pid: 102,
                usename: "replicator".to_owned(),
                application_name: "node3".to_owned(),
                client_addr: None,
                state: "catchup".to_owned(),
                sync_state: "async".to_owned(),
                sync_priority: 0,
                ..ReplicationRow::default()
            },
        ],
        ..PgSql::default()
    });
    s.holds_leader_key = true;
    s.fence_deadline = Some(Mono(FENCE));
    s.tags = Tags {
        clonefrom: true,
        ..Tags::default()
    };
    s
}

fn replica() -> Snapshot {
    let mut s = base("node2");
    s.state = crate::PgRunState::Running;
    s.role = crate::MemberRole::Replica;
    s.pg = Some(PgSql {
        server_version: 150_008,
        postmaster_start_time: "2024-08-28 19:41:02.5+00".to_owned(),
        in_recovery: true,
        timeline: Timeline(2),
        received_lsn: Some(Lsn(OPTIME + 0x100)),
        replayed_lsn: Some(Lsn(OPTIME - 0x100)),
        replayed_timestamp: Some("2024-08-28 19:45:00.5+00".to_owned()),
        streaming: true,
        receiver_latest_end_lsn: Some(Lsn(OPTIME + 0x100)),
        ..PgSql::default()
    });
    s.tags = Tags {
        custom: custom_tags(&[("zone", "\"eu-1\""), ("rack", "3")]),
        ..Tags::default()
    };
    s
}

/// The leader of a standby cluster: the key, PostgreSQL in recovery from the remote primary.
fn standby_leader() -> Snapshot {
    let mut s = replica();
    s.name = MemberName::new("node1").expect("name");
    s.role = crate::MemberRole::StandbyLeader;
    s.holds_leader_key = true;
    s.fence_deadline = Some(Mono(FENCE));
    s
}

/// A replica 32 MiB behind the leader's optime.
fn lagging() -> Snapshot {
    let mut s = replica();
    if let Some(pg) = &mut s.pg {
        pg.received_lsn = Some(Lsn(OPTIME - (32 << 20)));
        pg.replayed_lsn = Some(Lsn(OPTIME - (32 << 20)));
        pg.receiver_latest_end_lsn = Some(Lsn(OPTIME - (32 << 20)));
    }
    s
}

fn stopped() -> Snapshot {
    let mut s = base("node3");
    s.state = crate::PgRunState::Stopped;
    s.role = crate::MemberRole::Replica;
    s
}

fn noloadbalance() -> Snapshot {
    let mut s = replica();
    s.tags.noloadbalance = true;
    s
}

/// node2 listed in `/sync` with `synchronous_mode: true` (or `quorum`).
fn sync_replica(mode: &str) -> Snapshot {
    let mut s = replica();
    if let Some(c) = &mut s.cluster {
        c.config = Some(Versioned {
            value: format!(r#"{{"synchronous_mode":{mode}}}"#),
            mod_revision: 4,
        });
        c.sync = SyncKey::Present(Versioned {
            value: SyncState {
                leader: Some(name("node1")),
                sync_standby: vec![name("NODE2")],
                quorum: 1,
            },
            mod_revision: 5,
        });
    }
    s
}

struct Harness {
    state: ApiState,
    clock: Arc<FakeClock>,
    publish: watch::Sender<Arc<Snapshot>>,
}

fn harness(snapshot: Snapshot) -> Harness {
    let clock = Arc::new(FakeClock(AtomicU64::new(NOW)));
    let (publish, snapshot_rx) = watch::channel(Arc::new(snapshot));
    let state = ApiState {
        snapshot: snapshot_rx,
        clock: clock.clone(),
        auth: None,
        commands: None,
        vip: None,
        audit: Default::default(),
        failsafe: Default::default(),
        live_sql: None,
    };
    Harness {
        state,
        clock,
        publish,
    }
}

struct Reply {
    code: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn content_type(&self) -> &str {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
    }
}

impl Harness {
    async fn call(&self, method: Method, uri: &str) -> Reply {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .unwrap();
        let response = router(self.state.clone()).oneshot(request).await.unwrap();
        let code = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Reply {
            code,
            headers,
            body: String::from_utf8(bytes.to_vec()).unwrap(),
        }
    }

    async fn get(&self, uri: &str) -> Reply {
        self.call(Method::GET, uri).await
    }

    async fn code(&self, uri: &str) -> u16 {
        self.get(uri).await.code.as_u16()
    }
}

/// Re-indents compact JSON without reordering keys (a `serde_json::Value` would sort them).
fn pretty(json: &str) -> String {
    let mut out = String::new();
    let mut indent = 0usize;
    let (mut in_string, mut escaped) = (false, false);
    let mut chars = json.chars().peekable();
    let newline = |out: &mut String, indent: usize| {
        out.push('\n');
        out.push_str(&"  ".repeat(indent));
    };
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                if matches!(chars.peek(), Some('}' | ']')) {
                    out.extend(chars.next());
                } else {
                    indent += 1;
                    newline(&mut out, indent);
                }
            }
            '}' | ']' => {
                indent = indent.saturating_sub(1);
                newline(&mut out, indent);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, indent);
            }
            ':' => out.push_str(": "),
            _ => out.push(c),
        }
    }
    out
}

async fn check_json(h: &Harness, uri: &str, expect: Expect) {
    let reply = h.get(uri).await;
    assert_eq!(reply.content_type(), "application/json", "{uri}");
    expect.assert_eq(&format!("{}\n{}", reply.code.as_u16(), pretty(&reply.body)));
}

// ---------------------------------------------------------------------------------------------
// Health checks.

const HEALTH_PATHS: &[&str] = &[
    "/",
    "/primary",
    "/master",
    "/read-write",
    "/leader",
    "/standby-leader",
    "/standby_leader",
    "/replica",
    "/replica?lag=16MB",
    "/replica?lag=64MB",
    "/replica?lag=not-a-size",
    "/replica?replication_state=streaming",
    "/replica?replication_state=in+archive+recovery",
    "/read-only",
    "/health",
    "/sync",
    "/synchronous",
    "/async",
    "/asynchronous",
    "/async?lag=1kB",
    "/quorum",
    "/read-only-sync",
    "/read-only-quorum",
    "/foo",
    "/patroni_primary",
];

#[tokio::test]
async fn health_codes_by_node_state() {
    let columns: [(&str, Snapshot); 8] = [
        ("primary", primary()),
        ("sleader", standby_leader()),
        ("replica", replica()),
        ("stopped", stopped()),
        ("lagging", lagging()),
        ("noLB", noloadbalance()),
        ("sync", sync_replica("true")),
        ("quorum", sync_replica("\"quorum\"")),
    ];
    let mut harnesses = Vec::new();
    for (_, snapshot) in &columns {
        harnesses.push(harness(snapshot.clone()));
    }
    let mut table = format!("{:<48}", "");
    for (label, _) in &columns {
        table.push_str(&format!("{label:>8}"));
    }
    table.push('\n');
    for path in HEALTH_PATHS {
        table.push_str(&format!("{path:<48}"));
        for h in &harnesses {
            table.push_str(&format!("{:>8}", h.code(path).await));
        }
        table.push('\n');
    }
    expect![[r#"
                                                         primary sleader replica stopped lagging    noLB    sync  quorum
        /                                                    200     503     503     503     503     503     503     503
        /primary                                             200     503     503     503     503     503     503     503
        /master                                              200     503     503     503     503     503     503     503
        /read-write                                          200     503     503     503     503     503     503     503
        /leader                                              200     200     503     503     503     503     503     503
        /standby-leader                                      503     200     503     503     503     503     503     503
        /standby_leader                                      503     200     503     503     503     503     503     503
        /replica                                             503     503     200     503     200     503     200     200
        /replica?lag=16MB                                    503     503     200     503     503     503     200     200
        /replica?lag=64MB                                    503     503     200     503     200     503     200     200
        /replica?lag=not-a-size                              503     503     200     503     200     503     200     200
        /replica?replication_state=streaming                 503     503     200     503     200     503     200     200
        /replica?replication_state=in+archive+recovery       503     503     503     503     503     503     503     503
        /read-only                                           200     200     200     503     200     503     200     200
        /health                                              200     200     200     503     200     200     200     200
        /sync                                                503     503     503     503     503     503     200     503
        /synchronous                                         503     503     503     503     503     503     200     503
        /async                                               503     503     200     503     200     503     503     503
        /asynchronous                                        503     503     200     503     200     503     503     503
        /async?lag=1kB                                       503     503     200     503     503     503     503     503
        /quorum                                              503     503     503     503     503     503     503     200
        /read-only-sync                                      200     200     503     503     503     503     200     503
        /read-only-quorum                                    200     200     503     503     503     503     503     200
        /foo                                                 503     503     503     503     503     503     503     503
        /patroni_primary                                     200     503     503     503     503     503     503     503
    "#]]
    .assert_eq(&table);
}

#[tokio::test]
async fn health_answers_carry_the_status_json() {
    let h = harness(replica());
    for path in ["/replica", "/primary", "/foo", "/health"] {
        let reply = h.get(path).await;
        assert_eq!(reply.content_type(), "application/json", "{path}");
        assert!(
            reply.body.starts_with(r#"{"state":"running","#),
            "{path}: {}",
            reply.body
        );
    }
    assert_eq!(h.code("/foo").await, 503);
}

#[tokio::test]
async fn sync_paths_need_a_dcs_view() {
    let mut s = sync_replica("true");
    let h = harness(s.clone());
    assert_eq!(h.code("/sync").await, 200);
    // Without a view Patroni cannot tell sync from async: every exact sync path is 503, and
    // the substring paths keep working.
    s.cluster = None;
    let h = harness(s);
    for path in [
        "/sync",
        "/async",
        "/quorum",
        "/read-only-sync",
        "/read-only-quorum",
    ] {
        assert_eq!(h.code(path).await, 503, "{path}");
    }
    assert_eq!(h.code("/replica").await, 200);
    assert_eq!(h.code("/read-only").await, 200);
}

#[tokio::test]
async fn tag_filters() {
    let h = harness(replica());
    let cases = [
        ("/replica?tag_zone=eu-1", 200),
        ("/replica?tag_zone=eu-2", 503),
        ("/replica?tag_rack=3", 200),
        ("/replica?tag_zone=eu-1&tag_rack=4", 503),
        ("/replica?tag_datacenter=x", 503),
        ("/replica?tag_zone=", 200),
        ("/read-only?tag_zone=eu-1", 200),
        ("/health?tag_zone=eu-9", 503),
        ("/async?tag_zone=eu-1&lag=1MB", 200),
    ];
    for (uri, code) in cases {
        assert_eq!(h.code(uri).await, code, "{uri}");
    }

    let mut s = replica();
    s.tags = Tags {
        nosync: Some(true),
        sync_priority: Some(0),
        ..Tags::default()
    };
    let h = harness(s);
    assert_eq!(h.code("/replica?tag_nosync=true").await, 200);
    assert_eq!(h.code("/replica?tag_nosync=True").await, 503);
    assert_eq!(h.code("/replica?tag_sync_priority=0").await, 200);

    // Tags are ignored on the leader paths.
    let h = harness(primary());
    assert_eq!(h.code("/primary?tag_zone=nowhere").await, 200);
    assert_eq!(h.code("/leader?tag_zone=nowhere").await, 200);
    assert_eq!(h.code("/read-only?tag_zone=nowhere").await, 503);
}

#[tokio::test]
async fn head_and_options_answer_the_get_code_without_a_body() {
    for snapshot in [primary(), replica(), stopped(), lagging()] {
        let h = harness(snapshot);
        for uri in [
            "/",
            "/primary",
            "/replica",
            "/replica?lag=1MB",
            "/read-only",
            "/foo",
            "/patroni",
            "/cluster",
            "/config",
        ] {
            let get = h.get(uri).await;
            for method in [Method::HEAD, Method::OPTIONS] {
                let reply = h.call(method.clone(), uri).await;
                assert_eq!(reply.code, get.code, "{method} {uri}");
                assert_eq!(reply.body, "", "{method} {uri}");
            }
        }
    }
}

#[tokio::test]
async fn primary_and_leader_fail_closed_when_the_fence_deadline_passes() {
    let h = harness(primary());
    let paths = [
        "/",
        "/primary",
        "/master",
        "/read-write",
        "/leader",
        "/read-only",
    ];
    for path in paths {
        assert_eq!(h.code(path).await, 200, "{path} before the deadline");
    }
    assert_eq!(h.call(Method::OPTIONS, "/").await.code, StatusCode::OK);

    h.clock.set(FENCE - 1);
    assert_eq!(h.code("/primary").await, 200);

    // The agent is frozen: the snapshot still says we hold the key, but the clock moved on.
    h.clock.set(FENCE);
    assert!(h.state.snapshot.borrow().holds_leader_key);
    for path in paths {
        assert_eq!(h.code(path).await, 503, "{path} at the deadline");
    }
    assert_eq!(
        h.call(Method::OPTIONS, "/").await.code,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        h.call(Method::HEAD, "/leader").await.code,
        StatusCode::SERVICE_UNAVAILABLE
    );

    // No deadline at all: never a leader.
    let mut s = primary();
    s.fence_deadline = None;
    let h = harness(s);
    assert_eq!(h.code("/primary").await, 503);
    assert_eq!(h.code("/leader").await, 503);
}

#[tokio::test]
async fn primary_needs_postgres_running_as_primary() {
    // Holding the key while PostgreSQL is still in recovery (promotion under way).
    let mut s = primary();
    if let Some(pg) = &mut s.pg {
        pg.in_recovery = true;
    }
    let h = harness(s);
    assert_eq!(h.code("/primary").await, 503);
    assert_eq!(h.code("/leader").await, 200);

    // Holding the key while PostgreSQL is down (failed start).
    let mut s = primary();
    s.pg = None;
    s.state = crate::PgRunState::Stopping;
    let h = harness(s);
    assert_eq!(h.code("/primary").await, 503);
    assert_eq!(h.code("/leader").await, 200);
}

#[tokio::test]
async fn a_published_snapshot_is_visible_to_the_next_request() {
    let h = harness(primary());
    assert_eq!(h.code("/primary").await, 200);
    let mut demoted = replica();
    demoted.name = name("node1");
    h.publish.send_replace(Arc::new(demoted));
    assert_eq!(h.code("/primary").await, 503);
    assert_eq!(h.code("/replica").await, 200);
}

/// The status document is rendered once per snapshot (and VIP state) and reused by one
/// router for later requests: a new snapshot or VIP state must show at the next request.
#[tokio::test]
async fn the_rendered_status_follows_every_new_snapshot_and_vip_state() {
    let mut h = harness(primary());
    let (vip_tx, vip_rx) = watch::channel(crate::VipStatus::default());
    h.state.vip = Some(vip_rx);
    let app = router(h.state.clone());
    let get = |uri: &'static str| {
        let app = app.clone();
        async move {
            let request = Request::builder().uri(uri).body(Body::empty()).unwrap();
            let response = app.oneshot(request).await.unwrap();
            let code = response.status().as_u16();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            let doc: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
            (code, doc)
        }
    };
    let (code, doc) = get("/primary").await;
    assert_eq!((code, doc["role"].as_str()), (200, Some("primary")));
    assert_eq!(get("/patroni").await.1, doc, "one document for both");
    // Reused: the same answer again.
    assert_eq!(get("/primary").await, (200, doc.clone()));

    let mut demoted = replica();
    demoted.name = name("node1");
    h.publish.send_replace(Arc::new(demoted));
    let (code, doc) = get("/primary").await;
    assert_eq!((code, doc["role"].as_str()), (503, Some("replica")));
    assert_eq!(get("/patroni").await.1["role"], "replica");

    vip_tx.send_replace(crate::VipStatus {
        address: "10.0.0.100/24".to_owned(),
        interface: "eth0".to_owned(),
        present: true,
        desired: false,
        error: None,
    });
    assert_eq!(get("/patroni").await.1["vip"]["present"], true);
    assert_eq!(get("/replica").await.1["vip"]["address"], "10.0.0.100/24");
}

// ---------------------------------------------------------------------------------------------
// Liveness and readiness.

#[tokio::test]
async fn liveness_thresholds() {
    // last_cycle = 9 s, ttl = 30 s: a running primary is live until 39 s, anything else until
    // 69 s, a paused node always.
    let mut rows = String::new();
    let mut paused = replica();
    paused.pause = true;
    let cases = [
        ("primary", primary()),
        ("replica", replica()),
        ("stopped", stopped()),
        ("paused", paused),
    ];
    for (label, snapshot) in cases {
        let h = harness(snapshot);
        rows.push_str(&format!("{label:<8}"));
        for at in [9_000, 38_999, 39_000, 68_999, 69_000, 1_000_000] {
            h.clock.set(at);
            let reply = h.get("/liveness").await;
            assert_eq!(reply.body, "");
            rows.push_str(&format!(" {at}:{}", reply.code.as_u16()));
        }
        rows.push('\n');
    }
    expect![[r#"
        primary  9000:200 38999:200 39000:503 68999:503 69000:503 1000000:503
        replica  9000:200 38999:200 39000:200 68999:200 69000:503 1000000:503
        stopped  9000:200 38999:200 39000:200 68999:200 69000:503 1000000:503
        paused   9000:200 38999:200 39000:200 68999:200 69000:200 1000000:200
    "#]]
    .assert_eq(&rows);
}

#[tokio::test]
async fn readiness() {
    let cases: Vec<(&str, Snapshot, &str, u16)> = vec![
        ("leader", primary(), "/readiness", 200),
        ("streaming replica", replica(), "/readiness", 200),
        (
            "lagging replica, default max 1 MiB",
            lagging(),
            "/readiness",
            503,
        ),
        (
            "lagging replica, ?lag=64MB",
            lagging(),
            "/readiness?lag=64MB",
            200,
        ),
        (
            "lagging replica, ?lag=16MB",
            lagging(),
            "/readiness?lag=16MB",
            503,
        ),
        (
            "lagging replica, unparsable lag",
            lagging(),
            "/readiness?lag=lots",
            503,
        ),
        ("stopped", stopped(), "/readiness", 503),
        (
            "not streaming",
            {
                let mut s = replica();
                if let Some(pg) = &mut s.pg {
                    pg.streaming = false;
                }
                s.restore_command = true;
                s
            },
            "/readiness",
            503,
        ),
        (
            "no DCS view, receiver position known",
            {
                let mut s = replica();
                s.cluster = None;
                s
            },
            "/readiness",
            200,
        ),
        (
            "no DCS view, no receiver position",
            {
                let mut s = replica();
                s.cluster = None;
                if let Some(pg) = &mut s.pg {
                    pg.receiver_latest_end_lsn = None;
                }
                s
            },
            "/readiness",
            503,
        ),
        (
            "received but not replayed, mode=write",
            {
                let mut s = lagging();
                if let Some(pg) = &mut s.pg {
                    pg.received_lsn = Some(Lsn(OPTIME));
                }
                s
            },
            "/readiness?mode=write",
            200,
        ),
        (
            "received but not replayed, mode=apply",
            {
                let mut s = lagging();
                if let Some(pg) = &mut s.pg {
                    pg.received_lsn = Some(Lsn(OPTIME));
                }
                s
            },
            "/readiness?mode=apply",
            503,
        ),
    ];
    for (label, snapshot, uri, code) in cases {
        let h = harness(snapshot);
        let reply = h.get(uri).await;
        assert_eq!(
            (reply.code.as_u16(), reply.body.as_str()),
            (code, ""),
            "{label}"
        );
    }
    // The leader past its fencing deadline is judged like a replica (and is not one).
    let h = harness(primary());
    h.clock.set(FENCE);
    assert_eq!(h.code("/readiness").await, 503);
}

// ---------------------------------------------------------------------------------------------
// Status JSON.

#[tokio::test]
async fn patroni_status_of_a_primary() {
    check_json(
        &harness(primary()),
        "/patroni",
        expect![[r#"
            200
            {
              "state": "running",
              "postmaster_start_time": "2024-08-28 19:39:26.352526+00:00",
              "role": "primary",
              "server_version": 150008,
              "xlog": {
                "location": 83886080
              },
              "timeline": 2,
              "replication": [
                {
                  "usename": "replicator",
                  "application_name": "node2",
                  "client_addr": "10.0.0.2",
                  "state": "streaming",
                  "sync_state": "async",
                  "sync_priority": 0
                },
                {
                  "usename": "replicator",
                  "application_name": "node3",
                  "client_addr": null,
                  "state": "catchup",
                  "sync_state": "async",
                  "sync_priority": 0
                }
              ],
              "dcs_last_seen": 1724873990,
              "tags": {
                "clonefrom": true
              },
              "database_system_identifier": "7268616322854375442",
              "patroni": {
                "version": "0.1.0",
                "scope": "demo",
                "name": "node1"
              },
              "reason": "no action: I am the leader with the lock"
            }"#]],
    )
    .await;
}

#[tokio::test]
async fn patroni_status_of_a_replica() {
    let mut s = sync_replica("true");
    s.pause = true;
    s.watchdog_failed = true;
    if let Some(pg) = &mut s.pg {
        pg.pending_restart = true;
    }
    check_json(
        &harness(s),
        "/patroni",
        expect![[r#"
            200
            {
              "state": "running",
              "postmaster_start_time": "2024-08-28 19:41:02.5+00",
              "role": "replica",
              "server_version": 150008,
              "xlog": {
                "received_location": 83886336,
                "replayed_location": 83885824,
                "replayed_timestamp": "2024-08-28 19:45:00.5+00",
                "paused": false
              },
              "sync_standby": true,
              "timeline": 2,
              "replication_state": "streaming",
              "pause": true,
              "dcs_last_seen": 1724873990,
              "tags": {
                "rack": 3,
                "zone": "eu-1"
              },
              "database_system_identifier": "7268616322854375442",
              "pending_restart": true,
              "patroni": {
                "version": "0.1.0",
                "scope": "demo",
                "name": "node2"
              },
              "watchdog_failed": true,
              "reason": "no action: I am the leader with the lock"
            }"#]],
    )
    .await;
}

#[tokio::test]
async fn patroni_status_without_postgres() {
    let mut s = stopped();
    s.cluster = None;
    s.dcs_last_seen = None;
    check_json(
        &harness(s),
        "/patroni",
        expect![[r#"
            200
            {
              "state": "stopped",
              "role": "replica",
              "cluster_unlocked": true,
              "dcs_last_seen": 0,
              "database_system_identifier": "7268616322854375442",
              "patroni": {
                "version": "0.1.0",
                "scope": "demo",
                "name": "node3"
              },
              "reason": "no action: I am the leader with the lock"
            }"#]],
    )
    .await;

    // "running" without an SQL answer is "unknown", as in Patroni.
    let mut s = replica();
    s.pg = None;
    let h = harness(s);
    let reply = h.get("/patroni").await;
    assert!(
        reply
            .body
            .starts_with(r#"{"state":"unknown","role":"replica","#),
        "{}",
        reply.body
    );
    assert_eq!(h.code("/health").await, 503);
}

#[tokio::test]
async fn archive_recovery_and_no_leader() {
    let mut s = replica();
    if let Some(pg) = &mut s.pg {
        pg.streaming = false;
    }
    if let Some(c) = &mut s.cluster {
        c.leader = None;
    }
    let h = harness(s.clone());
    let body = h.get("/patroni").await.body;
    assert!(!body.contains("replication_state"), "{body}");
    assert!(body.contains(r#""cluster_unlocked":true"#), "{body}");

    s.restore_command = true;
    let h = harness(s);
    let body = h.get("/patroni").await.body;
    assert!(
        body.contains(r#""replication_state":"in archive recovery""#),
        "{body}"
    );
    assert_eq!(
        h.code("/replica?replication_state=in%20archive%20recovery")
            .await,
        200
    );
    assert_eq!(h.code("/replica?replication_state=streaming").await, 503);
}

#[test]
fn peer_status_round_trips_through_status_json() {
    let now = Mono(NOW);
    let p = primary();
    assert_eq!(
        peer_status_from_json(name("node1"), &status_json(&p, now)),
        PeerStatus {
            name: name("node1"),
            reachable: true,
            is_primary: true,
            wal_position: Some(Lsn(OPTIME)),
            timeline: Some(Timeline(2)),
            tags: p.tags.clone(),
            watchdog_failed: false,
        }
    );

    let mut r = replica();
    r.watchdog_failed = true;
    r.tags = Tags {
        nofailover: Some(false),
        failover_priority: Some(0),
        noloadbalance: true,
        clonefrom: true,
        nosync: Some(true),
        sync_priority: Some(2),
        nostream: true,
        replicatefrom: Some("node1".to_owned()),
        custom: custom_tags(&[("zone", "\"eu-1\""), ("rack", "3"), ("ssd", "true")]),
    };
    assert_eq!(
        peer_status_from_json(name("node2"), &status_json(&r, now)),
        PeerStatus {
            name: name("node2"),
            reachable: true,
            is_primary: false,
            wal_position: Some(Lsn(OPTIME + 0x100)),
            timeline: Some(Timeline(2)),
            tags: r.tags.clone(),
            watchdog_failed: true,
        }
    );

    // PostgreSQL down: no `xlog`, so the member does not take part in the race.
    let peer = peer_status_from_json(name("node3"), &status_json(&stopped(), now));
    assert!(!peer.reachable);
    assert_eq!(peer.wal_position, None);
}

#[test]
fn peer_status_from_foreign_json() {
    let parse = |text: &str| {
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        let p = peer_status_from_json(name("x"), &v);
        format!(
            "reachable={} primary={} wal={:?} tl={:?} nofailover={} watchdog_failed={}",
            p.reachable,
            p.is_primary,
            p.wal_position,
            p.timeline.map(|t| t.0),
            p.tags.is_nofailover(),
            p.watchdog_failed
        )
    };
    let cases = [
        r#"{"role":"master","xlog":{"location":100},"timeline":3}"#,
        r#"{"role":"replica","xlog":{"location":100}}"#,
        r#"{"role":"replica","xlog":{"received_location":300,"replayed_location":200,"replayed_timestamp":null,"paused":false}}"#,
        r#"{"role":"replica","xlog":{"received_location":null,"replayed_location":200},"tags":{"nofailover":true},"watchdog_failed":true}"#,
        r#"{"role":"replica","wal":{"replayed_location":7},"xlog":{"replayed_location":9}}"#,
        r#"{"role":"replica","wal":{},"xlog":{"replayed_location":9}}"#,
        r#"{"role":"replica","tags":{"failover_priority":"0"},"xlog":{}}"#,
        r#"{"state":"stopped","role":"replica"}"#,
        r#"{"xlog":5}"#,
        r#"[1,2]"#,
        r#"null"#,
    ];
    let out: Vec<String> = cases.iter().map(|c| parse(c)).collect();
    expect![[r#"
        reachable=true primary=true wal=Some(0/64) tl=Some(3) nofailover=false watchdog_failed=false
        reachable=true primary=true wal=Some(0/64) tl=None nofailover=false watchdog_failed=false
        reachable=true primary=false wal=Some(0/12C) tl=None nofailover=false watchdog_failed=false
        reachable=true primary=false wal=Some(0/C8) tl=None nofailover=true watchdog_failed=true
        reachable=true primary=false wal=Some(0/7) tl=None nofailover=false watchdog_failed=false
        reachable=true primary=false wal=Some(0/9) tl=None nofailover=false watchdog_failed=false
        reachable=true primary=false wal=Some(0/0) tl=None nofailover=true watchdog_failed=false
        reachable=false primary=false wal=None tl=None nofailover=false watchdog_failed=false
        reachable=false primary=false wal=None tl=None nofailover=false watchdog_failed=false
        reachable=false primary=false wal=None tl=None nofailover=false watchdog_failed=false
        reachable=false primary=false wal=None tl=None nofailover=false watchdog_failed=false"#]]
    .assert_eq(&out.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// /cluster, /history, /config.

#[tokio::test]
async fn cluster_json_of_three_members() {
    let mut s = replica();
    s.pause = true;
    check_json(
        &harness(s),
        "/cluster",
        expect![[r#"
            200
            {
              "members": [
                {
                  "name": "node1",
                  "role": "leader",
                  "state": "running",
                  "api_url": "http://10.0.0.1:8008/patroni",
                  "host": "10.0.0.1",
                  "port": 5432,
                  "timeline": 2,
                  "tags": {
                    "clonefrom": true
                  }
                },
                {
                  "name": "node2",
                  "role": "replica",
                  "state": "streaming",
                  "api_url": "http://10.0.0.2:8008/patroni",
                  "host": "10.0.0.2",
                  "port": 5432,
                  "timeline": 2,
                  "receive_lsn": "0/5000100",
                  "receive_lag": 0,
                  "replay_lsn": "0/4FFFF00",
                  "replay_lag": 256,
                  "lsn": "0/5000100",
                  "lag": 0
                },
                {
                  "name": "node3",
                  "role": "replica",
                  "state": "in archive recovery",
                  "api_url": "http://10.0.0.3:8008/patroni",
                  "host": "10.0.0.3",
                  "port": 5433,
                  "timeline": 2,
                  "pending_restart": true,
                  "tags": {
                    "nofailover": true,
                    "zone": "eu-2"
                  },
                  "receive_lsn": "unknown",
                  "receive_lag": "unknown",
                  "replay_lsn": "0/3000000",
                  "replay_lag": 33554432,
                  "lsn": "0/3000000",
                  "lag": 33554432
                }
              ],
              "scope": "demo",
              "pause": true
            }"#]],
    )
    .await;
}

#[tokio::test]
async fn cluster_json_roles_in_sync_modes_and_without_a_view() {
    let roles = |body: &str| {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        v["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                format!(
                    "{}={}",
                    m["name"].as_str().unwrap(),
                    m["role"].as_str().unwrap()
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let h = harness(sync_replica("true"));
    assert_eq!(
        roles(&h.get("/cluster").await.body),
        "node1=leader node2=sync_standby node3=replica"
    );
    let h = harness(sync_replica("\"quorum\""));
    assert_eq!(
        roles(&h.get("/cluster").await.body),
        "node1=leader node2=quorum_standby node3=replica"
    );
    let h = harness(sync_replica("false"));
    assert_eq!(
        roles(&h.get("/cluster").await.body),
        "node1=leader node2=replica node3=replica"
    );

    let mut s = replica();
    s.cluster = None;
    check_json(
        &harness(s),
        "/cluster",
        expect![[r#"
            503
            {
              "members": [],
              "scope": "demo"
            }"#]],
    )
    .await;
}

#[tokio::test]
async fn history_json() {
    let mut s = replica();
    if let Some(c) = &mut s.cluster {
        c.history.insert(
            0,
            HistoryLine {
                timeline: Timeline(0),
                lsn: Lsn(0x100_0000),
                reason: "an old three-field line".to_owned(),
                timestamp: None,
                new_leader: None,
            },
        );
    }
    check_json(
        &harness(s),
        "/history",
        expect![[r#"
            200
            [
              [
                0,
                16777216,
                "an old three-field line"
              ],
              [
                1,
                50331744,
                "no recovery target specified",
                "2024-08-28T19:40:00.123456+00:00",
                "node1"
              ]
            ]"#]],
    )
    .await;

    let mut s = replica();
    if let Some(c) = &mut s.cluster {
        c.history.clear();
    }
    check_json(
        &harness(s),
        "/history",
        expect![[r#"
        200
        []"#]],
    )
    .await;
    let mut s = replica();
    s.cluster = None;
    check_json(
        &harness(s),
        "/history",
        expect![[r#"
        503
        []"#]],
    )
    .await;
}

#[tokio::test]
async fn config_json() {
    let h = harness(replica());
    let reply = h.get("/config").await;
    assert_eq!(
        (reply.code, reply.content_type()),
        (StatusCode::OK, "application/json")
    );
    // The stored text, key order included.
    assert_eq!(
        reply.body,
        r#"{"ttl":30,"loop_wait":10,"postgresql":{"use_pg_rewind":true},"maximum_lag_on_failover":1048576}"#
    );

    for value in [None, Some("not json"), Some("[1,2]"), Some("")] {
        let mut s = replica();
        if let Some(c) = &mut s.cluster {
            c.config = value.map(|v| Versioned {
                value: v.to_owned(),
                mod_revision: 3,
            });
        }
        let reply = harness(s).get("/config").await;
        assert_eq!(reply.code, StatusCode::BAD_GATEWAY, "{value:?}");
        assert_eq!(reply.content_type(), "text/html;charset=utf-8");
        assert!(
            reply.body.contains("<p>Error code: 502</p>"),
            "{}",
            reply.body
        );
    }
    let mut s = replica();
    s.cluster = None;
    assert_eq!(harness(s).code("/config").await, 502);
    // Failsafe mode off: Patroni's answer while it is disabled (more in `mod failsafe`).
    assert_eq!(harness(replica()).code("/failsafe").await, 502);
}

// ---------------------------------------------------------------------------------------------
// /metrics.

#[tokio::test]
async fn metrics_of_a_primary() {
    let h = harness(primary());
    let reply = h.get("/metrics").await;
    assert_eq!(reply.code, StatusCode::OK);
    assert_eq!(
        reply.content_type(),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    expect![[r##"
        # HELP patroni_version Patroni semver without periods.
        # TYPE patroni_version gauge
        patroni_version{scope="demo",name="node1"} 000100
        # HELP patroni_postgres_running Value is 1 if Postgres is running, 0 otherwise.
        # TYPE patroni_postgres_running gauge
        patroni_postgres_running{scope="demo",name="node1"} 1
        # HELP patroni_postmaster_start_time Epoch seconds since Postgres started.
        # TYPE patroni_postmaster_start_time gauge
        patroni_postmaster_start_time{scope="demo",name="node1"} 1724873966.352526
        # HELP patroni_primary Value is 1 if this node is the leader, 0 otherwise.
        # TYPE patroni_primary gauge
        patroni_primary{scope="demo",name="node1"} 1
        # HELP patroni_xlog_location Current location of the Postgres transaction log, 0 if this node is not the leader.
        # TYPE patroni_xlog_location counter
        patroni_xlog_location{scope="demo",name="node1"} 83886080
        # HELP patroni_standby_leader Value is 1 if this node is the standby_leader, 0 otherwise.
        # TYPE patroni_standby_leader gauge
        patroni_standby_leader{scope="demo",name="node1"} 0
        # HELP patroni_replica Value is 1 if this node is a replica, 0 otherwise.
        # TYPE patroni_replica gauge
        patroni_replica{scope="demo",name="node1"} 0
        # HELP patroni_sync_standby Value is 1 if this node is a sync standby, 0 otherwise.
        # TYPE patroni_sync_standby gauge
        patroni_sync_standby{scope="demo",name="node1"} 0
        # HELP patroni_quorum_standby Value is 1 if this node is a quorum standby, 0 otherwise.
        # TYPE patroni_quorum_standby gauge
        patroni_quorum_standby{scope="demo",name="node1"} 0
        # HELP patroni_xlog_received_location Current location of the received Postgres transaction log, 0 if this node is not a replica.
        # TYPE patroni_xlog_received_location counter
        patroni_xlog_received_location{scope="demo",name="node1"} 0
        # HELP patroni_xlog_replayed_location Current location of the replayed Postgres transaction log, 0 if this node is not a replica.
        # TYPE patroni_xlog_replayed_location counter
        patroni_xlog_replayed_location{scope="demo",name="node1"} 0
        # HELP patroni_xlog_replayed_timestamp Current timestamp of the replayed Postgres transaction log, 0 if null.
        # TYPE patroni_xlog_replayed_timestamp gauge
        patroni_xlog_replayed_timestamp{scope="demo",name="node1"} 0
        # HELP patroni_xlog_paused Value is 1 if the Postgres xlog is paused, 0 otherwise.
        # TYPE patroni_xlog_paused gauge
        patroni_xlog_paused{scope="demo",name="node1"} 0
        # HELP patroni_postgres_streaming Value is 1 if Postgres is streaming, 0 otherwise.
        # TYPE patroni_postgres_streaming gauge
        patroni_postgres_streaming{scope="demo",name="node1"} 0
        # HELP patroni_postgres_in_archive_recovery Value is 1 if Postgres is replicating from archive, 0 otherwise.
        # TYPE patroni_postgres_in_archive_recovery gauge
        patroni_postgres_in_archive_recovery{scope="demo",name="node1"} 0
        # HELP patroni_postgres_server_version Version of Postgres (if running), 0 otherwise.
        # TYPE patroni_postgres_server_version gauge
        patroni_postgres_server_version{scope="demo",name="node1"} 150008
        # HELP patroni_cluster_unlocked Value is 1 if the cluster is unlocked, 0 if locked.
        # TYPE patroni_cluster_unlocked gauge
        patroni_cluster_unlocked{scope="demo",name="node1"} 0
        # HELP patroni_failsafe_mode_is_active Value is 1 if failsafe mode is active, 0 if inactive.
        # TYPE patroni_failsafe_mode_is_active gauge
        patroni_failsafe_mode_is_active{scope="demo",name="node1"} 0
        # HELP patroni_failsafe_mode_enabled Value is 1 if failsafe mode is enabled in the configuration, 0 otherwise.
        # TYPE patroni_failsafe_mode_enabled gauge
        patroni_failsafe_mode_enabled{scope="demo",name="node1"} 0
        # HELP patroni_failsafe_member Value is 1 if this node is a member of the failsafe topology, 0 otherwise.
        # TYPE patroni_failsafe_member gauge
        patroni_failsafe_member{scope="demo",name="node1"} 0
        # HELP patroni_postgres_timeline Postgres timeline of this node (if running), 0 otherwise.
        # TYPE patroni_postgres_timeline counter
        patroni_postgres_timeline{scope="demo",name="node1"} 2
        # HELP patroni_dcs_last_seen Epoch timestamp when DCS was last contacted successfully by Patroni.
        # TYPE patroni_dcs_last_seen gauge
        patroni_dcs_last_seen{scope="demo",name="node1"} 1724873990
        # HELP patroni_pending_restart Value is 1 if the node needs a restart, 0 otherwise.
        # TYPE patroni_pending_restart gauge
        patroni_pending_restart{scope="demo",name="node1"} 0
        # HELP patroni_is_paused Value is 1 if auto failover is disabled, 0 otherwise.
        # TYPE patroni_is_paused gauge
        patroni_is_paused{scope="demo",name="node1"} 0
        # HELP patroni_postgres_state Numeric representation of Postgres state.
        # Values: 0=initdb, 1=initdb_failed, 2=custom_bootstrap, 3=custom_bootstrap_failed, 4=creating_replica, 5=running, 6=starting, 7=bootstrap_starting, 8=start_failed, 9=restarting, 10=restart_failed, 11=stopping, 12=stopped, 13=stop_failed, 14=crashed
        # TYPE patroni_postgres_state gauge
        patroni_postgres_state{scope="demo",name="node1"} 5
        # HELP patroni_failover_priority Failover priority of this node, 0 if it may not become the leader.
        # TYPE patroni_failover_priority gauge
        patroni_failover_priority{scope="demo",name="node1"} 1
        # HELP pgbaton_leader Value is 1 if this node holds the leader key and its fencing deadline is ahead, 0 otherwise.
        # TYPE pgbaton_leader gauge
        pgbaton_leader{scope="demo",name="node1"} 1
        # HELP pgbaton_fence_remaining_seconds Seconds until the leader's fencing deadline, 0 if not the leader or already past it.
        # TYPE pgbaton_fence_remaining_seconds gauge
        pgbaton_fence_remaining_seconds{scope="demo",name="node1"} 10.000
        # HELP pgbaton_last_cycle_age_seconds Seconds since the HA loop last finished a cycle.
        # TYPE pgbaton_last_cycle_age_seconds gauge
        pgbaton_last_cycle_age_seconds{scope="demo",name="node1"} 1.000
        # HELP pgbaton_watchdog_armed Value is 1 if the watchdog device is armed (this node leads with watchdog.mode automatic or required), 0 otherwise.
        # TYPE pgbaton_watchdog_armed gauge
        pgbaton_watchdog_armed{scope="demo",name="node1"} 0
        # HELP pgbaton_watchdog_failed Value is 1 if watchdog.mode is required and the watchdog cannot be armed (as /patroni's watchdog_failed), 0 otherwise.
        # TYPE pgbaton_watchdog_failed gauge
        pgbaton_watchdog_failed{scope="demo",name="node1"} 0
    "##]]
    .assert_eq(&reply.body);
}

#[tokio::test]
async fn metrics_of_replicas_and_stopped_nodes() {
    let pick = |body: &str, names: &[&str]| {
        body.lines()
            .filter(|l| {
                !l.starts_with('#') && names.iter().any(|n| l.starts_with(&format!("{n}{{")))
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let names = [
        "patroni_primary",
        "patroni_replica",
        "patroni_sync_standby",
        "patroni_xlog_received_location",
        "patroni_xlog_replayed_location",
        "patroni_xlog_replayed_timestamp",
        "patroni_postgres_streaming",
        "patroni_postgres_state",
        "patroni_failsafe_mode_enabled",
        "patroni_failover_priority",
        "pgbaton_leader",
    ];
    let mut s = sync_replica("true");
    s.tags.failover_priority = Some(3);
    if let Some(c) = &mut s.cluster {
        c.config = Some(Versioned {
            value: r#"{"synchronous_mode":"on","failsafe_mode":true}"#.to_owned(),
            mod_revision: 6,
        });
    }
    expect![[r#"
        patroni_primary{scope="demo",name="node2"} 0
        patroni_replica{scope="demo",name="node2"} 1
        patroni_sync_standby{scope="demo",name="node2"} 1
        patroni_xlog_received_location{scope="demo",name="node2"} 83886336
        patroni_xlog_replayed_location{scope="demo",name="node2"} 83885824
        patroni_xlog_replayed_timestamp{scope="demo",name="node2"} 1724874300.5
        patroni_postgres_streaming{scope="demo",name="node2"} 1
        patroni_failsafe_mode_enabled{scope="demo",name="node2"} 0
        patroni_postgres_state{scope="demo",name="node2"} 5
        patroni_failover_priority{scope="demo",name="node2"} 3
        pgbaton_leader{scope="demo",name="node2"} 0"#]]
    .assert_eq(&pick(&harness(s).get("/metrics").await.body, &names));

    // Stopped: no server version, so no streaming metrics (as in Patroni).
    let mut s = stopped();
    s.tags.nofailover = Some(true);
    s.state = crate::PgRunState::CreatingReplica;
    expect![[r#"
        patroni_primary{scope="demo",name="node3"} 0
        patroni_replica{scope="demo",name="node3"} 1
        patroni_sync_standby{scope="demo",name="node3"} 0
        patroni_xlog_received_location{scope="demo",name="node3"} 0
        patroni_xlog_replayed_location{scope="demo",name="node3"} 0
        patroni_xlog_replayed_timestamp{scope="demo",name="node3"} 0
        patroni_failsafe_mode_enabled{scope="demo",name="node3"} 0
        patroni_postgres_state{scope="demo",name="node3"} 4
        patroni_failover_priority{scope="demo",name="node3"} 0
        pgbaton_leader{scope="demo",name="node3"} 0"#]]
    .assert_eq(&pick(&harness(s).get("/metrics").await.body, &names));

    let mut s = stopped();
    // A state Patroni does not have (pgbaton's `running pg_rewind`): -1, as Patroni's unknown.
    s.state = crate::PgRunState::RunningPgRewind;
    s.scope = "we\"ird".to_owned();
    let body = harness(s).get("/metrics").await.body;
    assert!(
        body.contains("patroni_postgres_state{scope=\"we\\\"ird\",name=\"node3\"} -1\n"),
        "{body}"
    );
}

// ---------------------------------------------------------------------------------------------
// Methods, odd requests, the server.

#[tokio::test]
async fn methods_without_a_handler_are_not_implemented() {
    let h = harness(primary());
    for (method, uri) in [
        (Method::PUT, "/restart"),
        (Method::POST, "/"),
        (Method::PUT, "/switchover"),
        (Method::PATCH, "/restart"),
        (Method::TRACE, "/"),
    ] {
        let reply = h.call(method.clone(), uri).await;
        assert_eq!(reply.code, StatusCode::NOT_IMPLEMENTED, "{method} {uri}");
        assert_eq!(reply.content_type(), "text/html;charset=utf-8");
        let expected = format!("<p>Message: Unsupported method (\"{method}\").</p>");
        assert!(reply.body.contains(&expected), "{}", reply.body);
    }
}

#[tokio::test]
async fn odd_requests_get_answers() {
    let h = harness(lagging());
    for uri in [
        "/%ff%fe",
        "/replica?lag=%ff",
        "/replica?lag=-5",
        "/replica?tag_=x&tag_%00=y",
        "/replica?&&=&a",
        "//",
        "/readiness?lag=0x&mode=",
        "/patroni?x=%",
        "/metrics/extra/segments",
    ] {
        let reply = h.get(uri).await;
        assert!(
            matches!(reply.code.as_u16(), 200 | 503),
            "{uri}: {}",
            reply.code
        );
    }
    // A negative lag budget counts the replica as lagging whenever the leader is ahead.
    assert_eq!(h.code("/replica?lag=-5").await, 503);
    // Beyond any WAL distance: refused, not taken as "no limit" (nor wrapped).
    assert_eq!(h.code("/replica?lag=1e400kB").await, 400);
}

#[tokio::test]
async fn serve_answers_on_a_socket_and_shuts_down() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let h = harness(primary());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, h.state.clone(), async {
        _ = stopped.await;
    }));

    // HAProxy's default check: `OPTIONS / HTTP/1.0`, status line only.
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"OPTIONS / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    assert!(response.starts_with("HTTP/1.0 200 OK\r\n"), "{response}");
    assert!(response.ends_with("\r\n\r\n"), "{response}");

    stop.send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
}

// ---------------------------------------------------------------------------------------------
// The floating IP (pgbaton only).

#[tokio::test]
async fn vip_state_in_patroni_and_metrics() {
    let mut h = harness(primary());
    // Not configured: no key, no metric.
    assert!(!h.get("/patroni").await.body.contains("\"vip\""));
    assert!(!h.get("/metrics").await.body.contains("pgbaton_vip"));

    let (tx, rx) = watch::channel(crate::VipStatus {
        address: "10.0.0.100/24".to_owned(),
        interface: "eth0".to_owned(),
        present: true,
        desired: true,
        error: None,
    });
    h.state.vip = Some(rx);
    let body = h.get("/patroni").await.body;
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    expect![[r#"{"address":"10.0.0.100/24","desired":true,"interface":"eth0","present":true}"#]]
        .assert_eq(&v["vip"].to_string());
    // Health answers carry the same document.
    assert!(h.get("/primary").await.body.contains("\"vip\":{"));
    let metrics = h.get("/metrics").await.body;
    let vip_lines: Vec<&str> = metrics
        .lines()
        .filter(|l| l.contains("pgbaton_vip"))
        .collect();
    expect![[r#"
        # HELP pgbaton_vip_present Value is 1 if the floating IP is on this node's interface, 0 otherwise.
        # TYPE pgbaton_vip_present gauge
        pgbaton_vip_present{scope="demo",name="node1"} 1
        # HELP pgbaton_vip_desired Value is 1 if this node should hold the floating IP (leader, primary, lease valid), 0 otherwise.
        # TYPE pgbaton_vip_desired gauge
        pgbaton_vip_desired{scope="demo",name="node1"} 1
        # HELP pgbaton_vip_error Value is 1 if the last floating IP operation failed, 0 otherwise.
        # TYPE pgbaton_vip_error gauge
        pgbaton_vip_error{scope="demo",name="node1"} 0"#]]
    .assert_eq(&vip_lines.join("\n"));

    // A failure shows until an operation succeeds.
    tx.send_replace(crate::VipStatus {
        address: "10.0.0.100/24".to_owned(),
        interface: "eth0".to_owned(),
        present: false,
        desired: true,
        error: Some("adding the floating IP needs CAP_NET_ADMIN".to_owned()),
    });
    let v: serde_json::Value = serde_json::from_str(&h.get("/patroni").await.body).expect("json");
    assert_eq!(v["vip"]["present"], false);
    assert_eq!(
        v["vip"]["error"],
        "adding the floating IP needs CAP_NET_ADMIN"
    );
    let metrics = h.get("/metrics").await.body;
    assert!(metrics.contains("pgbaton_vip_error{scope=\"demo\",name=\"node1\"} 1"));
    assert!(metrics.contains("pgbaton_vip_present{scope=\"demo\",name=\"node1\"} 0"));
}

#[tokio::test]
async fn a_lag_beyond_any_wal_distance_is_a_400_not_a_wrap() {
    let h = harness(replica());
    for uri in [
        "/replica?lag=170141183460469231731687303715884105727",
        "/readiness?lag=99999999999999999999999",
        "/async?lag=1e400kB",
        "/replica?lag=99999999999999999999999999999999999999999999",
    ] {
        let r = h.get(uri).await;
        assert_eq!(r.code, StatusCode::BAD_REQUEST, "{uri}: {}", r.body);
        assert!(
            r.body.contains("query parameter lag: value out of range"),
            "{uri}: {}",
            r.body
        );
    }
    // The largest accepted value is no lag limit at all, without overflowing.
    assert_eq!(h.code("/replica?lag=9223372036854775807").await, 200);
}

#[tokio::test]
async fn pending_restart_with_its_reason_in_patroni_and_metrics() {
    let reason = vec![crate::PendingRestart {
        name: "shared_buffers".to_owned(),
        old_value: "32MB".to_owned(),
        new_value: "48MB".to_owned(),
    }];
    let mut snap = primary();
    if let Some(pg) = snap.pg.as_mut() {
        pg.pending_restart = true;
    }
    snap.pending_restart_reason = reason.clone();
    let h = harness(snap);
    let doc: serde_json::Value = serde_json::from_str(&h.get("/patroni").await.body).expect("json");
    assert_eq!(doc["pending_restart"], serde_json::json!(true));
    assert_eq!(
        doc["pending_restart_reason"],
        serde_json::json!({"shared_buffers": {"old_value": "32MB", "new_value": "48MB"}})
    );
    let metrics = h.get("/metrics").await.body;
    assert!(
        metrics.contains("patroni_pending_restart{scope=\"demo\",name=\"node1\"} 1"),
        "{metrics}"
    );

    // PostgreSQL restarted since (pg_settings has nothing pending): a stale reason is not shown.
    let mut snap = primary();
    snap.pending_restart_reason = reason;
    let h = harness(snap);
    let doc: serde_json::Value = serde_json::from_str(&h.get("/patroni").await.body).expect("json");
    assert!(doc.get("pending_restart").is_none(), "{doc}");
    assert!(doc.get("pending_restart_reason").is_none(), "{doc}");
}

mod security;

mod failsafe {
    use super::*;
    use baton_core::{FailsafeTopology, MemberName};

    const BODY: &str = r#"{"name":"node1","conn_url":"postgres://10.0.0.1:5432/postgres","api_url":"http://10.0.0.1:8008/patroni","slots":{"node1":83886080}}"#;

    impl Harness {
        async fn post(&self, uri: &str, body: &str) -> Reply {
            let request = Request::builder()
                .method(Method::POST)
                .uri(uri)
                .body(Body::from(body.to_owned()))
                .unwrap();
            let response = router(self.state.clone()).oneshot(request).await.unwrap();
            let code = response.status();
            let headers = response.headers().clone();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            Reply {
                code,
                headers,
                body: String::from_utf8(bytes.to_vec()).unwrap(),
            }
        }
    }

    fn topology() -> FailsafeTopology {
        ["node1", "node2", "node3"]
            .into_iter()
            .map(|n| {
                (
                    MemberName::new(n).unwrap(),
                    format!("http://{n}:8008/patroni"),
                )
            })
            .collect()
    }

    fn on(mut s: Snapshot) -> Snapshot {
        s.failsafe_mode = true;
        if let Some(c) = &mut s.cluster {
            c.failsafe = Some(topology());
        }
        s
    }

    #[tokio::test]
    async fn a_replica_accepts_and_remembers_the_leader_for_ttl() {
        let h = harness(on(replica()));
        let reply = h.post("/failsafe", BODY).await;
        assert_eq!(
            (reply.code, reply.body.as_str()),
            (StatusCode::OK, "Accepted")
        );
        // Patroni's `lsn` header: the received/replayed position, whichever is further.
        assert_eq!(
            reply.headers.get("lsn").and_then(|v| v.to_str().ok()),
            Some((OPTIME + 0x100).to_string().as_str())
        );
        let ping = h.state.failsafe.latest().expect("recorded");
        assert_eq!(ping.leader.as_str(), "node1");
        assert_eq!(ping.until, Mono::from_millis(NOW) + Duration::from_secs(30));
    }

    #[tokio::test]
    async fn off_is_502_and_records_nothing() {
        let h = harness(replica());
        assert_eq!(
            h.post("/failsafe", BODY).await.code,
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(h.code("/failsafe").await, 502);
        assert!(h.state.failsafe.latest().is_none());
    }

    #[tokio::test]
    async fn a_primary_refuses_as_patroni_does() {
        let h = harness(on(primary()));
        let reply = h.post("/failsafe", BODY).await;
        assert_eq!(
            (reply.code, reply.body.as_str()),
            (StatusCode::INTERNAL_SERVER_ERROR, "Running as a leader")
        );
        assert!(h.state.failsafe.latest().is_none());
    }

    #[tokio::test]
    async fn a_sender_that_is_not_the_leader_we_know_is_refused() {
        // Our view names node1 as the leader; node3 asking is a deposed or rogue primary.
        let h = harness(on(replica()));
        let body = BODY.replace("\"node1\",\"conn", "\"node3\",\"conn");
        let reply = h.post("/failsafe", &body).await;
        assert_eq!(
            (reply.code, reply.body.as_str()),
            (StatusCode::INTERNAL_SERVER_ERROR, "The leader is node1")
        );
        assert!(h.state.failsafe.latest().is_none());
    }

    #[tokio::test]
    async fn a_malformed_body_is_400_naming_the_field_and_changes_nothing() {
        let h = harness(on(replica()));
        for (body, why) in [
            ("garbage", "POST /failsafe: the body is not JSON"),
            ("[1]", "POST /failsafe: the body is not a JSON object"),
            (
                r#"{"api_url":"http://x"}"#,
                "POST /failsafe: field `name` is missing",
            ),
            (
                r#"{"name":5,"api_url":"http://x"}"#,
                "POST /failsafe: field `name`: expected a string, got 5",
            ),
            (
                r#"{"name":"node1"}"#,
                "POST /failsafe: field `api_url` is missing",
            ),
            (
                r#"{"name":"node1","api_url":"http://x","conn_url":1}"#,
                "POST /failsafe: field `conn_url`: expected a string, got 1",
            ),
        ] {
            let reply = h.post("/failsafe", body).await;
            assert_eq!(reply.code, StatusCode::BAD_REQUEST, "{body}");
            assert!(reply.body.starts_with(why), "{body}: {}", reply.body);
        }
        assert!(h.state.failsafe.latest().is_none());
    }

    #[tokio::test]
    async fn get_shows_the_topology_while_on() {
        let reply = harness(on(replica())).get("/failsafe").await;
        assert_eq!(reply.code, StatusCode::OK);
        assert_eq!(
            reply.body,
            r#"{"node1":"http://node1:8008/patroni","node2":"http://node2:8008/patroni","node3":"http://node3:8008/patroni"}"#
        );
        let mut s = on(replica());
        s.cluster.as_mut().unwrap().failsafe = None;
        assert_eq!(harness(s).code("/failsafe").await, 502);
    }

    #[tokio::test]
    async fn metrics_follow_the_mode_and_the_topology() {
        let pick = |text: &str| -> String {
            text.lines()
                .filter(|l| l.starts_with("patroni_failsafe"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let mut s = on(replica());
        s.failsafe_active = true;
        expect![[r#"
            patroni_failsafe_mode_is_active{scope="demo",name="node2"} 1
            patroni_failsafe_mode_enabled{scope="demo",name="node2"} 1
            patroni_failsafe_member{scope="demo",name="node2"} 1"#]]
        .assert_eq(&pick(&harness(s).get("/metrics").await.body));
        let mut s = on(replica());
        s.cluster.as_mut().unwrap().failsafe = Some(
            topology()
                .into_iter()
                .filter(|(n, _)| n.as_str() != "node2")
                .collect(),
        );
        expect![[r#"
            patroni_failsafe_mode_is_active{scope="demo",name="node2"} 0
            patroni_failsafe_mode_enabled{scope="demo",name="node2"} 1
            patroni_failsafe_member{scope="demo",name="node2"} 0"#]]
        .assert_eq(&pick(&harness(s).get("/metrics").await.body));
        let mut s = replica();
        s.failsafe_active = true;
        expect![[r#"
            patroni_failsafe_mode_is_active{scope="demo",name="node2"} 0
            patroni_failsafe_mode_enabled{scope="demo",name="node2"} 0
            patroni_failsafe_member{scope="demo",name="node2"} 0"#]]
        .assert_eq(&pick(&harness(s).get("/metrics").await.body));
    }
}

/// A racing peer asks `GET /patroni` with [`crate::LIVE_HEADER`]: positions and timeline come
/// from PostgreSQL now (the cycle's snapshot can be a loop old); without an answer in time,
/// from the snapshot, and the document says which. Other requests never query.
#[tokio::test]
async fn patroni_answers_a_racing_peer_with_live_positions() {
    let asked = Arc::new(AtomicU64::new(0));
    let live = |answer: Option<PgSql>, delay: Duration, asked: Arc<AtomicU64>| -> crate::LiveSql {
        Arc::new(move || {
            let answer = answer.clone();
            asked.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                answer
            })
        })
    };
    let fresh = PgSql {
        timeline: Timeline(3),
        received_lsn: Some(Lsn(OPTIME + 0x9000)),
        replayed_lsn: Some(Lsn(OPTIME + 0x8000)),
        ..replica().pg.expect("replica pg")
    };
    let ask = |h: &Harness, live_header: bool| {
        let mut request = Request::builder().method(Method::GET).uri("/patroni");
        if live_header {
            request = request.header(crate::LIVE_HEADER, "1");
        }
        let router = router(h.state.clone());
        let request = request.body(Body::empty()).unwrap();
        async move {
            let response = router.oneshot(request).await.unwrap();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()
        }
    };

    let mut h = harness(replica());
    h.state.live_sql = Some(live(Some(fresh.clone()), Duration::ZERO, asked.clone()));
    let doc = ask(&h, true).await;
    assert_eq!(doc["live_positions"], serde_json::json!(true));
    assert_eq!(doc["timeline"], serde_json::json!(3));
    assert_eq!(
        peer_status_from_json(name("node2"), &doc).wal_position,
        Some(Lsn(OPTIME + 0x9000)),
        "the race reads the live position"
    );
    // A health check or a plain GET /patroni answers from the snapshot and queries nothing.
    let before = asked.load(Ordering::SeqCst);
    let plain = ask(&h, false).await;
    assert!(plain.get("live_positions").is_none());
    assert_eq!(plain["timeline"], serde_json::json!(2));
    assert_eq!(h.code("/replica").await, 200);
    assert_eq!(asked.load(Ordering::SeqCst), before);

    // PostgreSQL slower than the bound: the snapshot's positions, said so.
    h.state.live_sql = Some(live(Some(fresh), Duration::from_secs(5), asked.clone()));
    let started = tokio::time::Instant::now();
    let doc = ask(&h, true).await;
    assert_eq!(doc["live_positions"], serde_json::json!(false));
    assert_eq!(doc["timeline"], serde_json::json!(2));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded by LIVE_TIMEOUT"
    );
    // No query at all (PostgreSQL down, or an agent without one): the same.
    h.state.live_sql = Some(live(None, Duration::ZERO, asked.clone()));
    assert_eq!(
        ask(&h, true).await["live_positions"],
        serde_json::json!(false)
    );
    h.state.live_sql = None;
    assert_eq!(
        ask(&h, true).await["live_positions"],
        serde_json::json!(false)
    );
}
