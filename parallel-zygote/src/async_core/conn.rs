//! One end of a channel over a readiness socket: a proto state machine, the
//! socket, and the descriptors in each direction.
//!
//! Poll-based: all state lives in `self`, so a caller may stop polling at any
//! point and resume later without losing bytes.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::task::{ready, Context, Poll};

use parallel_proto::Endpoint;

use super::runtime::{AsyncSocket, ReadOutcome};
use super::Error;
use crate::io::{Inbox, Outbox};

/// An event and the descriptors that came with it.
pub(crate) type Received<E> = (E, Vec<OwnedFd>);

/// Read size: large enough that bulk data moves in few system calls.
const READ_CHUNK: usize = 256 * 1024;

pub(crate) struct Conn<M, S> {
    pub(crate) machine: M,
    socket: S,
    inbox: Inbox,
    outbox: Outbox,
    /// Descriptors handed over with sends, waiting for their transmit.
    send_fds: Vec<OwnedFd>,
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
    pub(crate) fn resume(machine: M, socket: S, inbox: Inbox, unparsed: &[u8]) -> Self {
        let mut read_buffer = vec![0; READ_CHUNK.max(unparsed.len())];
        read_buffer[..unparsed.len()].copy_from_slice(unparsed);
        Conn {
            machine,
            socket,
            inbox,
            outbox: Outbox::new(),
            send_fds: Vec::new(),
            read_buffer,
            parsed: 0,
            filled: unparsed.len(),
            eof: false,
        }
    }

    /// Queues descriptors for the next transmit that declares them.
    pub(crate) fn attach_fds(&mut self, fds: Vec<OwnedFd>) {
        self.send_fds.extend(fds);
    }

    /// The next event with its descriptors, or `None` at end of stream.
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
                    let count = M::event_fds(&event);
                    let fds = self.inbox.take_fds(count).ok_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("a frame declared {count} descriptors that did not arrive"),
                        )
                    })?;
                    return Poll::Ready(Ok(Some((event, fds))));
                }
                continue;
            }
            if self.eof {
                return Poll::Ready(Ok(None));
            }
            self.parsed = 0;
            self.filled = 0;
            let Conn {
                socket,
                inbox,
                read_buffer,
                ..
            } = self;
            let read = ready!(socket.poll_read(cx, &mut |stream: BorrowedFd<'_>| {
                let fds_before = inbox.pending_fds();
                let len = inbox.read(&stream, read_buffer)?;
                // A short read without descriptors drained the socket
                // (recvmsg on a stream socket stops early only after a
                // message carrying descriptors).
                let drained = len < read_buffer.len() && inbox.pending_fds() == fds_before;
                Ok(ReadOutcome { len, drained })
            }));
            match read {
                Ok(ReadOutcome { len: 0, .. }) => self.eof = true,
                Ok(ReadOutcome { len, .. }) => self.filled = len,
                Err(error) if error.kind() == io::ErrorKind::ConnectionReset => self.eof = true,
                Err(error) => return Poll::Ready(Err(error.into())),
            }
        }
    }

    /// Moves what the state machine queued into the outbox.
    fn collect_transmits(&mut self) {
        while let Some(transmit) = self.machine.poll_transmit() {
            let fds: Vec<OwnedFd> = self
                .send_fds
                .drain(..transmit.fds.min(self.send_fds.len()))
                .collect();
            self.outbox.push(transmit, fds);
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
