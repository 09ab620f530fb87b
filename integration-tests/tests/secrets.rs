//! Issue 11.6: no secret is ever served, logged, put on a command line or written where others
//! can read it.
//!
//! A 3-node cluster (real etcd, PostgreSQL 15, `pgbaton agent`s at `log.level: DEBUG`) runs
//! with distinctive passwords for the superuser, the replication and rewind roles and the REST
//! API, goes through a switchover (so a former primary is rewound or re-cloned, and roles,
//! `primary_conninfo`, the pgpass file and `pg_rewind`/`pg_basebackup` command lines all come
//! up), and then every one of these is searched for every secret:
//!
//! - the answers of `/patroni`, `/cluster`, `/config`, `/history`, `/metrics`, `/health`,
//!   `/leader`, `/replica` on every node, and of `PATCH /config` (authenticated and not);
//! - every key and value under the cluster's prefix in etcd;
//! - every line of every agent's log (debug level) and of PostgreSQL's logs;
//! - the command line of every process on the host (`/proc/<pid>/cmdline`), sampled while the
//!   cluster runs and switches over;
//! - every file under the test directory: a file that holds a secret must not be readable by
//!   other users (the pgpass file must be 0600). The configuration files the harness wrote
//!   (0600 as well) are the only expected holders besides the pgpass files.
//!
//! Skips (printing `SKIP`) without etcd, PostgreSQL or pgbaton, unless
//! `PGBATON_REQUIRE_INTEGRATION=1`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, ensure};
use baton_integration_tests::{Cluster, ClusterSpec, Tools, scaled};
use serde_json::json;

/// Distinctive secrets, with the characters quoting gets wrong (space, quotes, backslash,
/// colon, `=`), and characters outside ASCII (sent as SCRAM verifiers of their SASLprep form,
/// which the standbys' libpq and pg_rewind must log in with).
const REPL_PASSWORD: &str = "R3pl s'ecr\"et\\x:=Q7 p\u{e4}\u{df}";
const REWIND_PASSWORD: &str = "Rw1nd s3cr3t 'Z9' \u{e9}t\u{e9}";
const REST_USER: &str = "rest-admin";
const REST_PASSWORD: &str = "R3st-P4ss w0rd:K8";

/// Where a secret turned up.
#[derive(Default)]
struct Findings(Vec<String>);

impl Findings {
    fn scan(&mut self, secrets: &[(&str, String)], place: &str, text: &str) {
        for (what, secret) in secrets {
            if text.contains(secret.as_str()) {
                let line = text
                    .lines()
                    .find(|l| l.contains(secret.as_str()))
                    .unwrap_or_default();
                let shown: String = line.chars().take(300).collect();
                self.0.push(format!("{what} in {place}: {shown}"));
            }
        }
    }
}

/// The command lines of every process (NUL-separated arguments joined with spaces).
fn all_cmdlines() -> Vec<(i32, String)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if let Ok(bytes) = std::fs::read(entry.path().join("cmdline")) {
            let text = String::from_utf8_lossy(&bytes).replace('\0', " ");
            out.push((pid, text));
        }
    }
    out
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => files_under(&path, out),
            Ok(t) if t.is_file() => out.push(path),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_secret_is_served_logged_shown_or_world_readable() -> anyhow::Result<()> {
    let test = "no_secret_is_served_logged_shown_or_world_readable";
    let Some(tools) = Tools::for_test(test)? else {
        return Ok(());
    };
    let mut spec = ClusterSpec::new(3);
    spec.haproxy = None;
    spec.extra_config = json!({
        "log": { "level": "DEBUG" },
        "restapi": { "authentication": { "username": REST_USER, "password": REST_PASSWORD } },
        "postgresql": { "authentication": {
            "replication": { "password": REPL_PASSWORD },
            "rewind": { "password": REWIND_PASSWORD },
        } },
        "bootstrap": { "dcs": { "postgresql": { "use_pg_rewind": true } } },
    });
    let cluster = Cluster::start(&tools, spec).await?;
    let superuser_password = cluster.nodes()[0].config.auth.superuser.1.clone();
    let secrets: Vec<(&str, String)> = vec![
        ("the superuser password", superuser_password),
        ("the replication password", REPL_PASSWORD.to_owned()),
        ("the rewind password", REWIND_PASSWORD.to_owned()),
        ("the REST API password", REST_PASSWORD.to_owned()),
    ];

    // Sample every process's command line while the cluster comes up and switches over.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        let secrets = secrets.clone();
        tokio::spawn(async move {
            let mut found = Findings::default();
            let mut samples = 0u32;
            while !stop.load(Ordering::SeqCst) {
                for (pid, line) in all_cmdlines() {
                    found.scan(&secrets, &format!("the command line of pid {pid}"), &line);
                }
                samples += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (found, samples)
        })
    };

    let healthy = cluster
        .wait_healthy(scaled(Duration::from_secs(180)))
        .await?;
    let old = healthy.leader.clone();
    let target = healthy.replicas[0].clone();
    let client = reqwest::Client::new();
    let base = cluster.node(&old).rest_base();
    let resp = client
        .post(format!("{base}/switchover"))
        .basic_auth(REST_USER, Some(REST_PASSWORD))
        .json(&json!({ "leader": old, "candidate": target }))
        .timeout(scaled(Duration::from_secs(60)))
        .send()
        .await
        .context("POST /switchover")?;
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    ensure!(status == 200, "switchover answered {status}: {body}");
    cluster
        .wait_healthy_members(&cluster.names(), scaled(Duration::from_secs(180)))
        .await?;

    let mut found = Findings::default();
    // Every answer of the REST API.
    for node in cluster.nodes() {
        for path in [
            "/patroni",
            "/cluster",
            "/config",
            "/history",
            "/metrics",
            "/health",
            "/leader",
            "/replica",
            "/primary",
            "/liveness",
            "/readiness",
        ] {
            let (status, body) = node.http_get(path).await?;
            found.scan(
                &secrets,
                &format!("GET {path} on {} ({status})", node.name),
                &body,
            );
        }
        let url = format!("{}/config", node.rest_base());
        for auth in [None, Some("wrong"), Some(REST_PASSWORD)] {
            let mut req = client
                .patch(&url)
                .json(&json!({ "loop_wait": cluster.spec().timing.loop_wait }))
                .timeout(scaled(Duration::from_secs(10)));
            if let Some(p) = auth {
                req = req.basic_auth(REST_USER, Some(p));
            }
            let resp = req.send().await.context("PATCH /config")?;
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap_or_default();
            found.scan(
                &secrets,
                &format!("PATCH /config on {} ({status})", node.name),
                &body,
            );
        }
    }
    // Every key in the DCS.
    for kv in cluster.etcd().get_prefix(&cluster.key_prefix()).await? {
        found.scan(&secrets, &format!("etcd key {}", kv.key), &kv.value);
    }
    stop.store(true, Ordering::SeqCst);
    let (cmdline_findings, samples) = sampler.await.context("sampler")?;
    ensure!(samples > 10, "only {samples} process samples");
    found.0.extend(cmdline_findings.0);

    // Every log line; every file the agents (or PostgreSQL) wrote.
    let mut files = Vec::new();
    files_under(cluster.dir(), &mut files);
    let mut logs = 0;
    let mut debug_lines = 0;
    let mut pgpass_seen = 0;
    for file in &files {
        let Ok(bytes) = std::fs::read(file) else {
            continue;
        };
        let text = String::from_utf8_lossy(&bytes);
        let name = file.display().to_string();
        let meta = std::fs::metadata(file)?;
        let mode = meta.permissions().mode() & 0o777;
        let is_config = file.extension().is_some_and(|e| e == "yml" || e == "yaml");
        let is_pgpass = file.file_name().is_some_and(|n| n == "pgpass")
            || file.extension().is_some_and(|e| e == "pgpass");
        if is_pgpass {
            pgpass_seen += 1;
            ensure!(mode == 0o600, "{name}: mode {mode:o}, not 0600");
            ensure!(
                meta.uid() == std::fs::metadata(file.parent().unwrap_or(file))?.uid(),
                "{name}: not owned by the agents' user"
            );
            continue;
        }
        let is_log = name.ends_with(".log") || name.contains("/pglog/");
        if is_log {
            logs += 1;
            debug_lines += text.lines().filter(|l| l.contains("DEBUG")).count();
        }
        let holds = secrets.iter().any(|(_, s)| text.contains(s.as_str()));
        if holds && is_config {
            // The harness's configuration files: must stay private.
            ensure!(
                mode & 0o077 == 0,
                "{name} holds a secret with mode {mode:o}"
            );
            continue;
        }
        if holds && mode & 0o004 != 0 {
            found.0.push(format!(
                "{name} (mode {mode:o}) is world-readable with a secret"
            ));
        }
        found.scan(&secrets, &name, &text);
    }
    ensure!(pgpass_seen >= 3, "only {pgpass_seen} pgpass files found");
    ensure!(logs >= 3, "only {logs} log files found");
    ensure!(
        debug_lines > 0,
        "no DEBUG line in the logs: the agents did not log at debug level"
    );
    ensure!(
        found.0.is_empty(),
        "secrets found:\n  {}",
        found.0.join("\n  ")
    );
    cluster.finish();
    Ok(())
}
