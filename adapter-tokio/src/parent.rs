//! The parent's side of one worker: a driver task that owns the socket and
//! the channel state machine, shared by `spawn`, `run` and `process`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use parallel_proto::channel::{CallId, Outcome, ParentChannel, ParentEvent};
use parallel_zygote::{ExitStatus, PendingSpawn, WorkerProcess};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::conn::Conn;
use crate::messages::{RawMessage, QUEUE_DEPTH};
use crate::Error;

/// How long a driver waits for the zygote to report a dead worker's exit
/// status before reporting the death without it.
const EXIT_STATUS_WAIT: Duration = Duration::from_secs(2);

/// Kills the worker from any task, without going through the driver (which
/// may be stuck writing to a worker that stopped reading), and knows its pid.
///
/// It holds the spawn's [`PendingSpawn`] and looks at it only when someone
/// asks (`pid`, `kill`): nobody is woken when the zygote's "spawned" reply
/// arrives, which on a small machine would compete for a CPU with the worker
/// that is just starting.
#[derive(Default)]
pub(crate) struct Killer {
    state: Mutex<KillState>,
    /// Wakes the driver when a kill needs the process the zygote has not
    /// reported yet.
    resolve: Notify,
}

#[derive(Default)]
struct KillState {
    pending: Option<PendingSpawn>,
    process: Option<Arc<WorkerProcess>>,
    requested: bool,
    /// Why the zygote could not start the worker.
    spawn_error: Option<String>,
    /// How the worker ended, once the driver knows it broke.
    death: Option<(Option<i32>, Option<ExitStatus>, Option<String>)>,
}

impl KillState {
    /// Takes the zygote's answer if it has arrived.
    fn refresh(&mut self) {
        if self.process.is_some() {
            return;
        }
        let Some(answer) = self.pending.as_mut().and_then(PendingSpawn::try_wait) else {
            return;
        };
        self.pending = None;
        self.settle(answer);
    }

    fn settle(&mut self, answer: Result<WorkerProcess, parallel_zygote::Error>) {
        match answer {
            Ok(process) => {
                if self.requested {
                    let _ = process.kill(libc::SIGKILL);
                }
                self.process = Some(Arc::new(process));
            }
            Err(error) => self.spawn_error = Some(error.to_string()),
        }
    }
}

impl Killer {
    fn new(pending: PendingSpawn) -> Self {
        Killer {
            state: Mutex::new(KillState {
                pending: Some(pending),
                ..KillState::default()
            }),
            resolve: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, KillState> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.refresh();
        state
    }

    pub(crate) fn kill(&self) {
        let mut state = self.lock();
        state.requested = true;
        match &state.process {
            Some(process) => {
                let _ = process.kill(libc::SIGKILL);
            }
            // Not reported yet: the driver waits for it and kills then.
            None if state.pending.is_some() => self.resolve.notify_one(),
            None => {}
        }
    }

    pub(crate) fn pid(&self) -> Option<i32> {
        self.lock().process.as_ref().map(|p| p.pid())
    }

    fn process(&self) -> Option<Arc<WorkerProcess>> {
        self.lock().process.clone()
    }

    fn is_pending(&self) -> bool {
        self.lock().pending.is_some()
    }

    /// Waits (bounded) for the zygote's answer, unless it is known already.
    async fn resolve_spawn(&self) {
        let Some(pending) = self.lock().pending.take() else {
            return;
        };
        let answer = tokio::time::timeout(EXIT_STATUS_WAIT, pending).await;
        let mut state = self.lock();
        match answer {
            Ok(answer) => state.settle(answer),
            Err(_) => {
                state.spawn_error = Some("the zygote did not answer the spawn request".into());
            }
        }
    }

    fn spawn_error(&self) -> Option<String> {
        self.lock().spawn_error.clone()
    }

    /// The error for a handle that finds the driver gone.
    pub(crate) fn death(&self, call: Option<CallId>) -> Error {
        let state = self.lock();
        match &state.death {
            Some((_, _, Some(message))) => Error::SpawnFailed {
                message: message.clone(),
            },
            Some((pid, status, None)) => Error::WorkerDied {
                pid: *pid,
                status: *status,
                call,
            },
            None => Error::Closed,
        }
    }

    fn record_death(
        &self,
        pid: Option<i32>,
        status: Option<ExitStatus>,
        spawn_error: Option<String>,
    ) {
        self.lock().death = Some((pid, status, spawn_error));
    }
}

/// Kills the worker when dropped before being disarmed: what makes a
/// cancelled (dropped) call or a timed-out one end its worker.
pub(crate) struct KillOnDrop {
    killer: Option<Arc<Killer>>,
}

impl KillOnDrop {
    pub(crate) fn new(killer: Arc<Killer>) -> Self {
        KillOnDrop {
            killer: Some(killer),
        }
    }

    pub(crate) fn disarm(&mut self) {
        self.killer = None;
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(killer) = self.killer.take() {
            killer.kill();
        }
    }
}

/// What handles ask of the driver.
pub(crate) enum Command {
    Call {
        args: Vec<u8>,
        reply: oneshot::Sender<Result<Outcome, Error>>,
    },
}

/// The handles' view of a driver. The parent's half close (End) goes out
/// once both `commands` and `outgoing` (and all their clones) are dropped.
pub(crate) struct Link {
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) outgoing: mpsc::Sender<RawMessage>,
    pub(crate) killer: Arc<Killer>,
    pub(crate) data: mpsc::Receiver<Result<RawMessage, Error>>,
    pub(crate) returned: oneshot::Receiver<Result<Outcome, Error>>,
}

/// Starts the driver for a worker whose spawn was just sent.
///
/// `machine` already holds the Start frame (and anything else to send first).
pub(crate) fn launch(conn: Conn<ParentChannel>, pending: PendingSpawn) -> Link {
    let (commands, command_rx) = mpsc::channel(QUEUE_DEPTH);
    let (outgoing, outgoing_rx) = mpsc::channel(QUEUE_DEPTH);
    let (data_tx, data) = mpsc::channel(QUEUE_DEPTH);
    let (returned_tx, returned) = oneshot::channel();
    let killer = Arc::new(Killer::new(pending));
    let driver = Driver {
        conn,
        killer: Arc::clone(&killer),
        commands: command_rx,
        commands_open: true,
        outgoing: outgoing_rx,
        outgoing_open: true,
        calls: HashMap::new(),
        data: Some(data_tx),
        held: None,
        returned: Some(returned_tx),
        write_broken: false,
    };
    tokio::spawn(driver.run());
    Link {
        commands,
        outgoing,
        killer,
        data,
        returned,
    }
}

enum Step {
    Resolve,
    Room(Option<mpsc::OwnedPermit<Result<RawMessage, Error>>>),
    Command(Option<Command>),
    Outgoing(Option<RawMessage>),
    Event(Result<Option<(ParentEvent, Vec<std::os::fd::OwnedFd>)>, Error>),
}

struct Driver {
    conn: Conn<ParentChannel>,
    killer: Arc<Killer>,
    commands: mpsc::Receiver<Command>,
    commands_open: bool,
    outgoing: mpsc::Receiver<RawMessage>,
    outgoing_open: bool,
    calls: HashMap<CallId, oneshot::Sender<Result<Outcome, Error>>>,
    data: Option<mpsc::Sender<Result<RawMessage, Error>>>,
    /// A data message waiting for room in the stream's queue: while it
    /// waits, the driver reads no more from the socket (back-pressure).
    held: Option<RawMessage>,
    returned: Option<oneshot::Sender<Result<Outcome, Error>>>,
    write_broken: bool,
}

impl Driver {
    async fn run(mut self) {
        let clean = self.serve().await;
        if !clean {
            self.report_death().await;
        } else {
            // The result can overtake the zygote's "spawned" reply. Wait for
            // it rather than drop it, which would have the worker killed as
            // an abandoned spawn while it exits.
            self.killer.resolve_spawn().await;
            // Let the worker exit by itself so nothing it flushes on the way
            // out is cut short, then reap the handle.
            let _ = tokio::time::timeout(Duration::from_secs(1), self.drain_to_eof()).await;
        }
    }

    /// Serves until the task returns (true) or the channel breaks (false).
    async fn serve(&mut self) -> bool {
        self.flush().await;
        loop {
            let step = {
                let Driver {
                    killer,
                    data,
                    held,
                    commands,
                    commands_open,
                    outgoing,
                    outgoing_open,
                    conn,
                    ..
                } = &mut *self;
                let holding = held.is_some();
                let data_sender = data.clone();
                tokio::select! {
                    _ = killer.resolve.notified(), if killer.is_pending() => Step::Resolve,
                    permit = async { data_sender.expect("guarded").reserve_owned().await }, if holding && data.is_some() => Step::Room(permit.ok()),
                    command = commands.recv(), if *commands_open => Step::Command(command),
                    message = outgoing.recv(), if *outgoing_open => Step::Outgoing(message),
                    event = conn.next_event(), if !holding => Step::Event(event),
                }
            };
            match step {
                // A kill is waiting for the pid: get it (the kill follows).
                Step::Resolve => self.killer.resolve_spawn().await,
                Step::Room(Some(permit)) => {
                    permit.send(Ok(self.held.take().expect("guarded")));
                }
                Step::Room(None) => {
                    // Nobody reads the stream any more: drop what comes.
                    self.data = None;
                    self.held = None;
                }
                Step::Command(command) => {
                    if self.command(command).is_err() {
                        return false;
                    }
                    self.flush().await;
                }
                Step::Outgoing(message) => {
                    if self.outgoing(message).is_err() {
                        return false;
                    }
                    self.flush().await;
                }
                Step::Event(Ok(Some((event, fds)))) => {
                    if self.handle(event, fds) {
                        return true;
                    }
                }
                Step::Event(Ok(None) | Err(_)) => return false,
            }
        }
    }

    /// Writes what is queued. A write error means the worker closed its end
    /// (it exited, or is dying): stop writing, but keep reading, because what
    /// it sent before closing (its result) may still be in our buffer. The
    /// read side then sees the end and tells success from death.
    async fn flush(&mut self) {
        if !self.write_broken && self.conn.flush().await.is_err() {
            self.write_broken = true;
        }
    }

    fn command(&mut self, command: Option<Command>) -> Result<(), Error> {
        match command {
            Some(Command::Call { args, reply }) => {
                match self.conn.machine.call(args) {
                    Ok(call) => {
                        self.calls.insert(call, reply);
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error.into()));
                    }
                }
                Ok(())
            }
            None => {
                self.commands_open = false;
                self.end_if_closed()
            }
        }
    }

    fn outgoing(&mut self, message: Option<RawMessage>) -> Result<(), Error> {
        match message {
            Some((bytes, fds)) => {
                let count = fds.len();
                self.conn.attach_fds(fds);
                Ok(self.conn.machine.send_data(bytes, count)?)
            }
            None => {
                self.outgoing_open = false;
                self.end_if_closed()
            }
        }
    }

    /// Every handle that could send is gone: half close.
    fn end_if_closed(&mut self) -> Result<(), Error> {
        if !self.commands_open && !self.outgoing_open && !self.conn.machine.is_returned() {
            self.conn.machine.end()?;
        }
        Ok(())
    }

    /// Applies one event; true when the task returned.
    fn handle(&mut self, event: ParentEvent, fds: Vec<std::os::fd::OwnedFd>) -> bool {
        match event {
            ParentEvent::Data { payload, .. } if self.data.is_some() => {
                self.held = Some((payload, fds));
            }
            ParentEvent::End => self.data = None,
            ParentEvent::Reply { call, outcome } => {
                if let Some(reply) = self.calls.remove(&call) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            ParentEvent::Returned(outcome) => {
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

    async fn drain_to_eof(&mut self) {
        while let Ok(Some(_)) = self.conn.next_event().await {}
        if let Some(process) = self.killer.process() {
            let _ = process.exited().await;
        }
    }

    /// The channel broke before the task returned: find out why and tell
    /// every waiter, naming the call each one was waiting for.
    async fn report_death(&mut self) {
        self.killer.resolve_spawn().await;
        let process = self.killer.process();
        let pid = process.as_ref().map(|p| p.pid());
        let mut status: Option<ExitStatus> = None;
        if let Some(process) = &process {
            // The channel can break while the worker still runs (it closed
            // its socket, or broke the protocol): make sure it ends.
            if let Ok(Ok(exit)) =
                tokio::time::timeout(Duration::from_millis(200), process.exited()).await
            {
                status = Some(exit);
            } else {
                let _ = process.kill(libc::SIGKILL);
                if let Ok(Ok(exit)) = tokio::time::timeout(EXIT_STATUS_WAIT, process.exited()).await
                {
                    status = Some(exit);
                }
            }
        }
        let spawn_error = self.killer.spawn_error();
        self.killer.record_death(pid, status, spawn_error.clone());
        let death = |call: Option<CallId>| match &spawn_error {
            Some(message) => Error::SpawnFailed {
                message: message.clone(),
            },
            None => Error::WorkerDied { pid, status, call },
        };
        for (call, reply) in self.calls.drain() {
            let _ = reply.send(Err(death(Some(call))));
        }
        if let Some(data) = self.data.take() {
            let _ = data.try_send(Err(death(None)));
        }
        if let Some(returned) = self.returned.take() {
            let _ = returned.send(Err(death(None)));
        }
        // Commands that raced with the death get the same answer.
        self.commands.close();
        while let Ok(command) = self.commands.try_recv() {
            let Command::Call { reply, .. } = command;
            let _ = reply.send(Err(death(None)));
        }
    }
}

/// Turns a worker's outcome into the caller's value.
pub(crate) fn outcome_into<R, C: crate::Codec>(
    outcome: Outcome,
    pid: Option<i32>,
    call: Option<CallId>,
) -> Result<R, Error>
where
    R: serde::de::DeserializeOwned,
{
    match outcome {
        Outcome::Ok(bytes) => C::decode::<R>(&bytes).map_err(Error::decode::<R>),
        Outcome::Err(bytes) => Err(Error::InWorker {
            pid: pid.unwrap_or(0),
            message: String::from_utf8_lossy(&bytes).into_owned(),
        }),
        Outcome::Panic(report) => Err(Error::Panicked {
            pid: pid.unwrap_or(0),
            call,
            report,
        }),
    }
}
