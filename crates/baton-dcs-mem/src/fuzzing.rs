//! The properties the fuzz targets (`fuzz/`, cargo-fuzz, nightly) and this crate's proptest
//! smoke tests (stable, part of `make test`) check on DCS values, which anyone with write
//! access to the cluster's prefix controls: no decoder panics, and every value a decoder
//! accepts survives encode → decode → encode unchanged (the encoders' output is a fixpoint).
//! Each function panics when a property fails and is otherwise silent.

use baton_core::{ClusterView, MemberName, SyncKey};

use crate::record::{
    self, RawKv, decode_config, decode_drills, decode_failover, decode_history, decode_leader,
    decode_member, decode_status, decode_sync, encode_drills, encode_failover, encode_history,
    encode_member, encode_status, encode_sync,
};

/// `text` as the value of every key pgbaton decodes.
pub fn values(text: &str) {
    let name = MemberName::new("m").unwrap_or_default();
    if let Ok(m) = decode_member(name.clone(), text, 7) {
        let first = encode_member(&m);
        let again = decode_member(name.clone(), &first, 7)
            .unwrap_or_else(|e| panic!("member {first:?} (from {text:?}) does not decode: {e}"));
        assert_eq!(encode_member(&again), first, "member from {text:?}");
        assert_eq!(
            decode_member(name.clone(), &encode_member(&again), 7),
            Ok(again)
        );
    }
    if let Ok(leader) = decode_leader(text) {
        assert_eq!(decode_leader(leader.as_str()), Ok(leader));
    }
    if let Ok(config) = decode_config(text) {
        assert_eq!(config, text);
    }
    if let Ok(Some(f)) = decode_failover(text) {
        let first = encode_failover(&f);
        assert_eq!(
            decode_failover(&first),
            Ok(Some(f)),
            "failover {first:?} from {text:?}"
        );
    }
    if let Ok(s) = decode_sync(text) {
        let first = encode_sync(&s);
        let again = decode_sync(&first)
            .unwrap_or_else(|e| panic!("sync {first:?} (from {text:?}) does not decode: {e}"));
        assert_eq!(encode_sync(&again), first, "sync from {text:?}");
        let mut names = s.sync_standby.clone();
        names.sort();
        names.dedup();
        assert_eq!(again.sync_standby, names, "sync from {text:?}");
        assert_eq!((again.leader, again.quorum), (s.leader, s.quorum));
    }
    if let Ok(lines) = decode_history(text) {
        let first = encode_history(&lines);
        assert_eq!(
            decode_history(&first),
            Ok(lines),
            "history {first:?} from {text:?}"
        );
    }
    if let Ok((status, _problems)) = decode_status(text) {
        let slots: Vec<(String, baton_core::Lsn)> =
            status.slots.iter().map(|(k, v)| (k.clone(), *v)).collect();
        let first = encode_status(status.optime, &slots, &status.retain_slots);
        let (again, problems) = decode_status(&first)
            .unwrap_or_else(|e| panic!("status {first:?} (from {text:?}) does not decode: {e}"));
        assert!(problems.is_empty(), "status {first:?}: {problems:?}");
        assert_eq!(
            (again.optime, again.slots, again.retain_slots),
            (status.optime, status.slots, status.retain_slots)
        );
    }
    if let Ok(drills) = decode_drills(text)
        && drills.len() <= record::DRILLS_KEPT
    {
        let first = encode_drills(&drills);
        assert_eq!(decode_drills(&first), Ok(drills), "drills {first:?}");
    }
}

/// One read of the prefix with arbitrary keys and values: never panics; the leader and sync
/// keys count even when undecodable; members come out sorted by name.
pub fn cluster(kvs: &[(Vec<u8>, Vec<u8>, i64)]) {
    let raw: Vec<RawKv<'_>> = kvs
        .iter()
        .enumerate()
        .map(|(i, (key, value, lease))| RawKv {
            key,
            value,
            lease: *lease,
            create_revision: i as i64,
            mod_revision: i as i64,
        })
        .collect();
    let view: ClusterView = record::decode_cluster(42, raw.iter().copied());
    let has = |k: &str| kvs.iter().any(|(key, _, _)| key.as_slice() == k.as_bytes());
    assert_eq!(view.leader.is_some(), has(record::LEADER));
    assert_eq!(
        !matches!(view.sync, SyncKey::Absent),
        has(record::SYNC),
        "{:?}",
        view.sync
    );
    assert!(view.members.windows(2).all(|w| w[0].name <= w[1].name));
}

/// The fuzz targets' properties on stable, with bounded case counts (seconds in `make test`).
#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;

    fn config() -> ProptestConfig {
        ProptestConfig {
            cases: 1500,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    /// Field names the decoders look at, and a few they do not.
    const FIELDS: &[&str] = &[
        "conn_url",
        "api_url",
        "state",
        "role",
        "version",
        "tags",
        "xlog_location",
        "replay_lsn",
        "receive_lsn",
        "replication_state",
        "timeline",
        "pending_restart",
        "pause",
        "pgbaton_reason",
        "conn_kwargs",
        "host",
        "port",
        "nofailover",
        "nosync",
        "failover_priority",
        "sync_priority",
        "noloadbalance",
        "clonefrom",
        "nostream",
        "replicatefrom",
        "zone",
        "leader",
        "member",
        "scheduled_at",
        "sync_standby",
        "quorum",
        "optime",
        "slots",
        "retain_slots",
        "started_at",
        "kind",
        "old_leader",
        "new_leader",
        "reason",
        "rto_ms",
        "rpo_rows",
        "writes_acknowledged",
        "writes_failed",
        "timeline_before",
        "timeline_after",
        "outcome",
        "x",
    ];

    /// JSON values shaped like DCS records: objects keyed by the decoders' field names, lists,
    /// and scalars at the edges (negative, huge, fractional numbers; numeric, empty, comma'd
    /// and non-ASCII strings).
    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e20f64..1e20).prop_map(Value::from),
            "[0-9 ]{0,21}".prop_map(Value::String),
            "[a-z, é\"\\\\]{0,8}".prop_map(Value::String),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 40, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::vec((proptest::sample::select(FIELDS), inner.clone()), 0..8)
                    .prop_map(|kv| Value::Object(
                        kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
                    )),
                // JSON text inside a string (`slots`, `retain_slots` may be).
                inner.prop_map(|v| Value::String(v.to_string())),
            ]
        })
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn any_text_decodes_or_is_refused(s in any::<String>()) {
            values(&s);
        }

        #[test]
        fn record_shaped_values_round_trip(v in json()) {
            values(&v.to_string());
        }

        #[test]
        fn legacy_member_and_failover_forms(s in "(postgres(ql)?://[a-z:@%+&=?#0-9]{0,20}|[a-z ]{0,4}:[a-z ]{0,4}(:[a-z]{0,3})?)") {
            values(&s);
        }

        #[test]
        fn any_prefix_read_decodes(
            kvs in proptest::collection::vec(
                (
                    prop_oneof![
                        proptest::sample::select(&[
                            "leader", "sync", "config", "failover", "history", "status",
                            "optime/leader", "initialize", "members/a", "members/b",
                            "members/", "members/a/b", "failsafe", "drills",
                        ][..]).prop_map(|k| k.as_bytes().to_vec()),
                        proptest::collection::vec(any::<u8>(), 0..12),
                    ],
                    prop_oneof![
                        json().prop_map(|v| v.to_string().into_bytes()),
                        proptest::collection::vec(any::<u8>(), 0..24),
                    ],
                    any::<i64>(),
                ),
                0..10,
            ),
        ) {
            cluster(&kvs);
        }
    }
}
