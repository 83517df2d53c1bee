//! Starting the zygote: forked from the parent while it is single-threaded
//! and small, or executed anew (`exec.rs`) once it has threads.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};
use nix::unistd::{fork, getpid, getppid, ForkResult};
use parallel_proto::{EntryKey, Limits};

use crate::client::Registered;
use crate::completion::lock;
use crate::server::{serve, ServeConfig};
use crate::{entry, exec, Error, Zygote};

/// What this process is in a zygote's tree: [`OUTSIDE`] (the top parent),
/// [`IN_ZYGOTE`] (a zygote, forked or executed, or a derived snapshot), or
/// [`IN_WORKER`] (a worker, set right after its fork, before its entry).
static ROLE: AtomicU8 = AtomicU8::new(OUTSIDE);
const OUTSIDE: u8 = 0;
const IN_ZYGOTE: u8 = 1;
const IN_WORKER: u8 = 2;

/// The zygote this process started, once it has: a later `start` hands out
/// another handle on it while it serves, or starts a new one once it is
/// gone. Locked for the whole of a start; a forked zygote inherits it
/// locked and never takes it.
static LIVE: Mutex<Option<Registered>> = Mutex::new(None);

/// [`LIVE`] for a worker's own zygote. A worker of a forked zygote
/// inherits `LIVE` locked (the parent held it across that fork), so a
/// worker keeps its zygote here, which no process locks across a fork: the
/// parent never takes it, and a worker starts its zygote by exec.
static NESTED: Mutex<Option<Registered>> = Mutex::new(None);

/// What error messages name when no [`Builder::caller`] was given.
const DEFAULT_CALLER: &str = "parallel_zygote::start()";

/// How [`Builder::start`] starts a zygote. Both ways give the same
/// [`Zygote`] and the same guarantees; they differ in what the zygote holds.
///
/// | | fork | exec |
/// |---|---|---|
/// | when (`Auto`) | the process has one thread | it has more (a runtime, a test harness, a logger) |
/// | the zygote's memory | the parent's at `start`: its statics, heap, loaded config | fresh: statics at their initial values, no parent heap; `main` never ran in it |
/// | `start` until the first spawn answered | about 0.9 ms (median; release build, 2 cores) | about 3.5 ms (median; 1.2 to 8 ms): spawn, load of the binary, hello |
/// | standard input | inherited | `/dev/null` |
///
/// Workers are forked from the zygote either way, so they start as fast and
/// share its memory copy-on-write. A derived snapshot
/// ([`Zygote::snapshot`]) is a way to give workers state either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StartMethod {
    /// Fork while the process is single-threaded, exec otherwise (the default).
    #[default]
    Auto,
    /// Fork only: [`Error::MultiThreaded`] when the process has threads.
    /// For a program that relies on the zygote holding its state at `start`.
    Fork,
    /// Always execute the program's binary anew (`/proc/self/exe`).
    Exec,
}

/// Options for [`start`]. Build with [`Builder::new`], finish with [`Builder::start`].
#[derive(Debug, Clone, Default)]
pub struct Builder {
    name: Option<String>,
    limits: Limits,
    caller: Option<&'static str>,
    method: StartMethod,
}

impl Builder {
    /// The defaults: the zygote is named `<program>-zygote`, limits are [`Limits::DEFAULT`].
    pub fn new() -> Self {
        Self::default()
    }

    /// The zygote's process name, as `ps` shows it (Linux keeps 15 bytes).
    #[must_use = "the setter returns the changed builder"]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Protocol limits for the control connection.
    #[must_use = "the setter returns the changed builder"]
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// What the user called, as error messages should name it (default
    /// `"parallel_zygote::start()"`). An adapter whose entry point starts
    /// the zygote passes its own, e.g. `"parallel_tokio::init()"`, so that
    /// [`Error::MultiThreaded`] and [`Error::AlreadyStarted`] point at the
    /// line the user wrote.
    #[must_use = "the setter returns the changed builder"]
    pub fn caller(mut self, caller: &'static str) -> Self {
        self.caller = Some(caller);
        self
    }

    /// How to start the zygote: [`StartMethod::Auto`] (the default) forks
    /// while the process is single-threaded and executes the program anew
    /// otherwise; [`StartMethod::Fork`] and [`StartMethod::Exec`] force one.
    #[must_use = "the setter returns the changed builder"]
    pub fn method(mut self, method: StartMethod) -> Self {
        self.method = method;
        self
    }

    /// Starts the zygote, or returns another handle on the one this process
    /// started and that still serves. See [`start`].
    ///
    /// # Errors
    /// - [`Error::MultiThreaded`] with [`StartMethod::Fork`] while the
    ///   process has more than one thread (never with the default method).
    /// - [`Error::AlreadyStarted`] in a zygote (a derived snapshot's `init`
    ///   runs in one), and in a process executed as a zygote whose load-time
    ///   hook was not linked in. (In a worker, `start` starts the worker's
    ///   own zygote, by exec.)
    /// - [`Error::StartFailed`] when a zygote started by exec ended, or did
    ///   not answer, before it served; it says how it ended.
    /// - [`Error::Os`] when a system call failed: counting threads in
    ///   `/proc/self/task`, reading the key from `/dev/urandom`, creating the
    ///   control socketpair, reading the signal mask, `fork` itself (e.g.
    ///   `EAGAIN` at the process limit), executing `/proc/self/exe`, or
    ///   starting the reader thread.
    /// - [`Error::ZygoteGone`] when a forked zygote died before its hello
    ///   could be sent.
    pub fn start(self) -> Result<Zygote, Error> {
        let caller = self.caller.unwrap_or(DEFAULT_CALLER);
        let role = ROLE.load(Ordering::SeqCst);
        if role == IN_ZYGOTE {
            // A zygote forks from its one thread: it must not start another.
            return Err(Error::AlreadyStarted { caller });
        }
        if std::env::var_os(exec::MARKER).is_some() && !exec::hook_ran() {
            // Executed as a zygote, but this binary's hook never ran, so it
            // reached `main`: starting another zygote would recurse.
            return Err(Error::AlreadyStarted { caller });
        }
        // Held for the whole start: concurrent first calls (tests on many
        // threads) start one zygote and share it. In the fork path the
        // process is single-threaded, so nothing else can hold it, and the
        // forked zygote never takes it (its ROLE is set first). A worker
        // uses its own slot (see NESTED).
        let in_worker = role == IN_WORKER;
        let mut live = lock(if in_worker { &NESTED } else { &LIVE });
        if let Some(registered) = live.as_ref() {
            if let Ok(zygote) = registered.handle() {
                return Ok(zygote);
            }
            // Gone (killed, crashed, or shut down): start a new one below.
        }
        let fork = match self.method {
            // A worker's zygote is always executed: a worker's runtime has
            // threads, and its zygote must be a process of its own that
            // dies when the worker's end of its control socket closes.
            _ if in_worker => false,
            StartMethod::Exec => false,
            method => {
                let threads = count_threads()?;
                if threads > 1 && method == StartMethod::Fork {
                    return Err(Error::MultiThreaded { caller, threads });
                }
                threads == 1
            }
        };
        let key = match entry::key() {
            // A zygote ran before: its replacement keeps the key, so entries
            // sealed already stay valid. A worker inherited the key of its
            // tree, and hands it to its own zygote.
            Ok(key) => key.to_bytes(),
            Err(_) => {
                let mut key = [0u8; 16];
                std::fs::File::open("/dev/urandom")
                    .and_then(|mut random| random.read_exact(&mut key))
                    .map_err(|e| Error::os("reading the entry key from /dev/urandom", e))?;
                // Installed before the fork, so the zygote and its workers inherit it.
                entry::install_key(EntryKey::from_bytes(key));
                key
            }
        };
        let name = self.name.unwrap_or_else(default_name);
        let zygote = if fork {
            fork_zygote(name, self.limits)?
        } else {
            exec_zygote(&EntryKey::from_bytes(key), &name, self.limits)?
        };
        *live = Some(zygote.register());
        raise_descriptor_limit();
        Ok(zygote)
    }
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit (at most
/// 2^20), best effort, as Go's runtime does: the parent holds a descriptor
/// per live worker, and the usual soft limit of 1024 would stop it near a
/// thousand workers. Done after the zygote started, so the zygote and the
/// workers keep the limit the program had (code that uses `select` keeps
/// working there).
fn raise_descriptor_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let target = hard.min(1 << 20);
        if soft < target {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, target, hard);
        }
    }
}

/// The fork path: the process is single-threaded (checked by the caller).
fn fork_zygote(name: String, limits: Limits) -> Result<Zygote, Error> {
    let (parent_end, zygote_end) =
        UnixStream::pair().map_err(|e| Error::os("creating the control socketpair", e))?;
    let child_mask =
        SigSet::thread_get_mask().map_err(|e| Error::os("reading the signal mask", e))?;
    let parent_pid = getpid();
    // SAFETY: the process has exactly one thread (checked by the caller), so
    // the child inherits no lock held by another thread and may run
    // ordinary code; it never returns from `serve`.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            mark_zygote();
            drop(parent_end);
            // The backstop for a parent that dies without closing the
            // socket: the kernel sends SIGTERM, which `serve` handles as
            // a shutdown. If the parent is already gone, shut down now.
            if nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).is_err() || getppid() != parent_pid {
                // SAFETY: _exit is always safe.
                unsafe { libc::_exit(1) }
            }
            serve(ServeConfig {
                control: zygote_end,
                limits,
                name,
                child_mask,
            })
        }
        Ok(ForkResult::Parent { child }) => {
            drop(zygote_end);
            Zygote::connect(parent_end, child.as_raw(), limits, true, StartMethod::Fork)
        }
        Err(errno) => Err(Error::os("forking the zygote", errno)),
    }
}

/// How long an executed zygote gets to say hello: its load time plus the
/// program's other constructors. It takes a few milliseconds.
const EXEC_HELLO_WAIT: Duration = Duration::from_secs(10);

/// The exec path: executes this program's binary, whose load-time hook
/// (`exec.rs`) becomes the zygote. Waits for its hello, so that a zygote
/// that cannot serve fails here, saying why, and not at the first spawn.
fn exec_zygote(key: &EntryKey, name: &str, limits: Limits) -> Result<Zygote, Error> {
    let (socket, pid) = exec::spawn_zygote(key, limits, name)?;
    let zygote = Zygote::connect(socket, pid, limits, true, StartMethod::Exec)?;
    zygote.wait_ready(EXEC_HELLO_WAIT)?;
    Ok(zygote)
}

/// Marks this process as a zygote, where `start` refuses to run.
pub(crate) fn mark_zygote() {
    ROLE.store(IN_ZYGOTE, Ordering::SeqCst);
}

/// Marks this process as a worker, where `start` starts the worker's own
/// zygote (by exec).
pub(crate) fn mark_worker() {
    ROLE.store(IN_WORKER, Ordering::SeqCst);
}

/// Starts the zygote, the clean snapshot every worker is forked from; call
/// it anywhere.
///
/// - **First thing in `main`**, while the process has one thread, it forks
///   the zygote: the fastest start, and the zygote holds the process's state
///   at that moment.
/// - **Anywhere else** (inside `#[tokio::main]`, in a `#[test]` under the
///   default harness, after a logger started its thread) it executes the
///   program's own binary (`/proc/self/exe`), which becomes the zygote
///   before its `main` would run, because a fork from a multi-threaded
///   process can leave the child holding locks that no thread will ever
///   release. See [`StartMethod`] for how the two differ.
///
/// **Inside a worker** it starts the worker's own zygote, by exec (the
/// worker is its parent), so a worker can start workers of its own; the
/// tree still dies with the top parent: each zygote kills its workers when
/// its parent's end of the control socket closes. Inside a zygote (a
/// derived snapshot's `init`) it is refused with [`Error::AlreadyStarted`].
///
/// A process has one zygote at a time. Called again while it serves, `start`
/// returns another handle on it (whatever the thread count; the
/// [`Builder`]'s name, limits and method of the later call do not apply), so
/// tests running on many threads share one zygote. Called after the zygote
/// is gone (killed, crashed, or shut down when its last handle was dropped),
/// it starts a new one. Handles on the old zygote stay dead: their spawns
/// fail with [`Error::ZygoteGone`], which says how it ended; call `start`
/// (or the adapter's `init()`) again for a working handle, and rebuild
/// derived snapshots from it.
///
/// # Errors
/// As [`Builder::start`]: [`Error::AlreadyStarted`] in a zygote,
/// [`Error::StartFailed`] when an executed zygote did not come up,
/// [`Error::Os`] when a system call (the fork or the spawn among them)
/// failed, and [`Error::ZygoteGone`] when a forked zygote died at once.
///
/// ```no_run
/// fn main() -> Result<(), parallel_zygote::Error> {
///     let zygote = parallel_zygote::start()?; // first line of main: a fork
///     // ... now build the runtime, start threads, spawn workers ...
///     # drop(zygote);
///     Ok(())
/// }
/// ```
pub fn start() -> Result<Zygote, Error> {
    Builder::new().start()
}

/// Threads of this process, from `/proc/self/task`.
///
/// # Errors
/// [`Error::Os`] when `/proc/self/task` cannot be listed (no `/proc`
/// mounted, or the descriptor limit reached).
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
