//! Configuration changes at run time on real etcd, PostgreSQL and agents (issue 15 item 3):
//! dynamic `postgresql.parameters` and `pg_hba` from `PATCH /config` reach every node by a
//! reload, restart-only settings are reported as `pending_restart`; SIGHUP and `POST /reload`
//! re-read the local file, apply what can be applied and never end the agent.
//!
//! Every test skips (printing a `SKIP` line) when a program it needs is missing, unless
//! `PGBATON_REQUIRE_INTEGRATION=1`. See docs/testing.md.

use std::time::Duration;

use anyhow::{Context, ensure};
use baton_integration_tests::tools_or_skip;
use baton_integration_tests::{Check, Cluster, ClusterSpec, scaled, wait_for};
use serde_json::{Value, json};

/// How long a configuration change may take to show (a few loops, scaled).
fn soon() -> Duration {
    scaled(Duration::from_secs(60))
}

/// `method <path>` on `via`'s REST API with a JSON body; the answer's status and body.
async fn send(
    cluster: &Cluster,
    via: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<(u16, String)> {
    let url = format!("{}{path}", cluster.node(via).rest_base());
    let mut request = reqwest::Client::new()
        .request(method.clone(), &url)
        .timeout(scaled(Duration::from_secs(10)));
    if let Some(body) = body {
        request = request.json(body);
    }
    let resp = request
        .send()
        .await
        .with_context(|| format!("{method} {url}"))?;
    Ok((
        resp.status().as_u16(),
        resp.text().await.unwrap_or_default(),
    ))
}

/// The first column of the first row of `query` on node `name`.
async fn value(cluster: &Cluster, name: &str, query: &str) -> anyhow::Result<String> {
    cluster
        .sql(name, query)
        .await?
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().next().flatten())
        .with_context(|| format!("{name}: {query}: no value"))
}

/// Wait until `SHOW setting` on node `name` is `want`.
async fn wait_show(cluster: &Cluster, name: &str, setting: &str, want: &str) -> anyhow::Result<()> {
    wait_for(&format!("{name}: {setting} = {want}"), soon(), || async {
        cluster.check_agents_alive()?;
        Ok(
            match value(cluster, name, &format!("SHOW {setting}")).await {
                Ok(v) if v == want => Check::Done(()),
                Ok(v) => Check::not_yet(format!("{setting} = {v}")),
                Err(e) => Check::not_yet(format!("{e:#}")),
            },
        )
    })
    .await
}

/// Wait until node `name`'s agent log contains `text`.
async fn wait_log(cluster: &Cluster, name: &str, text: &str) -> anyhow::Result<()> {
    let path = cluster.node(name).log_path.clone();
    wait_for(&format!("{name}: log line {text:?}"), soon(), || async {
        let log = std::fs::read_to_string(&path).unwrap_or_default();
        Ok(if log.contains(text) {
            Check::Done(())
        } else {
            Check::not_yet("not logged yet")
        })
    })
    .await
}

/// The pid of node `name`'s `pgbaton agent` process: the harness's agent process itself, or
/// its child when the harness started it through `runuser` (which a SIGHUP would end).
fn agent_process(cluster: &Cluster, name: &str) -> anyhow::Result<i32> {
    let started = cluster
        .node(name)
        .agent_pid()
        .context("the agent was never started")?;
    let is_agent = |pid: i32| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.split(|b| *b == 0).nth(1) == Some(b"agent".as_slice()))
    };
    if is_agent(started) {
        return Ok(started);
    }
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(started) && is_agent(pid) {
            return Ok(pid);
        }
    }
    anyhow::bail!("{name}: no `pgbaton agent` process under pid {started}")
}

/// SIGHUP to node `name`'s agent process only, as `systemctl reload` (`kill -HUP $MAINPID`).
fn sighup(cluster: &Cluster, name: &str) -> anyhow::Result<()> {
    let pid = agent_process(cluster, name)?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .with_context(|| format!("SIGHUP agent {name} (pid {pid})"))
}

/// The harness's pg_hba lines (see `NodeConfig::to_value`), here from the dynamic
/// configuration.
fn harness_hba() -> Vec<Value> {
    vec![
        json!("local all all trust"),
        json!("host replication replicator 127.0.0.1/32 md5"),
        json!("host all all 127.0.0.1/32 md5"),
    ]
}

/// Issue 15 item 3: `PATCH /config` with a reloadable parameter, a restart-only one and a
/// `pg_hba` line: every node reloads (SHOW, pg_hba_file_rules) without restarting PostgreSQL
/// and reports `pending_restart` with its reason in `/patroni`, the member key and `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dynamic_parameters_and_pg_hba_reach_every_node() -> anyhow::Result<()> {
    let tools = tools_or_skip!("dynamic_parameters_and_pg_hba_reach_every_node");
    let mut spec = ClusterSpec::new(3);
    spec.haproxy = None;
    // shared_buffers and pg_hba from the dynamic configuration (a local value would win).
    spec.extra_config = json!({
        "bootstrap": { "dcs": { "postgresql": { "pg_hba": harness_hba() } } },
        "postgresql": { "parameters": { "shared_buffers": null }, "pg_hba": null },
    });
    let cluster = Cluster::start(&tools, spec).await?;
    let healthy = cluster
        .wait_healthy(scaled(Duration::from_secs(180)))
        .await?;
    let names = cluster.names();
    let mut postmasters = Vec::new();
    for n in &names {
        wait_show(&cluster, n, "shared_buffers", "128MB").await?;
        postmasters.push(cluster.node(n).postmaster_pid());
    }

    let mut hba = harness_hba();
    hba.push(json!("host all app_reload 10.77.0.0/16 md5"));
    let patch = json!({ "postgresql": {
        "parameters": { "work_mem": "7MB", "shared_buffers": "40MB" },
        "pg_hba": hba,
    } });
    let (status, body) = send(
        &cluster,
        &healthy.leader,
        reqwest::Method::PATCH,
        "/config",
        Some(&patch),
    )
    .await?;
    ensure!(status == 200, "PATCH /config answered {status}: {body}");

    for n in &names {
        wait_show(&cluster, n, "work_mem", "7MB").await?;
        let rules = value(
            &cluster,
            n,
            "SELECT count(*)::text FROM pg_hba_file_rules WHERE 'app_reload' = ANY(user_name)",
        )
        .await?;
        ensure!(
            rules == "1",
            "{n}: pg_hba.conf lacks the new line ({rules} rules)"
        );
        wait_for(&format!("{n}: pending_restart"), soon(), || async {
            let doc = cluster.node(n).patroni().await?;
            let reason = &doc["pending_restart_reason"]["shared_buffers"];
            Ok(
                if doc["pending_restart"] == json!(true)
                    && reason == &json!({"old_value": "128MB", "new_value": "40MB"})
                {
                    Check::Done(())
                } else {
                    Check::not_yet(format!("/patroni: {doc}"))
                },
            )
        })
        .await?;
        wait_for(
            &format!("{n}: pending_restart in the member key"),
            soon(),
            || async {
                let key = cluster.key(&format!("members/{n}"));
                let member: Value = match cluster.etcd().get(&key).await? {
                    Some(kv) => serde_json::from_str(&kv.value)?,
                    None => Value::Null,
                };
                Ok(if member["pending_restart"] == json!(true) {
                    Check::Done(())
                } else {
                    Check::not_yet(format!("{key}: {member}"))
                })
            },
        )
        .await?;
        let (_, metrics) = cluster.node(n).http_get("/metrics").await?;
        ensure!(
            metrics
                .lines()
                .any(|l| l.starts_with("patroni_pending_restart{") && l.ends_with(" 1")),
            "{n}: /metrics does not report the pending restart:\n{metrics}"
        );
        ensure!(
            value(&cluster, n, "SHOW shared_buffers").await? == "128MB",
            "{n}: shared_buffers changed without a restart"
        );
    }
    let after: Vec<_> = names
        .iter()
        .map(|n| cluster.node(n).postmaster_pid())
        .collect();
    ensure!(
        after == postmasters,
        "PostgreSQL was restarted: {postmasters:?} → {after:?}"
    );
    cluster.check_agents_alive()?;
    cluster.finish();
    Ok(())
}

/// Issue 15 item 3 and issue 10: SIGHUP and `POST /reload` re-read the local file and apply
/// a local parameter and tags; a file with errors is reported with its key path and changes
/// nothing; a key that needs an agent restart is logged; the agent keeps running throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_and_post_reload_reread_the_local_file() -> anyhow::Result<()> {
    let tools = tools_or_skip!("sighup_and_post_reload_reread_the_local_file");
    let mut spec = ClusterSpec::new(1);
    spec.haproxy = None;
    let mut cluster = Cluster::start(&tools, spec).await?;
    let healthy = cluster
        .wait_healthy(scaled(Duration::from_secs(180)))
        .await?;
    let n = healthy.leader.clone();
    let agent = agent_process(&cluster, &n)?;
    let postmaster = cluster.node(&n).postmaster_pid();

    // SIGHUP with a valid edit: applied at run time.
    cluster.update_config(
        &n,
        &json!({
            "postgresql": { "parameters": { "work_mem": "6MB" } },
            "tags": { "noloadbalance": true },
        }),
    )?;
    sighup(&cluster, &n)?;
    wait_show(&cluster, &n, "work_mem", "6MB").await?;
    wait_for("noloadbalance in /patroni", soon(), || async {
        let doc = cluster.node(&n).patroni().await?;
        Ok(if doc["tags"]["noloadbalance"] == json!(true) {
            Check::Done(())
        } else {
            Check::not_yet(format!("tags: {}", doc["tags"]))
        })
    })
    .await?;

    // SIGHUP with errors: logged with the key path; the running configuration stays.
    cluster.update_config(
        &n,
        &json!({
            "postgresql": { "parameters": { "work_mem": "9MB" } },
            "tags": { "nofailover": ["not", "a", "boolean"] },
        }),
    )?;
    sighup(&cluster, &n)?;
    wait_log(
        &cluster,
        &n,
        "configuration reload: tags.nofailover: expected a boolean",
    )
    .await?;
    wait_log(&cluster, &n, "keeping the running configuration").await?;
    // POST /reload of the same file: the errors in the answer.
    let (status, body) = send(&cluster, &n, reqwest::Method::POST, "/reload", None).await?;
    ensure!(
        status == 500 && body.contains("tags.nofailover"),
        "POST /reload of a broken file answered {status}: {body}"
    );
    cluster.check_agents_alive()?;
    ensure!(
        value(&cluster, &n, "SHOW work_mem").await? == "6MB",
        "a file with errors changed work_mem"
    );

    // POST /reload with a valid file: the same as SIGHUP; a restart-only key is logged.
    cluster.update_config(
        &n,
        &json!({
            "postgresql": { "parameters": { "work_mem": "3MB" }, "pg_ctl_timeout": 45 },
            "tags": { "nofailover": false },
        }),
    )?;
    let (status, body) = send(&cluster, &n, reqwest::Method::POST, "/reload", None).await?;
    ensure!(
        (status, body.as_str()) == (202, "reload scheduled"),
        "POST /reload answered {status}: {body}"
    );
    wait_show(&cluster, &n, "work_mem", "3MB").await?;
    wait_log(
        &cluster,
        &n,
        "postgresql.pg_ctl_timeout: changed in the configuration file; needs a restart of the agent",
    )
    .await?;

    cluster.check_agents_alive()?;
    ensure!(
        agent_process(&cluster, &n)? == agent && cluster.node_mut(&n).agent_running(),
        "the agent was replaced or stopped"
    );
    ensure!(
        cluster.node(&n).postmaster_pid() == postmaster,
        "PostgreSQL was restarted"
    );
    cluster.finish();
    Ok(())
}
