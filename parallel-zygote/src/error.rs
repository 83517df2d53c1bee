//! Every failure a user of this crate can meet.

use parallel_proto::zygote::{ExitStatus, SpawnFailure};
use parallel_proto::EntryError;

/// Errors of the zygote and its blocking client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A start with [`StartMethod::Fork`](crate::StartMethod::Fork) found
    /// other threads in the process. (The default method executes the
    /// program anew instead.)
    #[error(
        "{caller} was asked to fork the zygote, which needs a process with one thread, but it \
         has {threads}. Call it first thing in main, before building an async runtime or \
         spawning threads, or let it start the zygote by exec (StartMethod::Auto, the default)"
    )]
    MultiThreaded {
        /// What the user called: `parallel_zygote::start()`, or the
        /// adapter's entry point (see [`Builder::caller`](crate::Builder::caller)).
        caller: &'static str,
        /// Threads counted in /proc/self/task.
        threads: usize,
    },
    /// `start` was called in a zygote (a derived snapshot's `init` runs in
    /// one), or in a process executed as a zygote whose binary does not run
    /// parallel-zygote's load-time hook (it reached `main` instead). In a
    /// worker, `start` works: it starts the worker's own zygote.
    #[error(
        "{caller} was called in a zygote process (a derived snapshot's init runs in one): a \
         zygote forks workers from its single thread and cannot start another zygote; start \
         workers from the parent, or from inside a worker, where {caller} starts the worker's \
         own zygote"
    )]
    AlreadyStarted {
        /// What the user called (see [`Builder::caller`](crate::Builder::caller)).
        caller: &'static str,
    },
    /// A zygote started by executing the program (`/proc/self/exe`) ended,
    /// or did not answer, before it served. Nothing was left running.
    #[error("the zygote executed from /proc/self/exe (pid {pid}) did not start: {reason}")]
    StartFailed {
        /// The executed process's id.
        pid: i32,
        /// How it ended, when it was reaped in time.
        status: Option<ExitStatus>,
        /// What happened, in words.
        reason: String,
    },
    /// An entry was sealed before `start`.
    #[error(
        "the zygote has not been started in this process, so functions cannot be named for \
         workers yet: call the library's init (or `parallel_zygote::start()`) first"
    )]
    NotStarted,
    /// The zygote process is gone (killed, crashed, or shut down).
    #[error("the zygote (pid {pid}) is gone: {reason}")]
    ZygoteGone {
        /// The zygote's process id.
        pid: i32,
        /// How the zygote ended, when known: the top zygote is reaped by the
        /// handle's reader thread right after its control socket closes (a
        /// derived snapshot is reaped by its own zygote, so `None` there).
        status: Option<ExitStatus>,
        /// What was seen, in words: how it exited, a shutdown, a write
        /// error, a protocol violation.
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
    #[error("{what} failed")]
    Os {
        /// Which operation.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// An error and its sources on one line ("a: b: c"), for a message that
/// must stand alone (a reason kept as text, a line on stderr).
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
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
