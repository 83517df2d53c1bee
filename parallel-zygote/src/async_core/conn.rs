//! One end of a channel over a readiness socket: a proto state machine, the
//! socket, and the descriptors in each direction.
//!
//! Poll-based: all state lives in `self`, so a caller may stop polling at any
//! point and resume later without losing bytes.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::task::{ready, Context, Poll};

use parallel_proto::Endpoint;

use super::messages::RawMessage;
use super::recycle;
use super::runtime::{AsyncSocket, ReadOutcome};
use super::shared::{Payload, SendData};
use super::Error;
use crate::io::{Inbox, Outbox, Piece};

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

/// The rest of a payload of at least this many bytes is read straight into
/// its own buffer rather than through `read_buffer` (however little of it
/// is left: that read also takes the next frame's header, see
/// `NEXT_HEADER_READ`, which keeps a stream of large frames out of
/// `read_buffer`).
const DIRECT_READ_MIN: usize = 16 * 1024;

/// What a read into a payload's own buffer takes after the payload's end:
/// the next frame's header, no more (its payload, if large, is read
/// straight into its own buffer too). At most `READ_START`.
const NEXT_HEADER_READ: usize = parallel_proto::frame::HEADER_LEN;

pub(crate) struct Conn<M, S> {
    pub(crate) machine: M,
    socket: S,
    inbox: Inbox,
    outbox: Outbox,
    /// Descriptors handed over with sends, waiting for their transmit.
    send_fds: Vec<OwnedFd>,
    /// The pieces of messages sent in pieces, waiting for their transmit
    /// (the one with their `external` bytes), in order.
    send_pieces: VecDeque<Vec<Piece>>,
    read_buffer: Vec<u8>,
    /// Unparsed bytes are `read_buffer[parsed..filled]`.
    parsed: usize,
    filled: usize,
    /// The last read was into a large payload's own buffer: the next
    /// staging read takes only the next frame's header.
    after_large: bool,
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
            read_buffer,
            parsed: 0,
            filled: unparsed.len(),
            after_large: false,
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
    /// straight into the payload's own buffer (no staging copy, no zeroing),
    /// together with the next frame's header and no more: back-to-back
    /// large frames are each read into their own buffer.
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
                after_large,
                ..
            } = self;
            let mut staged = 0;
            let direct = machine
                .payload_buffer()
                .filter(|payload| payload.frame_len() >= DIRECT_READ_MIN);
            let direct_read = direct.is_some();
            let read = if let Some(mut payload) = direct {
                // This frame's bytes, then the next frame's header alone:
                // if that frame is large too, its payload is then read
                // straight into its own buffer in turn (a stream of large
                // messages goes through no staging copy), and small frames
                // after it are read in bulk by the staging read as before.
                let next_header = &mut read_buffer[..NEXT_HEADER_READ];
                ready!(socket.poll_read(cx, &mut |stream: BorrowedFd<'_>| {
                    let fds_before = inbox.pending_fds();
                    let want = payload.remaining();
                    let (len, then) =
                        inbox.read_append_then(&stream, payload.as_mut_vec(), want, next_header)?;
                    let drained =
                        len + then < want + NEXT_HEADER_READ && inbox.pending_fds() == fds_before;
                    staged = then;
                    Ok(ReadOutcome {
                        len: len + then,
                        drained,
                    })
                }))
                .map(|outcome| (outcome, true))
            } else {
                // Right after a large frame whose read did not bring the
                // next header (it was not written yet), only that header:
                // a staging read of the whole buffer would take the next
                // large frames into it, each then copied out.
                let limit = if *after_large {
                    NEXT_HEADER_READ
                } else {
                    read_buffer.len()
                };
                let staging = &mut read_buffer[..limit];
                ready!(socket.poll_read(cx, &mut |stream: BorrowedFd<'_>| {
                    let fds_before = inbox.pending_fds();
                    let len = inbox.read(&stream, staging)?;
                    // A short read without descriptors drained the socket
                    // (recvmsg on a stream socket stops early only after a
                    // message carrying descriptors).
                    let drained = len < staging.len() && inbox.pending_fds() == fds_before;
                    Ok(ReadOutcome { len, drained })
                }))
                .map(|outcome| (outcome, false))
            };
            let limited = std::mem::replace(&mut self.after_large, direct_read);
            match read {
                Ok((ReadOutcome { len: 0, .. }, _)) => self.eof = true,
                Ok((ReadOutcome { len, .. }, false)) => {
                    self.filled = len;
                    if !limited && len == self.read_buffer.len() && len < READ_CHUNK {
                        // Bulk data: read more at a time from now on.
                        self.read_buffer.resize((len * 2).min(READ_CHUNK), 0);
                    }
                }
                Ok((_, true)) => {
                    // The next frame's header, if it came, is parsed after.
                    self.filled = staged;
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

    /// Moves what the state machine queued into the outbox.
    fn collect_transmits(&mut self) {
        while let Some(transmit) = self.machine.poll_transmit() {
            // (Most frames carry none: no drain, no collect.)
            let fds: Vec<OwnedFd> = if transmit.fds == 0 {
                Vec::new()
            } else {
                self.send_fds
                    .drain(..transmit.fds.min(self.send_fds.len()))
                    .collect()
            };
            let pieces = if transmit.external > 0 {
                self.send_pieces.pop_front().unwrap_or_default()
            } else {
                Vec::new()
            };
            self.outbox.push_with(transmit, fds, pieces);
        }
    }

    /// Writes what is queued now on `fd` (this connection's socket), without
    /// waiting for readiness: for a fresh channel, whose empty socket buffer
    /// takes its first frames (a spawn's hello and Start), so that they leave
    /// before the rest of the spawn's setup instead of at its driver's first
    /// poll. What does not go out (a full buffer, an error) stays queued for
    /// [`poll_flush`](Self::poll_flush), which reports any error then.
    pub(crate) fn write_ahead(&mut self, fd: RawFd) {
        self.collect_transmits();
        if !self.outbox.is_empty() {
            let _ = self.outbox.flush(&fd);
        }
    }

    /// Whether everything queued has been written.
    pub(crate) fn is_flushed(&mut self) -> bool {
        self.collect_transmits();
        self.outbox.is_empty()
    }

    /// Writes everything the state machine has queued.
    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.collect_transmits();
        if self.outbox.is_empty() {
            return Poll::Ready(Ok(()));
        }
        let Conn { socket, outbox, .. } = self;
        ready!(socket.poll_write(cx, &mut |stream: BorrowedFd<'_>| outbox.flush(&stream)))?;
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
    pub(crate) fn send_message(&mut self, (payload, fds): RawMessage) -> Result<(), Error> {
        match payload {
            Payload::Sealed { memfd, len } => {
                self.machine.send_shared_data(len, fds.len() + 1)?;
                self.send_fds.push(memfd);
            }
            Payload::Inline(bytes) => self.machine.send_data(bytes, fds.len())?,
            // Its large `Bytes` written from their own buffers.
            Payload::Pieces(pieces) => {
                self.machine.send_data_external(pieces.len(), fds.len())?;
                self.send_pieces.push_back(pieces.into_pieces());
            }
            // A received message sent on: its bytes, copied.
            Payload::Mapped(mapping) => self
                .machine
                .send_data(mapping.as_slice().to_vec(), fds.len())?,
        }
        // Attached once queued: a refused send leaves no stray descriptors.
        self.send_fds.extend(fds);
        Ok(())
    }
}
