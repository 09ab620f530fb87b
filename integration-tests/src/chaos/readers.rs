//! W3, the readers (safety-and-testing.md §7.4): workers in the client namespace read the
//! newest ids of the set table through HAProxy's primary port every 100 ms, with the server
//! that answered (timeline and node, in the same statement), and record what they saw. C4
//! ([`super::checker::check_observed`]) then requires every id a client saw to be in the final
//! table: a commit that was visible and then forgotten (a primary rewound away after it served
//! reads, a restart that made unreplicated commits visible) is a loss even though no writer
//! was told "committed".

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_postgres::{Client, SimpleQueryMessage};

use super::Clock;
use super::checker::{Epoch, Read};
use super::workload::{NODE_SQL, TIMELINE_SQL, spawn_workers};
use crate::pg::PgTarget;

/// Readers, their period, how many of the newest ids each read asks for, and the client's
/// bound on one read (connect or query).
const READERS: usize = 2;
const PERIOD: Duration = Duration::from_millis(100);
const NEWEST: usize = 20;
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// The read: the newest ids, each row with the answering server's timeline (0 on a standby,
/// where the WAL position function errors) and node.
fn read_sql() -> String {
    format!(
        "SELECT id, CASE WHEN pg_is_in_recovery() THEN 0 ELSE {TIMELINE_SQL} END, {NODE_SQL} \
         FROM chaos_set ORDER BY id DESC LIMIT {NEWEST}"
    )
}

/// W3, running on a thread inside the client namespace.
pub struct Readers {
    reads: Arc<Mutex<Vec<Read>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<anyhow::Result<()>>>>,
}

impl Readers {
    /// Start the readers inside network namespace `netns`, reading from `target` (HAProxy's
    /// primary port as the client namespace sees it).
    pub fn start(netns: &str, target: PgTarget, clock: Clock) -> Readers {
        let reads = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (reads.clone(), stop.clone());
        let thread = spawn_workers(netns, "W3", READERS, move |w| {
            reader(w, target.clone(), clock, r.clone(), s.clone())
        });
        Readers {
            reads,
            stop,
            thread: Some(thread),
        }
    }

    /// Every read completed so far.
    pub fn snapshot(&self) -> Vec<Read> {
        self.reads.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stop the readers and return every read.
    pub fn stop(mut self) -> anyhow::Result<Vec<Read>> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join()
                .map_err(|_| anyhow::anyhow!("the W3 thread panicked"))???;
        }
        Ok(self.snapshot())
    }
}

impl Drop for Readers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One reader: reconnect when needed, then one read per tick until stopped. Failed reads
/// observe nothing and are not recorded.
async fn reader(
    worker: usize,
    target: PgTarget,
    clock: Clock,
    reads: Arc<Mutex<Vec<Read>>>,
    stop: Arc<AtomicBool>,
) {
    let sql = read_sql();
    let mut client: Option<Client> = None;
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        if client.as_ref().is_none_or(Client::is_closed) {
            client = target.connect_with_timeout(READ_TIMEOUT).await.ok();
        }
        let Some(c) = client.as_ref() else { continue };
        let invoke = clock.now();
        match tokio::time::timeout(READ_TIMEOUT, c.simple_query(&sql)).await {
            Ok(Ok(messages)) => {
                let (ids, epoch) = parse_read(&messages);
                let read = Read {
                    worker,
                    invoke,
                    complete: clock.now(),
                    ids,
                    epoch,
                };
                reads.lock().unwrap_or_else(|e| e.into_inner()).push(read);
            }
            // An error (the table not there yet, a standby behind HAProxy's back) leaves the
            // session usable; a timeout may not have.
            Ok(Err(_)) => {}
            Err(_) => client = None,
        }
    }
}

/// The ids a read returned and the server that answered (from its first row).
pub fn parse_read(messages: &[SimpleQueryMessage]) -> (Vec<i64>, Option<Epoch>) {
    let mut ids = Vec::new();
    let mut epoch = None;
    for m in messages {
        if let SimpleQueryMessage::Row(r) = m
            && let Some(id) = r.get(0).and_then(|v| v.parse().ok())
        {
            ids.push(id);
            if epoch.is_none() {
                epoch = match (r.get(1).and_then(|v| v.parse().ok()), r.get(2)) {
                    (Some(timeline), Some(node)) => Some(Epoch {
                        timeline,
                        node: node.to_owned(),
                    }),
                    _ => None,
                };
            }
        }
    }
    (ids, epoch)
}
