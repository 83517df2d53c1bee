//! The small trait an adapter implements to bind the core to one runtime,
//! on each side of the channel: [`Runtime`] for the parent (a readiness
//! socket, a timer, somewhere to run the driver) and [`WorkerRuntime`] for
//! the worker (build a runtime after the fork and run the task on it).

use std::any::Any;
use std::fmt::Debug;
use std::future::Future;
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::driver::Driver;
use super::warm::{Refill, Registered};

/// Starts a driver's task that [`Runtime::defer_driver`] prepared.
pub type StartDriver = Box<dyn FnOnce() + Send>;

/// A task as a worker runs it: one future, polled on the worker's thread.
pub type LocalTask = Pin<Box<dyn Future<Output = ()>>>;

/// What one read under readiness found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOutcome {
    /// Bytes read; 0 at end of stream.
    pub len: usize,
    /// The read was short and brought no descriptors: the socket is known to
    /// be empty, so a runtime that caches readiness may forget it now and
    /// skip the read that would only say `EAGAIN`.
    pub drained: bool,
}

/// A non-blocking stream socket registered with a runtime's reactor.
///
/// The core does its own `recvmsg`/`sendmsg` on the descriptor handed to
/// `io`; the runtime only says when to try. Workers' channels are AF_UNIX
/// sockets, which also carry descriptors; nothing else in the connection
/// layer needs AF_UNIX, so a plain byte stream (a TCP socket to a worker on
/// another host) works the same way as long as no message carries an `Fd`
/// and [`passes_descriptors`](Self::passes_descriptors) says false (large
/// messages then stay on the byte path). Both polls
/// follow one contract: call `io` when the socket may be ready; when `io`
/// fails with [`io::ErrorKind::WouldBlock`], forget the readiness that `io`
/// was tried under and wait for the next; any other result is returned.
pub trait AsyncSocket: 'static {
    /// Reads under read readiness, as the trait's docs say.
    ///
    /// # Errors
    /// Whatever `io` or the reactor returned other than `WouldBlock`.
    fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut dyn FnMut(BorrowedFd<'_>) -> io::Result<ReadOutcome>,
    ) -> Poll<io::Result<ReadOutcome>>;

    /// Writes under write readiness, as the trait's docs say.
    ///
    /// # Errors
    /// Whatever `io` or the reactor returned other than `WouldBlock`.
    fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut dyn FnMut(BorrowedFd<'_>) -> io::Result<()>,
    ) -> Poll<io::Result<()>>;
    /// Whether the socket passes descriptors (`SCM_RIGHTS`), which large
    /// `process` messages use to travel through shared memory instead of
    /// the stream. True by default, as every worker channel is an AF_UNIX
    /// socket; a byte-stream transport returns false and its large messages
    /// take the plain byte path.
    fn passes_descriptors(&self) -> bool {
        true
    }
}

impl AsyncSocket for Box<dyn AsyncSocket> {
    fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut dyn FnMut(BorrowedFd<'_>) -> io::Result<ReadOutcome>,
    ) -> Poll<io::Result<ReadOutcome>> {
        (**self).poll_read(cx, io)
    }
    fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut dyn FnMut(BorrowedFd<'_>) -> io::Result<()>,
    ) -> Poll<io::Result<()>> {
        (**self).poll_write(cx, io)
    }
    fn passes_descriptors(&self) -> bool {
        (**self).passes_descriptors()
    }
}

/// The parent's runtime: what the handles and each worker's driver need.
///
/// Implemented by a zero-sized marker type in each adapter. The core adds no
/// `Send` bound: a runtime whose sockets are `!Send` (glommio) works, and a
/// runtime that needs `Send` futures (tokio) gets them wherever its socket
/// and timer are `Send`, checked where the adapter spawns [`Driver<Self>`].
pub trait Runtime: Sized + 'static {
    /// The runtime's name, for messages ("tokio").
    const NAME: &'static str;
    /// What a user of this adapter calls to start, for messages
    /// ("parallel_tokio::init()").
    const INIT: &'static str;

    /// The parent's end of a worker channel.
    type Socket: AsyncSocket;
    /// A timer.
    type Sleep: Future<Output = ()>;
    /// The workers' runtime unless the user picks another.
    type Worker: WorkerRuntime + Default;

    /// Whether a worker channel's driver, having read answers, hands them
    /// to their callers and wakes itself to read on, rather than reading
    /// on first (the read that finds the socket empty and the reactor
    /// registration after it): the callers then write their next calls
    /// before those system calls, as a plain ping-pong does.
    ///
    /// True pays where the callers woken by the answers run before a task
    /// that woke itself, on the same thread: a single-threaded executor
    /// that runs tasks in the order they were woken (smol's global
    /// executor with its one thread, glommio's). False, the default, where
    /// a task that wakes itself may be handed to another thread: on
    /// tokio's multi-thread runtime that cost about four futex calls per
    /// call and made a call 3-6 µs slower.
    const YIELD_AFTER_ANSWERS: bool = false;

    /// Whether a caller that queues a chunk of pipelined calls writes them
    /// itself rather than leaving them all to the driver's task (see the
    /// driver's `CALLER_WRITE_CHUNK`): the worker then answers the first
    /// calls while the rest are still being made.
    ///
    /// True, the default, paid on tokio (both runtimes) and glommio:
    /// 64 calls in flight took 6-57 % less time (with the shared write
    /// buffer that came with it). False where the driver
    /// runs on a thread of its own beside the caller and each call left to
    /// it wakes that thread, which then writes what is queued so far
    /// (smol: often one call per write, and the pipelined calls turned
    /// bimodal and slower in the median; see BENCHMARKS.md, *Pipelined
    /// calls: the two processes at work together, session 9*). False
    /// concerns callers on another thread than the driver only, where
    /// [`CALLERS_READ`](Self::CALLERS_READ) tells them apart: a caller on
    /// the driver's own thread writes its chunks all the same (its chunks
    /// left to the driver waited until it yielded).
    const CALLERS_WRITE_CHUNKS: bool = true;

    /// Whether a caller waiting for its answer on another thread than its
    /// channel's driver reads the channel itself, on its own thread, when
    /// it finds the driver idle (see the driver's `Submit::poll_read`).
    ///
    /// The answer then wakes the caller directly, instead of the driver's
    /// thread, which would read it and wake the caller's thread in turn: on
    /// smol, whose drivers run on the executor's thread beside the
    /// `block_on` thread, that was two thread hand-overs per answer (or per
    /// batch of pipelined answers). What the caller registers for wakes it
    /// alone while it reads; a watchdog on the driver (every 10 ms while a
    /// caller reads) takes the channel back from a caller whose future was
    /// set aside unpolled, so that it never keeps the channel from the
    /// others for longer. Pipelined calls made on such a thread are written
    /// (in chunks) and read there too, their callers taking turns as the
    /// reader (since session 14; before, every batch of calls and of
    /// answers crossed between the two threads). False, the default, where
    /// callers and drivers mostly share a thread.
    const CALLERS_READ: bool = false;

    /// Registers a non-blocking socket with the current runtime.
    ///
    /// # Errors
    /// The reactor refused the descriptor.
    fn register(socket: UnixStream) -> io::Result<Self::Socket>;

    /// A future that completes after `duration`.
    fn sleep(duration: Duration) -> Self::Sleep;

    /// Whether the calling thread is inside this runtime, so that
    /// [`register`](Self::register) and [`spawn_driver`](Self::spawn_driver)
    /// may be called.
    fn is_current() -> bool;

    /// Runs a worker channel's driver as a task of its own until it completes.
    fn spawn_driver(driver: Driver<Self>);

    /// Prepares a one-shot spawn's driver to be started later, possibly
    /// from another thread: `Ok` with what starts its task, `Err` (the
    /// default) to have it started now with
    /// [`spawn_driver`](Self::spawn_driver).
    ///
    /// A one-shot spawn's handle polls the driver in place until the
    /// outcome is in (its task only waits meanwhile), so a task started at
    /// once is scheduled, polled and parked for nothing while the worker
    /// starts: on tokio's multi-thread runtime that woke a worker thread
    /// (which woke the other one in turn) on every cold spawn, competing
    /// for the CPUs with the zygote and the new worker. Started later, the
    /// task is scheduled once, when it has work. The returned closure may
    /// run on any thread, inside the runtime or not (a handle dropped
    /// anywhere), or never run and be dropped: where this returns `Ok`,
    /// [`Driver<Self>`](Driver) must be `Send`, and the runtime must be
    /// reachable from any thread.
    ///
    /// # Errors
    /// The driver, given back, where it must start now (the default).
    fn defer_driver(driver: Driver<Self>) -> Result<StartDriver, Driver<Self>> {
        Err(driver)
    }

    /// Runs the delayed refill of a set of pre-forked workers (see
    /// [`Parallel::warm_workers`](super::Parallel::warm_workers)) as a task
    /// of its own until it completes.
    fn spawn_refill(refill: Refill<Self>);

    /// A key for the reactor that [`register`](Self::register) uses on the
    /// calling thread, for channels registered ahead of their use: a refill
    /// of pre-forked workers registers their channels and builds their
    /// connection state on the runtime, and a spawn takes such a channel
    /// only where this returns the same key (a channel registered with
    /// another runtime is dropped, its worker killed, and replaced). Two
    /// reactors alive at once must never share a key.
    ///
    /// `None`, the default: nothing is registered ahead, and a spawn
    /// registers the channel it takes. Return `Some` only if
    /// [`share`](Self::share) boxes.
    fn reactor() -> Option<u64> {
        None
    }

    /// Boxes a channel registered ahead, to wait in a set of pre-forked
    /// workers that every clone of a `Parallel` handle shares, on any
    /// thread: `Ok(Box::new(registered))` where [`Socket`](Self::Socket)
    /// is `Send` (then [`reactor`](Self::reactor) may return `Some`). The
    /// default gives it back, and the worker is dropped.
    ///
    /// # Errors
    /// The channel, given back, when this runtime's sockets are `!Send`.
    fn share(
        registered: Box<Registered<Self>>,
    ) -> Result<Box<dyn Any + Send>, Box<Registered<Self>>> {
        Err(registered)
    }
}

/// How a worker builds its runtime after the fork, and runs its task there.
///
/// The value is the runtime's options (thread count, io memory...): it
/// travels to the worker in the Start frame, so it is a serde type. Nothing
/// of it runs in the zygote: only the worker, after the fork, builds it.
pub trait WorkerRuntime:
    Serialize + DeserializeOwned + Clone + Debug + Send + Sync + 'static
{
    /// The runtime's name, for messages ("tokio").
    const NAME: &'static str;

    /// Builds the runtime `self` describes and runs `task` to completion.
    ///
    /// # Errors
    /// The runtime could not be built: the message, in words a user can act
    /// on, reaches the parent as the call's error.
    fn block_on(self, task: LocalTask) -> Result<(), String>;

    /// Registers the worker's channel with the runtime `block_on` built;
    /// called from within the task.
    ///
    /// # Errors
    /// The reactor refused the descriptor.
    fn register(socket: UnixStream) -> io::Result<Box<dyn AsyncSocket>>;
}

/// `future`, or `None` once `limit` passed first.
pub(crate) async fn timeout<R: Runtime, F: Future>(
    limit: Duration,
    future: F,
) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut sleep = std::pin::pin!(R::sleep(limit));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(value) = future.as_mut().poll(cx) {
            return Poll::Ready(Some(value));
        }
        sleep.as_mut().poll(cx).map(|()| None)
    })
    .await
}
