//! `make bench`: pgbaton's performance figures on a 3-node loopback cluster (real etcd, real
//! PostgreSQL 15, real agents), reported as a table and as JSON; never pass/fail.
//!
//! ```text
//! bench [--iterations N] [--idle-secs S] [--wrk-secs S] [--peer patroni] [--out DIR]
//! ```
//!
//! Scenarios (figures and how to read them: README.md, "Benchmarks"):
//! - primary host killed (agent + every PostgreSQL process SIGKILLed) at ttl 20 and ttl 5:
//!   time to a writable new primary, the lease time left at the kill, the difference;
//! - planned switchover under a writer: write gap, request-to-writable, acknowledged commits lost,
//!   how long after the new primary is writable its `/primary` answers 200, and how long after
//!   the promotion itself (`pg_is_in_recovery()` false, polled every 5 ms);
//! - PostgreSQL crash on the primary with the agent alive: time until `/primary` stops answering
//!   200 (noticed) and until a write commits again;
//! - idle agent RSS and CPU, etcd requests per minute at idle;
//! - `GET /primary` with `wrk` at 16 and 64 connections;
//! - region switchover (`region`, pgbaton only): two 3-member clusters with their own etcd, the
//!   second a standby cluster of the first; `pgbaton region-switchover` under a writer that
//!   commits on whichever member of either cluster takes it, alternating direction per
//!   iteration: write gap, command duration, acknowledged commits lost, how long until the old
//!   region is a healthy standby cluster of the new one;
//! - `pgbaton drill` (`drill`, pgbaton only): the switchover drill's own RTO and RPO.
//!
//! "Writable" means an INSERT committed: a writer commits one row every 10 ms, trying each
//! node's port directly, and records every acknowledged commit.
//! `--peer patroni` runs the same scenarios with Patroni (through `scripts/patroni-as-pgbaton`,
//! Patroni from `$BATON_REFERENCE_BIN_DIR`, default `/tmp/patroni-venv/bin`) and prints ratios.
//! Output: `$CARGO_TARGET_DIR/bench/` if set, else `<repo>/target/bench/`, or `--out`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use baton_integration_tests::{Cluster, ClusterSpec, PgTarget, Timing, Tools, simple_query};
use serde_json::{Value, json};
use tokio_postgres::Client;

struct Args {
    iterations: usize,
    idle_secs: u64,
    /// `--settle-secs`: how long the cluster runs before the idle window opens.
    settle_secs: u64,
    wrk_secs: u64,
    peer: Option<String>,
    out: PathBuf,
    /// `--only`: the scenarios to run (all when `None`).
    only: Option<BTreeSet<String>>,
}

/// Scenario names for `--only`.
const SCENARIOS: &[&str] = &[
    "idle",
    "wrk",
    "switchover",
    "crash",
    "kill20",
    "kill5",
    "region",
    "drill",
];

/// The scenarios that run on cluster A (ttl 20); `region` brings clusters of its own.
const CLUSTER_A_SCENARIOS: &[&str] = &["idle", "wrk", "switchover", "crash", "kill20", "drill"];

impl Args {
    fn runs(&self, scenario: &str) -> bool {
        self.only.as_ref().is_none_or(|o| o.contains(scenario))
    }
}

fn parse_args() -> anyhow::Result<Args> {
    let out = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) => PathBuf::from(t).join("bench"),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench"),
    };
    let mut args = Args {
        iterations: 3,
        idle_secs: 20,
        settle_secs: 5,
        wrk_secs: 10,
        peer: None,
        out,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--iterations" => args.iterations = val()?.parse()?,
            "--idle-secs" => args.idle_secs = val()?.parse()?,
            "--settle-secs" => args.settle_secs = val()?.parse()?,
            "--wrk-secs" => args.wrk_secs = val()?.parse()?,
            "--peer" => args.peer = Some(val()?),
            "--out" => args.out = PathBuf::from(val()?),
            "--only" => {
                let only: BTreeSet<String> = val()?.split(',').map(str::to_owned).collect();
                if let Some(bad) = only.iter().find(|s| !SCENARIOS.contains(&s.as_str())) {
                    bail!(
                        "--only: unknown scenario {bad:?} (one of {})",
                        SCENARIOS.join(",")
                    );
                }
                args.only = Some(only);
            }
            "-h" | "--help" => {
                println!(
                    "bench [--iterations N (3)] [--idle-secs S (20)] [--settle-secs S (5)] \
                     [--wrk-secs S (10)] \
                     [--peer patroni] [--out DIR] [--only {}]",
                    SCENARIOS.join(",")
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    if args.iterations == 0 {
        bail!("--iterations must be at least 1");
    }
    Ok(args)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("create {}", args.out.display()))?;
    let tools =
        Tools::discover().map_err(|missing| anyhow::anyhow!("missing: {}", missing.join("; ")))?;
    let wrk = find_in_path("wrk");
    if wrk.is_none() {
        eprintln!("bench: wrk not found; GET /primary throughput is skipped (apt-get install wrk)");
    }
    let started = chrono_like_now();
    let machine = machine_description();
    eprintln!("bench: {machine}; iterations {}", args.iterations);

    let mut runs = Vec::new();
    let ours = run_suite("pgbaton", &tools, &args, wrk.as_ref()).await?;
    runs.push(ours);
    if let Some(peer) = &args.peer {
        if peer != "patroni" {
            bail!("--peer: only \"patroni\" is supported");
        }
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/patroni-as-pgbaton");
        if std::env::var_os("BATON_REFERENCE_BIN_DIR").is_none() {
            bail!(
                "--peer patroni: set BATON_REFERENCE_BIN_DIR to the directory holding `patroni` \
                 (make bench-patroni uses /tmp/patroni-venv/bin)"
            );
        }
        let mut peer_tools = tools.clone();
        peer_tools.pgbaton = script
            .canonicalize()
            .context("scripts/patroni-as-pgbaton")?;
        runs.push(run_suite("patroni", &peer_tools, &args, wrk.as_ref()).await?);
    }

    let report = json!({
        "date": started,
        "machine": machine,
        "iterations": args.iterations,
        "idle_secs": args.idle_secs,
        "settle_secs": args.settle_secs,
        "wrk_secs": args.wrk_secs,
        "load_average_at_end": load_average(),
        "runs": runs,
    });
    let table = render_table(&report);
    println!("{table}");
    let json_path = args.out.join("bench.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)?)?;
    std::fs::write(args.out.join("bench.md"), &table)?;
    eprintln!(
        "bench: wrote {} and {}",
        json_path.display(),
        args.out.join("bench.md").display()
    );
    Ok(())
}

// ----- the suite -----

async fn run_suite(
    label: &str,
    tools: &Tools,
    args: &Args,
    wrk: Option<&PathBuf>,
) -> anyhow::Result<Value> {
    eprintln!("\n===== bench: {label} =====");
    let ttl20 = Timing {
        ttl: 20,
        loop_wait: 5,
        retry_timeout: 7,
    };
    let ttl5 = Timing {
        ttl: 5,
        loop_wait: 1,
        retry_timeout: 2,
    };
    let mut out = serde_json::Map::new();
    out.insert("agent".into(), json!(label));

    // Cluster A: ttl 20 / loop_wait 5 / retry_timeout 7.
    out.insert("binary".into(), binary_description(tools));
    if args.runs("region") {
        let v = if label == "pgbaton" {
            region_switchovers(tools, ttl20, args.iterations).await?
        } else {
            json!({ "skipped": PGBATON_ONLY })
        };
        out.insert("region_switchover".into(), v);
    }
    if !CLUSTER_A_SCENARIOS.iter().any(|s| args.runs(s)) && !args.runs("kill5") {
        return Ok(Value::Object(out));
    }
    let mut cluster = start_cluster(tools, ttl20).await?;
    prepare_schema(&cluster).await?;
    if args.runs("idle") {
        out.insert(
            "idle".into(),
            idle_sample(&cluster, args.idle_secs, args.settle_secs).await?,
        );
    }
    if let Some(wrk) = wrk.filter(|_| args.runs("wrk")) {
        out.insert(
            "get_primary".into(),
            wrk_primary(&cluster, wrk, args.wrk_secs).await?,
        );
    }
    if args.runs("switchover") {
        let mut sw = Vec::new();
        for i in 0..args.iterations {
            sw.push(switchover(&cluster, i).await?);
        }
        out.insert("switchover".into(), summarise(sw));
    }
    if args.runs("crash") {
        let mut crash = Vec::new();
        for i in 0..args.iterations {
            crash.push(pg_crash(&cluster, i).await?);
        }
        out.insert("pg_crash".into(), summarise(crash));
    }
    if args.runs("kill20") {
        let mut kills = Vec::new();
        for i in 0..args.iterations {
            kills.push(kill_primary(&mut cluster, i).await?);
        }
        out.insert("kill_primary_ttl20".into(), summarise(kills));
    }
    if args.runs("drill") {
        let v = if label == "pgbaton" {
            let mut drills = Vec::new();
            for i in 0..args.iterations {
                drills.push(drill(&cluster, i).await?);
            }
            summarise(drills)
        } else {
            json!({ "skipped": PGBATON_ONLY })
        };
        out.insert("drill".into(), v);
    }
    cluster.finish();
    if !args.runs("kill5") {
        return Ok(Value::Object(out));
    }

    // Cluster B: ttl 5 / loop_wait 1 / retry_timeout 2.
    let mut cluster = start_cluster(tools, ttl5).await?;
    prepare_schema(&cluster).await?;
    let mut kills = Vec::new();
    for i in 0..args.iterations {
        kills.push(kill_primary(&mut cluster, i).await?);
    }
    out.insert("kill_primary_ttl5".into(), summarise(kills));
    cluster.finish();
    Ok(Value::Object(out))
}

async fn start_cluster(tools: &Tools, timing: Timing) -> anyhow::Result<Cluster> {
    let mut spec = ClusterSpec::new(3);
    spec.timing = timing;
    spec.haproxy = None;
    let cluster = Cluster::start(tools, spec).await?;
    let healthy = cluster.wait_healthy(Duration::from_secs(240)).await?;
    eprintln!(
        "bench: ttl {} cluster healthy, leader {}",
        timing.ttl, healthy.leader
    );
    Ok(cluster)
}

async fn prepare_schema(cluster: &Cluster) -> anyhow::Result<()> {
    let leader = cluster.leader().await?.context("no leader")?;
    cluster
        .node(&leader)
        .pg()
        .execute("CREATE TABLE IF NOT EXISTS bench_w (run int NOT NULL, id bigint NOT NULL)")
        .await
}

async fn wait_healthy(cluster: &Cluster) -> anyhow::Result<String> {
    Ok(cluster.wait_healthy(Duration::from_secs(240)).await?.leader)
}

// ----- the writer -----

#[derive(Clone, Copy, Debug)]
struct Ack {
    id: i64,
    node: usize,
    at: Instant,
}

struct Writer {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Ack>>,
    run: i32,
}

static RUN: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(1);

impl Writer {
    /// Commit one row every 10 ms on whichever node accepts it (each node's port directly).
    fn start(cluster: &Cluster) -> Writer {
        Writer::start_on(cluster.nodes().iter().map(|n| n.pg()).collect())
    }

    /// The same on `targets` (the region switchover: the members of both clusters).
    fn start_on(targets: Vec<PgTarget>) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let run = RUN.fetch_add(1, Ordering::SeqCst);
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut conns: Vec<Option<Client>> = targets.iter().map(|_| None).collect();
            let mut acks = Vec::new();
            let (mut current, mut next_id) = (0usize, 1i64);
            while !flag.load(Ordering::SeqCst) {
                let mut ok = false;
                for k in 0..targets.len() {
                    let idx = (current + k) % targets.len();
                    if conns[idx].is_none() {
                        conns[idx] = targets[idx]
                            .connect_with_timeout(Duration::from_millis(500))
                            .await
                            .ok();
                    }
                    let Some(c) = &conns[idx] else { continue };
                    let id = next_id;
                    next_id += 1;
                    let sql = format!("INSERT INTO bench_w (run, id) VALUES ({run}, {id})");
                    match tokio::time::timeout(Duration::from_millis(1000), c.simple_query(&sql))
                        .await
                    {
                        Ok(Ok(_)) => {
                            acks.push(Ack {
                                id,
                                node: idx,
                                at: Instant::now(),
                            });
                            current = idx;
                            ok = true;
                            break;
                        }
                        Ok(Err(e)) if e.as_db_error().is_some() && !c.is_closed() => {}
                        _ => conns[idx] = None,
                    }
                }
                tokio::time::sleep(Duration::from_millis(if ok { 10 } else { 20 })).await;
            }
            acks
        });
        Writer { stop, task, run }
    }

    async fn stop(self) -> anyhow::Result<(i32, Vec<Ack>)> {
        self.stop.store(true, Ordering::SeqCst);
        Ok((self.run, self.task.await?))
    }
}

/// Poll every 20 ms, on every node not in `skip` concurrently (one task per node, so a node
/// that hangs does not delay the others), until an INSERT commits; `(when, node)`.
async fn wait_writable(
    cluster: &Cluster,
    skip: &[usize],
    timeout: Duration,
) -> anyhow::Result<(Instant, usize)> {
    let mut set = tokio::task::JoinSet::new();
    for (idx, node) in cluster.nodes().iter().enumerate() {
        if skip.contains(&idx) {
            continue;
        }
        let target = node.pg();
        set.spawn(async move {
            let mut conn: Option<Client> = None;
            loop {
                if conn.is_none() {
                    conn = target
                        .connect_with_timeout(Duration::from_millis(300))
                        .await
                        .ok();
                }
                if let Some(c) = &conn {
                    match tokio::time::timeout(
                        Duration::from_millis(500),
                        c.simple_query("INSERT INTO bench_w (run, id) VALUES (0, 0)"),
                    )
                    .await
                    {
                        Ok(Ok(_)) => return (Instant::now(), idx),
                        Ok(Err(e)) if e.as_db_error().is_some() && !c.is_closed() => {}
                        _ => conn = None,
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }
    let first = tokio::time::timeout(timeout, set.join_next()).await;
    set.abort_all();
    match first {
        Ok(Some(r)) => Ok(r?),
        Ok(None) => bail!("no node to probe"),
        Err(_) => bail!("no node other than {skip:?} became writable within {timeout:?}"),
    }
}

/// Poll `SELECT pg_is_in_recovery()` on `target` every `every` (one connection, made again
/// when it breaks) until it answers false: when the standby was promoted (within `every` plus
/// one query), `None` after 120 s.
fn watch_promoted(target: PgTarget, every: Duration) -> tokio::task::JoinHandle<Option<Instant>> {
    tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut conn: Option<Client> = None;
        while Instant::now() < deadline {
            if conn.is_none() {
                conn = target
                    .connect_with_timeout(Duration::from_millis(300))
                    .await
                    .ok();
            }
            if let Some(c) = &conn {
                match tokio::time::timeout(
                    Duration::from_millis(500),
                    c.simple_query("SELECT pg_is_in_recovery()"),
                )
                .await
                {
                    Ok(Ok(rows)) => {
                        let in_recovery = rows.iter().find_map(|m| match m {
                            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0),
                            _ => None,
                        });
                        if in_recovery == Some("f") {
                            return Some(Instant::now());
                        }
                    }
                    _ => conn = None,
                }
            }
            tokio::time::sleep(every).await;
        }
        None
    })
}

/// Poll `GET <path>` on `base` every `every` until its status satisfies `want`.
fn watch_status(
    base: String,
    path: &'static str,
    want: fn(u16, &str) -> bool,
    every: Duration,
) -> tokio::task::JoinHandle<Option<Instant>> {
    tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_millis(500))
            .build()
            .ok()?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            let (code, body) = match http.get(format!("{base}{path}")).send().await {
                Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
                Err(_) => (0, String::new()),
            };
            if want(code, &body) {
                return Some(Instant::now());
            }
            tokio::time::sleep(every).await;
        }
        None
    })
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

fn signed_ms(a: Instant, b: Instant) -> f64 {
    if a >= b { ms(a - b) } else { -ms(b - a) }
}

fn index_of(cluster: &Cluster, name: &str) -> usize {
    cluster
        .nodes()
        .iter()
        .position(|n| n.name == name)
        .expect("known node")
}

// ----- scenarios -----

/// The primary's host dies. Returns one iteration's figures.
async fn kill_primary(cluster: &mut Cluster, iteration: usize) -> anyhow::Result<Value> {
    let old = wait_healthy(cluster).await?;
    let old_idx = index_of(cluster, &old);
    let etcd = cluster.etcd().client();
    let leader_key = cluster.key("leader");
    let kv = etcd.get(&leader_key).await?.context("no leader key")?;
    let (etcd_ttl, granted) = if kv.lease != 0 {
        etcd.lease_ttl(kv.lease).await.unwrap_or((-1, -1))
    } else {
        (-1, -1)
    };
    // Watch the old leader key go (expire or be replaced), every 20 ms.
    let watcher = {
        let (etcd, key, old_kv) = (etcd.clone(), leader_key.clone(), kv.clone());
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(180);
            while Instant::now() < deadline {
                match etcd.get(&key).await {
                    Ok(Some(kv)) if kv.create_revision == old_kv.create_revision => {}
                    Ok(_) => return Some(Instant::now()),
                    Err(_) => {}
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            None
        })
    };
    let t_kill = Instant::now();
    cluster.kill_host(&old)?;
    let timeout = cluster.spec().timing.ttl() * 3 + Duration::from_secs(60);
    let (t_writable, new_idx) = wait_writable(cluster, &[old_idx], timeout).await?;
    let t_expired = watcher
        .await?
        .context("the old leader key never went away")?;
    let new = cluster.nodes()[new_idx].name.clone();
    let row = json!({
        "iteration": iteration,
        "old": old,
        "new": new,
        "lease_ttl_etcd_at_kill_s": etcd_ttl,
        "lease_granted_s": granted,
        "lease_left_ms": signed_ms(t_expired, t_kill),
        "writable_after_kill_ms": signed_ms(t_writable, t_kill),
        "writable_after_lease_expiry_ms": signed_ms(t_writable, t_expired),
    });
    eprintln!(
        "bench: kill primary (ttl {}): {row}",
        cluster.spec().timing.ttl
    );
    cluster.start_agent(&old)?;
    wait_healthy(cluster).await?;
    Ok(row)
}

/// Planned switchover to a replica while a writer commits every 10 ms.
async fn switchover(cluster: &Cluster, iteration: usize) -> anyhow::Result<Value> {
    let old = wait_healthy(cluster).await?;
    let cand = cluster
        .names()
        .into_iter()
        .find(|n| *n != old)
        .context("no replica")?;
    let cand_idx = index_of(cluster, &cand);
    let writer = Writer::start(cluster);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let primary_watch = watch_status(
        cluster.node(&cand).rest_base(),
        "/primary",
        |c, _| c == 200,
        Duration::from_millis(10),
    );
    // The promotion itself: the candidate's `pg_is_in_recovery()` turns false (polled every
    // 5 ms on one kept connection), for "role change visible on /primary after promotion".
    let promoted_watch = watch_promoted(cluster.node(&cand).pg(), Duration::from_millis(5));
    let old_idx = index_of(cluster, &old);
    let t_req = Instant::now();
    // The request and the 20 ms write probe run together: the probe must not wait for the answer.
    let base = cluster.node(&old).rest_base();
    let body = json!({ "leader": old, "candidate": cand });
    let answered = async {
        let r = post_json(&base, "/switchover", &body).await;
        (r, Instant::now())
    };
    let skip = [old_idx];
    let probe = wait_writable(cluster, &skip, Duration::from_secs(120));
    let ((reply, t_answered), writable) = tokio::join!(answered, probe);
    let (status, body) = match reply {
        Ok(r) => r,
        Err(e) => {
            let _ = writer.stop().await;
            return Err(e);
        }
    };
    if !(200..300).contains(&status) {
        let _ = writer.stop().await;
        bail!("POST /switchover answered {status}: {body}");
    }
    let (t_writable, new_idx) = writable?;
    if new_idx != cand_idx {
        bail!(
            "switchover: {} became writable, not {cand}",
            cluster.nodes()[new_idx].name
        );
    }
    let t_primary = primary_watch
        .await?
        .context("/primary never answered 200")?;
    let t_promoted = promoted_watch.await.ok().flatten();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (run, acks) = writer.stop().await?;
    // The writer's first commit on the candidate, for comparison with the 20 ms probe.
    let first_new = acks.iter().find(|a| a.node == cand_idx && a.at >= t_req);
    let gap = acks
        .windows(2)
        .filter(|w| w[1].at >= t_req)
        .map(|w| w[1].at - w[0].at)
        .max()
        .unwrap_or_default();
    let new = wait_healthy(cluster).await?;
    let lost = lost_acks(cluster, &new, run, &acks).await?;
    let row = json!({
        "iteration": iteration,
        "old": old,
        "new": new,
        "request_answered_ms": ms(t_answered - t_req),
        "writable_after_request_ms": signed_ms(t_writable, t_req),
        "writer_first_commit_on_new_ms": first_new.map(|a| signed_ms(a.at, t_req)),
        "write_gap_ms": ms(gap),
        "acked_commits": acks.len(),
        "acked_commits_lost": lost,
        "primary_endpoint_after_writable_ms": signed_ms(t_primary, t_writable),
        "promoted_after_request_ms": t_promoted.map(|t| signed_ms(t, t_req)),
        "primary_endpoint_after_promotion_ms": t_promoted.map(|t| signed_ms(t_primary, t)),
    });
    eprintln!("bench: switchover: {row}");
    Ok(row)
}

/// How many acknowledged commits of `run` are missing on `leader`.
async fn lost_acks(
    cluster: &Cluster,
    leader: &str,
    run: i32,
    acks: &[Ack],
) -> anyhow::Result<usize> {
    let client = cluster.node(leader).pg().connect().await?;
    let rows = simple_query(
        &client,
        &format!("SELECT id FROM bench_w WHERE run = {run}"),
    )
    .await?;
    let have: BTreeSet<i64> = rows
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .filter_map(|s| s.parse().ok())
        .collect();
    Ok(acks.iter().filter(|a| !have.contains(&a.id)).count())
}

/// PostgreSQL crashes on the primary (postmaster and children SIGKILLed); the agent lives.
async fn pg_crash(cluster: &Cluster, iteration: usize) -> anyhow::Result<Value> {
    let leader = wait_healthy(cluster).await?;
    let node = cluster.node(&leader);
    let noticed = watch_status(
        node.rest_base(),
        "/primary",
        |c, _| c != 200,
        Duration::from_millis(20),
    );
    let state_changed = watch_status(
        node.rest_base(),
        "/patroni",
        |_, body| !body.contains("\"running\""),
        Duration::from_millis(20),
    );
    let t_kill = Instant::now();
    baton_integration_tests::kill_postmaster(&node.config.data_dir)
        .context("no postmaster to kill")?;
    let (t_writable, idx) = wait_writable(cluster, &[], Duration::from_secs(180)).await?;
    // Give the watchers a moment past "writable" (they may poll just behind), then stop them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    noticed.abort();
    state_changed.abort();
    let t_noticed = noticed.await.ok().flatten();
    let t_state = state_changed.await.ok().flatten();
    let row = json!({
        "iteration": iteration,
        "primary": leader,
        "writable_on": cluster.nodes()[idx].name,
        // null: /primary answered 200 at every 20 ms poll until PostgreSQL was writable again.
        "noticed_ms": t_noticed.map(|t| signed_ms(t, t_kill)),
        // null: /patroni said "running" at every poll.
        "patroni_state_not_running_ms": t_state.map(|t| signed_ms(t, t_kill)),
        "writable_again_ms": signed_ms(t_writable, t_kill),
    });
    eprintln!("bench: pg crash: {row}");
    Ok(row)
}

async fn post_json(base: &str, path: &str, body: &Value) -> anyhow::Result<(u16, String)> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()?;
    let resp = http
        .post(format!("{base}{path}"))
        .json(body)
        .send()
        .await
        .with_context(|| format!("POST {base}{path}"))?;
    let status = resp.status().as_u16();
    Ok((status, resp.text().await.unwrap_or_default()))
}

// ----- idle resources -----

/// Processes of an agent: the agent pid and its descendants, minus PostgreSQL and `runuser`.
fn agent_pids(root: i32) -> Vec<i32> {
    let mut all: Vec<(i32, i32, String)> = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if let Some((ppid, comm)) = stat_ppid_comm(pid) {
                all.push((pid, ppid, comm));
            }
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(all.iter().filter(|(_, pp, _)| *pp == p).map(|(c, _, _)| *c));
        i += 1;
    }
    tree.into_iter()
        .filter(|p| {
            all.iter()
                .find(|(pid, _, _)| pid == p)
                .is_some_and(|(_, _, comm)| comm != "postgres" && comm != "runuser")
        })
        .collect()
}

fn stat_ppid_comm(pid: i32) -> Option<(i32, String)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (open, close) = (s.find('(')?, s.rfind(')')?);
    let comm = s[open + 1..close].to_owned();
    let rest: Vec<&str> = s[close + 2..].split_whitespace().collect();
    Some((rest.get(1)?.parse().ok()?, comm))
}

/// CPU ticks (utime + stime) of `pid`.
fn cpu_ticks(pid: i32) -> u64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let Some(close) = s.rfind(')') else { return 0 };
    let rest: Vec<&str> = s[close + 2..].split_whitespace().collect();
    // Fields after the comm: state(0) ppid(1) ... utime(11) stime(12).
    rest.get(11)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        + rest
            .get(12)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
}

/// CPU ticks (cutime + cstime) of the children `pid` waited for.
fn child_cpu_ticks(pid: i32) -> u64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let Some(close) = s.rfind(')') else { return 0 };
    let rest: Vec<&str> = s[close + 2..].split_whitespace().collect();
    // cutime(13) cstime(14).
    [13, 14]
        .iter()
        .filter_map(|i| rest.get(*i).and_then(|v| v.parse::<u64>().ok()))
        .sum()
}

/// Context switches (voluntary + involuntary) of each thread of `pid`, by thread id, with the
/// thread's name: a voluntary switch is a wake-up after a sleep, the idle cost that matters.
fn thread_switches(pid: i32) -> BTreeMap<i32, (String, u64)> {
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(tid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        let comm = status
            .lines()
            .find_map(|l| l.strip_prefix("Name:"))
            .map_or_else(String::new, |n| n.trim().to_owned());
        out.insert(
            tid,
            (
                comm,
                field("voluntary_ctxt_switches:") + field("nonvoluntary_ctxt_switches:"),
            ),
        );
    }
    out
}

/// Wake-ups per minute of each thread between two [`thread_switches`] samples (threads that
/// ended in between are left out; a thread that started counts from zero).
fn wakeups_per_min(
    before: &BTreeMap<i32, (String, u64)>,
    after: &BTreeMap<i32, (String, u64)>,
    elapsed_s: f64,
) -> Vec<Value> {
    after
        .iter()
        .map(|(tid, (comm, n))| {
            let n0 = before.get(tid).map_or(0, |(_, n0)| *n0);
            json!({
                "tid": tid,
                "comm": comm,
                "wakeups_per_min": ((n.saturating_sub(n0)) as f64 / elapsed_s * 600.0).round() / 10.0,
            })
        })
        .collect()
}

fn rss_kb(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// A `kB` field of `/proc/<pid>/status`.
fn status_kb(pid: i32, field: &str) -> Option<u64> {
    kb_field(
        &std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
        field,
    )
}

/// A `kB` field of `/proc/<pid>/smaps_rollup`.
fn smaps_rollup_kb(pid: i32, field: &str) -> Option<u64> {
    kb_field(
        &std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?,
        field,
    )
}

fn kb_field(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// One etcd member's gRPC counters by method (`Range`, `Txn`, `LeaseKeepAlive`, ...), from its
/// `/metrics` (go-grpc-prometheus; etcd 3.4 names them `grpc_server_*`, some builds prefix
/// `etcd_`).
#[derive(Clone, Debug, Default, PartialEq)]
struct GrpcCounters {
    /// `grpc_server_msg_received_total`: request messages (every keep-alive message on a
    /// stream counts, as does every watch create/cancel request).
    received: BTreeMap<String, f64>,
    /// `grpc_server_handled_total` summed over codes: completed calls (a stream counts once,
    /// when it ends).
    handled: BTreeMap<String, f64>,
    /// `grpc_server_msg_sent_total`: response messages (for `Watch`, the event batches sent).
    sent: BTreeMap<String, f64>,
}

impl GrpcCounters {
    fn parse(text: &str) -> GrpcCounters {
        let mut c = GrpcCounters::default();
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            let Some((name, rest)) = line.split_once('{') else {
                continue;
            };
            let name = name.strip_prefix("etcd_").unwrap_or(name);
            let map = match name {
                "grpc_server_msg_received_total" => &mut c.received,
                "grpc_server_handled_total" => &mut c.handled,
                "grpc_server_msg_sent_total" => &mut c.sent,
                _ => continue,
            };
            let Some((labels, value)) = rest.rsplit_once('}') else {
                continue;
            };
            let Some(method) = labels.split(',').find_map(|l| {
                l.trim()
                    .strip_prefix("grpc_method=\"")
                    .and_then(|m| m.strip_suffix('"'))
            }) else {
                continue;
            };
            let Ok(value) = value.trim().parse::<f64>() else {
                continue;
            };
            *map.entry(method.to_owned()).or_default() += value;
        }
        c
    }

    /// `self − before`, method by method (methods first seen later count from 0).
    fn since(&self, before: &GrpcCounters) -> GrpcCounters {
        let diff = |a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>| {
            a.iter()
                .map(|(m, v)| (m.clone(), v - b.get(m).copied().unwrap_or(0.0)))
                .filter(|(_, v)| *v != 0.0)
                .collect()
        };
        GrpcCounters {
            received: diff(&self.received, &before.received),
            handled: diff(&self.handled, &before.handled),
            sent: diff(&self.sent, &before.sent),
        }
    }
}

/// The request kinds the bench reports, in table order.
const KINDS: &[&str] = &[
    "range",
    "txn",
    "put",
    "delete",
    "lease_grant",
    "keepalive",
    "lease_revoke",
    "watch",
    "other",
];

/// An etcd gRPC method's kind (one of [`KINDS`]).
fn kind_of(method: &str) -> &'static str {
    match method {
        "Range" => "range",
        "Txn" => "txn",
        "Put" => "put",
        "DeleteRange" => "delete",
        "LeaseGrant" => "lease_grant",
        "LeaseKeepAlive" => "keepalive",
        "LeaseRevoke" => "lease_revoke",
        "Watch" => "watch",
        _ => "other",
    }
}

/// Per-kind totals of `by_method`, every kind present (0 when absent).
fn by_kind(by_method: &BTreeMap<String, f64>) -> BTreeMap<&'static str, f64> {
    let mut out: BTreeMap<&'static str, f64> = KINDS.iter().map(|k| (*k, 0.0)).collect();
    for (method, v) in by_method {
        *out.entry(kind_of(method)).or_default() += v;
    }
    out
}

/// Every etcd member's counters, in endpoint order.
async fn etcd_counters(cluster: &Cluster) -> anyhow::Result<Vec<(String, GrpcCounters)>> {
    let http = reqwest::Client::builder().no_proxy().build()?;
    let mut out = Vec::new();
    for ep in cluster.etcd().endpoints() {
        let text = http
            .get(format!("{ep}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        out.push((ep.clone(), GrpcCounters::parse(&text)));
    }
    Ok(out)
}

/// The idle window's etcd figures: per member and in total, raw counts and per minute.
fn etcd_idle_figures(
    before: &[(String, GrpcCounters)],
    after: &[(String, GrpcCounters)],
    elapsed_s: f64,
    agents: usize,
) -> Value {
    let per_min = |v: f64| (v / elapsed_s * 60.0 * 10.0).round() / 10.0;
    let mut members = Vec::new();
    let mut total = GrpcCounters::default();
    for ((endpoint, b), (_, a)) in before.iter().zip(after) {
        let d = a.since(b);
        for (m, v) in &d.received {
            *total.received.entry(m.clone()).or_default() += v;
        }
        for (m, v) in &d.handled {
            *total.handled.entry(m.clone()).or_default() += v;
        }
        for (m, v) in &d.sent {
            *total.sent.entry(m.clone()).or_default() += v;
        }
        let sum: f64 = d.received.values().sum();
        members.push(json!({
            "endpoint": endpoint,
            "requests": sum,
            "requests_per_min": per_min(sum),
            "received_by_method": d.received,
            "handled_by_method": d.handled,
            "sent_by_method": d.sent,
        }));
    }
    let requests: f64 = total.received.values().sum();
    let kinds = by_kind(&total.received);
    let kinds_per_min: BTreeMap<&str, f64> = kinds.iter().map(|(k, v)| (*k, per_min(*v))).collect();
    let calls_per_min: BTreeMap<&str, f64> = by_kind(&total.handled)
        .iter()
        .map(|(k, v)| (*k, per_min(*v)))
        .collect();
    json!({
        "etcd_requests": requests,
        "etcd_requests_per_min": per_min(requests),
        "etcd_requests_per_min_per_agent": per_min(requests / agents.max(1) as f64),
        "etcd_requests_by_kind": kinds,
        "etcd_requests_by_kind_per_min": kinds_per_min,
        "etcd_calls_completed_by_kind_per_min": calls_per_min,
        "etcd_watch_responses_per_min": per_min(total.sent.get("Watch").copied().unwrap_or(0.0)),
        "etcd_members": members,
    })
}

async fn idle_sample(cluster: &Cluster, secs: u64, settle_secs: u64) -> anyhow::Result<Value> {
    wait_healthy(cluster).await?;
    // Settle: let bootstrap work (checkpoints, first replication) finish.
    tokio::time::sleep(Duration::from_secs(settle_secs)).await;
    let roots: Vec<i32> = cluster
        .nodes()
        .iter()
        .filter_map(|n| n.agent_pid())
        .collect();
    let pids: Vec<Vec<i32>> = roots.iter().map(|r| agent_pids(*r)).collect();
    let ticks0: Vec<u64> = pids
        .iter()
        .map(|ps| ps.iter().map(|p| cpu_ticks(*p)).sum())
        .collect();
    let child_ticks0: Vec<u64> = pids
        .iter()
        .map(|ps| ps.iter().map(|p| child_cpu_ticks(*p)).sum())
        .collect();
    let switches0: Vec<Vec<BTreeMap<i32, (String, u64)>>> = pids
        .iter()
        .map(|ps| ps.iter().map(|p| thread_switches(*p)).collect())
        .collect();
    let etcd0 = etcd_counters(cluster).await?;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let elapsed = t0.elapsed().as_secs_f64();
    let etcd1 = etcd_counters(cluster).await?;
    let hz = clock_ticks();
    let mut agents = Vec::new();
    for (i, ps) in pids.iter().enumerate() {
        let ticks: u64 = ps.iter().map(|p| cpu_ticks(*p)).sum();
        let child_ticks: u64 = ps.iter().map(|p| child_cpu_ticks(*p)).sum();
        let rss: u64 = ps.iter().map(|p| rss_kb(*p)).sum();
        // Each process (agent, fence guard, or the Patroni stand-in's python) on its own.
        let processes: Vec<Value> = ps
            .iter()
            .enumerate()
            .map(|(j, p)| {
                let threads = wakeups_per_min(&switches0[i][j], &thread_switches(*p), elapsed);
                let total: f64 = threads
                    .iter()
                    .filter_map(|t| t["wakeups_per_min"].as_f64())
                    .sum();
                json!({
                    "pid": p,
                    "comm": stat_ppid_comm(*p).map(|(_, c)| c),
                    "rss_kb": rss_kb(*p),
                    "wakeups_per_min": (total * 10.0).round() / 10.0,
                    "threads": threads,
                    // Where it goes: anonymous (the process's own) and file pages (the binary's
                    // text, libc: shared, clean), and the proportional share (`Pss`).
                    "rss_anon_kb": status_kb(*p, "RssAnon:"),
                    "rss_file_kb": status_kb(*p, "RssFile:"),
                    "pss_kb": smaps_rollup_kb(*p, "Pss:"),
                })
            })
            .collect();
        let wakeups: f64 = processes
            .iter()
            .filter_map(|p| p["wakeups_per_min"].as_f64())
            .sum();
        agents.push(json!({
            // Every thread of the agent and its fence guard.
            "wakeups_per_min": (wakeups * 10.0).round() / 10.0,
            "node": cluster.nodes()[i].name,
            "pids": ps,
            "processes": processes,
            "cpu_ticks": ticks.saturating_sub(ticks0[i]),
            "rss_mb": (rss as f64 / 1024.0 * 10.0).round() / 10.0,
            "cpu_percent": ((ticks.saturating_sub(ticks0[i])) as f64 / hz / elapsed * 1000.0).round() / 10.0,
            // The processes the agent ran and waited for (pg_controldata, pg_ctl, callbacks).
            "child_cpu_ticks": child_ticks.saturating_sub(child_ticks0[i]),
            "cpu_ms_per_min": ((ticks.saturating_sub(ticks0[i])) as f64 / hz / elapsed * 60_000.0).round(),
        }));
    }
    let mean = |field: &str| {
        let v: Vec<f64> = agents.iter().filter_map(|a| a[field].as_f64()).collect();
        (v.iter().sum::<f64>() / v.len().max(1) as f64 * 100.0).round() / 100.0
    };
    let mut row = json!({
        "window_s": elapsed,
        "clock_ticks_per_s": hz,
        "load_average": load_average(),
        "agents": agents,
        "rss_mb_mean": mean("rss_mb"),
        "cpu_percent_mean": mean("cpu_percent"),
        "cpu_ms_per_min_mean": mean("cpu_ms_per_min"),
        "wakeups_per_min_mean": mean("wakeups_per_min"),
    });
    // etcd's own gRPC counters (the harness's /metrics scrapes are plain HTTP, not gRPC).
    let etcd = etcd_idle_figures(&etcd0, &etcd1, elapsed, pids.len());
    if let (Value::Object(row), Value::Object(etcd)) = (&mut row, etcd) {
        row.extend(etcd);
    }
    eprintln!("bench: idle: {row}");
    Ok(row)
}

// ----- GET /primary -----

async fn wrk_primary(cluster: &Cluster, wrk: &PathBuf, secs: u64) -> anyhow::Result<Value> {
    let leader = wait_healthy(cluster).await?;
    let url = format!("{}/primary", cluster.node(&leader).rest_base());
    let mut out = serde_json::Map::new();
    // `c16`, `c64`: wrk's default, kept-alive connections; `c16_close`: a new connection per
    // request (`Connection: close`, what HAProxy's checks and Patroni's HTTP/1.0 server do).
    for (label, conns, close) in [
        ("c16", 16, false),
        ("c64", 64, false),
        ("c16_close", 16, true),
    ] {
        let mut cmd = tokio::process::Command::new(wrk);
        cmd.args([
            "-t",
            "2",
            "-c",
            &conns.to_string(),
            "-d",
            &format!("{secs}s"),
        ]);
        if close {
            cmd.args(["-H", "Connection: close"]);
        }
        let output = cmd
            .arg("--latency")
            .arg(&url)
            .output()
            .await
            .context("run wrk")?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let field = |prefix: &str| -> Option<String> {
            text.lines()
                .map(str::trim)
                .find(|l| l.starts_with(prefix))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        };
        let non2xx = field("Non-2xx or 3xx responses:").unwrap_or_else(|| "0".to_owned());
        let row = json!({
            "requests_per_s": field("Requests/sec:").and_then(|v| v.parse::<f64>().ok()),
            "p50_ms": field("50%").and_then(|v| wrk_ms(&v)),
            "p99_ms": field("99%").and_then(|v| wrk_ms(&v)),
            "non_2xx": non2xx.parse::<u64>().ok(),
        });
        eprintln!("bench: GET /primary, {label}: {row}");
        out.insert(label.to_owned(), row);
    }
    Ok(Value::Object(out))
}

/// wrk's `1.23ms`, `456.00us`, `1.02s` → milliseconds.
fn wrk_ms(v: &str) -> Option<f64> {
    let (num, mult) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (v, 1.0)
    };
    num.parse::<f64>()
        .ok()
        .map(|x| (x * mult * 1000.0).round() / 1000.0)
}

// ----- region switchover and drill (pgbaton only) -----

/// What the table and JSON say for Patroni in the pgbaton-only scenarios.
const PGBATON_ONLY: &str = "pgbaton only: Patroni has no drill, and switches regions in \
    several manual steps (patronictl demote-cluster, wait until the other cluster's standby \
    leader has replayed the demoted leader's last WAL, patronictl promote-cluster)";

/// Every member of `cluster` runs (`/patroni` state running), the leader key holder as
/// `leader_role` and the others as replicas; the leader's name.
async fn cluster_in_roles(
    cluster: &Cluster,
    leader_role: &str,
) -> anyhow::Result<baton_integration_tests::Check<String>> {
    use baton_integration_tests::Check;
    let leader = match cluster.leader().await {
        Ok(Some(l)) => l,
        Ok(None) => return Ok(Check::not_yet("no leader key")),
        Err(e) => return Ok(Check::not_yet(format!("etcd: {e:#}"))),
    };
    for node in cluster.nodes() {
        let status = match node.patroni().await {
            Ok(s) => s,
            Err(e) => return Ok(Check::not_yet(format!("{}: {e:#}", node.name))),
        };
        let role = status["role"].as_str().unwrap_or("?");
        let state = status["state"].as_str().unwrap_or("?");
        let want = if node.name == leader {
            leader_role
        } else {
            "replica"
        };
        if role != want || state != "running" {
            return Ok(Check::not_yet(format!(
                "{}: role {role} state {state}, want {want} running",
                node.name
            )));
        }
    }
    if leader_role == "standby_leader" {
        let rows = cluster
            .sql(
                &leader,
                "SELECT count(*)::text FROM pg_stat_replication WHERE state = 'streaming'",
            )
            .await
            .unwrap_or_default();
        let streaming = rows.first().and_then(|r| r.first()).cloned().flatten();
        if streaming != Some((cluster.nodes().len() - 1).to_string()) {
            return Ok(Check::not_yet(format!(
                "{streaming:?} replicas stream from the standby leader {leader}"
            )));
        }
    }
    Ok(Check::Done(leader))
}

async fn wait_roles(cluster: &Cluster, leader_role: &str) -> anyhow::Result<String> {
    baton_integration_tests::wait_for(
        &format!("every member running, the leader as {leader_role}"),
        Duration::from_secs(240),
        || cluster_in_roles(cluster, leader_role),
    )
    .await
}

/// Two 3-member clusters, each with its own etcd, the second bootstrapped as a standby cluster
/// of the first; then `iterations` region switchovers under a writer, alternating direction.
async fn region_switchovers(
    tools: &Tools,
    timing: Timing,
    iterations: usize,
) -> anyhow::Result<Value> {
    let mut spec = ClusterSpec::new(3);
    spec.timing = timing;
    spec.haproxy = None;
    let a = Cluster::start(tools, spec).await?;
    let leader_a = wait_healthy(&a).await?;
    prepare_schema(&a).await?;
    let source = a.node(&leader_a);
    let mut spec = ClusterSpec::new(3);
    spec.timing = timing;
    spec.haproxy = None;
    spec.scope = "bench-region-b".to_owned();
    spec.extra_config = json!({ "bootstrap": { "dcs": { "standby_cluster": {
        "host": source.address(), "port": source.config.pg_port } } } });
    let b = Cluster::start(tools, spec).await?;
    wait_roles(&b, "standby_leader").await?;
    eprintln!("bench: region clusters healthy, {leader_a} leads the primary cluster");
    let mut rows = Vec::new();
    for i in 0..iterations {
        let (from, to) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        rows.push(region_switchover(from, to, &a, &b, i).await?);
    }
    b.finish();
    a.finish();
    Ok(summarise(rows))
}

/// One region switchover from `from` (primary cluster) to `to` (its standby cluster) while a
/// writer commits every 10 ms on whichever member of `a` or `b` takes it.
async fn region_switchover(
    from: &Cluster,
    to: &Cluster,
    a: &Cluster,
    b: &Cluster,
    iteration: usize,
) -> anyhow::Result<Value> {
    let old = wait_roles(from, "primary").await?;
    let standby_leader = wait_roles(to, "standby_leader").await?;
    let targets: Vec<PgTarget> = a.nodes().iter().chain(b.nodes()).map(|n| n.pg()).collect();
    // Writer indexes: a's members, then b's.
    let to_range = if std::ptr::eq(to, a) {
        0..a.nodes().len()
    } else {
        a.nodes().len()..a.nodes().len() + b.nodes().len()
    };
    let writer = Writer::start_on(targets);
    // Under load a connection can take longer than the writer's 500 ms connect timeout: start
    // only once it commits (at least 20 rows on the primary cluster's leader).
    let warm = baton_integration_tests::wait_for(
        "the writer committing on the primary cluster",
        Duration::from_secs(60),
        || async {
            let rows = from
                .sql(
                    &old,
                    &format!(
                        "SELECT count(*)::text FROM bench_w WHERE run = {}",
                        writer.run
                    ),
                )
                .await?;
            let n: u64 = rows
                .first()
                .and_then(|r| r.first())
                .cloned()
                .flatten()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            Ok(if n >= 20 {
                baton_integration_tests::Check::Done(())
            } else {
                baton_integration_tests::Check::not_yet(format!("{n} rows"))
            })
        },
    )
    .await;
    if let Err(e) = warm {
        let _ = writer.stop().await;
        return Err(e);
    }
    let config_from = from.node(&old).config_path.to_string_lossy().into_owned();
    let config_to = to
        .node(&standby_leader)
        .config_path
        .to_string_lossy()
        .into_owned();
    let t_req = Instant::now();
    let out = from
        .pgbaton_cli(&[
            "-c",
            &config_from,
            "region-switchover",
            "--standby-config",
            &config_to,
            "--force",
        ])
        .await;
    let t_done = Instant::now();
    let out = match out {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            let _ = writer.stop().await;
            bail!(
                "region-switchover: {} {} {}",
                o.status,
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        Err(e) => {
            let _ = writer.stop().await;
            return Err(e);
        }
    };
    eprint!("{}", String::from_utf8_lossy(&out.stdout));
    // Until the writer commits in the new region, then one more second of commits.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let committed = to.sql(&standby_leader, "SELECT pg_is_in_recovery()").await;
        let writable = committed
            .ok()
            .and_then(|r| r.first().and_then(|r| r.first()).cloned().flatten())
            == Some("f".into());
        if writable || Instant::now() > deadline {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (run, acks) = writer.stop().await?;
    let first_new = acks
        .iter()
        .find(|a| to_range.contains(&a.node) && a.at >= t_req);
    let gap = acks
        .windows(2)
        .filter(|w| w[1].at >= t_req)
        .map(|w| w[1].at - w[0].at)
        .max()
        .unwrap_or_default();
    let new = wait_roles(to, "primary").await?;
    let lost = lost_acks(to, &new, run, &acks).await?;
    let following = wait_roles(from, "standby_leader").await?;
    let t_following = Instant::now();
    let row = json!({
        "iteration": iteration,
        "from": from.spec().scope,
        "old": old,
        "new": new,
        "old_region_standby_leader": following,
        "command_ms": ms(t_done - t_req),
        "writable_after_request_ms": first_new.map(|a| signed_ms(a.at, t_req)),
        "write_gap_ms": ms(gap),
        "acked_commits": acks.len(),
        "acked_commits_lost": lost,
        "old_region_following_ms": signed_ms(t_following, t_done),
    });
    eprintln!("bench: region switchover: {row}");
    Ok(row)
}

/// `pgbaton drill` (a switchover drill under its built-in writer) on the leader's
/// configuration; its own RTO and RPO, and how long the command took.
async fn drill(cluster: &Cluster, iteration: usize) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let leader = wait_healthy(cluster).await?;
        let config = cluster
            .node(&leader)
            .config_path
            .to_string_lossy()
            .into_owned();
        let t0 = Instant::now();
        let out = cluster
            .pgbaton_cli(&["-c", &config, "drill", "--format", "json"])
            .await?;
        let t1 = Instant::now();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            // Refused while a replica catches up after the previous scenario: try again.
            if stderr.contains("refusing to drill") && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1000)).await;
                continue;
            }
            bail!("drill: {} {stdout} {stderr}", out.status);
        }
        let result: Value =
            serde_json::from_str(stdout.trim()).with_context(|| format!("drill: {stdout}"))?;
        let row = json!({
            "iteration": iteration,
            "old": result["old_leader"],
            "new": result["new_leader"],
            "rto_ms": result["rto_ms"],
            "rpo_rows": result["rpo_rows"],
            "writes_acknowledged": result["writes_acknowledged"],
            "outcome": result["outcome"],
            "command_ms": ms(t1 - t0),
        });
        eprintln!("bench: drill: {row}");
        return Ok(row);
    }
}

// ----- summaries and output -----

/// Iterations plus median and max of every numeric field.
fn summarise(rows: Vec<Value>) -> Value {
    let mut stats = serde_json::Map::new();
    if let Some(first) = rows.first().and_then(Value::as_object) {
        for key in first.keys() {
            if key == "iteration" {
                continue;
            }
            let mut v: Vec<f64> = rows.iter().filter_map(|r| r[key].as_f64()).collect();
            if v.is_empty() {
                continue;
            }
            v.sort_by(f64::total_cmp);
            let median = if v.len() % 2 == 1 {
                v[v.len() / 2]
            } else {
                (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
            };
            stats.insert(
                key.clone(),
                json!({ "median": median, "max": v[v.len() - 1] }),
            );
        }
    }
    json!({ "iterations": rows, "stats": stats })
}

/// (section, field, label) of the figures in the table.
const FIGURES: &[(&str, &str, &str)] = &[
    (
        "kill_primary_ttl20",
        "lease_left_ms",
        "host killed, ttl 20: lease left at kill (ms)",
    ),
    (
        "kill_primary_ttl20",
        "writable_after_kill_ms",
        "host killed, ttl 20: writable after kill (ms)",
    ),
    (
        "kill_primary_ttl20",
        "writable_after_lease_expiry_ms",
        "host killed, ttl 20: writable after lease expiry (ms)",
    ),
    (
        "kill_primary_ttl5",
        "lease_left_ms",
        "host killed, ttl 5: lease left at kill (ms)",
    ),
    (
        "kill_primary_ttl5",
        "writable_after_kill_ms",
        "host killed, ttl 5: writable after kill (ms)",
    ),
    (
        "kill_primary_ttl5",
        "writable_after_lease_expiry_ms",
        "host killed, ttl 5: writable after lease expiry (ms)",
    ),
    ("switchover", "write_gap_ms", "switchover: write gap (ms)"),
    (
        "switchover",
        "writable_after_request_ms",
        "switchover: request to writable (ms)",
    ),
    (
        "switchover",
        "acked_commits_lost",
        "switchover: acknowledged commits lost",
    ),
    (
        "switchover",
        "primary_endpoint_after_writable_ms",
        "switchover: /primary 200 after writable (ms)",
    ),
    (
        "switchover",
        "primary_endpoint_after_promotion_ms",
        "switchover: /primary 200 after promotion (ms)",
    ),
    (
        "pg_crash",
        "noticed_ms",
        "PostgreSQL crash: noticed, /primary not 200 (ms)",
    ),
    (
        "pg_crash",
        "writable_again_ms",
        "PostgreSQL crash: writable again (ms)",
    ),
    (
        "region_switchover",
        "write_gap_ms",
        "region switchover¹: write gap (ms)",
    ),
    (
        "region_switchover",
        "writable_after_request_ms",
        "region switchover¹: request to first commit in the new region (ms)",
    ),
    (
        "region_switchover",
        "command_ms",
        "region switchover¹: `pgbaton region-switchover` took (ms)",
    ),
    (
        "region_switchover",
        "acked_commits_lost",
        "region switchover¹: acknowledged commits lost",
    ),
    (
        "region_switchover",
        "old_region_following_ms",
        "region switchover¹: old region a streaming standby cluster after (ms)",
    ),
    ("drill", "rto_ms", "`pgbaton drill`¹ (switchover): RTO (ms)"),
    (
        "drill",
        "rpo_rows",
        "`pgbaton drill`¹ (switchover): RPO (rows)",
    ),
    (
        "drill",
        "command_ms",
        "`pgbaton drill`¹ (switchover): command took (ms)",
    ),
];

fn figure(run: &Value, section: &str, field: &str, stat: &str) -> Option<f64> {
    run[section]["stats"][field][stat].as_f64()
}

fn single_figures(run: &Value) -> Vec<(String, Option<f64>)> {
    let mut rows = vec![
        (
            "idle agent + fence guard RSS (MB per node, mean of 3)".to_owned(),
            run["idle"]["rss_mb_mean"].as_f64(),
        ),
        (
            "idle agent CPU (% of a core, mean of 3)".to_owned(),
            run["idle"]["cpu_percent_mean"].as_f64(),
        ),
        (
            "idle wake-ups/min per node (agent + fence guard threads, mean of 3)".to_owned(),
            run["idle"]["wakeups_per_min_mean"].as_f64(),
        ),
        (
            "etcd requests/min at idle (3 agents)".to_owned(),
            run["idle"]["etcd_requests_per_min"].as_f64(),
        ),
        (
            "etcd requests/min at idle, per agent".to_owned(),
            run["idle"]["etcd_requests_per_min_per_agent"].as_f64(),
        ),
        (
            "etcd watch responses sent/min at idle (3 agents)".to_owned(),
            run["idle"]["etcd_watch_responses_per_min"].as_f64(),
        ),
    ];
    for kind in KINDS {
        rows.push((
            format!("etcd {kind} requests/min at idle (3 agents)"),
            run["idle"]["etcd_requests_by_kind_per_min"][kind].as_f64(),
        ));
    }
    rows.extend([
        (
            "GET /primary, 16 conns: requests/s".to_owned(),
            run["get_primary"]["c16"]["requests_per_s"].as_f64(),
        ),
        ("GET /primary, 16 conns: p50 / p99 (ms)".to_owned(), None),
        (
            "GET /primary, 64 conns: requests/s".to_owned(),
            run["get_primary"]["c64"]["requests_per_s"].as_f64(),
        ),
        ("GET /primary, 64 conns: p50 / p99 (ms)".to_owned(), None),
        (
            "GET /primary, 16 conns, Connection: close: requests/s".to_owned(),
            run["get_primary"]["c16_close"]["requests_per_s"].as_f64(),
        ),
        (
            "GET /primary, 16 conns, Connection: close: p50 / p99 (ms)".to_owned(),
            None,
        ),
    ]);
    rows
}

fn fmt(v: Option<f64>) -> String {
    match v {
        Some(x) if x.abs() >= 100.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.1}"),
        None => "—".to_owned(),
    }
}

fn render_table(report: &Value) -> String {
    let runs = report["runs"].as_array().cloned().unwrap_or_default();
    let names: Vec<String> = runs
        .iter()
        .map(|r| r["agent"].as_str().unwrap_or("?").to_owned())
        .collect();
    let mut out = format!(
        "pgbaton benchmark, {} on {}; {} iterations per scenario (median / max)\n\n| figure |",
        report["date"].as_str().unwrap_or("?"),
        report["machine"].as_str().unwrap_or("?"),
        report["iterations"]
    );
    for n in &names {
        out.push_str(&format!(" {n} |"));
    }
    if runs.len() == 2 {
        out.push_str(" pgbaton's advantage (median) |");
    }
    out.push_str("\n|---|");
    for _ in 0..runs.len() + usize::from(runs.len() == 2) {
        out.push_str("---|");
    }
    out.push('\n');
    for (section, field, label) in FIGURES {
        out.push_str(&format!("| {label} |"));
        let mut medians = Vec::new();
        for r in &runs {
            let (m, x) = (
                figure(r, section, field, "median"),
                figure(r, section, field, "max"),
            );
            medians.push(m);
            out.push_str(&format!(" {} / {} |", fmt(m), fmt(x)));
        }
        if runs.len() == 2 {
            out.push_str(&format!(" {} |", ratio(medians[1], medians[0], false)));
        }
        out.push('\n');
    }
    let per_run: Vec<Vec<(String, Option<f64>)>> = runs.iter().map(single_figures).collect();
    for (i, (label, _)) in per_run
        .first()
        .cloned()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        out.push_str(&format!("| {label} |"));
        let mut vals = Vec::new();
        for (r, figs) in runs.iter().zip(&per_run) {
            if label.contains("p50 / p99") {
                let c = if label.contains("close") {
                    "c16_close"
                } else if label.contains("16") {
                    "c16"
                } else {
                    "c64"
                };
                out.push_str(&format!(
                    " {} / {} |",
                    fmt(r["get_primary"][c]["p50_ms"].as_f64()),
                    fmt(r["get_primary"][c]["p99_ms"].as_f64())
                ));
                vals.push(r["get_primary"][c]["p99_ms"].as_f64());
            } else {
                out.push_str(&format!(" {} |", fmt(figs[i].1)));
                vals.push(figs[i].1);
            }
        }
        if runs.len() == 2 {
            let higher_is_better = label.contains("requests/s");
            out.push_str(&format!(" {} |", ratio(vals[1], vals[0], higher_is_better)));
        }
        out.push('\n');
    }
    for r in &runs {
        if let Some(profile) = r["binary"]["profile"].as_str() {
            out.push_str(&format!(
                "\n{}: {} ({profile} profile, {} bytes)",
                r["agent"].as_str().unwrap_or("?"),
                r["binary"]["path"].as_str().unwrap_or("?"),
                r["binary"]["bytes"]
            ));
            let order = &r["binary"]["symbol_order"];
            if let (Some(listed), Some(present)) =
                (order["listed"].as_u64(), order["present"].as_u64())
            {
                out.push_str(&format!(
                    "; symbol order: {present} of the {listed} listed idle functions present \
                     (fewer: renew it with scripts/symbol-order.sh)"
                ));
            }
        }
    }
    for r in &runs {
        if let Some(load) = r["idle"]["load_average"].as_str() {
            out.push_str(&format!(
                "\nload average after the {} idle window: {load}",
                r["agent"].as_str().unwrap_or("?")
            ));
        }
    }
    out.push_str(&format!(
        "\nload average at the end: {}\n",
        report["load_average_at_end"].as_str().unwrap_or("?")
    ));
    out.push_str(&format!("\n¹ {PGBATON_ONLY}.\n"));
    out
}

/// How much better pgbaton does, e.g. "8.2×" (above 1: pgbaton better): `peer / ours` for
/// times and costs, `ours / peer` for throughput. Only for two positive figures (a signed
/// delay such as "/primary 200 after writable" has no meaningful ratio).
fn ratio(peer: Option<f64>, ours: Option<f64>, higher_is_better: bool) -> String {
    match (peer, ours) {
        (Some(p), Some(o)) if p > f64::EPSILON && o > f64::EPSILON => {
            let r = if higher_is_better { o / p } else { p / o };
            format!("{r:.1}×")
        }
        _ => "—".to_owned(),
    }
}

// ----- environment -----

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/local/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn chrono_like_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn machine_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "{cores} cores, {cpu}; load average at start {}",
        load_average()
    )
}

/// Which binary ran (path, size, and the cargo profile its path names), so a report says
/// whether release figures are release figures.
fn binary_description(tools: &Tools) -> Value {
    let path = tools.pgbaton.as_path();
    let profile = path
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .find(|c| c == "release" || c == "debug");
    json!({
        "path": path.display().to_string(),
        "bytes": std::fs::metadata(path).map(|m| m.len()).ok(),
        "profile": profile,
        "symbol_order": symbol_order_figures(tools),
    })
}

/// How much of `crates/baton-cli/symbol-order.txt` (the idle code that release builds link
/// together) the measured binaries still have: a list gone stale after a change shows here
/// (and in a higher idle RSS) before anything else; `scripts/symbol-order.sh` renews it.
/// `None` when `nm` cannot read the binary (the Patroni stand-in is a script).
fn symbol_order_figures(tools: &Tools) -> Option<Value> {
    let list = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../crates/baton-cli/symbol-order.txt"),
    )
    .ok()?;
    let mut symbols = String::new();
    for bin in std::iter::once(tools.pgbaton.clone()).chain(tools.fence_guard()) {
        let out = std::process::Command::new("nm").arg(&bin).output().ok()?;
        if !out.status.success() {
            return None;
        }
        symbols.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    let (listed, present) = symbol_order_coverage(&list, &symbols);
    Some(json!({ "listed": listed, "present": present }))
}

/// Of the names in an ordering list (`#` starts a comment), how many are symbols in `nm`'s
/// output: (listed, present).
fn symbol_order_coverage(list: &str, nm_output: &str) -> (usize, usize) {
    let symbols: std::collections::HashSet<&str> = nm_output
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    let listed: Vec<&str> = list
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .collect();
    let present = listed.iter().filter(|n| symbols.contains(*n)).count();
    (listed.len(), present)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbol_order_coverage_counts_listed_names_the_binary_has() {
        let list = "# generated\n_RNvCs1_3foo3bar\n_RNvCs1_3foo3baz\n\n_ZN4gone17h0E\n";
        let nm = "0000000000001000 t _RNvCs1_3foo3bar\n\
                  0000000000001010 T _RNvCs1_3foo3baz\n\
                  \x20                U memcpy\n";
        assert_eq!(symbol_order_coverage(list, nm), (3, 2));
        assert_eq!(symbol_order_coverage(list, ""), (3, 0));
    }

    const BEFORE: &str = r#"# HELP grpc_server_msg_received_total Total number of RPC stream messages received on the server.
# TYPE grpc_server_msg_received_total counter
grpc_server_msg_received_total{grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary"} 10
grpc_server_msg_received_total{grpc_method="LeaseKeepAlive",grpc_service="etcdserverpb.Lease",grpc_type="bidi_stream"} 4
grpc_server_msg_received_total{grpc_method="Watch",grpc_service="etcdserverpb.Watch",grpc_type="bidi_stream"} 3
grpc_server_handled_total{grpc_code="OK",grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary"} 9
grpc_server_handled_total{grpc_code="NotFound",grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary"} 1
grpc_server_msg_sent_total{grpc_method="Watch",grpc_service="etcdserverpb.Watch",grpc_type="bidi_stream"} 7
grpc_server_started_total{grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary"} 10
"#;

    const AFTER: &str = r#"grpc_server_msg_received_total{grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary"} 16
etcd_grpc_server_msg_received_total{grpc_method="Txn",grpc_service="etcdserverpb.KV",grpc_type="unary"} 2
grpc_server_msg_received_total{grpc_method="LeaseKeepAlive",grpc_service="etcdserverpb.Lease",grpc_type="bidi_stream"} 10
grpc_server_msg_received_total{grpc_method="Watch",grpc_service="etcdserverpb.Watch",grpc_type="bidi_stream"} 3
grpc_server_msg_received_total{grpc_method="MemberList",grpc_service="etcdserverpb.Cluster",grpc_type="unary"} 1
grpc_server_handled_total{grpc_code="OK",grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary"} 15
grpc_server_handled_total{grpc_code="NotFound",grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary"} 1
grpc_server_msg_sent_total{grpc_method="Watch",grpc_service="etcdserverpb.Watch",grpc_type="bidi_stream"} 19
"#;

    #[test]
    fn counters_are_read_by_method_and_summed_over_codes() {
        let c = GrpcCounters::parse(BEFORE);
        assert_eq!(c.received["Range"], 10.0);
        assert_eq!(c.received["LeaseKeepAlive"], 4.0);
        assert_eq!(c.handled["Range"], 10.0, "OK and NotFound summed");
        assert_eq!(c.sent["Watch"], 7.0);
        assert!(!c.received.contains_key("started"), "other metrics ignored");
        assert_eq!(c.received.len(), 3);
    }

    #[test]
    fn wakeups_are_counted_per_thread_per_minute() {
        let before = BTreeMap::from([
            (10, ("agent".to_owned(), 100)),
            (11, ("gone".to_owned(), 5)),
        ]);
        let after = BTreeMap::from([
            (10, ("agent".to_owned(), 130)),
            (12, ("tokio-runtime-w".to_owned(), 6)),
        ]);
        let w = wakeups_per_min(&before, &after, 30.0);
        assert_eq!(
            w,
            vec![
                json!({"tid": 10, "comm": "agent", "wakeups_per_min": 60.0}),
                json!({"tid": 12, "comm": "tokio-runtime-w", "wakeups_per_min": 12.0}),
            ]
        );
        // This process's own threads are read from /proc.
        let own = thread_switches(std::process::id() as i32);
        assert!(own.contains_key(&(std::process::id() as i32)));
    }

    #[test]
    fn the_idle_window_counts_each_kind_per_member_and_in_total() {
        let before = vec![
            ("a".to_owned(), GrpcCounters::parse(BEFORE)),
            ("b".to_owned(), GrpcCounters::parse(BEFORE)),
        ];
        let after = vec![
            ("a".to_owned(), GrpcCounters::parse(AFTER)),
            ("b".to_owned(), GrpcCounters::parse(BEFORE)),
        ];
        // 30 s window, 3 agents: member a saw 6 ranges, 2 txns, 6 keepalives, 1 other.
        let f = etcd_idle_figures(&before, &after, 30.0, 3);
        assert_eq!(f["etcd_requests"], 15.0);
        assert_eq!(f["etcd_requests_per_min"], 30.0);
        assert_eq!(f["etcd_requests_per_min_per_agent"], 10.0);
        let kinds = &f["etcd_requests_by_kind"];
        assert_eq!(kinds["range"], 6.0);
        assert_eq!(kinds["txn"], 2.0);
        assert_eq!(kinds["keepalive"], 6.0);
        assert_eq!(kinds["watch"], 0.0);
        assert_eq!(kinds["other"], 1.0);
        assert_eq!(kinds["put"], 0.0, "every kind is present");
        assert_eq!(f["etcd_requests_by_kind_per_min"]["range"], 12.0);
        assert_eq!(f["etcd_calls_completed_by_kind_per_min"]["range"], 12.0);
        assert_eq!(f["etcd_watch_responses_per_min"], 24.0);
        assert_eq!(f["etcd_members"][0]["requests"], 15.0);
        assert_eq!(f["etcd_members"][1]["requests"], 0.0);
        assert_eq!(f["etcd_members"][0]["received_by_method"]["Txn"], 2.0);
    }

    #[test]
    fn region_and_drill_are_selectable_and_reported_as_pgbaton_only() {
        assert!(SCENARIOS.contains(&"region") && SCENARIOS.contains(&"drill"));
        assert!(CLUSTER_A_SCENARIOS.iter().all(|s| SCENARIOS.contains(s)));
        assert!(
            !CLUSTER_A_SCENARIOS.contains(&"region"),
            "region brings its own clusters"
        );
        let stats = |field: &str, v: f64| json!({ field: { "median": v, "max": v } });
        let report = json!({
            "date": "d", "machine": "m", "iterations": 1, "load_average_at_end": "1 1 1",
            "runs": [
                { "agent": "pgbaton",
                  "region_switchover": { "stats": stats("write_gap_ms", 2928.0) },
                  "drill": { "stats": stats("rto_ms", 2165.0) } },
                { "agent": "patroni",
                  "region_switchover": { "skipped": PGBATON_ONLY },
                  "drill": { "skipped": PGBATON_ONLY } },
            ],
        });
        let table = render_table(&report);
        assert!(
            table.contains("| region switchover¹: write gap (ms) | 2928 / 2928 | — / — | — |"),
            "{table}"
        );
        assert!(
            table.contains("| `pgbaton drill`¹ (switchover): RTO (ms) | 2165 / 2165 | — / — |"),
            "{table}"
        );
        assert!(table.contains("promote-cluster"), "{table}");
    }

    #[test]
    fn every_method_has_a_kind() {
        assert_eq!(kind_of("LeaseKeepAlive"), "keepalive");
        assert_eq!(kind_of("DeleteRange"), "delete");
        assert_eq!(kind_of("Status"), "other");
        assert!(KINDS.contains(&kind_of("Anything")));
    }
}
