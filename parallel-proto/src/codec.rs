//! Message bodies: postcard, with one rule added: a payload must decode
//! completely, so trailing garbage is an error rather than silently ignored.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::RemoteError;

pub(crate) fn encode_body<T: Serialize>(body: &T) -> Vec<u8> {
    // Serializing our own plain structs into a Vec cannot fail: no maps with
    // non-string keys, no sequences of unknown length.
    postcard::to_stdvec(body).expect("postcard encodes plain structs into a Vec")
}

/// [`encode_body`], appended to `out`.
pub(crate) fn encode_body_into<T: Serialize>(body: &T, out: &mut Vec<u8>) {
    let taken = std::mem::take(out);
    *out = postcard::to_extend(body, taken).expect("postcard encodes plain structs into a Vec");
}

pub(crate) fn decode_body<T: DeserializeOwned>(
    message: &'static str,
    payload: &[u8],
) -> Result<T, RemoteError> {
    let (body, rest) =
        postcard::take_from_bytes::<T>(payload).map_err(|error| RemoteError::Malformed {
            message,
            reason: error.to_string(),
        })?;
    if !rest.is_empty() {
        return Err(RemoteError::Malformed {
            message,
            reason: format!("{} trailing bytes after the message", rest.len()),
        });
    }
    Ok(body)
}

pub(crate) fn expect_empty(message: &'static str, payload: &[u8]) -> Result<(), RemoteError> {
    if payload.is_empty() {
        Ok(())
    } else {
        Err(RemoteError::Malformed {
            message,
            reason: format!("{} bytes where none belong", payload.len()),
        })
    }
}
