//! `SimulatedPostgres`: one member's PostgreSQL as the [`Model`], for the agent's test-only
//! simulated mode. Node 0 of the model is this member; node 1 mirrors the server it last
//! asked for as an upstream (read over [`crate::wire`] before every clone, rewind and start,
//! and every [`REPLICATION_INTERVAL`] while it streams). Nothing is written to disk: the
//! "data directory" lives and dies with the process, like a host that loses its disk.
//!
//! Known differences from PostgreSQL (documented in docs/testing.md): a primary lists no
//! standbys in `pg_stat_replication` (it does not know them; synchronous replication is not
//! supported), no client writes happen, and the timed parts of a start, stop or promotion take
//! fixed short times.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use baton_core::{HistoryLine, Mono, PgState, StartRole, StopMode, Upstream};
use baton_ports::{PgError, Postgres, Reconfigured};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::model::{Model, Node, Role, StopKind};
use crate::wire;

/// How often a standby reads its upstream (over one kept connection: at 1,000 members a new
/// connection per read, five times a second, filled the host's connection-tracking table).
const REPLICATION_INTERVAL: Duration = Duration::from_secs(1);
/// A kept connection nobody asks anything on is closed after this long.
const IDLE_CONNECTION: Duration = Duration::from_secs(60);
/// Connecting to and reading an upstream.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const START_READY: Duration = Duration::from_millis(200);
const PROMOTE_DONE: Duration = Duration::from_millis(100);
const STOP_FAST: Duration = Duration::from_millis(100);
const STOP_IMMEDIATE: Duration = Duration::from_millis(10);
/// How often a start or promotion is checked for having finished.
const SETTLE_POLL: Duration = Duration::from_millis(10);

/// What the simulated server needs of the configuration.
#[derive(Clone, Debug)]
pub struct SimulatedSettings {
    /// The member name (`name`).
    pub name: String,
    /// Where the server answers other members (`postgresql.listen`).
    pub listen: SocketAddr,
    /// `pg_ctl_timeout`: a start or promotion that takes longer fails.
    pub pg_ctl_timeout: Duration,
}

/// One member's simulated PostgreSQL. Cheap to clone; clones share the server.
#[derive(Clone)]
pub struct SimulatedPostgres {
    inner: Arc<Inner>,
}

struct Inner {
    settings: SimulatedSettings,
    model: Mutex<Model>,
    origin: Instant,
    /// The upstream node 1 mirrors (`host:port`).
    upstream: Mutex<Option<(String, u16)>>,
    /// The connection to that upstream, kept between reads.
    conn: tokio::sync::Mutex<Option<KeptConnection>>,
    conf: Mutex<(BTreeMap<String, String>, Vec<String>)>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in self
            .tasks
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }
}

/// A connection to an upstream (`host`, `port`), kept between reads.
type KeptConnection = ((String, u16), BufReader<TcpStream>);

fn err(e: impl Into<String>) -> PgError {
    PgError::Other(e.into())
}

/// A random number (std's per-process random hash keys): record ids and system identifiers
/// of different processes must not collide.
fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(u64::from(std::process::id()));
    h.finish()
}

impl SimulatedPostgres {
    /// Binds `settings.listen` and starts serving the state to other members and the
    /// replication task. Needs a tokio runtime.
    pub async fn start(settings: SimulatedSettings) -> std::io::Result<SimulatedPostgres> {
        let listener = tokio::net::TcpListener::bind(settings.listen).await?;
        let mut model = Model::new(vec![
            (settings.name.clone(), "self".to_owned()),
            ("upstream".to_owned(), String::new()),
        ]);
        // Ids in the upper half of the u64 range, apart by 2^32 between processes.
        model.number_from((random_u64() | 1 << 63) & !0xFFFF_FFFF);
        let pg = SimulatedPostgres {
            inner: Arc::new(Inner {
                settings,
                model: Mutex::new(model),
                origin: Instant::now(),
                upstream: Mutex::new(None),
                conn: tokio::sync::Mutex::new(None),
                conf: Mutex::new(Default::default()),
                tasks: Mutex::new(Vec::new()),
            }),
        };
        let weak = Arc::downgrade(&pg.inner);
        let serve = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let weak = weak.clone();
                // One line of state per request line, until the client goes or stays idle.
                tokio::spawn(async move {
                    let mut conn = BufReader::new(conn);
                    let mut request = String::new();
                    loop {
                        request.clear();
                        match tokio::time::timeout(IDLE_CONNECTION, conn.read_line(&mut request))
                            .await
                        {
                            Ok(Ok(n)) if n > 0 => {}
                            _ => return,
                        }
                        let Some(inner) = weak.upgrade() else { return };
                        let line = wire::encode(&lock(&inner.model).nodes[0]);
                        drop(inner);
                        let write = conn.get_mut().write_all(line.as_bytes());
                        if !matches!(
                            tokio::time::timeout(CONNECT_TIMEOUT, write).await,
                            Ok(Ok(()))
                        ) {
                            return;
                        }
                    }
                });
            }
        });
        let weak = Arc::downgrade(&pg.inner);
        let replicate = tokio::spawn(async move {
            loop {
                tokio::time::sleep(REPLICATION_INTERVAL).await;
                let Some(inner) = weak.upgrade() else { return };
                let pg = SimulatedPostgres { inner };
                pg.replicate().await;
            }
        });
        lock(&pg.inner.tasks).extend([serve, replicate]);
        Ok(pg)
    }

    fn now(&self) -> Mono {
        let ms = self.inner.origin.elapsed().as_millis();
        Mono(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    fn model(&self) -> MutexGuard<'_, Model> {
        lock(&self.inner.model)
    }

    /// The model's node 0 (this member), for tests and diagnostics.
    pub fn node(&self) -> Node {
        self.model().nodes[0].clone()
    }

    /// Reads `upstream`'s server into node 1. `false` when it did not answer (node 1 then has
    /// no running postmaster: the model refuses it as a source).
    async fn refresh(&self, upstream: &(String, u16)) -> bool {
        let fetched = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let mut kept = self.inner.conn.lock().await;
            // The kept connection first; a fresh one when there is none or it failed.
            for fresh in [false, true] {
                if fresh || kept.as_ref().is_none_or(|(t, _)| t != upstream) {
                    let conn = TcpStream::connect((upstream.0.as_str(), upstream.1))
                        .await
                        .map_err(|e| e.to_string())?;
                    *kept = Some((upstream.clone(), BufReader::new(conn)));
                }
                let Some((_, conn)) = kept.as_mut() else {
                    continue;
                };
                let mut line = String::new();
                let asked = async {
                    conn.get_mut().write_all(b"state\n").await?;
                    conn.read_line(&mut line).await
                };
                match asked.await {
                    Ok(n) if n > 0 => return wire::decode(&line),
                    Ok(_) => *kept = None,
                    Err(e) if fresh => return Err(e.to_string()),
                    Err(_) => *kept = None,
                }
            }
            Err("the upstream closed the connection".to_owned())
        })
        .await;
        let now = self.now();
        let mut model = self.model();
        match fetched {
            Ok(Ok(remote)) => {
                remote.install(&mut model.nodes[1], now);
                true
            }
            Ok(Err(e)) => {
                tracing::debug!(?upstream, "simulated PostgreSQL: upstream unreadable: {e}");
                model.nodes[1].proc = None;
                false
            }
            Err(_) => {
                model.nodes[1].proc = None;
                false
            }
        }
    }

    /// Points node 1 at `upstream` (a new upstream starts as an unknown, stopped node) and
    /// reads it.
    async fn mirror(&self, upstream: &Upstream) -> bool {
        let target = (upstream.host.clone(), upstream.port);
        {
            let mut current = lock(&self.inner.upstream);
            if current.as_ref() != Some(&target) {
                *current = Some(target.clone());
                let mut model = self.model();
                let mirror = &mut model.nodes[1];
                mirror.name = upstream.name.to_string();
                mirror.host = format!("{}:{}", upstream.host, upstream.port);
                mirror.data = None;
                mirror.proc = None;
            }
        }
        self.refresh(&target).await
    }

    /// One replication round: a running standby reads its upstream and copies what the model
    /// lets it.
    async fn replicate(&self) {
        let streams = {
            let model = self.model();
            model.nodes[0]
                .proc
                .as_ref()
                .is_some_and(|p| p.role == Role::Standby && p.upstream == Some(1))
        };
        let upstream = lock(&self.inner.upstream).clone();
        let reachable = match (&upstream, streams) {
            (Some(u), true) => self.refresh(u).await,
            _ => false,
        };
        let now = self.now();
        let mut model = self.model();
        model.replicate(1 << 20, &|_, _| reachable, now);
    }

    /// Runs `f` on the model after `delay`, as the postmaster does on its own.
    fn postmaster_after(&self, delay: Duration, f: impl FnOnce(&mut Model, Mono) + Send + 'static) {
        let pg = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let now = pg.now();
            f(&mut pg.model(), now);
        });
    }

    async fn wait_settled(
        &self,
        generation: u64,
        primary: bool,
        what: &str,
    ) -> Result<(), PgError> {
        let deadline = Instant::now() + self.inner.settings.pg_ctl_timeout;
        loop {
            if let Some(result) = self.model().settled(0, generation, primary) {
                return result.map_err(|e| err(format!("{what}: {e}")));
            }
            if Instant::now() >= deadline {
                return Err(PgError::Timeout {
                    what: what.to_owned(),
                    after: self.inner.settings.pg_ctl_timeout,
                });
            }
            tokio::time::sleep(SETTLE_POLL).await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Postgres for SimulatedPostgres {
    async fn observe(&self) -> PgState {
        self.model().observe(0)
    }

    async fn is_alive(&self) -> bool {
        self.model().is_alive(0)
    }

    async fn initdb(&self) -> Result<(), PgError> {
        let sysid = format!("7{:018}", random_u64() % 1_000_000_000_000_000_000);
        let now = self.now();
        self.model().initdb(0, sysid, now).map_err(err)
    }

    async fn start(&self, role: &StartRole) -> Result<(), PgError> {
        let (role, upstream) = match role {
            StartRole::Primary => (Role::Primary, None),
            StartRole::Standby { upstream: None } => (Role::Standby, None),
            StartRole::Standby { upstream: Some(u) } => {
                self.mirror(u).await;
                (Role::Standby, Some(1))
            }
        };
        let now = self.now();
        let generation = self.model().start(0, role, upstream, now).map_err(err)?;
        self.postmaster_after(START_READY, move |m, now| m.start_ready(0, generation, now));
        self.wait_settled(generation, false, "start").await
    }

    async fn stop(&self, mode: StopMode) -> Result<(), PgError> {
        let (kind, delay) = match mode {
            StopMode::Fast => (StopKind::Fast, STOP_FAST),
            StopMode::Immediate => (StopKind::Immediate, STOP_IMMEDIATE),
        };
        let now = self.now();
        let Some(generation) = self.model().stop(0, kind, now) else {
            return Ok(());
        };
        self.postmaster_after(delay, move |m, now| m.stop_done(0, generation, kind, now));
        let deadline = Instant::now() + self.inner.settings.pg_ctl_timeout;
        while self.model().nodes[0]
            .proc
            .as_ref()
            .is_some_and(|p| p.generation == generation)
        {
            if Instant::now() >= deadline {
                return Err(PgError::Timeout {
                    what: "stop".to_owned(),
                    after: self.inner.settings.pg_ctl_timeout,
                });
            }
            tokio::time::sleep(SETTLE_POLL).await;
        }
        Ok(())
    }

    async fn promote(&self) -> Result<(), PgError> {
        let generation = self.model().promote(0, 1).map_err(err)?;
        self.postmaster_after(PROMOTE_DONE, move |m, now| {
            m.promote_done(0, generation, now);
        });
        self.wait_settled(generation, true, "promote").await
    }

    async fn follow(&self, upstream: &Upstream) -> Result<bool, PgError> {
        self.mirror(upstream).await;
        Ok(self.model().follow(0, 1))
    }

    async fn clone_replica(&self, upstream: &Upstream) -> Result<(), PgError> {
        self.model().require_stopped(0, "clone").map_err(err)?;
        let reachable = self.mirror(upstream).await;
        self.model()
            .clone_from(0, 1, reachable)
            .map_err(|e| err(format!("pg_basebackup: {e}")))
    }

    async fn rewind(&self, upstream: &Upstream) -> Result<(), PgError> {
        self.model().require_stopped(0, "rewind").map_err(err)?;
        let reachable = self.mirror(upstream).await;
        self.model()
            .rewind(0, 1, reachable)
            .map_err(|e| err(format!("pg_rewind: {e}")))
    }

    async fn set_synchronous_standby_names(&self, value: Option<&str>) -> Result<(), PgError> {
        self.model().set_ssn(0, value);
        Ok(())
    }

    async fn reconfigure(
        &self,
        parameters: &BTreeMap<String, String>,
        pg_hba: &[String],
    ) -> Result<Reconfigured, PgError> {
        let running = self.model().is_alive(0);
        let mut conf = lock(&self.inner.conf);
        let changed = conf.0 != *parameters || conf.1 != pg_hba;
        *conf = (parameters.clone(), pg_hba.to_vec());
        let mut outcome = Reconfigured::default();
        if running {
            outcome.rewritten = changed;
            outcome.reloaded = changed;
        } else {
            outcome.deferred = Some("PostgreSQL is not running; it starts with them");
        }
        Ok(outcome)
    }

    async fn wipe_data_dir(&self) -> Result<(), PgError> {
        self.model().wipe(0).map_err(err)
    }

    async fn create_roles(&self) -> Result<(), PgError> {
        self.model().require_ready(0, "create roles").map_err(err)
    }

    async fn ensure_slots(&self, slots: &[String]) -> Result<(), PgError> {
        self.model().set_slots(0, slots).map_err(err)
    }

    async fn timeline_history(&self) -> Result<Vec<HistoryLine>, PgError> {
        self.model().timeline_history(0).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_core::MemberName;

    async fn server(name: &str) -> (SimulatedPostgres, Upstream) {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let listen = probe.local_addr().unwrap();
        drop(probe);
        let pg = SimulatedPostgres::start(SimulatedSettings {
            name: name.to_owned(),
            listen,
            pg_ctl_timeout: Duration::from_secs(30),
        })
        .await
        .unwrap();
        let upstream = Upstream {
            name: MemberName::new(name).unwrap(),
            host: "127.0.0.1".to_owned(),
            port: listen.port(),
            remote: None,
        };
        (pg, upstream)
    }

    /// Polls `f` until it holds, for up to 30 s.
    async fn until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !f() {
            assert!(Instant::now() < deadline, "never happened: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_standby_in_another_server_clones_streams_and_takes_over() {
        let (a, a_up) = server("a").await;
        let (b, _) = server("b").await;
        a.initdb().await.unwrap();
        a.start(&StartRole::Primary).await.unwrap();
        assert!(a.observe().await.sql.is_some_and(|s| !s.in_recovery));

        b.clone_replica(&a_up).await.unwrap();
        let a_sysid = a.node().data.unwrap().sysid;
        assert_eq!(b.node().data.unwrap().sysid, a_sysid);
        b.start(&StartRole::Standby {
            upstream: Some(a_up.clone()),
        })
        .await
        .unwrap();
        until("b streams from a", || {
            b.node()
                .proc
                .is_some_and(|p| p.stream == crate::model::Stream::Streaming)
        })
        .await;

        // a dies; b stops streaming, is promoted onto a new timeline.
        a.stop(StopMode::Immediate).await.unwrap();
        drop(a);
        until("b notices its upstream is gone", || {
            b.node()
                .proc
                .is_some_and(|p| p.stream != crate::model::Stream::Streaming)
        })
        .await;
        b.promote().await.unwrap();
        let sql = b.observe().await.sql.unwrap();
        assert!(!sql.in_recovery);
        assert_eq!(sql.timeline.0, 2);
        assert_eq!(b.timeline_history().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn an_unreachable_source_is_an_error_naming_it() {
        let (a, _) = server("a").await;
        let gone = Upstream {
            name: MemberName::new("z").unwrap(),
            host: "127.0.0.1".to_owned(),
            port: 1,
            remote: None,
        };
        let e = a.clone_replica(&gone).await.unwrap_err().to_string();
        assert!(e.contains("pg_basebackup") && e.contains('z'), "{e}");
        assert!(a.node().data.is_none(), "nothing changed");
    }
}
