//! `pgbaton drill`'s pure parts: whether the cluster is healthy enough to drill on, the RTO and
//! RPO from what the built-in writer saw, who took over and why, and the result tables. The
//! IO (the writer, the switchover or the kill, the DCS history) is in the binary's
//! `cmd/drill.rs`.

use baton_core::{ClusterView, Member};
use baton_dcs::record::DrillRecord;
use serde_json::Value;

use crate::table::Table;

/// The table the writer commits into; created by the drill, dropped after it unless `--keep`.
pub const TABLE: &str = "pgbaton_drill";

/// Patroni's default `maximum_lag_on_failover` (1 MiB).
const DEFAULT_MAXIMUM_LAG: u64 = 1_048_576;

/// One write of the built-in writer: its sequence number, when it was sent and when its answer
/// came (milliseconds since the drill started), and whether the commit was acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attempt {
    pub seq: u64,
    pub sent_ms: u64,
    pub done_ms: u64,
    pub acked: bool,
}

/// The outage the writer saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rto {
    /// From the acknowledgement of `last_before` to that of `first_after`.
    pub ms: u64,
    /// The last write acknowledged before the outage.
    pub last_before: u64,
    /// The first write acknowledged after it.
    pub first_after: u64,
}

/// The RTO: the longest time between two consecutive acknowledgements, counted from the last
/// write acknowledged at or before `trigger_ms` (when the switchover was requested or the
/// primary killed). `None` when no write was acknowledged before the trigger or none after it.
pub fn rto(attempts: &[Attempt], trigger_ms: u64) -> Option<Rto> {
    let mut acks: Vec<&Attempt> = attempts.iter().filter(|a| a.acked).collect();
    acks.sort_by_key(|a| (a.done_ms, a.seq));
    let start = acks.iter().rposition(|a| a.done_ms <= trigger_ms)?;
    acks[start..]
        .windows(2)
        .map(|w| Rto {
            ms: w[1].done_ms - w[0].done_ms,
            last_before: w[0].seq,
            first_after: w[1].seq,
        })
        // The first of equally long gaps: the outage itself, not a later hiccup.
        .fold(None, |best: Option<Rto>, gap| match best {
            Some(b) if b.ms >= gap.ms => Some(b),
            _ => Some(gap),
        })
}

/// The RPO: the acknowledged writes whose rows the new primary does not have (sorted).
/// Writes that failed or timed out may or may not have committed; they never count.
pub fn missing_rows(attempts: &[Attempt], found: &[u64]) -> Vec<u64> {
    let found: std::collections::BTreeSet<u64> = found.iter().copied().collect();
    let mut missing: Vec<u64> = attempts
        .iter()
        .filter(|a| a.acked && !found.contains(&a.seq))
        .map(|a| a.seq)
        .collect();
    missing.sort_unstable();
    missing
}

/// The dynamic configuration's `pause`, `maximum_lag_on_failover` and whether
/// `synchronous_mode` is on (`true`, `on` or `quorum`).
fn config_settings(view: &ClusterView) -> (bool, u64, bool) {
    let config: Option<Value> = view
        .config
        .as_ref()
        .and_then(|c| serde_json::from_str(&c.value).ok());
    let get = |k: &str| config.as_ref().and_then(|c| c.get(k));
    let pause = get("pause").is_some_and(|v| v.as_bool() == Some(true));
    let lag = get("maximum_lag_on_failover")
        .and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        })
        .unwrap_or(DEFAULT_MAXIMUM_LAG);
    let synchronous = get("synchronous_mode").is_some_and(|v| match v {
        Value::Bool(b) => *b,
        Value::String(s) => matches!(s.to_ascii_lowercase().as_str(), "true" | "on" | "quorum"),
        _ => false,
    });
    (pause, lag, synchronous)
}

/// Why the cluster is not healthy enough to drill on (empty: it is): no leader, maintenance
/// mode, a pending switchover, a member not running, a replica not streaming or lagging more
/// than `maximum_lag_on_failover` behind the leader, synchronous mode without a synchronous
/// standby in `/sync`, no member that may take over.
pub fn health_problems(view: &ClusterView) -> Vec<String> {
    let mut problems = Vec::new();
    let (paused, maximum_lag, synchronous) = config_settings(view);
    let Some(leader) = view.leader_member() else {
        problems.push(match view.leader_name() {
            Some(name) => format!("the leader {name} has no member key"),
            None => "the cluster has no leader".to_owned(),
        });
        return problems;
    };
    if paused || view.members.iter().any(|m| m.pause) {
        problems.push("the cluster is paused (maintenance mode)".to_owned());
    }
    if view.failover.is_some() {
        problems.push("a switchover or failover is already pending".to_owned());
    }
    if !leader.runs_as_primary() {
        problems.push(format!(
            "the leader {} is not a running primary (role {}, state {})",
            leader.name, leader.role, leader.state
        ));
    }
    let leader_lsn = leader
        .xlog_location
        .map(|l| l.0)
        .max(view.optime().map(|l| l.0))
        .unwrap_or(0);
    let replicas: Vec<&Member> = view
        .members
        .iter()
        .filter(|m| m.name != leader.name)
        .collect();
    if replicas.is_empty() {
        problems.push("the cluster has no replica to take over".to_owned());
    }
    for m in &replicas {
        if m.state != "running" {
            problems.push(format!("member {} is {}", m.name, m.state));
            continue;
        }
        if m.replication_state.as_deref() != Some("streaming") {
            problems.push(format!(
                "member {} is not streaming (replication state {})",
                m.name,
                m.replication_state.as_deref().unwrap_or("unknown")
            ));
        }
        let lag = leader_lsn.saturating_sub(m.xlog_location.map_or(0, |l| l.0));
        if lag > maximum_lag {
            problems.push(format!(
                "member {} lags {lag} bytes behind the leader (maximum_lag_on_failover is \
                 {maximum_lag})",
                m.name
            ));
        }
    }
    let sync_standbys = view
        .sync
        .present()
        .map_or(0, |s| s.value.sync_standby.len());
    if synchronous && !replicas.is_empty() && sync_standbys == 0 {
        problems.push("synchronous_mode is on but /sync names no synchronous standby".to_owned());
    }
    if !replicas.is_empty() && replicas.iter().all(|m| m.tags.is_nofailover()) {
        problems.push("every replica is tagged nofailover".to_owned());
    }
    problems
}

/// What a member says in its member key (`pgbaton_reason`) while it takes over: "promoted self
/// to leader ...". The drill watches the member keys for it, since the next HA cycle replaces
/// it with the steady "no action. I am the leader with the lock".
pub fn promotion_reason<'v>(view: &'v ClusterView, not: &str) -> Option<(&'v str, &'v str)> {
    view.members
        .iter()
        .filter(|m| m.name.as_str() != not)
        .find_map(|m| {
            let reason = m.reason.as_deref()?;
            reason
                .starts_with("promoted")
                .then_some((m.name.as_str(), reason))
        })
}

/// Why the new leader took over: the promotion reason it gave (`seen`, see
/// [`promotion_reason`]) or still gives in its member key, else the reason of the `history`
/// line written for the timeline it left.
pub fn takeover_reason(
    view: &ClusterView,
    new_leader: &str,
    timeline_before: Option<u32>,
    seen: Option<&str>,
) -> Option<String> {
    if let Some(reason) = seen {
        return Some(reason.to_owned());
    }
    if let Some((_, reason)) = promotion_reason(view, "").filter(|(name, _)| *name == new_leader) {
        return Some(reason.to_owned());
    }
    view.history
        .iter()
        .rev()
        .find(|h| timeline_before.is_none_or(|t| h.timeline.0 >= t))
        .map(|h| h.reason.clone())
}

fn opt<T: ToString>(v: Option<T>) -> Value {
    v.map_or(Value::Null, |v| Value::String(v.to_string()))
}

fn seconds(ms: Option<u64>) -> Value {
    ms.map_or(Value::Null, |ms| {
        Value::String(format!("{:.3}", ms as f64 / 1000.0))
    })
}

/// The result of one drill as a two-column table (pretty / tsv).
pub fn result_table(scope: &str, r: &DrillRecord) -> Table {
    let rows: Vec<(&str, Value)> = vec![
        ("Started", r.started_at.clone().into()),
        ("Kind", r.kind.clone().into()),
        ("Old leader", r.old_leader.clone().into()),
        ("New leader", opt(r.new_leader.as_ref())),
        ("Reason", opt(r.reason.as_ref())),
        ("RTO (s)", seconds(r.rto_ms)),
        ("RPO (rows)", opt(r.rpo_rows)),
        (
            "Writes acknowledged",
            r.writes_acknowledged.to_string().into(),
        ),
        ("Writes failed", r.writes_failed.to_string().into()),
        (
            "Timeline",
            format!(
                "{} -> {}",
                r.timeline_before.map_or("?".into(), |t| t.to_string()),
                r.timeline_after.map_or("?".into(), |t| t.to_string())
            )
            .into(),
        ),
        ("Outcome", r.outcome.clone().into()),
    ];
    Table {
        title: Some(format!("Drill of cluster: {scope}")),
        columns: vec!["Item".into(), "Value".into()],
        rows: rows
            .into_iter()
            .map(|(k, v)| vec![Value::String(k.into()), v])
            .collect(),
        right: Vec::new(),
        members: false,
    }
}

/// `drill --history`: one row per drill, oldest first.
pub fn history_table(scope: &str, records: &[DrillRecord]) -> Table {
    Table {
        title: Some(format!("Drills of cluster: {scope}")),
        columns: [
            "Started",
            "Kind",
            "Old leader",
            "New leader",
            "RTO (s)",
            "RPO (rows)",
            "Writes",
            "Outcome",
        ]
        .into_iter()
        .map(String::from)
        .collect(),
        rows: records
            .iter()
            .map(|r| {
                vec![
                    r.started_at.clone().into(),
                    r.kind.clone().into(),
                    r.old_leader.clone().into(),
                    opt(r.new_leader.as_ref()),
                    seconds(r.rto_ms),
                    opt(r.rpo_rows),
                    r.writes_acknowledged.to_string().into(),
                    r.outcome.clone().into(),
                ]
            })
            .collect(),
        right: vec!["RTO (s)", "RPO (rows)", "Writes"],
        members: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_core::{LeaderKey, Lsn, MemberName, Versioned};

    fn a(seq: u64, sent_ms: u64, done_ms: u64, acked: bool) -> Attempt {
        Attempt {
            seq,
            sent_ms,
            done_ms,
            acked,
        }
    }

    #[test]
    fn rto_is_the_gap_from_the_last_ack_before_the_trigger_to_the_first_after() {
        // Acks every 10 ms, the trigger at 35, failures from 40 to 1500, acks again from 1510.
        let attempts = [
            a(1, 0, 10, true),
            a(2, 10, 20, true),
            a(3, 20, 30, true),
            a(4, 30, 40, false),
            a(5, 40, 1500, false),
            a(6, 1500, 1510, true),
            a(7, 1510, 1520, true),
        ];
        assert_eq!(
            rto(&attempts, 35),
            Some(Rto {
                ms: 1480,
                last_before: 3,
                first_after: 6
            })
        );
        // A hiccup before the trigger does not count.
        let mut with_hiccup = vec![a(0, 0, 0, true), a(10, 0, 5000, true)];
        with_hiccup.extend(attempts.iter().map(|x| Attempt {
            done_ms: x.done_ms + 5000,
            ..*x
        }));
        assert_eq!(rto(&with_hiccup, 5035).map(|r| r.ms), Some(1480));
        // Nothing acknowledged after the trigger, or nothing before it: no RTO.
        assert_eq!(rto(&attempts[..5], 35), None);
        assert_eq!(rto(&attempts[3..], 35), None);
        assert_eq!(rto(&[], 0), None);
    }

    #[test]
    fn rpo_counts_only_acknowledged_rows_that_are_missing() {
        let attempts = [
            a(1, 0, 1, true),
            a(2, 1, 2, true),
            a(3, 2, 3, false),
            a(4, 3, 4, true),
        ];
        assert_eq!(missing_rows(&attempts, &[1, 2, 4]), Vec::<u64>::new());
        // A failed write that committed anyway is no loss, and one that did not is none either.
        assert_eq!(missing_rows(&attempts, &[1, 2, 3, 4]), Vec::<u64>::new());
        assert_eq!(missing_rows(&attempts, &[1]), vec![2, 4]);
    }

    fn member(name: &str, role: &str) -> Member {
        Member {
            name: MemberName::new(name).unwrap(),
            state: "running".into(),
            role: role.into(),
            replication_state: (role == "replica").then(|| "streaming".to_owned()),
            xlog_location: Some(Lsn(100_000_000)),
            ..Member::default()
        }
    }

    fn healthy() -> ClusterView {
        ClusterView {
            leader: Some(LeaderKey {
                name: MemberName::new("node1"),
                lease: 1,
                create_revision: 1,
                mod_revision: 1,
            }),
            members: vec![
                member("node1", "primary"),
                member("node2", "replica"),
                member("node3", "replica"),
            ],
            config: Some(Versioned {
                value: r#"{"ttl":10,"maximum_lag_on_failover":1048576}"#.into(),
                mod_revision: 1,
            }),
            ..ClusterView::default()
        }
    }

    #[test]
    fn a_healthy_cluster_has_no_problems() {
        assert_eq!(health_problems(&healthy()), Vec::<String>::new());
    }

    #[test]
    fn each_unhealthy_state_is_named() {
        let mut v = healthy();
        v.leader = None;
        assert_eq!(health_problems(&v), ["the cluster has no leader"]);

        let mut v = healthy();
        v.members[2].state = "stopped".into();
        v.members[1].replication_state = None;
        assert_eq!(
            health_problems(&v),
            [
                "member node2 is not streaming (replication state unknown)",
                "member node3 is stopped"
            ]
        );

        let mut v = healthy();
        v.members[1].xlog_location = Some(Lsn(100_000_000 - 2_000_000));
        assert_eq!(
            health_problems(&v),
            [
                "member node2 lags 2000000 bytes behind the leader (maximum_lag_on_failover is 1048576)"
            ]
        );

        let mut v = healthy();
        v.config.as_mut().unwrap().value = r#"{"pause":true}"#.into();
        assert_eq!(
            health_problems(&v),
            ["the cluster is paused (maintenance mode)"]
        );

        let mut v = healthy();
        v.config.as_mut().unwrap().value = r#"{"synchronous_mode":"quorum"}"#.into();
        assert_eq!(
            health_problems(&v),
            ["synchronous_mode is on but /sync names no synchronous standby"]
        );
        v.sync = baton_core::SyncKey::Present(Versioned {
            value: baton_core::SyncState {
                leader: MemberName::new("node1"),
                sync_standby: vec![MemberName::new("node2").unwrap()],
                quorum: 1,
            },
            mod_revision: 3,
        });
        assert_eq!(health_problems(&v), Vec::<String>::new());

        let mut v = healthy();
        v.members.truncate(1);
        assert_eq!(
            health_problems(&v),
            ["the cluster has no replica to take over"]
        );
    }

    #[test]
    fn the_reason_is_the_promotion_seen_else_the_history() {
        let mut v = healthy();
        v.history = vec![baton_core::HistoryLine {
            timeline: baton_core::Timeline(1),
            lsn: Lsn(1),
            reason: "no recovery target specified".into(),
            timestamp: None,
            new_leader: Some("node2".into()),
        }];
        v.members[1].reason = Some("no action. I am the leader with the lock".into());
        assert_eq!(promotion_reason(&v, "node1"), None);
        assert_eq!(
            takeover_reason(&v, "node2", Some(1), None).as_deref(),
            Some("no recovery target specified")
        );
        let promoted = "promoted self to leader by acquiring session lock";
        assert_eq!(
            takeover_reason(&v, "node2", Some(1), Some(promoted)).as_deref(),
            Some(promoted)
        );
        v.members[1].reason = Some(promoted.into());
        assert_eq!(promotion_reason(&v, "node1"), Some(("node2", promoted)));
        assert_eq!(promotion_reason(&v, "node2"), None);
        assert_eq!(
            takeover_reason(&v, "node2", Some(1), None).as_deref(),
            Some(promoted)
        );
        assert_eq!(takeover_reason(&healthy(), "node2", Some(1), None), None);
    }
}
