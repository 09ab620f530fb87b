//! The dynamic configuration: what `bootstrap.dcs` holds and what the DCS `/config` key stores
//! (Patroni's global configuration, changed at runtime with `edit-config`).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::error::{ConfigError, ConfigErrors};
use crate::params::{self, Source};
use crate::walk::{Cx, Obj, Unknown, index, join};

/// The smallest `ttl` pgbaton accepts, in seconds. Patroni raises anything below 20 to 20;
/// pgbaton can go lower because its lease keepalive runs independently of the HA loop and the
/// leader fences itself on its own monotonic clock before the lease can expire.
pub const MIN_TTL: u32 = 5;

/// The cluster-wide settings every member follows.
///
/// The typed fields are the ones pgbaton acts on; every key (typed or not) stays in `raw`, which
/// is what goes to the DCS `/config` key, so tools like `patronictl show-config` see the
/// configuration as it was written.
#[derive(Clone, Debug, PartialEq)]
pub struct DynamicConfig {
    /// Leader lease time to live, seconds (at least [`MIN_TTL`]).
    pub ttl: u32,
    /// Seconds between HA loop cycles (at least 1).
    pub loop_wait: u32,
    /// Seconds a DCS or PostgreSQL operation is retried before it counts as failed (at least 1).
    pub retry_timeout: u32,
    /// Bytes a replica may lag behind the leader's last published position and still take over.
    pub maximum_lag_on_failover: u64,
    /// Seconds a crashed primary is restarted in place before failover (`master_start_timeout`
    /// is read as an alias).
    pub primary_start_timeout: u32,
    /// Maintenance mode: no automatic failover.
    pub pause: bool,
    /// `postgresql.use_pg_rewind`.
    pub use_pg_rewind: bool,
    /// `postgresql.use_slots` (default true): members stream through replication slots. Patroni
    /// honours this key only from the dynamic configuration.
    pub use_slots: bool,
    /// `postgresql.remove_data_directory_on_rewind_failure`.
    pub remove_data_directory_on_rewind_failure: bool,
    /// `postgresql.parameters`, rendered and validated (see [`crate::merged_parameters`]).
    pub parameters: BTreeMap<String, String>,
    /// `postgresql.pg_hba`: used when the local configuration has none.
    pub pg_hba: Vec<String>,
    /// `synchronous_mode`, `synchronous_mode_strict`, `synchronous_node_count`,
    /// `maximum_lag_on_syncnode`.
    pub sync: baton_core::SyncConfig,
    /// The whole dynamic configuration as JSON (with timing adjustments applied).
    pub raw: Value,
}

impl DynamicConfig {
    /// Patroni's defaults; `raw` is the empty object, as Patroni stores it when `bootstrap.dcs`
    /// is absent.
    pub fn defaults() -> DynamicConfig {
        DynamicConfig {
            ttl: 30,
            loop_wait: 10,
            retry_timeout: 10,
            maximum_lag_on_failover: 1_048_576,
            primary_start_timeout: 300,
            pause: false,
            use_pg_rewind: false,
            use_slots: true,
            remove_data_directory_on_rewind_failure: false,
            parameters: BTreeMap::new(),
            pg_hba: Vec::new(),
            sync: baton_core::SyncConfig::default(),
            raw: Value::Object(Map::new()),
        }
    }

    /// Parses the DCS `/config` value. Unknown keys are warnings here (another tool may have
    /// written them); wrong types and out-of-range values of known keys are errors, so the
    /// caller can keep its previous configuration.
    pub fn from_json(s: &str) -> Result<(DynamicConfig, Vec<String>), ConfigErrors> {
        let value: Value = serde_json::from_str(s)
            .map_err(|e| ConfigErrors::from(ConfigError::new("", format!("invalid JSON: {e}"))))?;
        let mut cx = Cx::new(Unknown::Warn);
        let config = parse(&mut cx, "", &value);
        cx.finish(config)
    }

    /// `raw` as compact JSON, as Patroni writes it (`json.dumps(separators=(',', ':'))`).
    pub fn to_json(&self) -> String {
        self.raw.to_string()
    }
}

const LOCAL_ONLY: &str =
    "only used in the local configuration; ignored in the dynamic configuration, as in Patroni";

/// Reads a dynamic configuration at `path` (`bootstrap.dcs`, or `""` for the DCS value).
pub(crate) fn parse(cx: &mut Cx, path: &str, v: &Value) -> DynamicConfig {
    let mut d = DynamicConfig::defaults();
    let Some(mut o) = Obj::new(cx, path, v) else {
        return d;
    };
    let mut raw = match v {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };

    let before = cx.error_count();
    let ttl = o.opt(cx, "ttl", |cx, p, v| {
        let n = cx.u32(p, v, 0)?;
        if n < MIN_TTL {
            cx.error(p, format!("must be at least {MIN_TTL} seconds, found {n} (pgbaton's minimum; Patroni's is 20)"));
            return None;
        }
        Some(n)
    });
    let loop_wait = o.opt(cx, "loop_wait", |cx, p, v| cx.u32(p, v, 1));
    let retry_timeout = o.opt(cx, "retry_timeout", |cx, p, v| cx.u32(p, v, 1));
    d.ttl = ttl.unwrap_or(d.ttl);
    d.loop_wait = loop_wait.unwrap_or(d.loop_wait);
    d.retry_timeout = retry_timeout.unwrap_or(d.retry_timeout);
    if cx.error_count() == before {
        adjust_timeouts(cx, path, &mut d, &mut raw);
    }

    if let Some(n) = o.opt(cx, "maximum_lag_on_failover", |cx, p, v| {
        cx.uint(p, v, 0, i64::MAX as u64)
    }) {
        d.maximum_lag_on_failover = n;
    }
    // primary_start_timeout wins over its old name, as in Patroni.
    let primary = o.opt(cx, "primary_start_timeout", |cx, p, v| cx.u32(p, v, 0));
    let master = o.opt(cx, "master_start_timeout", |cx, p, v| cx.u32(p, v, 0));
    if let Some(n) = primary.or(master) {
        d.primary_start_timeout = n;
    }
    if let Some(b) = o.opt(cx, "pause", |cx, p, v| cx.boolean(p, v)) {
        d.pause = b;
    }

    if let Some(n) = o.opt(cx, "maximum_lag_on_syncnode", |cx, p, v| {
        cx.int(p, v, -1, i64::MAX)
    }) {
        d.sync.max_lag_on_syncnode = u64::try_from(n).ok();
    }
    // Known keys pgbaton keeps in `raw` only: checked for shape so typos and wrong types show.
    o.opt(cx, "max_timelines_history", |cx, p, v| {
        cx.uint(p, v, 0, i64::MAX as u64)
    });
    o.opt(cx, "primary_stop_timeout", |cx, p, v| cx.u32(p, v, 0));
    o.opt(cx, "master_stop_timeout", |cx, p, v| cx.u32(p, v, 0));
    o.opt(cx, "primary_race_backoff", |cx, p, v| cx.seconds(p, v));
    for key in ["check_timeline", "failsafe_mode"] {
        o.opt(cx, key, |cx, p, v| cx.boolean(p, v));
    }
    if let Some(strict) = o.opt(cx, "synchronous_mode_strict", |cx, p, v| cx.boolean(p, v)) {
        d.sync.strict = strict;
    }
    let mode = o.opt(cx, "synchronous_mode", |cx, p, v| match v {
        Value::String(s) if s.trim().eq_ignore_ascii_case("quorum") => {
            Some(baton_core::SyncMode::Quorum)
        }
        Value::Bool(b) => Some(if *b {
            baton_core::SyncMode::Priority
        } else {
            baton_core::SyncMode::Off
        }),
        Value::String(s) if crate::walk::parse_bool(s).is_some() => {
            Some(if crate::walk::parse_bool(s) == Some(true) {
                baton_core::SyncMode::Priority
            } else {
                baton_core::SyncMode::Off
            })
        }
        other => {
            cx.mismatch(p, "a boolean or \"quorum\"", other);
            None
        }
    });
    if let Some(mode) = mode {
        d.sync.mode = mode;
    }
    if let Some(n) = o.opt(cx, "synchronous_node_count", |cx, p, v| {
        cx.uint(p, v, 1, i64::MAX as u64)
    }) {
        d.sync.node_count = u32::try_from(n).unwrap_or(u32::MAX);
    }
    o.opt(cx, "member_slots_ttl", |cx, p, v| match v {
        Value::String(s) if !s.trim().is_empty() => Some(()),
        other => cx.uint(p, other, 0, i64::MAX as u64).map(|_| ()),
    });
    for key in ["slots", "permanent_slots", "permanent_replication_slots"] {
        o.opt(cx, key, |cx, p, v| slots(cx, p, v).then_some(()));
    }
    o.opt(cx, "ignore_slots", |cx, p, v| {
        let Value::Array(items) = v else {
            cx.mismatch(p, "a list of mappings", v);
            return None;
        };
        for (i, item) in items.iter().enumerate() {
            cx.mapping(&index(p, i), item);
        }
        Some(())
    });
    if let Some(sc) = o.section(cx, "standby_cluster") {
        standby_cluster(cx, sc);
    }
    if let Some(pg) = o.section(cx, "postgresql") {
        postgresql(cx, pg, &mut d);
    }
    o.finish(cx);

    d.raw = Value::Object(raw);
    d
}

/// Patroni's `_validate_and_adjust_timeouts`: keep `loop_wait + 2*retry_timeout <= ttl`,
/// preferring to shorten `loop_wait`.
fn adjust_timeouts(cx: &mut Cx, path: &str, d: &mut DynamicConfig, raw: &mut Map<String, Value>) {
    let (ttl, loop_wait, retry) = (
        u64::from(d.ttl),
        u64::from(d.loop_wait),
        u64::from(d.retry_timeout),
    );
    if 1 + 2 * retry > ttl {
        let new_retry = (d.ttl - 1) / 2;
        cx.warn(
            path,
            format!(
                "loop_wait + 2*retry_timeout must not exceed ttl ({ttl}): adjusted loop_wait from \
                 {loop_wait} to 1 and retry_timeout from {retry} to {new_retry}, as Patroni does"
            ),
        );
        d.loop_wait = 1;
        d.retry_timeout = new_retry;
        raw.insert("loop_wait".to_owned(), Value::from(1));
        raw.insert("retry_timeout".to_owned(), Value::from(new_retry));
    } else if loop_wait + 2 * retry > ttl {
        let new_loop_wait = d.ttl - 2 * d.retry_timeout;
        cx.warn(
            &join(path, "loop_wait"),
            format!(
                "adjusted from {loop_wait} to {new_loop_wait}: loop_wait + 2*retry_timeout must not \
                 exceed ttl ({ttl}) with retry_timeout {retry}, as Patroni does"
            ),
        );
        d.loop_wait = new_loop_wait;
        raw.insert("loop_wait".to_owned(), Value::from(new_loop_wait));
    }
}

/// `slots`: name → slot definition (a mapping) or null.
fn slots(cx: &mut Cx, path: &str, v: &Value) -> bool {
    let Value::Object(map) = v else {
        cx.mismatch(path, "a mapping of slot names", v);
        return false;
    };
    let mut ok = true;
    for (name, def) in map {
        ok &= cx.mapping(&join(path, name), def);
    }
    ok
}

fn standby_cluster(cx: &mut Cx, mut o: Obj<'_>) {
    for key in [
        "host",
        "primary_slot_name",
        "restore_command",
        "archive_cleanup_command",
    ] {
        o.opt(cx, key, |cx, p, v| cx.string(p, v, "a string"));
    }
    o.opt(cx, "port", |cx, p, v| match v {
        Value::String(_) => Some(0),
        other => cx.uint(p, other, 1, 65535),
    });
    o.opt(cx, "recovery_min_apply_delay", |cx, p, v| match v {
        Value::String(_) => Some(0),
        other => cx.uint(p, other, 0, i64::MAX as u64),
    });
    o.opt(cx, "create_replica_methods", |cx, p, v| {
        cx.string_list(p, v)
    });
    o.finish(cx);
}

/// Keys of the `postgresql` section Patroni accepts and pgbaton does not act on, with the
/// warning to give. Shared by the local and the dynamic configuration.
pub(crate) const PG_UNUSED: &[(&str, &str)] = &[
    (
        "bin_name",
        "Patroni key is accepted but not used by pgbaton (binaries are run from bin_dir under their usual names)",
    ),
    (
        "callbacks",
        "Patroni key is accepted but not used by pgbaton (it runs no callback scripts)",
    ),
    (
        "create_replica_methods",
        "Patroni key is accepted but not used by pgbaton (replicas are always created with pg_basebackup)",
    ),
    (
        "basebackup",
        "Patroni key is accepted but not used by pgbaton",
    ),
    (
        "recovery_conf",
        "Patroni key is accepted but not used by pgbaton",
    ),
    (
        "custom_conf",
        "Patroni key is accepted but not used by pgbaton",
    ),
    (
        "pg_ident",
        "Patroni key is accepted but not used by pgbaton",
    ),
    (
        "pg_ident_primary",
        "Patroni key is accepted but not used by pgbaton",
    ),
    (
        "pg_ident_replica",
        "Patroni key is accepted but not used by pgbaton",
    ),
    (
        "pg_ident_standby_leader",
        "Patroni key is accepted but not used by pgbaton",
    ),
    (
        "pg_hba_primary",
        "Patroni key is accepted but not used by pgbaton",
    ),
    (
        "pg_hba_replica",
        "Patroni key is accepted but not used by pgbaton",
    ),
    (
        "pg_hba_standby_leader",
        "Patroni key is accepted but not used by pgbaton",
    ),
    (
        "parameters_primary",
        "Patroni key is accepted but not used by pgbaton",
    ),
    (
        "parameters_replica",
        "Patroni key is accepted but not used by pgbaton",
    ),
    (
        "parameters_standby_leader",
        "Patroni key is accepted but not used by pgbaton",
    ),
    (
        "remove_data_directory_on_diverged_timelines",
        "Patroni key is accepted but not used by pgbaton",
    ),
    (
        "use_unix_socket_repl",
        "Patroni key is accepted but not used by pgbaton",
    ),
    (
        "pre_promote",
        "Patroni key is accepted but not used by pgbaton (it runs no pre-promote script)",
    ),
    (
        "before_stop",
        "Patroni key is accepted but not used by pgbaton (it runs no before-stop script)",
    ),
    (
        "krbsrvname",
        "Patroni key is accepted but not used by pgbaton",
    ),
    (
        "pg_rewind",
        "Patroni key is accepted but not used by pgbaton (use authentication.rewind)",
    ),
];

fn postgresql(cx: &mut Cx, mut o: Obj<'_>, d: &mut DynamicConfig) {
    if let Some(b) = o.opt(cx, "use_pg_rewind", |cx, p, v| cx.boolean(p, v)) {
        d.use_pg_rewind = b;
    }
    if let Some(b) = o.opt(cx, "use_slots", |cx, p, v| cx.boolean(p, v)) {
        d.use_slots = b;
    }
    if let Some(b) = o.opt(cx, "remove_data_directory_on_rewind_failure", |cx, p, v| {
        cx.boolean(p, v)
    }) {
        d.remove_data_directory_on_rewind_failure = b;
    }
    if let Some(v) = o.get("parameters") {
        d.parameters = params::parameters(cx, &o.child("parameters"), v, Source::Dynamic);
    }
    if let Some(lines) = o.opt(cx, "pg_hba", |cx, p, v| cx.string_list(p, v)) {
        d.pg_hba = lines;
    }
    for key in [
        "connect_address",
        "proxy_address",
        "listen",
        "config_dir",
        "data_dir",
        "pgpass",
        "authentication",
    ] {
        o.ignore(cx, key, LOCAL_ONLY);
    }
    for key in ["bin_dir", "pg_ctl_timeout", "use_unix_socket"] {
        o.ignore(cx, key, "Patroni key is accepted but not used by pgbaton from the dynamic configuration (set it in the local file)");
    }
    for (key, note) in PG_UNUSED {
        o.ignore(cx, key, note);
    }
    o.finish(cx);
}
