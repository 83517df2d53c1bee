//! What a freshly forked child does before its entry runs.

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sched::{sched_setaffinity, CpuSet};
use nix::sys::resource::{setrlimit, Resource as OsResource};
use nix::sys::signal::{SigSet, Signal};
use nix::unistd::{getppid, Gid, Pid, Uid};
use parallel_proto::zygote::{Resource, ResourceLimit, SpawnFailure, SpawnOptions};

/// Exit code of a child whose entry panicked (the same as a Rust `main` that panics).
pub const PANIC_EXIT_CODE: i32 = 101;
/// Exit code of a child whose setup failed before its entry ran. A setting
/// of [`SpawnOptions`] the OS refused (a resource limit, the working
/// directory, the user id...) fails the spawn itself, with an error naming
/// it; this code remains for the rest (the parent-death signal could not be
/// armed, or the signal mask restored).
pub const SETUP_FAILED_EXIT_CODE: i32 = 126;
/// Exit code of a derived snapshot whose `init` left other threads running:
/// it exits instead of serving, because forking workers from a
/// multi-threaded process is unsafe. [`Zygote::snapshot`] reports it as
/// [`Error::SnapshotFailed`].
///
/// [`Zygote::snapshot`]: crate::Zygote::snapshot
/// [`Error::SnapshotFailed`]: crate::Error::SnapshotFailed
pub const SNAPSHOT_THREADS_EXIT_CODE: i32 = 125;
/// Exit code of a zygote whose parent broke the protocol on its control
/// socket (the zygote writes the protocol error to its stderr first).
pub const ZYGOTE_PROTOCOL_EXIT_CODE: i32 = 124;

/// How long a snapshot waits for threads that `init` joined to leave
/// `/proc/self/task`: `join` returns when the thread has released its
/// memory, a moment before the kernel unlists it.
const THREAD_EXIT_GRACE: Duration = Duration::from_millis(100);

/// One `setrlimit` in the OS's terms, checked by the zygote before it forks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OsLimit {
    resource: OsResource,
    soft: u64,
    hard: u64,
}

/// Maps the requested limits to the OS's, refusing any resource this zygote
/// does not know: the zygote answers that with a spawn failure and does not fork.
pub(crate) fn os_limits(limits: &[ResourceLimit]) -> Result<Vec<OsLimit>, SpawnFailure> {
    limits
        .iter()
        .map(|limit| match os_resource(limit.resource) {
            Some(resource) => Ok(OsLimit {
                resource,
                soft: limit.soft,
                hard: limit.hard,
            }),
            None => Err(SpawnFailure {
                errno: None,
                message: format!(
                    "the resource limit {:?} is not supported by this zygote; nothing was started",
                    limit.resource
                ),
            }),
        })
        .collect()
}

/// One fallible step of a child's setup, checked by the zygote before it
/// forks and applied by the child, in order, before its entry runs.
#[derive(Debug, Clone)]
enum Step {
    Limit(ResourceLimit, OsLimit),
    Affinity(Vec<usize>, CpuSet),
    Nice(i32),
    /// `setgroups`: `[gid]`, or none. `EPERM` is ignored (an unprivileged
    /// zygote keeps its groups; a uid or gid change then fails on its own).
    Groups(Option<u32>),
    Gid(u32),
    Uid(u32),
    /// A credential change clears the parent-death signal: armed again.
    DeathSignal,
    CurrentDir(CString),
}

impl Step {
    /// What the step does, in words, for the spawn failure.
    fn describe(&self) -> String {
        match self {
            Step::Limit(limit, _) => format!(
                "setting the resource limit {:?} to soft {} / hard {}",
                limit.resource,
                limit_text(limit.soft),
                limit_text(limit.hard)
            ),
            Step::Affinity(cpus, _) => format!("pinning the process to CPUs {cpus:?}"),
            Step::Nice(nice) => format!("setting the nice value to {nice}"),
            Step::Groups(Some(gid)) => {
                format!("setting the supplementary groups to [{gid}] (setgroups)")
            }
            Step::Groups(None) => "dropping the supplementary groups (setgroups)".into(),
            Step::Gid(gid) => format!("setting the group id to {gid} (setgid)"),
            Step::Uid(uid) => format!("setting the user id to {uid} (setuid)"),
            Step::DeathSignal => {
                "arming the parent-death signal again after the identity change".into()
            }
            Step::CurrentDir(path) => format!(
                "setting the working directory to {}",
                OsStr::from_bytes(path.as_bytes()).to_string_lossy()
            ),
        }
    }

    /// Applies the step in the freshly forked child.
    fn apply(&self, zygote_pid: Pid) -> Result<(), Errno> {
        match self {
            Step::Limit(_, limit) => setrlimit(limit.resource, limit.soft, limit.hard),
            Step::Affinity(_, set) => sched_setaffinity(Pid::from_raw(0), set),
            Step::Nice(nice) => crate::sys::set_nice(*nice),
            Step::Groups(gid) => {
                let groups: Vec<Gid> = gid.iter().map(|&gid| Gid::from_raw(gid)).collect();
                match nix::unistd::setgroups(&groups) {
                    Err(Errno::EPERM) => Ok(()),
                    result => result,
                }
            }
            Step::Gid(gid) => nix::unistd::setgid(Gid::from_raw(*gid)),
            Step::Uid(uid) => nix::unistd::setuid(Uid::from_raw(*uid)),
            Step::DeathSignal => {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                if getppid() != zygote_pid {
                    return Err(Errno::ESRCH);
                }
                Ok(())
            }
            Step::CurrentDir(path) => nix::unistd::chdir(path.as_c_str()),
        }
    }
}

fn limit_text(value: u64) -> String {
    if value == u64::MAX {
        "unlimited".into()
    } else {
        value.to_string()
    }
}

/// What a child sets up before its entry runs, from its [`SpawnOptions`]
/// (all but the name), checked by the zygote before it forks.
#[derive(Debug, Clone, Default)]
pub(crate) struct Setup {
    /// The fallible steps, in order.
    steps: Vec<Step>,
    /// Clear the environment first.
    env_clear: bool,
    /// Then set (`Some`) or remove (`None`) these variables.
    env: Vec<(OsString, Option<OsString>)>,
}

impl Setup {
    /// Checks `options` and prepares the child's work; a setting that can
    /// never succeed is refused here, before any fork.
    pub(crate) fn new(options: &SpawnOptions) -> Result<Setup, SpawnFailure> {
        let invalid = |message: String| SpawnFailure {
            errno: Some(libc::EINVAL),
            message,
        };
        let mut steps: Vec<Step> = os_limits(&options.rlimits)?
            .into_iter()
            .zip(&options.rlimits)
            .map(|(os, limit)| Step::Limit(*limit, os))
            .collect();
        if let Some(cpus) = &options.cpu_affinity {
            if cpus.is_empty() {
                return Err(invalid(
                    "the CPU affinity is an empty set of CPUs; nothing was started".into(),
                ));
            }
            let mut set = CpuSet::new();
            for &cpu in cpus {
                set.set(cpu).map_err(|_| {
                    invalid(format!(
                        "the CPU affinity names CPU {cpu}, beyond the {} CPUs the OS can                          name; nothing was started",
                        CpuSet::count()
                    ))
                })?;
            }
            steps.push(Step::Affinity(cpus.clone(), set));
        }
        if let Some(nice) = options.nice {
            steps.push(Step::Nice(nice));
        }
        if options.uid.is_some() || options.gid.is_some() {
            steps.push(Step::Groups(options.gid));
            if let Some(gid) = options.gid {
                steps.push(Step::Gid(gid));
            }
            if let Some(uid) = options.uid {
                steps.push(Step::Uid(uid));
            }
            steps.push(Step::DeathSignal);
        }
        if let Some(path) = &options.current_dir {
            let path = CString::new(path.clone()).map_err(|_| {
                invalid(format!(
                    "the working directory {:?} contains a NUL byte; nothing was started",
                    String::from_utf8_lossy(path)
                ))
            })?;
            steps.push(Step::CurrentDir(path));
        }
        let mut env = Vec::with_capacity(options.env.len());
        for change in &options.env {
            let key = OsStr::from_bytes(&change.key);
            if change.key.is_empty() || change.key.contains(&b'=') || change.key.contains(&0) {
                return Err(invalid(format!(
                    "the environment variable name {:?} is empty or contains '=' or NUL;                      nothing was started",
                    key.to_string_lossy()
                )));
            }
            if change
                .value
                .as_ref()
                .is_some_and(|value| value.contains(&0))
            {
                return Err(invalid(format!(
                    "the value of the environment variable {} contains a NUL byte;                      nothing was started",
                    key.to_string_lossy()
                )));
            }
            let value = change
                .value
                .as_ref()
                .map(|value| OsStr::from_bytes(value).to_os_string());
            env.push((key.to_os_string(), value));
        }
        Ok(Setup {
            steps,
            env_clear: options.env_clear,
            env,
        })
    }

    /// Whether a step can fail in the child, so that the zygote must hear
    /// how it went (over a pipe; a spawn without such steps has none).
    pub(crate) fn is_fallible(&self) -> bool {
        !self.steps.is_empty()
    }

    /// The failure the zygote reports when the child says step `index`
    /// failed with `errno`.
    pub(crate) fn failure(&self, index: u32, errno: i32) -> SpawnFailure {
        let what = self
            .steps
            .get(index as usize)
            .map(Step::describe)
            .unwrap_or_else(|| format!("setup step {index} of the worker"));
        SpawnFailure {
            errno: Some(errno),
            message: format!("{what} failed: {}", Errno::from_raw(errno).desc()),
        }
    }

    /// Applies the setup in the child. On a failure, tells the zygote which
    /// step failed and why over `report`, and exits.
    fn apply(&self, zygote_pid: Pid, report: Option<&OwnedFd>) {
        for (index, step) in self.steps.iter().enumerate() {
            if let Err(errno) = step.apply(zygote_pid) {
                if let Some(report) = report {
                    let mut message = [0u8; 8];
                    message[..4].copy_from_slice(&(index as u32).to_le_bytes());
                    message[4..].copy_from_slice(&(errno as i32).to_le_bytes());
                    // Eight bytes, fewer than PIPE_BUF: written at once or not at all.
                    let _ = nix::unistd::write(report, &message);
                }
                exit_now(SETUP_FAILED_EXIT_CODE);
            }
        }
        // The child is single-threaded (forked from the single-threaded
        // zygote), so nothing reads the environment while it changes.
        if self.env_clear {
            for (key, _) in std::env::vars_os() {
                std::env::remove_var(key);
            }
        }
        for (key, value) in &self.env {
            match value {
                Some(value) => std::env::set_var(key, value),
                None => std::env::remove_var(key),
            }
        }
    }
}

/// The zygote's end of a child's setup report: waits (briefly: the setup
/// takes microseconds) until the child closes its end, having set up, or
/// says which step failed. Returns `(step, errno)` for a failure.
pub(crate) fn read_setup_report(report: &OwnedFd) -> Option<(u32, i32)> {
    let mut message = [0u8; 8];
    let mut read = 0;
    while read < message.len() {
        match nix::unistd::read(report.as_raw_fd(), &mut message[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    if read < message.len() {
        return None;
    }
    let index = u32::from_le_bytes(message[..4].try_into().ok()?);
    let errno = i32::from_le_bytes(message[4..].try_into().ok()?);
    Some((index, errno))
}

/// Turns the freshly forked child into a worker, runs `entry`, and exits.
///
/// Runs in the child of the single-threaded zygote, so ordinary code is fine.
/// `report` is the write end of the setup pipe, when `setup` has fallible
/// steps: closed once the setup is done, before `entry` runs. `name` is the
/// process name to set, made by the zygote before the fork ([`ProcessName`]).
pub(crate) fn become_worker<F>(
    zygote_pid: Pid,
    zygote_fds: &[RawFd],
    mask: &SigSet,
    setup: &Setup,
    report: Option<OwnedFd>,
    name: &ProcessName,
    entry: F,
) -> !
where
    F: FnOnce(),
{
    // Die with the zygote: if it is gone, nobody would reap or kill us.
    if nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_err() || getppid() != zygote_pid {
        exit_now(SETUP_FAILED_EXIT_CODE);
    }
    // The zygote's control socket and signalfd are not ours to hold: keeping
    // them open would keep the zygote's parent from seeing it hang up.
    for &fd in zygote_fds {
        let _ = nix::unistd::close(fd);
    }
    if mask.thread_set_mask().is_err() {
        exit_now(SETUP_FAILED_EXIT_CODE);
    }
    setup.apply(zygote_pid, report.as_ref());
    // Closed explicitly (not left to close-on-exec: nothing is executed), so
    // the zygote reads the end of the report now, before the entry runs.
    drop(report);
    name.apply();
    let code = match catch_unwind(AssertUnwindSafe(entry)) {
        Ok(()) => 0,
        Err(_) => PANIC_EXIT_CODE,
    };
    // A worker is a process of its own: flush its stdio and run exit handlers.
    std::process::exit(code)
}

/// The OS resource for `resource`; `None` for one this zygote does not know
/// (`Resource` is non-exhaustive: a newer protocol crate may add variants).
fn os_resource(resource: Resource) -> Option<OsResource> {
    Some(match resource {
        Resource::AddressSpace => OsResource::RLIMIT_AS,
        Resource::CpuTime => OsResource::RLIMIT_CPU,
        Resource::FileSize => OsResource::RLIMIT_FSIZE,
        Resource::OpenFiles => OsResource::RLIMIT_NOFILE,
        Resource::CoreSize => OsResource::RLIMIT_CORE,
        Resource::Data => OsResource::RLIMIT_DATA,
        Resource::Stack => OsResource::RLIMIT_STACK,
        Resource::LockedMemory => OsResource::RLIMIT_MEMLOCK,
        _ => return None,
    })
}

/// In a derived snapshot after its `init`: returns when the process is
/// single-threaded again, and exits with [`SNAPSHOT_THREADS_EXIT_CODE`] when
/// `init` left threads running (a runtime, a logger, a reactor), since every
/// later fork from this process could inherit locks those threads hold.
pub(crate) fn exit_unless_single_threaded() {
    let deadline = Instant::now() + THREAD_EXIT_GRACE;
    loop {
        match crate::start::count_threads() {
            Ok(threads) if threads <= 1 => return,
            Ok(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
            // _exit: the other threads must not see exit handlers run under them.
            Ok(_) => exit_now(SNAPSHOT_THREADS_EXIT_CODE),
            Err(_) => exit_now(SETUP_FAILED_EXIT_CODE),
        }
    }
}

/// Sets the name `ps` and `top` show (Linux keeps 15 bytes).
pub(crate) fn set_process_name(name: &str) {
    ProcessName::new(name, None).apply();
}

/// The name a new child gets, prepared by the zygote before the fork: the
/// child only makes the `prctl` call, or nothing when its name is the one
/// it inherits. Every page a fresh child writes costs it a copy-on-write
/// fault, and every first run of some code a page-in (about 2 µs each on a
/// small VM): building the string there cost a cold spawn ~9 µs.
#[derive(Debug)]
pub(crate) struct ProcessName(Option<CString>);

impl ProcessName {
    /// The name for `name`, truncated to the 15 bytes the kernel keeps;
    /// nothing to do if `inherited` (the forking process's name) is the same.
    pub(crate) fn new(name: &str, inherited: Option<&str>) -> Self {
        let short =
            |name: &str| -> String { name.chars().filter(|c| *c != '\0').take(15).collect() };
        let wanted = short(name);
        if inherited.is_some_and(|inherited| short(inherited) == wanted) {
            return ProcessName(None);
        }
        ProcessName(CString::new(wanted).ok())
    }

    fn apply(&self) {
        if let Some(name) = &self.0 {
            let _ = nix::sys::prctl::set_name(name);
        }
    }
}

fn exit_now(code: i32) -> ! {
    // SAFETY: _exit ends the process at once; always safe.
    unsafe { libc::_exit(code) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_resource_maps_to_its_own_rlimit() {
        let known = [
            (Resource::AddressSpace, OsResource::RLIMIT_AS),
            (Resource::CpuTime, OsResource::RLIMIT_CPU),
            (Resource::FileSize, OsResource::RLIMIT_FSIZE),
            (Resource::OpenFiles, OsResource::RLIMIT_NOFILE),
            (Resource::CoreSize, OsResource::RLIMIT_CORE),
            (Resource::Data, OsResource::RLIMIT_DATA),
            (Resource::Stack, OsResource::RLIMIT_STACK),
            (Resource::LockedMemory, OsResource::RLIMIT_MEMLOCK),
        ];
        for (resource, expected) in known {
            assert_eq!(os_resource(resource), Some(expected), "{resource:?}");
        }
    }

    #[test]
    fn known_limits_pass_the_zygote_check() {
        let limits = [ResourceLimit {
            resource: Resource::LockedMemory,
            soft: 1 << 20,
            hard: 1 << 20,
        }];
        let mapped = os_limits(&limits).expect("a known resource is accepted");
        assert_eq!(mapped.len(), 1);
        assert_eq!(mapped[0].resource, OsResource::RLIMIT_MEMLOCK);
        assert_eq!((mapped[0].soft, mapped[0].hard), (1 << 20, 1 << 20));
    }
}
