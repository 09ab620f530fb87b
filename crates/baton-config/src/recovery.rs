//! `bootstrap.method` with its section `bootstrap.<method>` (a custom bootstrap: an
//! operator's command instead of `initdb`) and the recovery settings of
//! `bootstrap.<method>.recovery_conf` and `postgresql.recovery_conf`. Both run commands as
//! the postgres OS user (the method's command, `restore_command`), so they are read from the
//! local file only; in the dynamic configuration `postgresql.recovery_conf` is refused
//! (`support.rs`).

use baton_core::CustomBootstrap;
use serde_json::Value;

use crate::walk::{Cx, Obj};

/// Keys of a custom bootstrap's section with a meaning of their own (the rest are passed to
/// the command as `--key=value`).
const OWN_KEYS: [&str; 4] = [
    "command",
    "no_params",
    "keep_existing_recovery_conf",
    "recovery_conf",
];

/// Where a `recovery_conf` mapping is used.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Use {
    /// `bootstrap.<method>.recovery_conf`: the new cluster's first recovery, which must end.
    Bootstrap,
    /// `postgresql.recovery_conf`: every replica's recovery, next to pgbaton's own settings.
    Replica,
}

/// The section of the custom bootstrap method `name` (`bootstrap.<name>`), required with a
/// `command`: without one Patroni silently runs initdb instead.
pub(crate) fn custom(cx: &mut Cx, bootstrap: &mut Obj<'_>, name: &str) -> Option<CustomBootstrap> {
    let item = bootstrap.child("method");
    if name.trim().is_empty() || name.contains(['.', '\0']) {
        cx.error(&item, format!("{name:?} is not a method name"));
        return None;
    }
    if crate::support::find(&bootstrap.pattern_of(name)).is_some() {
        cx.error(
            &item,
            format!(
                "{name:?} is a key of bootstrap, not a bootstrap method (its section would be {})",
                bootstrap.child(name)
            ),
        );
        return None;
    }
    let path = bootstrap.child(name);
    let Some(section) = bootstrap.get_free(name).filter(|v| !v.is_null()) else {
        cx.error(
            &path,
            format!(
                "required by bootstrap.method {name:?}: the method's section with its command \
                 (Patroni would run initdb instead)"
            ),
        );
        return None;
    };
    let before = cx.error_count();
    let mut o = Obj::new_as(cx, &path, "bootstrap.<method>", section)?;
    let argv = o
        .req(cx, "command", |cx, p, v| match v {
            Value::String(s) if s.trim().is_empty() => {
                cx.error(p, "expected a command, found an empty string");
                None
            }
            _ => crate::hooks::script(cx, p, v),
        })
        .map(|s| s.argv);
    let no_params = o
        .opt(cx, "no_params", |cx, p, v| cx.boolean(p, v))
        .unwrap_or(false);
    let keep_existing_recovery_conf = o
        .opt(cx, "keep_existing_recovery_conf", |cx, p, v| {
            cx.boolean(p, v)
        })
        .unwrap_or(false);
    let recovery_conf = o.opt(cx, "recovery_conf", |cx, p, v| {
        recovery_conf(cx, p, v, Use::Bootstrap)
    });
    let mut options = Vec::new();
    for key in o.keys() {
        if OWN_KEYS.contains(&key) {
            continue;
        }
        let p = o.child(key);
        let value = o.get_free(key).unwrap_or(&Value::Null);
        if matches!(key, "scope" | "datadir") {
            cx.warn(
                &p,
                "ignored, as in Patroni: pgbaton passes --scope and --datadir itself (unless \
                 no_params)",
            );
            continue;
        }
        let Some(rendered) = crate::replica::command_option(cx, &p, value) else {
            continue;
        };
        options.push((key.to_owned(), rendered));
    }
    o.finish(cx);
    let argv = argv?;
    (cx.error_count() == before).then(|| CustomBootstrap {
        name: name.to_owned(),
        argv,
        no_params,
        keep_existing_recovery_conf,
        recovery_conf,
        options,
    })
}

/// A mapping of recovery parameters, names lower-cased, values as PostgreSQL values. The
/// settings pgbaton writes itself are refused with their key path; on a replica the
/// recovery targets, which Patroni drops there too, are ignored with a warning.
pub(crate) fn recovery_conf(
    cx: &mut Cx,
    path: &str,
    v: &Value,
    usage: Use,
) -> Option<Vec<(String, String)>> {
    let before = cx.error_count();
    let mut o = Obj::new(cx, path, v)?;
    let mut out: Vec<(String, String)> = Vec::new();
    for key in o.keys() {
        let Some(value) = o.get_free(key) else {
            continue;
        };
        let p = o.child(key);
        if let Some(problem) = crate::params::name_problem(key) {
            cx.error(
                &p,
                format!("{key:?} is not a PostgreSQL parameter name: {problem}"),
            );
            continue;
        }
        let name = key.to_ascii_lowercase();
        match (name.as_str(), usage) {
            ("standby_mode", Use::Bootstrap) => {
                cx.error(
                    &p,
                    "a bootstrap's recovery must end with a primary: standby_mode would keep the \
                     new cluster a standby (use recovery_target_action: promote)",
                );
                continue;
            }
            ("primary_conninfo" | "primary_slot_name" | "standby_mode", Use::Replica) => {
                cx.error(
                    &p,
                    format!(
                        "pgbaton sets {name} itself on every replica (the leader it streams \
                         from, its slot, standby.signal); remove it"
                    ),
                );
                continue;
            }
            (n, Use::Replica) if n.starts_with("recovery_target") => {
                cx.warn(
                    &p,
                    "ignored, as in Patroni: a replica follows the latest timeline and has no \
                     recovery target",
                );
                continue;
            }
            _ => {}
        }
        if out.iter().any(|(n, _)| *n == name) {
            cx.error(
                &p,
                format!("{name} is given twice (names are case-insensitive)"),
            );
            continue;
        }
        if let Some(text) = crate::params::render(cx, &p, value) {
            out.push((name, text));
        }
    }
    o.finish(cx);
    (cx.error_count() == before).then_some(out)
}
