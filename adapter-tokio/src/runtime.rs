//! The binding itself: tokio's reactor, timer and spawn for the parent, and
//! the runtime a worker builds after its fork.

use std::any::Any;
use std::hash::{Hash, Hasher};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use parallel_zygote::async_core::{
    self as core, AsyncSocket, Driver, LocalTask, ReadOutcome, Refill, Registered, StartDriver,
};
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// The tokio runtime, as the core sees it. You rarely name it: the aliases
/// of this crate ([`Parallel`](crate::Parallel), [`Run`](crate::Run), ...)
/// fill it in.
#[derive(Debug, Clone, Copy)]
pub struct Tokio;

impl core::Runtime for Tokio {
    const NAME: &'static str = "tokio";
    const INIT: &'static str = "parallel_tokio::init()";
    type Socket = TokioSocket;
    type Sleep = tokio::time::Sleep;
    type Worker = WorkerRuntime;

    fn register(socket: UnixStream) -> io::Result<TokioSocket> {
        TokioSocket::new(socket)
    }

    fn sleep(duration: Duration) -> tokio::time::Sleep {
        tokio::time::sleep(duration)
    }

    fn is_current() -> bool {
        tokio::runtime::Handle::try_current().is_ok()
    }

    fn spawn_driver(driver: Driver<Self>) {
        tokio::spawn(driver);
    }

    /// Started on the runtime the spawn was made in, through its handle
    /// (which works from any thread).
    fn defer_driver(driver: Driver<Self>) -> Result<StartDriver, Driver<Self>> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err(driver);
        };
        Ok(Box::new(move || {
            runtime.spawn(driver);
        }))
    }

    fn spawn_refill(refill: Refill<Self>) {
        tokio::spawn(refill);
    }

    /// The current runtime's id: a socket registers with the reactor of
    /// the runtime it is created in, and serves every thread of it.
    fn reactor() -> Option<u64> {
        let handle = tokio::runtime::Handle::try_current().ok()?;
        Some(runtime_key(handle.id()))
    }

    fn share(
        registered: Box<Registered<Self>>,
    ) -> Result<Box<dyn Any + Send>, Box<Registered<Self>>> {
        Ok(registered)
    }
}

/// A runtime id as a number. tokio's `runtime::Id` wraps a `NonZeroU64`
/// drawn from a process-wide 64-bit counter (its docs only promise
/// uniqueness among the runtimes alive at once, which is what
/// [`Runtime::reactor`](core::Runtime::reactor) asks); it shows the number
/// through `Display` and `Hash` only, so it is read back through `Hash`.
fn runtime_key(id: tokio::runtime::Id) -> u64 {
    /// Keeps what is hashed: a `NonZeroU64` hashes as one `write_u64`.
    #[derive(Default)]
    struct Key(u64);
    impl Hasher for Key {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for &byte in bytes {
                self.0 = self.0.rotate_left(8) ^ u64::from(byte);
            }
        }
        fn write_u64(&mut self, value: u64) {
            self.0 = value;
        }
    }
    let mut key = Key::default();
    id.hash(&mut key);
    key.finish()
}

/// A worker channel on tokio's reactor.
#[derive(Debug)]
pub struct TokioSocket {
    /// Registered for readability only: a socket registered for writing
    /// wakes the reactor every time the peer drains it, which on a
    /// request/response channel is once per message, for nothing.
    reader: AsyncFd<UnixStream>,
    /// A second descriptor for the same socket, registered for writability
    /// the first time a write would block (bulk transfers), then kept.
    writer: Option<AsyncFd<UnixStream>>,
}

impl TokioSocket {
    fn new(socket: UnixStream) -> io::Result<Self> {
        Ok(TokioSocket {
            reader: register(socket, Interest::READABLE)?,
            writer: None,
        })
    }
}

impl AsyncSocket for TokioSocket {
    fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut dyn FnMut(BorrowedFd<'_>) -> io::Result<ReadOutcome>,
    ) -> Poll<io::Result<ReadOutcome>> {
        loop {
            let mut guard = ready!(self.reader.poll_read_ready(cx))?;
            // `try_io` clears the readiness it was tried under on WouldBlock.
            if let Ok(result) = guard.try_io(|socket| io(socket.get_ref().as_fd())) {
                if matches!(result, Ok(ReadOutcome { drained: true, .. })) {
                    guard.clear_ready();
                }
                return Poll::Ready(result);
            }
        }
    }

    fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut dyn FnMut(BorrowedFd<'_>) -> io::Result<()>,
    ) -> Poll<io::Result<()>> {
        if self.writer.is_none() {
            // Not registered for writing yet: most writes fit at once.
            match io(self.reader.get_ref().as_fd()) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    let copy = self.reader.get_ref().try_clone()?;
                    self.writer = Some(register(copy, Interest::WRITABLE)?);
                }
                other => return Poll::Ready(other),
            }
        }
        let writer = self.writer.as_ref().expect("registered above");
        loop {
            let mut guard = ready!(writer.poll_write_ready(cx))?;
            if let Ok(result) = guard.try_io(|socket| io(socket.get_ref().as_fd())) {
                return Poll::Ready(result);
            }
        }
    }
}

/// Registers a socket with the reactor for `interest` only.
///
/// `AsyncFd::with_interest` is deprecated because it cannot stop a caller
/// from closing a borrowed descriptor while it is registered. Here the
/// `AsyncFd` owns the socket, so the descriptor lives exactly as long as
/// the registration, which is the property the replacement (an `unsafe fn`)
/// asks its caller to promise.
#[allow(deprecated)]
fn register(socket: UnixStream, interest: Interest) -> io::Result<AsyncFd<UnixStream>> {
    AsyncFd::with_interest(socket, interest)
}

/// The runtime a worker builds before it runs its task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum WorkerRuntime {
    /// A current-thread runtime (the default): cheapest to build, and the
    /// worker is a process of its own anyway.
    #[default]
    CurrentThread,
    /// A multi-thread runtime with this many worker threads (the function
    /// itself is polled on the main thread; what it spawns runs on these).
    MultiThread {
        /// Worker threads.
        threads: usize,
    },
}

impl core::WorkerRuntime for WorkerRuntime {
    const NAME: &'static str = "tokio";

    fn block_on(self, task: LocalTask) -> Result<(), String> {
        let runtime = match self {
            WorkerRuntime::CurrentThread => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build(),
            WorkerRuntime::MultiThread { threads } => tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads.max(1))
                .enable_all()
                .build(),
        }
        .map_err(|error| error.to_string())?;
        // A LocalSet, so that the function may `spawn_local`.
        tokio::task::LocalSet::new().block_on(&runtime, task);
        Ok(())
    }

    fn register(socket: UnixStream) -> io::Result<Box<dyn AsyncSocket>> {
        Ok(Box::new(TokioSocket::new(socket)?))
    }
}
