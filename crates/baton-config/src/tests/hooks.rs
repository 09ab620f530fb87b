//! Issue 10.3: callbacks, pre_promote, before_stop and post_bootstrap come from the local file,
//! split into words as Patroni splits them.

use expect_test::expect;

use super::{BASE, check, load};
use crate::{DynamicConfig, Script};

fn with_pg(extra: &str) -> String {
    BASE.replace(
        "  data_dir: data/postgresql0\n",
        &format!("  data_dir: data/postgresql0\n{extra}"),
    )
}

fn argv(s: &Option<Script>) -> Vec<&str> {
    s.as_ref()
        .map(|s| s.argv.iter().map(String::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn commands_are_split_as_shlex_does() {
    let yaml = with_pg(
        "  callbacks:\n    on_start: /bin/echo started\n    on_role_change: \"/bin/sh -c 'echo \\\"$@\\\" >> /tmp/x' cb\"\n    on_reload: ''\n  pre_promote: /bin/true --check\\ this\n  before_stop: /bin/true\n",
    ) + "bootstrap:\n  post_init: /bin/true init\n";
    let loaded = load(&yaml);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let pg = &loaded.config.postgresql;
    assert_eq!(argv(&pg.callbacks.on_start), ["/bin/echo", "started"]);
    assert_eq!(
        argv(&pg.callbacks.on_role_change),
        ["/bin/sh", "-c", "echo \"$@\" >> /tmp/x", "cb"]
    );
    // An empty command asks for nothing.
    assert_eq!(pg.callbacks.on_reload, None);
    assert_eq!(pg.callbacks.on_stop, None);
    assert_eq!(argv(&pg.pre_promote), ["/bin/true", "--check this"]);
    assert_eq!(argv(&pg.before_stop), ["/bin/true"]);
    // post_init is post_bootstrap's other name; post_bootstrap wins when both are given.
    let boot = loaded.config.bootstrap.as_ref().expect("bootstrap");
    assert_eq!(argv(&boot.post_bootstrap), ["/bin/true", "init"]);
    let both =
        with_pg("") + "bootstrap:\n  post_init: /bin/true init\n  post_bootstrap: /bin/true boot\n";
    let loaded = load(&both);
    let boot = loaded.config.bootstrap.as_ref().expect("bootstrap");
    assert_eq!(argv(&boot.post_bootstrap), ["/bin/true", "boot"]);
}

#[test]
fn bad_commands_name_their_key() {
    check(
        &with_pg(
            "  callbacks:\n    on_stop: \"/bin/echo 'unclosed\"\n    on_stat: /bin/true\n  pre_promote: [a, b]\n",
        ),
        expect![[r#"
            errors:
            postgresql.callbacks.on_stop: cannot split "/bin/echo 'unclosed" into words: an unclosed quote or a trailing backslash
            postgresql.callbacks.on_stat: unknown key (did you mean "on_start"?)
            postgresql.pre_promote: expected a command (a string), found a list
        "#]],
    );
}

#[test]
fn a_missing_or_not_executable_program_is_a_warning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = dir.path().join("plain.sh");
    std::fs::write(&plain, "#!/bin/sh\n").expect("write");
    let yaml = with_pg(&format!(
        "  callbacks:\n    on_start: /nonexistent/cb.sh start\n    on_stop: {}\n    on_reload: no-such-program-pgbaton\n  pre_promote: {}\n",
        plain.display(),
        dir.path().display()
    ));
    let loaded = load(&yaml);
    let shown: Vec<String> = loaded
        .warnings
        .iter()
        .map(|w| w.replace(&dir.path().display().to_string(), "<dir>"))
        .collect();
    expect![[r#"
        [
            "postgresql.callbacks.on_start: the command cannot be run: /nonexistent/cb.sh: No such file or directory (os error 2)",
            "postgresql.callbacks.on_stop: the command cannot be run: <dir>/plain.sh is not executable",
            "postgresql.callbacks.on_reload: the command cannot be run: \"no-such-program-pgbaton\" is not an executable file in PATH",
            "postgresql.pre_promote: the command cannot be run: <dir> is not a file",
        ]
    "#]]
    .assert_debug_eq(&shown);
    // Still read: the agent logs the failure when it would run it.
    assert!(loaded.config.postgresql.callbacks.on_start.is_some());
}

#[test]
fn the_dynamic_configuration_never_sets_a_command() {
    check(
        &(with_pg("")
            + "bootstrap:\n  dcs:\n    postgresql:\n      callbacks: {on_start: /bin/true}\n      pre_promote: /bin/true\n      before_stop: /bin/true\n"),
        expect![[r#"
            errors:
            bootstrap.dcs.postgresql.callbacks: refused in the dynamic configuration: a command run as the agent's user, taken from the local configuration file only (whoever can write the dynamic configuration could otherwise run code on every member); set it in the local file
            bootstrap.dcs.postgresql.pre_promote: refused in the dynamic configuration: a command run as the agent's user, taken from the local configuration file only (whoever can write the dynamic configuration could otherwise run code on every member); set it in the local file
            bootstrap.dcs.postgresql.before_stop: refused in the dynamic configuration: a command run as the agent's user, taken from the local configuration file only (whoever can write the dynamic configuration could otherwise run code on every member); set it in the local file
        "#]],
    );
    // PATCH /config and PUT /config are refused the same way.
    let err = DynamicConfig::from_json_strict(r#"{"postgresql":{"pre_promote":"/bin/true"}}"#)
        .expect_err("refused");
    assert!(
        err.to_string()
            .starts_with("postgresql.pre_promote: refused in the dynamic configuration"),
        "{err}"
    );
    // Already in the DCS (written by Patroni, say): a warning, and not an unsupported key.
    let (dynamic, warnings) =
        DynamicConfig::from_json(r#"{"postgresql":{"callbacks":{"on_start":"/bin/true"}}}"#)
            .expect("lenient");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].starts_with("postgresql.callbacks: ignored in the dynamic configuration"));
    assert!(dynamic.unsupported.is_empty());
}
