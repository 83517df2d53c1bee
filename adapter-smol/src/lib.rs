//! Run async computations in other processes, from smol.
//!
//! **Platform: Linux only**, as `parallel-zygote` (`prctl`, `/proc`, `signalfd`).
//!
//! `parallel-smol` forks workers from a *zygote*, a small process forked at
//! the top of `main` before anything async exists (see `parallel-zygote`),
//! and talks to them over AF_UNIX sockets with typed messages. Spawning never
//! blocks on a fork and does not grow with the parent's heap; a worker that
//! panics, aborts or is killed gives an error, never a hang.
//!
//! # Quick start
//!
//! ```no_run
//! fn main() -> Result<(), parallel_smol::Error> {
//!     // 1. First thing in main: start the zygote, before anything async
//!     //    (no smol::block_on, Async, Timer or smol::spawn before it).
//!     let parallel = parallel_smol::init()?;
//!     // 2. Then use smol as usual.
//!     smol::block_on(async move {
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
//!             |mut input: parallel_smol::MessageStream<String>,
//!              output: parallel_smol::MessageSender<usize>| async move {
//!                 while let Some(Ok(line)) = input.recv().await {
//!                     output.send(line.len()).await.unwrap();
//!                 }
//!             },
//!         )?;
//!         echo.sender.send("hello".to_string()).await?;
//!         assert_eq!(echo.stream.recv().await.transpose()?, Some(5));
//!
//!         // pool: N warm workers, map over inputs in order.
//!         use smol::stream::StreamExt;
//!         let pool = parallel_smol::Pool::new(
//!             &parallel,
//!             |x: u64| async move { x + 1 },
//!             parallel_smol::PoolConfig::default(),
//!         )?;
//!         let results: Vec<_> = pool.map(smol::stream::iter(0..10u64)).collect().await;
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
//! # let parallel = parallel_smol::init().unwrap();
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
//! # Runtimes
//!
//! In the parent, each worker's channel is an `async_io::Async` socket and
//! its driver a task on smol's global executor (`smol::spawn`), so the
//! handles work from any executor or thread: inside `smol::block_on`, a
//! `LocalExecutor`, or another runtime's thread.
//!
//! Hot paths are faster from a task on that executor than from the
//! `block_on` future: an answer read by a driver reaches a caller there
//! without waking your main thread. Measured on a 2-vCPU VM (BENCHMARKS.md,
//! *Issue 13 after session 6*): a `Run::call` round trip took 12 µs from a
//! `smol::spawn`ed task and 20-23 µs from `block_on`; 64 calls in flight
//! reached 0.77 × a raw socket's rate from a task, 0.49-0.51 × from
//! `block_on`. So run a batch of calls inside `smol::spawn(async move { ...
//! }).await`.
//!
//! A worker runs the function on a `smol::LocalExecutor` under
//! `async_io::block_on`, on its main thread ([`SmolWorker`]): the function
//! may [`spawn_local`] `!Send` tasks, and `smol::spawn` works too. Pick
//! another adapter's workers with [`Parallel::worker_runtime`] (the wire is
//! the same: a smol parent can run tokio or glommio workers).
//!
//! # Fork safety
//!
//! A process forked after async-io's reactor started inherits a reactor it
//! cannot use (a lock held by a thread that is not there, the parent's epoll
//! descriptor). [`init`] forks the zygote before anything async, the zygote
//! never runs async code, and each worker starts its own reactor after its
//! fork. Keep async-io out of a [`Parallel::snapshot`]'s `init` too (it
//! would leave async-io's thread behind, which the snapshot refuses).
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
pub use runtime::{spawn_local, Smol, SmolSleep, SmolSocket, SmolWorker};

/// The entry point: spawns workers and runs functions in them (see
/// [`core::Parallel`]).
pub type Parallel<C = Postcard> = core::Parallel<Smol, C>;
/// The result of [`Parallel::spawn`], a future (see [`core::JoinHandle`]).
pub type JoinHandle<T, C = Postcard> = core::JoinHandle<T, C, Smol>;
/// A function in a persistent worker, from [`Parallel::run`] (see [`core::Run`]).
pub type Run<A, T, C = Postcard> = core::Run<A, T, C, Smol>;
/// N warm workers running one function (see [`core::Pool`]).
pub type Pool<A, T, C = Postcard> = core::Pool<A, T, C, Smol>;
/// N warm workers running any function, named per call (see [`core::AnyPool`]).
pub type AnyPool<C = Postcard> = core::AnyPool<C, Smol>;

/// Starts the zygote and returns a handle on it. Call it anywhere: inside
/// `smol::block_on`, in a plain `#[test]`, after the zygote died. It touches
/// nothing of async-io itself.
///
/// First thing in `main`, before smol or async-io start their threads, it
/// forks the zygote (the fastest start); once the process has threads it
/// executes the program anew, a few milliseconds more (see
/// [`parallel_zygote::start`]). Called again while the zygote serves, it
/// returns another handle on it; after the zygote is gone, it starts a new
/// one (handles on the old one keep failing, saying how it ended).
///
/// # Errors
/// [`Error::Zygote`] when the zygote could not be started: the fork or the
/// exec failed, an executed zygote did not come up (`StartFailed`, saying
/// why), or this is a zygote, e.g. a snapshot's init (`AlreadyStarted`).
/// Inside a worker it starts the worker's own zygote (nested spawns).
pub fn init() -> Result<Parallel, Error> {
    let zygote = parallel_zygote::Builder::new()
        .caller(<Smol as core::Runtime>::INIT)
        .start()?;
    Ok(Parallel::new(zygote))
}
