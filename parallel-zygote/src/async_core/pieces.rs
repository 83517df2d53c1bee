//! A `process` message's encoding in pieces: the bytes the codec wrote,
//! and the buffers of large [`Bytes`](super::Bytes) it serialized, lent
//! (an `Arc` of the buffer) rather than copied into the frame.
//!
//! While a message is encoded with [`encode`], each large heap `Bytes` in it
//! lends its buffer ([`lend`]); the codec then writes the same slice to the
//! [`Pieces`] writer, which recognises it (same address, same length) and
//! keeps a reference instead of copying it. The socket write then gathers
//! the pieces (`sendmsg` with one slice each): a `Bytes` payload is copied
//! once, by the kernel, from the user's own buffer.
//!
//! Only the default codec ([`Postcard`]) is encoded this way: it hands a
//! `serialize_bytes` block to its writer as one write of the value's own
//! slice. Any other codec encodes into one buffer, as before.

use std::any::TypeId;
use std::cell::RefCell;
use std::io;
use std::sync::Arc;

use serde::Serialize;

use super::codec::{Codec, CodecError, Postcard};
use super::recycle::HeapBuffer;
use crate::io::Piece;

/// `Bytes` at least this long are lent rather than copied (the state
/// machine's own threshold for moving a payload instead of copying it: below
/// it, one more slice per write costs more than the copy).
pub(crate) const LEND_MIN: usize = 16 * 1024;

/// Part of a heap buffer, kept alive while it waits for the socket.
#[derive(Clone)]
pub(crate) struct Lent {
    buffer: Arc<HeapBuffer>,
    start: usize,
    len: usize,
}

impl Lent {
    fn as_slice(&self) -> &[u8] {
        &self.buffer[self.start..self.start + self.len]
    }
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

thread_local! {
    /// The buffers lent by the `Bytes` of the message being encoded on this
    /// thread, while [`encode`] runs.
    static LENDING: RefCell<Option<Vec<Lent>>> = const { RefCell::new(None) };
}

/// Offers `buffer[start..start + len]` to the message being encoded on this
/// thread, if one is encoded in pieces and the part is large enough; the
/// caller then serializes exactly that slice as its bytes.
pub(crate) fn lend(buffer: &Arc<HeapBuffer>, start: usize, len: usize) {
    if len < LEND_MIN {
        return;
    }
    LENDING.with(|lending| {
        if let Some(lent) = lending.borrow_mut().as_mut() {
            lent.push(Lent {
                buffer: Arc::clone(buffer),
                start,
                len,
            });
        }
    });
}

/// The lent part whose bytes are exactly `bytes` (the same memory), taken.
fn take_lent(bytes: &[u8]) -> Option<Lent> {
    if bytes.len() < LEND_MIN {
        return None;
    }
    LENDING.with(|lending| {
        let mut lending = lending.borrow_mut();
        let lent = lending.as_mut()?;
        let at = lent.iter().position(|part| {
            let slice = part.as_slice();
            slice.as_ptr() == bytes.as_ptr() && slice.len() == bytes.len()
        })?;
        Some(lent.swap_remove(at))
    })
}

/// A message's encoding: runs of copied bytes and lent buffers, in order.
#[derive(Default)]
pub(crate) struct Pieces {
    /// Finished pieces; `copied` follows them.
    parts: Vec<Part>,
    copied: Vec<u8>,
    len: usize,
}

enum Part {
    Copied(Vec<u8>),
    Lent(Lent),
}

impl std::fmt::Debug for Pieces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pieces")
            .field("len", &self.len)
            .field(
                "parts",
                &(self.parts.len() + usize::from(!self.copied.is_empty())),
            )
            .finish()
    }
}

impl Pieces {
    /// The encoding's length.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The bytes of it that are lent buffers.
    pub(crate) fn lent(&self) -> usize {
        self.parts
            .iter()
            .map(|part| match part {
                Part::Lent(lent) => lent.len,
                Part::Copied(_) => 0,
            })
            .sum()
    }

    /// The encoding as one buffer, if nothing was lent (no copy then).
    pub(crate) fn into_single(mut self) -> Result<Vec<u8>, Pieces> {
        if self.parts.is_empty() {
            return Ok(std::mem::take(&mut self.copied));
        }
        Err(self)
    }

    /// The pieces, for the socket write.
    pub(crate) fn into_pieces(mut self) -> Vec<Piece> {
        self.close_copied();
        self.parts
            .into_iter()
            .map(|part| -> Piece {
                match part {
                    Part::Copied(bytes) => Box::new(bytes),
                    Part::Lent(lent) => Box::new(lent),
                }
            })
            .collect()
    }

    /// Writes every byte to `writer` (into a memfd, say).
    ///
    /// # Errors
    /// The writer's.
    pub(crate) fn write_to(&self, writer: &mut impl io::Write) -> io::Result<()> {
        for part in &self.parts {
            writer.write_all(match part {
                Part::Copied(bytes) => bytes,
                Part::Lent(lent) => lent.as_slice(),
            })?;
        }
        writer.write_all(&self.copied)
    }

    fn close_copied(&mut self) {
        if !self.copied.is_empty() {
            self.parts
                .push(Part::Copied(std::mem::take(&mut self.copied)));
        }
    }
}

impl From<Vec<u8>> for Pieces {
    fn from(copied: Vec<u8>) -> Self {
        Pieces {
            parts: Vec::new(),
            len: copied.len(),
            copied,
        }
    }
}

impl io::Write for Pieces {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match take_lent(bytes) {
            Some(lent) => {
                self.close_copied();
                self.parts.push(Part::Lent(lent));
            }
            None => parallel_proto::copy::extend_from_slice(&mut self.copied, bytes),
        }
        self.len += bytes.len();
        Ok(bytes.len())
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write(bytes).map(|_| ())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Runs `pass` (a pass over a message that serializes it, such as the
/// codec's sizing) and counts the bytes its large heap `Bytes` would lend
/// to an encode in pieces with `C` (0 for a codec not encoded in pieces).
pub(crate) fn lendable<C: Codec, R>(pass: impl FnOnce() -> R) -> (R, usize) {
    if TypeId::of::<C>() != TypeId::of::<Postcard>() {
        return (pass(), 0);
    }
    let previous = LENDING.with(|lending| lending.replace(Some(Vec::new())));
    let result = pass();
    let lent = LENDING.with(|lending| std::mem::replace(&mut *lending.borrow_mut(), previous));
    let len = lent.unwrap_or_default().iter().map(|part| part.len).sum();
    (result, len)
}

/// Encodes `value` with `C`: in pieces, its large heap `Bytes` lent, when
/// `C` is [`Postcard`] (the bytes copied go into `buffer`, emptied first:
/// a recycled one, sized for them); otherwise into one buffer.
///
/// # Errors
/// The codec's.
pub(crate) fn encode<C: Codec, T: Serialize>(
    value: &T,
    mut buffer: Vec<u8>,
) -> Result<Pieces, CodecError> {
    if TypeId::of::<C>() != TypeId::of::<Postcard>() {
        return C::encode(value).map(Pieces::from);
    }
    let previous = LENDING.with(|lending| lending.replace(Some(Vec::new())));
    buffer.clear();
    let mut pieces = Pieces::from(buffer);
    let result = postcard::to_io(value, &mut pieces);
    LENDING.with(|lending| *lending.borrow_mut() = previous);
    result?;
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::async_core::Bytes;

    #[derive(Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Message {
        tag: u32,
        big: Bytes,
        small: Bytes,
        other: Bytes,
    }

    fn joined(pieces: Pieces) -> Vec<u8> {
        let mut bytes = Vec::new();
        pieces.write_to(&mut bytes).unwrap();
        bytes
    }

    #[test]
    fn large_bytes_are_lent_not_copied_and_the_encoding_is_postcards() {
        let big = Bytes::from(vec![3u8; 100_000]);
        let other = Bytes::from(vec![4u8; LEND_MIN]);
        let message = Message {
            tag: 7,
            big: big.clone(),
            small: Bytes::from(vec![5u8; LEND_MIN - 1]),
            other: other.clone(),
        };
        let pieces = encode::<Postcard, _>(&message, Vec::new()).unwrap();
        let lent: Vec<*const u8> = pieces
            .parts
            .iter()
            .filter_map(|part| match part {
                Part::Lent(lent) => Some(lent.as_slice().as_ptr()),
                Part::Copied(_) => None,
            })
            .collect();
        assert_eq!(
            lent,
            [big.as_ptr(), other.as_ptr()],
            "the two large ones, in order"
        );
        let expected = Postcard::encode(&message).unwrap();
        assert_eq!(pieces.len(), expected.len());
        assert_eq!(joined(pieces), expected);
    }

    #[test]
    fn a_message_without_large_bytes_is_one_buffer() {
        let message = (1u8, Bytes::from(vec![2u8; 100]), vec![3u8; 50_000]);
        let pieces = encode::<Postcard, _>(&message, Vec::new()).unwrap();
        let Ok(single) = pieces.into_single() else {
            panic!("nothing was lent, yet the encoding is in pieces");
        };
        assert_eq!(single, Postcard::encode(&message).unwrap());
    }

    #[test]
    fn a_sizing_pass_counts_the_bytes_that_would_be_lent() {
        let message = (Bytes::from(vec![1u8; 100_000]), Bytes::from(vec![2u8; 100]));
        let (size, lent) = lendable::<Postcard, _>(|| Postcard::encoded_len(&message));
        assert_eq!(size, Some(Postcard::encode(&message).unwrap().len()));
        assert_eq!(lent, 100_000, "only the large one");
        LENDING.with(|lending| assert!(lending.borrow().is_none(), "put back"));
    }

    #[test]
    fn nothing_is_lent_outside_an_encode_in_pieces() {
        let bytes = Bytes::from(vec![1u8; 100_000]);
        let plain = Postcard::encode(&bytes).unwrap();
        assert_eq!(plain.len(), 100_000 + 3);
        LENDING.with(|lending| assert!(lending.borrow().is_none()));
    }
}
