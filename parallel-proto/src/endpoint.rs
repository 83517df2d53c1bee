//! The one shape shared by the four state machines, for code that drives any
//! of them over a transport: the adapters' connection, a custom transport,
//! the fuzz targets and the in-memory test harness.

use crate::channel::{ParentChannel, ParentEvent, WorkerChannel, WorkerEvent};
use crate::frame::{PayloadAlloc, PayloadBuffer};
use crate::zygote::{ServerEvent, ZygoteClient, ZygoteEvent, ZygoteServer};
use crate::{Error, Transmit};

/// A sans-IO state machine as a transport sees it: bytes in, events and
/// transmits out.
///
/// The run-loop contract is the same for all four machines: after every
/// input (and after every method that queues a message), drain
/// [`poll_transmit`](Self::poll_transmit) until it returns `None` and write
/// what it gives, in order; call [`handle_input`](Self::handle_input) with the
/// bytes read until it returns `Ok(None)` with bytes left (it needs more).
///
/// ```
/// use parallel_proto::channel::{ParentChannel, WorkerChannel};
/// use parallel_proto::{Endpoint, Limits};
///
/// /// Moves everything `from` wants to send into `wire`.
/// fn pump(from: &mut impl Endpoint, wire: &mut Vec<u8>) {
///     while let Some(transmit) = from.poll_transmit() {
///         wire.extend_from_slice(&transmit.head);
///         wire.extend_from_slice(&transmit.body);
///     }
/// }
///
/// let mut parent = ParentChannel::new(Limits::default());
/// let mut worker = WorkerChannel::new(Limits::default(), 42);
/// let mut wire = Vec::new();
/// pump(&mut worker, &mut wire);
/// let mut input = wire.as_slice();
/// let event = Endpoint::handle_input(&mut parent, &mut input).unwrap();
/// assert!(matches!(event, Some(parallel_proto::channel::ParentEvent::Ready { pid: 42 })));
/// ```
pub trait Endpoint {
    /// What [`handle_input`](Self::handle_input) yields.
    type Event: std::fmt::Debug;

    /// Consumes bytes from the front of `input` and yields at most one event.
    ///
    /// # Errors
    /// The peer broke the protocol or a limit; the machine is failed for
    /// good and every later call returns the same error.
    fn handle_input(&mut self, input: &mut &[u8]) -> Result<Option<Self::Event>, Error>;

    /// The payload of the frame being received, when the transport may
    /// append the next payload bytes to it directly instead of passing them
    /// to [`handle_input`](Self::handle_input) (bulk data then skips the
    /// transport's read buffer); then call `handle_input` with an empty input
    /// for the event. `None` by default and whenever no payload is incomplete.
    /// See [`FrameDecoder::payload_buffer`](crate::FrameDecoder::payload_buffer).
    fn payload_buffer(&mut self) -> Option<PayloadBuffer<'_>> {
        None
    }

    /// Makes the machine receive stream data's payloads into buffers from
    /// `alloc` (ones the transport recycles). Ignored by default (the
    /// zygote machines carry no stream data). See
    /// [`FrameDecoder::set_payload_alloc`](crate::FrameDecoder::set_payload_alloc).
    fn set_payload_alloc(&mut self, alloc: PayloadAlloc) {
        let _ = alloc;
    }

    /// Tells the machine the transport saw the end of the stream. Ok by
    /// default; the channel machines fail (sticky) when it cut a frame.
    ///
    /// # Errors
    /// The stream ended inside a frame.
    fn end_of_input(&mut self) -> Result<(), Error> {
        Ok(())
    }

    /// The next bytes (and descriptor count) to write, in order.
    #[must_use]
    fn poll_transmit(&mut self) -> Option<Transmit>;

    /// Gives back a written transmit's `head`, for a later frame's bytes
    /// (see [`ParentChannel::recycle`]). Drops it by default.
    fn recycle(&mut self, buffer: Vec<u8>) {
        drop(buffer);
    }

    /// How many descriptors came along with `event`, to take from the
    /// transport's queue of received descriptors, in order.
    fn event_fds(event: &Self::Event) -> usize;
}

impl Endpoint for ParentChannel {
    type Event = ParentEvent;
    fn handle_input(&mut self, input: &mut &[u8]) -> Result<Option<ParentEvent>, Error> {
        ParentChannel::handle_input(self, input)
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        ParentChannel::poll_transmit(self)
    }
    fn recycle(&mut self, buffer: Vec<u8>) {
        ParentChannel::recycle(self, buffer);
    }
    fn payload_buffer(&mut self) -> Option<PayloadBuffer<'_>> {
        ParentChannel::payload_buffer(self)
    }
    fn set_payload_alloc(&mut self, alloc: PayloadAlloc) {
        ParentChannel::set_payload_alloc(self, alloc);
    }
    fn end_of_input(&mut self) -> Result<(), Error> {
        ParentChannel::end_of_input(self)
    }
    fn event_fds(event: &ParentEvent) -> usize {
        match event {
            ParentEvent::Data { fds, .. } | ParentEvent::SharedData { fds, .. } => {
                usize::from(*fds)
            }
            _ => 0,
        }
    }
}

impl Endpoint for WorkerChannel {
    type Event = WorkerEvent;
    fn handle_input(&mut self, input: &mut &[u8]) -> Result<Option<WorkerEvent>, Error> {
        WorkerChannel::handle_input(self, input)
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        WorkerChannel::poll_transmit(self)
    }
    fn recycle(&mut self, buffer: Vec<u8>) {
        WorkerChannel::recycle(self, buffer);
    }
    fn payload_buffer(&mut self) -> Option<PayloadBuffer<'_>> {
        WorkerChannel::payload_buffer(self)
    }
    fn set_payload_alloc(&mut self, alloc: PayloadAlloc) {
        WorkerChannel::set_payload_alloc(self, alloc);
    }
    fn end_of_input(&mut self) -> Result<(), Error> {
        WorkerChannel::end_of_input(self)
    }
    fn event_fds(event: &WorkerEvent) -> usize {
        match event {
            WorkerEvent::Data { fds, .. } | WorkerEvent::SharedData { fds, .. } => {
                usize::from(*fds)
            }
            _ => 0,
        }
    }
}

impl Endpoint for ZygoteClient {
    type Event = ZygoteEvent;
    fn handle_input(&mut self, input: &mut &[u8]) -> Result<Option<ZygoteEvent>, Error> {
        ZygoteClient::handle_input(self, input)
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        ZygoteClient::poll_transmit(self)
    }
    fn recycle(&mut self, buffer: Vec<u8>) {
        ZygoteClient::recycle(self, buffer);
    }
    fn event_fds(_event: &ZygoteEvent) -> usize {
        // The zygote sends no descriptors to its client.
        0
    }
}

impl Endpoint for ZygoteServer {
    type Event = ServerEvent;
    fn handle_input(&mut self, input: &mut &[u8]) -> Result<Option<ServerEvent>, Error> {
        ZygoteServer::handle_input(self, input)
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        ZygoteServer::poll_transmit(self)
    }
    fn recycle(&mut self, buffer: Vec<u8>) {
        ZygoteServer::recycle(self, buffer);
    }
    fn event_fds(event: &ServerEvent) -> usize {
        match event {
            ServerEvent::Spawn { fds, .. } => usize::from(*fds),
            // A snapshot request carries the derived zygote's socket.
            ServerEvent::Snapshot { .. } => 1,
            _ => 0,
        }
    }
}
