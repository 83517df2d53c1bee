//! What a freshly forked child does before its entry runs.

use std::ffi::CString;
use std::os::fd::RawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use nix::sys::resource::{setrlimit, Resource as OsResource};
use nix::sys::signal::{SigSet, Signal};
use nix::unistd::{getppid, Pid};
use parallel_proto::zygote::{Resource, ResourceLimit, SpawnFailure};

/// Exit code of a child whose entry panicked (the same as a Rust `main` that panics).
pub const PANIC_EXIT_CODE: i32 = 101;
/// Exit code of a child whose setup failed before its entry ran (a resource
/// limit could not be applied, for one).
pub const SETUP_FAILED_EXIT_CODE: i32 = 126;
/// Exit code of a derived snapshot whose `init` left other threads running:
/// it exits instead of serving, because forking workers from a
/// multi-threaded process is unsafe. [`Zygote::snapshot`] reports it as
/// [`Error::SnapshotFailed`].
///
/// [`Zygote::snapshot`]: crate::Zygote::snapshot
/// [`Error::SnapshotFailed`]: crate::Error::SnapshotFailed
pub const SNAPSHOT_THREADS_EXIT_CODE: i32 = 125;

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

/// Turns the freshly forked child into a worker, runs `entry`, and exits.
///
/// Runs in the child of the single-threaded zygote, so ordinary code is fine.
pub(crate) fn become_worker<F>(
    zygote_pid: Pid,
    zygote_fds: &[RawFd],
    mask: &SigSet,
    limits: &[OsLimit],
    name: &str,
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
    for limit in limits {
        if setrlimit(limit.resource, limit.soft, limit.hard).is_err() {
            exit_now(SETUP_FAILED_EXIT_CODE);
        }
    }
    set_process_name(name);
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
    let short: String = name.chars().filter(|c| *c != '\0').take(15).collect();
    if let Ok(name) = CString::new(short) {
        let _ = nix::sys::prctl::set_name(&name);
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
