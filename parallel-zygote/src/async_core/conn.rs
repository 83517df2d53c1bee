//! One end of a channel over a readiness socket: a proto state machine, the
//! socket, and the descriptors in each direction.
//!
//! Poll-based: all state lives in `self`, so a caller may stop polling at any
//! point and resume later without losing bytes.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::task::{ready, Context, Poll};

use parallel_proto::{Endpoint, Transmit};

use super::messages::RawMessage;
use super::recycle;
use super::runtime::{AsyncSocket, ReadOutcome};
use super::shared::{Payload, SendData};
use super::streamed::{self, Streamed};
use super::Error;
use crate::io::{Inbox, Outbox, Piece};

/// The bytes that complete a transmit announcing external bytes.
enum External {
    /// Written from where they are (large `Bytes` lent, the rest copied).
    Pieces(Vec<Piece>),
    /// A message encoded as it is written (see `streamed`).
    Streamed(Box<dyn Streamed>),
}

/// An event and the descriptors that came with it.
pub(crate) type Received<E> = (E, Vec<OwnedFd>);

/// Largest read size: large enough that bulk data moves in few system calls.
const READ_CHUNK: usize = 256 * 1024;
/// First read size: calls and small messages fit, and an idle or short-lived
/// worker's channel holds no more memory than that (a quarter-megabyte per
/// channel, freed and reallocated for every spawn, fragments the heap: the
/// parent's RSS stayed at 5× its baseline after 500 dropped spawns). The
/// buffer doubles each time a read fills it, up to `READ_CHUNK`.
const READ_START: usize = 4 * 1024;

/// Payloads with at least this many bytes still to come are read straight
/// into their own buffer rather than through `read_buffer`.
const DIRECT_READ_MIN: usize = 16 * 1024;

/// Send buffer asked for on the parent's end of a worker channel (Linux
/// doubles what is asked and caps the request at `net.core.wmem_max`; the
/// default is about 208 KiB). With the default a 1 MiB batch of messages
/// (or one 1 MiB message) takes five or more waits for room, each a reactor
/// event; on smol, whose reactor may be served by async-io's own thread
/// rather than the driver's, each such event is a thread hand-over on the
/// way to the driver (BENCHMARKS.md, session 12). A batch then fits whole.
/// Memory is taken only for bytes the worker has not read yet.
const SEND_BUFFER: usize = 2 * 1024 * 1024;

/// Asks for [`SEND_BUFFER`] on `socket`, the parent's end of a new worker
/// channel. Best effort: where the system caps it lower, writes only wait
/// for room more often.
pub(crate) fn widen_send_buffer(socket: &std::os::unix::net::UnixStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    if let Err(error) = setsockopt(socket, sockopt::SndBuf, &SEND_BUFFER) {
        tracing::debug!(%error, "widening a worker channel's send buffer failed");
    }
}

/// `process` messages a pump takes from its queue per write, at most: those
/// queued together then go out in one gathered `sendmsg`, and the sending
/// task, woken once the queue has room, is woken once per batch rather than
/// once per message (each wake-up a thread's futex wake and sleep on smol
/// and tokio's multi-thread runtime, whose senders run on another thread
/// than the driver). See [`MessageBatch`].
const MESSAGE_BATCH: usize = 16;
/// Bytes of messages a pump takes per write, at most (reached with the
/// message that passes it): a whole queue of 64 KiB messages, so that their
/// sender, once woken, refills the queue at once and sleeps until the batch
/// is out (256 KiB, four such messages, made the sender wake four times as
/// often: smol 26 → 15 ms per 64 MiB, BENCHMARKS.md, session 11); messages
/// of 1 MiB and more go one at a time. Memory stays bounded: a batch holds
/// messages their sender made already, at most a queue's worth (16) on top
/// of the queue's own (one message before).
const MESSAGE_BATCH_BYTES: usize = 1024 * 1024;

// A batch is written into a send queue that may hold up to a batch's
// bytes already, and the queue refuses a frame that takes a non-empty
// queue past `max_buffered_bytes` (which would break the channel): with
// the worker channels' limits, a batch plus the largest frame must fit.
const _: () = assert!(
    MESSAGE_BATCH_BYTES + parallel_proto::Limits::DEFAULT.max_frame_len() as usize
        <= parallel_proto::Limits::DEFAULT.max_buffered_bytes()
);

/// How many `process` messages a pump has taken for its next write (see
/// [`MESSAGE_BATCH`]).
#[derive(Debug, Default)]
pub(crate) struct MessageBatch {
    messages: usize,
    bytes: usize,
}

impl MessageBatch {
    /// Whether the pump should stop taking messages and write.
    pub(crate) fn is_full(&self) -> bool {
        self.messages >= MESSAGE_BATCH || self.bytes >= MESSAGE_BATCH_BYTES
    }

    fn add(&mut self, bytes: usize) {
        self.messages += 1;
        self.bytes += bytes;
    }
}

pub(crate) struct Conn<M, S> {
    pub(crate) machine: M,
    socket: S,
    inbox: Inbox,
    outbox: Outbox,
    /// Descriptors handed over with sends, waiting for their transmit.
    send_fds: Vec<OwnedFd>,
    /// The pieces of messages sent in pieces or streamed, waiting for their
    /// transmit (the one with their `external` bytes), in order.
    send_pieces: VecDeque<External>,
    /// A streamed message's transmit, waiting for the outbox to empty: it
    /// is written then, and the transmits after it stay with the state
    /// machine until it is.
    streaming: Option<(Transmit, Box<dyn Streamed>)>,
    read_buffer: Vec<u8>,
    /// Unparsed bytes are `read_buffer[parsed..filled]`.
    parsed: usize,
    filled: usize,
    eof: bool,
}

impl<M: Endpoint, S: AsyncSocket> Conn<M, S> {
    pub(crate) fn new(machine: M, socket: S) -> Self {
        Self::resume(machine, socket, Inbox::new(), &[])
    }

    /// Takes over a socket that was read from already: `inbox` holds the
    /// descriptors and `unparsed` the bytes received but not yet parsed.
    pub(crate) fn resume(mut machine: M, socket: S, inbox: Inbox, unparsed: &[u8]) -> Self {
        // Stream data is received into recycled buffers (see `recycle`).
        machine.set_payload_alloc(recycle::take);
        let mut read_buffer = vec![0; READ_START.max(unparsed.len())];
        read_buffer[..unparsed.len()].copy_from_slice(unparsed);
        let mut outbox = Outbox::new();
        outbox.set_recycle(recycle::give);
        Conn {
            machine,
            socket,
            inbox,
            outbox,
            send_fds: Vec::new(),
            send_pieces: VecDeque::new(),
            streaming: None,
            read_buffer,
            parsed: 0,
            filled: unparsed.len(),
            eof: false,
        }
    }

    /// Whether large messages may travel as sealed memfds on this socket.
    pub(crate) fn passes_descriptors(&self) -> bool {
        self.socket.passes_descriptors()
    }

    /// Gives the socket up (dropped here) and returns what the connection
    /// holds besides: the machine, the descriptors received, and the bytes
    /// received but not parsed, for [`resume`](Self::resume) on another
    /// socket of the same channel.
    pub(crate) fn into_parts(self) -> (M, Inbox, Vec<u8>) {
        let unparsed = self.read_buffer[self.parsed..self.filled].to_vec();
        (self.machine, self.inbox, unparsed)
    }

    /// Whether bytes read earlier wait to be parsed: the next
    /// [`poll_event`](Self::poll_event) finds an event (or needs more of a
    /// frame) without a system call only then.
    pub(crate) fn has_unparsed_input(&self) -> bool {
        self.parsed < self.filled
    }

    /// The next event with its descriptors, or `None` at end of stream.
    ///
    /// Small frames are cut out of `read_buffer`, many per read; once a
    /// frame's header announced a payload of at least [`DIRECT_READ_MIN`]
    /// bytes and the buffer is used up, the rest of that payload is read
    /// straight into the payload's own buffer (no staging copy, no zeroing).
    pub(crate) fn poll_event(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Received<M::Event>>, Error>> {
        loop {
            if self.parsed < self.filled {
                let mut input = &self.read_buffer[self.parsed..self.filled];
                let before = input.len();
                let event = self.machine.handle_input(&mut input)?;
                self.parsed += before - input.len();
                if let Some(event) = event {
                    return Poll::Ready(self.deliver(event).map(Some));
                }
                continue;
            }
            if self.eof {
                // A stream that stops inside a frame is the peer's fault.
                self.machine.end_of_input()?;
                return Poll::Ready(Ok(None));
            }
            self.parsed = 0;
            self.filled = 0;
            let Conn {
                machine,
                socket,
                inbox,
                read_buffer,
                ..
            } = self;
            let direct = machine
                .payload_buffer()
                .filter(|payload| payload.remaining() >= DIRECT_READ_MIN);
            let read = if let Some(mut payload) = direct {
                // Only this frame's bytes: the next frame's descriptors
                // (which come with its first byte) stay in the socket.
                ready!(socket.poll_read(cx, &mut |stream: BorrowedFd<'_>| {
                    let fds_before = inbox.pending_fds();
                    let want = payload.remaining();
                    let len = inbox.read_append(&stream, payload.as_mut_vec(), want)?;
                    let drained = len < want && inbox.pending_fds() == fds_before;
                    Ok(ReadOutcome { len, drained })
                }))
                .map(|outcome| (outcome, true))
            } else {
                ready!(socket.poll_read(cx, &mut |stream: BorrowedFd<'_>| {
                    let fds_before = inbox.pending_fds();
                    let len = inbox.read(&stream, read_buffer)?;
                    // A short read without descriptors drained the socket
                    // (recvmsg on a stream socket stops early only after a
                    // message carrying descriptors).
                    let drained = len < read_buffer.len() && inbox.pending_fds() == fds_before;
                    Ok(ReadOutcome { len, drained })
                }))
                .map(|outcome| (outcome, false))
            };
            match read {
                Ok((ReadOutcome { len: 0, .. }, _)) => self.eof = true,
                Ok((ReadOutcome { len, .. }, false)) => {
                    self.filled = len;
                    if len == self.read_buffer.len() && len < READ_CHUNK {
                        // Bulk data: read more at a time from now on.
                        self.read_buffer.resize((len * 2).min(READ_CHUNK), 0);
                    }
                }
                Ok((_, true)) => {
                    // The payload may be complete: the machine says so with
                    // the event, given no further bytes.
                    if let Some(event) = self.machine.handle_input(&mut &[][..])? {
                        return Poll::Ready(self.deliver(event).map(Some));
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::ConnectionReset => self.eof = true,
                Err(error) => return Poll::Ready(Err(error.into())),
            }
        }
    }

    /// Pairs an event with the descriptors its frame declared.
    fn deliver(&mut self, event: M::Event) -> Result<Received<M::Event>, Error> {
        let count = M::event_fds(&event);
        let fds = self.inbox.take_fds(count).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a frame declared {count} descriptors that did not arrive"),
            )
        })?;
        Ok((event, fds))
    }

    /// Moves what the state machine queued into the outbox, up to a
    /// streamed message (kept in `streaming` until the outbox is written).
    fn collect_transmits(&mut self) {
        while self.streaming.is_none() {
            let Some(transmit) = self.machine.poll_transmit() else {
                break;
            };
            // (Most frames carry none: no drain, no collect.)
            let fds: Vec<OwnedFd> = if transmit.fds == 0 {
                Vec::new()
            } else {
                self.send_fds
                    .drain(..transmit.fds.min(self.send_fds.len()))
                    .collect()
            };
            let external = if transmit.external > 0 {
                self.send_pieces.pop_front()
            } else {
                None
            };
            match external {
                None => self.outbox.push_with(transmit, fds, Vec::new()),
                Some(External::Pieces(pieces)) => self.outbox.push_with(transmit, fds, pieces),
                Some(External::Streamed(message)) if fds.is_empty() && transmit.body.is_empty() => {
                    self.streaming = Some((transmit, message));
                }
                // Not made by `send_message` (a streamed message has no
                // descriptors, and its transmit no body); whole, copied.
                Some(External::Streamed(message)) => {
                    let bytes: Piece = Box::new(streamed::to_vec(&*message));
                    self.outbox.push_with(transmit, fds, vec![bytes]);
                }
            }
        }
    }

    /// Whether nothing waits to be written (after collecting).
    fn nothing_queued(&mut self) -> bool {
        self.collect_transmits();
        self.outbox.is_empty() && self.streaming.is_none()
    }

    /// Writes what is queued now on `fd` (this connection's socket), without
    /// waiting for readiness: for a fresh channel, whose empty socket buffer
    /// takes its first frames (a spawn's hello and Start), so that they leave
    /// before the rest of the spawn's setup instead of at its driver's first
    /// poll. What does not go out (a full buffer, an error) stays queued for
    /// [`poll_flush`](Self::poll_flush), which reports any error then.
    pub(crate) fn write_ahead(&mut self, fd: RawFd) {
        if !self.nothing_queued() {
            let _ = write_queued(&mut self.outbox, &mut self.streaming, &fd);
            self.recycle_spent();
        }
    }

    /// Hands the last written frame's buffer back to the state machine,
    /// for the next frame's bytes (an allocation less per call and answer).
    fn recycle_spent(&mut self) {
        if let Some(head) = self.outbox.take_spent() {
            self.machine.recycle(head);
        }
    }

    /// Whether everything queued has been written.
    pub(crate) fn is_flushed(&mut self) -> bool {
        self.nothing_queued()
    }

    /// Writes everything the state machine has queued.
    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        // More than one round only after a streamed message, whose
        // followers were left with the state machine.
        while !self.nothing_queued() {
            let Conn {
                socket,
                outbox,
                streaming,
                ..
            } = self;
            let written = socket.poll_write(cx, &mut |stream: BorrowedFd<'_>| {
                write_queued(outbox, streaming, &stream)
            });
            self.recycle_spent();
            ready!(written)?;
        }
        Poll::Ready(Ok(()))
    }

    /// Writes everything queued, as a future.
    pub(crate) async fn flush(&mut self) -> Result<(), Error> {
        std::future::poll_fn(|cx| self.poll_flush(cx)).await
    }
}

impl<M: Endpoint + SendData, S: AsyncSocket> Conn<M, S> {
    /// Queues one `process` message: its bytes in the frame, or its memfd
    /// as the frame's first descriptor, then the message's own descriptors.
    /// `batch` counts it (see [`MessageBatch`]).
    pub(crate) fn send_message(
        &mut self,
        (payload, fds): RawMessage,
        batch: &mut MessageBatch,
    ) -> Result<(), Error> {
        let bytes = match payload {
            Payload::Sealed { memfd, len } => {
                self.machine.send_shared_data(len, fds.len() + 1)?;
                self.send_fds.push(memfd);
                0
            }
            Payload::Inline(bytes) => {
                let len = bytes.len();
                self.machine.send_data(bytes, fds.len())?;
                len
            }
            // Its large `Bytes` written from their own buffers.
            Payload::Pieces(pieces) => {
                let len = pieces.len();
                self.machine.send_data_external(len, fds.len())?;
                self.send_pieces
                    .push_back(External::Pieces(pieces.into_pieces()));
                len
            }
            // Encoded by the write (see `streamed`).
            Payload::Streamed(message) => {
                let len = message.len();
                self.machine.send_data_external(len, fds.len())?;
                self.send_pieces.push_back(External::Streamed(message));
                len
            }
            // A received message sent on: its bytes, copied.
            Payload::Mapped(mapping) => {
                let bytes = parallel_proto::copy::to_vec(mapping.as_slice());
                let len = bytes.len();
                self.machine.send_data(bytes, fds.len())?;
                len
            }
        };
        batch.add(bytes);
        // Attached once queued: a refused send leaves no stray descriptors.
        self.send_fds.extend(fds);
        Ok(())
    }
}

/// Writes `outbox`, then the streamed message waiting behind it, if any
/// (what the socket does not take of it is queued in `outbox`).
///
/// # Errors
/// As [`Outbox::flush`]: `WouldBlock` while anything is left.
fn write_queued(
    outbox: &mut Outbox,
    streaming: &mut Option<(Transmit, Box<dyn Streamed>)>,
    socket: &impl AsRawFd,
) -> io::Result<()> {
    outbox.flush(socket)?;
    if let Some((transmit, message)) = streaming.take() {
        let rest = streamed::write(socket, transmit.head, &*message);
        if !rest.is_empty() {
            // As a body: once written it goes to the payload buffers' pool.
            let rest = Transmit {
                head: Vec::new(),
                body: rest,
                fds: 0,
                external: 0,
            };
            outbox.push(rest, []);
            outbox.flush(socket)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::{ErrorKind, Write};
    use std::os::unix::net::UnixStream;

    use nix::sys::socket::{getsockopt, sockopt};

    use super::{widen_send_buffer, MESSAGE_BATCH, MESSAGE_BATCH_BYTES, SEND_BUFFER};

    /// The cap the kernel puts on a requested send buffer.
    fn wmem_max() -> Option<usize> {
        std::fs::read_to_string("/proc/sys/net/core/wmem_max")
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    #[test]
    fn a_widened_channel_takes_a_whole_batch_before_its_worker_reads() {
        let (mut parent, worker) = UnixStream::pair().unwrap();
        parent.set_nonblocking(true).unwrap();
        let before = getsockopt(&parent, sockopt::SndBuf).unwrap();
        widen_send_buffer(&parent);
        let after = getsockopt(&parent, sockopt::SndBuf).unwrap();
        let Some(cap) = wmem_max() else {
            assert!(after >= before, "send buffer shrank: {before} -> {after}");
            return;
        };
        // Linux keeps twice the request, capped at `wmem_max`.
        let asked = SEND_BUFFER.min(cap);
        assert!(
            after >= (2 * asked).max(before),
            "send buffer {after} after asking for {SEND_BUFFER} (wmem_max {cap}, before {before})"
        );
        if asked < SEND_BUFFER {
            return; // Capped by the system: a batch may not fit.
        }
        // What the driver relies on: a whole batch of 64 KiB messages goes
        // in without a wait for room while the worker reads nothing.
        let message = vec![7u8; MESSAGE_BATCH_BYTES / MESSAGE_BATCH];
        for index in 0..MESSAGE_BATCH {
            match parent.write(&message) {
                Ok(written) => assert_eq!(written, message.len(), "message {index} cut short"),
                Err(error) if error.kind() == ErrorKind::WouldBlock => {
                    panic!("message {index} of a batch had to wait for room")
                }
                Err(error) => panic!("write: {error}"),
            }
        }
        drop(worker);
    }
}
