//! `Pool`: N warm workers running one function, with crash replacement,
//! timeouts that do not break the pool, recycling, and `map`.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use futures_core::Stream;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::codec::Codec;
use super::parallel::{run_entry, Parallel};
use super::pool_core::{Control, PoolCore, PoolTask, WorkerOptions, NO_ENCODER};
use super::run::pooled_outcome;
use super::runtime::Runtime;
use super::Error;
use crate::SpawnOptions;

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
///     .max_calls_per_worker(1000)
///     .max_worker_rss(512 << 20);
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
    /// Replace a worker after a call once its resident memory (`VmRSS`)
    /// exceeds this many bytes (a guard against leaks and fragmentation,
    /// like Celery's `max_memory_per_child`). Checked in the parent after
    /// each successful call, with one read of `/proc/<pid>/status`.
    /// Default: unlimited.
    pub max_worker_rss: Option<u64>,
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

    /// Replaces a worker after a call once its resident memory exceeds
    /// `bytes`.
    #[must_use = "the setter returns the changed config"]
    pub fn max_worker_rss(mut self, bytes: u64) -> Self {
        self.max_worker_rss = Some(bytes);
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
            max_worker_rss: None,
        }
    }
}

/// What a pool has been through, and what it does now, from
/// [`Pool::stats`] or [`AnyPool::stats`](super::AnyPool::stats).
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
    /// Workers replaced because they exceeded
    /// [`max_worker_rss`](PoolConfig::max_worker_rss) after a call (also
    /// counted in `replacements`).
    pub recycled_for_memory: u64,
    /// Workers the pool keeps (`PoolConfig::size`).
    pub size: usize,
    /// Workers waiting for a call now.
    pub idle: usize,
    /// Calls running now (one per busy worker).
    pub active: usize,
    /// Calls waiting for a free worker now.
    pub queued: usize,
    /// Whether [`shutdown`](Pool::shutdown) or [`kill`](Pool::kill) was called.
    pub shut_down: bool,
}

/// A pool of workers running one function, from [`Pool::new`].
///
/// Dropping the last clone ends the idle workers gracefully, as dropping
/// the last [`Run`](super::Run) does (see
/// [Dropping handles](crate::async_core#dropping-handles)); a call borrows
/// the pool, so none is in flight then.
///
/// Each worker serves one call at a time, so a crash takes down only the
/// call that caused it; the worker is replaced at once (the spawn is sent
/// without waiting), so the pool stays warm and usable. Workers have
/// indices `0..size`; a replacement takes the index of the worker it
/// replaces (see [`with_worker_options`](Self::with_worker_options)).
pub struct Pool<A, R, C: Codec, Rt: Runtime> {
    core: Arc<PoolCore<C, Rt>>,
    _types: PhantomData<fn(A) -> R>,
}

impl<A, R, C: Codec, Rt: Runtime> Clone for Pool<A, R, C, Rt> {
    fn clone(&self) -> Self {
        Pool {
            core: Arc::clone(&self.core),
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
    /// Starts `config.size` workers running `function`, each with the
    /// parallel handle's [`worker_options`](Parallel::worker_options).
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
        Self::start(parallel, function, config, None)
    }

    /// As [`new`](Self::new), with worker `index` (from 0 to `size - 1`)
    /// started with `options(index)`: a name, limits, or (the usual case)
    /// one GPU or core set per worker. A worker that is replaced (it died,
    /// timed out or was recycled) gets its index's options again.
    ///
    /// ```no_run
    /// # use parallel_zygote::async_core::{Error, Parallel, Pool, PoolConfig, Runtime};
    /// # use parallel_zygote::SpawnOptions;
    /// # fn demo<R: Runtime>(parallel: &Parallel<R>) -> Result<(), Error> {
    /// let pool = Pool::with_worker_options(
    ///     parallel,
    ///     |x: u64| async move { x + 1 },
    ///     PoolConfig::default().size(4),
    ///     |index| SpawnOptions::default().name(format!("worker-{index}")),
    /// )?;
    /// # let _ = pool; Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn with_worker_options<F, Fut, O>(
        parallel: &Parallel<Rt, C>,
        function: F,
        config: PoolConfig,
        options: O,
    ) -> Result<Self, Error>
    where
        F: Fn(A) -> Fut + crate::entry::CapturesNothing,
        Fut: Future<Output = R> + 'static,
        O: Fn(usize) -> SpawnOptions + Send + Sync + 'static,
    {
        // Both capture checks, reported at the caller's line.
        #[allow(clippy::let_unit_value)]
        let () = F::ASSERT_ZERO_SIZED;
        Self::start(parallel, function, config, Some(Arc::new(options)))
    }

    fn start<F, Fut>(
        parallel: &Parallel<Rt, C>,
        function: F,
        config: PoolConfig,
        options: Option<WorkerOptions>,
    ) -> Result<Self, Error>
    where
        F: Fn(A) -> Fut + Copy + 'static,
        Fut: Future<Output = R> + 'static,
    {
        let task = run_entry::<F, A, Fut, R, C>(function)?;
        Ok(Pool {
            core: PoolCore::start(parallel, task, config, options)?,
            _types: PhantomData,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> PoolConfig {
        self.core.config()
    }

    /// Pids of the idle workers (for inspection and tests); `None` for one
    /// whose pid is not known yet.
    pub fn idle_pids(&self) -> Vec<Option<i32>> {
        self.core.idle_pids()
    }

    /// Pids of all the pool's workers, idle and busy, as far as known.
    pub fn pids(&self) -> Vec<i32> {
        self.core.pids()
    }

    /// Counts: workers (size, idle, active), calls queued, and the
    /// replacements, deaths, timeouts and retries so far.
    pub fn stats(&self) -> PoolStats {
        self.core.stats()
    }

    /// Stops taking work: calls made from now on, and calls still queued,
    /// fail with [`Error::ShutDown`]; running calls finish, then their
    /// workers exit; idle workers exit now.
    pub fn shutdown(&self) {
        self.core.shutdown();
    }

    /// Shuts down with a bounded drain: stops taking work at once (as
    /// [`shutdown`](Self::shutdown)), lets the calls in flight finish
    /// within `grace`, then sends SIGTERM to the workers still busy, and
    /// SIGKILL to those still alive a second `grace` later. Resolves when
    /// every call in flight is over (or after the third `grace`). A call
    /// ended this way fails with [`Error::WorkerDied`]
    /// (its [`signal`](Error::signal) is 15 or 9).
    ///
    /// The calls must be awaited meanwhile (by other tasks, or joined with
    /// this future) for their workers to be freed. To run it on the
    /// parent's SIGTERM, see [`Parallel::shutdown`].
    pub fn shutdown_gracefully(&self, grace: Duration) -> impl Future<Output = ()> {
        let core = Arc::clone(&self.core);
        async move { core.shutdown_gracefully(grace).await }
    }

    /// Shuts down and kills every worker at once (SIGKILL): running calls
    /// fail with [`Error::WorkerDied`].
    pub fn kill(&self) {
        self.core.kill();
    }

    /// Whether [`shutdown`](Self::shutdown) or [`kill`](Self::kill) was called.
    pub fn is_shut_down(&self) -> bool {
        self.core.is_shut_down()
    }

    /// One call with a handle on it ([`PoolTask`]: its worker's pid, kill,
    /// cancel while queued); await the handle for the result.
    ///
    /// # Errors
    /// The handle resolves as [`call`](Self::call) does, plus
    /// [`Error::Cancelled`] for a call withdrawn by [`PoolTask::kill`].
    pub fn submit(&self, argument: A) -> PoolTask<impl Future<Output = Result<R, Error>>> {
        let encoded = super::codec::encode_value::<C, A>(&argument).map_err(Error::encode::<A>);
        let control = Arc::new(Control::new());
        let core = Arc::clone(&self.core);
        let mine = Arc::clone(&control);
        PoolTask::new(
            async move {
                let (outcome, pid) = core.call(encoded?, NO_ENCODER, &mine).await?;
                pooled_outcome::<A, R, C>(outcome, pid)
            },
            control,
        )
    }

    /// Runs one call on an idle worker, waiting for one if all are busy.
    ///
    /// A call that provably never reached its worker (the worker died
    /// before the call was written whole) is sent again to a fresh worker; a
    /// call that may have run is never repeated.
    ///
    /// # Errors
    /// As [`Run::call`](super::Run::call), plus [`Error::Timeout`] when
    /// `call_timeout` is set and [`Error::ShutDown`] after
    /// [`shutdown`](Self::shutdown); a worker lost to the error is replaced
    /// at once. Errors name no call number: in a pool that number is the
    /// worker's, not the caller's.
    pub async fn call(&self, argument: A) -> Result<R, Error> {
        // The argument stays with the call (as it did as a parameter): a
        // retry encodes it again rather than every call keeping a copy.
        let encode =
            move || super::codec::encode_value::<C, A>(&argument).map_err(Error::encode::<A>);
        let args = encode()?;
        let control = Control::unwatched();
        let (outcome, pid) = self.core.call(args, Some(encode), &control).await?;
        pooled_outcome::<A, R, C>(outcome, pid)
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
            .buffered(self.core.config().size)
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
            .buffer_unordered(self.core.config().size)
    }
}
