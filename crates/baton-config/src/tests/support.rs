//! The support table: refused keys, warned keys, and the checks that the parsers and the
//! documentation agree with the table.

use std::path::PathBuf;

use expect_test::expect;

use super::{BASE, BASE_HBA, check, check_env, load, no_env};
use crate::support::{self, KEYS};
use crate::{DynamicConfig, load_str};

fn with_restapi(extra: &str) -> String {
    BASE.replacen(
        "  connect_address: 127.0.0.1:8008\n",
        &format!("  connect_address: 127.0.0.1:8008\n{extra}"),
        1,
    )
}

fn with_etcd(extra: &str) -> String {
    BASE.replace(
        "  host: 127.0.0.1:2379\n",
        &format!("  host: 127.0.0.1:2379\n{extra}"),
    )
}

fn with_pg(extra: &str) -> String {
    BASE.replace(
        "postgresql:\n  listen",
        &format!("postgresql:\n{extra}  listen"),
    )
}

fn with_role(extra: &str) -> String {
    BASE.replace(
        "      username: replicator\n",
        &format!("      username: replicator\n{extra}"),
    )
}

fn with_dcs(extra: &str) -> String {
    format!("{BASE}bootstrap:\n  dcs:\n{extra}")
}

/// `label: outcome` for each file, one line per error or warning.
fn outcomes(cases: &[(&str, String)]) -> String {
    let mut out = String::new();
    for (label, yaml) in cases {
        let text = match load_str(yaml, &no_env) {
            Ok(l) if l.warnings.is_empty() => "ok".to_owned(),
            Ok(l) => format!("warnings:\n  {}", l.warnings.join("\n  ")),
            Err(e) => format!("errors:\n  {}", e.to_string().replace('\n', "\n  ")),
        };
        out.push_str(&format!("{label}: {text}\n"));
    }
    out
}

#[test]
fn each_refused_key_is_an_error_naming_it() {
    let cases = [
        (
            "citus",
            format!("{BASE}citus:\n  group: 0\n  database: citus\n"),
        ),
        ("certfile", with_restapi("  certfile: /etc/ssl/cert.pem\n")),
        ("keyfile", with_restapi("  keyfile: /etc/ssl/key.pem\n")),
        ("keyfile_password", with_restapi("  keyfile_password: x\n")),
        ("cafile", with_restapi("  cafile: /etc/ssl/ca.pem\n")),
        ("ciphers", with_restapi("  ciphers: HIGH\n")),
        ("verify_client", with_restapi("  verify_client: required\n")),
        ("allowlist", with_restapi("  allowlist: [127.0.0.1]\n")),
        (
            "allowlist_include_members",
            with_restapi("  allowlist_include_members: true\n"),
        ),
        ("etcd https", with_etcd("  protocol: https\n")),
        ("etcd cacert", with_etcd("  cacert: /etc/etcd/ca.pem\n")),
        ("etcd cert", with_etcd("  cert: /etc/etcd/cert.pem\n")),
        ("etcd key", with_etcd("  key: /etc/etcd/key.pem\n")),
        ("etcd key_password", with_etcd("  key_password: x\n")),
        (
            "config_dir",
            with_pg("  config_dir: /etc/postgresql/15/main\n"),
        ),
        (
            "custom_conf",
            with_pg("  custom_conf: /etc/pg/custom.conf\n"),
        ),
        ("pg_ident", with_pg("  pg_ident: [map1 alice postgres]\n")),
        (
            "pg_ident_replica",
            with_pg("  pg_ident_replica: [map1 bob postgres]\n"),
        ),
        (
            "pg_hba_primary",
            with_pg("  pg_hba_primary: [host all all 10.0.0.0/8 md5]\n"),
        ),
        (
            "parameters_replica",
            with_pg("  parameters_replica:\n    hot_standby_feedback: on\n"),
        ),
        ("sslcert", with_role("      sslcert: /c.pem\n")),
        ("sslkey", with_role("      sslkey: /k.pem\n")),
        ("sslpassword", with_role("      sslpassword: x\n")),
        ("sslrootcert", with_role("      sslrootcert: /ca.pem\n")),
        ("sslcrl", with_role("      sslcrl: /crl.pem\n")),
        ("sslcrldir", with_role("      sslcrldir: /crl\n")),
        ("sslmode", with_role("      sslmode: verify-full\n")),
        ("gssencmode", with_role("      gssencmode: require\n")),
        (
            "channel_binding",
            with_role("      channel_binding: require\n"),
        ),
        (
            "sslnegotiation",
            with_role("      sslnegotiation: direct\n"),
        ),
        ("nostream", format!("{BASE}tags:\n  nostream: true\n")),
        (
            "watchdog required",
            format!("{BASE}watchdog:\n  mode: required\n"),
        ),
        ("failsafe_mode", with_dcs("    failsafe_mode: true\n")),
        (
            "slots",
            with_dcs(
                "    slots:\n      debezium:\n        type: logical\n        database: app\n        plugin: pgoutput\n",
            ),
        ),
        (
            "permanent_slots",
            with_dcs("    permanent_slots:\n      barman:\n        type: physical\n"),
        ),
        (
            "permanent_replication_slots",
            with_dcs("    permanent_replication_slots:\n      barman: {type: physical}\n"),
        ),
        (
            "standby_cluster",
            with_dcs("    standby_cluster:\n      host: 10.0.0.1\n      port: 5432\n"),
        ),
        (
            "dynamic recovery_conf",
            with_dcs("    postgresql:\n      recovery_conf:\n        restore_command: cp %f %p\n"),
        ),
        (
            "dynamic create_replica_methods",
            with_dcs(
                "    postgresql:\n      create_replica_methods: [wal_g]\n      wal_g:\n        command: wal-g\n",
            ),
        ),
    ];
    expect![[r#"
        citus: errors:
          citus: not supported by pgbaton yet: Patroni keeps a Citus group's keys under /<namespace>/<scope>/<group>/, so pgbaton, which would read and write /<namespace>/<scope>/ instead, would run a second, separate cluster beside this group's Patroni members (two primaries)
        certfile: ok
        keyfile: errors:
          restapi.keyfile: needs restapi.certfile: without it the REST API serves plain HTTP
        keyfile_password: errors:
          restapi.keyfile_password: needs restapi.certfile: without it the REST API serves plain HTTP
        cafile: errors:
          restapi.cafile: needs restapi.certfile: without it the REST API serves plain HTTP
        ciphers: errors:
          restapi.ciphers: needs restapi.certfile: without it the REST API serves plain HTTP
        verify_client: errors:
          restapi.verify_client: needs restapi.certfile: without it the REST API serves plain HTTP
        allowlist: ok
        allowlist_include_members: ok
        etcd https: ok
        etcd cacert: errors:
          etcd3.cacert: needs protocol: https (the file is only used over TLS)
        etcd cert: errors:
          etcd3.cert: needs protocol: https (the file is only used over TLS)
          etcd3.key: required key is missing (cert is set)
        etcd key: errors:
          etcd3.key: needs protocol: https (the file is only used over TLS)
          etcd3.cert: required key is missing (key is set)
        etcd key_password: errors:
          etcd3.key_password: needs protocol: https (the file is only used over TLS)
          etcd3.key_password: needs key (the encrypted key it decrypts)
        config_dir: errors:
          postgresql.config_dir: not supported by pgbaton yet: pgbaton keeps postgresql.conf, postgresql.base.conf and pg_hba.conf in data_dir; the settings kept in this directory (ssl, shared_buffers, ...) would not be applied: move them to postgresql.parameters
        custom_conf: errors:
          postgresql.custom_conf: not supported by pgbaton yet: pgbaton includes postgresql.base.conf from data_dir; the settings in this file would not be applied
        pg_ident: errors:
          postgresql.pg_ident: not supported by pgbaton yet: pgbaton does not write pg_ident.conf: the user name maps pg_hba lines refer to would be missing
        pg_ident_replica: errors:
          postgresql.pg_ident_replica: not supported by pgbaton yet: this member would run with the common settings in every role (primary, replica, standby leader)
        pg_hba_primary: errors:
          postgresql.pg_hba_primary: not supported by pgbaton yet: this member would run with the common settings in every role (primary, replica, standby leader)
        parameters_replica: errors:
          postgresql.parameters_replica: not supported by pgbaton yet: this member would run with the common settings in every role (primary, replica, standby leader)
        sslcert: errors:
          postgresql.authentication.replication.sslcert: needs sslkey too: pgbaton does not read ~/.postgresql/postgresql.crt or postgresql.key
        sslkey: errors:
          postgresql.authentication.replication.sslkey: needs sslcert too: pgbaton does not read ~/.postgresql/postgresql.crt or postgresql.key
        sslpassword: errors:
          postgresql.authentication.replication.sslpassword: not supported by pgbaton yet: this TLS setting of pgbaton's PostgreSQL connections is not configurable, so it would not be applied
        sslrootcert: ok
        sslcrl: errors:
          postgresql.authentication.replication.sslcrl: needs sslrootcert: a revocation list is checked with the CA that verifies the server
        sslcrldir: errors:
          postgresql.authentication.replication.sslcrldir: not supported by pgbaton yet: this TLS setting of pgbaton's PostgreSQL connections is not configurable, so it would not be applied
        sslmode: errors:
          postgresql.authentication.replication.sslmode: verify-ca and verify-full need sslrootcert (a CA file, or "system" for the system's roots): pgbaton does not read ~/.postgresql/root.crt
        gssencmode: ok
        channel_binding: ok
        sslnegotiation: errors:
          postgresql.authentication.replication.sslnegotiation: not supported by pgbaton yet: this TLS setting of pgbaton's PostgreSQL connections is not configurable, so it would not be applied
        nostream: ok
        watchdog required: ok
        failsafe_mode: ok
        slots: ok
        permanent_slots: ok
        permanent_replication_slots: ok
        standby_cluster: ok
        dynamic recovery_conf: errors:
          bootstrap.dcs.postgresql.recovery_conf: refused in the dynamic configuration: recovery settings run commands as the postgres OS user (restore_command, archive_cleanup_command), so pgbaton takes them from the local configuration file only; set postgresql.recovery_conf in the local file
        dynamic create_replica_methods: errors:
          bootstrap.dcs.postgresql.create_replica_methods: refused in the dynamic configuration: a custom replica method runs a command as the agent's user, taken from the local configuration file only (whoever can write the dynamic configuration could otherwise run code on every member); set create_replica_methods and the methods' sections in the local file
    "#]]
    .assert_eq(&outcomes(&cases));
    // From the environment, the error names the variable.
    check_env(
        BASE,
        &[("PATRONI_ETCD3_PROTOCOL", "https")],
        expect![[r#"
            ok
        "#]],
    );
}

#[test]
fn harmless_patroni_keys_give_one_warning_each() {
    let yaml =
        BASE.replace(
            "  connect_address: 127.0.0.1:8008\n",
            "  connect_address: 127.0.0.1:8008\n  http_extra_headers: {X-Frame-Options: \
             SAMEORIGIN}\n  https_extra_headers: {Strict-Transport-Security: max-age=31536000}\n  \
             request_queue_size: 5\n  server_tokens: original\n  thread_pool_size: 5\n",
        )
        .replace(
            "  host: 127.0.0.1:2379\n",
            "  host: 127.0.0.1:2379\n  use_proxies: true\n  url: http://127.0.0.1:2379\n  \
             proxy: http://127.0.0.1:2379\n  srv: etcd.example.com\n  srv_suffix: x\n",
        )
        .replace(
            "      username: replicator\n",
            "      username: replicator\n      sslmode: prefer\n      gssencmode: disable\n      \
             channel_binding: prefer\n      sslnegotiation: postgres\n",
        )
        .replace(
            "postgresql:\n  listen",
            "postgresql:\n  use_slots: true\n  proxy_address: 127.0.0.1:6432\n  bin_name:\n    \
             pg_ctl: pg_ctl\n  callbacks:\n    on_role_change: /bin/true\n  \
             remove_data_directory_on_diverged_timelines: true\n  use_unix_socket_repl: true\n  \
             before_stop: /bin/true\n  krbsrvname: postgres\n  pg_rewind:\n    x: y\n  listen",
        ) + "\
log:
  level: INFO
ctl:
  insecure: true
thread_pool_size: 5
thread_stack_size: 512kB
consul:
  host: 127.0.0.1:8500
zookeeper: {hosts: [a]}
exhibitor: {hosts: [a]}
kubernetes: {labels: {}}
raft: {self_addr: a}
nomad: {host: a}
ttl: 30
loop_wait: 10
retry_timeout: 10
maximum_lag_on_failover: 1
maximum_lag_on_syncnode: 1
primary_start_timeout: 1
master_start_timeout: 1
primary_stop_timeout: 1
master_stop_timeout: 1
synchronous_mode: true
synchronous_mode_strict: true
synchronous_node_count: 1
failsafe_mode: true
check_timeline: true
pause: true
tags:
  clonefrom: true
  replicatefrom: postgresql1
watchdog:
  mode: automatic
  device: /dev/watchdog
  safety_margin: 5
  driver: default
bootstrap:
  pg_hba: [host all all 0.0.0.0/0 md5]
  post_bootstrap: /bin/true
  post_init: /bin/true
  users: {admin: {password: x}}
  dcs:
    max_timelines_history: 10
    primary_stop_timeout: 5
    master_stop_timeout: 5
    primary_race_backoff: 2
    check_timeline: false
    member_slots_ttl: 30min
    ignore_slots:
      - name: debezium
        type: logical
      - name: barman
        type: physical
    postgresql:
      listen: 0.0.0.0:5432
      connect_address: 10.0.0.1:5432
      proxy_address: 10.0.0.1:6432
      config_dir: /etc
      data_dir: /data
      pgpass: /p
      authentication: {superuser: {username: postgres}}
      bin_dir: /bin
      pg_ctl_timeout: 5
      use_unix_socket: true
      bin_name: {pg_ctl: pg_ctl}
      remove_data_directory_on_diverged_timelines: true
      use_unix_socket_repl: true
      krbsrvname: postgres
      pg_rewind: {x: y}
";
    check(
        &yaml,
        expect![[r#"
            ok, warnings:
            restapi.https_extra_headers: ignored: the REST API serves plain HTTP (restapi.certfile is not set), as in Patroni
            restapi.request_queue_size: accepted but not used by pgbaton (a setting of Patroni's HTTP server)
            restapi.server_tokens: accepted but not used by pgbaton (a setting of Patroni's HTTP server)
            restapi.thread_pool_size: accepted but not used by pgbaton (a setting of Patroni's HTTP server)
            etcd3.use_proxies: accepted but not used by pgbaton: it connects to the endpoints in host/hosts, as given
            etcd3.url: accepted but not used by pgbaton: it connects to the endpoints in host/hosts, as given
            etcd3.proxy: accepted but not used by pgbaton: it connects to the endpoints in host/hosts, as given
            etcd3.srv: accepted but not used by pgbaton: it connects to the endpoints in host/hosts, as given
            etcd3.srv_suffix: accepted but not used by pgbaton: it connects to the endpoints in host/hosts, as given
            bootstrap.dcs.check_timeline: pgbaton always checks timelines: a member behind the cluster's timeline never takes over
            bootstrap.dcs.postgresql.bin_name: accepted but not used by pgbaton: it runs the programs in bin_dir under their usual names
            bootstrap.dcs.postgresql.remove_data_directory_on_diverged_timelines: accepted but not used by pgbaton: a diverged member is rewound (use_pg_rewind) or re-cloned (remove_data_directory_on_rewind_failure)
            bootstrap.dcs.postgresql.use_unix_socket_repl: accepted but not used by pgbaton: replicas stream over TCP
            bootstrap.dcs.postgresql.krbsrvname: accepted but not used by pgbaton: replication connections do not set a Kerberos service name
            bootstrap.dcs.postgresql.pg_rewind: accepted but not used by pgbaton: pg_rewind runs with its own options, as authentication.rewind
            bootstrap.dcs.postgresql.listen: only used in the local configuration; ignored in the dynamic configuration, as in Patroni
            bootstrap.dcs.postgresql.connect_address: only used in the local configuration; ignored in the dynamic configuration, as in Patroni
            bootstrap.dcs.postgresql.proxy_address: only used in the local configuration; ignored in the dynamic configuration, as in Patroni
            bootstrap.dcs.postgresql.config_dir: only used in the local configuration; ignored in the dynamic configuration, as in Patroni
            bootstrap.dcs.postgresql.data_dir: only used in the local configuration; ignored in the dynamic configuration, as in Patroni
            bootstrap.dcs.postgresql.pgpass: only used in the local configuration; ignored in the dynamic configuration, as in Patroni
            bootstrap.dcs.postgresql.authentication: only used in the local configuration; ignored in the dynamic configuration, as in Patroni
            bootstrap.dcs.postgresql.bin_dir: accepted but not used by pgbaton from the dynamic configuration: set it in the local file
            bootstrap.dcs.postgresql.pg_ctl_timeout: accepted but not used by pgbaton from the dynamic configuration: set it in the local file
            bootstrap.dcs.postgresql.use_unix_socket: accepted but not used by pgbaton from the dynamic configuration: set it in the local file
            bootstrap.dcs.max_timelines_history: accepted but not used by pgbaton: the history key is not trimmed
            bootstrap.dcs.primary_stop_timeout: accepted but not used by pgbaton: stopping PostgreSQL is bounded by postgresql.pg_ctl_timeout
            bootstrap.dcs.master_stop_timeout: accepted but not used by pgbaton: stopping PostgreSQL is bounded by postgresql.pg_ctl_timeout
            bootstrap.dcs.primary_race_backoff: accepted but not used by pgbaton: members race for the leader key without this delay
            bootstrap.pg_hba: accepted but not used by pgbaton: it writes pg_hba.conf from postgresql.pg_hba (the local one, else the dynamic configuration's); move these lines there
            bootstrap.users: accepted but not used by pgbaton: it creates no users when creating a cluster
            postgresql.authentication.replication.sslnegotiation: accepted but not used by pgbaton: its connections use libpq's default (sslnegotiation postgres)
            postgresql.use_slots: ignored in the local configuration, as in Patroni: set it in the dynamic configuration (bootstrap.dcs.postgresql.use_slots)
            postgresql.proxy_address: accepted but not used by pgbaton: it publishes no proxy address in the member key
            postgresql.bin_name: accepted but not used by pgbaton: it runs the programs in bin_dir under their usual names
            postgresql.remove_data_directory_on_diverged_timelines: accepted but not used by pgbaton: a diverged member is rewound (use_pg_rewind) or re-cloned (remove_data_directory_on_rewind_failure)
            postgresql.use_unix_socket_repl: accepted but not used by pgbaton: replicas stream over TCP
            postgresql.krbsrvname: accepted but not used by pgbaton: replication connections do not set a Kerberos service name
            postgresql.pg_rewind: accepted but not used by pgbaton: pg_rewind runs with its own options, as authentication.rewind
            thread_pool_size: accepted but not used by pgbaton (a setting of Patroni's Python threads)
            thread_stack_size: accepted but not used by pgbaton (a setting of Patroni's Python threads)
            consul: accepted but not used by pgbaton: it keeps cluster state in etcd only
            zookeeper: accepted but not used by pgbaton: it keeps cluster state in etcd only
            exhibitor: accepted but not used by pgbaton: it keeps cluster state in etcd only
            kubernetes: accepted but not used by pgbaton: it keeps cluster state in etcd only
            raft: accepted but not used by pgbaton: it keeps cluster state in etcd only
            nomad: accepted but not used by pgbaton: it keeps cluster state in etcd only
            ttl: ignored at the top level, as in Patroni: dynamic settings come from bootstrap.dcs (when the cluster is created) and then from the DCS /config key
            loop_wait: ignored at the top level, as in Patroni: dynamic settings come from bootstrap.dcs (when the cluster is created) and then from the DCS /config key
            retry_timeout: ignored at the top level, as in Patroni: dynamic settings come from bootstrap.dcs (when the cluster is created) and then from the DCS /config key
            maximum_lag_on_failover: ignored at the top level, as in Patroni: dynamic settings come from bootstrap.dcs (when the cluster is created) and then from the DCS /config key
            maximum_lag_on_syncnode: ignored at the top level, as in Patroni: dynamic settings come from bootstrap.dcs (when the cluster is created) and then from the DCS /config key
            primary_start_timeout: ignored at the top level, as in Patroni: dynamic settings come from bootstrap.dcs (when the cluster is created) and then from the DCS /config key
            master_start_timeout: ignored at the top level, as in Patroni: dynamic settings come from bootstrap.dcs (when the cluster is created) and then from the DCS /config key
            primary_stop_timeout: ignored at the top level, as in Patroni: dynamic settings come from bootstrap.dcs (when the cluster is created) and then from the DCS /config key
            master_stop_timeout: ignored at the top level, as in Patroni: dynamic settings come from bootstrap.dcs (when the cluster is created) and then from the DCS /config key
            synchronous_mode: ignored at the top level, as in Patroni: dynamic settings come from bootstrap.dcs (when the cluster is created) and then from the DCS /config key
            synchronous_mode_strict: ignored at the top level, as in Patroni: dynamic settings come from bootstrap.dcs (when the cluster is created) and then from the DCS /config key
            synchronous_node_count: ignored at the top level, as in Patroni: dynamic settings come from bootstrap.dcs (when the cluster is created) and then from the DCS /config key
            failsafe_mode: ignored at the top level, as in Patroni: dynamic settings come from bootstrap.dcs (when the cluster is created) and then from the DCS /config key
            check_timeline: ignored at the top level, as in Patroni: dynamic settings come from bootstrap.dcs (when the cluster is created) and then from the DCS /config key
            pause: ignored at the top level, as in Patroni: dynamic settings come from bootstrap.dcs (when the cluster is created) and then from the DCS /config key
        "#]],
    );
    // The etcd v2 section: read as etcd3 alone, ignored beside one.
    check(
        &BASE.replace("etcd3:", "etcd:"),
        expect![[r#"
            ok, warnings:
            etcd: read as etcd3: pgbaton talks to etcd with the v3 API only, so keys a Patroni cluster wrote through the v2 API are not visible to it
        "#]],
    );
    check(
        &format!("{BASE}etcd:\n  host: 127.0.0.1:4001\n"),
        expect![[r#"
            ok, warnings:
            etcd: ignored: the etcd3 section is used
        "#]],
    );
}

#[test]
fn values_that_ask_for_nothing_are_accepted_silently() {
    let yaml =
        BASE.replace(
            "  connect_address: 127.0.0.1:8008\n",
            "  connect_address: 127.0.0.1:8008\n  allowlist: []\n  \
             allowlist_include_members: false\n  certfile: ''\n",
        )
        .replace(
            "  host: 127.0.0.1:2379\n",
            "  host: 127.0.0.1:2379\n  protocol: http\n  cacert:\n",
        )
        .replace(
            "postgresql:\n  listen",
            "postgresql:\n  create_replica_methods: [basebackup]\n  basebackup: []\n  \
             recovery_conf: {}\n  pg_ident: []\n  pre_promote:\n  callbacks: {}\n  listen",
        ) + "\
citus:
tags:
  clonefrom: false
  nostream: false
watchdog:
  mode: off
bootstrap:
  method: initdb
  dcs:
    failsafe_mode: false
    check_timeline: true
    slots: {}
    permanent_slots:
    ignore_slots: []
    standby_cluster: {}
    postgresql:
      create_replica_methods: [basebackup]
      recovery_conf:
";
    check(
        &yaml,
        expect![[r#"
            ok
        "#]],
    );
}

#[test]
fn the_dcs_value_warns_about_refused_keys_and_lists_them() {
    let stored = r#"{"ttl":30,"failsafe_mode":true,"standby_cluster":{"host":"10.0.0.1","port":5432},"slots":{"debezium":{"type":"logical","database":"app","plugin":"pgoutput"}},"postgresql":{"recovery_conf":{"restore_command":"cp %f %p"},"use_slots":false},"check_timeline":false,"written_by_another_tool":1}"#;
    let (dynamic, warnings) = DynamicConfig::from_json(stored).expect("read leniently");
    expect![[r#"
        [
            "check_timeline: pgbaton always checks timelines: a member behind the cluster's timeline never takes over",
            "postgresql.recovery_conf: ignored in the dynamic configuration: recovery settings run commands as the postgres OS user (restore_command, archive_cleanup_command), so pgbaton takes them from the local configuration file only; set postgresql.recovery_conf in the local file",
            "written_by_another_tool: unknown key, ignored",
        ]
    "#]]
    .assert_debug_eq(&warnings);
    expect![[r#"
        []
    "#]]
    .assert_debug_eq(&dynamic.unsupported);
    // Everything else is read as usual, and `raw` keeps what was stored.
    assert!(!dynamic.use_slots);
    assert_eq!(
        dynamic.to_json(),
        serde_json::from_str::<serde_json::Value>(stored)
            .expect("json")
            .to_string()
    );

    // What `PATCH /config` would store is checked as a file's bootstrap.dcs is.
    let err = DynamicConfig::from_json_strict(stored).expect_err("refused");
    expect![[r#"
        postgresql.recovery_conf: refused in the dynamic configuration: recovery settings run commands as the postgres OS user (restore_command, archive_cleanup_command), so pgbaton takes them from the local configuration file only; set postgresql.recovery_conf in the local file
        written_by_another_tool: unknown key"#]]
    .assert_eq(&err.to_string());
    let (ok, warnings) =
        DynamicConfig::from_json_strict(r#"{"ttl":30,"postgresql":{"use_slots":false}}"#)
            .expect("valid");
    assert!(warnings.is_empty() && ok.unsupported.is_empty() && !ok.use_slots);
}

#[test]
fn member_names_are_what_postgresql_keeps_unchanged() {
    let name = |n: &str| {
        let yaml = BASE.replace("name: postgresql0", &format!("name: {n:?}"));
        match load_str(&yaml, &no_env) {
            Ok(l) => format!("ok {}", l.config.name),
            Err(e) => e.to_string(),
        }
    };
    expect!["ok pg-1.dc_2"].assert_eq(&name("pg-1.dc_2"));
    expect!["ok NODE1"].assert_eq(&name("NODE1"));
    expect![[r#"name: "nöde1" cannot be a member name: found 'ö'; use ASCII letters, digits, "_", "-" and "." only (the name is also PostgreSQL's application_name, an entry of synchronous_standby_names and the replication slot name)"#]]
        .assert_eq(&name("nöde1"));
    expect![[r#"name: "pg 1" cannot be a member name: found ' '; use ASCII letters, digits, "_", "-" and "." only (the name is also PostgreSQL's application_name, an entry of synchronous_standby_names and the replication slot name)"#]]
        .assert_eq(&name("pg 1"));
    expect![[r#"name: "*" cannot be a member name: found '*'; use ASCII letters, digits, "_", "-" and "." only (the name is also PostgreSQL's application_name, an entry of synchronous_standby_names and the replication slot name)"#]]
        .assert_eq(&name("*"));
    expect![[r#"name: "a/b" cannot be a member name: found '/'; use ASCII letters, digits, "_", "-" and "." only (the name is also PostgreSQL's application_name, an entry of synchronous_standby_names and the replication slot name)"#]]
        .assert_eq(&name("a/b"));
    expect!["invalid YAML at line 2 column 11: did not find expected hexadecimal number"]
        .assert_eq(&name("a\u{7}"));
    let long = "n".repeat(64);
    expect![[r#"name: "nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn" cannot be a member name: 64 bytes, at most 63 (PostgreSQL truncates application_name and slot names longer than that)"#]]
        .assert_eq(&name(&long));
    assert_eq!(name(&"n".repeat(63)), format!("ok {}", "n".repeat(63)));
    // From the environment, the error names the variable.
    check_env(
        BASE,
        &[("PATRONI_NAME", "ünïcode")],
        expect![[r#"
            errors:
            PATRONI_NAME: "ünïcode" cannot be a member name: found 'ü'; use ASCII letters, digits, "_", "-" and "." only (the name is also PostgreSQL's application_name, an entry of synchronous_standby_names and the replication slot name)
        "#]],
    );
    check_env(
        BASE,
        &[("PGBATON_NAME", "x y")],
        expect![[r#"
            errors:
            PGBATON_NAME: "x y" cannot be a member name: found ' '; use ASCII letters, digits, "_", "-" and "." only (the name is also PostgreSQL's application_name, an entry of synchronous_standby_names and the replication slot name)
        "#]],
    );
}

#[test]
fn parameter_names_follow_postgresql_conf_rules_wherever_they_come_from() {
    let local = |name: &str| with_pg(&format!("  parameters:\n    {name:?}: 1\n"));
    let dcs = |name: &str| {
        with_dcs(&format!(
            "    postgresql:\n      parameters:\n        {name:?}: 1\n"
        ))
    };
    let cases = [
        ("plain", local("work_mem")),
        ("extension", local("auto_explain.log_min_duration")),
        ("upper case", local("Work_Mem")),
        ("newline", local("work_mem\nshared_preload_libraries")),
        ("equals", local("work_mem = '1GB'")),
        ("quote", local("a'b")),
        ("space", local("work mem")),
        ("two dots", local("a.b.c")),
        ("leading digit", local("1abc")),
        ("empty part", local("a.")),
        ("non-ASCII", local("wörk_mem")),
        ("empty", local("")),
        ("include", local("include")),
        ("include_dir", local("INCLUDE_DIR")),
        ("include_if_exists", local("include_if_exists")),
        ("data_directory", local("data_directory")),
        ("config_file", local("config_file")),
        ("bootstrap.dcs", dcs("include")),
        ("bootstrap.dcs newline", dcs("a\nb")),
    ];
    expect![[r#"
        plain: ok
        extension: ok
        upper case: ok
        newline: errors:
          postgresql.parameters."work_mem\nshared_preload_libraries": "work_mem\nshared_preload_libraries" is not a PostgreSQL parameter name: only ASCII letters, digits and "_" (and one "."), found '\n'
        equals: errors:
          postgresql.parameters."work_mem = '1GB'": "work_mem = '1GB'" is not a PostgreSQL parameter name: only ASCII letters, digits and "_" (and one "."), found ' '
        quote: errors:
          postgresql.parameters.a'b: "a'b" is not a PostgreSQL parameter name: only ASCII letters, digits and "_" (and one "."), found '\''
        space: errors:
          postgresql.parameters."work mem": "work mem" is not a PostgreSQL parameter name: only ASCII letters, digits and "_" (and one "."), found ' '
        two dots: errors:
          postgresql.parameters."a.b.c": "a.b.c" is not a PostgreSQL parameter name: at most one "." (extension.parameter)
        leading digit: errors:
          postgresql.parameters.1abc: "1abc" is not a PostgreSQL parameter name: each part starts with an ASCII letter or "_", found '1'
        empty part: errors:
          postgresql.parameters."a.": "a." is not a PostgreSQL parameter name: an empty part around "."
        non-ASCII: errors:
          postgresql.parameters.wörk_mem: "wörk_mem" is not a PostgreSQL parameter name: only ASCII letters, digits and "_" (and one "."), found 'ö'
        empty: errors:
          postgresql.parameters."": "" is not a PostgreSQL parameter name: the name is empty
        include: errors:
          postgresql.parameters.include: "include" is not a PostgreSQL parameter name: a postgresql.conf directive, not a parameter
        include_dir: errors:
          postgresql.parameters.INCLUDE_DIR: "INCLUDE_DIR" is not a PostgreSQL parameter name: a postgresql.conf directive, not a parameter
        include_if_exists: errors:
          postgresql.parameters.include_if_exists: "include_if_exists" is not a PostgreSQL parameter name: a postgresql.conf directive, not a parameter
        data_directory: errors:
          postgresql.parameters.data_directory: "data_directory" is not a PostgreSQL parameter name: pgbaton runs PostgreSQL on postgresql.data_dir with the postgresql.conf it writes there
        config_file: errors:
          postgresql.parameters.config_file: "config_file" is not a PostgreSQL parameter name: pgbaton runs PostgreSQL on postgresql.data_dir with the postgresql.conf it writes there
        bootstrap.dcs: errors:
          bootstrap.dcs.postgresql.parameters.include: "include" is not a PostgreSQL parameter name: a postgresql.conf directive, not a parameter
        bootstrap.dcs newline: errors:
          bootstrap.dcs.postgresql.parameters."a\nb": "a\nb" is not a PostgreSQL parameter name: only ASCII letters, digits and "_" (and one "."), found '\n'
    "#]]
    .assert_eq(&outcomes(&cases));

    // The DCS value (read at run time, or stored by PATCH /config) follows the same rules: an
    // invalid name makes the whole value invalid, and the agent keeps its previous one.
    for json in [
        r#"{"postgresql":{"parameters":{"include_dir":"/tmp/evil"}}}"#,
        r#"{"postgresql":{"parameters":{"work_mem\nshared_preload_libraries":"x"}}}"#,
        r#"{"postgresql":{"parameters":{"work_mem":"4MB\narchive_command = 'rm -rf /'"}}}"#,
    ] {
        let lenient = DynamicConfig::from_json(json)
            .expect_err("invalid")
            .to_string();
        let strict = DynamicConfig::from_json_strict(json)
            .expect_err("invalid")
            .to_string();
        assert_eq!(lenient, strict);
        assert!(lenient.starts_with("postgresql.parameters."), "{lenient}");
    }
}

#[test]
fn values_with_line_breaks_or_nul_are_refused() {
    let cases = [
        (
            "parameter value",
            with_pg("  parameters:\n    archive_command: \"cp %p /a\\narchive_mode = off\"\n"),
        ),
        (
            "folded block",
            with_pg("  parameters:\n    archive_command: >\n      cp %p /a\n"),
        ),
        (
            "folded block without the final line break",
            with_pg("  parameters:\n    archive_command: >-\n      cp %p /a\n"),
        ),
        ("nul", with_pg("  parameters:\n    work_mem: \"4MB\\0\"\n")),
        (
            "pg_hba line",
            BASE.replace(
                BASE_HBA,
                "  pg_hba:\n    - \"host all all 127.0.0.1/32 md5\\nhost all all 0.0.0.0/0 trust\"\n",
            ),
        ),
        (
            "dynamic pg_hba line",
            with_dcs("    postgresql:\n      pg_hba: [\"local all all trust\\r\"]\n"),
        ),
        (
            "password",
            BASE.replace("password: rep-pass", "password: \"rep\\npass\""),
        ),
        ("scope", BASE.replace("scope: batman", "scope: \"bat\\u0001man\"")),
    ];
    expect![[r#"
        parameter value: errors:
          postgresql.parameters.archive_command: must be a single line, found a line break in "cp %p /a\narchive_mode = off"
        folded block: errors:
          postgresql.parameters.archive_command: must be a single line, found a line break in "cp %p /a\n" (a YAML block scalar keeps its final line break unless written >- or |-)
        folded block without the final line break: ok
        nul: errors:
          postgresql.parameters.work_mem: must not contain a NUL character
        pg_hba line: errors:
          postgresql.pg_hba[0]: must be a single line, found a line break in "host all all 127.0.0.1/32 md5\nhost all all 0.0.0.0/0 trust"
        dynamic pg_hba line: errors:
          bootstrap.dcs.postgresql.pg_hba[0]: must be a single line, found a line break in "local all all trust\r"
        password: errors:
          postgresql.authentication.replication.password: must be a single line, found a line break in "rep\npass"
        scope: errors:
          scope: must not contain control characters, found "bat\u{1}man"
    "#]]
    .assert_eq(&outcomes(&cases));
}

#[test]
fn pgpass_defaults_to_a_file_beside_the_data_directory() {
    let pgpass = |yaml: &str| {
        let l = load(yaml);
        format!("{} {:?}", l.config.postgresql.pgpass.display(), l.warnings)
    };
    expect!["data/postgresql0.pgpass []"].assert_eq(&pgpass(BASE));
    expect!["/var/lib/postgresql/15/main.pgpass []"].assert_eq(&pgpass(&BASE.replace(
        "data_dir: data/postgresql0",
        "data_dir: /var/lib/postgresql/15/main/",
    )));
    expect!["/home/postgres/.pgpass []"]
        .assert_eq(&pgpass(&with_pg("  pgpass: /home/postgres/.pgpass\n")));
    expect![[r#"/tmp/pgpass0 ["postgresql.pgpass: /tmp/pgpass0 is in /tmp, a directory every local user can write to; remove the key to use the default, beside the data directory"]"#]]
        .assert_eq(&pgpass(&with_pg("  pgpass: /tmp/pgpass0\n")));
    expect![[r#"/dev/shm/a/pgpass ["postgresql.pgpass: /dev/shm/a/pgpass is in /dev/shm, a directory every local user can write to; remove the key to use the default, beside the data directory"]"#]]
        .assert_eq(&pgpass(&with_pg("  pgpass: /dev/shm/a/pgpass\n")));
    expect!["/tmpfs/pgpass []"].assert_eq(&pgpass(&with_pg("  pgpass: /tmpfs/pgpass\n")));
}

#[test]
fn without_any_pg_hba_a_warning_says_the_default_is_used() {
    let no_hba = BASE.replace(BASE_HBA, "");
    check(
        &no_hba,
        expect![[r#"
            ok, warnings:
            postgresql.pg_hba: not set, nor bootstrap.dcs.postgresql.pg_hba: unless the cluster's dynamic configuration (the DCS /config key) has postgresql.pg_hba, pgbaton writes its built-in default pg_hba.conf (see docs/configuration.md)
        "#]],
    );
    check(
        &format!(
            "{no_hba}bootstrap:\n  dcs:\n    postgresql:\n      pg_hba: [local all all peer]\n"
        ),
        expect![[r#"
            ok
        "#]],
    );
}

/// A file with every section, so that every parser runs and asks for every key it knows.
const EVERY_SECTION: &str = "\
scope: s
name: n
restapi:
  listen: 127.0.0.1:8008
  connect_address: 127.0.0.1:8008
  authentication: {username: u, password: p}
ctl:
  authentication: {username: u, password: p}
etcd3:
  host: 127.0.0.1:2379
etcd:
  host: 127.0.0.1:2379
bootstrap:
  method: restore
  restore: {command: /bin/true, no_params: false, keep_existing_recovery_conf: false, recovery_conf: {restore_command: 'cp a b'}}
  dcs:
    ignore_slots: [{type: logical}]
    postgresql: {}
    standby_cluster: {}
postgresql:
  listen: 127.0.0.1:5432
  connect_address: 127.0.0.1:5432
  data_dir: d
  create_replica_methods: [restore, basebackup]
  restore: {command: /bin/true, no_leader: true, keep_data: false, no_params: false}
  basebackup: [{max-rate: 100M}]
  callbacks: {}
  authentication:
    superuser: {username: a}
    replication: {username: b}
    rewind: {username: c}
tags: {}
watchdog: {}
vip: {address: 10.0.0.1, interface: eth0}
log: {type: json, level: INFO, traceback_level: ERROR, format: '%(message)s', dateformat: '%H', static_fields: {a: b}, dir: /tmp, file_size: 1, file_num: 1, mode: 0640}
";

#[test]
fn every_key_the_parsers_read_is_in_the_support_table() {
    let accepted = crate::accepted_paths(EVERY_SECTION);
    let missing: Vec<&String> = accepted
        .iter()
        .filter(|p| support::find(p).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "keys read by the parsers but not in support::KEYS: {missing:?}"
    );
    // And every table entry is a key some parser reads (custom tags are any other key).
    let unread: Vec<&str> = KEYS
        .iter()
        .filter(|k| k.path != "tags.<name>")
        .filter(|k| {
            !accepted
                .iter()
                .any(|p| support::find(p).is_some_and(|found| std::ptr::eq(found, *k)))
        })
        .map(|k| k.path)
        .collect();
    assert!(
        unread.is_empty(),
        "support::KEYS entries no parser reads: {unread:?}"
    );
}

#[test]
fn the_documented_key_tables_match_the_table() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md");
    let text = std::fs::read_to_string(&path).expect("docs/configuration.md");
    let mut out = String::new();
    let mut rest = text.as_str();
    let mut drift = Vec::new();
    for section in support::doc::SECTIONS {
        let begin = format!("<!-- BEGIN keys {section} -->\n");
        let Some(start) = rest.find(&begin) else {
            panic!("docs/configuration.md has no `{}` marker", begin.trim());
        };
        let body_start = start + begin.len();
        let Some(len) = rest[body_start..].find("<!-- END keys -->") else {
            panic!(
                "docs/configuration.md: no END marker after `{}`",
                begin.trim()
            );
        };
        let wanted = support::doc::table(section);
        if rest[body_start..body_start + len] != wanted {
            drift.push(*section);
        }
        out.push_str(&rest[..body_start]);
        out.push_str(&wanted);
        rest = &rest[body_start + len..];
    }
    out.push_str(rest);
    if drift.is_empty() {
        return;
    }
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::write(&path, out).expect("rewrite docs/configuration.md");
    } else {
        panic!(
            "the key tables of docs/configuration.md ({drift:?}) differ from support::KEYS; \
             run `UPDATE_EXPECT=1 cargo test -p baton-config` to rewrite them"
        );
    }
}
