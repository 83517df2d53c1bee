//! The parent's side of a worker channel.

use super::messages::*;
use crate::entry::WireEntry;
use crate::transmit::{Transmit, MOVE_THRESHOLD};
use crate::wire::Wire;
use crate::{Error, Limits, LocalError, RemoteError};

/// What the worker told the parent.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParentEvent {
    /// The worker's hello: it runs as `pid`.
    Ready {
        /// The worker's process id.
        pid: i32,
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
    /// The worker sends no more data.
    End,
    /// A `run` call finished.
    Reply {
        /// Which call.
        call: CallId,
        /// How it went.
        outcome: Outcome,
    },
    /// The task function finished; nothing follows.
    Returned(Outcome),
}

/// The parent's state machine for one worker channel.
///
/// Its hello is queued on creation; [`start`](Self::start) may follow at once,
/// before the worker even exists.
#[derive(Debug)]
pub struct ParentChannel {
    wire: Wire,
    worker_pid: Option<i32>,
    started: bool,
    end_sent: bool,
    end_received: bool,
    returned: bool,
    next_call: CallId,
    calls: super::CallSet,
}

impl ParentChannel {
    /// A channel enforcing `limits`, with its hello queued.
    pub fn new(limits: Limits) -> Self {
        let mut channel = ParentChannel {
            wire: Wire::new(limits),
            worker_pid: None,
            started: false,
            end_sent: false,
            end_received: false,
            returned: false,
            next_call: 1,
            calls: super::CallSet::default(),
        };
        channel
            .queue(
                ToWorker::Hello {
                    version: CHANNEL_PROTOCOL_VERSION,
                },
                0,
            )
            .expect("a hello fits any limits");
        channel
    }

    /// The worker's pid, once its hello arrived.
    pub fn worker_pid(&self) -> Option<i32> {
        self.worker_pid
    }

    /// Calls awaiting a reply.
    pub fn calls_in_flight(&self) -> usize {
        self.calls.len()
    }

    /// Ids of the calls awaiting a reply (to report which were lost when a worker dies).
    pub fn pending_calls(&self) -> impl Iterator<Item = CallId> + '_ {
        self.calls.iter().copied()
    }

    /// Whether the task function has returned (nothing more will come).
    pub fn is_returned(&self) -> bool {
        self.returned
    }

    /// Whether this side ended its stream ([`end`](Self::end)).
    pub fn is_end_sent(&self) -> bool {
        self.end_sent
    }

    /// Whether the worker ended its data stream (or returned).
    pub fn is_end_received(&self) -> bool {
        self.end_received
    }

    /// Bytes queued for the transport.
    pub fn queued_bytes(&self) -> usize {
        self.wire.queued_bytes()
    }

    /// Tells the worker what to run. Exactly once, before anything else.
    ///
    /// # Errors
    /// [`Error::Remote`] (the same error again) once the worker broke the
    /// protocol. [`LocalError::InvalidState`] if the task was already started,
    /// [`LocalError::MessageTooLong`] if `args` do not fit in a frame, and
    /// [`LocalError::SendQueueFull`] if the frame would take a non-empty queue
    /// past `max_buffered_bytes`; on a local error nothing was queued.
    pub fn start(&mut self, task: WireEntry, args: Vec<u8>) -> Result<(), Error> {
        self.start_with_tail(task, &[], args)
    }

    /// [`start`](Self::start) with arguments in two parts, `head` then
    /// `tail`: the frame is the one `start` makes of their concatenation,
    /// but a large `tail` (the encoded value a task is spawned with, after
    /// a few bytes of the transport's own) is moved into the transmit as
    /// its body instead of being copied into a payload buffer, and a
    /// receiver that reads the payload into its own buffer keeps that
    /// buffer for the arguments.
    ///
    /// # Errors
    /// As [`start`](Self::start), for arguments of `head.len() +
    /// tail.len()` bytes.
    pub fn start_with_tail(
        &mut self,
        task: WireEntry,
        head: &[u8],
        tail: Vec<u8>,
    ) -> Result<(), Error> {
        self.wire.check_failed()?;
        if self.started {
            return Err(invalid("start the task", "it was already started").into());
        }
        let start = ToWorker::Start {
            task,
            args: Vec::new(),
        };
        self.queue_with_tail(start, head, tail)?;
        self.started = true;
        Ok(())
    }

    /// Sends stream data, with `fds` descriptors the transport passes along.
    ///
    /// # Errors
    /// [`Error::Remote`] (the same error again) once the worker broke the
    /// protocol. [`LocalError::InvalidState`] before [`start`](Self::start) or
    /// after [`end`](Self::end), [`LocalError::MessageTooLong`] if `payload`
    /// does not fit in a frame, [`LocalError::TooManyFds`] if `fds` exceeds
    /// `max_fds_per_frame`, and [`LocalError::SendQueueFull`] if the frame
    /// would take a non-empty queue past `max_buffered_bytes`; on a local error
    /// nothing was queued.
    pub fn send_data(&mut self, payload: Vec<u8>, fds: usize) -> Result<(), Error> {
        self.check_sendable("send data")?;
        self.queue(ToWorker::Data(payload), fds)?;
        Ok(())
    }

    /// Sends stream data whose `len` payload bytes this machine never sees:
    /// the frame's header is queued as a [`Transmit`](crate::Transmit) with
    /// `external: len`, and the transport writes the bytes right after it
    /// from buffers of its own (a message kept in pieces, whose bulk bytes
    /// are written from where they are instead of being copied into a
    /// frame). On the wire it is the frame [`send_data`](Self::send_data)
    /// makes of the same bytes.
    ///
    /// # Errors
    /// As [`send_data`](Self::send_data), for a payload of `len` bytes.
    pub fn send_data_external(&mut self, len: usize, fds: usize) -> Result<(), Error> {
        self.check_sendable("send data")?;
        let kind = ToWorker::Data(Vec::new()).kind();
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
        super::check_shared_data(&self.wire.limits, len, fds)?;
        self.queue(ToWorker::SharedData { len }, fds)?;
        Ok(())
    }

    /// Starts a `run` call; the reply comes as [`ParentEvent::Reply`].
    ///
    /// # Errors
    /// [`Error::Remote`] (the same error again) once the worker broke the
    /// protocol. [`LocalError::InvalidState`] before [`start`](Self::start) or
    /// after [`end`](Self::end), [`LocalError::TooManyInFlight`] if
    /// `max_in_flight` calls already await a reply,
    /// [`LocalError::MessageTooLong`] if `args` do not fit in a frame, and
    /// [`LocalError::SendQueueFull`] if the frame would take a non-empty queue
    /// past `max_buffered_bytes`; on a local error nothing was queued.
    pub fn call(&mut self, args: Vec<u8>) -> Result<CallId, Error> {
        self.call_with_tail(&[], args)
    }

    /// [`call`](Self::call) with arguments in two parts, `head` then
    /// `tail`, as [`start_with_tail`](Self::start_with_tail) is to `start`:
    /// the frame `call` makes of their concatenation, with a large `tail`
    /// moved in rather than copied.
    ///
    /// # Errors
    /// As [`call`](Self::call), for arguments of `head.len() + tail.len()`
    /// bytes.
    pub fn call_with_tail(&mut self, head: &[u8], tail: Vec<u8>) -> Result<CallId, Error> {
        self.check_sendable("start a call")?;
        if self.calls.len() >= self.wire.limits.max_in_flight() {
            return Err(LocalError::TooManyInFlight {
                max: self.wire.limits.max_in_flight(),
            }
            .into());
        }
        let call = self.next_call;
        let message = ToWorker::Call {
            call,
            args: Vec::new(),
        };
        self.queue_with_tail(message, head, tail)?;
        self.next_call += 1;
        self.calls.insert(call);
        Ok(call)
    }

    /// Ends the parent's stream: no more data or calls (half close).
    ///
    /// # Errors
    /// [`Error::Remote`] (the same error again) once the worker broke the
    /// protocol. [`LocalError::InvalidState`] before [`start`](Self::start) or
    /// if the stream was already ended, and [`LocalError::SendQueueFull`] if
    /// the frame would take a non-empty queue past `max_buffered_bytes`; on a
    /// local error nothing was queued.
    pub fn end(&mut self) -> Result<(), Error> {
        self.check_sendable("end the stream")?;
        self.queue(ToWorker::End, 0)?;
        self.end_sent = true;
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
    /// [`Error::Remote`] when the worker broke the protocol: a corrupt frame
    /// ([`RemoteError::Frame`]), an unknown or malformed message
    /// ([`RemoteError::UnknownKind`], [`RemoteError::Malformed`]), another
    /// protocol version ([`RemoteError::VersionMismatch`]), a message out of
    /// order ([`RemoteError::Unexpected`]), descriptors on a message other
    /// than data ([`RemoteError::WrongFdCount`]), or a reply to no call in
    /// flight ([`RemoteError::UnknownId`]). The error is sticky: the channel
    /// is failed for good and every later call returns it again.
    pub fn handle_input(&mut self, input: &mut &[u8]) -> Result<Option<ParentEvent>, Error> {
        let Some(frame) = self.wire.next_frame(input)? else {
            return Ok(None);
        };
        // Every message the worker sends is an event, so one frame is enough.
        let applied =
            FromWorker::decode_frame(frame.kind, frame.payload, self.wire.payload_alloc())
                .and_then(|message| self.apply(message, frame.fds))
                .map(Some);
        self.wire.settle(applied)
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

    /// The one table of what the worker may send when.
    fn apply(&mut self, message: FromWorker, fds: u8) -> Result<ParentEvent, RemoteError> {
        let name = message.name();
        let carries_fds = matches!(message, FromWorker::Data(_) | FromWorker::SharedData { .. });
        let shared_len = match message {
            FromWorker::SharedData { len } => Some(len),
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
            FromWorker::Hello { version, pid } => {
                if self.worker_pid.is_some() {
                    return refuse("twice");
                }
                if version != CHANNEL_PROTOCOL_VERSION {
                    return Err(RemoteError::VersionMismatch {
                        protocol: "worker channel",
                        ours: CHANNEL_PROTOCOL_VERSION,
                        theirs: version,
                    });
                }
                self.worker_pid = Some(pid);
                Ok(ParentEvent::Ready { pid })
            }
            _ if self.worker_pid.is_none() => refuse("before the worker's hello"),
            _ if self.returned => refuse("after the task returned"),
            _ if !self.started => refuse("before the task was started"),
            FromWorker::Data(payload) => {
                if self.end_received {
                    return refuse("after the worker ended its stream");
                }
                Ok(ParentEvent::Data { payload, fds })
            }
            FromWorker::SharedData { len } => {
                if self.end_received {
                    return refuse("after the worker ended its stream");
                }
                Ok(ParentEvent::SharedData { len, fds })
            }
            FromWorker::End => {
                if self.end_received {
                    return refuse("twice");
                }
                self.end_received = true;
                Ok(ParentEvent::End)
            }
            FromWorker::Reply { call, outcome } => {
                if !self.calls.remove(&call) {
                    return Err(RemoteError::UnknownId {
                        message: name,
                        what: "call",
                        id: call,
                    });
                }
                Ok(ParentEvent::Reply { call, outcome })
            }
            FromWorker::Return(outcome) => {
                self.returned = true;
                self.end_received = true;
                Ok(ParentEvent::Returned(outcome))
            }
        }
    }

    fn check_sendable(&self, operation: &'static str) -> Result<(), Error> {
        self.wire.check_failed()?;
        if !self.started {
            return Err(
                invalid(operation, "the task has not been started; call start first").into(),
            );
        }
        if self.end_sent {
            return Err(invalid(operation, "this side already sent end-of-stream").into());
        }
        Ok(())
    }

    fn queue(&mut self, message: ToWorker, fds: usize) -> Result<(), LocalError> {
        let kind = message.kind();
        match message {
            // Stream data is moved, never copied, when large.
            ToWorker::Data(payload) => self.wire.queue(kind, fds, payload),
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

/// Arguments given as `head` then `tail`, as one buffer (`Ok`) when the
/// head is empty (the tail is the arguments) or the whole is small
/// (copied, as small messages are: encoded after their header); else the
/// tail back (`Err`), to be moved into the frame after the head.
fn joined(head: &[u8], tail: Vec<u8>) -> Result<Vec<u8>, Vec<u8>> {
    if head.is_empty() {
        return Ok(tail);
    }
    if head.len() + tail.len() >= MOVE_THRESHOLD {
        return Err(tail);
    }
    let mut args = Vec::with_capacity(head.len() + tail.len());
    args.extend_from_slice(head);
    args.extend_from_slice(&tail);
    Ok(args)
}

impl ParentChannel {
    /// Queues `message`, a Start or a call with no arguments of its own,
    /// with arguments `head` then `tail` (see
    /// [`start_with_tail`](Self::start_with_tail)).
    fn queue_with_tail(
        &mut self,
        message: ToWorker,
        head: &[u8],
        tail: Vec<u8>,
    ) -> Result<(), LocalError> {
        match joined(head, tail) {
            Ok(args) => self.queue(message.with_args(args), 0),
            Err(tail) => {
                let mut prefix = message
                    .bulk_prefix(head.len() + tail.len())
                    .expect("only a Start or a call has arguments to split");
                prefix.extend_from_slice(head);
                self.wire.queue_split(message.kind(), 0, &prefix, tail)
            }
        }
    }
}

fn invalid(operation: &'static str, reason: &'static str) -> LocalError {
    LocalError::InvalidState { operation, reason }
}
