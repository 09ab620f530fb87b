//! The HA cycle: observe (DCS, PostgreSQL, peers when leaderless) → `decide` → execute the
//! actions in order → publish (member key, `status`, the REST snapshot).
//!
//! `Agent` is the one owner of agent state. It is generic over its IO so the simulator can run
//! the same code over in-memory adapters.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use anyhow::Context;
use baton_api::{PendingRestart, PgRunState, Snapshot};
use baton_config::{Config, ConfigErrors, DynamicConfig, Loaded};
use baton_core::{
    Action, ActionOutcome, Clock, ClusterView, HaConfig, LeaseState, MemberName, Memory, Mono,
    Observation, ScheduleState, decide,
};
use baton_dcs::{Dcs, Holder};
use baton_pg::Postgres;
use tokio::sync::watch;
use tracing::{Instrument, info};

use crate::fence::FenceSignal;
use crate::peers::Peers;

mod commands;
mod execute;
mod long;
mod observe;
mod publish;

/// How a cycle ended, for the loop that schedules the next one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CycleOutcome {
    /// Run the next cycle at the latest at this time.
    pub wake_at: Mono,
    /// An action failed: the loop backs off before retrying.
    pub failed: bool,
    /// The decision's reason is the previous cycle's (the agent is where it was).
    pub same_reason: bool,
}

/// Loads the local configuration file again (SIGHUP, `POST /reload`), with the loader and
/// environment the agent started with.
pub type ConfigSource = Arc<dyn Fn() -> Result<Loaded, ConfigErrors> + Send + Sync>;

/// PostgreSQL's part of the configuration: the merged parameters and the `pg_hba` lines.
type PgConfig = (BTreeMap<String, String>, Vec<String>, Vec<(String, String)>);

/// The IO an agent works through.
pub struct AgentIo<D: Dcs, P: Postgres, R: Peers> {
    pub dcs: Arc<D>,
    pub pg: Arc<P>,
    pub peers: R,
    pub clock: Arc<dyn Clock>,
}

pub struct Agent<D: Dcs, P: Postgres, R: Peers> {
    dcs: Arc<D>,
    pg: Arc<P>,
    peers: R,
    clock: Arc<dyn Clock>,
    config: Config,
    name: MemberName,
    api_url: String,
    conn_url: String,
    /// The effective dynamic configuration and the `config` revision it came from.
    dynamic: DynamicConfig,
    dynamic_revision: i64,
    /// The HA settings `decide` and the loop use, computed from `config` and `dynamic`
    /// whenever either changes ([`Agent::refresh_ha`]).
    ha: HaConfig,
    memory: Memory,
    /// DCS failsafe mode (`crate::failsafe`).
    failsafe: crate::failsafe::FailsafeState,
    /// Cycles run so far (the `n` of the `ha_cycle` span).
    cycles: u64,
    /// The long action running beside the loop, if any ([`long`]).
    running: Option<long::Running>,
    /// A restart waiting for its time (`POST /restart` with `schedule`).
    scheduled_restart: Option<baton_core::ScheduledRestart>,
    /// Where the scheduled restart is kept across agent restarts (`None`: in memory only).
    restart_file: Option<crate::restart_file::RestartFile>,
    /// The `timeout` of the restart about to start (`POST /restart`).
    restart_timeout: Option<std::time::Duration>,
    /// The answer to an immediate `POST /restart`, sent when the restart ends.
    restart_reply: Option<tokio::sync::oneshot::Sender<baton_api::CommandReply>>,
    last_reason: Option<String>,
    /// What the actions executed since the last observation did; the next observation
    /// carries them to `decide` (the agent never edits its memory).
    outcomes: Vec<ActionOutcome>,
    /// DCS warnings already logged (garbage in keys), so each is logged once.
    seen_warnings: BTreeSet<String>,
    dcs_error: Option<String>,
    dcs_last_seen: Option<u64>,
    last_view: Option<ClusterView>,
    lease: watch::Receiver<LeaseState>,
    leading: watch::Sender<FenceSignal>,
    snapshot: watch::Sender<Arc<Snapshot>>,
    /// Where the configuration is re-read from; `None`: there is nothing to re-read.
    config_source: Option<ConfigSource>,
    /// PostgreSQL's part of the configuration as last applied (`Postgres::reconfigure`).
    applied_pg: Option<PgConfig>,
    /// The settings waiting for a PostgreSQL restart, as the last application reported them.
    pending_restart_reason: Vec<PendingRestart>,
    /// The last failure to apply PostgreSQL's configuration (logged once).
    apply_error: Option<String>,
    /// Declared permanent slots left alone because a slot of that name has another kind
    /// (logged once per change, `publish`).
    slot_conflicts: Vec<String>,
    /// The watchdog device (`None`: none is set up; see [`Agent::set_watchdog`]).
    watchdog: Option<Arc<crate::watchdog::Watchdog>>,
    /// The callback scripts and the one running ([`crate::callbacks`]).
    callbacks: crate::callbacks::Callbacks,
}

/// `2024-08-28T19:39:26+00:00` for history lines (Patroni writes ISO 8601 with offset).
fn iso_at(unix_ms: i64) -> String {
    baton_core::format_iso8601_utc(u64::try_from(unix_ms / 1000).unwrap_or(0))
}

impl<D: Dcs, P: Postgres, R: Peers> Agent<D, P, R> {
    pub fn new(
        io: AgentIo<D, P, R>,
        config: Config,
        dynamic: DynamicConfig,
        lease: watch::Receiver<LeaseState>,
        leading: watch::Sender<FenceSignal>,
        snapshot: watch::Sender<Arc<Snapshot>>,
    ) -> anyhow::Result<Agent<D, P, R>> {
        let name = MemberName::new(config.name.clone()).context("member name is empty")?;
        Ok(Agent {
            api_url: format!(
                "{}://{}/patroni",
                config.restapi.scheme(),
                config.restapi.connect_address
            ),
            conn_url: format!("postgres://{}/postgres", config.postgresql.connect_address),
            dcs: io.dcs,
            pg: io.pg,
            peers: io.peers,
            clock: io.clock,
            name,
            ha: baton_config::effective_ha(&config, &dynamic),
            callbacks: crate::callbacks::Callbacks::new(&config),
            config,
            dynamic,
            dynamic_revision: 0,
            memory: Memory::default(),
            cycles: 0,
            failsafe: Default::default(),
            running: None,
            scheduled_restart: None,
            restart_file: None,
            restart_timeout: None,
            restart_reply: None,
            last_reason: None,
            outcomes: Vec::new(),
            seen_warnings: BTreeSet::new(),
            dcs_error: None,
            dcs_last_seen: None,
            last_view: None,
            lease,
            leading,
            snapshot,
            config_source: None,
            applied_pg: None,
            pending_restart_reason: Vec::new(),
            apply_error: None,
            slot_conflicts: Vec::new(),
            watchdog: None,
        })
    }

    /// Arm `watchdog` before taking the leader role (`ArmWatchdog`); its kicks and disarming
    /// are [`crate::watchdog::run_watchdog`]'s.
    pub fn set_watchdog(&mut self, watchdog: Arc<crate::watchdog::Watchdog>) {
        self.watchdog = Some(watchdog);
    }

    /// Failsafe mode: read the `POST /failsafe` requests the REST API accepted from `inbox`.
    pub fn set_failsafe_inbox(&mut self, inbox: baton_api::FailsafeInbox) {
        self.failsafe = crate::failsafe::FailsafeState::with_inbox(inbox);
    }

    /// Keep scheduled restarts in `file`, and take up the one an earlier run left there.
    pub fn set_restart_file(&mut self, file: crate::restart_file::RestartFile) {
        if let Some(mut restart) = file.load() {
            // Stopping the agent stopped PostgreSQL too: that restart is ours and does not
            // make the schedule moot (Patroni's "restart has already happened" rule applies
            // to restarts seen while this agent runs).
            restart.postmaster_start_time = None;
            info!(schedule = %restart.schedule, "a scheduled restart kept from before the agent restarted");
            self.scheduled_restart = Some(restart);
        }
        self.restart_file = Some(file);
    }

    /// Change the scheduled restart: kept on disk, shown by the REST API at once.
    fn set_scheduled_restart(&mut self, restart: Option<baton_core::ScheduledRestart>) {
        if let Some(file) = &self.restart_file {
            file.save(restart.as_ref());
        }
        let schedule = restart.as_ref().map(|r| r.schedule.clone());
        self.scheduled_restart = restart;
        self.snapshot.send_modify(|snap| {
            Arc::make_mut(snap).scheduled_restart = schedule;
        });
    }

    /// Let [`Agent::reload`] re-read the configuration through `source`.
    pub fn set_config_source(&mut self, source: ConfigSource) {
        self.config_source = Some(source);
    }

    /// The configuration the agent runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// WAL can also come from an archive (`restore_command` is set).
    fn restore_command(&self) -> bool {
        baton_config::merged_parameters(&self.config, &self.dynamic)
            .get("restore_command")
            .is_some_and(|c| !c.is_empty())
    }

    /// Drop a scheduled restart once it ran, cannot run, or no longer applies (Patroni's
    /// `evaluate_scheduled_restart`); each with a log line.
    fn settle_scheduled_restart(&mut self, obs: &Observation, actions: &[Action]) {
        let Some(restart) = &self.scheduled_restart else {
            return;
        };
        let why = if self.ha.pause {
            Some("maintenance mode".to_owned())
        } else {
            match baton_core::schedule_state(restart, obs.unix_ms, self.ha.loop_wait, &obs.pg) {
                ScheduleState::Wait(_) => None,
                ScheduleState::Stale => Some("found a stale scheduled restart".to_owned()),
                ScheduleState::AlreadyRestarted => {
                    Some("postgres has restarted since it was scheduled".to_owned())
                }
                ScheduleState::Due if obs.running.is_some() => None,
                ScheduleState::Due => {
                    if actions
                        .iter()
                        .any(|a| matches!(a, Action::RestartPostgres { .. }))
                    {
                        Some("its time has come".to_owned())
                    } else {
                        let holds = self.holds_key(obs.dcs.as_ref());
                        let mismatch =
                            baton_core::restart_matches(&restart.filters, &obs.pg, holds).err();
                        Some(format!(
                            "not proceeding with the restart: {}",
                            mismatch.map_or("it cannot run now".to_owned(), |m| m.to_string())
                        ))
                    }
                }
            }
        };
        if let Some(why) = why {
            info!(schedule = %restart.schedule, "scheduled restart removed: {why}");
            self.set_scheduled_restart(None);
        }
    }

    /// Compute the HA settings again after `config` or `dynamic` changed.
    fn refresh_ha(&mut self) {
        self.ha = baton_config::effective_ha(&self.config, &self.dynamic);
    }

    /// The leader key holds our name and our current lease (what this cycle's actions did
    /// with the key wins over `view`, which was read before they ran).
    fn holds_key(&self, view: Option<&ClusterView>) -> bool {
        let lease = self.lease.borrow().id;
        baton_core::holds_leader_key(view, &self.name, lease, &self.outcomes)
    }

    /// Whether we still count as the leader: decide's memory as this cycle's actions left it.
    fn was_leader(&self) -> bool {
        self.memory.after(&self.outcomes).was_leader
    }

    /// Who our leader-only DCS writes are made for: our name on our current lease.
    fn holder(&self) -> Option<Holder> {
        self.lease.borrow().id.map(|lease| Holder {
            name: self.name.clone(),
            lease,
        })
    }

    /// One observe → decide → execute → publish pass, in a `ha_cycle` tracing span (the
    /// cycle's number, then the leader it saw and how many actions it decided), so every line logged
    /// while it runs says which cycle and which view it belongs to.
    pub async fn cycle(&mut self) -> CycleOutcome {
        self.cycles += 1;
        let span = tracing::info_span!(
            "ha_cycle",
            n = self.cycles,
            leader = tracing::field::Empty,
            actions = tracing::field::Empty,
        );
        self.run_cycle(&span).instrument(span.clone()).await
    }

    async fn run_cycle(&mut self, span: &tracing::Span) -> CycleOutcome {
        let now = self.clock.now();
        let obs = self.observe().await;
        if let Some(view) = &obs.dcs {
            let leader = view.leader_name().map_or("none", MemberName::as_str);
            span.record("leader", leader);
        }
        let decision = decide(&self.memory, &obs, &self.ha, now);
        span.record("actions", decision.actions.len());
        self.settle_scheduled_restart(&obs, &decision.actions);
        let reason = decision.reason.to_string();
        let same_reason = self.last_reason.as_deref() == Some(reason.as_str());
        if !same_reason {
            info!("{reason}");
            self.last_reason = Some(reason);
        }
        let promoting = decision
            .actions
            .iter()
            .any(|a| matches!(a, Action::Promote));
        for (warning, line) in baton_core::slot_readiness::log_lines(
            &self.memory.logical_readiness,
            &decision.next_memory.logical_readiness,
            promoting,
        ) {
            if warning {
                tracing::warn!("{line}");
            } else {
                info!("{line}");
            }
        }
        self.memory = decision.next_memory.clone();

        // Health checks see what was just observed (a crashed postmaster, say) before the
        // actions run: a restart can take seconds, and `/primary` must not answer 200 meanwhile.
        if !decision.actions.is_empty() {
            let holds = self.holds_key(obs.dcs.as_ref());
            self.publish_snapshot(obs.dcs.as_ref(), &obs.pg, holds, None);
        }
        let failed = self.execute(&decision.actions, &obs).await;
        let reloaded = self.apply_pg_config().await;
        let pg_after = if decision.actions.is_empty() && !reloaded {
            obs.pg.clone()
        } else {
            self.pg.observe().await
        };
        self.callbacks
            .set_restarting(self.busy() == Some(PgRunState::Restarting));
        self.callbacks
            .observed(&pg_after, self.holds_key(obs.dcs.as_ref()), reloaded);
        self.publish(obs.dcs.as_ref(), &pg_after, self.busy()).await;
        CycleOutcome {
            wake_at: decision.wake_at,
            failed,
            same_reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::iso_at;

    #[test]
    fn iso_timestamps_look_like_patronis() {
        let ts = iso_at(1_795_323_599_999);
        assert_eq!(ts, "2026-11-22T04:59:59+00:00");
        assert_eq!(ts.len(), "2026-11-22T04:09:19+00:00".len(), "{ts}");
        assert!(ts.ends_with("+00:00") && ts.as_bytes()[10] == b'T', "{ts}");
        let year: i32 = ts[..4].parse().expect("year");
        assert!(year >= 2024, "{ts}");
    }
}
