//! The dynamic configuration: what `bootstrap.dcs` holds and what the DCS `/config` key stores
//! (Patroni's global configuration, changed at runtime with `edit-config`).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::error::{ConfigError, ConfigErrors};
use crate::params::{self, Source};
use crate::support::DYNAMIC_ROOT;
use crate::walk::{Cx, Mode, Obj, join};

/// The smallest `ttl` pgbaton accepts, in seconds. Patroni raises anything below 20 to 20;
/// pgbaton can go lower because its lease keepalive runs independently of the HA loop and the
/// leader fences itself on its own monotonic clock before the lease can expire.
pub const MIN_TTL: u32 = 5;

/// `standby_cluster`'s commands as written in the dynamic configuration (never run from
/// there: [`crate::standby_commands`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StandbyCommands {
    pub restore_command: Option<String>,
    pub archive_cleanup_command: Option<String>,
}

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
    /// DCS failsafe mode (`baton_core::decide` rule `failsafe`).
    pub failsafe_mode: bool,
    /// `postgresql.use_pg_rewind`.
    pub use_pg_rewind: bool,
    /// `postgresql.use_slots` (default true): members stream through replication slots. Patroni
    /// honours this key only from the dynamic configuration.
    pub use_slots: bool,
    /// `postgresql.remove_data_directory_on_rewind_failure`.
    pub remove_data_directory_on_rewind_failure: bool,
    /// `slots` (or `permanent_slots`, `permanent_replication_slots`): permanent replication
    /// slots.
    pub permanent_slots: Vec<baton_core::slots::PermanentSlot>,
    /// `member_slots_ttl`, seconds (Patroni's default 30min; 0: member slots are not kept
    /// for departed members).
    pub member_slots_ttl: u32,
    /// `ignore_slots`: slots pgbaton never drops, even those it made.
    pub ignore_slots: Vec<baton_core::slots::SlotMatcher>,
    /// `postgresql.parameters`, rendered and validated (see [`crate::merged_parameters`]).
    pub parameters: BTreeMap<String, String>,
    /// `postgresql.pg_hba`: used when the local configuration has none.
    pub pg_hba: Vec<String>,
    /// `synchronous_mode`, `synchronous_mode_strict`, `synchronous_node_count`,
    /// `maximum_lag_on_syncnode`.
    pub sync: baton_core::SyncConfig,
    /// `standby_cluster`: this cluster replicates from another cluster's primary. `None`
    /// also for a section without `host`, `port` or `restore_command` (Patroni's
    /// `is_standby_cluster`).
    pub standby_cluster: Option<baton_core::StandbyCluster>,
    /// `standby_cluster.restore_command` and `archive_cleanup_command` as written. pgbaton
    /// never runs them from the DCS: PostgreSQL runs the member's local ones
    /// (`postgresql.parameters`, else the local file's own `bootstrap.dcs.standby_cluster`:
    /// [`crate::standby_commands`]).
    pub standby_commands: StandbyCommands,
    /// The whole dynamic configuration as JSON (with timing adjustments applied).
    pub raw: Value,
    /// Key paths of settings pgbaton does not support yet that the DCS value has
    /// (`standby_cluster`, `failsafe_mode`, `slots`, ...): only from [`DynamicConfig::from_json`],
    /// which warns about them and runs as if they were absent. The agent must not act as if
    /// they were honoured. Always empty for a file's `bootstrap.dcs`, where they are errors.
    pub unsupported: Vec<String>,
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
            failsafe_mode: false,
            use_pg_rewind: false,
            use_slots: true,
            remove_data_directory_on_rewind_failure: false,
            permanent_slots: Vec::new(),
            member_slots_ttl: 1800,
            ignore_slots: Vec::new(),
            parameters: BTreeMap::new(),
            pg_hba: Vec::new(),
            sync: baton_core::SyncConfig::default(),
            standby_cluster: None,
            standby_commands: StandbyCommands::default(),
            raw: Value::Object(Map::new()),
            unsupported: Vec::new(),
        }
    }

    /// Parses the DCS `/config` value as read back at run time. Unknown keys and keys pgbaton
    /// does not support are warnings here (another tool may have written them; the latter are
    /// listed in [`DynamicConfig::unsupported`]); wrong types, out-of-range values and invalid
    /// parameter names are errors, so the caller can keep its previous configuration.
    pub fn from_json(s: &str) -> Result<(DynamicConfig, Vec<String>), ConfigErrors> {
        DynamicConfig::from_json_in(s, Mode::Dcs)
    }

    /// Parses a dynamic configuration someone asks to store (the result of `PATCH /config`)
    /// with the rules of a file's `bootstrap.dcs`: unknown keys and keys pgbaton does not
    /// support yet are errors too.
    pub fn from_json_strict(s: &str) -> Result<(DynamicConfig, Vec<String>), ConfigErrors> {
        DynamicConfig::from_json_in(s, Mode::File)
    }

    fn from_json_in(s: &str, mode: Mode) -> Result<(DynamicConfig, Vec<String>), ConfigErrors> {
        let value: Value = serde_json::from_str(s)
            .map_err(|e| ConfigErrors::from(ConfigError::new("", format!("invalid JSON: {e}"))))?;
        let mut cx = Cx::new(mode);
        let mut config = parse(&mut cx, "", &value);
        config.unsupported = std::mem::take(&mut cx.unsupported);
        cx.finish(config)
    }

    /// `raw` as compact JSON, as Patroni writes it (`json.dumps(separators=(',', ':'))`).
    pub fn to_json(&self) -> String {
        self.raw.to_string()
    }
}

/// Reads a dynamic configuration at `path` (`bootstrap.dcs`, or `""` for the DCS value).
pub(crate) fn parse(cx: &mut Cx, path: &str, v: &Value) -> DynamicConfig {
    let mut d = DynamicConfig::defaults();
    let Some(mut o) = Obj::new_as(cx, path, DYNAMIC_ROOT, v) else {
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
    if let Some(on) = o.opt(cx, "failsafe_mode", |cx, p, v| cx.boolean(p, v)) {
        d.failsafe_mode = on;
    }
    for key in ["check_timeline"] {
        if let Some(on) = o.opt(cx, key, |cx, p, v| cx.boolean(p, v)) {
            o.value_class(cx, key, if on { "true" } else { "false" });
        }
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
    // Patroni reads the first of these that is set.
    for key in ["permanent_replication_slots", "permanent_slots", "slots"] {
        if let Some(slots) = o.opt(cx, key, crate::slots::permanent_slots)
            && !slots.is_empty()
            && d.permanent_slots.is_empty()
        {
            d.permanent_slots = slots;
        }
    }
    if let Some(ttl) = o.opt(cx, "member_slots_ttl", crate::slots::member_slots_ttl) {
        d.member_slots_ttl = u32::try_from(ttl).unwrap_or(u32::MAX);
    }
    if let Some(matchers) = o.opt(cx, "ignore_slots", crate::slots::ignore_slots) {
        d.ignore_slots = matchers;
    }
    if let Some(pg) = o.section(cx, "postgresql") {
        postgresql(cx, pg, &mut d);
    }
    if let Some(sc) = o.section(cx, "standby_cluster") {
        d.standby_cluster = standby_cluster(cx, sc, &mut d.standby_commands);
    }
    o.flagged(cx);
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

/// `create_replica_methods` in the dynamic configuration: only `[basebackup]`. A custom
/// method runs a command, which pgbaton takes from the local file only (`crate::replica`);
/// the sections other methods name (`pgbackrest:`, `wal_e:`) are accepted unchecked with it.
pub(crate) fn replica_methods(cx: &mut Cx, o: &mut Obj<'_>) {
    let Some(methods) = o.opt(cx, "create_replica_methods", |cx, p, v| {
        cx.string_list(p, v)
    }) else {
        return;
    };
    if methods.is_empty() || methods.iter().all(|m| m == "basebackup") {
        o.value_class(cx, "create_replica_methods", "[basebackup]");
        return;
    }
    o.value_class(cx, "create_replica_methods", "any other");
    for method in methods {
        if method != "basebackup" && !o.is_known(&method) {
            o.get_free(&method);
        }
    }
}

/// Why a standby cluster needs `host` or `restore_command`.
const NO_SOURCE: &str = "a standby cluster with neither host nor restore_command has nothing \
    to replicate from: set host (and port) to stream from the remote primary, or \
    restore_command to replay its WAL archive";

/// `standby_cluster`: the remote primary the standby leader streams from, or (without
/// `host`, with `restore_command`) the WAL archive alone. A section that names none of `host`,
/// `port`, `restore_command` is no standby cluster (Patroni's `is_standby_cluster`). The
/// commands' text is kept in [`DynamicConfig::standby_commands`], never run from here.
fn standby_cluster(
    cx: &mut Cx,
    mut o: Obj<'_>,
    commands: &mut StandbyCommands,
) -> Option<baton_core::StandbyCluster> {
    let host_path = o.child("host");
    let wanted = ["host", "port", "restore_command"]
        .iter()
        .any(|k| o.get(k).is_some_and(|v| !crate::support::is_empty(v)));
    let host = o.opt(cx, "host", |cx, p, v| {
        let host = cx.nonempty(p, v, "a host name or address")?;
        if host.contains(char::is_whitespace) {
            cx.error(
                p,
                format!("expected a host name or address, found {host:?}"),
            );
            return None;
        }
        Some(host)
    });
    let port = o.opt(cx, "port", |cx, p, v| {
        let n = match v {
            // Patroni reads the port as written: a number or a string of digits.
            Value::String(s) => match s.trim().parse::<u64>() {
                Ok(n) => n,
                Err(_) => {
                    cx.mismatch(p, "a port number (1-65535)", v);
                    return None;
                }
            },
            other => cx.uint(p, other, 1, 65_535)?,
        };
        match u16::try_from(n) {
            Ok(port) if port > 0 => Some(port),
            _ => {
                cx.error(p, format!("expected a port number (1-65535), found {n}"));
                None
            }
        }
    });
    let primary_slot_name = o.opt(cx, "primary_slot_name", |cx, p, v| {
        let slot = cx.nonempty(p, v, "a replication slot name")?;
        let valid = slot.len() <= 63
            && slot
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            cx.error(
                p,
                format!(
                    "{slot:?} is not a replication slot name (lower case letters, digits and \
                     underscores, at most 63)"
                ),
            );
            return None;
        }
        Some(slot)
    });
    let recovery_min_apply_delay = o.opt(cx, "recovery_min_apply_delay", |cx, p, v| {
        let value = params::render(cx, p, v)?;
        cx.single_line(p, &value).then_some(value)
    });
    let command = |cx: &mut Cx, p: &str, v: &Value| {
        let text = cx.string(p, v, "a command")?;
        cx.single_line(p, &text).then_some(text)
    };
    commands.restore_command = o
        .opt(cx, "restore_command", command)
        .filter(|c| !c.trim().is_empty());
    commands.archive_cleanup_command = o
        .opt(cx, "archive_cleanup_command", command)
        .filter(|c| !c.trim().is_empty());
    let create_replica_methods = o
        .opt(cx, "create_replica_methods", |cx, p, v| {
            let names = cx.string_list(p, v)?;
            if let Some(bad) = names.iter().find(|n| !crate::replica::is_method_name(n)) {
                cx.error(p, format!("{bad:?} is not a replica method name"));
                return None;
            }
            Some(names)
        })
        .unwrap_or_default();
    o.flagged(cx);
    o.finish(cx);
    if !wanted {
        return None;
    }
    if host.is_none() && commands.restore_command.is_none() {
        cx.refuse(&host_path, NO_SOURCE);
        return None;
    }
    Some(baton_core::StandbyCluster {
        host,
        port: port.unwrap_or(5432),
        primary_slot_name,
        recovery_min_apply_delay,
        archive: commands.restore_command.is_some(),
        create_replica_methods,
    })
}

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
    replica_methods(cx, &mut o);
    o.flagged(cx);
    o.finish(cx);
}
