//! Run async computations in other processes, from glommio.
//!
//! **Platform: Linux only**, as `parallel-zygote` (`prctl`, `/proc`, `signalfd`) (and glommio needs `io_uring`).
//!
//! `parallel-glommio` forks workers from a *zygote*, a small process forked at
//! the top of `main` before any executor or thread exists (see
//! `parallel-zygote`), and talks to them over AF_UNIX sockets with typed
//! messages. Spawning never blocks on a fork and does not grow with the
//! parent's heap; a worker that panics, aborts or is killed gives an error,
//! never a hang. Each worker runs its function on a glommio executor of its
//! own.
//!
//! # Quick start
//!
//! ```no_run
//! fn main() -> Result<(), parallel_glommio::Error> {
//!     // 1. First thing in main: start the zygote, before any executor or
//!     //    thread (glommio's executors start threads).
//!     let parallel = parallel_glommio::init()?;
//!     // 2. Then run glommio as usual (or on a thread of its own with
//!     //    `LocalExecutorBuilder::default().spawn(move || async move { .. })?.join()`).
//!     glommio::LocalExecutor::default().run(async move {
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
//!             |mut input: parallel_glommio::MessageStream<String>,
//!              output: parallel_glommio::MessageSender<usize>| async move {
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
//!         let pool = parallel_glommio::Pool::new(
//!             &parallel,
//!             |x: u64| async move { x + 1 },
//!             parallel_glommio::PoolConfig::default(),
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
//! # let parallel = parallel_glommio::init().unwrap();
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
//! In the parent, call `spawn`, `run`, `process` and `Pool::new` from a task
//! of a glommio executor: each worker's channel and driver are `!Send`, like
//! everything glommio, and live on the executor that started the worker
//! (a task of its own, `glommio::spawn_local`), so keep that executor
//! running while you use the worker. From a thread without an executor they
//! return [`Error::NoRuntime`]. glommio 0.9 has no public way to ask whether
//! the thread runs an executor that does not panic when it does not, so the
//! check runs glommio's own query under `catch_unwind`: in that misuse case
//! the panic hook prints glommio's panic message before the error comes
//! back (and a `panic = "abort"` build aborts).
//!
//! A worker runs the function on a [`GlommioWorker`] executor: a
//! `glommio::LocalExecutor` on its main thread, unbound to CPUs, with 64 KiB
//! of io memory and 8-deep rings (the function may `glommio::spawn_local`).
//! Building it costs every worker one io_uring setup and one blocking-pool
//! thread (glommio always starts one). Tune it with
//! [`Parallel::worker_runtime`]`(GlommioWorker { .. })`, or run the workers
//! on another adapter's runtime, `parallel.worker_runtime(parallel_tokio::WorkerRuntime::default())`
//! for one: the wire is the same, and a glommio parent can run tokio or smol
//! workers where io_uring is not allowed.
//!
//! [`init`] also registers the parent for private expedited `membarrier`
//! while it is still single-threaded (glommio would register on its first
//! sleep, which takes milliseconds once threads exist); each worker does
//! the same before building its executor. The zygote never does.
//!
//! # How the channel waits
//!
//! glommio 0.9 can neither wait on an arbitrary descriptor nor send or
//! receive descriptors (`SCM_RIGHTS`), so glommio does not own the channel:
//! the core does its own non-blocking `recvmsg`/`sendmsg` on the socket, and
//! glommio only tells it when to try.
//!
//! - **Read readiness**: a duplicate of the socket is handed to glommio as a
//!   `glommio::net::UnixStream`, and the channel waits with a 1-byte
//!   `peek` on it (`MSG_PEEK`, an io_uring receive): the data and any
//!   descriptors stay queued for the core's `recvmsg`. A request/response
//!   round trip measured about 14 µs this way, against 13 µs for glommio's
//!   own sockets and 86 to 108 µs (with millisecond spikes) for an
//!   `async-io` reactor inside glommio.
//!   The peek costs each wait an aligned 1-byte buffer in glommio (about
//!   900 instructions of `posix_memalign`); glommio's own read readiness
//!   (a `POLL_ADD`), reached through a read into an empty buffer, would
//!   not, but that read is a plain `recv` of 0 bytes, which on a Unix
//!   socket detaches and drops any descriptors queued with the next
//!   message: not usable for a channel that passes them (measured and
//!   dropped; it was no faster either).
//! - **Write readiness**: glommio has no way to wait for it at all. A write
//!   is tried at once (most fit); only after one hits `EAGAIN` does the
//!   channel re-check `poll(POLLOUT)` without blocking on glommio timers,
//!   50 µs after the `EAGAIN` and then backing off to every 2 ms. A bulk
//!   transfer into a slow reader can thus wait up to 2 ms longer than it
//!   must, and a reader that stalls costs a wake-up every 2 ms.
//!
//! Through the whole stack, a `Run::call` round trip with glommio on both
//! sides measured a median of 17 µs with parent and worker on one CPU
//! (tokio on both sides: 7 µs; a glommio parent with tokio workers: 11 µs);
//! on separate CPUs of a small VM, cross-CPU wake-ups dominate every runtime
//! alike (60 to 100 µs). 8 MiB each way through a `process` took 47 to 50 ms,
//! against 43 ms on tokio.
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
//! | the worker cannot build its executor | the call's error says why, in the words below |
//!
//! What dropping each handle (`JoinHandle`, `Run`, `Process`, `Pool`, ...) does to its worker: [Dropping handles](parallel_zygote::async_core#dropping-handles).
//!
//! glommio 0.9 refuses to start with less than 512 KiB of locked memory
//! (`RLIMIT_MEMLOCK`), panics when io_uring is refused, and exits the process
//! on a kernel older than 5.8. A worker checks first: it raises its soft
//! `RLIMIT_MEMLOCK` toward 1 MiB within the hard limit when it is lower, and
//! otherwise the call fails with "glommio needs at least 512 KiB of locked
//! memory (RLIMIT_MEMLOCK), the worker has N KiB ...: raise it with `ulimit
//! -l`, or in the worker with SpawnOptions rlimits Resource::LockedMemory";
//! where io_uring is unusable it fails with "io_uring is unavailable (blocked
//! by seccomp/container policy or kernel.io_uring_disabled=2, or kernel older
//! than 5.8): glommio cannot run here". The parent's own executor has the
//! same needs, and glommio reports them there as it does.
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
pub use runtime::{Glommio, GlommioSleep, GlommioSocket, GlommioWorker};

/// The entry point: spawns workers and runs functions in them (see
/// [`core::Parallel`]).
pub type Parallel<C = Postcard> = core::Parallel<Glommio, C>;
/// The result of [`Parallel::spawn`], a future (see [`core::JoinHandle`]).
pub type JoinHandle<T, C = Postcard> = core::JoinHandle<T, C, Glommio>;
/// A function in a persistent worker, from [`Parallel::run`] (see [`core::Run`]).
pub type Run<A, T, C = Postcard> = core::Run<A, T, C, Glommio>;
/// N warm workers running one function (see [`core::Pool`]).
pub type Pool<A, T, C = Postcard> = core::Pool<A, T, C, Glommio>;
/// N warm workers running any function, named per call (see [`core::AnyPool`]).
pub type AnyPool<C = Postcard> = core::AnyPool<C, Glommio>;

/// Starts the zygote and returns a handle on it. Call it anywhere: inside a
/// running `LocalExecutor`, in a plain `#[test]`, after the zygote died. It
/// touches nothing of glommio; it registers the parent for `membarrier`, as
/// glommio would (cheap while the process has one thread), and reads
/// whether io_uring is usable here (the kernel's release and
/// `kernel.io_uring_disabled`), so that workers forked from this zygote
/// inherit the answer rather than read it for each spawn.
///
/// First thing in `main`, before any executor or other thread exists, it
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
    // Asked here, before the zygote forks, for every worker to inherit; the
    // answer itself is each worker's to give (a worker that cannot run
    // glommio fails its spawn, saying why).
    let _ = runtime::io_uring_usable();
    let zygote = parallel_zygote::Builder::new()
        .caller(<Glommio as core::Runtime>::INIT)
        .start()?;
    // Failure only means glommio registers later, slowly, by itself.
    let _ = parallel_zygote::sys::register_membarrier();
    Ok(Parallel::new(zygote))
}
