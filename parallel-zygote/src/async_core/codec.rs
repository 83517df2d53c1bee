//! How arguments, results and messages become bytes: postcard by default, or
//! any serializer you plug in (the original library's `Io.define`).

use serde::de::DeserializeOwned;
use serde::Serialize;

/// What a codec says when a value does not encode or decode: any error
/// type (it becomes the `source` of [`Error::Codec`](super::Error::Codec)).
pub type CodecError = Box<dyn std::error::Error + Send + Sync>;

/// A serialization format for everything that crosses to a worker.
///
/// The codec is a type, not a value, because the worker side must know it
/// without being told: it is part of the function's type.
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
    fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError>;
    /// Deserializes a value.
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError>;
}

/// The default codec: postcard (compact, fast, stable wire format).
#[derive(Debug, Clone, Copy, Default)]
pub struct Postcard;

impl Codec for Postcard {
    fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
        Ok(postcard::to_stdvec(value)?)
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
        Ok(postcard::from_bytes(bytes)?)
    }
}
