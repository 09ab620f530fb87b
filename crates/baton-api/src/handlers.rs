//! Routing and the handlers.
//!
//! Routing follows Patroni's `parse_request`: the first path segment picks a dedicated handler
//! (`GET /patroni/anything` is `/patroni`); every other GET is a health check whose answer
//! depends on *substrings* of the path (`/replica-eu` is a replica check, `/foo` is 503).
//! HEAD and OPTIONS answer the same status code as GET with no body (HAProxy's default
//! `httpchk` sends `OPTIONS /`). Patroni answers HEAD/OPTIONS on `/patroni`, `/liveness`, ...
//! with the health logic instead (so always 503); we answer their GET code, deliberately.
//!
//! Every handler reads one published [`Snapshot`] and the clock: no locks shared with the
//! agent beyond the `watch` borrow (held only to clone an `Arc`), no IO.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use baton_core::{Lsn, Mono};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::actions;
use crate::metrics::metrics_text;
use crate::query::QueryParams;
use crate::server::{ClientCert, Policy};
use crate::status::{ClusterJson, HistoryJson, Status, Xlog, tag_query_value};
use crate::{ApiState, Snapshot};

/// The REST API as an axum router (state included), with the default limits and no access
/// restrictions beyond `restapi.authentication`.
pub fn router(state: ApiState) -> Router {
    router_with(state, Arc::new(Policy::default()))
}

pub(crate) fn router_with(state: ApiState, policy: Arc<Policy>) -> Router {
    Router::new()
        .fallback(dispatch)
        .layer(axum::Extension(policy))
        .layer(axum::Extension(Arc::new(Rendered::default())))
        .with_state(state)
}

/// The status document (`GET /patroni`, every health check's body) of the last snapshot and
/// VIP state, built and serialised once per snapshot instead of once per request. Health
/// checks still compute their status code per request (it depends on the clock).
#[derive(Default)]
pub(crate) struct Rendered {
    last: std::sync::Mutex<Option<RenderedStatus>>,
}

#[derive(Clone)]
struct RenderedStatus {
    /// Held (not only compared by address) so a new snapshot can never reuse its address.
    snapshot: Arc<Snapshot>,
    vip: Option<crate::VipStatus>,
    doc: Arc<(Status, Option<Bytes>)>,
}

impl Rendered {
    /// The status of `snapshot` with `vip`, and its JSON (`None` if it failed to serialise).
    fn status(
        &self,
        snapshot: &Arc<Snapshot>,
        vip: Option<crate::VipStatus>,
    ) -> Arc<(Status, Option<Bytes>)> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = last.as_ref()
            && Arc::ptr_eq(&r.snapshot, snapshot)
            && r.vip == vip
        {
            return r.doc.clone();
        }
        let status = Status::new(snapshot).with_vip(vip.clone());
        let body = match serde_json::to_vec(&status) {
            Ok(v) => Some(Bytes::from(v)),
            Err(err) => {
                tracing::error!("serialize response: {err}");
                None
            }
        };
        let doc = Arc::new((status, body));
        *last = Some(RenderedStatus {
            snapshot: snapshot.clone(),
            vip,
            doc: doc.clone(),
        });
        doc
    }
}

/// Serves the REST API on `listener` (plain HTTP, default limits) until `shutdown` completes,
/// then lets requests in flight finish. [`crate::serve_with`] takes TLS and access settings.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    crate::server::serve_with(listener, state, Default::default(), shutdown).await
}

/// What of an accepted unsafe request's body goes into the log line.
fn endpoint_summary(endpoint: Endpoint) -> crate::audit::Summary {
    match endpoint {
        Endpoint::PatchConfig | Endpoint::PutConfig => crate::audit::Summary::TopLevelKeys,
        Endpoint::CancelSwitchover | Endpoint::CancelRestart => crate::audit::Summary::Nothing,
        Endpoint::Restart => crate::audit::Summary::Fields(&[
            "schedule",
            "role",
            "postgres_version",
            "timeout",
            "restart_pending",
        ]),
        _ => crate::audit::Summary::Fields(&["leader", "candidate", "scheduled_at", "force"]),
    }
}

/// Which handler answers a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    Health,
    Patroni,
    Cluster,
    History,
    Config,
    Metrics,
    Liveness,
    Readiness,
    /// `GET /failsafe`: the failsafe topology; 502 while failsafe mode is off.
    Failsafe,
    /// `POST /failsafe`: a leader without a renewable lease asks whether it may go on.
    PostFailsafe,
    /// `POST /switchover` (false) and `POST /failover` (true).
    Switchover(bool),
    /// `DELETE /switchover`.
    CancelSwitchover,
    /// `PATCH /config`.
    PatchConfig,
    /// `PUT /config`: replace the dynamic configuration.
    PutConfig,
    /// `POST /reinitialize`.
    Reinitialize,
    /// `POST /restart`.
    Restart,
    /// `DELETE /restart`.
    CancelRestart,
    /// `POST /reload`.
    Reload,
    /// No handler for this method and path: the stdlib's 501.
    Unsupported,
}

/// Patroni's routing table. Unsafe endpoints (`POST /switchover`, `/failover`, `/restart`,
/// `/reload`, `/reinitialize`, `PATCH`/`PUT /config`, `DELETE /restart`, `/switchover`) get
/// their own variants here and run behind [`crate::auth::check_basic_auth`].
fn route(method: &Method, path: &str) -> Endpoint {
    let segment = path
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default();
    match (method, segment) {
        (&Method::POST, "switchover") => return Endpoint::Switchover(false),
        (&Method::POST, "failover") => return Endpoint::Switchover(true),
        (&Method::DELETE, "switchover") => return Endpoint::CancelSwitchover,
        (&Method::PATCH, "config") => return Endpoint::PatchConfig,
        (&Method::PUT, "config") => return Endpoint::PutConfig,
        (&Method::POST, "reinitialize") => return Endpoint::Reinitialize,
        (&Method::POST, "restart") => return Endpoint::Restart,
        (&Method::DELETE, "restart") => return Endpoint::CancelRestart,
        (&Method::POST, "reload") => return Endpoint::Reload,
        (&Method::POST, "failsafe") => return Endpoint::PostFailsafe,
        _ => {}
    }
    if !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Endpoint::Unsupported;
    }
    match segment {
        "patroni" => Endpoint::Patroni,
        "cluster" => Endpoint::Cluster,
        "history" => Endpoint::History,
        "config" => Endpoint::Config,
        "metrics" => Endpoint::Metrics,
        "liveness" => Endpoint::Liveness,
        "readiness" => Endpoint::Readiness,
        "failsafe" => Endpoint::Failsafe,
        _ => Endpoint::Health,
    }
}

async fn dispatch(State(state): State<ApiState>, request: axum::extract::Request) -> Response {
    let (parts, body) = request.into_parts();
    let policy = parts
        .extensions
        .get::<Arc<Policy>>()
        .cloned()
        .unwrap_or_default();
    let rendered = parts
        .extensions
        .get::<Arc<Rendered>>()
        .cloned()
        .unwrap_or_default();
    let mut response = answer(&state, &policy, &rendered, parts, body).await;
    let headers = response.headers_mut();
    for (name, value) in &policy.access.extra_headers {
        headers.append(name.clone(), value.clone());
    }
    response
}

/// Patroni's `check_access` for the unsafe endpoints, in its order: the allowlist (403), a
/// client certificate where `verify_client` asks for one (403), the credentials (401).
async fn check_access(
    state: &ApiState,
    policy: &Policy,
    client: Option<SocketAddr>,
    client_cert: bool,
    headers: &HeaderMap,
    check_members: bool,
) -> Option<(Response, &'static str)> {
    let access = &policy.access;
    // `POST /failsafe` is checked against the allowlist only (Patroni's
    // `allowlist_check_members=False`: the member list comes from the DCS that is down).
    let include_members = access.include_members && check_members;
    if !access.allowlist.is_empty() || include_members {
        let allowed = match client {
            None => false,
            Some(addr) => {
                let ip = addr.ip();
                access
                    .allowlist
                    .iter()
                    .any(|net| crate::server::in_network(ip, *net))
                    || (include_members && member_addresses(state).await.contains(&ip))
            }
        };
        if !allowed {
            return Some((
                text_response(StatusCode::FORBIDDEN, "Access is denied"),
                "not in restapi.allowlist",
            ));
        }
    }
    if policy.require_client_cert && !client_cert {
        return Some((
            text_response(StatusCode::FORBIDDEN, "client certificate required"),
            "no client certificate",
        ));
    }
    crate::auth::check_basic_auth(state.auth.as_ref(), headers)
}

/// The addresses of every member's REST API host (`api_url` in the last DCS view), resolved
/// now (Patroni resolves them at each request too). An IPv4-mapped client address is compared
/// as IPv4.
async fn member_addresses(state: &ApiState) -> Vec<std::net::IpAddr> {
    let urls: Vec<String> = {
        let snapshot = state.snapshot.borrow();
        snapshot
            .cluster
            .as_ref()
            .map(|c| c.members.iter().filter_map(|m| m.api_url.clone()).collect())
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for url in urls {
        let Some((host, port)) = url_host_port(&url) else {
            continue;
        };
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            out.push(ip);
            continue;
        }
        let lookup = tokio::net::lookup_host((host.as_str(), port));
        if let Ok(Ok(addrs)) = tokio::time::timeout(std::time::Duration::from_secs(2), lookup).await
        {
            out.extend(addrs.map(|a| a.ip()));
        }
    }
    out.into_iter()
        .map(|ip| match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
            v4 => v4,
        })
        .collect()
}

/// `https://host:8008/patroni` → (`host`, 8008); `[::1]` → `::1`; the scheme's port when none.
fn url_host_port(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?;
    let default_port = if scheme == "https" { 443 } else { 80 };
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
        return Some((host.to_owned(), port.unwrap_or(default_port)));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host.to_owned(), port.parse().ok()?)),
        None => Some((authority.to_owned(), default_port)),
    }
}

/// The request body, within the size and time limits.
async fn read_body(policy: &Policy, body: Body) -> Result<Bytes, Response> {
    let limits = &policy.limits;
    match tokio::time::timeout(
        limits.body_read_timeout,
        axum::body::to_bytes(body, limits.max_body_bytes),
    )
    .await
    {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(text_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "the request body is larger than {} bytes, or broken",
                limits.max_body_bytes
            ),
        )),
        Err(_) => Err(text_response(
            StatusCode::REQUEST_TIMEOUT,
            "the request body did not arrive in time",
        )),
    }
}

async fn answer(
    state: &ApiState,
    policy: &Policy,
    rendered: &Rendered,
    parts: axum::http::request::Parts,
    body: Body,
) -> Response {
    let method = parts.method;
    let uri = parts.uri;
    let headers = parts.headers;
    let extensions = parts.extensions;
    let endpoint = route(&method, uri.path());
    if matches!(
        endpoint,
        Endpoint::Switchover(_)
            | Endpoint::CancelSwitchover
            | Endpoint::PatchConfig
            | Endpoint::PutConfig
            | Endpoint::Reinitialize
            | Endpoint::Restart
            | Endpoint::CancelRestart
            | Endpoint::Reload
            | Endpoint::PostFailsafe
    ) {
        let client = extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| *addr);
        let client_cert = extensions
            .get::<ClientCert>()
            .is_some_and(|ClientCert(c)| *c);
        let request = format!("{method} {}", uri.path());
        if let Some((denied, reason)) = check_access(
            state,
            policy,
            client,
            client_cert,
            &headers,
            endpoint != Endpoint::PostFailsafe,
        )
        .await
        {
            state
                .audit
                .failed_login(state.clock.now(), client, &request, reason);
            return denied;
        }
        // Past the checks: a slot among the few unsafe requests that may run at once.
        let Ok(_slot) = policy.unsafe_slots.clone().try_acquire_owned() else {
            return text_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many requests to the unsafe endpoints in progress; try again",
            );
        };
        let body = match read_body(policy, body).await {
            Ok(b) => b,
            Err(refused) => return refused,
        };
        let state = state.clone();
        let response = match endpoint {
            Endpoint::Switchover(failover) => actions::switchover(&state, &body, failover).await,
            Endpoint::CancelSwitchover => actions::cancel_switchover(&state).await,
            Endpoint::Reinitialize => actions::reinitialize(&state, &body).await,
            Endpoint::Restart => actions::restart(&state, &body).await,
            Endpoint::CancelRestart => actions::cancel_restart(&state).await,
            Endpoint::Reload => actions::reload(&state).await,
            Endpoint::PutConfig => actions::put_config(&state, &headers, &body).await,
            Endpoint::PostFailsafe => {
                let snapshot: Arc<Snapshot> = Arc::clone(&state.snapshot.borrow());
                let response =
                    crate::failsafe::post(&snapshot, &state.failsafe, state.clock.now(), &body);
                // Every few seconds from the leader during an outage: no audit line per call.
                return response;
            }
            _ => actions::patch_config(&state, &body).await,
        };
        if response.status().is_success() {
            tracing::info!(
                "REST API: accepted {request}{} from {}",
                crate::audit::request_summary(endpoint_summary(endpoint), &body),
                crate::audit::who(state.auth.as_ref(), client)
            );
        }
        return response;
    }
    // Clone the `Arc` and release the borrow at once: the agent's next publish never waits on
    // a slow client.
    let snapshot: Arc<Snapshot> = Arc::clone(&state.snapshot.borrow());
    let vip = state.vip.as_ref().map(|rx| rx.borrow().clone());
    let now = state.clock.now();
    let path = uri.path();
    let status_only = matches!(method, Method::HEAD | Method::OPTIONS);
    let reply = |code: StatusCode, body: Response| if status_only { code_only(code) } else { body };
    match endpoint {
        Endpoint::Health | Endpoint::Readiness
            if let Err(e) = QueryParams::from_uri(&uri).bytes("lag") =>
        {
            error_page(StatusCode::BAD_REQUEST, Some(&e.to_string()))
        }
        Endpoint::Health => {
            let doc = rendered.status(&snapshot, vip);
            let code = health_code(&snapshot, &doc.0, now, path, &QueryParams::from_uri(&uri));
            if status_only {
                code_only(code)
            } else {
                bytes_json_response(code, doc.1.clone())
            }
        }
        Endpoint::Patroni => {
            if status_only {
                code_only(StatusCode::OK)
            } else if headers.contains_key(crate::LIVE_HEADER) {
                // A racing peer: positions and timeline from PostgreSQL now, not the cycle's.
                let live = match &state.live_sql {
                    Some(query) => tokio::time::timeout(crate::LIVE_TIMEOUT, query())
                        .await
                        .ok()
                        .flatten(),
                    None => None,
                };
                let (snap, fresh) = crate::status::live_snapshot(&snapshot, live);
                if !fresh && snapshot.state == crate::PgRunState::Running {
                    tracing::debug!(
                        "GET /patroni: no live answer from PostgreSQL within {:?}; the last cycle's positions",
                        crate::LIVE_TIMEOUT
                    );
                }
                let mut status = Status::new(&snap).with_vip(vip);
                status.live_positions = Some(fresh);
                json_response(StatusCode::OK, &status)
            } else {
                bytes_json_response(StatusCode::OK, rendered.status(&snapshot, vip).1.clone())
            }
        }
        Endpoint::Cluster => {
            // Patroni reads the DCS afresh and drops the connection when that fails; we answer
            // from the last view, or 503 with an empty member list when there is none.
            let (code, doc) = match &snapshot.cluster {
                Some(c) => (
                    StatusCode::OK,
                    ClusterJson::new(&snapshot.scope, c, snapshot.pause),
                ),
                None => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    ClusterJson::unavailable(&snapshot.scope),
                ),
            };
            reply(code, json_response(code, &doc))
        }
        Endpoint::History => {
            let (code, lines) = match &snapshot.cluster {
                Some(c) => (StatusCode::OK, c.history.iter().map(HistoryJson).collect()),
                None => (StatusCode::SERVICE_UNAVAILABLE, Vec::new()),
            };
            reply(code, json_response(code, &lines))
        }
        Endpoint::Config => {
            let config = snapshot.cluster.as_ref().and_then(|c| c.config.as_ref());
            match config.filter(|c| serde_json::from_str::<Map<String, Value>>(&c.value).is_ok()) {
                // The stored text as is: it is valid JSON and keeps the writer's key order.
                Some(c) => reply(
                    StatusCode::OK,
                    raw_json_response(StatusCode::OK, c.value.clone()),
                ),
                None => reply(
                    StatusCode::BAD_GATEWAY,
                    error_page(StatusCode::BAD_GATEWAY, None),
                ),
            }
        }
        Endpoint::Metrics => {
            let response = (
                [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
                metrics_text(&snapshot, vip.as_ref(), now),
            );
            reply(StatusCode::OK, response.into_response())
        }
        Endpoint::Liveness => code_only(liveness_code(&snapshot, now)),
        Endpoint::Readiness => {
            code_only(readiness_code(&snapshot, now, &QueryParams::from_uri(&uri)))
        }
        Endpoint::Failsafe => {
            let response = crate::failsafe::get(&snapshot);
            reply(response.status(), response)
        }
        Endpoint::Switchover(_)
        | Endpoint::CancelSwitchover
        | Endpoint::PatchConfig
        | Endpoint::PutConfig
        | Endpoint::Reinitialize
        | Endpoint::Restart
        | Endpoint::CancelRestart
        | Endpoint::Reload
        | Endpoint::PostFailsafe => {
            unreachable!("unsafe endpoints are answered above")
        }
        Endpoint::Unsupported => {
            let message = format!("Unsupported method ({:?})", method.as_str());
            error_page(StatusCode::NOT_IMPLEMENTED, Some(&message))
        }
    }
}

const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The status code of a health check (Patroni's `do_GET`), from the status document, the
/// snapshot, the clock, the path and the query.
fn health_code(
    snap: &Snapshot,
    status: &Status,
    now: Mono,
    path: &str,
    query: &QueryParams,
) -> StatusCode {
    let path = if path == "/" { "/primary" } else { path };
    let cluster = snap.cluster.as_ref();

    let leader_optime = cluster
        .and_then(|c| c.optime())
        .max(status.latest_end_lsn)
        .unwrap_or_default();
    // Both positions fit in an i64 and the limit was checked (at most 2^63 − 1): the
    // difference and the comparison cannot overflow.
    let is_lagging = match query.bytes("lag").ok().flatten() {
        Some(max_lag) => {
            leader_optime.0 > 0
                && i128::from(leader_optime.0) - i128::from(status.replayed_location()) > max_lag
        }
        None => false,
    };
    let matches_replication_state = query
        .get("replication_state")
        .is_none_or(|want| status.replication_state == Some(want));
    let replica_ok = !snap.tags.noloadbalance
        && !is_lagging
        && status.role == "replica"
        && status.is_running()
        && matches_replication_state;

    // Fail closed: leadership needs the key *and* a fencing deadline still ahead; `/primary`
    // additionally needs PostgreSQL answering as a primary (Patroni answers 200 on the lock
    // alone, even while PostgreSQL fails to start).
    let leader_ok = snap.is_leader_at(now);
    let primary_ok =
        leader_ok && status.is_running() && matches!(status.xlog, Some(Xlog::Primary { .. }));
    // A standby cluster's leader: the key, a fencing deadline ahead, PostgreSQL running in
    // recovery (the agent publishes the role only then). `/primary` stays 503 on it.
    let standby_leader_ok = leader_ok && status.is_running() && status.role == "standby_leader";

    let (ok, ignore_tags) = if path.contains("standby_leader") || path.contains("standby-leader") {
        (standby_leader_ok, true)
    } else if path.contains("leader") {
        (leader_ok, true)
    } else if path.contains("master") || path.contains("primary") || path.contains("read-write") {
        (primary_ok, true)
    } else if path.contains("replica") {
        (replica_ok, false)
    } else if path.contains("read-only") && !path.contains("sync") && !path.contains("quorum") {
        (primary_ok || standby_leader_ok || replica_ok, false)
    } else if path.contains("health") {
        (status.is_running(), false)
    } else if cluster.is_some() {
        let (sync, quorum) = (status.sync_standby, status.quorum_standby);
        let ok = match path {
            "/sync" | "/synchronous" => sync && replica_ok,
            "/quorum" => quorum && replica_ok,
            "/async" | "/asynchronous" => !sync && !quorum && replica_ok,
            "/read-only-quorum" => primary_ok || standby_leader_ok || (quorum && replica_ok),
            "/read-only-sync" | "/read-only-synchronous" => {
                primary_ok || standby_leader_ok || (sync && replica_ok)
            }
            _ => false,
        };
        (ok, false)
    } else {
        (false, false)
    };

    let tags_match = ignore_tags
        || query
            .first_values()
            .all(|(key, wanted)| match key.strip_prefix("tag_") {
                Some(tag) => tag_query_value(&snap.tags, tag).is_some_and(|have| have == wanted),
                None => true,
            });
    if ok && tags_match {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// `/liveness`: 200 while paused or while the HA loop has finished a cycle within `ttl` (a
/// running primary) or `2 * ttl` (anything else).
fn liveness_code(snap: &Snapshot, now: Mono) -> StatusCode {
    let running_primary = snap.role == crate::MemberRole::Primary
        && snap.pg.as_ref().is_some_and(|pg| !pg.in_recovery);
    let threshold = if running_primary {
        snap.ttl
    } else {
        snap.ttl.saturating_mul(2)
    };
    if snap.pause || snap.last_cycle + threshold > now {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// `/readiness?lag=<max>&mode=apply|write`: 200 for the leader; otherwise PostgreSQL must be
/// running, streaming, and within `lag` (default `maximum_lag_on_failover`) of the leader.
fn readiness_code(snap: &Snapshot, now: Mono, query: &QueryParams) -> StatusCode {
    match readiness_failure(snap, now, query) {
        None => StatusCode::OK,
        Some(reason) => {
            tracing::debug!("readiness check failure: {reason}");
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

fn readiness_failure(snap: &Snapshot, now: Mono, query: &QueryParams) -> Option<String> {
    if snap.is_leader_at(now) {
        return None;
    }
    if snap.state != crate::PgRunState::Running {
        return Some("PostgreSQL is not running".to_owned());
    }
    let status = Status::new(snap);
    if status.replication_state != Some("streaming") {
        return Some("PostgreSQL replication state is not streaming".to_owned());
    }
    let cluster_optime = snap
        .cluster
        .as_ref()
        .map(|c| c.optime().unwrap_or_default());
    if cluster_optime.is_none() && status.latest_end_lsn.is_none_or(|l| l.0 == 0) {
        return Some("DCS is not accessible".to_owned());
    }
    let leader_optime = cluster_optime.max(status.latest_end_lsn).unwrap_or(Lsn(0));
    let write_mode = query.get("mode") == Some("write");
    let (mode, location) = if write_mode {
        ("write", status.received_location())
    } else {
        ("apply", status.replayed_location())
    };
    let lag = i128::from(leader_optime.0) - i128::from(location);
    let max_lag = query
        .bytes("lag")
        .ok()
        .flatten()
        .unwrap_or(i128::from(snap.maximum_lag_on_failover));
    (lag > max_lag)
        .then(|| format!("Replication {mode} lag {lag} exceeds maximum allowable {max_lag}"))
}

/// A response carrying only the status code (HEAD, OPTIONS, `/liveness`, `/readiness`).
fn code_only(code: StatusCode) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = code;
    response
}

pub(crate) fn json_response<T: Serialize + ?Sized>(code: StatusCode, doc: &T) -> Response {
    match serde_json::to_string(doc) {
        Ok(text) => raw_json_response(code, text),
        Err(err) => {
            tracing::error!("serialize response: {err}");
            error_page(StatusCode::INTERNAL_SERVER_ERROR, None)
        }
    }
}

/// A JSON body rendered before (`None`: it failed to serialise, logged then: 500).
fn bytes_json_response(code: StatusCode, body: Option<Bytes>) -> Response {
    let Some(body) = body else {
        return error_page(StatusCode::INTERNAL_SERVER_ERROR, None);
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn raw_json_response(code: StatusCode, text: String) -> Response {
    let mut response = Response::new(Body::from(text));
    *response.status_mut() = code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A plain message, with the `text/html` content type Patroni's `write_response` uses.
pub(crate) fn text_response(code: StatusCode, body: &str) -> Response {
    let mut response = Response::new(Body::from(body.to_owned()));
    *response.status_mut() = code;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    response
}

/// The error page Python's `send_error` produces.
pub(crate) fn error_page(code: StatusCode, message: Option<&str>) -> Response {
    let reason = code.canonical_reason().unwrap_or("Error");
    let message = message.unwrap_or(reason);
    let body = format!(
        "<!DOCTYPE HTML>\n<html lang=\"en\">\n    <head>\n        <meta charset=\"utf-8\">\n        \
         <title>Error response</title>\n    </head>\n    <body>\n        <h1>Error response</h1>\n        \
         <p>Error code: {code}</p>\n        <p>Message: {message}.</p>\n        \
         <p>Error code explanation: {code} - {reason}.</p>\n    </body>\n</html>\n",
        code = code.as_u16(),
    );
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html;charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_follows_the_first_segment() {
        let get = |p| route(&Method::GET, p);
        assert_eq!(get("/patroni"), Endpoint::Patroni);
        assert_eq!(get("/patroni/x"), Endpoint::Patroni);
        assert_eq!(get("//cluster"), Endpoint::Cluster);
        assert_eq!(get("/metrics"), Endpoint::Metrics);
        assert_eq!(get("/liveness"), Endpoint::Liveness);
        assert_eq!(get("/readiness"), Endpoint::Readiness);
        assert_eq!(get("/failsafe"), Endpoint::Failsafe);
        assert_eq!(get("/patroni_primary"), Endpoint::Health);
        assert_eq!(get("/"), Endpoint::Health);
        assert_eq!(get("*"), Endpoint::Health);
        assert_eq!(route(&Method::HEAD, "/config"), Endpoint::Config);
        assert_eq!(
            route(&Method::POST, "/switchover"),
            Endpoint::Switchover(false)
        );
        assert_eq!(
            route(&Method::POST, "/failover"),
            Endpoint::Switchover(true)
        );
        assert_eq!(
            route(&Method::DELETE, "/switchover"),
            Endpoint::CancelSwitchover
        );
        assert_eq!(route(&Method::PATCH, "/config"), Endpoint::PatchConfig);
        assert_eq!(route(&Method::PUT, "/config"), Endpoint::PutConfig);
        assert_eq!(route(&Method::PUT, "/switchover"), Endpoint::Unsupported);
        assert_eq!(route(&Method::POST, "/restart"), Endpoint::Restart);
        assert_eq!(route(&Method::DELETE, "/restart"), Endpoint::CancelRestart);
        assert_eq!(route(&Method::PUT, "/restart"), Endpoint::Unsupported);
    }
}
