//! What can go wrong when work runs in another process.

use std::time::Duration;

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
        /// The worker's pid.
        pid: i32,
        /// The `run` call that panicked, if it was one.
        call: Option<u64>,
        /// Message, location and (with `RUST_BACKTRACE=1`) backtrace.
        report: PanicReport,
    },
    /// The worker process died before answering.
    #[error("worker {} died ({}){}", pid_text(*pid), status_text(status), call_suffix(*call))]
    WorkerDied {
        /// Its pid, if it got that far.
        pid: Option<i32>,
        /// How it ended, if the zygote reported it.
        status: Option<ExitStatus>,
        /// The `run` call that was in flight and is lost.
        call: Option<u64>,
    },
    /// The call or task did not finish in time; its worker was killed.
    #[error("timed out after {after:?}; worker {} was killed", pid_text(*pid))]
    Timeout {
        /// The time limit.
        after: Duration,
        /// The worker that was killed.
        pid: Option<i32>,
    },
    /// A value could not be encoded or decoded by the codec.
    #[error("could not {action} {type_name}: {message}")]
    Codec {
        /// "encode" or "decode".
        action: &'static str,
        /// The Rust type involved.
        type_name: &'static str,
        /// What the codec said.
        message: String,
    },
    /// The worker could not do its part (e.g. decode the arguments it was sent).
    #[error("worker {pid} failed: {message}")]
    InWorker {
        /// The worker's pid.
        pid: i32,
        /// What it reported.
        message: String,
    },
    /// The zygote could not start the worker.
    #[error("the worker could not be started: {message}")]
    SpawnFailed {
        /// Why, as the zygote said.
        message: String,
    },
    /// The zygote refused or is gone.
    #[error(transparent)]
    Zygote(#[from] crate::Error),
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
}

fn call_suffix(call: Option<u64>) -> String {
    call.map(|call| format!(" during call {call}"))
        .unwrap_or_default()
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

impl Error {
    pub(crate) fn encode<T>(message: String) -> Error {
        Error::Codec {
            action: "encode",
            type_name: std::any::type_name::<T>(),
            message,
        }
    }

    pub(crate) fn decode<T>(message: String) -> Error {
        Error::Codec {
            action: "decode",
            type_name: std::any::type_name::<T>(),
            message,
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
