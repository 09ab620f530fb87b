//! SIGSTOP for tasks: a [`Gate`] shared by all tasks of one agent process; while it is closed
//! their futures are not polled. Timers inside them still fire (they are the runtime's), so on
//! resume every sleep and timeout that ran out during the pause completes at once — what a
//! process sees after SIGCONT.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

#[derive(Default)]
pub(crate) struct Gate {
    paused: AtomicBool,
    waiting: Mutex<Vec<Waker>>,
}

impl Gate {
    pub(crate) fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    pub(crate) fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    pub(crate) fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
        let wakers = std::mem::take(&mut *self.waiting.lock().unwrap_or_else(|p| p.into_inner()));
        for w in wakers {
            w.wake();
        }
    }
}

thread_local! {
    /// The member whose agent task is being polled (for attributing log lines).
    static CURRENT: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// The member whose agent task is running right now, if any.
pub(crate) fn current_member() -> Option<usize> {
    CURRENT.with(|c| c.get())
}

/// `fut`, a task of member `member`'s agent, polled only while `gate` is open.
pub(crate) struct Pausable<F> {
    inner: Pin<Box<F>>,
    gate: std::sync::Arc<Gate>,
    member: usize,
}

impl<F: Future> Pausable<F> {
    pub(crate) fn new(fut: F, gate: std::sync::Arc<Gate>, member: usize) -> Pausable<F> {
        Pausable {
            inner: Box::pin(fut),
            gate,
            member,
        }
    }
}

impl<F: Future> Future for Pausable<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        if self.gate.is_paused() {
            let mut waiting = self.gate.waiting.lock().unwrap_or_else(|p| p.into_inner());
            if !waiting.iter().any(|w| w.will_wake(cx.waker())) {
                waiting.push(cx.waker().clone());
            }
            return Poll::Pending;
        }
        let prev = CURRENT.with(|c| c.replace(Some(self.member)));
        let out = self.inner.as_mut().poll(cx);
        CURRENT.with(|c| c.set(prev));
        out
    }
}
