//! The zygote's side of the zygote protocol.

use std::collections::{HashMap, HashSet};

use super::messages::*;
use crate::entry::WireEntry;
use crate::transmit::Transmit;
use crate::wire::Wire;
use crate::{Error, Limits, LocalError, RemoteError};

/// What the parent asked the zygote to do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerEvent {
    /// Fork a worker. `fds` descriptors came with the frame: the worker's
    /// channel end first, then the user's. Answer with
    /// [`ZygoteServer::spawned`] or [`ZygoteServer::spawn_failed`].
    Spawn {
        /// Names the reply.
        request: RequestId,
        /// What the worker runs; verify it before running it.
        boot: WireEntry,
        /// Name and limits.
        options: SpawnOptions,
        /// Descriptors that came with the request (at least one).
        fds: u8,
    },
    /// Fork a derived snapshot serving on the one descriptor that came with the frame.
    /// Answer with [`ZygoteServer::snapshot_ready`] or [`ZygoteServer::spawn_failed`].
    Snapshot {
        /// Names the reply.
        request: RequestId,
        /// The init function; verify it before running it.
        init: WireEntry,
        /// Its serialized arguments.
        args: Vec<u8>,
        /// Name and limits.
        options: SpawnOptions,
    },
    /// Signal a live, unreaped child. The pid cannot have been reused: the
    /// zygote is its parent and has not reaped it. Kills of workers that
    /// already exited are dropped here and never show up.
    Kill {
        /// The worker's id.
        worker: WorkerId,
        /// Its pid.
        pid: i32,
        /// The signal.
        signal: i32,
    },
    /// Terminate every child and exit. It is the last event: any message
    /// after it is a [`RemoteError::Unexpected`].
    Shutdown,
}

/// The zygote's state machine for its control connection.
///
/// It owns the table of live children (id ↔ pid), so the OS layer only forks,
/// reaps and signals.
#[derive(Debug)]
pub struct ZygoteServer {
    wire: Wire,
    hello_received: bool,
    shutdown_received: bool,
    pending: HashSet<RequestId>,
    pids: HashMap<WorkerId, i32>,
    workers_by_pid: HashMap<i32, WorkerId>,
    next_worker: WorkerId,
}

impl ZygoteServer {
    /// A server for the zygote running as `pid`, with its hello queued.
    pub fn new(limits: Limits, pid: i32) -> Self {
        let mut server = ZygoteServer {
            wire: Wire::new(limits),
            hello_received: false,
            shutdown_received: false,
            pending: HashSet::new(),
            pids: HashMap::new(),
            workers_by_pid: HashMap::new(),
            next_worker: 1,
        };
        server
            .queue(FromZygote::Hello {
                version: ZYGOTE_PROTOCOL_VERSION,
                pid,
            })
            .expect("a hello fits any limits");
        server
    }

    /// Pids of every live child, for cleanup.
    pub fn live_pids(&self) -> impl Iterator<Item = i32> + '_ {
        self.pids.values().copied()
    }

    /// Consumes bytes from `input` until one event is ready or `input` is empty.
    ///
    /// # Errors
    /// [`Error::Remote`] when the parent broke the protocol: a corrupt frame
    /// ([`RemoteError::Frame`]), an unknown or malformed message
    /// ([`RemoteError::UnknownKind`], [`RemoteError::Malformed`]), another
    /// protocol version ([`RemoteError::VersionMismatch`]), a message before
    /// the hello, a second hello, anything after `Shutdown` or a reused
    /// request id ([`RemoteError::Unexpected`]), the wrong number of
    /// descriptors for the message ([`RemoteError::WrongFdCount`]), or more
    /// than `max_in_flight` requests at once
    /// ([`RemoteError::TooManyInFlight`]). The error is sticky: the server is
    /// failed for good and every later call returns it again.
    pub fn handle_input(&mut self, input: &mut &[u8]) -> Result<Option<ServerEvent>, Error> {
        while let Some(frame) = self.wire.next_frame(input)? {
            let applied = ToZygote::decode(frame.kind, &frame.payload)
                .and_then(|message| self.apply(message, frame.fds));
            if let Some(event) = self.wire.settle(applied)? {
                return Ok(Some(event));
            }
        }
        Ok(None)
    }

    /// Reports that the worker for `request` runs as `pid`; returns its id.
    ///
    /// # Errors
    /// [`LocalError::InvalidState`] if `request` does not await a reply (it was
    /// never received, or already answered), and [`LocalError::SendQueueFull`]
    /// if the frame would take a non-empty queue past `max_buffered_bytes`.
    /// Nothing changed then: the request can still be answered.
    pub fn spawned(&mut self, request: RequestId, pid: i32) -> Result<WorkerId, Error> {
        let worker = self.next_child(request)?;
        self.queue(FromZygote::Spawned {
            request,
            worker,
            pid,
        })?;
        self.start_child(request, worker, pid);
        Ok(worker)
    }

    /// Reports that the snapshot for `request` runs as `pid`; returns its id.
    ///
    /// # Errors
    /// As [`spawned`](Self::spawned): [`LocalError::InvalidState`] if `request`
    /// does not await a reply, and [`LocalError::SendQueueFull`] if the frame
    /// would take a non-empty queue past `max_buffered_bytes`. Nothing changed
    /// then.
    pub fn snapshot_ready(&mut self, request: RequestId, pid: i32) -> Result<WorkerId, Error> {
        let worker = self.next_child(request)?;
        self.queue(FromZygote::SnapshotReady {
            request,
            worker,
            pid,
        })?;
        self.start_child(request, worker, pid);
        Ok(worker)
    }

    /// Reports that `request` failed.
    ///
    /// # Errors
    /// [`LocalError::InvalidState`] if `request` does not await a reply,
    /// [`LocalError::MessageTooLong`] if `failure.message` makes the answer too
    /// long for a frame, and [`LocalError::SendQueueFull`] if the frame would
    /// take a non-empty queue past `max_buffered_bytes`. Nothing changed then:
    /// the request can still be answered.
    pub fn spawn_failed(&mut self, request: RequestId, failure: SpawnFailure) -> Result<(), Error> {
        if !self.pending.contains(&request) {
            return Err(LocalError::InvalidState {
                operation: "report a failed spawn",
                reason: "no such request awaits a reply",
            }
            .into());
        }
        self.queue(FromZygote::SpawnFailed { request, failure })?;
        self.pending.remove(&request);
        Ok(())
    }

    /// Reports a reaped child. Returns its worker id, or `None` for a pid
    /// that is not one of ours (nothing is sent then).
    ///
    /// # Errors
    /// [`LocalError::SendQueueFull`] if the frame would take a non-empty queue
    /// past `max_buffered_bytes`; the child then stays in the table, so report
    /// it again once the queue drained.
    pub fn reaped(&mut self, pid: i32, status: ExitStatus) -> Result<Option<WorkerId>, Error> {
        let Some(&worker) = self.workers_by_pid.get(&pid) else {
            return Ok(None);
        };
        self.queue(FromZygote::Exited { worker, status })?;
        self.workers_by_pid.remove(&pid);
        self.pids.remove(&worker);
        Ok(Some(worker))
    }

    /// The next bytes to write, if any.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.wire.poll_transmit()
    }

    /// Gives back a written [`Transmit`]'s `head` (or any spent buffer), for
    /// the bytes of a later frame: a transport that does so saves an
    /// allocation per frame. Optional; buffers over 64 KiB are dropped.
    pub fn recycle(&mut self, buffer: Vec<u8>) {
        self.wire.recycle(buffer);
    }

    /// The id the child for `request` will get; changes nothing, so that a
    /// refused send (a full queue) leaves the request answerable.
    fn next_child(&self, request: RequestId) -> Result<WorkerId, LocalError> {
        if !self.pending.contains(&request) {
            return Err(LocalError::InvalidState {
                operation: "report a started child",
                reason: "no such request awaits a reply",
            });
        }
        Ok(self.next_worker)
    }

    /// Records the child once its answer is queued.
    fn start_child(&mut self, request: RequestId, worker: WorkerId, pid: i32) {
        self.pending.remove(&request);
        self.next_worker += 1;
        self.pids.insert(worker, pid);
        self.workers_by_pid.insert(pid, worker);
    }

    fn apply(&mut self, message: ToZygote, fds: u8) -> Result<Option<ServerEvent>, RemoteError> {
        let name = message.name();
        let fds_ok = match &message {
            ToZygote::Spawn(_) => fds >= 1,
            ToZygote::Snapshot(_) => fds == 1,
            _ => fds == 0,
        };
        if !fds_ok {
            let expected = match &message {
                ToZygote::Spawn(_) => "at least 1 (the worker's channel)",
                ToZygote::Snapshot(_) => "exactly 1 (the snapshot's control socket)",
                _ => "none",
            };
            return Err(RemoteError::WrongFdCount {
                message: name,
                got: fds,
                expected,
            });
        }
        if !self.hello_received {
            return match message {
                ToZygote::Hello { version } if version == ZYGOTE_PROTOCOL_VERSION => {
                    self.hello_received = true;
                    Ok(None)
                }
                ToZygote::Hello { version } => Err(RemoteError::VersionMismatch {
                    protocol: "zygote",
                    ours: ZYGOTE_PROTOCOL_VERSION,
                    theirs: version,
                }),
                _ => Err(RemoteError::Unexpected {
                    message: name,
                    reason: "before the parent's hello",
                }),
            };
        }
        if self.shutdown_received {
            // Shutdown is final, as End is on a channel: nothing may follow it.
            return Err(RemoteError::Unexpected {
                message: name,
                reason: "after Shutdown",
            });
        }
        Ok(match message {
            ToZygote::Hello { .. } => {
                return Err(RemoteError::Unexpected {
                    message: name,
                    reason: "twice",
                })
            }
            ToZygote::Spawn(SpawnRequest {
                request,
                boot,
                options,
            }) => {
                self.admit(request, name)?;
                Some(ServerEvent::Spawn {
                    request,
                    boot,
                    options,
                    fds,
                })
            }
            ToZygote::Snapshot(SnapshotRequest {
                request,
                init,
                args,
                options,
            }) => {
                self.admit(request, name)?;
                Some(ServerEvent::Snapshot {
                    request,
                    init,
                    args,
                    options,
                })
            }
            ToZygote::Kill { worker, signal } => {
                self.pids.get(&worker).map(|&pid| ServerEvent::Kill {
                    worker,
                    pid,
                    signal,
                })
            }
            ToZygote::Shutdown => {
                self.shutdown_received = true;
                Some(ServerEvent::Shutdown)
            }
        })
    }

    fn admit(&mut self, request: RequestId, message: &'static str) -> Result<(), RemoteError> {
        if self.pending.len() >= self.wire.limits.max_in_flight() {
            return Err(RemoteError::TooManyInFlight {
                max: self.wire.limits.max_in_flight(),
            });
        }
        if !self.pending.insert(request) {
            return Err(RemoteError::Unexpected {
                message,
                reason: "reusing the id of a request still awaiting its reply",
            });
        }
        Ok(())
    }

    fn queue(&mut self, message: FromZygote) -> Result<(), LocalError> {
        self.wire.queue(message.kind(), 0, message.encode_payload())
    }
}
