//! The parent's side of the zygote protocol.

use std::collections::{HashMap, HashSet};

use super::messages::*;
use crate::entry::WireEntry;
use crate::transmit::Transmit;
use crate::wire::Wire;
use crate::{Error, Limits, LocalError, RemoteError};

/// What the zygote told the parent.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ZygoteEvent {
    /// The zygote's hello: it speaks our version and runs as `pid`.
    Ready {
        /// The zygote's process id.
        pid: i32,
    },
    /// A spawn request succeeded.
    Spawned {
        /// The request.
        request: RequestId,
        /// The new worker's id.
        worker: WorkerId,
        /// The new worker's pid.
        pid: i32,
    },
    /// A snapshot request succeeded.
    SnapshotReady {
        /// The request.
        request: RequestId,
        /// The snapshot's id (it exits like a worker).
        worker: WorkerId,
        /// Its pid.
        pid: i32,
    },
    /// A spawn or snapshot request failed.
    SpawnFailed {
        /// The request.
        request: RequestId,
        /// Why.
        failure: SpawnFailure,
    },
    /// A worker or snapshot was reaped.
    Exited {
        /// Which one.
        worker: WorkerId,
        /// How it ended.
        status: ExitStatus,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Spawn,
    Snapshot,
}

/// The parent's state machine for one zygote connection.
///
/// Its hello is queued on creation, so a spawn may follow at once without
/// waiting for the zygote's reply (zero round trips).
#[derive(Debug)]
pub struct ZygoteClient {
    wire: Wire,
    zygote_pid: Option<i32>,
    next_request: RequestId,
    pending: HashMap<RequestId, Pending>,
    live: HashSet<WorkerId>,
    shut_down: bool,
}

impl ZygoteClient {
    /// A client enforcing `limits`, with its hello queued.
    pub fn new(limits: Limits) -> Self {
        let mut client = ZygoteClient {
            wire: Wire::new(limits),
            zygote_pid: None,
            next_request: 1,
            pending: HashMap::new(),
            live: HashSet::new(),
            shut_down: false,
        };
        client
            .queue(
                ToZygote::Hello {
                    version: ZYGOTE_PROTOCOL_VERSION,
                },
                0,
            )
            .expect("a hello fits any limits");
        client
    }

    /// The zygote's pid, once its hello arrived.
    pub fn zygote_pid(&self) -> Option<i32> {
        self.zygote_pid
    }

    /// Requests awaiting a reply.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Whether `worker` is alive as far as this side knows.
    pub fn is_live(&self, worker: WorkerId) -> bool {
        self.live.contains(&worker)
    }

    /// Number of live workers and snapshots.
    pub fn live_workers(&self) -> usize {
        self.live.len()
    }

    /// Bytes queued for the transport.
    pub fn queued_bytes(&self) -> usize {
        self.wire.queued_bytes()
    }

    /// Asks for a worker that runs `boot`. The transport must send
    /// `1 + user_fds` descriptors with this frame: the worker's channel end
    /// first, then the user's.
    ///
    /// # Errors
    /// [`Error::Remote`] (the same error again) once the zygote broke the
    /// protocol. [`LocalError::InvalidState`] after
    /// [`shutdown`](Self::shutdown), [`LocalError::TooManyInFlight`] if
    /// `max_in_flight` requests already await a reply,
    /// [`LocalError::TooManyFds`] if `1 + user_fds` exceeds
    /// `max_fds_per_frame`, [`LocalError::MessageTooLong`] if the encoded
    /// request does not fit in a frame, and [`LocalError::SendQueueFull`] if
    /// the frame would take a non-empty queue past `max_buffered_bytes`; on a
    /// local error nothing was queued.
    pub fn spawn(
        &mut self,
        boot: WireEntry,
        options: SpawnOptions,
        user_fds: usize,
    ) -> Result<RequestId, Error> {
        self.check_open("spawn a worker")?;
        let request = self.reserve_request()?;
        self.queue(
            ToZygote::Spawn(SpawnRequest {
                request,
                boot,
                options,
            }),
            user_fds.saturating_add(1),
        )?;
        self.pending.insert(request, Pending::Spawn);
        self.next_request += 1;
        Ok(request)
    }

    /// Asks for a derived snapshot that runs `init(args)` and then serves
    /// spawns on the one descriptor the transport must send with this frame.
    ///
    /// # Errors
    /// [`Error::Remote`] (the same error again) once the zygote broke the
    /// protocol. [`LocalError::InvalidState`] after
    /// [`shutdown`](Self::shutdown), [`LocalError::TooManyInFlight`] if
    /// `max_in_flight` requests already await a reply,
    /// [`LocalError::MessageTooLong`] if `args` and the rest of the request do
    /// not fit in a frame, and [`LocalError::SendQueueFull`] if the frame would
    /// take a non-empty queue past `max_buffered_bytes`; on a local error
    /// nothing was queued.
    pub fn snapshot(
        &mut self,
        init: WireEntry,
        args: Vec<u8>,
        options: SpawnOptions,
    ) -> Result<RequestId, Error> {
        self.check_open("create a snapshot")?;
        let request = self.reserve_request()?;
        self.queue(
            ToZygote::Snapshot(SnapshotRequest {
                request,
                init,
                args,
                options,
            }),
            1,
        )?;
        self.pending.insert(request, Pending::Snapshot);
        self.next_request += 1;
        Ok(request)
    }

    /// Sends `signal` to a live worker or snapshot.
    ///
    /// # Errors
    /// [`Error::Remote`] (the same error again) once the zygote broke the
    /// protocol. [`LocalError::InvalidState`] after
    /// [`shutdown`](Self::shutdown), [`LocalError::UnknownWorker`] if `worker`
    /// is not live (never spawned, or its exit was already reported), and
    /// [`LocalError::SendQueueFull`] if the frame would take a non-empty queue
    /// past `max_buffered_bytes`; on a local error nothing was queued.
    pub fn kill(&mut self, worker: WorkerId, signal: i32) -> Result<(), Error> {
        self.check_open("kill a worker")?;
        if !self.live.contains(&worker) {
            return Err(LocalError::UnknownWorker(worker).into());
        }
        self.queue(ToZygote::Kill { worker, signal }, 0)?;
        Ok(())
    }

    /// Asks the zygote to terminate its workers and exit. Nothing may follow.
    ///
    /// # Errors
    /// [`Error::Remote`] (the same error again) once the zygote broke the
    /// protocol. [`LocalError::InvalidState`] if shutdown was already
    /// requested, and [`LocalError::SendQueueFull`] if the frame would take a
    /// non-empty queue past `max_buffered_bytes`; on a local error nothing was
    /// queued.
    pub fn shutdown(&mut self) -> Result<(), Error> {
        self.check_open("shut down")?;
        self.queue(ToZygote::Shutdown, 0)?;
        self.shut_down = true;
        Ok(())
    }

    /// Consumes bytes from `input` until one event is ready or `input` is empty.
    ///
    /// # Errors
    /// [`Error::Remote`] when the zygote broke the protocol: a corrupt frame
    /// ([`RemoteError::Frame`]), an unknown or malformed message
    /// ([`RemoteError::UnknownKind`], [`RemoteError::Malformed`]), another
    /// protocol version ([`RemoteError::VersionMismatch`]), a message before
    /// the hello, a second hello, an answer of the wrong kind or a reused
    /// worker id ([`RemoteError::Unexpected`]), any descriptor
    /// ([`RemoteError::WrongFdCount`]), or an answer to no pending request or
    /// an exit of no live worker ([`RemoteError::UnknownId`]). The error is
    /// sticky: the client is failed for good and every later call returns it
    /// again.
    pub fn handle_input(&mut self, input: &mut &[u8]) -> Result<Option<ZygoteEvent>, Error> {
        while let Some(frame) = self.wire.next_frame(input)? {
            let applied = FromZygote::decode(frame.kind, &frame.payload)
                .and_then(|message| self.apply(message, frame.fds));
            if let Some(event) = self.wire.settle(applied)? {
                return Ok(Some(event));
            }
        }
        Ok(None)
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

    fn apply(&mut self, message: FromZygote, fds: u8) -> Result<Option<ZygoteEvent>, RemoteError> {
        if fds != 0 {
            return Err(RemoteError::WrongFdCount {
                message: message.name(),
                got: fds,
                expected: "none",
            });
        }
        if self.zygote_pid.is_none() && !matches!(message, FromZygote::Hello { .. }) {
            return Err(RemoteError::Unexpected {
                message: message.name(),
                reason: "before the zygote's hello",
            });
        }
        Ok(Some(match message {
            FromZygote::Hello { version, pid } => {
                if self.zygote_pid.is_some() {
                    return Err(RemoteError::Unexpected {
                        message: "Hello",
                        reason: "twice",
                    });
                }
                if version != ZYGOTE_PROTOCOL_VERSION {
                    return Err(RemoteError::VersionMismatch {
                        protocol: "zygote",
                        ours: ZYGOTE_PROTOCOL_VERSION,
                        theirs: version,
                    });
                }
                self.zygote_pid = Some(pid);
                ZygoteEvent::Ready { pid }
            }
            FromZygote::Spawned {
                request,
                worker,
                pid,
            } => {
                self.answer(request, Pending::Spawn, "Spawned")?;
                self.add_live(worker, "Spawned")?;
                ZygoteEvent::Spawned {
                    request,
                    worker,
                    pid,
                }
            }
            FromZygote::SnapshotReady {
                request,
                worker,
                pid,
            } => {
                self.answer(request, Pending::Snapshot, "SnapshotReady")?;
                self.add_live(worker, "SnapshotReady")?;
                ZygoteEvent::SnapshotReady {
                    request,
                    worker,
                    pid,
                }
            }
            FromZygote::SpawnFailed { request, failure } => {
                if self.pending.remove(&request).is_none() {
                    return Err(unknown("SpawnFailed", "request", request));
                }
                ZygoteEvent::SpawnFailed { request, failure }
            }
            FromZygote::Exited { worker, status } => {
                if !self.live.remove(&worker) {
                    return Err(unknown("Exited", "worker", worker));
                }
                ZygoteEvent::Exited { worker, status }
            }
        }))
    }

    fn answer(
        &mut self,
        request: RequestId,
        expected: Pending,
        message: &'static str,
    ) -> Result<(), RemoteError> {
        match self.pending.get(&request) {
            Some(kind) if *kind == expected => {
                self.pending.remove(&request);
                Ok(())
            }
            Some(_) => Err(RemoteError::Unexpected {
                message,
                reason: "in answer to a request of the other kind",
            }),
            None => Err(unknown(message, "request", request)),
        }
    }

    fn add_live(&mut self, worker: WorkerId, message: &'static str) -> Result<(), RemoteError> {
        if self.live.insert(worker) {
            Ok(())
        } else {
            Err(RemoteError::Unexpected {
                message,
                reason: "reusing the id of a live worker",
            })
        }
    }

    fn reserve_request(&self) -> Result<RequestId, LocalError> {
        if self.pending.len() >= self.wire.limits.max_in_flight() {
            return Err(LocalError::TooManyInFlight {
                max: self.wire.limits.max_in_flight(),
            });
        }
        Ok(self.next_request)
    }

    fn check_open(&self, operation: &'static str) -> Result<(), Error> {
        self.wire.check_failed()?;
        if self.shut_down {
            return Err(LocalError::InvalidState {
                operation,
                reason: "shutdown was already requested",
            }
            .into());
        }
        Ok(())
    }

    fn queue(&mut self, message: ToZygote, fds: usize) -> Result<(), LocalError> {
        self.wire
            .queue(message.kind(), fds, message.encode_payload())
    }
}

fn unknown(message: &'static str, what: &'static str, id: u64) -> RemoteError {
    RemoteError::UnknownId { message, what, id }
}
