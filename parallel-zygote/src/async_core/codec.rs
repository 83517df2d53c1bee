//! How arguments, results and messages become bytes: postcard by default, or
//! any serializer you plug in (the original library's `Io.define`).

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A serialization format for everything that crosses to a worker.
///
/// The codec is a type, not a value, because the worker side must know it
/// without being told: it is part of the function's type.
///
/// ```
/// use parallel_zygote::async_core::Codec;
///
/// /// JSON-ish text codec, for the example: debug-friendly, slower.
/// struct Text;
/// impl Codec for Text {
///     fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, String> {
///         // A real codec would call serde_json::to_vec here.
///         postcard::to_stdvec(value).map_err(|e| e.to_string())
///     }
///     fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
///         postcard::from_bytes(bytes).map_err(|e| e.to_string())
///     }
/// }
/// ```
pub trait Codec: 'static {
    /// Serializes a value.
    fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String>;
    /// Deserializes a value.
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String>;
}

/// The default codec: postcard (compact, fast, stable wire format).
#[derive(Debug, Clone, Copy, Default)]
pub struct Postcard;

impl Codec for Postcard {
    fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
        postcard::to_stdvec(value).map_err(|e| e.to_string())
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
        postcard::from_bytes(bytes).map_err(|e| e.to_string())
    }
}
