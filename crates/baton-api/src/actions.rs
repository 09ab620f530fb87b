//! The unsafe endpoints: `POST /switchover`, `POST /failover`, `DELETE /switchover`,
//! `PATCH /config`, `PUT /config`, `POST /reinitialize`, `POST /restart`, `DELETE /restart`,
//! `POST /reload`. Handlers check the request's shape (Patroni's 400s), then hand a typed
//! [`Command`] to the agent — the only writer of the DCS — and, for an immediate switchover,
//! wait on the published snapshot until the leader changes.

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};

use crate::handlers::text_response;
use crate::{ApiState, Snapshot};

/// A request for the agent, with the channel its answer goes back on.
#[derive(Debug)]
pub enum Command {
    /// Check the request against the cluster and write the `failover` key.
    Switchover {
        request: SwitchoverRequest,
        reply: oneshot::Sender<CommandReply>,
    },
    /// Delete a scheduled switchover (`failover` key), with compare-and-swap.
    CancelSwitchover {
        reply: oneshot::Sender<CommandReply>,
    },
    /// Restart PostgreSQL now or at `request.schedule` (`POST /restart`).
    Restart {
        request: RestartRequest,
        reply: oneshot::Sender<CommandReply>,
    },
    /// Drop a scheduled restart (`DELETE /restart`).
    CancelRestart {
        reply: oneshot::Sender<CommandReply>,
    },
    /// Re-clone this member from the leader (`POST /reinitialize`).
    Reinitialize {
        force: bool,
        reply: oneshot::Sender<CommandReply>,
    },
    /// Re-read the local configuration file and apply what can be applied at run time, as
    /// SIGHUP does (`POST /reload`).
    Reload {
        reply: oneshot::Sender<CommandReply>,
    },
    /// JSON merge patch of the dynamic configuration (`null` deletes a key), with
    /// compare-and-swap; the reply body is the new configuration.
    PatchConfig {
        patch: Map<String, Value>,
        reply: oneshot::Sender<CommandReply>,
    },
    /// Replace the dynamic configuration (`PUT /config`); written only when it differs. With
    /// `expected_revision` (the request's `If-Match`, a pgbaton extension) only while the
    /// `config` key is still at that modification revision.
    ReplaceConfig {
        config: Map<String, Value>,
        expected_revision: Option<i64>,
        reply: oneshot::Sender<CommandReply>,
    },
}

/// `POST /switchover` / `POST /failover` after the shape checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwitchoverRequest {
    pub leader: Option<String>,
    pub candidate: Option<String>,
    pub scheduled_at: Option<String>,
    /// Came in as `POST /failover` (and without a leader: a failover proper).
    pub failover: bool,
}

impl SwitchoverRequest {
    /// "failover" or "switchover", as Patroni words its messages.
    pub fn action(&self) -> &'static str {
        baton_core::switchover_action(self.failover, self.leader.is_some())
    }
}

/// The agent's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandReply {
    /// Send this status and plain-text body.
    Text(u16, String),
    /// Send this status and JSON body.
    Json(u16, String),
    /// The `failover` key was written: wait for the leader to change.
    Accepted,
}

/// How long an immediate switchover is awaited (Patroni: `2 * max(10, loop_wait)`).
fn switchover_wait(snapshot: &Snapshot) -> Duration {
    2 * snapshot.loop_wait.max(Duration::from_secs(10))
}

fn text(code: u16, body: &str) -> Response {
    text_response(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body,
    )
}

fn bad_request(message: &str) -> CommandReply {
    CommandReply::Text(400, format!("Bad request: {message}"))
}

/// Parse a request body as a JSON object.
pub(crate) fn json_object(body: &[u8]) -> Result<Map<String, Value>, CommandReply> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(bad_request("the body must be a JSON object")),
    }
}

/// Hand a command to the agent and wait for its answer; failures to reach it are 503s.
async fn ask(
    state: &ApiState,
    make: impl FnOnce(oneshot::Sender<CommandReply>) -> Command,
) -> CommandReply {
    let unavailable = |m: &str| CommandReply::Text(503, m.to_owned());
    let Some(commands) = state.commands.as_ref() else {
        return unavailable("this agent does not accept commands");
    };
    let (tx, rx) = oneshot::channel();
    if send(commands, make(tx)).await.is_err() {
        return unavailable("the agent is shutting down");
    }
    rx.await
        .unwrap_or_else(|_| unavailable("the agent did not answer"))
}

async fn send(commands: &mpsc::Sender<Command>, command: Command) -> Result<(), ()> {
    commands.send(command).await.map_err(drop)
}

fn reply_response(reply: CommandReply) -> Response {
    match reply {
        CommandReply::Text(code, body) => text(code, &body),
        CommandReply::Json(code, body) => {
            let mut r = text(code, &body);
            r.headers_mut().insert(
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static("application/json"),
            );
            r
        }
        CommandReply::Accepted => text(200, ""),
    }
}

fn string_field(map: &Map<String, Value>, key: &str) -> Result<Option<String>, CommandReply> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad_request(&format!("{key} must be a string"))),
    }
}

/// The fields of a switchover body.
pub(crate) fn switchover_request(
    body: &[u8],
    failover: bool,
) -> Result<SwitchoverRequest, CommandReply> {
    let map = json_object(body)?;
    Ok(SwitchoverRequest {
        leader: string_field(&map, "leader")?,
        candidate: string_field(&map, "candidate")?.or(string_field(&map, "member")?),
        scheduled_at: string_field(&map, "scheduled_at")?,
        failover,
    })
}

/// `POST /switchover` and `POST /failover` (Patroni's `do_POST_failover`).
pub(crate) async fn switchover(state: &ApiState, body: &[u8], failover: bool) -> Response {
    let request = match switchover_request(body, failover) {
        Ok(r) => r,
        Err(refusal) => return reply_response(refusal),
    };
    let snapshot = state.snapshot.borrow().clone();
    if let Err(message) = check_shape(&request, snapshot.pause, state.clock.unix_ms()) {
        return text(400, &message);
    }
    let action = request.action();
    let candidate = request.candidate.clone();
    let scheduled = request.scheduled_at.is_some();
    let old_leader = snapshot
        .cluster
        .as_ref()
        .and_then(|c| c.leader_name().cloned());
    match ask(state, |reply| Command::Switchover { request, reply }).await {
        CommandReply::Accepted if scheduled => text(202, "Switchover scheduled"),
        CommandReply::Accepted => {
            wait_for_new_leader(state, action, old_leader, candidate, &snapshot).await
        }
        other => reply_response(other),
    }
}

/// Patroni's checks that need no cluster state.
pub(crate) fn check_shape(
    req: &SwitchoverRequest,
    paused: bool,
    now_unix_ms: i64,
) -> Result<(), String> {
    if req.failover && req.candidate.is_none() {
        return Err("Failover could be performed only to a specific candidate".into());
    }
    if !req.failover && req.leader.is_none() {
        return Err("Switchover could be performed only from a specific leader".into());
    }
    if req.failover && req.scheduled_at.is_some() {
        return Err("Failover can't be scheduled".into());
    }
    if paused && req.scheduled_at.is_some() {
        return Err("Can't schedule switchover in the paused state".into());
    }
    if paused && req.candidate.is_none() {
        return Err("Switchover is possible only to a specific candidate in a paused state".into());
    }
    if req.leader.is_some() && req.leader == req.candidate {
        return Err("Switchover target and source are the same".into());
    }
    if let Some(at) = &req.scheduled_at {
        match baton_core::parse_iso8601(at) {
            None => {
                return Err(format!(
                    "Unable to parse scheduled timestamp {at:?}: an ISO 8601 time with a timezone is required"
                ));
            }
            Some(ms) if ms < now_unix_ms => {
                return Err("Cannot schedule switchover in the past".into());
            }
            Some(_) => {}
        }
    }
    Ok(())
}

async fn wait_for_new_leader(
    state: &ApiState,
    action: &str,
    old_leader: Option<baton_core::MemberName>,
    candidate: Option<String>,
    snapshot: &Snapshot,
) -> Response {
    let limit = switchover_wait(snapshot);
    let mut rx = state.snapshot.clone();
    let outcome = tokio::time::timeout(limit, async {
        loop {
            {
                let snap = rx.borrow_and_update();
                if let Some(view) = &snap.cluster
                    && let Some(leader) = view.leader_name()
                    && Some(leader) != old_leader.as_ref()
                {
                    return Some(leader.to_string());
                }
            }
            if rx.changed().await.is_err() {
                return None;
            }
        }
    })
    .await;
    let done = if action == "failover" {
        "failed over"
    } else {
        "switched over"
    };
    match outcome {
        Ok(Some(new)) if candidate.as_deref().is_none_or(|c| c == new) => {
            text(200, &format!("Successfully {done} to \"{new}\""))
        }
        Ok(Some(new)) => text(
            200,
            &format!(
                "{} to \"{new}\" instead of \"{}\"",
                capitalize(done),
                candidate.unwrap_or_default()
            ),
        ),
        Ok(None) => text(503, &format!("{} failed", capitalize(action))),
        Err(_) => text(
            503,
            &format!(
                "{} status unknown after {} seconds; operation may still be in progress",
                capitalize(action),
                limit.as_secs()
            ),
        ),
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// `POST /restart` after the shape checks (Patroni's `do_POST_restart`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestartRequest {
    /// The schedule as sent, and the same instant in wall-clock milliseconds.
    pub schedule: Option<(String, i64)>,
    pub filters: baton_core::RestartFilters,
}

/// Checks a `POST /restart` body in Patroni's order and with its codes and messages.
pub(crate) fn restart_request(
    body: &[u8],
    paused: bool,
    now_unix_ms: i64,
) -> Result<RestartRequest, CommandReply> {
    let map = if body.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        json_object(body)?
    };
    let refuse = |code: u16, m: String| CommandReply::Text(code, m);
    if paused && map.contains_key("schedule") {
        return Err(refuse(
            500,
            "Can't schedule restart in the paused state".into(),
        ));
    }
    let mut request = RestartRequest::default();
    for (key, value) in &map {
        match key.as_str() {
            "schedule" => {
                let Some(text) = value.as_str() else {
                    return Err(refuse(422, UNPARSABLE_SCHEDULE.into()));
                };
                let ms = match baton_core::parse_iso8601(text) {
                    Some(ms) => ms,
                    None if baton_core::parse_iso8601(&format!("{text}+00:00")).is_some() => {
                        return Err(refuse(
                            400,
                            "Timezone information is mandatory for the scheduled restart".into(),
                        ));
                    }
                    None => return Err(refuse(422, UNPARSABLE_SCHEDULE.into())),
                };
                if ms < now_unix_ms {
                    return Err(refuse(422, "Cannot schedule restart in the past".into()));
                }
                request.schedule = Some((text.to_owned(), ms));
            }
            "role" => {
                let role = value.as_str().and_then(baton_core::RestartRole::parse);
                let Some(role) = role else {
                    return Err(refuse(
                        400,
                        "PostgreSQL role should be either primary, standby_leader, or replica"
                            .into(),
                    ));
                };
                request.filters.role = Some(role);
            }
            "postgres_version" => {
                let text = match value {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    _ => String::new(),
                };
                match baton_core::parse_postgres_version(&text) {
                    Ok(v) => request.filters.postgres_version = Some(v),
                    Err(e) => return Err(refuse(400, e)),
                }
            }
            "timeout" => match timeout_secs(value) {
                Some(secs) if secs > 0 => {
                    request.filters.timeout = Some(Duration::from_secs(secs));
                }
                _ => {
                    return Err(refuse(
                        400,
                        "Timeout should be a positive number of seconds".into(),
                    ));
                }
            },
            // Patroni only looks at the key's presence.
            "restart_pending" => request.filters.restart_pending = true,
            other => {
                return Err(refuse(
                    400,
                    format!("Unknown filter for the scheduled restart: {other}"),
                ));
            }
        }
    }
    Ok(request)
}

const UNPARSABLE_SCHEDULE: &str =
    "Unable to parse scheduled timestamp. It should be in an unambiguous format, e.g. ISO 8601";

/// Patroni's `parse_int(value, 's')`: a number of seconds, or a string like `30`, `30s`,
/// `2min`, `1h`.
fn timeout_secs(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 1.0).map(|f| f as u64)),
        Value::String(s) => {
            let s = s.trim();
            let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            let (digits, unit) = s.split_at(split);
            let n: u64 = digits.parse().ok()?;
            let unit_secs = match unit.trim() {
                "" | "s" => 1,
                "min" => 60,
                "h" => 3600,
                "d" => 86_400,
                _ => return None,
            };
            n.checked_mul(unit_secs)
        }
        _ => None,
    }
}

/// `POST /restart`.
pub(crate) async fn restart(state: &ApiState, body: &[u8]) -> Response {
    let paused = state.snapshot.borrow().pause;
    match restart_request(body, paused, state.clock.unix_ms()) {
        Ok(request) => {
            reply_response(ask(state, |reply| Command::Restart { request, reply }).await)
        }
        Err(refusal) => reply_response(refusal),
    }
}

/// `DELETE /restart`.
pub(crate) async fn cancel_restart(state: &ApiState) -> Response {
    reply_response(ask(state, |reply| Command::CancelRestart { reply }).await)
}

/// `DELETE /switchover`.
pub(crate) async fn cancel_switchover(state: &ApiState) -> Response {
    reply_response(ask(state, |reply| Command::CancelSwitchover { reply }).await)
}

/// `POST /reinitialize` (body optional: `{"force": bool, "from_leader": bool}`).
pub(crate) async fn reinitialize(state: &ApiState, body: &[u8]) -> Response {
    let force = if body.is_empty() {
        false
    } else {
        match json_object(body) {
            Ok(map) => match map.get("force") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return reply_response(bad_request("force must be a boolean")),
            },
            Err(refusal) => return reply_response(refusal),
        }
    };
    reply_response(ask(state, |reply| Command::Reinitialize { force, reply }).await)
}

/// `POST /reload` (the body is ignored, as Patroni ignores it).
pub(crate) async fn reload(state: &ApiState) -> Response {
    reply_response(ask(state, |reply| Command::Reload { reply }).await)
}

/// `PATCH /config`.
pub(crate) async fn patch_config(state: &ApiState, body: &[u8]) -> Response {
    match json_object(body) {
        Ok(patch) => {
            reply_response(ask(state, |reply| Command::PatchConfig { patch, reply }).await)
        }
        Err(refusal) => reply_response(refusal),
    }
}

/// `PUT /config` (Patroni's `do_PUT_config`): the body is the whole new configuration, a
/// non-empty JSON object. `If-Match: <revision>` (pgbaton only; Patroni's PUT is unconditional)
/// makes the write a compare-and-swap on the `config` key's modification revision.
pub(crate) async fn put_config(
    state: &ApiState,
    headers: &axum::http::HeaderMap,
    body: &[u8],
) -> Response {
    let config = match json_object(body) {
        Ok(c) if c.is_empty() => {
            return reply_response(bad_request("the configuration must not be empty"));
        }
        Ok(c) => c,
        Err(refusal) => return reply_response(refusal),
    };
    let expected_revision = match if_match_revision(headers) {
        Ok(r) => r,
        Err(refusal) => return reply_response(refusal),
    };
    reply_response(
        ask(state, |reply| Command::ReplaceConfig {
            config,
            expected_revision,
            reply,
        })
        .await,
    )
}

/// The `If-Match` header as a revision: an integer, bare or quoted as an entity tag.
pub(crate) fn if_match_revision(
    headers: &axum::http::HeaderMap,
) -> Result<Option<i64>, CommandReply> {
    let Some(value) = headers.get(axum::http::header::IF_MATCH) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .map(|v| v.trim().trim_matches('"'))
        .and_then(|v| v.parse::<i64>().ok())
        .filter(|r| *r > 0)
        .map(Some)
        .ok_or_else(|| {
            bad_request(
                "If-Match must be the config key's modification revision (a positive integer)",
            )
        })
}

/// JSON merge patch (RFC 7386, as Patroni's `patch_config`): objects merge recursively,
/// `null` deletes, anything else replaces.
pub fn merge_patch(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                target.remove(key);
            }
            Value::Object(p) => match target.get_mut(key) {
                Some(Value::Object(t)) => merge_patch(t, p),
                _ => {
                    let mut fresh = Map::new();
                    merge_patch(&mut fresh, p);
                    target.insert(key.clone(), Value::Object(fresh));
                }
            },
            other => {
                target.insert(key.clone(), other.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests;
