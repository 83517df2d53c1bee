//! `Pool`: N warm workers running one function, with crash replacement,
//! timeouts that do not break the pool, recycling, and `map`.

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_lock::Semaphore;
use futures_core::Stream;
use futures_util::StreamExt;
use parallel_proto::WireEntry;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::codec::Codec;
use super::parallel::{run_entry, Parallel};
use super::run::{outcome_into, Run};
use super::runtime::{timeout, Runtime};
use super::Error;

/// How a [`Pool`] behaves: start from `PoolConfig::default()` and change
/// what you need (new options can then be added without breaking you).
///
/// ```
/// use std::time::Duration;
/// use parallel_zygote::async_core::PoolConfig;
///
/// let config = PoolConfig::default()
///     .size(4)
///     .call_timeout(Duration::from_secs(5))
///     .max_calls_per_worker(1000);
/// assert_eq!(config.size, 4);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolConfig {
    /// Workers kept alive (and calls running at once). Default: available cores.
    pub size: usize,
    /// Replace a worker after it served this many calls (a guard against
    /// leaks in long-running work). Default: unlimited.
    pub max_calls_per_worker: Option<usize>,
    /// Time limit for each call; a call over it has its worker killed and
    /// replaced, and fails with [`Error::Timeout`]. Default: none.
    pub call_timeout: Option<Duration>,
}

impl PoolConfig {
    /// Workers kept alive, and calls running at once (at least 1).
    #[must_use = "the setter returns the changed config"]
    pub fn size(mut self, workers: usize) -> Self {
        self.size = workers;
        self
    }

    /// Replaces a worker after it served `calls` calls.
    #[must_use = "the setter returns the changed config"]
    pub fn max_calls_per_worker(mut self, calls: usize) -> Self {
        self.max_calls_per_worker = Some(calls);
        self
    }

    /// Time limit for each call; over it, the worker is killed and replaced.
    #[must_use = "the setter returns the changed config"]
    pub fn call_timeout(mut self, limit: Duration) -> Self {
        self.call_timeout = Some(limit);
        self
    }
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            size: std::thread::available_parallelism().map_or(2, |n| n.get()),
            max_calls_per_worker: None,
            call_timeout: None,
        }
    }
}

struct Slot<A, R, C: Codec, Rt: Runtime> {
    run: Run<A, R, C, Rt>,
    calls: usize,
}

/// What a [`Pool`] has been through, from [`Pool::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Workers started to replace one that died, timed out or was recycled.
    pub replacements: u64,
    /// Workers found dead: killed, crashed, or exited.
    pub deaths: u64,
    /// Calls that ran over `call_timeout` (their workers were killed).
    pub timeouts: u64,
    /// Calls sent again to a fresh worker because they provably never
    /// reached the dead one (a call that may have run is never retried).
    pub retries: u64,
}

#[derive(Default)]
struct Counters {
    replacements: AtomicU64,
    deaths: AtomicU64,
    timeouts: AtomicU64,
    retries: AtomicU64,
    next_busy: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

struct Inner<A, R, C: Codec, Rt: Runtime> {
    parallel: Parallel<Rt, C>,
    task: WireEntry,
    config: PoolConfig,
    idle: Mutex<Vec<Slot<A, R, C, Rt>>>,
    /// Workers serving a call, by a key of the call's own.
    busy: Mutex<HashMap<u64, Run<A, R, C, Rt>>>,
    permits: Semaphore,
    counters: Counters,
}

/// A pool of workers running one function, from [`Pool::new`].
///
/// Dropping the last clone ends the idle workers gracefully, as dropping
/// the last [`Run`] does (see
/// [Dropping handles](crate::async_core#dropping-handles)); a call borrows
/// the pool, so none is in flight then.
///
/// Each worker serves one call at a time, so a crash takes down only the
/// call that caused it; the worker is replaced at once (the spawn is sent
/// without waiting), so the pool stays warm and usable.
pub struct Pool<A, R, C: Codec, Rt: Runtime> {
    inner: Arc<Inner<A, R, C, Rt>>,
    _types: PhantomData<fn(A) -> R>,
}

impl<A, R, C: Codec, Rt: Runtime> Clone for Pool<A, R, C, Rt> {
    fn clone(&self) -> Self {
        Pool {
            inner: Arc::clone(&self.inner),
            _types: PhantomData,
        }
    }
}

impl<A, R, C, Rt> Pool<A, R, C, Rt>
where
    Rt: Runtime,
    A: Serialize + DeserializeOwned + 'static,
    R: Serialize + DeserializeOwned + 'static,
    C: Codec,
{
    /// Starts `config.size` workers running `function`.
    ///
    /// # Errors
    /// As [`Parallel::run`]: the zygote is gone, or the call is made outside
    /// the adapter's runtime.
    pub fn new<F, Fut>(
        parallel: &Parallel<Rt, C>,
        function: F,
        config: PoolConfig,
    ) -> Result<Self, Error>
    where
        F: Fn(A) -> Fut + crate::entry::CapturesNothing,
        Fut: Future<Output = R> + 'static,
    {
        // Both capture checks, reported at the caller's line.
        #[allow(clippy::let_unit_value)]
        let () = F::ASSERT_ZERO_SIZED;
        let size = config.size.max(1);
        let task = run_entry::<F, A, Fut, R, C>(function)?;
        let mut idle = Vec::with_capacity(size);
        for _ in 0..size {
            idle.push(Slot {
                run: parallel.run_entry(task)?,
                calls: 0,
            });
        }
        Ok(Pool {
            inner: Arc::new(Inner {
                parallel: parallel.clone(),
                task,
                config: PoolConfig { size, ..config },
                idle: Mutex::new(idle),
                busy: Mutex::new(HashMap::new()),
                permits: Semaphore::new(size),
                counters: Counters::default(),
            }),
            _types: PhantomData,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> PoolConfig {
        self.inner.config
    }

    /// Pids of the idle workers (for inspection and tests); `None` for one
    /// whose pid is not known yet.
    pub fn idle_pids(&self) -> Vec<Option<i32>> {
        self.lock_idle().iter().map(|slot| slot.run.pid()).collect()
    }

    /// Pids of all the pool's workers, idle and busy, as far as known.
    pub fn pids(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .lock_idle()
            .iter()
            .filter_map(|s| s.run.pid())
            .collect();
        let busy = self.inner.busy.lock().unwrap_or_else(|e| e.into_inner());
        pids.extend(busy.values().filter_map(Run::pid));
        pids
    }

    /// Counts of replacements, deaths, timeouts and retries so far.
    pub fn stats(&self) -> PoolStats {
        let counters = &self.inner.counters;
        PoolStats {
            replacements: counters.replacements.load(Ordering::Relaxed),
            deaths: counters.deaths.load(Ordering::Relaxed),
            timeouts: counters.timeouts.load(Ordering::Relaxed),
            retries: counters.retries.load(Ordering::Relaxed),
        }
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Slot<A, R, C, Rt>>> {
        self.inner.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fresh_slot(&self) -> Result<Slot<A, R, C, Rt>, Error> {
        Ok(Slot {
            run: self.inner.parallel.run_entry(self.inner.task)?,
            calls: 0,
        })
    }

    /// A live idle worker, or a fresh one: a worker found dead is replaced
    /// before it is given a call.
    fn take_slot(&self) -> Result<Slot<A, R, C, Rt>, Error> {
        loop {
            let Some(slot) = self.lock_idle().pop() else {
                return self.fresh_slot();
            };
            if !slot.run.is_dead() {
                return Ok(slot);
            }
            bump(&self.inner.counters.deaths);
            bump(&self.inner.counters.replacements);
        }
    }

    /// Runs one call on an idle worker, waiting for one if all are busy.
    ///
    /// A call that provably never reached its worker (the worker died
    /// before the call was written whole) is sent again to a fresh worker; a
    /// call that may have run is never repeated.
    ///
    /// # Errors
    /// As [`Run::call`], plus [`Error::Timeout`] when `call_timeout` is set;
    /// a worker lost to the error is replaced at once. Errors name no call
    /// number: in a pool that number is the worker's, not the caller's.
    pub async fn call(&self, argument: A) -> Result<R, Error> {
        let args = C::encode(&argument).map_err(Error::encode::<A>)?;
        let _permit = self.inner.permits.acquire().await;
        let counters = &self.inner.counters;
        let mut retries_left = self.inner.config.size + 1;
        loop {
            let mut slot = self.take_slot()?;
            let busy = Busy::new(&self.inner.busy, counters, &slot.run);
            let call = slot.run.call_encoded(args.clone());
            let result = match self.inner.config.call_timeout {
                None => Some(call.await),
                Some(limit) => timeout::<Rt, _>(limit, call).await,
            };
            drop(busy);
            let pid = slot.run.pid();
            let (result, lost) = match result {
                Some(Ok((_, outcome))) => (
                    outcome_into::<R, C>(outcome, pid, None, std::any::type_name::<A>()),
                    false,
                ),
                Some(Err(failed)) if !failed.delivered && retries_left > 0 => {
                    retries_left -= 1;
                    bump(&counters.deaths);
                    bump(&counters.replacements);
                    bump(&counters.retries);
                    slot.run.kill();
                    continue;
                }
                Some(Err(failed)) => {
                    bump(&counters.deaths);
                    (Err(without_call(failed.error)), true)
                }
                None => {
                    // The call future was dropped: its worker is killed.
                    bump(&counters.timeouts);
                    let after = self.inner.config.call_timeout.unwrap_or_default();
                    (Err(Error::Timeout { after, pid }), true)
                }
            };
            slot.calls += 1;
            let worn_out = self
                .inner
                .config
                .max_calls_per_worker
                .is_some_and(|max| slot.calls >= max);
            let next = if lost || worn_out {
                slot.run.kill();
                bump(&counters.replacements);
                // Replace it now, so the next call finds a warm worker.
                self.fresh_slot().ok()
            } else {
                Some(slot)
            };
            if let Some(next) = next {
                self.lock_idle().push(next);
            }
            return result;
        }
    }

    /// Maps `inputs` through the pool, `size` calls at a time, yielding the
    /// results in input order. A failing input yields its error in its place;
    /// the others go on.
    pub fn map<S>(&self, inputs: S) -> impl Stream<Item = Result<R, Error>>
    where
        S: Stream<Item = A>,
    {
        let pool = self.clone();
        inputs
            .map(move |input| {
                let pool = pool.clone();
                async move { pool.call(input).await }
            })
            .buffered(self.inner.config.size)
    }

    /// Like [`map`](Self::map), yielding `(index, result)` as calls complete.
    pub fn map_unordered<S>(&self, inputs: S) -> impl Stream<Item = (usize, Result<R, Error>)>
    where
        S: Stream<Item = A>,
    {
        let pool = self.clone();
        inputs
            .enumerate()
            .map(move |(index, input)| {
                let pool = pool.clone();
                async move { (index, pool.call(input).await) }
            })
            .buffer_unordered(self.inner.config.size)
    }
}

/// A worker listed as busy for as long as this lives: also when the call's
/// future is dropped mid-call (the worker is then killed, and must not stay
/// listed).
struct Busy<'a, T> {
    workers: &'a Mutex<HashMap<u64, T>>,
    key: u64,
}

impl<'a, T: Clone> Busy<'a, T> {
    fn new(workers: &'a Mutex<HashMap<u64, T>>, counters: &Counters, worker: &T) -> Self {
        let key = counters.next_busy.fetch_add(1, Ordering::Relaxed);
        workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, worker.clone());
        Busy { workers, key }
    }
}

impl<T> Drop for Busy<'_, T> {
    fn drop(&mut self) {
        self.workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

/// A pool's error, without the worker's internal call number.
fn without_call(error: Error) -> Error {
    match error {
        Error::WorkerDied { pid, status, .. } => Error::WorkerDied {
            pid,
            status,
            call: None,
        },
        other => other,
    }
}
