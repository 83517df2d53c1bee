//! Framing: how messages are cut out of a byte stream.
//!
//! Every frame is an 8-byte header followed by `len` payload bytes:
//!
//! ```text
//! byte 0     MAGIC (0xB7): catches a stream that lost sync at once
//! byte 1     kind: which message this is (each protocol has its own table)
//! byte 2     fds: how many file descriptors ride along with this frame
//! byte 3     reserved, must be 0
//! bytes 4..8 len: payload length, u32 little-endian
//! ```
//!
//! The file descriptors themselves travel out of band (`SCM_RIGHTS`), sent
//! together with the frame's first byte; this layer only counts them.

use std::borrow::Cow;

use crate::limits::Limits;

/// The first byte of every frame header.
pub const MAGIC: u8 = 0xB7;

/// Size of a frame header in bytes.
pub const HEADER_LEN: usize = 8;

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Message kind tag.
    pub kind: u8,
    /// Number of file descriptors that ride along.
    pub fds: u8,
    /// Payload length in bytes.
    pub len: u32,
}

impl FrameHeader {
    /// The header's wire bytes.
    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let len = self.len.to_le_bytes();
        [
            MAGIC, self.kind, self.fds, 0, len[0], len[1], len[2], len[3],
        ]
    }

    /// Parses and checks a header against `limits`.
    ///
    /// # Errors
    /// [`FrameError::BadMagic`] if the first byte is not [`MAGIC`],
    /// [`FrameError::ReservedByteSet`] if byte 3 is not zero,
    /// [`FrameError::TooLong`] if `len` exceeds `limits.max_frame_len()`, and
    /// [`FrameError::TooManyFds`] if `fds` exceeds
    /// `limits.max_fds_per_frame()`.
    pub fn parse(bytes: [u8; HEADER_LEN], limits: &Limits) -> Result<FrameHeader, FrameError> {
        if bytes[0] != MAGIC {
            return Err(FrameError::BadMagic { found: bytes[0] });
        }
        if bytes[3] != 0 {
            return Err(FrameError::ReservedByteSet { found: bytes[3] });
        }
        let header = FrameHeader {
            kind: bytes[1],
            fds: bytes[2],
            len: u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        };
        if header.len > limits.max_frame_len() {
            return Err(FrameError::TooLong {
                len: header.len,
                max: limits.max_frame_len(),
            });
        }
        if header.fds > limits.max_fds_per_frame() {
            return Err(FrameError::TooManyFds {
                count: header.fds,
                max: limits.max_fds_per_frame(),
            });
        }
        Ok(header)
    }
}

/// A complete frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Message kind tag.
    pub kind: u8,
    /// Number of file descriptors that ride along.
    pub fds: u8,
    /// The payload.
    pub payload: Vec<u8>,
}

/// A frame as the state machines read it: its payload borrowed from the
/// input when the whole frame was there, owned when it came in pieces.
#[derive(Debug)]
pub(crate) struct FrameRef<'a> {
    pub(crate) kind: u8,
    pub(crate) fds: u8,
    pub(crate) payload: Cow<'a, [u8]>,
}

/// Why a byte stream is not a valid sequence of frames. Fatal and sticky.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A header did not start with [`MAGIC`].
    #[error("frame header starts with {found:#04x}, not the magic byte 0xb7: the stream is out of sync or not ours")]
    BadMagic {
        /// The byte found.
        found: u8,
    },
    /// The reserved header byte was not zero.
    #[error("frame header's reserved byte is {found:#04x}, must be 0")]
    ReservedByteSet {
        /// The byte found.
        found: u8,
    },
    /// The stream ended inside a frame (the transport said so).
    #[error("the stream ended {buffered} bytes into a frame")]
    Truncated {
        /// Bytes of the unfinished frame that had arrived.
        buffered: usize,
    },
    /// The announced payload length exceeds the limit.
    #[error("frame of {len} bytes exceeds max_frame_len ({max} bytes)")]
    TooLong {
        /// The announced length.
        len: u32,
        /// The configured limit.
        max: u32,
    },
    /// The frame announces more fds than the limit.
    #[error("frame carries {count} file descriptors, more than max_fds_per_frame ({max})")]
    TooManyFds {
        /// The announced count.
        count: u8,
        /// The configured limit.
        max: u8,
    },
}

/// Appends one frame to a buffer the caller owns.
///
/// Checks the payload and fd count against `limits` first; on error nothing is written.
///
/// # Errors
/// As [`checked_header`]: [`LocalError::MessageTooLong`](crate::LocalError::MessageTooLong)
/// if `payload` is longer than `limits.max_frame_len()`, and
/// [`LocalError::TooManyFds`](crate::LocalError::TooManyFds) if `fds` exceeds
/// `limits.max_fds_per_frame()`.
pub fn encode_frame(
    kind: u8,
    fds: usize,
    payload: &[u8],
    limits: &Limits,
    out: &mut Vec<u8>,
) -> Result<(), crate::LocalError> {
    let header = checked_header(kind, fds, payload.len(), limits)?;
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// Builds a header for a payload of `len` bytes after checking it against `limits`.
///
/// # Errors
/// [`LocalError::MessageTooLong`](crate::LocalError::MessageTooLong) if `len`
/// exceeds `limits.max_frame_len()`, and
/// [`LocalError::TooManyFds`](crate::LocalError::TooManyFds) if `fds` exceeds
/// `limits.max_fds_per_frame()`.
pub fn checked_header(
    kind: u8,
    fds: usize,
    len: usize,
    limits: &Limits,
) -> Result<FrameHeader, crate::LocalError> {
    if len > limits.max_frame_len() as usize {
        return Err(crate::LocalError::MessageTooLong {
            len,
            max: limits.max_frame_len(),
        });
    }
    if fds > limits.max_fds_per_frame() as usize {
        return Err(crate::LocalError::TooManyFds {
            count: fds,
            max: limits.max_fds_per_frame(),
        });
    }
    Ok(FrameHeader {
        kind,
        fds: fds as u8,
        len: len as u32,
    })
}

/// Where a [`FrameDecoder`] gets the buffer of a payload (see
/// [`FrameDecoder::set_payload_alloc`]): called with the payload's length,
/// it returns an empty `Vec`, with at least that much capacity when it has
/// such a buffer to hand out (one a transport recycles), else without any.
pub type PayloadAlloc = fn(usize) -> Vec<u8>;

/// A received payload as a `Vec` of its own: `payload` itself if owned,
/// else copied into a buffer from `alloc` (when it gives one that fits) or
/// a new one.
pub(crate) fn owned_payload(payload: Cow<'_, [u8]>, alloc: Option<PayloadAlloc>) -> Vec<u8> {
    match payload {
        Cow::Owned(payload) => payload,
        Cow::Borrowed(bytes) => {
            let mut owned = alloc.map_or_else(Vec::new, |alloc| alloc(bytes.len()));
            owned.clear();
            crate::copy::extend_from_slice(&mut owned, bytes);
            owned
        }
    }
}

/// Cuts frames out of a byte stream delivered in any chunking.
///
/// It buffers at most one frame: the header, then the payload, which grows as
/// bytes arrive (never reserved up front from an announced length, so a lying
/// header cannot make it allocate, unless the transport asks for the
/// [`payload_buffer`](Self::payload_buffer) to read bulk data into). A corrupt
/// header makes it fail for good.
#[derive(Debug)]
pub struct FrameDecoder {
    limits: Limits,
    header: [u8; HEADER_LEN],
    header_filled: usize,
    current: Option<(FrameHeader, Vec<u8>)>,
    alloc: Option<PayloadAlloc>,
    failed: Option<FrameError>,
}

impl FrameDecoder {
    /// A decoder enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        FrameDecoder {
            limits,
            header: [0; HEADER_LEN],
            header_filled: 0,
            current: None,
            alloc: None,
            failed: None,
        }
    }

    /// Makes every payload that does not arrive whole in one input start in
    /// a buffer from `alloc`, asked when the frame's header has been read
    /// (by default, and when `alloc` gives a buffer without capacity, an
    /// empty `Vec` that grows as bytes arrive). For a transport that
    /// recycles the buffers of payloads it has finished with: bulk data then
    /// costs no allocation (nor fresh pages to fault in) per frame. It never
    /// changes what is decoded.
    ///
    /// `alloc` is asked for the length the header announced, before any of
    /// the payload arrived: it should hand out only buffers it already has,
    /// so that a lying header cannot make it allocate. What the decoder
    /// reserves itself stays bounded as without `alloc`.
    pub fn set_payload_alloc(&mut self, alloc: PayloadAlloc) {
        self.alloc = Some(alloc);
    }

    /// The allocator given to [`set_payload_alloc`](Self::set_payload_alloc).
    pub fn payload_alloc(&self) -> Option<PayloadAlloc> {
        self.alloc
    }

    /// Consumes bytes from the front of `input` until one frame is complete
    /// (returned) or `input` is empty (`Ok(None)`).
    ///
    /// Call it in a loop: `while let Some(frame) = decoder.decode(&mut input)? {}`;
    /// when it returns `Ok(None)`, all of `input` has been consumed.
    ///
    /// # Errors
    /// A [`FrameError`] from [`FrameHeader::parse`] when a header is corrupt
    /// or breaks the limits. The decoder is then failed for good: this and
    /// every later call return the same error (also kept in
    /// [`error`](Self::error)).
    pub fn decode(&mut self, input: &mut &[u8]) -> Result<Option<Frame>, FrameError> {
        if let Some(error) = self.failed {
            return Err(error);
        }
        loop {
            match &mut self.current {
                None => {
                    let want = HEADER_LEN - self.header_filled;
                    let take = want.min(input.len());
                    self.header[self.header_filled..self.header_filled + take]
                        .copy_from_slice(&input[..take]);
                    self.header_filled += take;
                    *input = &input[take..];
                    if self.header_filled < HEADER_LEN {
                        return Ok(None);
                    }
                    self.header_filled = 0;
                    match FrameHeader::parse(self.header, &self.limits) {
                        Ok(header) => {
                            let mut payload = self
                                .alloc
                                .map_or_else(Vec::new, |alloc| alloc(header.len as usize));
                            payload.clear();
                            self.current = Some((header, payload));
                        }
                        Err(error) => {
                            self.failed = Some(error);
                            return Err(error);
                        }
                    }
                }
                Some((header, payload)) => {
                    let len = header.len as usize;
                    assert!(
                        payload.len() <= len,
                        "a transport appended more than PayloadBuffer::remaining() bytes"
                    );
                    let want = len - payload.len();
                    let take = want.min(input.len());
                    if payload.capacity() - payload.len() < take {
                        // Grow geometrically but never past the frame: a
                        // payload arriving in pieces is reallocated a few
                        // times at most and ends at its exact length, and
                        // what is reserved stays within four times what
                        // arrived (a lying header cannot make it allocate).
                        let target = (payload.len() + take).saturating_mul(4).min(len);
                        payload.reserve_exact(target - payload.len());
                    }
                    crate::copy::extend_from_slice(payload, &input[..take]);
                    *input = &input[take..];
                    if payload.len() < header.len as usize {
                        return Ok(None);
                    }
                    let (header, payload) = self.current.take().expect("matched Some above");
                    return Ok(Some(Frame {
                        kind: header.kind,
                        fds: header.fds,
                        payload,
                    }));
                }
            }
        }
    }

    /// [`decode`](Self::decode) without the copy when it can: a whole frame
    /// at the front of `input`, with none begun before, is returned as a
    /// slice of `input` (calls and replies, many per read, then cost no
    /// payload allocation); anything else goes through `decode`.
    pub(crate) fn next<'a>(
        &mut self,
        input: &mut &'a [u8],
    ) -> Result<Option<FrameRef<'a>>, FrameError> {
        if let Some(error) = self.failed {
            return Err(error);
        }
        if self.current.is_none() && self.header_filled == 0 && input.len() >= HEADER_LEN {
            let mut bytes = [0; HEADER_LEN];
            bytes.copy_from_slice(&input[..HEADER_LEN]);
            let header = FrameHeader::parse(bytes, &self.limits).inspect_err(|error| {
                self.failed = Some(*error);
            })?;
            let end = HEADER_LEN + header.len as usize;
            if let Some(payload) = input.get(HEADER_LEN..end) {
                *input = &input[end..];
                return Ok(Some(FrameRef {
                    kind: header.kind,
                    fds: header.fds,
                    payload: Cow::Borrowed(payload),
                }));
            }
        }
        Ok(self.decode(input)?.map(|frame| FrameRef {
            kind: frame.kind,
            fds: frame.fds,
            payload: Cow::Owned(frame.payload),
        }))
    }

    /// The payload of the frame being decoded, for a transport that reads
    /// payload bytes straight into it instead of through a buffer of its own
    /// (one copy fewer for bulk data); `None` unless a header has been read
    /// and its payload is incomplete, or once the decoder has failed.
    ///
    /// Creating it reserves room for the whole rest of the payload, as the
    /// header announced it (at most `max_frame_len`, which bounds what a
    /// lying header can make the transport allocate; the memory is only
    /// touched as bytes arrive). Append at most
    /// [`remaining`](PayloadBuffer::remaining) bytes, the ones that follow in
    /// the stream, then call [`decode`](Self::decode) (with an empty input if
    /// nothing else was read): it returns the frame once the payload is
    /// complete. Mixing the two ways of feeding bytes gives the same frames as
    /// feeding all of them to `decode`, however the stream is cut.
    pub fn payload_buffer(&mut self) -> Option<PayloadBuffer<'_>> {
        if self.failed.is_some() {
            return None;
        }
        let (header, payload) = self.current.as_mut()?;
        let len = header.len as usize;
        if payload.len() >= len {
            return None;
        }
        payload.reserve_exact(len - payload.len());
        Some(PayloadBuffer { payload, len })
    }

    /// Bytes of an unfinished frame held right now (header and payload).
    pub fn buffered(&self) -> usize {
        match &self.current {
            Some((_, payload)) => HEADER_LEN + payload.len(),
            None => self.header_filled,
        }
    }

    /// True when no partial frame is held: the stream may end cleanly here.
    pub fn is_at_boundary(&self) -> bool {
        self.header_filled == 0 && self.current.is_none()
    }

    /// The sticky error, if the stream was corrupt.
    pub fn error(&self) -> Option<FrameError> {
        self.failed
    }
}

/// The incomplete payload of the frame a [`FrameDecoder`] is decoding, handed
/// to the transport to append the next payload bytes to directly (see
/// [`FrameDecoder::payload_buffer`]).
#[derive(Debug)]
pub struct PayloadBuffer<'a> {
    payload: &'a mut Vec<u8>,
    len: usize,
}

impl PayloadBuffer<'_> {
    /// Payload bytes still missing: append at most this many.
    pub fn remaining(&self) -> usize {
        self.len - self.payload.len()
    }

    /// The payload length the header announced.
    pub fn frame_len(&self) -> usize {
        self.len
    }

    /// The payload so far, to append to: its spare capacity holds at least
    /// [`remaining`](Self::remaining) bytes, so a transport can read into it
    /// (`spare_capacity_mut`, then `set_len`) without zeroing or copying.
    ///
    /// # Panics
    /// Appending more than `remaining()` bytes is a bug of the transport: the
    /// next [`FrameDecoder::decode`] panics.
    pub fn as_mut_vec(&mut self) -> &mut Vec<u8> {
        self.payload
    }

    /// Appends bytes that follow in the stream, up to
    /// [`remaining`](Self::remaining); returns how many it took.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) -> usize {
        let take = bytes.len().min(self.remaining());
        crate::copy::extend_from_slice(self.payload, &bytes[..take]);
        take
    }
}
