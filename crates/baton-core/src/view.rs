//! What the DCS says about the cluster: one consistent snapshot of the `/<namespace>/<scope>/`
//! prefix, already decoded. Records someone else wrote as garbage are dropped by the DCS layer
//! and reported in `ClusterView::warnings`, never turned into a role change. Two keys are never
//! dropped, because their mere existence matters: an undecodable `leader` is still a leader key
//! (its holder is recognised by its lease, see [`LeaderKey::name`]), and an undecodable `sync`
//! is [`SyncKey::Unreadable`], not [`SyncKey::Absent`].

use std::collections::BTreeMap;

use crate::types::{Lsn, MemberName, Timeline};

/// One consistent read of the cluster prefix.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterView {
    /// The etcd revision of the read (the store-wide modification counter).
    pub revision: i64,
    /// `initialize`: `None` when the key is absent, `Some("")` while a bootstrap is in progress,
    /// otherwise the database system identifier.
    pub initialize: Option<String>,
    /// `config`: the dynamic configuration as compact JSON, with its modification revision.
    pub config: Option<Versioned<String>>,
    /// `leader`: the current leader, if the key exists (also when its value does not decode).
    pub leader: Option<LeaderKey>,
    /// `members/<name>`, sorted by name.
    pub members: Vec<Member>,
    /// `failover`: a pending switchover/failover request (`None` also when the key holds `{}`).
    pub failover: Option<Versioned<FailoverRequest>>,
    /// `sync`: the synchronous replication state published by the leader.
    pub sync: SyncKey,
    /// `history`: timeline history lines, oldest first.
    pub history: Vec<HistoryLine>,
    /// `status`: the leader's last published WAL position (`optime`) and slot positions.
    pub status: Option<LeaderStatus>,
    /// `failsafe`: the failsafe topology the leader maintains (member name → REST API URL);
    /// `None` when the key is absent or does not decode (a warning names it).
    pub failsafe: Option<FailsafeTopology>,
    /// Problems found while decoding (garbage values, unknown shapes), each naming its key.
    pub warnings: Vec<String>,
}

/// The `/failsafe` key: every member of the cluster at the time the leader wrote it, by name,
/// with its REST API URL (Patroni's `{"name": "api_url", ...}`).
pub type FailsafeTopology = std::collections::BTreeMap<MemberName, String>;

impl ClusterView {
    pub fn member(&self, name: &MemberName) -> Option<&Member> {
        self.members.iter().find(|m| &m.name == name)
    }

    /// The leader's name; `None` when there is no leader key and when its value does not
    /// decode (someone leads, but the key does not say who).
    pub fn leader_name(&self) -> Option<&MemberName> {
        self.leader.as_ref().and_then(|l| l.name.as_ref())
    }

    /// The leader's member record, when both the leader key and its member key exist.
    pub fn leader_member(&self) -> Option<&Member> {
        self.leader_name().and_then(|name| self.member(name))
    }

    /// Patroni's `Cluster.timeline`: last history timeline + 1, or 1 with no history. `None`
    /// when the cluster has not been initialised.
    pub fn timeline(&self) -> Option<Timeline> {
        self.initialize.as_ref().filter(|s| !s.is_empty())?;
        Some(Timeline(
            self.history.last().map_or(1, |h| h.timeline.0 + 1),
        ))
    }

    /// The system identifier stored in `initialize`, when it is filled in.
    pub fn system_id(&self) -> Option<&str> {
        self.initialize.as_deref().filter(|s| !s.is_empty())
    }

    /// The leader's last published WAL position.
    pub fn optime(&self) -> Option<Lsn> {
        self.status.as_ref().map(|s| s.optime)
    }
}

/// A value together with the revision it was last modified at (etcd `mod_revision`), for
/// compare-and-swap writes.
#[derive(Clone, Debug, PartialEq)]
pub struct Versioned<T> {
    pub value: T,
    pub mod_revision: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderKey {
    /// The holder's member name; `None` when the value does not decode (garbage written by
    /// someone else; `ClusterView::warnings` names it). The key still exists and still
    /// belongs to its lease: nobody may take it, and its holder rewrites it.
    pub name: Option<MemberName>,
    /// The lease the key is attached to (Patroni's `session`).
    pub lease: i64,
    /// `create_revision` of the key: grows with every acquisition, so it serves as the leader epoch.
    pub create_revision: i64,
    pub mod_revision: i64,
}

/// A member record (`members/<name>`), Patroni's JSON decoded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Member {
    pub name: MemberName,
    /// `postgres://host:port/postgres`
    pub conn_url: Option<String>,
    /// `http://host:port/patroni`
    pub api_url: Option<String>,
    /// PostgreSQL state label (`running`, `stopped`, `starting`, `creating replica`, ...).
    pub state: String,
    /// `primary`, `replica`, `uninitialized`, `demoted`, `promoted`, `standby_leader` (legacy `master`).
    pub role: String,
    pub version: Option<String>,
    pub tags: Tags,
    /// Primary: flush LSN; replica: max(received, replayed).
    pub xlog_location: Option<Lsn>,
    pub receive_lsn: Option<Lsn>,
    pub replay_lsn: Option<Lsn>,
    pub replication_state: Option<String>,
    pub timeline: Option<Timeline>,
    pub pending_restart: bool,
    /// A restart scheduled on the member: its `scheduled_restart.schedule` (ISO 8601).
    pub scheduled_restart: Option<String>,
    pub pause: bool,
    /// pgbaton's last decision reason (`pgbaton_reason`; Patroni's tools ignore the key).
    pub reason: Option<String>,
    /// The lease the member key is attached to.
    pub lease: i64,
}

impl Default for MemberName {
    fn default() -> MemberName {
        MemberName::new("unnamed").expect("non-empty literal")
    }
}

impl Member {
    /// The member key says PostgreSQL runs as a primary (role `primary`; `master` is read as
    /// `primary` when the key is parsed).
    pub fn runs_as_primary(&self) -> bool {
        self.role == "primary" && self.state == "running"
    }

    /// `host` and `port` from `conn_url` (`postgres://host:port/postgres`).
    pub fn pg_host_port(&self) -> Option<(String, u16)> {
        let url = self.conn_url.as_deref()?;
        let rest = url.split_once("://")?.1;
        let hostport = rest.split(['/', '?']).next()?;
        let hostport = hostport.rsplit_once('@').map_or(hostport, |(_, h)| h);
        match hostport.rsplit_once(':') {
            Some((h, p)) => Some((h.trim_matches(['[', ']']).to_owned(), p.parse().ok()?)),
            None => Some((hostport.to_owned(), 5432)),
        }
    }
}

/// Member tags with Patroni's semantics. Unknown (custom) tags are kept with their JSON
/// rendering so they round-trip and `?tag_key=value` filters can compare them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tags {
    pub nofailover: Option<bool>,
    pub failover_priority: Option<i64>,
    pub noloadbalance: bool,
    pub clonefrom: bool,
    pub nosync: Option<bool>,
    pub sync_priority: Option<i64>,
    pub nostream: bool,
    pub replicatefrom: Option<String>,
    /// Custom tags: name → JSON text of the value (`"\"eu-1\""`, `"true"`, `"3"`).
    pub custom: BTreeMap<String, String>,
}

impl Tags {
    /// Patroni `Tags.nofailover`: the bool tag wins; otherwise `failover_priority <= 0`.
    pub fn is_nofailover(&self) -> bool {
        match self.nofailover {
            Some(b) => b,
            None => self.failover_priority.is_some_and(|p| p <= 0),
        }
    }

    /// Patroni `Tags.failover_priority`: 0 when nofailover, else the tag (default 1).
    pub fn effective_failover_priority(&self) -> i64 {
        if self.is_nofailover() {
            0
        } else {
            self.failover_priority.unwrap_or(1)
        }
    }

    pub fn is_nosync(&self) -> bool {
        match self.nosync {
            Some(b) => b,
            None => self.sync_priority.is_some_and(|p| p <= 0),
        }
    }
}

/// `failover` key: `{"leader": .., "member": .., "scheduled_at": ..}`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FailoverRequest {
    pub leader: Option<MemberName>,
    pub candidate: Option<MemberName>,
    /// ISO 8601 with timezone, as written by Patroni / patronictl.
    pub scheduled_at: Option<String>,
}

/// What the `sync` key holds. "Unreadable" is never folded into "absent": in synchronous
/// mode neither says who holds every acknowledged commit, and only the leader may replace an
/// unreadable value (by compare-and-swap on its revision).
#[derive(Clone, Debug, Default, PartialEq)]
pub enum SyncKey {
    /// No `sync` key.
    #[default]
    Absent,
    /// The key exists but its value does not decode.
    Unreadable {
        /// Why, as the warning for the key says it.
        why: String,
        mod_revision: i64,
    },
    /// The decoded state.
    Present(Versioned<SyncState>),
}

impl SyncKey {
    /// The decoded state, when the key exists and decodes.
    pub fn present(&self) -> Option<&Versioned<SyncState>> {
        match self {
            SyncKey::Present(v) => Some(v),
            SyncKey::Absent | SyncKey::Unreadable { .. } => None,
        }
    }

    /// The key's `mod_revision` for a compare-and-swap write: 0 when absent.
    pub fn version(&self) -> i64 {
        match self {
            SyncKey::Absent => 0,
            SyncKey::Unreadable { mod_revision, .. } => *mod_revision,
            SyncKey::Present(v) => v.mod_revision,
        }
    }
}

/// `sync` key: `{"leader": name, "quorum": int, "sync_standby": "a,b" | null}`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncState {
    pub leader: Option<MemberName>,
    pub sync_standby: Vec<MemberName>,
    pub quorum: u32,
}

impl SyncState {
    /// Case-insensitive membership, as Patroni's `SyncState.matches`.
    pub fn lists(&self, name: &MemberName) -> bool {
        self.sync_standby
            .iter()
            .any(|s| s.as_str().eq_ignore_ascii_case(name.as_str()))
    }
}

/// One `history` line: `[timeline, lsn, reason, timestamp, new_leader]` (older lines may lack the
/// last two fields).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryLine {
    pub timeline: Timeline,
    pub lsn: Lsn,
    pub reason: String,
    pub timestamp: Option<String>,
    pub new_leader: Option<String>,
}

/// `status` key: `{"optime": int, "slots": {name: lsn}, "retain_slots": [names]}`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaderStatus {
    pub optime: Lsn,
    pub slots: BTreeMap<String, Lsn>,
    pub retain_slots: Vec<String>,
}
