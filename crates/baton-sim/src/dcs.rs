//! `SimDcs`: one member's client of the shared [`MemDcs`] store, through the simulated network.
//!
//! A call travels to the store (seeded latency, more while the member's DCS link is slow),
//! is applied there, and the answer travels back. The store applies a request that arrived
//! even when the client has given up on it — as etcd does — so a timed-out write may still have
//! happened. Calls are bounded by the client's request timeout (`EtcdDcs` uses 3 s); a member
//! cut off from the DCS gets "connection refused" at once or silence until that timeout.
//!
//! During an etcd leader election requests wait at the store and leases do not expire; when
//! the election ends every lease is refreshed to its full TTL (etcd's `Promote`), see
//! [`crate::faults`].
//!
//! The broken variants live here too: [`Broken::Steal`], a member that cannot reach the leader
//! over the member network treats the leader key as absent and takes it over without waiting
//! for its lease to expire; [`Broken::SkipSyncCheck`], a member racing for the key reads a
//! `/sync` that lists it.
//!
//! For the checker, the client mirrors `/sync` into the model on every successful write of it
//! (at the store, in the same step), and hands the model `/sync` as it stood just before each
//! successful acquisition of the leader key.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use baton_core::{
    ClusterView, FailoverRequest, FailsafeTopology, HistoryLine, Lsn, Member, MemberName, SyncKey,
    SyncMode, SyncState,
};
use baton_dcs_mem::MemDcs;
use baton_ports::{Dcs, DcsError, Holder, LeaderWrite};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::Broken;
use crate::world::{Answer, DcsLink, World};

/// `EtcdDcs`'s per-request timeout (`request_timeout` in `baton_agent::run`).
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

enum Route {
    Refused(Duration),
    Blackhole,
    Deliver { req: Duration, resp: Duration },
}

pub(crate) struct SimDcs {
    w: Arc<World>,
    i: usize,
}

fn unavailable(what: &str, why: &str) -> DcsError {
    DcsError::unavailable(format!("simulated etcd: {what}: {why}"))
}

impl SimDcs {
    pub(crate) fn new(w: Arc<World>, i: usize) -> SimDcs {
        SimDcs { w, i }
    }

    fn route(&self) -> Route {
        let (link, slow) = {
            let net = self.w.net();
            (net.dcs[self.i], net.dcs_slow[self.i])
        };
        let mut rng = self.w.rng();
        match link {
            DcsLink::Refused => Route::Refused(rng.ms(1, 20)),
            DcsLink::Blackhole => Route::Blackhole,
            DcsLink::Up => {
                let (lo, hi) = slow.unwrap_or((0, 0));
                let req = rng.ms(1, 5) + rng.ms(lo, hi);
                let resp = rng.ms(1, 5) + rng.ms(lo, hi);
                Route::Deliver { req, resp }
            }
        }
    }

    fn link_up(w: &World, i: usize) -> bool {
        w.net().dcs[i] == DcsLink::Up
    }

    /// One request/response exchange carrying `f` to the store.
    async fn call<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T, DcsError>
    where
        T: Send + 'static,
        F: FnOnce(MemDcs) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, DcsError>> + Send + 'static,
    {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let timed_out = || unavailable(what, "request timed out");
        match self.route() {
            Route::Refused(d) => {
                tokio::time::sleep(d).await;
                Err(unavailable(what, "connection refused"))
            }
            Route::Blackhole => {
                tokio::time::sleep_until(deadline).await;
                Err(timed_out())
            }
            Route::Deliver { req, resp } => {
                let (tx, rx) = oneshot::channel();
                let w = self.w.clone();
                let i = self.i;
                tokio::spawn(async move {
                    tokio::time::sleep(req).await;
                    wait_for_election(&w).await;
                    if !Self::link_up(&w, i) {
                        return; // lost on the way
                    }
                    let store = w.store.clone();
                    let _ = tx.send(f(store).await);
                });
                let w = self.w.clone();
                let i = self.i;
                let answer = async move {
                    let r = rx.await.ok()?;
                    tokio::time::sleep(resp).await;
                    Self::link_up(&w, i).then_some(r)
                };
                match tokio::time::timeout_at(deadline, answer).await {
                    Ok(Some(r)) => r,
                    Ok(None) => {
                        tokio::time::sleep_until(deadline).await;
                        Err(timed_out())
                    }
                    Err(_) => Err(timed_out()),
                }
            }
        }
    }

    /// For the checker: this agent process now holds the leader key on its own lease.
    fn note_key(&self, taken: &Result<bool, DcsError>) {
        if matches!(taken, Ok(true)) {
            self.w.agents()[self.i].owns_key = true;
        }
    }

    fn steals(&self) -> bool {
        self.w.broken == Some(Broken::Steal)
    }

    /// [`Broken::SkipSyncCheck`]: while nobody holds the leader key (the race), `/sync` — when
    /// a leader published it — reads as listing us, with quorum 0. That is exactly what
    /// `healthiest` needs to skip its `/sync` check (`NotSynchronous` in priority mode, the
    /// voters' count in quorum mode); `before_promote` drops us from the set it writes and
    /// compares-and-swaps on the real revision, so it is unaffected.
    fn skip_sync_check(&self, view: &mut ClusterView) {
        if self.w.broken != Some(Broken::SkipSyncCheck) || view.leader.is_some() {
            return;
        }
        let me = self.w.name(self.i);
        if let SyncKey::Present(sync) = &mut view.sync
            && sync
                .value
                .leader
                .as_ref()
                .is_some_and(|l| !l.as_str().eq_ignore_ascii_case(me))
            && let Some(name) = MemberName::new(me.to_owned())
        {
            if !sync.value.lists(&name) {
                // BROKEN: "I may be promoted whatever /sync says".
                sync.value.sync_standby.push(name);
            }
            sync.value.quorum = 0;
        }
    }
}

/// Requests that reach the store during an etcd election wait for its end.
async fn wait_for_election(w: &World) {
    loop {
        let over = w.election_over.notified();
        tokio::pin!(over);
        over.as_mut().enable();
        if !w.net().election {
            return;
        }
        over.await;
    }
}

impl Dcs for SimDcs {
    async fn read_cluster(&self) -> Result<ClusterView, DcsError> {
        let mut view = self
            .call("read cluster", |d| async move { d.read_cluster().await })
            .await?;
        if self.steals()
            && let Some(leader) = view.leader_name()
            && let Some(l) = self.w.index_of(leader.as_str())
            && l != self.i
            && (!self.w.reachable(self.i, l) || self.w.agent_answers(l) != Answer::Up)
        {
            // BROKEN: "the leader does not answer, so it is gone".
            view.leader = None;
        }
        self.skip_sync_check(&mut view);
        Ok(view)
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<i64, DcsError> {
        let id = self
            .call(
                "grant lease",
                move |d| async move { d.grant_lease(ttl).await },
            )
            .await?;
        let mut net = self.w.net();
        net.max_lease = net.max_lease.max(id);
        Ok(id)
    }

    async fn keepalive(&self, lease: i64) -> Result<Duration, DcsError> {
        self.call(
            "keepalive",
            move |d| async move { d.keepalive(lease).await },
        )
        .await
    }

    async fn revoke_lease(&self, lease: i64) -> Result<(), DcsError> {
        self.call("revoke lease", move |d| async move {
            d.revoke_lease(lease).await
        })
        .await
    }

    async fn race_initialize(&self) -> Result<bool, DcsError> {
        self.call(
            "race initialize",
            |d| async move { d.race_initialize().await },
        )
        .await
    }

    async fn set_initialize(&self, sysid: &str) -> Result<(), DcsError> {
        let sysid = sysid.to_owned();
        self.call("set initialize", move |d| async move {
            d.set_initialize(&sysid).await
        })
        .await
    }

    async fn cancel_initialize(&self) -> Result<(), DcsError> {
        self.call("cancel initialize", |d| async move {
            d.cancel_initialize().await
        })
        .await
    }

    async fn acquire_leader(&self, name: &MemberName, lease: i64) -> Result<bool, DcsError> {
        let name = name.clone();
        let steal = self.steals();
        let (w, i) = (self.w.clone(), self.i);
        // Only priority mode has a rule about who may take the key (and staying out of the
        // model otherwise keeps runs without synchronous mode exactly as they were).
        let check = self.w.params.sync.mode == SyncMode::Priority;
        let taken = self
            .call("acquire leader", move |d| async move {
                if steal {
                    // BROKEN: no compare-and-swap, whoever holds the key loses it.
                    d.delete_raw(baton_dcs_mem::record::LEADER);
                }
                // `/sync` just before the key changes hands (nothing runs in between: the
                // store answers without yielding).
                let before = check.then(|| w.model().sync_key.clone());
                let taken = d.acquire_leader(&name, lease).await;
                if let (Some(before), Ok(true)) = (before, &taken) {
                    let now = w.now();
                    w.with_model(|m| m.leader_acquired(i, before.as_ref(), now));
                }
                taken
            })
            .await;
        self.note_key(&taken);
        taken
    }

    async fn reattach_leader(&self, name: &MemberName, lease: i64) -> Result<bool, DcsError> {
        let name = name.clone();
        let taken = self
            .call("reattach leader", move |d| async move {
                d.reattach_leader(&name, lease).await
            })
            .await;
        self.note_key(&taken);
        taken
    }

    async fn repair_leader(
        &self,
        name: &MemberName,
        lease: i64,
        version: i64,
    ) -> Result<bool, DcsError> {
        let name = name.clone();
        let taken = self
            .call("repair leader", move |d| async move {
                d.repair_leader(&name, lease, version).await
            })
            .await;
        self.note_key(&taken);
        taken
    }

    async fn release_leader(&self, name: &MemberName) -> Result<bool, DcsError> {
        let name = name.clone();
        self.call("release leader", move |d| async move {
            d.release_leader(&name).await
        })
        .await
    }

    async fn touch_member(&self, member: &Member, lease: i64) -> Result<(), DcsError> {
        let member = member.clone();
        self.call("touch member", move |d| async move {
            d.touch_member(&member, lease).await
        })
        .await
    }

    async fn write_config(&self, json: &str, version: Option<i64>) -> Result<bool, DcsError> {
        let json = json.to_owned();
        self.call("write config", move |d| async move {
            d.write_config(&json, version).await
        })
        .await
    }

    async fn write_status(
        &self,
        leader: &Holder,
        optime: Lsn,
        slots: &[(String, Lsn)],
        retain_slots: &[String],
    ) -> Result<LeaderWrite, DcsError> {
        let (leader, slots, retain) = (leader.clone(), slots.to_vec(), retain_slots.to_vec());
        self.call("write status", move |d| async move {
            d.write_status(&leader, optime, &slots, &retain).await
        })
        .await
    }

    async fn write_history(
        &self,
        leader: &Holder,
        history: &[HistoryLine],
    ) -> Result<LeaderWrite, DcsError> {
        let (leader, history) = (leader.clone(), history.to_vec());
        self.call("write history", move |d| async move {
            d.write_history(&leader, &history).await
        })
        .await
    }

    async fn write_failsafe(
        &self,
        leader: &Holder,
        topology: &FailsafeTopology,
    ) -> Result<LeaderWrite, DcsError> {
        let (leader, topology) = (leader.clone(), topology.clone());
        self.call("write failsafe", move |d| async move {
            d.write_failsafe(&leader, &topology).await
        })
        .await
    }

    async fn write_failover(
        &self,
        request: Option<&FailoverRequest>,
        version: Option<i64>,
    ) -> Result<bool, DcsError> {
        let request = request.cloned();
        self.call("write failover", move |d| async move {
            d.write_failover(request.as_ref(), version).await
        })
        .await
    }

    async fn clear_failover(&self, leader: &Holder, version: i64) -> Result<LeaderWrite, DcsError> {
        let leader = leader.clone();
        self.call("clear failover", move |d| async move {
            d.clear_failover(&leader, version).await
        })
        .await
    }

    async fn write_sync(
        &self,
        leader: &Holder,
        state: Option<&SyncState>,
        version: i64,
    ) -> Result<LeaderWrite, DcsError> {
        let (leader, state) = (leader.clone(), state.cloned());
        let w = self.w.clone();
        self.call("write sync", move |d| async move {
            let written = d.write_sync(&leader, state.as_ref(), version).await;
            if matches!(written, Ok(LeaderWrite::Written)) {
                w.model().sync_key = state;
            }
            written
        })
        .await
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.w.dcs_changes[self.i].subscribe()
    }
}
