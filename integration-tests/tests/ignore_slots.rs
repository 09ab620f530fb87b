//! `ignore_slots` on a real cluster: pgbaton drops the permanent slots it made once they are
//! removed from `slots`, on the leader and on the replica — except those an `ignore_slots`
//! entry matches. Each kept slot has a twin that no entry matches (or whose entry asks for
//! another type), dropped in the same change: with the rule not applied both would go.
//! Before that, the replica reports a copied logical slot safe to use after a failover once
//! its slot on the leader holds a catalog_xmin that reached it (`baton_core::slot_readiness`).
//!
//! Skips (printing a `SKIP` line) when a program it needs is missing, unless
//! `PGBATON_REQUIRE_INTEGRATION=1`. See docs/testing.md.

use std::time::Duration;

use anyhow::{Context, ensure};
use baton_integration_tests::tools_or_skip;
use baton_integration_tests::{Check, Cluster, ClusterSpec, scaled, wait_for};
use serde_json::{Value, json};

/// Permanent slots pgbaton makes, then drops (no entry matches them).
const DROP_PHYSICAL: &str = "drop_phys";
const DROP_LOGICAL: &str = "drop_logical";
/// Permanent slots pgbaton makes, then keeps (an `ignore_slots` entry matches them).
const KEEP_PHYSICAL: &str = "keep_phys";
const KEEP_LOGICAL: &str = "keep_logical";

/// `(name, type)` of every non-temporary slot on node `name`, sorted.
async fn slots(cluster: &Cluster, name: &str) -> anyhow::Result<Vec<(String, String)>> {
    let rows = cluster
        .sql(
            name,
            "SELECT slot_name::text, slot_type::text FROM pg_catalog.pg_replication_slots \
             WHERE NOT temporary ORDER BY 1",
        )
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|mut r| {
            let kind = r.pop().flatten()?;
            Some((r.pop().flatten()?, kind))
        })
        .collect())
}

fn has(slots: &[(String, String)], name: &str, kind: &str) -> bool {
    slots.iter().any(|(n, k)| n == name && k == kind)
}

/// Wait until node `name`'s slots satisfy `ok`.
async fn wait_slots(
    cluster: &Cluster,
    name: &str,
    what: &str,
    ok: impl Fn(&[(String, String)]) -> bool,
) -> anyhow::Result<Vec<(String, String)>> {
    wait_for(
        &format!("{name}: {what}"),
        scaled(Duration::from_secs(120)),
        || async {
            cluster.check_agents_alive()?;
            Ok(match slots(cluster, name).await {
                Ok(s) if ok(&s) => Check::Done(s),
                Ok(s) => Check::not_yet(format!("slots {s:?}")),
                Err(e) => Check::not_yet(format!("{e:#}")),
            })
        },
    )
    .await
}

/// `PATCH /config` on `via`'s REST API; the answer's status and body.
async fn patch_config(cluster: &Cluster, via: &str, body: &Value) -> anyhow::Result<(u16, String)> {
    let url = format!("{}/config", cluster.node(via).rest_base());
    let resp = reqwest::Client::new()
        .patch(&url)
        .json(body)
        .timeout(scaled(Duration::from_secs(10)))
        .send()
        .await
        .with_context(|| format!("PATCH {url}"))?;
    Ok((
        resp.status().as_u16(),
        resp.text().await.unwrap_or_default(),
    ))
}

/// Issue 10.5: see the module documentation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_slots_survive_what_would_drop_them() -> anyhow::Result<()> {
    let tools = tools_or_skip!("ignored_slots_survive_what_would_drop_them");
    let mut spec = ClusterSpec::new(2);
    spec.haproxy = None;
    let logical = json!({"type": "logical", "database": "postgres", "plugin": "test_decoding"});
    spec.extra_config = json!({"bootstrap": {"dcs": {
        "slots": {
            DROP_PHYSICAL: {"type": "physical"},
            KEEP_PHYSICAL: {"type": "physical"},
            DROP_LOGICAL: logical,
            KEEP_LOGICAL: logical,
        },
        "ignore_slots": [
            // Every field given must match: these two do.
            {"name": KEEP_PHYSICAL, "type": "physical"},
            {"name": KEEP_LOGICAL, "type": "logical", "database": "postgres",
             "plugin": "test_decoding"},
            // These do not: drop_phys is physical, drop_logical's plugin is test_decoding.
            {"name": DROP_PHYSICAL, "type": "logical"},
            {"name": DROP_LOGICAL, "plugin": "pgoutput"},
        ],
        "postgresql": {"parameters": {"wal_level": "logical"}},
    }}});
    let cluster = Cluster::start(&tools, spec).await?;
    let healthy = cluster
        .wait_healthy(scaled(Duration::from_secs(180)))
        .await
        .context("initial bootstrap")?;
    let leader = healthy.leader.clone();
    let replica = healthy.replicas[0].clone();
    eprintln!("leader {leader}, replica {replica}");

    // Declared slots matching an entry are created all the same (as in Patroni), on the
    // leader and, copied, on the replica.
    let all = |s: &[(String, String)]| {
        has(s, DROP_PHYSICAL, "physical")
            && has(s, KEEP_PHYSICAL, "physical")
            && has(s, DROP_LOGICAL, "logical")
            && has(s, KEEP_LOGICAL, "logical")
    };
    for node in [&leader, &replica] {
        let s = wait_slots(&cluster, node, "the four permanent slots", all).await?;
        eprintln!("{node}: {s:?}");
    }

    // The replica's copies become safe to use after a failover once its feedback (the
    // catalog_xmin of its slot on the leader) reaches them, and its log says so. The feedback
    // is the oldest catalog_xmin of the replica's slots, so (as in Patroni) the slot created
    // first is the one that is sure to get there while no consumer moves the others on.
    let log_path = cluster.node(&replica).log_path.clone();
    let said = wait_for(
        &format!("{replica} logs a copied logical slot safe after a failover"),
        scaled(Duration::from_secs(120)),
        || async {
            cluster.check_agents_alive()?;
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            Ok(
                match [KEEP_LOGICAL, DROP_LOGICAL].into_iter().find(|slot| {
                    log.contains(&format!(
                        "logical replication slot {slot} is safe to be used after a failover"
                    ))
                }) {
                    Some(slot) => Check::Done(slot),
                    None => Check::not_yet("no readiness line yet"),
                },
            )
        },
    )
    .await?;
    eprintln!("{replica}: {said} is safe to be used after a failover");

    // No slot declared any more: pgbaton drops the ones it made, but not the ignored ones.
    let (status, body) = patch_config(&cluster, &leader, &json!({"slots": null})).await?;
    ensure!(status == 200, "PATCH /config answered {status}: {body}");
    for node in [&leader, &replica] {
        // Both drops happen in the same pass as the drops the entries prevent (one
        // `ensure slots` for the physical ones, one `sync slots` for the logical ones): once
        // the unmatched ones are gone, the matched ones would be too if the rule were not
        // applied.
        let s = wait_slots(&cluster, node, "the unmatched slots dropped", |s| {
            !s.iter()
                .any(|(n, _)| n == DROP_PHYSICAL || n == DROP_LOGICAL)
        })
        .await?;
        eprintln!("{node} after the change: {s:?}");
        ensure!(
            has(&s, KEEP_PHYSICAL, "physical") && has(&s, KEEP_LOGICAL, "logical"),
            "{node} dropped a slot ignore_slots matches: {s:?}"
        );
    }

    // Still there a while later: a few cycles more (loop_wait) drop nothing else.
    let loop_wait = Duration::from_secs(cluster.spec().timing.loop_wait.into());
    let started = std::time::Instant::now();
    wait_for(
        "a few cycles with the ignored slots in place",
        scaled(Duration::from_secs(60)) + loop_wait * 6,
        || async {
            cluster.check_agents_alive()?;
            for node in [&leader, &replica] {
                let s = slots(&cluster, node).await?;
                ensure!(
                    has(&s, KEEP_PHYSICAL, "physical") && has(&s, KEEP_LOGICAL, "logical"),
                    "{node} dropped a slot ignore_slots matches: {s:?}"
                );
            }
            Ok(if started.elapsed() >= loop_wait * 4 {
                Check::Done(())
            } else {
                Check::not_yet("watching")
            })
        },
    )
    .await?;
    cluster.check_agents_alive()?;
    Ok(())
}
