//! What `pgbaton validate-config` prints: Patroni's own example file gives exactly its refused
//! and warned keys, nothing else.

use std::path::PathBuf;

use baton_cli::validate::report;
use expect_test::expect;

fn no_env(_: &str) -> Option<String> {
    None
}

#[test]
fn patroni_postgres0_yml_reports_its_warned_keys_and_nothing_else() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/patroni-postgres0.yml");
    let result = baton_config::load_file(&path, &no_env);
    let text = report("postgres0.yml", &result).to_string();
    expect![[r#"
        warning: etcd: read as etcd3: pgbaton talks to etcd with the v3 API only, so keys a Patroni cluster wrote through the v2 API are not visible to it
        warning: postgresql.pgpass: /tmp/pgpass0 is in /tmp, a directory every local user can write to; remove the key to use the default, beside the data directory
        postgres0.yml: configuration is valid (2 warnings)
    "#]]
    .assert_eq(&text);
}

#[test]
fn refused_keys_are_errors_and_the_verdict_counts_them() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/patroni-postgres0.yml");
    let text = std::fs::read_to_string(&path).expect("test data");
    // Patroni's file with the keys its comments show switched on.
    let yaml = text
        .replace(
            "#citus:\n#  database: citus\n#  group: 0",
            "citus:\n  database: citus\n  group: 0",
        )
        // A standby cluster is supported, archive-only too; with neither a host nor a
        // restore_command it is refused.
        .replace(
            "    #standby_cluster:\n      #host: 127.0.0.1\n      #port: 1111",
            "    standby_cluster:\n      port: 1111",
        )
        .replace(
            "#watchdog:\n#  mode: automatic",
            "watchdog:\n  mode: required",
        )
        .replace("  #pre_promote:", "  pre_promote:");
    let result = baton_config::load_str(&yaml, &no_env);
    let r = report("postgres0.yml", &result);
    assert!(!r.ok);
    expect![[r#"
        error: bootstrap.dcs.standby_cluster.host: not supported by pgbaton yet: a standby cluster with neither host nor restore_command has nothing to replicate from: set host (and port) to stream from the remote primary, or restore_command to replay its WAL archive
        error: citus: not supported by pgbaton yet: Patroni keeps a Citus group's keys under /<namespace>/<scope>/<group>/, so pgbaton, which would read and write /<namespace>/<scope>/ instead, would run a second, separate cluster beside this group's Patroni members (two primaries)
        postgres0.yml: configuration is invalid (2 errors)
    "#]]
    .assert_eq(&r.to_string());
}

#[test]
fn a_file_without_warnings_is_just_valid() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/pgbaton.yml");
    let result = baton_config::load_file(&path, &no_env);
    expect![[r#"
        pgbaton.yml: configuration is valid
    "#]]
    .assert_eq(&report("pgbaton.yml", &result).to_string());
}
