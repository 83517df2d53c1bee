//! `Parallel`: the handle users hold, bound to a started zygote.

use std::future::Future;
use std::marker::PhantomData;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use parallel_proto::channel::ParentChannel;
use parallel_proto::{Limits, WireEntry};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::codec::{Codec, Postcard, SplitEncoding};
use super::conn::Conn;
use super::driver::{launch, launch_one_shot, Link, OneShot};
use super::kill::Killer;
use super::messages::{MessageSender, MessageStream};
use super::output::{Captured, Output, OutputConfig};
use super::pool_core::ScopedPool;
use super::process::Process;
use super::run::{Run, Values};
use super::runtime::{Runtime, WorkerRuntime};
use super::spawn::JoinHandle;
use super::warm::{Registered, Taken, WarmConfig, WarmSet};
use super::worker;
use super::Error;
use crate::{SpawnOptions, Zygote};

/// The runtime workers build, chosen by value, sent in every Start frame.
#[derive(Clone)]
struct WorkerChoice {
    /// The boot entry of that runtime's workers.
    boot: fn() -> Result<WireEntry, crate::Error>,
    /// The boot entry of pre-forked workers that build the runtime with its
    /// default options before their Start frame arrives: for the adapter's
    /// own worker runtime with its default options only.
    warm_boot: Option<fn() -> Result<WireEntry, crate::Error>>,
    /// Its options, encoded.
    options: Arc<[u8]>,
    name: &'static str,
}

impl WorkerChoice {
    fn of<W: WorkerRuntime>(runtime: &W) -> Self {
        WorkerChoice {
            boot: worker::boot_entry::<W>,
            warm_boot: None,
            options: postcard::to_stdvec(runtime)
                .expect("postcard encodes runtime options")
                .into(),
            name: W::NAME,
        }
    }

    /// The default runtime's default options, whose pre-forked workers
    /// build their runtime ahead.
    fn default_of<W: WorkerRuntime + Default>() -> Self {
        WorkerChoice {
            warm_boot: Some(worker::warm_boot_entry::<W>),
            ..WorkerChoice::of(&W::default())
        }
    }
}

/// The entry point: spawns workers from a zygote and runs functions in them.
///
/// `R` is the parent's runtime (each adapter names it: `parallel_tokio::Parallel`
/// is `Parallel<Tokio>`). Cheap to clone, usable from many tasks at once. `C`
/// is the [`Codec`] for arguments, results and messages ([`Postcard`] unless
/// you pick another with [`with_codec`](Self::with_codec)).
pub struct Parallel<R: Runtime, C: Codec = Postcard> {
    zygote: Zygote,
    worker: WorkerChoice,
    options: SpawnOptions,
    /// Whether workers capture a backtrace when they panic.
    backtraces: bool,
    /// Where workers' stdout and stderr go; tracing forwarding.
    output: OutputConfig,
    /// The shutdown scope this handle and its clones share.
    scope: Arc<Scope>,
    /// Pre-forked workers, if asked for ([`Parallel::warm_workers`]).
    warm: Option<Arc<WarmSet>>,
    _types: PhantomData<fn() -> (R, C)>,
}

/// What the clones of one handle share: whether [`Parallel::shutdown`] was
/// called, and the workers they started (weakly: a finished worker's
/// bookkeeping is freed as usual).
#[derive(Default)]
struct Scope {
    closed: AtomicBool,
    workers: Mutex<Tracked>,
    /// The pools made from the scope's handles (weakly, as the workers).
    pools: Mutex<Vec<Weak<dyn ScopedPool>>>,
}

/// The workers a scope started, and the length at which the finished ones
/// are forgotten next: twice what was live after the last pruning, so a
/// spawn costs amortized O(1) however many workers live.
#[derive(Default)]
struct Tracked {
    workers: Vec<Weak<Killer>>,
    prune_at: usize,
}

impl Tracked {
    fn prune(&mut self) {
        self.workers
            .retain(|w| w.upgrade().is_some_and(|k| !k.is_finished()));
        self.prune_at = (2 * self.workers.len()).max(64);
    }
}

impl Scope {
    fn track(&self, killer: &Arc<Killer>) {
        let mut tracked = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        if tracked.workers.len() >= tracked.prune_at.max(64) {
            tracked.prune();
        }
        tracked.workers.push(Arc::downgrade(killer));
    }

    fn track_pool(&self, pool: Weak<dyn ScopedPool>) {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.retain(|pool| pool.strong_count() > 0);
        pools.push(pool);
    }

    /// Shuts every live pool of the scope down.
    fn close_pools(&self) {
        let pools: Vec<Arc<dyn ScopedPool>> = self
            .pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .filter_map(|pool| pool.upgrade())
            .collect();
        for pool in pools {
            pool.close();
        }
    }

    fn live(&self) -> Vec<Arc<Killer>> {
        let mut tracked = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        tracked.prune();
        tracked.workers.iter().filter_map(Weak::upgrade).collect()
    }
}

impl<R: Runtime, C: Codec> Clone for Parallel<R, C> {
    fn clone(&self) -> Self {
        Parallel {
            zygote: self.zygote.clone(),
            worker: self.worker.clone(),
            options: self.options.clone(),
            backtraces: self.backtraces,
            output: self.output.clone(),
            scope: Arc::clone(&self.scope),
            warm: self.warm.clone(),
            _types: PhantomData,
        }
    }
}

impl<R: Runtime, C: Codec> std::fmt::Debug for Parallel<R, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parallel")
            .field("zygote", &self.zygote)
            .field("runtime", &R::NAME)
            .field("worker_runtime", &self.worker.name)
            .field("codec", &std::any::type_name::<C>())
            .finish()
    }
}

impl<R: Runtime> Parallel<R, Postcard> {
    /// A handle on `zygote`, with postcard as the codec and workers on the
    /// adapter's default worker runtime.
    pub fn new(zygote: Zygote) -> Self {
        Parallel {
            zygote,
            worker: WorkerChoice::default_of::<R::Worker>(),
            options: SpawnOptions::default(),
            backtraces: true,
            output: OutputConfig::default(),
            scope: Arc::default(),
            warm: None,
            _types: PhantomData,
        }
    }
}

impl<R: Runtime, C: Codec> Parallel<R, C> {
    /// The zygote behind this handle.
    pub fn zygote(&self) -> &Zygote {
        &self.zygote
    }

    /// The same zygote and settings in a shutdown scope of its own:
    /// [`shutdown`](Self::shutdown) on the returned handle (or its clones)
    /// ends only the workers started through it, and calling it on `self`
    /// leaves the new handle working. Every other way to derive a handle
    /// (`clone`, `with_codec`, the setters, `snapshot`) shares the scope.
    #[must_use = "scope returns a new handle"]
    pub fn scope(&self) -> Self {
        Parallel {
            scope: Arc::default(),
            ..self.clone()
        }
    }

    /// Whether [`shutdown`](Self::shutdown) was called on this handle's scope.
    pub fn is_shut_down(&self) -> bool {
        self.scope.closed.load(Ordering::Relaxed)
    }

    /// Shuts down this handle and every clone of it (its scope, see
    /// [`scope`](Self::scope)): from now on `spawn`, `run`, `process`,
    /// pools made from it and their calls fail with [`Error::ShutDown`].
    /// Its pools are shut down as by [`Pool::shutdown`](super::Pool::shutdown)
    /// (their `is_shut_down` and stats say so, queued calls are refused,
    /// idle workers exit at once).
    /// The workers it started are drained: each may finish and exit by
    /// itself within `grace`; those still running then get SIGTERM, and
    /// those still running a second `grace` later SIGKILL. Resolves once
    /// every one has exited (or, after the SIGKILL, once the third `grace`
    /// passed).
    ///
    /// A worker exits by itself when its task returns: a `spawn` once its
    /// function returns, a `run` or pool worker once every handle on it is
    /// dropped (a [`Run`] you still hold keeps its worker alive, so it will
    /// be terminated), a `process` once its function returns. A call ended
    /// by SIGTERM fails with [`Error::WorkerDied`] whose
    /// [`signal`](Error::signal) is 15 (unless the function handles SIGTERM).
    ///
    /// # Wiring it to the parent's SIGTERM
    ///
    /// Await the runtime's own signal stream in a task of the parent, then
    /// call `shutdown` and exit: each adapter's crate docs show it for its
    /// runtime. Register the handler after `init()` (the zygote starts
    /// first), in the parent only.
    pub async fn shutdown(&self, grace: Duration) {
        self.scope.closed.store(true, Ordering::Relaxed);
        // Its pools refuse calls from now on (queued ones get
        // `Error::ShutDown`, `is_shut_down` says so) and let their idle
        // workers exit at once rather than at the SIGTERM.
        self.scope.close_pools();
        if let Some(warm) = &self.warm {
            warm.close();
        }
        // A spawn's driver that its handle polls in place (see `Held`)
        // goes to its task: a handle nobody awaits must not hold it up.
        for killer in self.scope.live() {
            killer.release();
        }
        tracing::info!(?grace, "shutting down: draining workers");
        if settle::<R>(&self.scope, grace).await {
            return;
        }
        for killer in self.scope.live() {
            killer.signal(libc::SIGTERM);
        }
        if settle::<R>(&self.scope, grace).await {
            return;
        }
        for killer in self.scope.live() {
            killer.kill();
        }
        settle::<R>(&self.scope, grace).await;
    }

    /// The same zygote with another codec (the original library's `Io.define`).
    pub fn with_codec<D: Codec>(&self) -> Parallel<R, D> {
        Parallel {
            zygote: self.zygote.clone(),
            worker: self.worker.clone(),
            options: self.options.clone(),
            backtraces: self.backtraces,
            output: self.output.clone(),
            scope: Arc::clone(&self.scope),
            warm: self.warm.clone(),
            _types: PhantomData,
        }
    }

    /// The runtime each new worker builds after its fork, with its options:
    /// the adapter's own by default, or another adapter's (a smol parent
    /// may run tokio workers; the wire is the same).
    #[must_use = "worker_runtime returns a new handle; the old one is unchanged"]
    pub fn worker_runtime<W: WorkerRuntime>(mut self, runtime: W) -> Self {
        self.worker = WorkerChoice::of(&runtime);
        self.warm = None;
        self
    }

    /// Name and resource limits for each new worker.
    #[must_use = "worker_options returns a new handle; the old one is unchanged"]
    pub fn worker_options(mut self, options: SpawnOptions) -> Self {
        self.options = options;
        self.warm = None;
        self
    }

    /// Keeps pre-forked workers ready for this handle and its clones, so
    /// that a spawn (`spawn`, `run`, `process`, a pool's workers) costs about
    /// a call's round trip instead of a fork: the worker is forked before its
    /// task is known; on the adapter's own worker runtime with its default
    /// options it also builds that runtime before its Start frame arrives.
    /// Forks `config.max` workers now; each spawn that takes one
    /// refills the set to `config.min` after `config.min_refill_delay` (1 ms
    /// unless set) and to `config.max` after `config.refill_delay` (100 ms).
    /// A worker that died while it waited is dropped, never used.
    ///
    /// The refill to `min` waits that millisecond so that its fork and the
    /// new worker's boot do not run while the spawn that took a worker
    /// does: on a machine with few idle cores the two compete (on 2 vCPUs a
    /// warm spawn refilled at once was 1.5-2× slower, at times slower than
    /// a cold spawn). Spawns coming faster than that drain the set, and
    /// those that find it empty fork as without this setting. See
    /// [`WarmConfig::min_refill_delay`] and BENCHMARKS.md for the figures.
    ///
    /// Off by default: every waiting worker is a live process (its pages
    /// shared copy-on-write with the zygote, plus a socket) that a program
    /// which spawns rarely would hold for nothing. Call it after
    /// [`worker_runtime`](Self::worker_runtime),
    /// [`worker_options`](Self::worker_options) and
    /// [`snapshot`](Self::snapshot), which start from no pre-forked workers
    /// (the set's workers were forked with the old settings). A `max` of 0
    /// turns it off. The workers are killed when the last clone of the
    /// handle is dropped, or at [`shutdown`](Self::shutdown).
    ///
    /// ```no_run
    /// # async fn demo<R: parallel_zygote::async_core::Runtime>(parallel: parallel_zygote::async_core::Parallel<R>) -> Result<(), parallel_zygote::async_core::Error> {
    /// use parallel_zygote::async_core::WarmConfig;
    /// let parallel = parallel.warm_workers(WarmConfig::new(2, 4))?;
    /// // Takes a pre-forked worker: no fork on this path.
    /// assert_eq!(parallel.spawn(|x: u64| async move { x + 1 }, 41).await?, 42);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Zygote`] when this build cannot name the workers' boot
    /// function. A zygote that refuses the forks is not an error here: the
    /// spawns then fork as without this setting, and report why.
    pub fn warm_workers(mut self, config: WarmConfig) -> Result<Self, Error> {
        self.warm = if config.max == 0 {
            None
        } else {
            // With the default options the workers build their runtime
            // while they wait; with others they wait before building it.
            let boot = match self.worker.warm_boot {
                Some(warm_boot) => warm_boot()?,
                None => (self.worker.boot)()?,
            };
            Some(WarmSet::new(
                config,
                self.zygote.clone(),
                boot,
                self.options.clone(),
            ))
        };
        Ok(self)
    }

    /// How many pre-forked workers wait for a spawn now (see
    /// [`warm_workers`](Self::warm_workers)); 0 when there are none. Those
    /// known to have died while they waited are dropped here, not counted.
    pub fn warm_idle(&self) -> usize {
        self.warm.as_ref().map_or(0, |warm| warm.waiting())
    }

    /// Whether a worker whose function panics captures a backtrace for the
    /// [`PanicReport`](super::PanicReport) (default: yes, whatever
    /// `RUST_BACKTRACE` says). Capturing costs time at each panic only;
    /// turn it off for functions that panic often on purpose.
    ///
    /// ```no_run
    /// # fn demo<R: parallel_zygote::async_core::Runtime>(parallel: parallel_zygote::async_core::Parallel<R>) {
    /// let quiet = parallel.capture_backtraces(false);
    /// # let _ = quiet; }
    /// ```
    #[must_use = "capture_backtraces returns a new handle; the old one is unchanged"]
    pub fn capture_backtraces(mut self, capture: bool) -> Self {
        self.backtraces = capture;
        self
    }

    /// Whether workers capture a backtrace when they panic.
    pub fn captures_backtraces(&self) -> bool {
        self.backtraces
    }

    /// Where the stdout and stderr of each new worker go: inherited (the
    /// default), discarded, or captured line by line and attributed to the
    /// worker (see [`Output`]). For one spawn, call it on a derived handle:
    /// `parallel.clone().worker_output(Output::Null).spawn(..)`. A pool's
    /// workers take the setting of the handle the pool is made from.
    #[must_use = "worker_output returns a new handle; the old one is unchanged"]
    pub fn worker_output(mut self, output: Output) -> Self {
        self.output.stdout = output.clone();
        self.output.stderr = output;
        self
    }

    /// Where each new worker's stdout goes (see [`worker_output`](Self::worker_output)).
    #[must_use = "worker_stdout returns a new handle; the old one is unchanged"]
    pub fn worker_stdout(mut self, output: Output) -> Self {
        self.output.stdout = output;
        self
    }

    /// Where each new worker's stderr goes (see [`worker_output`](Self::worker_output)).
    #[must_use = "worker_stderr returns a new handle; the old one is unchanged"]
    pub fn worker_stderr(mut self, output: Output) -> Self {
        self.output.stderr = output;
        self
    }

    /// Forwards the `tracing` events of each new worker, at `max_level` and
    /// above (`None`, the default: none), to this process: each is
    /// re-emitted here with target `parallel::worker::log` inside the
    /// worker's `worker` span, at its own level, with the fields `pid`,
    /// `worker_target` (the target in the worker), `spans` (the worker's
    /// spans it happened in, `outer:inner`), `fields` (its other fields as
    /// `name=value` text) and its message. So one subscriber, here, sees the
    /// whole tree.
    ///
    /// In the worker, the forwarder is the default subscriber of the thread
    /// that runs the task, for as long as it runs: a subscriber the function
    /// sets for its own scope (`tracing::subscriber::with_default`,
    /// `set_default`) takes precedence there, and a global one it installs
    /// (`set_global_default`, `tracing_subscriber::fmt().init()`) only
    /// sees other threads (a multi-threaded worker runtime's). The worker
    /// never waits for the parent: it buffers up to
    /// [`MAX_TRACING_BUFFER`](super::MAX_TRACING_BUFFER) bytes of events,
    /// drops what does not fit, and the parent warns with the count.
    ///
    /// ```no_run
    /// # fn demo<R: parallel_zygote::async_core::Runtime>(parallel: parallel_zygote::async_core::Parallel<R>) {
    /// let traced = parallel.forward_worker_tracing(Some(tracing::Level::INFO));
    /// let handle = traced.spawn(|n: u32| async move { tracing::info!(n, "working"); n }, 1);
    /// # drop(handle); }
    /// ```
    #[must_use = "forward_worker_tracing returns a new handle; the old one is unchanged"]
    pub fn forward_worker_tracing(mut self, max_level: Option<tracing::Level>) -> Self {
        self.output.tracing = max_level;
        self
    }

    /// The spawn options each new worker gets.
    pub fn spawn_options(&self) -> &SpawnOptions {
        &self.options
    }

    /// A derived snapshot: a child zygote that runs `init(args)` first; the
    /// workers of the returned handle share what `init` built, copy-on-write.
    ///
    /// # Errors
    /// [`Error::Zygote`] when the zygote is gone, or `init` panicked, exited,
    /// or left threads behind (a snapshot must stay single-threaded to fork).
    pub fn snapshot<F>(&self, init: F, args: Vec<u8>) -> Result<Parallel<R, C>, Error>
    where
        F: Fn(Vec<u8>) + crate::entry::CapturesNothing,
    {
        // Both capture checks, reported at the caller's line.
        #[allow(clippy::let_unit_value)]
        let () = F::ASSERT_ZERO_SIZED;
        Ok(Parallel {
            zygote: self.zygote.snapshot(init, args)?,
            worker: self.worker.clone(),
            options: self.options.clone(),
            backtraces: self.backtraces,
            output: self.output.clone(),
            scope: Arc::clone(&self.scope),
            // Forked by another zygote: the snapshot's workers are not these.
            warm: None,
            _types: PhantomData,
        })
    }

    /// Runs `function(argument)` in a new worker process, like a runtime's
    /// spawn but in another process. Spawning never blocks on the fork: the
    /// request and the task go out at once.
    ///
    /// `function` must capture nothing; pass data as the argument. A closure
    /// capturing a non-`Copy` value is rejected by `cargo check` (E0277, at
    /// the closure); one capturing only `Copy` values, such as a `u64`, only
    /// by `cargo build` (E0080). See
    /// [`entry`](crate::entry#functions-sent-to-a-worker-must-capture-nothing). Must be called within the adapter's runtime.
    /// Errors (no runtime, the zygote gone, an argument that does not encode)
    /// come out of the handle when it is awaited.
    pub fn spawn<F, A, Fut, T>(&self, function: F, argument: A) -> JoinHandle<T, C, R>
    where
        F: Fn(A) -> Fut + crate::entry::CapturesNothing,
        A: Serialize + DeserializeOwned + 'static,
        Fut: Future<Output = T> + 'static,
        T: Serialize + DeserializeOwned + 'static,
    {
        // Both capture checks, reported at the caller's line.
        #[allow(clippy::let_unit_value)]
        let () = F::ASSERT_ZERO_SIZED;
        let started = (|| {
            let task = worker::task_entry(move |context| {
                worker::spawn_task::<F, A, Fut, T, C>(function, context)
            })?;
            let args =
                super::codec::encode_owned_split::<C, A>(argument).map_err(Error::encode::<A>)?;
            self.launch_one_shot(task, args)
        })();
        JoinHandle::new(
            started,
            std::any::type_name::<A>(),
            super::codec::decode_owned_value::<C, T>,
        )
    }

    /// Starts a persistent worker running `function`; every
    /// [`Run::call`] runs it once more in that worker. Concurrent calls are
    /// pipelined and run concurrently in the worker.
    ///
    /// # Errors
    /// [`Error::NoRuntime`] outside the adapter's runtime, [`Error::Zygote`]
    /// when the zygote is gone.
    pub fn run<F, A, Fut, T>(&self, function: F) -> Result<Run<A, T, C, R>, Error>
    where
        F: Fn(A) -> Fut + crate::entry::CapturesNothing,
        A: Serialize + DeserializeOwned + 'static,
        Fut: Future<Output = T> + 'static,
        T: Serialize + DeserializeOwned + 'static,
    {
        // Both capture checks, reported at the caller's line.
        #[allow(clippy::let_unit_value)]
        let () = F::ASSERT_ZERO_SIZED;
        let task = run_entry::<F, A, Fut, T, C>(function)?;
        self.run_entry(task)
    }

    pub(crate) fn run_entry<A, T>(&self, task: WireEntry) -> Result<Run<A, T, C, R>, Error>
    where
        A: Serialize + 'static,
        T: DeserializeOwned + 'static,
    {
        Ok(Run::new(
            self.launch(task, SplitEncoding::default())?,
            Values::of::<C>(),
        ))
    }

    /// Starts a worker running `function` with a typed, bidirectional channel:
    /// the parent gets a sender of `In` and a stream of `Out`, the worker the
    /// mirror pair. Dropping every sender ends the worker's input stream; the
    /// worker returning ends the parent's stream.
    ///
    /// # Errors
    /// As [`run`](Self::run).
    pub fn process<F, In, Out, Fut>(&self, function: F) -> Result<Process<In, Out, C>, Error>
    where
        F: Fn(MessageStream<In, C>, MessageSender<Out, C>) -> Fut + crate::entry::CapturesNothing,
        In: Serialize + DeserializeOwned + Send + 'static,
        Out: Serialize + DeserializeOwned + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        // Both capture checks, reported at the caller's line.
        #[allow(clippy::let_unit_value)]
        let () = F::ASSERT_ZERO_SIZED;
        let task = worker::task_entry(move |context| {
            worker::process_task::<F, In, Out, Fut, C>(function, context)
        })?;
        Ok(Process::new(self.launch(task, SplitEncoding::default())?))
    }

    /// Puts a pool made from this handle in its shutdown scope.
    pub(crate) fn track_pool(&self, pool: Weak<dyn ScopedPool>) {
        if self.is_shut_down() {
            if let Some(pool) = pool.upgrade() {
                pool.close();
            }
            return;
        }
        self.scope.track_pool(pool);
    }

    /// Sends the spawn request and the task in one go (zero round trips) and
    /// starts the driver that owns the channel.
    fn launch(&self, task: WireEntry, args: SplitEncoding) -> Result<Link<R>, Error> {
        let (conn, pending, span, captured) = self.connect(task, args, Ending::ByDriver)?;
        let link = launch::<R>(conn, pending, span, captured);
        self.started(&link.killer);
        Ok(link)
    }

    /// [`launch`](Self::launch) for a `spawn`: End goes with Start, and the
    /// driver gets no channels from handles (a `JoinHandle` has none).
    fn launch_one_shot(&self, task: WireEntry, args: SplitEncoding) -> Result<OneShot<R>, Error> {
        let (conn, pending, span, captured) = self.connect(task, args, Ending::WithStart)?;
        let one_shot = launch_one_shot::<R>(conn, pending, span, captured);
        self.started(&one_shot.killer);
        Ok(one_shot)
    }

    /// A started worker's bookkeeping: its limits, its scope, and the refill
    /// of the pre-forked workers it may have taken.
    fn started(&self, killer: &Arc<Killer>) {
        killer.set_limits(self.options.rlimits.clone());
        self.scope.track(killer);
        if let Some(warm) = &self.warm {
            // After the Start frame is queued; the forks that replace the
            // worker are scheduled for later unless the config says now.
            warm.refill::<R>();
        }
    }

    /// The channel of a new worker (pre-forked, or forked now) with its
    /// Start frame written (End too, for `ending`), and its captured output.
    #[allow(clippy::type_complexity)]
    fn connect(
        &self,
        task: WireEntry,
        args: SplitEncoding,
        ending: Ending,
    ) -> Result<
        (
            Conn<ParentChannel, R::Socket>,
            crate::PendingSpawn,
            tracing::Span,
            Option<Captured<R>>,
        ),
        Error,
    > {
        if self.is_shut_down() {
            return Err(Error::ShutDown);
        }
        if !R::is_current() {
            return Err(Error::NoRuntime { runtime: R::NAME });
        }
        let span = tracing::info_span!(
            "worker",
            pid = tracing::field::Empty,
            name = self.options.name.as_deref(),
        );
        tracing::debug!(parent: &span, runtime = self.worker.name, "spawn requested");
        let mut prepared = self.output.prepare()?;
        let io = prepared.io;
        let fds = std::mem::take(&mut prepared.fds);
        // A pre-forked worker came with no descriptors and applies nothing
        // before its task: it serves spawns whose output is inherited.
        let warm = match &self.warm {
            Some(warm) if io.is_inherit() => warm.take::<R>(),
            _ => None,
        };
        // Start's arguments: the worker's head, then the task's argument,
        // whose large bytes are moved in (`args.tail`).
        let mut start_head = worker::start_head(&self.worker.options, self.backtraces, io);
        start_head.extend_from_slice(&args.head);
        let (mut conn, fd, pending) = match warm {
            // Registered by a refill, its connection built: Start is all
            // that is left to do before it goes out.
            Some((Taken::Registered(registered), pending)) => {
                tracing::trace!(parent: &span, "pre-forked worker chosen, registered");
                let Registered { conn, fd } = *registered;
                (conn, fd, pending)
            }
            Some((Taken::Plain(stream), pending)) => {
                tracing::trace!(parent: &span, "pre-forked worker chosen");
                // (Made non-blocking at its fork.)
                let fd = stream.as_raw_fd();
                let machine = ParentChannel::new(Limits::default());
                (Conn::new(machine, R::register(stream)?), fd, pending)
            }
            None => {
                let (stream, pending) =
                    self.zygote
                        .spawn_entry((self.worker.boot)()?, self.options.clone(), fds)?;
                stream.set_nonblocking(true)?;
                super::conn::widen_send_buffer(&stream);
                let fd = stream.as_raw_fd();
                let machine = ParentChannel::new(Limits::default());
                (Conn::new(machine, R::register(stream)?), fd, pending)
            }
        };
        conn.machine.start_with_tail(task, &start_head, args.tail)?;
        if ending == Ending::WithStart {
            // In the same write as Start. Should it not fit the send queue
            // (arguments near its limit), the driver sends it once Start
            // is out, as for the other kinds of worker once their handles
            // are gone.
            let _ = conn.machine.end();
        }
        // Start goes out now: a pre-forked worker starts on its task while
        // the rest of this setup (and the driver's first poll) happens here.
        conn.write_ahead(fd);
        let captured = if self.output.reads_anything() {
            prepared.register::<R>(self.options.name.as_deref())?
        } else {
            None
        };
        Ok((conn, pending, span, captured))
    }
}

/// When the parent's half close (End) goes out.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// With the Start frame: a `spawn`, whose handle sends nothing after it.
    WithStart,
    /// From the driver, once every handle that could send is gone.
    ByDriver,
}

/// Waits (up to `limit`) for every live worker of `scope` to finish; true
/// if they did.
async fn settle<R: Runtime>(scope: &Scope, limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if scope.live().is_empty() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        R::sleep(Duration::from_millis(10)).await;
    }
}

/// The sealed task entry of `run(function)`.
pub(crate) fn run_entry<F, A, Fut, T, C>(function: F) -> Result<WireEntry, Error>
where
    F: Fn(A) -> Fut + Copy + 'static,
    A: Serialize + DeserializeOwned + 'static,
    Fut: Future<Output = T> + 'static,
    T: Serialize + DeserializeOwned + 'static,
    C: Codec,
{
    Ok(worker::task_entry(move |context| {
        worker::run_task_loop::<F, A, Fut, T, C>(function, context)
    })?)
}
