//! The worker's side: the boot function the zygote runs in every worker,
//! and the loops that run the user's function for `spawn`, `run` and
//! `process`. Runtime-free: the adapter's [`WorkerRuntime`] builds the
//! runtime after the fork and polls the task.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::task::Poll;

use futures_channel::mpsc;
use futures_core::Stream;
use futures_util::stream::FuturesUnordered;
use futures_util::FutureExt;
use parallel_proto::channel::{Outcome, PanicLocation, PanicReport, WorkerChannel, WorkerEvent};
use parallel_proto::{Limits, WireEntry};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::codec::Codec;
use super::conn::{Conn, MessageBatch};
use super::forward::Forwarder;
use super::messages::{MessageSender, MessageStream, RawMessage, QUEUE_DEPTH};
use super::output::{Redirect, WorkerIo};
use super::runtime::{AsyncSocket, LocalTask, ReadOutcome, WorkerRuntime};
use super::shared::{self, Payload};
use crate::io::{Inbox, Outbox};
use crate::{Entry, WorkerContext};

/// What the Start frame's arguments begin with (postcard). The task's
/// arguments, as the codec encoded them, follow it to the end of the frame:
/// unwrapped, so that large ones are neither copied into a wrapper on the
/// way out nor out of one on the way in (see [`start_head`]).
#[derive(Serialize, Deserialize)]
struct StartHead {
    /// The [`WorkerRuntime`] value, encoded.
    #[serde(with = "serde_bytes")]
    runtime: Vec<u8>,
    /// Whether a panic captures a backtrace (without `RUST_BACKTRACE`).
    backtraces: bool,
    /// Where stdout and stderr go, and whether tracing is forwarded.
    io: WorkerIo,
}

/// Reads the head of a Start frame's arguments: it, and where the task's
/// own arguments begin.
fn read_start_head(start_args: &[u8]) -> Result<(StartHead, usize), postcard::Error> {
    let (head, rest) = postcard::take_from_bytes::<StartHead>(start_args)?;
    Ok((head, start_args.len() - rest.len()))
}

/// Why a worker gives no value, as an `Outcome::Err` carries it (postcard),
/// so that the parent can tell a codec failure from anything else.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum WorkerFailure {
    /// The call's arguments did not decode: what the codec said.
    DecodeArguments(String),
    /// The function's result did not encode: what the codec said.
    EncodeResult(String),
    /// Anything else (a bad entry, a runtime that did not build).
    Other(String),
}

impl WorkerFailure {
    fn into_outcome(self) -> Outcome {
        Outcome::Err(postcard::to_stdvec(&self).expect("postcard encodes an enum of strings"))
    }

    /// Reads an `Outcome::Err`'s bytes; bytes that are not one (a worker of
    /// another build) are taken as a plain message.
    pub(crate) fn from_bytes(bytes: &[u8]) -> WorkerFailure {
        postcard::from_bytes(bytes)
            .unwrap_or_else(|_| WorkerFailure::Other(String::from_utf8_lossy(bytes).into_owned()))
    }
}

/// Encodes the head of a Start frame's arguments: the task's encoded
/// arguments follow it (`ParentChannel::start_with_tail`).
pub(crate) fn start_head(runtime: &[u8], backtraces: bool, io: WorkerIo) -> Vec<u8> {
    postcard::to_stdvec(&StartHead {
        runtime: runtime.to_vec(),
        backtraces,
        io,
    })
    .expect("postcard encodes a plain struct")
}

/// What a task entry receives.
pub(crate) struct TaskContext {
    conn: Conn<WorkerChannel, Box<dyn AsyncSocket>>,
    /// Start's arguments: the task's own, encoded, begin at `args_at`.
    args: Vec<u8>,
    args_at: usize,
}

/// The entry type of every task function.
type TaskEntry = Entry<TaskContext, LocalTask>;

/// The last panic's report, filled by the hook the worker installs.
static LAST_PANIC: Mutex<Option<PanicReport>> = Mutex::new(None);

/// Whether the hook captures backtraces: set from the Start frame.
static CAPTURE_BACKTRACES: AtomicBool = AtomicBool::new(true);

fn panic_message(payload: &(dyn std::any::Any + Send)) -> Option<String> {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
}

thread_local! {
    /// Whether this thread is polling a task function under `catching`,
    /// which turns a panic into a report for the parent.
    static CATCHING: Cell<bool> = const { Cell::new(false) };
}

/// Installs the hook that turns a task's panic into a report. The zygote
/// calls it once before it serves (`server::serve`), so that every worker
/// inherits the hook instead of installing it after its fork (which cost
/// each cold spawn ~9 µs of allocations and first-run code there).
pub(crate) fn install_panic_hook() {
    let uncaught = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // A panic no task reports (another thread's, a runtime's): printed
        // as it would have been, so the worker's stderr says what happened.
        // (A second panic while one unwinds aborts; Rust says so itself.)
        if !CATCHING.with(Cell::get) {
            uncaught(info);
            return;
        }
        // Captured whatever RUST_BACKTRACE says, unless the parent said no.
        let backtrace = CAPTURE_BACKTRACES
            .load(Ordering::Relaxed)
            .then(|| std::backtrace::Backtrace::force_capture().to_string());
        let report = PanicReport {
            message: panic_message(info.payload()).unwrap_or_else(|| "Box<dyn Any>".into()),
            location: info.location().map(PanicLocation::from),
            backtrace,
        };
        *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) = Some(report);
    }));
}

/// Stores the Start frame's backtrace setting, writing only a change: a
/// fresh worker's first write to a page costs it a copy-on-write fault.
fn set_capture_backtraces(capture: bool) {
    if CAPTURE_BACKTRACES.load(Ordering::Relaxed) != capture {
        CAPTURE_BACKTRACES.store(capture, Ordering::Relaxed);
    }
}

fn take_panic(payload: Box<dyn std::any::Any + Send>) -> PanicReport {
    LAST_PANIC
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .unwrap_or_else(|| PanicReport {
            message: panic_message(&*payload).unwrap_or_else(|| "panic".into()),
            location: None,
            backtrace: None,
        })
}

/// What boot read before the runtime exists, handed to the task once the
/// runtime polls it (and taken back to report a runtime that failed).
struct Booted {
    machine: WorkerChannel,
    stream: UnixStream,
    inbox: Inbox,
    unparsed: Vec<u8>,
    /// Descriptors that came with the spawn (captured output, tracing).
    fds: Vec<OwnedFd>,
}

/// The boot function of every worker on `W`: waits for its Start frame,
/// builds the runtime it asks for, and runs the task it names.
fn boot<W: WorkerRuntime>(context: WorkerContext) {
    boot_blocking::<W>(context.channel, context.fds);
    exit_worker();
}

/// Waits for Start with blocking reads (no runtime yet: a pre-forked worker
/// of non-default options idles here), then starts the task.
fn boot_blocking<W: WorkerRuntime>(stream: UnixStream, fds: Vec<OwnedFd>) {
    // `None`: the parent went away before starting us, or broke the
    // protocol; nothing to do.
    let Some((machine, inbox, unparsed, task, start_args)) = wait_for_start(&stream) else {
        return;
    };
    let booted = Booted {
        machine,
        stream,
        inbox,
        unparsed,
        fds,
    };
    start_task::<W>(booted, task, start_args);
}

/// Builds the runtime Start asks for and runs its task there.
fn start_task<W: WorkerRuntime>(booted: Booted, task: WireEntry, start_args: Vec<u8>) {
    let decoded = read_start_head(&start_args).and_then(|(head, args_at)| {
        set_capture_backtraces(head.backtraces);
        postcard::from_bytes::<W>(&head.runtime).map(|runtime| (runtime, args_at, head.io))
    });
    let (runtime, args_at, io) = match decoded {
        Ok(decoded) => decoded,
        Err(error) => {
            let message = format!("bad start arguments for a {} worker: {error}", W::NAME);
            return fail_before_runtime(booted.stream, booted.machine, message);
        }
    };
    if let Err(error) = booted.stream.set_nonblocking(true) {
        return fail_before_runtime(booted.stream, booted.machine, error.to_string());
    }
    // Before anything of the user runs: stdout and stderr where the parent
    // asked, and the tracing forwarder.
    let Booted {
        machine,
        stream,
        inbox,
        unparsed,
        fds,
    } = booted;
    let forwarder = match apply_io(io, fds) {
        Ok(forwarder) => forwarder,
        Err(message) => return fail_before_runtime(stream, machine, message),
    };
    let booted = Rc::new(RefCell::new(Some(Booted {
        machine,
        stream,
        inbox,
        unparsed,
        fds: Vec::new(),
    })));
    let handed = Rc::clone(&booted);
    let task: LocalTask = Box::pin(async move {
        let Some(booted) = handed.borrow_mut().take() else {
            return;
        };
        let socket: Box<dyn AsyncSocket> = Box::new(Unregistered::<W>::new(booted.stream));
        let conn = Conn::resume(booted.machine, socket, booted.inbox, &booted.unparsed);
        run_task(task, conn, start_args, args_at).await;
    });
    let result = match forwarder {
        // This thread's default subscriber while the task runs (see
        // `Parallel::forward_worker_tracing` for who wins over whom).
        Some(forwarder) => {
            let dispatch = tracing::Dispatch::new(forwarder);
            let result = tracing::dispatcher::with_default(&dispatch, || runtime.block_on(task));
            if let Some(forwarder) = dispatch.downcast_ref::<Forwarder>() {
                forwarder.finish();
            }
            result
        }
        None => runtime.block_on(task),
    };
    if let Err(message) = result {
        if let Some(booted) = booted.borrow_mut().take() {
            let message = format!("building the {} runtime failed: {message}", W::NAME);
            fail_before_runtime(booted.stream, booted.machine, message);
        }
    }
}

/// A worker's channel that joins the runtime's reactor only when it must
/// wait: reads and writes go straight to the (non-blocking) socket until one
/// says `WouldBlock`, and only then is the socket registered
/// ([`WorkerRuntime::register`]) and every later wait made through it.
///
/// A cold spawn's worker answers without ever waiting (its Start and End
/// were read before the runtime existed, and its answer fits the socket's
/// buffer), so it never registers: no epoll registration on tokio, and on
/// smol no async-io reactor, whose first use starts a thread that competed
/// with the worker for the CPU before its answer (`perf sched`: the
/// reactor thread of a smol worker ran 105 µs per spawn, the worker's own
/// boot before its answer took 80 µs more than the raw floor's; see
/// BENCHMARKS.md, *Cold spawn: where the time goes, session 8*).
struct Unregistered<W: WorkerRuntime> {
    /// The socket, until it is registered.
    stream: Option<UnixStream>,
    registered: Option<Box<dyn AsyncSocket>>,
    _runtime: std::marker::PhantomData<fn() -> W>,
}

impl<W: WorkerRuntime> Unregistered<W> {
    fn new(stream: UnixStream) -> Self {
        Unregistered {
            stream: Some(stream),
            registered: None,
            _runtime: std::marker::PhantomData,
        }
    }

    /// The registered socket once `io` had to wait (or it is registered
    /// already); `Err` with `io`'s result when that needed no waiting.
    fn attempt<T>(
        &mut self,
        io: &mut dyn FnMut(std::os::fd::BorrowedFd<'_>) -> std::io::Result<T>,
    ) -> Result<&mut Box<dyn AsyncSocket>, std::io::Result<T>> {
        if let Some(stream) = &self.stream {
            match io(stream.as_fd()) {
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                done => return Err(done),
            }
            let stream = self.stream.take().expect("checked above");
            // The wait below repeats the attempt, which then registers the
            // waker with the reactor (one extra system call, once).
            self.registered = Some(W::register(stream).map_err(Err)?);
        }
        match &mut self.registered {
            Some(registered) => Ok(registered),
            None => Err(Err(std::io::Error::other("worker channel lost"))),
        }
    }
}

impl<W: WorkerRuntime> AsyncSocket for Unregistered<W> {
    fn poll_read(
        &mut self,
        cx: &mut std::task::Context<'_>,
        io: &mut dyn FnMut(std::os::fd::BorrowedFd<'_>) -> std::io::Result<ReadOutcome>,
    ) -> Poll<std::io::Result<ReadOutcome>> {
        match self.attempt(io) {
            Ok(registered) => registered.poll_read(cx, io),
            Err(done) => Poll::Ready(done),
        }
    }

    fn poll_write(
        &mut self,
        cx: &mut std::task::Context<'_>,
        io: &mut dyn FnMut(std::os::fd::BorrowedFd<'_>) -> std::io::Result<()>,
    ) -> Poll<std::io::Result<()>> {
        match self.attempt(io) {
            Ok(registered) => registered.poll_write(cx, io),
            Err(done) => Poll::Ready(done),
        }
    }
}

/// A pre-forked worker's channel, its Start frame's task and arguments,
/// handed from the runtime it built ahead to the one Start asks for.
type Handoff = (Booted, WireEntry, Vec<u8>);

/// The boot function of pre-forked workers whose parent asks for `W`'s
/// default options ([`Parallel::warm_workers`](super::Parallel::warm_workers)):
/// builds that runtime *before* Start arrives and waits for Start on it, so
/// that a spawn taking this worker does not wait for a runtime to be built
/// (about 50 µs for tokio's current-thread runtime). Start asking for other
/// options hands over to the usual path, on a duplicate of the channel.
fn warm_boot<W: WorkerRuntime + Default>(context: WorkerContext) {
    // Off any spawn's path: the code and constants the task will run on are
    // mapped now rather than faulted in after Start.
    crate::sys::populate_read_only_mappings();
    let stream = context.channel;
    let (Ok(spare), Ok(default)) = (stream.try_clone(), postcard::to_stdvec(&W::default())) else {
        boot_blocking::<W>(stream, Vec::new());
        exit_worker();
    };
    if stream.set_nonblocking(true).is_err() {
        boot_blocking::<W>(stream, Vec::new());
        exit_worker();
    }
    // What the runtime's task hands back when Start asks for other options.
    let handoff: Rc<RefCell<Option<Handoff>>> = Rc::default();
    let handback = Rc::clone(&handoff);
    let spare_for_task = spare.try_clone();
    let result = W::default().block_on(Box::pin(async move {
        let Ok(spare) = spare_for_task else {
            return;
        };
        let Ok(socket) = W::register(stream) else {
            return;
        };
        // Start is waited for by blocking this thread (nothing else runs
        // on this runtime before it), not through the runtime's reactor: a
        // woken `poll` returns straight to the read, without the runtime's
        // event dispatch and task wake-up, cold after the wait (the
        // channel stays registered, for everything after Start).
        //
        // Before it blocks: the pages that the task's first allocations and
        // writes would copy from the zygote, copied now, off the spawn's path.
        crate::sys::populate_written_mappings();
        let Some((machine, inbox, unparsed, task, start_args)) = wait_for_start(&spare) else {
            // The parent went away, or broke the protocol.
            return;
        };
        let conn = Conn::resume(machine, socket, inbox, &unparsed);
        let start = read_start_head(&start_args)
            .ok()
            .filter(|(head, _)| head.runtime == default && head.io.is_inherit());
        match start {
            Some((head, args_at)) => {
                set_capture_backtraces(head.backtraces);
                run_task(task, conn, start_args, args_at).await;
            }
            None => {
                let (machine, inbox, unparsed) = conn.into_parts();
                let booted = Booted {
                    machine,
                    stream: spare,
                    inbox,
                    unparsed,
                    fds: Vec::new(),
                };
                *handback.borrow_mut() = Some((booted, task, start_args));
            }
        }
    }));
    match result {
        Ok(()) => {
            if let Some((booted, task, start_args)) = handoff.borrow_mut().take() {
                start_task::<W>(booted, task, start_args);
            }
        }
        // The default runtime cannot be built here: wait for Start as any
        // worker does (its options may build).
        Err(_) => {
            let _ = spare.set_nonblocking(false);
            boot_blocking::<W>(spare, Vec::new());
        }
    }
    exit_worker();
}

/// What a worker read up to its Start frame: the channel's state, the
/// descriptors and bytes read past Start, and Start's task and arguments.
type StartRead = (WorkerChannel, Inbox, Vec<u8>, WireEntry, Vec<u8>);

/// Reads up to the Start frame on `stream`, blocking the thread (in the
/// read, or in `poll` while a non-blocking `stream` is empty); `None` when
/// the parent went away or sent something else first.
fn wait_for_start(stream: &UnixStream) -> Option<StartRead> {
    let mut machine = WorkerChannel::new(Limits::default(), std::process::id() as i32);
    let mut inbox = Inbox::new();
    // Small: Hello, Start and End are a few dozen bytes, and anything read
    // past them moves on to the connection's own buffer.
    let mut buffer = vec![0u8; 4096];
    loop {
        // A Start with bulk arguments: the rest of its payload is read
        // straight into the payload's own buffer, as much as has arrived at
        // each read (through the small buffer it took a read, a wake-up of
        // the parent and a copy per 4 KiB). Only this frame's bytes: the
        // next frame's descriptors stay in the socket.
        let direct = machine
            .payload_buffer()
            .filter(|payload| payload.remaining() >= START_DIRECT_READ_MIN);
        if let Some(mut payload) = direct {
            let want = payload.remaining();
            match blocking(stream, || {
                inbox.read_append(stream, payload.as_mut_vec(), want)
            })? {
                0 => return None,
                _ => match machine.handle_input(&mut &[][..]) {
                    Ok(Some(WorkerEvent::Start { task, args })) => {
                        return Some((machine, inbox, Vec::new(), task, args));
                    }
                    Ok(None) => continue,
                    Ok(Some(_)) | Err(_) => return None,
                },
            }
        }
        let read = match blocking(stream, || inbox.read(stream, &mut buffer))? {
            0 => return None,
            read => read,
        };
        let mut input = &buffer[..read];
        match machine.handle_input(&mut input) {
            Ok(Some(WorkerEvent::Start { task, args })) => {
                return Some((machine, inbox, input.to_vec(), task, args));
            }
            Ok(None) => {}
            // The state machine only lets Start come first.
            Ok(Some(_)) | Err(_) => return None,
        }
    }
}

/// A Start payload this much short of complete is read into its own buffer
/// (see [`wait_for_start`]).
const START_DIRECT_READ_MIN: usize = 16 * 1024;

/// Runs `read` on `stream` until it does not block: in `poll` while a
/// non-blocking `stream` is empty. `None` on any other error.
fn blocking(
    stream: &UnixStream,
    mut read: impl FnMut() -> std::io::Result<usize>,
) -> Option<usize> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    loop {
        match read() {
            Ok(read) => return Some(read),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                let mut fds = [PollFd::new(stream.as_fd(), PollFlags::POLLIN)];
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(_) => return None,
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

/// The outcome is flushed: the process is done. Exiting here skips tearing
/// the runtime down, which the parent would otherwise wait through.
fn exit_worker() -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    std::process::exit(0);
}

/// Points stdout and stderr where `io` says, and builds the tracing
/// forwarder it asks for; `fds` are the spawn's descriptors.
fn apply_io(io: WorkerIo, fds: Vec<OwnedFd>) -> Result<Option<Forwarder>, String> {
    let mut fds: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();
    for (redirect, target, what) in [(io.stdout, 1, "stdout"), (io.stderr, 2, "stderr")] {
        let result = match redirect {
            Redirect::Inherit => continue,
            Redirect::Null => crate::sys::redirect_output(None, target),
            Redirect::Fd(index) => match fds.get(index as usize).and_then(Option::as_ref) {
                Some(fd) => crate::sys::redirect_output(Some(fd.as_fd()), target),
                None => return Err(format!("the descriptor for the worker's {what} is missing")),
            },
        };
        result.map_err(|error| format!("redirecting the worker's {what} failed: {error}"))?;
    }
    let Some((index, level)) = io.tracing else {
        return Ok(None);
    };
    let Some(fd) = fds.get_mut(index as usize).and_then(Option::take) else {
        return Err("the descriptor for the worker's tracing is missing".into());
    };
    Forwarder::new(UnixStream::from(fd), level)
        .map(Some)
        .map_err(|error| format!("setting up the worker's tracing failed: {error}"))
}

/// Tells the parent why the task cannot run, with plain blocking writes
/// (there is no runtime to use).
fn fail_before_runtime(stream: UnixStream, mut machine: WorkerChannel, message: String) {
    if machine
        .finish(WorkerFailure::Other(message).into_outcome())
        .is_err()
    {
        return;
    }
    let _ = stream.set_nonblocking(false);
    let mut outbox = Outbox::new();
    while let Some(transmit) = machine.poll_transmit() {
        outbox.push(transmit, []);
    }
    let _ = outbox.flush(&stream);
}

async fn run_task(
    task: WireEntry,
    mut conn: Conn<WorkerChannel, Box<dyn AsyncSocket>>,
    args: Vec<u8>,
    args_at: usize,
) {
    match TaskEntry::verify(task) {
        Ok(entry) => {
            entry.resolve()(TaskContext {
                conn,
                args,
                args_at,
            })
            .await;
        }
        Err(error) => {
            let _ = conn
                .machine
                .finish(WorkerFailure::Other(error.to_string()).into_outcome());
            let _ = conn.flush().await;
        }
    }
}

/// Runs `future`, turning a panic into a report.
async fn catching<T>(future: impl Future<Output = T>) -> Result<T, PanicReport> {
    let mut future = std::pin::pin!(AssertUnwindSafe(future).catch_unwind());
    std::future::poll_fn(|cx| {
        let outer = CATCHING.with(|catching| catching.replace(true));
        let polled = future.as_mut().poll(cx);
        CATCHING.with(|catching| catching.set(outer));
        polled
    })
    .await
    .map_err(take_panic)
}

/// Calls `function` on the arguments encoded in `args` from `at` on; the
/// outcome, encoded.
async fn call_once<F, A, Fut, T, C>(function: F, args: Vec<u8>, at: usize) -> Outcome
where
    F: Fn(A) -> Fut + Copy + 'static,
    A: DeserializeOwned + 'static,
    Fut: Future<Output = T> + 'static,
    T: Serialize + 'static,
    C: Codec,
{
    let (argument, spare) = match super::codec::decode_value_in_place::<C, A>(args, at) {
        Ok(decoded) => decoded,
        Err(error) => return WorkerFailure::DecodeArguments(error.to_string()).into_outcome(),
    };
    match catching(function(argument)).await {
        Ok(result) => match super::codec::encode_owned_value::<C, T>(result, spare) {
            Ok(bytes) => Outcome::Ok(bytes),
            Err(error) => WorkerFailure::EncodeResult(error.to_string()).into_outcome(),
        },
        Err(report) => Outcome::Panic(report),
    }
}

/// The task of `spawn`: one call, one outcome, exit.
pub(crate) fn spawn_task<F, A, Fut, T, C>(function: F, context: TaskContext) -> LocalTask
where
    F: Fn(A) -> Fut + Copy + 'static,
    A: DeserializeOwned + 'static,
    Fut: Future<Output = T> + 'static,
    T: Serialize + 'static,
    C: Codec,
{
    Box::pin(async move {
        let TaskContext {
            mut conn,
            args,
            args_at,
        } = context;
        let outcome = call_once::<F, A, Fut, T, C>(function, args, args_at).await;
        let _ = conn.machine.finish(outcome);
        if conn.flush().await.is_ok() {
            // The answer is out and this process only exits from here on.
            // The scheduler tends to wake the parent onto this CPU (a
            // synchronous wake-up: it expects the writer to sleep next),
            // where the exit (`_dl_fini`, `atexit`, the kernel tearing the
            // address space down: 100-200 µs measured) would run first: the
            // CPU is handed over once, and the exit competes as any process
            // does. (Moving to `SCHED_IDLE` for the exit, as before, held
            // finished workers for seconds on a busy machine: 92-145 of
            // them alive at once during 1000 sequential spawns beside six
            // busy loops, against at most 4 now; an unprivileged process
            // cannot move back.) What the task printed goes out first: it
            // is flushed at the exit otherwise, which on a saturated machine
            // can come after the parent stopped reading.
            use std::io::Write;
            let _ = std::io::stdout().flush();
            std::thread::yield_now();
        }
    })
}

/// The task of `run`: answers calls, concurrently, until the parent ends.
pub(crate) fn run_task_loop<F, A, Fut, T, C>(function: F, context: TaskContext) -> LocalTask
where
    F: Fn(A) -> Fut + Copy + 'static,
    A: DeserializeOwned + 'static,
    Fut: Future<Output = T> + 'static,
    T: Serialize + 'static,
    C: Codec,
{
    Box::pin(serve_calls(context, move |args| {
        call_once::<F, A, Fut, T, C>(function, args, 0)
    }))
}

/// What an any-function pool sends with each call: the function's entry
/// and its encoded argument.
#[derive(Serialize, Deserialize)]
pub(crate) struct AnyCall {
    pub(crate) entry: WireEntry,
    #[serde(with = "serde_bytes")]
    pub(crate) args: Vec<u8>,
}

/// A call's future, as an any-function worker runs it.
pub(crate) type CallFuture = Pin<Box<dyn Future<Output = Outcome>>>;

/// The entry type of a function an any-function worker can run.
type CallEntry = Entry<Vec<u8>, CallFuture>;

/// Seals `function` as a call an any-function worker can run: decoding the
/// argument, running, encoding the result, as a `run` call does.
pub(crate) fn call_entry<F, A, Fut, T, C>(function: F) -> Result<WireEntry, crate::Error>
where
    F: Fn(A) -> Fut + Copy + 'static,
    A: DeserializeOwned + 'static,
    Fut: Future<Output = T> + 'static,
    T: Serialize + 'static,
    C: Codec,
{
    Ok(CallEntry::new(move |args: Vec<u8>| -> CallFuture {
        Box::pin(call_once::<F, A, Fut, T, C>(function, args, 0))
    })?
    .wire())
}

/// Runs one any-function call: the entry is verified (sealed by this tree,
/// for a call function) before anything runs.
fn any_call(bytes: Vec<u8>) -> CallFuture {
    let call = match postcard::from_bytes::<AnyCall>(&bytes) {
        Ok(call) => call,
        Err(error) => {
            let failure = WorkerFailure::Other(format!("bad pool call: {error}"));
            return Box::pin(std::future::ready(failure.into_outcome()));
        }
    };
    match CallEntry::verify(call.entry) {
        Ok(entry) => entry.resolve()(call.args),
        Err(error) => {
            let failure = WorkerFailure::Other(format!("refused pool call: {error}"));
            Box::pin(std::future::ready(failure.into_outcome()))
        }
    }
}

/// The task of an any-function pool's workers: each call names its function.
pub(crate) fn any_task_loop(context: TaskContext) -> LocalTask {
    Box::pin(serve_calls(context, any_call))
}

/// Calls a worker reads per pass, at most, before it writes the answers.
const CALL_BATCH: usize = 64;

/// Answers calls with `handler`, concurrently, until the parent ends.
async fn serve_calls<H, Fut>(context: TaskContext, handler: H)
where
    H: Fn(Vec<u8>) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let TaskContext { mut conn, .. } = context;
    let mut running = FuturesUnordered::new();
    // The allocation of the last call answered at once, for the next call's
    // future: a call that finishes in its first poll allocates none.
    let mut spare: Option<Pin<Box<Option<Fut>>>> = None;
    let mut input_open = true;
    let finished = std::future::poll_fn(|cx| loop {
        let mut progress = false;
        // The read said Pending: this task is registered to be woken for
        // more input.
        let mut drained = false;
        // Every call of the bytes read so far (up to a batch) first, then
        // the answers of all that are ready, then one write for all of them.
        for _ in 0..CALL_BATCH {
            if !input_open {
                break;
            }
            // Answers go out before a read that needs a system call: a
            // call answered at once then leaves before the read that finds
            // the socket empty and the reactor registration after it (two
            // system calls on the round trip's path otherwise, as a plain
            // echo loop writes before it reads again). Calls that came
            // together in one read are still answered in one write.
            if !conn.has_unparsed_input() {
                if let Poll::Ready(Err(_)) = conn.poll_flush(cx) {
                    return Poll::Ready(false);
                }
            }
            match conn.poll_event(cx) {
                Poll::Ready(Ok(Some((WorkerEvent::Call { call, args }, _)))) => {
                    // Polled once here first: a call that finishes at once
                    // (most do) is answered without a task slot of its own
                    // in `running` (an allocation and a queue round per
                    // call, the largest item of a pipelined call's cost
                    // here). If it is pending, it registered this task's
                    // waker too, which at worst polls the loop once more.
                    let mut answer = spare.take().unwrap_or_else(|| Box::pin(None));
                    answer.set(Some(handler(args)));
                    let polled = answer.as_mut().as_pin_mut().map(|future| future.poll(cx));
                    match polled {
                        Some(Poll::Ready(outcome)) => {
                            answer.set(None);
                            spare = Some(answer);
                            if conn.machine.reply(call, outcome).is_err() {
                                return Poll::Ready(false);
                            }
                        }
                        _ => running.push(async move {
                            let outcome = match answer.as_mut().as_pin_mut() {
                                Some(future) => future.await,
                                None => unreachable!("the call's future was set above"),
                            };
                            (call, outcome)
                        }),
                    }
                    progress = true;
                }
                Poll::Ready(Ok(Some((WorkerEvent::End, _)))) => {
                    input_open = false;
                    progress = true;
                }
                Poll::Ready(Ok(Some(_))) => progress = true,
                // The parent is gone: nobody to answer.
                Poll::Ready(Ok(None) | Err(_)) => return Poll::Ready(false),
                Poll::Pending => {
                    drained = true;
                    break;
                }
            }
        }
        while let Poll::Ready(Some((call, outcome))) = Pin::new(&mut running).poll_next(cx) {
            if conn.machine.reply(call, outcome).is_err() {
                return Poll::Ready(false);
            }
            progress = true;
        }
        if let Poll::Ready(Err(_)) = conn.poll_flush(cx) {
            return Poll::Ready(false);
        }
        if !input_open && running.is_empty() {
            return Poll::Ready(true);
        }
        // Another pass only when this one stopped early (a batch's end):
        // after a drained read, pending calls and a flushed or waiting
        // write, every source of work has this task's waker, so a pass
        // more would find nothing (it was a fifth of a call's work here).
        if !progress || drained || !input_open {
            return Poll::Pending;
        }
    })
    .await;
    if finished {
        let _ = conn.machine.finish(Outcome::Ok(Vec::new()));
        let _ = conn.flush().await;
    }
}

/// The task of `process`: pumps messages both ways around the user's function.
pub(crate) fn process_task<F, In, Out, Fut, C>(function: F, context: TaskContext) -> LocalTask
where
    F: Fn(MessageStream<In, C>, MessageSender<Out, C>) -> Fut + Copy + 'static,
    In: DeserializeOwned + 'static,
    Out: Serialize + Send + 'static,
    Fut: Future<Output = ()> + 'static,
    C: Codec,
{
    Box::pin(async move {
        let TaskContext { mut conn, .. } = context;
        let (in_tx, in_rx) = mpsc::channel::<Result<RawMessage, super::Error>>(QUEUE_DEPTH);
        let (out_tx, out_rx) = async_channel::bounded::<RawMessage>(QUEUE_DEPTH);
        let mut task = Box::pin(catching(function(
            MessageStream::new(in_rx),
            MessageSender::new(out_tx, conn.passes_descriptors()),
        )));
        let mut out_rx = Box::pin(out_rx);
        let mut input = Some(in_tx);
        let mut held: Option<RawMessage> = None;
        let mut output_open = true;
        let outcome = std::future::poll_fn(|cx| loop {
            let mut progress = false;
            if let Poll::Ready(result) = task.as_mut().poll(cx) {
                // Send what the function queued before it returned.
                while let Ok(message) = out_rx.try_recv() {
                    if conn
                        .send_message(message, &mut MessageBatch::default())
                        .is_err()
                    {
                        return Poll::Ready(None);
                    }
                }
                return Poll::Ready(Some(match result {
                    Ok(()) => Outcome::Ok(Vec::new()),
                    Err(report) => Outcome::Panic(report),
                }));
            }
            if let (true, Some(sender)) = (held.is_some(), &mut input) {
                match sender.poll_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        let _ = sender.start_send(Ok(held.take().expect("checked above")));
                        progress = true;
                    }
                    Poll::Ready(Err(_)) => {
                        // The function dropped its input stream.
                        input = None;
                        held = None;
                        progress = true;
                    }
                    Poll::Pending => {}
                }
            }
            if held.is_none() && input.is_some() {
                match conn.poll_event(cx) {
                    Poll::Ready(Ok(Some((WorkerEvent::Data { payload, .. }, fds)))) => {
                        held = Some((Payload::Inline(payload), fds));
                        progress = true;
                    }
                    Poll::Ready(Ok(Some((WorkerEvent::SharedData { len, .. }, fds)))) => {
                        match shared::receive(len, fds) {
                            Ok(message) => held = Some(message),
                            // The parent broke the protocol: stop serving.
                            Err(_) => return Poll::Ready(None),
                        }
                        progress = true;
                    }
                    Poll::Ready(Ok(Some((WorkerEvent::End, _)) | None) | Err(_)) => {
                        input = None;
                        progress = true;
                    }
                    Poll::Ready(Ok(Some(_))) => progress = true,
                    Poll::Pending => {}
                }
            }
            let flushed = match conn.poll_flush(cx) {
                Poll::Ready(Ok(())) => true,
                Poll::Ready(Err(_)) => return Poll::Ready(None),
                Poll::Pending => false,
            };
            // Every queued message (up to a batch) before the next write,
            // as the parent's driver does (see `MessageBatch`).
            let mut batch = MessageBatch::default();
            while output_open && flushed && !batch.is_full() {
                match out_rx.as_mut().poll_next(cx) {
                    Poll::Ready(Some(message)) => {
                        if conn.send_message(message, &mut batch).is_err() {
                            return Poll::Ready(None);
                        }
                        progress = true;
                    }
                    Poll::Ready(None) => {
                        output_open = false;
                        if conn.machine.end().is_err() {
                            return Poll::Ready(None);
                        }
                        progress = true;
                    }
                    Poll::Pending => break,
                }
            }
            if !progress {
                return Poll::Pending;
            }
        })
        .await;
        if let Some(outcome) = outcome {
            let _ = conn.machine.finish(outcome);
            let _ = conn.flush().await;
        }
    })
}

/// The sealed boot entry of workers on `W`.
pub(crate) fn boot_entry<W: WorkerRuntime>() -> Result<WireEntry, crate::Error> {
    Ok(Entry::<WorkerContext>::new(boot::<W>)?.wire())
}

/// The sealed boot entry of pre-forked workers on `W` with its default
/// options (see `warm_boot`).
pub(crate) fn warm_boot_entry<W: WorkerRuntime + Default>() -> Result<WireEntry, crate::Error> {
    Ok(Entry::<WorkerContext>::new(warm_boot::<W>)?.wire())
}

/// Seals a task entry from a zero-sized driver closure.
pub(crate) fn task_entry<G>(driver: G) -> Result<WireEntry, crate::Error>
where
    G: Fn(TaskContext) -> LocalTask + Copy + 'static,
{
    Ok(TaskEntry::new(driver)?.wire())
}
