//! The fuzz targets' properties (`crate::fuzzing`) on stable, with bounded case counts
//! (seconds in `make test`): arbitrary text, JSON-as-YAML shaped like a configuration, a valid
//! file with an arbitrary section added, environment variables with arbitrary values, and
//! arbitrary dynamic configurations.

use proptest::prelude::*;
use serde_json::{Map, Value};

use super::BASE;
use crate::fuzzing;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 400,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Scalars at the edges of what the parsers check.
fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-5i64..40).prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e12f64..1e12).prop_map(Value::from),
        "[0-9]{1,3}(kB|MB|GB|TB|B|x)?".prop_map(Value::String),
        "(on|off|true|false|quorum|yes|no|[a-z]{0,3})".prop_map(Value::String),
        "[0-9.:/a-f\\[\\]]{0,16}".prop_map(Value::String),
        any::<String>().prop_map(Value::String),
    ]
}

/// Objects keyed by `keys` (nested), lists and scalars.
fn tree(keys: &'static [&'static str]) -> impl Strategy<Value = Value> {
    scalar().prop_recursive(4, 48, 8, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::vec((proptest::sample::select(keys), inner), 0..8).prop_map(
                |kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            ),
        ]
    })
}

const FILE_KEYS: &[&str] = &[
    "scope",
    "name",
    "namespace",
    "restapi",
    "listen",
    "connect_address",
    "authentication",
    "username",
    "password",
    "allowlist",
    "certfile",
    "verify_client",
    "etcd3",
    "etcd",
    "host",
    "hosts",
    "protocol",
    "postgresql",
    "data_dir",
    "bin_dir",
    "pgpass",
    "parameters",
    "pg_hba",
    "superuser",
    "replication",
    "sslmode",
    "bootstrap",
    "dcs",
    "ttl",
    "loop_wait",
    "initdb",
    "tags",
    "nofailover",
    "watchdog",
    "mode",
    "log",
    "level",
    "format",
    "ctl",
    "vip",
    "ip",
    "interface",
    "archive_command",
    "max_connections",
    "hba_file",
    "x",
];

const DYNAMIC_KEYS: &[&str] = &[
    "ttl",
    "loop_wait",
    "retry_timeout",
    "maximum_lag_on_failover",
    "primary_start_timeout",
    "master_start_timeout",
    "pause",
    "maximum_lag_on_syncnode",
    "check_timeline",
    "failsafe_mode",
    "synchronous_mode",
    "synchronous_mode_strict",
    "synchronous_node_count",
    "ignore_slots",
    "type",
    "postgresql",
    "use_pg_rewind",
    "use_slots",
    "remove_data_directory_on_rewind_failure",
    "parameters",
    "pg_hba",
    "create_replica_methods",
    "basebackup",
    "standby_cluster",
    "slots",
    "archive_command",
    "Archive_Command",
    "shared_preload_libraries",
    "hba_file",
    "ident_file",
    "wal_level",
    "max_connections",
    "wal_keep_segments",
    "wal_keep_size",
    "track_commit_timestamp",
    "hot_standby",
    "port",
    "work_mem",
    "a.b",
    "1x",
    "x",
];

const ENV_SUFFIXES: &[&str] = &[
    "NAME",
    "SCOPE",
    "NAMESPACE",
    "RESTAPI_LISTEN",
    "RESTAPI_ALLOWLIST",
    "RESTAPI_HTTP_EXTRA_HEADERS",
    "RESTAPI_VERIFY_CLIENT",
    "CTL_INSECURE",
    "POSTGRESQL_LISTEN",
    "POSTGRESQL_DATA_DIR",
    "ETCD3_HOSTS",
    "ETCD3_HOST",
    "ETCD3_PROTOCOL",
    "ETCD_HOSTS",
    "RESTAPI_USERNAME",
    "ETCD3_PASSWORD",
];

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_text_as_a_file(s in any::<String>()) {
        fuzzing::file(&s, &[]);
    }

    #[test]
    fn configuration_shaped_files(v in tree(FILE_KEYS)) {
        // JSON is YAML.
        fuzzing::file(&v.to_string(), &[]);
    }

    #[test]
    fn a_valid_file_with_a_section_added(
        section in proptest::sample::select(FILE_KEYS),
        v in tree(FILE_KEYS),
        raw in "[ -~\n]{0,40}",
    ) {
        fuzzing::file(&format!("{BASE}{section}: {v}\n"), &[]);
        fuzzing::file(&format!("{BASE}{raw}"), &[]);
    }

    #[test]
    fn environment_variables(
        vars in proptest::collection::vec(
            (
                proptest::sample::select(ENV_SUFFIXES),
                any::<bool>(),
                prop_oneof![
                    any::<String>(),
                    "[\\[\\]{}:, a-z0-9.]{0,24}",
                ],
            ),
            0..5,
        ),
    ) {
        let env: Vec<(String, String)> = vars
            .into_iter()
            .map(|(suffix, pgbaton, value)| {
                let prefix = if pgbaton { "PGBATON_" } else { "PATRONI_" };
                (format!("{prefix}{suffix}"), value)
            })
            .collect();
        fuzzing::file(BASE, &env);
    }

    #[test]
    fn any_text_as_dynamic_configuration(s in any::<String>()) {
        fuzzing::dynamic(&s);
    }

    #[test]
    fn dynamic_configurations(v in tree(DYNAMIC_KEYS)) {
        fuzzing::dynamic(&v.to_string());
    }

    #[test]
    fn dynamic_parameters(
        params in proptest::collection::vec(
            (proptest::sample::select(DYNAMIC_KEYS), scalar()),
            0..8,
        ),
        ttl in proptest::option::of(0u64..100),
        loop_wait in proptest::option::of(0u64..100),
        retry in proptest::option::of(0u64..100),
    ) {
        let mut top = Map::new();
        for (k, v) in [("ttl", ttl), ("loop_wait", loop_wait), ("retry_timeout", retry)] {
            if let Some(v) = v {
                top.insert(k.to_owned(), Value::from(v));
            }
        }
        let parameters: Map<String, Value> =
            params.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        top.insert(
            "postgresql".to_owned(),
            serde_json::json!({ "parameters": parameters }),
        );
        fuzzing::dynamic(&Value::Object(top).to_string());
    }
}

/// Found by the `dynamic_config` fuzz target: a large number in `/config` read back a little
/// different each time it went through `raw` (serde_json's fast float parsing is not exact),
/// so every read-modify-write of the key (`PATCH /config`) changed it. Floats are now parsed
/// exactly (`float_roundtrip`).
#[test]
fn regression_large_numbers_survive_the_round_trip() {
    let text = r#"{"Fs ":4000000000000000000000000000000000000000000000000000000000000}"#;
    fuzzing::dynamic(text);
    let (first, _) = crate::DynamicConfig::from_json(text).expect("parses");
    let (second, _) = crate::DynamicConfig::from_json(&first.to_json()).expect("parses");
    assert_eq!(first.to_json(), second.to_json());
    for text in [
        r#"{"x":0.1}"#,
        r#"{"x":1.7976931348623157e308}"#,
        r#"{"x":2.2250738585072014e-308}"#,
        r#"{"x":123456789012345678901234567890.5}"#,
    ] {
        fuzzing::dynamic(text);
    }
}
