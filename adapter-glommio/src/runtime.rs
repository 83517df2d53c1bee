//! The binding itself: glommio's reactor, timer and `spawn_local` for the
//! parent, and the executor a worker builds after its fork.
//!
//! glommio 0.9 can neither wait on an arbitrary descriptor nor send or
//! receive `SCM_RIGHTS`, so the bridge is: the core keeps doing its own
//! `recvmsg`/`sendmsg` on the std socket, and glommio only says when to try
//! (see the crate docs, "How the channel waits", for the costs).

use std::future::Future;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{ready, Context, Poll, Wake, Waker};
use std::time::Duration;

use glommio::timer::Timer;
use glommio::{GlommioError, LocalExecutorBuilder, Placement};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use parallel_zygote::async_core::{
    self as core, AsyncSocket, Driver, LocalTask, ReadOutcome, Refill,
};
use serde::{Deserialize, Serialize};

/// The glommio runtime, as the core sees it. You rarely name it: the aliases
/// of this crate ([`Parallel`](crate::Parallel), [`Run`](crate::Run), ...)
/// fill it in.
#[derive(Debug, Clone, Copy)]
pub struct Glommio;

impl core::Runtime for Glommio {
    const NAME: &'static str = "glommio";
    const INIT: &'static str = "parallel_glommio::init()";
    type Socket = GlommioSocket;
    type Sleep = GlommioSleep;
    type Worker = GlommioWorker;
    /// The executor is the calling thread's, and runs its tasks in the
    /// order they were woken.
    const YIELD_AFTER_ANSWERS: bool = true;

    fn register(socket: UnixStream) -> io::Result<GlommioSocket> {
        GlommioSocket::new(socket)
    }

    /// Capped at about 30 years: glommio adds the duration to `Instant::now()`
    /// unchecked, so `Duration::MAX` as a time limit would panic.
    fn sleep(duration: Duration) -> GlommioSleep {
        GlommioSleep(Timer::new(duration.min(SLEEP_MAX)))
    }

    /// glommio 0.9 has no public way to ask "is this thread running an
    /// executor?" that does not panic when the answer is no
    /// (`glommio::executor().id()` panics outside one; the non-panicking
    /// check is crate-private). So the question is asked that way, under
    /// `catch_unwind`: inside an executor it costs nothing; outside, which is
    /// a misuse answered with [`Error::NoRuntime`](crate::Error::NoRuntime),
    /// the panic hook prints glommio's panic message once per call before the
    /// error is returned (and a program built with `panic = "abort"` aborts
    /// there instead).
    fn is_current() -> bool {
        catch_unwind(|| glommio::executor().id()).is_ok()
    }

    /// The driver runs on the executor that started the worker: keep that
    /// executor running while the worker's handles are in use.
    fn spawn_driver(driver: Driver<Self>) {
        glommio::spawn_local(driver).detach();
    }

    fn spawn_refill(refill: Refill<Self>) {
        glommio::spawn_local(refill).detach();
    }
}

/// The longest sleep: "never", in practice.
const SLEEP_MAX: Duration = Duration::from_secs(30 * 365 * 24 * 60 * 60);

/// The first wait for write readiness, doubled up to [`WRITE_WAIT_MAX`].
const WRITE_WAIT_MIN: Duration = Duration::from_micros(50);
/// The longest wait between two write-readiness checks.
const WRITE_WAIT_MAX: Duration = Duration::from_millis(2);

/// A pending wait for read readiness.
type Peek = Pin<Box<dyn Future<Output = io::Result<usize>>>>;

/// A worker channel on glommio's reactor (`!Send`, like everything glommio).
pub struct GlommioSocket {
    /// Our socket: the core reads and writes it (with descriptors).
    socket: UnixStream,
    /// A duplicate, adopted by glommio: only ever peeked, to wait for data.
    peer: Rc<glommio::net::UnixStream>,
    /// The peek in flight, if the last read found nothing.
    peek: Option<Peek>,
    /// What the peek is polled with (see [`PeekWaker`]).
    peek_waker: Arc<PeekWaker>,
    /// Read before waiting: no `EAGAIN` or draining read since the last wait.
    try_read: bool,
    /// The timer before the next write-readiness check, after an `EAGAIN`.
    write_wait: Option<Timer>,
    /// The delay of that timer.
    write_delay: Duration,
}

impl std::fmt::Debug for GlommioSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlommioSocket")
            .field("socket", &self.socket)
            .field("waiting_to_read", &self.peek.is_some())
            .field("waiting_to_write", &self.write_wait.is_some())
            .finish()
    }
}

impl GlommioSocket {
    /// Registers `socket` (made non-blocking) with the current executor.
    fn new(socket: UnixStream) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        let copy = socket.as_fd().try_clone_to_owned()?;
        Ok(GlommioSocket {
            socket,
            peer: Rc::new(parallel_zygote::sys::adopt_fd(copy)),
            peek: None,
            peek_waker: Arc::default(),
            try_read: true,
            write_wait: None,
            write_delay: WRITE_WAIT_MIN,
        })
    }
}

impl AsyncSocket for GlommioSocket {
    fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut dyn FnMut(BorrowedFd<'_>) -> io::Result<ReadOutcome>,
    ) -> Poll<io::Result<ReadOutcome>> {
        loop {
            if !self.try_read {
                self.peek_waker.task_is(cx.waker());
                let fresh = self.peek.is_none();
                let peer = &self.peer;
                let peek = self.peek.get_or_insert_with(|| {
                    let peer = Rc::clone(peer);
                    // MSG_PEEK: the byte, and any descriptors, stay queued
                    // for our recvmsg. Ok(0) is the end of the stream, which
                    // the read then reports.
                    Box::pin(async move { Ok(peer.peek(&mut [0u8; 1]).await?) })
                });
                // Polled once, then only after glommio woke it.
                if !fresh && !self.peek_waker.take_fired() {
                    return Poll::Pending;
                }
                let waker = Waker::from(Arc::clone(&self.peek_waker));
                let peeked = ready!(peek.as_mut().poll(&mut Context::from_waker(&waker)));
                self.peek = None;
                peeked?;
                self.try_read = true;
            }
            match io(self.socket.as_fd()) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => self.try_read = false,
                result => {
                    // A draining read: the next one would only say EAGAIN.
                    self.try_read = !matches!(result, Ok(ReadOutcome { drained: true, .. }));
                    return Poll::Ready(result);
                }
            }
        }
    }

    fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut dyn FnMut(BorrowedFd<'_>) -> io::Result<()>,
    ) -> Poll<io::Result<()>> {
        loop {
            if let Some(timer) = &mut self.write_wait {
                ready!(Pin::new(timer).poll(cx));
                if !writable_now(self.socket.as_fd())? {
                    self.write_delay = (self.write_delay * 2).min(WRITE_WAIT_MAX);
                    self.write_wait = Some(Timer::new(self.write_delay));
                    continue;
                }
                self.write_wait = None;
            }
            // Optimistic: most writes fit at once.
            match io(self.socket.as_fd()) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    self.write_delay = WRITE_WAIT_MIN;
                    self.write_wait = Some(Timer::new(WRITE_WAIT_MIN));
                }
                result => return Poll::Ready(result),
            }
        }
    }
}

/// The one waker a pending peek is polled with, forwarding glommio's
/// wake-up to whichever task polls the socket now.
///
/// glommio keeps a clone of the waker of every poll of a pending read
/// (`Source::collect_rw` pushes one per poll) and counts a task's wakers in
/// an `i16`. Polled with the task's own waker on each of the task's wake-ups
/// (every message sent, every write wait), a read that stayed pending for
/// 32,768 of them overflowed that count and glommio aborted the process.
/// Polled with this waker, and only once it fired, the peek holds one.
#[derive(Default)]
struct PeekWaker {
    fired: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl PeekWaker {
    /// Records the task to wake.
    fn task_is(&self, waker: &Waker) {
        let mut task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        if !task.as_ref().is_some_and(|task| task.will_wake(waker)) {
            *task = Some(waker.clone());
        }
    }

    /// Whether glommio woke the peek since the last call.
    fn take_fired(&self) -> bool {
        self.fired.swap(false, Ordering::AcqRel)
    }
}

impl Wake for PeekWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            task.wake();
        }
    }
}

/// Whether a write may succeed now: `POLLOUT`, or an error or hang-up that
/// the write will report.
fn writable_now(socket: BorrowedFd<'_>) -> io::Result<bool> {
    match poll(
        &mut [PollFd::new(socket, PollFlags::POLLOUT)],
        PollTimeout::ZERO,
    ) {
        Ok(ready) => Ok(ready > 0),
        Err(Errno::EINTR) => Ok(false),
        Err(error) => Err(error.into()),
    }
}

/// A glommio timer as the core's sleep: completes with `()`.
#[derive(Debug)]
pub struct GlommioSleep(Timer);

impl Future for GlommioSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(drop)
    }
}

/// The executor a glommio worker builds after its fork: a
/// [`glommio::LocalExecutor`] on the worker's main thread, unbound to any
/// CPU, that runs the function (which may `glommio::spawn_local`).
///
/// The defaults are the smallest that measured well: glommio's own defaults
/// (10 MiB of io memory, 128-deep rings) cost every worker time and locked
/// memory for storage I/O that a channel does not do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlommioWorker {
    /// Memory registered with io_uring for storage I/O, in bytes (default
    /// 64 KiB, glommio's floor: less is rounded up to it).
    pub io_memory: usize,
    /// Depth of each io_uring ring (default 8; 2 to 4 measured several times
    /// slower, and less than 2 is raised to 2, as glommio panics on 1).
    pub ring_depth: usize,
}

impl Default for GlommioWorker {
    fn default() -> Self {
        GlommioWorker {
            io_memory: 64 << 10,
            ring_depth: 8,
        }
    }
}

/// The least locked memory glommio 0.9 starts with.
const MIN_LOCKED_MEMORY: u64 = 512 << 10;

/// What a worker says when glommio cannot get an io_uring.
const NO_IO_URING: &str = "io_uring is unavailable (blocked by seccomp/container policy or \
    kernel.io_uring_disabled=2, or kernel older than 5.8): glommio cannot run here; run the \
    workers on another runtime with `parallel.worker_runtime(...)`";

impl core::WorkerRuntime for GlommioWorker {
    const NAME: &'static str = "glommio";

    fn block_on(self, task: LocalTask) -> Result<(), String> {
        ensure_locked_memory()?;
        io_uring_usable()?;
        // While the worker still has one thread, where it is cheap; glommio
        // would otherwise register on its first sleep, slowly, once its
        // blocking-pool thread exists. A failure only costs that time.
        let _ = parallel_zygote::sys::register_membarrier();
        let builder = LocalExecutorBuilder::new(Placement::Unbound)
            .io_memory(self.io_memory)
            .ring_depth(self.ring_depth.max(2));
        // glommio panics (in a lazy static) when io_uring is refused, and the
        // worker's panic hook only records it: turn it into the message.
        let executor = match catch_unwind(AssertUnwindSafe(|| builder.make())) {
            Ok(Ok(executor)) => executor,
            Ok(Err(GlommioError::IoError(error))) if io_uring_refused(&error) => {
                return Err(NO_IO_URING.into())
            }
            Ok(Err(error)) => return Err(format!("glommio could not build its executor: {error}")),
            Err(_) => return Err(NO_IO_URING.into()),
        };
        executor.run(task);
        Ok(())
    }

    fn register(socket: UnixStream) -> io::Result<Box<dyn AsyncSocket>> {
        Ok(Box::new(GlommioSocket::new(socket)?))
    }
}

/// Raises the worker's soft `RLIMIT_MEMLOCK` toward 1 MiB (within the hard
/// limit) when it is below glommio's 512 KiB, or says how to.
fn ensure_locked_memory() -> Result<(), String> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_MEMLOCK)
        .map_err(|error| format!("reading RLIMIT_MEMLOCK failed: {error}"))?;
    if soft >= MIN_LOCKED_MEMORY {
        return Ok(());
    }
    let raised = hard.min(1 << 20);
    if raised >= MIN_LOCKED_MEMORY && setrlimit(Resource::RLIMIT_MEMLOCK, raised, hard).is_ok() {
        return Ok(());
    }
    Err(format!(
        "glommio needs at least 512 KiB of locked memory (RLIMIT_MEMLOCK), the worker has {} KiB \
         (hard limit {} KiB): raise it with `ulimit -l` before starting the program, or in the \
         worker with SpawnOptions rlimits Resource::LockedMemory",
        soft >> 10,
        hard >> 10
    ))
}

/// Whether building a ring failed because io_uring is refused here.
fn io_uring_refused(error: &io::Error) -> bool {
    let code = error.raw_os_error().map(Errno::from_raw);
    matches!(code, Some(Errno::ENOSYS | Errno::EPERM))
}

/// Whether glommio can get an io_uring here, as [`check_io_uring`] found
/// it, once per process tree: [`crate::init`] asks before the zygote forks,
/// so its workers inherit the answer instead of reading two files of
/// `/proc` each (8.5 µs, 10 system calls, of every cold spawn).
static IO_URING: OnceLock<Result<(), String>> = OnceLock::new();

/// [`check_io_uring`], asked once per process (and inherited by forks).
pub(crate) fn io_uring_usable() -> Result<(), String> {
    IO_URING.get_or_init(check_io_uring).clone()
}

/// Refuses up front what would make glommio exit the process (a kernel
/// older than 5.8) or panic (io_uring disabled by sysctl).
fn check_io_uring() -> Result<(), String> {
    if let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        let mut numbers = release
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|part| part.parse::<u32>().ok());
        if let (Some(major), Some(minor)) = (numbers.next(), numbers.next()) {
            if (major, minor) < (5, 8) {
                return Err(format!("{NO_IO_URING} (this kernel is {})", release.trim()));
            }
        }
    }
    match std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        Ok(disabled) if disabled.trim() == "2" => Err(NO_IO_URING.into()),
        _ => Ok(()),
    }
}
