//! Long actions beside the loop: a clone, a rewind, a bootstrap and a standby's start can
//! take minutes. The executor hands them (with the actions that follow them in the
//! decision) to a future the agent keeps; the loop around [`Agent::cycle`] drives it through
//! [`Agent::long_action_done`] while cycles go on: the member key and the REST snapshot keep
//! saying what runs, DCS changes are seen, and every decision but fencing waits for it
//! (`Observation::running`). Its end is reported as an [`ActionOutcome`] to the next cycle.
//!
//! Cancelled by a shutdown (a clone; the others are waited for, because an interrupted
//! rewind or initdb leaves a data directory nobody can use) and by `POST /reinitialize`
//! with `force`, and a restart or start by fencing (`execute.rs`). Each step keeps its own
//! bounds (`pg_ctl_timeout` for starts, the SQL timeouts, a restart's `timeout`); pg_basebackup
//! and pg_rewind, whose duration depends on the data size, are killed when they stall (read and
//! write nothing for `baton_pg`'s stall timeout). Cancelling drops the future, which kills the
//! step's process group.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::{Context, bail};
use baton_api::PgRunState;
use baton_core::{
    Action, ActionFailure, ActionKind, ActionOutcome, Clock, LeaseState, MemberName, StartRole,
    StopMode,
};
use baton_dcs::Dcs;
use baton_pg::Postgres;
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::Agent;
use crate::peers::Peers;

type LongFuture = Pin<Box<dyn Future<Output = Result<(), (ActionKind, anyhow::Error)>> + Send>>;

/// A long action in progress.
pub(super) struct Running {
    /// The action that made it long (the first of the list).
    pub(super) kind: ActionKind,
    /// What the member key and `/patroni` say meanwhile (Patroni's state names).
    pub(super) busy: PgRunState,
    future: sync_wrapper::SyncWrapper<LongFuture>,
}

/// What a bootstrap needs, owned, so that it can run beside the loop.
struct BootstrapIo<D, P> {
    dcs: Arc<D>,
    pg: Arc<P>,
    name: MemberName,
    /// The dynamic configuration written into the new cluster's `config` key.
    dynamic_json: String,
    lease: watch::Receiver<LeaseState>,
    clock: Arc<dyn Clock>,
    /// `bootstrap.post_bootstrap`, run after the roles are created.
    post_bootstrap: crate::callbacks::PostBootstrap,
    /// A standby cluster's bootstrap: clone this remote primary instead of initdb (its roles
    /// and data come from there; no `post_bootstrap`, as in Patroni).
    standby_of: Option<baton_core::Upstream>,
    /// The local replica methods (`postgresql.create_replica_methods`) a standby cluster's
    /// `create_replica_methods` may name.
    local_methods: Vec<baton_core::ReplicaMethod>,
    /// `bootstrap.method` other than initdb: its command creates the data directory.
    method: Option<baton_core::CustomBootstrap>,
}

impl<D: Dcs, P: Postgres> BootstrapIo<D, P> {
    /// initdb, start, roles, then publish the cluster: `initialize` = sysid, `config`,
    /// leader. A failure cancels the initialization and removes what was created.
    async fn run(self) -> anyhow::Result<()> {
        let result = self.steps().await;
        if let Err(e) = &result {
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
        }
        result
    }

    async fn steps(&self) -> anyhow::Result<()> {
        if let Some(remote) = &self.standby_of {
            let wanted = remote
                .remote
                .as_ref()
                .map(|r| r.create_replica_methods.clone())
                .unwrap_or_default();
            let (methods, missing) =
                baton_core::standby_leader_methods(&wanted, &self.local_methods);
            for name in missing {
                warn!(
                    "standby_cluster.create_replica_methods names {name:?}, which is not one of \
                     this member's postgresql.create_replica_methods: skipped"
                );
            }
            let source = remote.has_server().then_some(remote);
            self.pg
                .create_replica(source, &methods)
                .await
                .with_context(|| format!("create the standby leader from {remote}"))?;
            self.pg
                .start(&StartRole::Standby {
                    upstream: Some(remote.clone()),
                })
                .await
                .context("start the standby leader")?;
        } else if let Some(method) = &self.method {
            // Started, recovered to a primary, roles created (`Postgres::custom_bootstrap`).
            self.pg
                .custom_bootstrap(method)
                .await
                .with_context(|| format!("custom bootstrap {:?}", method.name))?;
            self.post_bootstrap.run().await?;
        } else {
            self.pg.initdb().await.context("initdb")?;
            self.pg
                .start(&StartRole::Primary)
                .await
                .context("start the new cluster")?;
            self.pg.create_roles().await.context("create roles")?;
            self.post_bootstrap.run().await?;
        }
        let state = self.pg.observe().await;
        let sysid = state
            .system_id()
            .context("read the system identifier of the new cluster")?
            .to_owned();
        self.dcs
            .set_initialize(&sysid)
            .await
            .context("write initialize")?;
        self.dcs
            .write_config(&self.dynamic_json, Some(0))
            .await
            .context("write config")?;
        // The leader key only on a lease that is still provably alive: the bootstrap may
        // have taken long.
        let lease = *self.lease.borrow();
        let lease = match lease.id {
            Some(id) if lease.valid_at(self.clock.now()) => id,
            _ => bail!("our lease is not valid any more"),
        };
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
}

impl<D: Dcs, P: Postgres, R: Peers> Agent<D, P, R> {
    /// A long action runs beside the loop: drive it with [`Agent::long_action_done`].
    pub fn long_action_running(&self) -> bool {
        self.running.is_some()
    }

    /// Drive the long action until it ends, then record its outcome for the next cycle.
    /// Cancel-safe: the loop calls it again after handling other events. Pending forever
    /// when nothing runs.
    pub async fn long_action_done(&mut self) {
        let Some(running) = self.running.as_mut() else {
            return std::future::pending().await;
        };
        let result = running.future.get_mut().as_mut().await;
        let kind = running.kind;
        self.running = None;
        if let Some(reply) = self.restart_reply.take() {
            let answer = match &result {
                Ok(()) => baton_api::CommandReply::Text(200, "restarted successfully".into()),
                Err(_) => baton_api::CommandReply::Text(503, "restart failed".into()),
            };
            let _ = reply.send(answer);
        }
        match result {
            Ok(()) => info!("{} finished", kind.long_label()),
            Err((action, e)) => {
                error!("{} failed: {e:#}", kind.long_label());
                self.outcomes.push(ActionOutcome::Failed(ActionFailure {
                    action,
                    at: self.clock.now(),
                    error: format!("{e:#}"),
                }));
            }
        }
    }

    /// The state label for the member key and `/patroni` while a long action runs.
    pub(super) fn busy(&self) -> Option<PgRunState> {
        self.running.as_ref().map(|r| r.busy)
    }

    /// Start `actions` (a long one first, then those that follow it in the decision while
    /// they are long too) beside the loop.
    pub(super) fn start_long(&mut self, actions: &[Action]) {
        let Some(first) = actions.first() else { return };
        let kind = first.kind();
        let busy = match first {
            Action::BootstrapCluster
                if self
                    .config
                    .bootstrap
                    .as_ref()
                    .is_some_and(|b| b.method.is_some()) =>
            {
                PgRunState::RunningCustomBootstrap
            }
            Action::BootstrapCluster => PgRunState::InitializingNewCluster,
            Action::Clone { .. }
            | Action::CloneWithoutLeader
            | Action::BootstrapStandbyCluster { .. } => PgRunState::CreatingReplica,
            Action::Rewind { .. } => PgRunState::RunningPgRewind,
            Action::RestartPostgres { .. } => PgRunState::Restarting,
            _ => PgRunState::Starting,
        };
        let mut steps: Vec<LongFuture> = Vec::new();
        for action in actions.iter().take_while(|a| a.is_long()) {
            steps.push(self.long_step(action));
        }
        info!("{first}: running beside the HA loop");
        let future: LongFuture = Box::pin(async move {
            for step in steps {
                step.await?;
            }
            Ok(())
        });
        self.running = Some(Running {
            kind,
            busy,
            future: sync_wrapper::SyncWrapper::new(future),
        });
    }

    /// One long action as an owned future.
    fn long_step(&mut self, action: &Action) -> LongFuture {
        let pg = self.pg.clone();
        let kind = action.kind();
        let tag = move |e: anyhow::Error| (kind, e);
        match action.clone() {
            action @ (Action::BootstrapCluster | Action::BootstrapStandbyCluster { .. }) => {
                let dynamic = self
                    .config
                    .bootstrap
                    .as_ref()
                    .map_or_else(|| self.dynamic.clone(), |b| b.dcs.clone());
                let io = BootstrapIo {
                    dcs: self.dcs.clone(),
                    pg,
                    name: self.name.clone(),
                    dynamic_json: dynamic.to_json(),
                    lease: self.lease.clone(),
                    clock: self.clock.clone(),
                    post_bootstrap: self.callbacks.post_bootstrap(&self.config, &dynamic),
                    method: match action {
                        Action::BootstrapCluster => self
                            .config
                            .bootstrap
                            .as_ref()
                            .and_then(|b| b.method.clone()),
                        _ => None,
                    },
                    standby_of: match action {
                        Action::BootstrapStandbyCluster { upstream } => Some(upstream),
                        _ => None,
                    },
                    local_methods: self.config.postgresql.create_replica_methods.clone(),
                };
                Box::pin(async move { io.run().await.map_err(tag) })
            }
            Action::Clone { upstream } => {
                Box::pin(
                    async move { pg.clone_replica(&upstream).await.map_err(|e| tag(e.into())) },
                )
            }
            Action::CloneWithoutLeader => {
                Box::pin(async move { pg.clone_without_leader().await.map_err(|e| tag(e.into())) })
            }
            Action::Rewind { upstream } => {
                Box::pin(async move { pg.rewind(&upstream).await.map_err(|e| tag(e.into())) })
            }
            Action::RestartPostgres { role } => {
                let lease = self.lease.clone();
                let clock = self.clock.clone();
                let bound = self.restart_timeout.take();
                let before_stop = self.callbacks.before_stop_job();
                Box::pin(async move {
                    let restart = async {
                        before_stop.run().await;
                        pg.stop(StopMode::Fast).await.context("stop postgres")?;
                        if matches!(role, StartRole::Primary) {
                            // Back as the primary only while our lease is provably alive.
                            let lease = *lease.borrow();
                            if !lease.valid_at(clock.now()) {
                                bail!("our lease is not valid any more");
                            }
                        }
                        pg.start(&role).await.context("start postgres")?;
                        Ok(())
                    };
                    match bound {
                        Some(limit) => {
                            tokio::time::timeout(limit, restart)
                                .await
                                .unwrap_or_else(|_| {
                                    Err(anyhow::anyhow!(
                                        "postgres did not restart within the timeout of {}s",
                                        limit.as_secs()
                                    ))
                                })
                        }
                        None => restart.await,
                    }
                    .map_err(tag)
                })
            }
            Action::StartPostgres { role } => {
                Box::pin(async move { pg.start(&role).await.map_err(|e| tag(e.into())) })
            }
            other => Box::pin(async move {
                Err(tag(anyhow::anyhow!(
                    "{other} is not a long action (pgbaton bug)"
                )))
            }),
        }
    }

    /// Stop the long action. With `abandon` (the data directory is removed next anyway),
    /// whatever runs is dropped, which kills its process group. Otherwise a clone is
    /// abandoned and its partial copy removed, while a rewind, bootstrap or start is waited
    /// for: interrupting it leaves a data directory nobody can use. Returns what ran.
    pub(super) async fn end_long(&mut self, why: &str, abandon: bool) -> Option<ActionKind> {
        let running = self.running.take()?;
        let kind = running.kind;
        if abandon || kind == ActionKind::Clone {
            drop(running);
            warn!("{why}: {} cancelled", kind.long_label());
            if !abandon && let Err(e) = self.pg.wipe_data_dir().await {
                error!("failed to remove the partial copy of a cancelled clone: {e:#}");
            }
        } else {
            info!("{why}: waiting for {} to finish", kind.long_label());
            self.running = Some(running);
            self.long_action_done().await;
        }
        Some(kind)
    }
}
