//! The fence guard runs as its own small binary (`pgbaton-fence-guard`, installed beside
//! `pgbaton`), and as `pgbaton fence-guard` when that binary is missing; either way it fences
//! the PostgreSQL of a frozen agent.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use baton_integration_tests::tools_or_skip;
use baton_integration_tests::{Cluster, ClusterSpec, Tools, scaled};

/// The guard of `node`: its PID (from `<data_dir>.pgbaton-guard`), executable and arguments.
fn guard_of(cluster: &Cluster, node: &str) -> anyhow::Result<(i32, PathBuf, Vec<String>)> {
    let data_dir = &cluster.node(node).config.data_dir;
    let mut file = data_dir.as_os_str().to_owned();
    file.push(".pgbaton-guard");
    let pid: i32 = std::fs::read_to_string(&file)
        .with_context(|| format!("read {}", Path::new(&file).display()))?
        .trim()
        .parse()
        .context("the guard PID")?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).context("the guard's executable")?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).context("the guard's cmdline")?;
    let args = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    Ok((pid, exe, args))
}

/// Freeze the leader's agent and wait for its guard to stop PostgreSQL; the agent is resumed
/// before returning.
async fn frozen_leader_is_fenced(cluster: &Cluster, leader: &str) -> anyhow::Result<()> {
    let agent = cluster
        .node(leader)
        .agent_pid()
        .context("the leader's agent pid")?;
    let postmaster = cluster
        .node(leader)
        .postmaster_pid()
        .context("the leader's postmaster.pid")?;
    let signal = |sig| {
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(agent), sig)
            .with_context(|| format!("{sig} to the agent of {leader}"))
    };
    signal(nix::sys::signal::Signal::SIGSTOP)?;
    let frozen_at = Instant::now();
    let limit = cluster.spec().timing.ttl() + scaled(Duration::from_secs(30));
    let mut fenced = false;
    while frozen_at.elapsed() < limit {
        if nix::sys::signal::kill(nix::unistd::Pid::from_raw(postmaster), None).is_err() {
            fenced = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal(nix::sys::signal::Signal::SIGCONT)?;
    ensure!(
        fenced,
        "the PostgreSQL of the frozen agent still ran {limit:?} after the freeze"
    );
    Ok(())
}

fn one_node() -> ClusterSpec {
    let mut spec = ClusterSpec::new(1);
    spec.haproxy = None;
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_runs_the_separate_guard_binary_and_it_fences_a_frozen_leader()
-> anyhow::Result<()> {
    let tools =
        tools_or_skip!("the_agent_runs_the_separate_guard_binary_and_it_fences_a_frozen_leader");
    ensure!(
        tools.fence_guard().is_some(),
        "no pgbaton-fence-guard beside {} (cargo build -p baton-cli builds both)",
        tools.pgbaton.display()
    );
    let cluster = Cluster::start(&tools, one_node()).await?;
    let healthy = cluster
        .wait_healthy(scaled(Duration::from_secs(180)))
        .await?;
    let (_, exe, args) = guard_of(&cluster, &healthy.leader)?;
    let installed = cluster.pgbaton().with_file_name("pgbaton-fence-guard");
    ensure!(
        exe == installed,
        "the guard runs {}, not {}",
        exe.display(),
        installed.display()
    );
    let data_dir = cluster
        .node(&healthy.leader)
        .config
        .data_dir
        .display()
        .to_string();
    ensure!(
        args.get(1).map(String::as_str) == Some("fence-guard")
            && args
                .windows(2)
                .any(|w| w[0] == "--data-dir" && w[1] == data_dir),
        "the guard's arguments: {args:?}"
    );
    frozen_leader_is_fenced(&cluster, &healthy.leader).await?;
    cluster.finish();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_guard_binary_the_agent_runs_its_built_in_guard() -> anyhow::Result<()> {
    let tools = tools_or_skip!("without_the_guard_binary_the_agent_runs_its_built_in_guard");
    // A `pgbaton` alone in a directory of its own: no guard binary beside it.
    let lone = tempfile::tempdir_in(&tools.tmp_root)?;
    std::fs::copy(&tools.pgbaton, lone.path().join("pgbaton")).context("copy pgbaton")?;
    let tools = Tools {
        pgbaton: lone.path().join("pgbaton"),
        ..tools
    };
    ensure!(tools.fence_guard().is_none());
    let cluster = Cluster::start(&tools, one_node()).await?;
    let healthy = cluster
        .wait_healthy(scaled(Duration::from_secs(180)))
        .await?;
    ensure!(
        !cluster
            .pgbaton()
            .with_file_name("pgbaton-fence-guard")
            .exists(),
        "the test directory has no guard binary"
    );
    let (_, exe, args) = guard_of(&cluster, &healthy.leader)?;
    ensure!(
        exe == cluster.pgbaton(),
        "the guard runs {}, not the agent's own binary",
        exe.display()
    );
    ensure!(
        args.get(1).map(String::as_str) == Some("fence-guard"),
        "the guard's arguments: {args:?}"
    );
    let log = std::fs::read_to_string(&cluster.node(&healthy.leader).log_path)?;
    ensure!(
        log.contains("the fence guard binary is not installed beside pgbaton"),
        "the agent warns that it runs the built-in guard"
    );
    frozen_leader_is_fenced(&cluster, &healthy.leader).await?;
    cluster.finish();
    Ok(())
}
