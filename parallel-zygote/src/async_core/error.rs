//! What can go wrong when work runs in another process.

use std::sync::Arc;
use std::time::Duration;

use super::codec::CodecError;
use crate::{ExitStatus, Resource, ResourceLimit};
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
    #[error(
        "worker {} died ({}){}{}{}",
        pid_text(*pid),
        status_text(status),
        call_suffix(*call),
        limit_suffix(limit),
        tail_suffix(stderr_tail)
    )]
    WorkerDied {
        /// Its pid, if it got that far.
        pid: Option<i32>,
        /// How it ended, if the zygote reported it.
        status: Option<ExitStatus>,
        /// The `run` call that was in flight and is lost.
        call: Option<u64>,
        /// The resource limit (set through [`SpawnOptions::limit`]) that
        /// explains the death, when the way it died points at one.
        ///
        /// [`SpawnOptions::limit`]: crate::SpawnOptions::limit
        limit: Option<LimitExceeded>,
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
    /// A [`SharedBytesMut`](super::SharedBytesMut) could not be created or
    /// frozen: the kernel's reason is the `source`.
    #[error("could not {action} a shared buffer of {len} bytes")]
    SharedMemory {
        /// "create" or "seal".
        action: &'static str,
        /// The buffer's length.
        len: usize,
        /// What the kernel said.
        #[source]
        source: std::io::Error,
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

fn limit_suffix(limit: &Option<LimitExceeded>) -> String {
    limit.map(|limit| format!(": {limit}")).unwrap_or_default()
}

/// A resource limit that explains a worker's death: the worker ran under
/// it (set through [`SpawnOptions::limit`](crate::SpawnOptions::limit)),
/// and the way it died is the way that limit is enforced.
///
/// The kernel enforces a CPU-time limit with SIGXCPU at the soft limit and
/// SIGKILL at the hard one, and a file-size limit with SIGXFSZ. An
/// address-space, data or stack limit makes an allocation (or the stack)
/// fail, which a Rust program answers with an abort (SIGABRT; SIGSEGV in
/// code that does not check).
///
/// ```
/// use parallel_zygote::async_core::LimitExceeded;
/// use parallel_zygote::{ExitStatus, Resource, ResourceLimit};
///
/// let cpu = ResourceLimit { resource: Resource::CpuTime, soft: 1, hard: 2 };
/// let status = ExitStatus::Signaled { signal: libc::SIGXCPU, core_dumped: false };
/// let limit = LimitExceeded::explain(&status, &[cpu]).unwrap();
/// assert!(limit.certain);
/// assert_eq!(
///     limit.to_string(),
///     "it exceeded its CPU-time limit (RLIMIT_CPU, soft 1 s, hard 2 s)"
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LimitExceeded {
    /// The limit, as the spawn set it.
    pub limit: ResourceLimit,
    /// True when the way the worker died proves it (SIGXCPU for CPU time,
    /// SIGXFSZ for file size); false when the limit is the likely cause
    /// (SIGKILL under a CPU-time hard limit, which someone else may also
    /// have sent; an abort or SIGSEGV under a memory limit).
    pub certain: bool,
}

impl LimitExceeded {
    /// The limit among `limits` that explains a worker ending with
    /// `status`, if any (see the type's docs for the rules).
    pub fn explain(status: &ExitStatus, limits: &[ResourceLimit]) -> Option<LimitExceeded> {
        let ExitStatus::Signaled { signal, .. } = *status else {
            return None;
        };
        let find = |wanted: &[Resource], certain: bool| {
            limits
                .iter()
                .rev()
                .find(|limit| wanted.contains(&limit.resource) && limit.soft != u64::MAX)
                .map(|&limit| LimitExceeded { limit, certain })
        };
        match signal {
            libc::SIGXCPU => find(&[Resource::CpuTime], true),
            libc::SIGXFSZ => find(&[Resource::FileSize], true),
            libc::SIGKILL => limits
                .iter()
                .rev()
                .find(|limit| limit.resource == Resource::CpuTime && limit.hard != u64::MAX)
                .map(|&limit| LimitExceeded {
                    limit,
                    certain: false,
                }),
            libc::SIGABRT | libc::SIGSEGV | libc::SIGBUS => find(
                &[Resource::AddressSpace, Resource::Data, Resource::Stack],
                false,
            ),
            _ => None,
        }
    }
}

impl std::fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (what, name, unit) = match self.limit.resource {
            Resource::CpuTime => ("CPU-time", "RLIMIT_CPU", Unit::Seconds),
            Resource::FileSize => ("file-size", "RLIMIT_FSIZE", Unit::Bytes),
            Resource::AddressSpace => ("address-space", "RLIMIT_AS", Unit::Bytes),
            Resource::Data => ("data-segment", "RLIMIT_DATA", Unit::Bytes),
            Resource::Stack => ("stack", "RLIMIT_STACK", Unit::Bytes),
            _ => ("resource", "rlimit", Unit::Count),
        };
        let (soft, hard) = (unit.text(self.limit.soft), unit.text(self.limit.hard));
        if self.certain {
            write!(
                f,
                "it exceeded its {what} limit ({name}, soft {soft}, hard {hard})"
            )
        } else {
            write!(
                f,
                "probably by its {what} limit ({name}, soft {soft}, hard {hard})"
            )
        }
    }
}

#[derive(Clone, Copy)]
enum Unit {
    Seconds,
    Bytes,
    Count,
}

impl Unit {
    fn text(self, value: u64) -> String {
        const MIB: u64 = 1 << 20;
        match self {
            _ if value == u64::MAX => "unlimited".into(),
            Unit::Seconds => format!("{value} s"),
            Unit::Bytes if value >= MIB && value % MIB == 0 => format!("{} MiB", value / MIB),
            Unit::Bytes => format!("{value} bytes"),
            Unit::Count => value.to_string(),
        }
    }
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

    /// The resource limit that explains a worker's death, if its death
    /// points at one (see [`LimitExceeded`]).
    pub fn limit(&self) -> Option<&LimitExceeded> {
        match self {
            Error::WorkerDied { limit, .. } => limit.as_ref(),
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

    #[test]
    fn a_death_is_blamed_on_a_limit_only_when_it_ended_the_way_that_limit_does() {
        use super::LimitExceeded;
        use crate::{ExitStatus, Resource, ResourceLimit};
        let limit = |resource, soft, hard| ResourceLimit {
            resource,
            soft,
            hard,
        };
        let signaled = |signal| ExitStatus::Signaled {
            signal,
            core_dumped: false,
        };
        let cpu = limit(Resource::CpuTime, 1, 2);
        let memory = limit(Resource::AddressSpace, 1 << 30, u64::MAX);
        let files = limit(Resource::OpenFiles, 64, 64);
        let all = [cpu, memory, files];
        let explain = |status, limits: &[ResourceLimit]| LimitExceeded::explain(&status, limits);

        let xcpu = explain(signaled(libc::SIGXCPU), &all).unwrap();
        assert_eq!((xcpu.limit, xcpu.certain), (cpu, true));
        let killed = explain(signaled(libc::SIGKILL), &all).unwrap();
        assert_eq!((killed.limit, killed.certain), (cpu, false));
        let aborted = explain(signaled(libc::SIGABRT), &all).unwrap();
        assert_eq!((aborted.limit, aborted.certain), (memory, false));
        assert_eq!(
            aborted.to_string(),
            "probably by its address-space limit (RLIMIT_AS, soft 1024 MiB, hard unlimited)"
        );

        // No limit of the kind that signal enforces: nobody to blame.
        assert_eq!(explain(signaled(libc::SIGKILL), &[memory, files]), None);
        assert_eq!(explain(signaled(libc::SIGABRT), &[cpu, files]), None);
        assert_eq!(explain(signaled(libc::SIGXFSZ), &all), None);
        assert_eq!(explain(signaled(libc::SIGTERM), &all), None);
        // An exit code is the program's own doing.
        assert_eq!(explain(ExitStatus::Exited(1), &all), None);
        // An unlimited limit is no limit.
        let unlimited = limit(Resource::CpuTime, u64::MAX, u64::MAX);
        assert_eq!(explain(signaled(libc::SIGXCPU), &[unlimited]), None);
        assert_eq!(explain(signaled(libc::SIGKILL), &[unlimited]), None);
    }
}
