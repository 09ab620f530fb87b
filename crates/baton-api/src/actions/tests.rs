//! The unsafe endpoints against a fake agent that answers commands.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use baton_core::{Clock, ClusterView, LeaderKey, MemberName, Mono};
use http_body_util::BodyExt;
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, watch};
use tower::ServiceExt;

use super::{Command, CommandReply, SwitchoverRequest, check_shape, merge_patch};
use crate::{ApiState, Snapshot, router};

struct Fixed;
impl Clock for Fixed {
    fn now(&self) -> Mono {
        Mono::from_millis(1_000)
    }

    /// 2026-11-22T05:00:00Z plus the test's monotonic time.
    fn unix_ms(&self) -> i64 {
        1_795_323_600_000 + self.now().as_millis() as i64
    }
}

fn name(s: &str) -> MemberName {
    MemberName::new(s).expect("name")
}

fn snapshot_led_by(leader: &str) -> Snapshot {
    let mut s = Snapshot::initial("batman", name("n1"), String::new(), String::new());
    s.cluster = Some(ClusterView {
        leader: Some(LeaderKey {
            name: Some(name(leader)),
            lease: 1,
            create_revision: 1,
            mod_revision: 1,
        }),
        ..ClusterView::default()
    });
    s
}

struct Agent {
    state: ApiState,
    publish: watch::Sender<Arc<Snapshot>>,
    commands: mpsc::Receiver<Command>,
}

fn agent(auth: Option<(&str, &str)>) -> Agent {
    let (publish, snapshot) = watch::channel(Arc::new(snapshot_led_by("n1")));
    let (tx, commands) = mpsc::channel(4);
    let state = ApiState {
        snapshot,
        clock: Arc::new(Fixed),
        auth: auth.map(|(u, p)| (u.to_owned(), p.to_owned())),
        commands: Some(tx),
        vip: None,
        audit: Default::default(),
        failsafe: Default::default(),
        live_sql: None,
    };
    Agent {
        state,
        publish,
        commands,
    }
}

async fn call(
    state: &ApiState,
    method: Method,
    uri: &str,
    body: &str,
    auth: Option<&str>,
) -> (StatusCode, String) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(a) = auth {
        request = request.header(header::AUTHORIZATION, a);
    }
    let response = router(state.clone())
        .oneshot(request.body(Body::from(body.to_owned())).expect("request"))
        .await
        .expect("response");
    let code = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (code, String::from_utf8_lossy(&bytes).into_owned())
}

fn request(
    leader: Option<&str>,
    candidate: Option<&str>,
    at: Option<&str>,
    failover: bool,
) -> SwitchoverRequest {
    SwitchoverRequest {
        leader: leader.map(str::to_owned),
        candidate: candidate.map(str::to_owned),
        scheduled_at: at.map(str::to_owned),
        failover,
    }
}

#[test]
fn shape_checks_use_patronis_messages() {
    let now = 1_795_323_600_000;
    let cases = [
        (
            request(None, None, None, true),
            false,
            "Failover could be performed only to a specific candidate",
        ),
        (
            request(None, Some("n2"), None, false),
            false,
            "Switchover could be performed only from a specific leader",
        ),
        (
            request(None, Some("n2"), Some("2030-01-01T00:00:00Z"), true),
            false,
            "Failover can't be scheduled",
        ),
        (
            request(Some("n1"), Some("n2"), Some("2030-01-01T00:00:00Z"), false),
            true,
            "Can't schedule switchover in the paused state",
        ),
        (
            request(Some("n1"), None, None, false),
            true,
            "Switchover is possible only to a specific candidate in a paused state",
        ),
        (
            request(Some("n1"), Some("n1"), None, false),
            false,
            "Switchover target and source are the same",
        ),
        (
            request(Some("n1"), Some("n2"), Some("2020-01-01T00:00:00Z"), false),
            false,
            "Cannot schedule switchover in the past",
        ),
    ];
    for (req, paused, message) in cases {
        assert_eq!(
            check_shape(&req, paused, now),
            Err(message.to_owned()),
            "{req:?}"
        );
    }
    let err = check_shape(
        &request(Some("n1"), Some("n2"), Some("tomorrow"), false),
        false,
        now,
    )
    .unwrap_err();
    assert!(
        err.starts_with("Unable to parse scheduled timestamp"),
        "{err}"
    );
    assert_eq!(
        check_shape(&request(Some("n1"), None, None, false), false, now),
        Ok(())
    );
    assert_eq!(
        check_shape(&request(None, Some("n2"), None, true), false, now),
        Ok(())
    );
}

#[tokio::test]
async fn switchover_needs_credentials_when_configured() {
    let a = agent(Some(("admin", "secret")));
    let (code, body) = call(
        &a.state,
        Method::POST,
        "/switchover",
        r#"{"leader":"n1"}"#,
        None,
    )
    .await;
    assert_eq!(
        (code, body.as_str()),
        (StatusCode::UNAUTHORIZED, "no auth header received")
    );
    let (code, _) = call(
        &a.state,
        Method::POST,
        "/switchover",
        r#"{"leader":"n1"}"#,
        Some("Basic bm9wZTpub3Bl"),
    )
    .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let (code, _) = call(
        &a.state,
        Method::PATCH,
        "/config",
        r#"{"pause":true}"#,
        None,
    )
    .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn malformed_bodies_are_400_and_reach_no_agent() {
    let mut a = agent(None);
    for body in ["", "[1,2]", "{not json", r#"{"leader": 7}"#] {
        let (code, _) = call(&a.state, Method::POST, "/switchover", body, None).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{body:?}");
    }
    let (code, _) = call(&a.state, Method::PATCH, "/config", "null", None).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(
        a.commands.try_recv().is_err(),
        "nothing was sent to the agent"
    );
}

#[tokio::test]
async fn the_agents_refusal_is_passed_on() {
    let mut a = agent(None);
    let agent_side = tokio::spawn(async move {
        let Some(Command::Switchover { request, reply }) = a.commands.recv().await else {
            panic!("expected a switchover command");
        };
        assert_eq!(
            request,
            super::SwitchoverRequest {
                leader: Some("n1".into()),
                candidate: Some("n9".into()),
                scheduled_at: None,
                failover: false,
            }
        );
        reply
            .send(CommandReply::Text(412, "candidate does not exists".into()))
            .expect("reply");
    });
    let (code, body) = call(
        &a.state,
        Method::POST,
        "/switchover",
        r#"{"leader":"n1","candidate":"n9"}"#,
        None,
    )
    .await;
    assert_eq!(
        (code, body.as_str()),
        (StatusCode::PRECONDITION_FAILED, "candidate does not exists")
    );
    agent_side.await.expect("agent");
}

#[tokio::test]
async fn an_accepted_switchover_answers_once_the_leader_changed() {
    let Agent {
        state,
        publish,
        mut commands,
    } = agent(None);
    let agent_side = tokio::spawn(async move {
        let Some(Command::Switchover { reply, .. }) = commands.recv().await else {
            panic!("expected a switchover command");
        };
        reply.send(CommandReply::Accepted).expect("reply");
        // The leader changes a little later, as it does after the hand-over.
        tokio::task::yield_now().await;
        publish.send_replace(Arc::new(snapshot_led_by("n2")));
        publish
    });
    let (code, body) = call(
        &state,
        Method::POST,
        "/switchover",
        r#"{"leader":"n1","candidate":"n2"}"#,
        None,
    )
    .await;
    assert_eq!(
        (code, body.as_str()),
        (StatusCode::OK, "Successfully switched over to \"n2\"")
    );
    drop(agent_side.await);
}

#[tokio::test(start_paused = true)]
async fn a_switchover_that_never_completes_reports_unknown_status() {
    let Agent {
        state,
        publish,
        mut commands,
    } = agent(None);
    tokio::spawn(async move {
        if let Some(Command::Switchover { reply, .. }) = commands.recv().await {
            let _ = reply.send(CommandReply::Accepted);
        }
        // Keep the snapshot channel open, never changing the leader.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        drop(publish);
    });
    let (code, body) = call(
        &state,
        Method::POST,
        "/failover",
        r#"{"candidate":"n2"}"#,
        None,
    )
    .await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body,
        "Failover status unknown after 20 seconds; operation may still be in progress"
    );
}

#[tokio::test]
async fn scheduled_switchover_is_202() {
    let mut a = agent(None);
    let agent_side = tokio::spawn(async move {
        if let Some(Command::Switchover { reply, .. }) = a.commands.recv().await {
            reply.send(CommandReply::Accepted).expect("reply");
        }
    });
    let (code, body) = call(
        &a.state,
        Method::POST,
        "/switchover",
        r#"{"leader":"n1","candidate":"n2","scheduled_at":"2099-01-01T00:00:00+00:00"}"#,
        None,
    )
    .await;
    assert_eq!(
        (code, body.as_str()),
        (StatusCode::ACCEPTED, "Switchover scheduled")
    );
    agent_side.await.expect("agent");
}

#[tokio::test]
async fn cancel_and_patch_pass_the_agents_answer_on() {
    let Agent {
        state,
        mut commands,
        ..
    } = agent(None);
    let agent_side = tokio::spawn(async move {
        match commands.recv().await {
            Some(Command::CancelSwitchover { reply }) => reply
                .send(CommandReply::Text(404, "no switchover is scheduled".into()))
                .expect("reply"),
            other => panic!("unexpected {other:?}"),
        }
        match commands.recv().await {
            Some(Command::PatchConfig { patch, reply }) => {
                assert_eq!(Value::Object(patch), json!({"pause": true}));
                reply
                    .send(CommandReply::Json(200, r#"{"pause":true}"#.into()))
                    .expect("reply")
            }
            other => panic!("unexpected {other:?}"),
        }
    });
    let (code, body) = call(&state, Method::DELETE, "/switchover", "", None).await;
    assert_eq!(
        (code, body.as_str()),
        (StatusCode::NOT_FOUND, "no switchover is scheduled")
    );
    let (code, body) = call(&state, Method::PATCH, "/config", r#"{"pause":true}"#, None).await;
    assert_eq!((code, body.as_str()), (StatusCode::OK, r#"{"pause":true}"#));
    agent_side.await.expect("agent");
}

#[test]
fn merge_patch_follows_rfc_7386() {
    let mut target: Map<String, Value> = serde_json::from_value(json!({
        "ttl": 30, "pause": true,
        "postgresql": {"parameters": {"max_connections": 100, "work_mem": "4MB"}}
    }))
    .expect("object");
    let patch: Map<String, Value> = serde_json::from_value(json!({
        "pause": null, "loop_wait": 5,
        "postgresql": {"parameters": {"work_mem": null, "shared_buffers": "1GB"}}
    }))
    .expect("object");
    merge_patch(&mut target, &patch);
    assert_eq!(
        Value::Object(target),
        json!({"ttl": 30, "loop_wait": 5,
               "postgresql": {"parameters": {"max_connections": 100, "shared_buffers": "1GB"}}})
    );
}

#[tokio::test]
async fn reload_needs_credentials_and_passes_the_agents_answer_on() {
    let Agent {
        state,
        mut commands,
        ..
    } = agent(Some(("admin", "secret")));
    let (code, _) = call(&state, Method::POST, "/reload", "", None).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    assert!(
        commands.try_recv().is_err(),
        "nothing was sent to the agent"
    );

    let agent_side = tokio::spawn(async move {
        for answer in [
            CommandReply::Text(202, "reload scheduled".into()),
            CommandReply::Text(500, "the configuration file has errors".into()),
        ] {
            match commands.recv().await {
                Some(Command::Reload { reply }) => reply.send(answer).expect("reply"),
                other => panic!("unexpected {other:?}"),
            }
        }
    });
    let auth = Some("Basic YWRtaW46c2VjcmV0");
    let (code, body) = call(&state, Method::POST, "/reload", "", auth).await;
    assert_eq!(
        (code, body.as_str()),
        (StatusCode::ACCEPTED, "reload scheduled")
    );
    // Patroni ignores the body; so do we.
    let (code, body) = call(&state, Method::POST, "/reload", "{not json", auth).await;
    assert_eq!(
        (code, body.as_str()),
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "the configuration file has errors"
        )
    );
    agent_side.await.expect("agent");
}

async fn call_with(
    state: &ApiState,
    method: Method,
    uri: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, String) {
    let mut request = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = router(state.clone())
        .oneshot(request.body(Body::from(body.to_owned())).expect("request"))
        .await
        .expect("response");
    let code = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (code, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn put_config_sends_the_whole_document_and_the_if_match_revision() {
    let Agent {
        state,
        mut commands,
        ..
    } = agent(None);
    let agent_side = tokio::spawn(async move {
        for want in [None, Some(42)] {
            match commands.recv().await {
                Some(Command::ReplaceConfig {
                    config,
                    expected_revision,
                    reply,
                }) => {
                    assert_eq!(Value::Object(config), json!({"ttl": 20, "loop_wait": 5}));
                    assert_eq!(expected_revision, want);
                    reply
                        .send(CommandReply::Json(
                            200,
                            r#"{"ttl":20,"loop_wait":5}"#.into(),
                        ))
                        .expect("reply");
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    });
    let body = r#"{"ttl": 20, "loop_wait": 5}"#;
    let (code, text) = call_with(&state, Method::PUT, "/config", body, &[]).await;
    assert_eq!(
        (code, text.as_str()),
        (StatusCode::OK, r#"{"ttl":20,"loop_wait":5}"#)
    );
    let (code, _) = call_with(
        &state,
        Method::PUT,
        "/config",
        body,
        &[("if-match", "\"42\"")],
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    agent_side.await.expect("agent");
}

#[tokio::test]
async fn put_config_refuses_bad_bodies_and_revisions_before_the_agent() {
    let mut a = agent(Some(("admin", "secret")));
    let auth = [("authorization", "Basic YWRtaW46c2VjcmV0")];
    for body in ["", "{}", "[1]", "{nope", "null"] {
        let (code, text) = call_with(&a.state, Method::PUT, "/config", body, &auth).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{body:?}: {text}");
    }
    let (code, text) = call_with(
        &a.state,
        Method::PUT,
        "/config",
        r#"{"ttl":20}"#,
        &[auth[0], ("if-match", "yesterday")],
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(text.contains("If-Match"), "{text}");
    let (code, _) = call_with(&a.state, Method::PUT, "/config", r#"{"ttl":20}"#, &[]).await;
    assert_eq!(
        code,
        StatusCode::UNAUTHORIZED,
        "PUT /config needs the credentials"
    );
    assert!(
        a.commands.try_recv().is_err(),
        "nothing was sent to the agent"
    );
}

#[test]
fn restart_requests_are_checked_in_patronis_order_with_its_codes() {
    use super::restart_request;
    let now = 1_795_323_600_000; // 2026-11-22T05:00:00Z
    let refused = |body: &str, paused: bool| match restart_request(body.as_bytes(), paused, now) {
        Err(CommandReply::Text(code, text)) => (code, text),
        other => panic!("{body}: not refused: {other:?}"),
    };
    assert_eq!(
        refused(r#"{"schedule":"2030-01-01T00:00:00+00:00"}"#, true),
        (500, "Can't schedule restart in the paused state".into())
    );
    assert_eq!(
        refused(r#"{"schedule":"2020-01-01T00:00:00+00:00"}"#, false),
        (422, "Cannot schedule restart in the past".into())
    );
    assert_eq!(
        refused(r#"{"schedule":"2030-01-01T00:00:00"}"#, false).0,
        400
    );
    assert_eq!(refused(r#"{"schedule":"soon"}"#, false).0, 422);
    assert_eq!(refused(r#"{"role":"leader"}"#, false).0, 400);
    assert_eq!(refused(r#"{"timeout":-5}"#, false).0, 400);
    assert_eq!(refused(r#"{"timeout":"5 parsecs"}"#, false).0, 400);
    assert_eq!(refused(r#"{"postgres_version":"15"}"#, false).0, 400);
    assert_eq!(
        refused(r#"{"colour":1}"#, false),
        (
            400,
            "Unknown filter for the scheduled restart: colour".into()
        )
    );
    assert_eq!(refused("[1]", false).0, 400);

    let ok = restart_request(
        br#"{"schedule":"2030-01-01T00:00:00+00:00","role":"master","postgres_version":"15.9","timeout":"2min","restart_pending":false}"#,
        false,
        now,
    )
    .expect("a valid request");
    assert_eq!(
        ok.schedule.as_ref().map(|(s, _)| s.as_str()),
        Some("2030-01-01T00:00:00+00:00")
    );
    assert_eq!(ok.filters.role, Some(baton_core::RestartRole::Primary));
    assert_eq!(ok.filters.postgres_version, Some(150_009));
    assert_eq!(ok.filters.timeout, Some(Duration::from_secs(120)));
    // Patroni looks only at the key's presence.
    assert!(ok.filters.restart_pending);
    // No body, or whitespace: an immediate restart without filters.
    assert_eq!(
        restart_request(b"", false, now),
        Ok(super::RestartRequest::default())
    );
    assert_eq!(
        restart_request(b" \n", false, now),
        Ok(super::RestartRequest::default())
    );
}
