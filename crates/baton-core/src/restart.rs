//! Restarting PostgreSQL on request (`POST /restart`, `patronictl restart`): the filters a
//! request may carry, whether they match this member, the action that restarts it in its
//! role (the leader keeps its key: no failover), and when a scheduled restart is due.

use std::fmt;
use std::time::Duration;

use crate::decision::{Action, StartRole, Upstream};
use crate::pg::PgState;
use crate::types::MemberName;
use crate::view::ClusterView;

/// `role` in a restart request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartRole {
    Primary,
    StandbyLeader,
    Replica,
}

impl RestartRole {
    /// Patroni's names (`master` is the old name of `primary`).
    pub fn parse(s: &str) -> Option<RestartRole> {
        match s {
            "primary" | "master" => Some(RestartRole::Primary),
            "standby_leader" => Some(RestartRole::StandbyLeader),
            "replica" => Some(RestartRole::Replica),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RestartRole::Primary => "primary",
            RestartRole::StandbyLeader => "standby_leader",
            RestartRole::Replica => "replica",
        }
    }
}

/// The conditions of a restart request (Patroni's `restart_matches`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestartFilters {
    /// Restart only a member in this role.
    pub role: Option<RestartRole>,
    /// Restart only while the running server is older than this `server_version_num`.
    pub postgres_version: Option<u32>,
    /// Restart only while PostgreSQL reports a setting waiting for a restart.
    pub restart_pending: bool,
    /// Bound of the restart (PostgreSQL down to accepting connections again).
    pub timeout: Option<Duration>,
}

/// A restart waiting for its time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduledRestart {
    /// The schedule as the request gave it (shown in `list` and the member key).
    pub schedule: String,
    /// The same instant in wall-clock milliseconds since the Unix epoch.
    pub at_unix_ms: i64,
    pub filters: RestartFilters,
    /// `pg_postmaster_start_time()` when it was scheduled: a restart that happened since
    /// (by hand, or a crash) makes it moot.
    pub postmaster_start_time: Option<String>,
}

/// Why a restart's conditions do not match (Patroni's log wording).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartMismatch {
    NotRunning,
    Role,
    Version,
    NotPending,
}

impl fmt::Display for RestartMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RestartMismatch::NotRunning => "postgres is not running",
            RestartMismatch::Role => "host role mismatch",
            RestartMismatch::Version => "postgres version mismatch",
            RestartMismatch::NotPending => "pending restart flag is not set",
        })
    }
}

/// Whether `filters` allow restarting this member now. `holds_key`: we hold the leader key.
pub fn restart_matches(
    filters: &RestartFilters,
    pg: &PgState,
    holds_key: bool,
) -> Result<(), RestartMismatch> {
    let Some(sql) = pg.sql.as_ref() else {
        return Err(RestartMismatch::NotRunning);
    };
    let role = if sql.in_recovery {
        RestartRole::Replica
    } else if holds_key {
        RestartRole::Primary
    } else {
        // A primary without the key is being demoted; it is nobody's restart target.
        return Err(RestartMismatch::Role);
    };
    if filters.role.is_some_and(|r| r != role) {
        return Err(RestartMismatch::Role);
    }
    if filters
        .postgres_version
        .is_some_and(|v| v <= sql.server_version)
    {
        return Err(RestartMismatch::Version);
    }
    if filters.restart_pending && !sql.pending_restart {
        return Err(RestartMismatch::NotPending);
    }
    Ok(())
}

/// The action that restarts PostgreSQL in its current role: the primary that holds the key
/// comes back as the primary (the key stays), a standby as a standby of the leader. The
/// standby leader of a standby cluster (`remote`: the remote primary, when we hold the key)
/// comes back as a standby of the remote primary.
pub fn restart_action(
    view: &ClusterView,
    pg: &PgState,
    holds_key: bool,
    remote: Option<Upstream>,
) -> Action {
    let role = if pg.is_primary() && holds_key {
        StartRole::Primary
    } else if let Some(remote) = remote.filter(|_| holds_key) {
        StartRole::Standby {
            upstream: Some(remote),
        }
    } else {
        StartRole::Standby {
            upstream: view.leader_name().and_then(|l| upstream(view, l)),
        }
    };
    Action::RestartPostgres { role }
}

fn upstream(view: &ClusterView, name: &MemberName) -> Option<Upstream> {
    let (host, port) = view.member(name)?.pg_host_port()?;
    Some(Upstream {
        name: name.clone(),
        host,
        port,
        remote: None,
    })
}

/// Where a scheduled restart stands (Patroni's `should_run_scheduled_action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScheduleState {
    /// Not yet: this many milliseconds to go.
    Wait(u64),
    /// Its time has come.
    Due,
    /// More than 1.5 × `loop_wait` late (the agent was not running): dropped.
    Stale,
    /// PostgreSQL restarted since it was scheduled: dropped.
    AlreadyRestarted,
}

/// `loop_wait` is the cycle's period: a restart up to 1.5 × of it late still runs.
pub fn schedule_state(
    restart: &ScheduledRestart,
    unix_ms: i64,
    loop_wait: Duration,
    pg: &PgState,
) -> ScheduleState {
    if let (Some(then), Some(now)) = (
        restart.postmaster_start_time.as_deref(),
        pg.sql.as_ref().map(|s| s.postmaster_start_time.as_str()),
    ) && then != now
    {
        return ScheduleState::AlreadyRestarted;
    }
    let late_ms = unix_ms.saturating_sub(restart.at_unix_ms);
    if late_ms < 0 {
        return ScheduleState::Wait(late_ms.unsigned_abs());
    }
    let grace = u64::try_from(loop_wait.as_millis()).unwrap_or(u64::MAX) * 3 / 2;
    if late_ms.unsigned_abs() > grace {
        ScheduleState::Stale
    } else {
        ScheduleState::Due
    }
}

/// `postgres_version` as Patroni reads it: `X.Y` (10 and later) or `X.Y.Z` (9.x) →
/// `server_version_num`.
pub fn parse_postgres_version(s: &str) -> Result<u32, String> {
    let parts: Vec<&str> = s.trim().split('.').collect();
    let nums: Option<Vec<u32>> = parts.iter().map(|p| p.parse::<u32>().ok()).collect();
    let format = || format!("Invalid PostgreSQL version format: X.Y or X.Y.Z is accepted: {s}");
    let nums = nums.ok_or_else(format)?;
    match nums.as_slice() {
        [major, minor] if *major >= 10 && *minor < 10_000 => Ok(major * 10_000 + minor),
        [major, minor, patch] if *major < 10 && *minor < 100 && *patch < 100 => {
            Ok(major * 10_000 + minor * 100 + patch)
        }
        [_, _] | [_, _, _] => Err(format!("Invalid PostgreSQL version: {s}")),
        _ => Err(format()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::{PgProcess, PgSql};
    use crate::view::{LeaderKey, Member};

    fn pg(in_recovery: bool, version: u32, pending: bool) -> PgState {
        PgState {
            process: PgProcess::Running { pid: 9 },
            sql: Some(PgSql {
                in_recovery,
                server_version: version,
                pending_restart: pending,
                postmaster_start_time: "2026-12-01 10:00:00.000 UTC".into(),
                ..PgSql::default()
            }),
            ..PgState::default()
        }
    }

    #[test]
    fn filters_match_as_patroni_reads_them() {
        let none = RestartFilters::default();
        let primary = pg(false, 150_008, false);
        let replica = pg(true, 150_008, true);
        assert_eq!(restart_matches(&none, &primary, true), Ok(()));
        assert_eq!(
            restart_matches(&none, &PgState::default(), true),
            Err(RestartMismatch::NotRunning)
        );
        let role = |r| RestartFilters {
            role: Some(r),
            ..RestartFilters::default()
        };
        assert_eq!(
            restart_matches(&role(RestartRole::Replica), &primary, true),
            Err(RestartMismatch::Role)
        );
        assert_eq!(
            restart_matches(&role(RestartRole::Replica), &replica, false),
            Ok(())
        );
        // A primary without the key is no restart target.
        assert_eq!(
            restart_matches(&none, &primary, false),
            Err(RestartMismatch::Role)
        );
        let older_than = |v| RestartFilters {
            postgres_version: Some(v),
            ..RestartFilters::default()
        };
        assert_eq!(
            restart_matches(&older_than(150_008), &primary, true),
            Err(RestartMismatch::Version)
        );
        assert_eq!(
            restart_matches(&older_than(150_009), &primary, true),
            Ok(())
        );
        let pending = RestartFilters {
            restart_pending: true,
            ..RestartFilters::default()
        };
        assert_eq!(
            restart_matches(&pending, &primary, true),
            Err(RestartMismatch::NotPending)
        );
        assert_eq!(restart_matches(&pending, &replica, false), Ok(()));
        assert_eq!(
            RestartMismatch::NotPending.to_string(),
            "pending restart flag is not set"
        );
    }

    #[test]
    fn the_leader_restarts_as_primary_and_a_replica_as_a_standby_of_the_leader() {
        let name = |s| MemberName::new(s).expect("name");
        let view = ClusterView {
            leader: Some(LeaderKey {
                name: Some(name("n1")),
                lease: 5,
                create_revision: 1,
                mod_revision: 1,
            }),
            members: vec![Member {
                name: name("n1"),
                conn_url: Some("postgres://10.0.0.1:5432/postgres".into()),
                ..Member::default()
            }],
            ..ClusterView::default()
        };
        assert_eq!(
            restart_action(&view, &pg(false, 150_008, false), true, None),
            Action::RestartPostgres {
                role: StartRole::Primary
            }
        );
        assert_eq!(
            restart_action(&view, &pg(true, 150_008, false), false, None),
            Action::RestartPostgres {
                role: StartRole::Standby {
                    upstream: Some(Upstream {
                        name: name("n1"),
                        host: "10.0.0.1".into(),
                        port: 5432,
                        remote: None,
                    })
                }
            }
        );
        // The standby leader of a standby cluster (it holds the key, in recovery) comes back
        // as a standby of the remote primary, not of itself.
        let remote = Upstream::remote(
            &name("n1"),
            &crate::StandbyCluster {
                host: Some("10.9.0.1".into()),
                port: 5432,
                ..crate::StandbyCluster::default()
            },
        );
        assert_eq!(
            restart_action(&view, &pg(true, 150_008, false), true, Some(remote.clone())),
            Action::RestartPostgres {
                role: StartRole::Standby {
                    upstream: Some(remote.clone())
                }
            }
        );
        // A replica of it restarts as a replica of the leader, whatever `remote` says.
        assert!(matches!(
            restart_action(&view, &pg(true, 150_008, false), false, Some(remote)),
            Action::RestartPostgres {
                role: StartRole::Standby {
                    upstream: Some(Upstream { remote: None, .. })
                }
            }
        ));
    }

    #[test]
    fn a_schedule_waits_runs_within_its_window_and_is_dropped_when_moot() {
        let at = 1_795_323_600_000;
        let restart = ScheduledRestart {
            schedule: "2026-11-22T05:00:00+00:00".into(),
            at_unix_ms: at,
            filters: RestartFilters::default(),
            postmaster_start_time: Some("2026-12-01 10:00:00.000 UTC".into()),
        };
        let running = pg(false, 150_008, false);
        let wait = Duration::from_secs(10);
        assert_eq!(
            schedule_state(&restart, at - 4_000, wait, &running),
            ScheduleState::Wait(4_000)
        );
        assert_eq!(
            schedule_state(&restart, at, wait, &running),
            ScheduleState::Due
        );
        assert_eq!(
            schedule_state(&restart, at + 15_000, wait, &running),
            ScheduleState::Due
        );
        assert_eq!(
            schedule_state(&restart, at + 15_001, wait, &running),
            ScheduleState::Stale
        );
        let mut restarted = running.clone();
        if let Some(sql) = restarted.sql.as_mut() {
            sql.postmaster_start_time = "2026-12-01 11:00:00.000 UTC".into();
        }
        assert_eq!(
            schedule_state(&restart, at, wait, &restarted),
            ScheduleState::AlreadyRestarted
        );
    }

    #[test]
    fn postgres_versions_parse_like_patronis() {
        assert_eq!(parse_postgres_version("15.2"), Ok(150_002));
        assert_eq!(parse_postgres_version("9.6.24"), Ok(90_624));
        assert!(parse_postgres_version("15").is_err());
        assert!(parse_postgres_version("15.x").is_err());
        assert!(parse_postgres_version("9.6").is_err());
        assert!(parse_postgres_version("15.2.1").is_err());
    }
}
