//! What can go wrong when work runs in another process.

use std::sync::Arc;
use std::time::Duration;

use super::codec::CodecError;
use crate::ExitStatus;
use parallel_proto::channel::PanicReport;

/// Errors of the async API, the same for every adapter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The worker's function panicked. The worker survives a panic in a
    /// `run` call; a panicking `spawn` or `process` function ends its worker.
    #[error("worker {pid} {report}{}", call_suffix(*call))]
    Panicked {
        /// The worker's pid (always known: a worker says it before it runs
        /// anything; `pid` is an `Option` only where a worker may not have
        /// got that far).
        pid: i32,
        /// The `run` call that panicked, if it was one.
        call: Option<u64>,
        /// Message, location (file, line, column) and backtrace (captured
        /// unless [`Parallel::capture_backtraces`](super::Parallel::capture_backtraces)
        /// turned it off).
        report: PanicReport,
    },
    /// The worker process died before answering.
    #[error("worker {} died ({}){}{}", pid_text(*pid), status_text(status), call_suffix(*call), tail_suffix(stderr_tail))]
    WorkerDied {
        /// Its pid, if it got that far.
        pid: Option<i32>,
        /// How it ended, if the zygote reported it.
        status: Option<ExitStatus>,
        /// The `run` call that was in flight and is lost.
        call: Option<u64>,
        /// The last lines the worker wrote to its stderr, oldest first, when
        /// it was captured ([`Output::Capture`](super::Output::Capture)):
        /// at most [`STDERR_TAIL_LINES`](super::STDERR_TAIL_LINES) lines and
        /// [`STDERR_TAIL_BYTES`](super::STDERR_TAIL_BYTES) bytes. `Display`
        /// shows the last one only.
        stderr_tail: Vec<String>,
    },
    /// The call or task did not finish in time; its worker was killed.
    #[error("timed out after {after:?}; worker {} was killed", pid_text(*pid))]
    Timeout {
        /// The time limit.
        after: Duration,
        /// The worker that was killed.
        pid: Option<i32>,
    },
    /// A value could not be encoded or decoded by the codec, here or in
    /// the worker (`in_worker`).
    #[error("could not {action} {type_name}{}", if *in_worker { " in the worker" } else { "" })]
    Codec {
        /// "encode" or "decode".
        action: &'static str,
        /// The Rust type involved.
        type_name: &'static str,
        /// Whether the worker's side failed (its arguments did not decode,
        /// or its result did not encode).
        in_worker: bool,
        /// What the codec said.
        #[source]
        source: CodecError,
    },
    /// The worker could not do its part (e.g. decode the arguments it was sent).
    #[error("worker {pid} failed: {message}")]
    InWorker {
        /// The worker's pid.
        pid: i32,
        /// What it reported.
        message: String,
    },
    /// The zygote could not start the worker (the cause, with its OS error
    /// number if any, is the `source`; see also [`errno`](Self::errno)).
    #[error("the worker could not be started")]
    SpawnFailed {
        /// Why, as the zygote said.
        #[source]
        source: Arc<crate::Error>,
    },
    /// The zygote refused or is gone: workers in flight died with it.
    #[error(transparent)]
    Zygote(Arc<crate::Error>),
    /// The worker broke the protocol (or a limit was hit).
    #[error("protocol error on the worker channel")]
    Protocol(#[from] parallel_proto::Error),
    /// A socket operation failed.
    #[error("worker channel I/O failed")]
    Io(#[from] std::io::Error),
    /// A worker was requested outside the adapter's runtime.
    #[error("parallel needs a {runtime} runtime here: call spawn, run, process and Pool::new from within it")]
    NoRuntime {
        /// The runtime the adapter binds to ("tokio").
        runtime: &'static str,
    },
    /// The worker or channel was already closed.
    #[error("the worker channel is closed")]
    Closed,
    /// The pool was shut down (or killed): it takes no new calls, and calls
    /// still queued were refused.
    #[error("the pool was shut down: it takes no new calls")]
    ShutDown,
    /// The pooled call was withdrawn while it waited for a worker
    /// ([`PoolTask::kill`](super::PoolTask::kill)); it never ran.
    #[error("the pooled call was cancelled before it ran")]
    Cancelled,
}

fn call_suffix(call: Option<u64>) -> String {
    call.map(|call| format!(" during call {call}"))
        .unwrap_or_default()
}

/// The last stderr line, cut to a readable length.
fn tail_suffix(tail: &[String]) -> String {
    const SHOWN: usize = 200;
    let Some(last) = tail.last() else {
        return String::new();
    };
    let mut end = last.len().min(SHOWN);
    while !last.is_char_boundary(end) {
        end -= 1;
    }
    let more = if end < last.len() { "..." } else { "" };
    format!("; its last stderr line: {:?}{more}", &last[..end])
}

fn pid_text(pid: Option<i32>) -> String {
    pid.map(|pid| pid.to_string())
        .unwrap_or_else(|| "(not started)".into())
}

fn status_text(status: &Option<ExitStatus>) -> String {
    status
        .map(|status| status.to_string())
        .unwrap_or_else(|| "exit status unknown".into())
}

impl From<crate::Error> for Error {
    fn from(error: crate::Error) -> Self {
        Error::Zygote(Arc::new(error))
    }
}

impl Error {
    pub(crate) fn encode<T>(source: CodecError) -> Error {
        Error::Codec {
            action: "encode",
            type_name: std::any::type_name::<T>(),
            in_worker: false,
            source,
        }
    }

    pub(crate) fn decode<T>(source: CodecError) -> Error {
        Error::Codec {
            action: "decode",
            type_name: std::any::type_name::<T>(),
            in_worker: false,
            source,
        }
    }

    /// The OS error number behind a failed spawn or a zygote error, if a
    /// system call failed (here or in the zygote).
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::SpawnFailed { source } | Error::Zygote(source) => source.errno(),
            Error::Io(error) => error.raw_os_error(),
            _ => None,
        }
    }

    /// The last lines a dead worker wrote to its captured stderr, oldest
    /// first (empty when stderr was not captured, or for other errors).
    pub fn stderr_tail(&self) -> &[String] {
        match self {
            Error::WorkerDied { stderr_tail, .. } => stderr_tail,
            _ => &[],
        }
    }

    /// The signal that killed the worker, if that is what happened.
    pub fn signal(&self) -> Option<i32> {
        match self {
            Error::WorkerDied {
                status: Some(ExitStatus::Signaled { signal, .. }),
                ..
            } => Some(*signal),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::Error;

    /// An anyhow/eyre report prints Display, then each source: a cause in
    /// both would be printed twice.
    fn assert_cause_once(error: &Error, cause: &str) {
        let source = error.source().map(ToString::to_string).unwrap_or_default();
        assert!(source.contains(cause), "{error:?}: source {source:?}");
        assert!(
            !error.to_string().contains(cause),
            "Display repeats the cause: {error}"
        );
    }

    #[test]
    fn wrapped_errors_keep_their_cause_only_as_source() {
        let io = Error::from(std::io::Error::other("socket exploded"));
        assert_cause_once(&io, "socket exploded");
        let protocol = Error::from(parallel_proto::Error::from(
            parallel_proto::LocalError::UnknownCall(7),
        ));
        let text = std::error::Error::source(&protocol).unwrap().to_string();
        assert_cause_once(&protocol, &text);
        let codec = Error::decode::<u32>("not a number".into());
        assert_cause_once(&codec, "not a number");
        let zygote_os = crate::Error::Os {
            what: "forking",
            source: std::io::Error::other("out of pids"),
        };
        let spawn = Error::SpawnFailed {
            source: std::sync::Arc::new(zygote_os),
        };
        assert_cause_once(&spawn, "forking failed");
        let chain = spawn.source().and_then(|s| s.source()).unwrap().to_string();
        assert_eq!(chain, "out of pids");
        assert!(!spawn.source().unwrap().to_string().contains("out of pids"));
    }
}
