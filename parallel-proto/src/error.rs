//! Errors, split by whose fault they are.
//!
//! [`LocalError`]: this side misused the API (sent after end, too many calls in
//! flight, a frame too large to send). Nothing was queued; the state machine is
//! still usable.
//!
//! [`RemoteError`]: the peer broke the protocol (a corrupt frame, an unknown
//! message, a reply to nothing). It is fatal and sticky: every later input or
//! send on that state machine returns the same error.

use crate::entry::EntryError;
use crate::frame::FrameError;

/// Any error a state machine returns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// This side misused the API; nothing was sent and the state machine is unchanged.
    #[error(transparent)]
    Local(#[from] LocalError),
    /// The peer broke the protocol; the connection is dead.
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

/// This side misused the API. The state machine is unchanged and still usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LocalError {
    /// The payload is larger than `Limits::max_frame_len`.
    #[error(
        "message of {len} bytes exceeds max_frame_len ({max} bytes); split it or raise the limit"
    )]
    MessageTooLong {
        /// Encoded length of the message.
        len: usize,
        /// The configured limit.
        max: u32,
    },
    /// More file descriptors than `Limits::max_fds_per_frame`.
    #[error("{count} file descriptors in one message exceed max_fds_per_frame ({max})")]
    TooManyFds {
        /// How many were asked for.
        count: usize,
        /// The configured limit.
        max: u8,
    },
    /// The transmit queue is full: drain it with `poll_transmit` first.
    #[error("send queue holds {queued} bytes; adding {adding} would exceed max_buffered_bytes ({max}); drain poll_transmit first")]
    SendQueueFull {
        /// Bytes already queued.
        queued: usize,
        /// Bytes this send would add.
        adding: usize,
        /// The configured limit.
        max: usize,
    },
    /// Too many requests or calls already await a reply.
    #[error("{max} requests already await a reply (max_in_flight); wait for one to finish")]
    TooManyInFlight {
        /// The configured limit.
        max: usize,
    },
    /// The operation does not fit the channel's current state.
    #[error("cannot {operation}: {reason}")]
    InvalidState {
        /// What was attempted, e.g. "send data".
        operation: &'static str,
        /// Why it is not allowed now, e.g. "this side already sent end-of-stream".
        reason: &'static str,
    },
    /// The worker id is not (or no longer) a live worker of this zygote.
    #[error("worker {0} is not running (it exited, or never existed)")]
    UnknownWorker(u64),
    /// The call id does not name a call awaiting a reply.
    #[error("call {0} is not awaiting a reply")]
    UnknownCall(u64),
}

/// The peer broke the protocol. Fatal: the state machine refuses all further work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// The byte stream is not a valid sequence of frames.
    #[error("corrupt stream from peer")]
    Frame(#[from] FrameError),
    /// The frame's kind tag names no message of this protocol.
    #[error("peer sent a frame of unknown kind {kind:#04x} for the {protocol} protocol")]
    UnknownKind {
        /// Which protocol was decoding.
        protocol: &'static str,
        /// The tag received.
        kind: u8,
    },
    /// The frame's payload does not decode as its message.
    #[error("peer sent a malformed {message} message: {reason}")]
    Malformed {
        /// The message that failed to decode.
        message: &'static str,
        /// What the decoder said.
        reason: String,
    },
    /// The peer speaks another protocol version.
    #[error("peer speaks {protocol} protocol version {theirs}, we speak {ours}; both sides must come from the same build")]
    VersionMismatch {
        /// Which protocol.
        protocol: &'static str,
        /// Our version.
        ours: u32,
        /// The peer's version.
        theirs: u32,
    },
    /// A message arrived that is not allowed in the current state.
    #[error("peer sent {message} {reason}")]
    Unexpected {
        /// The message received.
        message: &'static str,
        /// Why it was not allowed, e.g. "before hello".
        reason: &'static str,
    },
    /// A message carried a different number of file descriptors than it must.
    #[error("peer sent {message} with {got} file descriptors, expected {expected}")]
    WrongFdCount {
        /// The message received.
        message: &'static str,
        /// How many came.
        got: u8,
        /// How many the message requires.
        expected: &'static str,
    },
    /// A reply named a request, call or worker this side does not know.
    #[error("peer sent {message} for unknown {what} {id}")]
    UnknownId {
        /// The message received.
        message: &'static str,
        /// "request", "call" or "worker".
        what: &'static str,
        /// The id it named.
        id: u64,
    },
    /// The peer exceeded `max_in_flight`.
    #[error("peer has more than {max} requests in flight (max_in_flight)")]
    TooManyInFlight {
        /// The configured limit.
        max: usize,
    },
    /// The peer announced shared memory larger than a frame may be.
    #[error("peer sent SharedData of {len} bytes, more than max_frame_len ({max} bytes)")]
    SharedTooLong {
        /// The announced length.
        len: u64,
        /// The configured limit.
        max: u32,
    },
    /// The shared memory that came with a `SharedData` message is not what
    /// the protocol requires (a sealed memfd of exactly the announced
    /// length). The transport checks this, not the state machine.
    #[error("peer sent SharedData whose shared memory is unusable: {reason}")]
    BadSharedMemory {
        /// What is wrong with it.
        reason: String,
    },
    /// An entry point failed verification.
    #[error("peer sent a bad entry point")]
    Entry(#[from] EntryError),
}
