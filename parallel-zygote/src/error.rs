//! Every failure a user of this crate can meet.

use parallel_proto::zygote::{ExitStatus, SpawnFailure};
use parallel_proto::EntryError;

/// Errors of the zygote and its blocking client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `start` found other threads in the process.
    #[error(
        "parallel_zygote::start() must run while the process has one thread, but it has {threads}. \
         Call it first thing in main, before building an async runtime, spawning threads, or \
         starting a test harness (tests need `harness = false`)"
    )]
    MultiThreaded {
        /// Threads counted in /proc/self/task.
        threads: usize,
    },
    /// `start` was called twice in one process.
    #[error("parallel_zygote::start() was already called in this process; clone the Zygote handle instead")]
    AlreadyStarted,
    /// An entry was sealed before `start`.
    #[error("parallel_zygote::start() has not been called, so functions cannot be named for workers yet")]
    NotStarted,
    /// The zygote process is gone (killed, crashed, or shut down).
    #[error("the zygote (fork server) is gone: {reason}")]
    ZygoteGone {
        /// What was seen: EOF, a write error, or the shutdown.
        reason: String,
    },
    /// The zygote refused or failed a spawn.
    #[error("the zygote could not start the worker: {0}")]
    SpawnFailed(SpawnFailure),
    /// A derived snapshot ended before it served: its `init` left threads
    /// running, panicked, or exited. It was forked, so the zygote accepted
    /// the request; nothing was left running.
    #[error("could not create the snapshot: {reason}")]
    SnapshotFailed {
        /// How the snapshot process ended:
        /// `Exited(`[`SNAPSHOT_THREADS_EXIT_CODE`](crate::SNAPSHOT_THREADS_EXIT_CODE)`)`
        /// when init left threads running,
        /// `Exited(`[`PANIC_EXIT_CODE`](crate::PANIC_EXIT_CODE)`)` when it panicked.
        status: ExitStatus,
        /// What happened, in words (also the whole of the message).
        reason: String,
    },
    /// An entry failed verification; it was not run.
    #[error(transparent)]
    BadEntry(#[from] EntryError),
    /// The protocol refused an operation (a limit was reached) or the zygote broke it.
    #[error(transparent)]
    Protocol(#[from] parallel_proto::Error),
    /// A system call failed.
    #[error("{what} failed: {source}")]
    Os {
        /// Which operation.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn os(what: &'static str, source: impl Into<std::io::Error>) -> Error {
        Error::Os {
            what,
            source: source.into(),
        }
    }

    /// The OS error number, when a system call failed (in this process or in the zygote).
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Os { source, .. } => source.raw_os_error(),
            Error::SpawnFailed(failure) => failure.errno,
            _ => None,
        }
    }
}
