//! `Parallel`: the handle users hold, bound to a started zygote.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use parallel_proto::channel::ParentChannel;
use parallel_proto::{Limits, WireEntry};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::codec::{Codec, Postcard};
use super::conn::Conn;
use super::driver::{launch, Link};
use super::messages::{MessageSender, MessageStream};
use super::process::Process;
use super::run::Run;
use super::runtime::{Runtime, WorkerRuntime};
use super::spawn::JoinHandle;
use super::worker;
use super::Error;
use crate::{SpawnOptions, Zygote};

/// The runtime workers build, chosen by value, sent in every Start frame.
#[derive(Clone)]
struct WorkerChoice {
    /// The boot entry of that runtime's workers.
    boot: fn() -> Result<WireEntry, crate::Error>,
    /// Its options, encoded.
    options: Arc<[u8]>,
    name: &'static str,
}

impl WorkerChoice {
    fn of<W: WorkerRuntime>(runtime: &W) -> Self {
        WorkerChoice {
            boot: worker::boot_entry::<W>,
            options: postcard::to_stdvec(runtime)
                .expect("postcard encodes runtime options")
                .into(),
            name: W::NAME,
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
    _types: PhantomData<fn() -> (R, C)>,
}

impl<R: Runtime, C: Codec> Clone for Parallel<R, C> {
    fn clone(&self) -> Self {
        Parallel {
            zygote: self.zygote.clone(),
            worker: self.worker.clone(),
            options: self.options.clone(),
            backtraces: self.backtraces,
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
            worker: WorkerChoice::of(&R::Worker::default()),
            options: SpawnOptions::default(),
            backtraces: true,
            _types: PhantomData,
        }
    }
}

impl<R: Runtime, C: Codec> Parallel<R, C> {
    /// The zygote behind this handle.
    pub fn zygote(&self) -> &Zygote {
        &self.zygote
    }

    /// The same zygote with another codec (the original library's `Io.define`).
    pub fn with_codec<D: Codec>(&self) -> Parallel<R, D> {
        Parallel {
            zygote: self.zygote.clone(),
            worker: self.worker.clone(),
            options: self.options.clone(),
            backtraces: self.backtraces,
            _types: PhantomData,
        }
    }

    /// The runtime each new worker builds after its fork, with its options:
    /// the adapter's own by default, or another adapter's (a smol parent
    /// may run tokio workers; the wire is the same).
    #[must_use = "worker_runtime returns a new handle; the old one is unchanged"]
    pub fn worker_runtime<W: WorkerRuntime>(mut self, runtime: W) -> Self {
        self.worker = WorkerChoice::of(&runtime);
        self
    }

    /// Name and resource limits for each new worker.
    #[must_use = "worker_options returns a new handle; the old one is unchanged"]
    pub fn worker_options(mut self, options: SpawnOptions) -> Self {
        self.options = options;
        self
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
            let args = C::encode(&argument).map_err(Error::encode::<A>)?;
            self.launch(task, args)
        })();
        JoinHandle::new(started, std::any::type_name::<A>())
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
        A: Serialize,
        T: DeserializeOwned,
    {
        Ok(Run::new(self.launch(task, Vec::new())?))
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
        In: Serialize + DeserializeOwned + 'static,
        Out: Serialize + DeserializeOwned + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        // Both capture checks, reported at the caller's line.
        #[allow(clippy::let_unit_value)]
        let () = F::ASSERT_ZERO_SIZED;
        let task = worker::task_entry(move |context| {
            worker::process_task::<F, In, Out, Fut, C>(function, context)
        })?;
        Ok(Process::new(self.launch(task, Vec::new())?))
    }

    /// Sends the spawn request and the task in one go (zero round trips) and
    /// starts the driver that owns the channel.
    fn launch(&self, task: WireEntry, args: Vec<u8>) -> Result<Link, Error> {
        if !R::is_current() {
            return Err(Error::NoRuntime { runtime: R::NAME });
        }
        let (stream, pending) =
            self.zygote
                .spawn_entry((self.worker.boot)()?, self.options.clone(), Vec::new())?;
        let mut machine = ParentChannel::new(Limits::default());
        machine.start(
            task,
            worker::start_args(&self.worker.options, args, self.backtraces),
        )?;
        stream.set_nonblocking(true)?;
        let conn = Conn::new(machine, R::register(stream)?);
        Ok(launch::<R>(conn, pending))
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
