//! The parent's handle on a zygote: a blocking client usable from any thread,
//! whose waits are also `Future`s for async adapters.
//!
//! One background thread reads the control socket and completes waiters;
//! writers serialize on a separate lock, so a slow write never stops replies
//! from being read. When the socket closes, that thread reaps the zygote (the
//! top zygote is this process's child), records how it ended, and exits.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use parallel_proto::zygote::{
    ExitStatus, RequestId, SpawnFailure, SpawnOptions, WorkerId, ZygoteClient, ZygoteEvent,
};
use parallel_proto::{Limits, LocalError, WireEntry};

use crate::completion::{lock, Completion};
use crate::entry::Entry;
use crate::io::{Inbox, Outbox};
use crate::{Error, StartMethod, WorkerContext};

/// Why a wait ended without its answer (cloneable, unlike [`Error`]).
#[derive(Debug, Clone)]
enum Failure {
    Gone(Gone),
    SpawnFailed(SpawnFailure),
}

impl From<Failure> for Error {
    fn from(failure: Failure) -> Error {
        match failure {
            Failure::Gone(gone) => gone.into(),
            Failure::SpawnFailed(failure) => Error::SpawnFailed(failure),
        }
    }
}

/// How a zygote ended, as far as this process knows: the parts of
/// [`Error::ZygoteGone`].
#[derive(Debug, Clone)]
pub(crate) struct Gone {
    pub(crate) pid: i32,
    pub(crate) status: Option<ExitStatus>,
    pub(crate) reason: String,
}

impl From<Gone> for Error {
    fn from(gone: Gone) -> Error {
        Error::ZygoteGone {
            pid: gone.pid,
            status: gone.status,
            reason: gone.reason,
        }
    }
}

/// What the reader saw when the control socket reached end of file, while
/// the zygote's exit status is not known (yet, or at all: a derived snapshot
/// is reaped by its own zygote, not by us).
const HANGUP: &str = "its control socket closed (it exited or was killed)";

/// How long the reader waits for the exit status of a zygote whose control
/// socket closed before it fails the waiters without it. A zygote closes its
/// socket as it exits, so its status follows within microseconds.
const EXIT_STATUS_WAIT: Duration = Duration::from_millis(200);

/// How long a zygote whose control socket closed gets to exit (it terminates
/// its workers first: SIGTERM, a 250 ms grace, SIGKILL) before the reader
/// kills it, so that it is always reaped and the reader always ends.
const EXIT_WAIT: Duration = Duration::from_secs(10);

/// What became of a zygote. Kept apart from the handles, so that a later
/// `start` can still tell how the zygote ended after the last one dropped.
#[derive(Debug)]
struct Fate {
    pid: i32,
    inner: Mutex<FateInner>,
}

#[derive(Debug, Default)]
struct FateInner {
    /// What ended the connection, once it ended.
    seen: Option<String>,
    /// The exit status, once reaped (only the top zygote is our child).
    status: Option<ExitStatus>,
    /// [`Zygote::shutdown`] asked it to exit.
    shutdown: bool,
    /// Its last handle was dropped, which asks it to exit.
    dropped: bool,
}

impl Fate {
    fn gone(&self) -> Gone {
        let inner = lock(&self.inner);
        let why = if inner.dropped {
            Some("it was shut down when its last handle was dropped")
        } else if inner.shutdown {
            Some("it was asked to shut down")
        } else {
            inner.seen.as_deref().filter(|seen| *seen != HANGUP)
        };
        let reason = match (why, inner.status) {
            (Some(why), Some(status)) => format!("{why}, and it {}", ended(status)),
            (None, Some(status)) => format!("it {}", ended(status)),
            (Some(why), None) => why.to_string(),
            (None, None) => HANGUP.to_string(),
        };
        Gone {
            pid: self.pid,
            status: inner.status,
            reason,
        }
    }
}

/// "exited with code 3", "was killed by signal 9": follows "it".
fn ended(status: ExitStatus) -> String {
    match status {
        ExitStatus::Exited(crate::ZYGOTE_PROTOCOL_EXIT_CODE) => format!(
            "{status}: it received bytes that break the zygote protocol (its stderr says which)"
        ),
        ExitStatus::Exited(_) => status.to_string(),
        ExitStatus::Signaled { .. } => format!("was {status}"),
    }
}

/// What the reader thread's loop ended on.
enum Ending {
    /// End of file (or a reset): the zygote closed its socket as it
    /// exited, or we hung up.
    HungUp,
    /// A read failed or the zygote broke the protocol: it gets no more service.
    Broken(String),
}

/// What waiting for the zygote's exit found.
enum Reaped {
    Status(ExitStatus),
    /// Still running when the wait ended.
    Running,
    /// Not our child any more: reaped elsewhere (SIGCHLD ignored, or a
    /// `waitpid(-1)` of the program's). Its status is lost.
    Lost,
}

fn exit_status(status: WaitStatus) -> Option<ExitStatus> {
    match status {
        WaitStatus::Exited(_, code) => Some(ExitStatus::Exited(code)),
        WaitStatus::Signaled(_, signal, core_dumped) => Some(ExitStatus::Signaled {
            signal: signal as i32,
            core_dumped,
        }),
        _ => None,
    }
}

/// Reaps `pid`, a child of this process, polling for at most `within`.
fn reap_within(pid: Pid, within: Duration) -> Reaped {
    let deadline = Instant::now() + within;
    let mut pause = Duration::from_millis(1);
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(status) => {
                if let Some(status) = exit_status(status) {
                    return Reaped::Status(status);
                }
            }
            Err(Errno::EINTR) => continue,
            Err(_) => return Reaped::Lost,
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Reaped::Running;
        }
        std::thread::sleep(pause.min(left));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Reaps `pid`, a child of this process whose control socket is closed:
/// waits [`EXIT_WAIT`] for it to exit, then kills it. Returns when it is
/// reaped (or lost), so the caller never leaves a zombie behind.
fn reap_zygote(pid: Pid) -> Reaped {
    if let reaped @ (Reaped::Status(_) | Reaped::Lost) = reap_within(pid, EXIT_WAIT) {
        return reaped;
    }
    // It hung up long ago and still runs: it is stuck. It is our unreaped
    // child, so the pid cannot have been reused by another process.
    let _ = kill(pid, Signal::SIGKILL);
    loop {
        match waitpid(pid, None) {
            Ok(status) => {
                if let Some(status) = exit_status(status) {
                    return Reaped::Status(status);
                }
            }
            Err(Errno::EINTR) => {}
            Err(_) => return Reaped::Lost,
        }
    }
}

type ExitSlot = Arc<Completion<Result<ExitStatus, Failure>>>;

#[derive(Debug, Clone)]
struct Started {
    worker: WorkerId,
    pid: i32,
    /// Created with the reply, so an exit that follows at once is not missed.
    exit: ExitSlot,
}

type StartSlot = Arc<Completion<Result<Started, Failure>>>;

/// Filled by the zygote's hello (`Ok`), or by the connection's end (`Err`).
type ReadySlot = Arc<Completion<Result<(), Failure>>>;

struct State {
    client: ZygoteClient,
    /// The zygote serves: for a derived snapshot, its `init` finished.
    ready: ReadySlot,
    starts: HashMap<RequestId, StartSlot>,
    exits: HashMap<WorkerId, ExitSlot>,
    /// Requests whose waiter went away: their worker is killed on arrival.
    abandoned: HashSet<RequestId>,
    /// The connection ended; [`Shared::fate`] says how.
    gone: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Taken after `state` and held while writing, so frames (and their
    /// descriptors) reach the socket in the order the state machine made them.
    writer: Mutex<Outbox>,
    socket: UnixStream,
    /// Its pid and how it ended; taken after `state`.
    fate: Arc<Fate>,
    /// The zygote is this process's child (the top zygote, not a derived
    /// snapshot): the reader thread reaps it.
    child: bool,
}

impl Shared {
    /// Moves queued frames to the outbox (under both locks, keeping order),
    /// then writes them after releasing the state lock.
    fn send(
        &self,
        mut state: std::sync::MutexGuard<'_, State>,
        mut fds: Vec<OwnedFd>,
    ) -> Result<(), Error> {
        let mut outbox = lock(&self.writer);
        while let Some(transmit) = state.client.poll_transmit() {
            let attached: Vec<OwnedFd> = fds.drain(..transmit.fds.min(fds.len())).collect();
            outbox.push(transmit, attached);
        }
        drop(state);
        if let Err(error) = outbox.flush(&self.socket) {
            drop(outbox);
            let reason = format!("writing to its control socket failed: {error}");
            self.mark_gone(&mut lock(&self.state), reason);
            return Err(self.fate.gone().into());
        }
        Ok(())
    }

    /// Ends the connection, once: records what was seen and fails every waiter.
    fn mark_gone(&self, state: &mut State, seen: String) {
        if state.gone {
            return;
        }
        state.gone = true;
        lock(&self.fate.inner).seen.get_or_insert(seen);
        let gone = self.fate.gone();
        state.ready.complete(Err(Failure::Gone(gone.clone())));
        for (_, slot) in state.starts.drain() {
            slot.complete(Err(Failure::Gone(gone.clone())));
        }
        for (_, slot) in state.exits.drain() {
            slot.complete(Err(Failure::Gone(gone.clone())));
        }
    }

    fn check_alive(&self, state: &State) -> Result<(), Error> {
        if state.gone {
            return Err(self.fate.gone().into());
        }
        Ok(())
    }

    fn record(&self, reaped: &Reaped) {
        if let Reaped::Status(status) = reaped {
            lock(&self.fate.inner).status = Some(*status);
        }
    }

    fn kill(&self, worker: WorkerId, signal: i32) -> Result<(), Error> {
        let mut state = lock(&self.state);
        self.check_alive(&state)?;
        match state.client.kill(worker, signal) {
            Ok(()) => self.send(state, Vec::new()),
            // Already reaped: nothing left to kill.
            Err(parallel_proto::Error::Local(LocalError::UnknownWorker(_))) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    /// The reader thread: reads replies until the connection ends, then
    /// fails the waiters and, for our child, reaps the zygote and records
    /// how it ended. Returns once the zygote is reaped, so neither a zombie
    /// nor this thread outlives it.
    fn read_loop(self: Arc<Self>, socket: UnixStream) {
        let ending = self.read_replies(&socket);
        let pid = Pid::from_raw(self.fate.pid);
        let mut reaped = Reaped::Running;
        match ending {
            Ending::HungUp => {
                // The zygote closes its socket as it exits: its status follows
                // at once, and lets the waiters' errors say how it ended.
                if self.child {
                    reaped = reap_within(pid, EXIT_STATUS_WAIT);
                    self.record(&reaped);
                }
                self.mark_gone(&mut lock(&self.state), HANGUP.to_string());
            }
            Ending::Broken(reason) => {
                // No more service: hang up, so that the zygote exits.
                let _ = socket.shutdown(std::net::Shutdown::Both);
                self.mark_gone(&mut lock(&self.state), reason);
            }
        }
        if self.child && matches!(reaped, Reaped::Running) {
            self.record(&reap_zygote(pid));
        }
    }

    /// Reads and dispatches replies until end of file or a broken connection.
    fn read_replies(&self, socket: &UnixStream) -> Ending {
        let mut inbox = Inbox::new();
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let read = match inbox.read(socket, &mut buffer) {
                Ok(0) => return Ending::HungUp,
                Ok(read) => read,
                // What a zygote that died with our requests unread leaves behind.
                Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {
                    return Ending::HungUp
                }
                Err(error) => {
                    return Ending::Broken(format!("reading its control socket failed: {error}"))
                }
            };
            let mut state = lock(&self.state);
            let mut input = &buffer[..read];
            let mut kills = Vec::new();
            let outcome = loop {
                match state.client.handle_input(&mut input) {
                    Ok(Some(event)) => {
                        if let Some(worker) = Self::dispatch(&mut state, event) {
                            kills.push(worker);
                        }
                    }
                    Ok(None) => break Ok(()),
                    Err(error) => {
                        break Err(format!(
                            "it broke the protocol: {}",
                            crate::error::chain(&error)
                        ))
                    }
                }
            };
            if let Err(reason) = outcome {
                return Ending::Broken(reason);
            }
            if kills.is_empty() {
                continue;
            }
            for worker in kills {
                let _ = state.client.kill(worker, libc::SIGKILL);
            }
            let _ = self.send(state, Vec::new());
        }
    }

    /// Applies one event; returns a worker to kill because nobody waits for it.
    fn dispatch(state: &mut State, event: ZygoteEvent) -> Option<WorkerId> {
        match event {
            ZygoteEvent::Ready { .. } => {
                state.ready.complete(Ok(()));
                None
            }
            ZygoteEvent::Spawned {
                request,
                worker,
                pid,
            }
            | ZygoteEvent::SnapshotReady {
                request,
                worker,
                pid,
            } => {
                let exit = Completion::new();
                state.exits.insert(worker, Arc::clone(&exit));
                if state.abandoned.remove(&request) {
                    return Some(worker);
                }
                if let Some(slot) = state.starts.remove(&request) {
                    slot.complete(Ok(Started { worker, pid, exit }));
                }
                None
            }
            ZygoteEvent::SpawnFailed { request, failure } => {
                state.abandoned.remove(&request);
                if let Some(slot) = state.starts.remove(&request) {
                    slot.complete(Err(Failure::SpawnFailed(failure)));
                }
                None
            }
            ZygoteEvent::Exited { worker, status } => {
                if let Some(slot) = state.exits.remove(&worker) {
                    slot.complete(Ok(status));
                }
                None
            }
            _ => None,
        }
    }
}

/// The last handle: asks the zygote to shut down (it terminates its workers)
/// and hangs up, so nothing outlives the handles. The reader thread then
/// sees end of file, reaps the zygote, and ends.
struct Owner {
    shared: Arc<Shared>,
    limits: Limits,
    /// How the zygote was started (a derived snapshot is forked).
    method: StartMethod,
}

impl Drop for Owner {
    fn drop(&mut self) {
        let mut state = lock(&self.shared.state);
        if !state.gone {
            lock(&self.shared.fate.inner).dropped = true;
        }
        if !state.gone && state.client.shutdown().is_ok() {
            let _ = self.shared.send(state, Vec::new());
        } else {
            drop(state);
        }
        let _ = self.shared.socket.shutdown(std::net::Shutdown::Both);
    }
}

/// A zygote as the process-wide registry of `start` remembers it: without
/// keeping it alive, and with how it ended.
pub(crate) struct Registered {
    owner: Weak<Owner>,
    fate: Arc<Fate>,
}

impl Registered {
    /// Another handle on the zygote while it serves; how it ended otherwise.
    pub(crate) fn handle(&self) -> Result<Zygote, Gone> {
        match self.owner.upgrade() {
            Some(owner) => {
                if !lock(&owner.shared.state).gone {
                    return Ok(Zygote { owner });
                }
            }
            None => {
                // Every handle is gone, so the last one asked it to shut down
                // (its drop may still be on its way in another thread).
                let mut inner = lock(&self.fate.inner);
                if inner.seen.is_none() {
                    inner.dropped = true;
                }
            }
        }
        Err(self.fate.gone())
    }
}

/// A handle on a running zygote. Cheap to clone; usable from many threads.
///
/// When the last clone (and the last [`WorkerProcess`] of this zygote) is
/// dropped, the zygote terminates its workers and exits.
#[derive(Clone)]
pub struct Zygote {
    owner: Arc<Owner>,
}

impl std::fmt::Debug for Zygote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Zygote").field("pid", &self.pid()).finish()
    }
}

impl Zygote {
    /// Connects to a zygote serving on `socket`, running as `pid`; `child`
    /// when it is this process's child (the top zygote), which the reader
    /// thread then reaps.
    pub(crate) fn connect(
        socket: UnixStream,
        pid: i32,
        limits: Limits,
        child: bool,
        method: StartMethod,
    ) -> Result<Zygote, Error> {
        let hang_up = |socket: UnixStream| {
            // Hanging up makes the zygote exit; reap our child.
            drop(socket);
            if child {
                reap_zygote(Pid::from_raw(pid));
            }
        };
        let reader_socket = match socket.try_clone() {
            Ok(reader_socket) => reader_socket,
            Err(error) => {
                hang_up(socket);
                return Err(Error::os("duplicating the control socket", error));
            }
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                client: ZygoteClient::new(limits),
                ready: Completion::new(),
                starts: HashMap::new(),
                exits: HashMap::new(),
                abandoned: HashSet::new(),
                gone: false,
            }),
            writer: Mutex::new(Outbox::new()),
            socket,
            fate: Arc::new(Fate {
                pid,
                inner: Mutex::new(FateInner::default()),
            }),
            child,
        });
        let reader = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("parallel-zygote-reader".into())
            .spawn(move || reader.read_loop(reader_socket));
        if let Err(error) = spawned {
            // The closure, with the reader's socket and `Arc`, is dropped.
            if let Ok(shared) = Arc::try_unwrap(shared) {
                hang_up(shared.socket);
            }
            return Err(Error::os("starting the zygote reader thread", error));
        }
        // From here on the reader thread reaps the zygote; an error below
        // drops the owner, which hangs up.
        let zygote = Zygote {
            owner: Arc::new(Owner {
                shared,
                limits,
                method,
            }),
        };
        let state = lock(&zygote.shared().state);
        zygote.shared().send(state, Vec::new())?;
        Ok(zygote)
    }

    /// Waits for the zygote's hello, for at most `timeout`. An executed zygote
    /// that ends (or stays silent) before it serves fails here, saying why.
    pub(crate) fn wait_ready(&self, timeout: Duration) -> Result<(), Error> {
        let ready = lock(&self.shared().state).ready.clone();
        let pid = self.pid();
        match ready.wait_timeout(timeout) {
            Some(Ok(())) => Ok(()),
            Some(Err(_)) => {
                let gone = self.shared().fate.gone();
                Err(Error::StartFailed {
                    pid,
                    status: gone.status,
                    reason: exec_failure_reason(gone.status, gone.reason),
                })
            }
            None => {
                // Silent: most likely the program's `main` runs instead of
                // the hook. It is our unreaped child, so the pid is its own.
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                Err(Error::StartFailed {
                    pid,
                    status: None,
                    reason: format!(
                        "it did not answer within {timeout:?} and was killed; does the \
                         binary link parallel-zygote (its load-time hook)?"
                    ),
                })
            }
        }
    }

    /// How this zygote was started: [`StartMethod::Fork`] or
    /// [`StartMethod::Exec`] for the top zygote, [`StartMethod::Fork`] for a
    /// derived snapshot (forked from its zygote).
    pub fn start_method(&self) -> StartMethod {
        self.owner.method
    }

    /// What the registry of `start` keeps of this zygote.
    pub(crate) fn register(&self) -> Registered {
        Registered {
            owner: Arc::downgrade(&self.owner),
            fate: Arc::clone(&self.shared().fate),
        }
    }

    fn shared(&self) -> &Shared {
        &self.owner.shared
    }

    /// The zygote's process id.
    pub fn pid(&self) -> i32 {
        self.shared().fate.pid
    }

    /// Whether the zygote is still reachable as far as this handle knows.
    pub fn is_alive(&self) -> bool {
        !lock(&self.shared().state).gone
    }

    /// How the zygote ended, once it was reaped: `None` while it runs, and
    /// for a derived snapshot (its own zygote reaps it, not this process).
    /// The top zygote is reaped by this handle's reader thread right after
    /// its control socket closes; errors after that name its status too.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        lock(&self.shared().fate.inner).status
    }

    /// Spawns a worker that runs `boot` with its end of a fresh channel, and
    /// waits until the zygote reports its pid.
    ///
    /// `boot` must capture nothing (a capturing closure does not compile).
    ///
    /// ```no_run
    /// use std::io::{Read, Write};
    /// let zygote = parallel_zygote::start()?;
    /// let mut worker = zygote.spawn(|mut ctx: parallel_zygote::WorkerContext| {
    ///     let mut byte = [0u8];
    ///     ctx.channel.read_exact(&mut byte).unwrap();
    ///     ctx.channel.write_all(&[byte[0] + 1]).unwrap();
    /// })?;
    /// worker.channel.write_all(&[41])?;
    /// let mut answer = [0u8];
    /// worker.channel.read_exact(&mut answer)?;
    /// assert_eq!(answer[0], 42);
    /// assert!(worker.process.wait()?.success());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::SpawnFailed`] when the zygote refused the request or could
    /// not fork (the OS error in [`Error::errno`]), [`Error::ZygoteGone`]
    /// when the zygote is gone, before the request or before it answered,
    /// [`Error::Protocol`] ([`LocalError::TooManyInFlight`]) when
    /// `max_in_flight` spawns and snapshots of this zygote already await an
    /// answer, and [`Error::Os`] when the socketpair for the channel could
    /// not be created (e.g. `EMFILE`).
    pub fn spawn<F>(&self, boot: F) -> Result<Worker, Error>
    where
        F: Fn(WorkerContext) + crate::entry::CapturesNothing,
    {
        // Both capture checks, reported at the caller's line.
        #[allow(clippy::let_unit_value)]
        let () = F::ASSERT_ZERO_SIZED;
        self.spawn_with(boot, SpawnOptions::default(), Vec::new())
    }

    /// [`spawn`](Self::spawn) with a name, resource limits, and descriptors
    /// handed to the worker (they arrive in [`WorkerContext::fds`]).
    ///
    /// # Errors
    /// As [`spawn`](Self::spawn), and [`Error::SpawnFailed`] also when the
    /// zygote cannot apply a resource limit of `options`. [`Error::Protocol`]
    /// also with [`LocalError::TooManyFds`] when `1 + fds.len()` exceeds
    /// `max_fds_per_frame`, and [`LocalError::MessageTooLong`] when the
    /// request (with its name) exceeds `max_frame_len`. `fds` are consumed
    /// either way.
    pub fn spawn_with<F>(
        &self,
        boot: F,
        options: SpawnOptions,
        fds: Vec<OwnedFd>,
    ) -> Result<Worker, Error>
    where
        F: Fn(WorkerContext) + crate::entry::CapturesNothing,
    {
        // Both capture checks, reported at the caller's line.
        #[allow(clippy::let_unit_value)]
        let () = F::ASSERT_ZERO_SIZED;
        let boot = Entry::<WorkerContext>::new(boot)?;
        let (channel, pending) = self.spawn_entry(boot.wire(), options, fds)?;
        let process = pending.wait()?;
        Ok(Worker { channel, process })
    }

    /// The zero-round-trip spawn the adapters build on: sends the request and
    /// returns at once with the parent's end of the channel, which may be
    /// written to immediately, and a [`PendingSpawn`] that resolves to the
    /// process once the zygote has forked it.
    ///
    /// `boot` is an [`Entry<WorkerContext>`](Entry)'s wire form; the zygote
    /// verifies it and answers [`Error::SpawnFailed`] for a bad one.
    ///
    /// # Errors
    /// Only what fails before the zygote answers: [`Error::ZygoteGone`] when
    /// it is gone (or writing the request failed), [`Error::Protocol`] with
    /// [`LocalError::TooManyInFlight`], [`LocalError::TooManyFds`] or
    /// [`LocalError::MessageTooLong`] as for [`spawn_with`](Self::spawn_with),
    /// and [`Error::Os`] when the socketpair could not be created. The
    /// zygote's answer ([`Error::SpawnFailed`], or [`Error::ZygoteGone`]
    /// later) comes from the [`PendingSpawn`].
    pub fn spawn_entry(
        &self,
        boot: WireEntry,
        options: SpawnOptions,
        fds: Vec<OwnedFd>,
    ) -> Result<(UnixStream, PendingSpawn), Error> {
        let (parent_end, worker_end) =
            UnixStream::pair().map_err(|e| Error::os("creating the worker's socketpair", e))?;
        let user_fds = fds.len();
        let mut all_fds = Vec::with_capacity(1 + user_fds);
        all_fds.push(OwnedFd::from(worker_end));
        all_fds.extend(fds);
        let slot = self.request(all_fds, |client| client.spawn(boot, options, user_fds))?;
        Ok((parent_end, PendingSpawn::new(self.clone(), slot.0, slot.1)))
    }

    /// Creates a derived snapshot: a child zygote that first runs
    /// `init(args)` (load a table, warm a cache) and then serves spawns. Its
    /// workers share what `init` built, copy-on-write.
    ///
    /// **Blocks until `init` has finished** and the snapshot serves, so an
    /// `Ok` means it is ready; a slow `init` makes a slow call.
    ///
    /// `init` must leave the process single-threaded: every worker is forked
    /// from the snapshot, and a fork from a multi-threaded process can leave
    /// the child holding locks no thread will ever release. So do not start
    /// a runtime, a logger with a background thread, or async-io's reactor in
    /// `init` (threads it joins before returning are fine). A snapshot whose
    /// `init` left threads running exits without serving
    /// ([`SNAPSHOT_THREADS_EXIT_CODE`](crate::SNAPSHOT_THREADS_EXIT_CODE)).
    ///
    /// # Errors
    ///
    /// [`Error::SnapshotFailed`] when the snapshot ended before it served:
    /// `init` left threads running, panicked, or exited; its exit status
    /// tells which. [`Error::SpawnFailed`] when the zygote refused the
    /// request or could not fork, [`Error::ZygoteGone`] when it is gone.
    pub fn snapshot<F>(&self, init: F, args: Vec<u8>) -> Result<Zygote, Error>
    where
        F: Fn(Vec<u8>) + crate::entry::CapturesNothing,
    {
        // Both capture checks, reported at the caller's line.
        #[allow(clippy::let_unit_value)]
        let () = F::ASSERT_ZERO_SIZED;
        self.snapshot_with(init, args, SpawnOptions::default())
    }

    /// [`snapshot`](Self::snapshot) with a name and resource limits. Blocks
    /// until `init` has finished, as `snapshot` does.
    ///
    /// # Errors
    /// As [`snapshot`](Self::snapshot): [`Error::SnapshotFailed`] when the
    /// snapshot ended before it served, [`Error::SpawnFailed`] when the
    /// zygote refused the request (or cannot apply a limit of `options`) or
    /// could not fork, [`Error::ZygoteGone`] when it is gone. Also
    /// [`Error::Protocol`] with [`LocalError::TooManyInFlight`] or
    /// [`LocalError::MessageTooLong`] (`args` too large for a frame), and
    /// [`Error::Os`] when a socketpair, a descriptor or the snapshot's
    /// reader thread could not be created (a snapshot already forked is
    /// killed then).
    pub fn snapshot_with<F>(
        &self,
        init: F,
        args: Vec<u8>,
        options: SpawnOptions,
    ) -> Result<Zygote, Error>
    where
        F: Fn(Vec<u8>) + crate::entry::CapturesNothing,
    {
        // Both capture checks, reported at the caller's line.
        #[allow(clippy::let_unit_value)]
        let () = F::ASSERT_ZERO_SIZED;
        let init = Entry::<Vec<u8>>::new(init)?;
        let (parent_end, snapshot_end) =
            UnixStream::pair().map_err(|e| Error::os("creating the snapshot's socketpair", e))?;
        let (request, slot) = self.request(vec![OwnedFd::from(snapshot_end)], |client| {
            client.snapshot(init.wire(), args, options)
        })?;
        // Kept (and killed if dropped) until the snapshot proves it serves.
        let process = PendingSpawn::new(self.clone(), request, slot).wait()?;
        // The snapshot is the zygote's child, not ours: the zygote reaps it.
        let snapshot = Zygote::connect(
            parent_end,
            process.pid(),
            self.owner.limits,
            false,
            StartMethod::Fork,
        )?;
        // The snapshot says hello once `init` returned and it found itself
        // single-threaded; if it exits instead, its socket closes first.
        let ready = lock(&snapshot.shared().state).ready.clone();
        if ready.wait().is_ok() {
            // The snapshot's lifetime is its own handle's: dropping that hangs
            // up its control socket and it exits; it also dies with this zygote.
            drop(process.detach());
            return Ok(snapshot);
        }
        // Hanging up makes a snapshot that is somehow still running exit.
        drop(snapshot);
        let (status, reason) = match process.wait_timeout(SNAPSHOT_EXIT_WAIT) {
            Some(status) => {
                let status = status?;
                (status, snapshot_failure_reason(status))
            }
            None => {
                // It closed its control socket but lives on: end it.
                process.kill(libc::SIGKILL)?;
                let status = process.wait()?;
                let reason = "the snapshot closed its control socket before it was ready \
                              and did not exit; it was killed";
                (status, reason.to_string())
            }
        };
        Err(Error::SnapshotFailed { status, reason })
    }

    fn request(
        &self,
        fds: Vec<OwnedFd>,
        make: impl FnOnce(&mut ZygoteClient) -> Result<RequestId, parallel_proto::Error>,
    ) -> Result<(RequestId, StartSlot), Error> {
        let shared = self.shared();
        let mut state = lock(&shared.state);
        shared.check_alive(&state)?;
        let request = make(&mut state.client)?;
        let slot = Completion::new();
        state.starts.insert(request, Arc::clone(&slot));
        shared.send(state, fds)?;
        Ok((request, slot))
    }

    /// Asks the zygote to terminate every worker and exit. Later spawns fail
    /// with [`Error::ZygoteGone`].
    ///
    /// # Errors
    /// [`Error::ZygoteGone`] when the zygote is already gone or writing the
    /// request failed, and [`Error::Protocol`]
    /// ([`LocalError::InvalidState`]) when shutdown was already requested
    /// and the zygote has not hung up yet.
    pub fn shutdown(&self) -> Result<(), Error> {
        let shared = self.shared();
        let mut state = lock(&shared.state);
        shared.check_alive(&state)?;
        state.client.shutdown()?;
        lock(&shared.fate.inner).shutdown = true;
        shared.send(state, Vec::new())
    }
}

/// What an executed zygote's end before its hello means, in words a user
/// can act on.
fn exec_failure_reason(status: Option<ExitStatus>, seen: String) -> String {
    match status {
        Some(ExitStatus::Exited(crate::exec::THREADS_AT_LOAD_EXIT_CODE)) => {
            "it found other threads running when its hook ran (another constructor in the \
             program started them before main); a zygote must be single-threaded to fork \
             workers safely"
                .into()
        }
        Some(ExitStatus::Exited(crate::exec::SETUP_FAILED_EXIT_CODE)) => {
            "its setup failed (moving its control socket off standard input, ignoring \
             SIGPIPE or reading its signal mask)"
                .into()
        }
        _ => format!("{seen} before it served"),
    }
}

/// How long a snapshot whose control socket closed before its hello gets to
/// show its exit status before it is killed.
const SNAPSHOT_EXIT_WAIT: Duration = Duration::from_secs(5);

/// What a snapshot's exit status before its hello means, in words a user can act on.
fn snapshot_failure_reason(status: ExitStatus) -> String {
    match status {
        ExitStatus::Exited(crate::SNAPSHOT_THREADS_EXIT_CODE) => {
            "the snapshot's init left threads running; a snapshot must stay single-threaded \
             to fork workers safely: do not start runtimes, loggers or async-io in init"
                .into()
        }
        ExitStatus::Exited(crate::PANIC_EXIT_CODE) => "the snapshot's init panicked".into(),
        ExitStatus::Exited(crate::SETUP_FAILED_EXIT_CODE) => {
            "the snapshot process failed its setup (its parent-death signal or signal \
             mask could not be set, or its threads could not be counted after init)"
                .into()
        }
        ExitStatus::Exited(code) => {
            format!("the snapshot process exited with code {code} before it was ready")
        }
        ExitStatus::Signaled { .. } => {
            format!("the snapshot process was {status} before it was ready")
        }
    }
}

/// A spawn request on its way: resolves to the [`WorkerProcess`] once the
/// zygote has forked it. Wait by blocking ([`wait`](Self::wait)) or `.await`.
///
/// Dropped before it resolves, it has the worker killed as soon as it exists.
#[must_use = "dropped before it resolves, a PendingSpawn has its worker killed as soon as it \
              exists: .await it or call wait()"]
pub struct PendingSpawn {
    zygote: Zygote,
    request: RequestId,
    slot: StartSlot,
    resolved: bool,
}

impl PendingSpawn {
    fn new(zygote: Zygote, request: RequestId, slot: StartSlot) -> Self {
        PendingSpawn {
            zygote,
            request,
            slot,
            resolved: false,
        }
    }

    fn finish(&mut self, result: Result<Started, Failure>) -> Result<WorkerProcess, Error> {
        self.resolved = true;
        let started = result?;
        Ok(WorkerProcess {
            zygote: self.zygote.clone(),
            worker: started.worker,
            pid: started.pid,
            exit: started.exit,
            kill_on_drop: true,
        })
    }

    /// Blocks until the worker runs (or the spawn fails).
    ///
    /// # Errors
    /// [`Error::SpawnFailed`] when the zygote refused the request (a bad
    /// entry, a resource limit it cannot apply) or could not fork, and
    /// [`Error::ZygoteGone`] when the zygote went away before it answered.
    /// Awaiting the `PendingSpawn` fails the same way.
    pub fn wait(mut self) -> Result<WorkerProcess, Error> {
        let result = self.slot.wait();
        self.finish(result)
    }

    /// The process if the zygote has answered already, without waiting (and
    /// without registering for a wake-up). `None` while unanswered, and
    /// after it resolved once.
    pub fn try_wait(&mut self) -> Option<Result<WorkerProcess, Error>> {
        if self.resolved {
            return None;
        }
        let result = self.slot.peek()?;
        Some(self.finish(result))
    }

    /// Whether the spawn is known to be over, without waiting: the zygote
    /// refused it, or reported the worker's exit. `false` while unanswered,
    /// and after the answer was taken ([`wait`](Self::wait), [`try_wait`](Self::try_wait)).
    pub fn has_ended(&self) -> bool {
        if self.resolved {
            return false;
        }
        match self.slot.peek() {
            Some(Ok(started)) => started.exit.peek().is_some(),
            Some(Err(_)) => true,
            None => false,
        }
    }

    /// Like [`wait`](Self::wait), giving up after `timeout` (the request stays
    /// in flight; `None` gives it back).
    ///
    /// # Errors
    /// `Err(self)` when `timeout` passed first: the request is still in
    /// flight, wait again or drop it (which kills the worker once it exists).
    /// Within `Ok`, the errors of [`wait`](Self::wait).
    pub fn wait_timeout(mut self, timeout: Duration) -> Result<Result<WorkerProcess, Error>, Self> {
        match self.slot.wait_timeout(timeout) {
            Some(result) => Ok(self.finish(result)),
            None => Err(self),
        }
    }
}

impl Future for PendingSpawn {
    type Output = Result<WorkerProcess, Error>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.slot.poll_value(cx) {
            Poll::Ready(result) => Poll::Ready(self.finish(result)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for PendingSpawn {
    fn drop(&mut self) {
        if self.resolved {
            return;
        }
        let shared = self.zygote.shared();
        let mut state = lock(&shared.state);
        if state.starts.remove(&self.request).is_some() {
            state.abandoned.insert(self.request);
            return;
        }
        // Answered but never looked at: kill the worker if it started.
        drop(state);
        if let Some(Ok(started)) = self.slot.peek() {
            let _ = shared.kill(started.worker, libc::SIGKILL);
        }
    }
}

/// A running worker process: its ids, a kill switch and its exit status.
///
/// Dropping it kills the worker (SIGKILL) unless it already exited or was
/// [detached](Self::detach). Kills go through the zygote, the worker's
/// parent, which never signals a pid it has reaped: no pid-reuse race.
#[must_use = "dropping a WorkerProcess kills the worker (SIGKILL) unless it already exited \
              or was detached: keep it, or drop(process.detach()) to let the worker run on"]
pub struct WorkerProcess {
    zygote: Zygote,
    worker: WorkerId,
    pid: i32,
    exit: ExitSlot,
    kill_on_drop: bool,
}

impl std::fmt::Debug for WorkerProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerProcess")
            .field("worker", &self.worker)
            .field("pid", &self.pid)
            .finish()
    }
}

impl WorkerProcess {
    /// The worker's id in its zygote.
    pub fn id(&self) -> WorkerId {
        self.worker
    }

    /// The worker's process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the worker. A worker that
    /// already exited is not an error.
    ///
    /// # Errors
    /// [`Error::ZygoteGone`] when the zygote is gone (its workers die with
    /// it) before the worker's exit was reported, or writing the request
    /// failed.
    pub fn kill(&self, signal: i32) -> Result<(), Error> {
        if self.exit.peek().is_some() {
            return Ok(());
        }
        self.zygote.shared().kill(self.worker, signal)
    }

    /// Blocks until the worker has exited and been reaped.
    ///
    /// # Errors
    /// [`Error::ZygoteGone`] when the zygote went away before it reported the
    /// worker's exit: the worker dies with it, but its exit status is lost.
    pub fn wait(&self) -> Result<ExitStatus, Error> {
        self.exit.wait().map_err(Error::from)
    }

    /// Like [`wait`](Self::wait), giving up after `timeout` with `None`.
    /// `Some(Err(_))` as for [`wait`](Self::wait).
    pub fn wait_timeout(&self, timeout: Duration) -> Option<Result<ExitStatus, Error>> {
        self.exit
            .wait_timeout(timeout)
            .map(|r| r.map_err(Error::from))
    }

    /// The exit status, if the worker has been reaped.
    pub fn try_status(&self) -> Option<Result<ExitStatus, Error>> {
        self.exit.peek().map(|r| r.map_err(Error::from))
    }

    /// A future of the exit status, for async code.
    ///
    /// # Errors
    /// The future resolves to [`Error::ZygoteGone`] as [`wait`](Self::wait)
    /// fails.
    pub fn exited(&self) -> impl Future<Output = Result<ExitStatus, Error>> + Send + 'static {
        let awaiting = crate::completion::Awaiting(Arc::clone(&self.exit));
        async move { awaiting.await.map_err(Error::from) }
    }

    /// Polls for the exit status: the poll form of [`exited`](Self::exited),
    /// for hand-written futures.
    pub fn poll_exited(&self, cx: &mut Context<'_>) -> Poll<Result<ExitStatus, Error>> {
        self.exit.poll_value(cx).map(|r| r.map_err(Error::from))
    }

    /// Lets the worker outlive this handle (it still dies with the zygote).
    ///
    /// Returns the handle, which no longer kills the worker when dropped:
    /// keep it to wait for the exit, or `drop(process.detach())` when you
    /// need nothing more (`WorkerProcess` is `#[must_use]`, so a bare
    /// `process.detach();` warns).
    pub fn detach(mut self) -> Self {
        self.kill_on_drop = false;
        self
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if self.kill_on_drop && self.exit.peek().is_none() {
            let _ = self.zygote.shared().kill(self.worker, libc::SIGKILL);
        }
    }
}

/// A worker spawned by the blocking client: its process and the parent's
/// end of its channel.
///
/// Dropping it drops its [`WorkerProcess`], which kills the worker unless
/// it was detached.
#[derive(Debug)]
#[must_use = "dropping a Worker kills the worker (SIGKILL) unless its process was detached"]
pub struct Worker {
    /// The parent's end of the channel; the worker holds the other end.
    pub channel: UnixStream,
    /// The process: pid, kill, exit status.
    pub process: WorkerProcess,
}
