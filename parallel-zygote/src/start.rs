//! Starting the zygote: the one fork from the parent, made while it is
//! single-threaded and small.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use nix::sys::signal::{SigSet, Signal};
use nix::unistd::{fork, getpid, getppid, ForkResult};
use parallel_proto::{EntryKey, Limits};

use crate::client::Registered;
use crate::completion::lock;
use crate::server::{serve, ServeConfig};
use crate::{entry, Error, Zygote};

/// Set (for good) just before the fork; inherited by the zygote and workers.
static STARTED: AtomicBool = AtomicBool::new(false);

/// The zygote this process started, once it has: a later `start` hands out
/// another handle on it, or says how it ended. Never locked across a fork,
/// so forked processes inherit it unlocked (and empty: it is filled after).
static LIVE: Mutex<Option<Registered>> = Mutex::new(None);

/// What error messages name when no [`Builder::caller`] was given.
const DEFAULT_CALLER: &str = "parallel_zygote::start()";

/// Options for [`start`]. Build with [`Builder::new`], finish with [`Builder::start`].
#[derive(Debug, Clone, Default)]
pub struct Builder {
    name: Option<String>,
    limits: Limits,
    caller: Option<&'static str>,
}

impl Builder {
    /// The defaults: the zygote is named `<program>-zygote`, limits are [`Limits::DEFAULT`].
    pub fn new() -> Self {
        Self::default()
    }

    /// The zygote's process name, as `ps` shows it (Linux keeps 15 bytes).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Protocol limits for the control connection.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// What the user called, as error messages should name it (default
    /// `"parallel_zygote::start()"`). An adapter whose entry point starts
    /// the zygote passes its own, e.g. `"parallel_tokio::init()"`, so that
    /// [`Error::MultiThreaded`], [`Error::CannotRestart`] and
    /// [`Error::AlreadyStarted`] point at the line the user wrote.
    pub fn caller(mut self, caller: &'static str) -> Self {
        self.caller = Some(caller);
        self
    }

    /// Forks the zygote, or returns another handle on the one this process
    /// already started. See [`start`].
    pub fn start(self) -> Result<Zygote, Error> {
        let caller = self.caller.unwrap_or(DEFAULT_CALLER);
        if let Some(registered) = lock(&LIVE).as_ref() {
            // Started before: no fork, so the thread count does not matter.
            return registered.handle().map_err(|gone| Error::CannotRestart {
                caller,
                pid: gone.pid,
                status: gone.status,
                reason: gone.reason,
            });
        }
        if STARTED.load(Ordering::SeqCst) {
            // In a process forked from the one that started (a worker), or
            // after a start that failed past the fork.
            return Err(Error::AlreadyStarted { caller });
        }
        let threads = count_threads()?;
        if threads > 1 {
            return Err(Error::MultiThreaded { caller, threads });
        }
        // Single-threaded: nothing can start concurrently with this call.
        STARTED.store(true, Ordering::SeqCst);
        let mut key = [0u8; 16];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut random| random.read_exact(&mut key))
            .map_err(|e| Error::os("reading the entry key from /dev/urandom", e))?;
        // Installed before the fork, so the zygote and its workers inherit it.
        entry::install_key(EntryKey::from_bytes(key));
        let name = self.name.unwrap_or_else(default_name);
        let (parent_end, zygote_end) =
            UnixStream::pair().map_err(|e| Error::os("creating the control socketpair", e))?;
        let child_mask =
            SigSet::thread_get_mask().map_err(|e| Error::os("reading the signal mask", e))?;
        let parent_pid = getpid();
        // SAFETY: the process has exactly one thread (checked above), so the
        // child inherits no lock held by another thread and may run ordinary
        // code; it never returns from `serve`.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => {
                drop(parent_end);
                // The backstop for a parent that dies without closing the
                // socket: the kernel sends SIGTERM, which `serve` handles as
                // a shutdown. If the parent is already gone, shut down now.
                if nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).is_err()
                    || getppid() != parent_pid
                {
                    // SAFETY: _exit is always safe.
                    unsafe { libc::_exit(1) }
                }
                serve(ServeConfig {
                    control: zygote_end,
                    limits: self.limits,
                    name,
                    child_mask,
                })
            }
            Ok(ForkResult::Parent { child }) => {
                drop(zygote_end);
                let zygote = Zygote::connect(parent_end, child.as_raw(), self.limits, true)?;
                *lock(&LIVE) = Some(zygote.register());
                Ok(zygote)
            }
            Err(errno) => Err(Error::os("forking the zygote", errno)),
        }
    }
}

/// Forks the zygote, the clean snapshot every worker is forked from.
///
/// **Call it first thing in `main`**, before anything starts a thread: before
/// building a tokio (or any) runtime, before a logger with a background
/// thread, before a test harness. It counts `/proc/self/task` and refuses with
/// [`Error::MultiThreaded`] otherwise, because a fork from a multi-threaded
/// process can leave the child holding locks that no thread will ever release.
///
/// A process forks one zygote. Called again while that zygote serves, `start`
/// returns another handle on it (whatever the thread count; the
/// [`Builder`]'s name and limits of the later call do not apply). Called
/// again after the zygote is gone (killed, crashed, or shut down when its
/// last handle was dropped), it fails with [`Error::CannotRestart`], which
/// says how the zygote ended: the process has threads by then, so a new
/// zygote cannot be forked safely.
///
/// ```no_run
/// fn main() -> Result<(), parallel_zygote::Error> {
///     let zygote = parallel_zygote::start()?; // first line of main
///     // ... now build the runtime, start threads, spawn workers ...
///     # drop(zygote);
///     Ok(())
/// }
/// ```
pub fn start() -> Result<Zygote, Error> {
    Builder::new().start()
}

/// Threads of this process, from `/proc/self/task`.
pub fn count_threads() -> Result<usize, Error> {
    let entries = std::fs::read_dir("/proc/self/task")
        .map_err(|e| Error::os("listing /proc/self/task to count threads", e))?;
    Ok(entries.count())
}

fn default_name() -> String {
    let program = std::fs::read_to_string("/proc/self/comm").unwrap_or_default();
    let program: String = program.trim().chars().take(8).collect();
    format!("{program}-zygote")
}
