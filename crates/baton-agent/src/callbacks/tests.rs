//! The callback runner with real scripts in a temporary directory that record their arguments.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_core::{PgProcess, PgSql, PgState, StopMode};

use super::{Callbacks, Event, Role, ScriptError};

/// Poll `f` until it returns `Some`, for at most 20 s.
async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    fn new() -> Dir {
        Dir {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// An executable shell script `name` with `body`.
    fn script(&self, name: &str, body: &str) -> String {
        let path = self.path(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path.display().to_string()
    }

    /// A script appending its arguments (one line per call) to `log`.
    fn recorder(&self) -> String {
        let log = self.path("log");
        self.script("record.sh", &format!("echo \"$@\" >> {}", log.display()))
    }

    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

fn config(yaml_pg: &str) -> baton_config::Config {
    let yaml = format!(
        "scope: batman\nname: n1\nrestapi:\n  listen: 127.0.0.1:8008\n  connect_address: 127.0.0.1:8008\n\
         etcd3:\n  host: 127.0.0.1:2379\npostgresql:\n  listen: 127.0.0.1:5432\n  \
         connect_address: 127.0.0.1:5432\n  data_dir: /tmp/none\n  pg_ctl_timeout: 5\n  \
         pg_hba: [local all all trust]\n  authentication:\n    superuser: {{username: postgres}}\n    \
         replication: {{username: replicator}}\n{yaml_pg}"
    );
    baton_config::load_str(&yaml, &|_| None)
        .unwrap_or_else(|e| panic!("{e}"))
        .config
}

fn every_callback(cmd: &str) -> String {
    [
        "on_start",
        "on_stop",
        "on_restart",
        "on_reload",
        "on_role_change",
    ]
    .iter()
    .map(|n| format!("    {n}: {cmd}\n"))
    .collect::<String>()
}

fn up(pid: i32, in_recovery: bool) -> PgState {
    PgState {
        process: PgProcess::Running { pid },
        sql: Some(PgSql {
            in_recovery,
            ..PgSql::default()
        }),
        ..PgState::default()
    }
}

fn starting(pid: i32) -> PgState {
    PgState {
        process: PgProcess::Running { pid },
        ..PgState::default()
    }
}

fn down() -> PgState {
    PgState::default()
}

async fn wait_lines(dir: &Dir, n: usize) -> Vec<String> {
    eventually(&format!("{n} recorded calls"), || {
        let lines = dir.lines();
        (lines.len() >= n).then_some(lines)
    })
    .await
}

#[tokio::test]
async fn events_come_from_what_changed_between_observations() {
    let dir = Dir::new();
    let rec = dir.recorder();
    let mut cb = Callbacks::new(&config(&format!(
        "  callbacks:\n{}",
        every_callback(&format!("{rec} extra"))
    )));
    // Each step waits for its call, so a newer callback never kills an older one here.
    let steps: Vec<(PgState, bool, bool, Option<&str>)> = vec![
        (down(), false, false, None),
        // Starting but not answering SQL yet: nothing is known.
        (starting(10), false, false, None),
        (
            up(10, true),
            false,
            false,
            Some("extra on_start replica batman"),
        ),
        (up(10, true), false, false, None),
        (
            up(10, false),
            true,
            false,
            Some("extra on_role_change primary batman"),
        ),
        (
            up(10, false),
            true,
            true,
            Some("extra on_reload primary batman"),
        ),
        (
            up(11, false),
            true,
            false,
            Some("extra on_restart primary batman"),
        ),
        // Stopped without the key: a demoted primary.
        (down(), false, false, Some("extra on_stop demoted batman")),
        // Back in another role than it had: a role change, not a start.
        (
            up(12, true),
            false,
            false,
            Some("extra on_role_change replica batman"),
        ),
        (down(), false, false, Some("extra on_stop replica batman")),
        (
            up(13, true),
            false,
            false,
            Some("extra on_start replica batman"),
        ),
        (
            up(13, false),
            true,
            false,
            Some("extra on_role_change primary batman"),
        ),
        // A primary stopped while it holds the key (a restart, a shutdown) stays primary.
        (down(), true, false, Some("extra on_stop primary batman")),
    ];
    let mut expected = Vec::new();
    for (i, (pg, holds, reloaded, call)) in steps.into_iter().enumerate() {
        cb.observed(&pg, holds, reloaded);
        if let Some(call) = call {
            expected.push(call.to_owned());
        }
        let lines = wait_lines(&dir, expected.len()).await;
        assert_eq!(lines, expected, "after step {i}");
    }
}

#[tokio::test]
async fn the_first_observation_of_a_running_postgres_fires_on_start() {
    let dir = Dir::new();
    let rec = dir.recorder();
    let mut cb = Callbacks::new(&config(&format!("  callbacks:\n    on_start: {rec}\n")));
    cb.observed(&up(5, false), true, false);
    assert_eq!(wait_lines(&dir, 1).await, ["on_start primary batman"]);
}

#[tokio::test]
async fn a_new_callback_kills_the_running_one_and_its_children() {
    let dir = Dir::new();
    let log = dir.path("log");
    let child_pid = dir.path("child.pid");
    // on_start starts a child that would write later, and waits for it.
    let slow = dir.script(
        "slow.sh",
        &format!(
            "echo \"$1 begun\" >> {log}\n(sleep 30; echo \"$1 child survived\" >> {log}) &\necho $! > {pid}\nwait\necho \"$1 finished\" >> {log}",
            log = log.display(),
            pid = child_pid.display()
        ),
    );
    let rec = dir.recorder();
    let mut cb = Callbacks::new(&config(&format!(
        "  callbacks:\n    on_start: {slow}\n    on_role_change: {rec}\n    on_reload: {rec}\n"
    )));
    cb.fire(Event::Start, Role::Replica);
    wait_lines(&dir, 1).await;
    let pid: i32 = eventually("the child's pid", || {
        std::fs::read_to_string(&child_pid)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    })
    .await;
    // An on_reload has its own slot: the running on_start goes on.
    cb.fire(Event::Reload, Role::Replica);
    assert_eq!(
        wait_lines(&dir, 2).await,
        ["on_start begun", "on_reload replica batman"]
    );
    // Any other callback kills it, its child included, before it runs.
    cb.fire(Event::RoleChange, Role::Primary);
    assert_eq!(
        wait_lines(&dir, 3).await,
        [
            "on_start begun",
            "on_reload replica batman",
            "on_role_change primary batman"
        ]
    );
    eventually("the child to be gone", || {
        let alive = Path::new(&format!("/proc/{pid}")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z ");
        (!alive).then_some(())
    })
    .await;
    assert_eq!(dir.lines().len(), 3, "{:?}", dir.lines());
}

#[tokio::test]
async fn a_missing_callback_is_logged_and_changes_nothing() {
    let dir = Dir::new();
    let rec = dir.recorder();
    let mut cb = Callbacks::new(&config(&format!(
        "  callbacks:\n    on_start: {}\n    on_role_change: {rec}\n",
        dir.path("missing.sh").display()
    )));
    cb.observed(&up(1, true), false, false);
    cb.observed(&down(), false, false);
    cb.observed(&up(2, true), false, false);
    assert!(
        cb.failed
            .contains(&dir.path("missing.sh").display().to_string())
    );
    cb.observed(&up(2, false), true, false);
    assert_eq!(wait_lines(&dir, 1).await, ["on_role_change primary batman"]);
}

#[tokio::test]
async fn pre_promote_is_waited_for_and_a_failure_says_why() {
    let dir = Dir::new();
    let log = dir.path("log");
    let rc = dir.path("rc");
    std::fs::write(&rc, "1").expect("write");
    let script = dir.script(
        "fence.sh",
        &format!(
            "echo \"pre_promote $*\" >> {}\necho 'fencing the old primary failed' >&2\nexit $(cat {})",
            log.display(),
            rc.display()
        ),
    );
    let mut cb = Callbacks::new(&config(&format!("  pre_promote: {script} --really\n")));
    let err = cb.pre_promote().await.expect_err("exit 1").0;
    assert_eq!(
        err,
        ScriptError::Failed {
            status: "exit status 1".into(),
            output: "fencing the old primary failed".into()
        }
    );
    assert_eq!(
        err.to_string(),
        "exit status 1: fencing the old primary failed"
    );
    // Waited for: the call is recorded when it returns, with no callback arguments.
    assert_eq!(dir.lines(), ["pre_promote --really"]);
    std::fs::write(&rc, "0").expect("write");
    cb.pre_promote().await.expect("exit 0");
    // None configured: nothing to wait for.
    let mut none = Callbacks::new(&config(""));
    none.pre_promote().await.expect("no script");
}

#[tokio::test]
async fn a_script_that_hangs_is_killed_at_the_timeout() {
    let dir = Dir::new();
    let hang = dir.script("hang.sh", "sleep 60");
    let mut cb = Callbacks::new(&config(&format!("  pre_promote: {hang}\n")));
    cb.timeout = Duration::from_millis(300);
    assert_eq!(
        cb.pre_promote().await.map_err(|e| e.0),
        Err(ScriptError::Timeout(Duration::from_millis(300)))
    );
    let mut missing = Callbacks::new(&config(&format!(
        "  pre_promote: {}\n",
        dir.path("none.sh").display()
    )));
    assert!(matches!(
        missing.pre_promote().await,
        Err(super::PrePromoteFailed(ScriptError::Spawn(_)))
    ));
}

#[tokio::test]
async fn before_stop_and_post_bootstrap_get_their_arguments() {
    let dir = Dir::new();
    let log = dir.path("log");
    let rec = dir.script(
        "rec.sh",
        &format!(
            "echo \"$* PGPASSFILE=$PGPASSFILE\" >> {}\nexit 3",
            log.display()
        ),
    );
    let mut cb = Callbacks::new(&config(&format!(
        "  before_stop: {rec} stop\nbootstrap:\n  post_bootstrap: {rec} boot\n"
    )));
    // A before_stop failure is only logged; never before an immediate stop (fencing), nor
    // for a PostgreSQL last seen stopped.
    cb.before_stop(StopMode::Immediate).await;
    cb.before_stop(StopMode::Fast).await;
    cb.observed(&down(), false, false);
    cb.before_stop(StopMode::Fast).await;
    let job = super::PostBootstrap {
        script: cb.post_bootstrap.clone(),
        url: "postgres://postgres@127.0.0.1:5432/postgres".into(),
        pgpass: "/p/pgpass".into(),
        timeout: cb.timeout,
    };
    let err = job.run_script().await.expect_err("exit 3");
    assert_eq!(err.to_string(), "exit status 3");
    assert_eq!(
        dir.lines(),
        [
            "stop PGPASSFILE=",
            "boot postgres://postgres@127.0.0.1:5432/postgres PGPASSFILE=/p/pgpass"
        ]
    );
}

#[test]
fn post_bootstrap_gets_the_superusers_url_over_the_socket() {
    let config = config("  parameters:\n    unix_socket_directories: /run/pg sock\n");
    let dynamic = baton_config::DynamicConfig::defaults();
    assert_eq!(
        super::local_url(&config, &dynamic),
        "postgresql://postgres@%2Frun%2Fpg%20sock:5432/postgres"
    );
}

#[tokio::test]
async fn a_restart_of_pgbatons_own_fires_on_restart_once_not_on_stop_and_on_start() {
    let dir = Dir::new();
    let rec = dir.recorder();
    let mut cb = Callbacks::new(&config(&format!(
        "  callbacks:\n    on_start: {rec}\n    on_stop: {rec}\n    on_restart: {rec}\n"
    )));
    cb.observed(&up(5, false), true, false);
    assert_eq!(wait_lines(&dir, 1).await, ["on_start primary batman"]);
    // The restart runs beside the loop: a cycle sees PostgreSQL down, a later one up again.
    cb.set_restarting(true);
    cb.observed(&down(), true, false);
    cb.observed(&down(), true, false);
    cb.set_restarting(false);
    cb.observed(&up(6, false), true, false);
    assert_eq!(
        wait_lines(&dir, 2).await,
        ["on_start primary batman", "on_restart primary batman"]
    );
    // A restart that ends with PostgreSQL still down fires nothing; a later start is a start.
    cb.set_restarting(true);
    cb.observed(&down(), true, false);
    cb.set_restarting(false);
    cb.observed(&down(), true, false);
    cb.observed(&up(7, false), true, false);
    assert_eq!(
        wait_lines(&dir, 3).await,
        [
            "on_start primary batman",
            "on_restart primary batman",
            "on_start primary batman"
        ]
    );
    // Outside a restart a stop is an on_stop, as before.
    cb.observed(&down(), true, false);
    assert_eq!(wait_lines(&dir, 4).await[3], "on_stop primary batman");
}
