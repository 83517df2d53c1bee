//! [`Bytes`]: a byte buffer that every codec moves as one block.

use std::borrow::Borrow;
use std::cell::RefCell;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use serde::de::{SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::shm::SharedBytes;

/// A byte buffer that serializes as one block of bytes: use it for bulk
/// data in arguments, results and `process` messages.
///
/// serde sees a plain `Vec<u8>` as a sequence of `u8`s, which the default
/// codec ([`Postcard`](super::Postcard)) encodes and decodes one element at
/// a time: a 1 MiB `Vec<u8>` moves about ten times slower than the same
/// bytes as `Bytes` (see BENCHMARKS.md, issue 13). `Bytes` serializes
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
/// copies it into a `Vec` of its own. Cloning such a `Bytes` is cheap.
///
/// It derefs to `[u8]`, and converts from a `Vec<u8>` without copying.
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
    /// `len` bytes at `start` of a received message's mapping.
    Shared {
        mapping: Arc<SharedBytes>,
        start: usize,
        len: usize,
    },
}

impl Default for Repr {
    fn default() -> Self {
        Repr::Owned(Vec::new())
    }
}

thread_local! {
    /// The mapping of the message being decoded on this thread, if it came
    /// through shared memory: `Bytes` inside it point into it.
    static DECODING: RefCell<Option<Arc<SharedBytes>>> = const { RefCell::new(None) };
}

/// Runs `decode` with `mapping` (the message's bytes) available to the
/// `Bytes` it deserializes, so that they share it instead of copying.
pub(crate) fn decode_from_mapping<R>(mapping: &Arc<SharedBytes>, decode: impl FnOnce() -> R) -> R {
    let previous = DECODING.with(|slot| slot.replace(Some(Arc::clone(mapping))));
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
            Repr::Shared { .. } => self.as_slice().to_vec(),
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
            } => &mapping.as_slice()[*start..*start + *len],
        }
    }

    /// The bytes as a `Vec<u8>` to change, copied first if they are shared.
    pub fn as_mut_vec(&mut self) -> &mut Vec<u8> {
        if let Repr::Shared { .. } = self.repr {
            self.repr = Repr::Owned(self.as_slice().to_vec());
        }
        match &mut self.repr {
            Repr::Owned(bytes) => bytes,
            Repr::Shared { .. } => unreachable!("made owned above"),
        }
    }

    /// Whether the bytes point into a received message's shared memory
    /// rather than a buffer of their own.
    pub fn is_shared(&self) -> bool {
        matches!(self.repr, Repr::Shared { .. })
    }

    /// A `Bytes` for `bytes` that shares the mapping being decoded if they
    /// lie inside it, else a copy.
    fn from_decoded(bytes: &[u8]) -> Bytes {
        let shared = DECODING.with(|slot| {
            let slot = slot.borrow();
            let mapping = slot.as_ref()?;
            let whole = mapping.as_slice().as_ptr_range();
            let part = bytes.as_ptr_range();
            let inside = !bytes.is_empty() && whole.start <= part.start && part.end <= whole.end;
            inside.then(|| Repr::Shared {
                mapping: Arc::clone(mapping),
                start: part.start as usize - whole.start as usize,
                len: bytes.len(),
            })
        });
        Bytes {
            repr: shared.unwrap_or_else(|| Repr::Owned(bytes.to_vec())),
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
        Bytes {
            repr: Repr::Owned(bytes),
        }
    }
}

impl From<&[u8]> for Bytes {
    fn from(bytes: &[u8]) -> Self {
        Bytes::from(bytes.to_vec())
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
        serializer.serialize_bytes(self.as_slice())
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
        deserializer.deserialize_byte_buf(BytesVisitor)
    }
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
        // Codecs that decode from a slice hand out parts of it, borrowed
        // or not: from a shared-memory message, those are shared.
        Ok(Bytes::from_decoded(bytes))
    }

    fn visit_byte_buf<E: serde::de::Error>(self, bytes: Vec<u8>) -> Result<Bytes, E> {
        Ok(Bytes::from(bytes))
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
        Ok(Bytes::from(bytes))
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
