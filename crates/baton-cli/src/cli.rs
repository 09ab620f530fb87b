//! The command line: `pgbaton agent CONFIG.yml` and patronictl's verbs, with patronictl's options.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "pgbaton",
    version,
    about = "PostgreSQL high-availability agent, a drop-in replacement for Patroni"
)]
pub struct Cli {
    /// Configuration file (the agent's YAML). Before the command, as patronictl's `-c`.
    #[arg(short = 'c', long = "config-file", env = "PGBATON_CONFIG_FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// Output formats of `list`, `history`, `query` and `remove` (patronictl's `--format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Pretty,
    Tsv,
    Json,
    #[value(alias = "yml")]
    Yaml,
}

/// patronictl's `-r/--role` choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// The leader (of a regular or a standby cluster).
    Leader,
    /// The leader of a regular cluster.
    #[value(alias = "master")]
    Primary,
    /// The leader of a standby cluster.
    StandbyLeader,
    /// A member other than the leader.
    #[value(alias = "standby")]
    Replica,
    /// Any member.
    Any,
}

/// What `flush` discards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FlushTarget {
    Restart,
    Switchover,
}

/// `-W` / `-w SECONDS`: how often to refresh (patronictl's `watching`).
#[derive(Clone, Copy, Debug, Default, PartialEq, clap::Args)]
pub struct Watch {
    /// Refresh every 2 seconds.
    #[arg(short = 'W')]
    pub every_two: bool,
    /// Refresh every SECONDS seconds.
    #[arg(short = 'w', long = "watch", value_name = "SECONDS", value_parser = parse_interval)]
    pub interval: Option<f64>,
}

impl Watch {
    /// The refresh interval, `None` for a single run.
    pub fn period(&self) -> Option<Duration> {
        match (self.interval, self.every_two) {
            (Some(s), _) => Some(Duration::from_secs_f64(s)),
            (None, true) => Some(Duration::from_secs(2)),
            (None, false) => None,
        }
    }
}

fn parse_interval(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 86_400.0 => Ok(v),
        _ => Err(format!(
            "{s:?} is not a number of seconds between 0 and 86400"
        )),
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent with this configuration file.
    Agent {
        config: PathBuf,
        /// Test-only: run against a simulated PostgreSQL (the simulator's model, in this
        /// process, serving its state to the other members on `postgresql.connect_address`)
        /// instead of a real one; no fence guard. For scale benchmarks and tests of many
        /// members on one machine (docs/testing.md). Never for a real database.
        #[arg(long)]
        simulated_postgres: bool,
    },
    /// Check a configuration file; print every error with its key path.
    ValidateConfig { config: PathBuf },
    /// Internal: the fence guard the agent starts beside itself (see ARCHITECTURE.md).
    #[command(hide = true)]
    FenceGuard {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        agent_pid: i32,
        /// The floating IP (`vip.address`) to take off the host when the agent cannot.
        #[arg(long, requires = "vip_interface")]
        vip: Option<String>,
        /// Its interface (`vip.interface`).
        #[arg(long, requires = "vip")]
        vip_interface: Option<String>,
    },
    /// Show the cluster members (patronictl list).
    List {
        /// Clusters to show (default: the configuration's `scope`).
        cluster_names: Vec<String>,
        /// Always show the Pending restart, Pending restart reason, Scheduled restart and
        /// Tags columns.
        #[arg(short = 'e', long)]
        extended: bool,
        /// Print a timestamp before the table.
        #[arg(short = 't', long = "timestamp")]
        timestamp: bool,
        #[arg(short = 'f', long, value_enum, default_value = "pretty")]
        format: Format,
        #[command(flatten)]
        watch: Watch,
    },
    /// The members as a tree: replicas under the member they stream from (patronictl topology).
    Topology {
        cluster_names: Vec<String>,
        #[command(flatten)]
        watch: Watch,
    },
    /// Show the dynamic configuration stored in the DCS.
    ShowConfig { cluster_name: Option<String> },
    /// Change the dynamic configuration (patronictl edit-config): through the leader's REST
    /// API (`PUT /config`, compare-and-swap on the revision shown).
    EditConfig {
        cluster_name: Option<String>,
        /// Do not show the changes.
        #[arg(short = 'q', long)]
        quiet: bool,
        /// Set a value: `KEY=VALUE`, KEY a dotted path, VALUE YAML (`null` removes the key).
        #[arg(short = 's', long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Set a PostgreSQL parameter: shorthand for `--set postgresql.parameters.NAME=VALUE`.
        #[arg(short = 'p', long = "pg", value_name = "NAME=VALUE")]
        pg: Vec<String>,
        /// Merge a YAML file (`-`: standard input) into the configuration.
        #[arg(long, value_name = "FILE")]
        apply: Option<String>,
        /// Replace the configuration with a YAML file (`-`: standard input).
        #[arg(long, value_name = "FILE")]
        replace: Option<String>,
        /// Apply without asking.
        #[arg(long)]
        force: bool,
    },
    /// Show the timeline history (patronictl history).
    History {
        cluster_name: Option<String>,
        #[arg(short = 'f', long, value_enum, default_value = "pretty")]
        format: Format,
    },
    /// Print a member's libpq connection string (`host=H port=P`), the leader's by default.
    Dsn {
        cluster_name: Option<String>,
        #[arg(short = 'r', long, value_enum, conflicts_with = "member")]
        role: Option<Role>,
        #[arg(short = 'm', long)]
        member: Option<String>,
    },
    /// Run SQL on a member (patronictl query), the leader by default.
    Query {
        cluster_name: Option<String>,
        #[arg(long, value_enum, default_value = "tsv")]
        format: Format,
        /// Read the SQL from this file.
        #[arg(short = 'f', long = "file", conflicts_with = "command")]
        file: Option<PathBuf>,
        /// Ask for the password.
        #[arg(long)]
        password: bool,
        #[arg(short = 'U', long)]
        username: Option<String>,
        #[command(flatten)]
        watch: Watch,
        #[arg(short = 'r', long, value_enum, conflicts_with = "member")]
        role: Option<Role>,
        #[arg(short = 'm', long)]
        member: Option<String>,
        /// Column delimiter of the tsv format.
        #[arg(long, default_value = "\t")]
        delimiter: String,
        /// The SQL to run.
        #[arg(short = 'c', long = "command", required_unless_present = "file")]
        command: Option<String>,
        #[arg(short = 'd', long)]
        dbname: Option<String>,
    },
    /// Remove a cluster's keys from the DCS (patronictl remove): asks for the cluster name, for
    /// "Yes I am aware" and, while the cluster has a leader, for the leader's name.
    Remove {
        cluster_name: String,
        #[arg(short = 'f', long, value_enum, default_value = "pretty")]
        format: Format,
        /// Do not ask (scripts): only the leader's name is still needed, with --leader.
        #[arg(long)]
        force: bool,
        /// With --force: the current leader's name, required while the cluster has one.
        #[arg(long, requires = "force")]
        leader: Option<String>,
    },
    /// Discard scheduled events (patronictl flush): `flush CLUSTER [MEMBER...] restart|switchover`.
    Flush {
        cluster_name: String,
        /// Members (restart only), then the target: `restart` or `switchover`.
        #[arg(value_name = "[MEMBER...] restart|switchover", required = true, num_args = 1..)]
        rest: Vec<String>,
        #[arg(short = 'r', long, value_enum)]
        role: Option<Role>,
        #[arg(long)]
        force: bool,
    },
    /// Restart PostgreSQL on members (patronictl restart): now, or at --scheduled; only
    /// where the filters (--pg-version, --pending, -r) match. The leader keeps its key.
    Restart {
        cluster_name: String,
        members: Vec<String>,
        #[arg(short = 'r', long, value_enum)]
        role: Option<Role>,
        /// Restart a single member only (accepted as patronictl's; pgbaton restarts the
        /// members named or chosen).
        #[arg(long)]
        any: bool,
        /// When: an ISO 8601 time with a timezone, or "now".
        #[arg(long)]
        scheduled: Option<String>,
        /// Restart only members running a PostgreSQL older than this (e.g. 15.4).
        #[arg(long = "pg-version")]
        pg_version: Option<String>,
        /// Restart only members with a setting waiting for a restart.
        #[arg(long)]
        pending: bool,
        /// Fail the restart when PostgreSQL is not back within this (e.g. 60, 5min).
        #[arg(long)]
        timeout: Option<String>,
        #[arg(long)]
        force: bool,
    },
    /// Re-read the configuration file on members (patronictl reload, POST /reload).
    Reload {
        cluster_name: String,
        members: Vec<String>,
        #[arg(short = 'r', long, value_enum)]
        role: Option<Role>,
        #[arg(long)]
        force: bool,
    },
    /// Planned switchover: the leader hands over to a standby (patronictl switchover).
    Switchover {
        /// The current leader (default: the one in the DCS).
        #[arg(long, alias = "primary")]
        leader: Option<String>,
        /// The member to take over (default: the healthiest).
        #[arg(long)]
        candidate: Option<String>,
        /// When: an ISO 8601 time with a timezone, or "now".
        #[arg(long)]
        scheduled: Option<String>,
        /// Do not ask for confirmation.
        #[arg(long)]
        force: bool,
    },
    /// Manual failover to a named member, also when the cluster has no leader.
    Failover {
        #[arg(long)]
        candidate: String,
        #[arg(long)]
        force: bool,
    },
    /// Re-clone a replica from the leader (POST /reinitialize on that member).
    Reinit {
        member: String,
        #[arg(long)]
        force: bool,
        /// Wait until the member runs again.
        #[arg(long)]
        wait: bool,
    },
    /// Maintenance mode: no automatic failover (PATCH /config {"pause": true}).
    Pause {
        /// Wait until every member reports it.
        #[arg(long)]
        wait: bool,
    },
    /// Leave maintenance mode.
    Resume {
        #[arg(long)]
        wait: bool,
    },
    /// Make this cluster a standby cluster of another one (PATCH /config
    /// {"standby_cluster": {...}}): its leader is stopped cleanly and comes back as the
    /// standby leader, streaming from --host (or replaying the archive).
    DemoteCluster {
        cluster_name: Option<String>,
        /// Address of the remote node.
        #[arg(long)]
        host: Option<String>,
        /// Port of the remote node.
        #[arg(long)]
        port: Option<u16>,
        /// Command to restore WAL records from the remote primary: marks the archive (alone
        /// without --host); each member runs its local restore_command, never this text.
        #[arg(long)]
        restore_command: Option<String>,
        /// Name of the slot on the remote node to use for replication.
        #[arg(long)]
        primary_slot_name: Option<String>,
        #[arg(long)]
        force: bool,
    },
    /// A planned region switch: demote this (primary) cluster to a standby cluster of the
    /// standby cluster of --standby-config, wait until that cluster's standby leader replayed
    /// this cluster's last WAL, then promote it. No acknowledged commit is lost.
    RegionSwitchover {
        /// The configuration file of a member of the standby cluster (its etcd and scope).
        #[arg(long)]
        standby_config: PathBuf,
        #[arg(long)]
        force: bool,
    },
    /// Make a standby cluster run standalone (PATCH /config {"standby_cluster": null}): its
    /// standby leader is promoted.
    PromoteCluster {
        cluster_name: Option<String>,
        #[arg(long)]
        force: bool,
    },
    /// Rehearse a switchover (or with --kill a real failover) under a built-in writer; report
    /// RTO, RPO and who took over, and keep the result in the DCS (`drill --history` lists it).
    Drill {
        cluster_name: Option<String>,
        /// A real failover: SIGKILL the leader's agent and PostgreSQL (the leader must be the
        /// member of this host's configuration).
        #[arg(long, conflicts_with = "candidate")]
        kill: bool,
        /// The member to switch over to (default: the healthiest).
        #[arg(long)]
        candidate: Option<String>,
        /// Where the writer commits (a libpq connection string or URL, e.g. the HAProxy
        /// endpoint); default: the current leader's connection URL from the DCS. User and
        /// password default to `postgresql.authentication.superuser`.
        #[arg(long, alias = "writer-dsn", value_name = "DSN")]
        dsn: Option<String>,
        /// Keep the `pgbaton_drill` table afterwards.
        #[arg(long)]
        keep: bool,
        /// Drill even when the cluster is not healthy, without asking.
        #[arg(long)]
        force: bool,
        /// How long to wait for a new leader and for the writer to get through again.
        #[arg(long, value_name = "SECONDS", default_value = "120", value_parser = parse_interval)]
        timeout: f64,
        /// List the drills recorded in the DCS instead.
        #[arg(long, conflicts_with_all = ["kill", "candidate", "dsn", "keep", "force"])]
        history: bool,
        #[arg(short = 'f', long, value_enum, default_value = "pretty")]
        format: Format,
    },
    /// Print the version.
    Version,
}

/// `flush`'s positional arguments: members, then the target (patronictl's click arguments).
pub fn flush_args(rest: &[String]) -> Result<(Vec<String>, FlushTarget), String> {
    let Some((target, members)) = rest.split_last() else {
        return Err("missing the target: restart or switchover".into());
    };
    let target = match target.as_str() {
        "restart" => FlushTarget::Restart,
        "switchover" => FlushTarget::Switchover,
        other => {
            return Err(format!(
                "invalid target {other:?}: the last argument must be restart or switchover"
            ));
        }
    };
    Ok((members.to_vec(), target))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("pgbaton").chain(args.iter().copied()))
    }

    #[test]
    fn the_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn edit_config_takes_patronictls_options() {
        let cli = parse(&[
            "-c",
            "x.yml",
            "edit-config",
            "batman",
            "-s",
            "ttl=20",
            "--set",
            "loop_wait=5",
            "-p",
            "work_mem=8MB",
            "--apply",
            "-",
            "--force",
            "-q",
        ])
        .expect("parses");
        assert_eq!(cli.config, Some(PathBuf::from("x.yml")));
        let Command::EditConfig {
            cluster_name,
            quiet,
            set,
            pg,
            apply,
            replace,
            force,
        } = cli.command
        else {
            panic!("not edit-config");
        };
        assert_eq!(cluster_name.as_deref(), Some("batman"));
        assert!(quiet && force);
        assert_eq!(set, ["ttl=20", "loop_wait=5"]);
        assert_eq!(pg, ["work_mem=8MB"]);
        assert_eq!(apply.as_deref(), Some("-"));
        assert_eq!(replace, None);
    }

    #[test]
    fn list_watch_and_formats() {
        let cli = parse(&["list", "-e", "-W", "-f", "yml"]).expect("parses");
        let Command::List {
            extended,
            format,
            watch,
            ..
        } = cli.command
        else {
            panic!("not list");
        };
        assert!(extended);
        assert_eq!(format, Format::Yaml);
        assert_eq!(watch.period(), Some(Duration::from_secs(2)));
        let cli = parse(&["list", "--watch", "0.5"]).expect("parses");
        let Command::List { watch, .. } = cli.command else {
            panic!("not list");
        };
        assert_eq!(watch.period(), Some(Duration::from_millis(500)));
        assert!(parse(&["list", "-w", "0"]).is_err());
        assert!(parse(&["list", "-w", "soon"]).is_err());
        let Command::List { watch, .. } = parse(&["list"]).expect("parses").command else {
            panic!("not list");
        };
        assert_eq!(watch.period(), None);
    }

    #[test]
    fn query_takes_c_as_its_command_and_refuses_role_with_member() {
        let cli = parse(&[
            "-c", "x.yml", "query", "-c", "select 1", "-m", "node2", "--format", "json", "-U",
            "postgres", "-d", "db",
        ])
        .expect("parses");
        let Command::Query {
            command,
            member,
            format,
            username,
            dbname,
            ..
        } = cli.command
        else {
            panic!("not query");
        };
        assert_eq!(command.as_deref(), Some("select 1"));
        assert_eq!(member.as_deref(), Some("node2"));
        assert_eq!(format, Format::Json);
        assert_eq!(username.as_deref(), Some("postgres"));
        assert_eq!(dbname.as_deref(), Some("db"));
        assert!(parse(&["query", "-c", "select 1", "-r", "replica", "-m", "n1"]).is_err());
        assert!(parse(&["query", "-c", "select 1", "-f", "q.sql"]).is_err());
        assert!(parse(&["query"]).is_err(), "needs --command or --file");
        let Command::Query { role, .. } = parse(&["query", "-c", "x", "-r", "master"])
            .expect("parses")
            .command
        else {
            panic!("not query");
        };
        assert_eq!(role, Some(Role::Primary));
    }

    #[test]
    fn flush_takes_members_then_the_target() {
        let cli = parse(&["flush", "batman", "node1", "node2", "restart", "--force"]).expect("p");
        let Command::Flush { rest, force, .. } = cli.command else {
            panic!("not flush");
        };
        assert!(force);
        assert_eq!(
            flush_args(&rest),
            Ok((vec!["node1".into(), "node2".into()], FlushTarget::Restart))
        );
        assert_eq!(
            flush_args(&["switchover".into()]),
            Ok((vec![], FlushTarget::Switchover))
        );
        assert!(flush_args(&["node1".into()]).is_err());
        assert!(parse(&["flush", "batman"]).is_err());
    }

    #[test]
    fn remove_needs_a_cluster_name_and_leader_only_with_force() {
        assert!(parse(&["remove"]).is_err());
        assert!(parse(&["remove", "batman", "--leader", "n1"]).is_err());
        let cli = parse(&["remove", "batman", "--force", "--leader", "n1"]).expect("parses");
        let Command::Remove {
            cluster_name,
            force,
            leader,
            ..
        } = cli.command
        else {
            panic!("not remove");
        };
        assert_eq!(
            (cluster_name.as_str(), force, leader.as_deref()),
            ("batman", true, Some("n1"))
        );
    }

    #[test]
    fn drill_options() {
        let cli = parse(&[
            "drill",
            "--kill",
            "--writer-dsn",
            "host=h port=5000",
            "--keep",
            "-f",
            "json",
        ])
        .expect("parses");
        let Command::Drill {
            kill,
            dsn,
            keep,
            format,
            timeout,
            history,
            ..
        } = cli.command
        else {
            panic!("not drill");
        };
        assert!(kill && keep && !history);
        assert_eq!(dsn.as_deref(), Some("host=h port=5000"));
        assert_eq!((format, timeout), (Format::Json, 120.0));
        assert!(parse(&["drill", "--kill", "--candidate", "n2"]).is_err());
        assert!(parse(&["drill", "--history", "--force"]).is_err());
        assert!(parse(&["drill", "--history", "-f", "json"]).is_ok());
    }

    #[test]
    fn the_config_file_option_comes_before_the_command() {
        assert!(parse(&["-c", "x.yml", "list"]).is_ok());
        // After the command `-c` is the command's own option (query's SQL), as in patronictl.
        assert!(parse(&["list", "-c", "x.yml"]).is_err());
    }
}
