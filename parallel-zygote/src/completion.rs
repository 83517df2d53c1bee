//! A one-shot slot filled by the client's reader thread and awaited either by
//! blocking (plain threads) or as a `Future` (any async runtime: it only uses
//! `std::task::Waker`).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

#[derive(Debug)]
struct State<T> {
    value: Option<T>,
    wakers: Vec<Waker>,
}

/// A value that arrives once.
#[derive(Debug)]
pub(crate) struct Completion<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
    /// Whether `value` is set, readable without the lock: a pool asks
    /// [`peek`](Self::peek) of an idle worker's exit before each call,
    /// and almost always hears no.
    filled: AtomicBool,
}

impl<T: Clone> Completion<T> {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Completion {
            state: Mutex::new(State {
                value: None,
                wakers: Vec::new(),
            }),
            ready: Condvar::new(),
            filled: AtomicBool::new(false),
        })
    }

    /// Fills the slot; a second fill is ignored (the first word stands).
    pub(crate) fn complete(&self, value: T) {
        let wakers = {
            let mut state = lock(&self.state);
            if state.value.is_some() {
                return;
            }
            state.value = Some(value);
            self.filled.store(true, Ordering::Release);
            std::mem::take(&mut state.wakers)
        };
        self.ready.notify_all();
        for waker in wakers {
            waker.wake();
        }
    }

    pub(crate) fn peek(&self) -> Option<T> {
        if !self.filled.load(Ordering::Acquire) {
            return None;
        }
        lock(&self.state).value.clone()
    }

    pub(crate) fn wait(&self) -> T {
        let mut state = lock(&self.state);
        loop {
            if let Some(value) = &state.value {
                return value.clone();
            }
            state = self.ready.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    pub(crate) fn wait_timeout(&self, timeout: Duration) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.state);
        loop {
            if let Some(value) = &state.value {
                return Some(value.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            state = self
                .ready
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    pub(crate) fn poll_value(&self, cx: &mut Context<'_>) -> Poll<T> {
        let mut state = lock(&self.state);
        if let Some(value) = &state.value {
            return Poll::Ready(value.clone());
        }
        if !state.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            state.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// A future over a shared completion.
pub(crate) struct Awaiting<T>(pub(crate) Arc<Completion<T>>);

impl<T: Clone> Future for Awaiting<T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        self.0.poll_value(cx)
    }
}

/// Locks, shrugging off poisoning: every critical section here leaves the
/// state consistent even if a waker panicked.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
