//! Appending bytes at memory speed whatever their addresses.
//!
//! glibc before 2.40 copies 2 KiB and more with `rep movsb` on x86 CPUs
//! that report fast short `rep movsb` (FSRM), up to its non-temporal
//! threshold (192 MiB on the benchmark machine). On AMD Zen 3 and 4 that
//! instruction runs about 20 times slower when the destination lies 1 to
//! 31 bytes ahead of the source modulo 4096 (glibc bug 30994). Measured on
//! the project's benchmark machine (an AMD EPYC VM, glibc 2.36), a 64 KiB
//! `copy_from_slice` took 31-37 µs at those distances and 1.6-3.0 µs at
//! every other one tried (0, 32, 48, 63, 64, 65, ..., 4095), and the same
//! copy made of 2 KiB copies (which glibc makes with vector moves) took
//! 1.5-1.9 µs at all of them. Which distance a copy gets depends on where
//! the allocator put the two buffers, so a recycled receive buffer and the
//! allocation a decode copies into can meet the slow one on every message:
//! it took 45 % of a worker's time receiving 64 KiB messages.
//!
//! [`extend_from_slice`] is `Vec::extend_from_slice` that copies in 2 KiB
//! pieces at those distances, and in one piece at all others.

/// The distance (destination minus source) is taken modulo this.
const PAGE: usize = 4096;

/// Distances below this (but not 0) take the copy in pieces.
const SLOW_DISTANCES: usize = 32;

/// Pieces of the copy at a slow distance: shorter than glibc's smallest
/// default `rep movsb` threshold (2048 bytes times the vector size over
/// 16; 2112 with FSRM), so each is made with vector moves.
const PIECE: usize = 2048;

/// Appends `bytes` to `buffer`, as `buffer.extend_from_slice(bytes)` does,
/// in pieces where one long copy would be slow (see the [module](self)
/// docs).
pub fn extend_from_slice(buffer: &mut Vec<u8>, bytes: &[u8]) {
    if bytes.len() > PIECE {
        buffer.reserve(bytes.len());
        let destination = buffer.as_ptr() as usize + buffer.len();
        let distance = destination.wrapping_sub(bytes.as_ptr() as usize) % PAGE;
        if (1..SLOW_DISTANCES).contains(&distance) {
            for piece in bytes.chunks(PIECE) {
                extend_by_piece(buffer, piece);
            }
            return;
        }
    }
    buffer.extend_from_slice(bytes);
}

/// One piece: a call of its own, so that the compiler does not join the
/// pieces back into one copy.
#[inline(never)]
fn extend_by_piece(buffer: &mut Vec<u8>, piece: &[u8]) {
    buffer.extend_from_slice(piece);
}

/// `bytes` in a new `Vec` of capacity `bytes.len()`, copied as
/// [`extend_from_slice`] does.
pub fn to_vec(bytes: &[u8]) -> Vec<u8> {
    let mut copy = Vec::with_capacity(bytes.len());
    extend_from_slice(&mut copy, bytes);
    copy
}

/// `#[serde(with = "crate::copy::bytes")]`: a `Vec<u8>` written as one
/// byte string, as with serde_bytes (the same bytes on the wire), and
/// decoded with [`to_vec`]'s copy. Byte fields (call arguments, results)
/// are one block: serde's default for a `Vec<u8>` is a sequence of `u8`s,
/// which postcard writes and reads one element at a time (0.3-0.5 GB/s
/// against 17-20 GB/s as bytes, measured).
pub(crate) mod bytes {
    use std::fmt;

    use serde::de::{Deserializer, Error, Visitor};
    use serde::Serializer;

    pub(crate) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        deserializer.deserialize_byte_buf(Copied)
    }

    struct Copied;

    impl Visitor<'_> for Copied {
        type Value = Vec<u8>;

        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str("a byte string")
        }

        fn visit_bytes<E: Error>(self, bytes: &[u8]) -> Result<Vec<u8>, E> {
            Ok(super::to_vec(bytes))
        }

        fn visit_byte_buf<E: Error>(self, bytes: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(bytes)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_every_byte_in_order_at_any_alignment() {
        let source: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for start in [0, 1, 5, 63, 64, 100] {
            for len in [0, 1, 63, PIECE - 1, PIECE, PIECE + 1, 9_000] {
                let bytes = &source[start..start + len];
                for before in [0, 3, 64, 77] {
                    let mut buffer = vec![9u8; before];
                    extend_from_slice(&mut buffer, bytes);
                    assert_eq!(&buffer[..before], &vec![9u8; before][..]);
                    assert_eq!(&buffer[before..], bytes);
                }
                let copy = to_vec(bytes);
                assert_eq!(copy, bytes);
                assert_eq!(copy.capacity(), len);
            }
        }
    }

    #[test]
    fn a_copy_at_a_slow_distance_is_made_in_pieces_and_whole() {
        let source: Vec<u8> = (0..3 * PAGE as u32).map(|i| (i % 253) as u8).collect();
        let bytes = &source[PAGE..2 * PAGE + 100];
        // A buffer whose end lies 1 to 31 bytes after the source modulo a
        // page, found by trying capacities (the allocator decides).
        for ahead in [1, 8, 31] {
            let mut buffer = Vec::with_capacity(4 * PAGE);
            let end = buffer.as_ptr() as usize;
            let want = (bytes.as_ptr() as usize + ahead) % PAGE;
            let pad = (want + PAGE - end % PAGE) % PAGE;
            buffer.resize(pad, 0u8);
            let distance = (buffer.as_ptr() as usize + buffer.len())
                .wrapping_sub(bytes.as_ptr() as usize)
                % PAGE;
            assert_eq!(distance, ahead);
            extend_from_slice(&mut buffer, bytes);
            assert_eq!(&buffer[pad..], bytes);
        }
    }

    #[test]
    fn byte_strings_are_the_same_on_the_wire_as_serde_bytes() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct Ours(#[serde(with = "bytes")] Vec<u8>);
        #[derive(serde::Serialize)]
        struct Theirs<'a>(#[serde(with = "serde_bytes")] &'a [u8]);
        for len in [0, 5, PIECE + 3, 70_000] {
            let data: Vec<u8> = (0..len).map(|i| (i % 241) as u8).collect();
            let ours = postcard::to_stdvec(&Ours(data.clone())).unwrap();
            assert_eq!(ours, postcard::to_stdvec(&Theirs(&data)).unwrap());
            assert_eq!(postcard::from_bytes::<Ours>(&ours).unwrap(), Ours(data));
        }
    }
}
