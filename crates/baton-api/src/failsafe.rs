//! DCS failsafe mode on the REST API: `POST /failsafe` (a leader that cannot renew its lease
//! asks whether it may go on) and `GET /failsafe` (the topology), with Patroni's bodies and
//! answers.
//!
//! A member accepts a `POST /failsafe` (`200 Accepted`, its received/replayed position in the
//! `lsn` header) unless failsafe mode is off (502, as Patroni), it runs as a primary itself
//! (`500 Running as a leader`, as Patroni) or — beyond Patroni — its last DCS view names
//! another leader than the sender (`500`, so a deposed primary is never kept alive). An
//! accepted request goes into the [`FailsafeInbox`] with `until` = receive time + ttl: the
//! agent's observation reads it, and `decide` keeps this member out of the leader race until
//! then.

use std::sync::{Arc, Mutex};

use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use baton_core::{FailsafePing, MemberName, Mono};
use serde_json::{Map, Value};

use crate::Snapshot;

/// The latest `POST /failsafe` this member accepted, shared between the REST API (writer) and
/// the agent's observation (reader).
#[derive(Clone, Debug, Default)]
pub struct FailsafeInbox(Arc<Mutex<Option<FailsafePing>>>);

impl FailsafeInbox {
    /// Record an accepted request; a later `until` replaces an earlier one.
    pub fn record(&self, ping: FailsafePing) {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_none_or(|old| old.until <= ping.until) {
            *slot = Some(ping);
        }
    }

    /// The latest accepted request, if any (the caller compares `until` with its clock).
    pub fn latest(&self) -> Option<FailsafePing> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The fields of Patroni's `POST /failsafe` body that matter here.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct FailsafeRequest {
    pub name: MemberName,
    pub api_url: String,
}

/// Parse Patroni's body: `{"name": .., "conn_url": .., "api_url": .., "slots": {..}}`. An
/// error names the field.
pub(crate) fn parse_request(body: &[u8]) -> Result<FailsafeRequest, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let Value::Object(map) = value else {
        return Err("the body is not a JSON object".to_owned());
    };
    let text = |map: &Map<String, Value>, field: &str| -> Result<String, String> {
        match map.get(field) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(other) => Err(format!("field `{field}`: expected a string, got {other}")),
            None => Err(format!("field `{field}` is missing")),
        }
    };
    let name = MemberName::new(text(&map, "name")?).ok_or("field `name` is empty")?;
    let api_url = text(&map, "api_url")?;
    if let Some(conn) = map.get("conn_url")
        && !conn.is_string()
    {
        return Err(format!("field `conn_url`: expected a string, got {conn}"));
    }
    Ok(FailsafeRequest { name, api_url })
}

/// Why this member refuses the sender's request (Patroni's `update_failsafe` answer), `None`
/// when it accepts.
pub(crate) fn refusal(snapshot: &Snapshot, sender: &MemberName) -> Option<String> {
    if snapshot.pg.as_ref().is_some_and(|sql| !sql.in_recovery) {
        return Some("Running as a leader".to_owned());
    }
    let leader = snapshot
        .cluster
        .as_ref()
        .and_then(|c| c.leader_name())
        .filter(|l| *l != sender);
    leader.map(|l| format!("The leader is {l}"))
}

/// How this member answers a `POST /failsafe` with `body` at `now` (recording it when
/// accepted): the status code and the text (`None`: Patroni's error page for the code). The
/// REST API's handler and the simulator's peers both answer through this.
pub fn answer_post(
    snapshot: &Snapshot,
    inbox: &FailsafeInbox,
    now: Mono,
    body: &[u8],
) -> (StatusCode, Option<String>) {
    if !snapshot.failsafe_mode {
        return (StatusCode::BAD_GATEWAY, None);
    }
    let request = match parse_request(body) {
        Ok(r) => r,
        Err(why) => {
            return (
                StatusCode::BAD_REQUEST,
                Some(format!("POST /failsafe: {why}")),
            );
        }
    };
    if let Some(why) = refusal(snapshot, &request.name) {
        return (StatusCode::INTERNAL_SERVER_ERROR, Some(why));
    }
    inbox.record(FailsafePing {
        leader: request.name,
        until: now + snapshot.ttl,
    });
    (StatusCode::OK, Some("Accepted".to_owned()))
}

/// Answer `POST /failsafe`.
pub(crate) fn post(snapshot: &Snapshot, inbox: &FailsafeInbox, now: Mono, body: &[u8]) -> Response {
    let (code, text) = answer_post(snapshot, inbox, now, body);
    let Some(text) = text else {
        return crate::handlers::error_page(code, None);
    };
    let mut response = crate::handlers::text_response(code, &text);
    if code != StatusCode::OK {
        return response;
    }
    let lsn = snapshot
        .pg
        .as_ref()
        .and_then(|sql| sql.received_lsn.max(sql.replayed_lsn));
    if let Some(lsn) = lsn
        && let Ok(value) = HeaderValue::from_str(&lsn.0.to_string())
    {
        response.headers_mut().insert("lsn", value);
    }
    response
}

/// Answer `GET /failsafe`: the topology from the last DCS view while failsafe mode is on,
/// otherwise 502 (Patroni's answer when it has no topology).
pub(crate) fn get(snapshot: &Snapshot) -> Response {
    let topology = snapshot
        .cluster
        .as_ref()
        .and_then(|c| c.failsafe.as_ref())
        .filter(|_| snapshot.failsafe_mode);
    match topology {
        Some(t) => {
            let doc: Map<String, Value> = t
                .iter()
                .map(|(name, url)| (name.to_string(), Value::String(url.clone())))
                .collect();
            crate::handlers::json_response(StatusCode::OK, &doc)
        }
        None => crate::handlers::error_page(StatusCode::BAD_GATEWAY, None),
    }
}
