//! One member's agent process: the real `baton_agent` pieces — `ha::Agent` (the HA cycle),
//! `lease::LeaseKeeper`, `fence::run_fencer` — plus copies of the two private pieces of
//! `baton_agent::run` (the loop around `cycle` and the PostgreSQL liveness monitor), wired to
//! `SimDcs`, `SimPostgres` and `SimPeers`.
//!
//! All tasks of a process share its [`crate::pause::Gate`] (pausing the process freezes all
//! of them, the fencer included) and are aborted together when the process crashes.
//! PostgreSQL is not part of the process and survives both; so does the fence guard
//! (`baton_agent::guard`, a process of its own: [`guard_main`] runs its rule, `guard_step`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use baton_agent::fence::{FenceRecord, FenceSignal, FencerInputs, run_fencer};
use baton_agent::guard::{GUARD_INTERVAL, GuardStep, GuardView, guard_step};
use baton_agent::lease::LeaseKeeper;
use baton_agent::{Agent, AgentIo, FAILURE_BACKOFF, initial_dynamic, pg_monitor};
use baton_api::Snapshot;
use baton_config::Config;
use baton_core::{Clock, LeaseState, MemberName, StopMode};
use baton_ports::{Dcs, Postgres};
use tokio::sync::{Notify, watch};

use crate::dcs::SimDcs;
use crate::model::Role;
use crate::pause::Pausable;
use crate::peers::SimPeers;
use crate::pg::SimPostgres;
use crate::world::World;

/// Spawn `fut` as a task of member `i`'s agent process.
fn spawn_in(w: &World, i: usize, fut: impl Future<Output = ()> + Send + 'static) {
    let gate = w.agents()[i].gate.clone();
    let handle = tokio::spawn(Pausable::new(fut, gate, i));
    w.agents()[i].tasks.push(handle.abort_handle());
}

/// Start member `i`'s agent process.
pub(crate) fn start(w: &Arc<World>, i: usize) {
    let n = {
        let mut agents = w.agents();
        let slot = &mut agents[i];
        slot.running = true;
        slot.incarnation += 1;
        slot.tasks.clear();
        slot.started_at = w.now();
        slot.armed = false;
        slot.disarmed_without_dcs = false;
        slot.owns_key = false;
        slot.incarnation
    };
    w.log(w.name(i), &format!("agent process started (#{n})"));
    // The agent starts a guard (replacing an earlier agent's: one is enough, they read the
    // same record).
    let need_guard = w.agents()[i].guard.as_ref().is_none_or(|g| g.is_finished());
    if need_guard {
        let guard = tokio::spawn(guard_main(w.clone(), i));
        w.agents()[i].guard = Some(guard);
    }
    spawn_in(w, i, agent_main(w.clone(), i));
}

/// The fence guard: not paused or killed with the agent; every [`GUARD_INTERVAL`] it applies
/// `baton_agent::guard::guard_step` to the fencing record, "a postmaster runs as a primary"
/// (the real guard: no `standby.signal`) and "the agent process lives".
async fn guard_main(w: Arc<World>, i: usize) {
    let record = w.agents()[i].fence_record.clone();
    let pg = SimPostgres::new(w.clone(), i);
    loop {
        tokio::time::sleep(GUARD_INTERVAL).await;
        let agent_alive = w.agents()[i].running;
        let view = GuardView::look(record.load(), w.clock.now(), agent_alive, || {
            w.with_model(|m| {
                m.nodes[i]
                    .proc
                    .as_ref()
                    .is_some_and(|p| p.role == Role::Primary)
            })
        });
        match guard_step(view) {
            GuardStep::Fence => {
                w.log(
                    w.name(i),
                    "fence guard: the fencing deadline passed and the agent did not stop PostgreSQL; killing it",
                );
                let _ = pg.stop(StopMode::Immediate).await;
            }
            GuardStep::Wait => {}
            GuardStep::Exit => return,
        }
    }
}

/// Kill member `i`'s agent process (SIGKILL): its tasks stop where they are; PostgreSQL runs on.
pub(crate) fn crash(w: &World, i: usize) {
    let tasks = {
        let mut agents = w.agents();
        let slot = &mut agents[i];
        slot.running = false;
        slot.snapshot = None;
        slot.gate.resume();
        std::mem::take(&mut slot.tasks)
    };
    for t in tasks {
        t.abort();
    }
    w.log(w.name(i), "agent process killed");
}

pub(crate) fn pause(w: &World, i: usize) {
    w.agents()[i].gate.pause();
    w.log(w.name(i), "agent process paused (SIGSTOP)");
}

pub(crate) fn resume(w: &World, i: usize) {
    w.agents()[i].gate.resume();
    w.log(w.name(i), "agent process resumed (SIGCONT)");
}

/// `baton_agent::run` without the REST server and signal handling.
async fn agent_main(w: Arc<World>, i: usize) {
    let clock: Arc<dyn Clock> = w.clock.clone();
    let config: Config = w.params.configs[i].clone();
    let dcs = Arc::new(SimDcs::new(w.clone(), i));
    let pg = Arc::new(SimPostgres::new(w.clone(), i));

    // Never set: the process ends by being killed. Held for the whole loop, because a
    // dropped sender reads as "shut down" to the keeper and the fencer.
    let (_stop_tx, stop_rx) = watch::channel(false);
    // The lease and `leading` channels are fanned out so that no `watch` has two waiters
    // (tokio wakes several waiters of one `watch` in a random order, which would make runs
    // irreproducible). One scheduling hop, no virtual time.
    let (fence_lease_tx, fence_lease_rx) = watch::channel(LeaseState::default());
    let (loop_lease_tx, lease_rx) = watch::channel(LeaseState::default());
    let (fence_leading_tx, leading_rx) = watch::channel(FenceSignal::default());
    // As in `baton_agent::run`, the fencer starts before anything waits for the DCS.
    let record = w.agents()[i].fence_record.clone();
    spawn_in(
        &w,
        i,
        run_fencer(
            pg.clone(),
            clock.clone(),
            record,
            FencerInputs {
                lease: fence_lease_rx,
                signal: leading_rx,
                shutdown: stop_rx.clone(),
            },
        ),
    );

    let dynamic = initial_dynamic(dcs.as_ref(), &config).await;
    let ttl = Duration::from_secs(u64::from(dynamic.ttl));
    let retry_timeout = Duration::from_secs(u64::from(dynamic.retry_timeout).max(1));

    // The keeper's pace follows the HA loop's signal, as in `baton_agent::run`.
    let (keeper_leading_tx, keeper_leading_rx) = watch::channel(FenceSignal::default());
    let (keeper, keeper_rx) = LeaseKeeper::new(dcs.clone(), clock.clone(), ttl);
    let keeper = keeper.pace_by(keeper_leading_rx);
    let keeper_stop = stop_rx.clone();
    spawn_in(&w, i, async move {
        keeper.run(keeper_stop).await;
    });
    spawn_in(&w, i, async move {
        let mut from = keeper_rx;
        while from.changed().await.is_ok() {
            let lease = *from.borrow_and_update();
            fence_lease_tx.send_replace(lease);
            loop_lease_tx.send_replace(lease);
        }
    });
    let (leading_tx, mut agent_leading_rx) = watch::channel(FenceSignal::default());
    let name = MemberName::new(config.name.clone()).expect("simulated names are not empty");
    let (snap_tx, snap_rx) = watch::channel(Arc::new(Snapshot::initial(
        &config.scope,
        name,
        format!("http://{}/patroni", config.restapi.connect_address),
        format!("postgres://{}/postgres", config.postgresql.connect_address),
    )));
    w.agents()[i].snapshot = Some(snap_rx.clone());
    let lw = w.clone();
    let keep_armed = w.fixes.keep_fencer_armed_without_dcs;
    spawn_in(&w, i, async move {
        let mut snapshots = snap_rx;
        let mut armed = false;
        loop {
            tokio::select! {
                biased;
                r = agent_leading_rx.changed() => if r.is_err() { return },
                r = snapshots.changed(), if keep_armed => if r.is_err() { return },
            }
            let signal = *agent_leading_rx.borrow_and_update();
            keeper_leading_tx.send_replace(signal);
            let leading = signal.leading;
            let dcs_unreadable = snapshots.borrow_and_update().cluster.is_none();
            // The proposed fix: a leader stays a leader (for the fencer) while it cannot read
            // the DCS; only a successful read can say otherwise.
            let on = leading || (keep_armed && armed && dcs_unreadable);
            if on != armed {
                armed = on;
                {
                    let mut agents = lw.agents();
                    agents[i].armed = on;
                    agents[i].disarmed_without_dcs = !on && dcs_unreadable;
                }
                lw.log(
                    lw.name(i),
                    if on {
                        "[sim] fencer armed (leading)"
                    } else {
                        if dcs_unreadable {
                        "[sim] fencer disarmed (not leading; the last cycle could not read the DCS)"
                    } else {
                        "[sim] fencer disarmed (not leading)"
                    }
                    },
                );
            }
            fence_leading_tx.send_replace(FenceSignal {
                leading: on,
                ..signal
            });
        }
    });
    let pg_changed = Arc::new(Notify::new());
    spawn_in(
        &w,
        i,
        pg_monitor(pg.clone(), pg_changed.clone(), stop_rx.clone()),
    );

    let mut lease_wait = lease_rx.clone();
    let _ = tokio::time::timeout(retry_timeout, lease_wait.wait_for(|l| l.id.is_some())).await;

    let io = AgentIo {
        dcs: dcs.clone(),
        pg: pg.clone(),
        peers: SimPeers::new(w.clone(), i),
        clock: clock.clone(),
    };
    let mut agent = Agent::new(io, config, dynamic, lease_rx.clone(), leading_tx, snap_tx)
        .expect("simulated configurations are valid");
    // The `POST /failsafe` requests this incarnation's REST API accepts (a restart forgets).
    let inbox = baton_api::FailsafeInbox::default();
    w.agents()[i].failsafe_inbox = inbox.clone();
    agent.set_failsafe_inbox(inbox);
    let mut dcs_changes = dcs.changes();
    let mut lease_changes = lease_rx.clone();
    loop {
        let outcome = agent.cycle().await;
        let mut wait = outcome.wake_at.saturating_since(clock.now());
        if outcome.failed {
            wait = wait.max(FAILURE_BACKOFF);
        }
        let last_lease = lease_changes.borrow_and_update().id;
        let busy = agent.long_action_running();
        tokio::select! {
            biased;
            _ = agent.long_action_done(), if busy => {}
            _ = dcs_changes.changed() => {}
            _ = pg_changed.notified() => {}
            _ = lease_changes.wait_for(|l| l.id != last_lease) => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
