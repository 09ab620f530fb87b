//! pgbaton's configuration: a Patroni-style YAML file plus environment overrides, parsed,
//! validated and turned into a [`Config`]; and the dynamic configuration that lives in the
//! DCS `/config` key ([`DynamicConfig`]).
//!
//! Every problem is reported, not just the first, each with the key path it is about
//! (`postgresql.authentication.replication.password: expected a string, found a list`).
//! Patroni keys pgbaton does not use are accepted with a warning; unknown keys are errors.
//! Nothing here touches the network or PostgreSQL, and the environment is read only through
//! the lookup function the caller passes in ([`std_env`] for the real one).

mod addr;
mod ciphers;
mod dynamic;
mod env;
mod error;
/// Properties checked by the fuzz targets and the proptest smoke tests (feature `fuzzing`).
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod hooks;
mod local;
mod log;
mod model;
mod params;
mod recovery;
mod replica;
mod slots;
mod support;
mod walk;
mod yaml;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_core::{HaConfig, MemberName};
use serde_json::{Map, Value};

pub use ciphers::supported as supported_tls12_suites;
pub use dynamic::{DynamicConfig, MIN_TTL, StandbyCommands};
pub use env::std_env;
pub use error::{ConfigError, ConfigErrors};
pub use hooks::{CALLBACK_NAMES, program_problem};
pub use log::{
    DEFAULT_FILE_NUM, DEFAULT_FILE_SIZE, DEFAULT_FORMAT, DatePiece, FormatPiece, LOG_FILE_NAME,
    Log, LogField, LogLevel, parse_dateformat, parse_format,
};
pub use model::{
    AllowEntry, Bootstrap, Callbacks, Config, Credentials, Ctl, Etcd, Loaded, Postgresql, RestApi,
    RestClient, RestTls, Script, VerifyClient, Vip, Watchdog, WatchdogDriver,
};
pub use params::{LOCAL_ONLY_PARAMETERS, is_local_only};

use walk::{Cx, Mode};

/// Loads a configuration file, or, like Patroni, a directory of `*.yml`/`*.yaml` files merged
/// in file-name order. `env` looks up environment variables (`PATRONI_*`, `PGBATON_*`).
pub fn load_file(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, ConfigErrors> {
    let mut cx = Cx::new(Mode::File);
    if path.is_dir() {
        let Some(root) = load_dir(&mut cx, path) else {
            return Err(cx.into_errors());
        };
        return load_value(cx, root, env);
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors::from(ConfigError::new(
            "",
            format!("cannot read {}: {e}", path.display()),
        ))
    })?;
    load_str(&text, env)
}

/// Loads a configuration from YAML text. `env` looks up environment variables.
pub fn load_str(yaml: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Loaded, ConfigErrors> {
    let mut cx = Cx::new(Mode::File);
    match yaml::parse(&mut cx, yaml, None) {
        Some(root) => load_value(cx, root, env),
        None => Err(cx.into_errors()),
    }
}

fn load_value(
    mut cx: Cx,
    mut root: Value,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, ConfigErrors> {
    if root.is_object() {
        env::overlay(&mut cx, &mut root, env);
    }
    match local::parse(&mut cx, &root) {
        Some(config) => cx
            .finish(config)
            .map(|(config, warnings)| Loaded { config, warnings }),
        None => Err(cx.into_errors()),
    }
}

/// Every key path the parsers read or check in `yaml` (see [`walk::Cx::accepted`]).
#[cfg(test)]
pub(crate) fn accepted_paths(yaml: &str) -> Vec<String> {
    let mut cx = Cx::new(Mode::File);
    if let Some(root) = yaml::parse(&mut cx, yaml, None) {
        local::parse(&mut cx, &root);
    }
    cx.accepted
}

fn load_dir(cx: &mut Cx, dir: &Path) -> Option<Value> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            cx.error("", format!("cannot read {}: {e}", dir.display()));
            return None;
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
        .collect();
    files.sort();
    if files.is_empty() {
        cx.error("", format!("no *.yml or *.yaml files in {}", dir.display()));
        return None;
    }
    let mut merged = Value::Object(Map::new());
    for file in files {
        let shown = file.display().to_string();
        match std::fs::read_to_string(&file) {
            Ok(text) => match yaml::parse(cx, &text, Some(&shown)) {
                Some(v @ Value::Object(_)) => yaml::patch(&mut merged, v),
                Some(other) => cx.error(
                    "",
                    format!(
                        "{shown}: expected a mapping of configuration sections, found {}",
                        walk::describe(&other)
                    ),
                ),
                None => {}
            },
            Err(e) => cx.error("", format!("cannot read {shown}: {e}")),
        }
    }
    (cx.error_count() == 0).then_some(merged)
}

/// The HA settings `decide` runs with: this node's local settings merged with the cluster's
/// dynamic configuration (local `postgresql.use_pg_rewind` wins over the dynamic one).
pub fn effective_ha(config: &Config, dynamic: &DynamicConfig) -> HaConfig {
    let secs = |s: u32| Duration::from_secs(u64::from(s));
    HaConfig {
        me: MemberName::new(config.name.clone()).unwrap_or_default(),
        ttl: secs(dynamic.ttl),
        loop_wait: secs(dynamic.loop_wait),
        // At least 1 s: a zero timeout would fail every DCS read.
        retry_timeout: secs(dynamic.retry_timeout.max(1)),
        maximum_lag_on_failover: dynamic.maximum_lag_on_failover,
        primary_start_timeout: secs(dynamic.primary_start_timeout),
        use_pg_rewind: config
            .postgresql
            .use_pg_rewind
            .unwrap_or(dynamic.use_pg_rewind),
        use_slots: dynamic.use_slots,
        // Only a standby cluster is unsafe to ignore (a second writable region); the other
        // unsupported keys only cost features (permanent slots).
        unsupported_blocker: dynamic
            .unsupported
            .iter()
            .find(|k| k.as_str() == "standby_cluster" || k.starts_with("standby_cluster."))
            .cloned(),
        remove_data_directory_on_rewind_failure: config
            .postgresql
            .remove_data_directory_on_rewind_failure
            || dynamic.remove_data_directory_on_rewind_failure,
        pause: dynamic.pause,
        tags: config.tags.clone(),
        can_bootstrap: config.bootstrap.is_some() && !config.tags.is_nofailover(),
        clone_without_leader: config
            .postgresql
            .create_replica_methods
            .iter()
            .any(baton_core::ReplicaMethod::works_without_source),
        sync: dynamic.sync,
        watchdog: config.watchdog.mode,
        failsafe_mode: dynamic.failsafe_mode,
        standby_cluster: dynamic.standby_cluster.clone(),
        permanent_slots: dynamic.permanent_slots.clone(),
        member_slots_ttl: secs(dynamic.member_slots_ttl),
        ignore_slots: dynamic.ignore_slots.clone(),
    }
}

/// A standby cluster's `restore_command` and `archive_cleanup_command` (Patroni writes
/// `standby_cluster`'s into the recovery settings). They run commands as the postgres OS
/// user, so pgbaton never takes their text from the DCS: a member runs its local
/// `postgresql.parameters` ones, else — while `standby_cluster` is set — the ones of its
/// own file's `bootstrap.dcs.standby_cluster` (the same YAML as Patroni's). Returns the
/// parameters to add (the latter; the former are in `postgresql.parameters` already) and a
/// warning for each command the dynamic configuration names that this member would not run
/// as written.
pub fn standby_commands(
    config: &Config,
    dynamic: &DynamicConfig,
) -> (Vec<(String, String)>, Vec<String>) {
    let (mut add, mut warnings) = (vec![], vec![]);
    if dynamic.standby_cluster.is_none() {
        return (add, warnings);
    }
    let booted = config.bootstrap.as_ref().map(|b| &b.dcs.standby_commands);
    let pick = |c: &StandbyCommands, name: &str| match name {
        "restore_command" => c.restore_command.clone(),
        _ => c.archive_cleanup_command.clone(),
    };
    for name in ["restore_command", "archive_cleanup_command"] {
        let local = config.postgresql.parameters.get(name).cloned();
        let from_file = booted.and_then(|c| pick(c, name));
        if local.is_none()
            && let Some(command) = &from_file
        {
            add.push((name.to_owned(), command.clone()));
        }
        let runs = local.or(from_file);
        match (pick(&dynamic.standby_commands, name), runs) {
            (Some(_), None) => warnings.push(format!(
                "standby_cluster.{name} is set in the dynamic configuration, but pgbaton runs no \
                 command from the DCS and this member has none in its local file: it replays no \
                 WAL from the archive; set postgresql.parameters.{name} (or \
                 bootstrap.dcs.standby_cluster.{name}) in its configuration file"
            )),
            (Some(stored), Some(runs)) if stored != runs => warnings.push(format!(
                "standby_cluster.{name} in the dynamic configuration differs from this member's \
                 local one; pgbaton runs the local one ({runs:?}), never a command from the DCS"
            )),
            _ => {}
        }
    }
    (add, warnings)
}

/// The PostgreSQL parameters to run with, as Patroni computes them: its defaults for the
/// parameters it passes on the command line (`max_connections` 100, `max_wal_senders` 10,
/// `wal_level` replica, `wal_keep_size` 128MB, ...), overlaid by the dynamic
/// `postgresql.parameters`, overlaid by the local `postgresql.parameters`; then
/// `listen_addresses` and `port` from `postgresql.listen`, `cluster_name` from `scope`, and
/// `hot_standby` and `wal_log_hints` on, which nothing overrides.
pub fn merged_parameters(config: &Config, dynamic: &DynamicConfig) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = params::defaults()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    // The dynamic parser drops the local-only parameters already; filtered again here so
    // that no other way of building a `DynamicConfig` can bring one in.
    out.extend(
        dynamic
            .parameters
            .iter()
            .filter(|(k, _)| !params::is_local_only(k))
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    out.extend(
        config
            .postgresql
            .parameters
            .iter()
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    // A standby cluster's restore_command / archive_cleanup_command: the local file's own.
    out.extend(standby_commands(config, dynamic).0);
    out.insert(
        "listen_addresses".to_owned(),
        config.postgresql.listen_addresses.clone(),
    );
    out.insert("port".to_owned(), config.postgresql.port.to_string());
    out.insert("cluster_name".to_owned(), config.scope.clone());
    out.insert("hot_standby".to_owned(), "on".to_owned());
    out.insert("wal_log_hints".to_owned(), "on".to_owned());
    // A logical slot copied to a replica is only safe to use after a failover while the
    // leader keeps the catalog rows it needs: the replica's feedback does that (Patroni
    // enforces it too).
    if dynamic.use_slots
        && dynamic
            .permanent_slots
            .iter()
            .any(|s| matches!(s.kind, baton_core::slots::SlotKind::Logical { .. }))
    {
        out.insert("hot_standby_feedback".to_owned(), "on".to_owned());
    }
    out
}

/// The `pg_hba.conf` lines to write: the local `postgresql.pg_hba` when set, else the dynamic
/// one (Patroni: local wins).
pub fn effective_pg_hba(config: &Config, dynamic: &DynamicConfig) -> Vec<String> {
    if config.postgresql.pg_hba.is_empty() {
        dynamic.pg_hba.clone()
    } else {
        config.postgresql.pg_hba.clone()
    }
}
