//! Replica creation methods (`postgresql.create_replica_methods`): which methods a clone
//! tries, in which order, and the arguments a custom method receives — Patroni's rules
//! (`patroni/postgresql/bootstrap.py`, `create_replica`), as data and pure functions. The
//! executor (`baton-pg`) runs them, falling back to the next method when one fails.

/// One way to create a replica's data directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicaMethod {
    /// `pg_basebackup` from the source member, with `postgresql.basebackup`'s options.
    Basebackup,
    /// A command of the operator's (`postgresql.<name>.command`): restore a backup, say.
    Custom(CustomMethod),
}

/// A custom method: `postgresql.<name>` in the local configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustomMethod {
    /// The method's name (its entry in `create_replica_methods`).
    pub name: String,
    /// The command split into words (`shlex.split`); the method's name when no `command`.
    pub argv: Vec<String>,
    /// `no_leader` (or Patroni's older `no_master`): works without a source member.
    pub no_leader: bool,
    /// `keep_data`: the data directory is not emptied before the command runs.
    pub keep_data: bool,
    /// `no_params`: `--scope`, `--role`, `--datadir` and `--connstring` are not passed.
    pub no_params: bool,
    /// Every key of the section but `command`, in file order, with its value rendered as
    /// Patroni renders it (`true` → `True`): passed as `--key=value`.
    pub options: Vec<(String, String)>,
}

impl ReplicaMethod {
    /// The name operators see in logs (`basebackup` or the custom method's name).
    pub fn name(&self) -> &str {
        match self {
            ReplicaMethod::Basebackup => "basebackup",
            ReplicaMethod::Custom(m) => &m.name,
        }
    }

    /// Usable when there is no member to copy from (Patroni's
    /// `replica_method_can_work_without_replication_connection`): a custom method with
    /// `no_leader`.
    pub fn works_without_source(&self) -> bool {
        matches!(self, ReplicaMethod::Custom(m) if m.no_leader)
    }
}

/// The methods a clone tries, in order: the configured ones (`basebackup` alone when none
/// are configured); without a source member only those that work without one.
pub fn methods_to_try(configured: &[ReplicaMethod], has_source: bool) -> Vec<&ReplicaMethod> {
    const DEFAULT: &[ReplicaMethod] = &[ReplicaMethod::Basebackup];
    let methods = if configured.is_empty() {
        DEFAULT
    } else {
        configured
    };
    methods
        .iter()
        .filter(|m| has_source || m.works_without_source())
        .collect()
}

/// The methods that create a standby cluster's leader (Patroni's
/// `standby_cluster.create_replica_methods`): the names in `wanted` resolved against the
/// member's local methods (`basebackup`, or a method of `postgresql.create_replica_methods`:
/// a name from the DCS never becomes a command), in that order; without names, `basebackup`.
/// Returns the methods and the names no local method has.
pub fn standby_leader_methods(
    wanted: &[String],
    local: &[ReplicaMethod],
) -> (Vec<ReplicaMethod>, Vec<String>) {
    if wanted.is_empty() {
        return (vec![ReplicaMethod::Basebackup], vec![]);
    }
    let (mut methods, mut missing) = (vec![], vec![]);
    for name in wanted {
        if name == "basebackup" {
            methods.push(ReplicaMethod::Basebackup);
        } else if let Some(m) = local.iter().find(|m| m.name() == name) {
            methods.push(m.clone());
        } else {
            missing.push(name.clone());
        }
    }
    (methods, missing)
}

/// The arguments after the command's own words, as Patroni passes them: the method's keys
/// (`--key=value`), then `--scope`, `--role=replica`, `--datadir` and `--connstring` (a key
/// of the method's with one of these names is replaced in place). With `no_params` only the
/// method's keys, without `no_params`, `no_master`, `no_leader` and `keep_data`.
pub fn custom_method_args(
    method: &CustomMethod,
    scope: &str,
    data_dir: &str,
    connstring: &str,
) -> Vec<String> {
    let mut pairs: Vec<(String, String)> = method.options.clone();
    if method.no_params {
        pairs.retain(|(k, _)| {
            !matches!(
                k.as_str(),
                "no_params" | "no_master" | "no_leader" | "keep_data"
            )
        });
    } else {
        for (key, value) in [
            ("scope", scope),
            ("role", "replica"),
            ("datadir", data_dir),
            ("connstring", connstring),
        ] {
            match pairs.iter_mut().find(|(k, _)| k == key) {
                Some(slot) => slot.1 = value.to_owned(),
                None => pairs.push((key.to_owned(), value.to_owned())),
            }
        }
    }
    pairs
        .into_iter()
        .map(|(k, v)| format!("--{k}={v}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn custom(name: &str, no_leader: bool, options: &[(&str, &str)]) -> ReplicaMethod {
        ReplicaMethod::Custom(CustomMethod {
            name: name.to_owned(),
            argv: vec![format!("/usr/local/bin/{name}")],
            no_leader,
            keep_data: false,
            no_params: false,
            options: options
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        })
    }

    fn names(methods: &[&ReplicaMethod]) -> Vec<String> {
        methods.iter().map(|m| m.name().to_owned()).collect()
    }

    #[test]
    fn no_methods_means_basebackup() {
        assert_eq!(names(&methods_to_try(&[], true)), ["basebackup"]);
        assert!(methods_to_try(&[], false).is_empty());
    }

    #[test]
    fn the_configured_order_is_kept_and_without_a_source_only_no_leader_methods_remain() {
        let methods = [
            custom("wal_e", false, &[]),
            custom("pgbackrest", true, &[("no_leader", "True")]),
            ReplicaMethod::Basebackup,
        ];
        assert_eq!(
            names(&methods_to_try(&methods, true)),
            ["wal_e", "pgbackrest", "basebackup"]
        );
        assert_eq!(names(&methods_to_try(&methods, false)), ["pgbackrest"]);
    }

    #[test]
    fn a_custom_method_gets_its_keys_then_patronis_four() {
        let ReplicaMethod::Custom(m) = custom(
            "restore",
            true,
            &[("no_leader", "True"), ("stanza", "main"), ("role", "x")],
        ) else {
            unreachable!()
        };
        assert_eq!(
            custom_method_args(&m, "demo", "/data/pg", "host=h port=5432"),
            [
                "--no_leader=True",
                "--stanza=main",
                "--role=replica",
                "--scope=demo",
                "--datadir=/data/pg",
                "--connstring=host=h port=5432",
            ]
        );
        let m = CustomMethod {
            no_params: true,
            options: vec![
                ("no_params".into(), "True".into()),
                ("keep_data".into(), "True".into()),
                ("stanza".into(), "main".into()),
            ],
            ..m
        };
        assert_eq!(
            custom_method_args(&m, "demo", "/data/pg", ""),
            ["--stanza=main"]
        );
    }
}
