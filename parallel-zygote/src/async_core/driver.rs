//! The parent's side of one worker: a hand-written, poll-based future that
//! owns the socket and the channel state machine, shared by `spawn`, `run`
//! and `process`.
//!
//! It serves until the worker's task returns or the channel breaks, then
//! settles: on a clean end it lets the worker exit by itself; on a broken
//! channel it finds out how the worker died and tells every waiter.

use std::collections::HashMap;
use std::future::Future;
use std::hash::BuildHasherDefault;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use futures_channel::{mpsc, oneshot};
use futures_core::Stream;
use parallel_proto::channel::{CallId, CallIdHasher, Outcome, ParentChannel, ParentEvent};

use super::alarm;
use super::codec::SplitEncoding;
use super::conn::{Conn, MessageBatch};
use super::kill::{Death, Killer};
use super::messages::{RawMessage, QUEUE_DEPTH};
use super::output::Captured;
use super::runtime::Runtime;
use super::shared::{self, Payload};
use super::Error;
use crate::PendingSpawn;

/// How long a driver waits for the zygote to answer a spawn, or to report a
/// killed worker's exit status, before going on without it.
const EXIT_STATUS_WAIT: Duration = Duration::from_secs(2);
/// How long a worker whose channel broke may take to exit by itself before
/// it is killed.
const GRACE: Duration = Duration::from_millis(200);
/// How long a worker that returned may take to close its channel and exit.
const DRAIN: Duration = Duration::from_secs(1);
/// How long the driver reads a worker's captured output after its exit,
/// waiting for the end of the streams: a process the worker started may
/// hold them open, and must not hold up the death report.
const OUTPUT_WAIT: Duration = Duration::from_millis(500);

/// How often a driver whose lone caller reads the channel on its own
/// thread (see [`Submit::poll_read`]) checks that the caller came for what
/// woke it: a caller whose future is set aside unpolled must not keep the
/// channel from the driver longer than this. The check is an alarm of the
/// library's own thread (see the `alarm` module), not a timer of the
/// runtime, which on smol made every call from the `block_on` future pay
/// for re-arming a timer.
const READER_WATCH: Duration = Duration::from_millis(10);

/// Calls taken from the queue per write, at most: the bound on what one
/// pass of the driver buffers before the socket takes it.
const COMMAND_BATCH: usize = 64;

/// Calls queued on their callers' thread, at most, before a caller writes
/// them itself rather than leaving them to the driver's task.
///
/// Pipelined calls left to the driver all went out in one write once the
/// task making them yielded: the worker waited while the parent handled a
/// whole batch of answers and made the next calls, and the parent waited
/// while the worker answered them (each process busy half the time, the
/// other CPU idle: see BENCHMARKS.md, *Pipelined calls: the two processes
/// at work together, session 9*). Written in chunks as they are made, the
/// first calls are answered while the rest are still being made, for a
/// write per chunk.
const CALLER_WRITE_CHUNK: usize = 16;

/// Calls left unwritten, at most, by callers that read the channel on their
/// own thread (see [`Submit::poll_read`]) before the one that completes the
/// chunk writes them; fewer are written by the caller that deferred them,
/// once the calls made beside it are queued too.
///
/// 64 pipelined calls from smol's `block_on` future, per 1280 (BENCHMARKS.md,
/// session 14): a write per call, 4.5 ms; chunks of 16, 2.6-2.9 ms; 32,
/// 2.3-2.5 ms; 64, 3.2 ms (the caller's thread then waits for the worker
/// between chunks).
const READER_WRITE_CHUNK: usize = 32;

/// What handles ask of the driver.
pub(crate) enum Command {
    /// A call, its large byte argument moved in (see `SplitEncoding`).
    Call { args: SplitEncoding, reply: Reply },
}

/// Where a call's answer goes: the call's id with the worker's outcome, or
/// why there is none.
pub(crate) type Reply = oneshot::Sender<Result<(CallId, Outcome), CallFailed>>;

/// A call that got no outcome.
#[derive(Debug)]
pub(crate) struct CallFailed {
    pub(crate) error: Error,
    /// Whether the call's frame reached the worker's socket whole. A call
    /// that did not can never have run, so retrying it elsewhere keeps
    /// "at most once".
    pub(crate) delivered: bool,
}

impl CallFailed {
    pub(crate) fn undelivered(error: Error) -> Self {
        CallFailed {
            error,
            delivered: false,
        }
    }
}

/// The handles' view of a driver. The parent's half close (End) goes out
/// once both `commands` and `outgoing` (and all their clones) are dropped.
pub(crate) struct Link<R: Runtime> {
    pub(crate) commands: async_channel::Sender<Command>,
    /// The driver's state, for calls submitted on the caller's thread (see
    /// [`Submit`]); only the driver's task holds it strongly.
    pub(crate) submit: Submit<R>,
    pub(crate) outgoing: async_channel::Sender<RawMessage>,
    pub(crate) killer: Arc<Killer>,
    pub(crate) data: mpsc::Receiver<Result<RawMessage, Error>>,
    pub(crate) returned: oneshot::Receiver<Result<Outcome, Error>>,
    /// Whether large messages may go through shared memory.
    pub(crate) shared: bool,
}

/// Starts the driver for a worker whose spawn was just sent.
///
/// `conn.machine` already holds the Start frame (and anything else to send
/// first).
pub(crate) fn launch<R: Runtime>(
    conn: Conn<ParentChannel, R::Socket>,
    pending: PendingSpawn,
    span: tracing::Span,
    output: Option<Captured<R>>,
) -> Link<R> {
    let (commands, command_rx) = async_channel::bounded(QUEUE_DEPTH);
    let (outgoing, outgoing_rx) = async_channel::bounded(QUEUE_DEPTH);
    let (data_tx, data) = mpsc::channel(QUEUE_DEPTH);
    let shared = conn.passes_descriptors();
    let handles = Handles {
        commands: Some(Box::pin(command_rx)),
        outgoing: Some(Box::pin(outgoing_rx)),
        data: Some(data_tx),
    };
    let (
        OneShot {
            killer, returned, ..
        },
        submit,
    ) = start::<R>(conn, pending, span, output, handles, false);
    Link {
        commands,
        submit,
        outgoing,
        killer,
        data,
        returned,
        shared,
    }
}

/// The handles' view of a one-shot worker's driver (`spawn`): its outcome
/// and its kill switch. Nothing is ever sent to it after Start and End,
/// and it sends no data: it gets none of [`Link`]'s channels, whose
/// allocations (and their cold memory) a one-shot spawn would only drop.
pub(crate) struct OneShot<R: Runtime> {
    pub(crate) killer: Arc<Killer>,
    pub(crate) returned: oneshot::Receiver<Result<Outcome, Error>>,
    /// The driver, for the handle to poll in place until the outcome is in
    /// (`None`: its task polls it from the start).
    pub(crate) held: Option<Held<R>>,
}

/// Starts the driver of a one-shot worker, whose Start and End frames are
/// queued in `conn.machine`.
///
/// Unless the worker's output is captured (whose reading runs for the
/// worker's whole life, beside the result) or Start is not wholly written
/// yet, the driver's task waits, and the handle polls the driver in place
/// (see [`Held`]).
pub(crate) fn launch_one_shot<R: Runtime>(
    mut conn: Conn<ParentChannel, R::Socket>,
    pending: PendingSpawn,
    span: tracing::Span,
    output: Option<Captured<R>>,
) -> OneShot<R> {
    let handles = Handles {
        commands: None,
        outgoing: None,
        data: None,
    };
    // A Start (or End) that did not fit the socket's buffer is written by
    // the driver's task as before: the worker must get its task whether
    // or not the handle is polled.
    let hold = output.is_none() && conn.is_flushed();
    start::<R>(conn, pending, span, output, handles, hold).0
}

/// A one-shot driver that its `JoinHandle` polls in place, on the task that
/// awaits the outcome, until the outcome is in: the worker's answer then
/// wakes the awaiting task itself, instead of the driver's task, which
/// would read it, pass it through a one-shot channel, wake the awaiting
/// task, and go on with its settling (two timers, a read, the zygote's
/// answer) first, which on a current-thread runtime all runs before the
/// awaiting task does.
///
/// The driver's task exists from the start (so that nothing needs the
/// runtime later: a handle may be dropped on any thread), or, where the
/// runtime can start it later from any thread (see
/// [`Runtime::defer_driver`]), is started only then; it waits until
/// the handle [releases](Killer::release) the driver: once its serving is
/// over (the outcome is in, or the channel broke), when the handle is
/// dropped (detached, timed out or cancelled), or at the scope's
/// [`shutdown`](super::Parallel::shutdown), where no handle may be
/// polling. The task then polls it to the end as any other driver.
pub(crate) struct Held<R: Runtime>(Arc<Mutex<DriverState<R>>>);

impl<R: Runtime> Held<R> {
    /// Serves the channel on the caller's task; `Ready` once the driver is
    /// its task's (released, or its serving over: then released here).
    pub(crate) fn poll(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let this = &mut *state;
        // Checked under the lock: once released, the task polls alone, and
        // the last waker the socket and the timers saw is the task's.
        // A task dropped with its runtime (finished) left nothing to serve.
        if this.killer.is_released() || this.killer.is_finished() {
            return Poll::Ready(());
        }
        let served = {
            let span = this.killer.span().clone();
            let _entered = span.enter();
            this.poll_serve(cx)
        };
        let handed = match served {
            Poll::Ready(returned) => {
                this.phase = Phase::Served(returned);
                if returned {
                    this.hand_over_quietly()
                } else {
                    HandOver::Release(Arc::clone(&this.killer))
                }
            }
            Poll::Pending => {
                if std::mem::take(&mut this.yielded) {
                    cx.waker().wake_by_ref();
                }
                return Poll::Pending;
            }
        };
        // Outside the lock: a deferred task started on a runtime that is
        // gone is dropped at once, and its driver's drop takes the lock.
        drop(state);
        match handed {
            HandOver::Quiet => {}
            HandOver::Wake(task) => task.wake(),
            HandOver::Release(killer) => killer.release(),
        }
        Poll::Ready(())
    }
}

/// How a held driver whose serving ended goes to its task (see
/// [`DriverState::hand_over_quietly`]).
enum HandOver {
    /// Handed over; its task is woken by what it waits for next.
    Quiet,
    /// Handed over; wake its task now.
    Wake(Waker),
    /// Not handed over: release it, which wakes (or starts) its task.
    Release(Arc<Killer>),
}

impl<R: Runtime> DriverState<R> {
    /// The outcome is in: hands the driver to its task without a wake-up on
    /// the awaiting task's path (on smol, the wake-up of a task is a futex
    /// wake of the executor's thread). The task is registered instead with
    /// what it waits for next, which comes after the awaiting task has its
    /// value: the worker's end of the channel closing, or its exit (both
    /// come as the worker exits). Not handed over when the worker is not
    /// reported by the zygote yet, or either is there already: the task is
    /// then woken as usual.
    ///
    /// A task not started yet (see [`Runtime::defer_driver`]) is started
    /// by the end of the stream (read here up to there), whether or not
    /// the zygote answered: on the reactor's thread, with no other thread
    /// woken. Started at the outcome from the caller's thread, it was
    /// scheduled from outside the runtime, which on tokio's multi-thread
    /// runtime also wakes a second worker thread.
    fn hand_over_quietly(&mut self) -> HandOver {
        let process = self.killer.process();
        let deferred = self.killer.is_deferred();
        if process.is_none() && !deferred {
            return HandOver::Release(Arc::clone(&self.killer));
        }
        let Some(task) = self.killer.release_quietly() else {
            return HandOver::Release(Arc::clone(&self.killer));
        };
        let mut cx = Context::from_waker(&task);
        let quiet = if deferred {
            // Started by the end of the stream (the worker's end closes as
            // it exits): on the reactor's thread, which then starts the
            // task itself. Never by what the zygote's reader thread
            // completes (its answer, the exit): it wakes under the zygote
            // client's lock, and a task started on a runtime that is gone
            // is dropped at once, with what it holds, whose drop (a
            // worker's process handle) takes that lock.
            loop {
                match self.conn.poll_event(&mut cx) {
                    Poll::Ready(Ok(Some(_))) => {}
                    Poll::Ready(_) => break false,
                    Poll::Pending => break true,
                }
            }
        } else {
            // What the drain reads next (what comes after the outcome is
            // dropped there too).
            self.conn.poll_event(&mut cx).is_pending()
                && process.is_some_and(|process| process.poll_exited(&mut cx).is_pending())
        };
        if quiet {
            HandOver::Quiet
        } else {
            HandOver::Wake(task)
        }
    }
}

/// The driver's ends of the handles' channels (`None`: no such handle).
struct Handles {
    commands: Option<Pin<Box<async_channel::Receiver<Command>>>>,
    outgoing: Option<Pin<Box<async_channel::Receiver<RawMessage>>>>,
    data: Option<mpsc::Sender<Result<RawMessage, Error>>>,
}

fn start<R: Runtime>(
    conn: Conn<ParentChannel, R::Socket>,
    pending: PendingSpawn,
    span: tracing::Span,
    output: Option<Captured<R>>,
    handles: Handles,
    hold: bool,
) -> (OneShot<R>, Submit<R>) {
    let (returned_tx, returned) = oneshot::channel();
    let killer = Arc::new(Killer::new(pending, span));
    if hold {
        killer.hold();
    }
    let state = Arc::new(Mutex::new(DriverState {
        task: None,
        conn,
        killer: Arc::clone(&killer),
        commands: handles.commands,
        outgoing: handles.outgoing,
        calls: HashMap::default(),
        answered: Vec::new(),
        unsent: Vec::new(),
        data: handles.data,
        held: None,
        returned: Some(returned_tx),
        write_broken: false,
        broke: None,
        output,
        phase: Phase::Serve,
        yielded: false,
        thread: Arc::new(AtomicUsize::new(0)),
        reader: None,
        waiting: Vec::new(),
        flush_deferred: false,
        both: None,
        watchdog: None,
        unregistered: false,
    }));
    let thread = Arc::clone(&state.lock().unwrap_or_else(|e| e.into_inner()).thread);
    let submit = Submit(Arc::downgrade(&state), thread);
    let held = hold.then(|| Held(Arc::clone(&state)));
    let driver = Driver {
        state,
        answered: Vec::new(),
    };
    // A held driver's task has nothing to do until its release: started
    // then, where the runtime allows it (see `Runtime::defer_driver`).
    let driver = if hold {
        match R::defer_driver(driver) {
            Ok(start) => {
                killer.defer(start);
                None
            }
            Err(driver) => Some(driver),
        }
    } else {
        Some(driver)
    };
    if let Some(driver) = driver {
        R::spawn_driver(driver);
    }
    (
        OneShot {
            killer,
            returned,
            held,
        },
        submit,
    )
}

/// The driver of one worker channel: a future the adapter runs as a task of
/// its own (see [`Runtime::spawn_driver`]). It completes once the worker is
/// gone and every waiter has its answer.
#[must_use = "a driver does nothing unless polled: run it to completion"]
pub struct Driver<R: Runtime> {
    /// Behind a lock so that a caller can submit its call itself (see
    /// [`Submit`]); the task holds the only strong reference.
    state: Arc<Mutex<DriverState<R>>>,
    /// The answers a poll read, handed to their callers once the lock is
    /// released (see [`DriverState::answered`]); kept for its allocation.
    answered: Vec<Answered>,
}

/// A call's answer, and where it goes.
type Answered = (Reply, Result<(CallId, Outcome), CallFailed>);

/// What [`Submit::poll_read`] did for the caller that asked.
pub(crate) enum Served {
    /// Nothing: the driver serves the channel, or another caller does, or
    /// this runtime leaves the reading to the driver.
    No,
    /// The caller may be the channel's reader now: it must
    /// [stop](Submit::stop_reading) once it has its answer or is dropped.
    Reading,
    /// As `Reading`, and the read brought the caller's own answer, handed
    /// back here with its one-shot's sender instead of sent through it.
    ///
    /// Sent, it would wake the caller's own task while that task is being
    /// polled: async-io's `block_on` then takes the wake for news, makes a
    /// non-blocking pass of its reactor (`epoll_wait`, the timer's
    /// `timerfd_settime`, the notifier's read and two `epoll_ctl`) and
    /// polls the future once more before it blocks, on every call made in
    /// the `block_on` future (smol; BENCHMARKS.md, session 15). The caller
    /// drops its receiver before this sender: the sender dropped first
    /// would wake it all the same.
    Answered(Reply, Result<(CallId, Outcome), CallFailed>),
}

/// Calls submitted on the caller's thread.
///
/// A call used to go to the driver through a channel, which woke the
/// driver's task. When the caller runs on another thread than the driver
/// (the `block_on` future of a multi-thread runtime, a program's main
/// future beside smol's executor thread), that wake-up crossed threads
/// once more per call than a raw socket's ping-pong does: 13 µs instead of
/// 6 µs per call on tokio's multi-thread runtime. So a caller that finds
/// the driver idle (everything written, no call queued
/// before it) registers its call and writes the frame itself, on its own
/// thread, and waits for the answer as before (caller and driver take turns
/// on one lock, held for a poll at most). Whatever waiting the write
/// needs (a full socket) is registered with the driver task's waker, so
/// the driver finishes it as if it had made the write.
///
/// The second field is the driver's [thread](DriverState::thread), read
/// without the lock.
pub(crate) struct Submit<R: Runtime>(Weak<Mutex<DriverState<R>>>, Arc<AtomicUsize>);

impl<R: Runtime> Clone for Submit<R> {
    fn clone(&self) -> Self {
        Submit(Weak::clone(&self.0), Arc::clone(&self.1))
    }
}

impl<R: Runtime> Submit<R> {
    /// Registers and writes the call now if the driver is idle; otherwise
    /// hands the command back, for the channel.
    pub(crate) fn try_call(&self, command: Command) -> Result<(), Command> {
        let Some(state) = self.0.upgrade() else {
            return Err(command);
        };
        // Waiting for the lock is bounded: the driver holds it for one poll,
        // which never blocks (non-blocking I/O, no user code). Trying only
        // once would mostly fail on the path this is for: the caller, woken
        // by its previous answer, comes back while that poll still runs.
        let Ok(mut state) = state.lock() else {
            return Err(command);
        };
        state.submit(command)
    }

    /// A caller waiting for its answer on another thread than the driver's
    /// serves the channel here, on its own thread (reads the answers and
    /// hands them over, writes what is queued), when the driver is idle
    /// (its lock free) and serving. True when this caller may be the
    /// channel's reader now (it must then [stop](Self::stop_reading) once it
    /// has its answer or is dropped): it served, and its own answer may be
    /// in its channel, or it waits for its turn to (see below).
    ///
    /// Only where [`Runtime::CALLERS_READ`] says so. Everything the serving
    /// registers for (the socket's readiness above all) wakes the reader
    /// alone while it reads (see [`Both`]), so that the reactor hands it the
    /// next answers directly, on its thread; a caller set aside unpolled
    /// never keeps the channel from the other callers (the driver's
    /// watchdog takes it back).
    ///
    /// Pipelined calls (several in flight, made on this thread) are served
    /// here too: the callers waiting on this thread take turns as the
    /// reader (see [`DriverState::waiting`]), and write their calls in
    /// chunks ([`READER_WRITE_CHUNK`]): a caller whose call leaves fewer
    /// than a chunk unwritten
    /// defers the write to its next poll (it wakes itself), by which time
    /// the calls made beside it in the same poll of their task are queued
    /// too, and all go out in one write. Left to the driver on smol's
    /// executor thread, every batch of calls and of answers crossed threads
    /// twice (BENCHMARKS.md, session 13).
    ///
    /// `waiting`: this caller's waker is the one it last read with, and it
    /// has not [stopped](Self::stop_reading) since (it is still listed).
    /// `mine`: the receiver of this caller's answer (see
    /// [`Served::Answered`]).
    pub(crate) fn poll_read(
        &self,
        cx: &mut Context<'_>,
        waiting: bool,
        mine: &oneshot::Receiver<Result<(CallId, Outcome), CallFailed>>,
    ) -> Served {
        // Checked before the lock: a caller on the driver's thread (a task
        // of smol's executor) pays nothing more per call.
        if !R::CALLERS_READ || !elsewhere(&self.1) {
            return Served::No;
        }
        let Some(state) = self.0.upgrade() else {
            return Served::No;
        };
        // Not waiting: a driver holding the lock is serving, and registers
        // for what comes next itself; another caller serving does too, or
        // deferred a write it comes back for.
        let Ok(mut state) = state.try_lock() else {
            return Served::No;
        };
        let this = &mut *state;
        if !matches!(this.phase, Phase::Serve)
            || this.task.is_none()
            || !this.caller_reads()
            || !this.killer.is_released()
        {
            return Served::No;
        }
        let me = cx.waker();
        if !waiting {
            this.waiting.push(me.clone());
        }
        let is_reader = this.reader.as_ref().is_some_and(|r| r.will_wake(me));
        let unwritten = this.unsent.len();
        let serve =
            unwritten == 0 || unwritten >= READER_WRITE_CHUNK || (this.flush_deferred && is_reader);
        if !serve && this.flush_deferred {
            // Another caller deferred the write, and comes back for it (it
            // was woken for it): this one waits its turn.
            return Served::Reading;
        }
        if !is_reader {
            this.reader = Some(me.clone());
        }
        // Listed: the caller stops reading when done, whatever happens here.
        let Some(both) = this.both() else {
            return Served::Reading;
        };
        this.watch();
        if !serve {
            // Back after the calls made beside this one in the same poll of
            // their task: woken through `both`, so that the watchdog sees
            // the wake owed if this caller is set aside.
            this.flush_deferred = true;
            both.wake_by_ref();
            return Served::Reading;
        }
        this.flush_deferred = false;
        let span = this.killer.span().clone();
        let _entered = span.enter();
        let mut cx = Context::from_waker(&both);
        match this.poll_serve(&mut cx) {
            Poll::Ready(returned) => {
                // The driver's task goes on from there.
                this.phase = Phase::Served(returned);
                if let Some(task) = &this.task {
                    task.wake_by_ref();
                }
            }
            // Stopped after answers to hand them over first (see
            // `poll_serve`): handed over below, once the lock is released.
            // The read that would find the socket empty, and the
            // registration after it (a system call each on smol), are left
            // to this caller's next call, which tries its read at once, as
            // a raw ping-pong does (its answer is often in by then); or, if
            // it makes none, to the driver (see `unregistered`). With other
            // calls still in flight, the reader comes back for it once the
            // answers' callers ran (their next calls go out first).
            Poll::Pending => {
                this.unregistered = std::mem::take(&mut this.yielded);
                if this.unregistered && this.calls.len() > 1 {
                    both.wake_by_ref();
                }
            }
        }
        let answered = std::mem::take(&mut this.answered);
        drop(state);
        let mut own = None;
        for (reply, answer) in answered {
            if own.is_none() && reply.is_connected_to(mine) {
                own = Some((reply, answer));
            } else {
                let _ = reply.send(answer);
            }
        }
        match own {
            Some((reply, answer)) => Served::Answered(reply, answer),
            None => Served::Reading,
        }
    }

    /// The caller that served with [`poll_read`](Self::poll_read) has its
    /// answer, or is dropped: it waits no more, and if it was the reader,
    /// another caller waiting on its thread reads on (woken if a wake is
    /// owed), or, with none, the driver's registrations stop waking it.
    pub(crate) fn stop_reading(&self, waker: &Waker) {
        let Some(state) = self.0.upgrade() else {
            return;
        };
        // Waits for a driver that holds the lock: while this caller is the
        // reader, what the driver registered wakes it alone (see `Both`).
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        let this = &mut *state;
        if let Some(at) = this.waiting.iter().position(|w| w.will_wake(waker)) {
            this.waiting.swap_remove(at);
        }
        if !this.reader.as_ref().is_some_and(|r| r.will_wake(waker)) {
            return;
        }
        match (this.waiting.last(), &this.both) {
            (Some(next), Some(both)) if both.reading.load(Ordering::SeqCst) => {
                this.reader = Some(next.clone());
                both.hand_to(next);
            }
            _ => this.stop_reader(),
        }
    }
}

/// A number that tells the calling thread from every other thread alive:
/// the address of a thread-local (never 0). Cheaper than
/// `thread::current().id()`, which counts a reference per call.
fn thread_token() -> usize {
    thread_local! {
        static TOKEN: u8 = const { 0 };
    }
    TOKEN.with(|token| std::ptr::from_ref(token) as usize)
}

/// Whether the driver whose thread is `driver` was last polled on another
/// thread than the calling one.
fn elsewhere(driver: &AtomicUsize) -> bool {
    let driver = driver.load(Ordering::Relaxed);
    driver != 0 && driver != thread_token()
}

/// The waker of what a caller serving the channel registers for (see
/// [`Submit::poll_read`]): it wakes that caller alone while it reads, and
/// the driver's task once it stopped.
///
/// Waking the driver's task as well (session 10) cost a wake-up of the
/// driver's thread per answer, and that thread's read that found the socket
/// empty. A caller that is woken but never comes (its future set aside
/// unpolled) must still not keep the channel from the driver: a wake the
/// caller has not served yet is `owed`, and the driver's watchdog (see
/// [`READER_WATCH`]) takes the channel back from a caller that still owes
/// one at its next check; a caller that stops reading with a wake owed
/// hands it to the driver.
struct Both {
    task: Waker,
    /// The caller that reads now (see [`DriverState::reader`]); another
    /// caller waiting on its thread takes over when it stops.
    reader: Mutex<Waker>,
    /// The caller still reads: wakes go to it.
    reading: AtomicBool,
    /// A wake went to the caller that it has not served yet.
    owed: AtomicBool,
}

impl Wake for Both {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.reading.load(Ordering::SeqCst) {
            self.owed.store(true, Ordering::SeqCst);
            // Woken outside the lock: a waker may run anything.
            let reader = self
                .reader
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            reader.wake();
            // The caller stopped in between: the wake is the driver's (if
            // the caller's stop did not pass it on already).
            if self.reading.load(Ordering::SeqCst) || !self.owed.swap(false, Ordering::SeqCst) {
                return;
            }
        }
        self.task.wake_by_ref();
    }
}

impl Both {
    /// The caller stops reading: what wakes this from now on is the
    /// driver's, and so is a wake the caller did not serve.
    fn stop(&self) {
        self.reading.store(false, Ordering::SeqCst);
        if self.owed.swap(false, Ordering::SeqCst) {
            self.task.wake_by_ref();
        }
    }

    /// Another caller reads from now on; a wake the one before did not
    /// serve is its own to serve.
    fn hand_to(&self, reader: &Waker) {
        {
            let mut current = self.reader.lock().unwrap_or_else(|e| e.into_inner());
            if !current.will_wake(reader) {
                *current = reader.clone();
            }
        }
        if self.owed.load(Ordering::SeqCst) {
            reader.wake_by_ref();
        }
    }
}

pub(crate) struct DriverState<R: Runtime> {
    /// The driver task's waker, from its last poll; `None` until the first
    /// poll and once the driver completed or was dropped.
    task: Option<Waker>,
    conn: Conn<ParentChannel, R::Socket>,
    killer: Arc<Killer>,
    /// `None` once every handle that could call is gone.
    commands: Option<Pin<Box<async_channel::Receiver<Command>>>>,
    /// `None` once every sender of stream data is gone.
    outgoing: Option<Pin<Box<async_channel::Receiver<RawMessage>>>>,
    calls: HashMap<CallId, Reply, BuildHasherDefault<CallIdHasher>>,
    /// Answers read in this poll, delivered after it, outside the lock.
    ///
    /// Delivered at once, an answer woke its caller while the driver still
    /// held the lock for the rest of its poll; a caller on another thread
    /// (the `block_on` future of a multi-thread runtime, a program's main
    /// future beside smol's executor) came back for its next call, found
    /// the lock held, slept on it and had to be woken a second time: two
    /// thread wake-ups per call instead of one, in two calls of three on
    /// tokio's multi-thread runtime (counted with `strace -f -e futex`).
    answered: Vec<Answered>,
    /// Calls whose frames are not wholly written yet.
    unsent: Vec<CallId>,
    data: Option<mpsc::Sender<Result<RawMessage, Error>>>,
    /// A data message waiting for room in the stream's queue: while it
    /// waits, the driver reads no more from the socket (back-pressure).
    held: Option<RawMessage>,
    returned: Option<oneshot::Sender<Result<Outcome, Error>>>,
    /// The worker closed its end: stop writing, keep reading, because what
    /// it sent before closing (its result) may still be in our buffer.
    write_broken: bool,
    /// The worker broke the protocol: what every waiter is told.
    broke: Option<parallel_proto::Error>,
    /// The worker's captured output and forwarded tracing, if any.
    output: Option<Captured<R>>,
    phase: Phase<R>,
    /// The poll stopped after reading answers, before a read that needs a
    /// system call (see `poll_serve`): the driver's task wakes itself once
    /// the answers are delivered.
    yielded: bool,
    /// The thread of the driver task's last poll, as [`thread_token`]
    /// gives it (0: not polled yet); only where [`Runtime::CALLERS_READ`].
    thread: Arc<AtomicUsize>,
    /// The caller that reads the channel on its own thread now (see
    /// [`Submit::poll_read`]): what the channel registered for wakes it.
    reader: Option<Waker>,
    /// The callers that served (or were ready to) on their own thread and
    /// still wait for their answers: when the reader stops, the last of
    /// them reads on, so that pipelined calls made on one thread are read
    /// there until the last answer (see [`Submit::stop_reading`]).
    waiting: Vec<Waker>,
    /// A caller reading on its own thread left calls unwritten for its
    /// next poll, to write them together with the calls made beside it
    /// (see [`Submit::poll_read`]).
    flush_deferred: bool,
    /// The waker of `task` and `reader` together, kept while they are the
    /// same.
    both: Option<Arc<Both>>,
    /// While a caller reads, the driver's check that it comes for what woke
    /// it (see [`Both`]); it wakes the driver's task.
    watchdog: Option<Watchdog<R::Sleep>>,
    /// A reading caller stopped after its answer without reading on to the
    /// empty socket: nothing is registered for the socket's readiness until
    /// a caller reads again or the driver polls (woken by a call it must
    /// read for, or by the watchdog, armed meanwhile).
    unregistered: bool,
}

// No field is structurally pinned: every future the driver polls is boxed
// or `Unpin`, so moving a `Driver` is fine.
impl<R: Runtime> Unpin for DriverState<R> {}

impl<R: Runtime> Drop for Driver<R> {
    fn drop(&mut self) {
        // Completed, or dropped with its runtime: either way nothing more
        // of this worker will be reported, and no caller may submit more.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.task = None;
        state.killer.finish();
    }
}

enum Phase<R: Runtime> {
    Serve,
    /// Serving ended in a [`Held`] driver's poll, on the handle's task: the
    /// task returned (true) or the channel broke (false). The driver's own
    /// task goes on from there (its timers are made there, not on the
    /// handle's task).
    Served(bool),
    /// The task returned: wait (bounded) for the zygote's answer, which the
    /// result can overtake; dropping it unanswered would have the worker
    /// killed as an abandoned spawn while it exits.
    Settle(Pin<Box<R::Sleep>>),
    /// Then let the worker exit by itself, so that nothing it flushes on the
    /// way out is cut short.
    Drain(Pin<Box<R::Sleep>>),
    /// The channel broke: wait (bounded) for the zygote's answer.
    Resolve(Pin<Box<R::Sleep>>),
    /// Then wait for the exit status, killing the worker if it lingers.
    Exit {
        deadline: Pin<Box<R::Sleep>>,
        killed: bool,
    },
    /// The worker is gone: read the rest of its output (bounded), then
    /// report its death, if it died.
    Output {
        deadline: Pin<Box<R::Sleep>>,
        death: Option<Death>,
    },
    Done,
}

/// When the watchdog of a reading caller checks (see [`READER_WATCH`]).
enum Watchdog<S> {
    /// At this instant: the alarm thread wakes the driver's task then.
    Alarm(Instant),
    /// When this timer of the runtime fires, where the alarm thread could
    /// not be started.
    Timer(Pin<Box<S>>),
}

fn sleep<R: Runtime>(duration: Duration) -> Pin<Box<R::Sleep>> {
    Box::pin(R::sleep(duration))
}

impl<R: Runtime> Future for Driver<R> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let driver = self.get_mut();
        let poll = {
            let mut state = driver.state.lock().unwrap_or_else(|e| e.into_inner());
            let this = &mut *state;
            if !this.task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                this.task = Some(cx.waker().clone());
            }
            if R::CALLERS_READ {
                this.thread.store(thread_token(), Ordering::Relaxed);
            }
            // A held driver is its handle's to poll until released.
            if !this.killer.poll_released(cx) {
                return Poll::Pending;
            }
            // A caller reading on its own thread that has not come for
            // what woke it since the last check loses the channel to the
            // driver (see `Both`).
            this.poll_watchdog(cx);
            // Under the task's own waker: what the driver registers for
            // wakes the driver (a reading caller then gets its answer from
            // it, and registers its own waker again at its next read).
            let poll = this.poll_phases(cx);
            this.unregistered = false;
            if poll.is_ready() {
                this.task = None;
            }
            std::mem::swap(&mut this.answered, &mut driver.answered);
            (poll, std::mem::take(&mut this.yielded))
        };
        let (poll, yielded) = poll;
        for (reply, answer) in driver.answered.drain(..) {
            let _ = reply.send(answer);
        }
        if yielded {
            // After the answers: their callers run first (see `poll_serve`).
            cx.waker().wake_by_ref();
        }
        poll
    }
}

impl<R: Runtime> DriverState<R> {
    fn poll_phases(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let this = self;
        // Everything the driver reports happens inside the worker's span.
        let span = this.killer.span().clone();
        let _entered = span.enter();
        loop {
            this.poll_output(cx);
            match &mut this.phase {
                Phase::Serve => {
                    this.phase = match this.poll_serve(cx) {
                        Poll::Ready(returned) => Phase::Served(returned),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Phase::Served(true) => this.phase = Phase::Settle(sleep::<R>(EXIT_STATUS_WAIT)),
                Phase::Served(false) => this.phase = Phase::Resolve(sleep::<R>(EXIT_STATUS_WAIT)),
                Phase::Settle(deadline) => {
                    if this.killer.poll_resolve(cx).is_pending() {
                        if deadline.as_mut().poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                        this.killer.abandon_spawn();
                    }
                    this.phase = Phase::Drain(sleep::<R>(DRAIN));
                }
                Phase::Drain(_) => {
                    // The deadline is polled (its timer registered) only
                    // while the worker is not gone yet.
                    let drained = this.poll_drained(cx).is_ready();
                    let Phase::Drain(deadline) = &mut this.phase else {
                        unreachable!("matched above");
                    };
                    if drained || deadline.as_mut().poll(cx).is_ready() {
                        tracing::debug!(pid = this.killer.pid(), "worker finished");
                        this.phase = Phase::Output {
                            deadline: sleep::<R>(OUTPUT_WAIT),
                            death: None,
                        };
                    } else {
                        return Poll::Pending;
                    }
                }
                Phase::Resolve(deadline) => {
                    if this.killer.poll_resolve(cx).is_pending() {
                        if deadline.as_mut().poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                        this.killer.abandon_spawn();
                    }
                    this.phase = Phase::Exit {
                        deadline: sleep::<R>(GRACE),
                        killed: false,
                    };
                }
                Phase::Exit { deadline, killed } => {
                    let process = this.killer.process();
                    let mut zygote_gone = None;
                    let status = match &process {
                        None => None,
                        Some(process) => match process.poll_exited(cx) {
                            Poll::Ready(Ok(status)) => Some(status),
                            Poll::Ready(Err(error)) => {
                                zygote_gone = Some(Arc::new(error));
                                None
                            }
                            Poll::Pending => {
                                if deadline.as_mut().poll(cx).is_pending() {
                                    return Poll::Pending;
                                }
                                if !*killed {
                                    // The channel can break while the worker
                                    // still runs (it closed its socket, or
                                    // broke the protocol): make sure it ends.
                                    let _ = process.kill(libc::SIGKILL);
                                    *deadline = sleep::<R>(EXIT_STATUS_WAIT);
                                    *killed = true;
                                    continue;
                                }
                                None
                            }
                        },
                    };
                    let pid = process.map(|p| p.pid()).or_else(|| this.killer.pid());
                    let death = Death {
                        pid,
                        status,
                        spawn_error: this.killer.spawn_error(),
                        zygote_gone,
                        protocol: this.broke.take(),
                        limit: None,
                        stderr_tail: Vec::new(),
                    };
                    this.phase = Phase::Output {
                        deadline: sleep::<R>(OUTPUT_WAIT),
                        death: Some(death),
                    };
                }
                Phase::Output { deadline, death } => {
                    let done = this.output.as_ref().map_or(true, Captured::is_done);
                    if !done && deadline.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    // A last line read without its newline is still the
                    // worker's: delivered (and in the stderr tail below).
                    if let Some(output) = &mut this.output {
                        output.finish_open();
                    }
                    if let Some(mut death) = death.take() {
                        if let Some(output) = &this.output {
                            death.stderr_tail = output.stderr_tail();
                        }
                        trace_death(&span, &death);
                        this.report_death(death);
                    }
                    // Whatever still holds the streams open is not ours to wait for.
                    this.output = None;
                    this.phase = Phase::Done;
                }
                Phase::Done => {
                    this.killer.finish();
                    return Poll::Ready(());
                }
            }
        }
    }
}

impl<R: Runtime> DriverState<R> {
    /// Whether a caller on this thread reads the channel itself (see
    /// [`Submit::poll_read`]): the runtime says so and the driver's task
    /// runs on another thread.
    fn caller_reads(&self) -> bool {
        R::CALLERS_READ && elsewhere(&self.thread)
    }

    /// Whether a caller that completes a chunk of pipelined calls writes it
    /// itself (see [`CALLER_WRITE_CHUNK`]): where the runtime says so, and
    /// always for a caller on the driver's own thread. A runtime that says
    /// no (smol) does for callers on another thread, whose every chunk left
    /// to the driver wakes it; a caller on the driver's thread (a task of
    /// smol's executor) wakes nobody, and its chunks left to the driver went
    /// out only once it yielded, the worker idle meanwhile (64 calls in
    /// flight from a smol task: 2.6-2.8 → 1.9-2.1 ms, BENCHMARKS.md,
    /// session 13).
    fn callers_write_chunks(&self) -> bool {
        R::CALLERS_WRITE_CHUNKS || (R::CALLERS_READ && !elsewhere(&self.thread))
    }

    /// The waker of the driver's task and the reading caller together, if a
    /// caller reads (see [`Submit::poll_read`]), marked reading with nothing
    /// owed: the caller serves now. Kept while the driver's task is the
    /// same, its reader changed in place as callers take turns: what the
    /// socket registered for under it wakes the new reader.
    fn both(&mut self) -> Option<Waker> {
        let (task, reader) = (self.task.as_ref()?, self.reader.as_ref()?);
        let both = match &self.both {
            Some(both) if both.task.will_wake(task) => {
                let mut current = both.reader.lock().unwrap_or_else(|e| e.into_inner());
                if !current.will_wake(reader) {
                    *current = reader.clone();
                }
                drop(current);
                Arc::clone(both)
            }
            _ => {
                if let Some(old) = self.both.take() {
                    old.stop();
                }
                let both = Arc::new(Both {
                    task: task.clone(),
                    reader: Mutex::new(reader.clone()),
                    reading: AtomicBool::new(false),
                    owed: AtomicBool::new(false),
                });
                self.both = Some(Arc::clone(&both));
                both
            }
        };
        both.owed.store(false, Ordering::SeqCst);
        both.reading.store(true, Ordering::SeqCst);
        Some(Waker::from(both))
    }

    /// No caller reads any more: what its registrations wake is the
    /// driver's again.
    fn stop_reader(&mut self) {
        self.reader = None;
        self.flush_deferred = false;
        if let Some(both) = &self.both {
            both.stop();
        }
    }

    /// Arms the watchdog of a reading caller (see [`Both`]), unless armed.
    fn watch(&mut self) {
        if self.watchdog.is_some() {
            return;
        }
        if let Some(task) = self.task.clone() {
            self.arm_watchdog(&task);
        }
    }

    /// Arms the watchdog to wake `task` (the driver's) after
    /// [`READER_WATCH`]: through the alarm thread, or where it could not be
    /// started, a timer of the runtime.
    fn arm_watchdog(&mut self, task: &Waker) {
        let due = Instant::now() + READER_WATCH;
        if alarm::wake_at(due, task) {
            self.watchdog = Some(Watchdog::Alarm(due));
            return;
        }
        let mut timer = sleep::<R>(READER_WATCH);
        if timer
            .as_mut()
            .poll(&mut Context::from_waker(task))
            .is_pending()
        {
            self.watchdog = Some(Watchdog::Timer(timer));
        }
    }

    /// The watchdog's check, once it expired: a caller that still owes a
    /// wake since the last check has not come, and the driver takes the
    /// channel back; one that still reads is watched on.
    fn poll_watchdog(&mut self, cx: &mut Context<'_>) {
        let expired = match &mut self.watchdog {
            None => return,
            Some(Watchdog::Alarm(due)) => Instant::now() >= *due,
            Some(Watchdog::Timer(timer)) => timer.as_mut().poll(cx).is_ready(),
        };
        if !expired {
            return;
        }
        self.watchdog = None;
        let Some(both) = &self.both else {
            return;
        };
        if !both.reading.load(Ordering::SeqCst) || !matches!(self.phase, Phase::Serve) {
            return;
        }
        if both.owed.load(Ordering::SeqCst) {
            // The driver's poll that follows serves what the caller did not.
            self.reader = None;
            self.flush_deferred = false;
            both.reading.store(false, Ordering::SeqCst);
            both.owed.store(false, Ordering::SeqCst);
            return;
        }
        self.arm_watchdog(cx.waker());
    }

    /// Reads the worker's captured output and tracing, once its pid is
    /// known (every line is attributed to it): the pid comes with the
    /// worker's hello or the zygote's answer, whichever is first.
    fn poll_output(&mut self, cx: &mut Context<'_>) {
        let Some(output) = &mut self.output else {
            return;
        };
        let pid = match self.killer.pid() {
            Some(pid) => pid,
            None => {
                let _ = self.killer.poll_resolve(cx);
                match self.killer.pid() {
                    Some(pid) => pid,
                    // The spawn failed or was abandoned: no worker wrote anything.
                    None if !matches!(self.phase, Phase::Serve) => {
                        if self.killer.spawn_error().is_some() {
                            self.output = None;
                        }
                        return;
                    }
                    None => return,
                }
            }
        };
        if output.attribute(pid) {
            // Learnt here before the worker's hello: its span says it now,
            // so that the lines' events sit in a span that names the pid.
            self.killer.span().record("pid", pid);
        }
        output.poll_read(cx, pid);
    }

    /// [`Submit::try_call`]: the call is registered and written here, on
    /// the caller's thread, if the driver serves, is idle and nothing was
    /// queued before it; else it goes back to the caller.
    fn submit(&mut self, command: Command) -> Result<(), Command> {
        let serving = matches!(self.phase, Phase::Serve)
            && !self.write_broken
            && self.commands.as_ref().is_some_and(|c| c.is_empty());
        if !serving || self.task.is_none() {
            return Err(command);
        }
        // Bounded as the channel is: past a batch, callers queue there.
        // Counted by the calls not yet wholly written (`unsent`), not by
        // asking the connection: that moves what the state machine queued
        // into the outbox, so that each call queued after it started a
        // write buffer of its own (an allocation, a slice of the gathered
        // write and an outbox entry per call), where calls queued together
        // share one.
        let unwritten = self.unsent.len();
        if unwritten >= COMMAND_BATCH {
            return Err(command);
        }
        // A call alone on the channel is written now, on this thread. One
        // among others (calls pipelined by one task, or concurrent callers)
        // is left for the driver, woken once for all of them, so that they
        // go out in one write rather than one each; up to a chunk: the
        // call that completes one writes it (see `CALLER_WRITE_CHUNK`).
        let alone = unwritten == 0 && self.calls.is_empty();
        // A caller on another thread than the driver's, where callers read
        // (smol's `block_on` future), writes and reads its pipelined calls
        // itself (see `Submit::poll_read`, which it calls right after).
        let reads = !alone && self.caller_reads();
        if !alone && !reads {
            // Pipelined calls are the driver's to read: what a caller
            // reading until now registered for wakes the driver again.
            self.stop_reader();
        }
        let span = self.killer.span().clone();
        let _entered = span.enter();
        self.command(command);
        let Some(task) = &self.task else {
            unreachable!("checked above");
        };
        if reads {
            // Whoever reads now writes the call: this caller, unless the
            // lock is busy when it comes to it; so the reader is woken
            // (on this thread, as a rule), or, with none, the driver.
            match &self.both {
                // A caller that deferred its write was woken for it already.
                Some(both) if both.reading.load(Ordering::SeqCst) => {
                    if !self.flush_deferred {
                        Waker::from(Arc::clone(both)).wake();
                    }
                }
                _ => task.wake_by_ref(),
            }
            return Ok(());
        }
        if !alone && (!self.callers_write_chunks() || self.unsent.len() < CALLER_WRITE_CHUNK) {
            task.wake_by_ref();
            return Ok(());
        }
        // Nothing waits for the socket's readiness (see `unregistered`),
        // and this caller will not read for itself: the driver must.
        if self.unregistered && !self.caller_reads() {
            task.wake_by_ref();
        }
        // Under the driver task's waker: a write that must wait for room
        // wakes the driver, which finishes it. (A chunk's write takes the
        // calls queued before it in the chunk, and leaves the driver
        // nothing to do for them: it was woken for them all the same.)
        match self.conn.poll_flush(&mut Context::from_waker(task)) {
            Poll::Ready(Ok(())) => self.unsent.clear(),
            Poll::Ready(Err(_)) => {
                self.write_broken = true;
                task.wake_by_ref();
            }
            Poll::Pending => {}
        }
        Ok(())
    }

    /// Serves until the task returns (true) or the channel breaks (false).
    fn poll_serve(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        loop {
            let mut progress = false;
            // A kill is waiting for the pid: get it (the kill follows).
            if self.killer.kill_waits(cx) {
                let _ = self.killer.poll_resolve(cx);
            }
            if !self.write_broken {
                match self.conn.poll_flush(cx) {
                    Poll::Ready(Ok(())) => self.unsent.clear(),
                    Poll::Ready(Err(_)) => self.write_broken = true,
                    Poll::Pending => {}
                }
            }
            // Take more to send only once what is queued went out: the
            // bounded queues behind `commands` and `outgoing` then hold
            // senders back (back-pressure towards the parent's tasks).
            if self.write_broken || self.conn.is_flushed() {
                // Every queued call (up to a batch) before the next write:
                // pipelined calls then go out in one system call.
                for _ in 0..COMMAND_BATCH {
                    let Some(commands) = &mut self.commands else {
                        break;
                    };
                    match commands.as_mut().poll_next(cx) {
                        Poll::Ready(Some(command)) => {
                            self.command(command);
                            progress = true;
                        }
                        Poll::Ready(None) => {
                            self.commands = None;
                            if self.end_if_closed().is_err() {
                                return Poll::Ready(false);
                            }
                            progress = true;
                        }
                        Poll::Pending => break,
                    }
                }
                if self.commands.is_none()
                    && self.outgoing.is_none()
                    && !self.write_broken
                    && !self.conn.machine.is_end_sent()
                    && !self.conn.machine.is_returned()
                {
                    // A one-shot worker's End that did not fit beside its
                    // Start (see `launch_one_shot`).
                    if self.end_if_closed().is_err() {
                        return Poll::Ready(false);
                    }
                    progress = true;
                }
                // Every queued message (up to a batch) before the next
                // write: they go out in one system call, and the sender is
                // woken once for the room they leave (see `MessageBatch`).
                let mut batch = MessageBatch::default();
                while let Some(outgoing) = &mut self.outgoing {
                    if batch.is_full() {
                        break;
                    }
                    match outgoing.as_mut().poll_next(cx) {
                        Poll::Ready(Some(message)) => {
                            if self.conn.send_message(message, &mut batch).is_err() {
                                return Poll::Ready(false);
                            }
                            progress = true;
                        }
                        Poll::Ready(None) => {
                            self.outgoing = None;
                            if self.end_if_closed().is_err() {
                                return Poll::Ready(false);
                            }
                            progress = true;
                        }
                        Poll::Pending => break,
                    }
                }
            }
            if let (true, Some(data)) = (self.held.is_some(), &mut self.data) {
                match data.poll_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        let message = self.held.take().expect("checked above");
                        let _ = data.start_send(Ok(message));
                        progress = true;
                    }
                    Poll::Ready(Err(_)) => {
                        // Nobody reads the stream any more: drop what comes.
                        self.data = None;
                        self.held = None;
                        progress = true;
                    }
                    Poll::Pending => {}
                }
            }
            if self.held.is_none() {
                match self.conn.poll_event(cx) {
                    Poll::Ready(Ok(Some((ParentEvent::SharedData { len, .. }, fds)))) => {
                        match shared::receive(len, fds) {
                            Ok(message) => {
                                if self.data.is_some() {
                                    self.held = Some(message);
                                }
                            }
                            Err(error) => {
                                tracing::error!(%error, "worker broke the protocol: killing it");
                                self.broke = Some(error.into());
                                self.killer.kill();
                                return Poll::Ready(false);
                            }
                        }
                        progress = true;
                    }
                    Poll::Ready(Ok(Some((event, fds)))) => {
                        if self.handle(event, fds) {
                            return Poll::Ready(true);
                        }
                        progress = true;
                        // Answers read, and the next read needs a system
                        // call: deliver them first. Their callers run (and
                        // write their next calls) before the read that finds
                        // the socket empty and the reactor registration after
                        // it, which then leave the round trip's path, as in
                        // a plain ping-pong. The task wakes itself to go on
                        // (where the runtime says that is cheap: see
                        // `Runtime::YIELD_AFTER_ANSWERS`).
                        if R::YIELD_AFTER_ANSWERS
                            && !self.answered.is_empty()
                            && !self.conn.has_unparsed_input()
                        {
                            self.yielded = true;
                            return Poll::Pending;
                        }
                    }
                    Poll::Ready(Err(Error::Protocol(error))) => {
                        tracing::error!(%error, "worker broke the protocol: killing it");
                        // A worker that breaks the protocol gets no more
                        // service: kill it now rather than after the grace.
                        self.broke = Some(error);
                        self.killer.kill();
                        return Poll::Ready(false);
                    }
                    Poll::Ready(Ok(None) | Err(_)) => return Poll::Ready(false),
                    Poll::Pending => {}
                }
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }

    fn command(&mut self, command: Command) {
        let Command::Call { args, reply } = command;
        match self.conn.machine.call_with_tail(&args.head, args.tail) {
            Ok(call) => {
                tracing::trace!(call, "call sent");
                self.calls.insert(call, reply);
                self.unsent.push(call);
            }
            Err(error) => {
                let _ = reply.send(Err(CallFailed::undelivered(error.into())));
            }
        }
    }

    /// Every handle that could send is gone: half close.
    fn end_if_closed(&mut self) -> Result<(), Error> {
        let machine = &self.conn.machine;
        if self.commands.is_none()
            && self.outgoing.is_none()
            && !machine.is_returned()
            && !machine.is_end_sent()
        {
            self.conn.machine.end()?;
        }
        Ok(())
    }

    /// Applies one event; true when the task returned.
    fn handle(&mut self, event: ParentEvent, fds: Vec<OwnedFd>) -> bool {
        match event {
            ParentEvent::Data { payload, .. } if self.data.is_some() => {
                self.held = Some((Payload::Inline(payload), fds));
            }
            ParentEvent::Ready { pid } => {
                self.killer.span().record("pid", pid);
                tracing::debug!(pid, "worker ready");
                self.killer.hello(pid);
            }
            ParentEvent::End => self.data = None,
            ParentEvent::Reply { call, outcome } => {
                tracing::trace!(call, "call answered");
                if let Some(reply) = self.calls.remove(&call) {
                    self.answered.push((reply, Ok((call, outcome))));
                }
            }
            ParentEvent::Returned(outcome) => {
                tracing::debug!("worker task returned");
                self.data = None;
                if let Some(returned) = self.returned.take() {
                    let _ = returned.send(Ok(outcome));
                }
                return true;
            }
            _ => {}
        }
        false
    }

    /// Reads to the end of the stream, then waits for the worker's exit.
    fn poll_drained(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match self.conn.poll_event(cx) {
                Poll::Ready(Ok(Some(_))) => continue,
                Poll::Ready(_) => break,
                Poll::Pending => return Poll::Pending,
            }
        }
        match self.killer.process() {
            Some(process) => process.poll_exited(cx).map(|_| ()),
            None => Poll::Ready(()),
        }
    }

    /// The channel broke before the task returned: tell every waiter why,
    /// naming the call each one was waiting for.
    fn report_death(&mut self, death: Death) {
        let death = self.killer.record_death(death);
        for (call, reply) in self.calls.drain() {
            let _ = reply.send(Err(CallFailed {
                error: death.error(Some(call)),
                delivered: !self.unsent.contains(&call),
            }));
        }
        if let Some(mut data) = self.data.take() {
            let _ = data.try_send(Err(death.error(None)));
        }
        if let Some(returned) = self.returned.take() {
            let _ = returned.send(Err(death.error(None)));
        }
        // Commands that raced with the death get the same answer.
        if let Some(commands) = self.commands.take() {
            commands.close();
            while let Ok(Command::Call { reply, .. }) = commands.try_recv() {
                let _ = reply.send(Err(CallFailed::undelivered(death.error(None))));
            }
        }
    }
}

/// The death event: `warn` for a signal or a failure, `debug` for a clean
/// exit, `error` when the zygote is gone.
fn trace_death(span: &tracing::Span, death: &Death) {
    if let Some(pid) = death.pid {
        span.record("pid", pid);
    }
    let pid = death.pid.unwrap_or(0);
    if let Some(gone) = &death.zygote_gone {
        tracing::error!(pid, error = %gone, "zygote gone: the worker died with it");
        return;
    }
    if let Some(error) = &death.spawn_error {
        tracing::warn!(error = %error, "worker could not be started");
        return;
    }
    match death.status {
        Some(crate::ExitStatus::Signaled {
            signal,
            core_dumped,
        }) => {
            tracing::warn!(pid, signal, core_dumped, "worker died of a signal");
        }
        Some(crate::ExitStatus::Exited(0)) => tracing::debug!(pid, code = 0, "worker exited"),
        Some(crate::ExitStatus::Exited(code)) => {
            tracing::warn!(pid, code, "worker exited with a failure");
        }
        None => tracing::warn!(pid, "worker died, exit status unknown"),
    }
}
