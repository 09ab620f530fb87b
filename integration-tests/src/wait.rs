//! Polling with a deadline: the only way tests synchronise with the processes they start.

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::bail;

/// The outcome of one probe of a condition.
#[derive(Debug)]
pub enum Check<T> {
    /// The condition holds; [`wait_for`] returns this value.
    Done(T),
    /// Not yet; the text says why (it is reported if the deadline passes).
    NotYet(String),
}

impl<T> Check<T> {
    pub fn not_yet(why: impl Display) -> Self {
        Check::NotYet(why.to_string())
    }
}

/// How often [`wait_for`] probes.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Probe `probe` every 200 ms until it returns [`Check::Done`], for at most `timeout`.
///
/// `Ok(Check::NotYet(why))` keeps polling; `Err(_)` aborts at once (use it for conditions that
/// can never become true any more, e.g. a process that should stay up has exited). Transient
/// failures (connection refused, a node still booting) belong in `NotYet`. On timeout the error
/// names `what`, the time waited and the last `NotYet` reason.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Check<T>>>,
{
    let start = Instant::now();
    let deadline = start + timeout;
    let mut last;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        // A probe that hangs must not hold the wait past its deadline.
        match tokio::time::timeout(remaining.max(POLL_INTERVAL), probe()).await {
            Ok(Ok(Check::Done(value))) => return Ok(value),
            Ok(Ok(Check::NotYet(why))) => last = why,
            Ok(Err(e)) => {
                return Err(e.context(format!(
                    "gave up waiting for {what} after {:.1}s",
                    start.elapsed().as_secs_f64()
                )));
            }
            Err(_) => last = String::from("the probe itself did not finish before the deadline"),
        }
        if Instant::now() >= deadline {
            bail!(
                "timed out after {:.1}s waiting for {what}; last observation: {last}",
                start.elapsed().as_secs_f64()
            );
        }
        tokio::time::sleep(POLL_INTERVAL.min(deadline.saturating_duration_since(Instant::now())))
            .await;
    }
}

/// [`wait_for`] for a plain boolean condition. Errors from `probe` count as "not yet".
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut probe: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    wait_for(what, timeout, || {
        let fut = probe();
        async move {
            Ok(match fut.await {
                Ok(true) => Check::Done(()),
                Ok(false) => Check::not_yet("condition false"),
                Err(e) => Check::not_yet(format!("{e:#}")),
            })
        }
    })
    .await
}
