//! `make bench-scale`: many simulated members (`pgbaton agent --simulated-postgres`, the
//! release binary) against one real 3-member etcd on this machine.
//!
//! Fleets: 3 members (one cluster: the baseline), then 100, 300 and 1,000 members as 3-member
//! clusters, and one cluster of 50 members (`--fleets` chooses, e.g. `3,100,c50`). For each:
//! start every agent, wait until every cluster has a leader whose `/primary` answers and every
//! other member's `/replica` answers, settle, then over an idle window: etcd requests/s by
//! gRPC method (`grpc_server_msg_received_total`, summed over the etcd members), watch events
//! sent/s (`grpc_server_msg_sent_total{grpc_method="Watch"}`: the fan-out), etcd CPU and RSS
//! (`/proc`), the agents' CPU and RSS; then SIGKILL one cluster's leader while the others idle
//! and time until its lease expires and another member's `/primary` answers 200.
//! Figures are reported, never asserted: table on stdout, `scale.md` and `scale.json` in
//! `$CARGO_TARGET_DIR/bench/` (or `--out DIR`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use baton_integration_tests::Tools;
use baton_integration_tests::scale::{SimFleet, SimTiming};
use serde_json::{Value, json};

struct Args {
    fleets: Vec<String>,
    idle_secs: u64,
    out: PathBuf,
    timing: SimTiming,
}

fn parse_args() -> anyhow::Result<Args> {
    let out = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) => PathBuf::from(t).join("bench"),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench"),
    };
    let mut args = Args {
        fleets: ["3", "100", "300", "1000", "c50"]
            .map(str::to_owned)
            .to_vec(),
        idle_secs: 30,
        out,
        timing: SimTiming {
            ttl: 30,
            loop_wait: 10,
            retry_timeout: 10,
        },
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--fleets" => args.fleets = val()?.split(',').map(str::to_owned).collect(),
            "--idle-secs" => args.idle_secs = val()?.parse()?,
            "--out" => args.out = PathBuf::from(val()?),
            "--ttl" => args.timing.ttl = val()?.parse()?,
            "--loop-wait" => args.timing.loop_wait = val()?.parse()?,
            "--retry-timeout" => args.timing.retry_timeout = val()?.parse()?,
            "-h" | "--help" => {
                println!(
                    "bench-scale [--fleets 3,100,300,1000,c50] [--idle-secs 30] [--ttl 30] \
                     [--loop-wait 10] [--retry-timeout 10] [--out DIR]\n\
                     N: N members as 3-member clusters (N=3: one cluster); cN: one cluster of N"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    for f in &args.fleets {
        clusters_of(f)?;
    }
    Ok(args)
}

/// `100` → 33 clusters of 3 and one of 1 are not wanted: N is rounded down to a multiple of 3;
/// `c50` → one cluster of 50.
fn clusters_of(fleet: &str) -> anyhow::Result<Vec<(String, usize)>> {
    if let Some(n) = fleet.strip_prefix('c') {
        let n: usize = n.parse().with_context(|| format!("fleet {fleet:?}"))?;
        return Ok(vec![("big".to_owned(), n)]);
    }
    let n: usize = fleet.parse().with_context(|| format!("fleet {fleet:?}"))?;
    if n < 3 {
        bail!("fleet {fleet:?}: at least 3 members");
    }
    Ok((0..n / 3).map(|i| (format!("c{i:04}"), 3)).collect())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    std::fs::create_dir_all(&args.out)?;
    let tools =
        Tools::discover().map_err(|missing| anyhow::anyhow!("missing: {}", missing.join("; ")))?;
    let mut rows = Vec::new();
    for fleet in &args.fleets {
        let clusters = clusters_of(fleet)?;
        let members: usize = clusters.iter().map(|c| c.1).sum();
        eprintln!(
            "bench-scale: {members} members in {} clusters; load average {}",
            clusters.len(),
            load_average()
        );
        match run_fleet(&tools, &args, &clusters).await {
            Ok(row) => {
                eprintln!("bench-scale: {fleet}: {row}");
                rows.push(json!({ "fleet": fleet, "members": members, "clusters": clusters.len(), "figures": row }));
            }
            Err(e) => {
                eprintln!("bench-scale: {fleet}: FAILED: {e:#}");
                rows.push(json!({ "fleet": fleet, "members": members, "clusters": clusters.len(), "error": format!("{e:#}") }));
            }
        }
    }
    let report = json!({
        "machine": machine(),
        "timing": { "ttl": args.timing.ttl, "loop_wait": args.timing.loop_wait, "retry_timeout": args.timing.retry_timeout },
        "idle_secs": args.idle_secs,
        "load_average_at_end": load_average(),
        "binary": tools.pgbaton.display().to_string(),
        "fleets": rows,
    });
    let table = render(&report);
    println!("{table}");
    std::fs::write(
        args.out.join("scale.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(args.out.join("scale.md"), &table)?;
    eprintln!(
        "bench-scale: wrote {}",
        args.out.join("scale.{json,md}").display()
    );
    Ok(())
}

async fn run_fleet(
    tools: &Tools,
    args: &Args,
    clusters: &[(String, usize)],
) -> anyhow::Result<Value> {
    let members: usize = clusters.iter().map(|c| c.1).sum();
    let started = Instant::now();
    let mut fleet = SimFleet::start(tools, 3, clusters, args.timing).await?;
    // Generous: every agent starts at once on a shared 2-core machine.
    let healthy_timeout = Duration::from_secs(120 + members as u64);
    fleet.wait_healthy(healthy_timeout).await?;
    let healthy_after = started.elapsed();
    // Settle: first member-key writes, the first watch reconnections.
    tokio::time::sleep(Duration::from_secs(u64::from(args.timing.loop_wait) * 2)).await;

    let etcd_pids = etcd_pids(fleet.dir());
    let agent_pids: Vec<i32> = fleet.members.iter().filter_map(|m| m.pid()).collect();
    let m0 = etcd_metrics(&fleet).await?;
    let etcd_ticks0: u64 = etcd_pids.iter().map(|p| cpu_ticks(*p)).sum();
    let agent_ticks0: u64 = agent_pids.iter().map(|p| cpu_ticks(*p)).sum();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
    let window = t0.elapsed().as_secs_f64();
    let m1 = etcd_metrics(&fleet).await?;
    let etcd_ticks = etcd_pids.iter().map(|p| cpu_ticks(*p)).sum::<u64>() - etcd_ticks0;
    let agent_ticks = agent_pids.iter().map(|p| cpu_ticks(*p)).sum::<u64>() - agent_ticks0;
    let hz = clock_ticks();
    let etcd_rss_kb: u64 = etcd_pids.iter().map(|p| rss_kb(*p)).sum();
    let agent_rss_kb: u64 = agent_pids.iter().map(|p| rss_kb(*p)).sum();
    let load_idle = load_average();

    let mut by_method = BTreeMap::new();
    for (method, v) in &m1.received {
        let d = v - m0.received.get(method).copied().unwrap_or(0.0);
        if d > 0.0 {
            by_method.insert(method.clone(), round(d / window, 2));
        }
    }
    let total: f64 = by_method.values().sum();
    let watch_sent = m1.watch_sent - m0.watch_sent;

    // One cluster's leader dies while the others idle.
    let scope = clusters[0].0.clone();
    let failover = fleet
        .kill_leader(
            &scope,
            Duration::from_secs(u64::from(args.timing.ttl) * 4 + 60),
        )
        .await?;
    Ok(json!({
        "healthy_after_s": round(healthy_after.as_secs_f64(), 1),
        "idle_window_s": round(window, 1),
        "load_average_idle": load_idle,
        "etcd_requests_per_s": round(total, 2),
        "etcd_requests_per_s_per_member": round(total / members as f64, 4),
        "etcd_requests_per_s_by_method": by_method,
        "watch_events_sent_per_s": round(watch_sent / window, 2),
        "etcd_cpu_percent": round(etcd_ticks as f64 / hz / window * 100.0, 1),
        "etcd_rss_mb": round(etcd_rss_kb as f64 / 1024.0, 1),
        "etcd_db_size_mb": m1.db_size.map(|b| round(b / 1048576.0, 1)),
        "agents_cpu_percent_total": round(agent_ticks as f64 / hz / window * 100.0, 1),
        "agent_rss_mb_mean": round(agent_rss_kb as f64 / 1024.0 / agent_pids.len().max(1) as f64, 1),
        "failover": {
            "scope": scope,
            "old": failover.old,
            "new": failover.new,
            "lease_left_s": round(failover.lease_left.as_secs_f64(), 2),
            "primary_after_kill_s": round(failover.primary_after_kill.as_secs_f64(), 2),
            "primary_after_expiry_ms": round(failover.primary_after_expiry.as_secs_f64() * 1000.0, 0),
        },
    }))
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

#[derive(Default)]
struct EtcdMetrics {
    received: BTreeMap<String, f64>,
    watch_sent: f64,
    db_size: Option<f64>,
}

/// Every etcd member's `/metrics`, summed.
async fn etcd_metrics(fleet: &SimFleet) -> anyhow::Result<EtcdMetrics> {
    let http = reqwest::Client::new();
    let mut out = EtcdMetrics::default();
    for endpoint in fleet.etcd.endpoints() {
        let text = http
            .get(format!("{endpoint}/metrics"))
            .timeout(Duration::from_secs(10))
            .send()
            .await?
            .text()
            .await?;
        for line in text.lines() {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let method = || {
                name.split("grpc_method=\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .unwrap_or("?")
                    .to_owned()
            };
            if name.starts_with("grpc_server_msg_received_total{")
                || name.starts_with("etcd_grpc_server_msg_received_total{")
            {
                *out.received.entry(method()).or_default() += value;
            } else if (name.starts_with("grpc_server_msg_sent_total{")
                || name.starts_with("etcd_grpc_server_msg_sent_total{"))
                && method() == "Watch"
            {
                out.watch_sent += value;
            } else if name == "etcd_mvcc_db_total_size_in_bytes"
                || name == "etcd_debugging_mvcc_db_total_size_in_bytes"
            {
                out.db_size = Some(out.db_size.map_or(value, |v: f64| v.max(value)));
            }
        }
    }
    Ok(out)
}

/// The etcd members started for this fleet (their command line names its directory).
fn etcd_pids(dir: &Path) -> Vec<i32> {
    let dir = dir.display().to_string();
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if comm.trim() == "etcd" && String::from_utf8_lossy(&cmdline).contains(&dir) {
                out.push(pid);
            }
        }
    }
    out
}

fn cpu_ticks(pid: i32) -> u64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let Some(close) = s.rfind(')') else { return 0 };
    let rest: Vec<&str> = s[close + 2..].split_whitespace().collect();
    let field = |i: usize| rest.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
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

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024 / 1024);
    format!("{cpus} cores, {mem} GiB")
}

fn render(report: &Value) -> String {
    let mut out = String::from(
        "| members (clusters) | etcd req/s (per member) | watch events sent/s | etcd CPU % | etcd RSS MB (3 members) | agents CPU % (total) | agent RSS MB (mean) | killed leader: lease left / `/primary` after kill / after expiry |\n|---|---|---|---|---|---|---|---|\n",
    );
    for row in report["fleets"].as_array().into_iter().flatten() {
        let label = format!("{} ({})", row["members"], row["clusters"]);
        if let Some(e) = row["error"].as_str() {
            out.push_str(&format!("| {label} | failed: {e} |||||||\n"));
            continue;
        }
        let f = &row["figures"];
        out.push_str(&format!(
            "| {label} | {} ({}) | {} | {} | {} | {} | {} | {} s / {} s / {} ms |\n",
            f["etcd_requests_per_s"],
            f["etcd_requests_per_s_per_member"],
            f["watch_events_sent_per_s"],
            f["etcd_cpu_percent"],
            f["etcd_rss_mb"],
            f["agents_cpu_percent_total"],
            f["agent_rss_mb_mean"],
            f["failover"]["lease_left_s"],
            f["failover"]["primary_after_kill_s"],
            f["failover"]["primary_after_expiry_ms"],
        ));
    }
    out.push_str(&format!(
        "\n{}; ttl {} / loop_wait {} / retry_timeout {}; idle window {} s; load average at end {}\n",
        report["machine"].as_str().unwrap_or_default(),
        report["timing"]["ttl"],
        report["timing"]["loop_wait"],
        report["timing"]["retry_timeout"],
        report["idle_secs"],
        report["load_average_at_end"].as_str().unwrap_or_default(),
    ));
    out
}
