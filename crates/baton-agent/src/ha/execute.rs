//! Execute: the decided actions in order, through the DCS and PostgreSQL ports, and
//! PostgreSQL's part of the configuration.

use anyhow::{Context, bail};
use baton_api::PendingRestart;
use baton_core::{
    Action, ActionFailure, ActionKind, ActionOutcome, DataDir, Observation, StartRole, StopMode,
};
use baton_dcs::{Dcs, LeaderWrite};
use baton_pg::{Postgres, Reconfigured};
use tracing::{error, info, warn};

use super::{Agent, PgConfig, iso_at};
use crate::peers::Peers;

impl<D: Dcs, P: Postgres, R: Peers> Agent<D, P, R> {
    /// Hand PostgreSQL its part of the configuration when it differs from what was applied
    /// last (the local file over the dynamic configuration, see
    /// [`baton_config::merged_parameters`]). Returns whether PostgreSQL re-read its files.
    pub(super) async fn apply_pg_config(&mut self) -> bool {
        let wanted: PgConfig = (
            baton_config::merged_parameters(&self.config, &self.dynamic),
            baton_config::effective_pg_hba(&self.config, &self.dynamic),
            self.config.postgresql.recovery_conf.clone(),
        );
        if self.applied_pg.as_ref() == Some(&wanted) {
            return false;
        }
        // A replica's recovery settings first: the rewrite below carries them.
        let applied = match self.pg.set_recovery_conf(&wanted.2) {
            Ok(()) => self.pg.reconfigure(&wanted.0, &wanted.1).await,
            Err(e) => Err(e),
        };
        match applied {
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
    pub(super) fn report_reconfigured(&mut self, outcome: &Reconfigured) {
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
    /// A leader-only write: `Ok(true)` when written, `Ok(false)` (logged) when the leader
    /// key no longer holds our name on our lease, or the key was at another revision.
    pub(super) async fn leader_write(
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
    /// Perform the actions in order; stop at the first failure or lost race. Returns whether
    /// one failed.
    /// A long action (and the long ones after it) is handed to [`Agent::start_long`] and
    /// the rest of the list is left for the cycle after it ends.
    pub(super) async fn execute(&mut self, actions: &[Action], obs: &Observation) -> bool {
        for (i, action) in actions.iter().enumerate() {
            if action.is_long() {
                self.start_long(&actions[i..]);
                let busy = self.busy();
                self.publish(obs.dcs.as_ref(), &obs.pg, busy).await;
                return false;
            }
            info!("{action}");
            let leadership = matches!(
                action,
                Action::AcquireLeader | Action::ReattachLeader | Action::RepairLeader { .. }
            );
            match self.perform(action, obs).await {
                Ok(true) => {}
                Ok(false) => {
                    info!("{action}: lost the race");
                    if leadership {
                        self.outcomes.push(ActionOutcome::MissedKey);
                    }
                    return false;
                }
                Err(e) => {
                    error!("failed to {action}: {e:#}");
                    if leadership {
                        self.outcomes.push(ActionOutcome::MissedKey);
                    }
                    self.outcomes.push(ActionOutcome::Failed(ActionFailure {
                        action: crate::callbacks::failed_kind(action, &e),
                        at: self.clock.now(),
                        error: format!("{e:#}"),
                    }));
                    return true;
                }
            }
        }
        false
    }

    /// Leadership actions re-check the lease at the last moment: the cycle may have been slow.
    pub(super) fn require_lease(&self) -> anyhow::Result<i64> {
        let lease = *self.lease.borrow();
        match lease.id {
            Some(id) if lease.valid_at(self.clock.now()) => Ok(id),
            _ => bail!("our lease is not valid any more"),
        }
    }

    /// `Ok(false)` means "lost a race": stop without counting a failure.
    pub(super) async fn perform(
        &mut self,
        action: &Action,
        obs: &Observation,
    ) -> anyhow::Result<bool> {
        match action {
            Action::ArmWatchdog => {
                // Leading from here on: the watchdog task disarms at a later `leading: false`.
                self.leading.send_modify(|s| s.leading = true);
                let mode = self.config.watchdog.mode;
                crate::watchdog::arm(self.watchdog.as_deref(), mode, self.ha.ttl)?;
                Ok(true)
            }
            Action::RaceInitialize => Ok(self.dcs.race_initialize().await?),
            Action::BootstrapCluster
            | Action::BootstrapStandbyCluster { .. }
            | Action::Clone { .. }
            | Action::CloneWithoutLeader
            | Action::Rewind { .. }
            | Action::RestartPostgres { .. } => {
                // Long actions run beside the loop (`execute` hands them to `start_long`);
                // asked for here, one runs to its end.
                self.start_long(std::slice::from_ref(action));
                self.long_action_done().await;
                match self.outcomes.last() {
                    Some(ActionOutcome::Failed(f)) if f.action == action.kind() => {
                        bail!("{}", f.error)
                    }
                    _ => Ok(true),
                }
            }
            Action::AcquireLeader => {
                let lease = self.require_lease()?;
                let won = self.dcs.acquire_leader(&self.name, lease).await?;
                if won {
                    self.outcomes.push(ActionOutcome::TookKey { lease });
                }
                Ok(won)
            }
            Action::ReattachLeader => {
                let lease = self.require_lease()?;
                let won = self.dcs.reattach_leader(&self.name, lease).await?;
                if won {
                    self.outcomes.push(ActionOutcome::TookKey { lease });
                }
                Ok(won)
            }
            Action::RepairLeader { version } => {
                let lease = self.require_lease()?;
                let won = self.dcs.repair_leader(&self.name, lease, *version).await?;
                if won {
                    self.outcomes.push(ActionOutcome::TookKey { lease });
                }
                Ok(won)
            }
            Action::ReleaseLeader { last_lsn } => {
                if let Some(lsn) = last_lsn {
                    let holder = self.holder();
                    let retain = self.retained_slot_names();
                    let write = holder
                        .as_ref()
                        .map(|h| self.dcs.write_status(h, *lsn, &[], &retain));
                    self.leader_write("publish the last position", write)
                        .await?;
                }
                self.dcs.release_leader(&self.name).await?;
                self.outcomes.push(ActionOutcome::ReleasedKey);
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
                    last.timestamp = Some(iso_at(self.clock.unix_ms()));
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
            Action::EnsureSlots { slots, keep } => {
                self.pg.ensure_slots_keeping(slots, keep).await?;
                Ok(true)
            }
            Action::SyncSlots { work } => {
                self.pg.sync_slots(work).await?;
                Ok(true)
            }
            Action::CheckLogicalSlots {
                upstream,
                physical_slot,
                slots,
            } => {
                let found = self
                    .pg
                    .primary_slots(upstream, physical_slot, slots)
                    .await?;
                self.outcomes.push(ActionOutcome::PrimarySlots(found));
                Ok(true)
            }
            Action::CopyLogicalSlots { upstream, slots } => {
                info!(
                    "copying logical replication slots [{}] from {upstream}: PostgreSQL restarts",
                    slots.join(", ")
                );
                self.pg.copy_logical_slots(upstream, slots).await?;
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
                // Fencing while a restart (or start) runs beside the loop: that start must not
                // go on once PostgreSQL is stopped. Dropping it kills its pg_ctl; the stop below
                // then finds whatever postmaster it had started. A bootstrap, clone or rewind is
                // not cut short: they never bring up a primary the fence would have to stop.
                if *mode == StopMode::Immediate
                    && matches!(
                        self.running.as_ref().map(|r| r.kind),
                        Some(ActionKind::RestartPostgres | ActionKind::StartPostgres)
                    )
                {
                    self.end_long("fencing", true).await;
                }
                self.callbacks.before_stop(*mode).await;
                if obs.pg.is_primary() {
                    self.stop_attracting_clients(obs);
                }
                self.pg.stop(*mode).await?;
                Ok(true)
            }
            Action::Promote => {
                self.require_lease()?;
                self.callbacks.pre_promote().await?;
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
            Action::WipeDataDir => {
                self.pg.wipe_data_dir().await?;
                Ok(true)
            }
            Action::HandOver => {
                self.callbacks.before_stop(StopMode::Fast).await;
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
                    let retain = self.retained_slot_names();
                    let write = holder
                        .as_ref()
                        .map(|h| self.dcs.write_status(h, lsn, &[], &retain));
                    self.leader_write("publish the shutdown checkpoint", write)
                        .await?;
                }
                self.dcs
                    .release_leader(&self.name)
                    .await
                    .context("release the leader key")?;
                self.outcomes.push(ActionOutcome::ReleasedKey);
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
}
