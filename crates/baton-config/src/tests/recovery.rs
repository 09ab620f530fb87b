//! Issue 10.6: a custom bootstrap (`bootstrap.method` with its section) and
//! `postgresql.recovery_conf`, read from the local file with their key paths; refused in the
//! dynamic configuration.

use baton_core::CustomBootstrap;
use expect_test::expect;

use super::{BASE, check, load};

fn with_pg(extra: &str) -> String {
    BASE.replace(
        "  data_dir: data/postgresql0\n",
        &format!("  data_dir: data/postgresql0\n{extra}"),
    )
}

fn with_bootstrap(section: &str) -> String {
    format!("{BASE}bootstrap:\n{section}")
}

#[test]
fn a_custom_bootstrap_is_read_with_its_keys_and_recovery_settings() {
    let loaded = load(&with_bootstrap(
        "  method: restore\n  restore:\n    command: /bin/echo --from 'a b'\n    \
         keep_existing_recovery_conf: true\n    stanza: main\n    delta: true\n    \
         recovery_conf:\n      restore_command: cp /archive/%f %p\n      \
         recovery_target_action: promote\n      Recovery_Target_Time: '2026-12-01 10:00:00'\n",
    ));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let method = loaded.config.bootstrap.and_then(|b| b.method);
    assert_eq!(
        method,
        Some(CustomBootstrap {
            name: "restore".into(),
            argv: vec!["/bin/echo".into(), "--from".into(), "a b".into()],
            no_params: false,
            keep_existing_recovery_conf: true,
            recovery_conf: Some(vec![
                ("recovery_target_time".into(), "2026-12-01 10:00:00".into()),
                ("recovery_target_action".into(), "promote".into()),
                ("restore_command".into(), "cp /archive/%f %p".into()),
            ]),
            options: vec![
                ("delta".into(), "True".into()),
                ("stanza".into(), "main".into()),
            ],
        })
    );
}

#[test]
fn initdb_and_no_method_mean_no_custom_bootstrap() {
    for section in ["  method: initdb\n", "  initdb: [data-checksums]\n"] {
        let loaded = load(&with_bootstrap(section));
        assert_eq!(loaded.config.bootstrap.and_then(|b| b.method), None);
    }
}

#[test]
fn bad_custom_bootstraps_name_their_key() {
    check(
        &with_bootstrap("  method: restore\n"),
        expect![[r#"
            errors:
            bootstrap.restore: required by bootstrap.method "restore": the method's section with its command (Patroni would run initdb instead)
        "#]],
    );
    check(
        &with_bootstrap("  method: restore\n  restore:\n    no_params: true\n"),
        expect![[r#"
            errors:
            bootstrap.restore.command: required key is missing
        "#]],
    );
    check(
        &with_bootstrap("  method: dcs\n"),
        expect![[r#"
            errors:
            bootstrap.method: "dcs" is a key of bootstrap, not a bootstrap method (its section would be bootstrap.dcs)
        "#]],
    );
    check(
        &with_bootstrap(
            "  method: restore\n  restore:\n    command: /bin/true\n    no_params: maybe\n    \
             keep_existing_recovery_conf: []\n    target: [1]\n    scope: other\n    \
             recovery_conf:\n      standby_mode: 'on'\n      bad-name: x\n      \
             restore_command: [cp]\n",
        ),
        expect![[r#"
            errors:
            bootstrap.restore.no_params: expected a boolean, found the string "maybe"
            bootstrap.restore.keep_existing_recovery_conf: expected a boolean, found a list
            bootstrap.restore.recovery_conf.bad-name: "bad-name" is not a PostgreSQL parameter name: only ASCII letters, digits and "_" (and one "."), found '-'
            bootstrap.restore.recovery_conf.restore_command: expected a PostgreSQL value (a string, number or boolean), found a list
            bootstrap.restore.recovery_conf.standby_mode: a bootstrap's recovery must end with a primary: standby_mode would keep the new cluster a standby (use recovery_target_action: promote)
            bootstrap.restore.target: expected a string, number or boolean (passed as --key=value), found a list
        "#]],
    );
}

#[test]
fn replica_recovery_settings_are_read_and_pgbatons_own_refused() {
    let loaded = load(&with_pg(
        "  recovery_conf:\n    restore_command: cp /archive/%f %p\n    \
         recovery_min_apply_delay: 5min\n    archive_cleanup_command: /bin/true\n",
    ));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert_eq!(
        loaded.config.postgresql.recovery_conf,
        [
            ("archive_cleanup_command".to_owned(), "/bin/true".to_owned()),
            ("recovery_min_apply_delay".to_owned(), "5min".to_owned()),
            ("restore_command".to_owned(), "cp /archive/%f %p".to_owned()),
        ]
    );
    check(
        &with_pg(
            "  recovery_conf:\n    primary_conninfo: host=elsewhere\n    \
             primary_slot_name: s\n    standby_mode: 'on'\n",
        ),
        expect![[r#"
            errors:
            postgresql.recovery_conf.primary_conninfo: pgbaton sets primary_conninfo itself on every replica (the leader it streams from, its slot, standby.signal); remove it
            postgresql.recovery_conf.primary_slot_name: pgbaton sets primary_slot_name itself on every replica (the leader it streams from, its slot, standby.signal); remove it
            postgresql.recovery_conf.standby_mode: pgbaton sets standby_mode itself on every replica (the leader it streams from, its slot, standby.signal); remove it
        "#]],
    );
    check(
        &with_pg("  recovery_conf:\n    recovery_target_timeline: '3'\n"),
        expect![[r#"
            ok, warnings:
            postgresql.recovery_conf.recovery_target_timeline: ignored, as in Patroni: a replica follows the latest timeline and has no recovery target
        "#]],
    );
}

#[test]
fn recovery_settings_are_refused_in_the_dynamic_configuration() {
    check(
        &with_bootstrap(
            "  dcs:\n    postgresql:\n      recovery_conf:\n        restore_command: cp %f %p\n",
        ),
        expect![[r#"
            errors:
            bootstrap.dcs.postgresql.recovery_conf: refused in the dynamic configuration: recovery settings run commands as the postgres OS user (restore_command, archive_cleanup_command), so pgbaton takes them from the local configuration file only; set postgresql.recovery_conf in the local file
        "#]],
    );
}
