//! The fork server of `parallel`: start it first thing in `main`, then fork
//! workers from it whatever the parent has become.
//!
//! **Platform: Linux only** (`prctl`, `/proc`, `signalfd`, `sched_setaffinity`, `membarrier`): every such call is in this crate's OS modules.
//!
//! `fork()` from a big, multi-threaded async process is slow (page tables,
//! copy-on-write) and unsafe (locks held by threads that do not exist in the
//! child). So [`start`] forks **once**, while the process is still small and
//! single-threaded; that child, the *zygote*, serves requests to fork workers
//! from its clean snapshot. Spawn cost does not grow with the parent's heap.
//!
//! This crate holds the OS work (fork, descriptor passing, reaping, signals)
//! and no async runtime. The protocol lives in `parallel-proto`; the async
//! APIs in the adapters (`parallel-tokio`, ...), which build on [`Zygote`].
//!
//! # Start in main
//!
//! ```no_run
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // 1. First line: no threads exist yet.
//!     let zygote = parallel_zygote::start()?;
//!     // 2. Now anything goes: runtimes, threads, gigabytes of heap.
//!     let worker = zygote.spawn(|ctx: parallel_zygote::WorkerContext| {
//!         // Runs in a fresh process forked from the zygote.
//!         drop(ctx);
//!     })?;
//!     assert!(worker.process.wait()?.success());
//!     Ok(())
//! }
//! ```
//!
//! [`start`] works anywhere. First thing in `main`, while the process has
//! one thread, it forks the zygote (the fast path: 0.9 ms to the first spawn). Once the
//! process has threads (inside `#[tokio::main]`, in a `#[test]` under the
//! default harness) it executes the program's own binary instead, which a
//! load-time hook of this crate turns into the zygote before its `main`
//! runs (3.5 ms to the first spawn; see [`StartMethod`] for what differs).
//! A process has one zygote at a time: a later [`start`] returns another
//! handle on it while it serves, and starts a new one once it is gone.
//! An adapter names its own entry point in error messages with
//! [`Builder::caller`].
//!
//! The hook acts only when the process was executed by [`start`]: its
//! environment names a descriptor (`PARALLEL_ZYGOTE_FD`) that is an AF_UNIX
//! stream socket already holding the parent's handshake; the entry key
//! travels in that socket, never in argv or the environment. A stray
//! variable alone changes nothing.
//!
//! # The blocking client
//!
//! [`Zygote`] is cheap to clone and safe to share between threads.
//! [`Zygote::spawn`] returns a [`Worker`]: a `std` [`UnixStream`] to talk to
//! the worker and a [`WorkerProcess`] to kill it or wait for its exit. Every
//! wait also exists as a `Future` ([`PendingSpawn`], [`WorkerProcess::exited`])
//! that works on any runtime.
//!
//! # What the zygote guarantees
//!
//! - Workers close the zygote's descriptors, die with the zygote
//!   (`PR_SET_PDEATHSIG`), and are reaped by it; their exit codes, signals and
//!   core-dump flags come back as [`ExitStatus`].
//! - The zygote dies with the parent: it sees its control socket hang up (a
//!   forked zygote also has `PR_SET_PDEATHSIG` as a backstop; an executed
//!   one does not, since in a multi-threaded parent it would fire when the
//!   *thread* that started it exits), sends SIGTERM to its workers, then
//!   SIGKILL after 250 ms, and exits.
//! - Dropping the last [`Zygote`] handle shuts it down the same way; dropping a
//!   [`WorkerProcess`] kills its worker.
//! - The zygote never lingers as a zombie: once its control socket closes
//!   (it was killed, crashed, or shut down), the handle's reader thread reaps
//!   it (killing it if it has not exited 10 s later), records its exit
//!   status ([`Zygote::exit_status`], named by later [`Error::ZygoteGone`]s),
//!   and ends.
//! - Functions are named on the wire by sealed [`Entry`] tags; a tampered or
//!   foreign entry is refused before anything runs, and so is a resource
//!   limit the zygote cannot apply.
//! - A derived snapshot ([`Zygote::snapshot`]) serves only once its `init`
//!   has returned and left the process single-threaded; otherwise it exits
//!   and the call fails with [`Error::SnapshotFailed`].
//!
//! [`UnixStream`]: std::os::unix::net::UnixStream
#![warn(clippy::missing_errors_doc)]

pub mod async_core;
mod child;
mod client;
mod completion;
pub mod entry;
mod error;
mod exec;
pub mod io;
mod server;
pub mod shm;
mod start;
pub mod sys;

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

pub use child::{
    PANIC_EXIT_CODE, SETUP_FAILED_EXIT_CODE, SNAPSHOT_THREADS_EXIT_CODE, ZYGOTE_PROTOCOL_EXIT_CODE,
};
pub use client::{PendingSpawn, Worker, WorkerProcess, Zygote};
pub use entry::Entry;
pub use error::Error;
pub use parallel_proto::zygote::{ExitStatus, Resource, ResourceLimit, SpawnOptions};
pub use start::{count_threads, start, Builder, StartMethod};

/// What a worker's boot function receives.
#[derive(Debug)]
pub struct WorkerContext {
    /// The worker's end of its channel to the parent.
    pub channel: UnixStream,
    /// Descriptors the parent handed over with the spawn, in order.
    pub fds: Vec<OwnedFd>,
}
