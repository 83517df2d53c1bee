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

/// Bytes that [`to_writer`] gathers before handing them to its writer:
/// well below [`LEND_MIN`], so that a write the writer sees is at least
/// `LEND_MIN` long only when it is one string or byte string, as with
/// `to_io` (which `Pieces` may lend, `streamed` writes from the message,
/// `Shape` counts as large).
const GATHER: usize = 512;

/// postcard's output to `writer`, as `postcard::to_io` writes it, except
/// that small writes reach `writer` gathered: postcard writes every integer,
/// tag and sequence element on its own (a plain `Vec<u8>` one byte at a
/// time), and one call of `writer` per byte made a 1 MiB `Vec<u8>` field
/// take 9 ns per byte to encode. A write of [`GATHER`] bytes or more (a
/// byte string's, a string's) goes to `writer` as it is, after what was
/// gathered before it.
///
/// # Errors
/// postcard's (the value cannot be serialized), and
/// `SerializeBufferFull` when `writer` fails, as `to_io`'s.
pub(crate) fn to_writer<T, W>(value: &T, writer: W) -> postcard::Result<W>
where
    T: Serialize + ?Sized,
    W: io::Write,
{
    // The bytes apart from the count: a byte stored through this reference
    // is known not to change `len`, which then stays in a register from
    // one byte to the next (in one struct, the count was stored and loaded
    // again around every byte: 1.4 ns per byte).
    let mut gathered = [0; GATHER];
    postcard::serialize_with_flavor(
        value,
        Gathered {
            writer,
            gathered: &mut gathered,
            len: 0,
        },
    )
}

/// The flavor behind [`to_writer`].
struct Gathered<'a, W> {
    writer: W,
    gathered: &'a mut [u8; GATHER],
    len: usize,
}

impl<W: io::Write> Gathered<'_, W> {
    fn hand_over(&mut self) -> postcard::Result<()> {
        if self.len > 0 {
            let gathered = &self.gathered[..self.len];
            self.len = 0;
            self.writer
                .write_all(gathered)
                .map_err(|_| postcard::Error::SerializeBufferFull)?;
        }
        Ok(())
    }
}

impl<W: io::Write> postcard::ser_flavors::Flavor for Gathered<'_, W> {
    type Output = W;

    #[inline]
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        if self.len == GATHER {
            self.hand_over()?;
        }
        self.gathered[self.len] = byte;
        self.len += 1;
        Ok(())
    }

    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        if bytes.len() <= GATHER - self.len {
            self.gathered[self.len..self.len + bytes.len()].copy_from_slice(bytes);
            self.len += bytes.len();
            return Ok(());
        }
        self.hand_over()?;
        if bytes.len() < GATHER {
            self.gathered[..bytes.len()].copy_from_slice(bytes);
            self.len = bytes.len();
            return Ok(());
        }
        self.writer
            .write_all(bytes)
            .map_err(|_| postcard::Error::SerializeBufferFull)
    }

    fn finalize(mut self) -> postcard::Result<W> {
        self.hand_over()?;
        Ok(self.writer)
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
    let result = to_writer(value, &mut pieces);
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

    /// Every way a write can meet the gathered bytes: single bytes that
    /// fill them many times over (a plain `Vec<u8>`), short runs that fit,
    /// that overflow them, and that are longer than they are, byte strings
    /// just under and over `LEND_MIN`, and a lent `Bytes` right after a
    /// gathered tail.
    #[test]
    fn small_writes_are_gathered_and_the_encoding_is_postcards() {
        let lent = Bytes::from(vec![9u8; LEND_MIN]);
        let message = (
            7u16,
            (0..3 * GATHER + 5).map(|i| i as u8).collect::<Vec<u8>>(),
            "a".repeat(GATHER - 10),
            "b".repeat(20),
            "c".repeat(GATHER + 1),
            serde_bytes::ByteBuf::from(vec![1u8; LEND_MIN - 1]),
            serde_bytes::ByteBuf::from(vec![2u8; LEND_MIN]),
            vec![3u8; 77],
            lent.clone(),
            -1i64,
        );
        let expected = postcard::to_stdvec(&message).unwrap();
        let pieces = encode::<Postcard, _>(&message, Vec::new()).unwrap();
        assert_eq!(pieces.lent(), LEND_MIN, "the Bytes is still lent");
        assert_eq!(pieces.len(), expected.len());
        assert_eq!(joined(pieces), expected);
        // The same bytes through any writer, and a writer's writes: none is
        // longer than the gathered bytes unless it is one string.
        let mut writes = Vec::new();
        to_writer(&message, Recorder(&mut writes)).unwrap();
        assert_eq!(writes.concat(), expected);
        let long: Vec<usize> = writes
            .iter()
            .map(Vec::len)
            .filter(|&n| n > GATHER)
            .collect();
        assert_eq!(long, [GATHER + 1, LEND_MIN - 1, LEND_MIN, LEND_MIN]);
        // And the sizing pass, which keeps only lengths.
        let shape = super::super::streamed::shape(&message).unwrap();
        assert_eq!(shape.len, expected.len());
        assert_eq!(
            shape.large,
            2 * LEND_MIN,
            "the ByteBuf and the Bytes of LEND_MIN"
        );
    }

    #[test]
    fn a_failing_writer_fails_the_encode_as_postcards_own_does() {
        struct Refuses;
        impl io::Write for Refuses {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let small = (1u8, "short");
        assert!(matches!(
            to_writer(&small, Refuses),
            Err(postcard::Error::SerializeBufferFull)
        ));
        let long = vec![5u8; 4 * GATHER];
        assert!(matches!(
            to_writer(&long, Refuses),
            Err(postcard::Error::SerializeBufferFull)
        ));
    }

    /// Keeps each write apart.
    struct Recorder<'a>(&'a mut Vec<Vec<u8>>);

    impl io::Write for Recorder<'_> {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.push(bytes.to_vec());
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn nothing_is_lent_outside_an_encode_in_pieces() {
        let bytes = Bytes::from(vec![1u8; 100_000]);
        let plain = Postcard::encode(&bytes).unwrap();
        assert_eq!(plain.len(), 100_000 + 3);
        LENDING.with(|lending| assert!(lending.borrow().is_none()));
    }
}
