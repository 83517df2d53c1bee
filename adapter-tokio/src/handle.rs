//! `Parallel`: the handle users hold, bound to a started zygote.

use std::future::Future;
use std::marker::PhantomData;

use parallel_proto::channel::ParentChannel;
use parallel_proto::{Limits, WireEntry};
use parallel_zygote::{SpawnOptions, Zygote};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{Codec, Postcard};
use crate::conn::Conn;
use crate::messages::{MessageSender, MessageStream};
use crate::parent::{launch, Link};
use crate::process::Process;
use crate::run::Run;
use crate::spawn::JoinHandle;
use crate::worker::{self, WorkerRuntime};
use crate::Error;

/// Starts the zygote and returns a handle on it. **Call it first thing in
/// `main`, before building the tokio runtime** (see [`parallel_zygote::start`]).
pub fn init() -> Result<Parallel, Error> {
    Ok(Parallel::new(parallel_zygote::start()?))
}

/// The entry point: spawns workers from a zygote and runs functions in them.
///
/// Cheap to clone, usable from many tasks at once. `C` is the [`Codec`] for
/// arguments, results and messages ([`Postcard`] unless you pick another with
/// [`with_codec`](Self::with_codec)).
pub struct Parallel<C: Codec = Postcard> {
    zygote: Zygote,
    runtime: WorkerRuntime,
    options: SpawnOptions,
    _codec: PhantomData<fn() -> C>,
}

impl<C: Codec> Clone for Parallel<C> {
    fn clone(&self) -> Self {
        Parallel {
            zygote: self.zygote.clone(),
            runtime: self.runtime,
            options: self.options.clone(),
            _codec: PhantomData,
        }
    }
}

impl<C: Codec> std::fmt::Debug for Parallel<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parallel")
            .field("zygote", &self.zygote)
            .field("runtime", &self.runtime)
            .field("codec", &std::any::type_name::<C>())
            .finish()
    }
}

impl Parallel<Postcard> {
    /// A handle on `zygote`, with postcard as the codec.
    pub fn new(zygote: Zygote) -> Self {
        Parallel {
            zygote,
            runtime: WorkerRuntime::default(),
            options: SpawnOptions::default(),
            _codec: PhantomData,
        }
    }
}

impl<C: Codec> Parallel<C> {
    /// The zygote behind this handle.
    pub fn zygote(&self) -> &Zygote {
        &self.zygote
    }

    /// The same zygote with another codec (the original library's `Io.define`).
    pub fn with_codec<D: Codec>(&self) -> Parallel<D> {
        Parallel {
            zygote: self.zygote.clone(),
            runtime: self.runtime,
            options: self.options.clone(),
            _codec: PhantomData,
        }
    }

    /// The runtime each new worker builds (current-thread by default).
    pub fn worker_runtime(mut self, runtime: WorkerRuntime) -> Self {
        self.runtime = runtime;
        self
    }

    /// Name and resource limits for each new worker.
    pub fn worker_options(mut self, options: SpawnOptions) -> Self {
        self.options = options;
        self
    }

    /// A derived snapshot: a child zygote that runs `init(args)` first; the
    /// workers of the returned handle share what `init` built, copy-on-write.
    pub fn snapshot<F>(&self, init: F, args: Vec<u8>) -> Result<Parallel<C>, Error>
    where
        F: Fn(Vec<u8>) + Copy + 'static,
    {
        Ok(Parallel {
            zygote: self.zygote.snapshot(init, args)?,
            runtime: self.runtime,
            options: self.options.clone(),
            _codec: PhantomData,
        })
    }

    /// Runs `function(argument)` in a new worker process, like
    /// `tokio::spawn` but in another process. Spawning never blocks on the
    /// fork: the request and the task go out at once.
    ///
    /// `function` must capture nothing (a capturing closure does not compile);
    /// pass data as the argument. Must be called within a tokio runtime.
    pub fn spawn<F, A, Fut, R>(&self, function: F, argument: A) -> JoinHandle<R, C>
    where
        F: Fn(A) -> Fut + Copy + 'static,
        A: Serialize + DeserializeOwned + 'static,
        Fut: Future<Output = R> + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        let started = (|| {
            let task = worker::task_entry(move |context| {
                worker::spawn_task::<F, A, Fut, R, C>(function, context)
            })?;
            let args = C::encode(&argument).map_err(Error::encode::<A>)?;
            self.launch(task, args)
        })();
        JoinHandle::new(started)
    }

    /// Starts a persistent worker running `function`; every
    /// [`Run::call`] runs it once more in that worker. Concurrent calls are
    /// pipelined and run concurrently in the worker's runtime.
    pub fn run<F, A, Fut, R>(&self, function: F) -> Result<Run<A, R, C>, Error>
    where
        F: Fn(A) -> Fut + Copy + 'static,
        A: Serialize + DeserializeOwned + 'static,
        Fut: Future<Output = R> + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        let task = run_entry::<F, A, Fut, R, C>(function)?;
        self.run_entry(task)
    }

    pub(crate) fn run_entry<A, R>(&self, task: WireEntry) -> Result<Run<A, R, C>, Error>
    where
        A: Serialize,
        R: DeserializeOwned,
    {
        Ok(Run::new(self.launch(task, Vec::new())?))
    }

    /// Starts a worker running `function` with a typed, bidirectional channel:
    /// the parent gets a sender of `In` and a stream of `Out`, the worker the
    /// mirror pair. Dropping every sender ends the worker's input stream; the
    /// worker returning ends the parent's stream.
    pub fn process<F, In, Out, Fut>(&self, function: F) -> Result<Process<In, Out, C>, Error>
    where
        F: Fn(MessageStream<In, C>, MessageSender<Out, C>) -> Fut + Copy + 'static,
        In: Serialize + DeserializeOwned + 'static,
        Out: Serialize + DeserializeOwned + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let task = worker::task_entry(move |context| {
            worker::process_task::<F, In, Out, Fut, C>(function, context)
        })?;
        Ok(Process::new(self.launch(task, Vec::new())?))
    }

    /// Sends the spawn request and the task in one go (zero round trips) and
    /// starts the driver that owns the channel.
    fn launch(&self, task: WireEntry, args: Vec<u8>) -> Result<Link, Error> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::NoRuntime);
        }
        let (stream, pending) =
            self.zygote
                .spawn_entry(worker::boot_entry()?, self.options.clone(), Vec::new())?;
        let mut machine = ParentChannel::new(Limits::default());
        machine.start(task, worker::start_args(self.runtime, args))?;
        let conn = Conn::new(machine, stream)?;
        Ok(launch(conn, pending))
    }
}

/// The sealed task entry of `run(function)`.
pub(crate) fn run_entry<F, A, Fut, R, C>(function: F) -> Result<WireEntry, Error>
where
    F: Fn(A) -> Fut + Copy + 'static,
    A: Serialize + DeserializeOwned + 'static,
    Fut: Future<Output = R> + 'static,
    R: Serialize + DeserializeOwned + 'static,
    C: Codec,
{
    Ok(worker::task_entry(move |context| {
        worker::run_task_loop::<F, A, Fut, R, C>(function, context)
    })?)
}
