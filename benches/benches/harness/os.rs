//! The OS baselines (plain fork, fork+exec, posix_spawn of this binary), the
//! parent's heap, and what the kernel tells about processes (PSS, exits).

use std::ffi::{c_char, CString};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// Set in the environment of the exec baselines: the binary exits at once,
/// before procspawn, the zygotes or anything else start.
pub const EXIT_AT_ONCE_ENV: &str = "PARALLEL_BENCH_EXIT_AT_ONCE";

/// First line of `main`: the exec baselines' children stop here.
pub fn exit_if_exec_child() {
    if std::env::var_os(EXIT_AT_ONCE_ENV).is_some() {
        // SAFETY: _exit ends the process at once; nothing else runs yet.
        unsafe { libc::_exit(0) }
    }
}

/// Plain `fork()` from this (big, multi-threaded) process; the child exits at
/// once; returns the time until `waitpid` saw it.
pub fn plain_fork() -> Duration {
    let start = Instant::now();
    // SAFETY: the child calls only `_exit`, which is async-signal-safe, so
    // the locks other threads held at the fork cannot matter.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: as above.
        unsafe { libc::_exit(0) }
    }
    assert!(pid > 0, "fork failed: {}", std::io::Error::last_os_error());
    wait_child(pid);
    start.elapsed()
}

/// This binary, ready to be executed with [`EXIT_AT_ONCE_ENV`] set. Every
/// pointer is prepared before any fork, so the child allocates nothing.
pub struct ExecTarget {
    path: CString,
    _argv: Vec<CString>,
    _envp: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    envp_ptrs: Vec<*const c_char>,
}

impl ExecTarget {
    pub fn this_binary() -> ExecTarget {
        let exe = std::env::current_exe().expect("current_exe");
        let path = CString::new(exe.into_os_string().into_encoded_bytes()).expect("path");
        let argv = vec![path.clone()];
        let envp = vec![CString::new(format!("{EXIT_AT_ONCE_ENV}=1")).expect("env")];
        let pointers = |strings: &[CString]| -> Vec<*const c_char> {
            strings
                .iter()
                .map(|s| s.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect()
        };
        ExecTarget {
            argv_ptrs: pointers(&argv),
            envp_ptrs: pointers(&envp),
            path,
            _argv: argv,
            _envp: envp,
        }
    }

    /// `fork()` then `execve()` of this binary, which exits at once; the time
    /// until `waitpid` saw it. What re-exec libraries (procspawn) pay at least.
    pub fn fork_exec(&self) -> Duration {
        let start = Instant::now();
        // SAFETY: the child calls only `execve` and `_exit`, both
        // async-signal-safe, on memory prepared before the fork.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: as above; the pointer arrays are null-terminated and
            // point into CStrings that `self` keeps alive.
            unsafe {
                libc::execve(
                    self.path.as_ptr(),
                    self.argv_ptrs.as_ptr(),
                    self.envp_ptrs.as_ptr(),
                );
                libc::_exit(127)
            }
        }
        assert!(pid > 0, "fork failed: {}", std::io::Error::last_os_error());
        wait_child(pid);
        start.elapsed()
    }

    /// `posix_spawn()` of this binary (glibc: `clone(CLONE_VM|CLONE_VFORK)`,
    /// no page-table copy), which exits at once; the time until `waitpid`.
    pub fn posix_spawn(&self) -> Duration {
        let start = Instant::now();
        let mut pid: libc::pid_t = 0;
        // SAFETY: `pid` is a valid out-pointer; null file actions and
        // attributes mean the defaults; argv and envp are null-terminated
        // arrays of pointers into CStrings kept alive by `self`.
        let error = unsafe {
            libc::posix_spawn(
                &mut pid,
                self.path.as_ptr(),
                std::ptr::null(),
                std::ptr::null(),
                self.argv_ptrs.as_ptr() as *const *mut c_char,
                self.envp_ptrs.as_ptr() as *const *mut c_char,
            )
        };
        assert_eq!(error, 0, "posix_spawn failed: errno {error}");
        wait_child(pid);
        start.elapsed()
    }
}

/// Waits for our own child and checks that it exited with 0.
fn wait_child(pid: libc::pid_t) {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer; `pid` is our child.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        if waited == pid {
            break;
        }
        let error = std::io::Error::last_os_error();
        assert_eq!(error.raw_os_error(), Some(libc::EINTR), "waitpid: {error}");
    }
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child {pid} ended with status {status:#x}"
    );
}

/// Waits (up to `limit`) until `pid`, any process, has exited, with a pidfd:
/// the benchmarks let each worker finish before the next sample starts.
/// Returns false on timeout.
pub fn wait_exit(pid: i32, limit: Duration) -> bool {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor
    // or -1; it touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return true; // ESRCH: already gone and reaped
    }
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    let millis = limit.as_millis().min(i32::MAX as u128) as i32;
    matches!(
        poll(
            &mut fds,
            PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX)
        ),
        Ok(1..)
    )
}

/// Heap the parent holds while spawning: `bytes` of 4 KiB pages, each
/// written once, so the page tables are really populated.
pub struct Heap {
    bytes: Vec<u8>,
}

impl Heap {
    pub fn touch(bytes: usize) -> Heap {
        let mut heap = vec![0u8; bytes]; // calloc: mapped, not yet touched
        const PAGE: usize = 4096;
        let start = heap.as_mut_ptr() as usize;
        let aligned = start.next_multiple_of(PAGE);
        let length = (start + bytes).saturating_sub(aligned) / PAGE * PAGE;
        if length > 0 {
            // SAFETY: the range lies inside `heap`'s allocation, is page
            // aligned, and MADV_NOHUGEPAGE changes no contents: it only keeps
            // transparent huge pages away, so the heap is made of 4 KiB pages
            // whatever the system's THP setting.
            unsafe { libc::madvise(aligned as *mut libc::c_void, length, libc::MADV_NOHUGEPAGE) };
        }
        for page in heap.iter_mut().step_by(PAGE) {
            *page = 1;
        }
        std::hint::black_box(&mut heap);
        Heap { bytes: heap }
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }
}

/// The CPU time a process has used so far, in nanoseconds (the first field
/// of `/proc/<pid>/schedstat`; clock-tick counters are too coarse for a few
/// hundred spawns).
pub fn cpu_ns(pid: i32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// PSS and RSS of a process in KiB, from `/proc/<pid>/smaps_rollup`.
pub fn pss_rss_kib(pid: i32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find(|line| line.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((field("Pss:")?, field("Rss:")?))
}

/// RSS of this process in KiB.
pub fn own_rss_kib() -> u64 {
    pss_rss_kib(std::process::id() as i32).map_or(0, |(_, rss)| rss)
}

/// The machine, for the report: CPU model, cores, kernel, THP, load.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.split(':').nth(1))
            .map(|value| value.trim().to_string())
            .unwrap_or_else(|| "?".into())
    };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let thp =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    format!(
        "cpu: {} ({} MHz), {cores} cores online; {memory}; kernel {}; THP {}; load average {}",
        field("model name"),
        field("cpu MHz"),
        kernel.trim(),
        thp.trim(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

/// Asks the kernel for 0 µs wake-up latency (PM QoS) until the returned file
/// is closed: idle CPUs then poll instead of halting. `None` (with a warning)
/// where that is not allowed.
pub fn hold_poll_idle() -> Option<std::fs::File> {
    use std::io::Write;
    let opened = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/cpu_dma_latency");
    match opened.and_then(|mut file| file.write_all(&0i32.to_ne_bytes()).map(|()| file)) {
        Ok(file) => Some(file),
        Err(error) => {
            eprintln!(
                "warning: cannot hold /dev/cpu_dma_latency at 0 ({error}); idle CPUs may halt"
            );
            None
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process, so a
/// worker's reading and the parent's can be subtracted.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Minor page faults this process has taken so far (copy-on-write faults
/// included), from `getrusage`: one cheap syscall (reading
/// `/proc/self/stat`, as this did before, cost the measured phase ~20 µs and
/// page faults of its own).
pub fn minor_faults() -> u64 {
    // SAFETY: all-zero bytes are a valid `rusage` (plain integers).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage; RUSAGE_SELF always exists.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    usage.ru_minflt as u64
}

/// Registers this process for `MEMBARRIER_CMD_PRIVATE_EXPEDITED`, as
/// `parallel_glommio::init` does: glommio issues that barrier before each
/// park of its executor and registers on the first, which takes milliseconds
/// once the process has threads; registering while single-threaded is cheap.
/// A failure only means glommio registers later, slowly.
pub fn register_membarrier() {
    const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;
    // SAFETY: membarrier takes two integers and touches no memory of ours;
    // a failure is reported through the return value, which may be ignored.
    unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED,
            0,
        );
    }
}

/// Set to print, for every `process` throughput transfer, what each thread
/// of the parent and of the worker did in it (see [`ThreadSched`]).
pub const SCHEDSTAT_ENV: &str = "PARALLEL_BENCH_SCHEDSTAT";

/// One thread's scheduler totals from `/proc/<pid>/task/<tid>/schedstat`:
/// what tells a transfer whose threads ran apart (few time slices) from one
/// where they handed the work over through extra wake-ups (many slices,
/// time spent runnable but waiting for a CPU).
#[derive(Debug, Clone)]
pub struct ThreadSched {
    pid: i32,
    tid: i32,
    name: String,
    /// Nanoseconds on a CPU.
    run_ns: u64,
    /// Nanoseconds runnable, waiting for a CPU.
    wait_ns: u64,
    /// Times it was given a CPU.
    slices: u64,
}

impl ThreadSched {
    /// Every thread of `pids`; empty unless [`SCHEDSTAT_ENV`] is set.
    pub fn of(pids: &[i32]) -> Vec<ThreadSched> {
        let mut threads = Vec::new();
        if std::env::var_os(SCHEDSTAT_ENV).is_none() {
            return threads;
        }
        for &pid in pids {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                continue;
            };
            for task in tasks.flatten() {
                let Ok(tid) = task.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let dir = format!("/proc/{pid}/task/{tid}");
                let name = std::fs::read_to_string(format!("{dir}/comm")).unwrap_or_default();
                let stat = std::fs::read_to_string(format!("{dir}/schedstat")).unwrap_or_default();
                let fields: Vec<u64> = stat
                    .split_whitespace()
                    .filter_map(|field| field.parse().ok())
                    .collect();
                if let [run_ns, wait_ns, slices] = fields[..] {
                    threads.push(ThreadSched {
                        pid,
                        tid,
                        name: name.trim().to_string(),
                        run_ns,
                        wait_ns,
                        slices,
                    });
                }
            }
        }
        threads
    }

    /// Prints one line: `took`, then each thread that ran more than 0.1 ms
    /// or was given a CPU more than ten times between `before` and `after`
    /// (`P` a thread of this process, `W` of the worker).
    pub fn report(label: &str, took: Duration, before: &[ThreadSched], after: &[ThreadSched]) {
        if after.is_empty() {
            return;
        }
        let mut line = format!("{label}: {:.1} ms |", took.as_secs_f64() * 1e3);
        for now in after {
            let then = before.iter().find(|then| then.tid == now.tid);
            let (run, wait, slices) = then.map_or((0, 0, 0), |t| (t.run_ns, t.wait_ns, t.slices));
            let (run, wait, slices) = (now.run_ns - run, now.wait_ns - wait, now.slices - slices);
            if run > 100_000 || slices > 10 {
                let side = if now.pid == std::process::id() as i32 {
                    "P"
                } else {
                    "W"
                };
                line += &format!(
                    " {side} {} {}: run {:.1} wait {:.1} slices {slices} |",
                    now.tid,
                    now.name,
                    run as f64 / 1e6,
                    wait as f64 / 1e6
                );
            }
        }
        eprintln!("{line}");
    }
}
