//! Issue 10.6: `create_replica_methods` with custom methods and `postgresql.basebackup`, in
//! the local file; custom methods refused in the dynamic configuration.

use baton_core::{CustomMethod, ReplicaMethod};
use expect_test::expect;

use super::{BASE, check, load};

fn with_pg(extra: &str) -> String {
    BASE.replace(
        "  data_dir: data/postgresql0\n",
        &format!("  data_dir: data/postgresql0\n{extra}"),
    )
}

#[test]
fn custom_methods_are_read_in_order_with_their_keys() {
    let loaded = load(&with_pg(
        "  create_replica_methods: [pgbackrest, wal_e, basebackup]\n  pgbackrest:\n    \
         command: /bin/echo restore --stanza=main\n    keep_data: true\n    no_params: true\n    \
         delta: yes\n  wal_e:\n    command: /bin/true\n    no_master: 1\n    threads: 4\n    \
         fast: false\n",
    ));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let methods = &loaded.config.postgresql.create_replica_methods;
    assert_eq!(
        methods,
        &[
            ReplicaMethod::Custom(CustomMethod {
                name: "pgbackrest".into(),
                argv: vec!["/bin/echo".into(), "restore".into(), "--stanza=main".into()],
                no_leader: false,
                keep_data: true,
                no_params: true,
                options: vec![
                    ("delta".into(), "yes".into()),
                    ("keep_data".into(), "True".into()),
                    ("no_params".into(), "True".into()),
                ],
            }),
            ReplicaMethod::Custom(CustomMethod {
                name: "wal_e".into(),
                argv: vec!["/bin/true".into()],
                no_leader: true,
                keep_data: false,
                no_params: false,
                options: vec![
                    ("fast".into(), "False".into()),
                    ("no_master".into(), "1".into()),
                    ("threads".into(), "4".into()),
                ],
            }),
            ReplicaMethod::Basebackup,
        ]
    );
}

#[test]
fn a_method_without_a_section_runs_its_name_and_says_so_when_it_cannot() {
    let loaded = load(&with_pg(
        "  create_replica_methods: [pgbaton_no_such_restore_tool]\n",
    ));
    assert_eq!(
        loaded.config.postgresql.create_replica_methods,
        [ReplicaMethod::Custom(CustomMethod {
            name: "pgbaton_no_such_restore_tool".into(),
            argv: vec!["pgbaton_no_such_restore_tool".into()],
            no_leader: false,
            keep_data: false,
            no_params: false,
            options: vec![],
        })]
    );
    let warnings: Vec<String> = loaded.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(
        warnings,
        [
            "postgresql.pgbaton_no_such_restore_tool: no command: runs \"pgbaton_no_such_restore_tool\"; the command cannot be run: \"pgbaton_no_such_restore_tool\" is not an executable file in PATH"
        ]
    );
}

#[test]
fn a_missing_script_is_a_warning_naming_its_key() {
    let loaded = load(&with_pg(
        "  create_replica_methods: [restore]\n  restore:\n    command: /nonexistent/restore.sh\n",
    ));
    let warnings: Vec<String> = loaded.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("postgresql.restore.command: the command cannot be run"),
        "{warnings:?}"
    );
}

#[test]
fn bad_methods_name_their_key() {
    check(
        &with_pg(
            "  create_replica_methods: [listen, a.b, restore, other, empty]\n  restore:\n    \
             command: \"/bin/echo 'unclosed\"\n    no_leader: maybe\n    list: [1, 2]\n  \
             other: /bin/true\n  empty:\n    command: ''\n",
        ),
        expect![[r#"
            errors:
            postgresql.create_replica_methods[0]: "listen" is a key of postgresql, not a replica method (its section would be postgresql.listen)
            postgresql.create_replica_methods[1]: "a.b" is not a method name
            postgresql.restore.command: cannot split "/bin/echo 'unclosed" into words: an unclosed quote or a trailing backslash
            postgresql.restore.list: expected a string, number or boolean (passed as --key=value), found a list
            postgresql.restore.no_leader: expected a boolean, found the string "maybe"
            postgresql.other: expected a mapping (the method's command and options), found the string "/bin/true"
            postgresql.empty.command: expected a command, found an empty string
        "#]],
    );
}

#[test]
fn a_section_not_listed_is_still_unknown() {
    check(
        &with_pg("  create_replica_methods: [basebackup]\n  pgbackrest:\n    command: /bin/true\n"),
        expect![[r#"
            errors:
            postgresql.pgbackrest: unknown key
        "#]],
    );
}

#[test]
fn basebackup_options_in_list_and_mapping_form() {
    let list = load(&with_pg(
        "  basebackup:\n    - max-rate: 100M\n    - checkpoint: fast\n    - verbose\n    - \
         --waldir=/wal\n",
    ));
    assert_eq!(
        list.config.postgresql.basebackup,
        [
            "--max-rate=100M",
            "--checkpoint=fast",
            "--verbose",
            "--waldir=/wal"
        ]
    );
    let map = load(&with_pg(
        "  basebackup:\n    max-rate: 100M\n    checkpoint: spread\n",
    ));
    assert_eq!(
        map.config.postgresql.basebackup,
        ["--checkpoint=spread", "--max-rate=100M"]
    );
}

#[test]
fn basebackup_options_pgbaton_sets_are_refused_with_their_path() {
    check(
        &with_pg(
            "  basebackup:\n    - pgdata: /elsewhere\n    - wal-method: fetch\n    - X\n    - \
             {a: b, c: d}\n    - [x]\n    - format: tar\n    - dbname: host=evil\n    - \
             target: server:/tmp\n    - max-rate: [1]\n",
        ),
        expect![[r#"
            errors:
            postgresql.basebackup[0]: pg_basebackup option "pgdata" is set by pgbaton and cannot be given
            postgresql.basebackup[1]: pg_basebackup option "wal-method" is set by pgbaton and cannot be given
            postgresql.basebackup[2]: pg_basebackup option "X": give the long form (max-rate, not r)
            postgresql.basebackup[3]: expected a single "option: value" pair, found 2 keys
            postgresql.basebackup[4]: expected a pg_basebackup option or a single "option: value" pair, found a list
            postgresql.basebackup[5]: pg_basebackup option "format" is set by pgbaton and cannot be given
            postgresql.basebackup[6]: pg_basebackup option "dbname" is set by pgbaton and cannot be given
            postgresql.basebackup[7]: pg_basebackup option "target" is set by pgbaton and cannot be given
            postgresql.basebackup[8]: expected a string or number as the option's value, found a list
        "#]],
    );
    check(
        &with_pg("  basebackup: fast\n"),
        expect![[r#"
            errors:
            postgresql.basebackup: expected a list or mapping of pg_basebackup options, found the string "fast"
        "#]],
    );
}

#[test]
fn custom_methods_and_basebackup_are_refused_in_the_dynamic_configuration() {
    let yaml = BASE.to_owned()
        + "bootstrap:\n  dcs:\n    postgresql:\n      create_replica_methods: [wal_g]\n      \
           wal_g:\n        command: wal-g\n      basebackup: [{max-rate: 1M}]\n";
    check(
        &yaml,
        expect![[r#"
            errors:
            bootstrap.dcs.postgresql.create_replica_methods: refused in the dynamic configuration: a custom replica method runs a command as the agent's user, taken from the local configuration file only (whoever can write the dynamic configuration could otherwise run code on every member); set create_replica_methods and the methods' sections in the local file
            bootstrap.dcs.postgresql.basebackup: refused in the dynamic configuration: taken from the local configuration file only, with create_replica_methods; set it in the local file
        "#]],
    );
}
