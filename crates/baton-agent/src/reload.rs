//! Re-reading the local configuration file at run time (SIGHUP, `POST /reload`): which keys
//! a running agent takes from the file, and which keep their running value until the agent
//! restarts.
//!
//! Taken at run time: `postgresql.parameters`, `postgresql.pg_hba` and
//! `postgresql.recovery_conf` (written into PostgreSQL's files and reloaded by the HA loop),
//! `postgresql.use_pg_rewind`, `postgresql.remove_data_directory_on_rewind_failure`,
//! `postgresql.callbacks`, `postgresql.pre_promote`, `postgresql.before_stop`, `tags` and
//! `bootstrap` (with a custom `method`; read when they are next needed; a standby cluster's
//! commands in `bootstrap.dcs.standby_cluster` go into PostgreSQL's files like
//! `postgresql.parameters`). Every other key is bound to a connection, a socket, a task or a
//! file the agent set up at start.

use baton_config::{Config, Postgresql};

/// The outcome of comparing the running configuration with a freshly loaded one.
#[derive(Clone, Debug, PartialEq)]
pub struct Reloaded {
    /// The configuration to run with: the running one, with every key that applies at run
    /// time taken from the file.
    pub config: Config,
    /// Key paths that changed and are now in effect (or will be, for PostgreSQL's files,
    /// in the next cycle).
    pub applied: Vec<&'static str>,
    /// Key paths that changed but keep their running value until the agent restarts.
    pub needs_restart: Vec<&'static str>,
}

/// Take from `file` what a running agent can apply; keep the rest of `running`.
///
/// Every field of [`Config`] and [`Postgresql`] is named here (destructured, not `..`), so a
/// new configuration key does not compile until it is sorted into one of the two groups.
pub fn adopt(running: &Config, file: Config) -> Reloaded {
    let mut config = running.clone();
    let mut applied = Vec::new();
    let mut needs_restart = Vec::new();
    let Config {
        scope,
        namespace,
        name,
        restapi,
        etcd,
        bootstrap,
        postgresql,
        tags,
        watchdog,
        vip,
        log,
        ctl,
    } = file;
    let mut restart = |changed: bool, path: &'static str| {
        if changed {
            needs_restart.push(path);
        }
    };
    restart(scope != running.scope, "scope");
    restart(namespace != running.namespace, "namespace");
    restart(name != running.name, "name");
    restart(restapi != running.restapi, "restapi");
    restart(etcd != running.etcd, "etcd3");
    restart(watchdog != running.watchdog, "watchdog");
    restart(vip != running.vip, "vip");
    restart(log != running.log, "log");
    restart(ctl != running.ctl, "ctl");
    let Postgresql {
        listen,
        listen_addresses,
        port,
        connect_address,
        connect_host,
        connect_port,
        data_dir,
        bin_dir,
        pgpass,
        superuser,
        replication,
        rewind,
        parameters,
        pg_hba,
        use_pg_rewind,
        remove_data_directory_on_rewind_failure,
        pg_ctl_timeout,
        use_unix_socket,
        callbacks,
        pre_promote,
        before_stop,
        create_replica_methods,
        basebackup,
        recovery_conf,
    } = postgresql;
    let old = &running.postgresql;
    restart(
        listen != old.listen || listen_addresses != old.listen_addresses || port != old.port,
        "postgresql.listen",
    );
    restart(
        connect_address != old.connect_address
            || connect_host != old.connect_host
            || connect_port != old.connect_port,
        "postgresql.connect_address",
    );
    restart(data_dir != old.data_dir, "postgresql.data_dir");
    restart(bin_dir != old.bin_dir, "postgresql.bin_dir");
    restart(pgpass != old.pgpass, "postgresql.pgpass");
    restart(
        superuser != old.superuser,
        "postgresql.authentication.superuser",
    );
    restart(
        replication != old.replication,
        "postgresql.authentication.replication",
    );
    restart(rewind != old.rewind, "postgresql.authentication.rewind");
    restart(
        pg_ctl_timeout != old.pg_ctl_timeout,
        "postgresql.pg_ctl_timeout",
    );
    restart(
        use_unix_socket != old.use_unix_socket,
        "postgresql.use_unix_socket",
    );
    restart(
        create_replica_methods != old.create_replica_methods,
        "postgresql.create_replica_methods",
    );
    restart(basebackup != old.basebackup, "postgresql.basebackup");

    let mut take = |changed: bool, path: &'static str| {
        if changed {
            applied.push(path);
        }
        changed
    };
    if take(parameters != old.parameters, "postgresql.parameters") {
        config.postgresql.parameters = parameters;
    }
    if take(pg_hba != old.pg_hba, "postgresql.pg_hba") {
        config.postgresql.pg_hba = pg_hba;
    }
    // Written into a replica's postgresql.conf and reloaded by the HA loop, as parameters are
    // (`Postgres::set_recovery_conf`); one PostgreSQL reads only at start is reported as
    // pending restart.
    if take(
        recovery_conf != old.recovery_conf,
        "postgresql.recovery_conf",
    ) {
        config.postgresql.recovery_conf = recovery_conf;
    }
    if take(
        use_pg_rewind != old.use_pg_rewind,
        "postgresql.use_pg_rewind",
    ) {
        config.postgresql.use_pg_rewind = use_pg_rewind;
    }
    if take(
        remove_data_directory_on_rewind_failure != old.remove_data_directory_on_rewind_failure,
        "postgresql.remove_data_directory_on_rewind_failure",
    ) {
        config.postgresql.remove_data_directory_on_rewind_failure =
            remove_data_directory_on_rewind_failure;
    }
    // The scripts apply from their next run on (`ha::Agent::reload` hands them to the runner).
    if take(callbacks != old.callbacks, "postgresql.callbacks") {
        config.postgresql.callbacks = callbacks;
    }
    if take(pre_promote != old.pre_promote, "postgresql.pre_promote") {
        config.postgresql.pre_promote = pre_promote;
    }
    if take(before_stop != old.before_stop, "postgresql.before_stop") {
        config.postgresql.before_stop = before_stop;
    }
    if take(tags != running.tags, "tags") {
        config.tags = tags;
    }
    if take(bootstrap != running.bootstrap, "bootstrap") {
        config.bootstrap = bootstrap;
    }
    Reloaded {
        config,
        applied,
        needs_restart,
    }
}

#[cfg(test)]
mod tests {
    use super::adopt;

    fn load(yaml: &str) -> baton_config::Config {
        baton_config::load_str(yaml, &|_| None)
            .unwrap_or_else(|e| panic!("invalid test configuration:\n{e}"))
            .config
    }

    const BASE: &str = "
scope: batman
name: node1
restapi:
  listen: 127.0.0.1:8008
  connect_address: 127.0.0.1:8008
etcd3:
  hosts: [127.0.0.1:2379]
postgresql:
  listen: 127.0.0.1:5432
  connect_address: 127.0.0.1:5432
  data_dir: /var/lib/pgbaton/data
  authentication:
    superuser: {username: postgres, password: su}
    replication: {username: replicator, password: rep}
  parameters:
    work_mem: 4MB
  pg_hba:
    - local all all trust
tags:
  nofailover: false
";

    #[test]
    fn nothing_changed() {
        let running = load(BASE);
        let r = adopt(&running, running.clone());
        assert_eq!(r.config, running);
        assert!(r.applied.is_empty() && r.needs_restart.is_empty(), "{r:?}");
    }

    #[test]
    fn run_time_keys_are_taken_from_the_file() {
        let running = load(BASE);
        let file = load(
            &BASE
                .replace("work_mem: 4MB", "work_mem: 8MB")
                .replace("local all all trust", "local all all peer")
                .replace("nofailover: false", "nofailover: true"),
        );
        let r = adopt(&running, file.clone());
        assert_eq!(
            r.applied,
            ["postgresql.parameters", "postgresql.pg_hba", "tags"]
        );
        assert!(r.needs_restart.is_empty(), "{r:?}");
        assert_eq!(r.config, file);
    }

    #[test]
    fn restart_keys_keep_their_running_value() {
        let running = load(BASE);
        let file = load(
            &BASE
                .replace("name: node1", "name: node9")
                .replace("127.0.0.1:8008", "127.0.0.1:8009")
                .replace("data_dir: /var/lib/pgbaton/data", "data_dir: /srv/other")
                .replace("password: rep", "password: rotated")
                .replace("work_mem: 4MB", "work_mem: 16MB"),
        );
        let r = adopt(&running, file);
        assert_eq!(
            r.needs_restart,
            [
                "name",
                "restapi",
                "postgresql.data_dir",
                // The default pgpass lives beside the data directory.
                "postgresql.pgpass",
                "postgresql.authentication.replication"
            ]
        );
        assert_eq!(r.applied, ["postgresql.parameters"]);
        // Only the run-time key differs from the running configuration.
        let mut expected = running.clone();
        expected
            .postgresql
            .parameters
            .insert("work_mem".into(), "16MB".into());
        assert_eq!(r.config, expected);
    }
}
