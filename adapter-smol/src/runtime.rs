//! The binding itself: async-io's reactor and timer and smol's global
//! executor for the parent, and the executor a worker builds after its fork.
//!
//! Nothing here runs before [`init`](crate::init) forks the zygote, nor in
//! the zygote: the first use of an `Async`, a `Timer` or `smol::spawn` in a
//! process starts async-io's reactor and threads, and a process forked after
//! that inherits a reactor it cannot use. Workers fork from the zygote, which
//! never touched it, and build their own on first use.

use std::any::Any;
use std::cell::Cell;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use std::sync::Arc;

use async_io::{Async, ReadableOwned, Timer, WritableOwned};
use parallel_zygote::async_core::{
    self as core, AsyncSocket, Driver, LocalTask, ReadOutcome, Refill, Registered,
};
use serde::{Deserialize, Serialize};
use smol::LocalExecutor;

/// The smol runtime, as the core sees it. You rarely name it: the aliases of
/// this crate ([`Parallel`](crate::Parallel), [`Run`](crate::Run), ...) fill
/// it in.
#[derive(Debug, Clone, Copy)]
pub struct Smol;

impl core::Runtime for Smol {
    const NAME: &'static str = "smol";
    const INIT: &'static str = "parallel_smol::init()";
    type Socket = SmolSocket;
    type Sleep = SmolSleep;
    type Worker = SmolWorker;
    /// smol's global executor runs its tasks in the order they were woken,
    /// on one thread (unless `SMOL_THREADS` asks for more).
    const YIELD_AFTER_ANSWERS: bool = true;
    /// The caller (often the `block_on` thread) and the drivers (the
    /// executor's thread) are two threads: see the trait's doc. A caller
    /// in a task of smol's executor, on the drivers' thread, writes its
    /// chunks all the same.
    const CALLERS_WRITE_CHUNKS: bool = false;
    /// A caller in the `block_on` future reads its answers (and writes its
    /// pipelined calls) on its own thread rather than have the executor's
    /// thread do it and wake it: see the trait's doc.
    const CALLERS_READ: bool = true;

    fn register(socket: UnixStream) -> io::Result<SmolSocket> {
        SmolSocket::new(socket)
    }

    fn sleep(duration: Duration) -> SmolSleep {
        SmolSleep(Timer::after(duration))
    }

    /// Always: async-io's reactor and smol's global executor serve any
    /// thread, inside `smol::block_on` or not.
    fn is_current() -> bool {
        true
    }

    fn spawn_driver(driver: Driver<Self>) {
        smol::spawn(driver).detach();
    }

    fn spawn_refill(refill: Refill<Self>) {
        smol::spawn(refill).detach();
    }

    /// One key: async-io has one reactor per process, which serves every
    /// thread.
    fn reactor() -> Option<u64> {
        Some(0)
    }

    fn share(
        registered: Box<Registered<Self>>,
    ) -> Result<Box<dyn Any + Send>, Box<Registered<Self>>> {
        Ok(registered)
    }
}

/// A worker channel on async-io's reactor.
///
/// Both directions do the I/O first and wait for readiness only after
/// `EAGAIN` (async-io's own pattern): interest is registered per wait, so a
/// socket that nobody waits on for writing never wakes the reactor.
///
/// A wait is an owned readiness future kept until it completes, rather than
/// `Async::poll_readable`: that one keeps one waker per direction and wakes
/// the one it replaces, while the core polls a channel's read from two
/// tasks in turn (a caller reading its answer, then the driver), so each
/// hand-over would wake the other task for nothing. A kept future's waker
/// is replaced silently, as tokio's are.
///
/// The core's [`ReadOutcome::drained`] hint is not used. Waiting for
/// readiness before the read that follows a drained one saves that read's
/// `EAGAIN`, but async-io reports an event only when a reactor tick later
/// than the wait's registration delivered it, so a reply that the running
/// tick delivers costs a second reactor round: 1000 sequential calls were
/// about 30% slower that way (release build, one core).
pub struct SmolSocket {
    socket: Arc<Async<UnixStream>>,
    /// The wait for read readiness after a read said `EAGAIN`.
    readable: Option<ReadableOwned<UnixStream>>,
    /// The wait for write readiness after a write said `EAGAIN`.
    writable: Option<WritableOwned<UnixStream>>,
}

impl SmolSocket {
    fn new(socket: UnixStream) -> io::Result<Self> {
        Ok(SmolSocket {
            socket: Arc::new(Async::new(socket)?),
            readable: None,
            writable: None,
        })
    }
}

impl std::fmt::Debug for SmolSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmolSocket")
            .field("socket", self.socket.get_ref())
            .field("waiting_to_read", &self.readable.is_some())
            .field("waiting_to_write", &self.writable.is_some())
            .finish()
    }
}

impl AsyncSocket for SmolSocket {
    fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut dyn FnMut(BorrowedFd<'_>) -> io::Result<ReadOutcome>,
    ) -> Poll<io::Result<ReadOutcome>> {
        poll_io(
            &self.socket,
            &mut self.readable,
            Async::readable_owned,
            cx,
            io,
        )
    }

    fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut dyn FnMut(BorrowedFd<'_>) -> io::Result<()>,
    ) -> Poll<io::Result<()>> {
        poll_io(
            &self.socket,
            &mut self.writable,
            Async::writable_owned,
            cx,
            io,
        )
    }
}

/// Finishes the wait in `waiting`, if any, then tries `io`; on `EAGAIN`
/// starts a new wait (`wait` registers its waker and interest when first
/// polled, and completes once a later reactor tick delivered an event).
fn poll_io<T, W: Future<Output = io::Result<()>> + Unpin>(
    socket: &Arc<Async<UnixStream>>,
    waiting: &mut Option<W>,
    wait: fn(Arc<Async<UnixStream>>) -> W,
    cx: &mut Context<'_>,
    io: &mut dyn FnMut(BorrowedFd<'_>) -> io::Result<T>,
) -> Poll<io::Result<T>> {
    loop {
        if let Some(ready) = waiting {
            let ready = ready!(Pin::new(ready).poll(cx));
            *waiting = None;
            ready?;
        }
        match io(socket.as_fd()) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                *waiting = Some(wait(Arc::clone(socket)));
            }
            result => return Poll::Ready(result),
        }
    }
}

/// An async-io timer as the core's sleep: completes with `()`.
#[derive(Debug)]
pub struct SmolSleep(Timer);

impl Future for SmolSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(drop)
    }
}

/// The runtime a smol worker builds after its fork: the task runs on a
/// [`LocalExecutor`] driven by `async_io::block_on` on the worker's main
/// thread, so that the function may [`spawn_local`] `!Send` tasks;
/// `smol::spawn` works there too (smol's global executor starts its
/// thread in the worker on first use).
///
/// No options yet: build it with `SmolWorker::default()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SmolWorker {}

thread_local! {
    /// The executor of the worker's task, run by [`SmolWorker`]'s block_on.
    static LOCAL: LocalExecutor<'static> = const { LocalExecutor::new() };
    /// Whether [`LOCAL`] is being run on this thread.
    static RUNNING: Cell<bool> = const { Cell::new(false) };
}

impl core::WorkerRuntime for SmolWorker {
    const NAME: &'static str = "smol";

    fn block_on(self, task: LocalTask) -> Result<(), String> {
        RUNNING.set(true);
        LOCAL.with(|executor| async_io::block_on(executor.run(task)));
        RUNNING.set(false);
        Ok(())
    }

    fn register(socket: UnixStream) -> io::Result<Box<dyn AsyncSocket>> {
        Ok(Box::new(SmolSocket::new(socket)?))
    }
}

/// Spawns a `!Send` task on the executor of the smol worker running the
/// calling function. The task runs alongside the worker's calls, until the
/// worker finishes (a `run` worker's tasks outlive the call that spawned
/// them).
///
/// # Panics
/// When called anywhere but in a function run by a [`SmolWorker`]: in the
/// parent, use your own executor (`smol::LocalExecutor`).
pub fn spawn_local<T: 'static>(future: impl Future<Output = T> + 'static) -> smol::Task<T> {
    assert!(
        RUNNING.get(),
        "parallel_smol::spawn_local called outside a function run by a smol worker"
    );
    LOCAL.with(|executor| executor.spawn(future))
}
