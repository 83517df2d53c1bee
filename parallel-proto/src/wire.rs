//! The plumbing every state machine shares: a frame decoder whose first
//! error is final, and the queue of transmits waiting for the transport.

use crate::frame::{FrameDecoder, FrameRef, PayloadAlloc, PayloadBuffer};
use crate::transmit::{Transmit, TransmitQueue};
use crate::{Error, Limits, LocalError, RemoteError};

#[derive(Debug)]
pub(crate) struct Wire {
    pub(crate) limits: Limits,
    decoder: FrameDecoder,
    out: TransmitQueue,
    failed: Option<RemoteError>,
}

impl Wire {
    pub(crate) fn new(limits: Limits) -> Self {
        Wire {
            limits,
            decoder: FrameDecoder::new(limits),
            out: TransmitQueue::default(),
            failed: None,
        }
    }

    /// The sticky remote error, if the peer broke the protocol.
    pub(crate) fn check_failed(&self) -> Result<(), Error> {
        match &self.failed {
            Some(error) => Err(error.clone().into()),
            None => Ok(()),
        }
    }

    /// The next whole frame from `input`, or `None` once `input` is used up.
    pub(crate) fn next_frame<'a>(
        &mut self,
        input: &mut &'a [u8],
    ) -> Result<Option<FrameRef<'a>>, Error> {
        self.check_failed()?;
        match self.decoder.next(input) {
            Ok(frame) => Ok(frame),
            Err(error) => Err(self.fail(error.into())),
        }
    }

    /// The payload of the frame being read, for the transport to fill
    /// directly (see [`FrameDecoder::payload_buffer`]).
    pub(crate) fn payload_buffer(&mut self) -> Option<PayloadBuffer<'_>> {
        if self.failed.is_some() {
            return None;
        }
        self.decoder.payload_buffer()
    }

    /// See [`FrameDecoder::set_payload_alloc`].
    pub(crate) fn set_payload_alloc(&mut self, alloc: PayloadAlloc) {
        self.decoder.set_payload_alloc(alloc);
    }

    /// The allocator of stream data's payloads, if one was set.
    pub(crate) fn payload_alloc(&self) -> Option<PayloadAlloc> {
        self.decoder.payload_alloc()
    }

    /// The transport saw the end of the stream: an error (sticky) if it cut
    /// a frame short.
    pub(crate) fn end_of_input(&mut self) -> Result<(), Error> {
        self.check_failed()?;
        if self.decoder.is_at_boundary() {
            return Ok(());
        }
        let buffered = self.decoder.buffered();
        Err(self.fail(crate::FrameError::Truncated { buffered }.into()))
    }

    /// Records a remote error from applying a frame, making it sticky.
    pub(crate) fn settle<E>(
        &mut self,
        applied: Result<Option<E>, RemoteError>,
    ) -> Result<Option<E>, Error> {
        applied.map_err(|error| self.fail(error))
    }

    fn fail(&mut self, error: RemoteError) -> Error {
        self.failed = Some(error.clone());
        error.into()
    }

    pub(crate) fn queue(
        &mut self,
        kind: u8,
        fds: usize,
        payload: Vec<u8>,
    ) -> Result<(), LocalError> {
        self.out.push(&self.limits, kind, fds, payload)
    }

    /// Queues a frame whose payload is `prefix` then `bulk`, moved in (see
    /// [`TransmitQueue::push_split`]).
    pub(crate) fn queue_split(
        &mut self,
        kind: u8,
        fds: usize,
        prefix: &[u8],
        bulk: Vec<u8>,
    ) -> Result<(), LocalError> {
        self.out.push_split(&self.limits, kind, fds, prefix, bulk)
    }

    /// Queues a frame whose payload `encode` appends in place (see
    /// [`TransmitQueue::push_encoded`]).
    pub(crate) fn queue_encoded(
        &mut self,
        kind: u8,
        fds: usize,
        size_hint: usize,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), LocalError> {
        self.out
            .push_encoded(&self.limits, kind, fds, size_hint, encode)
    }

    /// Queues the header of a frame whose payload the transport writes
    /// (see [`TransmitQueue::push_external`]).
    pub(crate) fn queue_external(
        &mut self,
        kind: u8,
        fds: usize,
        len: usize,
    ) -> Result<(), LocalError> {
        self.out.push_external(&self.limits, kind, fds, len)
    }

    pub(crate) fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop()
    }

    pub(crate) fn recycle(&mut self, buffer: Vec<u8>) {
        self.out.recycle(buffer);
    }

    pub(crate) fn queued_bytes(&self) -> usize {
        self.out.queued_bytes()
    }
}
