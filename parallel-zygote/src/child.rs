//! What a freshly forked child does before its entry runs.

use std::ffi::CString;
use std::os::fd::RawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};

use nix::sys::resource::{setrlimit, Resource as OsResource};
use nix::sys::signal::{SigSet, Signal};
use nix::unistd::{getppid, Pid};
use parallel_proto::zygote::{Resource, SpawnOptions};

/// Exit code of a child whose entry panicked (the same as a Rust `main` that panics).
pub const PANIC_EXIT_CODE: i32 = 101;
/// Exit code of a child whose setup failed before its entry ran.
pub const SETUP_FAILED_EXIT_CODE: i32 = 126;

/// Turns the freshly forked child into a worker, runs `entry`, and exits.
///
/// Runs in the child of the single-threaded zygote, so ordinary code is fine.
pub(crate) fn become_worker<F>(
    zygote_pid: Pid,
    zygote_fds: &[RawFd],
    mask: &SigSet,
    options: &SpawnOptions,
    default_name: &str,
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
    for limit in &options.rlimits {
        if setrlimit(os_resource(limit.resource), limit.soft, limit.hard).is_err() {
            exit_now(SETUP_FAILED_EXIT_CODE);
        }
    }
    set_process_name(options.name.as_deref().unwrap_or(default_name));
    let code = match catch_unwind(AssertUnwindSafe(entry)) {
        Ok(()) => 0,
        Err(_) => PANIC_EXIT_CODE,
    };
    // A worker is a process of its own: flush its stdio and run exit handlers.
    std::process::exit(code)
}

fn os_resource(resource: Resource) -> OsResource {
    match resource {
        Resource::AddressSpace => OsResource::RLIMIT_AS,
        Resource::CpuTime => OsResource::RLIMIT_CPU,
        Resource::FileSize => OsResource::RLIMIT_FSIZE,
        Resource::OpenFiles => OsResource::RLIMIT_NOFILE,
        Resource::CoreSize => OsResource::RLIMIT_CORE,
        Resource::Data => OsResource::RLIMIT_DATA,
        Resource::Stack => OsResource::RLIMIT_STACK,
        _ => OsResource::RLIMIT_AS,
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
