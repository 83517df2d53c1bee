//! Message bodies: postcard, with one rule added: a payload must decode
//! completely, so trailing garbage is an error rather than silently ignored.

use std::borrow::Cow;

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

/// Payloads from this length on whose body ends in its bulk bytes (a call's
/// arguments, a result) have those bytes taken in place: see [`take_tail`].
pub(crate) const TAIL_IN_PLACE_MIN: usize = 64 * 1024;

/// A body that is `H` followed by one byte string ending the payload,
/// decoded without a new buffer for the string: the payload's own is kept,
/// its first bytes (`H` and the string's length) moved out. A new buffer
/// of that size is fresh memory that the copy faults in page by page, and
/// its allocation and release move the heap's end (`brk`): with 1 MiB
/// arguments, that was a third of a worker's time per call.
///
/// `None` (and `payload` untouched) unless `payload` is owned (read into
/// its own buffer), at least [`TAIL_IN_PLACE_MIN`] long, decodes exactly
/// so, and `fits` the head (the head says the body has that shape: an enum
/// variant, say): the caller then decodes it as usual, errors included.
pub(crate) fn take_tail<H: DeserializeOwned>(
    payload: &mut Cow<'_, [u8]>,
    fits: impl FnOnce(&H) -> bool,
) -> Option<(H, Vec<u8>)> {
    let Cow::Owned(bytes) = payload else {
        return None;
    };
    if bytes.len() < TAIL_IN_PLACE_MIN {
        return None;
    }
    let ((head, len), tail) = postcard::take_from_bytes::<(H, usize)>(bytes).ok()?;
    if tail.len() != len || !fits(&head) {
        return None;
    }
    let prefix = bytes.len() - len;
    let mut tail = std::mem::take(bytes);
    tail.drain(..prefix);
    Some((head, tail))
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
