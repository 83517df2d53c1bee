//! The worker's side of a worker channel.

use super::messages::*;
use crate::entry::WireEntry;
use crate::transmit::{Transmit, MOVE_THRESHOLD};
use crate::wire::Wire;
use crate::{Error, Limits, LocalError, RemoteError};

/// What the parent told the worker.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkerEvent {
    /// What to run (always the first event).
    Start {
        /// The task function; verify it before calling it.
        task: WireEntry,
        /// Its serialized arguments.
        args: Vec<u8>,
    },
    /// Stream data, with `fds` descriptors that came along.
    Data {
        /// The bytes.
        payload: Vec<u8>,
        /// Descriptors to take from the transport's queue.
        fds: u8,
    },
    /// Stream data in shared memory: the first of the `fds` descriptors is
    /// a memfd that must be sealed (shrink, grow, write) and exactly `len`
    /// bytes long (at most `max_frame_len`, checked here); the transport
    /// checks that and maps it, or fails the channel with
    /// [`RemoteError::BadSharedMemory`]. The others are the message's own.
    SharedData {
        /// The message's length in bytes.
        len: u64,
        /// Descriptors to take from the transport's queue, the memfd first.
        fds: u8,
    },
    /// The parent sends nothing more.
    End,
    /// A `run` call to answer with [`WorkerChannel::reply`].
    Call {
        /// Names the reply.
        call: CallId,
        /// Serialized arguments.
        args: Vec<u8>,
    },
}

/// The worker's state machine for its channel.
#[derive(Debug)]
pub struct WorkerChannel {
    wire: Wire,
    hello_received: bool,
    started: bool,
    end_received: bool,
    end_sent: bool,
    returned: bool,
    calls: super::CallSet,
}

impl WorkerChannel {
    /// A channel for the worker running as `pid`, with its hello queued.
    pub fn new(limits: Limits, pid: i32) -> Self {
        let mut channel = WorkerChannel {
            wire: Wire::new(limits),
            hello_received: false,
            started: false,
            end_received: false,
            end_sent: false,
            returned: false,
            calls: super::CallSet::default(),
        };
        channel
            .queue(
                FromWorker::Hello {
                    version: CHANNEL_PROTOCOL_VERSION,
                    pid,
                },
                0,
            )
            .expect("a hello fits any limits");
        channel
    }

    /// Whether the parent ended its stream.
    pub fn is_end_received(&self) -> bool {
        self.end_received
    }

    /// Calls received and not yet answered.
    pub fn calls_in_flight(&self) -> usize {
        self.calls.len()
    }

    /// Bytes queued for the transport.
    pub fn queued_bytes(&self) -> usize {
        self.wire.queued_bytes()
    }

    /// Sends stream data, with `fds` descriptors the transport passes along.
    ///
    /// # Errors
    /// [`Error::Remote`] (the same error again) once the parent broke the
    /// protocol. [`LocalError::InvalidState`] after [`finish`](Self::finish) or
    /// [`end`](Self::end), [`LocalError::MessageTooLong`] if `payload` does not
    /// fit in a frame, [`LocalError::TooManyFds`] if `fds` exceeds
    /// `max_fds_per_frame`, and [`LocalError::SendQueueFull`] if the frame
    /// would take a non-empty queue past `max_buffered_bytes`; on a local error
    /// nothing was queued.
    pub fn send_data(&mut self, payload: Vec<u8>, fds: usize) -> Result<(), Error> {
        self.check_sendable("send data")?;
        if self.end_sent {
            return Err(invalid("send data", "this side already sent end-of-stream").into());
        }
        self.queue(FromWorker::Data(payload), fds)?;
        Ok(())
    }

    /// Sends stream data whose `len` payload bytes this machine never sees,
    /// written by the transport after the frame's header (see
    /// [`ParentChannel::send_data_external`](crate::channel::ParentChannel::send_data_external)).
    ///
    /// # Errors
    /// As [`send_data`](Self::send_data), for a payload of `len` bytes.
    pub fn send_data_external(&mut self, len: usize, fds: usize) -> Result<(), Error> {
        self.check_sendable("send data")?;
        if self.end_sent {
            return Err(invalid("send data", "this side already sent end-of-stream").into());
        }
        let kind = FromWorker::Data(Vec::new()).kind();
        self.wire.queue_external(kind, fds, len)?;
        Ok(())
    }

    /// Sends stream data whose `len` bytes are in shared memory: the first
    /// of the `fds` descriptors the transport passes along is a memfd of
    /// exactly `len` bytes, sealed against shrinking, growing and writing;
    /// the others are the message's own. Only for transports that pass
    /// descriptors.
    ///
    /// # Errors
    /// As [`send_data`](Self::send_data), and [`LocalError::InvalidState`]
    /// also when `fds` is 0 (the memfd must come along);
    /// [`LocalError::MessageTooLong`] when `len` exceeds `max_frame_len`
    /// (the receiver maps no more than a frame may hold).
    pub fn send_shared_data(&mut self, len: u64, fds: usize) -> Result<(), Error> {
        self.check_sendable("send data")?;
        if self.end_sent {
            return Err(invalid("send data", "this side already sent end-of-stream").into());
        }
        super::check_shared_data(&self.wire.limits, len, fds)?;
        self.queue(FromWorker::SharedData { len }, fds)?;
        Ok(())
    }

    /// Ends the worker's data stream (half close); replies may still follow.
    ///
    /// # Errors
    /// [`Error::Remote`] (the same error again) once the parent broke the
    /// protocol. [`LocalError::InvalidState`] after [`finish`](Self::finish) or
    /// if the stream was already ended, and [`LocalError::SendQueueFull`] if
    /// the frame would take a non-empty queue past `max_buffered_bytes`; on a
    /// local error nothing was queued.
    pub fn end(&mut self) -> Result<(), Error> {
        self.check_sendable("end the stream")?;
        if self.end_sent {
            return Err(invalid("end the stream", "this side already sent end-of-stream").into());
        }
        self.queue(FromWorker::End, 0)?;
        self.end_sent = true;
        Ok(())
    }

    /// Answers a call received as [`WorkerEvent::Call`].
    ///
    /// # Errors
    /// [`Error::Remote`] (the same error again) once the parent broke the
    /// protocol. [`LocalError::InvalidState`] after [`finish`](Self::finish),
    /// [`LocalError::UnknownCall`] if `call` is not awaiting a reply (never
    /// received, or already answered), [`LocalError::MessageTooLong`] if the
    /// encoded outcome does not fit in a frame, and
    /// [`LocalError::SendQueueFull`] if the frame would take a non-empty queue
    /// past `max_buffered_bytes`; on a local error nothing was queued and the
    /// call still awaits its reply.
    pub fn reply(&mut self, call: CallId, outcome: Outcome) -> Result<(), Error> {
        self.check_sendable("reply to a call")?;
        if !self.calls.contains(&call) {
            return Err(LocalError::UnknownCall(call).into());
        }
        self.queue(FromWorker::Reply { call, outcome }, 0)?;
        self.calls.remove(&call);
        Ok(())
    }

    /// Reports that the task function finished. The channel's last message.
    ///
    /// # Errors
    /// [`Error::Remote`] (the same error again) once the parent broke the
    /// protocol. [`LocalError::InvalidState`] if the outcome was already
    /// reported, [`LocalError::MessageTooLong`] if the encoded outcome does not
    /// fit in a frame, and [`LocalError::SendQueueFull`] if the frame would
    /// take a non-empty queue past `max_buffered_bytes`; on a local error
    /// nothing was queued.
    pub fn finish(&mut self, outcome: Outcome) -> Result<(), Error> {
        self.check_sendable("return the task's outcome")?;
        self.queue(FromWorker::Return(outcome), 0)?;
        self.returned = true;
        Ok(())
    }

    /// The payload of the frame being received, for a transport that reads
    /// bulk data straight into it: see
    /// [`FrameDecoder::payload_buffer`](crate::FrameDecoder::payload_buffer).
    /// After appending, call [`handle_input`](Self::handle_input) (with an
    /// empty input if nothing else was read) to get the event.
    pub fn payload_buffer(&mut self) -> Option<crate::frame::PayloadBuffer<'_>> {
        self.wire.payload_buffer()
    }

    /// Receives stream data's payloads into buffers from `alloc` (one a
    /// transport recycles): see
    /// [`FrameDecoder::set_payload_alloc`](crate::FrameDecoder::set_payload_alloc).
    /// A data frame that arrives whole in one input is copied into such a
    /// buffer too, rather than a new one.
    pub fn set_payload_alloc(&mut self, alloc: crate::frame::PayloadAlloc) {
        self.wire.set_payload_alloc(alloc);
    }

    /// Tells the machine the transport saw the end of the stream.
    ///
    /// # Errors
    /// A sticky [`RemoteError::Frame`](crate::RemoteError::Frame) with
    /// [`FrameError::Truncated`](crate::FrameError::Truncated) when the
    /// stream ended inside a frame, or the machine's earlier failure.
    pub fn end_of_input(&mut self) -> Result<(), crate::Error> {
        self.wire.end_of_input()
    }

    /// Consumes bytes from `input` until one event is ready or `input` is empty.
    ///
    /// # Errors
    /// [`Error::Remote`] when the parent broke the protocol: a corrupt frame
    /// ([`RemoteError::Frame`]), an unknown or malformed message
    /// ([`RemoteError::UnknownKind`], [`RemoteError::Malformed`]), another
    /// protocol version ([`RemoteError::VersionMismatch`]), a message out of
    /// order or a reused call id ([`RemoteError::Unexpected`]), descriptors
    /// on a message other than data ([`RemoteError::WrongFdCount`]), or more
    /// than `max_in_flight` calls at once ([`RemoteError::TooManyInFlight`]).
    /// The error is sticky: the channel is failed for good and every later
    /// call returns it again.
    pub fn handle_input(&mut self, input: &mut &[u8]) -> Result<Option<WorkerEvent>, Error> {
        while let Some(frame) = self.wire.next_frame(input)? {
            let applied =
                ToWorker::decode_frame(frame.kind, frame.payload, self.wire.payload_alloc())
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

    /// The one table of what the parent may send when.
    fn apply(&mut self, message: ToWorker, fds: u8) -> Result<Option<WorkerEvent>, RemoteError> {
        let name = message.name();
        let carries_fds = matches!(message, ToWorker::Data(_) | ToWorker::SharedData { .. });
        let shared_len = match message {
            ToWorker::SharedData { len } => Some(len),
            _ => None,
        };
        super::check_received_fds(&self.wire.limits, name, fds, carries_fds, shared_len)?;
        let refuse = |reason| {
            Err(RemoteError::Unexpected {
                message: name,
                reason,
            })
        };
        match message {
            ToWorker::Hello { version } => {
                if self.hello_received {
                    return refuse("twice");
                }
                if version != CHANNEL_PROTOCOL_VERSION {
                    return Err(RemoteError::VersionMismatch {
                        protocol: "worker channel",
                        ours: CHANNEL_PROTOCOL_VERSION,
                        theirs: version,
                    });
                }
                self.hello_received = true;
                Ok(None)
            }
            _ if !self.hello_received => refuse("before the parent's hello"),
            ToWorker::Start { task, args } => {
                if self.started {
                    return refuse("a second time: a worker runs one task");
                }
                self.started = true;
                Ok(Some(WorkerEvent::Start { task, args }))
            }
            _ if !self.started => refuse("before Start"),
            _ if self.end_received => refuse("after the parent ended its stream"),
            ToWorker::Data(payload) => Ok(Some(WorkerEvent::Data { payload, fds })),
            ToWorker::SharedData { len } => Ok(Some(WorkerEvent::SharedData { len, fds })),
            ToWorker::End => {
                self.end_received = true;
                Ok(Some(WorkerEvent::End))
            }
            ToWorker::Call { call, args } => {
                if self.calls.len() >= self.wire.limits.max_in_flight() {
                    return Err(RemoteError::TooManyInFlight {
                        max: self.wire.limits.max_in_flight(),
                    });
                }
                if !self.calls.insert(call) {
                    return refuse("reusing the id of a call still in flight");
                }
                Ok(Some(WorkerEvent::Call { call, args }))
            }
        }
    }

    fn check_sendable(&self, operation: &'static str) -> Result<(), Error> {
        self.wire.check_failed()?;
        if self.returned {
            return Err(invalid(operation, "the task already returned its outcome").into());
        }
        Ok(())
    }

    fn queue(&mut self, message: FromWorker, fds: usize) -> Result<(), LocalError> {
        let kind = message.kind();
        match message {
            // Stream data is moved, never copied, when large.
            FromWorker::Data(payload) => self.wire.queue(kind, fds, payload),
            // Small messages (calls, replies) are encoded in place, after
            // their header; large ones into a buffer that is moved into a
            // transmit of its own, as data is.
            message if message.bulk_len() < MOVE_THRESHOLD => {
                // The bytes besides the bulk (ids, tags, lengths) are a few
                // varints: 16 bytes cover them.
                let size_hint = message.bulk_len() + 16;
                self.wire
                    .queue_encoded(kind, fds, size_hint, |out| message.encode_into(out))
            }
            // The bulk bytes that end a call or an answer are moved in
            // after the few bytes before them; anything else is encoded
            // into a buffer moved in as a whole.
            message => match message.split_bulk() {
                Ok((prefix, bulk)) => self.wire.queue_split(kind, fds, &prefix, bulk),
                Err(message) => self.wire.queue(kind, fds, message.into_payload()),
            },
        }
    }
}

fn invalid(operation: &'static str, reason: &'static str) -> LocalError {
    LocalError::InvalidState { operation, reason }
}
