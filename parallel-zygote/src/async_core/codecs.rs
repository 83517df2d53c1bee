//! Ready-made codecs beside the default [`Postcard`], each behind a cargo
//! feature of the same crate (and of every adapter, which forwards it and
//! re-exports the type): choosing another format is one line.
//!
//! ```toml
//! parallel-tokio = { version = "0.1", features = ["json"] }
//! ```
//! ```
//! # // parallel-zygote cannot depend on parallel-tokio: this stand-in module
//! # // re-exports the same type that `parallel_tokio::Json` is.
//! # mod parallel_tokio { pub use parallel_zygote::async_core::codecs::Json; }
//! # use parallel_zygote::async_core::{Parallel, Runtime};
//! # fn example<R: Runtime>(parallel: Parallel<R>) {
//! let parallel = parallel.with_codec::<parallel_tokio::Json>();
//! # let _ = parallel;
//! # }
//! ```
//!
//! | codec | feature | crate | size | speed | self-describing | choose it when |
//! |---|---|---|---|---|---|---|
//! | [`Postcard`] (default) | — | `postcard` 1 | smallest | fast | no | both ends are this binary (they always are): the default |
//! | `Json` | `json` | `serde_json` 1 | largest (text) | slow | yes | you want to read the bytes (logs, `strace`) |
//! | `MessagePack` | `msgpack` | `rmp-serde` 1 | small, plus field names | fast | yes | a compact format whose structs are maps, so types can evolve |
//! | `Cbor` | `cbor` | `ciborium` 0.2 | small, plus field names | slowest | yes | the bytes must follow a standard (RFC 8949) |
//! | `Bincode` | `bincode` | `bincode` 1.3 | large for integers (fixed width) | fastest | no | speed beats size, or you already use bincode (no longer developed) |
//!
//! For scale, one machine, a round trip (encode and decode) of a 5-field
//! struct: postcard 31 bytes in 0.18 µs, JSON 93 B 0.57 µs, MessagePack
//! 45 B 0.32 µs, CBOR 43 B 0.88 µs, bincode 74 B 0.07 µs; of 10,000 `u64`s:
//! postcard 19.9 KB 80 µs, JSON 48.9 KB 122 µs, MessagePack 29.6 KB 67 µs,
//! CBOR 29.7 KB 310 µs, bincode 80 KB 17 µs. Measure your own types: the
//! process round trip around a call usually costs far more than any of these.
//!
//! "Self-describing" formats carry field names and types on the wire: they
//! support everything serde can express (`#[serde(flatten)]`, untagged
//! enums, `skip_serializing_if`, `serde_json::Value`), which the others
//! reject or garble. Every process of a tree runs the same binary, so schema
//! evolution matters only for bytes you keep (a codec is also usable on its
//! own: `Json::encode(&value)`).
//!
//! Errors are each crate's own error type, boxed into a [`CodecError`]:
//! downcast to it (`serde_json::Error`, `rmp_serde::decode::Error`, ...) or
//! print it. A message from `serde::de::Error::custom` in your own
//! `Deserialize` survives in all four (not in postcard's, which keeps only
//! the kind of error).
//!
//! The default build compiles none of these crates. With the versions in
//! this workspace's lock file, `msgpack` needs Rust 1.85 (`rmp-serde` 1.3.1)
//! and `cbor` Rust 1.81 (`half` 2.7, under `ciborium`); `json` and
//! `bincode` build on this crate's minimum, 1.80.

#[allow(unused_imports)] // Used by the codecs whose feature is on.
use serde::{de::DeserializeOwned, Serialize};

#[allow(unused_imports)] // Used by the codecs whose feature is on.
use super::codec::{Codec, CodecError};

/// The default codec, here too: this module has every ready-made codec.
pub use super::codec::Postcard;

/// JSON ([`serde_json`]): text you can read; the largest codec, and slow.
/// Feature `json`.
///
/// Choose it to debug (the bytes in a log or under `strace` are readable)
/// or to talk to tools that speak JSON, not for throughput: numbers and
/// field names travel as text, byte buffers as arrays of numbers. It is
/// self-describing, so every serde feature works, and its errors keep the
/// messages of custom `Deserialize` impls, with a line and column. Limits of
/// JSON itself: map keys must be strings or integers, and non-finite floats
/// (`NaN`, infinities) become `null` and then fail to decode.
///
/// ```
/// # mod parallel_tokio { pub use parallel_zygote::async_core::codecs::Json; }
/// # use parallel_zygote::async_core::{Parallel, Runtime};
/// # fn example<R: Runtime>(parallel: Parallel<R>) {
/// // Cargo.toml: parallel-tokio = { version = "0.1", features = ["json"] }
/// let parallel = parallel.with_codec::<parallel_tokio::Json>();
/// # let _ = parallel;
/// # }
/// ```
///
/// Errors are [`serde_json::Error`]s.
#[cfg(feature = "json")]
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

#[cfg(feature = "json")]
impl Codec for Json {
    /// serde_json writes both as an array of numbers.
    const BYTE_STRINGS_ARE_SEQUENCES: bool = true;

    fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
        Ok(serde_json::to_vec(value)?)
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

/// MessagePack ([`rmp_serde`]), with structs as maps of field names:
/// compact, fast, self-describing. Feature `msgpack`.
///
/// Encoded with [`rmp_serde::to_vec_named`], so a struct is a map keyed by
/// field name rather than a positional array: a field can be added (with
/// `#[serde(default)]`), removed or reordered and old bytes still decode,
/// and `#[serde(skip_serializing_if)]` works. The price is the field names
/// on the wire, a few bytes per field. Choose it for a compact format that
/// other languages read and whose schema can evolve.
///
/// Errors are [`rmp_serde::encode::Error`]s and [`rmp_serde::decode::Error`]s.
#[cfg(feature = "msgpack")]
#[derive(Debug, Clone, Copy, Default)]
pub struct MessagePack;

#[cfg(feature = "msgpack")]
impl Codec for MessagePack {
    fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
        Ok(rmp_serde::to_vec_named(value)?)
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
        Ok(rmp_serde::from_slice(bytes)?)
    }
}

/// CBOR, RFC 8949 ([`ciborium`]): a standard, self-describing binary
/// format. Feature `cbor`.
///
/// Structs are maps of field names (schemas can evolve as with
/// `MessagePack`), and every serde feature works. About as compact as
/// MessagePack but the slowest codec here (ciborium favours correctness
/// over speed); choose it when the bytes must follow a standard (COSE,
/// WebAuthn, IoT tooling) or be read by other languages' CBOR libraries.
///
/// Errors are [`ciborium::ser::Error`]s and [`ciborium::de::Error`]s over
/// [`std::io::Error`].
#[cfg(feature = "cbor")]
#[derive(Debug, Clone, Copy, Default)]
pub struct Cbor;

#[cfg(feature = "cbor")]
impl Codec for Cbor {
    fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
        let mut bytes = Vec::new();
        ciborium::into_writer(value, &mut bytes)?;
        Ok(bytes)
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
        Ok(ciborium::from_reader(bytes)?)
    }
}

/// Bincode 1 ([`bincode`] 1.3, `bincode::serialize`): the fastest codec
/// here, not self-describing, with fixed-width integers. Feature `bincode`.
///
/// Choose it when encoding speed matters more than size (a `u64` always
/// takes 8 bytes, where [`Postcard`]'s varint takes 1 to 10: large vectors
/// of small numbers come out 2 to 4 times bigger), or when you already use
/// bincode. **Bincode's development has ceased** (RUSTSEC-2025-0141): its
/// team calls 1.3.3 complete and would patch only that release for a
/// security flaw, which is why this is bincode 1 and not 2.0.1 (3.0.0 does
/// not compile, on purpose). Like postcard it writes no field names or
/// types, so `#[serde(flatten)]`, untagged enums, `skip_serializing_if` and
/// `serde_json::Value` do not round-trip.
///
/// Errors are [`bincode::ErrorKind`]s (custom serde messages are kept, as
/// `ErrorKind::Custom`).
#[cfg(feature = "bincode")]
#[derive(Debug, Clone, Copy, Default)]
pub struct Bincode;

#[cfg(feature = "bincode")]
impl Codec for Bincode {
    /// bincode writes both as a length, then the bytes.
    const BYTE_STRINGS_ARE_SEQUENCES: bool = true;

    fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
        // `bincode::Error` is a `Box<ErrorKind>`: unsized to a CodecError
        // rather than boxed again, so that it downcasts to `ErrorKind`.
        bincode::serialize(value).map_err(|error| -> CodecError { error })
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
        bincode::deserialize(bytes).map_err(|error| -> CodecError { error })
    }
}
