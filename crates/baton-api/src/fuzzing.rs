//! The properties the fuzz targets (`fuzz/`, cargo-fuzz, nightly) and this crate's proptest
//! smoke tests (stable, part of `make test`) check on what a REST client sends: query strings
//! (`?lag=`, tag filters), the JSON bodies of the unsafe endpoints, `If-Match`, the JSON merge
//! patch of `PATCH /config`, and another member's `GET /patroni` answer (read during the leader
//! race). Each function panics when a property fails and is otherwise silent.

use axum::http::{HeaderMap, HeaderValue, Uri, header};
use baton_core::MemberName;
use serde_json::{Map, Value};

use crate::actions::{
    check_shape, if_match_revision, json_object, merge_patch, switchover_request,
};
use crate::query::{QueryParams, parse_bytes};
use crate::status::peer_status_from_json;

/// A request target (`/replica?lag=1MB&tag_zone=eu`): never panics; `?lag=` is a byte count
/// within ±(2^63 − 1) or refused naming the parameter.
pub fn query(target: &str) {
    let Ok(uri) = target.parse::<Uri>() else {
        return;
    };
    let q = QueryParams::from_uri(&uri);
    for (k, v) in q.first_values() {
        assert_eq!(q.get(k), Some(v));
        let _ = parse_bytes(v);
    }
    match q.bytes("lag") {
        Ok(Some(n)) => assert!(n.unsigned_abs() <= u128::from(i64::MAX.unsigned_abs())),
        Ok(None) => {}
        Err(e) => assert_eq!(e.key, "lag"),
    }
}

/// `parse_bytes` on any text never panics; a plain integer, and an integer with a unit while
/// the product is exact in a double, read back as their value.
pub fn bytes(text: &str, n: i64, unit: usize) {
    let _ = parse_bytes(text);
    assert_eq!(parse_bytes(&n.to_string()), Some(i128::from(n)));
    let (suffix, factor) = [
        ("B", 1i128),
        ("kB", 1 << 10),
        ("MB", 1 << 20),
        ("GB", 1 << 30),
        ("TB", 1 << 40),
    ][unit % 5];
    let small = n % (1 << 12);
    assert_eq!(
        parse_bytes(&format!("{small}{suffix}")),
        Some(i128::from(small) * factor),
        "{small}{suffix}"
    );
}

/// Any body of `POST /switchover`, `/failover`, `/reinitialize`, `PATCH`/`PUT /config`, and
/// any `If-Match` value: never panics; an accepted switchover body names only non-empty
/// members, and a shape-checked one has a leader (switchover) or a candidate (failover).
pub fn body(body: &[u8], if_match: &[u8], now_ms: i64) {
    for failover in [false, true] {
        if let Ok(req) = switchover_request(body, failover) {
            assert!(req.leader.as_deref() != Some(""));
            assert!(req.candidate.as_deref() != Some(""));
            for paused in [false, true] {
                if check_shape(&req, paused, now_ms).is_ok() {
                    assert!(req.leader.is_some() || req.candidate.is_some());
                    if failover {
                        assert!(req.candidate.is_some());
                    } else {
                        assert!(req.leader.is_some());
                    }
                }
            }
        }
    }
    let _ = json_object(body);
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(if_match) {
        headers.insert(header::IF_MATCH, v);
        if let Ok(Some(r)) = if_match_revision(&headers) {
            assert!(r > 0);
        }
    }
}

/// `PATCH /config`'s merge (RFC 7386, Patroni's `patch_config`): never panics; applying a
/// patch twice is applying it once; a `null` removes its key and any other non-object value is
/// set as it is.
pub fn patch(target: &Value, patch: &Value) {
    let (Value::Object(target), Value::Object(patch)) = (target, patch) else {
        return;
    };
    let mut once = target.clone();
    merge_patch(&mut once, patch);
    let mut twice = once.clone();
    merge_patch(&mut twice, patch);
    assert_eq!(once, twice, "merge patch is not idempotent");
    check_applied(&once, patch);
}

fn check_applied(result: &Map<String, Value>, patch: &Map<String, Value>) {
    for (k, v) in patch {
        match (v, result.get(k)) {
            (Value::Null, got) => assert_eq!(got, None, "{k} not removed"),
            (Value::Object(p), Some(Value::Object(r))) => check_applied(r, p),
            (Value::Object(_), got) => panic!("{k}: expected an object, got {got:?}"),
            (other, got) => assert_eq!(got, Some(other), "{k}"),
        }
    }
}

/// A PostgreSQL timestamp (`pg_postmaster_start_time()`, `pg_last_xact_replay_timestamp()`
/// as text, for `/metrics`): never panics; a parsed one is within the years 0000–9999.
pub fn pg_timestamp(text: &str) {
    if let Some(us) = crate::metrics::parse_timestamp_micros(text) {
        const LIMIT: i64 = 2 * 10_000 * 366 * 86_400 * 1_000_000;
        assert!(us.abs() < LIMIT, "{text:?}: {us}");
    }
}

/// Another member's `GET /patroni` answer, as the leader race reads it: never panics; a
/// member read as unreachable has no WAL position.
pub fn peer_status(text: &[u8]) {
    let Ok(v) = serde_json::from_slice::<Value>(text) else {
        return;
    };
    let name = MemberName::new("peer").unwrap_or_default();
    let status = peer_status_from_json(name.clone(), &v);
    assert_eq!(status.name, name);
    if !status.reachable {
        assert_eq!(status.wal_position, None);
    }
}

/// One HTTP request as the fuzzers make it.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    /// Index into GET, HEAD, OPTIONS, POST, PATCH, PUT, DELETE.
    pub method: u8,
    /// The request target: path and query.
    pub target: &'a str,
    pub headers: Vec<(&'a [u8], &'a [u8])>,
    pub body: &'a [u8],
    /// The snapshot answers as the primary (true) or a replica.
    pub primary: bool,
    /// `restapi.authentication` is set (`u`/`p`).
    pub auth: bool,
}

/// Any request through the router, with a fixture snapshot of a 2-member cluster and an agent
/// that answers every command at once (`PATCH /config` merges into a fixed configuration):
/// never panics, never answers 500, and a refused login changes nothing (no command reaches
/// the agent).
pub fn request(req: &Request<'_>) {
    use axum::body::Body;
    use tower::ServiceExt;

    let methods = ["GET", "HEAD", "OPTIONS", "POST", "PATCH", "PUT", "DELETE"];
    let method = methods[usize::from(req.method) % methods.len()];
    let mut builder = axum::http::Request::builder()
        .method(method)
        .uri(req.target);
    for (k, v) in &req.headers {
        builder = builder.header(*k, *v);
    }
    let Ok(http) = builder.body(Body::from(req.body.to_vec())) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    runtime.block_on(async {
        let (snapshot_tx, snapshot_rx) =
            tokio::sync::watch::channel(std::sync::Arc::new(fixture::snapshot(req.primary)));
        let (commands_tx, mut commands_rx) = tokio::sync::mpsc::channel(4);
        let state = crate::ApiState {
            snapshot: snapshot_rx,
            clock: std::sync::Arc::new(fixture::FixedClock),
            auth: req.auth.then(|| ("u".to_owned(), "p".to_owned())),
            commands: Some(commands_tx),
            vip: None,
            audit: crate::AuditLog::default(),
            failsafe: crate::FailsafeInbox::default(),
            live_sql: None,
        };
        let agent = async {
            let mut handled = 0u32;
            while let Some(command) = commands_rx.recv().await {
                handled += 1;
                fixture::answer(command);
            }
            handled
        };
        let router = crate::router(state);
        let respond = async move {
            let response = router.oneshot(http).await;
            response.map(|r| r.status())
        };
        let (status, handled) = tokio::join!(respond, agent);
        drop(snapshot_tx);
        let Ok(status) = status;
        assert_ne!(status.as_u16(), 500, "{method} {:?}", req.target);
        if status.as_u16() == 401 {
            assert_eq!(handled, 0, "a refused request reached the agent");
        }
    });
}

mod fixture {
    use baton_core::{
        Clock, ClusterView, HistoryLine, LeaderKey, LeaderStatus, Lsn, Member, MemberName, Mono,
        PgSql, SyncKey, SyncState, Tags, Timeline, Versioned,
    };
    use serde_json::{Map, Value};

    use crate::{Command, CommandReply, Snapshot};

    pub(super) struct FixedClock;

    impl Clock for FixedClock {
        fn now(&self) -> Mono {
            Mono(10_000)
        }

        fn unix_ms(&self) -> i64 {
            1_795_323_600_000
        }
    }

    fn name(s: &str) -> MemberName {
        MemberName::new(s).unwrap_or_default()
    }

    const CONFIG: &str =
        r#"{"ttl":30,"loop_wait":10,"postgresql":{"parameters":{"max_connections":100}}}"#;

    fn member(n: &str, role: &str, lsn: u64) -> Member {
        Member {
            name: name(n),
            conn_url: Some(format!("postgres://10.0.0.{}:5432/postgres", n.len())),
            api_url: Some(format!("http://10.0.0.{}:8008/patroni", n.len())),
            state: "running".to_owned(),
            role: role.to_owned(),
            tags: Tags {
                custom: [("zone".to_owned(), "\"eu\"".to_owned())].into(),
                ..Tags::default()
            },
            xlog_location: Some(Lsn(lsn)),
            replay_lsn: Some(Lsn(lsn)),
            timeline: Some(Timeline(2)),
            lease: 7,
            ..Member::default()
        }
    }

    pub(super) fn snapshot(primary: bool) -> Snapshot {
        let me = if primary { "node1" } else { "node22" };
        let mut s = Snapshot::initial(
            "demo",
            name(me),
            "http://10.0.0.1:8008/patroni".to_owned(),
            "postgres://10.0.0.1:5432/postgres".to_owned(),
        );
        s.state = crate::PgRunState::Running;
        s.role = if primary {
            crate::MemberRole::Primary
        } else {
            crate::MemberRole::Replica
        };
        s.holds_leader_key = primary;
        s.fence_deadline = primary.then_some(Mono(20_000));
        s.pg = Some(PgSql {
            server_version: 150_008,
            in_recovery: !primary,
            timeline: Timeline(2),
            flush_lsn: primary.then_some(Lsn(0x500_0000)),
            received_lsn: (!primary).then_some(Lsn(0x400_0000)),
            replayed_lsn: (!primary).then_some(Lsn(0x400_0000)),
            ..PgSql::default()
        });
        s.cluster = Some(ClusterView {
            revision: 42,
            initialize: Some("7268616322854375442".to_owned()),
            config: Some(Versioned {
                value: CONFIG.to_owned(),
                mod_revision: 3,
            }),
            leader: Some(LeaderKey {
                name: Some(name("node1")),
                lease: 7,
                create_revision: 30,
                mod_revision: 41,
            }),
            members: vec![
                member("node1", "primary", 0x500_0000),
                member("node22", "replica", 0x400_0000),
            ],
            failover: None,
            failsafe: None,
            sync: SyncKey::Present(Versioned {
                value: SyncState {
                    leader: Some(name("node1")),
                    sync_standby: vec![name("node22")],
                    quorum: 0,
                },
                mod_revision: 5,
            }),
            history: vec![HistoryLine {
                timeline: Timeline(1),
                lsn: Lsn(0x300_0060),
                reason: "no recovery target specified".to_owned(),
                timestamp: None,
                new_leader: Some("node1".to_owned()),
            }],
            status: Some(LeaderStatus {
                optime: Lsn(0x500_0000),
                ..LeaderStatus::default()
            }),
            warnings: Vec::new(),
        });
        s
    }

    /// The agent's side, without a DCS: every command succeeds at once.
    pub(super) fn answer(command: Command) {
        let ok = || CommandReply::Text(200, "ok".to_owned());
        let _ = match command {
            Command::Switchover { reply, .. } => reply.send(ok()),
            Command::CancelSwitchover { reply } => reply.send(ok()),
            Command::Reinitialize { reply, .. } => reply.send(ok()),
            Command::Restart { reply, .. } => reply.send(ok()),
            Command::CancelRestart { reply } => reply.send(ok()),
            Command::Reload { reply } => reply.send(ok()),
            Command::PatchConfig { patch, reply } => {
                let mut config: Map<String, Value> =
                    serde_json::from_str(CONFIG).unwrap_or_default();
                crate::merge_patch(&mut config, &patch);
                reply.send(CommandReply::Json(200, Value::Object(config).to_string()))
            }
            Command::ReplaceConfig { reply, .. } => reply.send(ok()),
        };
    }
}

/// The fuzz targets' properties on stable, with bounded case counts (seconds in `make test`).
#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn config(cases: u32) -> ProptestConfig {
        ProptestConfig {
            cases,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            "[a-z0-9:+ -]{0,26}".prop_map(Value::String),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 5, |inner| {
            let keys = proptest::sample::select(
                &[
                    "leader",
                    "candidate",
                    "member",
                    "scheduled_at",
                    "force",
                    "ttl",
                    "postgresql",
                    "parameters",
                    "role",
                    "xlog",
                    "wal",
                    "location",
                    "received_location",
                    "replayed_location",
                    "timeline",
                    "tags",
                    "x",
                ][..],
            );
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::vec((keys, inner), 0..6).prop_map(|kv| Value::Object(
                    kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
                )),
            ]
        })
    }

    fn target() -> impl Strategy<Value = String> {
        prop_oneof![
            "/(primary|replica|read-only|health|sync|async|readiness|liveness|patroni|cluster|history|config|metrics|switchover|failover|reinitialize|reload|x)?(\\?((lag|tag_zone|lag_x|mode)=[-+0-9a-zA-Z.%&= ]{0,12}){0,3})?",
            "/[ -~]{0,30}",
        ]
    }

    proptest! {
        #![proptest_config(config(1000))]

        #[test]
        fn query_strings(t in target(), s in any::<String>()) {
            query(&t);
            query(&s);
        }

        #[test]
        fn byte_counts(s in "[-+ ]?(0x)?[0-9a-fA-F.eE+-]{0,24} ?(B|kB|MB|GB|TB|kb|x)?", n in any::<i64>(), unit in 0usize..5) {
            bytes(&s, n, unit);
        }

        #[test]
        fn bodies(v in json(), raw in proptest::collection::vec(any::<u8>(), 0..40), m in "[\" 0-9a-z-]{0,12}") {
            body(v.to_string().as_bytes(), m.as_bytes(), 1_700_000_000_000);
            body(&raw, &raw, 0);
        }

        #[test]
        fn merge_patches(t in json(), p in json()) {
            patch(&t, &p);
        }

        #[test]
        fn pg_timestamps(
            s in any::<String>(),
            t in "[0-9]{4}-[0-9]{2}-[0-9]{2}[ T][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,8})?(Z|[+-][0-9:]{0,9}|.{0,2})?",
        ) {
            pg_timestamp(&s);
            pg_timestamp(&t);
        }

        #[test]
        fn peer_statuses(v in json(), raw in proptest::collection::vec(any::<u8>(), 0..40)) {
            peer_status(v.to_string().as_bytes());
            peer_status(&raw);
        }
    }

    proptest! {
        #![proptest_config(config(300))]

        #[test]
        fn requests(
            method in 0u8..7,
            t in target(),
            body in prop_oneof![json().prop_map(|v| v.to_string().into_bytes()), proptest::collection::vec(any::<u8>(), 0..30)],
            auth_header in proptest::option::of(prop_oneof![Just("Basic dTpw".to_owned()), "Basic [A-Za-z0-9+/=]{0,8}"]),
            if_match in proptest::option::of("[\"0-9a-z ]{0,6}"),
            primary in any::<bool>(),
            auth in any::<bool>(),
        ) {
            let mut headers: Vec<(&[u8], &[u8])> = Vec::new();
            if let Some(h) = &auth_header {
                headers.push((b"authorization", h.as_bytes()));
            }
            if let Some(h) = &if_match {
                headers.push((b"if-match", h.as_bytes()));
            }
            request(&Request { method, target: &t, headers, body: &body, primary, auth });
        }
    }
}
