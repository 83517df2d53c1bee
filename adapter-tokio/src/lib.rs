//! Run async computations in other processes, from tokio.
//!
//! `parallel-tokio` forks workers from a *zygote*, a small process forked at
//! the top of `main` before the runtime exists (see `parallel-zygote`), and
//! talks to them over AF_UNIX sockets with typed messages. Spawning never
//! blocks on a fork and does not grow with the parent's heap; a worker that
//! panics, aborts or is killed gives an error, never a hang.
//!
//! # Quick start
//!
//! ```no_run
//! fn main() -> Result<(), parallel_tokio::Error> {
//!     // 1. First thing in main: start the zygote, before the runtime.
//!     let parallel = parallel_tokio::init()?;
//!     // 2. Then build the runtime (no #[tokio::main]: it would start first).
//!     let runtime = tokio::runtime::Runtime::new()?;
//!     runtime.block_on(async move {
//!         // spawn: one call in a fresh process.
//!         let doubled = parallel.spawn(|x: u64| async move { x * 2 }, 21).await?;
//!         assert_eq!(doubled, 42);
//!
//!         // run: a persistent worker, called many times.
//!         let square = parallel.run(|x: u64| async move { x * x })?;
//!         assert_eq!(square.call(7).await?, 49);
//!
//!         // process: a typed two-way channel.
//!         let mut echo = parallel.process(
//!             |mut input: parallel_tokio::MessageStream<String>,
//!              output: parallel_tokio::MessageSender<usize>| async move {
//!                 while let Some(Ok(line)) = input.recv().await {
//!                     output.send(line.len()).await.unwrap();
//!                 }
//!             },
//!         )?;
//!         echo.sender.send("hello".to_string()).await?;
//!         assert_eq!(echo.stream.recv().await.transpose()?, Some(5));
//!
//!         // pool: N warm workers, map over inputs in order.
//!         use futures_util::StreamExt;
//!         let pool = parallel_tokio::Pool::new(
//!             &parallel,
//!             |x: u64| async move { x + 1 },
//!             parallel_tokio::PoolConfig::default(),
//!         )?;
//!         let results: Vec<_> = pool.map(futures_util::stream::iter(0..10u64)).collect().await;
//!         assert_eq!(results.len(), 10);
//!         Ok(())
//!     })
//! }
//! ```
//!
//! # Functions
//!
//! A function sent to a worker must capture nothing: a `fn` item or a closure
//! without captures (a capturing closure fails to compile with a message
//! saying so). Pass data as its argument. Arguments, results and messages are
//! serde types, encoded with [`Postcard`] unless you choose another
//! [`Codec`] with [`Parallel::with_codec`].
//!
//! ```compile_fail,E0080
//! # fn main() {
//! # let parallel = parallel_tokio::init().unwrap();
//! let offset = 5u64;
//! // error: "parallel: a function run in another process must not capture
//! // anything. Use a fn item or a closure without captures, and pass data as
//! // its arguments."
//! let _handle = parallel.spawn(move |x: u64| async move { x + offset }, 1);
//! # }
//! ```
//!
//! Pass it instead: `parallel.spawn(|(x, offset): (u64, u64)| async move { x + offset }, (1, 5))`.
//!
//! The worker builds a current-thread tokio runtime for the function; pick a
//! multi-thread one with [`Parallel::worker_runtime`] and a
//! [`WorkerRuntime`], or another adapter's worker runtime (the wire is the
//! same: a tokio parent can run smol or glommio workers).
//!
//! # Failures
//!
//! | what happens | what you get |
//! |---|---|
//! | the function panics | [`Error::Panicked`] with message and location (a `run` worker survives it) |
//! | the worker aborts, is killed, or exits | [`Error::WorkerDied`] with pid, exit code or signal, and the call in flight |
//! | a call exceeds its time limit | [`Error::Timeout`]; the worker is killed (a [`Pool`] replaces it) |
//! | a call future is dropped | the worker is killed: cancellation stops the work |
//! | the zygote is gone | [`Error::Zygote`] at once |
//!
//! # Descriptors
//!
//! An [`Fd`] inside a `process` message travels as a real file descriptor.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod runtime;

use parallel_zygote::async_core as core;

pub use core::{
    Codec, CodecError, Error, Fd, MessageSender, MessageStream, PanicReport, PoolConfig, Postcard,
    Process, ProcessHandle,
};
pub use parallel_zygote::{ExitStatus, Resource, ResourceLimit, SpawnOptions};
pub use runtime::{Tokio, TokioSocket, WorkerRuntime};

/// The entry point: spawns workers and runs functions in them (see
/// [`core::Parallel`]).
pub type Parallel<C = Postcard> = core::Parallel<Tokio, C>;
/// The result of [`Parallel::spawn`], a future (see [`core::JoinHandle`]).
pub type JoinHandle<T, C = Postcard> = core::JoinHandle<T, C, Tokio>;
/// A function in a persistent worker, from [`Parallel::run`] (see [`core::Run`]).
pub type Run<A, T, C = Postcard> = core::Run<A, T, C, Tokio>;
/// N warm workers running one function (see [`core::Pool`]).
pub type Pool<A, T, C = Postcard> = core::Pool<A, T, C, Tokio>;

/// Starts the zygote and returns a handle on it. **Call it first thing in
/// `main`, before building the tokio runtime** (see [`parallel_zygote::start`]).
/// Called again while the zygote lives, it returns another handle on the
/// same zygote.
///
/// # Errors
/// [`Error::Zygote`] when the process already has other threads at the
/// first call, the zygote died (it cannot be restarted in a multi-threaded
/// process), or the fork failed.
pub fn init() -> Result<Parallel, Error> {
    let zygote = parallel_zygote::Builder::new()
        .caller(<Tokio as core::Runtime>::INIT)
        .start()?;
    Ok(Parallel::new(zygote))
}
