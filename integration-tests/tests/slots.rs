//! Replication slots on real clusters: pgbaton drops only the slots it manages.
//!
//! Skips (printing a `SKIP` line) when a program it needs is missing, unless
//! `PGBATON_REQUIRE_INTEGRATION=1`. See docs/testing.md.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use baton_integration_tests::tools_or_skip;
use baton_integration_tests::{Check, Cluster, ClusterSpec, scaled, wait_for};

/// The tools, or return `Ok(())` from the test after printing why it is skipped.
/// Slots other tools keep on the primary (Barman, pg_receivewal).
const FOREIGN: [&str; 2] = ["barman", "pg_receivewal_slot"];
/// A slot another tool keeps on a standby (for a cascading pg_receivewal, say).
const FOREIGN_ON_STANDBY: &str = "archiver_on_standby";
/// How long the cluster runs normally with the foreign slots in place (wall time).
const NORMAL_OPERATION: Duration = Duration::from_secs(60);

/// Physical, non-temporary replication slots on node `name`, sorted.
async fn slots(cluster: &Cluster, name: &str) -> anyhow::Result<Vec<String>> {
    let rows = cluster
        .sql(
            name,
            "SELECT slot_name::text FROM pg_catalog.pg_replication_slots \
             WHERE slot_type = 'physical' AND NOT temporary ORDER BY 1",
        )
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect())
}

async fn create_slot(cluster: &Cluster, name: &str, slot: &str) -> anyhow::Result<()> {
    cluster
        .sql(
            name,
            &format!("SELECT pg_catalog.pg_create_physical_replication_slot('{slot}', true)"),
        )
        .await
        .with_context(|| format!("create slot {slot} on {name}"))?;
    Ok(())
}

/// Wait until node `name`'s slots satisfy `ok`.
async fn wait_slots(
    cluster: &Cluster,
    name: &str,
    what: &str,
    ok: impl Fn(&[String]) -> bool,
) -> anyhow::Result<Vec<String>> {
    wait_for(
        &format!("{name}: {what}"),
        scaled(Duration::from_secs(60)),
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

fn has(slots: &[String], wanted: &[&str]) -> bool {
    wanted.iter().all(|w| slots.iter().any(|s| s == w))
}

/// Issue 15: a foreign physical slot on the primary survives a minute of normal operation,
/// the departure of a member (whose slot, pgbaton's, is dropped) and a switchover; the new
/// primary keeps a foreign slot of its own too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_slots_survive_normal_operation_and_a_switchover() -> anyhow::Result<()> {
    let tools = tools_or_skip!("foreign_slots_survive_normal_operation_and_a_switchover");
    let mut spec = ClusterSpec::new(3);
    spec.haproxy = None;
    // A departed member's slot goes with its member key (the default keeps it for 30min:
    // tests/permanent_slots.rs covers that).
    spec.extra_config = serde_json::json!({"bootstrap": {"dcs": {"member_slots_ttl": 0}}});
    let ttl = spec.timing.ttl();
    let mut cluster = Cluster::start(&tools, spec).await?;
    let healthy = cluster
        .wait_healthy(scaled(Duration::from_secs(180)))
        .await
        .context("initial bootstrap")?;
    let leader = healthy.leader.clone();
    let (target, leaving) = (healthy.replicas[0].clone(), healthy.replicas[1].clone());
    eprintln!("leader {leader}, switchover target {target}, leaving {leaving}");
    // Member names are lower-case words: their slot names are the names.
    let member_slots = [target.as_str(), leaving.as_str()];
    wait_slots(&cluster, &leader, "member slots", |s| has(s, &member_slots)).await?;

    for slot in FOREIGN {
        create_slot(&cluster, &leader, slot).await?;
    }
    create_slot(&cluster, &target, FOREIGN_ON_STANDBY).await?;

    // A minute of normal operation: the slots stay, the leader stays.
    let started = Instant::now();
    let mut looks = 0;
    while started.elapsed() < NORMAL_OPERATION || looks < 10 {
        cluster.check_agents_alive()?;
        let look = async {
            let on_leader = slots(&cluster, &leader).await?;
            let on_target = slots(&cluster, &target).await?;
            let now_leader = cluster.leader().await?;
            anyhow::Ok((on_leader, on_target, now_leader))
        };
        match look.await {
            Ok((on_leader, on_target, now_leader)) => {
                let at = started.elapsed().as_secs_f64();
                ensure!(
                    has(&on_leader, &FOREIGN) && has(&on_leader, &member_slots),
                    "{leader} after {at:.0}s: slots {on_leader:?}"
                );
                ensure!(
                    has(&on_target, &[FOREIGN_ON_STANDBY]),
                    "{target} after {at:.0}s: slots {on_target:?}"
                );
                ensure!(
                    now_leader.as_deref() == Some(leader.as_str()),
                    "the leader changed during normal operation: {now_leader:?}"
                );
                looks += 1;
            }
            // A loaded machine may miss a look; the slots are what is checked.
            Err(e) => eprintln!("look failed: {e:#}"),
        }
        // A hold, not a synchronisation: the slots are looked at throughout the minute.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    eprintln!(
        "{looks} looks over {:.0}s: foreign slots kept",
        started.elapsed().as_secs_f64()
    );

    // A member leaves: its slot is pgbaton's and goes; the foreign ones stay.
    cluster.stop_agent(&leaving).await;
    wait_for(
        &format!("{leaving}'s slot dropped on {leader}"),
        scaled(ttl + Duration::from_secs(60)),
        || async {
            cluster.check_agents_alive()?;
            let s = match slots(&cluster, &leader).await {
                Ok(s) => s,
                Err(e) => return Ok(Check::not_yet(format!("{e:#}"))),
            };
            ensure!(has(&s, &FOREIGN), "{leader}: foreign slot gone: {s:?}");
            Ok(if s.contains(&leaving) {
                Check::not_yet(format!("slots {s:?}"))
            } else {
                Check::Done(())
            })
        },
    )
    .await?;

    // Switchover: the old primary keeps its foreign slots (a slot is not replicated; they
    // stay where they were made), the new primary creates the old one's slot and keeps the
    // foreign slot it had as a standby.
    let text = cluster.cli_switchover(&leader, &target, None).await?;
    ensure!(
        text.contains(&format!("Successfully switched over to \"{target}\"")),
        "{text}"
    );
    let members = [leader.clone(), target.clone()];
    let now = cluster
        .wait_healthy_members(&members, scaled(Duration::from_secs(120)))
        .await
        .context("after the switchover")?;
    ensure!(
        now.leader == target,
        "leader is {} after the switchover",
        now.leader
    );
    let on_new = wait_slots(&cluster, &target, "a slot for the old primary", |s| {
        has(s, &[leader.as_str()])
    })
    .await?;
    ensure!(
        has(&on_new, &[FOREIGN_ON_STANDBY]),
        "new primary {target} dropped its foreign slot: {on_new:?}"
    );
    ensure!(
        !on_new.contains(&leaving),
        "{target} made a slot for {leaving}, which left: {on_new:?}"
    );
    let on_old = slots(&cluster, &leader).await?;
    ensure!(
        has(&on_old, &FOREIGN),
        "old primary {leader} lost its foreign slots: {on_old:?}"
    );
    // The new primary's next cycles change nothing either.
    let cycles_later = wait_slots(&cluster, &target, "a few cycles later", |s| {
        has(s, &[FOREIGN_ON_STANDBY, leader.as_str()])
    })
    .await?;
    eprintln!("{target} slots after the switchover: {cycles_later:?}; {leader}: {on_old:?}");
    cluster.finish();
    Ok(())
}
