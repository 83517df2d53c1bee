//! The engine both pools share ([`Pool`](super::Pool), one function;
//! [`AnyPool`](super::AnyPool), any function): warm workers by index, the
//! queue of calls waiting for one, crash replacement, timeouts, recycling,
//! shutdown and kill, and the per-call handle [`PoolTask`].

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};

use async_lock::{Semaphore, SemaphoreGuard};
use parallel_proto::channel::Outcome;
use parallel_proto::WireEntry;

use super::codec::Codec;
use super::driver::Command;
use super::kill::Killer;
use super::parallel::Parallel;
use super::pool::{PoolConfig, PoolStats};
use super::run::Run;
use super::runtime::{timeout, Runtime};
use super::Error;
use crate::SpawnOptions;

/// A worker's `Run`, untyped: the pool moves encoded bytes.
type RawRun<C, Rt> = Run<Vec<u8>, Vec<u8>, C, Rt>;

/// Gives worker `index` its spawn options.
pub(crate) type WorkerOptions = Arc<dyn Fn(usize) -> SpawnOptions + Send + Sync>;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

struct Slot<C: Codec, Rt: Runtime> {
    run: RawRun<C, Rt>,
    calls: usize,
    /// The worker's index in the pool, from 0: its replacement gets the same.
    index: usize,
}

#[derive(Default)]
struct Counters {
    replacements: AtomicU64,
    deaths: AtomicU64,
    timeouts: AtomicU64,
    retries: AtomicU64,
    recycled_for_memory: AtomicU64,
    queued: AtomicUsize,
    next_busy: AtomicU64,
}

pub(crate) struct PoolCore<C: Codec, Rt: Runtime> {
    parallel: Parallel<Rt, C>,
    task: WireEntry,
    config: PoolConfig,
    options: Option<WorkerOptions>,
    idle: Mutex<Vec<Slot<C, Rt>>>,
    /// Indices with no worker (its replacement failed, or its call was
    /// dropped mid-call): the next call that needs a worker starts one.
    vacant: Mutex<Vec<usize>>,
    /// Workers serving a call (what killing and draining them needs), by a
    /// key of the call's own. A list, not a map: it holds at most `size`
    /// entries, and hashing each key cost a call more than searching them.
    busy: Mutex<Vec<(u64, Arc<Killer>)>>,
    permits: Semaphore,
    counters: Counters,
    /// What a shutdown from elsewhere (the handle's scope) touches.
    signals: Arc<PoolSignals>,
}

/// The part of a pool that its scope's shutdown reaches from any thread:
/// `Send + Sync` whatever the runtime (a worker's handle, holding the
/// driver's state, is not for glommio).
pub(crate) struct PoolSignals {
    closed: AtomicBool,
    /// Closed (never sent to) at shutdown: wakes every queued call.
    shutdown: (async_channel::Sender<()>, async_channel::Receiver<()>),
    /// The idle workers' call channels, by pool index (at most `size`
    /// entries): closing one ends its worker gracefully (the driver then
    /// sends End).
    idle_ends: Mutex<Vec<(usize, async_channel::WeakSender<Command>)>>,
}

impl Default for PoolSignals {
    fn default() -> Self {
        PoolSignals {
            closed: AtomicBool::new(false),
            shutdown: async_channel::bounded(1),
            idle_ends: Mutex::default(),
        }
    }
}

impl PoolSignals {
    /// No new calls, queued ones refused, idle workers ended.
    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.shutdown.0.close();
        for (_, end) in lock(&self.idle_ends).drain(..) {
            if let Some(commands) = end.upgrade() {
                commands.close();
            }
        }
    }
}

impl ScopedPool for PoolSignals {
    fn close(&self) {
        PoolSignals::close(self);
    }
}

impl<C: Codec, Rt: Runtime> PoolCore<C, Rt> {
    /// Puts a worker among the idle ones.
    fn push_idle(&self, slot: Slot<C, Rt>) {
        let end = slot.run.downgrade_commands();
        let mut ends = lock(&self.signals.idle_ends);
        match ends.iter_mut().find(|(index, _)| *index == slot.index) {
            Some(entry) => entry.1 = end,
            None => ends.push((slot.index, end)),
        }
        drop(ends);
        lock(&self.idle).push(slot);
    }

    /// Takes the next idle worker.
    fn pop_idle(&self) -> Option<Slot<C, Rt>> {
        let slot = lock(&self.idle).pop()?;
        let mut ends = lock(&self.signals.idle_ends);
        if let Some(at) = ends.iter().position(|(index, _)| *index == slot.index) {
            ends.swap_remove(at);
        }
        drop(ends);
        Some(slot)
    }

    /// Takes every idle worker.
    fn take_idle(&self) -> Vec<Slot<C, Rt>> {
        lock(&self.signals.idle_ends).clear();
        std::mem::take(&mut *lock(&self.idle))
    }

    /// Starts `config.size` workers running `task`.
    pub(crate) fn start(
        parallel: &Parallel<Rt, C>,
        task: WireEntry,
        config: PoolConfig,
        options: Option<WorkerOptions>,
    ) -> Result<Arc<Self>, Error> {
        let size = config.size.max(1);
        let core = PoolCore {
            parallel: parallel.clone(),
            task,
            config: PoolConfig { size, ..config },
            options,
            idle: Mutex::new(Vec::with_capacity(size)),
            vacant: Mutex::new(Vec::new()),
            busy: Mutex::new(Vec::with_capacity(size)),
            permits: Semaphore::new(size),
            counters: Counters::default(),
            signals: Arc::default(),
        };
        // Index 0 is popped first.
        for index in (0..size).rev() {
            let slot = core.fresh_slot(index)?;
            core.push_idle(slot);
        }
        let core = Arc::new(core);
        // `Parallel::shutdown` on the handle's scope shuts this pool down too.
        let member: Arc<dyn ScopedPool> = core.signals.clone();
        parallel.track_pool(Arc::downgrade(&member));
        Ok(core)
    }

    pub(crate) fn config(&self) -> PoolConfig {
        self.config
    }

    pub(crate) fn idle_pids(&self) -> Vec<Option<i32>> {
        lock(&self.idle).iter().map(|slot| slot.run.pid()).collect()
    }

    pub(crate) fn pids(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = lock(&self.idle)
            .iter()
            .filter_map(|s| s.run.pid())
            .collect();
        pids.extend(
            lock(&self.busy)
                .iter()
                .filter_map(|(_, killer)| killer.pid()),
        );
        pids
    }

    pub(crate) fn stats(&self) -> PoolStats {
        let counters = &self.counters;
        PoolStats {
            replacements: counters.replacements.load(Ordering::Relaxed),
            deaths: counters.deaths.load(Ordering::Relaxed),
            timeouts: counters.timeouts.load(Ordering::Relaxed),
            retries: counters.retries.load(Ordering::Relaxed),
            recycled_for_memory: counters.recycled_for_memory.load(Ordering::Relaxed),
            size: self.config.size,
            idle: lock(&self.idle).len(),
            active: lock(&self.busy).len(),
            queued: counters.queued.load(Ordering::Relaxed),
            shut_down: self.is_shut_down(),
        }
    }

    pub(crate) fn is_shut_down(&self) -> bool {
        self.signals.closed.load(Ordering::Relaxed) || self.parallel.is_shut_down()
    }

    /// [`shutdown`](Self::shutdown), then a bounded drain: calls in flight
    /// get `grace` to finish, their workers SIGTERM after it, SIGKILL a
    /// second `grace` later.
    pub(crate) async fn shutdown_gracefully(&self, grace: std::time::Duration) {
        self.shutdown();
        tracing::info!(?grace, "pool shutting down gracefully");
        let busy = || -> Vec<Arc<Killer>> {
            lock(&self.busy)
                .iter()
                .map(|(_, killer)| Arc::clone(killer))
                .filter(|killer| !killer.is_finished())
                .collect()
        };
        if drained::<Rt>(grace, || busy().is_empty()).await {
            return;
        }
        let remaining = busy();
        for killer in &remaining {
            killer.signal(libc::SIGTERM);
        }
        let finished = || remaining.iter().all(|killer| killer.is_finished());
        if drained::<Rt>(grace, finished).await {
            return;
        }
        for killer in &remaining {
            killer.kill();
        }
        drained::<Rt>(grace, finished).await;
    }

    /// No new calls; queued ones fail with [`Error::ShutDown`], idle
    /// workers exit now, busy ones once their call is answered.
    pub(crate) fn shutdown(&self) {
        self.signals.close();
        // Dropping an idle worker's last `Run` ends it gracefully.
        drop(self.take_idle());
    }

    /// Whether the worker that just served a call is over the memory limit.
    fn over_memory(&self, run: &RawRun<C, Rt>) -> bool {
        // The limit first: the pid takes a lock.
        let Some(limit) = self.config.max_worker_rss else {
            return false;
        };
        let Some(pid) = run.pid() else {
            return false;
        };
        match resident_bytes(pid) {
            Some(rss) if rss > limit => {
                tracing::info!(parent: run.killer().span(), pid, rss, limit, "worker over its memory limit: recycling it");
                true
            }
            _ => false,
        }
    }

    /// Shuts down and kills every worker, idle or busy.
    pub(crate) fn kill(&self) {
        self.signals.close();
        let idle = self.take_idle();
        for slot in &idle {
            slot.run.kill();
        }
        for (_, killer) in lock(&self.busy).iter() {
            killer.kill();
        }
    }

    fn fresh_slot(&self, index: usize) -> Result<Slot<C, Rt>, Error> {
        let run = match &self.options {
            Some(options) => self
                .parallel
                .clone()
                .worker_options(options(index))
                .run_entry(self.task)?,
            None => self.parallel.run_entry(self.task)?,
        };
        Ok(Slot {
            run,
            calls: 0,
            index,
        })
    }

    /// A live idle worker, or a fresh one for a vacant index: a worker found
    /// dead is replaced (same index) before it is given a call.
    fn take_slot(&self) -> Result<Slot<C, Rt>, Error> {
        loop {
            let popped = self.pop_idle();
            let Some(slot) = popped else {
                let index = lock(&self.vacant).pop();
                let fresh = self.fresh_slot(index.unwrap_or(0));
                if let (Err(_), Some(index)) = (&fresh, index) {
                    lock(&self.vacant).push(index);
                }
                return fresh;
            };
            if !slot.run.is_dead() {
                return Ok(slot);
            }
            tracing::info!(parent: slot.run.killer().span(), index = slot.index, reason = "found dead", "replacing pool worker");
            bump(&self.counters.deaths);
            bump(&self.counters.replacements);
            lock(&self.vacant).push(slot.index);
        }
    }

    /// Waits for a free worker (the call is queued meanwhile).
    async fn acquire(&self, control: &Control) -> Result<SemaphoreGuard<'_>, Error> {
        if self.is_shut_down() {
            return Err(Error::ShutDown);
        }
        // A free worker: no waiting, so nothing to register for (the two
        // listeners below cost more than the rest of taking a worker).
        if let Some(permit) = self.permits.try_acquire() {
            if control.is_killed() {
                return Err(Error::Cancelled);
            }
            return Ok(permit);
        }
        let queued = Queued::new(&self.counters.queued);
        let mut permit = pin!(self.permits.acquire());
        let mut shut = pin!(self.signals.shutdown.1.recv());
        let mut withdrawn = pin!(control.withdrawal().1.recv());
        let permit = poll_fn(|cx| {
            if shut.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(Error::ShutDown));
            }
            if withdrawn.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(Error::Cancelled));
            }
            permit.as_mut().poll(cx).map(Ok)
        })
        .await;
        drop(queued);
        let permit = permit?;
        if self.is_shut_down() {
            return Err(Error::ShutDown);
        }
        Ok(permit)
    }

    /// Runs one call (encoded arguments) on an idle worker, waiting for one
    /// if all are busy; the outcome and the pid of the worker that ran it.
    ///
    /// A call that provably never reached its worker (the worker died
    /// before the call was written whole) is sent again to another worker;
    /// a call that may have run, or that was killed, is never repeated.
    pub(crate) async fn call(
        &self,
        args: Vec<u8>,
        control: &Control,
    ) -> Result<(Outcome, Option<i32>), Error> {
        let _permit = self.acquire(control).await?;
        let counters = &self.counters;
        let mut retries_left = self.config.size + 1;
        loop {
            let mut slot = self.take_slot()?;
            control.assign(slot.run.killer());
            let busy = Busy::new(self, &slot.run, slot.index);
            let call = slot.run.call_encoded(args.clone());
            let result = match self.config.call_timeout {
                None => Some(call.await),
                Some(limit) => timeout::<Rt, _>(limit, call).await,
            };
            busy.finish();
            let (result, lost) = match result {
                // The pid only names the worker in an error: a value needs
                // none (and asking for it takes a lock).
                Some(Ok((_, outcome @ Outcome::Ok(_)))) => (Ok((outcome, None)), false),
                Some(Ok((_, outcome))) => (Ok((outcome, slot.run.pid())), false),
                Some(Err(failed))
                    if !failed.delivered && retries_left > 0 && !control.is_killed() =>
                {
                    retries_left -= 1;
                    tracing::info!(parent: slot.run.killer().span(), "call never reached its worker: retrying on a fresh one");
                    bump(&counters.deaths);
                    bump(&counters.replacements);
                    bump(&counters.retries);
                    slot.run.kill();
                    lock(&self.vacant).push(slot.index);
                    continue;
                }
                Some(Err(failed)) => {
                    bump(&counters.deaths);
                    (Err(without_call(failed.error)), true)
                }
                None => {
                    // The call future was dropped: its worker is killed.
                    bump(&counters.timeouts);
                    let after = self.config.call_timeout.unwrap_or_default();
                    let pid = slot.run.pid();
                    tracing::warn!(parent: slot.run.killer().span(), ?after, pid, "pool call timed out: killing its worker");
                    (Err(Error::Timeout { after, pid }), true)
                }
            };
            slot.calls += 1;
            let worn_out = self
                .config
                .max_calls_per_worker
                .is_some_and(|max| slot.calls >= max);
            let bloated = result.is_ok() && !lost && !worn_out && self.over_memory(&slot.run);
            if bloated {
                bump(&counters.recycled_for_memory);
            }
            if self.is_shut_down() {
                // No more work: a live worker ends as its `Run` is dropped.
                if lost {
                    slot.run.kill();
                }
            } else if lost || worn_out || bloated {
                slot.run.kill();
                bump(&counters.replacements);
                tracing::info!(
                    parent: slot.run.killer().span(),
                    index = slot.index,
                    reason = if lost { "lost" } else if worn_out { "max calls" } else { "memory" },
                    "replacing pool worker"
                );
                // Replace it now, so the next call finds a warm worker.
                match self.fresh_slot(slot.index) {
                    Ok(next) => self.push_idle(next),
                    Err(_) => lock(&self.vacant).push(slot.index),
                }
            } else {
                self.push_idle(slot);
            }
            return result;
        }
    }
}

/// Waits (up to `limit`) for `done`; true if it came.
async fn drained<Rt: Runtime>(limit: std::time::Duration, done: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        Rt::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The resident memory of process `pid` in bytes (`VmRSS` of
/// `/proc/<pid>/status`), if it can be read.
fn resident_bytes(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Counts a call as queued for as long as this lives.
struct Queued<'a>(&'a AtomicUsize);

impl<'a> Queued<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Queued(counter)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A worker listed as busy for as long as this lives: also when the call's
/// future is dropped mid-call (the worker is then killed, must not stay
/// listed, and its index becomes vacant).
struct Busy<'a, C: Codec, Rt: Runtime> {
    core: &'a PoolCore<C, Rt>,
    key: u64,
    index: usize,
    finished: bool,
}

impl<'a, C: Codec, Rt: Runtime> Busy<'a, C, Rt> {
    fn new(core: &'a PoolCore<C, Rt>, run: &RawRun<C, Rt>, index: usize) -> Self {
        let key = core.counters.next_busy.fetch_add(1, Ordering::Relaxed);
        lock(&core.busy).push((key, Arc::clone(run.killer())));
        Busy {
            core,
            key,
            index,
            finished: false,
        }
    }

    /// The call came back: the caller takes care of the worker.
    fn finish(mut self) {
        self.finished = true;
    }
}

impl<C: Codec, Rt: Runtime> Drop for Busy<'_, C, Rt> {
    fn drop(&mut self) {
        let mut busy = lock(&self.core.busy);
        if let Some(at) = busy.iter().position(|(key, _)| *key == self.key) {
            busy.swap_remove(at);
        }
        drop(busy);
        if !self.finished {
            lock(&self.core.vacant).push(self.index);
        }
    }
}

/// A pool's error, without the worker's internal call number.
fn without_call(error: Error) -> Error {
    match error {
        Error::WorkerDied {
            pid,
            status,
            limit,
            stderr_tail,
            ..
        } => Error::WorkerDied {
            pid,
            status,
            call: None,
            limit,
            stderr_tail,
        },
        other => other,
    }
}

/// A pool as the shutdown scope of its [`Parallel`] sees it.
pub(crate) trait ScopedPool: Send + Sync {
    /// [`PoolCore::shutdown`]: no new calls, queued ones refused, idle
    /// workers ended.
    fn close(&self);
}

/// What a [`PoolTask`] shares with its call in flight.
pub(crate) struct Control {
    /// Whether a [`PoolTask`] watches the call (its pid, kill): else no
    /// one asks for the worker, and `assign` skips its lock.
    watched: bool,
    worker: Mutex<Option<Arc<Killer>>>,
    killed: AtomicBool,
    /// Closed (never sent to) to withdraw a queued call. Made only when a
    /// call has to queue or is killed: most calls find a free worker, and
    /// making and dropping a channel cost them about 2,000 instructions,
    /// counted (a sixth of a pooled call's parent-side work).
    withdrawal: OnceLock<(async_channel::Sender<()>, async_channel::Receiver<()>)>,
}

impl Control {
    /// For a call a [`PoolTask`] watches.
    pub(crate) fn new() -> Self {
        Control {
            watched: true,
            worker: Mutex::new(None),
            killed: AtomicBool::new(false),
            withdrawal: OnceLock::new(),
        }
    }

    /// For a call no handle watches ([`Pool::call`](super::Pool::call)):
    /// nothing kills it from elsewhere or asks for its worker.
    pub(crate) fn unwatched() -> Self {
        Control {
            watched: false,
            ..Control::new()
        }
    }

    fn withdrawal(&self) -> &(async_channel::Sender<()>, async_channel::Receiver<()>) {
        self.withdrawal.get_or_init(|| async_channel::bounded(1))
    }

    fn assign(&self, killer: &Arc<Killer>) {
        if !self.watched {
            return;
        }
        *lock(&self.worker) = Some(Arc::clone(killer));
        if self.is_killed() {
            killer.kill();
        }
    }

    fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Relaxed)
    }

    fn has_worker(&self) -> bool {
        lock(&self.worker).is_some()
    }

    fn pid(&self) -> Option<i32> {
        lock(&self.worker).as_ref().and_then(|killer| killer.pid())
    }

    fn kill(&self) {
        self.killed.store(true, Ordering::Relaxed);
        match &*lock(&self.worker) {
            Some(killer) => killer.kill(),
            None => {
                // A queued call listens on this channel; one not queued
                // yet finds it closed (or `killed` set) when it queues.
                self.withdrawal().0.close();
            }
        }
    }
}

/// One pooled call: a future of its result, with a handle on the call.
///
/// From [`Pool::submit`](super::Pool::submit) and
/// [`AnyPool::spawn`](super::AnyPool::spawn). Like every future it does
/// nothing until polled: awaited (or polled with others, in a `join` or a
/// `select`) it queues for a free worker, then runs there.
///
/// - [`pid`](Self::pid): the worker running it, once it has one;
/// - [`kill`](Self::kill): kills that worker (the pool replaces it; the
///   call fails with [`Error::WorkerDied`]), or withdraws the call if it
///   is still queued ([`Error::Cancelled`]);
/// - [`cancel`](Self::cancel), or dropping the handle: a queued call leaves
///   the queue and no worker is touched; a running call's worker is killed
///   and replaced, as for a dropped [`Pool::call`](super::Pool::call).
#[must_use = "a PoolTask does nothing until awaited; dropping it cancels the call"]
pub struct PoolTask<F> {
    future: Pin<Box<F>>,
    control: Arc<Control>,
}

impl<F> PoolTask<F> {
    pub(crate) fn new(future: F, control: Arc<Control>) -> Self {
        PoolTask {
            future: Box::pin(future),
            control,
        }
    }

    /// The pid of the worker running the call: `None` while it is queued
    /// (or before the zygote reported the pid).
    pub fn pid(&self) -> Option<i32> {
        self.control.pid()
    }

    /// Whether the call is still waiting for a worker (or was not polled
    /// yet).
    pub fn is_queued(&self) -> bool {
        !self.control.has_worker()
    }

    /// Kills the worker running the call (SIGKILL): the call then fails
    /// with [`Error::WorkerDied`] and the pool replaces the worker. A call
    /// still queued is withdrawn instead and fails with [`Error::Cancelled`]
    /// (no worker is touched).
    pub fn kill(&self) {
        self.control.kill();
    }

    /// Drops the call. One still queued leaves the queue without touching
    /// any worker (returns true); one already running has its worker
    /// killed and replaced (returns false).
    pub fn cancel(self) -> bool {
        self.is_queued()
    }
}

impl<F: Future> Future for PoolTask<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.get_mut().future.as_mut().poll(cx)
    }
}

impl<F> std::fmt::Debug for PoolTask<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolTask")
            .field("queued", &self.is_queued())
            .field("pid", &self.pid())
            .finish()
    }
}
