//! Pure encoding and decoding of every record under the cluster prefix, byte-compatible with
//! Patroni 4.1.
//!
//! Encoders produce exactly what Patroni's `json.dumps(value, separators=(',', ':'))` produces:
//! compact JSON, keys in Patroni's order, non-ASCII characters escaped as `\uXXXX`
//! (`ensure_ascii=True`). Decoders accept everything Patroni (current and legacy versions)
//! writes; a value that cannot be understood is skipped and reported as a warning naming its key
//! relative to the prefix (`members/n3: invalid JSON ...`). Nothing here panics on input.
//!
//! Deliberate choices where Patroni has no single answer:
//! - member `tags` are written with their keys sorted (Patroni keeps its configuration file's
//!   order, which readers never depend on);
//! - a member role `master` (Patroni < 3.0) decodes as `primary`;
//! - a `sync` value that is not understood decodes as [`SyncKey::Unreadable`] with the key's
//!   `mod_revision`: it blocks a promotion in synchronous mode as a `sync` naming someone else
//!   does, and the leader overwrites it with compare-and-swap. (Patroni reads it as an empty
//!   state, `SyncState.empty(version)`, which lets anyone be promoted.)
//! - `failsafe` is written in member-name order (Patroni writes its members' order, then
//!   itself); a value that is not an object of strings is skipped with a warning (Patroni
//!   treats it as no topology: its leader then demotes in an outage, its members may race).
//! - a `leader` value that is not understood still makes a [`LeaderKey`] (with no name) with the
//!   key's lease and revisions: the key exists and belongs to its lease whatever it holds.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use baton_core::{
    ClusterView, FailoverRequest, FailsafeTopology, HistoryLine, LeaderKey, LeaderStatus, Lsn,
    Member, MemberName, SyncKey, SyncState, Tags, Timeline, Versioned,
};
use serde_json::{Map, Value};

/// `initialize`: the database system identifier, `""` while a bootstrap runs.
pub const INITIALIZE: &str = "initialize";
/// `config`: the dynamic configuration (compact JSON).
pub const CONFIG: &str = "config";
/// `leader`: the leader's member name (plain text), attached to its lease.
pub const LEADER: &str = "leader";
/// `members/<name>`: one member record per agent, attached to its lease.
pub const MEMBERS: &str = "members/";
/// `failover`: a pending switchover/failover request.
pub const FAILOVER: &str = "failover";
/// `sync`: the synchronous replication state.
pub const SYNC: &str = "sync";
/// `history`: timeline history lines.
pub const HISTORY: &str = "history";
/// `status`: the leader's last WAL position and slot positions.
pub const STATUS: &str = "status";
/// `failsafe`: the failsafe topology the leader maintains (`{"name": "api_url", ...}`).
pub const FAILSAFE: &str = "failsafe";
/// `optime/leader`: the legacy (Patroni < 2.1) place of the leader's WAL position.
pub const LEADER_OPTIME: &str = "optime/leader";

/// The member key of `name`, relative to the prefix.
pub fn member_key(name: &MemberName) -> String {
    format!("{MEMBERS}{}", name.as_str())
}

/// Why a value could not be decoded. The message never repeats the key; callers prefix it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(String);

impl DecodeError {
    fn new(msg: impl Into<String>) -> DecodeError {
        DecodeError(msg.into())
    }
}

// ---------------------------------------------------------------------------------------------
// Python-compatible JSON output
// ---------------------------------------------------------------------------------------------

/// A JSON string literal as Python's `json.dumps` writes it with `ensure_ascii=True`.
fn py_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}

/// A float as Python's `repr` writes it (`1.0`, `0.1`, `1e+16`, `1e-05`).
fn py_float(out: &mut String, f: f64) {
    if !f.is_finite() {
        // Python writes NaN/Infinity, which is not JSON; serde_json never produces them.
        out.push_str("null");
        return;
    }
    let s = format!("{f:?}");
    match s.split_once('e') {
        None => out.push_str(&s),
        Some((mantissa, exp)) => {
            let (sign, digits) = match exp.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', exp),
            };
            let _ = write!(out, "{mantissa}e{sign}{digits:0>2}");
        }
    }
}

/// Any JSON value in Python's compact style (object keys in `serde_json`'s order).
fn py_value(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if n.is_i64() || n.is_u64() {
                let _ = write!(out, "{n}");
            } else if let Some(f) = n.as_f64() {
                py_float(out, f);
            } else {
                let _ = write!(out, "{n}");
            }
        }
        Value::String(s) => py_str(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                py_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut obj = ObjWriter::new(out);
            for (k, item) in map {
                py_value(obj.key(k), item);
            }
            obj.end();
        }
    }
}

/// Writes `{"k":v,...}` in the order keys are added.
struct ObjWriter<'a> {
    out: &'a mut String,
    first: bool,
}

impl<'a> ObjWriter<'a> {
    fn new(out: &'a mut String) -> ObjWriter<'a> {
        out.push('{');
        ObjWriter { out, first: true }
    }

    /// Writes the key and the colon; the caller writes the value into the returned buffer.
    fn key(&mut self, k: &str) -> &mut String {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        py_str(self.out, k);
        self.out.push(':');
        self.out
    }

    fn str(&mut self, k: &str, v: &str) {
        py_str(self.key(k), v);
    }

    fn uint(&mut self, k: &str, v: u64) {
        let _ = write!(self.key(k), "{v}");
    }

    fn int(&mut self, k: &str, v: i64) {
        let _ = write!(self.key(k), "{v}");
    }

    fn bool(&mut self, k: &str, v: bool) {
        self.key(k).push_str(if v { "true" } else { "false" });
    }

    fn null(&mut self, k: &str) {
        self.key(k).push_str("null");
    }

    fn end(self) {
        self.out.push('}');
    }
}

// ---------------------------------------------------------------------------------------------
// Encoders
// ---------------------------------------------------------------------------------------------

const PREDEFINED_TAGS: [&str; 8] = [
    "clonefrom",
    "failover_priority",
    "nofailover",
    "noloadbalance",
    "nostream",
    "nosync",
    "replicatefrom",
    "sync_priority",
];

/// The tags Patroni publishes (`Tags._filter_tags`): predefined booleans only when true, except
/// `nofailover`/`nosync`, which are kept (even when false) while the matching priority tag
/// exists; custom tags as stored. Keys sorted. `None` when there is nothing to publish (Patroni
/// then omits `tags`).
fn encode_tags(tags: &Tags) -> Option<String> {
    let mut entries: BTreeMap<&str, String> = BTreeMap::new();
    let bool_text = |b: bool| if b { "true" } else { "false" }.to_owned();
    if tags.clonefrom {
        entries.insert("clonefrom", bool_text(true));
    }
    if let Some(p) = tags.failover_priority {
        entries.insert("failover_priority", p.to_string());
    }
    match tags.nofailover {
        Some(true) => {
            entries.insert("nofailover", bool_text(true));
        }
        Some(false) if tags.failover_priority.is_some() => {
            entries.insert("nofailover", bool_text(false));
        }
        _ => {}
    }
    if tags.noloadbalance {
        entries.insert("noloadbalance", bool_text(true));
    }
    if tags.nostream {
        entries.insert("nostream", bool_text(true));
    }
    match tags.nosync {
        Some(true) => {
            entries.insert("nosync", bool_text(true));
        }
        Some(false) if tags.sync_priority.is_some() => {
            entries.insert("nosync", bool_text(false));
        }
        _ => {}
    }
    if let Some(r) = &tags.replicatefrom {
        let mut s = String::new();
        py_str(&mut s, r);
        entries.insert("replicatefrom", s);
    }
    if let Some(p) = tags.sync_priority {
        entries.insert("sync_priority", p.to_string());
    }
    for (name, text) in &tags.custom {
        if PREDEFINED_TAGS.contains(&name.as_str()) {
            continue; // the typed field wins
        }
        let mut s = String::new();
        match serde_json::from_str::<Value>(text) {
            Ok(v) => py_value(&mut s, &v),
            // Not JSON text: publish it as the string it is.
            Err(_) => py_str(&mut s, text),
        }
        entries.insert(name.as_str(), s);
    }
    if entries.is_empty() {
        return None;
    }
    let mut out = String::new();
    let mut obj = ObjWriter::new(&mut out);
    for (k, v) in &entries {
        obj.key(k).push_str(v);
    }
    obj.end();
    Some(out)
}

/// `members/<name>` as Patroni's `Ha.touch_member` writes it: `conn_url`, `api_url`, `state`,
/// `role`, `version`, `tags`, `pending_restart`, `xlog_location`, `replay_lsn`, `receive_lsn`,
/// `replication_state`, `timeline`, `pause`; absent fields omitted.
pub fn encode_member(m: &Member) -> String {
    let mut out = String::with_capacity(256);
    let mut obj = ObjWriter::new(&mut out);
    if let Some(v) = &m.conn_url {
        obj.str("conn_url", v);
    }
    if let Some(v) = &m.api_url {
        obj.str("api_url", v);
    }
    obj.str("state", &m.state);
    obj.str("role", &m.role);
    if let Some(v) = &m.version {
        obj.str("version", v);
    }
    if let Some(tags) = encode_tags(&m.tags) {
        obj.key("tags").push_str(&tags);
    }
    if m.pending_restart {
        obj.bool("pending_restart", true);
    }
    if let Some(schedule) = &m.scheduled_restart {
        let out = obj.key("scheduled_restart");
        let mut inner = ObjWriter::new(out);
        inner.str("schedule", schedule);
        inner.end();
    }
    if let Some(v) = m.xlog_location {
        obj.uint("xlog_location", v.0);
    }
    if let Some(v) = m.replay_lsn {
        obj.uint("replay_lsn", v.0);
    }
    if let Some(v) = m.receive_lsn {
        obj.uint("receive_lsn", v.0);
    }
    if let Some(v) = &m.replication_state {
        obj.str("replication_state", v);
    }
    if let Some(v) = m.timeline {
        obj.uint("timeline", u64::from(v.0));
    }
    if m.pause {
        obj.bool("pause", true);
    }
    if let Some(reason) = &m.reason {
        obj.str("pgbaton_reason", reason);
    }
    obj.end();
    out
}

/// `status` as Patroni's `write_status` writes it: `{"optime":N}` plus `"slots":{..}` when there
/// are slots and `"retain_slots":[..]` when there are retained member slots (Patroni drops
/// `None` values, and an empty map or list is `None`).
pub fn encode_status(optime: Lsn, slots: &[(String, Lsn)], retain_slots: &[String]) -> String {
    let mut out = String::with_capacity(64);
    let mut obj = ObjWriter::new(&mut out);
    obj.uint("optime", optime.0);
    if !slots.is_empty() {
        let out = obj.key("slots");
        let mut inner = ObjWriter::new(out);
        for (i, (name, lsn)) in slots.iter().enumerate() {
            // A Python dict keeps one entry per name (the last value, at the first position).
            if slots[..i].iter().any(|(n, _)| n == name) {
                continue;
            }
            let last = slots
                .iter()
                .rev()
                .find(|(n, _)| n == name)
                .map_or(*lsn, |(_, l)| *l);
            inner.uint(name, last.0);
        }
        inner.end();
    }
    if !retain_slots.is_empty() {
        let out = obj.key("retain_slots");
        out.push('[');
        for (i, name) in retain_slots.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            py_str(out, name);
        }
        out.push(']');
    }
    obj.end();
    out
}

/// `history`: `[[timeline, lsn, reason, timestamp, new_leader], ...]`; lines without a
/// timestamp have 3 elements, lines without a new leader 4.
pub fn encode_history(lines: &[HistoryLine]) -> String {
    let mut out = String::from("[");
    for (i, line) in lines.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "[{},{},", line.timeline.0, line.lsn.0);
        py_str(&mut out, &line.reason);
        match (&line.timestamp, &line.new_leader) {
            (None, None) => {}
            (Some(ts), None) => {
                out.push(',');
                py_str(&mut out, ts);
            }
            (ts, Some(leader)) => {
                out.push(',');
                match ts {
                    Some(ts) => py_str(&mut out, ts),
                    None => out.push_str("null"),
                }
                out.push(',');
                py_str(&mut out, leader);
            }
        }
        out.push(']');
    }
    out.push(']');
    out
}

/// `failover` as `AbstractDCS.manual_failover` writes it: only the fields that are set;
/// `{}` clears a request.
pub fn encode_failover(f: &FailoverRequest) -> String {
    let mut out = String::new();
    let mut obj = ObjWriter::new(&mut out);
    if let Some(l) = &f.leader {
        obj.str("leader", l.as_str());
    }
    if let Some(c) = &f.candidate {
        obj.str("member", c.as_str());
    }
    if let Some(s) = &f.scheduled_at {
        obj.str("scheduled_at", s);
    }
    obj.end();
    out
}

/// `sync` as `AbstractDCS.sync_state` writes it: always `leader`, `quorum` and `sync_standby`
/// (names sorted and comma-joined, `null` when there are none).
pub fn encode_sync(s: &SyncState) -> String {
    let mut out = String::new();
    let mut obj = ObjWriter::new(&mut out);
    match &s.leader {
        Some(l) => obj.str("leader", l.as_str()),
        None => obj.null("leader"),
    }
    obj.int("quorum", i64::from(s.quorum));
    if s.sync_standby.is_empty() {
        obj.null("sync_standby");
    } else {
        let names: BTreeSet<&str> = s.sync_standby.iter().map(MemberName::as_str).collect();
        let joined = names.into_iter().collect::<Vec<_>>().join(",");
        obj.str("sync_standby", &joined);
    }
    obj.end();
    out
}

/// `failsafe` as Patroni's leader writes it (`json.dumps(failsafe, separators=(',', ':'))`):
/// one object, member name → REST API URL, in name order.
pub fn encode_failsafe(topology: &FailsafeTopology) -> String {
    let mut out = String::new();
    let mut obj = ObjWriter::new(&mut out);
    for (name, url) in topology {
        obj.str(name.as_str(), url);
    }
    obj.end();
    out
}

/// Decodes `failsafe`: a JSON object whose values are the members' REST API URLs. Anything
/// else is an error naming what is wrong (Patroni treats a non-object as no topology).
pub fn decode_failsafe(value: &str) -> Result<FailsafeTopology, DecodeError> {
    let map = parse_object(value)?;
    let mut topology = FailsafeTopology::new();
    for (name, url) in map {
        let Some(member) = MemberName::new(name.clone()) else {
            return Err(DecodeError::new("empty member name"));
        };
        match url {
            Value::String(url) => {
                topology.insert(member, url);
            }
            other => return Err(type_error(&name, "a string (the api_url)", &other)),
        }
    }
    Ok(topology)
}

// ---------------------------------------------------------------------------------------------
// Decoding helpers
// ---------------------------------------------------------------------------------------------

/// A short, printable rendering of a value for error messages.
fn snippet(text: &str) -> String {
    const MAX: usize = 60;
    let mut s: String = text.chars().take(MAX).collect();
    if text.chars().count() > MAX {
        s.push_str("...");
    }
    format!("{s:?}")
}

fn value_snippet(v: &Value) -> String {
    const MAX: usize = 60;
    let text = v.to_string();
    if text.chars().count() > MAX {
        let mut s: String = text.chars().take(MAX).collect();
        s.push_str("...");
        s
    } else {
        text
    }
}

fn parse_json(text: &str) -> Result<Value, DecodeError> {
    serde_json::from_str(text)
        .map_err(|e| DecodeError::new(format!("invalid JSON ({e}): {}", snippet(text))))
}

fn parse_object(text: &str) -> Result<Map<String, Value>, DecodeError> {
    match parse_json(text)? {
        Value::Object(map) => Ok(map),
        other => Err(DecodeError::new(format!(
            "expected a JSON object, got {}",
            value_snippet(&other)
        ))),
    }
}

fn type_error(field: &str, expected: &str, got: &Value) -> DecodeError {
    DecodeError::new(format!(
        "field `{field}`: expected {expected}, got {}",
        value_snippet(got)
    ))
}

/// Absent or `null` → `None`; a string → `Some`; anything else is an error.
fn opt_str(map: &Map<String, Value>, field: &str) -> Result<Option<String>, DecodeError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(type_error(field, "a string", other)),
    }
}

fn opt_bool(map: &Map<String, Value>, field: &str) -> Result<Option<bool>, DecodeError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(type_error(field, "a boolean", other)),
    }
}

/// Patroni's `parse_int` as used for WAL positions: an integer, or a string holding one.
fn as_uint(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    }
}

fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    }
}

fn opt_uint(map: &Map<String, Value>, field: &str) -> Result<Option<u64>, DecodeError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => as_uint(v)
            .map(Some)
            .ok_or_else(|| type_error(field, "a non-negative integer", v)),
    }
}

/// Python truthiness (`bool(value)`).
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// Patroni's `parse_bool` (used for `nostream`).
fn parse_bool(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => {
            let s = s.trim().to_ascii_lowercase();
            ["on", "true", "tru", "tr", "t", "yes", "ye", "y", "1"].contains(&s.as_str())
        }
        _ => false,
    }
}

fn name_or_none(s: Option<String>) -> Option<MemberName> {
    s.and_then(MemberName::new)
}

// ---------------------------------------------------------------------------------------------
// Decoders
// ---------------------------------------------------------------------------------------------

/// Tags with Patroni's lenient semantics (`patroni/tags.py`): the booleans use Python
/// truthiness, priorities use `parse_int`, unknown tags are kept as compact JSON text.
fn decode_tags(v: Option<&Value>) -> Result<Tags, DecodeError> {
    let map = match v {
        None | Some(Value::Null) => return Ok(Tags::default()),
        Some(Value::Object(map)) => map,
        Some(other) => return Err(type_error("tags", "an object", other)),
    };
    let mut tags = Tags::default();
    for (name, value) in map {
        match name.as_str() {
            "nofailover" => {
                tags.nofailover = (!value.is_null()).then(|| truthy(value));
            }
            "nosync" => tags.nosync = (!value.is_null()).then(|| truthy(value)),
            "failover_priority" => tags.failover_priority = as_int(value),
            "sync_priority" => tags.sync_priority = as_int(value),
            "noloadbalance" => tags.noloadbalance = truthy(value),
            "clonefrom" => tags.clonefrom = truthy(value),
            "nostream" => tags.nostream = parse_bool(value),
            "replicatefrom" => {
                tags.replicatefrom = value.as_str().filter(|s| !s.is_empty()).map(str::to_owned);
            }
            _ => {
                tags.custom.insert(name.clone(), value.to_string());
            }
        }
    }
    Ok(tags)
}

/// Python's `urllib.parse.unquote_plus`, for legacy member values.
fn unquote_plus(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The Governor-era member value `postgres://user:pass@host:port/postgres?application_name=<api>`
/// (`parse_connection_string`): the URL without its query is `conn_url`, `application_name` is
/// `api_url`.
fn decode_legacy_member(name: MemberName, value: &str, lease: i64) -> Member {
    let (before_fragment, fragment) = match value.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (value, None),
    };
    let (base, query) = match before_fragment.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (before_fragment, None),
    };
    let mut conn_url = base.to_owned();
    if let Some(f) = fragment {
        conn_url.push('#');
        conn_url.push_str(f);
    }
    let api_url = query.and_then(|q| {
        q.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (unquote_plus(k) == "application_name").then(|| unquote_plus(v))
        })
    });
    Member {
        name,
        conn_url: Some(conn_url),
        api_url: api_url.filter(|s| !s.is_empty()),
        state: "unknown".to_owned(),
        role: String::new(),
        lease,
        ..Member::default()
    }
}

/// `conn_url` from `conn_kwargs` (Patroni's `Member.conn_url` fallback): `postgresql://host:port/`.
fn conn_url_from_kwargs(v: Option<&Value>) -> Option<String> {
    let map = v?.as_object()?;
    let host = map.get("host")?.as_str()?;
    let port = map.get("port").and_then(as_uint).unwrap_or(5432);
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    Some(format!("postgresql://{host}:{port}/"))
}

/// Decodes `members/<name>`. Accepts Patroni's JSON (any version) and the legacy
/// `postgres://...?application_name=` form.
pub fn decode_member(name: MemberName, value: &str, lease: i64) -> Result<Member, DecodeError> {
    if value.starts_with("postgres") {
        return Ok(decode_legacy_member(name, value, lease));
    }
    let map = parse_object(value)?;
    let conn_url = opt_str(&map, "conn_url")?
        .filter(|s| !s.is_empty())
        .or_else(|| conn_url_from_kwargs(map.get("conn_kwargs")));
    let mut role = opt_str(&map, "role")?.unwrap_or_default();
    if role == "master" {
        role = "primary".to_owned();
    }
    let timeline = match map.get("timeline") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let t = as_uint(v).and_then(|t| u32::try_from(t).ok());
            Some(Timeline(t.ok_or_else(|| {
                type_error("timeline", "a timeline number", v)
            })?))
        }
    };
    Ok(Member {
        name,
        conn_url,
        api_url: opt_str(&map, "api_url")?,
        state: opt_str(&map, "state")?.unwrap_or_else(|| "unknown".to_owned()),
        role,
        version: opt_str(&map, "version")?,
        tags: decode_tags(map.get("tags"))?,
        xlog_location: opt_uint(&map, "xlog_location")?.map(Lsn),
        receive_lsn: opt_uint(&map, "receive_lsn")?.map(Lsn),
        replay_lsn: opt_uint(&map, "replay_lsn")?.map(Lsn),
        replication_state: opt_str(&map, "replication_state")?,
        timeline,
        pending_restart: opt_bool(&map, "pending_restart")?.unwrap_or(false),
        scheduled_restart: match map.get("scheduled_restart") {
            Some(Value::Object(s)) => opt_str(s, "schedule")
                .map_err(|e| DecodeError::new(format!("scheduled_restart: {e}")))?,
            None | Some(Value::Null) => None,
            Some(other) => return Err(type_error("scheduled_restart", "an object", other)),
        },
        pause: opt_bool(&map, "pause")?.unwrap_or(false),
        reason: opt_str(&map, "pgbaton_reason")?,
        lease,
    })
}

/// Decodes the `leader` value (a plain member name).
pub fn decode_leader(value: &str) -> Result<MemberName, DecodeError> {
    MemberName::new(value).ok_or_else(|| DecodeError::new("empty leader name"))
}

/// Checks that `config` holds a JSON object (Patroni treats anything else as no configuration).
pub fn decode_config(value: &str) -> Result<String, DecodeError> {
    parse_object(value).map(|_| value.to_owned())
}

/// Decodes `failover`. `Ok(None)` for `{}`, an empty value, `null` and requests that name
/// neither a leader nor a candidate (Patroni's `len(failover) == 0`). Non-JSON text is the legacy
/// `leader:candidate` form.
pub fn decode_failover(value: &str) -> Result<Option<FailoverRequest>, DecodeError> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Ok(None);
    }
    let map = match serde_json::from_str::<Value>(trimmed) {
        Ok(Value::Object(map)) => map,
        Ok(Value::Null) => return Ok(None),
        Ok(other) => {
            return Err(DecodeError::new(format!(
                "expected a JSON object, got {}",
                value_snippet(&other)
            )));
        }
        Err(e) if trimmed.starts_with(['{', '[', '"']) => {
            return Err(DecodeError::new(format!(
                "invalid JSON ({e}): {}",
                snippet(value)
            )));
        }
        Err(_) => {
            let mut parts = value.split(':').map(str::trim);
            let leader = parts.next().and_then(MemberName::new);
            let candidate = parts.next().and_then(MemberName::new);
            if leader.is_none() && candidate.is_none() {
                return Ok(None);
            }
            return Ok(Some(FailoverRequest {
                leader,
                candidate,
                scheduled_at: None,
            }));
        }
    };
    let leader = name_or_none(opt_str(&map, "leader")?);
    let candidate = name_or_none(opt_str(&map, "member")?);
    let scheduled_at = opt_str(&map, "scheduled_at")?.filter(|s| !s.is_empty());
    if leader.is_none() && candidate.is_none() {
        return Ok(None);
    }
    Ok(Some(FailoverRequest {
        leader,
        candidate,
        scheduled_at,
    }))
}

/// Decodes `sync` (`SyncState.from_node`): `quorum` counts only when a leader is named;
/// `sync_standby` is a comma-separated list or `null`. `null`/empty → an empty state.
pub fn decode_sync(value: &str) -> Result<SyncState, DecodeError> {
    if value.trim().is_empty() {
        return Ok(SyncState::default());
    }
    let map = match parse_json(value)? {
        Value::Object(map) => map,
        Value::Null => return Ok(SyncState::default()),
        other => {
            return Err(DecodeError::new(format!(
                "expected a JSON object, got {}",
                value_snippet(&other)
            )));
        }
    };
    let leader = name_or_none(opt_str(&map, "leader")?);
    let sync_standby = opt_str(&map, "sync_standby")?
        .map(|s| {
            s.split(',')
                .filter_map(|n| MemberName::new(n.trim()))
                .collect()
        })
        .unwrap_or_default();
    let quorum = match map.get("quorum") {
        None | Some(Value::Null) => 0,
        Some(v) => {
            let q = as_int(v).and_then(|q| u32::try_from(q).ok());
            q.ok_or_else(|| type_error("quorum", "a non-negative integer", v))?
        }
    };
    let quorum = if leader.is_some() { quorum } else { 0 };
    Ok(SyncState {
        leader,
        sync_standby,
        quorum,
    })
}

fn decode_history_line(i: usize, line: &Value) -> Result<HistoryLine, DecodeError> {
    let bad =
        |what: &str| DecodeError::new(format!("line {i}: {what}, got {}", value_snippet(line)));
    let items = line.as_array().ok_or_else(|| bad("expected a list"))?;
    if items.len() < 3 {
        return Err(bad("expected at least [timeline, lsn, reason]"));
    }
    let timeline = as_uint(&items[0])
        .and_then(|t| u32::try_from(t).ok())
        .ok_or_else(|| bad("timeline is not a number"))?;
    let lsn = as_uint(&items[1]).ok_or_else(|| bad("lsn is not a number"))?;
    let reason = match &items[2] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let text_at = |idx: usize| -> Result<Option<String>, DecodeError> {
        match items.get(idx) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(bad("timestamp and new leader must be strings")),
        }
    };
    Ok(HistoryLine {
        timeline: Timeline(timeline),
        lsn: Lsn(lsn),
        reason,
        timestamp: text_at(3)?,
        new_leader: text_at(4)?,
    })
}

/// Decodes `history`: a list of 3–5 element lines.
pub fn decode_history(value: &str) -> Result<Vec<HistoryLine>, DecodeError> {
    match parse_json(value)? {
        Value::Array(lines) => lines
            .iter()
            .enumerate()
            .map(|(i, l)| decode_history_line(i, l))
            .collect(),
        other => Err(DecodeError::new(format!(
            "expected a JSON list, got {}",
            value_snippet(&other)
        ))),
    }
}

/// Decodes `status` (or the legacy `optime/leader`), as `Status.from_node`: a bare integer is the
/// optime; `slots` and `retain_slots` may be JSON text themselves. Unusable `slots` or
/// `retain_slots` are dropped and reported in the second element; the optime still counts.
pub fn decode_status(value: &str) -> Result<(LeaderStatus, Vec<String>), DecodeError> {
    let map = match parse_json(value)? {
        Value::Number(n) => {
            let optime = n
                .as_u64()
                .ok_or_else(|| DecodeError::new(format!("invalid optime {n}")))?;
            return Ok((
                LeaderStatus {
                    optime: Lsn(optime),
                    ..LeaderStatus::default()
                },
                Vec::new(),
            ));
        }
        Value::Object(map) => map,
        other => {
            return Err(DecodeError::new(format!(
                "expected a JSON object, got {}",
                value_snippet(&other)
            )));
        }
    };
    let mut problems = Vec::new();
    let optime = match map.get("optime") {
        None | Some(Value::Null) => 0,
        Some(v) => as_uint(v).ok_or_else(|| type_error("optime", "a non-negative integer", v))?,
    };
    let unwrap_text = |v: Option<&Value>| -> Option<Value> {
        match v {
            Some(Value::String(s)) => serde_json::from_str(s)
                .ok()
                .or(Some(Value::String(s.clone()))),
            other => other.cloned(),
        }
    };
    let mut slots = BTreeMap::new();
    match unwrap_text(map.get("slots")) {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (name, v) in m {
                match as_uint(&v) {
                    Some(lsn) => {
                        slots.insert(name, Lsn(lsn));
                    }
                    None => problems.push(format!(
                        "ignoring slot {name:?}: expected a position, got {}",
                        value_snippet(&v)
                    )),
                }
            }
        }
        Some(other) => problems.push(format!(
            "ignoring `slots`: expected an object, got {}",
            value_snippet(&other)
        )),
    }
    let mut retain_slots = Vec::new();
    match unwrap_text(map.get("retain_slots")) {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            retain_slots.extend(items.iter().filter_map(|v| v.as_str().map(str::to_owned)));
        }
        Some(other) => problems.push(format!(
            "ignoring `retain_slots`: expected a list, got {}",
            value_snippet(&other)
        )),
    }
    Ok((
        LeaderStatus {
            optime: Lsn(optime),
            slots,
            retain_slots,
        },
        problems,
    ))
}

// ---------------------------------------------------------------------------------------------
// The whole prefix
// ---------------------------------------------------------------------------------------------

/// One key-value pair as read from the store, its key relative to the cluster prefix.
#[derive(Clone, Copy, Debug)]
pub struct RawKv<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub lease: i64,
    pub create_revision: i64,
    pub mod_revision: i64,
}

/// Builds a [`ClusterView`] from one snapshot of the prefix (Patroni's `_cluster_from_nodes`).
/// Undecodable values are named in `warnings` and skipped, except `leader` (a [`LeaderKey`]
/// without a name) and `sync` ([`SyncKey::Unreadable`]); unknown keys are ignored.
pub fn decode_cluster<'a>(revision: i64, kvs: impl IntoIterator<Item = RawKv<'a>>) -> ClusterView {
    let mut view = ClusterView {
        revision,
        ..ClusterView::default()
    };
    let mut warnings: Vec<String> = Vec::new();
    let mut status: Option<(RawKv<'a>, &'a str)> = None;
    let mut legacy_optime: Option<(RawKv<'a>, &'a str)> = None;
    for kv in kvs {
        let key = String::from_utf8_lossy(kv.key);
        let Ok(key_str) = std::str::from_utf8(kv.key) else {
            warnings.push(format!("{key}: key is not valid UTF-8"));
            continue;
        };
        let relevant = matches!(
            key_str,
            INITIALIZE
                | CONFIG
                | LEADER
                | FAILOVER
                | SYNC
                | HISTORY
                | STATUS
                | LEADER_OPTIME
                | FAILSAFE
        ) || key_str
            .strip_prefix(MEMBERS)
            .is_some_and(|n| !n.contains('/'));
        if !relevant {
            continue;
        }
        let value =
            std::str::from_utf8(kv.value).map_err(|_| DecodeError::new("value is not valid UTF-8"));
        let mut warn = |e: DecodeError| warnings.push(format!("{key_str}: {e}"));
        // The leader and sync keys count even when their value does not decode.
        let value = match (key_str, value) {
            (LEADER, value) => {
                let name = value.and_then(decode_leader).map_err(&mut warn).ok();
                view.leader = Some(LeaderKey {
                    name,
                    lease: kv.lease,
                    create_revision: kv.create_revision,
                    mod_revision: kv.mod_revision,
                });
                continue;
            }
            (SYNC, value) => {
                view.sync = match value.and_then(decode_sync) {
                    Ok(value) => SyncKey::Present(Versioned {
                        value,
                        mod_revision: kv.mod_revision,
                    }),
                    Err(e) => {
                        let why = e.to_string();
                        warn(e);
                        SyncKey::Unreadable {
                            why,
                            mod_revision: kv.mod_revision,
                        }
                    }
                };
                continue;
            }
            (_, Err(e)) => {
                warn(e);
                continue;
            }
            (_, Ok(value)) => value,
        };
        match key_str {
            INITIALIZE => view.initialize = Some(value.to_owned()),
            CONFIG => match decode_config(value) {
                Ok(json) => {
                    view.config = Some(Versioned {
                        value: json,
                        mod_revision: kv.mod_revision,
                    })
                }
                Err(e) => warn(e),
            },
            FAILOVER => match decode_failover(value) {
                Ok(f) => {
                    view.failover = f.map(|value| Versioned {
                        value,
                        mod_revision: kv.mod_revision,
                    });
                }
                Err(e) => warn(e),
            },
            HISTORY => match decode_history(value) {
                Ok(lines) => view.history = lines,
                Err(e) => warn(e),
            },
            FAILSAFE => match decode_failsafe(value) {
                Ok(topology) => view.failsafe = Some(topology),
                Err(e) => warn(e),
            },
            STATUS => status = Some((kv, value)),
            LEADER_OPTIME => legacy_optime = Some((kv, value)),
            _ => {
                let name = &key_str[MEMBERS.len()..];
                let Some(name) = MemberName::new(name) else {
                    warn(DecodeError::new("empty member name"));
                    continue;
                };
                match decode_member(name, value, kv.lease) {
                    Ok(m) => view.members.push(m),
                    Err(e) => warn(e),
                }
            }
        }
    }
    view.warnings = warnings;
    // Patroni: `nodes.get(STATUS) or nodes.get(LEADER_OPTIME)`.
    if let Some((kv, value)) = status.or(legacy_optime) {
        let key = String::from_utf8_lossy(kv.key);
        match decode_status(value) {
            Ok((s, problems)) => {
                view.warnings
                    .extend(problems.into_iter().map(|p| format!("{key}: {p}")));
                view.status = Some(s);
            }
            Err(e) => view.warnings.push(format!("{key}: {e}")),
        }
    }
    view.members.sort_by(|a, b| a.name.cmp(&b.name));
    view
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    fn name(s: &str) -> MemberName {
        MemberName::new(s).unwrap()
    }

    fn replica() -> Member {
        Member {
            name: name("node2"),
            conn_url: Some("postgres://10.0.0.2:5432/postgres".into()),
            api_url: Some("http://10.0.0.2:8008/patroni".into()),
            state: "running".into(),
            role: "replica".into(),
            version: Some("4.1.0".into()),
            tags: Tags::default(),
            xlog_location: Some(Lsn(50_331_800)),
            receive_lsn: Some(Lsn(50_331_800)),
            replay_lsn: Some(Lsn(50_331_648)),
            replication_state: Some("streaming".into()),
            timeline: Some(Timeline(2)),
            pending_restart: false,
            scheduled_restart: None,
            pause: false,
            reason: None,
            lease: 7,
        }
    }

    #[test]
    fn member_replica_golden() {
        expect![[r#"{"conn_url":"postgres://10.0.0.2:5432/postgres","api_url":"http://10.0.0.2:8008/patroni","state":"running","role":"replica","version":"4.1.0","xlog_location":50331800,"replay_lsn":50331648,"receive_lsn":50331800,"replication_state":"streaming","timeline":2}"#]]
            .assert_eq(&encode_member(&replica()));
    }

    #[test]
    fn member_minimal_golden_omits_absent_fields() {
        let m = Member {
            name: name("n1"),
            state: "stopped".into(),
            role: "uninitialized".into(),
            ..Member::default()
        };
        expect![[r#"{"state":"stopped","role":"uninitialized"}"#]].assert_eq(&encode_member(&m));
    }

    #[test]
    fn member_all_fields_golden_in_patroni_order() {
        let mut m = replica();
        m.role = "primary".into();
        m.pending_restart = true;
        m.pause = true;
        m.tags.nofailover = Some(false);
        m.tags.failover_priority = Some(2);
        m.tags.clonefrom = true;
        m.tags.custom.insert("zone".into(), "\"eu-1\"".into());
        m.tags.custom.insert("rack".into(), "3".into());
        expect![[r#"{"conn_url":"postgres://10.0.0.2:5432/postgres","api_url":"http://10.0.0.2:8008/patroni","state":"running","role":"primary","version":"4.1.0","tags":{"clonefrom":true,"failover_priority":2,"nofailover":false,"rack":3,"zone":"eu-1"},"pending_restart":true,"xlog_location":50331800,"replay_lsn":50331648,"receive_lsn":50331800,"replication_state":"streaming","timeline":2,"pause":true}"#]]
            .assert_eq(&encode_member(&m));
    }

    #[test]
    fn tags_follow_filter_tags() {
        let enc = |t: Tags| encode_tags(&t).unwrap_or_else(|| "<omitted>".into());
        // False predefined booleans are not published; empty tags omit the field.
        let t = Tags {
            nofailover: Some(false),
            nosync: Some(false),
            ..Tags::default()
        };
        expect!["<omitted>"].assert_eq(&enc(t));
        // nofailover/nosync are kept when the matching priority tag exists.
        let t = Tags {
            nofailover: Some(false),
            failover_priority: Some(0),
            nosync: Some(false),
            sync_priority: Some(1),
            ..Tags::default()
        };
        expect![[r#"{"failover_priority":0,"nofailover":false,"nosync":false,"sync_priority":1}"#]]
            .assert_eq(&enc(t));
        let t = Tags {
            nofailover: Some(true),
            noloadbalance: true,
            nostream: true,
            nosync: Some(true),
            replicatefrom: Some("node1".into()),
            ..Tags::default()
        };
        expect![[r#"{"nofailover":true,"noloadbalance":true,"nostream":true,"nosync":true,"replicatefrom":"node1"}"#]]
            .assert_eq(&enc(t));
        // Custom tags: JSON text re-rendered compactly, non-JSON text published as a string,
        // names of predefined tags ignored.
        let mut t = Tags::default();
        t.custom
            .insert("obj".into(), r#"{ "b": 1.5, "a": [1, 2e20, 1e-7] }"#.into());
        t.custom.insert("plain".into(), "not json".into());
        t.custom.insert("nofailover".into(), "true".into());
        expect![[r#"{"obj":{"a":[1,2e+20,1e-07],"b":1.5},"plain":"not json"}"#]].assert_eq(&enc(t));
    }

    #[test]
    fn strings_are_escaped_like_python_ensure_ascii() {
        let m = Member {
            name: name("n1"),
            state: "r\u{e9}sum\u{e9} \"q\" \\ \n\t\u{1}\u{7f}".into(),
            role: "\u{1f600}/".into(),
            ..Member::default()
        };
        expect![[
            r#"{"state":"r\u00e9sum\u00e9 \"q\" \\ \n\t\u0001\u007f","role":"\ud83d\ude00/"}"#
        ]]
        .assert_eq(&encode_member(&m));
        // And it decodes back to the same text.
        let back = decode_member(name("n1"), &encode_member(&m), 0).unwrap();
        assert_eq!(back.state, m.state);
        assert_eq!(back.role, m.role);
    }

    #[test]
    fn status_golden() {
        expect![[r#"{"optime":67108960}"#]].assert_eq(&encode_status(Lsn(67_108_960), &[], &[]));
        let slots = vec![
            ("node2".to_owned(), Lsn(100)),
            ("perm_logical".to_owned(), Lsn(90)),
            ("node2".to_owned(), Lsn(110)),
        ];
        expect![[r#"{"optime":67108960,"slots":{"node2":110,"perm_logical":90}}"#]]
            .assert_eq(&encode_status(Lsn(67_108_960), &slots, &[]));
        expect![[r#"{"optime":5,"slots":{"n1":4},"retain_slots":["n1","n2"]}"#]].assert_eq(
            &encode_status(
                Lsn(5),
                &[("n1".to_owned(), Lsn(4))],
                &["n1".to_owned(), "n2".to_owned()],
            ),
        );
    }

    #[test]
    fn history_golden() {
        let lines = vec![
            HistoryLine {
                timeline: Timeline(1),
                lsn: Lsn(25_165_984),
                reason: "no recovery target specified".into(),
                timestamp: None,
                new_leader: None,
            },
            HistoryLine {
                timeline: Timeline(2),
                lsn: Lsn(33_554_592),
                reason: "no recovery target specified".into(),
                timestamp: Some("2024-05-06T07:08:09.123456+00:00".into()),
                new_leader: None,
            },
            HistoryLine {
                timeline: Timeline(3),
                lsn: Lsn(50_331_808),
                reason: "no recovery target specified".into(),
                timestamp: Some("2024-05-07T07:08:09.123456+00:00".into()),
                new_leader: Some("node2".into()),
            },
        ];
        let text = encode_history(&lines);
        expect![[r#"[[1,25165984,"no recovery target specified"],[2,33554592,"no recovery target specified","2024-05-06T07:08:09.123456+00:00"],[3,50331808,"no recovery target specified","2024-05-07T07:08:09.123456+00:00","node2"]]"#]]
            .assert_eq(&text);
        assert_eq!(decode_history(&text).unwrap(), lines);
        expect!["[]"].assert_eq(&encode_history(&[]));
    }

    #[test]
    fn failover_and_sync_golden() {
        let f = FailoverRequest {
            leader: Some(name("node1")),
            candidate: Some(name("node2")),
            scheduled_at: Some("2024-05-06T07:08:09+00:00".into()),
        };
        expect![[
            r#"{"leader":"node1","member":"node2","scheduled_at":"2024-05-06T07:08:09+00:00"}"#
        ]]
        .assert_eq(&encode_failover(&f));
        expect!["{}"].assert_eq(&encode_failover(&FailoverRequest::default()));
        let s = SyncState {
            leader: Some(name("node1")),
            sync_standby: vec![name("node3"), name("node2")],
            quorum: 1,
        };
        expect![[r#"{"leader":"node1","quorum":1,"sync_standby":"node2,node3"}"#]]
            .assert_eq(&encode_sync(&s));
        let s = SyncState {
            leader: Some(name("node1")),
            ..SyncState::default()
        };
        expect![[r#"{"leader":"node1","quorum":0,"sync_standby":null}"#]]
            .assert_eq(&encode_sync(&s));
    }

    #[test]
    fn decodes_patroni_primary_and_replica_values() {
        // As written by Patroni 4.1 (extra fields it writes that pgbaton does not model are ignored).
        let primary = r#"{"conn_url":"postgres://127.0.0.1:5432/postgres","api_url":"http://127.0.0.1:8008/patroni","state":"running","role":"primary","version":"4.1.0","checkpoint_after_promote":false,"tags":{"clonefrom":true,"zone":"eu-1","failover_priority":3},"pending_restart":true,"pending_restart_reason":{"max_connections":{"old_value":"100","new_value":"200"}},"xlog_location":67108960,"timeline":2,"scheduled_restart":{"schedule":"2030-01-01T00:00:00+00:00","postmaster_start_time":"2024-01-01 00:00:00.000 UTC"},"pause":true}"#;
        let m = decode_member(name("node1"), primary, 42).unwrap();
        assert_eq!(
            m.conn_url.as_deref(),
            Some("postgres://127.0.0.1:5432/postgres")
        );
        assert_eq!(m.api_url.as_deref(), Some("http://127.0.0.1:8008/patroni"));
        assert_eq!((m.state.as_str(), m.role.as_str()), ("running", "primary"));
        assert_eq!(m.version.as_deref(), Some("4.1.0"));
        assert!(m.tags.clonefrom);
        assert_eq!(m.tags.failover_priority, Some(3));
        assert_eq!(
            m.tags.custom.get("zone").map(String::as_str),
            Some("\"eu-1\"")
        );
        assert!(m.pending_restart && m.pause);
        assert_eq!(
            m.scheduled_restart.as_deref(),
            Some("2030-01-01T00:00:00+00:00")
        );
        assert_eq!(m.xlog_location, Some(Lsn(67_108_960)));
        assert_eq!(m.timeline, Some(Timeline(2)));
        assert_eq!(m.lease, 42);

        let replica = r#"{"conn_url":"postgres://127.0.0.1:5433/postgres","api_url":"http://127.0.0.1:8009/patroni","state":"streaming","role":"replica","version":"3.3.2","tags":{"nofailover":true,"nosync":false,"sync_priority":0},"xlog_location":67108960,"replay_lsn":67108900,"receive_lsn":67108960,"replication_state":"streaming","timeline":2}"#;
        let m = decode_member(name("node2"), replica, 43).unwrap();
        assert_eq!(m.role, "replica");
        assert_eq!(m.tags.nofailover, Some(true));
        assert!(m.tags.is_nofailover());
        assert_eq!(
            (m.tags.nosync, m.tags.sync_priority),
            (Some(false), Some(0))
        );
        assert!(!m.tags.is_nosync());
        assert_eq!(m.replay_lsn, Some(Lsn(67_108_900)));
        assert_eq!(m.receive_lsn, Some(Lsn(67_108_960)));
        assert_eq!(m.replication_state.as_deref(), Some("streaming"));
    }

    #[test]
    fn round_trip_member() {
        let mut m = replica();
        m.tags = Tags {
            nofailover: Some(false),
            failover_priority: Some(1),
            noloadbalance: true,
            clonefrom: true,
            nosync: Some(true),
            sync_priority: None,
            nostream: true,
            replicatefrom: Some("node1".into()),
            custom: [
                ("zone".to_owned(), "\"eu-1\"".to_owned()),
                ("n".to_owned(), "[1,{\"a\":null}]".to_owned()),
            ]
            .into_iter()
            .collect(),
        };
        m.pending_restart = true;
        m.pause = true;
        let back = decode_member(m.name.clone(), &encode_member(&m), m.lease).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn decodes_legacy_values() {
        // Patroni < 3.0 wrote role "master".
        let m = decode_member(
            name("n1"),
            r#"{"state":"running","role":"master","xlog_location":"123"}"#,
            0,
        )
        .unwrap();
        assert_eq!(m.role, "primary");
        assert_eq!(m.xlog_location, Some(Lsn(123)));
        // Governor-era connection string with the API URL in application_name.
        let m = decode_member(
            name("n2"),
            "postgres://replicator:s3cr%40t@10.0.0.3:5432/postgres?application_name=http%3A%2F%2F10.0.0.3%3A8008%2Fpatroni",
            9,
        )
        .unwrap();
        assert_eq!(
            m.conn_url.as_deref(),
            Some("postgres://replicator:s3cr%40t@10.0.0.3:5432/postgres")
        );
        assert_eq!(m.api_url.as_deref(), Some("http://10.0.0.3:8008/patroni"));
        assert_eq!((m.state.as_str(), m.lease), ("unknown", 9));
        // conn_kwargs instead of conn_url.
        let m = decode_member(
            name("n3"),
            r#"{"conn_kwargs":{"host":"10.0.0.4","port":5433},"state":"running","role":"replica"}"#,
            0,
        )
        .unwrap();
        assert_eq!(m.conn_url.as_deref(), Some("postgresql://10.0.0.4:5433/"));
        // Missing state is "unknown", like Patroni's Member.state.
        let m = decode_member(name("n4"), "{}", 0).unwrap();
        assert_eq!((m.state.as_str(), m.role.as_str()), ("unknown", ""));
    }

    #[test]
    fn member_garbage_is_an_error_not_a_panic() {
        let cases = [
            ("{not json", "invalid JSON"),
            ("[1,2]", "expected a JSON object, got [1,2]"),
            ("", "invalid JSON"),
            (r#"{"state":5}"#, "field `state`: expected a string, got 5"),
            (
                r#"{"xlog_location":"abc"}"#,
                "field `xlog_location`: expected a non-negative integer",
            ),
            (r#"{"xlog_location":-1}"#, "field `xlog_location`"),
            (r#"{"timeline":"x"}"#, "field `timeline`"),
            (r#"{"timeline":99999999999}"#, "field `timeline`"),
            (r#"{"tags":[1]}"#, "field `tags`: expected an object"),
            (r#"{"pause":"yes"}"#, "field `pause`: expected a boolean"),
        ];
        for (value, expected) in cases {
            let err = decode_member(name("n"), value, 0).unwrap_err().to_string();
            assert!(err.contains(expected), "{value}: {err}");
        }
    }

    #[test]
    fn decodes_failover_forms() {
        assert_eq!(decode_failover("{}").unwrap(), None);
        assert_eq!(decode_failover("").unwrap(), None);
        assert_eq!(decode_failover("null").unwrap(), None);
        assert_eq!(
            decode_failover(r#"{"leader":"","member":""}"#).unwrap(),
            None
        );
        let f = decode_failover(
            r#"{"leader":"node1","member":"node2","scheduled_at":"2016-01-14T10:09:57.1394Z"}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(f.leader, Some(name("node1")));
        assert_eq!(f.candidate, Some(name("node2")));
        assert_eq!(f.scheduled_at.as_deref(), Some("2016-01-14T10:09:57.1394Z"));
        let f = decode_failover(r#"{"member":"node3"}"#).unwrap().unwrap();
        assert_eq!((f.leader, f.candidate), (None, Some(name("node3"))));
        // Legacy "leader:candidate" text.
        let f = decode_failover("node1: node2").unwrap().unwrap();
        assert_eq!(
            (f.leader, f.candidate),
            (Some(name("node1")), Some(name("node2")))
        );
        let f = decode_failover("node1").unwrap().unwrap();
        assert_eq!((f.leader, f.candidate), (Some(name("node1")), None));
        // Broken JSON is garbage, not a legacy request from a member called `{"leader"`.
        assert!(decode_failover(r#"{"leader":"#).is_err());
        assert!(decode_failover("[1]").is_err());
        assert!(decode_failover(r#"{"leader":1}"#).is_err());
    }

    #[test]
    fn decodes_sync_forms() {
        let s = decode_sync(r#"{"leader":"node0","sync_standby":"node1,node2"}"#).unwrap();
        assert_eq!(s.leader, Some(name("node0")));
        assert_eq!(s.sync_standby, vec![name("node1"), name("node2")]);
        assert_eq!(s.quorum, 0);
        let s = decode_sync(r#"{"leader":"node0","quorum":1,"sync_standby":" node1 , ,node2"}"#)
            .unwrap();
        assert_eq!((s.quorum, s.sync_standby.len()), (1, 2));
        let s = decode_sync(r#"{"leader":"node0","quorum":1,"sync_standby":null}"#).unwrap();
        assert!(s.sync_standby.is_empty());
        // quorum counts only with a leader.
        let s = decode_sync(r#"{"leader":null,"quorum":2,"sync_standby":"node1"}"#).unwrap();
        assert_eq!((s.leader, s.quorum), (None, 0));
        assert_eq!(decode_sync("{}").unwrap(), SyncState::default());
        assert_eq!(decode_sync("null").unwrap(), SyncState::default());
        assert!(decode_sync("{").is_err());
        assert!(decode_sync("[]").is_err());
        assert!(decode_sync(r#"{"leader":"a","quorum":-1}"#).is_err());
        assert!(decode_sync(r#"{"sync_standby":["a"]}"#).is_err());
    }

    #[test]
    fn decodes_history_forms() {
        let h = decode_history(r#"[[1,25165984,"no recovery target specified"],[2,33554592,"no recovery target specified","2024-05-06T07:08:09+00:00"],[3,50331808,"no recovery target specified","2024-05-07T07:08:09+00:00","node2"]]"#).unwrap();
        assert_eq!(h.len(), 3);
        assert_eq!(
            (h[0].timeline, h[0].lsn, h[0].timestamp.as_deref()),
            (Timeline(1), Lsn(25_165_984), None)
        );
        assert_eq!(h[1].timestamp.as_deref(), Some("2024-05-06T07:08:09+00:00"));
        assert_eq!(h[1].new_leader, None);
        assert_eq!(h[2].new_leader.as_deref(), Some("node2"));
        assert!(decode_history("[]").unwrap().is_empty());
        assert!(decode_history("{}").is_err());
        assert!(decode_history("[[1,2]]").is_err());
        assert!(decode_history(r#"[["x",2,"r"]]"#).is_err());
        assert!(decode_history(r#"[[1,2,"r",5]]"#).is_err());
    }

    #[test]
    fn decodes_status_forms() {
        let (s, problems) = decode_status(
            r#"{"optime":67108960,"slots":{"perm":67108000},"retain_slots":["node1","node2"]}"#,
        )
        .unwrap();
        assert_eq!(s.optime, Lsn(67_108_960));
        assert_eq!(s.slots.get("perm"), Some(&Lsn(67_108_000)));
        assert_eq!(s.retain_slots, vec!["node1".to_owned(), "node2".to_owned()]);
        assert!(problems.is_empty());
        // Legacy: a bare integer (also what `optime/leader` holds).
        assert_eq!(decode_status("12345").unwrap().0.optime, Lsn(12_345));
        // slots and retain_slots given as JSON text.
        let (s, _) =
            decode_status(r#"{"optime":"5","slots":"{\"a\":1}","retain_slots":"[\"a\"]"}"#)
                .unwrap();
        assert_eq!(
            (s.optime, s.slots.len(), s.retain_slots.len()),
            (Lsn(5), 1, 1)
        );
        // Unusable slots are dropped with a note; the optime still counts.
        let (s, problems) = decode_status(r#"{"optime":7,"slots":[1],"retain_slots":5}"#).unwrap();
        assert_eq!((s.optime, s.slots.len()), (Lsn(7), 0));
        assert_eq!(problems.len(), 2);
        assert!(decode_status(r#"{"optime":"x"}"#).is_err());
        assert!(decode_status("garbage").is_err());
        assert!(decode_status("\"5\"").is_err());
    }

    #[test]
    fn failsafe_encodes_like_patroni_and_decodes_back() {
        let topology: FailsafeTopology = [
            (name("node2"), "http://10.0.0.2:8008/patroni".to_owned()),
            (name("node1"), "http://10.0.0.1:8008/patroni".to_owned()),
        ]
        .into_iter()
        .collect();
        let text = encode_failsafe(&topology);
        // json.dumps(..., separators=(',', ':')) of Patroni's dict, in name order.
        assert_eq!(
            text,
            r#"{"node1":"http://10.0.0.1:8008/patroni","node2":"http://10.0.0.2:8008/patroni"}"#
        );
        assert_eq!(decode_failsafe(&text).unwrap(), topology);
        assert_eq!(decode_failsafe("{}").unwrap(), FailsafeTopology::new());
        // Names and URLs that need escaping survive the round trip.
        let odd: FailsafeTopology = [(name("n\"1"), "http://h/\u{e9}".to_owned())]
            .into_iter()
            .collect();
        assert_eq!(decode_failsafe(&encode_failsafe(&odd)).unwrap(), odd);
    }

    #[test]
    fn failsafe_garbage_is_an_error_naming_what_is_wrong() {
        let err = |v: &str| decode_failsafe(v).unwrap_err().to_string();
        assert!(
            err("garbage").contains("invalid JSON"),
            "{}",
            err("garbage")
        );
        assert!(err("[1]").contains("expected a JSON object"));
        assert_eq!(
            err(r#"{"node1":5}"#),
            "field `node1`: expected a string (the api_url), got 5"
        );
        assert_eq!(err(r#"{"":"http://x"}"#), "empty member name");
    }

    #[test]
    fn decode_cluster_reads_the_failsafe_key_and_warns_about_garbage() {
        let view = decode_cluster(
            9,
            vec![kv(
                FAILSAFE,
                r#"{"node1":"http://10.0.0.1:8008/patroni"}"#,
                0,
                4,
            )],
        );
        let topology = view.failsafe.expect("decoded");
        assert_eq!(
            topology.get(&name("node1")).map(String::as_str),
            Some("http://10.0.0.1:8008/patroni")
        );
        assert!(view.warnings.is_empty(), "{:?}", view.warnings);
        let view = decode_cluster(9, vec![kv(FAILSAFE, r#"{"node1":null}"#, 0, 4)]);
        assert_eq!(view.failsafe, None);
        assert_eq!(
            view.warnings,
            vec!["failsafe: field `node1`: expected a string (the api_url), got null".to_owned()]
        );
    }

    fn kv<'a>(key: &'a str, value: &'a str, lease: i64, rev: i64) -> RawKv<'a> {
        RawKv {
            key: key.as_bytes(),
            value: value.as_bytes(),
            lease,
            create_revision: rev,
            mod_revision: rev,
        }
    }

    #[test]
    fn decode_cluster_skips_garbage_with_warnings() {
        let good = encode_member(&replica());
        let kvs = vec![
            kv("config", r#"{"ttl":30,"loop_wait":10}"#, 0, 2),
            kv("failover", "{}", 0, 9),
            kv("history", "not a list", 0, 8),
            kv("initialize", "7001234567890123456", 0, 3),
            kv("leader", "node2", 7, 10),
            kv("members/node2", &good, 7, 11),
            kv("members/n3", "{garbage", 8, 12),
            kv("members/nested/x", "whatever", 0, 13),
            kv("optime/leader", "1", 0, 4),
            kv("status", r#"{"optime":"bad"}"#, 0, 14),
            kv("sync", "[]", 0, 15),
            kv("failsafe", "{", 0, 16),
            kv("something-else", "{", 0, 17),
        ];
        let view = decode_cluster(99, kvs);
        assert_eq!(view.revision, 99);
        assert_eq!(view.initialize.as_deref(), Some("7001234567890123456"));
        assert_eq!(view.config.as_ref().map(|c| c.mod_revision), Some(2));
        let leader = view.leader.clone().unwrap();
        assert_eq!(
            (leader.name, leader.lease, leader.create_revision),
            (Some(name("node2")), 7, 10)
        );
        assert_eq!(view.members.len(), 1);
        assert_eq!(view.members[0].name, name("node2"));
        assert_eq!(view.failover, None);
        assert!(view.history.is_empty());
        // `status` is present but garbage: no fallback to the legacy key, like Patroni.
        assert_eq!(view.status, None);
        // Garbage in `sync` is not "no sync state": it keeps its revision for the leader's
        // compare-and-swap and says why it is unusable.
        assert_eq!(
            view.sync,
            SyncKey::Unreadable {
                why: "expected a JSON object, got []".into(),
                mod_revision: 15
            }
        );
        expect![[r#"
            history: invalid JSON (expected ident at line 1 column 2): "not a list"
            members/n3: invalid JSON (key must be a string at line 1 column 2): "{garbage"
            sync: expected a JSON object, got []
            failsafe: invalid JSON (EOF while parsing an object at line 1 column 1): "{"
            status: field `optime`: expected a non-negative integer, got "bad"
        "#]]
        .assert_eq(&(view.warnings.join("\n") + "\n"));
    }

    #[test]
    fn decode_cluster_status_falls_back_to_legacy_optime() {
        let view = decode_cluster(1, vec![kv("optime/leader", "67108960", 0, 1)]);
        assert_eq!(view.optime(), Some(Lsn(67_108_960)));
        assert!(view.warnings.is_empty());
    }

    #[test]
    fn decode_cluster_sync_absent_present_unreadable() {
        assert_eq!(decode_cluster(1, vec![]).sync, SyncKey::Absent);
        let view = decode_cluster(3, vec![kv("sync", r#"{"leader":"n1"}"#, 0, 3)]);
        assert_eq!(view.sync.version(), 3);
        assert_eq!(
            view.sync.present().and_then(|s| s.value.leader.clone()),
            Some(name("n1"))
        );
        let view = decode_cluster(
            4,
            vec![RawKv {
                key: b"sync",
                value: &[0xff],
                lease: 0,
                create_revision: 4,
                mod_revision: 4,
            }],
        );
        assert_eq!(
            view.sync,
            SyncKey::Unreadable {
                why: "value is not valid UTF-8".into(),
                mod_revision: 4
            }
        );
        assert_eq!(view.warnings, ["sync: value is not valid UTF-8"]);
    }

    #[test]
    fn decode_cluster_bad_leader_and_bytes() {
        // An undecodable leader value is still a leader key on its lease, without a name.
        let view = decode_cluster(
            9,
            vec![RawKv {
                key: b"leader",
                value: &[0xc3],
                lease: 6,
                create_revision: 7,
                mod_revision: 8,
            }],
        );
        assert_eq!(
            view.leader,
            Some(LeaderKey {
                name: None,
                lease: 6,
                create_revision: 7,
                mod_revision: 8
            })
        );
        assert_eq!(view.leader_name(), None);
        assert_eq!(view.warnings, ["leader: value is not valid UTF-8"]);

        let kvs = vec![
            kv("leader", "", 5, 1),
            RawKv {
                key: b"members/bin",
                value: &[0xff, 0xfe],
                lease: 0,
                create_revision: 2,
                mod_revision: 2,
            },
            kv("members/", "{}", 0, 3),
            kv("config", "[1]", 0, 4),
        ];
        let view = decode_cluster(4, kvs);
        assert_eq!(
            view.leader,
            Some(LeaderKey {
                name: None,
                lease: 5,
                create_revision: 1,
                mod_revision: 1
            })
        );
        assert!(view.members.is_empty());
        assert_eq!(view.config, None);
        expect![[r#"
            leader: empty leader name
            members/bin: value is not valid UTF-8
            members/: empty member name
            config: expected a JSON object, got [1]
        "#]]
        .assert_eq(&(view.warnings.join("\n") + "\n"));
    }
}

// ---------------------------------------------------------------------------------------------
// `drills`: the history of `pgbaton drill` (pgbaton's own key; Patroni never reads it)
// ---------------------------------------------------------------------------------------------

/// `drills`: the results of `pgbaton drill`, a JSON list, oldest first.
pub const DRILLS: &str = "drills";
/// How many drill results the `drills` key keeps (the oldest go first).
pub const DRILLS_KEPT: usize = 100;

/// One `pgbaton drill` result as stored in `drills`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DrillRecord {
    /// When the drill started, ISO 8601 UTC (`2026-12-02T18:00:00+00:00`).
    pub started_at: String,
    /// `switchover` or `failover` (`--kill`).
    pub kind: String,
    pub old_leader: String,
    /// The leader afterwards; `None` when no member took over in time.
    pub new_leader: Option<String>,
    /// Why the new leader took over, from the DCS (its `pgbaton_reason`, else the new `history`
    /// line's reason).
    pub reason: Option<String>,
    /// Last acknowledged write before the outage to the first one after it, in milliseconds.
    pub rto_ms: Option<u64>,
    /// Acknowledged rows missing on the new primary; `None` when it could not be checked.
    pub rpo_rows: Option<u64>,
    /// Writes acknowledged during the drill.
    pub writes_acknowledged: u64,
    /// Writes that failed or timed out (their outcome is unknown; they never count in RPO).
    pub writes_failed: u64,
    /// The timelines before and after.
    pub timeline_before: Option<u32>,
    pub timeline_after: Option<u32>,
    /// `ok`, or what went wrong.
    pub outcome: String,
}

impl DrillRecord {
    /// The record as a JSON object (also `pgbaton drill --format json`).
    pub fn to_json(&self) -> Value {
        let mut o = Map::new();
        let opt_str = |v: &Option<String>| v.clone().map_or(Value::Null, Value::String);
        let opt_u64 = |v: Option<u64>| v.map_or(Value::Null, Value::from);
        let opt_u32 = |v: Option<u32>| v.map_or(Value::Null, Value::from);
        o.insert("started_at".into(), self.started_at.clone().into());
        o.insert("kind".into(), self.kind.clone().into());
        o.insert("old_leader".into(), self.old_leader.clone().into());
        o.insert("new_leader".into(), opt_str(&self.new_leader));
        o.insert("reason".into(), opt_str(&self.reason));
        o.insert("rto_ms".into(), opt_u64(self.rto_ms));
        o.insert("rpo_rows".into(), opt_u64(self.rpo_rows));
        o.insert(
            "writes_acknowledged".into(),
            self.writes_acknowledged.into(),
        );
        o.insert("writes_failed".into(), self.writes_failed.into());
        o.insert("timeline_before".into(), opt_u32(self.timeline_before));
        o.insert("timeline_after".into(), opt_u32(self.timeline_after));
        o.insert("outcome".into(), self.outcome.clone().into());
        Value::Object(o)
    }

    /// One element of `drills`; `started_at`, `kind`, `old_leader` and `outcome` are required,
    /// unknown fields are ignored (a newer pgbaton may add some).
    pub fn from_json(v: &Value) -> Result<DrillRecord, DecodeError> {
        let Value::Object(o) = v else {
            return Err(DecodeError::new(format!("expected a JSON object, got {v}")));
        };
        let req = |k: &str| -> Result<String, DecodeError> {
            match o.get(k) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(other) => Err(DecodeError::new(format!(
                    "{k}: expected a string, got {other}"
                ))),
                None => Err(DecodeError::new(format!("{k}: missing"))),
            }
        };
        let opt = |k: &str| -> Result<Option<String>, DecodeError> {
            match o.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(DecodeError::new(format!(
                    "{k}: expected a string, got {other}"
                ))),
            }
        };
        let num = |k: &str| -> Result<Option<u64>, DecodeError> {
            match o.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                    DecodeError::new(format!("{k}: expected a non-negative integer, got {v}"))
                }),
            }
        };
        let timeline = |k: &str| -> Result<Option<u32>, DecodeError> {
            num(k)?
                .map(|n| {
                    u32::try_from(n)
                        .map_err(|_| DecodeError::new(format!("{k}: {n} is not a timeline")))
                })
                .transpose()
        };
        Ok(DrillRecord {
            started_at: req("started_at")?,
            kind: req("kind")?,
            old_leader: req("old_leader")?,
            new_leader: opt("new_leader")?,
            reason: opt("reason")?,
            rto_ms: num("rto_ms")?,
            rpo_rows: num("rpo_rows")?,
            writes_acknowledged: num("writes_acknowledged")?.unwrap_or(0),
            writes_failed: num("writes_failed")?.unwrap_or(0),
            timeline_before: timeline("timeline_before")?,
            timeline_after: timeline("timeline_after")?,
            outcome: req("outcome")?,
        })
    }
}

/// The `drills` value: a JSON list of [`DrillRecord`]s, oldest first. An element that does
/// not decode fails the whole value (naming its index), so it is never silently overwritten.
pub fn decode_drills(value: &str) -> Result<Vec<DrillRecord>, DecodeError> {
    let v: Value =
        serde_json::from_str(value).map_err(|e| DecodeError::new(format!("invalid JSON: {e}")))?;
    let Value::Array(items) = v else {
        return Err(DecodeError::new(format!("expected a JSON list, got {v}")));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            DrillRecord::from_json(item).map_err(|e| DecodeError::new(format!("[{i}]: {e}")))
        })
        .collect()
}

/// The `drills` value for `records` (compact JSON), keeping only the last [`DRILLS_KEPT`].
pub fn encode_drills(records: &[DrillRecord]) -> String {
    let skip = records.len().saturating_sub(DRILLS_KEPT);
    let list = Value::Array(records[skip..].iter().map(DrillRecord::to_json).collect());
    let mut out = String::new();
    py_value(&mut out, &list);
    out
}

/// The new `drills` value: the current one (`None`: no key yet) with `record` appended, the
/// oldest dropped beyond [`DRILLS_KEPT`].
pub fn append_drill(current: Option<&str>, record: DrillRecord) -> Result<String, DecodeError> {
    let mut records = match current {
        Some(value) => decode_drills(value)?,
        None => Vec::new(),
    };
    records.push(record);
    Ok(encode_drills(&records))
}

#[cfg(test)]
mod drill_tests {
    use super::*;

    fn record(n: u64) -> DrillRecord {
        DrillRecord {
            started_at: format!("2026-12-02T18:00:{:02}+00:00", n % 60),
            kind: "switchover".into(),
            old_leader: "node1".into(),
            new_leader: Some("node2".into()),
            reason: Some("switchover requested".into()),
            rto_ms: Some(1200 + n),
            rpo_rows: Some(0),
            writes_acknowledged: 300,
            writes_failed: 2,
            timeline_before: Some(1),
            timeline_after: Some(2),
            outcome: "ok".into(),
        }
    }

    #[test]
    fn a_drill_record_round_trips() {
        let full = record(1);
        let empty = DrillRecord {
            new_leader: None,
            reason: None,
            rto_ms: None,
            rpo_rows: None,
            timeline_before: None,
            timeline_after: None,
            outcome: "no new leader within 120 s".into(),
            ..record(2)
        };
        let value = encode_drills(&[full.clone(), empty.clone()]);
        assert_eq!(decode_drills(&value), Ok(vec![full, empty]));
        assert!(value.starts_with("[{\"kind\":\"switchover\","), "{value}");
    }

    #[test]
    fn appending_keeps_the_last_hundred() {
        let mut value = None::<String>;
        for n in 0..(DRILLS_KEPT as u64 + 5) {
            value = Some(append_drill(value.as_deref(), record(n)).unwrap());
        }
        let records = decode_drills(&value.unwrap()).unwrap();
        assert_eq!(records.len(), DRILLS_KEPT);
        assert_eq!(records[0].rto_ms, Some(1205));
        assert_eq!(records[DRILLS_KEPT - 1].rto_ms, Some(1200 + 104));
    }

    #[test]
    fn a_bad_drills_value_is_refused_naming_the_element() {
        assert!(
            decode_drills("{}")
                .unwrap_err()
                .to_string()
                .contains("JSON list")
        );
        assert!(decode_drills("[1").is_err());
        let e = decode_drills(r#"[{"started_at":"x","kind":"switchover","outcome":"ok"}]"#)
            .unwrap_err();
        assert_eq!(e.to_string(), "[0]: old_leader: missing");
        let e = decode_drills(
            r#"[{"started_at":"x","kind":"k","old_leader":"a","outcome":"ok","rto_ms":-1}]"#,
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("[0]: rto_ms: expected"), "{e}");
        // An unknown field (a newer pgbaton) is ignored; a bad value is never overwritten.
        let v = r#"[{"started_at":"x","kind":"k","old_leader":"a","outcome":"ok","new":1}]"#;
        assert_eq!(decode_drills(v).unwrap().len(), 1);
        assert!(append_drill(Some("garbage"), record(0)).is_err());
    }
}
