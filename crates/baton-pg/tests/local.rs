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
                options: Vec::new(),
            },
            replication: Credentials {
                username: "replicator".into(),
                // Everything pgpass and the SQL quoting must get right.
                password: Some("repl 'se:cret\" \\x".into()),
                options: Vec::new(),
            },
            rewind: Some(Credentials {
                username: "rewinder".into(),
                password: Some("rw\\secret".into()),
                options: Vec::new(),
            }),
            pgpass: self.root.path().join(format!("{name}.pgpass")),
            parameters: BTreeMap::from([
                ("shared_buffers".into(), "16MB".into()),
                ("fsync".into(), "off".into()),
                ("max_connections".into(), "20".into()),
            ]),
            pg_hba: Vec::new(),
            use_slots: true,
            initdb_options: vec!["--encoding=UTF8".into(), "--locale=C".into()],
            replica_methods: Vec::new(),
            basebackup_options: Vec::new(),
            recovery_conf: Vec::new(),
            bootstrap_recovery: None,
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
        remote: None,
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

/// A superuser SQL session on `member` over its Unix socket (with the password: the default
/// pg_hba.conf wants it).
async fn sql(member: &LocalPostgres) -> tokio_postgres::Client {
    let s = member.settings();
    let (client, connection) = tokio_postgres::Config::new()
        .host_path(s.socket_dir.as_deref().expect("tests set socket_dir"))
        .port(s.port)
        .user(&s.superuser.username)
        .password(s.superuser.password.as_deref().unwrap_or_default())
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

/// The slots `observe` reports as pgbaton's.
async fn sql_slots(member: &LocalPostgres) -> Vec<String> {
    member.observe().await.sql.expect("SQL answers").slots
}

async fn primary_slot_name(member: &LocalPostgres) -> String {
    sql(member)
        .await
        .query_one("SELECT current_setting('primary_slot_name')", &[])
        .await
        .expect("primary_slot_name")
        .get(0)
}

/// Physical, non-temporary slots on `member`, sorted.
async fn all_slots(member: &LocalPostgres) -> Vec<String> {
    sql(member)
        .await
        .query(
            "SELECT slot_name::text FROM pg_replication_slots WHERE slot_type = 'physical' AND NOT temporary ORDER BY 1",
            &[],
        )
        .await
        .expect("list slots")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// Only slots pgbaton created or adopted as a member's are its own: another tool's slot is
/// neither reported nor dropped; a departed member's slot is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_slots_never_drops_a_slot_it_does_not_manage() {
    let Some(env) = TestEnv::new("ensure_slots_never_drops_a_slot_it_does_not_manage") else {
        return;
    };
    let pg = LocalPostgres::new(env.settings("slots"));
    let _cleanup = Cleanup::new(&[&pg]);
    pg.initdb().await.expect("initdb");
    pg.start(&StartRole::Primary).await.expect("start");
    pg.create_roles().await.expect("create roles");
    let client = sql(&pg).await;
    // Barman's and pg_receivewal's slots, and one named like member n2 made before pgbaton
    // managed anything here (by Patroni, say).
    for slot in ["barman", "pg_receivewal_slot", "n2"] {
        client
            .execute(
                "SELECT pg_catalog.pg_create_physical_replication_slot($1, true)",
                &[&slot],
            )
            .await
            .expect("foreign slot");
    }
    assert_eq!(
        sql_slots(&pg).await,
        Vec::<String>::new(),
        "nothing is ours yet"
    );

    pg.ensure_slots(&names(&["n2", "n3"]))
        .await
        .expect("members n2, n3");
    assert_eq!(sql_slots(&pg).await, names(&["n2", "n3"]), "n2 adopted");
    assert_eq!(
        all_slots(&pg).await,
        names(&["barman", "n2", "n3", "pg_receivewal_slot"])
    );

    // n2 left the cluster: its slot is ours and goes; the others' stay.
    pg.ensure_slots(&names(&["n3"])).await.expect("member n3");
    assert_eq!(sql_slots(&pg).await, names(&["n3"]));
    assert_eq!(
        all_slots(&pg).await,
        names(&["barman", "n3", "pg_receivewal_slot"])
    );
    // No member left at all.
    pg.ensure_slots(&[]).await.expect("no members");
    assert_eq!(sql_slots(&pg).await, Vec::<String>::new());
    assert_eq!(
        all_slots(&pg).await,
        names(&["barman", "pg_receivewal_slot"])
    );

    // A member named like a foreign slot makes it ours, as Patroni would.
    pg.ensure_slots(&names(&["barman"]))
        .await
        .expect("member barman");
    pg.ensure_slots(&[]).await.expect("member barman gone");
    assert_eq!(all_slots(&pg).await, names(&["pg_receivewal_slot"]));
    drop(client);

    // Wiping the data directory forgets the record with the slots.
    let record = {
        let mut p = pg.settings().data_dir.clone().into_os_string();
        p.push(".pgbaton-slots");
        PathBuf::from(p)
    };
    assert!(record.exists());
    pg.stop(StopMode::Fast).await.expect("stop");
    pg.wipe_data_dir().await.expect("wipe");
    assert!(!record.exists(), "record removed with the data");
}

/// `use_slots: false`: a standby gets no `primary_slot_name`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_without_use_slots_streams_without_a_slot_name() {
    let Some(env) = TestEnv::new("standby_without_use_slots_streams_without_a_slot_name") else {
        return;
    };
    let mut settings = env.settings("noslots");
    settings.use_slots = false;
    let pg = LocalPostgres::new(settings.clone());
    let _cleanup = Cleanup::new(&[&pg]);
    pg.initdb().await.expect("initdb");
    // Once as a primary, so pg_control has our max_connections.
    pg.start(&StartRole::Primary).await.expect("start primary");
    pg.stop(StopMode::Fast).await.expect("stop primary");
    // An upstream that is not there: the standby starts and waits for it.
    let nowhere = Upstream {
        name: MemberName::new("gone").expect("name"),
        host: "127.0.0.1".into(),
        port: free_port(),
        remote: None,
    };
    let standby = StartRole::Standby {
        upstream: Some(nowhere.clone()),
    };
    pg.start(&standby).await.expect("start standby");
    assert_eq!(primary_slot_name(&pg).await, "");
    let conf = std::fs::read_to_string(settings.data_dir.join("postgresql.conf")).expect("conf");
    assert!(!conf.contains("primary_slot_name"), "{conf}");
    pg.stop(StopMode::Fast).await.expect("stop");

    settings.use_slots = true;
    let pg = LocalPostgres::new(settings);
    pg.start(&standby).await.expect("start standby with slots");
    assert_eq!(primary_slot_name(&pg).await, "noslots");
    pg.stop(StopMode::Fast).await.expect("stop");
}

/// Set in the re-executed copy of the test below.
const REEXEC: &str = "PGBATON_TEST_REEXEC";

fn cap_amb(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapAmb:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

/// The postmaster runs without the agent's secrets (`PATRONI_*`/`PGBATON_*`) and without
/// ambient capabilities. The test re-runs itself with `PGBATON_TEST_SECRET` and
/// `PATRONI_SUPERUSER_PASSWORD` in its environment (and, as root with setpriv, an ambient
/// capability), as an agent would have them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postmaster_runs_without_agent_secrets_or_capabilities() {
    const NAME: &str = "postmaster_runs_without_agent_secrets_or_capabilities";
    let Some(mode) = std::env::var_os(REEXEC) else {
        if TestEnv::new(NAME).is_none() {
            return;
        }
        let exe = std::env::current_exe().expect("test binary");
        let setpriv = Path::new("/usr/bin/setpriv");
        let caps = nix::unistd::geteuid().is_root() && setpriv.exists();
        let mut cmd = if caps {
            let mut cmd = std::process::Command::new(setpriv);
            cmd.args(["--inh-caps=+net_raw", "--ambient-caps=+net_raw"])
                .arg(exe);
            cmd
        } else {
            std::process::Command::new(exe)
        };
        let out = cmd
            .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
            .env(REEXEC, if caps { "caps" } else { "env" })
            .env("PGBATON_TEST_SECRET", "hunter2")
            .env("PATRONI_SUPERUSER_PASSWORD", "hunter2")
            .output()
            .expect("re-run the test");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        assert!(text.contains("1 passed"), "the re-run ran no test: {text}");
        return;
    };
    let Some(env) = TestEnv::new(NAME) else {
        return;
    };
    assert_eq!(
        std::env::var("PGBATON_TEST_SECRET").as_deref(),
        Ok("hunter2")
    );
    if mode == "caps" {
        let own = std::fs::read_to_string("/proc/self/status").expect("own status");
        assert_ne!(
            cap_amb(&own),
            Some(0),
            "no ambient capability raised: {own}"
        );
    }
    let pg = LocalPostgres::new(env.settings("environ"));
    let _cleanup = Cleanup::new(&[&pg]);
    pg.initdb().await.expect("initdb");
    pg.start(&StartRole::Primary).await.expect("start");
    let pid = match pg.observe().await.process {
        PgProcess::Running { pid } => pid,
        PgProcess::Stopped => panic!("postmaster not running"),
    };
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("postmaster environ");
    let vars: Vec<String> = environ
        .split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    assert!(
        vars.iter()
            .all(|v| !v.starts_with("PGBATON_") && !v.starts_with("PATRONI_")),
        "{vars:?}"
    );
    assert!(vars.iter().all(|v| !v.contains("hunter2")), "{vars:?}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    assert_eq!(cap_amb(&status), Some(0), "{status}");
    pg.stop(StopMode::Fast).await.expect("stop");
}

/// `SHOW name` on `member`.
async fn show(member: &LocalPostgres, name: &str) -> String {
    sql(member)
        .await
        .query_one(&format!("SHOW {name}"), &[])
        .await
        .unwrap_or_else(|e| panic!("SHOW {name}: {e}"))
        .get(0)
}

fn with(base: &BTreeMap<String, String>, changes: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut out = base.clone();
    for (k, v) in changes {
        out.insert((*k).to_owned(), (*v).to_owned());
    }
    out
}

/// Issue 15: a running server gets new parameters and pg_hba lines by a reload; a setting that
/// needs a restart is reported, and PostgreSQL is not restarted for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconfigure_reloads_and_reports_what_needs_a_restart() {
    let Some(env) = TestEnv::new("reconfigure_reloads_and_reports_what_needs_a_restart") else {
        return;
    };
    let settings = env.settings("reconf");
    let pg = LocalPostgres::new(settings.clone());
    let _cleanup = Cleanup::new(&[&pg]);

    // Not running: nothing is written now, start uses them.
    pg.initdb().await.expect("initdb");
    let before_start = with(&settings.parameters, &[("work_mem", "5MB")]);
    let outcome = pg
        .reconfigure(&before_start, &[])
        .await
        .expect("reconfigure");
    assert!(
        outcome.deferred.is_some() && !outcome.reloaded,
        "{outcome:?}"
    );
    pg.start(&StartRole::Primary).await.expect("start");
    pg.create_roles().await.expect("create roles");
    assert_eq!(show(&pg, "work_mem").await, "5MB");
    let pid = pg.observe().await.process;

    // The agent's own connections must still be admitted.
    let hba = vec![
        "local all postgres scram-sha-256".to_owned(),
        "host all postgres 127.0.0.1/32 scram-sha-256".to_owned(),
        "host all app_user 10.9.8.0/24 scram-sha-256".to_owned(),
    ];
    let wanted = with(
        &settings.parameters,
        &[("work_mem", "8MB"), ("shared_buffers", "24MB")],
    );
    let outcome = pg.reconfigure(&wanted, &hba).await.expect("reconfigure");
    assert!(outcome.rewritten && outcome.reloaded, "{outcome:?}");
    assert_eq!(outcome.deferred, None);
    assert!(outcome.rejected.is_empty(), "{outcome:?}");
    let pending: Vec<_> = outcome
        .pending_restart
        .iter()
        .map(|p| (p.name.as_str(), p.old_value.as_str(), p.new_value.as_str()))
        .collect();
    assert_eq!(pending, [("shared_buffers", "16MB", "24MB")]);
    assert_eq!(show(&pg, "work_mem").await, "8MB");
    assert_eq!(show(&pg, "shared_buffers").await, "16MB");
    let client = sql(&pg).await;
    let flagged: bool = client
        .query_one(
            "SELECT pending_restart FROM pg_settings WHERE name = 'shared_buffers'",
            &[],
        )
        .await
        .expect("pg_settings")
        .get(0);
    assert!(flagged);
    let rules: Vec<String> = client
        .query(
            "SELECT array_to_string(user_name, ',') || ' ' || COALESCE(address, '') \
               FROM pg_hba_file_rules ORDER BY line_number",
            &[],
        )
        .await
        .expect("pg_hba_file_rules")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        rules,
        ["postgres ", "postgres 127.0.0.1", "app_user 10.9.8.0"],
        "pg_hba.conf as configured"
    );
    assert!(pg.observe().await.sql.expect("sql").pending_restart);
    assert_eq!(pg.observe().await.process, pid, "never restarted");

    // The same again: nothing to write or reload; still pending.
    let again = pg.reconfigure(&wanted, &hba).await.expect("reconfigure");
    assert!(!again.rewritten && !again.reloaded, "{again:?}");
    assert_eq!(again.pending_restart, outcome.pending_restart);

    // The managed synchronous_standby_names survives a rewrite.
    pg.set_synchronous_standby_names(Some("ANY 1 (nobody)"))
        .await
        .expect("set synchronous_standby_names");
    let more = with(&wanted, &[("work_mem", "9MB")]);
    pg.reconfigure(&more, &hba).await.expect("reconfigure");
    assert_eq!(show(&pg, "work_mem").await, "9MB");
    assert_eq!(
        show(&pg, "synchronous_standby_names").await,
        "ANY 1 (nobody)"
    );
    pg.set_synchronous_standby_names(None)
        .await
        .expect("reset synchronous_standby_names");

    // A value PostgreSQL refuses is reported; the server keeps the last good one.
    let bad = with(&more, &[("work_mem", "lots")]);
    let refused = pg.reconfigure(&bad, &hba).await.expect("reconfigure");
    assert_eq!(
        refused
            .rejected
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>(),
        ["work_mem"],
        "{refused:?}"
    );
    assert_eq!(show(&pg, "work_mem").await, "9MB");

    // The socket directory the agent connects through stays until the agent restarts.
    let moved = with(&more, &[("unix_socket_directories", "/nonexistent")]);
    let kept = pg.reconfigure(&moved, &hba).await.expect("reconfigure");
    assert_eq!(kept.kept, ["unix_socket_directories"]);

    // A value that cannot be written at all changes nothing.
    let unwritable = with(&more, &[("work_mem", "1MB\nfsync = off")]);
    assert!(pg.reconfigure(&unwritable, &hba).await.is_err());
    assert_eq!(show(&pg, "work_mem").await, "9MB");

    // A restart applies the pending setting (and the start writes the adopted files).
    pg.stop(StopMode::Fast).await.expect("stop");
    pg.start(&StartRole::Primary).await.expect("restart");
    assert_eq!(show(&pg, "shared_buffers").await, "24MB");
    assert_eq!(show(&pg, "work_mem").await, "9MB");
    assert!(!pg.observe().await.sql.expect("sql").pending_restart);
    let after = pg.reconfigure(&more, &hba).await.expect("reconfigure");
    assert!(after.pending_restart.is_empty(), "{after:?}");
    pg.stop(StopMode::Fast).await.expect("stop");
}

/// A standby never runs with less than the primary's `max_connections` & co. (pg_controldata):
/// PostgreSQL would refuse hot standby or pause recovery. A promoted server's files are a
/// primary's from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_keeps_the_primarys_minimums() {
    let Some(env) = TestEnv::new("a_standby_keeps_the_primarys_minimums") else {
        return;
    };
    let settings = env.settings("minimums");
    let pg = LocalPostgres::new(settings.clone());
    let _cleanup = Cleanup::new(&[&pg]);
    pg.initdb().await.expect("initdb");
    // As a primary with max_connections 20: pg_control records it.
    pg.start(&StartRole::Primary).await.expect("start primary");
    pg.create_roles().await.expect("create roles");
    pg.stop(StopMode::Fast).await.expect("stop primary");

    let lower = with(&settings.parameters, &[("max_connections", "10")]);
    pg.reconfigure(&lower, &[]).await.expect("reconfigure");
    let standby = StartRole::Standby {
        upstream: Some(Upstream {
            name: MemberName::new("gone").expect("name"),
            host: "127.0.0.1".into(),
            port: free_port(),
            remote: None,
        }),
    };
    pg.start(&standby).await.expect("start standby");
    assert_eq!(show(&pg, "max_connections").await, "20");

    // Lowered again at run time: the file keeps the minimum, nothing waits for a restart.
    let outcome = pg.reconfigure(&lower, &[]).await.expect("reconfigure");
    assert!(outcome.pending_restart.is_empty(), "{outcome:?}");
    assert_eq!(
        outcome
            .raised
            .iter()
            .map(|r| (r.name.as_str(), r.configured.as_str(), r.written))
            .collect::<Vec<_>>(),
        [("max_connections", "10", 20)]
    );

    // Another agent process (no upstream known yet) leaves a standby's files alone.
    let fresh = LocalPostgres::new(settings.clone());
    let deferred = fresh.reconfigure(&lower, &[]).await.expect("reconfigure");
    assert!(deferred.deferred.is_some(), "{deferred:?}");

    pg.promote().await.expect("promote");
    pg.set_synchronous_standby_names(Some("ANY 1 (nobody)"))
        .await
        .expect("set synchronous_standby_names");
    assert!(
        !settings.data_dir.join("standby.signal").exists(),
        "a promoted server's files are a primary's"
    );
    let conf = std::fs::read_to_string(settings.data_dir.join("postgresql.conf")).expect("conf");
    assert!(!conf.contains("primary_conninfo"), "{conf}");
    pg.set_synchronous_standby_names(None).await.expect("reset");
    pg.stop(StopMode::Fast).await.expect("stop");
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
    // `pg_ctl reload` only signals the postmaster: the backends take the new value when they
    // have processed the SIGHUP, so the value is polled for.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let state = pg.observe().await;
        assert!(state.is_primary());
        let ssn = state.sql.map(|s| s.synchronous_standby_names);
        if ssn.as_deref() == Some("ANY 1 (other)") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "synchronous_standby_names still {ssn:?} 30 s after the reload"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pg.stop(StopMode::Fast).await.expect("stop");
}

/// A test CA and a certificate for 127.0.0.1/localhost, written into `dir` (the key owned by
/// PostgreSQL's OS user, 0600, as the server demands). (CA file, cert file, key file, a CA
/// that did not sign anything here.)
fn test_pki(dir: &Path, run_as: Option<(u32, u32)>) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    use std::os::unix::fs::PermissionsExt;
    let ca = |cn: &str| {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, cn);
        CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA")
    };
    let issuer = ca("pgbaton test CA");
    let other = ca("someone else's CA");
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("params");
    params
        .distinguished_name
        .push(DnType::CommonName, "postgres");
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &issuer).expect("sign");
    let files = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
        dir.join("other-ca.pem"),
    );
    std::fs::write(&files.0, issuer.pem()).expect("write");
    std::fs::write(&files.1, cert.pem()).expect("write");
    std::fs::write(&files.2, key.serialize_pem()).expect("write");
    std::fs::write(&files.3, other.pem()).expect("write");
    std::fs::set_permissions(&files.2, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    if let Some((uid, gid)) = run_as {
        for f in [&files.0, &files.1, &files.2, &files.3] {
            std::os::unix::fs::chown(f, Some(uid), Some(gid)).expect("chown");
        }
    }
    files
}

/// Issue 11.4: the agent's own connections honour the superuser's `sslmode` and
/// `channel_binding`. The server accepts TCP connections over TLS only (`hostssl`), so a
/// working observation proves TLS; `verify-full` against another CA and `sslmode: disable`
/// get no SQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_connections_use_tls_as_the_role_asks() {
    let Some(env) = TestEnv::new("own_connections_use_tls_as_the_role_asks") else {
        return;
    };
    let (ca, cert, key, other_ca) = test_pki(env.root.path(), env.run_as);
    let mut settings = env.settings("tls");
    settings.local_host = "127.0.0.1".into();
    settings.parameters.extend([
        ("ssl".to_owned(), "on".to_owned()),
        ("ssl_cert_file".to_owned(), cert.display().to_string()),
        ("ssl_key_file".to_owned(), key.display().to_string()),
    ]);
    settings.pg_hba = vec![
        "local all all scram-sha-256".into(),
        "hostssl all all 127.0.0.1/32 scram-sha-256".into(),
    ];
    let with = |options: &[(&str, &str)]| {
        let mut s = settings.clone();
        s.superuser.options = options
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        LocalPostgres::new(s)
    };
    let ca = ca.display().to_string();
    let pg = with(&[
        ("sslmode", "verify-full"),
        ("sslrootcert", &ca),
        ("channel_binding", "require"),
    ]);
    let _cleanup = Cleanup::new(&[&pg]);
    pg.initdb().await.expect("initdb");
    pg.start(&StartRole::Primary).await.expect("start");
    eventually(
        "SQL over TLS with verify-full and channel binding",
        Duration::from_secs(30),
        || async { pg.observe().await.sql.is_some() },
    )
    .await;
    // prefer (the default) finds TLS too.
    assert!(with(&[]).observe().await.sql.is_some(), "sslmode prefer");
    assert!(
        with(&[("sslmode", "require"), ("sslrootcert", &ca)])
            .observe()
            .await
            .sql
            .is_some(),
        "require with the right CA"
    );
    // No TLS: the server has no hostnossl line for it.
    assert!(
        with(&[("sslmode", "disable")])
            .observe()
            .await
            .sql
            .is_none(),
        "sslmode disable got in without TLS"
    );
    // A server certificate from a CA we do not trust.
    let other_ca = other_ca.display().to_string();
    assert!(
        with(&[("sslmode", "verify-ca"), ("sslrootcert", &other_ca)])
            .observe()
            .await
            .sql
            .is_none(),
        "verify-ca accepted a certificate of another CA"
    );
    pg.stop(StopMode::Fast).await.expect("stop");
}

/// Standard base64 (with padding) to bytes, for the salts of stored verifiers.
fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET.iter().position(|a| *a == c).expect("base64") as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    out
}

/// Issue 11.6: role passwords reach PostgreSQL as SCRAM verifiers whatever their characters.
/// The verifier pgbaton computes equals the one PostgreSQL computes itself from the clear
/// password (same salt; SASLprep as `pg_saslprep` does it: NFKC, mapped characters, and the
/// raw bytes for what SASLprep refuses), and a role whose non-ASCII password pgbaton set logs
/// in with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_ascii_passwords_get_the_verifier_postgresql_computes() {
    let Some(env) = TestEnv::new("non_ascii_passwords_get_the_verifier_postgresql_computes") else {
        return;
    };
    let mut settings = env.settings("saslprep");
    let rewind_password = "r\u{e9}w\u{ef}nd \u{ff50}\u{ff41}ss\u{a0}w\u{f6}\u{ad}rd";
    settings.rewind = Some(Credentials {
        username: "rewinder".into(),
        password: Some(rewind_password.into()),
        options: Vec::new(),
    });
    let pg = LocalPostgres::new(settings);
    let _cleanup = Cleanup::new(&[&pg]);
    pg.initdb().await.expect("initdb");
    pg.start(&StartRole::Primary).await.expect("start");
    pg.create_roles().await.expect("create roles");
    let client = sql(&pg).await;

    let passwords = [
        "p\u{e4}ssword",
        "pa\u{308}ssword",
        "\u{ff50}\u{ff41}ss\u{a0}wo\u{ad}rd",
        "tab\there",
        "a\u{fffd}b",
        // Unassigned in Unicode 3.2 (SASLprep's table): refused, so the raw bytes.
        "\u{1f511}key",
        // Right-to-left: allowed alone, refused mixed with left-to-right letters.
        "\u{643}\u{644}\u{645}\u{629}",
        "a\u{643}",
        "\u{3c0}\u{2126}\u{2163}",
    ];
    client
        .batch_execute("SET password_encryption = 'scram-sha-256'")
        .await
        .expect("set password_encryption");
    for (i, password) in passwords.iter().enumerate() {
        let role = format!("probe{i}");
        // The clear password, once, in the test only: PostgreSQL computes the verifier.
        client
            .batch_execute(&format!(
                "CREATE ROLE {role} PASSWORD {}",
                render::quote_literal(password)
            ))
            .await
            .expect("create probe role");
        let stored: String = client
            .query_one(
                "SELECT rolpassword FROM pg_catalog.pg_authid WHERE rolname = $1",
                &[&role],
            )
            .await
            .expect("read verifier")
            .get(0);
        let salt_b64 = stored
            .split('$')
            .nth(1)
            .and_then(|s| s.split_once(':'))
            .map(|(_, salt)| salt)
            .expect("SCRAM-SHA-256$<iterations>:<salt>$...");
        let salt: [u8; 16] = base64_decode(salt_b64).try_into().expect("a 16-byte salt");
        assert_eq!(
            render::scram_verifier(password, &salt).as_deref(),
            Some(stored.as_str()),
            "{password:?}"
        );
    }

    // The role pgbaton created logs in with its non-ASCII password (tokio-postgres prepares it
    // with SASLprep too) over TCP, where pgbaton's pg_hba.conf asks for scram-sha-256.
    let s = pg.settings();
    let (rewinder, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(s.port)
        .user("rewinder")
        .password(rewind_password)
        .dbname("postgres")
        .connect(tokio_postgres::NoTls)
        .await
        .expect("rewinder logs in with its non-ASCII password");
    tokio::spawn(connection);
    let me: String = rewinder
        .query_one("SELECT current_user::text", &[])
        .await
        .expect("query")
        .get(0);
    assert_eq!(me, "rewinder");
    let stored: String = client
        .query_one(
            "SELECT rolpassword FROM pg_catalog.pg_authid WHERE rolname = 'rewinder'",
            &[],
        )
        .await
        .expect("read verifier")
        .get(0);
    assert!(stored.starts_with("SCRAM-SHA-256$4096:"), "{stored}");
}

/// Idle cost: a running postmaster's control data is read once and reused while the same
/// postmaster answers SQL; a stopped, killed or restarted one is read afresh. The liveness
/// monitor's wait on the postmaster ends when it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controldata_is_reused_only_for_the_same_running_postmaster() {
    let Some(env) = TestEnv::new("controldata_is_reused_only_for_the_same_running_postmaster")
    else {
        return;
    };
    let pg = std::sync::Arc::new(LocalPostgres::new(env.settings("reuse")));
    let _cleanup = Cleanup::new(&[pg.as_ref()]);
    pg.initdb().await.expect("initdb");
    assert!(
        pg.postmaster_exit().await,
        "no postmaster: nothing to wait for"
    );
    let stopped = pg.observe().await;
    assert_eq!(control(&stopped).state, ClusterState::ShutDown);
    assert_eq!(pg.controldata_reused(), 0);

    pg.start(&StartRole::Primary).await.expect("start");
    let first = pg.observe().await;
    assert!(first.is_primary(), "{first:#?}");
    assert_eq!(pg.controldata_reused(), 0, "a new postmaster: read afresh");
    let second = pg.observe().await;
    assert!(second.is_primary(), "{second:#?}");
    assert_eq!(
        pg.controldata_reused(),
        1,
        "the same postmaster answering SQL"
    );
    assert_eq!(control(&second), control(&first));
    assert_eq!(control(&second).state, ClusterState::InProduction);

    // The monitor's wait ends when the postmaster is killed.
    let waiter = {
        let pg = pg.clone();
        tokio::spawn(async move { pg.postmaster_exit().await })
    };
    let pid = match second.process {
        PgProcess::Running { pid } => pid,
        PgProcess::Stopped => panic!("postmaster not running"),
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("SIGKILL the postmaster");
    let exited = tokio::time::timeout(Duration::from_secs(60), waiter)
        .await
        .expect("the wait ends when the postmaster dies")
        .expect("waiter task");
    assert!(exited, "waited on a pidfd, not told to poll");
    eventually(
        "the postmaster is gone",
        Duration::from_secs(30),
        || async { !pg.is_alive().await },
    )
    .await;
    kill_data_dir_processes(&pg.settings().data_dir, Duration::from_secs(10))
        .expect("kill the orphaned backends");
    let crashed = pg.observe().await;
    assert_eq!(crashed.process, PgProcess::Stopped);
    assert!(
        control(&crashed).state.is_unclean(),
        "read afresh after the crash: {crashed:#?}"
    );
    assert_eq!(pg.controldata_reused(), 1);

    // A restarted postmaster is another one: read afresh, then reused.
    pg.start(&StartRole::Primary).await.expect("restart");
    assert!(pg.observe().await.is_primary());
    assert_eq!(
        pg.controldata_reused(),
        1,
        "a restarted postmaster: read afresh"
    );
    assert!(pg.observe().await.is_primary());
    assert_eq!(pg.controldata_reused(), 2);
    pg.stop(StopMode::Fast).await.expect("fast stop");
    let state = pg.observe().await;
    assert_eq!(state.process, PgProcess::Stopped);
    assert_eq!(control(&state).state, ClusterState::ShutDown);
    assert_eq!(pg.controldata_reused(), 2);
}
