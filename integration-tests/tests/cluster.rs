//! Integration tests: real etcd, real PostgreSQL 15, real `pgbaton agent`s, real HAProxy.
//!
//! Every test skips (printing a `SKIP` line) when a program it needs is missing, unless
//! `PGBATON_REQUIRE_INTEGRATION=1`, which turns the skip into a failure (as `make test` does).
//! See docs/testing.md.

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use baton_integration_tests::tools_or_skip;
use baton_integration_tests::{
    Check, Cluster, ClusterSpec, PgTarget, SampleReport, Tools, lsn_reached, pid_alive, scaled,
    simple_query, wait_for, wait_until,
};
use serde_json::{Value, json};

/// The tools, or return `Ok(())` from the test after printing why it is skipped.
/// Rows committed before the failure, one transaction each.
const ROWS_BEFORE: i32 = 200;
/// Rows committed through HAProxy after the failover.
const ROWS_AFTER: i32 = 50;

/// The foundation scenario: the primary's host dies; exactly one replica takes over within
/// ttl + margin, HAProxy sends clients to it, no committed row is lost, never two primaries at
/// once; the old primary's agent restarts and the old primary rejoins as a streaming replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_host_dies_replica_takes_over_old_primary_rejoins() -> anyhow::Result<()> {
    let tools = tools_or_skip!("primary_host_dies_replica_takes_over_old_primary_rejoins");
    let spec = ClusterSpec::new(3);
    let ttl = spec.timing.ttl();
    let mut cluster = Cluster::start(&tools, spec).await?;

    // 1. One leader, two streaming replicas, HAProxy routing to the leader.
    let healthy = cluster
        .wait_healthy(scaled(Duration::from_secs(180)))
        .await
        .context("initial bootstrap")?;
    let old = healthy.leader.clone();
    eprintln!("healthy: leader {old}, replicas {:?}", healthy.replicas);

    // 2. Commit rows through HAProxy's primary port; check it reached the leader.
    let via_haproxy = cluster.via_haproxy_primary();
    let client = via_haproxy
        .connect()
        .await
        .context("connect through HAProxy")?;
    let port = one(&simple_query(&client, "SELECT inet_server_port()").await?)?;
    ensure!(
        port == cluster.node(&old).config.pg_port.to_string(),
        "HAProxy's primary port reached port {port}, not the leader {old}"
    );
    simple_query(
        &client,
        "CREATE TABLE baton_it (id int PRIMARY KEY, phase text NOT NULL, at timestamptz DEFAULT now())",
    )
    .await?;
    for id in 1..=ROWS_BEFORE {
        tokio::time::timeout(
            Duration::from_secs(5),
            client.execute(
                "INSERT INTO baton_it (id, phase) VALUES ($1, 'before')",
                &[&id],
            ),
        )
        .await
        .context("insert timed out")??;
    }
    drop(client);

    // 3. Both replicas replay everything the primary flushed.
    let flush_lsn = one(&cluster
        .sql(&old, "SELECT pg_current_wal_flush_lsn()::text")
        .await?)?;
    for replica in &healthy.replicas {
        let target = cluster.node(replica).pg();
        wait_until(
            &format!("{replica} to replay {flush_lsn}"),
            scaled(Duration::from_secs(30)),
            || lsn_reached(&target, &flush_lsn),
        )
        .await?;
        let count = count_rows(&target, "before").await?;
        ensure!(
            count == ROWS_BEFORE,
            "{replica} has {count} rows, want {ROWS_BEFORE}"
        );
    }
    let old_timeline = timeline_of(&cluster, &old).await?;

    // 4. The primary's host dies.
    let sampler = cluster.sampler();
    sampler
        .wait_seen_primary(&old, scaled(Duration::from_secs(10)))
        .await?;
    let killed_at = Instant::now();
    cluster.kill_host(&old)?;

    // 5. Exactly one new leader, one of the former replicas, within ttl + a generous margin.
    let new = cluster
        .wait_new_leader(&old, scaled(ttl + Duration::from_secs(30)))
        .await
        .context("failover after the primary's host died")?;
    eprintln!(
        "new leader {new} writable {:.1}s after the kill",
        killed_at.elapsed().as_secs_f64()
    );
    ensure!(
        healthy.replicas.contains(&new),
        "new leader {new} was not a replica"
    );

    // 6. HAProxy's primary port reaches the new leader, and a write succeeds through it.
    let new_port = cluster.node(&new).config.pg_port.to_string();
    let client = wait_for(
        "a writable connection through HAProxy's primary port",
        scaled(Duration::from_secs(30)),
        || connect_to_primary(&via_haproxy, &new_port),
    )
    .await?;
    for id in ROWS_BEFORE + 1..=ROWS_BEFORE + ROWS_AFTER {
        tokio::time::timeout(
            Duration::from_secs(5),
            client.execute(
                "INSERT INTO baton_it (id, phase) VALUES ($1, 'after')",
                &[&id],
            ),
        )
        .await
        .context("insert after failover timed out")??;
    }
    drop(client);
    eprintln!(
        "first write through HAProxy after failover committed {:.1}s after the kill",
        killed_at.elapsed().as_secs_f64()
    );

    // 7. No committed row is lost.
    let before = count_rows(&via_haproxy, "before").await?;
    ensure!(
        before == ROWS_BEFORE,
        "after failover {before} of {ROWS_BEFORE} rows are left"
    );

    // 8. The surviving replica follows the new leader; the sampler saw one primary at a time
    //    and exactly one new leader.
    let survivors: Vec<String> = cluster.names().into_iter().filter(|n| *n != old).collect();
    cluster
        .wait_healthy_members(&survivors, scaled(Duration::from_secs(60)))
        .await
        .context("the surviving replica follows the new leader")?;
    let report = sampler.stop().await;
    check_samples(&report, &old, &new)?;
    let new_timeline = timeline_of(&cluster, &new).await?;
    ensure!(
        new_timeline > old_timeline,
        "new leader is on timeline {new_timeline}, old primary was on {old_timeline}"
    );

    // 9. The old primary's agent restarts; the old primary rejoins as a streaming replica of
    //    the new leader and has the rows written after the failover.
    cluster.start_agent(&old)?;
    let rejoined = cluster
        .wait_healthy(scaled(Duration::from_secs(120)))
        .await
        .context("the old primary rejoins")?;
    ensure!(
        rejoined.leader == new,
        "leader changed to {} during the rejoin",
        rejoined.leader
    );
    let status = cluster.node(&old).patroni().await?;
    ensure!(
        status.get("role").and_then(Value::as_str) == Some("replica"),
        "{old}: /patroni says {status}"
    );
    let flush_lsn = one(&cluster
        .sql(&new, "SELECT pg_current_wal_flush_lsn()::text")
        .await?)?;
    let old_pg = cluster.node(&old).pg();
    wait_until(
        &format!("{old} to replay {flush_lsn}"),
        scaled(Duration::from_secs(30)),
        || lsn_reached(&old_pg, &flush_lsn),
    )
    .await?;
    let after_on_old = count_rows(&old_pg, "after").await?;
    ensure!(
        after_on_old == ROWS_AFTER,
        "{old} has {after_on_old} rows written after the failover, want {ROWS_AFTER}"
    );
    ensure!(
        timeline_of(&cluster, &old).await? == new_timeline,
        "{old} is not on the new leader's timeline {new_timeline}"
    );

    // 10. `pgbaton list` shows the same picture.
    wait_for(
        "pgbaton list to show the new leader and two streaming replicas",
        scaled(Duration::from_secs(30)),
        || async {
            Ok(match cluster.list_json(&old).await {
                Ok(members) => check_list(&members, &new, &[old.clone(), other(&survivors, &new)]),
                Err(e) => Check::not_yet(format!("{e:#}")),
            })
        },
    )
    .await?;

    cluster.finish();
    Ok(())
}

/// `pgbaton validate-config` accepts the harness's configuration and rejects typos, naming
/// each offending key path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_config_names_the_typo_key_path() -> anyhow::Result<()> {
    let tools = tools_or_skip!("validate_config_names_the_typo_key_path");
    let cluster = Cluster::create(&tools, ClusterSpec::new(1))?;
    let node = &cluster.nodes()[0];

    let good = node.config_path.to_string_lossy().into_owned();
    let out = cluster.pgbaton_cli(&["validate-config", &good]).await?;
    ensure!(
        out.status.success(),
        "validate-config rejected a valid file ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let mut bad = node.config.to_value();
    baton_integration_tests::deep_merge(
        &mut bad,
        &json!({
            "restapi": { "lisen": "127.0.0.1:1" },
            "postgresql": { "paramters": { "work_mem": "4MB" } },
            // A standby cluster without a host (archive only) is refused.
            "bootstrap": { "dcs": { "standby_cluster": { "port": 5432 } } },
        }),
    );
    let bad_path = cluster.dir().join("typo.yml");
    std::fs::write(&bad_path, serde_yaml::to_string(&bad)?)?;
    let out = cluster
        .pgbaton_cli(&["validate-config", &bad_path.to_string_lossy()])
        .await?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        !out.status.success(),
        "validate-config accepted typos: {text}"
    );
    for path in [
        "error: restapi.lisen: unknown key",
        "error: postgresql.paramters: unknown key",
        "error: bootstrap.dcs.standby_cluster.host: not supported by pgbaton yet",
        "configuration is invalid (3 errors)",
    ] {
        ensure!(
            text.contains(path),
            "validate-config did not say {path:?}: {text}"
        );
    }
    cluster.finish();
    Ok(())
}

/// An agent started while etcd is down keeps running, logs that it retries, does not
/// bootstrap PostgreSQL on its own, and joins (bootstraps and leads) once etcd starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_started_before_etcd_waits_then_bootstraps() -> anyhow::Result<()> {
    let tools = tools_or_skip!("agent_started_before_etcd_waits_then_bootstraps");
    let mut spec = ClusterSpec::new(1);
    spec.start_etcd = false;
    spec.haproxy = None;
    let ttl = spec.timing.ttl();
    let mut cluster = Cluster::start(&tools, spec).await?;
    let name = cluster.names()[0].clone();

    // The agent says it retries the DCS...
    let log = cluster.node(&name).log_path.clone();
    let etcd_hosts = cluster.etcd().hosts();
    let line = wait_for(
        "the agent to log that it retries etcd",
        scaled(Duration::from_secs(60)),
        || async {
            cluster.check_agents_alive()?;
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            Ok(
                match text.lines().find(|l| is_dcs_retry_line(l, &etcd_hosts)) {
                    Some(l) => Check::Done(l.to_owned()),
                    None => Check::not_yet("no retry line in the agent log yet"),
                },
            )
        },
    )
    .await?;
    eprintln!("retry line: {line}");

    // ...and stays up for a whole ttl without etcd, without initialising PostgreSQL.
    let data_dir = cluster.node(&name).config.data_dir.clone();
    let since = Instant::now();
    wait_for(
        "the agent to stay up for a ttl with etcd down",
        scaled(ttl + Duration::from_secs(10)),
        || async {
            cluster.check_agents_alive()?;
            if data_dir.join("PG_VERSION").exists() {
                bail!("the agent initialised PostgreSQL while etcd was unreachable");
            }
            Ok(if since.elapsed() >= ttl {
                Check::Done(())
            } else {
                Check::not_yet("still within the observation window")
            })
        },
    )
    .await?;

    // etcd comes up: the agent bootstraps and leads.
    cluster.start_etcd().await?;
    let healthy = cluster
        .wait_healthy(scaled(Duration::from_secs(120)))
        .await
        .context("bootstrap once etcd is up")?;
    ensure!(healthy.leader == name, "leader is {}", healthy.leader);
    cluster.finish();
    Ok(())
}

/// PostgreSQL crashes on the primary while its agent lives: the agent notices, restarts it in
/// place as the primary (the leader key never moves), on the same timeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crash_on_the_primary_is_restarted_in_place() -> anyhow::Result<()> {
    let tools = tools_or_skip!("postgres_crash_on_the_primary_is_restarted_in_place");
    let mut spec = ClusterSpec::new(2);
    spec.haproxy = None;
    let cluster = Cluster::start(&tools, spec).await?;
    let healthy = cluster
        .wait_healthy(scaled(Duration::from_secs(180)))
        .await?;
    let leader = healthy.leader.clone();
    let timeline = timeline_of(&cluster, &leader).await?;
    let data_dir = cluster.node(&leader).config.data_dir.clone();
    let pg = cluster.node(&leader).pg();

    // Poll `/primary` from before the crash until PostgreSQL is writable again: while it is
    // down the health check HAProxy follows must not say "primary".
    let url = format!(
        "http://127.0.0.1:{}/primary",
        cluster.node(&leader).config.rest_port
    );
    let polling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let poller = {
        let polling = polling.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut refused = 0;
            while polling.load(std::sync::atomic::Ordering::SeqCst) {
                let get = http.get(&url).timeout(Duration::from_millis(500)).send();
                if get.await.map(|r| r.status().as_u16()).unwrap_or(0) != 200 {
                    refused += 1;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            refused
        })
    };
    let crashed_at = Instant::now();
    let pid =
        baton_integration_tests::kill_postmaster(&data_dir).context("no postmaster to kill")?;
    eprintln!("killed postmaster {pid} of {leader}");
    wait_for(
        "the primary to accept writes again",
        scaled(Duration::from_secs(60)),
        || async {
            Ok(
                match pg.query_one("SELECT pg_is_in_recovery()::text").await {
                    Ok(v) if v == "false" => Check::Done(()),
                    Ok(v) => Check::not_yet(format!("in recovery: {v}")),
                    Err(e) => Check::not_yet(format!("{e:#}")),
                },
            )
        },
    )
    .await?;
    polling.store(false, std::sync::atomic::Ordering::SeqCst);
    let refused = poller.await?;
    ensure!(
        refused > 0,
        "/primary answered 200 all the time PostgreSQL was down"
    );
    eprintln!(
        "{leader} writable again {:.1}s after the crash; /primary refused {refused} polls meanwhile",
        crashed_at.elapsed().as_secs_f64()
    );
    ensure!(
        cluster.leader().await?.as_deref() == Some(leader.as_str()),
        "the leader key moved"
    );
    ensure!(
        timeline_of(&cluster, &leader).await? == timeline,
        "the timeline changed"
    );
    let log = std::fs::read_to_string(&cluster.node(&leader).log_path)?;
    ensure!(
        log.contains("starting primary after failure"),
        "no restart line in the log"
    );
    cluster
        .wait_healthy(scaled(Duration::from_secs(60)))
        .await?;
    cluster.finish();
    Ok(())
}

/// etcd freezes (SIGSTOP): nobody can renew a lease. The leader must stop answering 200 on
/// `/primary` and stop PostgreSQL before its lease could have expired (ttl after the freeze at
/// the latest); replicas keep running read-only. When etcd comes back the cluster heals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_fences_itself_before_its_lease_can_expire() -> anyhow::Result<()> {
    let tools = tools_or_skip!("leader_fences_itself_before_its_lease_can_expire");
    let mut spec = ClusterSpec::new(3);
    spec.haproxy = None;
    let ttl = spec.timing.ttl();
    let cluster = Cluster::start(&tools, spec).await?;
    let healthy = cluster
        .wait_healthy(scaled(Duration::from_secs(180)))
        .await?;
    let leader = healthy.leader.clone();
    let postmaster = cluster
        .node(&leader)
        .postmaster_pid()
        .context("the leader's postmaster pid")?;

    cluster.etcd().pause_member(0, true)?;
    let frozen_at = Instant::now();
    let mut primary_503_at = None;
    let mut fenced_at = None;
    // Poll every 100 ms until both happened, for at most ttl + a margin. "Fenced" is the
    // postmaster gone, not a connection attempt failing: on a loaded machine a connect can
    // time out while PostgreSQL still runs.
    while frozen_at.elapsed() < ttl + Duration::from_secs(10) && fenced_at.is_none() {
        if primary_503_at.is_none()
            && cluster
                .node(&leader)
                .http_status("/primary")
                .await
                .unwrap_or(0)
                != 200
        {
            primary_503_at = Some(frozen_at.elapsed());
        }
        if !pid_alive(postmaster) {
            fenced_at = Some(frozen_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let replicas_alive = {
        let mut all = true;
        for r in &healthy.replicas {
            all &= cluster
                .node(r)
                .pg()
                .query_one("SELECT pg_is_in_recovery()::text")
                .await
                .ok()
                .as_deref()
                == Some("true");
        }
        all
    };
    cluster.etcd().pause_member(0, false)?;
    eprintln!(
        "after the freeze: /primary 503 at {primary_503_at:?}, postgres down at {fenced_at:?} (ttl {ttl:?})"
    );
    let fenced_at =
        fenced_at.context("the leader never stopped PostgreSQL while etcd was frozen")?;
    let primary_503_at = primary_503_at.context("/primary kept answering 200")?;
    ensure!(
        fenced_at < ttl,
        "PostgreSQL was still up {fenced_at:?} after the freeze, ttl is {ttl:?}"
    );
    ensure!(
        primary_503_at <= fenced_at,
        "/primary answered 200 after PostgreSQL was stopped"
    );
    ensure!(
        replicas_alive,
        "a replica stopped serving reads while etcd was frozen"
    );

    cluster
        .wait_healthy(scaled(Duration::from_secs(120)))
        .await
        .context("recovery after etcd is back")?;
    cluster.finish();
    Ok(())
}

/// The leader's agent dies (SIGKILL) while PostgreSQL runs on as the primary. Restarted with
/// etcd answering, the new agent moves the leader key to its own lease in time and keeps the
/// very same postmaster (no restart, no failover). Killed again and restarted while etcd is
/// frozen, it cannot confirm anything: it must stop PostgreSQL before the old lease can
/// expire, by the deadline the dead agent recorded (simulator finding F2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_agent_keeps_its_primary_or_fences_it_by_the_old_deadline() -> anyhow::Result<()>
{
    let tools =
        tools_or_skip!("restarted_agent_keeps_its_primary_or_fences_it_by_the_old_deadline");
    let mut spec = ClusterSpec::new(2);
    spec.haproxy = None;
    let ttl = spec.timing.ttl();
    let mut cluster = Cluster::start(&tools, spec).await?;
    let healthy = cluster
        .wait_healthy(scaled(Duration::from_secs(180)))
        .await?;
    let leader = healthy.leader.clone();
    let postmaster = cluster
        .node(&leader)
        .postmaster_pid()
        .context("the leader's postmaster.pid")?;

    // 1. A plain restart keeps the primary.
    cluster.kill_agent(&leader);
    cluster.start_agent(&leader)?;
    let restarted = cluster
        .wait_healthy(scaled(Duration::from_secs(120)))
        .await
        .context("healthy again after the agent restart")?;
    ensure!(
        restarted.leader == leader,
        "leadership moved from {leader} to {} on a mere agent restart",
        restarted.leader
    );
    ensure!(
        cluster.node(&leader).postmaster_pid() == Some(postmaster),
        "the restarted agent restarted or replaced the primary's postmaster"
    );

    // 2. A restart while etcd is frozen fences by the old deadline.
    cluster.kill_agent(&leader);
    let killed_at = Instant::now();
    cluster.etcd().pause_member(0, true)?;
    cluster.start_agent(&leader)?;
    let mut fenced_at = None;
    while killed_at.elapsed() < ttl + Duration::from_secs(10) {
        // The postmaster gone (a connect timing out on a loaded machine proves nothing).
        if !pid_alive(postmaster) {
            fenced_at = Some(killed_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.etcd().pause_member(0, false)?;
    eprintln!("restart with etcd frozen: postgres down {fenced_at:?} after the kill (ttl {ttl:?})");
    let fenced_at = fenced_at.context("the restarted agent never stopped its primary")?;
    // The old lease was last renewed before the kill, so it expires within ttl of it.
    ensure!(
        fenced_at < ttl,
        "PostgreSQL was still up {fenced_at:?} after the agent was killed, ttl is {ttl:?}"
    );
    cluster
        .wait_healthy(scaled(Duration::from_secs(120)))
        .await
        .context("recovery after etcd is back")?;
    cluster.finish();
    Ok(())
}

/// The leader's agent freezes (SIGSTOP) while its PostgreSQL runs on: the agent's own fencer is
/// frozen with it, so the fence guard (a process of its own) must stop PostgreSQL by the
/// recorded deadline, before the leader key's lease expires and a standby is promoted. Resumed,
/// the agent finds itself fenced and rejoins as a replica of the new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_leader_agent_is_fenced_by_its_guard_before_the_lease_expires() -> anyhow::Result<()>
{
    let tools =
        tools_or_skip!("frozen_leader_agent_is_fenced_by_its_guard_before_the_lease_expires");
    let mut spec = ClusterSpec::new(3);
    spec.haproxy = None;
    let ttl = spec.timing.ttl();
    let cluster = Cluster::start(&tools, spec).await?;
    let healthy = cluster
        .wait_healthy(scaled(Duration::from_secs(180)))
        .await?;
    let old = healthy.leader.clone();
    // The agent runs in a process group of its own (behind `runuser`); the guard has its own.
    let agent = cluster
        .node(&old)
        .agent_pid()
        .context("the leader's agent pid")?;
    let postmaster = cluster
        .node(&old)
        .postmaster_pid()
        .context("the leader's postmaster.pid")?;
    let signal = |sig| {
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(agent), sig)
            .with_context(|| format!("{sig} to the agent of {old}"))
    };
    signal(nix::sys::signal::Signal::SIGSTOP)?;
    let frozen_at = Instant::now();
    // Poll both: the postmaster on the frozen node, and the leader key (it goes when the lease
    // the frozen agent can no longer renew expires).
    let mut fenced_at = None;
    let mut key_gone_at = None;
    while frozen_at.elapsed() < ttl + scaled(Duration::from_secs(20))
        && (fenced_at.is_none() || key_gone_at.is_none())
    {
        if fenced_at.is_none()
            && nix::sys::signal::kill(nix::unistd::Pid::from_raw(postmaster), None).is_err()
        {
            fenced_at = Some(frozen_at.elapsed());
        }
        if key_gone_at.is_none() && cluster.leader().await?.as_deref() != Some(old.as_str()) {
            key_gone_at = Some(frozen_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resumed = signal(nix::sys::signal::Signal::SIGCONT);
    eprintln!(
        "frozen agent: postgres down {fenced_at:?}, leader key gone {key_gone_at:?} after the freeze (ttl {ttl:?})"
    );
    resumed?;
    let fenced_at = fenced_at.context("PostgreSQL of the frozen agent was never stopped")?;
    let key_gone_at = key_gone_at.context("the frozen agent's leader key never expired")?;
    ensure!(
        fenced_at < key_gone_at,
        "PostgreSQL was still up {fenced_at:?} after the freeze, the leader key was gone after {key_gone_at:?}"
    );
    let new = cluster
        .wait_new_leader(&old, scaled(ttl + Duration::from_secs(30)))
        .await?;
    let healthy = cluster
        .wait_healthy(scaled(Duration::from_secs(120)))
        .await
        .context("the resumed agent rejoins")?;
    ensure!(
        healthy.leader == new && healthy.replicas.contains(&old),
        "after the resume: {healthy:?}"
    );
    cluster.finish();
    Ok(())
}

/// The primary accepts writes its standbys never receive (its WAL senders are frozen),
/// then its host dies. A standby takes over without those writes; when the old primary's
/// agent comes back, it rewinds (pg_rewind) onto the new timeline and streams: the diverging
/// rows are gone from it, the shared ones are there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_primary_with_a_diverging_write_rejoins_through_pg_rewind() -> anyhow::Result<()> {
    let tools = tools_or_skip!("old_primary_with_a_diverging_write_rejoins_through_pg_rewind");
    let mut spec = ClusterSpec::new(3);
    spec.haproxy = None;
    let ttl = spec.timing.ttl();
    let mut cluster = Cluster::start(&tools, spec).await?;
    let healthy = cluster
        .wait_healthy(scaled(Duration::from_secs(180)))
        .await?;
    let old = healthy.leader.clone();
    let old_pg = cluster.node(&old).pg();
    let client = old_pg.connect().await?;
    simple_query(
        &client,
        "CREATE TABLE baton_it (id int PRIMARY KEY, phase text); \
         INSERT INTO baton_it SELECT g, 'shared' FROM generate_series(1, 100) g",
    )
    .await?;
    let shared_lsn = old_pg
        .query_one("SELECT pg_current_wal_flush_lsn()::text")
        .await?;
    for r in &healthy.replicas {
        let pg = cluster.node(r).pg();
        wait_until(
            "the standby to replay the shared rows",
            scaled(Duration::from_secs(30)),
            || async { lsn_reached(&pg, &shared_lsn).await },
        )
        .await?;
    }
    // The primary's WAL senders freeze: what it commits from now on stays on it (a frozen
    // receiver would still find the data in its socket buffer when thawed).
    let senders = cluster
        .sql(&old, "SELECT pid::text FROM pg_stat_replication")
        .await?;
    ensure!(
        senders.len() == healthy.replicas.len(),
        "expected one WAL sender per standby, found {senders:?}"
    );
    for row in &senders {
        let pid: i32 = row
            .first()
            .cloned()
            .flatten()
            .context("walsender pid")?
            .parse()?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGSTOP,
        )?;
    }
    simple_query(
        &client,
        "INSERT INTO baton_it SELECT g, 'diverging' FROM generate_series(101, 200) g",
    )
    .await?;
    // SIGKILL ends the frozen senders too.
    cluster.kill_host(&old)?;
    let new = cluster
        .wait_new_leader(&old, scaled(ttl + Duration::from_secs(30)))
        .await?;
    let new_pg = cluster.node(&new).pg();
    wait_for(
        "the new leader to accept writes",
        scaled(Duration::from_secs(30)),
        || async {
            Ok(
                match new_pg.query_one("SELECT pg_is_in_recovery()::text").await {
                    Ok(v) if v == "false" => Check::Done(()),
                    other => Check::not_yet(format!("{other:?}")),
                },
            )
        },
    )
    .await?;
    ensure!(
        count_rows(&new_pg, "diverging").await? == 0,
        "the new leader has rows its WAL receiver never got"
    );
    simple_query(
        &new_pg.connect().await?,
        "INSERT INTO baton_it VALUES (1000, 'after')",
    )
    .await?;

    cluster.start_agent(&old)?;
    wait_for(
        "the old primary to stream from the new leader with its rows",
        scaled(Duration::from_secs(120)),
        || async {
            let rows = cluster
                .sql(&old, "SELECT pg_is_in_recovery()::text, (SELECT count(*) FROM baton_it WHERE id = 1000)::text")
                .await;
            Ok(match rows {
                Ok(r) if r.first().is_some_and(|r| {
                    r.first().cloned().flatten().as_deref() == Some("true")
                        && r.get(1).cloned().flatten().as_deref() == Some("1")
                }) => Check::Done(()),
                other => Check::not_yet(format!("{other:?}")),
            })
        },
    )
    .await?;
    let old_pg = cluster.node(&old).pg();
    ensure!(
        count_rows(&old_pg, "diverging").await? == 0,
        "the rewound old primary still has its diverging rows"
    );
    ensure!(
        count_rows(&old_pg, "shared").await? == 100,
        "the rewound old primary lost shared rows"
    );
    ensure!(
        timeline_of(&cluster, &old).await? == timeline_of(&cluster, &new).await?,
        "the old primary is not on the new leader's timeline"
    );
    cluster.finish();
    Ok(())
}

/// A switchover scheduled a few seconds ahead (`pgbaton switchover --scheduled`) does not
/// happen early, then fires: the candidate leads and the `failover` key is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_switchover_fires_on_time() -> anyhow::Result<()> {
    let tools = tools_or_skip!("scheduled_switchover_fires_on_time");
    let mut spec = ClusterSpec::new(2);
    spec.haproxy = None;
    let cluster = Cluster::start(&tools, spec).await?;
    let healthy = cluster
        .wait_healthy(scaled(Duration::from_secs(180)))
        .await?;
    let (leader, candidate) = (healthy.leader.clone(), healthy.replicas[0].clone());
    let lead = Duration::from_secs(12);
    let at_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + lead.as_secs();
    let at = iso8601_utc(at_unix)?;
    let text = cluster
        .cli_switchover(&leader, &candidate, Some(&at))
        .await
        .context("scheduling")?;
    ensure!(text.contains("scheduled"), "{text}");
    let scheduled = Instant::now();
    ensure!(
        cluster
            .etcd()
            .get(&cluster.key("failover"))
            .await?
            .is_some(),
        "no failover key after scheduling"
    );
    // Until shortly before the time, nothing moves.
    while scheduled.elapsed() + Duration::from_secs(2) < lead {
        ensure!(
            cluster.leader().await?.as_deref() == Some(leader.as_str()),
            "the switchover happened {:?} before its time",
            lead.saturating_sub(scheduled.elapsed())
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let now = cluster
        .wait_new_leader(&leader, scaled(Duration::from_secs(60)))
        .await?;
    eprintln!(
        "scheduled switchover: {now} leads {:?} after scheduling (scheduled {lead:?} ahead)",
        scheduled.elapsed()
    );
    ensure!(now == candidate, "{now} took over, not {candidate}");
    // Patroni clears the key by writing `{}` (tools read an empty object as no request).
    wait_until(
        "the failover key to be cleared",
        scaled(Duration::from_secs(30)),
        || async {
            Ok(match cluster.etcd().get(&cluster.key("failover")).await? {
                None => true,
                Some(kv) => serde_json::from_str::<Value>(&kv.value)
                    .is_ok_and(|v| v.as_object().is_some_and(|o| o.is_empty())),
            })
        },
    )
    .await?;
    cluster.finish();
    Ok(())
}

/// `2026-11-22T05:00:00+00:00` for seconds since the Unix epoch (by `date`, an oracle
/// independent of pgbaton's own formatting).
fn iso8601_utc(unix: u64) -> anyhow::Result<String> {
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{unix}"), "+%Y-%m-%dT%H:%M:%S+00:00"])
        .output()
        .context("run date")?;
    ensure!(out.status.success(), "date failed");
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// Someone writes garbage into the cluster's keys: agents log a warning naming the key and
/// keep their roles. Garbage in the leader key (a plain put: no lease) does not stop the
/// primary: its holder recognises the key it acquired and writes its name back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_dcs_keys_changes_no_role() -> anyhow::Result<()> {
    let tools = tools_or_skip!("garbage_in_dcs_keys_changes_no_role");
    let mut spec = ClusterSpec::new(2);
    spec.haproxy = None;
    let loop_wait = Duration::from_secs(u64::from(spec.timing.loop_wait));
    let cluster = Cluster::start(&tools, spec).await?;
    let healthy = cluster
        .wait_healthy(scaled(Duration::from_secs(180)))
        .await?;
    let replica = healthy.replicas[0].clone();
    let primary = cluster.node(&healthy.leader).pg();
    let started = primary
        .query_one("SELECT pg_postmaster_start_time()::text")
        .await?;
    for (key, value) in [
        ("leader".to_owned(), ""),
        (format!("members/{replica}"), "{not json"),
        ("failover".to_owned(), "[1,2,3]"),
        ("sync".to_owned(), "\u{1}\u{2}garbage"),
        ("history".to_owned(), "{\"a\":1}"),
        ("status".to_owned(), "\"optime\""),
        ("members/intruder".to_owned(), "42"),
    ] {
        cluster.etcd().put(&cluster.key(&key), value).await?;
    }
    wait_for(
        "the leader to write its name back into the leader key",
        scaled(loop_wait * 3 + Duration::from_secs(10)),
        || async {
            cluster.check_agents_alive()?;
            Ok(match cluster.leader().await? {
                Some(l) if l == healthy.leader => Check::Done(()),
                other => Check::not_yet(format!("leader key holds {other:?}")),
            })
        },
    )
    .await?;
    let since = Instant::now();
    wait_for(
        "roles to stay put for several HA loops",
        scaled(loop_wait * 5 + Duration::from_secs(5)),
        || async {
            cluster.check_agents_alive()?;
            if cluster.leader().await?.as_deref() != Some(healthy.leader.as_str()) {
                bail!("the leader changed after garbage was written");
            }
            let rep = cluster
                .node(&replica)
                .pg()
                .query_one("SELECT pg_is_in_recovery()::text")
                .await?;
            ensure!(rep == "true", "{replica} is not a replica any more");
            let now_started = primary
                .query_one("SELECT pg_postmaster_start_time()::text")
                .await?;
            ensure!(
                now_started == started,
                "the primary was restarted ({started} -> {now_started})"
            );
            Ok(if since.elapsed() > loop_wait * 5 {
                Check::Done(())
            } else {
                Check::not_yet("observing")
            })
        },
    )
    .await?;
    let log = std::fs::read_to_string(&cluster.node(&healthy.leader).log_path)?;
    ensure!(
        log.contains("ignoring invalid DCS data") && log.contains("members/intruder"),
        "no warning naming the bad key in the leader's log"
    );
    ensure!(
        log.contains("the leader key is mine but its value is unreadable"),
        "the leader's log does not say it rewrote the leader key"
    );
    cluster
        .wait_healthy(scaled(Duration::from_secs(60)))
        .await?;
    cluster.finish();
    Ok(())
}

/// Writes go on through HAProxy while `pgbaton switchover` moves the primary to a replica and
/// back: every acknowledged commit is on the final primary, the old primary streams again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_both_ways_under_writes_keeps_every_acknowledged_commit() -> anyhow::Result<()> {
    let tools = tools_or_skip!("switchover_both_ways_under_writes_keeps_every_acknowledged_commit");
    let cluster = Cluster::start(&tools, ClusterSpec::new(3)).await?;
    let healthy = cluster
        .wait_healthy(scaled(Duration::from_secs(180)))
        .await?;
    let first = healthy.leader.clone();
    let target = healthy.replicas[0].clone();
    let via = cluster.via_haproxy_primary();
    simple_query(
        &via.connect().await?,
        "CREATE TABLE acked (id int PRIMARY KEY)",
    )
    .await?;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (via, stop) = (via.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut acked, mut id) = (Vec::new(), 0);
            let mut client = None;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                id += 1;
                if client.is_none() {
                    client = via.connect_with_timeout(Duration::from_secs(1)).await.ok();
                }
                let Some(c) = &client else { continue };
                match tokio::time::timeout(
                    Duration::from_secs(2),
                    c.execute("INSERT INTO acked VALUES ($1)", &[&id]),
                )
                .await
                {
                    Ok(Ok(_)) => acked.push(id),
                    // Failed or unknown outcome: reconnect; the id is never reused.
                    _ => client = None,
                }
            }
            acked
        })
    };

    for (from, to) in [
        (first.clone(), target.clone()),
        (target.clone(), first.clone()),
    ] {
        let text = cluster.cli_switchover(&from, &to, None).await?;
        ensure!(
            text.contains(&format!("Successfully switched over to \"{to}\"")),
            "{text}"
        );
        let now = cluster
            .wait_healthy(scaled(Duration::from_secs(120)))
            .await?;
        ensure!(
            now.leader == to,
            "leader is {} after switching to {to}",
            now.leader
        );
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let acked = writer.await?;
    ensure!(
        acked.len() > 10,
        "the writer got only {} commits acknowledged",
        acked.len()
    );
    let pg = cluster.node(&first).pg();
    let lost = lost_commits(&pg, &acked).await?;
    eprintln!(
        "{} commits acknowledged during two switchovers, {} lost",
        acked.len(),
        lost.len()
    );
    ensure!(lost.is_empty(), "acknowledged commits lost: {lost:?}");
    cluster.finish();
    Ok(())
}

/// Bad switchover requests get Patroni's refusal and change nothing in the DCS; pause keeps a
/// dead primary's replicas from taking over until resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_switchovers_are_refused_and_pause_blocks_failover() -> anyhow::Result<()> {
    let tools = tools_or_skip!("bad_switchovers_are_refused_and_pause_blocks_failover");
    let mut spec = ClusterSpec::new(2);
    spec.haproxy = None;
    let ttl = spec.timing.ttl();
    let mut cluster = Cluster::start(&tools, spec).await?;
    let healthy = cluster
        .wait_healthy(scaled(Duration::from_secs(180)))
        .await?;
    let leader = healthy.leader.clone();
    let replica = healthy.replicas[0].clone();
    let cfg = cluster
        .node(&leader)
        .config_path
        .to_string_lossy()
        .into_owned();

    for (args, refusal) in [
        (vec!["--candidate", "nobody"], "candidate does not exists"),
        (
            vec!["--leader", replica.as_str()],
            "leader name does not match",
        ),
        (
            vec!["--candidate", leader.as_str()],
            "Switchover target and source are the same",
        ),
        (
            vec!["--candidate", replica.as_str(), "--scheduled", "yesterday"],
            "Unable to parse scheduled timestamp",
        ),
    ] {
        let mut all = vec!["-c", cfg.as_str(), "switchover", "--force"];
        all.extend(args);
        let out = cluster.pgbaton_cli(&all).await?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(!out.status.success(), "accepted {all:?}: {text}");
        ensure!(
            text.contains(refusal),
            "{all:?}: expected {refusal:?}, got {text}"
        );
        let failover = cluster.etcd().get(&cluster.key("failover")).await?;
        ensure!(
            failover.is_none(),
            "a refused request wrote the failover key: {failover:?}"
        );
    }
    ensure!(
        cluster.leader().await?.as_deref() == Some(leader.as_str()),
        "the leader moved"
    );

    // Reinitialize: the leader refuses; the replica is wiped, re-cloned and streams again.
    let out = cluster
        .pgbaton_cli(&["-c", &cfg, "reinit", &leader, "--force"])
        .await?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        !out.status.success() && text.contains("I am the leader, can not reinitialize"),
        "{text}"
    );
    let marker = cluster.node(&replica).config.data_dir.join("reinit-marker");
    std::fs::write(&marker, "left by the test")?;
    let out = cluster
        .pgbaton_cli(&["-c", &cfg, "reinit", &replica, "--force", "--wait"])
        .await?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success() && text.contains("reinitialize started"),
        "{text}"
    );
    ensure!(!marker.exists(), "the data directory was not re-created");
    cluster
        .wait_healthy(scaled(Duration::from_secs(120)))
        .await
        .context("after reinit")?;

    let out = cluster
        .pgbaton_cli(&["-c", &cfg, "pause", "--wait"])
        .await?;
    ensure!(
        out.status.success(),
        "pause failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    cluster.kill_host(&leader)?;
    let since = Instant::now();
    wait_for(
        "no failover while paused",
        scaled(ttl * 2 + Duration::from_secs(5)),
        || async {
            let l = cluster.leader().await?;
            if l.as_deref().is_some_and(|l| l != leader) {
                bail!("{l:?} took over while the cluster was paused");
            }
            Ok(if since.elapsed() > ttl * 2 {
                Check::Done(())
            } else {
                Check::not_yet("observing")
            })
        },
    )
    .await?;
    let rcfg = cluster
        .node(&replica)
        .config_path
        .to_string_lossy()
        .into_owned();
    let out = cluster.pgbaton_cli(&["-c", &rcfg, "resume"]).await?;
    ensure!(
        out.status.success(),
        "resume failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new = cluster
        .wait_new_leader(&leader, scaled(ttl + Duration::from_secs(30)))
        .await?;
    ensure!(new == replica, "{new} took over, expected {replica}");
    cluster.finish();
    Ok(())
}

/// The `/sync` key's standbys once the leader has published at least one.
async fn wait_sync_standby(cluster: &Cluster) -> anyhow::Result<(String, Vec<String>)> {
    wait_sync_standbys(cluster, 1).await
}

/// Wait until `/sync` lists at least `min` standbys; its leader and standbys.
async fn wait_sync_standbys(
    cluster: &Cluster,
    min: usize,
) -> anyhow::Result<(String, Vec<String>)> {
    wait_for(
        "the leader to publish a synchronous standby in /sync",
        scaled(Duration::from_secs(60)),
        || async {
            let Some(kv) = cluster.etcd().get(&cluster.key("sync")).await? else {
                return Ok(Check::not_yet("no /sync key"));
            };
            let v: Value = serde_json::from_str(&kv.value)?;
            let leader = v
                .get("leader")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let standbys: Vec<String> = v
                .get("sync_standby")
                .and_then(Value::as_str)
                .map(|s| {
                    s.split(',')
                        .filter(|n| !n.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            Ok(if standbys.len() < min {
                Check::not_yet(format!("/sync is {}", kv.value))
            } else {
                Check::Done((leader, standbys))
            })
        },
    )
    .await
}

fn sync_mode_spec(nodes: usize, strict: bool) -> ClusterSpec {
    sync_spec(nodes, json!(true), strict)
}

/// `synchronous_mode` is `true` (priority) or `"quorum"`.
fn sync_spec(nodes: usize, mode: Value, strict: bool) -> ClusterSpec {
    let mut spec = ClusterSpec::new(nodes);
    spec.extra_config = json!({
        "bootstrap": { "dcs": { "synchronous_mode": mode, "synchronous_mode_strict": strict } }
    });
    spec
}

/// Synchronous mode: the primary's host dies while a writer commits; the member recorded in
/// `/sync` takes over and every acknowledged commit is on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_mode_failover_loses_no_acknowledged_commit() -> anyhow::Result<()> {
    let tools = tools_or_skip!("sync_mode_failover_loses_no_acknowledged_commit");
    sync_failover_keeps_every_ack(&tools, json!(true), "", 1).await
}

/// Quorum mode (`ANY 1 (a,b)` over two standbys, `/sync` quorum 1): the primary's host dies
/// while a writer commits; a voter takes over with the other voter's support and every
/// acknowledged commit is on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_mode_failover_loses_no_acknowledged_commit() -> anyhow::Result<()> {
    let tools = tools_or_skip!("quorum_mode_failover_loses_no_acknowledged_commit");
    // Quorum 1 needs two votes: wait until both standbys are published.
    sync_failover_keeps_every_ack(&tools, json!("quorum"), "ANY 1 (", 2).await
}

/// The body of the two tests above; `ssn_prefix` is what `synchronous_standby_names` must
/// start with once `published` standbys are in `/sync`.
async fn sync_failover_keeps_every_ack(
    tools: &Tools,
    mode: Value,
    ssn_prefix: &str,
    published: usize,
) -> anyhow::Result<()> {
    let spec = sync_spec(3, mode, false);
    let ttl = spec.timing.ttl();
    let mut cluster = Cluster::start(tools, spec).await?;
    let healthy = cluster
        .wait_healthy(scaled(Duration::from_secs(180)))
        .await?;
    let old = healthy.leader.clone();
    let (sync_leader, sync_standbys) = wait_sync_standbys(&cluster, published).await?;
    ensure!(
        sync_leader == old,
        "/sync names {sync_leader}, leader is {old}"
    );
    let ssn = one(&cluster.sql(&old, "SHOW synchronous_standby_names").await?)?;
    eprintln!("/sync standbys {sync_standbys:?}, synchronous_standby_names {ssn:?}");
    ensure!(
        ssn.starts_with(ssn_prefix),
        "synchronous_standby_names is {ssn:?}, expected it to start with {ssn_prefix:?}"
    );

    let pg = cluster.node(&old).pg();
    simple_query(
        &pg.connect().await?,
        "CREATE TABLE acked (id int PRIMARY KEY)",
    )
    .await?;
    // Commits acknowledged by the primary before it dies (synchronous_commit=on waits for the
    // synchronous standby's flush).
    let client = pg.connect().await?;
    let mut acked = Vec::new();
    for id in 1..=300 {
        client
            .execute("INSERT INTO acked VALUES ($1)", &[&id])
            .await?;
        acked.push(id);
    }
    let committed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let in_flight = {
        let committed = committed.clone();
        tokio::spawn(async move {
            // Keeps committing until the host dies: the last acknowledgements are the risky ones.
            let mut more = Vec::new();
            for id in 301..=100_000 {
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&id];
                let insert = client.execute("INSERT INTO acked VALUES ($1)", &params);
                match tokio::time::timeout(Duration::from_secs(2), insert).await {
                    Ok(Ok(_)) => {
                        more.push(id);
                        committed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    _ => break,
                }
            }
            more
        })
    };
    wait_until(
        "the writer to be committing",
        scaled(Duration::from_secs(30)),
        || async { Ok(committed.load(std::sync::atomic::Ordering::SeqCst) >= 50) },
    )
    .await?;
    cluster.kill_host(&old)?;
    acked.extend(in_flight.await?);

    let new = cluster
        .wait_new_leader(&old, scaled(ttl + Duration::from_secs(30)))
        .await?;
    ensure!(
        sync_standbys.contains(&new),
        "{new} took over but /sync listed {sync_standbys:?}"
    );
    let new_pg = cluster.node(&new).pg();
    wait_for(
        "the new leader to accept writes",
        scaled(Duration::from_secs(30)),
        || async {
            Ok(
                match new_pg.query_one("SELECT pg_is_in_recovery()::text").await {
                    Ok(v) if v == "false" => Check::Done(()),
                    other => Check::not_yet(format!("{other:?}")),
                },
            )
        },
    )
    .await?;
    let lost = lost_commits(&new_pg, &acked).await?;
    eprintln!(
        "{} commits acknowledged, {} lost; new leader {new}",
        acked.len(),
        lost.len()
    );
    ensure!(
        lost.is_empty(),
        "acknowledged commits lost in synchronous mode: {lost:?}"
    );
    cluster.finish();
    Ok(())
}

/// Synchronous mode: when the primary and its synchronous standby die together, the
/// remaining asynchronous standby must not promote (it may lack acknowledged commits).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_mode_no_promotion_outside_sync() -> anyhow::Result<()> {
    let tools = tools_or_skip!("sync_mode_no_promotion_outside_sync");
    let mut spec = sync_mode_spec(3, false);
    spec.haproxy = None;
    let ttl = spec.timing.ttl();
    let mut cluster = Cluster::start(&tools, spec).await?;
    let healthy = cluster
        .wait_healthy(scaled(Duration::from_secs(180)))
        .await?;
    let (_, sync_standbys) = wait_sync_standby(&cluster).await?;
    let sync = sync_standbys[0].clone();
    let async_one = healthy
        .replicas
        .iter()
        .find(|r| !sync_standbys.contains(r))
        .cloned()
        .context("no asynchronous standby")?;
    cluster.kill_host(&healthy.leader)?;
    cluster.kill_host(&sync)?;
    let since = Instant::now();
    wait_for(
        "no promotion outside /sync",
        scaled(ttl * 2 + Duration::from_secs(5)),
        || async {
            // The dead leader's key lingers until its lease expires; anybody else is a violation.
            let l = cluster.leader().await?;
            if l.as_deref().is_some_and(|l| l != healthy.leader) {
                bail!("{l:?} became leader although only the asynchronous {async_one} was left");
            }
            let rec = cluster
                .node(&async_one)
                .pg()
                .query_one("SELECT pg_is_in_recovery()::text")
                .await;
            ensure!(
                rec.as_deref().unwrap_or("true") == "true",
                "{async_one} promoted"
            );
            Ok(if since.elapsed() > ttl * 2 {
                Check::Done(())
            } else {
                Check::not_yet("observing")
            })
        },
    )
    .await?;
    let log = std::fs::read_to_string(&cluster.node(&async_one).log_path)?;
    ensure!(
        log.contains("not a synchronous standby"),
        "no reason logged by {async_one}"
    );
    cluster.finish();
    Ok(())
}

// ----- helpers -----

/// A log line saying the agent could not reach the DCS and is waiting or will try again:
/// it mentions etcd, the DCS or etcd's address, and a retry, a wait or a failure.
fn is_dcs_retry_line(line: &str, etcd_hosts: &[String]) -> bool {
    let l = line.to_lowercase();
    if l.contains("===== harness") {
        return false;
    }
    let about_dcs = l.contains("etcd")
        || l.contains("dcs")
        || etcd_hosts.iter().any(|h| l.contains(h.as_str()));
    let retrying = [
        "retry",
        "retrying",
        "waiting",
        "unavailable",
        "unreachable",
        "refused",
        "will try",
        "failed",
        "error",
    ]
    .iter()
    .any(|w| l.contains(w));
    about_dcs && retrying
}

/// The acknowledged ids missing from table `acked` on `target`.
async fn lost_commits(target: &PgTarget, acked: &[i32]) -> anyhow::Result<Vec<i32>> {
    let present: std::collections::BTreeSet<i32> = target
        .query("SELECT id::text FROM acked")
        .await?
        .into_iter()
        .filter_map(|r| r.first().cloned().flatten()?.parse().ok())
        .collect();
    Ok(acked
        .iter()
        .copied()
        .filter(|id| !present.contains(id))
        .collect())
}

/// The single value of a one-row, one-column result.
fn one(rows: &[Vec<Option<String>>]) -> anyhow::Result<String> {
    match rows {
        [row] if row.len() == 1 => row[0].clone().context("NULL"),
        _ => bail!("expected one value, got {rows:?}"),
    }
}

async fn count_rows(target: &PgTarget, phase: &str) -> anyhow::Result<i32> {
    let n = target
        .query_one(&format!(
            "SELECT count(*) FROM baton_it WHERE phase = '{phase}'"
        ))
        .await?;
    n.parse().with_context(|| format!("count {n:?}"))
}

/// The timeline a node is on: `/patroni`'s `timeline`, or else the last checkpoint's.
async fn timeline_of(cluster: &Cluster, name: &str) -> anyhow::Result<i64> {
    let status = cluster.node(name).patroni().await?;
    if let Some(tl) = status.get("timeline").and_then(Value::as_i64) {
        return Ok(tl);
    }
    let tl = cluster
        .node(name)
        .pg()
        .query_one("SELECT timeline_id FROM pg_control_checkpoint()")
        .await?;
    tl.parse().with_context(|| format!("timeline {tl:?}"))
}

/// A connection through HAProxy's primary port that reaches a primary on `want_port`.
async fn connect_to_primary(
    via: &PgTarget,
    want_port: &str,
) -> anyhow::Result<Check<tokio_postgres::Client>> {
    let client = match via.connect_with_timeout(Duration::from_secs(2)).await {
        Ok(c) => c,
        Err(e) => return Ok(Check::not_yet(format!("{e:#}"))),
    };
    let rows = match simple_query(
        &client,
        "SELECT pg_is_in_recovery()::text, inet_server_port()::text",
    )
    .await
    {
        Ok(r) => r,
        Err(e) => return Ok(Check::not_yet(format!("{e:#}"))),
    };
    let (in_recovery, port) = match rows.as_slice() {
        [row] if row.len() == 2 => (row[0].clone(), row[1].clone()),
        _ => bail!("unexpected reply {rows:?}"),
    };
    if in_recovery.as_deref() != Some("false") {
        return Ok(Check::not_yet(format!(
            "HAProxy routed to port {port:?}, which is in recovery"
        )));
    }
    if port.as_deref() != Some(want_port) {
        bail!(
            "HAProxy routed writes to a primary on port {port:?}, but the leader is on {want_port}"
        );
    }
    Ok(Check::Done(client))
}

/// The sampler saw at most one primary at a time, and leadership went from `old` to `new`
/// and nowhere else.
fn check_samples(report: &SampleReport, old: &str, new: &str) -> anyhow::Result<()> {
    eprintln!(
        "sampler: {} rounds, leader history {:?}, primaries seen {:?}",
        report.rounds, report.leader_history, report.primaries_seen
    );
    ensure!(report.rounds > 0, "the sampler took no samples");
    ensure!(
        report.violations.is_empty(),
        "two primaries at once: {:?}",
        report.violations
    );
    let leaders: Vec<String> = report.leaders().into_iter().filter(|l| l != old).collect();
    ensure!(
        leaders == [new],
        "leaders after the kill: {leaders:?}, want only {new}"
    );
    ensure!(
        report.primaries_seen == [old, new],
        "primaries seen: {:?}, want {old} then {new}",
        report.primaries_seen
    );
    Ok(())
}

/// The member of `names` that is not `not`.
fn other(names: &[String], not: &str) -> String {
    names
        .iter()
        .find(|n| *n != not)
        .cloned()
        .unwrap_or_default()
}

/// `pgbaton list --format json` shows `leader` as Leader and each of `replicas` as a
/// streaming Replica.
fn check_list(members: &[Value], leader: &str, replicas: &[String]) -> Check<()> {
    let field = |m: &Value, k: &str| m.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    if members.len() != replicas.len() + 1 {
        return Check::not_yet(format!("list shows {} members: {members:?}", members.len()));
    }
    for m in members {
        let (name, role, state) = (field(m, "Member"), field(m, "Role"), field(m, "State"));
        let ok = if name == leader {
            role == "Leader" && state == "running"
        } else if replicas.contains(&name) {
            // "Replica", "Sync Standby" or "Quorum Standby".
            (role == "Replica" || role.ends_with("Standby")) && state == "streaming"
        } else {
            false
        };
        if !ok {
            return Check::not_yet(format!("list row {m}"));
        }
    }
    Check::Done(())
}
