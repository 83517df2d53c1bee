//! `AnyPool`: N warm workers, each call naming the function it runs
//! (Python's `executor.submit(fn, *args)`).

use std::future::Future;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::codec::Codec;
use super::parallel::Parallel;
use super::pool::{PoolConfig, PoolStats};
use super::pool_core::{Control, PoolCore, PoolTask, WorkerOptions, NO_ENCODER};
use super::run::pooled_outcome;
use super::runtime::Runtime;
use super::worker::{self, AnyCall};
use super::Error;
use crate::SpawnOptions;

/// A pool of warm workers that run any function, from [`AnyPool::new`].
///
/// Where a [`Pool`](super::Pool) is bound to one function, each
/// [`spawn`](Self::spawn) here names its own: functions are sent as sealed
/// entries (as for [`Parallel::spawn`]), so a warm worker can run any
/// function of this program, with any argument and result types, one call
/// at a time. The worker checks the entry before it runs anything.
/// Replacement, timeouts, recycling, per-worker options, shutdown and the
/// per-call [`PoolTask`] work as for a [`Pool`](super::Pool).
///
/// ```no_run
/// # use parallel_zygote::async_core::{AnyPool, Error, Parallel, PoolConfig, Runtime};
/// # async fn demo<R: Runtime>(parallel: &Parallel<R>) -> Result<(), Error> {
/// let pool = AnyPool::new(parallel, PoolConfig::default().size(2))?;
/// let sum = pool.spawn(|(a, b): (u64, u64)| async move { a + b }, (2, 3));
/// let text = pool.spawn(|n: u32| async move { "x".repeat(n as usize) }, 3);
/// assert_eq!(sum.await?, 5);
/// assert_eq!(text.await?, "xxx");
/// # Ok(()) }
/// ```
pub struct AnyPool<C: Codec, Rt: Runtime> {
    core: Arc<PoolCore<C, Rt>>,
}

impl<C: Codec, Rt: Runtime> Clone for AnyPool<C, Rt> {
    fn clone(&self) -> Self {
        AnyPool {
            core: Arc::clone(&self.core),
        }
    }
}

impl<C: Codec, Rt: Runtime> std::fmt::Debug for AnyPool<C, Rt> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnyPool")
            .field("stats", &self.stats())
            .finish()
    }
}

impl<C: Codec, Rt: Runtime> AnyPool<C, Rt> {
    /// Starts `config.size` workers, each with the parallel handle's
    /// [`worker_options`](Parallel::worker_options).
    ///
    /// # Errors
    /// As [`Parallel::run`]: the zygote is gone, or the call is made outside
    /// the adapter's runtime.
    pub fn new(parallel: &Parallel<Rt, C>, config: PoolConfig) -> Result<Self, Error> {
        Self::start(parallel, config, None)
    }

    /// As [`new`](Self::new), worker `index` started with `options(index)`,
    /// also when it is replaced (see
    /// [`Pool::with_worker_options`](super::Pool::with_worker_options)).
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn with_worker_options<O>(
        parallel: &Parallel<Rt, C>,
        config: PoolConfig,
        options: O,
    ) -> Result<Self, Error>
    where
        O: Fn(usize) -> SpawnOptions + Send + Sync + 'static,
    {
        Self::start(parallel, config, Some(Arc::new(options)))
    }

    fn start(
        parallel: &Parallel<Rt, C>,
        config: PoolConfig,
        options: Option<WorkerOptions>,
    ) -> Result<Self, Error> {
        let task = worker::task_entry(worker::any_task_loop)?;
        Ok(AnyPool {
            core: PoolCore::start(parallel, task, config, options)?,
        })
    }

    /// Runs `function(argument)` on a warm worker, waiting for a free one;
    /// await the returned [`PoolTask`] for the result. `function` must
    /// capture nothing, as for [`Parallel::spawn`].
    ///
    /// # Errors
    /// The task resolves as [`Pool::call`](super::Pool::call) does, plus
    /// [`Error::Cancelled`] for a call withdrawn by [`PoolTask::kill`].
    pub fn spawn<F, A, Fut, T>(
        &self,
        function: F,
        argument: A,
    ) -> PoolTask<impl Future<Output = Result<T, Error>>>
    where
        F: Fn(A) -> Fut + crate::entry::CapturesNothing,
        A: Serialize + DeserializeOwned + 'static,
        Fut: Future<Output = T> + 'static,
        T: Serialize + DeserializeOwned + 'static,
    {
        // Both capture checks, reported at the caller's line.
        #[allow(clippy::let_unit_value)]
        let () = F::ASSERT_ZERO_SIZED;
        let call = (|| {
            let entry = worker::call_entry::<F, A, Fut, T, C>(function)?;
            let args = super::codec::encode_value::<C, A>(&argument).map_err(Error::encode::<A>)?;
            Ok::<_, Error>(
                postcard::to_stdvec(&AnyCall { entry, args }).expect("postcard encodes a call"),
            )
        })();
        let control = Arc::new(Control::new());
        let core = Arc::clone(&self.core);
        let mine = Arc::clone(&control);
        PoolTask::new(
            async move {
                let (outcome, pid) = core.call(call?, NO_ENCODER, &mine).await?;
                pooled_outcome::<A, T, C>(outcome, pid)
            },
            control,
        )
    }

    /// The configuration in force.
    pub fn config(&self) -> PoolConfig {
        self.core.config()
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

    /// Stops taking work (see [`Pool::shutdown`](super::Pool::shutdown)).
    pub fn shutdown(&self) {
        self.core.shutdown();
    }

    /// Stops taking work and drains the calls in flight within `grace`,
    /// then SIGTERM, then SIGKILL (see
    /// [`Pool::shutdown_gracefully`](super::Pool::shutdown_gracefully)).
    pub fn shutdown_gracefully(&self, grace: std::time::Duration) -> impl Future<Output = ()> {
        let core = Arc::clone(&self.core);
        async move { core.shutdown_gracefully(grace).await }
    }

    /// Shuts down and kills every worker (see [`Pool::kill`](super::Pool::kill)).
    pub fn kill(&self) {
        self.core.kill();
    }

    /// Whether [`shutdown`](Self::shutdown) or [`kill`](Self::kill) was called.
    pub fn is_shut_down(&self) -> bool {
        self.core.is_shut_down()
    }
}
