//! The agent: wires the DCS, PostgreSQL and the REST API around the decision core.
//!
//! Tasks (all owned, all joined on shutdown):
//! - the HA loop (`ha::Agent::cycle`), woken by its deadline, DCS changes, lease changes and
//!   the PostgreSQL liveness monitor;
//! - the lease keeper (`lease::LeaseKeeper`), independent of the HA loop;
//! - the fencer (`fence::run_fencer`), which stops PostgreSQL at the fencing deadline even when
//!   the HA loop is busy;
//! - the PostgreSQL liveness monitor (a crash is noticed at once through a pidfd, else within
//!   a quarter of a second);
//! - the watchdog task (`watchdog::run_watchdog`): kicks the armed watchdog at every lease
//!   renewal and disarms it when the agent stops leading or exits;
//! - the REST API server.
//!
//! A reload (SIGHUP, `POST /reload`) re-reads the configuration file inside the HA loop
//! (`ha::Agent::reload`, `reload::adopt`); it never ends the agent.
//!
//! Beside the process: the fence guard (`guard`, a process of its own started by the CLI),
//! which enforces the fencer's recorded deadline when this process is frozen or killed.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use baton_api::{ApiState, Snapshot};
use baton_config::{Config, DynamicConfig};
use baton_core::{Clock, LeaseState, MemberName};
use baton_dcs::{Dcs, EtcdDcs};
use baton_pg::{Credentials, LocalPostgres, PgSettings, Postgres};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tracing::{info, warn};

pub mod callbacks;
pub mod clock;
pub mod failsafe;
pub mod fence;
pub mod guard;
pub mod ha;
pub mod lease;
pub mod peers;
pub mod reload;
pub mod restart_file;
pub mod security;
pub mod startup_pages;
pub mod vip;
pub mod watchdog;

pub use clock::SystemClock;
pub use ha::{Agent, AgentIo, ConfigSource, CycleOutcome};

/// Where a running agent re-reads its configuration from, and the requests to do so.
pub struct Reloads {
    pub source: ConfigSource,
    /// One message per SIGHUP.
    pub requests: tokio::sync::mpsc::Receiver<()>,
}

/// How often the liveness monitor looks at the postmaster.
pub const PG_MONITOR_INTERVAL: Duration = Duration::from_millis(250);

/// Back-off after a failed action, so a persisting failure does not spin.
pub const FAILURE_BACKOFF: Duration = Duration::from_secs(1);

/// `PgSettings` from the validated configuration and the effective dynamic configuration.
pub fn pg_settings(config: &Config, dynamic: &DynamicConfig) -> PgSettings {
    let pg = &config.postgresql;
    let creds = |c: &baton_config::Credentials| Credentials {
        username: c.username.clone(),
        password: c.password.clone(),
        options: c.options.clone(),
    };
    PgSettings {
        name: config.name.clone(),
        scope: config.scope.clone(),
        data_dir: pg.data_dir.clone(),
        bin_dir: pg.bin_dir.clone(),
        listen_addresses: pg.listen_addresses.clone(),
        port: pg.port,
        local_host: String::new(),
        socket_dir: None,
        superuser: creds(&pg.superuser),
        replication: creds(&pg.replication),
        rewind: pg.rewind.as_ref().map(creds),
        pgpass: pg.pgpass.clone(),
        parameters: baton_config::merged_parameters(config, dynamic),
        pg_hba: baton_config::effective_pg_hba(config, dynamic),
        use_slots: dynamic.use_slots,
        initdb_options: config
            .bootstrap
            .as_ref()
            .map(|b| b.initdb.clone())
            .unwrap_or_default(),
        replica_methods: pg.create_replica_methods.clone(),
        basebackup_options: pg.basebackup.clone(),
        recovery_conf: pg.recovery_conf.clone(),
        bootstrap_recovery: None,
        pg_ctl_timeout: pg.pg_ctl_timeout,
        sql_timeout: Duration::from_secs(u64::from(dynamic.retry_timeout).clamp(1, 5)),
        run_as: None,
    }
}

/// Run the agent until `shutdown` resolves; then stop PostgreSQL, release the leader key and
/// revoke the lease. With `reloads`, each request (and `POST /reload`) re-reads the
/// configuration through its source.
pub async fn run(
    config: Config,
    reloads: Option<Reloads>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_with(config, reloads, shutdown, LocalPostgres::new).await
}

/// [`run`] with another `Postgres` implementation, made from the settings `run` would give
/// `LocalPostgres` (called twice: for the fencer, then for the HA loop).
pub async fn run_with<P: Postgres>(
    config: Config,
    reloads: Option<Reloads>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    make_pg: impl Fn(PgSettings) -> P + Send,
) -> anyhow::Result<()> {
    let (source, mut reload_requests) = match reloads {
        Some(r) => (Some(r.source), r.requests),
        // A closed channel: its branch below never fires.
        None => (None, tokio::sync::mpsc::channel(1).1),
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    // The floating IP is checked before anything starts: a wrong vip.interface or a missing
    // capability is a startup error, not a surprise at the first failover.
    let vip = match &config.vip {
        Some(v) => Some((
            Arc::new(vip::open(v).await?),
            vip::VipSettings::from_config(v),
        )),
        None => None,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        stop_tx.send_replace(true);
    });
    let stopping = |rx: &watch::Receiver<bool>| {
        let mut rx = rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut tasks = JoinSet::new();

    // The fencer starts before anything that waits for etcd: a PostgreSQL left running as a
    // primary by an earlier agent is fenced by that agent's deadline even when etcd cannot be
    // reached at all. It only stops and observes PostgreSQL, for which the bootstrap
    // settings are as good as the cluster's.
    let fence_pg = Arc::new(make_pg(pg_settings(&config, &bootstrap_dynamic(&config))));
    let record = Arc::new(fence::FenceFile::beside(&config.postgresql.data_dir));
    let (lease_tx, lease_rx) = watch::channel(LeaseState::default());
    let (leading_tx, leading_rx) = watch::channel(fence::FenceSignal::default());
    tasks.spawn(fence::run_fencer(
        fence_pg,
        clock.clone(),
        record,
        fence::FencerInputs {
            lease: lease_rx.clone(),
            signal: leading_rx,
            shutdown: stop_rx.clone(),
        },
    ));

    // The DCS: retry until it answers (an agent started before etcd waits for it).
    baton_api::tls::install_crypto_provider();
    let settings = security::etcd_settings(&config, Duration::from_secs(3))?;
    let dcs = loop {
        match EtcdDcs::connect(settings.clone()).await {
            Ok(dcs) => break Arc::new(dcs),
            Err(e) => {
                warn!(hosts = ?settings.endpoints, "failed to connect to etcd: {e:#}; retrying in 2 s");
                tokio::select! {
                    _ = stopping(&stop_rx) => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        }
    };
    info!(hosts = ?settings.endpoints, prefix = settings.scope.prefix(), "connected to etcd");
    // HA-loop reads come from the watch while it proves nothing changed (as Patroni's etcd3
    // does); every leadership change stays a compare-and-swap (baton-dcs `cache_usable`).
    dcs.serve_reads_from_watch(true);
    let http = security::http_client(&config, None)?;
    ensure_unique_name(dcs.as_ref(), &config.name, &http).await?;

    // The dynamic configuration: the cluster's, else our bootstrap.dcs, else the defaults.
    let dynamic = initial_dynamic(dcs.as_ref(), &config).await;
    let ttl = Duration::from_secs(u64::from(dynamic.ttl));
    info!(
        ttl = dynamic.ttl,
        loop_wait = dynamic.loop_wait,
        retry_timeout = dynamic.retry_timeout,
        "timing"
    );

    let pg = Arc::new(make_pg(pg_settings(&config, &dynamic)));

    let keeper = lease::LeaseKeeper::publishing_to(dcs.clone(), clock.clone(), ttl, lease_tx)
        .pace_by(leading_tx.subscribe());
    let keeper_stop = stop_rx.clone();
    let keeper_task = tokio::spawn(keeper.run(keeper_stop));

    let name = MemberName::new(config.name.clone()).context("member name is empty")?;
    let (snap_tx, snap_rx) = watch::channel(Arc::new(Snapshot::initial(
        &config.scope,
        name,
        format!(
            "{}://{}/patroni",
            config.restapi.scheme(),
            config.restapi.connect_address
        ),
        format!("postgres://{}/postgres", config.postgresql.connect_address),
    )));
    let listener = tokio::net::TcpListener::bind(config.restapi.listen_addr)
        .await
        .with_context(|| format!("listen for the REST API on {}", config.restapi.listen_addr))?;
    let serve_options = security::serve_options(&config).await?;
    info!(listen = %config.restapi.listen_addr, tls = serve_options.tls.is_some(), "REST API listening");
    // A reload (SIGHUP, POST /reload) also reads the REST API's certificate and key again.
    let server_tls = serve_options.tls.clone();
    let (command_tx, mut commands) = tokio::sync::mpsc::channel(16);
    let vip_status = vip.map(|(netlink, settings)| {
        let (tx, rx) = watch::channel(baton_api::VipStatus::default());
        tasks.spawn(vip::run_vip(
            netlink,
            clock.clone(),
            snap_rx.clone(),
            lease_rx.clone(),
            stop_rx.clone(),
            settings,
            tx,
        ));
        rx
    });
    let failsafe_inbox = baton_api::FailsafeInbox::default();
    let api = ApiState {
        snapshot: snap_rx,
        clock: clock.clone(),
        auth: config.restapi.authentication.clone(),
        commands: Some(command_tx),
        vip: vip_status,
        audit: Default::default(),
        failsafe: failsafe_inbox.clone(),
        live_sql: Some({
            let pg = pg.clone();
            Arc::new(move || {
                let pg = pg.clone();
                Box::pin(async move { pg.live_sql().await })
            })
        }),
    };
    let api_stop = stopping(&stop_rx);
    tasks.spawn(async move {
        if let Err(e) = baton_api::serve_with(listener, api, serve_options, api_stop).await {
            warn!("REST API server stopped: {e:#}");
        }
    });

    let pg_changed = Arc::new(Notify::new());
    tasks.spawn(pg_monitor(pg.clone(), pg_changed.clone(), stop_rx.clone()));

    // Give the keeper a chance to grant the first lease before the first decision, so a
    // restarted agent does not fence a healthy primary for lack of a lease it is about to get.
    let mut lease_wait = lease_rx.clone();
    let _ = tokio::time::timeout(
        Duration::from_secs(u64::from(dynamic.retry_timeout)),
        lease_wait.wait_for(|l| l.id.is_some()),
    )
    .await;

    let io = AgentIo {
        dcs: dcs.clone(),
        pg: pg.clone(),
        peers: peers::HttpPeers::with_client(http).with_auth(config.restapi.authentication.clone()),
        clock: clock.clone(),
    };
    // The watchdog: armed by the HA loop before it takes the leader role, kicked at every
    // lease renewal and disarmed by its own task (which ends, disarming, when the agent is
    // dropped at the end of `run`).
    let watchdog = (config.watchdog.mode != baton_core::WatchdogMode::Off)
        .then(|| Arc::new(watchdog::Watchdog::from_config(&config.watchdog)));
    let watchdog_signal = leading_tx.subscribe();
    let mut agent = Agent::new(io, config, dynamic, lease_rx.clone(), leading_tx, snap_tx)?;
    agent.set_failsafe_inbox(failsafe_inbox);
    if let Some(wd) = &watchdog {
        agent.set_watchdog(wd.clone());
        tasks.spawn(watchdog::run_watchdog(
            wd.clone(),
            clock.clone(),
            lease_rx.clone(),
            watchdog_signal,
            pg.clone(),
        ));
    }
    if let Some(source) = source {
        agent.set_config_source(source);
    }
    let restart_file = restart_file::RestartFile::beside(&agent.config().postgresql.data_dir);
    agent.set_restart_file(restart_file);
    let mut dcs_changes = dcs.changes();
    let mut lease_changes = lease_rx.clone();
    let mut ready = false;
    let mut settled = startup_pages::Settled::default();
    loop {
        let outcome = agent.cycle().await;
        if !ready {
            // systemd (Type=notify): started once PostgreSQL's state is known and the REST
            // API answers from it. Without NOTIFY_SOCKET this does nothing.
            ready = true;
            notify_systemd(&[sd_notify::NotifyState::Ready]);
        }
        let quiet = outcome.same_reason && !outcome.failed && !agent.long_action_running();
        if settled.after_cycle(quiet) {
            release_transient_pages();
        }
        let mut wait = clock::until(clock.as_ref(), outcome.wake_at);
        if outcome.failed {
            wait = wait.max(FAILURE_BACKOFF);
        }
        let last_lease = lease_changes.borrow_and_update().id;
        let busy = agent.long_action_running();
        tokio::select! {
            biased;
            _ = stopping(&stop_rx) => break,
            Some(command) = commands.recv() => {
                let reload = matches!(command, baton_api::Command::Reload { .. });
                agent.handle(command).await;
                if reload {
                    reload_certificate(server_tls.as_deref());
                }
            }
            Some(()) = reload_requests.recv() => {
                info!("received SIGHUP: re-reading the configuration");
                notify_systemd(&[sd_notify::NotifyState::Reloading]);
                let _ = agent.reload().await;
                reload_certificate(server_tls.as_deref());
                notify_systemd(&[sd_notify::NotifyState::Ready]);
            }
            // A clone, rewind, bootstrap or standby start runs beside the cycles.
            _ = agent.long_action_done(), if busy => {}
            _ = dcs_changes.changed() => {}
            _ = pg_changed.notified() => {}
            // A new or lost lease changes what we may do; a mere renewal does not.
            // (The borrow it returns is dropped at once: the loop's future stays `Send`.)
            _ = async { drop(lease_changes.wait_for(|l| l.id != last_lease).await) } => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }

    info!("shutting down");
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    agent.shutdown().await;
    drop(agent);
    let lease = keeper_task.await.ok().flatten();
    if let Some(id) = lease {
        match tokio::time::timeout(Duration::from_secs(3), dcs.revoke_lease(id)).await {
            Ok(Ok(())) => info!(lease = id, "revoked lease"),
            Ok(Err(e)) => warn!("failed to revoke lease {id}: {e:#}"),
            Err(_) => warn!("failed to revoke lease {id}: timed out"),
        }
    }
    while tasks.join_next().await.is_some() {}
    info!("stopped");
    Ok(())
}

/// Each time the agent has settled (start-up, a bootstrap, a clone or a failover behind it):
/// drop the pages of code and read-only data ([`startup_pages`]); the loops map what they run
/// again as they run it.
fn release_transient_pages() {
    match startup_pages::release_startup_pages() {
        Ok(r) if r.failed == 0 => info!(
            mappings = r.mappings,
            kb = r.kb,
            "settled: released the pages of code run only until now (resident memory)"
        ),
        Ok(r) => warn!(
            mappings = r.mappings,
            kb = r.kb,
            refused = r.failed,
            "settled: released the pages of code run only until now; the kernel refused some \
             mappings"
        ),
        Err(e) => warn!("cannot read /proc/self/smaps to release transient code pages: {e}"),
    }
}

/// Refuse to start while another agent with our name runs in the cluster (Patroni's
/// `ensure_unique_name`): a member key with our name whose REST API answers. Two agents
/// publishing into one member key would make every decision about that member wrong. A key
/// left behind by a dead agent (its API does not answer) is ours to take over; so is a
/// cluster we cannot read (nothing is known to conflict).
pub async fn ensure_unique_name<D: Dcs>(
    dcs: &D,
    name: &str,
    client: &reqwest::Client,
) -> anyhow::Result<()> {
    let Ok(Ok(view)) = tokio::time::timeout(Duration::from_secs(5), dcs.read_cluster()).await
    else {
        return Ok(());
    };
    let Some(api_url) = view
        .members
        .iter()
        .find(|m| m.name.as_str() == name)
        .and_then(|m| m.api_url.as_deref())
    else {
        return Ok(());
    };
    let url = liveness_url(api_url);
    if let Ok(resp) = client
        .get(&url)
        .timeout(Duration::from_secs(3))
        .send()
        .await
    {
        anyhow::bail!(
            "Can't start; there is already a node named '{name}' running \
             (its REST API at {url} answered {})",
            resp.status().as_u16()
        );
    }
    Ok(())
}

/// A reload: read the REST API's certificate and key again (a renewed certificate is used for
/// new connections; the listener stays open). A file that does not load keeps the running
/// certificate and is logged.
fn reload_certificate(tls: Option<&baton_api::ServerTls>) {
    let Some(tls) = tls else { return };
    match tls.reload() {
        Ok(true) => info!("REST API: new certificate loaded (restapi.certfile)"),
        Ok(false) => {}
        Err(e) => warn!("REST API: keeping the running certificate: {e}"),
    }
}

/// `http://h:p/patroni` → `http://h:p/liveness` (any other path: `/liveness` appended).
fn liveness_url(api_url: &str) -> String {
    let base = api_url.trim_end_matches('/');
    let base = base.strip_suffix("/patroni").unwrap_or(base);
    format!("{base}/liveness")
}

/// The dynamic configuration to start with: the cluster's `config` key, else our
/// `bootstrap.dcs`, else the defaults.
pub async fn initial_dynamic<D: Dcs>(dcs: &D, config: &Config) -> DynamicConfig {
    let fallback = || bootstrap_dynamic(config);
    match tokio::time::timeout(Duration::from_secs(5), dcs.read_cluster()).await {
        Ok(Ok(view)) => match view.config {
            Some(c) => match DynamicConfig::from_json(&c.value) {
                Ok((dynamic, _)) => dynamic,
                Err(e) => {
                    warn!("ignoring invalid dynamic configuration in DCS key config: {e}");
                    fallback()
                }
            },
            None => fallback(),
        },
        _ => fallback(),
    }
}

/// Tell systemd (`Type=notify`) about the service's state; a failure is only logged.
fn notify_systemd(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        warn!("failed to notify systemd: {e}");
    }
}

/// Our `bootstrap.dcs`, else the defaults.
fn bootstrap_dynamic(config: &Config) -> DynamicConfig {
    config
        .bootstrap
        .as_ref()
        .map_or_else(DynamicConfig::defaults, |b| b.dcs.clone())
}

/// Wake the HA loop when the postmaster appears or disappears. While it runs, the monitor
/// waits on it (`Postgres::postmaster_exit`: a pidfd, no wake-up until it exits) where the
/// implementation can, and polls every [`PG_MONITOR_INTERVAL`] otherwise; while it is down,
/// it polls for it to appear.
pub async fn pg_monitor<P: Postgres>(
    pg: Arc<P>,
    changed: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let mut alive = pg.is_alive().await;
    loop {
        let exited = alive && {
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => return,
                exited = pg.postmaster_exit() => exited,
            }
        };
        if !exited {
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(PG_MONITOR_INTERVAL) => {}
            }
        }
        let now = pg.is_alive().await;
        // A postmaster that exited is news even when another one already runs in its place.
        if now != alive || exited {
            if !now {
                warn!("postmaster is gone");
            }
            alive = now;
            changed.notify_one();
        }
    }
}

#[cfg(test)]
mod monitor_tests;
#[cfg(test)]
mod tests;
