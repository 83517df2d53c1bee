//! The runtime-agnostic async layer that every adapter shares.
//!
//! Everything a user of `parallel-tokio`, `parallel-smol` or
//! `parallel-glommio` holds lives here: [`Parallel`], [`JoinHandle`], [`Run`],
//! [`Process`], [`MessageStream`]/[`MessageSender`], [`Pool`], [`AnyPool`],
//! [`PoolTask`], the [`spawn!`](crate::spawn!) sugar, [`Codec`],
//! [`Fd`] and [`Error`], plus the parent's per-worker [`Driver`] and the
//! worker's boot and task loops. It names no runtime: an adapter implements
//! [`Runtime`] (a readiness socket, a timer, a way to run the driver) and
//! [`WorkerRuntime`] (build a runtime after the fork and poll the task), and
//! re-exports these types with its runtime filled in.
//!
//! No `Send` bound is imposed: the driver is `Send` exactly when the
//! adapter's socket and timer are, so tokio can move it between threads and
//! glommio can keep its `!Send` sockets.
//!
//! # Diagnostics, shutdown, recycling
//!
//! - **tracing**: each worker has a `worker` span (`pid` once known, `name`
//!   from its [`SpawnOptions`](crate::SpawnOptions)); its driver runs inside
//!   it. Events: spawn requested and ready (debug), call sent and answered
//!   (trace), death (warn with `signal` or `code`, debug for a clean exit),
//!   kill requested (debug), timeout (warn), pool replacement and retry
//!   (info), protocol error and zygote gone (error). The library installs
//!   no subscriber; without one the macros cost next to nothing. Nothing is
//!   traced in a zygote or in a worker before its runtime runs.
//! - **graceful shutdown**: [`Pool::shutdown_gracefully`] and
//!   [`AnyPool::shutdown_gracefully`] stop taking work, let calls in flight
//!   finish within a grace, then SIGTERM, then SIGKILL;
//!   [`Parallel::shutdown`] does the same for every worker a handle (and
//!   its clones, see [`Parallel::scope`]) started, and refuses new work
//!   with [`Error::ShutDown`]. Its docs show how to run it on the parent's
//!   SIGTERM.
//! - **worker output**: [`Parallel::worker_output`] (or `worker_stdout`,
//!   `worker_stderr`) picks [`Output::Inherit`] (the default),
//!   [`Output::Null`] or [`Output::Capture`]: captured lines become events
//!   (target `parallel::worker::output`) in the worker's span and, with
//!   [`Output::lines`], items of an [`OutputLines`] stream; a dead worker's
//!   [`Error::WorkerDied`] carries its last stderr lines
//!   ([`Error::stderr_tail`]). The streams are socketpairs the worker puts
//!   on its descriptors 1 and 2 before the task runs; after the worker's
//!   exit the driver waits at most 500 ms for their end (a process the
//!   worker started may keep them open) before it reports the death.
//! - **worker tracing**: [`Parallel::forward_worker_tracing`] re-emits a
//!   worker's own events here (target `parallel::worker::log`) inside its
//!   span, over a socket of its own; a slow parent costs dropped events
//!   (counted, warned about), never a blocked worker.
//! - **recycling by memory**: [`PoolConfig::max_worker_rss`] replaces a
//!   pooled worker after a call once its resident memory exceeds a limit
//!   (counted in [`PoolStats::recycled_for_memory`]), next to
//!   [`PoolConfig::max_calls_per_worker`].
//!
//! # Dropping handles
//!
//! What becomes of a worker when you drop the handle you hold on it:
//!
//! | you drop | the worker |
//! |---|---|
//! | a [`JoinHandle`] before it resolves | is killed at once (SIGKILL): cancellation stops the work. Call [`detach`](JoinHandle::detach) to let it finish instead |
//! | a call future ([`Run::call`], [`Pool::call`]) before it resolves | is killed at once; its other calls fail with [`Error::WorkerDied`] |
//! | the last clone of a [`Run`] | finishes the calls in flight, then exits |
//! | every clone of a [`Process`]'s [`MessageSender`] | sees its input stream end, nothing more (a half close): it runs until its function returns, and what it sends still arrives |
//! | a [`ProcessHandle`] | runs on until its function returns |
//! | a [`MessageStream`] | runs on; what it sends from then on is discarded |
//! | the last clone of a [`Pool`] or [`AnyPool`] | (no call can be in flight: a call borrows the pool) each idle worker exits, as for the last [`Run`] |
//! | a [`PoolTask`] | still queued: leaves the queue, no worker touched; running: its worker is killed and replaced |
//!
//! Only the first two stop work; every other drop lets the worker end by
//! itself. Whatever is still running dies with the zygote, which dies with
//! this process.
//!
//! # Writing an adapter
//!
//! 1. A socket type implementing [`AsyncSocket`] over a non-blocking
//!    `UnixStream`: "call `io` when the socket may be ready; on
//!    `WouldBlock`, forget that readiness and wait for the next".
//! 2. A zero-sized marker implementing [`Runtime`] (`register`, `sleep`,
//!    `is_current`, `spawn_driver`, `spawn_refill`) and naming the default
//!    worker runtime; where its sockets are `Send`, also `reactor` and
//!    `share`, so that pre-forked workers' channels are registered ahead.
//! 3. A serde options type implementing [`WorkerRuntime`]: `block_on` builds
//!    the runtime in the worker, after the fork, never in a zygote.
//! 4. Type aliases (`type Parallel<C = Postcard> = Parallel<MyRuntime, C>`),
//!    `init()`, and re-exports.
#![forbid(unsafe_code)]

mod alarm;
mod any_pool;
mod bytes;
mod codec;
pub mod codecs;
mod conn;
mod driver;
mod error;
mod fd;
mod forward;
mod kill;
mod messages;
mod output;
mod owned_bytes;
mod parallel;
mod pieces;
mod pool;
mod pool_core;
mod process;
mod recycle;
mod run;
mod runtime;
mod shared;
mod shared_bytes_mut;
mod spawn;
mod streamed;
mod sugar;
mod warm;
mod worker;

pub use any_pool::AnyPool;
pub use bytes::Bytes;
pub use codec::{Codec, CodecError, Postcard};
pub use driver::Driver;
pub use error::{Error, LimitExceeded};
pub use fd::Fd;
pub use forward::MAX_PENDING as MAX_TRACING_BUFFER;
pub use messages::{MessageSender, MessageStream};
pub use output::{
    Output, OutputLine, OutputLines, OutputSink, StdStream, MAX_LINE_LEN, STDERR_TAIL_BYTES,
    STDERR_TAIL_LINES,
};
pub use parallel::Parallel;
pub use parallel_proto::channel::{PanicLocation, PanicReport};
pub use pool::{Pool, PoolConfig, PoolStats};
pub use pool_core::PoolTask;
pub use process::{Process, ProcessHandle};
pub use run::Run;
pub use runtime::{AsyncSocket, LocalTask, ReadOutcome, Runtime, StartDriver, WorkerRuntime};
pub use shared_bytes_mut::SharedBytesMut;
pub use spawn::JoinHandle;
pub use warm::{Refill, Registered, WarmConfig};
pub(crate) use worker::install_panic_hook;
