//! One end of a worker channel bound to a tokio `UnixStream`: the proto
//! state machine, the socket, and the descriptors in each direction.
//!
//! Every method is cancel-safe: state lives in `self`, and the only await
//! points wait for readiness, so a `select!` may drop a call at any time.

use std::io;
use std::os::fd::OwnedFd;

use parallel_proto::channel::{ParentChannel, ParentEvent, WorkerChannel, WorkerEvent};
use parallel_proto::Transmit;
use parallel_zygote::io::{Inbox, Outbox};
use std::os::unix::net::UnixStream;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::Error;

/// The two channel state machines, seen the same way.
pub(crate) trait Machine {
    type Event;
    fn handle_input(
        &mut self,
        input: &mut &[u8],
    ) -> Result<Option<Self::Event>, parallel_proto::Error>;
    fn poll_transmit(&mut self) -> Option<Transmit>;
    /// Descriptors an event says came along.
    fn event_fds(event: &Self::Event) -> usize;
}

impl Machine for ParentChannel {
    type Event = ParentEvent;
    fn handle_input(
        &mut self,
        input: &mut &[u8],
    ) -> Result<Option<ParentEvent>, parallel_proto::Error> {
        ParentChannel::handle_input(self, input)
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        ParentChannel::poll_transmit(self)
    }
    fn event_fds(event: &ParentEvent) -> usize {
        match event {
            ParentEvent::Data { fds, .. } => *fds as usize,
            _ => 0,
        }
    }
}

impl Machine for WorkerChannel {
    type Event = WorkerEvent;
    fn handle_input(
        &mut self,
        input: &mut &[u8],
    ) -> Result<Option<WorkerEvent>, parallel_proto::Error> {
        WorkerChannel::handle_input(self, input)
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        WorkerChannel::poll_transmit(self)
    }
    fn event_fds(event: &WorkerEvent) -> usize {
        match event {
            WorkerEvent::Data { fds, .. } => *fds as usize,
            _ => 0,
        }
    }
}

/// Read size: large enough that bulk data moves in few system calls.
const READ_CHUNK: usize = 256 * 1024;

pub(crate) struct Conn<M: Machine> {
    pub(crate) machine: M,
    /// Registered for readability only: a socket registered for writing
    /// wakes the reactor every time the peer drains it, which on a
    /// request/response channel is once per message, for nothing.
    reader: AsyncFd<UnixStream>,
    /// A second descriptor for the same socket, registered for writability
    /// the first time a write would block (bulk transfers), then kept.
    writer: Option<AsyncFd<UnixStream>>,
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

impl<M: Machine> Conn<M> {
    pub(crate) fn new(machine: M, stream: UnixStream) -> Result<Self, Error> {
        Self::resume(machine, stream, Inbox::new(), &[])
    }

    /// Takes over a socket that was read from already: `inbox` holds the
    /// descriptors and `unparsed` the bytes received but not yet parsed.
    pub(crate) fn resume(
        machine: M,
        stream: UnixStream,
        inbox: Inbox,
        unparsed: &[u8],
    ) -> Result<Self, Error> {
        stream.set_nonblocking(true)?;
        let mut read_buffer = vec![0; READ_CHUNK.max(unparsed.len())];
        read_buffer[..unparsed.len()].copy_from_slice(unparsed);
        Ok(Conn {
            machine,
            reader: register(stream, Interest::READABLE)?,
            writer: None,
            inbox,
            outbox: Outbox::new(),
            send_fds: Vec::new(),
            read_buffer,
            parsed: 0,
            filled: unparsed.len(),
            eof: false,
        })
    }

    /// Queues descriptors for the next transmit that declares them.
    pub(crate) fn attach_fds(&mut self, fds: Vec<OwnedFd>) {
        self.send_fds.extend(fds);
    }

    /// The next event with its descriptors, or `None` at end of stream.
    pub(crate) async fn next_event(&mut self) -> Result<Option<(M::Event, Vec<OwnedFd>)>, Error> {
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
                    return Ok(Some((event, fds)));
                }
                continue;
            }
            if self.eof {
                return Ok(None);
            }
            self.parsed = 0;
            self.filled = 0;
            let Conn {
                reader,
                inbox,
                read_buffer,
                ..
            } = self;
            let mut ready = reader.readable().await?;
            let fds_before = inbox.pending_fds();
            match ready.try_io(|socket| inbox.read(socket.get_ref(), read_buffer)) {
                Ok(Ok(0)) => self.eof = true,
                Ok(Ok(read)) => {
                    // A short read without descriptors drained the socket
                    // (recvmsg on a stream socket stops early only after a
                    // message carrying descriptors): skip the read that
                    // would only say EAGAIN.
                    if read < read_buffer.len() && inbox.pending_fds() == fds_before {
                        ready.clear_ready();
                    }
                    self.filled = read;
                }
                Ok(Err(error)) if error.kind() == io::ErrorKind::ConnectionReset => self.eof = true,
                Ok(Err(error)) => return Err(error.into()),
                Err(_would_block) => {}
            }
        }
    }

    /// Writes everything the state machine has queued.
    pub(crate) async fn flush(&mut self) -> Result<(), Error> {
        while let Some(transmit) = self.machine.poll_transmit() {
            let fds: Vec<OwnedFd> = self
                .send_fds
                .drain(..transmit.fds.min(self.send_fds.len()))
                .collect();
            self.outbox.push(transmit, fds);
        }
        loop {
            match self.outbox.flush(self.reader.get_ref()) {
                Ok(()) => return Ok(()),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Err(error.into()),
            }
            if self.writer.is_none() {
                let copy = self.reader.get_ref().try_clone()?;
                self.writer = Some(register(copy, Interest::WRITABLE)?);
            }
            let writer = self.writer.as_ref().expect("set above");
            let mut ready = writer.writable().await?;
            // Clears readiness only if the write would still block.
            let outbox = &mut self.outbox;
            match ready.try_io(|socket| outbox.flush(socket.get_ref())) {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(error)) if error.kind() == io::ErrorKind::WouldBlock => ready.clear_ready(),
                Ok(Err(error)) => return Err(error.into()),
                Err(_would_block) => {}
            }
        }
    }
}

/// Registers a socket with the reactor for `interest` only.
///
/// `AsyncFd::with_interest` is deprecated because it cannot stop a caller
/// from closing a borrowed descriptor while it is registered. Here the
/// `AsyncFd` owns the socket, so the descriptor lives exactly as long as
/// the registration, which is the property the replacement (an `unsafe fn`)
/// asks its caller to promise.
#[allow(deprecated)]
fn register(socket: UnixStream, interest: Interest) -> io::Result<AsyncFd<UnixStream>> {
    AsyncFd::with_interest(socket, interest)
}
