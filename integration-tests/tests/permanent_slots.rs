//! Permanent replication slots (the dynamic `slots` section) on a real cluster: a permanent
//! physical and a permanent logical slot survive the loss of the primary, the logical one
//! with its position (no change lost; some may come again, as Patroni documents), and a
//! member that is briefly gone keeps its slot for `member_slots_ttl`; the new leader has a
//! slot ready for the former primary before it rejoins.
//!
//! Skips (printing a `SKIP` line) when a program it needs is missing, unless
//! `PGBATON_REQUIRE_INTEGRATION=1`. See docs/testing.md.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use baton_integration_tests::tools_or_skip;
use baton_integration_tests::{Check, Cluster, ClusterSpec, scaled, wait_for};
use serde_json::{Value, json};

/// The tools, or return `Ok(())` from the test after printing why it is skipped.
const PHYSICAL: &str = "perm_phys";
const LOGICAL: &str = "perm_logical";

/// `(slot_type, position)` of `slot` on node `name` (position: `confirmed_flush_lsn` for a
/// logical slot, `restart_lsn` for a physical one), `None` when it does not exist.
async fn slot(
    cluster: &Cluster,
    name: &str,
    slot: &str,
) -> anyhow::Result<Option<(String, Option<String>)>> {
    let rows = cluster
        .sql(
            name,
            &format!(
                "SELECT slot_type::text, (CASE WHEN slot_type = 'logical' THEN confirmed_flush_lsn \
                 ELSE restart_lsn END)::text FROM pg_catalog.pg_replication_slots \
                 WHERE slot_name = '{slot}'"
            ),
        )
        .await?;
    Ok(rows.into_iter().next().map(|mut r| {
        let pos = r.pop().flatten();
        (r.pop().flatten().unwrap_or_default(), pos)
    }))
}

/// `a >= b` for two LSNs as PostgreSQL compares them.
async fn lsn_ge(cluster: &Cluster, on: &str, a: &str, b: &str) -> anyhow::Result<bool> {
    let v = cluster
        .sql(
            on,
            &format!("SELECT ('{a}'::pg_lsn >= '{b}'::pg_lsn)::text"),
        )
        .await?;
    Ok(v.first().and_then(|r| r.first()).cloned().flatten() == Some("true".to_owned()))
}

/// Wait until node `name` has the logical slot at or past `at` (and the physical slot).
async fn wait_slots_at(cluster: &Cluster, name: &str, at: &str) -> anyhow::Result<String> {
    wait_for(
        &format!("{name}: {PHYSICAL} and {LOGICAL} at or past {at}"),
        scaled(Duration::from_secs(120)),
        || async {
            cluster.check_agents_alive()?;
            let look = async {
                let phys = slot(cluster, name, PHYSICAL).await?;
                let logical = slot(cluster, name, LOGICAL).await?;
                anyhow::Ok((phys, logical))
            };
            Ok(match look.await {
                Ok((Some((pt, _)), Some((lt, Some(pos)))))
                    if pt == "physical"
                        && lt == "logical"
                        && lsn_ge(cluster, name, &pos, at).await.unwrap_or(false) =>
                {
                    Check::Done(pos)
                }
                Ok(other) => Check::not_yet(format!("slots {other:?}")),
                Err(e) => Check::not_yet(format!("{e:#}")),
            })
        },
    )
    .await
}

/// The physical slot names on node `name`.
async fn physical_slots(cluster: &Cluster, name: &str) -> anyhow::Result<Vec<String>> {
    let rows = cluster
        .sql(
            name,
            "SELECT slot_name::text FROM pg_catalog.pg_replication_slots \
             WHERE slot_type = 'physical' ORDER BY 1",
        )
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect())
}

/// Issue 10.5 and 12.3: see the module documentation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_slots_survive_a_failover_with_their_position() -> anyhow::Result<()> {
    let tools = tools_or_skip!("permanent_slots_survive_a_failover_with_their_position");
    let mut spec = ClusterSpec::new(3);
    spec.haproxy = None;
    spec.extra_config = json!({"bootstrap": {"dcs": {
        "member_slots_ttl": 1800,
        "slots": {
            PHYSICAL: {"type": "physical"},
            LOGICAL: {"type": "logical", "database": "postgres", "plugin": "test_decoding"},
        },
        "postgresql": {"parameters": {"wal_level": "logical"}},
    }}});
    let ttl = spec.timing.ttl();
    let mut cluster = Cluster::start(&tools, spec).await?;
    let healthy = cluster
        .wait_healthy(scaled(Duration::from_secs(180)))
        .await
        .context("initial bootstrap")?;
    let leader = healthy.leader.clone();
    let (r1, r2) = (healthy.replicas[0].clone(), healthy.replicas[1].clone());
    eprintln!("leader {leader}, replicas {r1} {r2}");

    // The leader creates both slots.
    wait_slots_at(&cluster, &leader, "0/0").await?;

    // Changes a consumer reads (and confirms) from the logical slot.
    cluster
        .sql(
            &leader,
            "CREATE TABLE slot_probe (id int PRIMARY KEY, batch text); \
             INSERT INTO slot_probe SELECT g, 'consumed' FROM generate_series(1, 50) g",
        )
        .await?;
    let consumed = cluster
        .sql(
            &leader,
            &format!(
                "SELECT count(*)::text FROM pg_catalog.pg_logical_slot_get_changes('{LOGICAL}', NULL, NULL)"
            ),
        )
        .await?;
    eprintln!("consumed {consumed:?} changes on {leader}");
    let (_, confirmed) = slot(&cluster, &leader, LOGICAL)
        .await?
        .context("the logical slot is gone on the leader")?;
    let confirmed = confirmed.context("no confirmed_flush_lsn")?;
    eprintln!("{leader}: {LOGICAL} confirmed up to {confirmed}");

    // Both replicas hold copies advanced at least that far (the leader publishes the
    // position in /status; the replicas copy the slot once, then advance it).
    for r in [&r1, &r2] {
        let at = wait_slots_at(&cluster, r, &confirmed).await?;
        eprintln!("{r}: {LOGICAL} at {at}");
    }
    let status = cluster
        .etcd()
        .get(&cluster.key("status"))
        .await?
        .context("no status key")?;
    let status: Value = serde_json::from_str(&status.value)?;
    eprintln!("status: {status}");
    ensure!(
        status["slots"][LOGICAL].is_u64() && status["slots"][PHYSICAL].is_u64(),
        "the leader does not publish the permanent slots' positions: {status}"
    );
    ensure!(
        status["retain_slots"]
            .as_array()
            .is_some_and(|a| a.len() == 3),
        "retain_slots should name the three members: {status}"
    );

    // Changes nobody has read yet, replayed on both replicas before the primary dies.
    cluster
        .sql(
            &leader,
            "INSERT INTO slot_probe SELECT g, 'pending' FROM generate_series(51, 60) g",
        )
        .await?;
    let flushed = cluster
        .sql(
            &leader,
            "SELECT pg_catalog.pg_current_wal_flush_lsn()::text",
        )
        .await?;
    let flushed = flushed[0][0].clone().context("flush lsn")?;
    for r in [&r1, &r2] {
        wait_for(
            &format!("{r} replays {flushed}"),
            scaled(Duration::from_secs(60)),
            || async {
                let pg = cluster.node(r).pg();
                Ok(
                    match baton_integration_tests::lsn_reached(&pg, &flushed).await {
                        Ok(true) => Check::Done(()),
                        Ok(false) => Check::not_yet("behind"),
                        Err(e) => Check::not_yet(format!("{e:#}")),
                    },
                )
            },
        )
        .await?;
    }

    // The primary's host dies.
    cluster.kill_host(&leader)?;
    let new = cluster
        .wait_new_leader(&leader, scaled(Duration::from_secs(120)))
        .await?;
    eprintln!("new leader {new}");
    let other = if new == r1 { r2.clone() } else { r1.clone() };

    // Both permanent slots are there, the logical one not behind what was consumed.
    let at = wait_slots_at(&cluster, &new, &confirmed).await?;
    eprintln!("{new}: {LOGICAL} at {at} after the failover (consumed up to {confirmed})");
    // No change lost: the unread batch comes out of the slot on the new primary (a change
    // of the consumed batch may come again, as Patroni documents, never a gap).
    let rows = wait_for(
        &format!("{new}: decode {LOGICAL}"),
        scaled(Duration::from_secs(60)),
        || async {
            Ok(
                match cluster
                    .sql(
                        &new,
                        &format!(
                            "SELECT data FROM pg_catalog.pg_logical_slot_get_changes('{LOGICAL}', NULL, NULL)"
                        ),
                    )
                    .await
                {
                    Ok(rows) => Check::Done(rows),
                    Err(e) => Check::not_yet(format!("{e:#}")),
                },
            )
        },
    )
    .await?;
    let data: Vec<String> = rows
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect();
    let pending: Vec<&String> = data.iter().filter(|d| d.contains("'pending'")).collect();
    ensure!(
        pending.len() == 10,
        "the unread changes should all come out of {LOGICAL} on {new}, got {} of 10: {data:?}",
        pending.len()
    );

    // The new leader keeps a slot for the former primary (it inherited retain_slots), ready
    // before it rejoins.
    let slots = physical_slots(&cluster, &new).await?;
    ensure!(
        slots.contains(&leader) && slots.contains(&other) && slots.contains(&PHYSICAL.to_owned()),
        "{new} should keep slots for {leader}, {other} and {PHYSICAL}: {slots:?}"
    );

    // A member briefly gone keeps its slot: stop the other replica's agent (its member key
    // goes), watch the slot stay for several ttls, then it comes back and streams.
    cluster.stop_agent(&other).await;
    let member_key = cluster.key(&format!("members/{other}"));
    wait_for(
        &format!("{other}'s member key gone"),
        scaled(ttl + Duration::from_secs(60)),
        || async {
            Ok(match cluster.etcd().get(&member_key).await {
                Ok(None) => Check::Done(()),
                Ok(Some(_)) => Check::not_yet("still there"),
                Err(e) => Check::not_yet(format!("{e:#}")),
            })
        },
    )
    .await?;
    // A hold, not a synchronisation: the slot is looked at for three ttls.
    let started = Instant::now();
    while started.elapsed() < 3 * ttl {
        cluster.check_agents_alive()?;
        if let Ok(s) = physical_slots(&cluster, &new).await {
            ensure!(
                s.contains(&other),
                "{new} dropped {other}'s slot {:.0}s after its member key went (member_slots_ttl 1800): {s:?}",
                started.elapsed().as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    cluster.start_agent(&other)?;
    cluster.start_agent(&leader)?;
    let members = [new.clone(), other.clone(), leader.clone()];
    let back = cluster
        .wait_healthy_members(&members, scaled(Duration::from_secs(180)))
        .await
        .context("the members come back")?;
    ensure!(
        back.leader == new,
        "leader {} after the rejoin",
        back.leader
    );
    eprintln!("{other} and {leader} back, streaming from {new}");
    cluster.finish();
    Ok(())
}
