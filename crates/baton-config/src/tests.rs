use std::collections::BTreeMap;

use expect_test::{Expect, expect};

use crate::{
    DynamicConfig, Loaded, effective_ha, effective_pg_hba, load_file, load_str, merged_parameters,
};

mod conn_tls;
mod fuzz;
mod hooks;
mod local_only;
mod recovery;
mod replica;
mod standby_archive;
mod support;
mod tls;

fn no_env(_: &str) -> Option<String> {
    None
}

fn env_from(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |k: &str| map.get(k).cloned()
}

/// [`BASE`]'s `postgresql.pg_hba`.
const BASE_HBA: &str = "  pg_hba:\n    - host all all 127.0.0.1/32 scram-sha-256\n";

/// A small valid file; tests add or change keys with `with`.
const BASE: &str = "\
scope: batman
name: postgresql0
restapi:
  listen: 127.0.0.1:8008
  connect_address: 127.0.0.1:8008
etcd3:
  host: 127.0.0.1:2379
postgresql:
  listen: 127.0.0.1:5432
  connect_address: 127.0.0.1:5432
  data_dir: data/postgresql0
  authentication:
    superuser:
      username: postgres
      password: patroni
    replication:
      username: replicator
      password: rep-pass
  pg_hba:
    - host all all 127.0.0.1/32 scram-sha-256
";

fn load(yaml: &str) -> Loaded {
    match load_str(yaml, &no_env) {
        Ok(l) => l,
        Err(e) => panic!("expected the configuration to load, got:\n{e}"),
    }
}

/// Loads `yaml` with `env` and renders the outcome: the errors, or the warnings.
fn outcome(yaml: &str, env: &dyn Fn(&str) -> Option<String>) -> String {
    match load_str(yaml, env) {
        Ok(l) if l.warnings.is_empty() => "ok\n".to_owned(),
        Ok(l) => format!("ok, warnings:\n{}\n", l.warnings.join("\n")),
        Err(e) => format!("errors:\n{e}\n"),
    }
}

fn check(yaml: &str, expect: Expect) {
    expect.assert_eq(&outcome(yaml, &no_env));
}

fn check_env(yaml: &str, env: &[(&str, &str)], expect: Expect) {
    expect.assert_eq(&outcome(yaml, &env_from(env)));
}

#[test]
fn base_file_loads_without_warnings() {
    check(
        BASE,
        expect![[r#"
        ok
    "#]],
    );
}

#[test]
fn patroni_file_parses_fully() {
    // The shape of Patroni's postgres0.yml as its acceptance harness generates it.
    let yaml = r#"
scope: batman
namespace: /service/
name: postgres-0
restapi:
  listen: 0.0.0.0:8008
  connect_address: 10.0.0.11:8008
  authentication:
    username: username
    password: password
etcd3:
  hosts:
    - 10.0.0.1:2379
    - 10.0.0.2
  protocol: http
bootstrap:
  dcs:
    ttl: 30
    loop_wait: 2
    retry_timeout: 10
    maximum_lag_on_failover: 1048576
    postgresql:
      use_pg_rewind: true
      pg_hba:
        - host replication replicator 127.0.0.1/32 md5
        - host all all 0.0.0.0/0 md5
      parameters:
        wal_keep_segments: 100
        archive_mode: "on"
        max_connections: 200
  initdb:
    - encoding: UTF8
    - data-checksums
    - auth: md5
    - auth-host: md5
postgresql:
  listen: 127.0.0.1,::1:5432
  connect_address: 10.0.0.11:5432
  data_dir: data/postgres-0
  pgpass: /tmp/pgpass_postgres-0
  authentication:
    replication:
      username: replicator
      password: rep-pass
    superuser:
      username: postgres
      password: patroni
    rewind:
      username: rewind_user
      password: rewind_password
  parameters:
    unix_socket_directories: '..'
    log_statement: all
    shared_buffers: 1MB
    logging_collector: true
    log_min_duration_statement: 0
tags:
  noloadbalance: false
  clonefrom: false
  nosync: false
  nostream: false
  zone: eu-1
"#;
    let loaded = load(yaml);
    expect![[r#"
        Config {
            scope: "batman",
            namespace: "/service",
            name: "postgres-0",
            restapi: RestApi {
                listen: "0.0.0.0:8008",
                listen_addr: 0.0.0.0:8008,
                connect_address: "10.0.0.11:8008",
                authentication: Some(
                    (
                        "username",
                        "<redacted>",
                    ),
                ),
                tls: None,
                allowlist: [],
                allowlist_include_members: false,
                extra_headers: [],
            },
            ctl: Ctl {
                authentication: None,
                insecure: false,
                cacert: None,
                certfile: None,
                keyfile: None,
                keyfile_password: None,
            },
            etcd: Etcd {
                hosts: [
                    "10.0.0.1:2379",
                    "10.0.0.2:2379",
                ],
                protocol: "http",
                username: None,
                password: None,
                cacert: None,
                cert: None,
                key: None,
                key_password: None,
            },
            bootstrap: Some(
                Bootstrap {
                    dcs: DynamicConfig {
                        ttl: 30,
                        loop_wait: 2,
                        retry_timeout: 10,
                        maximum_lag_on_failover: 1048576,
                        primary_start_timeout: 300,
                        pause: false,
                        failsafe_mode: false,
                        use_pg_rewind: true,
                        use_slots: true,
                        remove_data_directory_on_rewind_failure: false,
                        permanent_slots: [],
                        member_slots_ttl: 1800,
                        ignore_slots: [],
                        parameters: {
                            "archive_mode": "on",
                            "max_connections": "200",
                            "wal_keep_size": "1600MB",
                        },
                        pg_hba: [
                            "host replication replicator 127.0.0.1/32 md5",
                            "host all all 0.0.0.0/0 md5",
                        ],
                        sync: SyncConfig {
                            mode: Off,
                            strict: false,
                            node_count: 1,
                            max_lag_on_syncnode: None,
                        },
                        standby_cluster: None,
                        standby_commands: StandbyCommands {
                            restore_command: None,
                            archive_cleanup_command: None,
                        },
                        raw: Object {
                            "loop_wait": Number(2),
                            "maximum_lag_on_failover": Number(1048576),
                            "postgresql": Object {
                                "parameters": Object {
                                    "archive_mode": String("on"),
                                    "max_connections": Number(200),
                                    "wal_keep_segments": Number(100),
                                },
                                "pg_hba": Array [
                                    String("host replication replicator 127.0.0.1/32 md5"),
                                    String("host all all 0.0.0.0/0 md5"),
                                ],
                                "use_pg_rewind": Bool(true),
                            },
                            "retry_timeout": Number(10),
                            "ttl": Number(30),
                        },
                        unsupported: [],
                    },
                    initdb: [
                        "--encoding=UTF8",
                        "--data-checksums",
                        "--auth=md5",
                        "--auth-host=md5",
                    ],
                    method: None,
                    post_bootstrap: None,
                },
            ),
            postgresql: Postgresql {
                listen: "127.0.0.1,::1:5432",
                listen_addresses: "127.0.0.1,::1",
                port: 5432,
                connect_address: "10.0.0.11:5432",
                connect_host: "10.0.0.11",
                connect_port: 5432,
                data_dir: "data/postgres-0",
                bin_dir: "/usr/lib/postgresql/15/bin",
                pgpass: "/tmp/pgpass_postgres-0",
                superuser: Credentials {
                    username: "postgres",
                    password: Some(
                        "<redacted>",
                    ),
                    options: [],
                },
                replication: Credentials {
                    username: "replicator",
                    password: Some(
                        "<redacted>",
                    ),
                    options: [],
                },
                rewind: Some(
                    Credentials {
                        username: "rewind_user",
                        password: Some(
                            "<redacted>",
                        ),
                        options: [],
                    },
                ),
                parameters: {
                    "log_min_duration_statement": "0",
                    "log_statement": "all",
                    "logging_collector": "on",
                    "shared_buffers": "1MB",
                    "unix_socket_directories": "..",
                },
                pg_hba: [],
                use_pg_rewind: None,
                remove_data_directory_on_rewind_failure: false,
                pg_ctl_timeout: 60s,
                use_unix_socket: false,
                callbacks: Callbacks {
                    on_start: None,
                    on_stop: None,
                    on_restart: None,
                    on_reload: None,
                    on_role_change: None,
                },
                pre_promote: None,
                before_stop: None,
                create_replica_methods: [],
                basebackup: [],
                recovery_conf: [],
            },
            tags: Tags {
                nofailover: None,
                failover_priority: None,
                noloadbalance: false,
                clonefrom: false,
                nosync: Some(
                    false,
                ),
                sync_priority: None,
                nostream: false,
                replicatefrom: None,
                custom: {
                    "zone": "\"eu-1\"",
                },
            },
            watchdog: Watchdog {
                mode: Automatic,
                device: "/dev/watchdog",
                safety_margin: 5,
                driver: Default,
            },
            vip: None,
            log: Log {
                json: false,
                level: Info,
                traceback_level: Error,
                format: [
                    Field {
                        field: Asctime,
                        left: false,
                        width: 0,
                    },
                    Text(
                        " ",
                    ),
                    Field {
                        field: Levelname,
                        left: false,
                        width: 0,
                    },
                    Text(
                        ": ",
                    ),
                    Field {
                        field: Message,
                        left: false,
                        width: 0,
                    },
                ],
                json_fields: [
                    (
                        Asctime,
                        "asctime",
                    ),
                    (
                        Levelname,
                        "levelname",
                    ),
                    (
                        Message,
                        "message",
                    ),
                ],
                dateformat: None,
                static_fields: [],
                dir: None,
                file_size: 25000000,
                file_num: 4,
                mode: None,
            },
        }
    "#]]
    .assert_debug_eq(&loaded.config);
    expect![[r#"
        [
            "postgresql.pgpass: /tmp/pgpass_postgres-0 is in /tmp, a directory every local user can write to; remove the key to use the default, beside the data directory",
        ]
    "#]]
    .assert_debug_eq(&loaded.warnings);
    // The password itself is kept, only Debug hides it.
    assert_eq!(
        loaded.config.postgresql.replication.password.as_deref(),
        Some("rep-pass")
    );
    assert_eq!(
        loaded.config.restapi.authentication,
        Some(("username".to_owned(), "password".to_owned()))
    );
}

#[test]
fn malformed_yaml_reports_line_and_column() {
    check(
        "scope: batman\nrestapi:\n  listen: [127.0.0.1:8008\n  connect_address: x\n",
        expect![[r#"
            errors:
            invalid YAML at line 4 column 18: did not find expected ',' or ']'
        "#]],
    );
    check(
        "scope: batman\nscope: robin\n",
        expect![[r#"
            errors:
            invalid YAML at line 1 column 1: duplicate entry with key "scope"
        "#]],
    );
    check(
        "scope: batman\nrestapi:\n\tlisten: x\n",
        expect![[r#"
            errors:
            invalid YAML at line 3 column 1: found character that cannot start any token
        "#]],
    );
}

#[test]
fn empty_or_non_mapping_documents_are_errors() {
    check(
        "",
        expect![[r#"
        errors:
        the configuration is empty
    "#]],
    );
    check(
        "# nothing but a comment\n\n",
        expect![[r#"
        errors:
        the configuration is empty
    "#]],
    );
    check(
        "- scope\n- name\n",
        expect![[r#"
        errors:
        expected a mapping of configuration sections at the top level, found a list
    "#]],
    );
}

#[test]
fn missing_required_keys_are_all_reported() {
    check(
        "scope: batman\n",
        expect![[r#"
        errors:
        name: required key is missing
        restapi: required section is missing
        etcd3: required section is missing (etcd3, or etcd)
        postgresql: required section is missing
    "#]],
    );
    check(
        "scope: batman\nname: a\nrestapi: {}\netcd3: {}\npostgresql:\n  authentication:\n    superuser: {}\n",
        expect![[r#"
            errors:
            restapi.listen: required key is missing
            restapi.connect_address: required key is missing
            etcd3.hosts: required key is missing: set host or hosts
            postgresql.listen: required key is missing
            postgresql.connect_address: required key is missing
            postgresql.data_dir: required key is missing
            postgresql.authentication.superuser.username: required key is missing
            postgresql.authentication.replication: required section is missing
        "#]],
    );
    check(
        &BASE.replace(
            "etcd3:\n  host: 127.0.0.1:2379\n",
            "consul:\n  host: 127.0.0.1:8500\n",
        ),
        expect![[r#"
            errors:
            etcd3: required section is missing: pgbaton supports etcd only, found consul
        "#]],
    );
}

#[test]
fn wrong_types_name_the_path_and_the_expected_type() {
    let yaml = BASE
        .replace(
            "  listen: 127.0.0.1:8008\n",
            "  listen:\n    - 127.0.0.1:8008\n",
        )
        .replace("      password: rep-pass\n", "      password: [a, b]\n")
        .replace("name: postgresql0\n", "name: 42\n")
        + "tags:\n  nofailover: maybe\n  failover_priority: -1\nbootstrap:\n  dcs:\n    ttl: thirty\n    pause: 3\n    postgresql:\n      parameters:\n        shared_buffers: [1, 2]\n";
    check(
        &yaml,
        expect![[r#"
        errors:
        name: expected a string, found the integer 42
        restapi.listen: expected a string "host:port", found a list
        bootstrap.dcs.ttl: expected an integer, found the string "thirty"
        bootstrap.dcs.pause: expected a boolean, found the integer 3
        bootstrap.dcs.postgresql.parameters.shared_buffers: expected a PostgreSQL value (a string, number or boolean), found a list
        postgresql.authentication.replication.password: expected a string, found a list
        tags.nofailover: expected a boolean, found the string "maybe"
        tags.failover_priority: must be at least 0, found -1
    "#]],
    );
}

#[test]
fn unknown_keys_are_errors_with_the_full_path() {
    let yaml = BASE.replace(
        "  data_dir: data/postgresql0\n",
        "  data_dri: data/postgresql0\n",
    ) + "bootstrap:\n  dcs:\n    ttll: 30\n    postgresql:\n      use_pg_rewnd: true\n  initdbb: []\nrestapi_extra: 1\n";
    check(
        &yaml,
        expect![[r#"
        errors:
        bootstrap.dcs.postgresql.use_pg_rewnd: unknown key (did you mean "use_pg_rewind"?)
        bootstrap.dcs.ttll: unknown key (did you mean "ttl"?)
        bootstrap.initdbb: unknown key (did you mean "initdb"?)
        postgresql.data_dir: required key is missing
        postgresql.data_dri: unknown key (did you mean "data_dir"?)
        restapi_extra: unknown key
    "#]],
    );
}

#[test]
fn a_replica_method_section_is_only_accepted_when_listed() {
    let yaml = BASE.replace(
        "postgresql:\n  listen",
        "postgresql:\n  pgbackrest:\n    command: /bin/true\n  listen",
    );
    check(
        &yaml,
        expect![[r#"
        errors:
        postgresql.pgbackrest: unknown key
    "#]],
    );
}

#[test]
fn environment_overrides_the_file_and_pgbaton_wins_over_patroni() {
    let env = env_from(&[
        ("PATRONI_NAME", "from-patroni"),
        ("PGBATON_NAME", "from-pgbaton"),
        ("PATRONI_SCOPE", "gotham"),
        ("PATRONI_NAMESPACE", "prod/"),
        ("PATRONI_RESTAPI_LISTEN", "0.0.0.0:8009"),
        ("PATRONI_RESTAPI_USERNAME", "admin"),
        ("PATRONI_RESTAPI_PASSWORD", "secret"),
        ("PATRONI_ETCD3_HOSTS", "'etcd1:2379','etcd2:2380'"),
        ("PATRONI_POSTGRESQL_DATA_DIR", "/var/lib/postgresql/data"),
        ("PGBATON_POSTGRESQL_BIN_DIR", "/opt/pg/bin"),
        ("PATRONI_REPLICATION_PASSWORD", "from-patroni"),
        ("PGBATON_REPLICATION_PASSWORD", "from-pgbaton"),
        ("PATRONI_REWIND_USERNAME", "rewinder"),
        ("PATRONI_SUPERUSER_USERNAME", ""),
    ]);
    let loaded = load_str(BASE, &env).expect("loads");
    let c = &loaded.config;
    assert_eq!(c.name, "from-pgbaton");
    assert_eq!(c.scope, "gotham");
    assert_eq!(c.namespace, "/prod");
    assert_eq!(c.restapi.listen_addr.to_string(), "0.0.0.0:8009");
    assert_eq!(
        c.restapi.authentication,
        Some(("admin".to_owned(), "secret".to_owned()))
    );
    assert_eq!(c.etcd.hosts, ["etcd1:2379", "etcd2:2380"]);
    assert_eq!(
        c.postgresql.data_dir.to_str(),
        Some("/var/lib/postgresql/data")
    );
    assert_eq!(c.postgresql.bin_dir.to_str(), Some("/opt/pg/bin"));
    assert_eq!(
        c.postgresql.replication.password.as_deref(),
        Some("from-pgbaton")
    );
    // An empty variable is ignored, as Patroni does.
    assert_eq!(c.postgresql.superuser.username, "postgres");
    // REWIND_USERNAME alone creates the rewind role, without a password.
    assert_eq!(
        c.postgresql
            .rewind
            .as_ref()
            .map(|r| (r.username.as_str(), r.password.is_none())),
        Some(("rewinder", true))
    );
}

#[test]
fn environment_can_supply_keys_missing_from_the_file() {
    let yaml = BASE
        .replace("  data_dir: data/postgresql0\n", "")
        .replace("name: postgresql0\n", "");
    check_env(
        &yaml,
        &[],
        expect![[r#"
        errors:
        name: required key is missing
        postgresql.data_dir: required key is missing
    "#]],
    );
    check_env(
        &yaml,
        &[
            ("PATRONI_NAME", "n1"),
            ("PATRONI_POSTGRESQL_DATA_DIR", "/data"),
        ],
        expect![[r#"
        ok
    "#]],
    );
}

#[test]
fn an_endpoint_from_the_environment_replaces_the_file_endpoints() {
    let yaml = BASE.replace("  host: 127.0.0.1:2379\n", "  hosts: [a:2379, b:2379]\n");
    let loaded = load_str(&yaml, &env_from(&[("PATRONI_ETCD3_HOST", "c:2379")])).expect("loads");
    assert_eq!(loaded.config.etcd.hosts, ["c:2379"]);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    // PGBATON_ETCD3_HOSTS replaces PATRONI_ETCD3_HOST.
    let env = env_from(&[
        ("PATRONI_ETCD3_HOST", "c:2379"),
        ("PGBATON_ETCD3_HOSTS", "d,e:1"),
    ]);
    let loaded = load_str(&yaml, &env).expect("loads");
    assert_eq!(loaded.config.etcd.hosts, ["d:2379", "e:1"]);
}

#[test]
fn a_bad_environment_value_is_reported_under_the_variable_name() {
    check_env(
        BASE,
        &[
            ("PGBATON_RESTAPI_LISTEN", "nonsense"),
            ("PATRONI_ETCD3_HOSTS", "good:2379,http://bad:2379"),
            ("PATRONI_ETCD_HOSTS", "[unclosed"),
            ("PATRONI_POSTGRESQL_LISTEN", "127.0.0.1:99999"),
        ],
        expect![[r#"
            errors:
            PATRONI_ETCD_HOSTS: expected a YAML list or comma-separated "host:port" values, found "[unclosed"
            PGBATON_RESTAPI_LISTEN: expected "host:port", found "nonsense" (missing ":port")
            PATRONI_ETCD3_HOSTS[1]: expected "host:port" without a scheme (set the protocol key instead), found "http://bad:2379"
            PATRONI_POSTGRESQL_LISTEN: expected "host[,host...]:port", found "127.0.0.1:99999" (port must be a number between 1 and 65535, found "99999")
        "#]],
    );
}

#[test]
fn timing_rule_is_enforced_the_way_patroni_does() {
    let with_dcs = |dcs: &str| format!("{BASE}bootstrap:\n  dcs:\n{dcs}");
    // loop_wait is shortened first.
    let loaded = load(&with_dcs(
        "    ttl: 25\n    loop_wait: 10\n    retry_timeout: 10\n",
    ));
    let dcs = &loaded.config.bootstrap.as_ref().expect("bootstrap").dcs;
    assert_eq!((dcs.ttl, dcs.loop_wait, dcs.retry_timeout), (25, 5, 10));
    assert_eq!(
        dcs.to_json(),
        r#"{"loop_wait":5,"retry_timeout":10,"ttl":25}"#
    );
    expect![[r#"
        [
            "bootstrap.dcs.loop_wait: adjusted from 10 to 5: loop_wait + 2*retry_timeout must not exceed ttl (25) with retry_timeout 10, as Patroni does",
        ]
    "#]]
    .assert_debug_eq(&loaded.warnings);

    // When even loop_wait 1 does not fit, retry_timeout goes down too.
    let loaded = load(&with_dcs("    ttl: 10\n"));
    let dcs = &loaded.config.bootstrap.as_ref().expect("bootstrap").dcs;
    assert_eq!((dcs.ttl, dcs.loop_wait, dcs.retry_timeout), (10, 1, 4));
    assert_eq!(
        dcs.to_json(),
        r#"{"loop_wait":1,"retry_timeout":4,"ttl":10}"#
    );
    expect![[r#"
        [
            "bootstrap.dcs: loop_wait + 2*retry_timeout must not exceed ttl (10): adjusted loop_wait from 10 to 1 and retry_timeout from 10 to 4, as Patroni does",
        ]
    "#]]
    .assert_debug_eq(&loaded.warnings);

    // Exactly on the limit is fine.
    let loaded = load(&with_dcs(
        "    ttl: 5\n    loop_wait: 1\n    retry_timeout: 2\n",
    ));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);

    // The same rule applies to the configuration read from the DCS.
    let (dcs, warnings) =
        DynamicConfig::from_json(r#"{"ttl":20,"loop_wait":10,"retry_timeout":10}"#).expect("valid");
    assert_eq!((dcs.ttl, dcs.loop_wait, dcs.retry_timeout), (20, 1, 9));
    expect![[r#"
        [
            "loop_wait + 2*retry_timeout must not exceed ttl (20): adjusted loop_wait from 10 to 1 and retry_timeout from 10 to 9, as Patroni does",
        ]
    "#]]
    .assert_debug_eq(&warnings);
}

#[test]
fn ttl_below_five_and_zero_intervals_are_rejected() {
    check(
        &format!("{BASE}bootstrap:\n  dcs:\n    ttl: 4\n    loop_wait: 0\n    retry_timeout: -1\n"),
        expect![[r#"
        errors:
        bootstrap.dcs.ttl: must be at least 5 seconds, found 4 (pgbaton's minimum; Patroni's is 20)
        bootstrap.dcs.loop_wait: must be at least 1, found 0
        bootstrap.dcs.retry_timeout: must be at least 1, found -1
    "#]],
    );
    let err = DynamicConfig::from_json(r#"{"ttl": 3}"#).expect_err("ttl 3 is too low");
    expect![[r#"ttl: must be at least 5 seconds, found 3 (pgbaton's minimum; Patroni's is 20)"#]]
        .assert_eq(&err.to_string());
}

#[test]
fn initdb_options_are_rendered_as_flags() {
    let yaml = format!(
        "{BASE}bootstrap:\n  initdb:\n    - encoding: UTF8\n    - data-checksums\n    - locale=C\n    - --no-instructions\n    - wal-segsize: 32\n"
    );
    let loaded = load(&yaml);
    expect![[r#"
        [
            "--encoding=UTF8",
            "--data-checksums",
            "--locale=C",
            "--no-instructions",
            "--wal-segsize=32",
        ]
    "#]]
    .assert_debug_eq(&loaded.config.bootstrap.expect("bootstrap").initdb);

    // The mapping form Patroni also accepts.
    let loaded = load(&format!(
        "{BASE}bootstrap:\n  initdb:\n    encoding: UTF8\n    auth-host: md5\n"
    ));
    assert_eq!(
        loaded.config.bootstrap.expect("bootstrap").initdb,
        ["--auth-host=md5", "--encoding=UTF8"]
    );

    check(
        &format!(
            "{BASE}bootstrap:\n  initdb:\n    - data-checksums\n    - encoding: UTF8\n    - {{auth: md5, auth-host: md5}}\n    - pgdata: /x\n    - [a]\n    - locale: [C]\n"
        ),
        expect![[r#"
            errors:
            bootstrap.initdb[2]: expected a single "option: value" pair, found 2 keys
            bootstrap.initdb[3]: initdb option "pgdata" is set by pgbaton and cannot be given
            bootstrap.initdb[4]: expected an initdb option or a single "option: value" pair, found a list
            bootstrap.initdb[5]: expected a string or number as the option's value, found a list
        "#]],
    );
}

#[test]
fn an_empty_bootstrap_section_still_allows_bootstrapping() {
    let loaded = load(&format!("{BASE}bootstrap:\n"));
    let b = loaded.config.bootstrap.as_ref().expect("bootstrap present");
    assert_eq!(b.dcs, DynamicConfig::defaults());
    assert_eq!(b.dcs.to_json(), "{}");
    assert!(load(BASE).config.bootstrap.is_none());
}

#[test]
fn etcd_endpoint_forms() {
    let hosts = |section: &str| {
        let yaml = BASE.replace("etcd3:\n  host: 127.0.0.1:2379\n", section);
        match load_str(&yaml, &no_env) {
            Ok(l) => format!("{:?} {:?}", l.config.etcd.hosts, l.warnings),
            Err(e) => e.to_string(),
        }
    };
    expect![[r#"["etcd1:2379"] []"#]].assert_eq(&hosts("etcd3:\n  host: etcd1\n"));
    expect![[r#"["a:2379", "b:2380", "[::1]:2379", "[fe80::1]:2381"] []"#]]
        .assert_eq(&hosts("etcd3:\n  hosts: a, b:2380,[::1],[fe80::1]:2381\n"));
    expect![[r#"["a:2379", "b:1"] []"#]]
        .assert_eq(&hosts("etcd3:\n  hosts:\n    - a\n    - b:1\n"));
    expect![[r#"["b:2379"] ["etcd3.host: ignored: hosts is set too (as in Patroni)"]"#]]
        .assert_eq(&hosts("etcd3:\n  host: a\n  hosts: b\n"));
    expect![[r#"["a:2379"] ["etcd: read as etcd3: pgbaton talks to etcd with the v3 API only, so keys a Patroni cluster wrote through the v2 API are not visible to it"]"#]]
        .assert_eq(&hosts("etcd:\n  host: a:2379\n"));
    expect![[r#"
        etcd3.hosts[0]: expected "host:port" without a scheme (set the protocol key instead), found "http://a:2379"
        etcd3.hosts[1]: expected "host:port", found "b:0" (port must be between 1 and 65535, found 0)
        etcd3.protocol: expected "http" or "https", found "grpc"
        etcd3.password: required key is missing (username is set)"#]]
    .assert_eq(&hosts("etcd3:\n  hosts: [\"http://a:2379\", \"b:0\"]\n  protocol: grpc\n  username: root\n"));
    expect![[r#"etcd3.hosts: required key is missing: pgbaton needs host or hosts (url is not supported)"#]]
        .assert_eq(&hosts("etcd3:\n  url: http://a:2379\n"));
}

#[test]
fn postgresql_listen_forms() {
    let listen = |value: &str| {
        let yaml = BASE.replace(
            "  listen: 127.0.0.1:5432\n",
            &format!("  listen: \"{value}\"\n"),
        );
        match load_str(&yaml, &no_env) {
            Ok(l) => format!(
                "{} {}",
                l.config.postgresql.listen_addresses, l.config.postgresql.port
            ),
            Err(e) => e.to_string(),
        }
    };
    expect!["0.0.0.0 5432"].assert_eq(&listen("0.0.0.0:5432"));
    expect!["127.0.0.1,::1 5433"].assert_eq(&listen("127.0.0.1,::1:5433"));
    expect!["127.0.0.1,::1 5433"].assert_eq(&listen("127.0.0.1,[::1]:5433"));
    expect!["* 5432"].assert_eq(&listen("*:5432"));
    expect!["10.0.0.1 5432"].assert_eq(&listen("10.0.0.1"));
    expect![[r#"postgresql.listen: expected "*" alone, found "*,10.0.0.1:5432""#]]
        .assert_eq(&listen("*,10.0.0.1:5432"));
    expect![[
        r#"postgresql.listen: expected "host[,host...]:port", found "a,,b:5432" (empty host)"#
    ]]
    .assert_eq(&listen("a,,b:5432"));
    expect![[r#"postgresql.listen: expected "host[,host...]:port", found "a:x" (port must be a number between 1 and 65535, found "x")"#]]
        .assert_eq(&listen("a:x"));
}

#[test]
fn restapi_listen_and_connect_address() {
    let api = |listen: &str, connect: &str| {
        let yaml = BASE
            .replace(
                "  listen: 127.0.0.1:8008\n",
                &format!("  listen: \"{listen}\"\n"),
            )
            .replace(
                "  connect_address: 127.0.0.1:8008\n",
                &format!("  connect_address: \"{connect}\"\n"),
            );
        match load_str(&yaml, &no_env) {
            Ok(l) => l.config.restapi.listen_addr.to_string(),
            Err(e) => e.to_string(),
        }
    };
    expect!["0.0.0.0:8008"].assert_eq(&api(":8008", "a:8008"));
    expect!["0.0.0.0:8008"].assert_eq(&api("*:8008", "a:8008"));
    expect!["[::]:8008"].assert_eq(&api("[::]:8008", "a:8008"));
    expect!["[::1]:8008"].assert_eq(&api("::1:8008", "a:8008"));
    expect!["127.0.0.1:8008"].assert_eq(&api("localhost:8008", "a:8008"));
    expect![[r#"
        restapi.listen: expected "host:port", found "127.0.0.1" (missing ":port")
        restapi.connect_address: expected "host:port", found ":8008" (missing host)"#]]
    .assert_eq(&api("127.0.0.1", ":8008"));
}

#[test]
fn parameters_are_rendered_and_merged_as_patroni_does() {
    let yaml = format!(
        "{BASE}bootstrap:\n  dcs:\n    postgresql:\n      parameters:\n        max_connections: 300\n        max_wal_senders: 1\n        wal_level: logical\n        port: 6000\n        work_mem: 8MB\n        jit: false\n        wal_keep_segments: 10\n"
    )
    .replace(
        "  data_dir: data/postgresql0\n",
        "  data_dir: data/postgresql0\n  parameters:\n    max_connections: 50\n    work_mem: 16MB\n    Shared_Buffers: 256MB\n    synchronous_commit: true\n    random_page_cost: 1.1\n",
    );
    let loaded = load(&yaml);
    expect![[r#"
        [
            "bootstrap.dcs.postgresql.parameters.max_wal_senders: expected an integer >= 3, found the integer 1: using the default 10",
            "bootstrap.dcs.postgresql.parameters.port: ignored: pgbaton sets this parameter itself (as Patroni does)",
            "postgresql.parameters.max_connections: ignored in the local configuration, as in Patroni: set it in the dynamic configuration (bootstrap.dcs.postgresql.parameters or edit-config) so that every member uses the same value",
        ]
    "#]]
    .assert_debug_eq(&loaded.warnings);
    let dcs = &loaded.config.bootstrap.as_ref().expect("bootstrap").dcs;
    expect![[r#"
        {
            "cluster_name": "batman",
            "hot_standby": "on",
            "jit": "off",
            "listen_addresses": "127.0.0.1",
            "max_connections": "300",
            "max_locks_per_transaction": "64",
            "max_prepared_transactions": "0",
            "max_replication_slots": "10",
            "max_wal_senders": "10",
            "max_worker_processes": "8",
            "port": "5432",
            "random_page_cost": "1.1",
            "shared_buffers": "256MB",
            "synchronous_commit": "on",
            "track_commit_timestamp": "off",
            "wal_keep_size": "160MB",
            "wal_level": "logical",
            "wal_log_hints": "on",
            "work_mem": "16MB",
        }
    "#]]
    .assert_debug_eq(&merged_parameters(&loaded.config, dcs));
}

#[test]
fn pg_hba_local_wins_over_dynamic() {
    let yaml = format!(
        "{}bootstrap:\n  dcs:\n    postgresql:\n      pg_hba: [host all all 0.0.0.0/0 md5]\n",
        BASE.replace(BASE_HBA, "")
    );
    let loaded = load(&yaml);
    let dcs = &loaded.config.bootstrap.as_ref().expect("bootstrap").dcs;
    assert_eq!(
        effective_pg_hba(&loaded.config, dcs),
        ["host all all 0.0.0.0/0 md5"]
    );
    let loaded = load(&yaml.replace(
        "  data_dir:",
        "  pg_hba: [local all all trust]\n  data_dir:",
    ));
    let dcs = &loaded.config.bootstrap.as_ref().expect("bootstrap").dcs;
    assert_eq!(
        effective_pg_hba(&loaded.config, dcs),
        ["local all all trust"]
    );
}

#[test]
fn tags_custom_values_and_conflicts() {
    let yaml = format!(
        "{BASE}tags:\n  nofailover: true\n  failover_priority: 3\n  nosync: no\n  sync_priority: 0\n  replicatefrom: postgresql1\n  zone: eu-1\n  rack: 7\n  ssd: true\n  extra: {{a: [1, 2]}}\n"
    );
    let loaded = load(&yaml);
    expect![[r#"
        Tags {
            nofailover: Some(
                true,
            ),
            failover_priority: Some(
                3,
            ),
            noloadbalance: false,
            clonefrom: false,
            nosync: Some(
                false,
            ),
            sync_priority: Some(
                0,
            ),
            nostream: false,
            replicatefrom: Some(
                "postgresql1",
            ),
            custom: {
                "extra": "{\"a\":[1,2]}",
                "rack": "7",
                "ssd": "true",
                "zone": "\"eu-1\"",
            },
        }
    "#]]
    .assert_debug_eq(&loaded.config.tags);
    expect![[r#"
        [
            "tags: conflicting nofailover: true and failover_priority: 3; nofailover: true wins, as in Patroni",
            "tags: conflicting nosync: false and sync_priority: 0; nosync: false wins, as in Patroni",
        ]
    "#]]
    .assert_debug_eq(&loaded.warnings);
}

#[test]
fn names_scope_and_namespace() {
    check(
        &BASE
            .replace(
                "name: postgresql0",
                "name: __patroni_strict_sync_replica_placeholder__",
            )
            .replace("scope: batman", "scope: a/b"),
        expect![[r#"
            errors:
            scope: must not contain "/", found "a/b"
            name: "__patroni_strict_sync_replica_placeholder__" is reserved by Patroni for synchronous mode
        "#]],
    );
    let ns = |value: &str| {
        load(&format!("{BASE}namespace: \"{value}\"\n"))
            .config
            .namespace
    };
    assert_eq!(ns("service"), "/service");
    assert_eq!(ns("/service/"), "/service");
    assert_eq!(ns("//a//b/"), "/a/b");
    assert_eq!(ns("/"), "");
    assert_eq!(load(BASE).config.namespace, "/service");
}

#[test]
fn watchdog_modes() {
    let mode = |m: &str| match load_str(&format!("{BASE}watchdog:\n  mode: {m}\n"), &no_env) {
        Ok(l) => format!("{:?} {:?}", l.config.watchdog.mode, l.warnings),
        Err(e) => e.to_string(),
    };
    expect!["Off []"].assert_eq(&mode("off"));
    expect!["Off []"].assert_eq(&mode("false"));
    expect!["Automatic []"].assert_eq(&mode("auto"));
    expect!["Required []"].assert_eq(&mode("require"));
    expect![[r#"watchdog.mode: expected one of off, automatic, required, found "sometimes""#]]
        .assert_eq(&mode("sometimes"));
    let wd = load(BASE).config.watchdog;
    assert_eq!(wd, crate::Watchdog::default());
    assert_eq!(
        wd.mode,
        baton_core::WatchdogMode::Automatic,
        "Patroni's default"
    );
    assert_eq!(wd.device, std::path::Path::new("/dev/watchdog"));
    assert_eq!((wd.safety_margin, wd.timeout_secs(30)), (5, 25));
}

#[test]
fn watchdog_device_margin_and_driver() {
    let section = |body: &str| match load_str(&format!("{BASE}watchdog:\n{body}"), &no_env) {
        Ok(l) => format!("{:?} {:?}", l.config.watchdog, l.warnings),
        Err(e) => e.to_string(),
    };
    expect![[
        r#"Watchdog { mode: Required, device: "/run/wd", safety_margin: -1, driver: Testing } []"#
    ]]
    .assert_eq(&section(
        "  mode: required\n  device: /run/wd\n  safety_margin: -1\n  driver: testing\n",
    ));
    expect![[r#"watchdog.device: expected an absolute path, found "dev/watchdog""#]]
        .assert_eq(&section("  device: dev/watchdog\n"));
    expect!["watchdog.safety_margin: must be at least -1, found -2"]
        .assert_eq(&section("  safety_margin: -2\n"));
    expect![[r#"watchdog.driver: expected one of default, testing, found "softdog""#]]
        .assert_eq(&section("  driver: softdog\n"));
    // Patroni's timeout: ttl - safety_margin, or ttl // 2 with -1.
    let wd = |safety_margin| crate::Watchdog {
        safety_margin,
        ..crate::Watchdog::default()
    };
    assert_eq!(wd(5).timeout_secs(30), 25);
    assert_eq!(wd(-1).timeout_secs(31), 15);
    assert_eq!(wd(0).timeout_secs(10), 10);
    assert_eq!(
        wd(10).timeout_secs(10),
        0,
        "no usable timeout: the agent cannot arm"
    );
}

#[test]
fn vip_section_shape() {
    let loaded = load(&format!(
        "{BASE}vip:\n  address: 10.0.0.100/24\n  interface: eth0\n"
    ));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let vip = loaded.config.vip.expect("vip");
    assert_eq!(
        (vip.cidr().as_str(), vip.interface.as_str()),
        ("10.0.0.100/24", "eth0")
    );
    // Defaults.
    assert_eq!(vip.arp_count, 3);
    assert_eq!(vip.arp_interval, std::time::Duration::from_secs(1));
    assert_eq!(vip.reconcile_interval, std::time::Duration::from_secs(5));
    check(
        &format!("{BASE}vip:\n  address: 10.0.0.100\n  iface: eth0\n"),
        expect![[r#"
        errors:
        vip.interface: required key is missing
        vip.iface: unknown key
    "#]],
    );
}

#[test]
fn vip_optional_keys() {
    let vip = load(&format!(
        "{BASE}vip:\n  address: 192.168.7.9\n  interface: bond0.100\n  arp_count: 0\n  \
         arp_interval: 0.25\n  reconcile_interval: 2\n"
    ))
    .config
    .vip
    .expect("vip");
    assert_eq!(vip.cidr(), "192.168.7.9/32");
    assert_eq!(vip.interface, "bond0.100");
    assert_eq!(vip.arp_count, 0);
    assert_eq!(vip.arp_interval, std::time::Duration::from_millis(250));
    assert_eq!(vip.reconcile_interval, std::time::Duration::from_secs(2));
    check(
        &format!(
            "{BASE}vip:\n  address: 10.0.0.100/24\n  interface: eth0\n  arp_count: 101\n  \
             arp_interval: -1\n  reconcile_interval: 0\n"
        ),
        expect![[r#"
            errors:
            vip.arp_count: must be at most 100, found 101
            vip.arp_interval: expected a non-negative number, found the integer -1
            vip.reconcile_interval: must be between 0.1 and 3600 seconds, found 0
        "#]],
    );
}

#[test]
fn vip_address_errors() {
    let err = |address: &str| {
        let yaml = format!("{BASE}vip:\n  address: \"{address}\"\n  interface: eth0\n");
        match load_str(&yaml, &no_env) {
            Ok(_) => "ok".to_owned(),
            Err(e) => e.to_string(),
        }
    };
    expect![[r#"vip.address: "10.0.0.300/24" is not an IPv4 address with an optional prefix length (10.0.0.100/24)"#]]
        .assert_eq(&err("10.0.0.300/24"));
    expect![[
        r#"vip.address: "10.0.0.1/33": the prefix length must be a number from 1 to 32, found "33""#
    ]]
    .assert_eq(&err("10.0.0.1/33"));
    expect![[
        r#"vip.address: "10.0.0.1/0": the prefix length must be a number from 1 to 32, found "0""#
    ]]
    .assert_eq(&err("10.0.0.1/0"));
    expect![[
        r#"vip.address: "10.0.0.1/x": the prefix length must be a number from 1 to 32, found "x""#
    ]]
    .assert_eq(&err("10.0.0.1/x"));
    expect![[
        r#"vip.address: "10.0.0.0/24" is the network address of 10.0.0.0/24, not a host address"#
    ]]
    .assert_eq(&err("10.0.0.0/24"));
    expect![[r#"vip.address: "10.0.0.255/24" is the broadcast address of 10.0.0.0/24, not a host address"#]]
        .assert_eq(&err("10.0.0.255/24"));
    expect![[r#"vip.address: "127.0.0.5": 127.0.0.5 cannot be a floating address (unspecified, loopback, multicast or broadcast)"#]]
        .assert_eq(&err("127.0.0.5"));
    expect![[r#"vip.address: "fd00::5/64": IPv6 floating addresses are not supported (yet); use an IPv4 address"#]]
        .assert_eq(&err("fd00::5/64"));
    expect![[
        r#"vip.address: expected an IPv4 address such as 10.0.0.100/24, found an empty string"#
    ]]
    .assert_eq(&err(""));
    // /31 and /32 have no network or broadcast address.
    assert_eq!(err("10.0.0.0/31"), "ok");
    assert_eq!(err("10.0.0.255/32"), "ok");
    assert_eq!(err(" 10.0.0.1/30 "), "ok");
}

#[test]
fn vip_interface_names_are_checked() {
    let err = |name: &str| {
        let yaml = format!("{BASE}vip:\n  address: 10.0.0.100/24\n  interface: \"{name}\"\n");
        match load_str(&yaml, &no_env) {
            Ok(_) => "ok".to_owned(),
            Err(e) => e.to_string(),
        }
    };
    expect![[r#"vip.interface: "eth0:1" is not a valid interface name: no "/", ":" or white space (an alias label such as eth0:1 is not an interface)"#]]
        .assert_eq(&err("eth0:1"));
    expect![[
        r#"vip.interface: "averyveryverylong0" is not a valid interface name: at most 15 bytes"#
    ]]
    .assert_eq(&err("averyveryverylong0"));
    expect![[r#"vip.interface: ".." is not a valid interface name: "." and ".." are reserved"#]]
        .assert_eq(&err(".."));
    expect![[r#"vip.interface: "e th0" is not a valid interface name: no "/", ":" or white space (an alias label such as eth0:1 is not an interface)"#]]
        .assert_eq(&err("e th0"));
    assert_eq!(err("enp0s31f6"), "ok");
    assert_eq!(err("veth-a_1.100"), "ok");
}

#[test]
fn yaml_values_json_cannot_hold_are_errors() {
    check(
        &format!("{BASE}tags:\n  1: x\n  zone: !custom eu\n  ok: .nan\n"),
        expect![[r#"
        errors:
        tags.1: keys must be strings, found the integer 1 (quote it)
        tags.zone: YAML tags are not supported, found !custom
        tags.ok: expected a finite number, found .nan
    "#]],
    );
}

#[test]
fn yaml_merge_keys_work() {
    let yaml = BASE.replace(
        "    superuser:\n      username: postgres\n      password: patroni\n",
        "    superuser: &creds\n      username: postgres\n      password: patroni\n    rewind:\n      <<: *creds\n      username: rewinder\n",
    );
    let rewind = load(&yaml).config.postgresql.rewind.expect("rewind");
    assert_eq!(
        (rewind.username.as_str(), rewind.password.as_deref()),
        ("rewinder", Some("patroni"))
    );
}

#[test]
fn dynamic_config_from_the_dcs() {
    let json = r#"{"ttl":30,"loop_wait":10,"retry_timeout":10,"maximum_lag_on_failover":33554432,"master_start_timeout":60,"pause":true,"synchronous_mode":"quorum","postgresql":{"use_pg_rewind":true,"use_slots":false,"parameters":{"max_connections":"200","hot_standby":"off"},"data_dir":"/x"},"some_future_key":1}"#;
    let (dcs, warnings) = DynamicConfig::from_json(json).expect("valid");
    assert_eq!(dcs.maximum_lag_on_failover, 33_554_432);
    assert_eq!(dcs.primary_start_timeout, 60);
    assert!(dcs.pause && dcs.use_pg_rewind && !dcs.use_slots);
    assert_eq!(
        dcs.parameters.get("max_connections").map(String::as_str),
        Some("200")
    );
    expect![[r#"
        [
            "postgresql.parameters.hot_standby: ignored: pgbaton sets this parameter itself (as Patroni does)",
            "postgresql.data_dir: only used in the local configuration; ignored in the dynamic configuration, as in Patroni",
            "some_future_key: unknown key, ignored",
        ]
    "#]]
    .assert_debug_eq(&warnings);
    // `raw` round-trips what was stored, compactly.
    assert_eq!(
        dcs.to_json(),
        serde_json::from_str::<serde_json::Value>(json)
            .expect("json")
            .to_string()
    );

    let err = DynamicConfig::from_json(
        r#"{"ttl":"x","pause":"maybe","postgresql":{"use_pg_rewind":1.5},"loop_wait":null}"#,
    )
    .expect_err("wrong types");
    expect![[r#"
        ttl: expected an integer, found the string "x"
        pause: expected a boolean, found the string "maybe"
        postgresql.use_pg_rewind: expected a boolean, found the number 1.5"#]]
    .assert_eq(&err.to_string());
    expect!["invalid JSON: expected value at line 1 column 1"].assert_eq(
        &DynamicConfig::from_json("garbage")
            .expect_err("not JSON")
            .to_string(),
    );
    expect!["expected a mapping, found a list"].assert_eq(
        &DynamicConfig::from_json("[]")
            .expect_err("not an object")
            .to_string(),
    );

    // primary_start_timeout wins over its old name.
    let (dcs, _) =
        DynamicConfig::from_json(r#"{"primary_start_timeout":5,"master_start_timeout":60}"#)
            .expect("valid");
    assert_eq!(dcs.primary_start_timeout, 5);
    assert_eq!(DynamicConfig::defaults().to_json(), "{}");
}

#[test]
fn effective_ha_merges_local_and_dynamic() {
    let loaded = load(&format!(
        "{BASE}bootstrap:\n  dcs:\n    ttl: 12\n    loop_wait: 2\n    retry_timeout: 5\n    postgresql:\n      use_pg_rewind: true\ntags:\n  failover_priority: 0\n"
    ));
    let dcs = loaded
        .config
        .bootstrap
        .as_ref()
        .expect("bootstrap")
        .dcs
        .clone();
    let ha = effective_ha(&loaded.config, &dcs);
    expect![[r#"
        HaConfig {
            me: "postgresql0",
            ttl: 12s,
            loop_wait: 2s,
            retry_timeout: 5s,
            maximum_lag_on_failover: 1048576,
            primary_start_timeout: 300s,
            use_pg_rewind: true,
            use_slots: true,
            remove_data_directory_on_rewind_failure: false,
            pause: false,
            unsupported_blocker: None,
            tags: Tags {
                nofailover: None,
                failover_priority: Some(
                    0,
                ),
                noloadbalance: false,
                clonefrom: false,
                nosync: None,
                sync_priority: None,
                nostream: false,
                replicatefrom: None,
                custom: {},
            },
            can_bootstrap: false,
            clone_without_leader: false,
            sync: SyncConfig {
                mode: Off,
                strict: false,
                node_count: 1,
                max_lag_on_syncnode: None,
            },
            watchdog: Automatic,
            failsafe_mode: false,
            standby_cluster: None,
            permanent_slots: [],
            member_slots_ttl: 1800s,
            ignore_slots: [],
        }
    "#]]
    .assert_debug_eq(&ha);
    // The local use_pg_rewind wins.
    let loaded = load(
        &format!("{BASE}bootstrap:\n")
            .replace("  data_dir:", "  use_pg_rewind: false\n  data_dir:"),
    );
    let ha = effective_ha(
        &loaded.config,
        &DynamicConfig {
            use_pg_rewind: true,
            ..DynamicConfig::defaults()
        },
    );
    assert!(!ha.use_pg_rewind);
    assert!(ha.can_bootstrap);
}

#[test]
fn many_problems_are_reported_together() {
    let yaml = "\
scope: batman
restapi:
  listen: 127.0.0.1
  conect_address: 127.0.0.1:8008
etcd3:
  hosts: 5
postgresql:
  listen: 127.0.0.1:5432
  connect_address: 127.0.0.1:5432
  data_dir: ''
  pg_ctl_timeout: soon
  authentication:
    superuser:
      password: x
    replication:
      username: replicator
      password: [rep]
tags:
  nofailover: sometimes
";
    check(
        yaml,
        expect![[r#"
        errors:
        name: required key is missing
        restapi.listen: expected "host:port", found "127.0.0.1" (missing ":port")
        restapi.connect_address: required key is missing
        restapi.conect_address: unknown key (did you mean "connect_address"?)
        etcd3.hosts: expected a list of "host:port" or a comma-separated string, found the integer 5
        postgresql.data_dir: expected a path, found an empty string
        postgresql.authentication.superuser.username: required key is missing
        postgresql.authentication.replication.password: expected a string, found a list
        postgresql.pg_ctl_timeout: expected an integer, found the string "soon"
        tags.nofailover: expected a boolean, found the string "sometimes"
    "#]],
    );
}

#[test]
fn debug_output_never_shows_passwords() {
    let env = env_from(&[
        ("PATRONI_RESTAPI_USERNAME", "u"),
        ("PATRONI_RESTAPI_PASSWORD", "api-secret"),
    ]);
    let yaml = BASE.replace(
        "  host: 127.0.0.1:2379\n",
        "  host: 127.0.0.1:2379\n  username: root\n  password: etcd-secret\n",
    );
    let loaded = load_str(&yaml, &env).expect("loads");
    let shown = format!("{:?}", loaded.config);
    for secret in ["api-secret", "etcd-secret", "patroni", "rep-pass"] {
        assert!(!shown.contains(secret), "{secret} shown in {shown}");
    }
}

#[test]
fn a_directory_of_files_is_merged_in_name_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("00-base.yml"), BASE).expect("write");
    std::fs::write(
        dir.path().join("10-node.yaml"),
        "name: node-b\npostgresql:\n  data_dir: /data/b\n",
    )
    .expect("write");
    std::fs::write(dir.path().join("README"), "not yaml: [").expect("write");
    let loaded = load_file(dir.path(), &no_env).expect("loads");
    assert_eq!(loaded.config.name, "node-b");
    assert_eq!(loaded.config.postgresql.data_dir.to_str(), Some("/data/b"));
    assert_eq!(loaded.config.postgresql.superuser.username, "postgres");

    std::fs::write(dir.path().join("20-bad.yml"), "tags: [").expect("write");
    let err = load_file(dir.path(), &no_env).expect_err("bad file");
    assert!(
        err.to_string().starts_with(&format!(
            "{}: invalid YAML at line ",
            dir.path().join("20-bad.yml").display()
        )),
        "{err}"
    );
}

#[test]
fn an_unreadable_file_is_an_error() {
    let err = load_file(std::path::Path::new("/nonexistent/pgbaton.yml"), &no_env)
        .expect_err("missing file");
    expect!["cannot read /nonexistent/pgbaton.yml: No such file or directory (os error 2)"]
        .assert_eq(&err.to_string());
}

#[test]
fn the_documentation_lists_every_environment_variable() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/configuration.md"
    ))
    .expect("docs/configuration.md exists");
    let missing: Vec<String> = crate::env::names()
        .filter(|n| !doc.contains(n.as_str()))
        .collect();
    assert!(missing.is_empty(), "not documented: {missing:?}");
}

#[test]
fn no_value_of_any_shape_makes_the_loader_panic() {
    // Every value and every section of a full file replaced, one at a time, by values of
    // every shape: the loader must answer (Ok or Err), never panic.
    let full = format!(
        "{BASE}namespace: /service\nbootstrap:\n  dcs:\n    ttl: 30\n    loop_wait: 10\n    retry_timeout: 10\n    maximum_lag_on_failover: 1\n    primary_start_timeout: 3\n    synchronous_mode: quorum\n    standby_cluster:\n      host: a\n      port: 5432\n    slots:\n      s1:\n        type: physical\n    postgresql:\n      use_pg_rewind: true\n      parameters:\n        max_connections: 100\n        wal_keep_size: 1GB\n  initdb:\n    - encoding: UTF8\n    - data-checksums\n  pg_hba:\n    - host all all 0.0.0.0/0 md5\ntags:\n  nofailover: false\n  failover_priority: 1\n  zone: a\nwatchdog:\n  mode: automatic\nvip:\n  address: 10.0.0.1\n  interface: eth0\n"
    );
    let shapes = [
        "~",
        "''",
        "0",
        "-1",
        "99999999999999999999",
        "1.5",
        "true",
        "[]",
        "[1, [2]]",
        "{}",
        "{a: {b: c}}",
        "\"x:y:z\"",
    ];
    let lines: Vec<&str> = full.lines().collect();
    let mut runs = 0;
    for (i, line) in lines.iter().enumerate() {
        let Some(colon) = line.find(':') else {
            continue;
        };
        for shape in shapes {
            let mut changed: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
            changed[i] = format!("{} {shape}", &line[..=colon]);
            // Drop the replaced section's children so the result stays valid YAML.
            let indent = line.len() - line.trim_start().len();
            let j = i + 1;
            while j < changed.len() && changed[j].len() - changed[j].trim_start().len() > indent {
                changed.remove(j);
            }
            let yaml = changed.join("\n");
            if let Ok(loaded) = load_str(&yaml, &no_env)
                && let Some(b) = &loaded.config.bootstrap
            {
                let _ = DynamicConfig::from_json(&b.dcs.to_json());
                let _ = merged_parameters(&loaded.config, &b.dcs);
            }
            runs += 1;
        }
    }
    assert!(runs > 500, "only {runs} variants tried");
}

#[test]
fn synchronous_mode_keys_become_typed_settings() {
    use baton_core::SyncMode;
    for (json, mode, strict, count) in [
        (r#"{"synchronous_mode":true}"#, SyncMode::Priority, false, 1),
        (
            r#"{"synchronous_mode":"on","synchronous_node_count":2}"#,
            SyncMode::Priority,
            false,
            2,
        ),
        (
            r#"{"synchronous_mode":"quorum","synchronous_mode_strict":true}"#,
            SyncMode::Quorum,
            true,
            1,
        ),
        (r#"{"synchronous_mode":false}"#, SyncMode::Off, false, 1),
        (r#"{}"#, SyncMode::Off, false, 1),
    ] {
        let (d, _) = crate::DynamicConfig::from_json(json).expect(json);
        assert_eq!(
            (d.sync.mode, d.sync.strict, d.sync.node_count),
            (mode, strict, count),
            "{json}"
        );
    }
    let err = crate::DynamicConfig::from_json(r#"{"synchronous_mode":"maybe"}"#).unwrap_err();
    assert!(err.to_string().contains("synchronous_mode"), "{err}");
}

#[test]
fn maximum_lag_on_syncnode_is_a_byte_limit_or_off() {
    for (json, limit) in [
        (r#"{"maximum_lag_on_syncnode":1048576}"#, Some(1_048_576)),
        (r#"{"maximum_lag_on_syncnode":-1}"#, None),
        (r#"{"maximum_lag_on_syncnode":0}"#, Some(0)),
        (r#"{}"#, None),
    ] {
        let (d, _) = crate::DynamicConfig::from_json(json).expect(json);
        assert_eq!(d.sync.max_lag_on_syncnode, limit, "{json}");
    }
    let err = crate::DynamicConfig::from_json(r#"{"maximum_lag_on_syncnode":-2}"#).unwrap_err();
    assert!(err.to_string().contains("maximum_lag_on_syncnode"), "{err}");
}

#[test]
fn standby_cluster_is_read_with_its_defaults() {
    let loaded = load_str(BASE, &no_env).expect("valid");
    let (dynamic, warnings) = DynamicConfig::from_json(
        r#"{"ttl":30,"standby_cluster":{"host":"10.0.0.1","port":"5433","primary_slot_name":"standby_a","recovery_min_apply_delay":"5min"}}"#,
    )
    .expect("valid");
    assert!(warnings.is_empty(), "{warnings:?}");
    let ha = effective_ha(&loaded.config, &dynamic);
    assert_eq!(ha.unsupported_blocker, None);
    assert_eq!(
        ha.standby_cluster,
        Some(baton_core::StandbyCluster {
            host: Some("10.0.0.1".into()),
            port: 5433,
            primary_slot_name: Some("standby_a".into()),
            recovery_min_apply_delay: Some("5min".into()),
            ..baton_core::StandbyCluster::default()
        })
    );
    // The port defaults to 5432; a section naming none of host/port/restore_command is no
    // standby cluster (Patroni's is_standby_cluster).
    let (d, _) = DynamicConfig::from_json(r#"{"standby_cluster":{"host":"db.b"}}"#).expect("ok");
    assert_eq!(d.standby_cluster.map(|s| s.port), Some(5432));
    for empty in [
        r#"{"standby_cluster":null}"#,
        r#"{"standby_cluster":{}}"#,
        r#"{"standby_cluster":{"host":null,"port":null,"primary_slot_name":"x"}}"#,
    ] {
        let (d, _) = DynamicConfig::from_json(empty).expect("ok");
        assert_eq!(d.standby_cluster, None, "{empty}");
    }
    // Archive-only standby clusters and the commands: tests/standby_archive.rs.
    // Bad values name their key.
    for (bad, key) in [
        (
            r#"{"standby_cluster":{"host":"a","port":70000}}"#,
            "standby_cluster.port",
        ),
        (
            r#"{"standby_cluster":{"host":"a","port":"x"}}"#,
            "standby_cluster.port",
        ),
        (
            r#"{"standby_cluster":{"host":"a b"}}"#,
            "standby_cluster.host",
        ),
        (
            r#"{"standby_cluster":{"host":"a","primary_slot_name":"Bad-Slot"}}"#,
            "standby_cluster.primary_slot_name",
        ),
        (
            r#"{"standby_cluster":{"host":"a","hots":"b"}}"#,
            "standby_cluster.hots",
        ),
    ] {
        let err = DynamicConfig::from_json_strict(bad).unwrap_err();
        assert!(err.to_string().contains(key), "{bad}: {err}");
    }
    // failsafe_mode is implemented: read, no warning, no blocker, on in the HA settings.
    let (dynamic, warnings) =
        DynamicConfig::from_json(r#"{"ttl":30,"failsafe_mode":true}"#).expect("ok");
    assert!(warnings.is_empty(), "{warnings:?}");
    let ha = effective_ha(&loaded.config, &dynamic);
    assert_eq!((ha.unsupported_blocker, ha.failsafe_mode), (None, true));
    let (dynamic, _) = DynamicConfig::from_json(r#"{"failsafe_mode":false}"#).expect("ok");
    assert!(!effective_ha(&loaded.config, &dynamic).failsafe_mode);
    assert!(!effective_ha(&loaded.config, &DynamicConfig::defaults()).failsafe_mode);
    // A non-boolean is an error naming the key.
    let err = DynamicConfig::from_json(r#"{"failsafe_mode":"maybe"}"#).unwrap_err();
    assert!(err.to_string().contains("failsafe_mode"), "{err}");
}
