//! `SimPostgres`: the `baton_ports::Postgres` trait over the cluster model.
//!
//! Every call takes a seeded, randomised amount of virtual time. State changes that a real
//! postmaster makes on its own — becoming ready after a start, finishing a promotion, exiting
//! after a stop — run as tasks of their own, not of the agent: an agent that crashes or
//! freezes halfway through `pg_ctl start` still ends up with a running server, as in life.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_core::{HistoryLine, PgState, StartRole, StopMode, Upstream};
use baton_ports::{PendingSetting, PgError, Postgres, Reconfigured};

use crate::model::{Role, StopKind};
use crate::world::World;

/// `pg_ctl_timeout` (Patroni's default, and the example configuration's).
const PG_CTL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug)]
enum Op {
    Observe,
    Signal,
    StartReady,
    StopFast,
    StopImmediate,
    Promote,
    Rewind,
    Clone,
    Initdb,
    Sql,
    Connect,
}

pub(crate) struct SimPostgres {
    w: Arc<World>,
    i: usize,
    conf: Mutex<SimConf>,
}

/// Parameters that take effect only at a start, as PostgreSQL's `postmaster` context.
const POSTMASTER_PARAMETERS: &[&str] = &[
    "max_connections",
    "max_locks_per_transaction",
    "max_prepared_transactions",
    "max_replication_slots",
    "max_wal_senders",
    "max_worker_processes",
    "shared_buffers",
    "wal_level",
];

/// The configuration files as this agent last wrote them, and the parameters the running
/// postmaster started with (as far as this agent knows).
#[derive(Default)]
struct SimConf {
    parameters: BTreeMap<String, String>,
    pg_hba: Vec<String>,
    started_with: Option<BTreeMap<String, String>>,
}

fn err(e: String) -> PgError {
    PgError::Other(e)
}

impl SimPostgres {
    pub(crate) fn new(w: Arc<World>, i: usize) -> SimPostgres {
        SimPostgres {
            w,
            i,
            conf: Mutex::new(SimConf::default()),
        }
    }

    /// How long `op` takes this time.
    fn duration(&self, op: Op) -> Duration {
        let slow = self.w.net().pg_slow[self.i];
        let mut rng = self.w.rng();
        let (lo, hi) = match op {
            Op::Observe | Op::Sql => (1, 15),
            Op::Signal => (5, 30),
            Op::StartReady => (300, 1_500),
            Op::StopFast => (200, 1_000),
            Op::StopImmediate => (20, 150),
            Op::Promote => (200, 1_200),
            Op::Rewind => (500, 3_000),
            Op::Clone => (1_000, 5_000),
            Op::Initdb => (500, 1_500),
            Op::Connect => (2, 20),
        };
        let base = rng.ms(lo, hi);
        if slow { base * 10 } else { base }
    }

    async fn take(&self, op: Op) {
        tokio::time::sleep(self.duration(op)).await;
    }

    fn upstream_index(&self, upstream: &Upstream) -> Result<usize, PgError> {
        self.w
            .model()
            .node_by_host(&upstream.host)
            .ok_or_else(|| err(format!("could not translate host name {:?}", upstream.host)))
    }

    /// A source must be reachable over the member network; an unreachable one costs the
    /// connect timeout.
    async fn connect(&self, u: usize) -> bool {
        let reachable = self.w.reachable(self.i, u);
        if reachable {
            self.take(Op::Connect).await;
        } else {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        // The path may have been cut while we connected.
        self.w.reachable(self.i, u)
    }

    /// Wait until the start/promotion of `generation` settled, bounded by `pg_ctl_timeout`.
    async fn wait_settled(
        &self,
        generation: u64,
        primary: bool,
        what: &str,
    ) -> Result<(), PgError> {
        let i = self.i;
        let mut res = None;
        let work = self.w.until_pg(|w| {
            res = w.model().settled(i, generation, primary);
            res.is_some()
        });
        match tokio::time::timeout(PG_CTL_TIMEOUT, work).await {
            Ok(()) => res
                .unwrap_or(Ok(()))
                .map_err(|e| err(format!("{what}: {e}"))),
            Err(_) => Err(PgError::Timeout {
                what: what.to_owned(),
                after: PG_CTL_TIMEOUT,
            }),
        }
    }

    /// The postmaster's own timeline, independent of whoever asked.
    fn postmaster_after(&self, delay: Duration, f: impl FnOnce(&World) + Send + 'static) {
        let w = self.w.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            f(&w);
        });
    }

    /// Request a stop (or find one in progress) and wait for the postmaster to exit.
    async fn stop_and_wait(&self, kind: StopKind) {
        let w = self.w.clone();
        let i = self.i;
        let now = w.now();
        let Some(generation) = w.with_model(|m| m.stop(i, kind, now)) else {
            return;
        };
        let op = if kind == StopKind::Fast {
            Op::StopFast
        } else {
            Op::StopImmediate
        };
        let delay = self.duration(op);
        self.postmaster_after(delay, move |w| {
            let now = w.now();
            w.with_model(|m| m.stop_done(i, generation, kind, now));
        });
        self.w
            .until_pg(|w| {
                w.model().nodes[i]
                    .proc
                    .as_ref()
                    .is_none_or(|p| p.generation != generation)
            })
            .await;
    }
}

impl Postgres for SimPostgres {
    async fn observe(&self) -> PgState {
        self.take(Op::Observe).await;
        self.w.model().observe(self.i)
    }

    async fn is_alive(&self) -> bool {
        self.w.model().is_alive(self.i)
    }

    async fn initdb(&self) -> Result<(), PgError> {
        self.take(Op::Initdb).await;
        let sysid = {
            let mut rng = self.w.rng();
            format!("7{:018}", rng.below(1_000_000_000_000_000_000))
        };
        let now = self.w.now();
        let i = self.i;
        self.w.with_model(|m| m.initdb(i, sysid, now)).map_err(err)
    }

    async fn start(&self, role: &StartRole) -> Result<(), PgError> {
        self.take(Op::Signal).await;
        let (role, upstream) = match role {
            StartRole::Primary => (Role::Primary, None),
            StartRole::Standby { upstream: None } => (Role::Standby, None),
            StartRole::Standby { upstream: Some(u) } => {
                (Role::Standby, Some(self.upstream_index(u)?))
            }
        };
        let (i, now) = (self.i, self.w.now());
        let generation = self
            .w
            .with_model(|m| m.start(i, role, upstream, now))
            .map_err(err)?;
        {
            let mut conf = self.conf.lock().unwrap_or_else(|p| p.into_inner());
            conf.started_with = Some(conf.parameters.clone());
        }
        let delay = self.duration(Op::StartReady);
        self.postmaster_after(delay, move |w| {
            let now = w.now();
            w.with_model(|m| m.start_ready(i, generation, now));
        });
        self.wait_settled(generation, false, "start").await
    }

    async fn stop(&self, mode: StopMode) -> Result<(), PgError> {
        self.take(Op::Signal).await;
        let kind = match mode {
            StopMode::Fast => StopKind::Fast,
            StopMode::Immediate => StopKind::Immediate,
        };
        self.stop_and_wait(kind).await;
        Ok(())
    }

    async fn promote(&self) -> Result<(), PgError> {
        self.take(Op::Signal).await;
        let i = self.i;
        let by = self.w.agents()[i].incarnation;
        let generation = self.w.with_model(|m| m.promote(i, by)).map_err(err)?;
        let delay = self.duration(Op::Promote);
        self.postmaster_after(delay, move |w| {
            let now = w.now();
            w.with_model(|m| m.promote_done(i, generation, now));
        });
        self.wait_settled(generation, true, "promote").await
    }

    async fn follow(&self, upstream: &Upstream) -> Result<bool, PgError> {
        self.take(Op::Sql).await;
        let u = self.upstream_index(upstream)?;
        let i = self.i;
        Ok(self.w.with_model(|m| m.follow(i, u)))
    }

    async fn clone_replica(&self, upstream: &Upstream) -> Result<(), PgError> {
        let u = self.upstream_index(upstream)?;
        self.w
            .model()
            .require_stopped(self.i, "clone")
            .map_err(err)?;
        let ok = self.connect(u).await;
        self.take(Op::Clone).await;
        let reachable = ok && self.w.reachable(self.i, u);
        let i = self.i;
        self.w
            .with_model(|m| m.clone_from(i, u, reachable))
            .map_err(|e| err(format!("pg_basebackup: {e}")))
    }

    async fn rewind(&self, upstream: &Upstream) -> Result<(), PgError> {
        let u = self.upstream_index(upstream)?;
        self.w
            .model()
            .require_stopped(self.i, "rewind")
            .map_err(err)?;
        let ok = self.connect(u).await;
        self.take(Op::Rewind).await;
        let reachable = ok && self.w.reachable(self.i, u);
        let i = self.i;
        self.w
            .with_model(|m| m.rewind(i, u, reachable))
            .map_err(|e| err(format!("pg_rewind: {e}")))
    }

    async fn set_synchronous_standby_names(&self, value: Option<&str>) -> Result<(), PgError> {
        self.take(Op::Sql).await;
        let i = self.i;
        self.w.with_model(|m| m.set_ssn(i, value));
        Ok(())
    }

    async fn reconfigure(
        &self,
        parameters: &BTreeMap<String, String>,
        pg_hba: &[String],
    ) -> Result<Reconfigured, PgError> {
        self.take(Op::Sql).await;
        let running = self.w.model().is_alive(self.i);
        Ok(apply_conf(
            &mut self.conf.lock().unwrap_or_else(|p| p.into_inner()),
            parameters,
            pg_hba,
            running,
        ))
    }

    async fn wipe_data_dir(&self) -> Result<(), PgError> {
        self.take(Op::Sql).await;
        let i = self.i;
        self.w.with_model(|m| m.wipe(i)).map_err(err)
    }

    async fn create_roles(&self) -> Result<(), PgError> {
        self.take(Op::Sql).await;
        self.w
            .model()
            .require_ready(self.i, "create roles")
            .map_err(err)
    }

    async fn ensure_slots(&self, slots: &[String]) -> Result<(), PgError> {
        self.take(Op::Sql).await;
        self.w.model().set_slots(self.i, slots).map_err(err)
    }

    async fn timeline_history(&self) -> Result<Vec<HistoryLine>, PgError> {
        self.take(Op::Sql).await;
        self.w.model().timeline_history(self.i).map_err(err)
    }
}

/// Adopt `parameters` and `pg_hba`. A running server reloads when they changed and reports
/// the postmaster parameters that differ from what it started with (an agent that finds the
/// server running takes the first configuration it applies as the one it started with).
fn apply_conf(
    conf: &mut SimConf,
    parameters: &BTreeMap<String, String>,
    pg_hba: &[String],
    running: bool,
) -> Reconfigured {
    let changed = conf.parameters != *parameters || conf.pg_hba != pg_hba;
    conf.parameters = parameters.clone();
    conf.pg_hba = pg_hba.to_vec();
    let mut outcome = Reconfigured::default();
    if !running {
        outcome.deferred = Some("PostgreSQL is not running; it starts with them");
        return outcome;
    }
    outcome.rewritten = changed;
    outcome.reloaded = changed;
    let started_with = conf.started_with.get_or_insert_with(|| parameters.clone());
    for name in POSTMASTER_PARAMETERS {
        let old = started_with.get(*name);
        let new = parameters.get(*name);
        if old != new {
            outcome.pending_restart.push(PendingSetting {
                name: (*name).to_owned(),
                old_value: old.cloned().unwrap_or_default(),
                new_value: new.cloned().unwrap_or_default(),
            });
        }
    }
    outcome
}

/// The postmaster died (fault injection).
pub(crate) fn crash(w: &World, i: usize) {
    let now = w.now();
    w.with_model(|m| m.stop(i, StopKind::Crash, now));
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::{SimConf, apply_conf};

    fn params(list: &[(&str, &str)]) -> BTreeMap<String, String> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn reload_reports_postmaster_parameters_until_the_next_start() {
        let mut conf = SimConf::default();
        let first = params(&[("shared_buffers", "32MB"), ("work_mem", "4MB")]);
        let stopped = apply_conf(&mut conf, &first, &[], false);
        assert!(stopped.deferred.is_some() && !stopped.reloaded);
        // The agent found the server running: what it applies first is what it runs with.
        let joined = apply_conf(&mut conf, &first, &[], true);
        assert!(!joined.reloaded && joined.pending_restart.is_empty());

        let second = params(&[("shared_buffers", "64MB"), ("work_mem", "8MB")]);
        let changed = apply_conf(&mut conf, &second, &["local all all trust".into()], true);
        assert!(changed.reloaded);
        let pending: Vec<_> = changed
            .pending_restart
            .iter()
            .map(|p| (p.name.as_str(), p.old_value.as_str(), p.new_value.as_str()))
            .collect();
        assert_eq!(pending, [("shared_buffers", "32MB", "64MB")]);

        // A start takes the files as they are.
        conf.started_with = Some(conf.parameters.clone());
        let after_start = apply_conf(&mut conf, &second, &["local all all trust".into()], true);
        assert!(!after_start.reloaded && after_start.pending_restart.is_empty());
    }
}
