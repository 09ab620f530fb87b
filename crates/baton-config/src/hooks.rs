//! Scripts the agent runs at PostgreSQL events, from the local file only:
//! `postgresql.callbacks.*`, `postgresql.pre_promote`, `postgresql.before_stop` and
//! `bootstrap.post_bootstrap` (`post_init`). A command is a string split into words as
//! Patroni splits it (Python's `shlex.split`: quotes and backslashes, no shell). Whoever can
//! set one runs code as the agent's user, so none is ever taken from the dynamic
//! configuration (the REST API's `PATCH /config`, the DCS), as the local-only parameters.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::model::{Callbacks, Script};
use crate::walk::{Cx, Obj};

/// The five callback names, in Patroni's order.
pub const CALLBACK_NAMES: [&str; 5] = [
    "on_start",
    "on_stop",
    "on_restart",
    "on_reload",
    "on_role_change",
];

/// `postgresql.callbacks`: a mapping of callback names to commands.
pub(crate) fn callbacks(cx: &mut Cx, pg: &mut Obj<'_>) -> Callbacks {
    let mut out = Callbacks::default();
    let Some(mut o) = pg.section(cx, "callbacks") else {
        return out;
    };
    for name in CALLBACK_NAMES {
        let script = o.opt(cx, name, script);
        match name {
            "on_start" => out.on_start = script,
            "on_stop" => out.on_stop = script,
            "on_restart" => out.on_restart = script,
            "on_reload" => out.on_reload = script,
            _ => out.on_role_change = script,
        }
    }
    o.finish(cx);
    out
}

/// One command: a non-empty string split into words as `shlex.split` does. An empty string
/// asks for nothing (`None`, as Patroni skips it). A program that cannot be found or run is
/// a warning: the agent logs its failure when it would run it and changes no role for it.
pub(crate) fn script(cx: &mut Cx, path: &str, v: &Value) -> Option<Script> {
    let text = match v {
        Value::String(s) => s,
        other => {
            cx.mismatch(path, "a command (a string)", other);
            return None;
        }
    };
    if text.contains('\0') {
        cx.error(path, "must not contain a NUL character");
        return None;
    }
    if text.trim().is_empty() {
        return None;
    }
    let Some(argv) = shlex::split(text) else {
        cx.error(
            path,
            format!("cannot split {text:?} into words: an unclosed quote or a trailing backslash"),
        );
        return None;
    };
    let script = Script { argv };
    if let Some(problem) = program_problem(&script.argv[0]) {
        cx.warn(path, problem);
    }
    Some(script)
}

/// Why `program` could not be run now (missing, not a file, not executable), looked up as
/// `execvp` does: as a path when it has a `/`, else in `PATH`.
pub fn program_problem(program: &str) -> Option<String> {
    let check = |p: &Path| -> Result<(), String> {
        let meta = std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
        if !meta.is_file() {
            return Err(format!("{} is not a file", p.display()));
        }
        if meta.permissions().mode() & 0o111 == 0 {
            return Err(format!("{} is not executable", p.display()));
        }
        Ok(())
    };
    if program.contains('/') {
        return check(Path::new(program))
            .err()
            .map(|e| format!("the command cannot be run: {e}"));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .any(|candidate: PathBuf| check(&candidate).is_ok());
    (!found).then(|| {
        format!("the command cannot be run: {program:?} is not an executable file in PATH")
    })
}
