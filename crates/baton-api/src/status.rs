//! The JSON documents: the node status (`/patroni` and every health check; also the
//! inter-node protocol of the leader race), `/cluster` and `/history`.
//!
//! Documents are built as `Serialize` structs so the keys come out in Patroni's order (a
//! `serde_json::Value` would sort them).

use baton_core::{
    ClusterView, HistoryLine, Lsn, Member, MemberName, Mono, PeerStatus, PgSql, Tags, Timeline,
};
use serde::Serialize;
use serde::ser::Serializer;
use serde_json::{Map, Value};

use crate::PgRunState;
use crate::{Snapshot, VERSION, VipStatus};

/// The node status as `GET /patroni` reports it (Patroni's `get_postgresql_status` plus the
/// fields `_write_status_response` adds), as a JSON value.
///
/// `now` is accepted so lease-derived fields can join without changing callers; today the
/// status is a function of the snapshot alone (the key order of the HTTP body is Patroni's; the
/// keys of a `Value` are sorted).
pub fn status_json(snapshot: &Snapshot, _now: Mono) -> Value {
    serde_json::to_value(Status::new(snapshot)).unwrap_or_else(|err| {
        tracing::error!("serialize status: {err}");
        Value::Object(Map::new())
    })
}

/// `snapshot` with PostgreSQL's SQL state replaced by `live` (queried now), when PostgreSQL
/// was queryable in the snapshot's state; `None` (no live answer) keeps the snapshot's. The
/// second value says whether the live state was used.
pub fn live_snapshot(snapshot: &Snapshot, live: Option<PgSql>) -> (Snapshot, bool) {
    let mut snap = snapshot.clone();
    let queried = matches!(
        snap.state,
        PgRunState::Running | PgRunState::Restarting | PgRunState::Starting
    );
    match live {
        Some(sql) if queried => {
            // The slot list is what the agent manages; keep the snapshot's.
            let slots = snap
                .pg
                .as_ref()
                .map(|p| p.slots.clone())
                .unwrap_or_default();
            snap.pg = Some(PgSql { slots, ..sql });
            (snap, true)
        }
        _ => (snap, false),
    }
}

/// Reads another member's `GET /patroni` answer the way Patroni's leader race does
/// (`_MemberStatus.from_api_response`): without an `xlog` (or `wal`) object the member counts
/// as unreachable; it is a primary when `xlog.location` is set or its role is `primary`/`master`;
/// its WAL position is `max(received, replayed)` on a replica and `location` on a primary.
pub fn peer_status_from_json(name: MemberName, v: &Value) -> PeerStatus {
    let unreachable = PeerStatus::unreachable(name.clone(), Tags::default());
    let Some(obj) = v.as_object() else {
        return unreachable;
    };
    let wal = match obj.get("wal") {
        Some(w) if truthy(w) => w,
        _ => match obj.get("xlog") {
            Some(x) => x,
            None => return unreachable,
        },
    };
    let Some(wal) = wal.as_object() else {
        return unreachable;
    };
    let lsn_of = |key: &str| wal.get(key).and_then(Value::as_u64).unwrap_or(0);
    let location = lsn_of("location");
    let role = obj.get("role").and_then(Value::as_str);
    let is_primary = location > 0 || matches!(role, Some("primary" | "master"));
    let wal_position = if is_primary {
        location
    } else {
        lsn_of("received_location").max(lsn_of("replayed_location"))
    };
    PeerStatus {
        name,
        reachable: true,
        is_primary,
        wal_position: Some(Lsn(wal_position)),
        timeline: obj
            .get("timeline")
            .and_then(Value::as_u64)
            .and_then(|t| u32::try_from(t).ok())
            .map(Timeline),
        tags: obj
            .get("tags")
            .and_then(Value::as_object)
            .map(tags_from_json)
            .unwrap_or_default(),
        watchdog_failed: obj.get("watchdog_failed").is_some_and(truthy),
    }
}

/// Patroni's `PostgresqlState` values in the order of their numeric index (`/metrics`
/// `patroni_postgres_state`; the index never changes).
pub(crate) const POSTGRES_STATES: [(&str, &str); 15] = [
    ("initdb", "initializing new cluster"),
    ("initdb_failed", "initdb failed"),
    ("custom_bootstrap", "running custom bootstrap script"),
    ("custom_bootstrap_failed", "custom bootstrap failed"),
    ("creating_replica", "creating replica"),
    ("running", "running"),
    ("starting", "starting"),
    ("bootstrap_starting", "starting after custom bootstrap"),
    ("start_failed", "start failed"),
    ("restarting", "restarting"),
    ("restart_failed", "restart failed"),
    ("stopping", "stopping"),
    ("stopped", "stopped"),
    ("stop_failed", "stop failed"),
    ("crashed", "crashed"),
];

/// The node status document, keys in Patroni's order.
#[derive(Debug, Serialize)]
pub(crate) struct Status {
    pub(crate) state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) postmaster_start_time: Option<String>,
    pub(crate) role: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) server_version: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) xlog: Option<Xlog>,
    #[serde(skip_serializing_if = "is_false")]
    pub(crate) sync_standby: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub(crate) quorum_standby: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) timeline: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) replication_state: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) replication: Vec<Replication>,
    #[serde(skip_serializing_if = "is_false")]
    pub(crate) pause: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub(crate) cluster_unlocked: bool,
    pub(crate) dcs_last_seen: u64,
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub(crate) tags: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) database_system_identifier: Option<String>,
    #[serde(skip_serializing_if = "is_false")]
    pub(crate) pending_restart: bool,
    /// `{name: {old_value, new_value}}` for the settings waiting for a restart, when known.
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub(crate) pending_restart_reason: Map<String, Value>,
    /// `{"schedule": iso}` while a restart is scheduled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) scheduled_restart: Option<Value>,
    pub(crate) patroni: PatroniInfo,
    #[serde(skip_serializing_if = "is_false")]
    pub(crate) watchdog_failed: bool,
    /// pgbaton's floating IP, when configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) vip: Option<VipStatus>,
    /// pgbaton: why the agent does what it does (the last decision's reason, e.g. why it does
    /// not promote). Patroni has no such key; its tools ignore it.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) reason: String,
    /// `pg_stat_wal_receiver.latest_end_lsn` (replicas): part of the lag computation, never
    /// printed (Patroni pops it too).
    #[serde(skip)]
    pub(crate) latest_end_lsn: Option<Lsn>,
    /// pgbaton: present only when a peer asked for live positions ([`crate::LIVE_HEADER`]):
    /// `true` when `xlog` and `timeline` were read from PostgreSQL for this request, `false`
    /// when they are the last cycle's (the live query failed or timed out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) live_positions: Option<bool>,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(crate) enum Xlog {
    Primary {
        location: Option<u64>,
    },
    Replica {
        received_location: Option<u64>,
        replayed_location: Option<u64>,
        replayed_timestamp: Option<String>,
        paused: bool,
    },
}

#[derive(Debug, Serialize)]
pub(crate) struct Replication {
    usename: String,
    application_name: String,
    client_addr: Option<String>,
    state: String,
    sync_state: String,
    sync_priority: i32,
}

#[derive(Debug, Serialize)]
pub(crate) struct PatroniInfo {
    version: &'static str,
    scope: String,
    name: String,
}

impl Status {
    pub(crate) fn new(snap: &Snapshot) -> Status {
        let cluster = snap.cluster.as_ref();
        let mut status = Status {
            state: snap.state.as_str().to_owned(),
            postmaster_start_time: None,
            role: snap.role.as_str().to_owned(),
            server_version: None,
            xlog: None,
            sync_standby: false,
            quorum_standby: false,
            timeline: None,
            replication_state: None,
            replication: Vec::new(),
            pause: snap.pause,
            cluster_unlocked: cluster.is_none_or(|c| c.leader.is_none()),
            dcs_last_seen: snap.dcs_last_seen.unwrap_or(0),
            tags: tags_to_json(&snap.tags),
            database_system_identifier: snap.system_id.clone(),
            pending_restart: false,
            pending_restart_reason: Map::new(),
            scheduled_restart: snap
                .scheduled_restart
                .as_ref()
                .map(|s| serde_json::json!({ "schedule": s })),
            patroni: PatroniInfo {
                version: VERSION,
                scope: snap.scope.clone(),
                name: snap.name.as_str().to_owned(),
            },
            watchdog_failed: snap.watchdog_failed,
            vip: None,
            reason: snap.last_reason.clone(),
            latest_end_lsn: None,
            live_positions: None,
        };
        // Patroni queries PostgreSQL only in these states; a failed query while "running"
        // reports "unknown".
        let queried = matches!(
            snap.state,
            PgRunState::Running | PgRunState::Restarting | PgRunState::Starting
        );
        let pg = match &snap.pg {
            Some(pg) if queried => pg,
            _ => {
                if snap.state == PgRunState::Running {
                    status.state = "unknown".to_owned();
                }
                return status;
            }
        };
        status.postmaster_start_time = Some(pg.postmaster_start_time.clone());
        status.server_version = Some(pg.server_version);
        status.timeline = Some(pg.effective_timeline().0);
        status.pending_restart = pg.pending_restart;
        if pg.pending_restart {
            status.pending_restart_reason = snap
                .pending_restart_reason
                .iter()
                .map(|p| {
                    let diff =
                        serde_json::json!({"old_value": p.old_value, "new_value": p.new_value});
                    (p.name.clone(), diff)
                })
                .collect();
        }
        status.replication = pg
            .replication
            .iter()
            .map(|r| Replication {
                usename: r.usename.clone(),
                application_name: r.application_name.clone(),
                client_addr: r.client_addr.clone(),
                state: r.state.clone(),
                sync_state: r.sync_state.clone(),
                sync_priority: r.sync_priority,
            })
            .collect();
        if pg.in_recovery {
            status.role = if snap.role == crate::MemberRole::StandbyLeader {
                "standby_leader"
            } else {
                "replica"
            }
            .to_owned();
            let replayed = pg.replayed_lsn.map(|l| l.0);
            status.xlog = Some(Xlog::Replica {
                received_location: pg.received_lsn.map(|l| l.0).or(replayed),
                replayed_location: replayed,
                replayed_timestamp: pg.replayed_timestamp.clone(),
                paused: pg.replay_paused,
            });
            status.latest_end_lsn = pg.receiver_latest_end_lsn;
            status.replication_state = if pg.streaming {
                Some("streaming")
            } else if snap.restore_command {
                Some("in archive recovery")
            } else {
                None
            };
            // The configuration is parsed only for a member listed in `/sync`.
            if let Some(sync) = cluster.and_then(|c| c.sync.present())
                && sync.value.lists(&snap.name)
            {
                match SyncMode::of(cluster) {
                    SyncMode::Off => {}
                    SyncMode::On => status.sync_standby = true,
                    SyncMode::Quorum => status.quorum_standby = true,
                }
            }
        } else {
            status.role = "primary".to_owned();
            status.xlog = Some(Xlog::Primary {
                location: pg.flush_lsn.map(|l| l.0),
            });
        }
        status
    }

    /// The floating IP's state, which the VIP task publishes apart from the snapshot.
    pub(crate) fn with_vip(mut self, vip: Option<VipStatus>) -> Status {
        self.vip = vip;
        self
    }

    pub(crate) fn is_running(&self) -> bool {
        self.state == "running"
    }

    pub(crate) fn replayed_location(&self) -> u64 {
        match &self.xlog {
            Some(Xlog::Replica {
                replayed_location, ..
            }) => replayed_location.unwrap_or(0),
            _ => 0,
        }
    }

    pub(crate) fn received_location(&self) -> u64 {
        match &self.xlog {
            Some(Xlog::Replica {
                received_location, ..
            }) => received_location.unwrap_or(0),
            _ => 0,
        }
    }

    /// The numeric index of the state for `/metrics`, -1 when unknown.
    pub(crate) fn state_index(&self) -> i64 {
        POSTGRES_STATES
            .iter()
            .position(|(_, label)| *label == self.state)
            .map_or(-1, |i| i64::try_from(i).unwrap_or(-1))
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `synchronous_mode` from the dynamic configuration (Patroni's `global_config`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SyncMode {
    Off,
    On,
    Quorum,
}

impl SyncMode {
    pub(crate) fn of(cluster: Option<&ClusterView>) -> SyncMode {
        let flags = DynamicFlags::of(cluster);
        if python_str(&flags.synchronous_mode).eq_ignore_ascii_case("quorum") {
            SyncMode::Quorum
        } else if parse_bool(&flags.synchronous_mode) == Some(true) {
            SyncMode::On
        } else {
            SyncMode::Off
        }
    }
}

/// The few dynamic-configuration keys the API reads, parsed on demand from `cluster.config`
/// (other keys are skipped without being built).
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct DynamicFlags {
    #[serde(default)]
    synchronous_mode: Value,
}

impl DynamicFlags {
    pub(crate) fn of(cluster: Option<&ClusterView>) -> DynamicFlags {
        let Some(config) = cluster.and_then(|c| c.config.as_ref()) else {
            return DynamicFlags::default();
        };
        serde_json::from_str(&config.value).unwrap_or_default()
    }
}

/// Python's `str(value)` for JSON scalars (`True`, `None`, `3`, text as is).
fn python_str(v: &Value) -> String {
    match v {
        Value::Null => "None".to_owned(),
        Value::Bool(true) => "True".to_owned(),
        Value::Bool(false) => "False".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Patroni's `parse_bool(value)`: on/true/yes/1 and off/false/no/0, case-insensitive.
fn parse_bool(v: &Value) -> Option<bool> {
    match python_str(v).to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Some(true),
        "off" | "false" | "no" | "0" => Some(false),
        _ => None,
    }
}

/// Python truthiness of a JSON value.
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

/// Tags as the status JSON and member records show them: Patroni drops the boolean tags that
/// are off. `nofailover: false` is kept when `failover_priority` is set, because there it
/// overrides the priority (Patroni drops it and so flips the meaning for its peers).
pub(crate) fn tags_to_json(tags: &Tags) -> Map<String, Value> {
    let mut map = Map::new();
    match tags.nofailover {
        Some(true) => {
            map.insert("nofailover".into(), Value::Bool(true));
        }
        Some(false) if tags.failover_priority.is_some() => {
            map.insert("nofailover".into(), Value::Bool(false));
        }
        _ => {}
    }
    if let Some(p) = tags.failover_priority {
        map.insert("failover_priority".into(), p.into());
    }
    if tags.noloadbalance {
        map.insert("noloadbalance".into(), Value::Bool(true));
    }
    if tags.clonefrom {
        map.insert("clonefrom".into(), Value::Bool(true));
    }
    if tags.nosync == Some(true) {
        map.insert("nosync".into(), Value::Bool(true));
    }
    if let Some(p) = tags.sync_priority {
        map.insert("sync_priority".into(), p.into());
    }
    if tags.nostream {
        map.insert("nostream".into(), Value::Bool(true));
    }
    if let Some(r) = &tags.replicatefrom {
        map.insert("replicatefrom".into(), Value::String(r.clone()));
    }
    for (key, text) in &tags.custom {
        let value = serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.clone()));
        map.insert(key.clone(), value);
    }
    map
}

/// The inverse of [`tags_to_json`], with Patroni's leniency: boolean tags by truthiness,
/// priorities from numbers or numeric strings.
pub(crate) fn tags_from_json(obj: &Map<String, Value>) -> Tags {
    let mut tags = Tags::default();
    for (key, value) in obj {
        match key.as_str() {
            "nofailover" => tags.nofailover = (!value.is_null()).then(|| truthy(value)),
            "failover_priority" => tags.failover_priority = json_int(value),
            "noloadbalance" => tags.noloadbalance = truthy(value),
            "clonefrom" => tags.clonefrom = truthy(value),
            "nosync" => tags.nosync = (!value.is_null()).then(|| truthy(value)),
            "sync_priority" => tags.sync_priority = json_int(value),
            "nostream" => tags.nostream = truthy(value),
            "replicatefrom" => {
                tags.replicatefrom = match value {
                    Value::Null => None,
                    Value::String(s) => Some(s.clone()),
                    other => Some(other.to_string()),
                }
            }
            _ => {
                tags.custom.insert(key.clone(), value.to_string());
            }
        }
    }
    tags
}

fn json_int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .map(f64::round_ties_even)
                .filter(|f| f.is_finite() && f.abs() < 9.0e18)
                .map(
                    // Checked to be finite and in range above.
                    |f| f as i64,
                )
        }),
        Value::String(s) => s.trim().parse().ok(),
        Value::Bool(b) => Some(i64::from(*b)),
        _ => None,
    }
}

/// A tag's value as `?tag_<key>=<value>` compares it: strings as they are, anything else as
/// Python's `str(value).lower()`. `None` when the node does not have the tag.
pub(crate) fn tag_query_value(tags: &Tags, key: &str) -> Option<String> {
    let lower_bool = |b: bool| if b { "true" } else { "false" }.to_owned();
    match key {
        "nofailover" => tags.nofailover.map(lower_bool),
        "failover_priority" => tags.failover_priority.map(|p| p.to_string()),
        "noloadbalance" => tags.noloadbalance.then(|| lower_bool(true)),
        "clonefrom" => tags.clonefrom.then(|| lower_bool(true)),
        "nosync" => tags.nosync.map(lower_bool),
        "sync_priority" => tags.sync_priority.map(|p| p.to_string()),
        "nostream" => tags.nostream.then(|| lower_bool(true)),
        "replicatefrom" => tags.replicatefrom.clone(),
        _ => {
            let text = tags.custom.get(key)?;
            match serde_json::from_str::<Value>(text) {
                Ok(Value::Null) => None,
                Ok(Value::String(s)) => Some(s),
                Ok(other) => Some(python_str(&other).to_lowercase()),
                Err(_) => Some(text.clone()),
            }
        }
    }
}

/// `GET /cluster` (Patroni's `cluster_as_json` plus `scope`).
#[derive(Debug, Serialize)]
pub(crate) struct ClusterJson {
    members: Vec<ClusterMember>,
    scope: String,
    #[serde(skip_serializing_if = "is_false")]
    pause: bool,
}

#[derive(Debug, Serialize)]
struct ClusterMember {
    name: String,
    role: &'static str,
    state: String,
    api_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeline: Option<u32>,
    #[serde(skip_serializing_if = "is_false")]
    pending_restart: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    scheduled_restart: Option<Value>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    tags: Map<String, Value>,
    #[serde(flatten)]
    positions: Option<Positions>,
}

/// WAL positions of a non-leader, each with its lag behind the leader's last published optime.
#[derive(Debug, Serialize)]
struct Positions {
    receive_lsn: LsnText,
    receive_lag: Lag,
    replay_lsn: LsnText,
    replay_lag: Lag,
    lsn: LsnText,
    lag: Lag,
}

#[derive(Debug)]
enum LsnText {
    Known(Lsn),
    Unknown,
}

#[derive(Debug)]
enum Lag {
    Bytes(u64),
    Unknown,
}

impl Serialize for LsnText {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            LsnText::Known(lsn) => s.collect_str(lsn),
            LsnText::Unknown => s.serialize_str("unknown"),
        }
    }
}

impl Serialize for Lag {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Lag::Bytes(b) => s.serialize_u64(*b),
            Lag::Unknown => s.serialize_str("unknown"),
        }
    }
}

impl ClusterJson {
    pub(crate) fn new(scope: &str, cluster: &ClusterView, pause: bool) -> ClusterJson {
        let leader = cluster.leader_name();
        let optime = cluster.optime().unwrap_or_default();
        let sync_role = match SyncMode::of(Some(cluster)) {
            SyncMode::Off => None,
            SyncMode::On => Some("sync_standby"),
            SyncMode::Quorum => Some("quorum_standby"),
        };
        let mut members: Vec<ClusterMember> = cluster
            .members
            .iter()
            .map(|m| {
                let is_leader = leader == Some(&m.name);
                let listed = cluster
                    .sync
                    .present()
                    .is_some_and(|s| s.value.lists(&m.name));
                let role = match (is_leader, sync_role) {
                    // The standby leader says so in its member key (Patroni's `/cluster`
                    // and `list` call it "standby_leader" / "Standby Leader").
                    (true, _) if m.role == "standby_leader" => "standby_leader",
                    (true, _) => "leader",
                    (false, Some(role)) if listed => role,
                    _ => "replica",
                };
                ClusterMember::new(m, role, (!is_leader).then_some(optime))
            })
            .collect();
        members.sort_by(|a, b| a.name.cmp(&b.name));
        ClusterJson {
            members,
            scope: scope.to_owned(),
            pause,
        }
    }

    /// What `/cluster` answers when the last DCS read failed: no members (Patroni drops the
    /// connection instead; an empty, well-formed document with a 503 is kinder to clients).
    pub(crate) fn unavailable(scope: &str) -> ClusterJson {
        ClusterJson {
            members: Vec::new(),
            scope: scope.to_owned(),
            pause: false,
        }
    }
}

impl ClusterMember {
    fn new(m: &Member, role: &'static str, optime: Option<Lsn>) -> ClusterMember {
        let replication_state = m.replication_state.as_deref().filter(|s| !s.is_empty());
        let state = match replication_state {
            Some(rs) if role != "leader" => rs.to_owned(),
            _ => m.state.clone(),
        };
        let (host, port) = match m.pg_host_port() {
            Some((h, p)) if !h.is_empty() => (Some(h), Some(p)),
            _ => (None, None),
        };
        let positions = optime.map(|optime| {
            let pos = |lsn: Option<Lsn>| match lsn.filter(|l| l.0 > 0) {
                None => (LsnText::Unknown, Lag::Unknown),
                Some(l) => (LsnText::Known(l), Lag::Bytes(optime.saturating_sub(l))),
            };
            let (receive_lsn, receive_lag) = pos(m.receive_lsn);
            let (replay_lsn, replay_lag) = pos(m.replay_lsn);
            let (lsn, lag) = pos(m.xlog_location);
            Positions {
                receive_lsn,
                receive_lag,
                replay_lsn,
                replay_lag,
                lsn,
                lag,
            }
        });
        ClusterMember {
            name: m.name.as_str().to_owned(),
            role,
            state,
            api_url: m.api_url.clone(),
            host,
            port,
            timeline: m.timeline.map(|t| t.0),
            pending_restart: m.pending_restart,
            scheduled_restart: m
                .scheduled_restart
                .as_ref()
                .map(|s| serde_json::json!({ "schedule": s })),
            tags: tags_to_json(&m.tags),
            positions,
        }
    }
}

/// One `/history` line: `[timeline, lsn, reason, timestamp, new_leader]`; lines written by
/// older versions have only the first three or four.
pub(crate) struct HistoryJson<'a>(pub(crate) &'a HistoryLine);

impl Serialize for HistoryJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let line = self.0;
        let len = match (&line.timestamp, &line.new_leader) {
            (_, Some(_)) => 5,
            (Some(_), None) => 4,
            (None, None) => 3,
        };
        let mut seq = s.serialize_seq(Some(len))?;
        seq.serialize_element(&line.timeline.0)?;
        seq.serialize_element(&line.lsn.0)?;
        seq.serialize_element(&line.reason)?;
        if len >= 4 {
            seq.serialize_element(&line.timestamp)?;
        }
        if len == 5 {
            seq.serialize_element(&line.new_leader)?;
        }
        seq.end()
    }
}
