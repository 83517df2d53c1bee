//! [`Bytes`]: a byte buffer that every codec moves as one block.

use std::borrow::{Borrow, BorrowMut};
use std::fmt;
use std::ops::{Deref, DerefMut};

use serde::de::{SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A `Vec<u8>` that serializes as one block of bytes: use it for bulk data
/// in arguments, results and `process` messages.
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
/// It derefs to `Vec<u8>` (and so to `[u8]`), and converts from and into
/// `Vec<u8>` without copying.
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
/// let data: Vec<u8> = decoded.data.into();
/// assert_eq!(data, vec![7; 1 << 20]);
/// # Ok::<(), parallel_zygote::async_core::CodecError>(())
/// ```
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bytes(pub Vec<u8>);

impl Bytes {
    /// An empty buffer.
    pub const fn new() -> Self {
        Bytes(Vec::new())
    }

    /// The buffer, as a `Vec<u8>` (no copy).
    pub fn into_vec(self) -> Vec<u8> {
        self.0
    }
}

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Bulk data: its length says more than megabytes of numbers.
        write!(f, "Bytes({} bytes)", self.0.len())
    }
}

impl Deref for Bytes {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl DerefMut for Bytes {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl AsMut<[u8]> for Bytes {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

impl Borrow<[u8]> for Bytes {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

impl BorrowMut<[u8]> for Bytes {
    fn borrow_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(bytes: Vec<u8>) -> Self {
        Bytes(bytes)
    }
}

impl From<&[u8]> for Bytes {
    fn from(bytes: &[u8]) -> Self {
        Bytes(bytes.to_vec())
    }
}

impl From<Bytes> for Vec<u8> {
    fn from(bytes: Bytes) -> Self {
        bytes.0
    }
}

impl FromIterator<u8> for Bytes {
    fn from_iter<I: IntoIterator<Item = u8>>(iter: I) -> Self {
        Bytes(iter.into_iter().collect())
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
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
        Ok(Bytes(bytes.to_vec()))
    }

    fn visit_byte_buf<E: serde::de::Error>(self, bytes: Vec<u8>) -> Result<Bytes, E> {
        Ok(Bytes(bytes))
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Bytes, E> {
        Ok(Bytes(text.as_bytes().to_vec()))
    }

    fn visit_string<E: serde::de::Error>(self, text: String) -> Result<Bytes, E> {
        Ok(Bytes(text.into_bytes()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
        let hint = seq.size_hint().unwrap_or(0).min(MAX_HINTED_RESERVE);
        let mut bytes = Vec::with_capacity(hint);
        while let Some(byte) = seq.next_element::<u8>()? {
            bytes.push(byte);
        }
        Ok(Bytes(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::async_core::{Codec, Postcard};

    #[test]
    fn bytes_encode_as_one_block_in_postcard_like_serde_bytes() {
        let data: Vec<u8> = (0..=255).collect();
        let ours = Postcard::encode(&Bytes(data.clone())).unwrap();
        let plain = Postcard::encode(&data).unwrap();
        assert_eq!(ours, plain, "postcard frames a block like a sequence");
        let back: Bytes = Postcard::decode(&ours).unwrap();
        assert_eq!(back.into_vec(), data);
        assert!(Postcard::decode::<Bytes>(&ours[..10]).is_err());
    }
}
