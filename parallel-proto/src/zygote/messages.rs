//! The zygote protocol's messages and their kind tags.

use serde::{Deserialize, Serialize};

use crate::codec::{decode_body, encode_body, expect_empty};
use crate::entry::WireEntry;
use crate::RemoteError;

/// Version carried in both hellos; a mismatch is fatal.
///
/// Version 2 appended the environment, working directory, identity, CPU
/// affinity and nice fields to [`SpawnOptions`].
pub const ZYGOTE_PROTOCOL_VERSION: u32 = 2;

/// Names a spawn or snapshot request until its reply arrives. Chosen by the client.
pub type RequestId = u64;
/// Names a live worker (or derived snapshot). Chosen by the zygote.
pub type WorkerId = u64;

/// Options for a new worker or snapshot: start from the default and set
/// what you need (new options can then be added without breaking you).
///
/// Everything but the name is applied in the child right after the fork,
/// before its entry runs, in this order: resource limits, CPU affinity, nice
/// value, groups / group id / user id, working directory, environment. A
/// setting the OS refuses fails the spawn with an error that names it and
/// carries the OS error number (`parallel_zygote::Error::errno`); nothing
/// runs. Options left at their default cost nothing.
///
/// ```
/// use parallel_proto::zygote::{Resource, SpawnOptions};
///
/// let options = SpawnOptions::default()
///     .name("resizer")
///     .limit(Resource::AddressSpace, 1 << 30, 1 << 30)
///     .env("RESIZER_THREADS", "1")
///     .env_remove("DISPLAY")
///     .current_dir("/tmp")
///     .cpu_affinity([0])
///     .nice(5);
/// assert_eq!(options.name.as_deref(), Some("resizer"));
/// assert_eq!(options.env.len(), 2);
/// assert_eq!(options.cpu_affinity.as_deref(), Some(&[0][..]));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SpawnOptions {
    /// Process name shown by `ps` (Linux keeps the first 15 bytes).
    pub name: Option<String>,
    /// Resource limits applied in the child before its entry runs.
    pub rlimits: Vec<ResourceLimit>,
    // Protocol version 2 appended the fields below: postcard encodes fields
    // in order, so they stay last, in this order.
    /// Start from an empty environment (then apply [`env`](Self::env)).
    pub env_clear: bool,
    /// Environment changes, applied in order after [`env_clear`](Self::env_clear);
    /// one per variable.
    pub env: Vec<EnvChange>,
    /// The working directory (the path's bytes).
    pub current_dir: Option<Vec<u8>>,
    /// The user id to switch to (dropping privileges).
    pub uid: Option<u32>,
    /// The group id to switch to; supplementary groups become this group alone.
    pub gid: Option<u32>,
    /// The CPUs the process may run on (`sched_setaffinity`).
    pub cpu_affinity: Option<Vec<usize>>,
    /// The nice value (`setpriority`), -20 (favoured) to 19.
    pub nice: Option<i32>,
}

/// One change to a worker's environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvChange {
    /// The variable's name (bytes: Unix names need not be UTF-8).
    pub key: Vec<u8>,
    /// Its new value, or `None` to remove it.
    pub value: Option<Vec<u8>>,
}

/// The bytes of an OS string: on Unix exactly its bytes (the encoding
/// `as_encoded_bytes` documents as the platform's own there).
fn os_bytes(value: &std::ffi::OsStr) -> Vec<u8> {
    value.as_encoded_bytes().to_vec()
}

impl SpawnOptions {
    /// The process name `ps` shows.
    #[must_use = "the setter returns the changed options"]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Adds a resource limit (`u64::MAX` means unlimited), applied in the
    /// child before its entry runs.
    ///
    /// A worker that dies the way the kernel or the Rust runtime enforces a
    /// limit (SIGXCPU or SIGKILL for CPU time, SIGXFSZ for file size, an
    /// abort after a failed allocation under an address-space, data or
    /// stack limit) gets a death error naming that limit and its values
    /// (`parallel_zygote::async_core::Error::limit`).
    #[must_use = "the setter returns the changed options"]
    pub fn limit(mut self, resource: Resource, soft: u64, hard: u64) -> Self {
        self.rlimits.push(ResourceLimit {
            resource,
            soft,
            hard,
        });
        self
    }

    /// Sets an environment variable in the worker (as `Command::env`). A
    /// name that is empty or holds `=` or NUL, or a value holding NUL, fails
    /// the spawn (`EINVAL`).
    #[must_use = "the setter returns the changed options"]
    pub fn env(self, key: impl AsRef<std::ffi::OsStr>, value: impl AsRef<std::ffi::OsStr>) -> Self {
        self.env_change(os_bytes(key.as_ref()), Some(os_bytes(value.as_ref())))
    }

    /// Sets several environment variables (as `Command::envs`).
    #[must_use = "the setter returns the changed options"]
    pub fn envs<I, K, V>(self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<std::ffi::OsStr>,
        V: AsRef<std::ffi::OsStr>,
    {
        vars.into_iter()
            .fold(self, |options, (key, value)| options.env(key, value))
    }

    /// Removes an environment variable from the worker's environment.
    #[must_use = "the setter returns the changed options"]
    pub fn env_remove(self, key: impl AsRef<std::ffi::OsStr>) -> Self {
        self.env_change(os_bytes(key.as_ref()), None)
    }

    /// Starts the worker's environment empty: it inherits nothing from the
    /// zygote, and the variables set before this call are dropped too (as
    /// `Command::env_clear`); those set after it apply.
    #[must_use = "the setter returns the changed options"]
    pub fn env_clear(mut self) -> Self {
        self.env_clear = true;
        self.env.clear();
        self
    }

    /// The worker's working directory. One that does not exist (or may not
    /// be entered) fails the spawn, naming it and the OS error.
    #[must_use = "the setter returns the changed options"]
    pub fn current_dir(mut self, path: impl AsRef<std::path::Path>) -> Self {
        self.current_dir = Some(os_bytes(path.as_ref().as_os_str()));
        self
    }

    /// Runs the worker as this user (`setuid`, after the groups and group
    /// id): dropping privileges needs the zygote to run as root (or with
    /// `CAP_SETUID`); otherwise the spawn fails with `EPERM`. Without a
    /// [`gid`](Self::gid), supplementary groups are dropped when allowed.
    #[must_use = "the setter returns the changed options"]
    pub fn uid(mut self, uid: u32) -> Self {
        self.uid = Some(uid);
        self
    }

    /// Runs the worker with this group id (`setgroups([gid])`, then
    /// `setgid`, before any [`uid`](Self::uid) change).
    #[must_use = "the setter returns the changed options"]
    pub fn gid(mut self, gid: u32) -> Self {
        self.gid = Some(gid);
        self
    }

    /// Pins the worker to these CPUs (`sched_setaffinity`). An empty set,
    /// or a CPU the machine does not have, fails the spawn.
    #[must_use = "the setter returns the changed options"]
    pub fn cpu_affinity(mut self, cpus: impl IntoIterator<Item = usize>) -> Self {
        let mut cpus: Vec<usize> = cpus.into_iter().collect();
        cpus.sort_unstable();
        cpus.dedup();
        self.cpu_affinity = Some(cpus);
        self
    }

    /// The worker's nice value (-20 to 19; `setpriority`). A value below the
    /// zygote's needs `CAP_SYS_NICE`, or the spawn fails with `EACCES`.
    #[must_use = "the setter returns the changed options"]
    pub fn nice(mut self, nice: i32) -> Self {
        self.nice = Some(nice);
        self
    }

    /// One change per variable: a later one replaces an earlier one.
    fn env_change(mut self, key: Vec<u8>, value: Option<Vec<u8>>) -> Self {
        self.env.retain(|change| change.key != key);
        self.env.push(EnvChange { key, value });
        self
    }
}

/// One `setrlimit` to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceLimit {
    /// Which resource.
    pub resource: Resource,
    /// Soft limit (`u64::MAX` means unlimited).
    pub soft: u64,
    /// Hard limit (`u64::MAX` means unlimited).
    pub hard: u64,
}

/// The resources a spawn may limit (the portable subset of `RLIMIT_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Resource {
    /// `RLIMIT_AS`: address space in bytes.
    AddressSpace,
    /// `RLIMIT_CPU`: CPU time in seconds.
    CpuTime,
    /// `RLIMIT_FSIZE`: largest file in bytes.
    FileSize,
    /// `RLIMIT_NOFILE`: open file descriptors.
    OpenFiles,
    /// `RLIMIT_CORE`: core file size in bytes.
    CoreSize,
    /// `RLIMIT_DATA`: data segment in bytes.
    Data,
    /// `RLIMIT_STACK`: stack in bytes.
    Stack,
    /// `RLIMIT_MEMLOCK`: memory locked into RAM (`mlock`, `io_uring`
    /// rings), in bytes. glommio, for one, refuses to start with less than
    /// 512 KiB, so its workers may need to raise it.
    ///
    /// Lowering the limits is always allowed, and so is raising the soft
    /// limit up to the current hard one. Raising the hard limit (which a soft
    /// limit above the current hard one requires) needs `CAP_SYS_RESOURCE`,
    /// as root has. Without it `setrlimit` fails in the child before its
    /// entry runs, and the spawn fails with an error naming the limit and
    /// the OS error, as it does for a soft limit above the hard one.
    // Appended last: postcard names variants by index, so the others keep theirs.
    LockedMemory,
}

/// How a worker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    /// It called `exit` with this code.
    Exited(i32),
    /// A signal killed it.
    Signaled {
        /// The signal number.
        signal: i32,
        /// Whether it dumped core.
        core_dumped: bool,
    },
}

impl ExitStatus {
    /// True for `Exited(0)`.
    pub fn success(&self) -> bool {
        matches!(self, ExitStatus::Exited(0))
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Exited(code) => write!(f, "exited with code {code}"),
            ExitStatus::Signaled {
                signal,
                core_dumped,
            } => {
                write!(f, "killed by signal {signal}")?;
                match (signal_name(*signal), *core_dumped) {
                    (Some(name), true) => write!(f, " ({name}, core dumped)"),
                    (Some(name), false) => write!(f, " ({name})"),
                    (None, true) => f.write_str(" (core dumped)"),
                    (None, false) => Ok(()),
                }
            }
        }
    }
}

/// The name of a signal as Linux numbers it on the common architectures
/// (x86, Arm, RISC-V, PowerPC, s390), for messages; elsewhere (other
/// systems, and MIPS and SPARC, which number some signals differently) the
/// number alone.
fn signal_name(signal: i32) -> Option<&'static str> {
    const NAMES: [&str; 31] = [
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    let linux_numbering = cfg!(target_os = "linux")
        && !cfg!(any(
            target_arch = "mips",
            target_arch = "mips64",
            target_arch = "sparc",
            target_arch = "sparc64"
        ));
    if !linux_numbering {
        return None;
    }
    let index = usize::try_from(signal).ok()?.checked_sub(1)?;
    NAMES.get(index).copied()
}

/// Why the zygote could not start a worker or snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnFailure {
    /// The OS error number, when a system call failed.
    pub errno: Option<i32>,
    /// What failed, in words.
    pub message: String,
}

impl std::fmt::Display for SpawnFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        if let Some(errno) = self.errno {
            write!(f, " (errno {errno})")?;
        }
        Ok(())
    }
}

/// Ask the zygote for a worker. The frame carries at least one fd: the
/// worker's end of its channel first, then any fds for the worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnRequest {
    /// Matches the reply.
    pub request: RequestId,
    /// The function the worker runs first, handed its channel.
    pub boot: WireEntry,
    /// Name, limits, environment, identity and placement.
    pub options: SpawnOptions,
}

/// Ask the zygote for a derived snapshot: a child zygote that runs `init`
/// with `args`, then serves spawns on the one fd the frame carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRequest {
    /// Matches the reply.
    pub request: RequestId,
    /// The init function.
    pub init: WireEntry,
    /// Its serialized arguments.
    #[serde(with = "crate::copy::bytes")]
    pub args: Vec<u8>,
    /// Name, limits, environment, identity and placement of the snapshot process (its workers inherit them).
    pub options: SpawnOptions,
}

/// Parent → zygote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToZygote {
    /// First message: the parent's protocol version.
    Hello {
        /// [`ZYGOTE_PROTOCOL_VERSION`].
        version: u32,
    },
    /// Start a worker.
    Spawn(SpawnRequest),
    /// Send a signal to a live worker.
    Kill {
        /// Which worker.
        worker: WorkerId,
        /// The signal number.
        signal: i32,
    },
    /// Start a derived snapshot.
    Snapshot(SnapshotRequest),
    /// Terminate every worker and exit.
    Shutdown,
}

/// Zygote → parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromZygote {
    /// First message: the zygote's version and pid.
    Hello {
        /// [`ZYGOTE_PROTOCOL_VERSION`].
        version: u32,
        /// The zygote's process id.
        pid: i32,
    },
    /// A worker runs.
    Spawned {
        /// The request this answers.
        request: RequestId,
        /// Its id from now on.
        worker: WorkerId,
        /// Its process id.
        pid: i32,
    },
    /// A derived snapshot runs (its init has not necessarily finished).
    SnapshotReady {
        /// The request this answers.
        request: RequestId,
        /// Its id (it is reaped like a worker).
        worker: WorkerId,
        /// Its process id.
        pid: i32,
    },
    /// A spawn or snapshot request failed; nothing runs.
    SpawnFailed {
        /// The request this answers.
        request: RequestId,
        /// Why.
        failure: SpawnFailure,
    },
    /// A worker or snapshot ended and was reaped.
    Exited {
        /// Which one.
        worker: WorkerId,
        /// How.
        status: ExitStatus,
    },
}

#[derive(Serialize, Deserialize)]
struct HelloBody {
    version: u32,
}
#[derive(Serialize, Deserialize)]
struct ServerHelloBody {
    version: u32,
    pid: i32,
}
#[derive(Serialize, Deserialize)]
struct KillBody {
    worker: WorkerId,
    signal: i32,
}
#[derive(Serialize, Deserialize)]
struct StartedBody {
    request: RequestId,
    worker: WorkerId,
    pid: i32,
}
#[derive(Serialize, Deserialize)]
struct FailedBody {
    request: RequestId,
    failure: SpawnFailure,
}
#[derive(Serialize, Deserialize)]
struct ExitedBody {
    worker: WorkerId,
    status: ExitStatus,
}

impl ToZygote {
    /// Kind tag of the frame.
    pub fn kind(&self) -> u8 {
        match self {
            ToZygote::Hello { .. } => 0x01,
            ToZygote::Spawn(_) => 0x02,
            ToZygote::Kill { .. } => 0x03,
            ToZygote::Snapshot(_) => 0x04,
            ToZygote::Shutdown => 0x05,
        }
    }

    /// The message's name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            ToZygote::Hello { .. } => "Hello",
            ToZygote::Spawn(_) => "Spawn",
            ToZygote::Kill { .. } => "Kill",
            ToZygote::Snapshot(_) => "Snapshot",
            ToZygote::Shutdown => "Shutdown",
        }
    }

    /// The frame payload.
    pub fn encode_payload(&self) -> Vec<u8> {
        match self {
            ToZygote::Hello { version } => encode_body(&HelloBody { version: *version }),
            ToZygote::Spawn(request) => encode_body(request),
            ToZygote::Kill { worker, signal } => encode_body(&KillBody {
                worker: *worker,
                signal: *signal,
            }),
            ToZygote::Snapshot(request) => encode_body(request),
            ToZygote::Shutdown => Vec::new(),
        }
    }

    /// Decodes a frame's kind and payload.
    ///
    /// # Errors
    /// [`RemoteError::UnknownKind`] if `kind` names no message the parent
    /// sends, and [`RemoteError::Malformed`] if the payload does not decode
    /// as that message completely (trailing bytes included).
    pub fn decode(kind: u8, payload: &[u8]) -> Result<ToZygote, RemoteError> {
        Ok(match kind {
            0x01 => {
                let body: HelloBody = decode_body("Hello", payload)?;
                ToZygote::Hello {
                    version: body.version,
                }
            }
            0x02 => ToZygote::Spawn(decode_body("Spawn", payload)?),
            0x03 => {
                let body: KillBody = decode_body("Kill", payload)?;
                ToZygote::Kill {
                    worker: body.worker,
                    signal: body.signal,
                }
            }
            0x04 => ToZygote::Snapshot(decode_body("Snapshot", payload)?),
            0x05 => {
                expect_empty("Shutdown", payload)?;
                ToZygote::Shutdown
            }
            kind => {
                return Err(RemoteError::UnknownKind {
                    protocol: "zygote",
                    kind,
                })
            }
        })
    }
}

impl FromZygote {
    /// Kind tag of the frame.
    pub fn kind(&self) -> u8 {
        match self {
            FromZygote::Hello { .. } => 0x81,
            FromZygote::Spawned { .. } => 0x82,
            FromZygote::SnapshotReady { .. } => 0x83,
            FromZygote::SpawnFailed { .. } => 0x84,
            FromZygote::Exited { .. } => 0x85,
        }
    }

    /// The message's name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            FromZygote::Hello { .. } => "Hello",
            FromZygote::Spawned { .. } => "Spawned",
            FromZygote::SnapshotReady { .. } => "SnapshotReady",
            FromZygote::SpawnFailed { .. } => "SpawnFailed",
            FromZygote::Exited { .. } => "Exited",
        }
    }

    /// The frame payload.
    pub fn encode_payload(&self) -> Vec<u8> {
        match self.clone() {
            FromZygote::Hello { version, pid } => encode_body(&ServerHelloBody { version, pid }),
            FromZygote::Spawned {
                request,
                worker,
                pid,
            }
            | FromZygote::SnapshotReady {
                request,
                worker,
                pid,
            } => encode_body(&StartedBody {
                request,
                worker,
                pid,
            }),
            FromZygote::SpawnFailed { request, failure } => {
                encode_body(&FailedBody { request, failure })
            }
            FromZygote::Exited { worker, status } => encode_body(&ExitedBody { worker, status }),
        }
    }

    /// Decodes a frame's kind and payload.
    ///
    /// # Errors
    /// [`RemoteError::UnknownKind`] if `kind` names no message the zygote
    /// sends, and [`RemoteError::Malformed`] if the payload does not decode
    /// as that message completely (trailing bytes included).
    pub fn decode(kind: u8, payload: &[u8]) -> Result<FromZygote, RemoteError> {
        Ok(match kind {
            0x81 => {
                let body: ServerHelloBody = decode_body("Hello", payload)?;
                FromZygote::Hello {
                    version: body.version,
                    pid: body.pid,
                }
            }
            0x82 => {
                let body: StartedBody = decode_body("Spawned", payload)?;
                FromZygote::Spawned {
                    request: body.request,
                    worker: body.worker,
                    pid: body.pid,
                }
            }
            0x83 => {
                let body: StartedBody = decode_body("SnapshotReady", payload)?;
                FromZygote::SnapshotReady {
                    request: body.request,
                    worker: body.worker,
                    pid: body.pid,
                }
            }
            0x84 => {
                let body: FailedBody = decode_body("SpawnFailed", payload)?;
                FromZygote::SpawnFailed {
                    request: body.request,
                    failure: body.failure,
                }
            }
            0x85 => {
                let body: ExitedBody = decode_body("Exited", payload)?;
                FromZygote::Exited {
                    worker: body.worker,
                    status: body.status,
                }
            }
            kind => {
                return Err(RemoteError::UnknownKind {
                    protocol: "zygote",
                    kind,
                })
            }
        })
    }
}
