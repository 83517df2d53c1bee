//! Kill and pid bookkeeping for one worker, shared by its handles and its
//! driver.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;
use parallel_proto::channel::CallId;
use parallel_proto::zygote::SpawnFailure;

use super::error::LimitExceeded;
use super::runtime::StartDriver;
use super::Error;
use crate::{ExitStatus, PendingSpawn, ResourceLimit, WorkerProcess};

/// Kills the worker from any task, without going through the driver (which
/// may be stuck writing to a worker that stopped reading), and knows its pid.
///
/// It holds the spawn's [`PendingSpawn`] and looks at it only when someone
/// asks (`pid`, `kill`): nobody is woken when the zygote's "spawned" reply
/// arrives, which on a small machine would compete for a CPU with the worker
/// that is just starting.
pub(crate) struct Killer {
    state: Mutex<KillState>,
    /// Wakes the driver when a kill needs the process the zygote has not
    /// reported yet.
    driver: AtomicWaker,
    /// The worker's tracing span (its pid recorded once known).
    span: tracing::Span,
    /// The driver completed (or was dropped): nothing of the worker is
    /// left to wait for.
    finished: std::sync::atomic::AtomicBool,
    /// Closed once the death is recorded or the driver finished: what
    /// [`wait_death`](Self::wait_death) waits on (nothing is ever sent).
    died: (async_channel::Sender<()>, async_channel::Receiver<()>),
    /// Whether the driver's task polls the driver: true from the start,
    /// except for a one-shot spawn's driver, which its `JoinHandle` polls
    /// in place while it waits for the outcome (see
    /// [`Held`](super::driver::Held)), and hands over with
    /// [`release`](Self::release).
    released: AtomicBool,
    /// The driver's task, parked until [`release`](Self::release).
    parked: AtomicWaker,
    /// What starts the driver's task, where the runtime starts it only at
    /// [`release`](Self::release) (see
    /// [`Runtime::defer_driver`](super::Runtime::defer_driver)): until
    /// then there is no task to park or wake.
    deferred: Mutex<Option<StartDriver>>,
    /// `KillState::requested`, readable without the lock: every call and
    /// every pass of the driver asks, and almost always hears no.
    requested: AtomicBool,
    /// `KillState::process` once known, readable without the lock: a
    /// pool asks [`is_dead`](Self::is_dead) of an idle worker before each
    /// call, and almost always hears no.
    process_known: OnceLock<Arc<WorkerProcess>>,
}

#[derive(Default)]
struct KillState {
    pending: Option<PendingSpawn>,
    process: Option<Arc<WorkerProcess>>,
    /// The pid the worker said in its hello, which can arrive before the
    /// zygote's answer.
    hello_pid: Option<i32>,
    requested: bool,
    /// Why the zygote could not start the worker.
    spawn_error: Option<Arc<crate::Error>>,
    /// How the worker ended, once the driver knows it broke.
    death: Option<Death>,
    /// The resource limits the worker was spawned with, which may explain
    /// its death.
    limits: Vec<ResourceLimit>,
}

/// How a worker ended, as the driver found out.
#[derive(Clone)]
pub(crate) struct Death {
    pub(crate) pid: Option<i32>,
    pub(crate) status: Option<ExitStatus>,
    pub(crate) spawn_error: Option<Arc<crate::Error>>,
    /// The zygote died before the worker's exit status came: the worker
    /// died with it.
    pub(crate) zygote_gone: Option<Arc<crate::Error>>,
    /// The worker broke the protocol (it was killed for it).
    pub(crate) protocol: Option<parallel_proto::Error>,
    /// The resource limit that explains the death (filled in by
    /// [`Killer::record_death`]).
    pub(crate) limit: Option<LimitExceeded>,
    /// The last lines of its captured stderr (empty when not captured).
    pub(crate) stderr_tail: Vec<String>,
}

impl Death {
    /// The error for a waiter, naming its call.
    pub(crate) fn error(&self, call: Option<CallId>) -> Error {
        if let Some(gone) = &self.zygote_gone {
            return Error::Zygote(Arc::clone(gone));
        }
        if let Some(error) = &self.protocol {
            return Error::Protocol(error.clone());
        }
        match &self.spawn_error {
            Some(error) if matches!(**error, crate::Error::ZygoteGone { .. }) => {
                Error::Zygote(Arc::clone(error))
            }
            Some(error) => Error::SpawnFailed {
                source: Arc::clone(error),
            },
            None => Error::WorkerDied {
                pid: self.pid,
                status: self.status,
                call,
                limit: self.limit,
                stderr_tail: self.stderr_tail.clone(),
            },
        }
    }
}

impl KillState {
    /// Takes the zygote's answer if it has arrived.
    fn refresh(&mut self) {
        if self.process.is_some() {
            return;
        }
        let Some(answer) = self.pending.as_mut().and_then(PendingSpawn::try_wait) else {
            return;
        };
        self.pending = None;
        self.settle(answer);
    }

    fn settle(&mut self, answer: Result<WorkerProcess, crate::Error>) {
        match answer {
            Ok(process) => {
                if self.requested {
                    let _ = process.kill(libc::SIGKILL);
                }
                self.process = Some(Arc::new(process));
            }
            Err(error) => self.spawn_error = Some(Arc::new(error)),
        }
    }
}

impl Killer {
    pub(crate) fn new(pending: PendingSpawn, span: tracing::Span) -> Self {
        Killer {
            state: Mutex::new(KillState {
                pending: Some(pending),
                ..KillState::default()
            }),
            driver: AtomicWaker::new(),
            span,
            finished: std::sync::atomic::AtomicBool::new(false),
            died: async_channel::bounded(1),
            released: AtomicBool::new(true),
            parked: AtomicWaker::new(),
            deferred: Mutex::new(None),
            requested: AtomicBool::new(false),
            process_known: OnceLock::new(),
        }
    }

    /// The driver is polled in place by its handle until
    /// [`release`](Self::release): its task waits.
    pub(crate) fn hold(&self) {
        self.released.store(false, Ordering::Release);
    }

    /// The held driver's task is started by `start` at
    /// [`release`](Self::release), not before (set once, before the handle
    /// exists).
    pub(crate) fn defer(&self, start: StartDriver) {
        *self.deferred.lock().unwrap_or_else(|e| e.into_inner()) = Some(start);
    }

    /// Hands the driver to its task for good (idempotent, from any thread,
    /// inside a runtime or not): the handle that held it polls it no more.
    ///
    /// Never called with the driver's lock held: a deferred task started
    /// on a runtime that is gone is dropped at once, and its driver's drop
    /// takes that lock.
    pub(crate) fn release(&self) {
        if !self.released.swap(true, Ordering::AcqRel) {
            match self.take_deferred() {
                Some(start) => start(),
                None => self.parked.wake(),
            }
        }
    }

    /// Whether the driver's task waits to be started at the release (see
    /// [`defer`](Self::defer)).
    pub(crate) fn is_deferred(&self) -> bool {
        self.deferred
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    fn take_deferred(&self) -> Option<StartDriver> {
        self.deferred
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Hands the driver to its task without waking it, and returns the
    /// task's waker for the caller to register with what the task waits
    /// for next; `None` (nothing handed over) when the task has not
    /// parked yet or the driver was released already. A task not started
    /// yet (deferred) comes back as a waker that starts it.
    pub(crate) fn release_quietly(&self) -> Option<Waker> {
        if self.is_released() {
            return None;
        }
        if let Some(start) = self.take_deferred() {
            self.released.store(true, Ordering::Release);
            return Some(Waker::from(Arc::new(StartOnWake(Mutex::new(Some(start))))));
        }
        let waker = self.parked.take()?;
        self.released.store(true, Ordering::Release);
        Some(waker)
    }

    /// Whether the driver is its task's to poll; registers the task to be
    /// woken by [`release`](Self::release) otherwise.
    pub(crate) fn poll_released(&self, cx: &mut Context<'_>) -> bool {
        if self.is_released() {
            return true;
        }
        self.parked.register(cx.waker());
        self.is_released()
    }

    /// Whether [`release`](Self::release) was called (or nothing was held).
    pub(crate) fn is_released(&self) -> bool {
        self.released.load(Ordering::Acquire)
    }

    /// The worker's span.
    pub(crate) fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// Records that the driver is done with the worker.
    pub(crate) fn finish(&self) {
        self.finished
            .store(true, std::sync::atomic::Ordering::Release);
        self.died.0.close();
    }

    /// Whether the driver is done: the worker exited (or its exit could not
    /// be learnt) and every waiter has its answer.
    pub(crate) fn is_finished(&self) -> bool {
        self.finished.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Sends `signal` to the worker if its process is known (SIGTERM from a
    /// graceful shutdown); SIGKILL goes through [`kill`](Self::kill).
    pub(crate) fn signal(&self, signal: i32) {
        let state = self.lock();
        if let Some(process) = &state.process {
            tracing::debug!(parent: &self.span, pid = process.pid(), signal, "signal sent to worker");
            let _ = process.kill(signal);
        }
    }

    fn lock(&self) -> MutexGuard<'_, KillState> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.refresh();
        state
    }

    pub(crate) fn kill(&self) {
        let mut state = self.lock();
        if !state.requested && !self.is_finished() {
            tracing::debug!(parent: &self.span, "kill requested");
        }
        state.requested = true;
        // Before the driver is woken below: it reads this first.
        self.requested.store(true, Ordering::Release);
        match &state.process {
            Some(process) => {
                let _ = process.kill(libc::SIGKILL);
            }
            // Not reported yet: the driver waits for it and kills then.
            None if state.pending.is_some() => self.driver.wake(),
            None => {}
        }
    }

    /// The worker's pid: from the zygote's answer, or from the worker's own
    /// hello, whichever came first (a worker that answered has said hello).
    pub(crate) fn pid(&self) -> Option<i32> {
        let state = self.lock();
        state.process.as_ref().map(|p| p.pid()).or(state.hello_pid)
    }

    /// Whether someone asked for the worker to be killed.
    pub(crate) fn kill_requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    /// The error for a call made after the worker was killed on request:
    /// its death, once the driver learnt how it ended.
    pub(crate) async fn killed_error(&self) -> Error {
        // Never sent to: returns when the channel closes.
        let _ = self.died.1.recv().await;
        self.death(None)
    }

    /// Whether the worker was killed or is known to have exited.
    pub(crate) fn is_dead(&self) -> bool {
        // `died` closes once the death is recorded (or the driver is done
        // with the worker, which has then exited too).
        if self.requested.load(Ordering::Acquire) || self.died.0.is_closed() {
            return true;
        }
        let process = match self.process_known.get() {
            Some(process) => process,
            None => {
                let state = self.lock();
                if state.requested || state.death.is_some() {
                    return true;
                }
                let Some(process) = &state.process else {
                    return false;
                };
                self.process_known.get_or_init(|| Arc::clone(process))
            }
        };
        process.try_status().is_some()
    }

    /// Records the pid the worker announced.
    pub(crate) fn hello(&self, pid: i32) {
        self.lock().hello_pid = Some(pid);
    }

    pub(crate) fn process(&self) -> Option<Arc<WorkerProcess>> {
        self.lock().process.clone()
    }

    /// Whether a kill waits for the zygote's answer; registers the driver to
    /// be woken when one is requested.
    pub(crate) fn kill_waits(&self, cx: &mut Context<'_>) -> bool {
        self.driver.register(cx.waker());
        // Registered first: a kill requested after this load wakes the
        // driver, which asks again.
        if !self.requested.load(Ordering::Acquire) {
            return false;
        }
        let state = self.lock();
        state.requested && state.pending.is_some()
    }

    /// Polls for the zygote's answer, unless it is known already.
    pub(crate) fn poll_resolve(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.lock();
        let Some(pending) = state.pending.as_mut() else {
            return Poll::Ready(());
        };
        match Pin::new(pending).poll(cx) {
            Poll::Ready(answer) => {
                state.pending = None;
                state.settle(answer);
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Gives up on the zygote's answer.
    pub(crate) fn abandon_spawn(&self) {
        let mut state = self.lock();
        if state.pending.take().is_some() {
            let failure = SpawnFailure {
                errno: None,
                message: "the zygote did not answer the spawn request in time".into(),
            };
            state.spawn_error = Some(Arc::new(crate::Error::SpawnFailed(failure)));
        }
    }

    pub(crate) fn spawn_error(&self) -> Option<Arc<crate::Error>> {
        self.lock().spawn_error.clone()
    }

    /// The error for a handle that finds the driver gone.
    pub(crate) fn death(&self, call: Option<CallId>) -> Error {
        match &self.lock().death {
            Some(death) => death.error(call),
            None => Error::Closed,
        }
    }

    /// Records the limits the worker runs under (from its spawn options).
    pub(crate) fn set_limits(&self, limits: Vec<ResourceLimit>) {
        self.lock().limits = limits;
    }

    /// Records how the worker ended, naming the resource limit that
    /// explains it unless the worker was killed on request; returns the
    /// death as recorded.
    pub(crate) fn record_death(&self, mut death: Death) -> Death {
        let mut state = self.lock();
        if !state.requested {
            death.limit = death
                .status
                .and_then(|status| LimitExceeded::explain(&status, &state.limits));
        }
        state.death = Some(death.clone());
        drop(state);
        self.died.0.close();
        death
    }
}

/// The waker of a driver whose task is not started yet (see
/// [`Killer::release_quietly`]): the first wake-up starts the task, which
/// then registers its own waker with what it waits for; later ones find
/// nothing to do.
///
/// Registered only with the channel's socket, never with what the
/// zygote's reader thread completes: that thread wakes under the zygote
/// client's lock, and a task started on a runtime that is gone is dropped
/// at once, there, with its worker's process handle, whose drop takes
/// that lock.
struct StartOnWake(Mutex<Option<StartDriver>>);

impl Wake for StartOnWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let start = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(start) = start {
            start();
        }
    }
}

/// Kills the worker when dropped before being disarmed: what makes a
/// cancelled (dropped) call or a timed-out one end its worker.
pub(crate) struct KillOnDrop {
    killer: Option<Arc<Killer>>,
}

impl KillOnDrop {
    pub(crate) fn new(killer: Arc<Killer>) -> Self {
        KillOnDrop {
            killer: Some(killer),
        }
    }

    pub(crate) fn disarm(&mut self) {
        self.killer = None;
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(killer) = self.killer.take() {
            killer.kill();
        }
    }
}
