//! The fault suite's workloads (safety-and-testing.md §7.4).
//!
//! - **W1, the set workload**: workers in the client namespace insert unique ids through
//!   HAProxy's primary port, one autocommit `INSERT ... RETURNING` each, which also returns
//!   the writer (timeline and node, read by the server inside the same transaction). Each
//!   attempt is recorded with its invoke and completion time on the run's one monotonic clock
//!   and classified `ok` / `info` / `fail` (see [`Outcome`]).
//! - **W2, the probe writers**: one per node, over the node's Unix socket (so no partition
//!   blinds it; a Unix socket belongs to the file system, not to a network namespace), asking
//!   "does this PostgreSQL accept and locally commit a write right now?" with
//!   `synchronous_commit = local` and a 500 ms limit.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio_postgres::{AsyncMessage, Client, NoTls, SimpleQueryMessage, error::DbError};

use super::Clock;
use super::checker::{Epoch, Op, Outcome};
use crate::pg::PgTarget;

/// The writer's timeline, from the current WAL file name (errors on a standby, which is fine:
/// a standby cannot write).
pub const TIMELINE_SQL: &str =
    "('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int";
/// The writer's node name: the directory above its data directory (`.../node2/data`).
pub const NODE_SQL: &str = "split_part(current_setting('data_directory'), '/', -2)";

/// The tables both workloads write (created once on the first primary; they replicate).
pub const SCHEMA_SQL: &str = "CREATE TABLE IF NOT EXISTS chaos_set \
     (id bigint PRIMARY KEY, tl int NOT NULL, node text NOT NULL); \
     CREATE TABLE IF NOT EXISTS chaos_probe \
     (id bigint PRIMARY KEY, tl int NOT NULL, node text NOT NULL)";

/// W1 settings.
#[derive(Clone, Debug)]
pub struct SetWorkloadConfig {
    pub workers: usize,
    /// Each worker starts at most one write per `pace`.
    pub pace: Duration,
    /// The client gives up on a write after this (the outcome is then indeterminate).
    pub timeout: Duration,
    /// After this the client sends a cancel request (as a driver's query timeout does): a
    /// commit stuck waiting for a synchronous standby then returns with the "canceling wait
    /// for synchronous replication" warning, committed locally only (which must be `info`).
    /// (`statement_timeout` would not do: PostgreSQL disables it before the commit.)
    pub cancel_after: Duration,
    pub connect_timeout: Duration,
}

impl Default for SetWorkloadConfig {
    fn default() -> Self {
        SetWorkloadConfig {
            workers: 4,
            pace: Duration::from_millis(40),
            timeout: Duration::from_secs(5),
            cancel_after: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
        }
    }
}

/// A recorded history: ops appended as they complete, ids handed out in increasing order.
#[derive(Clone, Debug, Default)]
pub struct History {
    ops: Arc<Mutex<Vec<Op>>>,
    next_id: Arc<AtomicI64>,
}

impl History {
    fn new() -> History {
        History {
            ops: Arc::default(),
            next_id: Arc::new(AtomicI64::new(1)),
        }
    }

    fn next_id(&self) -> i64 {
        self.next_id.fetch_add(1, Ordering::SeqCst)
    }

    fn record(&self, op: Op) {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).push(op);
    }

    /// Every op completed so far.
    pub fn snapshot(&self) -> Vec<Op> {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether some op invoked at or after `since` was acknowledged (`ok`), without copying
    /// the history (the steady-state waits poll this every 200 ms, and the history grows
    /// with every iteration).
    pub fn acked_since(&self, since: u64) -> bool {
        self.ops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .rev()
            .any(|o| o.outcome == Outcome::Ok && o.invoke >= since)
    }

    /// One past the largest id handed out so far.
    pub fn attempted_below(&self) -> i64 {
        self.next_id.load(Ordering::SeqCst)
    }
}

/// W1, running on a thread inside the client namespace.
pub struct SetWorkload {
    history: History,
    stop: Arc<AtomicBool>,
    /// `spawn_in`'s result (entering the namespace) around the workers' own.
    thread: Option<std::thread::JoinHandle<anyhow::Result<anyhow::Result<()>>>>,
}

impl SetWorkload {
    /// Start `config.workers` workers inside network namespace `netns`, writing to `target`
    /// (HAProxy's primary port as the client namespace sees it).
    pub fn start(
        netns: &str,
        target: PgTarget,
        config: SetWorkloadConfig,
        clock: Clock,
    ) -> SetWorkload {
        let history = History::new();
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s) = (history.clone(), stop.clone());
        let thread = spawn_workers(netns, "W1", config.workers, move |w| {
            let (target, config, h, s) = (target.clone(), config.clone(), h.clone(), s.clone());
            set_worker(w, target, config, clock, h, s)
        });
        SetWorkload {
            history,
            stop,
            thread: Some(thread),
        }
    }

    pub fn history(&self) -> &History {
        &self.history
    }

    /// Stop the workers (each finishes its current write) and return the whole history.
    pub fn stop(mut self) -> anyhow::Result<Vec<Op>> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join()
                .map_err(|_| anyhow::anyhow!("the W1 thread panicked"))???;
        }
        Ok(self.history.snapshot())
    }
}

/// A thread inside network namespace `netns` running `workers` futures (`worker(index)`) on a
/// runtime of its own until they all return; `what` names it in errors.
pub(super) fn spawn_workers<F, Fut>(
    netns: &str,
    what: &'static str,
    workers: usize,
    worker: F,
) -> std::thread::JoinHandle<anyhow::Result<anyhow::Result<()>>>
where
    F: Fn(usize) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    crate::netns::spawn_in(netns, move || -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .with_context(|| format!("build the {what} runtime"))?;
        rt.block_on(futures::future::join_all((0..workers).map(worker)));
        Ok(())
    })
}

impl Drop for SetWorkload {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A connection whose notices (WARNINGs included) are collected: tokio-postgres delivers them
/// only through the connection's message stream, so the driver task polls it itself.
struct NoticeConn {
    client: Client,
    notices: tokio::sync::mpsc::UnboundedReceiver<DbError>,
}

impl NoticeConn {
    async fn connect(target: &PgTarget, timeout: Duration) -> anyhow::Result<NoticeConn> {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&target.host)
            .port(target.port)
            .user(&target.user)
            .password(&target.password)
            .dbname(&target.dbname)
            .application_name("pgbaton-chaos")
            .connect_timeout(timeout);
        let (client, mut connection) = tokio::time::timeout(timeout, cfg.connect(NoTls))
            .await
            .context("connect: timed out")?
            .context("connect")?;
        let (tx, notices) = tokio::sync::mpsc::unbounded_channel();
        // A notice arrives before the ReadyForQuery that completes the statement, and this
        // task hands it to the channel before it polls the next message: so when the query
        // returns, its notices are already in the channel.
        tokio::spawn(async move {
            loop {
                match futures::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notice(n))) => {
                        let _ = tx.send(n);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                }
            }
        });
        Ok(NoticeConn { client, notices })
    }

    /// Every notice received so far.
    fn drain(&mut self) -> Vec<DbError> {
        let mut out = Vec::new();
        while let Ok(n) = self.notices.try_recv() {
            out.push(n);
        }
        out
    }
}

/// One W1 worker: reconnect when needed, then one write per tick until stopped.
async fn set_worker(
    worker: usize,
    target: PgTarget,
    config: SetWorkloadConfig,
    clock: Clock,
    history: History,
    stop: Arc<AtomicBool>,
) {
    let mut conn: Option<NoticeConn> = None;
    let mut tick = tokio::time::interval(config.pace);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        let id = history.next_id();
        if conn.as_ref().is_none_or(|c| c.client.is_closed()) {
            let invoke = clock.now();
            match NoticeConn::connect(&target, config.connect_timeout).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    // Nothing was sent: definitely not written.
                    history.record(Op {
                        id,
                        worker,
                        invoke,
                        complete: clock.now(),
                        outcome: Outcome::Fail,
                        epoch: None,
                        note: format!("{e:#}"),
                    });
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected above");
        let op = write_once(c, worker, id, &config, clock).await;
        // An ERROR leaves the session usable; anything else may have broken it.
        let usable =
            op.outcome == Outcome::Ok || (op.outcome == Outcome::Fail && !c.client.is_closed());
        if !usable {
            conn = None;
        }
        history.record(op);
    }
}

/// One insert of `id`, classified.
async fn write_once(
    c: &mut NoticeConn,
    worker: usize,
    id: i64,
    config: &SetWorkloadConfig,
    clock: Clock,
) -> Op {
    let sql = format!(
        "INSERT INTO chaos_set (id, tl, node) SELECT {id}, {TIMELINE_SQL}, {NODE_SQL} \
         RETURNING tl, node"
    );
    c.drain();
    let cancel = c.client.cancel_token();
    let invoke = clock.now();
    let result = {
        let query = c.client.simple_query(&sql);
        tokio::pin!(query);
        match tokio::time::timeout(config.cancel_after, &mut query).await {
            Ok(r) => Ok(r),
            Err(_) => {
                // Cancel (a new connection, through HAProxy like the query), then wait for
                // the answer: an ERROR if it was still executing, a warning-commit if it was
                // waiting for a synchronous standby.
                tokio::spawn(async move { cancel.cancel_query(NoTls).await });
                let rest = config.timeout.saturating_sub(config.cancel_after);
                tokio::time::timeout(rest, &mut query).await
            }
        }
    };
    let complete = clock.now();
    let notices = c.drain();
    let (outcome, epoch, note) = classify(result.map_err(|_| ()), &notices);
    Op {
        id,
        worker,
        invoke,
        complete,
        outcome,
        epoch,
        note,
    }
}

/// The classification rule: `ok` only when the statement returned its row and no notice
/// mentions synchronous replication (the "canceling wait for synchronous replication"
/// warnings mean "committed locally, maybe not replicated"); a timeout (`Err(())`), a lost
/// connection or a FATAL error is `info`; an ERROR (the transaction rolled back) is `fail`.
pub fn classify(
    result: Result<Result<Vec<SimpleQueryMessage>, tokio_postgres::Error>, ()>,
    notices: &[DbError],
) -> (Outcome, Option<Epoch>, String) {
    let sync_warning = notices
        .iter()
        .find(|n| n.message().contains("synchronous replication"));
    match result {
        Err(()) => (Outcome::Info, None, "client timeout".to_owned()),
        Ok(Ok(messages)) => {
            let epoch = epoch_of(&messages);
            match (sync_warning, &epoch) {
                (Some(w), _) => (Outcome::Info, epoch, format!("warning: {}", w.message())),
                (None, None) => (Outcome::Info, None, "no row returned".to_owned()),
                (None, Some(_)) => (Outcome::Ok, epoch, String::new()),
            }
        }
        Ok(Err(e)) => match e.as_db_error() {
            Some(db) if db.severity() == "ERROR" => (
                Outcome::Fail,
                None,
                format!("{} {}", db.code().code(), db.message()),
            ),
            Some(db) => (
                Outcome::Info,
                None,
                format!("{} {} {}", db.severity(), db.code().code(), db.message()),
            ),
            None => (Outcome::Info, None, format!("{e}")),
        },
    }
}

/// The `(tl, node)` row a write returned.
fn epoch_of(messages: &[SimpleQueryMessage]) -> Option<Epoch> {
    messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) if r.len() == 2 => Some(Epoch {
            timeline: r.get(0)?.parse().ok()?,
            node: r.get(1)?.to_owned(),
        }),
        _ => None,
    })
}

/// W2: one probe writer per node, as tasks on the caller's runtime.
pub struct ProbeWriters {
    history: History,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// How often each probe writer writes, and how long it waits for an answer.
const PROBE_PERIOD: Duration = Duration::from_millis(100);
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

impl ProbeWriters {
    /// One writer per target (a node's Unix socket directory as `host`), worker = index.
    pub fn start(targets: Vec<PgTarget>, clock: Clock) -> ProbeWriters {
        let history = History::new();
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = targets
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                let (h, s) = (history.clone(), stop.clone());
                tokio::spawn(probe_worker(i, t, clock, h, s))
            })
            .collect();
        ProbeWriters {
            history,
            stop,
            tasks,
        }
    }

    pub fn history(&self) -> &History {
        &self.history
    }

    /// Stop every writer and return the whole history.
    pub async fn stop(self) -> Vec<Op> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            let _ = t.await;
        }
        self.history.snapshot()
    }
}

async fn probe_worker(
    worker: usize,
    target: PgTarget,
    clock: Clock,
    history: History,
    stop: Arc<AtomicBool>,
) {
    let mut conn: Option<Client> = None;
    let mut tick = tokio::time::interval(PROBE_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        if conn.as_ref().is_none_or(Client::is_closed) {
            conn = target.connect_with_timeout(PROBE_TIMEOUT).await.ok();
        }
        let Some(c) = &conn else { continue };
        // Only a primary can write; asking first keeps standbys' logs free of errors.
        match tokio::time::timeout(PROBE_TIMEOUT, c.simple_query("SELECT pg_is_in_recovery()"))
            .await
        {
            Ok(Ok(m)) if !in_recovery(&m) => {}
            Ok(Ok(_)) => continue,
            _ => {
                conn = None;
                continue;
            }
        }
        let id = history.next_id();
        let sql = format!(
            "BEGIN; SET LOCAL synchronous_commit = local; \
             INSERT INTO chaos_probe (id, tl, node) SELECT {id}, {TIMELINE_SQL}, {NODE_SQL} \
             RETURNING tl, node; COMMIT"
        );
        let invoke = clock.now();
        let result = tokio::time::timeout(PROBE_TIMEOUT, c.simple_query(&sql)).await;
        let complete = clock.now();
        let (outcome, epoch, note) = classify(result.map_err(|_| ()), &[]);
        if outcome != Outcome::Ok {
            // An error leaves the explicit transaction aborted: start afresh.
            conn = None;
        }
        history.record(Op {
            id,
            worker,
            invoke,
            complete,
            outcome,
            epoch,
            note,
        });
    }
}

fn in_recovery(messages: &[SimpleQueryMessage]) -> bool {
    messages.iter().any(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(0) == Some("t"),
        _ => false,
    })
}
