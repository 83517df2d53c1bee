//! Owned byte strings decoded with a copy that runs at memory speed.
//!
//! A type that owns its bytes (`Vec<u8>` or `ByteBuf` with serde_bytes) is
//! built by copying them out of the received message. Left to serde_bytes,
//! that copy is `to_vec`, which on the benchmark machine costs far more
//! than it should in two cases:
//!
//! - From 2 KiB, glibc before 2.40 copies with `rep movsb`, which on AMD
//!   Zen runs about 20 times slower when the destination lies 1 to 31
//!   bytes ahead of the source modulo 4096 (see [`parallel_proto::copy`]).
//!   Where the allocator puts a decode's new buffer and the received one
//!   decides it, message after message: a 64 KiB field took 31-37 µs to
//!   copy instead of 1.6-3.0 µs, 45 % of a worker's time.
//! - At 64 MiB the new allocation is fresh memory from the kernel, and with
//!   4 KiB pages its faults and zeroing cost four times the copy itself
//!   (16 384 faults: 44 ms against 11 ms for the same copy into memory
//!   advised for transparent huge pages).
//!
//! [`OwnedBytes`] wraps a serde `Deserializer` and everything it hands to a
//! visitor (sequences, maps, enums, options, newtypes), and changes one
//! thing: when a type asks for an owned byte buffer
//! (`deserialize_byte_buf`, which serde_bytes' `Vec<u8>` and `ByteBuf`
//! do) and the format hands out a slice of at least [`OWNED_COPY_MIN`], the
//! slice is copied by [`owned_copy`] (clear of that slow case, and into
//! huge pages from [`HUGE_PAGES_MIN`]) and given to the visitor as that
//! owned buffer.
//! Everything else is passed through untouched. The crate's own
//! [`Bytes`](super::Bytes) is left alone (see [`leaving_to_visitor`]):
//! it shares the message's memory instead of copying, and copies through
//! [`owned_copy`] when taken out of it.
//!
//! Used by [`Postcard`](super::Postcard) for messages of at least
//! [`OWNED_COPY_MIN`]; smaller ones cannot hold such a byte string, and
//! decode as before.

use std::cell::Cell;
use std::fmt;

use serde::de::{
    DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};

use crate::io::copy_to_huge_pages;

/// Byte strings copied by [`owned_copy`] from this length on: shorter ones
/// glibc copies well (vector moves), and are left to their visitor.
pub(crate) const OWNED_COPY_MIN: usize = 2 << 10;

/// Byte strings copied into huge pages from this length on: below two huge
/// pages, few whole 2 MiB blocks fit and the advice gains little.
pub(crate) const HUGE_PAGES_MIN: usize = 4 << 20;

thread_local! {
    /// Set while a type that borrows from the message (the crate's
    /// `Bytes`) asks for its bytes: they go to its visitor as they are.
    static LEAVE_TO_VISITOR: Cell<bool> = const { Cell::new(false) };
}

/// Runs `deserialize` (one byte string's request) with the bytes handed to
/// its visitor unchanged, even when the request is `deserialize_byte_buf`
/// inside a [`OwnedBytes`]: for a type that shares the message's memory
/// rather than copying out of it.
pub(crate) fn leaving_to_visitor<R>(deserialize: impl FnOnce() -> R) -> R {
    /// Puts the flag back as it was, also when `deserialize` panics.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            LEAVE_TO_VISITOR.with(|flag| flag.set(self.0));
        }
    }
    let _restore = Restore(LEAVE_TO_VISITOR.with(|flag| flag.replace(true)));
    deserialize()
}

/// `bytes` copied into a `Vec` of their own, at memory speed whatever the
/// two buffers' addresses ([`parallel_proto::copy::to_vec`]), into
/// huge-page memory from [`HUGE_PAGES_MIN`] on. For every copy out of a
/// received message, decoded or taken from a shared
/// [`Bytes`](super::Bytes).
pub(crate) fn owned_copy(bytes: &[u8]) -> Vec<u8> {
    if bytes.len() >= HUGE_PAGES_MIN {
        copy_to_huge_pages(bytes)
    } else {
        parallel_proto::copy::to_vec(bytes)
    }
}

/// A deserializer, visitor, access or seed of the wrapped format that
/// decodes owned byte strings with [`owned_copy`] (see the module docs).
/// `owned_bytes` is set on the visitor of a `deserialize_byte_buf` request
/// only.
pub(crate) struct OwnedBytes<X> {
    inner: X,
    owned_bytes: bool,
}

impl<X> OwnedBytes<X> {
    pub(crate) fn new(inner: X) -> Self {
        OwnedBytes {
            inner,
            owned_bytes: false,
        }
    }
}

/// Forwards `deserialize_*` methods: their arguments as they are, the
/// visitor wrapped.
macro_rules! forward_deserialize {
    ($($method:ident($($arg:ident: $ty:ty),*))*) => {$(
        fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
            self.inner.$method($($arg,)* OwnedBytes::new(visitor))
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for OwnedBytes<D> {
    type Error = D::Error;

    forward_deserialize! {
        deserialize_any() deserialize_bool() deserialize_i8() deserialize_i16()
        deserialize_i32() deserialize_i64() deserialize_i128() deserialize_u8()
        deserialize_u16() deserialize_u32() deserialize_u64() deserialize_u128()
        deserialize_f32() deserialize_f64() deserialize_char() deserialize_str()
        deserialize_string() deserialize_bytes() deserialize_option() deserialize_unit()
        deserialize_seq() deserialize_map() deserialize_identifier()
        deserialize_ignored_any()
        deserialize_unit_struct(name: &'static str)
        deserialize_newtype_struct(name: &'static str)
        deserialize_tuple(len: usize)
        deserialize_tuple_struct(name: &'static str, len: usize)
        deserialize_struct(name: &'static str, fields: &'static [&'static str])
        deserialize_enum(name: &'static str, variants: &'static [&'static str])
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        let owned_bytes = !LEAVE_TO_VISITOR.with(Cell::get);
        self.inner.deserialize_byte_buf(OwnedBytes {
            inner: visitor,
            owned_bytes,
        })
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

/// Forwards `visit_*` methods that take one plain value.
macro_rules! forward_visit {
    ($($method:ident($ty:ty))*) => {$(
        fn $method<E: serde::de::Error>(self, value: $ty) -> Result<V::Value, E> {
            self.inner.$method(value)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for OwnedBytes<V> {
    type Value = V::Value;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(formatter)
    }

    forward_visit! {
        visit_bool(bool) visit_i8(i8) visit_i16(i16) visit_i32(i32) visit_i64(i64)
        visit_i128(i128) visit_u8(u8) visit_u16(u16) visit_u32(u32) visit_u64(u64)
        visit_u128(u128) visit_f32(f32) visit_f64(f64) visit_char(char)
        visit_str(&str) visit_borrowed_str(&'de str) visit_string(String)
        visit_byte_buf(Vec<u8>)
    }

    fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<V::Value, E> {
        if self.owned_bytes && bytes.len() >= OWNED_COPY_MIN {
            return self.inner.visit_byte_buf(owned_copy(bytes));
        }
        self.inner.visit_bytes(bytes)
    }

    fn visit_borrowed_bytes<E: serde::de::Error>(self, bytes: &'de [u8]) -> Result<V::Value, E> {
        if self.owned_bytes && bytes.len() >= OWNED_COPY_MIN {
            return self.inner.visit_byte_buf(owned_copy(bytes));
        }
        self.inner.visit_borrowed_bytes(bytes)
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_none()
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<V::Value, D::Error> {
        self.inner.visit_some(OwnedBytes::new(deserializer))
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<V::Value, D::Error> {
        self.inner
            .visit_newtype_struct(OwnedBytes::new(deserializer))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.inner.visit_seq(OwnedBytes::new(seq))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.inner.visit_map(OwnedBytes::new(map))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.inner.visit_enum(OwnedBytes::new(data))
    }
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for OwnedBytes<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<S::Value, D::Error> {
        self.inner.deserialize(OwnedBytes::new(deserializer))
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for OwnedBytes<A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        self.inner.next_element_seed(OwnedBytes::new(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for OwnedBytes<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        self.inner.next_key_seed(OwnedBytes::new(seed))
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        self.inner.next_value_seed(OwnedBytes::new(seed))
    }

    fn next_entry_seed<K: DeserializeSeed<'de>, T: DeserializeSeed<'de>>(
        &mut self,
        key: K,
        value: T,
    ) -> Result<Option<(K::Value, T::Value)>, A::Error> {
        self.inner
            .next_entry_seed(OwnedBytes::new(key), OwnedBytes::new(value))
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, A: EnumAccess<'de>> EnumAccess<'de> for OwnedBytes<A> {
    type Error = A::Error;
    type Variant = OwnedBytes<A::Variant>;

    fn variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<(T::Value, Self::Variant), A::Error> {
        let (value, variant) = self.inner.variant_seed(OwnedBytes::new(seed))?;
        Ok((value, OwnedBytes::new(variant)))
    }
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for OwnedBytes<A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.inner.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        self.inner.newtype_variant_seed(OwnedBytes::new(seed))
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.inner.tuple_variant(len, OwnedBytes::new(visitor))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.inner.struct_variant(fields, OwnedBytes::new(visitor))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::os::fd::AsFd;
    use std::sync::Arc;

    use serde::{Deserialize, Serialize};
    use serde_bytes::ByteBuf;

    use super::*;
    use crate::async_core::bytes::decode_from_mapping;
    use crate::async_core::{Bytes, Codec, Postcard};
    use crate::shm::{sealed_memfd, smaps_field_at, SharedBytes};

    const LARGE: usize = HUGE_PAGES_MIN + (3 << 20);

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Unit;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Newtype(#[serde(with = "serde_bytes")] Vec<u8>);

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Variant {
        Unit,
        Newtype(ByteBuf),
        Tuple(u8, ByteBuf),
        Struct { tag: i16, data: ByteBuf },
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Inner {
        name: String,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    }

    /// Every kind of value serde hands a visitor, with byte strings large
    /// and small in each place one can sit.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Everything {
        #[serde(with = "serde_bytes")]
        large: Vec<u8>,
        #[serde(with = "serde_bytes")]
        small: Vec<u8>,
        #[serde(with = "serde_bytes")]
        middle: Vec<u8>,
        signed: (bool, i8, i16, i32, i64, i128),
        unsigned: (u8, u16, u32, u64, u128, f32, f64),
        text: (char, String),
        #[serde(with = "serde_bytes")]
        maybe: Option<Vec<u8>>,
        nothing: Option<u32>,
        unit: (),
        unit_struct: Unit,
        newtype: Newtype,
        variants: Vec<Variant>,
        nested: Vec<Inner>,
        map: BTreeMap<String, ByteBuf>,
        plain: Vec<u8>,
        shared: Bytes,
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    fn everything() -> Everything {
        Everything {
            large: pattern(LARGE, 1),
            small: pattern(1000, 2),
            middle: pattern(70_000, 13),
            signed: (true, -8, -16, -32, -64, -128),
            unsigned: (8, 16, 32, 64, 128, 1.5, -2.25),
            text: ('é', "text".into()),
            maybe: Some(pattern(LARGE, 3)),
            nothing: None,
            unit: (),
            unit_struct: Unit,
            newtype: Newtype(pattern(LARGE, 4)),
            variants: vec![
                Variant::Unit,
                Variant::Newtype(ByteBuf::from(pattern(LARGE, 5))),
                Variant::Tuple(7, ByteBuf::from(pattern(10, 6))),
                Variant::Struct {
                    tag: -3,
                    data: ByteBuf::from(pattern(LARGE, 7)),
                },
            ],
            nested: vec![Inner {
                name: "inner".into(),
                data: pattern(LARGE, 8),
            }],
            map: BTreeMap::from([
                ("a".into(), ByteBuf::from(pattern(LARGE, 9))),
                ("b".into(), ByteBuf::from(pattern(3, 10))),
            ]),
            plain: pattern(300, 11),
            shared: Bytes::from(pattern(LARGE, 12)),
        }
    }

    /// Whether the 2 MiB block inside `bytes` was advised for huge pages
    /// (`hg` in its mapping's `VmFlags`); `None` without THP, where the
    /// advice is refused and nothing else changes.
    fn advised(bytes: &[u8]) -> Option<bool> {
        if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
            return None;
        }
        let block = (bytes.as_ptr() as usize).next_multiple_of(2 << 20);
        assert!(block + (2 << 20) <= bytes.as_ptr() as usize + bytes.len());
        let flags = smaps_field_at(block, "VmFlags:");
        Some(flags.split_whitespace().any(|flag| flag == "hg"))
    }

    #[test]
    fn large_owned_byte_strings_decode_into_huge_pages_and_all_else_as_before() {
        let sent = everything();
        let encoded = Postcard::encode(&sent).unwrap();
        assert!(encoded.len() >= HUGE_PAGES_MIN);
        let decoded: Everything = Postcard::decode(&encoded).unwrap();
        assert_eq!(decoded, sent);
        let plain: Everything = postcard::from_bytes(&encoded).unwrap();
        assert_eq!(plain, decoded, "the same values as postcard alone");
        let Variant::Newtype(in_variant) = &decoded.variants[1] else {
            unreachable!()
        };
        for large in [
            &decoded.large[..],
            decoded.maybe.as_deref().unwrap(),
            &decoded.newtype.0,
            in_variant,
            &decoded.nested[0].data,
            &decoded.map["a"],
        ] {
            assert_ne!(advised(large), Some(false), "copied into huge pages");
        }
        // Truncated, it fails as postcard alone does.
        assert!(Postcard::decode::<Everything>(&encoded[..encoded.len() - 1]).is_err());
    }

    #[test]
    fn bytes_in_a_large_message_still_share_its_mapping() {
        let message = (pattern(LARGE, 1), Bytes::from(pattern(LARGE, 2)));
        let sent = (ByteBuf::from(message.0.clone()), message.1.clone());
        let encoded = Postcard::encode(&sent).unwrap();
        let memfd = sealed_memfd(&encoded).unwrap();
        let mapping = Arc::new(SharedBytes::map(memfd.as_fd(), encoded.len() as u64).unwrap());
        let (owned, bytes): (ByteBuf, Bytes) =
            decode_from_mapping(&mapping, || Postcard::decode(mapping.as_slice())).unwrap();
        assert_eq!((owned.as_slice(), &bytes), (&message.0[..], &message.1));
        assert!(bytes.is_shared(), "the Bytes points into the mapping");
        assert_ne!(advised(&owned), Some(false));
        // Taken out of the mapping, it is copied into huge pages too.
        let taken = bytes.into_vec();
        assert_eq!(taken, message.1.as_slice());
        assert_ne!(advised(&taken), Some(false));
        assert!(!LEAVE_TO_VISITOR.with(Cell::get), "the flag is put back");
    }
}
