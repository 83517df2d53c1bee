//! Small OS operations the adapters need and may not do themselves (the
//! adapters forbid `unsafe`; it lives here, each use with its reason).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

/// Hands an owned descriptor to a type that takes raw descriptors only
/// (a runtime's socket type without `From<OwnedFd>`), which owns it from
/// then on and closes it when dropped.
pub fn adopt_fd<T: FromRawFd>(fd: OwnedFd) -> T {
    // SAFETY: `fd` is open and owned by us (an `OwnedFd`); `into_raw_fd`
    // gives that ownership up, and `from_raw_fd` takes it over, which is
    // exactly the contract of `FromRawFd`. Nothing else refers to it.
    unsafe { T::from_raw_fd(fd.into_raw_fd()) }
}

/// Registers the process for `MEMBARRIER_CMD_PRIVATE_EXPEDITED`.
///
/// glommio registers lazily on its executor's first sleep, which is slow
/// (tens of milliseconds) once the process has threads; a worker calls this
/// first, while it still has one thread, and the registration is then cheap.
/// Registering twice is harmless.
///
/// # Errors
/// The kernel refused (older than 4.14, or membarrier disabled).
pub fn register_membarrier() -> io::Result<()> {
    const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;
    // SAFETY: membarrier takes two integers and touches no memory of ours;
    // a failure is reported through the return value and errno.
    let result = unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED,
            0,
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets this process's nice value (`setpriority(PRIO_PROCESS, 0, nice)`).
pub(crate) fn set_nice(nice: i32) -> Result<(), nix::errno::Errno> {
    // SAFETY: setpriority takes integers and touches no memory of ours; a
    // failure is reported through the return value and errno.
    let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    if result < 0 {
        return Err(nix::errno::Errno::last());
    }
    Ok(())
}

/// Puts `fd` on descriptor `target` (1 for stdout, 2 for stderr) of this
/// process: a worker's captured or discarded output, set before its task
/// runs. `None` points `target` at `/dev/null`.
///
/// # Errors
/// `/dev/null` could not be opened, or `dup2` failed.
pub(crate) fn redirect_output(fd: Option<BorrowedFd<'_>>, target: RawFd) -> io::Result<()> {
    let null;
    let source = match fd {
        Some(fd) => fd.as_raw_fd(),
        None => {
            null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
            null.as_raw_fd()
        }
    };
    // dup2 leaves the new descriptor without close-on-exec, as stdio must be.
    nix::unistd::dup2(source, target).map_err(io::Error::from)?;
    Ok(())
}
