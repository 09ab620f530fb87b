//! Publish: the member key, the leader's `status` key and the REST snapshot.

use std::sync::Arc;

use baton_api::{MemberRole, PgRunState, Snapshot};
use baton_core::{ClusterView, DataDir, Member, Observation, PgState};
use baton_dcs::{Dcs, Holder, LeaderWrite};
use baton_pg::Postgres;
use tracing::{info, warn};

use super::Agent;
use crate::peers::Peers;

/// PostgreSQL's state as Patroni's `PostgresqlState` names it; `busy`: what an action in
/// progress makes it.
pub(super) fn state_label(pg: &PgState, busy: Option<PgRunState>) -> PgRunState {
    if let Some(busy) = busy {
        return busy;
    }
    match (&pg.sql, pg.is_running()) {
        (Some(_), _) => PgRunState::Running,
        (None, true) => PgRunState::Starting,
        (None, false) => PgRunState::Stopped,
    }
}

/// The member's role; `standby_cluster`: this is a standby cluster, whose key holder in
/// recovery is its standby leader.
pub(super) fn role_label(pg: &PgState, holds_key: bool, standby_cluster: bool) -> MemberRole {
    match &pg.sql {
        Some(sql) if sql.in_recovery && holds_key && standby_cluster => MemberRole::StandbyLeader,
        Some(sql) if sql.in_recovery => MemberRole::Replica,
        Some(_) => MemberRole::Primary,
        None if matches!(pg.data_dir, DataDir::Empty) => MemberRole::Uninitialized,
        None if holds_key => MemberRole::Primary,
        None => MemberRole::Replica,
    }
}

impl<D: Dcs, P: Postgres, R: Peers> Agent<D, P, R> {
    /// Member key, `status` (leader only) and the REST snapshot.
    pub(super) async fn publish(
        &mut self,
        view: Option<&ClusterView>,
        pg: &PgState,
        busy: Option<PgRunState>,
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
        // The primary's flush position; a standby cluster's standby leader publishes its
        // received/replayed position (Patroni's `last_operation`), which its replicas compare
        // themselves with in the race (`maximum_lag_on_failover`).
        let standby_leader = self.ha.standby_cluster.is_some();
        if holds && let Some(sql) = pg.sql.as_ref().filter(|s| !s.in_recovery || standby_leader) {
            let holder = Holder {
                name: self.name.clone(),
                lease,
            };
            if let Some(view) = view {
                let (_, conflicts) = baton_core::slots::leader_work(&self.ha, view, sql);
                if conflicts != self.slot_conflicts {
                    for c in &conflicts {
                        warn!("permanent replication slot left alone: {c}");
                    }
                    self.slot_conflicts = conflicts;
                }
            }
            // Patroni publishes the position of every slot it keeps (replicas advance their
            // copies of the permanent ones to it) and the member slots it retains.
            let slots = baton_core::slots::published_positions(sql);
            let retain = self.retained_slot_names();
            match self
                .dcs
                .write_status(&holder, sql.wal_position(), &slots, &retain)
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

    /// The member slots the leader keeps for `member_slots_ttl` (`retain_slots` in `/status`),
    /// from decide's memory.
    pub(super) fn retained_slot_names(&self) -> Vec<String> {
        self.memory.slots_seen.keys().cloned().collect()
    }

    /// Before a primary stops (demotion, hand-over): publish that we do not lead, so `/primary`
    /// turns 503 and the floating IP task removes the address while PostgreSQL shuts down.
    pub(super) fn stop_attracting_clients(&mut self, obs: &Observation) {
        self.publish_snapshot(obs.dcs.as_ref(), &obs.pg, false, Some(PgRunState::Stopping));
    }

    pub(super) fn publish_snapshot(
        &mut self,
        view: Option<&ClusterView>,
        pg: &PgState,
        holds: bool,
        busy: Option<PgRunState>,
    ) {
        if let Some(view) = view {
            self.last_view = Some(view.clone());
        }
        // What the fencer guards: `baton_core::fence_signal` has the rule.
        let was_leader = self.was_leader();
        let now = self.clock.now();
        let failsafe_until = self
            .failsafe
            .fence_until(now)
            .filter(|_| baton_core::may_be_primary(pg));
        self.leading.send_if_modified(|s| {
            let mut next = baton_core::fence_signal(*s, view.is_some(), holds, was_leader, pg);
            next.failsafe_until = failsafe_until;
            // A progress publish inside an action (`busy`: a bootstrap, a clone) never ends a
            // leader role the action list began (`ArmWatchdog`): else the watchdog task takes
            // a bootstrap for a demotion and magic-closes the device it just armed.
            next.leading |= busy.is_some() && s.leading;
            std::mem::replace(s, next) != next
        });
        let lease = *self.lease.borrow();
        let snap = Snapshot {
            scope: self.config.scope.clone(),
            name: self.name.clone(),
            state: state_label(pg, busy),
            role: role_label(pg, holds, self.ha.standby_cluster.is_some()),
            pg: pg.sql.clone(),
            pending_restart_reason: self.pending_restart_reason.clone(),
            scheduled_restart: self.scheduled_restart.as_ref().map(|r| r.schedule.clone()),
            system_id: pg.system_id().map(str::to_owned),
            // Failsafe mode keeps our primary the leader for health checks too (Patroni's
            // `set_is_leader(True)`), until the deadline the last round proved.
            holds_leader_key: holds || failsafe_until.is_some(),
            fence_deadline: lease.fence_deadline.max(failsafe_until),
            cluster: view.cloned(),
            dcs_last_seen: self.dcs_last_seen,
            tags: self.config.tags.clone(),
            pause: self.ha.pause,
            last_reason: self.last_reason.clone().unwrap_or_default(),
            last_cycle: self.clock.now(),
            ttl: self.ha.ttl,
            loop_wait: self.ha.loop_wait,
            maximum_lag_on_failover: self.ha.maximum_lag_on_failover,
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

    pub(super) fn member_record(
        &self,
        pg: &PgState,
        holds: bool,
        busy: Option<PgRunState>,
    ) -> Member {
        let sql = pg.sql.as_ref();
        let replica = sql.filter(|s| s.in_recovery);
        Member {
            name: self.name.clone(),
            conn_url: Some(self.conn_url.clone()),
            api_url: Some(self.api_url.clone()),
            state: state_label(pg, busy).as_str().to_owned(),
            role: role_label(pg, holds, self.ha.standby_cluster.is_some())
                .as_str()
                .to_owned(),
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
            scheduled_restart: self.scheduled_restart.as_ref().map(|r| r.schedule.clone()),
            pause: self.ha.pause,
            reason: self.last_reason.clone(),
            lease: 0,
        }
    }
}
