//! A custom bootstrap (`bootstrap.method: <name>` with its section `bootstrap.<name>`):
//! an operator's command creates the new cluster's data directory instead of `initdb`
//! (restoring a backup, say), then PostgreSQL recovers (with the section's `recovery_conf`)
//! until it runs as a primary. Patroni's rules (`patroni/postgresql/bootstrap.py`,
//! `_custom_bootstrap`), as data and a pure function; `baton-pg` runs it.

/// `bootstrap.<name>` in the local configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustomBootstrap {
    /// The method's name (`bootstrap.method`).
    pub name: String,
    /// `command`, split into words (`shlex.split`). Never empty.
    pub argv: Vec<String>,
    /// `no_params`: `--scope` and `--datadir` are not passed.
    pub no_params: bool,
    /// `keep_existing_recovery_conf`: the `recovery.signal` / `standby.signal` the command
    /// left (and the recovery settings it wrote) are kept; otherwise removed.
    pub keep_existing_recovery_conf: bool,
    /// `recovery_conf`: recovery parameters (`restore_command`, `recovery_target_*`) written
    /// into `postgresql.conf` with `recovery.signal` for the first start, removed once the
    /// server runs as a primary. `None` when the section has none.
    pub recovery_conf: Option<Vec<(String, String)>>,
    /// The section's other keys in file order, values rendered as Patroni renders them
    /// (`true` → `True`): passed as `--key=value`.
    pub options: Vec<(String, String)>,
}

/// The arguments after the command's own words, as Patroni passes them: `--scope=<scope>
/// --datadir=<data_dir>` (not with `no_params`), then the section's other keys as
/// `--key=value`.
pub fn custom_bootstrap_args(method: &CustomBootstrap, scope: &str, data_dir: &str) -> Vec<String> {
    let mut out = Vec::new();
    if !method.no_params {
        out.push(format!("--scope={scope}"));
        out.push(format!("--datadir={data_dir}"));
    }
    out.extend(method.options.iter().map(|(k, v)| format!("--{k}={v}")));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patroni_arguments_come_first_unless_no_params() {
        let mut m = CustomBootstrap {
            name: "restore".into(),
            argv: vec!["/usr/local/bin/restore".into()],
            no_params: false,
            keep_existing_recovery_conf: false,
            recovery_conf: None,
            options: vec![
                ("stanza".into(), "main".into()),
                ("delta".into(), "True".into()),
            ],
        };
        assert_eq!(
            custom_bootstrap_args(&m, "demo", "/data/pg"),
            [
                "--scope=demo",
                "--datadir=/data/pg",
                "--stanza=main",
                "--delta=True"
            ]
        );
        m.no_params = true;
        assert_eq!(
            custom_bootstrap_args(&m, "demo", "/data/pg"),
            ["--stanza=main", "--delta=True"]
        );
    }
}
