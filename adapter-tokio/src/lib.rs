//! Run async computations in other processes, from tokio.
//!
//! **Platform: Linux only**, as `parallel-zygote` (`prctl`, `/proc`, `signalfd`).
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
//!     // 1. First thing in main, the fastest start (a fork). `init()` also
//!     //    works inside #[tokio::main] and in plain #[test]s (an exec).
//!     let parallel = parallel_tokio::init()?;
//!     // 2. Then build the runtime.
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
//! // error[E0080]: "functions sent to a worker must capture nothing: this
//! // function captures a `Copy` value ..." (at `cargo build`; a non-`Copy`
//! // capture such as a `String` fails `cargo check` already, E0277)
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
//! # Latency
//!
//! Each worker's channel is served by a driver task on the parent's runtime.
//! On the multi-thread runtime, the future given to `block_on` (the body of
//! `#[tokio::main]`) runs on the calling thread, not on the runtime's
//! workers: every answer a driver reads crosses threads to wake it. Measured
//! on a 2-vCPU VM (BENCHMARKS.md, *Issue 13 after session 7*): a `Run::call`
//! round trip took 6 µs from a `tokio::spawn`ed task and 12-17 µs from
//! `block_on`; a cold `spawn` 218-234 µs and 263-266 µs. So run a batch of
//! calls inside `tokio::spawn(async move { ... }).await`. The current-thread
//! runtime has no such crossing.
//!
//! Spawns made now and then, rather than back to back, pay for the state the
//! machine is in after processes start and exit: on that VM, a call made
//! 5 ms after an unrelated program ran took 64-73 µs instead of 6. A `spawn`
//! on a handle with pre-forked workers ([`Parallel::warm_workers`]) skips
//! the fork: about 90 µs there, against 263-266 µs cold.
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
//! What dropping each handle (`JoinHandle`, `Run`, `Process`, `Pool`, ...) does to its worker: [Dropping handles](parallel_zygote::async_core#dropping-handles).
//!
//! # Descriptors
//!
//! An [`Fd`] inside a `process` message travels as a real file descriptor.
//!
//! # Bulk data
//!
//! Put bulk bytes in a [`Bytes`] (or a `Vec<u8>` marked
//! `#[serde(with = "serde_bytes")]`), not a plain `Vec<u8>`: serde hands a
//! `Vec<u8>` to the codec one element at a time, about five times
//! slower (its decode alone runs at about 1.2 GB/s). (A `process`
//! message, an argument or a result that *is* a `Vec<u8>`, nothing around
//! it, goes as a byte string with the default codec: as fast as `Bytes`.)
//! With the default codec, the bytes of a large `Bytes` (16 KiB and up) in a
//! `process` message go to the socket from their own buffer, not copied
//! into a frame first; so do those of `serde_bytes` fields (16 KiB and up)
//! in a message that holds 256 KiB or more of them. A `process` message whose encoding reaches 4 MiB travels through
//! shared memory (a sealed memfd that the other side maps) instead of the
//! socket; [`MessageSender::with_shared_memory_min`] moves or removes that
//! threshold. For the largest payloads, fill a [`SharedBytesMut`] (a buffer
//! in shared memory) and freeze it into a `Bytes`: only its sealed memfd
//! travels with the message, and no byte is copied on either side.
//! Received, a `serde_bytes` field (or a `Vec<u8>` message) of 4 MiB and
//! up is decoded into memory the kernel is asked to back with transparent
//! huge pages: a fresh buffer of that size fills several times faster.
//! A spawn's or a call's arguments and result are moved into their frames,
//! not copied, and with the default codec an argument or a result that is a
//! `Vec<u8>` or a `serde_bytes::ByteBuf` of 64 KiB and up is the very
//! buffer its frame was read into: a worker just forked, whose every fresh
//! page costs a fault, touches no more memory than the bytes themselves.
//!
//! # Shutting down on SIGTERM
//!
//! [`Parallel::shutdown`] stops new work, lets workers finish within a grace
//! period, then sends SIGTERM and SIGKILL. Wire it to the parent's SIGTERM
//! (tokio's `signal` feature):
//!
//! ```ignore
//! let parallel = parallel_tokio::init()?;
//! let on_term = parallel.clone();
//! tokio::spawn(async move {
//!     use tokio::signal::unix::{signal, SignalKind};
//!     let mut term = signal(SignalKind::terminate())?;
//!     term.recv().await;
//!     on_term.shutdown(std::time::Duration::from_secs(10)).await;
//!     std::process::exit(0);
//!     # Ok::<(), std::io::Error>(())
//! });
//! ```
//!
//! (On smol, `async-signal`'s `Signals::new([Signal::Term])`; on glommio, a
//! `signal-hook` thread that sends on an `async-channel` a task awaits.)
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(clippy::missing_errors_doc)]

mod runtime;

use parallel_zygote::async_core as core;

#[allow(unused_imports)] // Empty without a codec feature.
pub use core::codecs::*; // Json, MessagePack, Cbor, Bincode: each with its feature
pub use core::{
    Bytes, Codec, CodecError, Error, Fd, LimitExceeded, MessageSender, MessageStream, Output,
    OutputLine, OutputLines, OutputSink, PanicLocation, PanicReport, PoolConfig, PoolStats,
    PoolTask, Postcard, Process, ProcessHandle, SharedBytesMut, StdStream, WarmConfig,
    MAX_LINE_LEN, MAX_TRACING_BUFFER, STDERR_TAIL_BYTES, STDERR_TAIL_LINES,
};
/// `spawn!(parallel, (a, b, c) || async move { .. })`: the listed values as
/// the argument tuple (see [`parallel_zygote::spawn!`]).
pub use parallel_zygote::spawn;
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
/// N warm workers running any function, named per call (see [`core::AnyPool`]).
pub type AnyPool<C = Postcard> = core::AnyPool<C, Tokio>;

/// Starts the zygote and returns a handle on it. Call it anywhere: inside
/// `#[tokio::main]`, in a plain `#[test]`, after the zygote died.
///
/// First thing in `main`, before the runtime exists, it forks the zygote
/// (the fastest start; the zygote holds the process's state at that point).
/// Once the process has threads, it starts the zygote by executing the
/// program anew, a few milliseconds more (see
/// [`parallel_zygote::start`] and [`parallel_zygote::StartMethod`]).
///
/// ```no_run
/// #[tokio::main]
/// async fn main() -> Result<(), parallel_tokio::Error> {
///     let parallel = parallel_tokio::init()?;
///     assert_eq!(parallel.spawn(|x: u64| async move { x * 2 }, 21).await?, 42);
///     Ok(())
/// }
/// ```
///
/// Called again while the zygote serves, it returns another handle on the
/// same zygote, so tests running in parallel share one; `init()` is all a
/// `#[test]` needs. Called after the zygote is gone (killed, crashed, or
/// shut down with its last handle), it starts a new one: handles on the old
/// zygote keep failing with [`Error::Zygote`] (which says how it ended), so
/// take the new handle and rebuild derived snapshots from it.
///
/// # Errors
/// [`Error::Zygote`] when the zygote could not be started: the fork or the
/// exec failed, an executed zygote did not come up (`StartFailed`, saying
/// why), or this is a zygote, e.g. a snapshot's init (`AlreadyStarted`).
/// Inside a worker it starts the worker's own zygote (nested spawns).
pub fn init() -> Result<Parallel, Error> {
    let zygote = parallel_zygote::Builder::new()
        .caller(<Tokio as core::Runtime>::INIT)
        .start()?;
    Ok(Parallel::new(zygote))
}

// On tokio the handles move between tasks and threads: pinned at compile
// time, since the core itself imposes no `Send` bound (glommio's are `!Send`).
const _: () = {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>(_: &T) {}
    fn handles() {
        send_sync::<Parallel>();
        send_sync::<Run<u8, u8>>();
        send_sync::<Pool<u8, u8>>();
        send_sync::<AnyPool>();
        send_sync::<MessageSender<u8>>();
        send_sync::<Error>();
        send_sync::<JoinHandle<u8>>();
    }
    fn futures(run: &Run<u8, u8>, pool: &Pool<u8, u8>, any: &AnyPool, sender: &MessageSender<u8>) {
        send(&run.call(1));
        send(&run.call_timeout(1, std::time::Duration::ZERO));
        send(&pool.call(1));
        send(&pool.submit(1));
        send(&any.spawn(|x: u8| async move { x }, 1));
        send(&sender.send(1));
    }
    let _ = (handles, futures);
};
