//! The floating IP task: puts the `vip` address on this host while, and only while, this node
//! is the leader running a writable primary under a valid lease, driven by the same lease state
//! that fences PostgreSQL.
//!
//! - **Add** once the snapshot says we hold the leader key (with the lease we hold now),
//!   PostgreSQL answers as a primary (`pg_is_in_recovery() = false`), and the fencing deadline
//!   is ahead; then announce it with gratuitous ARP (`arp_count` times, `arp_interval` apart).
//! - **Keep** it while we hold the key under a valid lease and PostgreSQL is not known to be a
//!   standby (one failed SQL probe does not take the address away).
//! - **Remove** it as soon as any of that stops being true: at the fencing deadline (the task
//!   sleeps until it, so nothing else has to happen — an unreachable etcd included), when the
//!   key is released or lost, when PostgreSQL is a standby, and on shutdown.
//! - **Reconcile** every `reconcile_interval`: an address removed by hand is added back, one
//!   found while we are not the leader is removed; both are logged.
//!
//! The task reacts to snapshot and lease changes at once and never waits for the HA loop.
//! Failures are logged (once per distinct message) and retried; the task never panics.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use baton_api::{Snapshot, VipStatus};
use baton_core::{Clock, LeaseState, Mono};
use baton_vip::{NetlinkVip, Vip, VipAddress, VipError};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::clock::until;

/// Wait before retrying a failed add or remove.
const RETRY: Duration = Duration::from_millis(500);

/// Attempts to remove the address on shutdown.
const SHUTDOWN_ATTEMPTS: u32 = 3;

/// What the task needs from the `vip` configuration section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipSettings {
    /// `10.0.0.100/24`, for logs and the REST API.
    pub address: String,
    pub interface: String,
    pub arp_count: u32,
    pub arp_interval: Duration,
    pub reconcile_interval: Duration,
}

impl VipSettings {
    pub fn from_config(vip: &baton_config::Vip) -> VipSettings {
        VipSettings {
            address: vip.cidr(),
            interface: vip.interface.clone(),
            arp_count: vip.arp_count,
            arp_interval: vip.arp_interval,
            reconcile_interval: vip.reconcile_interval,
        }
    }

    fn initial_status(&self) -> VipStatus {
        VipStatus {
            address: self.address.clone(),
            interface: self.interface.clone(),
            present: false,
            desired: false,
            error: None,
        }
    }
}

/// The real floating IP for the `vip` section, checked the way the agent must check it before
/// it starts anything: the interface exists (a clear error naming `vip.interface`), and the
/// agent has `CAP_NET_ADMIN` (and `CAP_NET_RAW` unless `arp_count` is 0).
///
/// An address found on the interface now was left by a previous run that could not remove it
/// (a crash, SIGKILL): this process holds no lease yet, so it is removed at once, before the
/// agent even reaches etcd.
pub async fn open(vip: &baton_config::Vip) -> anyhow::Result<NetlinkVip> {
    let address = VipAddress::new(IpAddr::V4(vip.address), vip.prefix_len)
        .map_err(|e| anyhow::anyhow!("vip.address: {e}"))?;
    let netlink = NetlinkVip::new(address, &vip.interface, vip.arp_count > 0)
        .await
        .map_err(|e| match e {
            VipError::UnknownInterface(_) => anyhow::anyhow!("vip.interface: {e}"),
            e => anyhow::anyhow!("vip: {e}"),
        })?;
    if netlink
        .is_present()
        .await
        .map_err(|e| anyhow::anyhow!("vip: {e}"))?
    {
        warn!(
            "floating IP {} found on {} at startup (left by a previous run); removing it until \
             this node leads",
            vip.cidr(),
            vip.interface
        );
        netlink
            .remove()
            .await
            .map_err(|e| anyhow::anyhow!("vip: {e}"))?;
    }
    Ok(netlink)
}

/// The lease our leader key is attached to, as of the snapshot: `Some` only when we hold the
/// key and the snapshot's DCS view shows it under our name.
fn leader_lease(snap: &Snapshot) -> Option<i64> {
    if !snap.holds_leader_key {
        return None;
    }
    snap.cluster
        .as_ref()
        .and_then(|c| c.leader.as_ref())
        .filter(|l| l.name.as_ref() == Some(&snap.name))
        .map(|l| l.lease)
}

/// Whether the address belongs on this host now. `held`: it is on the interface already
/// (keeping needs less than adding: PostgreSQL must not be a standby, rather than must answer
/// as a primary).
pub fn wanted(snap: &Snapshot, lease: &LeaseState, now: Mono, held: bool) -> bool {
    let leads = lease.valid_at(now) && lease.id.is_some() && leader_lease(snap) == lease.id;
    if !leads {
        return false;
    }
    match &snap.pg {
        Some(sql) => !sql.in_recovery,
        None => held,
    }
}

struct Task<V: Vip> {
    vip: Arc<V>,
    clock: Arc<dyn Clock>,
    settings: VipSettings,
    status: watch::Sender<VipStatus>,
    /// Whether the address is on the interface, as far as we know (`None`: not known).
    present: Option<bool>,
    /// Announcements still to send, and when the next one is due.
    arps_left: u32,
    next_arp: Mono,
    /// After a failed add or remove, not before this time.
    retry_at: Option<Mono>,
    next_reconcile: Mono,
    last_error: Option<String>,
}

/// Runs until `stop` flips to true (or the snapshot or lease channel closes), then removes the
/// address. `status` receives the state for `/patroni` and `/metrics`.
pub async fn run_vip<V: Vip>(
    vip: Arc<V>,
    clock: Arc<dyn Clock>,
    mut snapshot: watch::Receiver<Arc<Snapshot>>,
    mut lease: watch::Receiver<LeaseState>,
    mut stop: watch::Receiver<bool>,
    settings: VipSettings,
    status: watch::Sender<VipStatus>,
) {
    status.send_replace(settings.initial_status());
    let now = clock.now();
    let mut task = Task {
        vip,
        clock,
        settings,
        status,
        present: None,
        arps_left: 0,
        next_arp: now,
        retry_at: None,
        next_reconcile: now,
        last_error: None,
    };
    info!(
        address = task.settings.address,
        interface = task.settings.interface,
        "managing the floating IP"
    );
    loop {
        if *stop.borrow() {
            break;
        }
        let snap = snapshot.borrow_and_update().clone();
        let state = *lease.borrow_and_update();
        let wake = task.step(&snap, &state).await;
        let sleep = until(task.clock.as_ref(), wake);
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            changed = snapshot.changed() => if changed.is_err() { break },
            changed = lease.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep(sleep) => {}
        }
    }
    task.shutdown().await;
}

impl<V: Vip> Task<V> {
    /// One pass: reconcile when due, add or remove as needed, announce when due. Returns when
    /// the next pass is needed at the latest.
    async fn step(&mut self, snap: &Snapshot, lease: &LeaseState) -> Mono {
        let now = self.clock.now();
        if self.present.is_none() || now >= self.next_reconcile {
            self.next_reconcile = now + self.settings.reconcile_interval;
            self.reconcile(snap, lease).await;
        }

        let now = self.clock.now();
        let want = wanted(snap, lease, now, self.present == Some(true));
        let retry_due = self.retry_at.is_none_or(|t| now >= t);
        match (want, self.present) {
            (true, Some(true)) | (false, Some(false)) => {}
            (true, _) if retry_due => self.add().await,
            (false, _) if retry_due => {
                self.remove("this node is not the leader with a valid lease running a primary")
                    .await
            }
            _ => {}
        }

        if want && self.present == Some(true) && self.arps_left > 0 {
            let now = self.clock.now();
            if now >= self.next_arp {
                self.arps_left -= 1;
                self.next_arp = now + self.settings.arp_interval;
                if let Err(e) = self.vip.announce().await {
                    self.log_error("announce the floating IP (gratuitous ARP)", &e);
                }
            }
        }
        self.publish(want);

        // When to look again at the latest.
        let mut wake = self.next_reconcile;
        if want && self.present == Some(true) {
            // Drop the address at the fencing deadline even if nothing else happens.
            if let Some(deadline) = lease.fence_deadline {
                wake = wake.min(deadline);
            }
            if self.arps_left > 0 {
                wake = wake.min(self.next_arp);
            }
        }
        if want != (self.present == Some(true))
            && let Some(retry) = self.retry_at
        {
            wake = wake.min(retry);
        }
        wake
    }

    /// Compares what is on the interface with what we believe, and logs drift.
    async fn reconcile(&mut self, snap: &Snapshot, lease: &LeaseState) {
        let actual = match self.vip.is_present().await {
            Ok(actual) => actual,
            Err(e) => {
                self.failed("check the floating IP on its interface", &e);
                return;
            }
        };
        let want = wanted(snap, lease, self.clock.now(), actual);
        let (address, interface) = (&self.settings.address, &self.settings.interface);
        match (self.present, actual) {
            (Some(true), false) if want => warn!(
                "floating IP {address} on {interface} was removed by someone else; adding it back"
            ),
            (Some(true), false) => {
                info!("floating IP {address} on {interface} was removed by someone else")
            }
            (Some(false) | None, true) if !want => warn!(
                "floating IP {address} found on {interface} on this host while not the leader; \
                 removing it"
            ),
            (Some(false), true) => {
                info!("floating IP {address} on {interface} was added by someone else; keeping it")
            }
            _ => {}
        }
        if self.present.is_none() && actual && want {
            // Ours from before (a restart): tell the segment again where it lives.
            self.arps_left = self.settings.arp_count;
            self.next_arp = self.clock.now();
        }
        self.present = Some(actual);
    }

    async fn add(&mut self) {
        match self.vip.add().await {
            Ok(()) => {
                info!(
                    "added floating IP {} on {}",
                    self.settings.address, self.settings.interface
                );
                self.present = Some(true);
                self.succeeded();
                self.arps_left = self.settings.arp_count;
                self.next_arp = self.clock.now();
            }
            Err(e) => {
                self.failed("add the floating IP", &e);
                self.present = None;
            }
        }
    }

    async fn remove(&mut self, why: &str) {
        match self.vip.remove().await {
            Ok(()) => {
                if self.present != Some(false) {
                    info!(
                        "removed floating IP {} from {}: {why}",
                        self.settings.address, self.settings.interface
                    );
                }
                self.present = Some(false);
                self.arps_left = 0;
                self.succeeded();
            }
            Err(e) => {
                self.failed("remove the floating IP", &e);
                self.present = None;
            }
        }
    }

    /// On the way out: take the address off, retrying a little.
    async fn shutdown(&mut self) {
        for attempt in 1..=SHUTDOWN_ATTEMPTS {
            self.retry_at = None;
            self.remove("the agent is stopping").await;
            if self.present == Some(false) {
                break;
            }
            if attempt < SHUTDOWN_ATTEMPTS {
                tokio::time::sleep(RETRY).await;
            }
        }
        if self.present != Some(false) {
            error!(
                "could not remove floating IP {} from {} on shutdown; remove it by hand",
                self.settings.address, self.settings.interface
            );
        }
        self.publish(false);
    }

    /// A failed add, remove or check: logged once per distinct message, retried after `RETRY`.
    fn failed(&mut self, what: &str, e: &VipError) {
        self.log_error(what, e);
        self.retry_at = Some(self.clock.now() + RETRY);
    }

    fn log_error(&mut self, what: &str, e: &VipError) {
        let line = format!(
            "failed to {what} {} on {}: {e}",
            self.settings.address, self.settings.interface
        );
        if self.last_error.as_deref() != Some(line.as_str()) {
            error!("{line}");
            self.last_error = Some(line);
        }
    }

    fn succeeded(&mut self) {
        self.retry_at = None;
        if self.last_error.take().is_some() {
            info!(
                "floating IP {} on {}: operations succeed again",
                self.settings.address, self.settings.interface
            );
        }
    }

    fn publish(&self, desired: bool) {
        let next = VipStatus {
            address: self.settings.address.clone(),
            interface: self.settings.interface.clone(),
            present: self.present == Some(true),
            desired,
            error: self.last_error.clone(),
        };
        self.status.send_if_modified(|s| {
            if *s == next {
                false
            } else {
                *s = next;
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use baton_core::{ClusterView, LeaderKey, MemberName, PgSql};
    use tokio::task::JoinHandle;
    use tokio::time::Instant;

    use super::*;

    /// Milliseconds of tokio's (paused, auto-advancing) clock.
    struct TokioClock(Instant);

    impl Clock for TokioClock {
        fn now(&self) -> Mono {
            Mono::from_millis(self.0.elapsed().as_millis() as u64)
        }

        /// 2026-11-22T05:00:00Z plus the test's monotonic time.
        fn unix_ms(&self) -> i64 {
            1_795_323_600_000 + self.now().as_millis() as i64
        }
    }

    /// Records every call with its time; `present` is the interface.
    struct FakeVip {
        clock: Arc<TokioClock>,
        present: AtomicBool,
        fail_add: AtomicBool,
        calls: Mutex<Vec<(u64, &'static str)>>,
    }

    impl FakeVip {
        fn record(&self, what: &'static str) {
            let at = self.clock.now().0;
            self.calls.lock().expect("lock").push((at, what));
        }

        /// Times (ms) of the calls named `what`.
        fn times(&self, what: &str) -> Vec<u64> {
            let calls = self.calls.lock().expect("lock");
            calls
                .iter()
                .filter(|(_, w)| *w == what)
                .map(|(t, _)| *t)
                .collect()
        }

        fn count(&self, what: &str) -> usize {
            self.times(what).len()
        }

        fn is_up(&self) -> bool {
            self.present.load(Ordering::SeqCst)
        }
    }

    impl Vip for FakeVip {
        async fn is_present(&self) -> Result<bool, VipError> {
            self.record("is_present");
            Ok(self.is_up())
        }
        async fn add(&self) -> Result<(), VipError> {
            self.record("add");
            if self.fail_add.load(Ordering::SeqCst) {
                return Err(VipError::Permission {
                    action: "adding the floating IP",
                    capability: "CAP_NET_ADMIN",
                });
            }
            self.present.store(true, Ordering::SeqCst);
            Ok(())
        }
        async fn remove(&self) -> Result<(), VipError> {
            self.record("remove");
            self.present.store(false, Ordering::SeqCst);
            Ok(())
        }
        async fn announce(&self) -> Result<(), VipError> {
            self.record("announce");
            Ok(())
        }
    }

    const LEASE: i64 = 7;

    struct Harness {
        clock: Arc<TokioClock>,
        vip: Arc<FakeVip>,
        snapshot: watch::Sender<Arc<Snapshot>>,
        lease: watch::Sender<LeaseState>,
        stop: watch::Sender<bool>,
        status: watch::Receiver<VipStatus>,
        task: JoinHandle<()>,
    }

    fn settings() -> VipSettings {
        VipSettings {
            address: "10.0.0.100/24".to_owned(),
            interface: "eth0".to_owned(),
            arp_count: 3,
            arp_interval: Duration::from_secs(1),
            reconcile_interval: Duration::from_secs(5),
        }
    }

    /// `leader`: the lease our key is held with (`None`: another node leads); `pg`: `None` for
    /// no SQL answer, else whether PostgreSQL is in recovery.
    fn snap(leader: Option<i64>, in_recovery: Option<bool>) -> Arc<Snapshot> {
        let name = MemberName::new("node1").expect("name");
        let mut s = Snapshot::initial("demo", name.clone(), String::new(), String::new());
        s.holds_leader_key = leader.is_some();
        s.cluster = Some(ClusterView {
            leader: Some(LeaderKey {
                name: Some(if leader.is_some() {
                    name
                } else {
                    MemberName::new("node2").expect("name")
                }),
                lease: leader.unwrap_or(99),
                create_revision: 1,
                mod_revision: 1,
            }),
            ..ClusterView::default()
        });
        s.pg = in_recovery.map(|in_recovery| PgSql {
            in_recovery,
            ..PgSql::default()
        });
        Arc::new(s)
    }

    fn leader_primary() -> Arc<Snapshot> {
        snap(Some(LEASE), Some(false))
    }

    fn replica() -> Arc<Snapshot> {
        snap(None, Some(true))
    }

    fn start(initial: Arc<Snapshot>, deadline_in: Duration) -> Harness {
        let clock = Arc::new(TokioClock(Instant::now()));
        let vip = Arc::new(FakeVip {
            clock: clock.clone(),
            present: AtomicBool::new(false),
            fail_add: AtomicBool::new(false),
            calls: Mutex::new(Vec::new()),
        });
        let (snapshot, snapshot_rx) = watch::channel(initial);
        let (lease, lease_rx) = watch::channel(LeaseState {
            id: Some(LEASE),
            fence_deadline: Some(clock.now() + deadline_in),
        });
        let (stop, stop_rx) = watch::channel(false);
        let (status_tx, status) = watch::channel(VipStatus::default());
        let task = tokio::spawn(run_vip(
            vip.clone(),
            clock.clone(),
            snapshot_rx,
            lease_rx,
            stop_rx,
            settings(),
            status_tx,
        ));
        Harness {
            clock,
            vip,
            snapshot,
            lease,
            stop,
            status,
            task,
        }
    }

    impl Harness {
        fn now(&self) -> u64 {
            self.clock.now().0
        }

        /// Lets the task react (a few milliseconds of virtual time).
        async fn settle(&self) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        fn renew(&self, valid_for: Duration) {
            self.lease.send_replace(LeaseState {
                id: Some(LEASE),
                fence_deadline: Some(self.clock.now() + valid_for),
            });
        }
    }

    const LONG: Duration = Duration::from_secs(3600);

    #[tokio::test(start_paused = true)]
    async fn adds_only_when_leader_primary_and_lease_valid() {
        // Another node leads.
        let h = start(replica(), LONG);
        h.settle().await;
        assert_eq!(h.vip.count("add"), 0);
        assert!(!h.status.borrow().desired);

        // We hold the key but PostgreSQL is still in recovery (not promoted yet).
        h.snapshot.send_replace(snap(Some(LEASE), Some(true)));
        h.settle().await;
        // ... or PostgreSQL did not answer.
        h.snapshot.send_replace(snap(Some(LEASE), None));
        h.settle().await;
        // ... or the key is held with a lease that is not ours any more (stale snapshot).
        h.snapshot.send_replace(snap(Some(LEASE + 1), Some(false)));
        h.settle().await;
        assert_eq!(h.vip.count("add"), 0);

        // Leader, primary, lease valid: added and announced at once.
        h.snapshot.send_replace(leader_primary());
        h.settle().await;
        assert!(h.vip.is_up());
        assert_eq!(h.vip.count("add"), 1);
        assert_eq!(h.vip.count("announce"), 1);
        let status = h.status.borrow().clone();
        assert!(status.present && status.desired && status.error.is_none());
        assert_eq!(
            (status.address.as_str(), status.interface.as_str()),
            ("10.0.0.100/24", "eth0")
        );
        h.stop.send_replace(true);
        h.task.await.expect("task");
    }

    #[tokio::test(start_paused = true)]
    async fn not_added_after_the_fencing_deadline() {
        let h = start(replica(), Duration::from_secs(1));
        tokio::time::sleep(Duration::from_secs(2)).await;
        // The snapshot says we lead, but the lease's deadline has passed.
        h.snapshot.send_replace(leader_primary());
        h.settle().await;
        assert_eq!(h.vip.count("add"), 0);
        // No lease at all.
        h.lease.send_replace(LeaseState::default());
        h.settle().await;
        assert_eq!(h.vip.count("add"), 0);
        // A renewed lease with the same ID: now it may.
        h.renew(LONG);
        h.settle().await;
        assert_eq!(h.vip.count("add"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn removed_at_the_fencing_deadline_without_any_other_event() {
        // A deadline between two reconcile passes (every 5 s), so only the deadline can wake it.
        let h = start(leader_primary(), Duration::from_millis(7_300));
        h.settle().await;
        assert!(h.vip.is_up());
        let deadline = h.lease.borrow().fence_deadline.expect("deadline").0;

        // Nothing renews the lease (etcd unreachable) and the HA loop publishes nothing.
        tokio::time::sleep(Duration::from_millis(7_200)).await;
        assert!(h.vip.is_up(), "still before the deadline");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!h.vip.is_up(), "removed at the deadline");
        let removed = h.vip.times("remove");
        assert_eq!(removed.len(), 1);
        assert!(
            removed[0] >= deadline && removed[0] <= deadline + 5,
            "removed at {} ms, deadline {deadline} ms",
            removed[0]
        );
        let status = h.status.borrow().clone();
        assert!(!status.present && !status.desired);

        // The keeper gets through to etcd again and the snapshot still shows our key under
        // this very lease: it comes back.
        h.renew(LONG);
        h.settle().await;
        assert!(h.vip.is_up());
    }

    #[tokio::test(start_paused = true)]
    async fn renewals_keep_it() {
        let h = start(leader_primary(), Duration::from_secs(10));
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(5)).await;
            h.renew(Duration::from_secs(10));
        }
        assert!(h.vip.is_up());
        assert_eq!(h.vip.count("add"), 1);
        assert_eq!(h.vip.count("remove"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn gratuitous_arps_are_spaced() {
        let h = start(leader_primary(), LONG);
        h.settle().await;
        let added = h.vip.times("add")[0];
        tokio::time::sleep(Duration::from_secs(10)).await;
        let arps: Vec<u64> = h.vip.times("announce").iter().map(|t| t - added).collect();
        assert_eq!(arps, vec![0, 1000, 2000]);
    }

    #[tokio::test(start_paused = true)]
    async fn removed_on_stop() {
        let h = start(leader_primary(), LONG);
        h.settle().await;
        assert!(h.vip.is_up());
        h.stop.send_replace(true);
        h.task.await.expect("task");
        assert!(!h.vip.is_up());
        assert!(!h.status.borrow().present);
    }

    #[tokio::test(start_paused = true)]
    async fn removed_on_demotion_and_when_the_key_is_lost() {
        let h = start(leader_primary(), LONG);
        h.settle().await;
        // Demoted: PostgreSQL runs as a standby.
        h.snapshot.send_replace(snap(Some(LEASE), Some(true)));
        h.settle().await;
        assert!(!h.vip.is_up());
        h.snapshot.send_replace(leader_primary());
        h.settle().await;
        assert!(h.vip.is_up());
        // Someone else holds the key.
        h.snapshot.send_replace(snap(None, Some(false)));
        h.settle().await;
        assert!(!h.vip.is_up());
    }

    #[tokio::test(start_paused = true)]
    async fn kept_through_a_failed_sql_probe() {
        let h = start(leader_primary(), LONG);
        h.settle().await;
        h.snapshot.send_replace(snap(Some(LEASE), None));
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(h.vip.is_up());
        assert_eq!(h.vip.count("remove"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_lease_is_not_replaced_by_a_new_one_with_a_stale_snapshot() {
        let h = start(leader_primary(), LONG);
        h.settle().await;
        // The lease expired in etcd: the keeper drops it, then gets a new one.
        h.lease.send_replace(LeaseState::default());
        h.settle().await;
        assert!(!h.vip.is_up());
        h.lease.send_replace(LeaseState {
            id: Some(LEASE + 1),
            fence_deadline: Some(h.clock.now() + LONG),
        });
        h.settle().await;
        assert!(
            !h.vip.is_up(),
            "the snapshot still shows the key under the old lease"
        );
        // The HA loop takes the key again under the new lease.
        h.snapshot.send_replace(snap(Some(LEASE + 1), Some(false)));
        h.settle().await;
        assert!(h.vip.is_up());
    }

    #[tokio::test(start_paused = true)]
    async fn reconcile_repairs_drift() {
        let h = start(leader_primary(), LONG);
        h.settle().await;
        assert_eq!(h.vip.count("add"), 1);

        // Removed by hand: added back within one reconcile interval, and announced again.
        h.vip.present.store(false, Ordering::SeqCst);
        let removed_at = h.now();
        tokio::time::sleep(Duration::from_millis(5_100)).await;
        assert!(h.vip.is_up());
        let adds = h.vip.times("add");
        assert_eq!(adds.len(), 2);
        assert!(adds[1] - removed_at <= 5_000, "{adds:?}");
        assert_eq!(h.vip.count("announce"), 4);

        // Not the leader any more, then the address is added by hand: removed again.
        h.snapshot.send_replace(replica());
        h.settle().await;
        assert!(!h.vip.is_up());
        h.vip.present.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(5_100)).await;
        assert!(!h.vip.is_up());
        assert_eq!(h.vip.count("remove"), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stray_address_is_removed_at_start() {
        let h = start(replica(), LONG);
        h.vip.present.store(true, Ordering::SeqCst);
        h.settle().await;
        assert!(!h.vip.is_up());
        assert_eq!(h.vip.count("remove"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_reported_and_retried() {
        let h = start(replica(), LONG);
        h.vip.fail_add.store(true, Ordering::SeqCst);
        h.snapshot.send_replace(leader_primary());
        h.settle().await;
        let status = h.status.borrow().clone();
        assert!(!status.present && status.desired);
        assert_eq!(
            status
                .error
                .as_deref()
                .map(|e| e.split(',').next().unwrap_or(e)),
            Some(
                "failed to add the floating IP 10.0.0.100/24 on eth0: adding the floating IP \
                 needs CAP_NET_ADMIN"
            )
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        let tries = h.vip.count("add");
        assert!((4..=6).contains(&tries), "retried every 500 ms: {tries}");
        h.vip.fail_add.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(h.vip.is_up());
        let status = h.status.borrow().clone();
        assert!(status.present && status.error.is_none());
    }
}
