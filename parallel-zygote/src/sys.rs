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

/// Maps into this process's page tables, without copying anything, the
/// pages of its read-only file mappings (the executable's and the shared
/// libraries' code and constants) that are in the page cache
/// (`MADV_POPULATE_READ`, Linux 5.14; on older kernels nothing happens).
///
/// A forked child shares those pages with its parent but not their page
/// table entries: the kernel fills them at the child's first touch, one
/// fault (of ~16 pages) at a time. A pre-forked worker calls this while it
/// waits, so that running its task later takes none of those faults.
pub(crate) fn populate_read_only_mappings() {
    for_each_mapping(|mapping| {
        if mapping.path.is_some_and(|path| path.starts_with('/')) && mapping.perms.starts_with("r-")
        {
            // SAFETY: MADV_POPULATE_READ only faults the mapping's pages in
            // as reading them would, changing no memory (see `populate`).
            unsafe { populate(mapping, libc::MADV_POPULATE_READ) };
        }
    });
}

/// The most [`populate_written_mappings`] copies of any one mapping: the
/// allocator's recent memory and the stack's live end, not a large heap or
/// file mapping that a snapshot's `init` shares with every worker (copying
/// those would cost each waiting worker their size in memory).
const POPULATE_MAPPING_MAX: usize = 256 * 1024;

/// Of the stack's share, how much lies above the current frame (the frames
/// of the callers, which the worker returns into).
const STACK_ABOVE: usize = 32 * 1024;

/// Gives this process its own copy, now, of the pages it shares
/// copy-on-write with the process it was forked from and will likely write
/// next (`MADV_POPULATE_WRITE`, Linux 5.14; on older kernels nothing
/// happens): the top [`POPULATE_MAPPING_MAX`] of the heap (where new
/// allocations come from), the stack around its current frame, and the
/// private writable mappings no larger than that (the program's and
/// libraries' data, the allocator's small arenas). Contents do not change.
///
/// A forked child's first write to each such page takes a fault that copies
/// it (2-5 µs each on a VM). A pre-forked worker calls this while it waits,
/// so that its task's first allocations and writes take fewer: it costs a
/// few hundred KiB of memory per waiting worker and that copying, off any
/// spawn's path.
pub(crate) fn populate_written_mappings() {
    for_each_mapping(|mapping| {
        if !mapping.perms.starts_with("rw") || !mapping.perms.ends_with('p') {
            return;
        }
        let length = mapping.end.saturating_sub(mapping.start);
        let range = match mapping.path {
            Some("[heap]") => {
                let start = mapping.end - length.min(POPULATE_MAPPING_MAX);
                Some((start, mapping.end))
            }
            Some("[stack]") => {
                // Around where this thread's stack is now (it grows down):
                // the frames of the task to come go there.
                let here = std::ptr::addr_of!(length) as usize;
                let start = here
                    .saturating_sub(POPULATE_MAPPING_MAX - STACK_ABOVE)
                    .max(mapping.start);
                let end = here.saturating_add(STACK_ABOVE).min(mapping.end);
                (start < end).then_some((start, end))
            }
            // Other pseudo-mappings ([vvar], [vdso], ...) are not ours to write.
            Some(path) if !path.starts_with('/') => None,
            _ => (length <= POPULATE_MAPPING_MAX).then_some((mapping.start, mapping.end)),
        };
        if let Some((start, end)) = range {
            let part = Mapping {
                start,
                end,
                ..*mapping
            };
            // SAFETY: MADV_POPULATE_WRITE only faults the pages in as
            // writing them would (breaking copy-on-write), changing no byte
            // of memory; the range lies within the mapping (see `populate`).
            unsafe { populate(&part, libc::MADV_POPULATE_WRITE) };
        }
    });
}

/// One line of /proc/self/maps.
#[derive(Clone, Copy)]
struct Mapping<'a> {
    start: usize,
    end: usize,
    perms: &'a str,
    /// The file, or the pseudo-mapping (`[heap]`, ...); `None` for an
    /// anonymous one.
    path: Option<&'a str>,
}

/// Calls `each` with this process's mappings, as /proc/self/maps lists
/// them now (none if it cannot be read).
fn for_each_mapping(mut each: impl FnMut(&Mapping<'_>)) {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    for line in maps.lines() {
        // "start-end perms offset dev inode path"
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        let path = fields.nth(3);
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        if let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) {
            each(&Mapping {
                start,
                end,
                perms,
                path,
            });
        }
    }
}

/// `madvise(advice)` over `mapping`; a failure (EINVAL on a kernel before
/// 5.14, EFAULT on a guard page or a page beyond a file's end) is harmless
/// and ignored.
///
/// # Safety
/// `advice` must change no memory contents (`MADV_POPULATE_READ`,
/// `MADV_POPULATE_WRITE`). The range is one of this process's mappings,
/// read from /proc/self/maps just now; should another thread unmap or remap
/// it meanwhile, the call fails or populates the new mapping, again without
/// changing its contents.
unsafe fn populate(mapping: &Mapping<'_>, advice: libc::c_int) {
    // SAFETY: see this function's contract.
    unsafe {
        libc::madvise(
            mapping.start as *mut libc::c_void,
            mapping.end.saturating_sub(mapping.start),
            advice,
        );
    }
}
