//! The engine both pools share ([`Pool`](super::Pool), one function;
//! [`AnyPool`](super::AnyPool), any function): warm workers by index, the
//! queue of calls waiting for one, crash replacement, timeouts, recycling,
//! shutdown and kill, and the per-call handle [`PoolTask`].

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};

use event_listener::{Event, EventListener, IntoNotification};
use parallel_proto::channel::Outcome;
use parallel_proto::WireEntry;

use super::codec::{Codec, SplitEncoding};
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

/// For [`PoolCore::call`]: no encoder, each attempt sends a copy of the
/// encoded arguments (for a call whose future does not hold its argument).
pub(crate) const NO_ENCODER: Option<Encoder> = None;

/// A call's encoder of its arguments, as a function pointer.
type Encoder = fn() -> Result<Vec<u8>, Error>;

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
}

/// The workers that are not serving a call, and the ones that are: one
/// lock, so that taking a worker for a call (and giving it back) takes
/// one acquisition each way. Each of the `size` indices is at any time
/// idle, vacant, or claimed by one call ([`Claim`]).
struct Workers<C: Codec, Rt: Runtime> {
    idle: Vec<Slot<C, Rt>>,
    /// Indices with no worker (its replacement failed, or its call was
    /// dropped mid-call): the next call that claims one starts a worker.
    vacant: Vec<usize>,
    /// Workers serving a call (what killing and draining them needs), by
    /// pool index: one claim holds an index at a time, so listing and
    /// unlisting is a store, with no key to make or search.
    busy: Vec<Option<Arc<Killer>>>,
}

pub(crate) struct PoolCore<C: Codec, Rt: Runtime> {
    parallel: Parallel<Rt, C>,
    task: WireEntry,
    config: PoolConfig,
    options: Option<WorkerOptions>,
    workers: Mutex<Workers<C, Rt>>,
    /// Wakes calls queued for a worker. Notified only while some call is
    /// queued (`counters.queued`): a free worker costs a call no
    /// notification (a semaphore's release notified on every call, about
    /// 90 instructions, counted).
    freed: Event,
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
    /// Every worker's call channel, by pool index (at most `size`
    /// entries), set as the worker starts: closing one ends its worker
    /// gracefully (the driver then sends End).
    ends: Mutex<Vec<(usize, async_channel::WeakSender<Command>)>>,
    /// By pool index: whether its worker is serving a call (its channel is
    /// then left open at shutdown, for the call to finish). Flags, not the
    /// list of ends kept for idle workers only: a call then takes no lock
    /// here.
    serving: Box<[AtomicBool]>,
}

impl PoolSignals {
    fn new(size: usize) -> Self {
        PoolSignals {
            closed: AtomicBool::new(false),
            shutdown: async_channel::bounded(1),
            ends: Mutex::new(Vec::with_capacity(size)),
            serving: (0..size).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    /// Records the call channel of the worker just started at `index`.
    fn set_end(&self, index: usize, end: async_channel::WeakSender<Command>) {
        let mut ends = lock(&self.ends);
        match ends.iter_mut().find(|(at, _)| *at == index) {
            Some(entry) => entry.1 = end,
            None => ends.push((index, end)),
        }
    }

    fn set_serving(&self, index: usize, serving: bool) {
        if let Some(flag) = self.serving.get(index) {
            flag.store(serving, Ordering::Relaxed);
        }
    }

    /// No new calls, queued ones refused, idle workers ended.
    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.shutdown.0.close();
        for (index, end) in lock(&self.ends).drain(..) {
            let serving = self
                .serving
                .get(index)
                .is_some_and(|flag| flag.load(Ordering::Relaxed));
            if serving {
                continue;
            }
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
    /// Takes every idle worker.
    fn take_idle(&self) -> Vec<Slot<C, Rt>> {
        std::mem::take(&mut lock(&self.workers).idle)
    }

    /// Under the workers' lock: the next idle worker (listed busy at once)
    /// or, failing that, a vacant index.
    fn grab<'a>(&'a self, workers: &mut Workers<C, Rt>) -> Option<Claimed<'a, C, Rt>> {
        if let Some(slot) = workers.idle.pop() {
            workers.busy[slot.index] = Some(Arc::clone(slot.run.killer()));
            self.signals.set_serving(slot.index, true);
            let claim = Claim::new(self, slot.index);
            return Some((Some(slot), claim));
        }
        let index = workers.vacant.pop()?;
        Some((None, Claim::new(self, index)))
    }

    /// Wakes a queued call, if there is one, after a worker or an index
    /// was given back.
    fn wake_one(&self) {
        // Read after the workers' lock was released: a call that queued
        // before that release counted itself and listened under the lock.
        if self.counters.queued.load(Ordering::Relaxed) > 0 {
            self.freed.notify(1.additional());
        }
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
            workers: Mutex::new(Workers {
                idle: Vec::with_capacity(size),
                vacant: Vec::new(),
                busy: vec![None; size],
            }),
            freed: Event::new(),
            counters: Counters::default(),
            signals: Arc::new(PoolSignals::new(size)),
        };
        // Index 0 is popped first.
        for index in (0..size).rev() {
            let slot = core.fresh_slot(index)?;
            lock(&core.workers).idle.push(slot);
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
        lock(&self.workers)
            .idle
            .iter()
            .map(|slot| slot.run.pid())
            .collect()
    }

    pub(crate) fn pids(&self) -> Vec<i32> {
        let workers = lock(&self.workers);
        let idle = workers.idle.iter().filter_map(|s| s.run.pid());
        let busy = workers.busy.iter().flatten().filter_map(|k| k.pid());
        idle.chain(busy).collect()
    }

    pub(crate) fn stats(&self) -> PoolStats {
        let counters = &self.counters;
        let (idle, active) = {
            let workers = lock(&self.workers);
            let active = workers.busy.iter().flatten().count();
            (workers.idle.len(), active)
        };
        PoolStats {
            replacements: counters.replacements.load(Ordering::Relaxed),
            deaths: counters.deaths.load(Ordering::Relaxed),
            timeouts: counters.timeouts.load(Ordering::Relaxed),
            retries: counters.retries.load(Ordering::Relaxed),
            recycled_for_memory: counters.recycled_for_memory.load(Ordering::Relaxed),
            size: self.config.size,
            idle,
            active,
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
            lock(&self.workers)
                .busy
                .iter()
                .flatten()
                .filter(|killer| !killer.is_finished())
                .map(Arc::clone)
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
        for killer in lock(&self.workers).busy.iter().flatten() {
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
        self.signals.set_end(index, run.downgrade_commands());
        Ok(Slot {
            run,
            calls: 0,
            index,
        })
    }

    /// Claims a free worker, or a vacant index, if there is one: the call's
    /// usual start, without waiting (nor the state of a future that could).
    fn try_claim(&self, control: &Control) -> Result<Option<Claimed<'_, C, Rt>>, Error> {
        if self.is_shut_down() {
            return Err(Error::ShutDown);
        }
        if control.is_killed() {
            return Err(Error::Cancelled);
        }
        Ok(self.grab(&mut lock(&self.workers)))
    }

    /// Waits for a worker, or a vacant index, while all are busy (the call
    /// is queued meanwhile).
    async fn claim_queued(&self, control: &Control) -> Result<Claimed<'_, C, Rt>, Error> {
        let queued = Queued::new(&self.counters.queued);
        let mut shut = pin!(self.signals.shutdown.1.recv());
        let mut withdrawn = pin!(control.withdrawal().1.recv());
        let mut listener: Option<EventListener> = None;
        let claimed = poll_fn(|cx| {
            if shut.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(Error::ShutDown));
            }
            if withdrawn.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(Error::Cancelled));
            }
            loop {
                if let Some(waiting) = listener.as_mut() {
                    if Pin::new(waiting).poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
                let mut workers = lock(&self.workers);
                if let Some(claimed) = self.grab(&mut workers) {
                    return Poll::Ready(Ok(claimed));
                }
                // Listening under the lock: a worker given back after
                // it is released notifies this listener (see `wake_one`).
                listener = Some(self.freed.listen());
            }
        })
        .await;
        drop(queued);
        let claimed = claimed?;
        if self.is_shut_down() {
            return Err(Error::ShutDown);
        }
        Ok(claimed)
    }

    /// A live worker for `claim`: its idle worker if alive, else one
    /// started for its index. A worker found dead is replaced (same index)
    /// before it is given a call, by another idle one if there is one.
    fn live_slot<'a>(
        &'a self,
        mut slot: Option<Slot<C, Rt>>,
        mut claim: Claim<'a, C, Rt>,
    ) -> Result<Held<'a, C, Rt>, Error> {
        loop {
            match slot {
                Some(found) if !found.run.is_dead() => return Ok((found, claim)),
                Some(found) => {
                    tracing::info!(parent: found.run.killer().span(), index = found.index, reason = "found dead", "replacing pool worker");
                    bump(&self.counters.deaths);
                    bump(&self.counters.replacements);
                    drop(found);
                    (slot, claim) = claim.swap();
                }
                None => {
                    // On failure the claim's drop leaves its index vacant.
                    let fresh = self.fresh_slot(claim.index)?;
                    claim.register(fresh.run.killer());
                    return Ok((fresh, claim));
                }
            }
        }
    }

    /// Runs one call (encoded arguments) on an idle worker, waiting for one
    /// if all are busy; the outcome and the pid of the worker that ran it.
    ///
    /// A call that provably never reached its worker (the worker died
    /// before the call was written whole) is sent again to another worker;
    /// a call that may have run, or that was killed, is never repeated.
    /// The retry needs the arguments again, and the failed attempt consumed
    /// them: `encode_again` encodes them anew; without it each attempt
    /// sends a copy of `args` (a copy, an allocation, on every call).
    pub(crate) async fn call<E>(
        &self,
        mut args: Vec<u8>,
        encode_again: Option<E>,
        control: &Control,
    ) -> Result<(Outcome, Option<i32>), Error>
    where
        E: Fn() -> Result<Vec<u8>, Error>,
    {
        // A free worker: no waiting, so nothing to register for (the
        // listeners of a queued call cost more than the rest of taking one).
        let (mut found, mut claim) = match self.try_claim(control)? {
            Some(claimed) => claimed,
            None => self.claim_queued(control).await?,
        };
        let counters = &self.counters;
        let mut retries_left = self.config.size + 1;
        loop {
            let (mut slot, held) = self.live_slot(found, claim)?;
            claim = held;
            control.assign(slot.run.killer());
            let attempt = match encode_again {
                Some(_) => std::mem::take(&mut args),
                None => args.clone(),
            };
            let call = slot.run.call_encoded(SplitEncoding::whole(attempt));
            let result = match self.config.call_timeout {
                None => Some(call.await),
                Some(limit) => timeout::<Rt, _>(limit, call).await,
            };
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
                    drop(slot);
                    if let Some(encode) = &encode_again {
                        // It encoded once: it fails again only if the
                        // argument's encoding changes between calls.
                        args = encode()?;
                    }
                    (found, claim) = claim.swap();
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
                // No more work: a live worker ends as its `Run` is dropped
                // (and the claim's index is left vacant).
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
                // Replace it now, so the next call finds a warm worker (on
                // failure the claim's drop leaves the index vacant).
                if let Ok(next) = self.fresh_slot(slot.index) {
                    claim.release(next);
                }
            } else {
                claim.release(slot);
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

/// A claim, with the idle worker it took (none for a vacant index).
type Claimed<'a, C, Rt> = (Option<Slot<C, Rt>>, Claim<'a, C, Rt>);

/// A claim with its live worker.
type Held<'a, C, Rt> = (Slot<C, Rt>, Claim<'a, C, Rt>);

/// A call's hold on one pool index, from [`PoolCore::try_claim`] (or
/// `claim_queued`) until the call gives its worker back
/// ([`release`](Self::release)), its worker listed busy meanwhile.
/// Dropped otherwise (the call's future dropped mid-call, whose worker is
/// then killed; a replacement that failed; a shutdown), it leaves the
/// index vacant, unlisted, for the next call to start a worker there.
struct Claim<'a, C: Codec, Rt: Runtime> {
    core: &'a PoolCore<C, Rt>,
    index: usize,
    done: bool,
}

impl<'a, C: Codec, Rt: Runtime> Claim<'a, C, Rt> {
    fn new(core: &'a PoolCore<C, Rt>, index: usize) -> Self {
        Claim {
            core,
            index,
            done: false,
        }
    }

    /// Lists the worker just started for this index as busy.
    fn register(&mut self, killer: &Arc<Killer>) {
        lock(&self.core.workers).busy[self.index] = Some(Arc::clone(killer));
        self.core.signals.set_serving(self.index, true);
    }

    /// Takes this claim's worker off the busy list, under the lock.
    fn unlist(&self, workers: &mut Workers<C, Rt>) {
        workers.busy[self.index] = None;
        self.core.signals.set_serving(self.index, false);
    }

    /// Gives the index back with `slot` (the worker that served the call,
    /// or its replacement) idle.
    fn release(mut self, slot: Slot<C, Rt>) {
        self.done = true;
        let mut workers = lock(&self.core.workers);
        self.unlist(&mut workers);
        workers.idle.push(slot);
        drop(workers);
        self.core.wake_one();
    }

    /// Leaves this index vacant (its worker is lost) and claims the next
    /// one in the same acquisition: an idle worker if there is one, else
    /// a vacant index (this one at least). The call keeps its turn.
    fn swap(mut self) -> Claimed<'a, C, Rt> {
        self.done = true;
        let mut workers = lock(&self.core.workers);
        self.unlist(&mut workers);
        workers.vacant.push(self.index);
        let core = self.core;
        core.grab(&mut workers)
            .expect("the index just left vacant can be claimed")
    }
}

impl<C: Codec, Rt: Runtime> Drop for Claim<'_, C, Rt> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut workers = lock(&self.core.workers);
        self.unlist(&mut workers);
        workers.vacant.push(self.index);
        drop(workers);
        self.core.wake_one();
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
