//! `LocalPostgres` against real PostgreSQL 15 binaries.
//!
//! Skipped (with a SKIP line) when the binaries are missing, unless `PGBATON_REQUIRE_PG=1`.
//! When run as root, PostgreSQL runs as the `postgres` OS user (`PgSettings::run_as`).
//! A guard SIGKILLs every PostgreSQL process of the test's data directories when the test
//! ends, also when an assertion fails.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_core::{
    ClusterState, DataDir, MemberName, PgProcess, PgState, StartRole, StopMode, Timeline, Upstream,
};
use baton_pg::{
    Credentials, LocalPostgres, PgSettings, Postgres, data_dir_pids, kill_data_dir_processes,
    render,
};
use tokio::time::{Instant, sleep};

const DEFAULT_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

struct TestEnv {
    bin_dir: PathBuf,
    run_as: Option<(u32, u32)>,
    root: tempfile::TempDir,
}

impl TestEnv {
    /// `None` (after printing SKIP) when PostgreSQL is not installed and not required.
    fn new(test: &str) -> Option<TestEnv> {
        let bin_dir = PathBuf::from(
            std::env::var("PGBATON_PG_BIN").unwrap_or_else(|_| DEFAULT_BIN_DIR.into()),
        );
        let required = std::env::var("PGBATON_REQUIRE_PG").is_ok_and(|v| v == "1");
        if !bin_dir.join("initdb").exists() {
            assert!(
                !required,
                "PGBATON_REQUIRE_PG=1 but {} has no initdb",
                bin_dir.display()
            );
            println!(
                "SKIP {test}: no PostgreSQL binaries in {}",
                bin_dir.display()
            );
            return None;
        }
        let run_as = if nix::unistd::geteuid().is_root() {
            let user = nix::unistd::User::from_name("postgres")
                .ok()
                .flatten()
                .expect("running as root needs a `postgres` OS user to run PostgreSQL as");
            Some((user.uid.as_raw(), user.gid.as_raw()))
        } else {
            None
        };
        let root = tempfile::Builder::new()
            .prefix("pgbaton-pg-")
            .tempdir_in("/tmp")
            .expect("create temp dir");
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(root.path(), Some(uid), Some(gid)).expect("chown temp dir");
        }
        Some(TestEnv {
            bin_dir,
            run_as,
            root,
        })
    }

    fn settings(&self, name: &str) -> PgSettings {
        PgSettings {
            name: name.into(),
            scope: "batontest".into(),
            data_dir: self.root.path().join(name),
            bin_dir: self.bin_dir.clone(),
            listen_addresses: "127.0.0.1".into(),
            port: free_port(),
            local_host: String::new(),
            socket_dir: Some(self.root.path().to_owned()),
            superuser: Credentials {
                username: "postgres".into(),
                password: Some("su-secret".into()),
            },
            replication: Credentials {
                username: "replicator".into(),
                password: Some("repl'se:cret".into()),
            },
            rewind: Some(Credentials {
                username: "rewinder".into(),
                password: Some("rw\\secret".into()),
            }),
            pgpass: self.root.path().join(format!("{name}.pgpass")),
            parameters: BTreeMap::from([
                ("shared_buffers".into(), "16MB".into()),
                ("fsync".into(), "off".into()),
                ("max_connections".into(), "20".into()),
            ]),
            pg_hba: Vec::new(),
            initdb_options: vec!["--encoding=UTF8".into(), "--locale=C".into()],
            pg_ctl_timeout: Duration::from_secs(30),
            sql_timeout: Duration::from_secs(5),
            run_as: self.run_as,
        }
    }
}

/// SIGKILLs every process of the data directories when dropped.
struct Cleanup(Vec<PathBuf>);

impl Cleanup {
    fn new(members: &[&LocalPostgres]) -> Cleanup {
        Cleanup(
            members
                .iter()
                .map(|m| m.settings().data_dir.clone())
                .collect(),
        )
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for dir in &self.0 {
            if let Err(e) = kill_data_dir_processes(dir, Duration::from_secs(10)) {
                eprintln!("cleanup of {}: {e}", dir.display());
            }
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

fn upstream(member: &LocalPostgres) -> Upstream {
    let s = member.settings();
    Upstream {
        name: MemberName::new(s.name.clone()).expect("non-empty name"),
        host: "127.0.0.1".into(),
        port: s.port,
    }
}

fn slot(member: &LocalPostgres) -> String {
    render::member_slot_name(&member.settings().name)
}

/// Poll `check` until it holds, failing the test after `limit`.
async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        sleep(Duration::from_millis(100)).await;
    }
}

async fn streams_to(primary: &LocalPostgres, replica: &LocalPostgres) -> bool {
    let name = &replica.settings().name;
    primary.observe().await.sql.is_some_and(|sql| {
        sql.replication
            .iter()
            .any(|r| &r.application_name == name && r.state == "streaming")
    })
}

/// A superuser SQL session on `member` over its Unix socket.
async fn sql(member: &LocalPostgres) -> tokio_postgres::Client {
    let s = member.settings();
    let (client, connection) = tokio_postgres::Config::new()
        .host_path(s.socket_dir.as_deref().expect("tests set socket_dir"))
        .port(s.port)
        .user(&s.superuser.username)
        .dbname("postgres")
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect to PostgreSQL");
    tokio::spawn(connection);
    client
}

fn control(state: &PgState) -> &baton_core::ControlData {
    match &state.data_dir {
        DataDir::Initialized(c) => c,
        other => panic!("expected an initialized data directory, got {other:?}"),
    }
}

fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_rewind_and_rejoin() {
    let Some(env) = TestEnv::new("failover_rewind_and_rejoin") else {
        return;
    };
    let pg1 = LocalPostgres::new(env.settings("pg1"));
    let pg2 = LocalPostgres::new(env.settings("pg2"));
    let _cleanup = Cleanup::new(&[&pg1, &pg2]);

    // Bootstrap the primary.
    pg1.initdb().await.expect("initdb");
    let state = pg1.observe().await;
    assert_eq!(state.process, PgProcess::Stopped);
    assert_eq!(state.sql, None);
    assert_eq!(control(&state).state, ClusterState::ShutDown);
    assert_eq!(control(&state).timeline, Timeline(1));
    assert!(
        pg1.settings()
            .data_dir
            .join("postgresql.base.conf")
            .exists()
    );

    pg1.start(&StartRole::Primary).await.expect("start primary");
    pg1.create_roles().await.expect("create roles");
    pg1.create_roles()
        .await
        .expect("create roles again (idempotent)");
    pg1.ensure_slots(&[slot(&pg2), "stale_slot".into()])
        .await
        .expect("create slots");
    pg1.ensure_slots(&[slot(&pg2)])
        .await
        .expect("drop the stale slot");
    // A temporary slot (pg_basebackup makes one while it clones) is nobody's member slot: it
    // is neither reported nor dropped, so the leader does not re-run ensure_slots in a loop.
    let temp_holder = sql(&pg1).await;
    temp_holder
        .execute(
            "SELECT pg_catalog.pg_create_physical_replication_slot('pg_basebackup_42', false, true)",
            &[],
        )
        .await
        .expect("temporary slot");
    let state = pg1.observe().await;
    assert!(state.is_running() && state.is_primary(), "{state:#?}");
    let primary_sql = state.sql.clone().expect("SQL answers");
    assert_eq!(primary_sql.timeline, Timeline(1));
    assert!(primary_sql.server_version >= 150000, "{primary_sql:?}");
    assert!(primary_sql.flush_lsn.is_some());
    assert_eq!(primary_sql.slots, vec![slot(&pg2)]);
    assert_eq!(control(&state).state, ClusterState::InProduction);
    assert!(control(&state).rewindable, "wal_log_hints is forced on");
    let system_id = control(&state).system_id.clone();
    assert!(
        pg1.timeline_history()
            .await
            .expect("history on TL1")
            .is_empty()
    );

    // A replica cloned from it streams.
    pg2.clone_replica(&upstream(&pg1)).await.expect("clone");
    pg2.start(&StartRole::Standby {
        upstream: Some(upstream(&pg1)),
    })
    .await
    .expect("start standby");
    eventually("pg2 streams from pg1", Duration::from_secs(20), || {
        streams_to(&pg1, &pg2)
    })
    .await;
    let state = pg2.observe().await;
    let replica_sql = state.sql.clone().expect("replica answers SQL");
    assert!(
        replica_sql.in_recovery && replica_sql.streaming,
        "{replica_sql:#?}"
    );
    assert_eq!(replica_sql.timeline, Timeline(1));
    assert_eq!(state.system_id(), Some(system_id.as_str()));
    assert!(
        !pg2.follow(&upstream(&pg1)).await.expect("follow"),
        "recovery settings already right"
    );

    // Failover: promote the replica.
    pg2.promote().await.expect("promote");
    let state = pg2.observe().await;
    assert!(state.is_primary(), "{state:#?}");
    assert_eq!(state.timeline(), Some(Timeline(2)));
    let history = pg2.timeline_history().await.expect("history on TL2");
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0].timeline, Timeline(1));
    assert!(!history[0].reason.is_empty());

    // The old primary diverges, then is fenced.
    sql(&pg1)
        .await
        .batch_execute("CREATE TABLE diverged AS SELECT generate_series(1, 10000) AS n")
        .await
        .expect("write on the old primary");
    let pids = data_dir_pids(&pg1.settings().data_dir);
    assert!(pids.len() > 3, "postmaster and its children: {pids:?}");
    pg1.stop(StopMode::Immediate).await.expect("immediate stop");
    assert_eq!(data_dir_pids(&pg1.settings().data_dir), Vec::<i32>::new());
    assert!(pids.iter().all(|pid| gone(*pid)), "{pids:?}");
    let state = pg1.observe().await;
    assert_eq!(state.process, PgProcess::Stopped);
    assert!(control(&state).state.is_unclean(), "{state:#?}");

    // Rewind it from the new primary and let it follow.
    pg1.rewind(&upstream(&pg2)).await.expect("rewind");
    pg2.ensure_slots(&[slot(&pg1)]).await.expect("slot for pg1");
    pg1.start(&StartRole::Standby {
        upstream: Some(upstream(&pg2)),
    })
    .await
    .expect("start rewound standby");
    eventually("pg1 streams from pg2", Duration::from_secs(20), || {
        streams_to(&pg2, &pg1)
    })
    .await;
    let state = pg1.observe().await;
    assert!(state.is_replica(), "{state:#?}");
    assert_eq!(state.timeline(), Some(Timeline(2)));
    let diverged: bool = sql(&pg1)
        .await
        .query_one("SELECT to_regclass('diverged') IS NULL", &[])
        .await
        .expect("query rewound standby")
        .get(0);
    assert!(diverged, "the diverged table must be gone after the rewind");
    assert!(
        !pg1.follow(&upstream(&pg2)).await.expect("follow"),
        "already following pg2"
    );

    // Following another address of the same upstream rewrites primary_conninfo and reloads.
    let by_name = Upstream {
        host: "localhost".into(),
        ..upstream(&pg2)
    };
    assert!(pg1.follow(&by_name).await.expect("follow by name"));
    eventually(
        "pg1 streams from pg2 via localhost",
        Duration::from_secs(20),
        || async {
            let rows = sql(&pg1)
                .await
                .query(
                    "SELECT conninfo FROM pg_stat_wal_receiver WHERE status = 'streaming'",
                    &[],
                )
                .await
                .expect("query pg_stat_wal_receiver");
            rows.iter()
                .any(|row| row.get::<_, String>(0).contains("host=localhost"))
        },
    )
    .await;

    pg1.stop(StopMode::Fast).await.expect("stop pg1");
    pg2.stop(StopMode::Fast).await.expect("stop pg2");
    assert_eq!(control(&pg2.observe().await).state, ClusterState::ShutDown);
    assert_eq!(
        control(&pg1.observe().await).state,
        ClusterState::ShutDownInRecovery
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immediate_stop_kills_a_frozen_postmaster_and_its_backends() {
    let Some(env) = TestEnv::new("immediate_stop_kills_a_frozen_postmaster_and_its_backends")
    else {
        return;
    };
    let pg = LocalPostgres::new(env.settings("frozen"));
    let _cleanup = Cleanup::new(&[&pg]);
    let dir = pg.settings().data_dir.clone();

    pg.initdb().await.expect("initdb");
    pg.start(&StartRole::Primary).await.expect("start");
    assert!(pg.is_alive().await);
    let sessions = [sql(&pg).await, sql(&pg).await];
    let pid = match pg.observe().await.process {
        PgProcess::Running { pid } => pid,
        PgProcess::Stopped => panic!("postmaster not running"),
    };
    // The postmaster outlives the agent: not our child, in a session of its own (pg_ctl's setsid).
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("postmaster stat");
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("stat line")
        .1
        .split_whitespace()
        .collect();
    assert_ne!(
        fields[1],
        std::process::id().to_string(),
        "parent of the postmaster"
    );
    assert_eq!(fields[3], pid.to_string(), "session of the postmaster");
    let pids = data_dir_pids(&dir);
    assert!(
        pids.contains(&pid) && pids.len() >= 3 + sessions.len(),
        "{pids:?}"
    );
    assert!(
        pg.wipe_data_dir().await.is_err(),
        "wiping a running data directory must be refused"
    );

    // A frozen postmaster ignores pg_ctl's SIGQUIT: only the SIGKILL escalation stops it.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .expect("SIGSTOP");
    pg.stop(StopMode::Immediate).await.expect("immediate stop");
    assert!(pids.iter().all(|pid| gone(*pid)), "{pids:?}");
    assert_eq!(data_dir_pids(&dir), Vec::<i32>::new());
    assert!(!dir.join("postmaster.pid").exists());
    assert!(!pg.is_alive().await);
    drop(sessions);

    let state = pg.observe().await;
    assert_eq!(state.process, PgProcess::Stopped);
    assert_eq!(state.sql, None);
    assert_eq!(control(&state).state, ClusterState::InProduction);
    assert!(
        pg.stop(StopMode::Immediate).await.is_ok(),
        "stopping a stopped server is fine"
    );

    // It starts again (crash recovery) and stops cleanly.
    pg.start(&StartRole::Primary)
        .await
        .expect("restart after the kill");
    assert!(pg.observe().await.is_primary());
    pg.stop(StopMode::Fast).await.expect("fast stop");
    let state = pg.observe().await;
    assert_eq!(state.process, PgProcess::Stopped);
    assert_eq!(control(&state).state, ClusterState::ShutDown);
}

#[tokio::test]
async fn observe_empty_missing_and_unusable_data_dirs() {
    let Some(env) = TestEnv::new("observe_empty_missing_and_unusable_data_dirs") else {
        return;
    };
    let pg = LocalPostgres::new(env.settings("nothing"));
    let dir: &Path = &pg.settings().data_dir;

    let state = pg.observe().await;
    assert_eq!(
        state,
        PgState {
            data_dir: DataDir::Empty,
            process: PgProcess::Stopped,
            sql: None
        }
    );
    std::fs::create_dir(dir).expect("create data dir");
    assert_eq!(pg.observe().await.data_dir, DataDir::Empty);

    std::fs::write(dir.join("junk"), "not a data directory").expect("write junk");
    match pg.observe().await.data_dir {
        DataDir::Unusable(e) => assert!(e.contains("pg_controldata"), "{e}"),
        other => panic!("expected Unusable, got {other:?}"),
    }
    assert!(
        pg.start(&StartRole::Primary).await.is_err(),
        "no PG_VERSION: start must fail"
    );
    assert!(
        pg.initdb().await.is_err(),
        "initdb into a non-empty directory must fail"
    );
    pg.wipe_data_dir().await.expect("wipe");
    assert_eq!(pg.observe().await.data_dir, DataDir::Empty);
    assert!(dir.exists(), "wipe keeps the directory itself");
}

/// Issue 19: a primary that was promoted from a standby must not get `standby.signal` back
/// when its configuration is rewritten (synchronous mode changes `synchronous_standby_names`
/// right after every promotion). The file says "standby" to the fence guard, which then never
/// kills that primary once its agent is frozen or killed, and to the next start.
#[tokio::test]
async fn a_promoted_standby_gets_no_standby_signal_back() {
    let Some(env) = TestEnv::new("a_promoted_standby_gets_no_standby_signal_back") else {
        return;
    };
    let pg = LocalPostgres::new(env.settings("promoted"));
    let _cleanup = Cleanup::new(&[&pg]);
    let signal = pg.settings().data_dir.join("standby.signal");
    pg.initdb().await.expect("initdb");
    // Once as a primary, so the control file records this configuration's settings (a
    // standby needs max_connections etc. at least as high as its primary's).
    pg.start(&StartRole::Primary).await.expect("start");
    pg.stop(StopMode::Fast).await.expect("stop");
    pg.start(&StartRole::Standby { upstream: None })
        .await
        .expect("start as a standby");
    assert!(signal.exists(), "a standby runs with standby.signal");
    assert!(pg.observe().await.sql.is_some_and(|s| s.in_recovery));
    pg.promote().await.expect("promote");
    assert!(pg.observe().await.is_primary());
    assert!(
        !signal.exists(),
        "PostgreSQL removes standby.signal when promoted"
    );
    pg.set_synchronous_standby_names(Some("ANY 1 (other)"))
        .await
        .expect("set synchronous_standby_names");
    assert!(
        !signal.exists(),
        "a rewritten configuration must not make the running primary look like a standby"
    );
    let state = pg.observe().await;
    assert!(state.is_primary());
    assert_eq!(
        state.sql.map(|s| s.synchronous_standby_names),
        Some("ANY 1 (other)".to_owned())
    );
    pg.stop(StopMode::Fast).await.expect("stop");
}
