//! `Pool`: N warm workers running one function, with crash replacement,
//! timeouts that do not break the pool, recycling, and `map`.

use std::future::Future;
use std::marker::PhantomData;
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
use super::run::Run;
use super::runtime::Runtime;
use super::Error;

/// How a [`Pool`] behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

struct Inner<A, R, C: Codec, Rt: Runtime> {
    parallel: Parallel<Rt, C>,
    task: WireEntry,
    config: PoolConfig,
    idle: Mutex<Vec<Slot<A, R, C, Rt>>>,
    permits: Semaphore,
}

/// A pool of workers running one function, from [`Pool::new`].
///
/// Dropping the last clone ends the idle workers.
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
        F: Fn(A) -> Fut + Copy + 'static,
        Fut: Future<Output = R> + 'static,
    {
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
                permits: Semaphore::new(size),
            }),
            _types: PhantomData,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> PoolConfig {
        self.inner.config
    }

    /// Pids of the idle workers (for inspection and tests).
    pub fn idle_pids(&self) -> Vec<Option<i32>> {
        self.lock_idle().iter().map(|slot| slot.run.pid()).collect()
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

    /// Runs one call on an idle worker, waiting for one if all are busy.
    ///
    /// # Errors
    /// As [`Run::call`], plus [`Error::Timeout`] when `call_timeout` is set;
    /// a worker lost to the error is replaced at once.
    pub async fn call(&self, argument: A) -> Result<R, Error> {
        let _permit = self.inner.permits.acquire().await;
        let slot = match self.lock_idle().pop() {
            Some(slot) if !slot.run.is_closed() => slot,
            _ => self.fresh_slot()?,
        };
        let result = match self.inner.config.call_timeout {
            Some(limit) => slot.run.call_timeout(argument, limit).await,
            None => slot.run.call(argument).await,
        };
        let worker_lost = matches!(
            result,
            Err(Error::WorkerDied { .. }
                | Error::Timeout { .. }
                | Error::Io(_)
                | Error::Protocol(_)
                | Error::Closed)
        );
        let mut slot = slot;
        slot.calls += 1;
        let worn_out = self
            .inner
            .config
            .max_calls_per_worker
            .is_some_and(|max| slot.calls >= max);
        let next = if worker_lost || worn_out {
            if worker_lost {
                slot.run.kill();
            }
            // Replace it now, so the next call finds a warm worker.
            self.fresh_slot().ok()
        } else {
            Some(slot)
        };
        if let Some(next) = next {
            self.lock_idle().push(next);
        }
        result
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
