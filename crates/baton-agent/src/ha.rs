//! The HA cycle: observe (DCS, PostgreSQL, peers when leaderless) → `decide` → execute the
//! actions in order → publish (member key, `status`, the REST snapshot).
//!
//! `Agent` is the one owner of agent state. It is generic over its IO so the simulator can run
//! the same code over in-memory adapters.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use baton_api::{Command, CommandReply, PendingRestart, Snapshot, SwitchoverRequest};
use baton_config::{Config, ConfigErrors, DynamicConfig, Loaded};
use baton_core::{
    Action, ActionFailure, Clock, ClusterView, DataDir, FailoverRequest, LeaseState, Member,
    MemberName, Memory, Mono, Observation, PgState, StartRole, StopMode, decide,
};
use baton_dcs::{Dcs, Holder, LeaderWrite};
use baton_pg::{Postgres, Reconfigured};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::fence::FenceSignal;
use crate::peers::Peers;

/// How a cycle ended, for the loop that schedules the next one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CycleOutcome {
    /// Run the next cycle at the latest at this time.
    pub wake_at: Mono,
    /// An action failed: the loop backs off before retrying.
    pub failed: bool,
}

/// Loads the local configuration file again (SIGHUP, `POST /reload`), with the loader and
/// environment the agent started with.
pub type ConfigSource = Arc<dyn Fn() -> Result<Loaded, ConfigErrors> + Send + Sync>;

/// PostgreSQL's part of the configuration: the merged parameters and the `pg_hba` lines.
type PgConfig = (BTreeMap<String, String>, Vec<String>);

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
    memory: Memory,
    last_reason: Option<String>,
    last_failure: Option<ActionFailure>,
    /// DCS warnings already logged (garbage in keys), so each is logged once.
    seen_warnings: BTreeSet<String>,
    dcs_error: Option<String>,
    dcs_last_seen: Option<u64>,
    last_view: Option<ClusterView>,
    lease: watch::Receiver<LeaseState>,
    leading: watch::Sender<FenceSignal>,
    snapshot: watch::Sender<Arc<Snapshot>>,
    /// The lease we attached the leader key to in this cycle: the cycle's DCS view predates it.
    took_key_with: Option<i64>,
    /// We released the leader key in this cycle (same reason).
    released_key: bool,
    /// Where the configuration is re-read from; `None`: there is nothing to re-read.
    config_source: Option<ConfigSource>,
    /// PostgreSQL's part of the configuration as last applied (`Postgres::reconfigure`).
    applied_pg: Option<PgConfig>,
    /// The settings waiting for a PostgreSQL restart, as the last application reported them.
    pending_restart_reason: Vec<PendingRestart>,
    /// The last failure to apply PostgreSQL's configuration (logged once).
    apply_error: Option<String>,
    /// The watchdog device (`None`: none is set up; see [`Agent::set_watchdog`]).
    watchdog: Option<Arc<crate::watchdog::Watchdog>>,
    /// DCS failsafe mode (`crate::failsafe`).
    failsafe: crate::failsafe::FailsafeState,
}

/// Seconds since the Unix epoch (for `dcs_last_seen` and history timestamps only).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Milliseconds since the Unix epoch (compared with a switchover's `scheduled_at` only).
fn unix_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `2024-08-28T19:39:26+00:00` for history lines (Patroni writes ISO 8601 with offset).
fn iso_now() -> String {
    baton_core::format_iso8601_utc(unix_now())
}

/// PostgreSQL state label as Patroni's `PostgresqlState` prints it.
fn state_label(pg: &PgState, busy: Option<&'static str>) -> String {
    if let Some(busy) = busy {
        return busy.to_owned();
    }
    match (&pg.sql, pg.is_running()) {
        (Some(_), _) => "running",
        (None, true) => "starting",
        (None, false) => "stopped",
    }
    .to_owned()
}

fn role_label(pg: &PgState, holds_key: bool) -> &'static str {
    match &pg.sql {
        Some(sql) if sql.in_recovery => "replica",
        Some(_) => "primary",
        None if matches!(pg.data_dir, DataDir::Empty) => "uninitialized",
        None if holds_key => "primary",
        None => "replica",
    }
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
            config,
            dynamic,
            dynamic_revision: 0,
            memory: Memory::default(),
            last_reason: None,
            last_failure: None,
            seen_warnings: BTreeSet::new(),
            dcs_error: None,
            dcs_last_seen: None,
            last_view: None,
            lease,
            leading,
            snapshot,
            took_key_with: None,
            released_key: false,
            config_source: None,
            applied_pg: None,
            pending_restart_reason: Vec::new(),
            apply_error: None,
            watchdog: None,
            failsafe: Default::default(),
        })
    }

    /// Failsafe mode: read the `POST /failsafe` requests the REST API accepted from `inbox`.
    pub fn set_failsafe_inbox(&mut self, inbox: baton_api::FailsafeInbox) {
        self.failsafe = crate::failsafe::FailsafeState::with_inbox(inbox);
    }

    /// Arm `watchdog` before taking the leader role (`ArmWatchdog`); its kicks and disarming
    /// are [`crate::watchdog::run_watchdog`]'s.
    pub fn set_watchdog(&mut self, watchdog: Arc<crate::watchdog::Watchdog>) {
        self.watchdog = Some(watchdog);
    }

    /// Let [`Agent::reload`] re-read the configuration through `source`.
    pub fn set_config_source(&mut self, source: ConfigSource) {
        self.config_source = Some(source);
    }

    /// The configuration the agent runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Re-read the local configuration file (SIGHUP, `POST /reload`) and adopt what applies
    /// at run time ([`crate::reload::adopt`]); PostgreSQL gets its part in the next cycle. A
    /// file with errors changes nothing: the errors are logged with their key paths and the
    /// running configuration stays. Never ends the agent.
    pub async fn reload(&mut self) -> CommandReply {
        let Some(source) = self.config_source.clone() else {
            return CommandReply::Text(
                503,
                "this agent has no configuration file to re-read".into(),
            );
        };
        let loaded = match tokio::task::spawn_blocking(move || source()).await {
            Ok(loaded) => loaded,
            Err(e) => {
                error!("failed to re-read the configuration: {e}");
                return CommandReply::Text(
                    500,
                    format!("failed to re-read the configuration: {e}"),
                );
            }
        };
        let loaded = match loaded {
            Ok(loaded) => loaded,
            Err(errors) => {
                for e in &errors.0 {
                    error!("configuration reload: {e}");
                }
                error!("the configuration file has errors; keeping the running configuration");
                return CommandReply::Text(
                    500,
                    format!(
                        "the configuration file has errors; keeping the running configuration:\n{errors}"
                    ),
                );
            }
        };
        for w in &loaded.warnings {
            warn!("config: {w}");
        }
        let reloaded = crate::reload::adopt(&self.config, loaded.config);
        for path in &reloaded.needs_restart {
            warn!(
                "{path}: changed in the configuration file; needs a restart of the agent (keeping the running value)"
            );
        }
        if reloaded.applied.is_empty() {
            info!("configuration reloaded: nothing to apply");
        } else {
            info!(
                "configuration reloaded: applying {}",
                reloaded.applied.join(", ")
            );
        }
        self.config = reloaded.config;
        // Look at PostgreSQL's settings again even when they did not change.
        self.applied_pg = None;
        CommandReply::Text(202, "reload scheduled".into())
    }

    /// Hand PostgreSQL its part of the configuration when it differs from what was applied
    /// last (the local file over the dynamic configuration, see
    /// [`baton_config::merged_parameters`]). Returns whether PostgreSQL re-read its files.
    async fn apply_pg_config(&mut self) -> bool {
        let wanted: PgConfig = (
            baton_config::merged_parameters(&self.config, &self.dynamic),
            baton_config::effective_pg_hba(&self.config, &self.dynamic),
        );
        if self.applied_pg.as_ref() == Some(&wanted) {
            return false;
        }
        match self.pg.reconfigure(&wanted.0, &wanted.1).await {
            Ok(outcome) => {
                self.apply_error = None;
                self.report_reconfigured(&outcome);
                // Deferred: look again next cycle (PostgreSQL may be running by then).
                if outcome.deferred.is_none() {
                    self.applied_pg = Some(wanted);
                }
                outcome.reloaded
            }
            Err(e) => {
                let text = format!("{e}");
                if self.apply_error.as_deref() != Some(text.as_str()) {
                    warn!("failed to apply the PostgreSQL configuration: {text}; retrying");
                    self.apply_error = Some(text);
                }
                false
            }
        }
    }

    /// Log what a configuration change did, once per change of the pending-restart list.
    fn report_reconfigured(&mut self, outcome: &Reconfigured) {
        for name in &outcome.kept {
            warn!(
                "postgresql.parameters.{name}: changed; needs a restart of the agent (it \
                 connects through the value it started with)"
            );
        }
        for (name, error) in &outcome.rejected {
            warn!("PostgreSQL did not apply parameter {name:?}: {error}");
        }
        if outcome.deferred.is_some() {
            return;
        }
        let reasons: Vec<PendingRestart> = outcome
            .pending_restart
            .iter()
            .map(|p| PendingRestart {
                name: p.name.clone(),
                old_value: p.old_value.clone(),
                new_value: p.new_value.clone(),
            })
            .collect();
        if reasons != self.pending_restart_reason {
            for p in &reasons {
                info!(
                    "{} changed from {} to {}: takes effect when PostgreSQL restarts (pending restart)",
                    p.name, p.old_value, p.new_value
                );
            }
            self.pending_restart_reason = reasons;
        }
    }

    /// WAL can also come from an archive (`restore_command` is set).
    fn restore_command(&self) -> bool {
        baton_config::merged_parameters(&self.config, &self.dynamic)
            .get("restore_command")
            .is_some_and(|c| !c.is_empty())
    }

    fn retry_timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.dynamic.retry_timeout).max(1))
    }

    fn ttl(&self) -> Duration {
        Duration::from_secs(u64::from(self.dynamic.ttl))
    }

    /// The leader key holds our name and our current lease.
    fn holds_key(&self, view: Option<&ClusterView>) -> bool {
        let lease = self.lease.borrow().id;
        if self.released_key {
            return false;
        }
        if lease.is_some() && self.took_key_with == lease {
            return true;
        }
        view.and_then(|v| v.leader.as_ref())
            .is_some_and(|l| l.name.as_ref() == Some(&self.name) && Some(l.lease) == lease)
    }

    /// Who our leader-only DCS writes are made for: our name on our current lease.
    fn holder(&self) -> Option<Holder> {
        self.lease.borrow().id.map(|lease| Holder {
            name: self.name.clone(),
            lease,
        })
    }

    /// A leader-only write: `Ok(true)` when written, `Ok(false)` (logged) when the leader
    /// key no longer holds our name on our lease, or the key was at another revision.
    async fn leader_write(
        &self,
        what: &str,
        write: Option<impl std::future::Future<Output = Result<LeaderWrite, baton_dcs::DcsError>>>,
    ) -> anyhow::Result<bool> {
        let Some(write) = write else {
            info!("{what}: not written, we have no lease");
            return Ok(false);
        };
        match write.await.with_context(|| what.to_owned())? {
            LeaderWrite::Written => Ok(true),
            LeaderWrite::Conflict => {
                info!("{what}: the key was changed by someone else meanwhile; not written");
                Ok(false)
            }
            LeaderWrite::NotLeader => {
                info!("{what}: not written, the leader key no longer holds our name on our lease");
                Ok(false)
            }
        }
    }

    /// One observe → decide → execute → publish pass.
    pub async fn cycle(&mut self) -> CycleOutcome {
        let now = self.clock.now();
        // What the DCS says from now on is the truth again.
        self.took_key_with = None;
        self.released_key = false;
        // Failsafe mode: a leader whose lease renewals fail sends its `POST /failsafe` round
        // beside the DCS read (`crate::failsafe`).
        let ha_before = baton_config::effective_ha(&self.config, &self.dynamic);
        let early = self.failsafe.due_early(
            ha_before.failsafe_mode,
            self.memory.was_leader,
            *self.lease.borrow(),
            now,
            ha_before.ttl,
        );
        let me = crate::failsafe::Me {
            name: &self.name,
            api_url: &self.api_url,
            conn_url: &self.conn_url,
        };
        let (failsafe, peers_io, clock) = (&mut self.failsafe, &self.peers, self.clock.clone());
        let (dcs_res, pg_state, early_round) = tokio::join!(
            tokio::time::timeout(
                Duration::from_secs(u64::from(self.dynamic.retry_timeout).max(1)),
                self.dcs.read_cluster()
            ),
            self.pg.observe(),
            async {
                if early {
                    failsafe
                        .round(peers_io, clock.as_ref(), &me, ha_before.ttl)
                        .await
                } else {
                    None
                }
            }
        );
        let view = match dcs_res {
            Ok(Ok(view)) => {
                if self.dcs_error.take().is_some() {
                    info!("DCS is reachable again");
                }
                self.dcs_last_seen = Some(unix_now());
                self.refresh_dynamic(&view);
                for w in &view.warnings {
                    if self.seen_warnings.insert(w.clone()) {
                        warn!("ignoring invalid DCS data: {w}");
                    }
                }
                Some(view)
            }
            Ok(Err(e)) => {
                self.dcs_failed(e.to_string());
                None
            }
            Err(_) => {
                self.dcs_failed(format!(
                    "no answer within retry_timeout ({:?})",
                    self.retry_timeout()
                ));
                None
            }
        };

        let peers = match &view {
            // Leaderless: the race compares positions. A pending switchover: the leader checks
            // its candidate, the others check whether the candidate can take over.
            Some(v) if (v.leader.is_none() && pg_state.is_running()) || v.failover.is_some() => {
                let timeout =
                    (self.ttl() / 4).clamp(Duration::from_millis(500), Duration::from_secs(2));
                self.peers.probe(v, &self.name, timeout).await
            }
            _ => vec![],
        };
        let ha = baton_config::effective_ha(&self.config, &self.dynamic);
        let lease_now = *self.lease.borrow();
        let failsafe = self
            .failsafe
            .observe(
                &self.peers,
                self.clock.as_ref(),
                crate::failsafe::Me {
                    name: &self.name,
                    api_url: &self.api_url,
                    conn_url: &self.conn_url,
                },
                crate::failsafe::Seen {
                    failsafe_mode: ha.failsafe_mode,
                    was_leader: self.memory.was_leader,
                    view: view.as_ref(),
                    lease: lease_now,
                    pg: &pg_state,
                    ttl: ha.ttl,
                },
                early_round,
            )
            .await;
        let obs = Observation {
            dcs: view,
            lease: *self.lease.borrow(),
            pg: pg_state,
            peers,
            last_failure: self.last_failure.take(),
            unix_ms: unix_now_ms(),
            watchdog: crate::watchdog::state_of(self.watchdog.as_deref()),
            failsafe,
        };
        let decision = decide(&self.memory, &obs, &ha, now);
        let reason = decision.reason.to_string();
        if self.last_reason.as_deref() != Some(reason.as_str()) {
            info!("{reason}");
            self.last_reason = Some(reason);
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
        self.publish(obs.dcs.as_ref(), &pg_after, None).await;
        CycleOutcome {
            wake_at: decision.wake_at,
            failed,
        }
    }

    fn dcs_failed(&mut self, error: String) {
        if self.dcs_error.as_deref() != Some(error.as_str()) {
            warn!("failed to read the cluster from the DCS: {error}");
            self.dcs_error = Some(error);
        }
    }

    /// Adopt the dynamic configuration from the `config` key when it changed.
    fn refresh_dynamic(&mut self, view: &ClusterView) {
        let Some(config) = &view.config else { return };
        if config.mod_revision == self.dynamic_revision {
            return;
        }
        self.dynamic_revision = config.mod_revision;
        match DynamicConfig::from_json(&config.value) {
            Ok((dynamic, warnings)) => {
                for w in warnings {
                    warn!("config: {w}");
                }
                if dynamic.ttl != self.dynamic.ttl {
                    warn!(
                        old = self.dynamic.ttl,
                        new = dynamic.ttl,
                        "ttl changed in the DCS; the lease keeps its TTL until the agent restarts"
                    );
                }
                let mut dynamic = dynamic;
                // The lease was granted with the old ttl; keep deciding with it.
                dynamic.ttl = self.dynamic.ttl;
                self.dynamic = dynamic;
            }
            Err(e) => warn!("ignoring invalid dynamic configuration in DCS key config: {e}"),
        }
    }

    /// Perform the actions in order; stop at the first failure or lost race. Returns whether
    /// one failed.
    async fn execute(&mut self, actions: &[Action], obs: &Observation) -> bool {
        for action in actions {
            info!("{action}");
            match self.perform(action, obs).await {
                Ok(true) => {}
                Ok(false) => {
                    info!("{action}: lost the race");
                    if matches!(
                        action,
                        Action::AcquireLeader
                            | Action::ReattachLeader
                            | Action::RepairLeader { .. }
                    ) {
                        self.memory.was_leader = false;
                    }
                    return false;
                }
                Err(e) => {
                    error!("failed to {action}: {e:#}");
                    if matches!(
                        action,
                        Action::AcquireLeader
                            | Action::ReattachLeader
                            | Action::RepairLeader { .. }
                    ) {
                        self.memory.was_leader = false;
                    }
                    self.last_failure = Some(ActionFailure {
                        action: action.kind(),
                        at: self.clock.now(),
                        error: format!("{e:#}"),
                    });
                    return true;
                }
            }
        }
        false
    }

    /// Leadership actions re-check the lease at the last moment: the cycle may have been slow.
    fn require_lease(&self) -> anyhow::Result<i64> {
        let lease = *self.lease.borrow();
        match lease.id {
            Some(id) if lease.valid_at(self.clock.now()) => Ok(id),
            _ => bail!("our lease is not valid any more"),
        }
    }

    /// `Ok(false)` means "lost a race": stop without counting a failure.
    async fn perform(&mut self, action: &Action, obs: &Observation) -> anyhow::Result<bool> {
        match action {
            Action::ArmWatchdog => {
                // Leading from here on: the watchdog task disarms at a later `leading: false`.
                self.leading.send_modify(|s| s.leading = true);
                let mode = self.config.watchdog.mode;
                crate::watchdog::arm(self.watchdog.as_deref(), mode, self.ttl())?;
                Ok(true)
            }
            Action::RaceInitialize => Ok(self.dcs.race_initialize().await?),
            Action::BootstrapCluster => {
                self.publish(obs.dcs.as_ref(), &obs.pg, Some("initializing new cluster"))
                    .await;
                if let Err(e) = self.bootstrap().await {
                    warn!("bootstrap failed, cancelling the initialization: {e:#}");
                    if let Err(e) = self.dcs.cancel_initialize().await {
                        error!("failed to cancel the initialization: {e:#}");
                    }
                    if let Err(e) = self.pg.stop(StopMode::Immediate).await {
                        error!("failed to stop postgres after a failed bootstrap: {e:#}");
                    }
                    if let Err(e) = self.pg.wipe_data_dir().await {
                        error!("failed to remove the data directory of a failed bootstrap: {e:#}");
                    }
                    return Err(e);
                }
                Ok(true)
            }
            Action::AcquireLeader => {
                let lease = self.require_lease()?;
                let won = self.dcs.acquire_leader(&self.name, lease).await?;
                self.took_key_with = won.then_some(lease);
                Ok(won)
            }
            Action::ReattachLeader => {
                let lease = self.require_lease()?;
                let won = self.dcs.reattach_leader(&self.name, lease).await?;
                self.took_key_with = won.then_some(lease);
                Ok(won)
            }
            Action::RepairLeader { version } => {
                let lease = self.require_lease()?;
                let won = self.dcs.repair_leader(&self.name, lease, *version).await?;
                self.took_key_with = won.then_some(lease);
                Ok(won)
            }
            Action::ReleaseLeader { last_lsn } => {
                if let Some(lsn) = last_lsn {
                    let holder = self.holder();
                    let write = holder.as_ref().map(|h| self.dcs.write_status(h, *lsn, &[]));
                    self.leader_write("publish the last position", write)
                        .await?;
                }
                self.dcs.release_leader(&self.name).await?;
                self.memory.was_leader = false;
                self.released_key = true;
                Ok(true)
            }
            Action::WriteConfig => Ok(self
                .dcs
                .write_config(&self.dynamic.to_json(), Some(0))
                .await
                .map(|_| true)?),
            Action::UpdateHistory => {
                let mut history = self.pg.timeline_history().await?;
                if let Some(last) = history.last_mut() {
                    last.timestamp = Some(iso_now());
                    last.new_leader = Some(self.name.to_string());
                }
                // Keep what the DCS already has for older timelines (timestamps, leaders).
                if let Some(view) = &obs.dcs {
                    for line in history.iter_mut() {
                        if let Some(old) = view.history.iter().find(|h| h.timeline == line.timeline)
                        {
                            *line = old.clone();
                        }
                    }
                }
                let holder = self.holder();
                let write = holder.as_ref().map(|h| self.dcs.write_history(h, &history));
                self.leader_write("write history", write).await
            }
            Action::EnsureSlots { slots } => {
                self.pg.ensure_slots(slots).await?;
                Ok(true)
            }
            Action::StartPostgres { role } => {
                if matches!(role, StartRole::Primary) {
                    self.require_lease()?;
                }
                self.pg.start(role).await?;
                Ok(true)
            }
            Action::StopPostgres { mode } => {
                if obs.pg.is_primary() {
                    self.stop_attracting_clients(obs);
                }
                self.pg.stop(*mode).await?;
                Ok(true)
            }
            Action::Promote => {
                self.require_lease()?;
                self.pg.promote().await?;
                // Health checks see the new role right away, not after the next cycle.
                let pg = self.pg.observe().await;
                self.publish_snapshot(obs.dcs.as_ref(), &pg, true, None);
                Ok(true)
            }
            Action::Follow { upstream } => {
                self.pg.follow(upstream).await?;
                Ok(true)
            }
            Action::Clone { upstream } => {
                self.publish(obs.dcs.as_ref(), &obs.pg, Some("creating replica"))
                    .await;
                self.pg.clone_replica(upstream).await?;
                Ok(true)
            }
            Action::Rewind { upstream } => {
                self.publish(obs.dcs.as_ref(), &obs.pg, Some("running pg_rewind"))
                    .await;
                self.pg.rewind(upstream).await?;
                Ok(true)
            }
            Action::WipeDataDir => {
                self.pg.wipe_data_dir().await?;
                Ok(true)
            }
            Action::HandOver => {
                self.stop_attracting_clients(obs);
                // A fast shutdown writes the shutdown checkpoint and waits for the walsenders
                // to send it to the standbys before the postmaster exits.
                self.pg
                    .stop(StopMode::Fast)
                    .await
                    .context("stop postgres for the hand-over")?;
                let state = self.pg.observe().await;
                let checkpoint = match &state.data_dir {
                    DataDir::Initialized(cd) => Some(cd.checkpoint_lsn),
                    _ => None,
                };
                if let Some(lsn) = checkpoint {
                    let holder = self.holder();
                    let write = holder.as_ref().map(|h| self.dcs.write_status(h, lsn, &[]));
                    self.leader_write("publish the shutdown checkpoint", write)
                        .await?;
                }
                self.dcs
                    .release_leader(&self.name)
                    .await
                    .context("release the leader key")?;
                self.memory.was_leader = false;
                self.released_key = true;
                self.leading.send_modify(|s| s.leading = false);
                info!(checkpoint = ?checkpoint, "handed over: postgres stopped, leader key released");
                Ok(true)
            }
            Action::SetSyncStandbys { value } => {
                self.pg
                    .set_synchronous_standby_names(value.as_deref())
                    .await?;
                Ok(true)
            }
            Action::WriteSync { state, version } => {
                let holder = self.holder();
                let write = holder
                    .as_ref()
                    .map(|h| self.dcs.write_sync(h, state.as_ref(), *version));
                self.leader_write("write /sync", write).await
            }
            Action::ClearFailover { version } => {
                let holder = self.holder();
                let write = holder
                    .as_ref()
                    .map(|h| self.dcs.clear_failover(h, *version));
                // A request changed meanwhile is left for the next cycle to look at.
                self.leader_write("clear the failover key", write).await?;
                Ok(true)
            }
            Action::WriteFailsafe { topology } => {
                let holder = self.holder();
                let write = holder
                    .as_ref()
                    .map(|h| self.dcs.write_failsafe(h, topology));
                let written = self.leader_write("write /failsafe", write).await?;
                if written {
                    self.failsafe.written(topology);
                }
                Ok(written)
            }
            Action::ExtendFencing { until } => {
                self.failsafe.extend(*until);
                // The fencer and the fence guard's record follow at once.
                let (pg, view) = (obs.pg.clone(), obs.dcs.clone());
                let holds = self.holds_key(view.as_ref());
                self.publish_snapshot(view.as_ref(), &pg, holds, None);
                Ok(true)
            }
        }
    }

    /// initdb, start, roles, then publish the cluster: `initialize` = sysid, `config`, leader.
    async fn bootstrap(&mut self) -> anyhow::Result<()> {
        self.pg.initdb().await.context("initdb")?;
        self.pg
            .start(&StartRole::Primary)
            .await
            .context("start the new cluster")?;
        self.pg.create_roles().await.context("create roles")?;
        let state = self.pg.observe().await;
        let sysid = state
            .system_id()
            .context("read the system identifier of the new cluster")?
            .to_owned();
        self.dcs
            .set_initialize(&sysid)
            .await
            .context("write initialize")?;
        let dynamic = self
            .config
            .bootstrap
            .as_ref()
            .map_or_else(|| self.dynamic.clone(), |b| b.dcs.clone());
        self.dcs
            .write_config(&dynamic.to_json(), Some(0))
            .await
            .context("write config")?;
        let lease = self.require_lease()?;
        if !self
            .dcs
            .acquire_leader(&self.name, lease)
            .await
            .context("take the leader key")?
        {
            bail!("the leader key was taken by someone else during bootstrap");
        }
        info!(sysid, "initialized a new cluster");
        Ok(())
    }

    /// Member key, `status` (leader only) and the REST snapshot.
    async fn publish(
        &mut self,
        view: Option<&ClusterView>,
        pg: &PgState,
        busy: Option<&'static str>,
    ) {
        let holds = self.holds_key(view);
        self.publish_snapshot(view, pg, holds, busy);
        // The DCS did not answer this cycle: more requests would only delay the next cycle.
        if view.is_none() {
            return;
        }
        let Some(lease) = self.lease.borrow().id else {
            return;
        };
        let member = self.member_record(pg, holds, busy);
        if let Err(e) = self.dcs.touch_member(&member, lease).await {
            warn!("failed to update member key: {e:#}");
        }
        if holds && let Some(sql) = pg.sql.as_ref().filter(|s| !s.in_recovery) {
            let holder = Holder {
                name: self.name.clone(),
                lease,
            };
            match self
                .dcs
                .write_status(&holder, sql.wal_position(), &[])
                .await
            {
                Ok(LeaderWrite::Written | LeaderWrite::Conflict) => {}
                Ok(LeaderWrite::NotLeader) => {
                    info!("status key not updated: the leader key no longer holds our lease")
                }
                Err(e) => warn!("failed to update status key: {e:#}"),
            }
        }
    }

    /// Before a primary stops (demotion, hand-over): publish that we do not lead, so `/primary`
    /// turns 503 and the floating IP task removes the address while PostgreSQL shuts down.
    fn stop_attracting_clients(&mut self, obs: &Observation) {
        self.publish_snapshot(obs.dcs.as_ref(), &obs.pg, false, Some("stopping"));
    }

    fn publish_snapshot(
        &mut self,
        view: Option<&ClusterView>,
        pg: &PgState,
        holds: bool,
        busy: Option<&'static str>,
    ) {
        if let Some(view) = view {
            self.last_view = Some(view.clone());
        }
        // The fencer guards any PostgreSQL that may accept writes, not only while the DCS
        // confirms our key: it is needed most when the DCS does not answer.
        let primary = baton_core::may_be_primary(pg);
        let now = self.clock.now();
        let failsafe_until = self.failsafe.fence_until(now).filter(|_| primary);
        self.leading.send_if_modified(|s| {
            let next = FenceSignal {
                leading: holds || self.memory.was_leader || primary,
                // Once the DCS shows the key on our lease (or no primary runs), a primary that
                // predates this process is ours to guard with our own lease. Sticky.
                confirmed: s.confirmed || (view.is_some() && (holds || !primary)),
                failsafe_until,
            };
            std::mem::replace(s, next) != next
        });
        let lease = *self.lease.borrow();
        let snap = Snapshot {
            scope: self.config.scope.clone(),
            name: self.name.clone(),
            state: state_label(pg, busy),
            role: role_label(pg, holds).to_owned(),
            pg: pg.sql.clone(),
            pending_restart_reason: self.pending_restart_reason.clone(),
            system_id: pg.system_id().map(str::to_owned),
            // Failsafe mode keeps our primary the leader for health checks too (Patroni's
            // `set_is_leader(True)`), until the deadline the last round proved.
            holds_leader_key: holds || failsafe_until.is_some(),
            fence_deadline: lease.fence_deadline.max(failsafe_until),
            cluster: view.cloned(),
            dcs_last_seen: self.dcs_last_seen,
            tags: self.config.tags.clone(),
            pause: self.dynamic.pause,
            last_reason: self.last_reason.clone().unwrap_or_default(),
            last_cycle: self.clock.now(),
            ttl: self.ttl(),
            loop_wait: Duration::from_secs(u64::from(self.dynamic.loop_wait)),
            maximum_lag_on_failover: self.dynamic.maximum_lag_on_failover,
            api_url: self.api_url.clone(),
            conn_url: self.conn_url.clone(),
            restore_command: self.restore_command(),
            watchdog_failed: crate::watchdog::watchdog_failed(
                self.watchdog.as_deref(),
                self.config.watchdog.mode,
            ),
            watchdog_armed: self.watchdog.as_ref().is_some_and(|w| w.state().armed),
            failsafe_mode: self.dynamic.failsafe_mode,
            failsafe_active: self.failsafe.active(now),
        };
        self.snapshot.send_replace(Arc::new(snap));
    }

    fn member_record(&self, pg: &PgState, holds: bool, busy: Option<&'static str>) -> Member {
        let sql = pg.sql.as_ref();
        let replica = sql.filter(|s| s.in_recovery);
        Member {
            name: self.name.clone(),
            conn_url: Some(self.conn_url.clone()),
            api_url: Some(self.api_url.clone()),
            state: state_label(pg, busy),
            role: role_label(pg, holds).to_owned(),
            version: Some(baton_api::VERSION.to_owned()),
            tags: self.config.tags.clone(),
            xlog_location: sql.map(|s| s.wal_position()),
            receive_lsn: replica.and_then(|s| s.received_lsn),
            replay_lsn: replica.and_then(|s| s.replayed_lsn),
            // Patroni: "streaming", or "in archive recovery" when WAL comes from restore_command.
            replication_state: replica.and_then(|s| {
                if s.streaming {
                    Some("streaming".to_owned())
                } else if self.restore_command() {
                    Some("in archive recovery".to_owned())
                } else {
                    None
                }
            }),
            timeline: sql.map(|s| s.effective_timeline()),
            pending_restart: sql.is_some_and(|s| s.pending_restart),
            pause: self.dynamic.pause,
            reason: self.last_reason.clone(),
            lease: 0,
        }
    }

    /// Carry out a request from the REST API. Every check reads the DCS afresh (linearizable);
    /// bad requests change nothing.
    pub async fn handle(&mut self, command: Command) {
        match command {
            Command::Switchover { request, reply } => {
                let answer = self.request_switchover(&request).await;
                info!(?request, ?answer, "switchover request");
                let _ = reply.send(answer);
            }
            Command::CancelSwitchover { reply } => {
                let _ = reply.send(self.cancel_switchover().await);
            }
            Command::PatchConfig { patch, reply } => {
                let _ = reply.send(self.patch_config(&patch).await);
            }
            Command::ReplaceConfig {
                config,
                expected_revision,
                reply,
            } => {
                let _ = reply.send(self.replace_config(config, expected_revision).await);
            }
            Command::Reinitialize { force, reply } => {
                let _ = reply.send(self.reinitialize(force).await);
            }
            Command::Reload { reply } => {
                info!("POST /reload: re-reading the configuration");
                let _ = reply.send(self.reload().await);
            }
        }
    }

    async fn read_fresh(&self) -> Result<ClusterView, CommandReply> {
        match tokio::time::timeout(self.retry_timeout(), self.dcs.read_cluster()).await {
            Ok(Ok(view)) => Ok(view),
            Ok(Err(e)) => Err(CommandReply::Text(
                503,
                format!("failed to read the cluster from the DCS: {e}"),
            )),
            Err(_) => Err(CommandReply::Text(
                503,
                "failed to read the cluster from the DCS: timed out".into(),
            )),
        }
    }

    /// Patroni's `is_failover_possible` pre-checks, then the `failover` key.
    async fn request_switchover(&self, req: &SwitchoverRequest) -> CommandReply {
        let view = match self.read_fresh().await {
            Ok(v) => v,
            Err(r) => return r,
        };
        let action = req.action();
        let refuse = |m: String| CommandReply::Text(412, m);
        let leader = view.leader_name().cloned();
        if let Some(l) = &req.leader
            && leader.as_ref().map(MemberName::as_str) != Some(l.as_str())
        {
            return refuse("leader name does not match".into());
        }
        let candidate = req.candidate.as_deref().and_then(MemberName::new);
        if let Some(c) = &candidate
            && view.member(c).is_none()
        {
            return refuse("candidate does not exists".into());
        }
        // Priority synchronous mode: a switchover (not a failover) goes to a synchronous
        // standby only. (Quorum mode has no such rule in Patroni: the old primary's clean
        // shutdown leaves the candidate with every commit.)
        let sync = baton_config::effective_ha(&self.config, &self.dynamic).sync;
        let sync_on = sync.enabled() && sync.mode != baton_core::SyncMode::Quorum;
        if sync_on
            && !req.failover
            && let (Some(c), Some(sync)) = (&candidate, view.sync.present())
            && !sync.value.lists(c)
        {
            return refuse("candidate name does not match with sync_standby".into());
        }
        if !view
            .members
            .iter()
            .any(|m| Some(&m.name) != leader.as_ref())
        {
            return refuse(format!(
                "{action} is not possible: cluster does not have members except leader"
            ));
        }
        if req.scheduled_at.is_none() {
            // Ask the members themselves (the leader excluded) whether they can take over.
            let exclude = leader.clone().unwrap_or_else(|| self.name.clone());
            let timeout = Duration::from_secs(2);
            let mut peers = self.peers.probe(&view, &exclude, timeout).await;
            if exclude == self.name && leader.is_none() {
                // No leader: this member is a candidate too; it is reachable by definition.
                let me = self.pg.observe().await;
                peers.push(baton_core::PeerStatus {
                    name: self.name.clone(),
                    reachable: me.is_running(),
                    is_primary: me.is_primary(),
                    wal_position: me.wal_position(),
                    timeline: me.timeline(),
                    tags: self.config.tags.clone(),
                    watchdog_failed: false,
                });
            }
            let good = peers.iter().any(|p| {
                p.reachable
                    && !p.is_primary
                    && !p.tags.is_nofailover()
                    && candidate.as_ref().is_none_or(|c| &p.name == c)
            });
            if !good {
                return refuse(format!(
                    "{action} is not possible: no good candidates have been found"
                ));
            }
        }
        let request = FailoverRequest {
            leader: req.leader.as_deref().and_then(MemberName::new),
            candidate,
            scheduled_at: req.scheduled_at.clone(),
        };
        match self.dcs.write_failover(Some(&request), None).await {
            Ok(_) => CommandReply::Accepted,
            Err(e) => {
                warn!("failed to write failover key into DCS: {e:#}");
                CommandReply::Text(503, "failed to write failover key into DCS".into())
            }
        }
    }

    async fn cancel_switchover(&self) -> CommandReply {
        let view = match self.read_fresh().await {
            Ok(v) => v,
            Err(r) => return r,
        };
        match view.failover {
            Some(f) if f.value.scheduled_at.is_some() => {
                match self.dcs.write_failover(None, Some(f.mod_revision)).await {
                    Ok(true) => CommandReply::Text(200, "scheduled switchover deleted".into()),
                    Ok(false) => {
                        CommandReply::Text(409, "the failover key changed meanwhile".into())
                    }
                    Err(e) => {
                        CommandReply::Text(503, format!("failed to delete the failover key: {e}"))
                    }
                }
            }
            _ => CommandReply::Text(404, "no switchover is scheduled".into()),
        }
    }

    /// `POST /reinitialize`: stop PostgreSQL and empty the data directory; the next cycle
    /// clones from the leader (Patroni's reinit). Refused on the leader and without one.
    async fn reinitialize(&mut self, force: bool) -> CommandReply {
        let view = match self.read_fresh().await {
            Ok(v) => v,
            Err(r) => return r,
        };
        let unavailable = |m: &str| CommandReply::Text(503, m.to_owned());
        match view.leader_name() {
            None => return unavailable("Cluster has no leader, can not reinitialize"),
            Some(l) if *l == self.name => {
                return unavailable("I am the leader, can not reinitialize");
            }
            Some(_) => {}
        }
        let _ = force; // actions run inline in the agent loop: nothing is in progress to cancel
        let pg = self.pg.observe().await;
        if pg.is_primary() {
            return unavailable("I am running as a primary, can not reinitialize");
        }
        let steps = [
            Action::StopPostgres {
                mode: StopMode::Immediate,
            },
            Action::WipeDataDir,
        ];
        let obs = Observation {
            dcs: Some(view),
            pg,
            ..Observation::default()
        };
        if self.execute(&steps, &obs).await {
            return CommandReply::Text(503, "reinitialize failed: see the agent log".into());
        }
        info!("reinitialize: data directory removed; cloning from the leader next");
        CommandReply::Text(200, "reinitialize started".into())
    }

    /// `PATCH /config`: merge, validate, compare-and-swap. An invalid result changes nothing.
    async fn patch_config(
        &self,
        patch: &serde_json::Map<String, serde_json::Value>,
    ) -> CommandReply {
        let view = match self.read_fresh().await {
            Ok(v) => v,
            Err(r) => return r,
        };
        let Some(stored) = view.config else {
            return CommandReply::Text(
                503,
                "the cluster has no valid dynamic configuration".into(),
            );
        };
        let Ok(mut config) =
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&stored.value)
        else {
            return CommandReply::Text(
                503,
                "the cluster has no valid dynamic configuration".into(),
            );
        };
        baton_api::merge_patch(&mut config, patch);
        let text = serde_json::Value::Object(config).to_string();
        if let Err(e) = DynamicConfig::from_json_strict(&text) {
            return CommandReply::Text(400, format!("invalid configuration: {e}"));
        }
        match self
            .dcs
            .write_config(&text, Some(stored.mod_revision))
            .await
        {
            Ok(true) => CommandReply::Json(200, text),
            Ok(false) => {
                CommandReply::Text(409, "the configuration changed meanwhile; try again".into())
            }
            Err(e) => CommandReply::Text(503, format!("failed to write the configuration: {e}")),
        }
    }

    /// `PUT /config`: validate, then write the whole document when it differs from the stored
    /// one (compare-and-swap on the revision read; with `expected_revision`, only at that
    /// revision). An invalid document changes nothing.
    async fn replace_config(
        &self,
        config: serde_json::Map<String, serde_json::Value>,
        expected_revision: Option<i64>,
    ) -> CommandReply {
        let view = match self.read_fresh().await {
            Ok(v) => v,
            Err(r) => return r,
        };
        let (text, version) =
            match plan_replace_config(view.config.as_ref(), config, expected_revision) {
                Ok(ReplacePlan::Unchanged(text)) => return CommandReply::Json(200, text),
                Ok(ReplacePlan::Write { text, version }) => (text, version),
                Err(refusal) => return refusal,
            };
        match self.dcs.write_config(&text, version).await {
            Ok(true) => CommandReply::Json(200, text),
            Ok(false) => {
                CommandReply::Text(409, "the configuration changed meanwhile; try again".into())
            }
            // Patroni answers a failed DCS write of PUT /config with 502.
            Err(e) => CommandReply::Text(502, format!("failed to write the configuration: {e}")),
        }
    }

    /// On SIGTERM: stop PostgreSQL (fast) and then give up the leader key, as Patroni does.
    /// In pause mode PostgreSQL and the key are left alone.
    pub async fn shutdown(&mut self) {
        if self.dynamic.pause {
            info!("paused: leaving PostgreSQL running and the leader key in place");
            return;
        }
        let view = match tokio::time::timeout(self.retry_timeout(), self.dcs.read_cluster()).await {
            Ok(Ok(v)) => Some(v),
            _ => self.last_view.clone(),
        };
        let holds = self.holds_key(view.as_ref()) || self.memory.was_leader;
        info!("shutting down: stopping PostgreSQL");
        if let Err(e) = self.pg.stop(StopMode::Fast).await {
            error!("failed to stop PostgreSQL (fast), stopping it immediately: {e:#}");
            if let Err(e) = self.pg.stop(StopMode::Immediate).await {
                error!("failed to stop PostgreSQL: {e:#}; keeping the leader key");
                return;
            }
        }
        self.leading.send_modify(|s| s.leading = false);
        if holds {
            let state = self.pg.observe().await;
            if let (Some(lsn), Some(holder)) = (state.wal_position(), self.holder()) {
                match self.dcs.write_status(&holder, lsn, &[]).await {
                    Ok(LeaderWrite::Written | LeaderWrite::Conflict) => {}
                    Ok(LeaderWrite::NotLeader) => {
                        info!("last position not published: we no longer hold the leader key")
                    }
                    Err(e) => warn!("failed to write the last position to the status key: {e:#}"),
                }
            }
            match self.dcs.release_leader(&self.name).await {
                Ok(_) => info!("released the leader key"),
                Err(e) => warn!("failed to release the leader key: {e:#}"),
            }
        }
    }
}

/// What `PUT /config` does with the stored `config` key.
#[derive(Debug, PartialEq, Eq)]
enum ReplacePlan {
    /// The same document is stored already: nothing to write (Patroni's `deep_compare`).
    Unchanged(String),
    /// Write `text`, only while the key is at `version` (`Some(0)`: absent).
    Write { text: String, version: Option<i64> },
}

/// Checks a replacement document against the stored key: the `If-Match` revision, the
/// configuration rules of `bootstrap.dcs` (errors name their key path).
fn plan_replace_config(
    stored: Option<&baton_core::Versioned<String>>,
    config: serde_json::Map<String, serde_json::Value>,
    expected_revision: Option<i64>,
) -> Result<ReplacePlan, CommandReply> {
    let current = stored.map_or(0, |s| s.mod_revision);
    if let Some(expected) = expected_revision
        && expected != current
    {
        return Err(CommandReply::Text(
            409,
            format!(
                "the configuration changed meanwhile (revision {current}, not {expected}); try again"
            ),
        ));
    }
    let new = serde_json::Value::Object(config);
    let text = new.to_string();
    if let Err(e) = DynamicConfig::from_json_strict(&text) {
        return Err(CommandReply::Text(
            400,
            format!("invalid configuration: {e}"),
        ));
    }
    let old = stored.and_then(|s| serde_json::from_str::<serde_json::Value>(&s.value).ok());
    if old.as_ref() == Some(&new) {
        return Ok(ReplacePlan::Unchanged(text));
    }
    Ok(ReplacePlan::Write {
        text,
        version: Some(current),
    })
}

#[cfg(test)]
mod tests {
    use super::{ReplacePlan, iso_now, plan_replace_config};
    use baton_api::CommandReply;
    use baton_core::Versioned;
    use serde_json::{Map, Value, json};

    fn object(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn replace_config_writes_a_valid_new_document_at_the_revision_read() {
        let stored = Versioned {
            value: r#"{"ttl":30,"loop_wait":10}"#.to_owned(),
            mod_revision: 7,
        };
        assert_eq!(
            plan_replace_config(Some(&stored), object(json!({"ttl": 20})), None),
            Ok(ReplacePlan::Write {
                text: r#"{"ttl":20}"#.into(),
                version: Some(7)
            })
        );
        assert_eq!(
            plan_replace_config(Some(&stored), object(json!({"ttl": 20})), Some(7)),
            Ok(ReplacePlan::Write {
                text: r#"{"ttl":20}"#.into(),
                version: Some(7)
            })
        );
        // Same document (key order aside): nothing is written.
        assert_eq!(
            plan_replace_config(
                Some(&stored),
                object(json!({"loop_wait": 10, "ttl": 30})),
                None
            ),
            Ok(ReplacePlan::Unchanged(
                r#"{"loop_wait":10,"ttl":30}"#.into()
            ))
        );
        // No key yet: created only if still absent.
        assert_eq!(
            plan_replace_config(None, object(json!({"ttl": 20})), None),
            Ok(ReplacePlan::Write {
                text: r#"{"ttl":20}"#.into(),
                version: Some(0)
            })
        );
    }

    #[test]
    fn replace_config_refuses_a_stale_revision_and_an_invalid_document() {
        let stored = Versioned {
            value: r#"{"ttl":30}"#.to_owned(),
            mod_revision: 7,
        };
        match plan_replace_config(Some(&stored), object(json!({"ttl": 20})), Some(6)) {
            Err(CommandReply::Text(409, text)) => assert!(text.contains("revision 7"), "{text}"),
            other => panic!("unexpected {other:?}"),
        }
        match plan_replace_config(Some(&stored), object(json!({"loop_wait": "soon"})), None) {
            Err(CommandReply::Text(400, text)) => assert!(text.contains("loop_wait"), "{text}"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn iso_timestamps_look_like_patronis() {
        let ts = iso_now();
        assert_eq!(ts.len(), "2026-11-22T04:09:19+00:00".len(), "{ts}");
        assert!(ts.ends_with("+00:00") && ts.as_bytes()[10] == b'T', "{ts}");
        let year: i32 = ts[..4].parse().expect("year");
        assert!(year >= 2024, "{ts}");
    }
}
