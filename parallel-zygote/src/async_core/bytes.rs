//! [`Bytes`]: a byte buffer that every codec moves as one block.

use std::borrow::Borrow;
use std::cell::RefCell;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::{Deref, DerefMut};
use std::os::fd::BorrowedFd;
use std::sync::Arc;

use serde::de::{SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::fd::{attach_memfd, take_incoming};
use super::owned_bytes::{self, owned_copy};
use super::pieces;
use super::recycle::HeapBuffer;
use super::shared::{self, Charge};
use crate::shm::SharedBytes;

/// A byte buffer that serializes as one block of bytes: use it for bulk
/// data in arguments, results and `process` messages.
///
/// serde sees a plain `Vec<u8>` as a sequence of `u8`s, which the default
/// codec ([`Postcard`](super::Postcard)) encodes and decodes one element at
/// a time: a 1 MiB `Vec<u8>` moves about five times slower than the same
/// bytes as `Bytes` (see BENCHMARKS.md, issue 13). Only a value that is a
/// `Vec<u8>` and nothing else (a `process` message, a call's or spawn's
/// argument, a function's result) is sent as a byte string (where the
/// codec writes both alike, as the default one does). `Bytes` serializes
/// through serde's `serialize_bytes` (a length, then the bytes, copied as a
/// block), which is what `#[serde(with = "serde_bytes")]` does too, without
/// the attribute; in JSON it is still an array of numbers, so every codec
/// round-trips it.
///
/// A `Bytes` received in a large `process` message (one that came through
/// shared memory) is not copied out of it: it points into the read-only
/// mapping, which stays alive as long as any `Bytes` from it does. Reading
/// it costs nothing more; the first mutable access ([`DerefMut`],
/// [`as_mut_vec`](Self::as_mut_vec)) or [`into_vec`](Self::into_vec)
/// copies it into a `Vec` of its own (from 4 MiB, into memory the kernel
/// is asked to back with transparent huge pages, which a fresh buffer of
/// that size fills several times faster). Cloning such a `Bytes` is cheap.
/// The same holds for a `Bytes` of 4 KiB or more in a message that came
/// through the socket: it shares the message's buffer (which stays alive
/// while it does) instead of copying out of it; `into_vec` on the only
/// `Bytes` of a message that holds nothing else takes that buffer without
/// a copy. Once the last `Bytes` of a message received through the socket
/// (16 KiB and up) is dropped, its buffer is kept to receive a later
/// message into (at most 16 MiB of such idle buffers per process), never
/// before: what a `Bytes` shows never changes.
///
/// It derefs to `[u8]`, and converts from a `Vec<u8>` without copying.
/// From 16 KiB, the `Vec` goes behind a reference count, so that a
/// `process` message (with the default codec) writes the bytes to the
/// socket from that very buffer instead of copying them into its frame;
/// clones share it, and changing a `Bytes` takes it back out (a copy only
/// while a clone shares it).
///
/// # Without any copy: `SharedBytesMut`
///
/// For the largest payloads, fill a [`SharedBytesMut`](super::SharedBytesMut)
/// (a buffer in shared memory) and [`freeze`](super::SharedBytesMut::freeze)
/// it into a `Bytes`: sent in a `process` message on a local channel, only
/// its sealed memfd travels (as an [`Fd`](super::Fd) would), and the
/// receiver maps it; no byte is copied on either side. A `Bytes` received
/// that way is sent on the same way. Where descriptors cannot go (a codec
/// used outside a message, call arguments, a transport without descriptor
/// passing), its bytes are encoded as any `Bytes`'.
///
/// ```
/// use parallel_zygote::async_core::{Bytes, Codec, Postcard};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Chunk {
///     offset: u64,
///     data: Bytes,
/// }
///
/// let chunk = Chunk { offset: 0, data: vec![7; 1 << 20].into() };
/// let encoded = Postcard::encode(&chunk)?;
/// assert_eq!(encoded.len(), 1 + 3 + (1 << 20), "offset, length, the bytes");
/// let decoded: Chunk = Postcard::decode(&encoded)?;
/// assert_eq!(&decoded.data[..], &[7; 1 << 20][..]);
/// let data: Vec<u8> = decoded.data.into_vec();
/// assert_eq!(data.len(), 1 << 20);
/// # Ok::<(), parallel_zygote::async_core::CodecError>(())
/// ```
#[derive(Clone, Default)]
pub struct Bytes {
    repr: Repr,
}

#[derive(Clone)]
enum Repr {
    Owned(Vec<u8>),
    /// `len` bytes at `start` of a mapping: a received message's, or the
    /// whole of a shared buffer's (which keeps its memfd, to send it on).
    Shared {
        mapping: Arc<SharedBytes>,
        start: usize,
        len: usize,
        /// The receiving stream's budget, charged while the mapping lives.
        _charge: Option<Arc<Charge>>,
    },
    /// `len` bytes at `start` of a heap buffer that clones share: a
    /// received message's (one that came through the socket), shared
    /// instead of copied out of it, or a large `Vec` converted into a
    /// `Bytes`, which a `process` message then writes to the socket from
    /// where it is, with no copy into the frame (see `pieces`).
    Heap {
        buffer: Arc<HeapBuffer>,
        start: usize,
        len: usize,
    },
}

/// Bytes decoded from a message that came through the socket are shared
/// with the message's buffer (no copy) from this length on; shorter ones are
/// copied, so that a few small `Bytes` kept from a large message do not
/// keep all of it alive.
const SHARE_RECEIVED_MIN: usize = 4 * 1024;

/// The buffer of the message being decoded on this thread, when `Bytes`
/// inside it may point into it.
enum Decoding {
    /// It came through shared memory.
    Mapping(Arc<SharedBytes>),
    /// It came through the socket into a buffer of its own.
    Received(Arc<HeapBuffer>),
}

impl Default for Repr {
    fn default() -> Self {
        Repr::Owned(Vec::new())
    }
}

thread_local! {
    /// The mapping of the message being decoded on this thread, if it came
    /// through shared memory: `Bytes` inside it point into it.
    static DECODING: RefCell<Option<Decoding>> = const { RefCell::new(None) };
}

/// Runs `decode` with `mapping` (the message's bytes) available to the
/// `Bytes` it deserializes, so that they share it instead of copying.
pub(crate) fn decode_from_mapping<R>(mapping: &Arc<SharedBytes>, decode: impl FnOnce() -> R) -> R {
    decoding(Decoding::Mapping(Arc::clone(mapping)), decode)
}

/// Runs `decode` with `buffer` (a message's bytes, received through the
/// socket) available to the `Bytes` it deserializes, so that large ones
/// share it instead of copying (see [`SHARE_RECEIVED_MIN`]).
pub(crate) fn decode_from_received<R>(buffer: &Arc<HeapBuffer>, decode: impl FnOnce() -> R) -> R {
    decoding(Decoding::Received(Arc::clone(buffer)), decode)
}

fn decoding<R>(source: Decoding, decode: impl FnOnce() -> R) -> R {
    let previous = DECODING.with(|slot| slot.replace(Some(source)));
    let result = decode();
    DECODING.with(|slot| *slot.borrow_mut() = previous);
    result
}

impl Bytes {
    /// An empty buffer.
    pub const fn new() -> Self {
        Bytes {
            repr: Repr::Owned(Vec::new()),
        }
    }

    /// The bytes as a `Vec<u8>`: no copy unless they are shared (see the
    /// type's docs).
    pub fn into_vec(self) -> Vec<u8> {
        match self.repr {
            Repr::Owned(bytes) => bytes,
            // The whole of a buffer no one else holds any more: taken as it is.
            Repr::Heap {
                buffer,
                start: 0,
                len,
            } if len == buffer.len() => Arc::try_unwrap(buffer)
                .map_or_else(|buffer| owned_copy(&buffer), HeapBuffer::into_vec),
            Repr::Heap { buffer, start, len } => owned_copy(&buffer[start..start + len]),
            Repr::Shared { .. } => owned_copy(self.as_slice()),
        }
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match &self.repr {
            Repr::Owned(bytes) => bytes,
            Repr::Shared {
                mapping,
                start,
                len,
                ..
            } => &mapping.as_slice()[*start..*start + *len],
            Repr::Heap { buffer, start, len } => &buffer[*start..*start + *len],
        }
    }

    /// The bytes as a `Vec<u8>` to change, copied first if they are shared.
    pub fn as_mut_vec(&mut self) -> &mut Vec<u8> {
        if !matches!(self.repr, Repr::Owned(_)) {
            self.repr = Repr::Owned(std::mem::take(self).into_vec());
        }
        match &mut self.repr {
            Repr::Owned(bytes) => bytes,
            _ => unreachable!("made owned above"),
        }
    }

    /// Whether the bytes are in shared memory (a received message's, or a
    /// [`SharedBytesMut`](super::SharedBytesMut)'s) rather than a buffer of
    /// their own.
    pub fn is_shared(&self) -> bool {
        matches!(self.repr, Repr::Shared { .. })
    }

    /// A `Bytes` of the whole of `mapping` (a sealed memfd kept open).
    pub(crate) fn from_sealed(mapping: SharedBytes, charge: Option<Charge>) -> Bytes {
        let len = mapping.len();
        Bytes {
            repr: Repr::Shared {
                mapping: Arc::new(mapping),
                start: 0,
                len,
                _charge: charge.map(Arc::new),
            },
        }
    }

    /// The sealed memfd holding exactly these bytes, if there is one (a
    /// frozen [`SharedBytesMut`](super::SharedBytesMut), or such a `Bytes`
    /// received): what travels instead of the bytes.
    fn memfd(&self) -> Option<BorrowedFd<'_>> {
        match &self.repr {
            Repr::Shared {
                mapping,
                start: 0,
                len,
                ..
            } if *len == mapping.len() => mapping.memfd(),
            _ => None,
        }
    }

    /// A `Bytes` for `bytes` that shares the buffer being decoded if they
    /// lie inside it (and, for a buffer received through the socket, are
    /// not small), else a copy.
    fn from_decoded(bytes: &[u8]) -> Bytes {
        let shared = DECODING.with(|slot| {
            let slot = slot.borrow();
            let whole = match slot.as_ref()? {
                Decoding::Mapping(mapping) => mapping.as_slice(),
                Decoding::Received(_) if bytes.len() < SHARE_RECEIVED_MIN => return None,
                Decoding::Received(buffer) => &buffer[..],
            }
            .as_ptr_range();
            let part = bytes.as_ptr_range();
            let inside = !bytes.is_empty() && whole.start <= part.start && part.end <= whole.end;
            if !inside {
                return None;
            }
            let start = part.start as usize - whole.start as usize;
            let len = bytes.len();
            Some(match slot.as_ref()? {
                Decoding::Mapping(mapping) => Repr::Shared {
                    mapping: Arc::clone(mapping),
                    start,
                    len,
                    _charge: None,
                },
                Decoding::Received(buffer) => Repr::Heap {
                    buffer: Arc::clone(buffer),
                    start,
                    len,
                },
            })
        });
        Bytes {
            repr: shared.unwrap_or_else(|| Repr::Owned(owned_copy(bytes))),
        }
    }
}

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Bulk data: its length says more than megabytes of numbers.
        write!(f, "Bytes({} bytes)", self.len())
    }
}

impl PartialEq for Bytes {
    fn eq(&self, other: &Bytes) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Bytes {}

impl PartialOrd for Bytes {
    fn partial_cmp(&self, other: &Bytes) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Bytes {
    fn cmp(&self, other: &Bytes) -> std::cmp::Ordering {
        self.as_slice().cmp(other.as_slice())
    }
}

impl Hash for Bytes {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state);
    }
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl DerefMut for Bytes {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.as_mut_vec()
    }
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsMut<[u8]> for Bytes {
    fn as_mut(&mut self) -> &mut [u8] {
        self.as_mut_vec()
    }
}

impl Borrow<[u8]> for Bytes {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(bytes: Vec<u8>) -> Self {
        // A large buffer goes behind an `Arc` (no copy), so that a message
        // can lend it to the socket write; changing it through `DerefMut`
        // or `as_mut_vec` takes it back out (no copy while not cloned).
        let repr = if bytes.len() >= pieces::LEND_MIN {
            let len = bytes.len();
            Repr::Heap {
                buffer: Arc::new(HeapBuffer::new(bytes)),
                start: 0,
                len,
            }
        } else {
            Repr::Owned(bytes)
        };
        Bytes { repr }
    }
}

impl From<&[u8]> for Bytes {
    fn from(bytes: &[u8]) -> Self {
        Bytes::from(owned_copy(bytes))
    }
}

impl From<Bytes> for Vec<u8> {
    fn from(bytes: Bytes) -> Self {
        bytes.into_vec()
    }
}

impl FromIterator<u8> for Bytes {
    fn from_iter<I: IntoIterator<Item = u8>>(iter: I) -> Self {
        Bytes::from(iter.into_iter().collect::<Vec<u8>>())
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if let Some(memfd) = self.memfd() {
            match attach_memfd(memfd) {
                Some(Ok(index)) => {
                    return serializer.serialize_bytes(&wire::attached(index, self.len() as u64))
                }
                Some(Err(error)) => {
                    return Err(serde::ser::Error::custom(format!(
                        "duplicating the memfd of a shared Bytes failed: {error}"
                    )))
                }
                None => {} // No descriptors here: the bytes themselves.
            }
        }
        let bytes = self.as_slice();
        if wire::is_marked(bytes) {
            return serializer.serialize_bytes(&wire::escaped(bytes));
        }
        if let Repr::Heap { buffer, start, len } = &self.repr {
            // In a message encoded in pieces, these very bytes are written
            // from this buffer rather than copied (elsewhere: nothing).
            pieces::lend(buffer, *start, *len);
        }
        serializer.serialize_bytes(bytes)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
        // The visitor shares the message's memory where it can: a decoder
        // that copies large byte strings into memory of their own leaves
        // these alone.
        owned_bytes::leaving_to_visitor(|| deserializer.deserialize_byte_buf(BytesVisitor))
    }
}

/// How a `Bytes` whose memfd travels beside the message is told apart from
/// bytes: a block that starts with [`MARK`](wire::MARK) is not data, and
/// data that starts with it is escaped. Anything else (all but data
/// beginning with those 8 bytes) is the block a `Vec<u8>` with
/// `serde_bytes` would make, so both forms decode with any codec.
///
/// - attached: `MARK`, `1`, the descriptor's index in the message (u32 LE),
///   the length (u64 LE);
/// - escaped: `MARK`, `0`, the data.
mod wire {
    pub(super) const MARK: [u8; 8] = *b"\xffPARbuf\x00";
    const ESCAPED: u8 = 0;
    const ATTACHED: u8 = 1;
    const ATTACHED_LEN: usize = MARK.len() + 1 + 4 + 8;

    pub(super) fn is_marked(bytes: &[u8]) -> bool {
        bytes.starts_with(&MARK)
    }

    pub(super) fn attached(index: u32, len: u64) -> Vec<u8> {
        let mut block = Vec::with_capacity(ATTACHED_LEN);
        block.extend_from_slice(&MARK);
        block.push(ATTACHED);
        block.extend_from_slice(&index.to_le_bytes());
        block.extend_from_slice(&len.to_le_bytes());
        block
    }

    pub(super) fn escaped(bytes: &[u8]) -> Vec<u8> {
        let mut block = Vec::with_capacity(MARK.len() + 1 + bytes.len());
        block.extend_from_slice(&MARK);
        block.push(ESCAPED);
        parallel_proto::copy::extend_from_slice(&mut block, bytes);
        block
    }

    /// What a marked block holds.
    pub(super) enum Marked<'a> {
        /// Data that began with the mark.
        Escaped(&'a [u8]),
        /// A memfd among the message's descriptors, and its length.
        Attached { index: u32, len: u64 },
    }

    /// Reads a block that [`is_marked`].
    pub(super) fn parse(block: &[u8]) -> Result<Marked<'_>, String> {
        let rest = &block[MARK.len()..];
        match rest.split_first() {
            Some((&ESCAPED, data)) => Ok(Marked::Escaped(data)),
            Some((&ATTACHED, fields)) if block.len() == ATTACHED_LEN => {
                let (index, len) = fields.split_at(4);
                Ok(Marked::Attached {
                    index: u32::from_le_bytes(index.try_into().expect("4 bytes")),
                    len: u64::from_le_bytes(len.try_into().expect("8 bytes")),
                })
            }
            _ => Err(format!(
                "a Bytes block of {} bytes starts with the shared-memory mark but is \
                 neither escaped data nor a memfd reference",
                block.len()
            )),
        }
    }
}

impl Bytes {
    /// The `Bytes` a marked block stands for: escaped data, or a shared
    /// buffer whose memfd came with the message (checked and mapped here).
    fn from_marked(block: &[u8]) -> Result<Bytes, String> {
        match wire::parse(block)? {
            wire::Marked::Escaped(data) => Ok(Bytes::from(data)),
            wire::Marked::Attached { index, len } => {
                let memfd = take_incoming(index).ok_or_else(|| {
                    format!(
                        "the memfd of a shared Bytes (descriptor #{index}) did not arrive \
                         with the message (or was used twice)"
                    )
                })?;
                // Counted before it is mapped: a peer's memfd may be sparse,
                // its pages allocated here as they are mapped.
                let charge = shared::charge(len)?;
                let mapping = SharedBytes::map_keeping(memfd, len)
                    .map_err(|reason| format!("a shared Bytes' memory was refused: {reason}"))?;
                Ok(Bytes::from_sealed(mapping, charge))
            }
        }
    }

    fn from_block<E: serde::de::Error>(block: Vec<u8>) -> Result<Bytes, E> {
        if wire::is_marked(&block) {
            return Bytes::from_marked(&block).map_err(refused);
        }
        Ok(Bytes::from(block))
    }
}

/// A marked block's refusal as a codec error; noted for the stream (which
/// reports these words as the error's cause) and traced, since some codecs
/// (postcard) keep only the kind of a custom error, not its words.
fn refused<E: serde::de::Error>(reason: String) -> E {
    tracing::warn!(%reason, "a received Bytes was refused");
    shared::note_refusal(&reason);
    E::custom(reason)
}

/// Accepts what each codec makes of `serialize_bytes`: a block of bytes
/// (postcard, MessagePack, CBOR, bincode) or a sequence of numbers (JSON).
struct BytesVisitor;

/// Most bytes a sequence's size hint may reserve up front: a hint comes
/// from the peer and is not trusted beyond this.
const MAX_HINTED_RESERVE: usize = 1 << 20;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Bytes;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte buffer")
    }

    fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<Bytes, E> {
        if wire::is_marked(bytes) {
            return Bytes::from_marked(bytes).map_err(refused);
        }
        // Codecs that decode from a slice hand out parts of it, borrowed
        // or not: from a shared-memory message, those are shared.
        Ok(Bytes::from_decoded(bytes))
    }

    fn visit_byte_buf<E: serde::de::Error>(self, bytes: Vec<u8>) -> Result<Bytes, E> {
        Bytes::from_block(bytes)
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Bytes, E> {
        Ok(Bytes::from(text.as_bytes()))
    }

    fn visit_string<E: serde::de::Error>(self, text: String) -> Result<Bytes, E> {
        Ok(Bytes::from(text.into_bytes()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
        let hint = seq.size_hint().unwrap_or(0).min(MAX_HINTED_RESERVE);
        let mut bytes = Vec::with_capacity(hint);
        while let Some(byte) = seq.next_element::<u8>()? {
            bytes.push(byte);
        }
        Bytes::from_block(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::async_core::{Codec, Postcard};

    #[test]
    fn bytes_encode_as_one_block_in_postcard_like_serde_bytes() {
        let data: Vec<u8> = (0..=255).collect();
        let ours = Postcard::encode(&Bytes::from(data.clone())).unwrap();
        let plain = Postcard::encode(&data).unwrap();
        assert_eq!(ours, plain, "postcard frames a block like a sequence");
        let back: Bytes = Postcard::decode(&ours).unwrap();
        assert_eq!(back.into_vec(), data);
        assert!(Postcard::decode::<Bytes>(&ours[..10]).is_err());
    }
}

#[cfg(test)]
mod shared_tests {
    use super::*;
    use crate::async_core::{Codec, Postcard};
    use crate::shm::sealed_memfd;
    use std::os::fd::AsFd;

    #[test]
    fn bytes_decoded_from_a_mapping_share_it_until_changed() {
        let message = (7u32, Bytes::from(vec![9u8; 100_000]));
        let encoded = Postcard::encode(&message).unwrap();
        let memfd = sealed_memfd(&encoded).unwrap();
        let mapping = Arc::new(SharedBytes::map(memfd.as_fd(), encoded.len() as u64).unwrap());
        let decoded: (u32, Bytes) =
            decode_from_mapping(&mapping, || Postcard::decode(mapping.as_slice())).unwrap();
        assert_eq!(decoded, message);
        let mut bytes = decoded.1;
        assert!(bytes.is_shared());
        assert_eq!(
            Arc::strong_count(&mapping),
            2,
            "the Bytes holds the mapping"
        );
        bytes[0] = 1;
        assert!(!bytes.is_shared(), "changing it made a copy");
        assert_eq!(Arc::strong_count(&mapping), 1);
        assert_eq!(bytes[..2], [1, 9]);
        // Outside a mapping's decode, nothing is shared.
        let plain: (u32, Bytes) = Postcard::decode(&encoded).unwrap();
        assert!(!plain.1.is_shared());
    }
}

#[cfg(test)]
mod memfd_tests {
    use super::*;
    use crate::async_core::fd::{decode_with_fds, encode_with_fds};
    use crate::async_core::{Codec, Postcard, SharedBytesMut};

    #[test]
    fn large_bytes_decoded_from_a_received_buffer_share_it_small_ones_copy() {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Message {
            small: Bytes,
            large: Bytes,
        }
        let sent = Message {
            small: vec![1; SHARE_RECEIVED_MIN - 1].into(),
            large: vec![2; SHARE_RECEIVED_MIN].into(),
        };
        let buffer = Arc::new(HeapBuffer::received(Postcard::encode(&sent).unwrap()));
        let received: Message =
            decode_from_received(&buffer, || Postcard::decode(&buffer)).unwrap();
        assert_eq!(
            (&received.small, &received.large),
            (&sent.small, &sent.large)
        );
        let whole = buffer.as_ptr_range();
        assert!(
            whole.contains(&received.large.as_ptr()),
            "the large Bytes points into the received buffer"
        );
        assert!(
            !received.large.is_shared(),
            "a heap buffer is not shared memory"
        );
        // Changing it copies it out first: the buffer stays as it came.
        let mut changed = received.large.clone();
        changed[0] = 9;
        assert!(!whole.contains(&changed.as_ptr()));
        assert_eq!(received.large[0], 2);
        drop((received, changed));
        assert_eq!(
            Arc::strong_count(&buffer),
            1,
            "nothing holds the buffer any more"
        );
    }

    #[test]
    fn the_only_bytes_of_a_received_buffer_is_taken_whole_without_a_copy() {
        let data = vec![5u8; 3 * SHARE_RECEIVED_MIN];
        // Whole-buffer sharing is what `into_vec` can take back: a `Bytes`
        // that is the whole received buffer.
        let buffer = Arc::new(HeapBuffer::received(data.clone()));
        let pointer = buffer.as_ptr();
        let bytes = decode_from_received(&buffer, || Bytes::from_decoded(&buffer[..]));
        drop(buffer);
        let taken = bytes.into_vec();
        assert_eq!(taken, data);
        assert_eq!(taken.as_ptr(), pointer, "taken, not copied");
    }

    fn frozen(len: usize) -> Bytes {
        let mut buffer = SharedBytesMut::zeroed(len).unwrap();
        for (i, byte) in buffer.iter_mut().enumerate() {
            *byte = (i % 253) as u8;
        }
        buffer.freeze().unwrap()
    }

    #[test]
    fn a_frozen_buffer_travels_as_its_memfd_and_maps_back() {
        let bytes = frozen(300_000);
        let message = (5u8, bytes.clone());
        let (encoded, fds) = encode_with_fds(true, || Postcard::encode(&message)).unwrap();
        assert_eq!(fds.len(), 1, "the memfd rides along");
        assert!(
            encoded.len() < 40,
            "only a reference: {} bytes",
            encoded.len()
        );
        let back: (u8, Bytes) = decode_with_fds(fds, || Postcard::decode(&encoded)).unwrap();
        assert_eq!(back, message);
        assert!(
            back.1.is_shared() && back.1.memfd().is_some(),
            "mapped, can go on"
        );
        // Sent on from the receiver: again only the reference.
        let (again, fds) = encode_with_fds(true, || Postcard::encode(&back.1)).unwrap();
        assert_eq!((again.len() < 40, fds.len()), (true, 1));
    }

    #[test]
    fn without_descriptors_a_frozen_buffer_is_encoded_as_bytes() {
        let bytes = frozen(10_000);
        let plain = Postcard::encode(&bytes.to_vec()).unwrap();
        let (encoded, fds) = encode_with_fds(false, || Postcard::encode(&bytes)).unwrap();
        assert!(fds.is_empty());
        assert_eq!(encoded, plain, "a Vec<u8>'s encoding");
        assert_eq!(
            Postcard::encode(&bytes).unwrap(),
            plain,
            "outside a message too"
        );
        let back: Bytes = Postcard::decode(&encoded).unwrap();
        assert_eq!(back, bytes);
        assert!(!back.is_shared());
    }

    #[test]
    fn data_that_starts_like_a_reference_is_escaped_and_round_trips() {
        for data in [
            wire::MARK.to_vec(),
            wire::attached(0, 4096),
            [&wire::MARK[..], &[0, 1, 2]].concat(),
        ] {
            let bytes = Bytes::from(data.clone());
            let encoded = Postcard::encode(&bytes).unwrap();
            let back: Bytes = Postcard::decode(&encoded).unwrap();
            assert_eq!(back.as_slice(), &data[..]);
            #[cfg(feature = "json")]
            {
                let json = serde_json::to_vec(&bytes).unwrap();
                let back: Bytes = serde_json::from_slice(&json).unwrap();
                assert_eq!(back.as_slice(), &data[..]);
            }
        }
    }

    #[test]
    fn a_reference_without_its_memfd_or_to_a_bad_one_is_refused() {
        // A plain Vec<u8> encodes as a block in postcard: unescaped.
        let reference = Postcard::encode(&wire::attached(0, 8)).unwrap();
        let error = Postcard::decode::<Bytes>(&reference).unwrap_err();
        assert!(!error.to_string().is_empty());
        let unsealed =
            nix::sys::memfd::memfd_create(c"test", nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC)
                .unwrap();
        let error = decode_with_fds(vec![unsealed], || {
            postcard::from_bytes::<Bytes>(&reference).map_err(|e| e.to_string())
        })
        .unwrap_err();
        assert!(!error.is_empty());
    }
}
