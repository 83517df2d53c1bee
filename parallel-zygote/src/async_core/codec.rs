//! How arguments, results and messages become bytes: postcard by default,
//! a ready-made codec from [`codecs`](super::codecs) (JSON, MessagePack,
//! CBOR, bincode, each behind a cargo feature), or any serializer you plug
//! in (the original library's `Io.define`).

use std::any::{Any, TypeId};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::owned_bytes::{OwnedBytes, OWNED_COPY_MIN};

/// What a codec says when a value does not encode or decode: any error
/// type (it becomes the `source` of [`Error::Codec`](super::Error::Codec)).
pub type CodecError = Box<dyn std::error::Error + Send + Sync>;

/// A serialization format for everything that crosses to a worker.
///
/// The codec is a type, not a value, because the worker side must know it
/// without being told: it is part of the function's type. Pick one with
/// `parallel.with_codec::<parallel_tokio::Json>()`; the ready-made ones are
/// listed, with when to choose which, in [`codecs`](super::codecs).
///
/// Writing one is wrapping a serde format's two functions, as below; return
/// the format's own error, boxed (`?` does it), so that its message and type
/// reach [`Error::Codec`](super::Error::Codec).
///
/// ```
/// use parallel_zygote::async_core::{Codec, CodecError};
///
/// /// JSON-ish text codec, for the example: debug-friendly, slower.
/// struct Text;
/// impl Codec for Text {
///     fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
///         // A real codec would call serde_json::to_vec here.
///         Ok(postcard::to_stdvec(value)?)
///     }
///     fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
///         Ok(postcard::from_bytes(bytes)?)
///     }
/// }
/// ```
pub trait Codec: 'static {
    /// Serializes a value.
    ///
    /// # Errors
    /// The format's error, boxed, when it cannot represent `value` (say, a
    /// map with non-string keys in JSON) or `value`'s `Serialize` fails.
    fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError>;
    /// Deserializes a value.
    ///
    /// # Errors
    /// The format's error, boxed, when `bytes` are not a valid encoding of a
    /// `T` (truncated, another type, garbage) or `T`'s `Deserialize` refuses
    /// the value.
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError>;

    /// Whether the format writes a byte string (serde's `serialize_bytes`,
    /// what [`Bytes`](super::Bytes) and `serde_bytes` use) byte for byte as
    /// it writes a sequence of `u8` (what serde makes of a `Vec<u8>`), and
    /// reads either one as the other. When true, a `process` message, a
    /// call's or spawn's argument and a function's result whose type is a
    /// plain `Vec<u8>` are encoded and decoded as byte strings:
    /// one copy, where serde hands a `Vec<u8>` to the format one element at
    /// a time (about five times slower for 1 MiB messages with postcard,
    /// end to end). The wire does not change, so either side may take
    /// either path.
    ///
    /// False by default; true for [`Postcard`], `Json` and `Bincode`.
    const BYTE_STRINGS_ARE_SEQUENCES: bool = false;

    /// The length of `value`'s encoding, when the codec can tell it without
    /// encoding (a pass that copies no bytes). A large `process` message is
    /// then encoded straight into shared memory, skipping a buffer of its
    /// size. `None` (the default) encodes into a `Vec` first.
    fn encoded_len<T: Serialize>(_value: &T) -> Option<usize> {
        None
    }

    /// Encodes `value` into `writer`; by default [`encode`](Self::encode),
    /// then one write.
    ///
    /// # Errors
    /// As [`encode`](Self::encode), and the writer's errors.
    fn encode_to<T: Serialize>(
        value: &T,
        writer: &mut dyn std::io::Write,
    ) -> Result<(), CodecError> {
        writer.write_all(&Self::encode(value)?)?;
        Ok(())
    }
}

/// The default codec: postcard (compact, fast, stable wire format).
///
/// The smallest and one of the fastest formats: integers are varints, and no
/// field names or types go on the wire. That makes it not self-describing:
/// `#[serde(flatten)]`, untagged enums, `skip_serializing_if` and
/// `serde_json::Value` do not round-trip (choose a self-describing codec from
/// [`codecs`](super::codecs) for those).
///
/// Its errors are [`postcard::Error`]s, which keep only the kind of error:
/// the message of a custom `Deserialize` impl
/// (`serde::de::Error::custom("odd number")`) is dropped, and the error
/// reads "Serde Deserialization Error". If those messages matter to you,
/// [`Json`](super::codecs) (feature `json`), [`MessagePack`](super::codecs),
/// [`Cbor`](super::codecs) and [`Bincode`](super::codecs) keep them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Postcard;

impl Codec for Postcard {
    /// postcard writes both as a varint length, then the bytes.
    const BYTE_STRINGS_ARE_SEQUENCES: bool = true;

    fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
        Ok(postcard::to_stdvec(value)?)
    }

    /// A message of 2 KiB and up decodes its owned byte strings
    /// (serde_bytes) with a copy that keeps to memory speed wherever the
    /// buffers lie, into memory backed by huge pages from 4 MiB: the same
    /// values, built faster (see BENCHMARKS.md, session 19).
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
        if bytes.len() < OWNED_COPY_MIN {
            return Ok(postcard::from_bytes(bytes)?);
        }
        let mut deserializer = postcard::Deserializer::from_bytes(bytes);
        Ok(T::deserialize(OwnedBytes::new(&mut deserializer))?)
    }

    fn encoded_len<T: Serialize>(value: &T) -> Option<usize> {
        postcard::experimental::serialized_size(value).ok()
    }

    fn encode_to<T: Serialize>(
        value: &T,
        writer: &mut dyn std::io::Write,
    ) -> Result<(), CodecError> {
        super::pieces::to_writer(value, writer)?;
        Ok(())
    }
}

/// `C::encode(value)`, where a plain `Vec<u8>` (a call's argument or
/// result) is encoded as a byte string when the codec writes both alike
/// ([`Codec::BYTE_STRINGS_ARE_SEQUENCES`]): the same bytes, in one copy
/// rather than a call per byte.
///
/// # Errors
/// The codec's.
pub(crate) fn encode_value<C: Codec, T: Serialize + 'static>(
    value: &T,
) -> Result<Vec<u8>, CodecError> {
    match plain_bytes::<C, T>(value) {
        Some(bytes) => C::encode(&serde_bytes::Bytes::new(bytes)),
        None => C::encode(value),
    }
}

/// Byte values and buffers from this size on are kept where they are
/// rather than copied: an argument's buffer for its result
/// ([`encode_value_reusing`]), a byte argument or result in the buffer it
/// arrived in or leaves from ([`decode_value_in_place`],
/// [`encode_owned_value`], [`encode_owned_split`]).
const IN_PLACE_MIN: usize = 64 * 1024;

/// [`encode_value`] into `spare` (its bytes dropped) when it is large and
/// has room, and the codec can size the encoding without encoding
/// ([`Codec::encoded_len`], which also says that it writes in pieces: a
/// large `process` message is encoded so too). A call's result then takes
/// the memory its arguments arrived in, already faulted in, where a fresh
/// buffer of that size is faulted in page by page as it is written (in a
/// worker just forked, about 600 µs per MiB here). Otherwise `spare` is
/// dropped and a new buffer made, as `encode_value` makes it.
///
/// (Taking buffers from the pool of received payloads, for every call's
/// arguments, was measured too: level for spawns, slower for 1 MiB calls,
/// whose user buffers then missed the allocator's reuse.)
///
/// # Errors
/// The codec's.
pub(crate) fn encode_value_reusing<C: Codec, T: Serialize + 'static>(
    value: &T,
    spare: Vec<u8>,
) -> Result<Vec<u8>, CodecError> {
    if spare.capacity() < IN_PLACE_MIN {
        return encode_value::<C, T>(value);
    }
    let plain = plain_bytes::<C, T>(value);
    let len = match plain {
        Some(bytes) => C::encoded_len(&serde_bytes::Bytes::new(bytes)),
        None => C::encoded_len(value),
    };
    if !len.is_some_and(|len| len <= spare.capacity()) {
        return encode_value::<C, T>(value);
    }
    let mut buffer = spare;
    buffer.clear();
    match plain {
        Some(bytes) => C::encode_to(&serde_bytes::Bytes::new(bytes), &mut buffer)?,
        None => C::encode_to(value, &mut buffer)?,
    }
    Ok(buffer)
}

/// `value` itself when it is a plain `Vec<u8>` that `C` writes as a byte
/// string (see [`encode_value`]).
fn plain_bytes<C: Codec, T: 'static>(value: &T) -> Option<&Vec<u8>> {
    if C::BYTE_STRINGS_ARE_SEQUENCES {
        (value as &dyn Any).downcast_ref::<Vec<u8>>()
    } else {
        None
    }
}

/// A value's decoding from the buffer it arrived in, chosen where its type
/// is known to be `'static` ([`decode_owned_value`] for a codec), for
/// handles whose own bounds do not say so.
pub(crate) type Decode<T> = fn(Vec<u8>) -> Result<T, CodecError>;

/// [`decode_value_in_place`] of a whole buffer (an answer's bytes).
///
/// # Errors
/// The codec's.
pub(crate) fn decode_owned_value<C: Codec, T: DeserializeOwned + 'static>(
    bytes: Vec<u8>,
) -> Result<T, CodecError> {
    decode_value_in_place::<C, T>(bytes, 0).map(|(value, _)| value)
}

/// `C::decode(bytes)`, where a plain `Vec<u8>` is decoded as a byte
/// string when the codec writes both alike (see [`encode_value`]).
///
/// # Errors
/// The codec's.
pub(crate) fn decode_value<C: Codec, T: DeserializeOwned + 'static>(
    bytes: &[u8],
) -> Result<T, CodecError> {
    if C::BYTE_STRINGS_ARE_SEQUENCES && TypeId::of::<T>() == TypeId::of::<Vec<u8>>() {
        let mut slot = Some(C::decode::<serde_bytes::ByteBuf>(bytes)?.into_vec());
        if let Some(value) = (&mut slot as &mut dyn Any)
            .downcast_mut::<Option<T>>()
            .and_then(Option::take)
        {
            return Ok(value);
        }
    }
    C::decode::<T>(bytes)
}

/// Whether `C` is the default codec, whose byte string is known byte for
/// byte (its length as a varint, then the bytes), so that the in-place
/// paths below can find the bytes in an encoding, or put a length before
/// them, without the codec. Another codec's layout is its own: its values
/// take the copying paths.
fn is_postcard<C: Codec>() -> bool {
    TypeId::of::<C>() == TypeId::of::<Postcard>()
}

/// A plain `Vec<u8>` or a `serde_bytes::ByteBuf` as its bytes, when it is
/// one of the two (`T` says which).
fn into_byte_vec<T: 'static>(value: T) -> Result<Vec<u8>, T> {
    let mut slot = Some(value);
    let any = &mut slot as &mut dyn Any;
    if let Some(bytes) = any.downcast_mut::<Option<Vec<u8>>>() {
        return Ok(bytes.take().expect("filled above"));
    }
    if let Some(bytes) = any.downcast_mut::<Option<serde_bytes::ByteBuf>>() {
        return Ok(bytes.take().expect("filled above").into_vec());
    }
    Err(slot.expect("taken only when returned"))
}

/// The reverse of [`into_byte_vec`]: `bytes` as a `T` that is a plain
/// `Vec<u8>` or a `serde_bytes::ByteBuf`.
fn from_byte_vec<T: 'static>(bytes: Vec<u8>) -> Option<T> {
    let is_buf = TypeId::of::<T>() == TypeId::of::<serde_bytes::ByteBuf>();
    let mut slot: Box<dyn Any> = if is_buf {
        Box::new(Some(serde_bytes::ByteBuf::from(bytes)))
    } else {
        Box::new(Some(bytes))
    };
    slot.downcast_mut::<Option<T>>().and_then(Option::take)
}

/// [`decode_value`] of `args[at..]` (a call's or a spawn's arguments, in
/// the buffer they arrived in), and that buffer back for the result (see
/// [`encode_value_reusing`]). With the default codec, a plain `Vec<u8>`
/// or a `serde_bytes::ByteBuf` of 64 KiB and up is that buffer itself, its
/// first bytes moved out, where a copy would go to fresh memory faulted in
/// page by page (about 600 µs per MiB in a worker just forked); the
/// buffer back is then empty. Not when the buffer is more than an eighth
/// larger than the bytes (a recycled one can be twice their size): the
/// value would keep that memory. Decodes as `decode_value` in every other
/// case, errors included.
///
/// # Errors
/// The codec's.
pub(crate) fn decode_value_in_place<C: Codec, T: DeserializeOwned + 'static>(
    mut args: Vec<u8>,
    at: usize,
) -> Result<(T, Vec<u8>), CodecError> {
    let bytes_type = TypeId::of::<T>() == TypeId::of::<Vec<u8>>()
        || TypeId::of::<T>() == TypeId::of::<serde_bytes::ByteBuf>();
    if bytes_type && is_postcard::<C>() && args.len() - at >= IN_PLACE_MIN {
        // postcard: the length as a varint, then the bytes.
        if let Ok((len, rest)) = postcard::take_from_bytes::<usize>(&args[at..]) {
            if rest.len() == len && args.capacity() - len <= len / 8 {
                args.drain(..args.len() - len);
                if let Some(value) = from_byte_vec::<T>(args) {
                    return Ok((value, Vec::new()));
                }
                unreachable!("T is one of the two byte types");
            }
        }
    }
    let value = decode_value::<C, T>(&args[at..])?;
    Ok((value, args))
}

/// [`encode_value_reusing`] of a result the caller owns: with the default
/// codec, a plain `Vec<u8>` or a `serde_bytes::ByteBuf` of 64 KiB and up
/// with room for its length becomes its own encoding (the length put
/// before the bytes, which move up in place), where a copy would go to
/// fresh memory.
///
/// # Errors
/// The codec's.
pub(crate) fn encode_owned_value<C: Codec, T: Serialize + 'static>(
    value: T,
    spare: Vec<u8>,
) -> Result<Vec<u8>, CodecError> {
    if !is_postcard::<C>() {
        return encode_value_reusing::<C, T>(&value, spare);
    }
    let mut bytes = match into_byte_vec(value) {
        Ok(bytes) => bytes,
        Err(value) => return encode_value_reusing::<C, T>(&value, spare),
    };
    let len = postcard::to_stdvec(&bytes.len())?;
    // Only with room for the length: growing the buffer would move it
    // (bytes taken in place have the room their own length took).
    if bytes.len() >= IN_PLACE_MIN && bytes.capacity() - bytes.len() >= len.len() {
        bytes.splice(0..0, len);
        return Ok(bytes);
    }
    encode_value_reusing::<C, Vec<u8>>(&bytes, spare)
}

/// A value's encoding in two parts, `head` then `tail`: a frame moves
/// `tail` in rather than copying it (`ParentChannel::start_with_tail`).
#[derive(Debug, Default, PartialEq)]
pub(crate) struct SplitEncoding {
    pub(crate) head: Vec<u8>,
    pub(crate) tail: Vec<u8>,
}

impl SplitEncoding {
    /// A whole encoding, as the tail.
    pub(crate) fn whole(tail: Vec<u8>) -> SplitEncoding {
        SplitEncoding {
            head: Vec::new(),
            tail,
        }
    }
}

/// [`encode_value`] of a value the caller gives up (a spawn's argument),
/// in two parts: with the default codec, a plain `Vec<u8>` or a
/// `serde_bytes::ByteBuf` of 64 KiB and up is the tail itself, after its
/// length: not copied at all (a copy goes to fresh memory, faulted in page
/// by page once the allocator has given the last one back). Otherwise the
/// whole encoding is the tail.
///
/// # Errors
/// The codec's.
pub(crate) fn encode_owned_split<C: Codec, T: Serialize + 'static>(
    value: T,
) -> Result<SplitEncoding, CodecError> {
    if !is_postcard::<C>() {
        return encode_value::<C, T>(&value).map(SplitEncoding::whole);
    }
    match into_byte_vec(value) {
        Ok(bytes) if bytes.len() >= IN_PLACE_MIN => Ok(SplitEncoding {
            head: postcard::to_stdvec(&bytes.len())?,
            tail: bytes,
        }),
        Ok(bytes) => encode_value::<C, Vec<u8>>(&bytes).map(SplitEncoding::whole),
        Err(value) => encode_value::<C, T>(&value).map(SplitEncoding::whole),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::async_core::codecs::{Cbor, Json};

    fn plain() -> Vec<u8> {
        (0..70_000u32).map(|i| (i % 253) as u8).collect()
    }

    #[test]
    fn a_plain_vec_takes_the_byte_path_with_the_same_bytes() {
        let value = plain();
        // The same encoding as the element-by-element one, either way
        // round: a peer on the other path reads it.
        let encoded = encode_value::<Postcard, _>(&value).unwrap();
        assert_eq!(encoded, Postcard::encode(&value).unwrap());
        assert_eq!(decode_value::<Postcard, Vec<u8>>(&encoded).unwrap(), value);
        let json = encode_value::<Json, _>(&value).unwrap();
        assert_eq!(json, Json::encode(&value).unwrap());
        assert_eq!(decode_value::<Json, Vec<u8>>(&json).unwrap(), value);
        // A codec whose byte strings differ from sequences keeps its own.
        let cbor = encode_value::<Cbor, _>(&value).unwrap();
        assert_eq!(cbor, Cbor::encode(&value).unwrap());
        assert_eq!(decode_value::<Cbor, Vec<u8>>(&cbor).unwrap(), value);
        // Other types, and errors, as the codec's own.
        let other = (7u8, vec![1u16, 2, 3]);
        assert_eq!(
            encode_value::<Postcard, _>(&other).unwrap(),
            Postcard::encode(&other).unwrap()
        );
        let truncated = &encoded[..encoded.len() - 1];
        assert!(decode_value::<Postcard, Vec<u8>>(truncated).is_err());
    }

    #[test]
    fn a_result_is_encoded_into_the_arguments_buffer_when_it_fits() {
        let bytes = plain();
        let structured = (String::from("label"), serde_bytes::ByteBuf::from(plain()));
        fn reused<C: Codec, T: Serialize + 'static>(value: &T, capacity: usize) -> bool {
            let spare = Vec::<u8>::with_capacity(capacity);
            let at = spare.as_ptr();
            let encoded = encode_value_reusing::<C, T>(value, spare).unwrap();
            assert_eq!(
                encoded,
                encode_value::<C, T>(value).unwrap(),
                "the same bytes"
            );
            encoded.as_ptr() == at
        }
        // Large, with room: in place, both on the byte path and not.
        assert!(reused::<Postcard, _>(&bytes, 100_000));
        assert!(reused::<Postcard, _>(&structured, 100_000));
        // No room, a small buffer, or a codec that cannot size: a new one.
        assert!(!reused::<Postcard, _>(&bytes, 70_001));
        assert!(!reused::<Postcard, _>(&7u64, IN_PLACE_MIN - 1));
        assert!(!reused::<Json, _>(&bytes, 1 << 20));
        assert!(!reused::<Cbor, _>(&structured, 1 << 20));
        // Small results in a large buffer: in place, the same bytes.
        assert!(reused::<Postcard, _>(&7u64, IN_PLACE_MIN));
    }

    /// `value` encoded by `C` after a head of `at` bytes, in one buffer.
    fn arrived<C: Codec, T: Serialize>(value: &T, at: usize) -> Vec<u8> {
        let mut args = vec![0xAB; at];
        args.extend_from_slice(&C::encode(value).unwrap());
        args
    }

    #[test]
    fn large_byte_arguments_are_the_buffer_they_arrived_in() {
        let bytes = plain();
        for at in [0, 9] {
            // Both byte types, with the default codec: that buffer.
            let args = arrived::<Postcard, _>(&bytes, at);
            let buffer = args.as_ptr();
            let (value, spare) = decode_value_in_place::<Postcard, Vec<u8>>(args, at).unwrap();
            assert_eq!(value, bytes);
            assert_eq!(value.as_ptr(), buffer, "kept, not copied");
            assert_eq!(spare.capacity(), 0);
            let args = arrived::<Postcard, _>(&serde_bytes::Bytes::new(&bytes), at);
            let buffer = args.as_ptr();
            let (value, _) =
                decode_value_in_place::<Postcard, serde_bytes::ByteBuf>(args, at).unwrap();
            assert_eq!(value.as_ptr(), buffer);
            assert_eq!(value.into_vec(), bytes);
        }
        // Anything else decodes as decode_value does, the buffer back.
        let small = vec![1u8; 100];
        let args = arrived::<Postcard, _>(&small, 3);
        let (value, spare) = decode_value_in_place::<Postcard, Vec<u8>>(args.clone(), 3).unwrap();
        assert_eq!((value, spare), (small, args));
        let args = arrived::<Json, _>(&bytes, 0);
        let (value, spare) = decode_value_in_place::<Json, Vec<u8>>(args.clone(), 0).unwrap();
        assert_eq!((value, spare), (bytes.clone(), args));
        let pair = (5u32, bytes.clone());
        let args = arrived::<Postcard, _>(&pair, 0);
        let (value, _) = decode_value_in_place::<Postcard, (u32, Vec<u8>)>(args, 0).unwrap();
        assert_eq!(value, pair);
        // Trailing bytes (postcard ignores them) and a short buffer: as
        // decode_value, errors included.
        let mut trailing = arrived::<Postcard, _>(&bytes, 0);
        trailing.push(1);
        let (value, _) = decode_value_in_place::<Postcard, Vec<u8>>(trailing, 0).unwrap();
        assert_eq!(value, bytes);
        let mut short = arrived::<Postcard, _>(&bytes, 0);
        short.pop();
        assert_eq!(
            decode_value_in_place::<Postcard, Vec<u8>>(short.clone(), 0)
                .unwrap_err()
                .to_string(),
            decode_value::<Postcard, Vec<u8>>(&short)
                .unwrap_err()
                .to_string()
        );
    }

    #[test]
    fn large_byte_results_become_their_own_encoding() {
        let bytes = plain();
        let expected = encode_value::<Postcard, _>(&bytes).unwrap();
        // With room for the length (as arguments taken in place have): in
        // place, for both byte types.
        let mut roomy = Vec::with_capacity(bytes.len() + 16);
        roomy.extend_from_slice(&bytes);
        let buffer = roomy.as_ptr();
        let encoded = encode_owned_value::<Postcard, _>(roomy.clone(), Vec::new()).unwrap();
        assert_eq!(encoded, expected);
        let encoded = encode_owned_value::<Postcard, _>(roomy, Vec::new()).unwrap();
        assert_eq!(encoded.as_ptr(), buffer, "its own encoding");
        let mut roomy = Vec::with_capacity(bytes.len() + 16);
        roomy.extend_from_slice(&bytes);
        let buffer = roomy.as_ptr();
        let encoded =
            encode_owned_value::<Postcard, _>(serde_bytes::ByteBuf::from(roomy), Vec::new())
                .unwrap();
        assert_eq!((encoded.as_ptr(), &encoded), (buffer, &expected));
        // Without room, small, another type or another codec: the bytes
        // encode_value makes.
        let exact = bytes.clone();
        assert_eq!(exact.capacity(), exact.len());
        assert_eq!(
            encode_owned_value::<Postcard, _>(exact, Vec::new()).unwrap(),
            expected
        );
        let small = vec![4u8; 10];
        assert_eq!(
            encode_owned_value::<Postcard, _>(
                serde_bytes::ByteBuf::from(small.clone()),
                Vec::new()
            )
            .unwrap(),
            encode_value::<Postcard, _>(&small).unwrap()
        );
        let pair = (5u32, bytes.clone());
        assert_eq!(
            encode_owned_value::<Postcard, _>(pair.clone(), Vec::new()).unwrap(),
            encode_value::<Postcard, _>(&pair).unwrap()
        );
        assert_eq!(
            encode_owned_value::<Json, _>(bytes.clone(), Vec::new()).unwrap(),
            encode_value::<Json, _>(&bytes).unwrap()
        );
    }

    #[test]
    fn a_large_byte_argument_is_its_encodings_tail() {
        let bytes = plain();
        let expected = encode_value::<Postcard, _>(&bytes).unwrap();
        let owned = bytes.clone();
        let at = owned.as_ptr();
        let split = encode_owned_split::<Postcard, _>(owned).unwrap();
        assert_eq!([&split.head[..], &split.tail[..]].concat(), expected);
        assert_eq!(
            (split.head.len(), split.tail.as_ptr()),
            (3, at),
            "not copied"
        );
        let buf = serde_bytes::ByteBuf::from(bytes.clone());
        let split = encode_owned_split::<Postcard, _>(buf).unwrap();
        assert_eq!([&split.head[..], &split.tail[..]].concat(), expected);
        // Anything else: the whole encoding, as encode_value's.
        let small = vec![9u8; 100];
        let pair = (1u8, bytes.clone());
        assert_eq!(
            encode_owned_split::<Postcard, _>(small.clone()).unwrap(),
            SplitEncoding {
                head: Vec::new(),
                tail: encode_value::<Postcard, _>(&small).unwrap()
            }
        );
        assert_eq!(
            encode_owned_split::<Postcard, _>(pair.clone())
                .unwrap()
                .tail,
            encode_value::<Postcard, _>(&pair).unwrap()
        );
        assert_eq!(
            encode_owned_split::<Json, _>(bytes.clone()).unwrap().tail,
            encode_value::<Json, _>(&bytes).unwrap()
        );
    }
}
