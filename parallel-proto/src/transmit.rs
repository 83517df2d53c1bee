//! The outgoing side shared by every state machine: a queue of byte runs,
//! each tagged with the file descriptors that must be sent with its first byte.

use std::collections::VecDeque;

use crate::frame::checked_header;
use crate::{Limits, LocalError};

/// Payloads at least this large are moved into their own [`Transmit`] rather
/// than copied, so bulk data crosses this crate without a copy.
pub(crate) const MOVE_THRESHOLD: usize = 16 * 1024;

/// Bytes to write to the transport, in order.
///
/// Write `head` then `body` (a vectored write does both at once), then the
/// `external` payload bytes the transport holds itself (see
/// [`ParentChannel::send_data_external`](crate::channel::ParentChannel::send_data_external)).
/// When `fds` is not zero, the transport must pass that many descriptors (the next ones
/// in the order the caller handed them over) with the first byte of `head`,
/// e.g. as `SCM_RIGHTS` ancillary data of the `sendmsg` that writes it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Frame headers and small payloads, copied together.
    pub head: Vec<u8>,
    /// A large payload, moved in without a copy (empty for small frames).
    pub body: Vec<u8>,
    /// File descriptors to send with the first byte of `head`.
    pub fds: usize,
    /// Payload bytes that follow `body`, which this crate never saw: the
    /// transport writes them from buffers of its own (0 for every frame
    /// whose bytes are in `head` and `body`).
    pub external: usize,
}

impl Transmit {
    /// Total bytes to write.
    pub fn len(&self) -> usize {
        self.head.len() + self.body.len() + self.external
    }

    /// True when nothing may be appended to `head`: bytes after it (a body,
    /// or external bytes) are written before anything added there would be.
    fn is_closed(&self) -> bool {
        !self.body.is_empty() || self.external > 0
    }

    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The largest written `head` kept for the next frame (see
/// [`TransmitQueue::recycle`]): calls, answers and small messages fit many
/// times over; a larger buffer is freed rather than held for the
/// connection's life.
pub(crate) const RECYCLE_MAX: usize = 64 * 1024;

/// Queue of encoded frames awaiting the transport.
#[derive(Debug, Default)]
pub(crate) struct TransmitQueue {
    queue: VecDeque<Transmit>,
    queued: usize,
    /// A written transmit's `head`, empty, for the next frame that starts a
    /// run of its own (see [`recycle`](Self::recycle)).
    spare: Vec<u8>,
}

impl TransmitQueue {
    /// Encodes one frame at the back of the queue, or fails with nothing queued.
    pub(crate) fn push(
        &mut self,
        limits: &Limits,
        kind: u8,
        fds: usize,
        payload: Vec<u8>,
    ) -> Result<(), LocalError> {
        let header = checked_header(kind, fds, payload.len(), limits)?;
        let adding = crate::frame::HEADER_LEN + payload.len();
        check_room(self.queued, limits, adding)?;
        self.queued += adding;
        // Coalesce small, fd-less frames into the previous run so that a burst of
        // control messages becomes one write; fds must start a run of their own.
        let coalesce = fds == 0
            && payload.len() < MOVE_THRESHOLD
            && self.queue.back().is_some_and(|last| !last.is_closed());
        if coalesce {
            let last = self.queue.back_mut().expect("checked above");
            last.head.extend_from_slice(&header.to_bytes());
            crate::copy::extend_from_slice(&mut last.head, &payload);
            return Ok(());
        }
        let mut head = std::mem::take(&mut self.spare);
        head.extend_from_slice(&header.to_bytes());
        let mut transmit = Transmit {
            head,
            body: Vec::new(),
            fds,
            external: 0,
        };
        if payload.len() < MOVE_THRESHOLD {
            crate::copy::extend_from_slice(&mut transmit.head, &payload);
        } else {
            transmit.body = payload;
        }
        self.queue.push_back(transmit);
        Ok(())
    }

    /// [`push`](Self::push) for a payload that is `prefix` (a few bytes of
    /// fields) then `bulk` (a call's arguments, a result): the prefix is
    /// copied after the header and `bulk` is moved in as the body, so the
    /// bulk bytes are not copied into a payload buffer first (a fresh
    /// buffer of their size, faulted in page by page). Fails with nothing
    /// queued, as `push` does.
    pub(crate) fn push_split(
        &mut self,
        limits: &Limits,
        kind: u8,
        fds: usize,
        prefix: &[u8],
        bulk: Vec<u8>,
    ) -> Result<(), LocalError> {
        let len = prefix.len() + bulk.len();
        let header = checked_header(kind, fds, len, limits)?;
        let adding = crate::frame::HEADER_LEN + len;
        check_room(self.queued, limits, adding)?;
        self.queued += adding;
        let mut head = std::mem::take(&mut self.spare);
        head.extend_from_slice(&header.to_bytes());
        head.extend_from_slice(prefix);
        self.queue.push_back(Transmit {
            head,
            body: bulk,
            fds,
            external: 0,
        });
        Ok(())
    }

    /// [`push`](Self::push) for a payload that `encode` appends to a `Vec`:
    /// it is encoded straight after its header in the run it joins (or a
    /// new one), rather than into a buffer of its own that is then copied
    /// there (a call's or a reply's frame costs one allocation and one copy
    /// less). `size_hint` is about the payload's encoded length: room for
    /// it is made at once, so that the run is not reallocated as the
    /// payload grows it. Fails with nothing queued, as `push` does.
    pub(crate) fn push_encoded(
        &mut self,
        limits: &Limits,
        kind: u8,
        fds: usize,
        size_hint: usize,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), LocalError> {
        // Joins the previous run under the rule `push` follows; a payload
        // that turns out large stays in the run too (it was never copied).
        let coalesce = fds == 0 && self.queue.back().is_some_and(|last| !last.is_closed());
        let queued = self.queued;
        // A frame of its own takes the spare buffer (a lone call's or
        // answer's frame then allocates nothing).
        let mut fresh = if coalesce {
            Vec::new()
        } else {
            std::mem::take(&mut self.spare)
        };
        let head = match self.queue.back_mut() {
            Some(last) if coalesce => &mut last.head,
            _ => &mut fresh,
        };
        head.reserve(crate::frame::HEADER_LEN + size_hint);
        let start = head.len();
        head.extend_from_slice(&[0; crate::frame::HEADER_LEN]);
        encode(head);
        let len = head.len() - start - crate::frame::HEADER_LEN;
        let adding = crate::frame::HEADER_LEN + len;
        let checked = checked_header(kind, fds, len, limits).and_then(|header| {
            check_room(queued, limits, adding)?;
            Ok(header)
        });
        let header = match checked {
            Ok(header) => header,
            Err(error) => {
                head.truncate(start);
                if !coalesce {
                    self.recycle(fresh);
                }
                return Err(error);
            }
        };
        head[start..start + crate::frame::HEADER_LEN].copy_from_slice(&header.to_bytes());
        self.queued += adding;
        if !coalesce {
            self.queue.push_back(Transmit {
                head: fresh,
                body: Vec::new(),
                fds,
                external: 0,
            });
        }
        Ok(())
    }

    /// Queues the header of a frame whose `len` payload bytes the transport
    /// holds and writes itself ([`Transmit::external`]), checked against the
    /// limits as [`push`](Self::push) checks a payload of that length.
    /// Fails with nothing queued.
    pub(crate) fn push_external(
        &mut self,
        limits: &Limits,
        kind: u8,
        fds: usize,
        len: usize,
    ) -> Result<(), LocalError> {
        let header = checked_header(kind, fds, len, limits)?;
        let adding = crate::frame::HEADER_LEN + len;
        check_room(self.queued, limits, adding)?;
        self.queued += adding;
        self.queue.push_back(Transmit {
            head: header.to_bytes().to_vec(),
            body: Vec::new(),
            fds,
            external: len,
        });
        Ok(())
    }

    pub(crate) fn pop(&mut self) -> Option<Transmit> {
        let transmit = self.queue.pop_front()?;
        self.queued -= transmit.len();
        Some(transmit)
    }

    pub(crate) fn queued_bytes(&self) -> usize {
        self.queued
    }

    /// Keeps `buffer` (a written transmit's `head`), emptied, for the next
    /// frame that starts a run of its own, unless it is larger than
    /// [`RECYCLE_MAX`] or a spare is kept already.
    pub(crate) fn recycle(&mut self, mut buffer: Vec<u8>) {
        if buffer.capacity() <= RECYCLE_MAX && buffer.capacity() > self.spare.capacity() {
            buffer.clear();
            self.spare = buffer;
        }
    }
}

/// Whether `adding` more bytes fit a send queue holding `queued`: a frame
/// always fits an empty queue, so that one larger than the bound (but
/// within the frame limit) still goes out.
fn check_room(queued: usize, limits: &Limits, adding: usize) -> Result<(), LocalError> {
    if queued > 0 && queued + adding > limits.max_buffered_bytes() {
        return Err(LocalError::SendQueueFull {
            queued,
            adding,
            max: limits.max_buffered_bytes(),
        });
    }
    Ok(())
}
